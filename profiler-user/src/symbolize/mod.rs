//! Symbolization: `(module, file offset)` → frames with function names,
//! `file:line` and inlined functions. A pure library: it reads ELF and DWARF
//! files and needs no privileges (callers hand it paths they can open; see
//! [`crate::process::modules`] for live processes).
//!
//! Per module, in order: its own DWARF, or DWARF from a separate debug file
//! (found by build-id under each debug directory, then by `.gnu_debuglink`;
//! see [`debuginfo`]); then `.symtab` (the module's, then the debug file's);
//! then `.dynsym`. Compressed debug sections (zlib, zstd, `.zdebug`) are read.
//!
//! Lookups never fail outward: anything that cannot be resolved becomes
//! [`Symbolized::Unknown`] with a reason, rendered `[module+0xoffset]`, so
//! the frame still shows up in stacks.
//!
//! Parsed modules are cached by build-id (or device, inode, size and mtime
//! without one), so a library shared by many processes, or seen again after
//! a refresh, is parsed once.

mod cache;
mod debuginfo;
mod dwarf;
mod dwarf_sections;
mod dwarf_units;
mod elf;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::addr::FileOffset;
use crate::intern::Interner;
use crate::profile::{Frame, ModuleId};

use cache::ModuleCache;
use elf::ElfModule;

/// How many bytes of a function's start [`find_function`] returns: enough to
/// decode the first few prologue instructions when choosing a probe offset.
pub const FIRST_BYTES: usize = 32;

/// Errors of the operations that must report failure (finding a function to
/// attach to). Symbolization itself degrades to [`Frame::Unknown`] instead.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    #[error("cannot read {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path} as an object file")]
    Parse {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
}

/// Where a defined function lives in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionLocation {
    /// File offset of the function's first instruction (what uprobes attach by).
    pub file_offset: u64,
    /// Symbol size in bytes (0 when the symbol table does not say).
    pub size: u64,
    /// Up to [`FIRST_BYTES`] bytes of code from the function's start, fewer
    /// when the function (or the file) is shorter.
    pub first_bytes: Vec<u8>,
}

/// How much of a function [`Functions::code`] reads: enough for a probe
/// placement to check the whole of an allocator's fast path.
pub const MAX_CODE_BYTES: usize = 4096;

/// The defined functions of one module, parsed once for many lookups.
pub struct Functions {
    path: PathBuf,
    module: ElfModule,
    /// GOT slot address → the symbol its jump-slot relocation binds
    /// (how a PLT stub's target is named).
    got: std::collections::HashMap<u64, String>,
}

impl Functions {
    /// Parses the symbol tables of `path`.
    pub fn open(path: &Path) -> Result<Functions, SymbolizeError> {
        Ok(Functions {
            path: path.to_path_buf(),
            module: ElfModule::open(path)?,
            got: elf::jump_slots(path).unwrap_or_default(),
        })
    }

    /// The symbol a PLT stub at `vaddr` jumps to (`free` for `free@plt`):
    /// the stub is `[endbr64;] [bnd] jmp *GOT(%rip)`, and the GOT slot's
    /// relocation names the symbol.
    pub fn plt_target(&self, vaddr: u64) -> Option<&str> {
        let offset = self.module.vaddr_to_offset(vaddr)?;
        let stub = elf::read_bytes(&self.path, offset, 16).ok()?;
        let mut at = 0usize;
        if stub.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
            at += 4;
        }
        if stub.get(at) == Some(&0xf2) {
            at += 1; // bnd
        }
        if stub.get(at..at + 2) != Some(&[0xff, 0x25]) {
            return None;
        }
        let disp = i32::from_le_bytes(stub.get(at + 2..at + 6)?.try_into().ok()?);
        let next = vaddr + at as u64 + 6;
        let slot = next.wrapping_add_signed(i64::from(disp));
        self.got.get(&slot).map(String::as_str)
    }

    /// True when the module defines a function named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.module.find_function(name).is_some()
    }

    /// The ELF virtual address and file offset of the function `name`.
    pub fn find(&self, name: &str) -> Option<(u64, FunctionLocation)> {
        let sym = self.module.find_function(name)?;
        let file_offset = self.module.vaddr_to_offset(sym.addr)?;
        Some((
            sym.addr,
            FunctionLocation {
                file_offset,
                size: sym.size,
                first_bytes: Vec::new(),
            },
        ))
    }

    /// The function's code from its start: all of it up to
    /// [`MAX_CODE_BYTES`] (`true`), or [`MAX_CODE_BYTES`] when the symbol
    /// has no size or is longer (`false`).
    pub fn code(&self, loc: &FunctionLocation) -> Result<(Vec<u8>, bool), SymbolizeError> {
        let whole = loc.size > 0 && loc.size <= MAX_CODE_BYTES as u64;
        let len = if whole {
            loc.size as usize
        } else {
            MAX_CODE_BYTES
        };
        Ok((elf::read_bytes(&self.path, loc.file_offset, len)?, whole))
    }

    /// True when a function symbol covers `vaddr` (PLT stubs have none).
    pub fn covers(&self, vaddr: u64) -> bool {
        self.module.symtab_function_at(vaddr).is_some()
            || self.module.dynsym_function_at(vaddr).is_some()
    }
}

/// Finds a *defined* function symbol named `name` (searching `.symtab`, then
/// `.dynsym`) and returns its file offset and first bytes. Symbol versions
/// (`malloc@@GLIBC_2.2.5`) are ignored when comparing names.
pub fn find_function(file: &Path, name: &str) -> Result<Option<FunctionLocation>, SymbolizeError> {
    let module = ElfModule::open(file)?;
    let Some(sym) = module.find_function(name) else {
        return Ok(None);
    };
    let Some(file_offset) = module.vaddr_to_offset(sym.addr) else {
        return Ok(None);
    };
    let len = if sym.size > 0 {
        usize::try_from(sym.size).map_or(FIRST_BYTES, |s| s.min(FIRST_BYTES))
    } else {
        FIRST_BYTES
    };
    let first_bytes = elf::read_bytes(file, file_offset, len)?;
    Ok(Some(FunctionLocation {
        file_offset,
        size: sym.size,
        first_bytes,
    }))
}

/// Where the debug directories are when no other is configured.
pub const DEFAULT_DEBUG_DIR: &str = "/usr/lib/debug";

/// How to read one module (an executable or shared library of a process).
#[derive(Clone, Debug)]
pub struct ModuleSource {
    /// Name shown in frames: the file name (`libc.so.6`).
    pub name: String,
    /// Where heapscope opens the file: `/proc/self/fd/N` of a captured
    /// handle, `/proc/PID/root/<path>`, or a plain path.
    pub open_path: PathBuf,
    /// The path as the process sees it (the maps column), used to find
    /// `.gnu_debuglink` files next to the module.
    pub path: PathBuf,
    /// The process's root directory (`/proc/PID/root`): debug files are
    /// looked up inside it first (containers), then in heapscope's own root.
    pub root: Option<PathBuf>,
    /// Keeps a captured file open (and `open_path` valid) while this lives.
    pub handle: Option<Arc<File>>,
}

impl ModuleSource {
    /// A module read from `path` directly (tests, tools, files on disk).
    pub fn from_path(path: impl Into<PathBuf>) -> ModuleSource {
        let path = path.into();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        ModuleSource {
            name,
            open_path: path.clone(),
            path,
            root: None,
            handle: None,
        }
    }

    /// The same source shown under another module name.
    pub fn named(mut self, name: impl Into<String>) -> ModuleSource {
        self.name = name.into();
        self
    }
}

/// Whether an address is where execution is, or where it will return to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddrKind {
    /// An instruction pointer: the instruction at the address is executing.
    Instruction,
    /// A return address from a stack walk: the call is the instruction
    /// before it, so `address - 1` is looked up (a call ending a function
    /// would otherwise resolve to the next function, or the wrong line).
    Return,
}

/// An address inside one module: a file offset and its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleAddr {
    pub offset: FileOffset,
    pub kind: AddrKind,
}

impl ModuleAddr {
    /// An instruction pointer at `offset`.
    pub fn ip(offset: u64) -> ModuleAddr {
        ModuleAddr {
            offset: FileOffset(offset),
            kind: AddrKind::Instruction,
        }
    }

    /// A return address at `offset`.
    pub fn ret(offset: u64) -> ModuleAddr {
        ModuleAddr {
            offset: FileOffset(offset),
            kind: AddrKind::Return,
        }
    }
}

/// Why an address has no function name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnknownReason {
    /// No mapping of the process covers the address.
    Unmapped,
    /// The mapping is not a file (`[vdso]`, anonymous memory, JIT code).
    NotFileBacked,
    /// The module file could not be opened or read.
    Unreadable,
    /// The module file is not an object file heapscope can parse.
    NotObject,
    /// The offset is outside every loadable segment (or a return address of 0).
    OutsideSegments,
    /// No DWARF function and no symbol covers the address.
    NoSymbol,
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnknownReason::Unmapped => "address not mapped",
            UnknownReason::NotFileBacked => "mapping not backed by a file",
            UnknownReason::Unreadable => "module file unreadable",
            UnknownReason::NotObject => "module file not an object file",
            UnknownReason::OutsideSegments => "offset outside the loadable segments",
            UnknownReason::NoSymbol => "no symbol covers the address",
        })
    }
}

/// The result of symbolizing one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Symbolized {
    /// Root-most first: the function containing the address, then each
    /// function inlined into it, the innermost last. Never empty.
    Frames(Vec<Frame>),
    /// Unresolved; `offset` is the address's file offset as given (not the
    /// `- 1` looked up for return addresses).
    Unknown {
        module: Arc<str>,
        offset: u64,
        reason: UnknownReason,
    },
}

impl Symbolized {
    /// The frames to put in a stack: `Frame::Unknown` for a failed lookup.
    pub fn into_frames(self) -> Vec<Frame> {
        match self {
            Symbolized::Frames(f) => f,
            Symbolized::Unknown { module, offset, .. } => vec![Frame::unknown(module, offset)],
        }
    }

    /// The reason of a failed lookup.
    pub fn reason(&self) -> Option<UnknownReason> {
        match self {
            Symbolized::Frames(_) => None,
            Symbolized::Unknown { reason, .. } => Some(*reason),
        }
    }
}

/// Configuration of a [`Symbolizer`].
#[derive(Clone, Debug)]
pub struct SymbolizerOptions {
    /// Directories holding separate debug files, searched in order:
    /// `<dir>/.build-id/xx/rest.debug` and `<dir>/<module dir>/<debuglink>`.
    /// Default: [`DEFAULT_DEBUG_DIR`].
    pub debug_dirs: Vec<PathBuf>,
    /// Directories laid out as debuginfod client caches
    /// (`<dir>/<build-id hex>/debuginfo`), searched after `debug_dirs`; see
    /// [`crate::debuginfod`], which fills them.
    pub debuginfod_caches: Vec<PathBuf>,
}

impl Default for SymbolizerOptions {
    fn default() -> Self {
        SymbolizerOptions {
            debug_dirs: vec![PathBuf::from(DEFAULT_DEBUG_DIR)],
            debuginfod_caches: Vec::new(),
        }
    }
}

/// Resolves module addresses to frames, caching parsed modules. Not for the
/// event path: the first address of a module parses it (and its DWARF).
#[derive(Default)]
pub struct Symbolizer {
    opts: SymbolizerOptions,
    cache: ModuleCache,
    /// Frame strings and module identities, shared by every frame this
    /// symbolizer makes (and so by every site holding them).
    names: Interner,
}

impl Symbolizer {
    /// A symbolizer with the default debug directory.
    pub fn new() -> Symbolizer {
        Symbolizer::default()
    }

    /// A symbolizer with explicit options (tests point `debug_dirs` at a
    /// temporary directory).
    pub fn with_options(opts: SymbolizerOptions) -> Symbolizer {
        Symbolizer {
            opts,
            cache: ModuleCache::default(),
            names: Interner::new(),
        }
    }

    /// Symbolizes one address of `module`.
    pub fn symbolize(&mut self, module: &ModuleSource, addr: ModuleAddr) -> Symbolized {
        self.symbolize_many(module, &[addr])
            .pop()
            .unwrap_or_else(|| Symbolized::Unknown {
                module: self.names.str(&module.name),
                offset: addr.offset.0,
                reason: UnknownReason::NoSymbol,
            })
    }

    /// Symbolizes a batch of addresses of one module, in order: the module is
    /// found in the cache (or parsed) once for the whole batch.
    pub fn symbolize_many(
        &mut self,
        module: &ModuleSource,
        addrs: &[ModuleAddr],
    ) -> Vec<Symbolized> {
        let name = self.names.str(&module.name);
        let unknown = |addr: &ModuleAddr, reason| Symbolized::Unknown {
            module: Arc::clone(&name),
            offset: addr.offset.0,
            reason,
        };
        let loaded = match self.cache.get(module, &self.opts) {
            Ok(m) => m,
            Err(reason) => return addrs.iter().map(|a| unknown(a, reason)).collect(),
        };
        let out = addrs
            .iter()
            .map(
                |addr| match loaded.lookup(&module.name, *addr, &mut self.names) {
                    Ok(frames) => Symbolized::Frames(frames),
                    Err(reason) => unknown(addr, reason),
                },
            )
            .collect();
        // The debug-section pages this batch read leave the resident set.
        loaded.release_pages();
        out
    }

    /// The shared copy of a frame string (see [`Interner`]).
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        self.names.str(s)
    }

    /// The shared copy of a module identity (see [`Interner`]).
    pub fn intern_module(&mut self, m: ModuleId) -> Arc<ModuleId> {
        self.names.module(m)
    }

    /// Parsed DWARF units dropped to keep each module's cache within its
    /// bytes (re-parsed when needed: slower, never wrong).
    pub fn dwarf_unit_evictions(&self) -> u64 {
        self.cache.dwarf_unit_evictions()
    }

    /// Number of modules currently cached (parsed or known-unparsable).
    pub fn cached_modules(&self) -> usize {
        self.cache.len()
    }

    /// The GNU build-id of `module` (empty without one, or when the file
    /// cannot be read); parses the module when not cached yet.
    pub fn build_id(&mut self, module: &ModuleSource) -> Vec<u8> {
        self.cache
            .get(module, &self.opts)
            .map(|m| m.build_id.clone())
            .unwrap_or_default()
    }

    /// The separate debug file used for `module`, if one was found (for
    /// tests and diagnostics; parses the module when not cached yet).
    pub fn debug_file(&mut self, module: &ModuleSource) -> Option<PathBuf> {
        let loaded = self.cache.get(module, &self.opts).ok()?;
        loaded.debug_file.clone()
    }
}

/// Demangles Rust (legacy and v0, without the hash suffix) and Itanium C++
/// names; anything else (C names, `foo.cold`) is returned unchanged.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(text) = sym.demangle() {
                return text;
            }
        }
    }
    name.to_string()
}

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod tests;
