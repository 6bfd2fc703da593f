//! Parsed modules, cached by build-id (or by device, inode, size and mtime
//! for files without one), and the per-address lookup over them.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::rc::Rc;

use object::read::ReadCache;
use object::Object;

use super::debuginfo::{self, DebugRefs};
use super::dwarf::{self, DwarfInfo};
use super::elf::ElfModule;
use super::{demangle, AddrKind, ModuleAddr, ModuleSource, SymbolizerOptions, UnknownReason};
use crate::intern::Interner;
use crate::profile::Frame;

/// Bounds the cache; a process maps a few hundred files at most, so this is
/// only reached by a long-lived symbolizer across many processes.
const MAX_CACHED_MODULES: usize = 1024;

/// The name given to an inlined function DWARF does not name.
const UNNAMED_INLINE: &str = "??";

/// Identity of a file's contents as far as the cache is concerned: a file
/// replaced in place (rebuild, upgrade) is parsed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// What a parsed module is cached under: the same build seen through
/// another path, process or container shares one entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ModuleKey {
    BuildId(Box<[u8]>),
    File(Stamp),
}

/// A module ready for lookups: its segments and symbol tables, and DWARF
/// from itself or its separate debug file.
pub(crate) struct LoadedModule {
    elf: ElfModule,
    /// Symbols of the separate debug file, for a stripped module.
    debug_elf: Option<ElfModule>,
    dwarf: Option<DwarfInfo>,
    /// The separate debug file DWARF or symbols came from.
    pub(crate) debug_file: Option<PathBuf>,
    /// The module's GNU build-id (empty without one).
    pub(crate) build_id: Vec<u8>,
}

/// Loads DWARF of `obj` (found at `path`), following a dwz supplement.
fn load_dwarf<'data, O: Object<'data>>(
    opts: &SymbolizerOptions,
    source: &ModuleSource,
    path: &std::path::Path,
    obj: &O,
) -> Option<DwarfInfo> {
    if !dwarf::has_dwarf(obj) {
        return None;
    }
    let sup_path = debuginfo::find_sup_file(opts, source, path, obj);
    let sup_file = sup_path.as_ref().and_then(|p| File::open(p).ok());
    let sup_cache = sup_file.map(ReadCache::new);
    let sup = sup_cache.as_ref().and_then(|c| object::File::parse(c).ok());
    let loaded = match (&sup, &sup_path) {
        (Some(sup), Some(sup_path)) => DwarfInfo::load_with_sup((obj, path), (sup, sup_path)),
        _ => DwarfInfo::load(obj, path),
    };
    match loaded {
        Ok(d) => Some(d),
        Err(e) => {
            // Symbol tables still name the functions: degrade, do not fail.
            log::debug!("DWARF of {} unusable: {e}", path.display());
            None
        }
    }
}

impl LoadedModule {
    fn load<'data, O: Object<'data>>(
        opts: &SymbolizerOptions,
        source: &ModuleSource,
        obj: &O,
        refs: &DebugRefs,
    ) -> LoadedModule {
        let elf = ElfModule::from_object(obj);
        let build_id = refs.build_id.clone().unwrap_or_default();
        if let Some(dwarf) = load_dwarf(opts, source, &source.open_path, obj) {
            return LoadedModule {
                elf,
                debug_elf: None,
                dwarf: Some(dwarf),
                debug_file: None,
                build_id,
            };
        }
        let Some(debug_path) = debuginfo::find_debug_file(opts, source, refs) else {
            return LoadedModule {
                elf,
                debug_elf: None,
                dwarf: None,
                debug_file: None,
                build_id,
            };
        };
        let parsed = File::open(&debug_path).map(ReadCache::new);
        let (dwarf, debug_elf) = match &parsed {
            Ok(cache) => match object::File::parse(cache) {
                Ok(dobj) => (
                    load_dwarf(opts, source, &debug_path, &dobj),
                    elf.symtab_is_empty().then(|| ElfModule::from_object(&dobj)),
                ),
                Err(e) => {
                    log::debug!("cannot parse {}: {e}", debug_path.display());
                    (None, None)
                }
            },
            Err(e) => {
                log::debug!("cannot open {}: {e}", debug_path.display());
                (None, None)
            }
        };
        LoadedModule {
            elf,
            debug_elf,
            dwarf,
            debug_file: Some(debug_path),
            build_id,
        }
    }

    /// Drops the debug-section pages lookups read from the resident set.
    pub(crate) fn release_pages(&self) {
        if let Some(d) = &self.dwarf {
            d.release_pages();
        }
    }

    /// The frames at `addr`, root-most first (see [`super::Symbolized`]);
    /// their strings come from `names`, shared with every other frame.
    pub(crate) fn lookup(
        &self,
        module: &str,
        addr: ModuleAddr,
        names: &mut Interner,
    ) -> Result<Vec<Frame>, UnknownReason> {
        let probe = match addr.kind {
            AddrKind::Instruction => addr.offset.0,
            AddrKind::Return => addr
                .offset
                .0
                .checked_sub(1)
                .ok_or(UnknownReason::OutsideSegments)?,
        };
        let vaddr = self
            .elf
            .offset_to_vaddr(probe)
            .ok_or(UnknownReason::OutsideSegments)?;
        let symbol = self
            .elf
            .symtab_function_at(vaddr)
            .or_else(|| self.debug_elf.as_ref()?.symtab_function_at(vaddr))
            .or_else(|| self.elf.dynsym_function_at(vaddr));
        // Demangled only when DWARF does not name the function (demangling
        // is a large part of a warm lookup).
        let symbol_name = || symbol.map(|s| demangle(&s.name));
        let source = match &self.dwarf {
            Some(d) => d.frames(vaddr).unwrap_or_else(|e| {
                log::debug!("DWARF lookup of {module} at {vaddr:#x}: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        };
        if source.is_empty() {
            let name = symbol_name().ok_or(UnknownReason::NoSymbol)?;
            return Ok(vec![Frame::function(names.str(&name), names.str(module))]);
        }
        // A line without a function (no DW_TAG_subprogram covers it) needs
        // the symbol table's name; without either the address stays unknown.
        if source[0].name.is_none() && symbol.is_none() {
            return Err(UnknownReason::NoSymbol);
        }
        let module = names.str(module);
        Ok(source
            .into_iter()
            .enumerate()
            .map(|(i, f)| Frame::Function {
                name: names.str(
                    &f.name
                        .or_else(|| if i == 0 { symbol_name() } else { None })
                        .unwrap_or_else(|| UNNAMED_INLINE.to_string()),
                ),
                module: std::sync::Arc::clone(&module),
                file: f.file.map(|f| names.str(&f)),
                line: f.line,
                inlined: i > 0,
                pc: None,
            })
            .collect())
    }
}

/// The module cache of a [`super::Symbolizer`]. `Rc`, not `Arc`: DWARF units
/// are parsed lazily through interior mutability, so a parsed module is not
/// `Sync`; a symbolizer belongs to one thread.
#[derive(Default)]
pub(crate) struct ModuleCache {
    /// File identity → where its module is cached, or why it is unusable.
    stamps: HashMap<Stamp, Result<ModuleKey, UnknownReason>>,
    modules: HashMap<ModuleKey, Rc<LoadedModule>>,
}

impl ModuleCache {
    /// Modules parsed, plus files remembered as unusable.
    pub(crate) fn len(&self) -> usize {
        self.modules.len() + self.stamps.values().filter(|v| v.is_err()).count()
    }

    /// DWARF units dropped by the modules' bounded unit caches.
    pub(crate) fn dwarf_unit_evictions(&self) -> u64 {
        self.modules
            .values()
            .filter_map(|m| m.dwarf.as_ref())
            .map(DwarfInfo::unit_evictions)
            .sum()
    }

    /// The parsed module of `source`, parsing it on first use.
    pub(crate) fn get(
        &mut self,
        source: &ModuleSource,
        opts: &SymbolizerOptions,
    ) -> Result<Rc<LoadedModule>, UnknownReason> {
        let meta = std::fs::metadata(&source.open_path).map_err(|e| {
            log::debug!("cannot stat {}: {e}", source.open_path.display());
            UnknownReason::Unreadable
        })?;
        let stamp = Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        match self.stamps.get(&stamp) {
            Some(Err(reason)) => return Err(*reason),
            Some(Ok(key)) => {
                if let Some(m) = self.modules.get(key) {
                    return Ok(Rc::clone(m));
                }
            }
            None => {}
        }
        let result = self.parse(source, opts, stamp);
        if self.stamps.len() >= MAX_CACHED_MODULES * 4 {
            self.stamps.clear();
        }
        self.stamps.insert(
            stamp,
            result.as_ref().map(|(k, _)| k.clone()).map_err(|r| *r),
        );
        result.map(|(_, m)| m)
    }

    fn parse(
        &mut self,
        source: &ModuleSource,
        opts: &SymbolizerOptions,
        stamp: Stamp,
    ) -> Result<(ModuleKey, Rc<LoadedModule>), UnknownReason> {
        let file = File::open(&source.open_path).map_err(|e| {
            log::debug!("cannot open {}: {e}", source.open_path.display());
            UnknownReason::Unreadable
        })?;
        let cache = ReadCache::new(file);
        let obj = object::File::parse(&cache).map_err(|e| {
            log::debug!("cannot parse {}: {e}", source.open_path.display());
            UnknownReason::NotObject
        })?;
        let refs = DebugRefs::of(&obj);
        let key = match &refs.build_id {
            Some(id) if !id.is_empty() => ModuleKey::BuildId(id.clone().into_boxed_slice()),
            _ => ModuleKey::File(stamp),
        };
        if let Some(m) = self.modules.get(&key) {
            return Ok((key, Rc::clone(m)));
        }
        let module = Rc::new(LoadedModule::load(opts, source, &obj, &refs));
        if self.modules.len() >= MAX_CACHED_MODULES {
            // Any victim will do: re-parsing an evicted module is correct, just slower.
            if let Some(victim) = self.modules.keys().next().cloned() {
                self.modules.remove(&victim);
            }
        }
        self.modules.insert(key.clone(), Rc::clone(&module));
        Ok((key, module))
    }
}
