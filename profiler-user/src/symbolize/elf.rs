//! The parts of an ELF file the symbolizer needs, extracted once into owned
//! tables: PT_LOAD segments (file offset ↔ virtual address) and function
//! symbols from `.symtab` and `.dynsym`.
//!
//! Files are read through `object::ReadCache`, which pulls in only the byte
//! ranges that are parsed; debug sections of large binaries are never loaded.

use std::fs::File;
use std::path::Path;

use object::read::ReadCache;
use object::{
    Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable, SectionKind, SymbolKind,
};

use super::SymbolizeError;

/// One PT_LOAD program header.
#[derive(Clone, Copy, Debug)]
struct Load {
    offset: u64,
    file_size: u64,
    vaddr: u64,
}

/// A function symbol with its ELF virtual address.
#[derive(Clone, Debug)]
pub(crate) struct Sym {
    pub(crate) addr: u64,
    pub(crate) size: u64,
    /// Raw (mangled) name with any `@VERSION` / `@@VERSION` suffix removed.
    pub(crate) name: Box<str>,
    /// Index of the section the symbol is defined in.
    section: usize,
    global: bool,
}

/// Function symbols of one table, sorted by address.
#[derive(Debug, Default)]
pub(crate) struct SymbolTable {
    syms: Vec<Sym>,
}

/// How far back `lookup` walks past symbols that end before the address:
/// enough to step over small nested or aliased symbols, bounded so a lookup
/// in a gap stays cheap.
const MAX_BACKTRACK: usize = 64;

impl SymbolTable {
    fn build(syms: Vec<Sym>) -> SymbolTable {
        let mut syms = syms;
        // Among aliases at one address, the preferred one (global, sized)
        // sorts last because `lookup` walks backwards and takes the first hit.
        syms.sort_by(|a, b| {
            (a.addr, a.size > 0, a.global, &a.name).cmp(&(b.addr, b.size > 0, b.global, &b.name))
        });
        SymbolTable { syms }
    }

    /// The function containing `vaddr`: a sized symbol that covers it, or
    /// else the nearest preceding zero-sized symbol in the same section.
    fn lookup(&self, vaddr: u64, sections: &[(u64, u64)]) -> Option<&Sym> {
        let idx = self.syms.partition_point(|s| s.addr <= vaddr);
        let nearest = self.syms.get(idx.checked_sub(1)?)?;
        for sym in self.syms[..idx].iter().rev().take(MAX_BACKTRACK) {
            if sym.size > 0 && vaddr - sym.addr < sym.size {
                return Some(sym);
            }
        }
        if nearest.size == 0 {
            let (start, end) = sections.get(nearest.section).copied()?;
            if start <= vaddr && vaddr < end {
                return Some(nearest);
            }
        }
        None
    }

    /// First defined symbol named `name`, preferring global ones.
    fn find(&self, name: &str) -> Option<&Sym> {
        let mut matches = self.syms.iter().filter(|s| &*s.name == name);
        let first = matches.next()?;
        if first.global {
            return Some(first);
        }
        Some(matches.find(|s| s.global).unwrap_or(first))
    }
}

/// A parsed ELF module.
#[derive(Debug)]
pub(crate) struct ElfModule {
    loads: Vec<Load>,
    /// Address range of each section, by section index (empty for sections
    /// that are not code), used to bound zero-sized symbols.
    sections: Vec<(u64, u64)>,
    symtab: SymbolTable,
    dynsym: SymbolTable,
}

impl ElfModule {
    /// Parses `path` and extracts segments and function symbols.
    pub(crate) fn open(path: &Path) -> Result<ElfModule, SymbolizeError> {
        let file = File::open(path).map_err(|source| SymbolizeError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let cache = ReadCache::new(file);
        let obj = object::File::parse(&cache).map_err(|source| SymbolizeError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::from_object(&obj))
    }

    /// Extracts segments and function symbols from a parsed object.
    pub(crate) fn from_object<'data, O: Object<'data>>(obj: &O) -> ElfModule {
        // `segments()` yields only PT_LOAD headers for ELF.
        let loads = obj
            .segments()
            .map(|seg| {
                let (offset, file_size) = seg.file_range();
                Load {
                    offset,
                    file_size,
                    vaddr: seg.address(),
                }
            })
            .collect();
        let mut sections = Vec::new();
        for section in obj.sections() {
            let idx = section.index().0;
            if sections.len() <= idx {
                sections.resize(idx + 1, (0, 0));
            }
            if section.kind() == SectionKind::Text {
                let start = section.address();
                sections[idx] = (start, start.saturating_add(section.size()));
            }
        }
        let symtab = SymbolTable::build(collect_functions(obj.symbols(), &sections));
        let dynsym = SymbolTable::build(collect_functions(obj.dynamic_symbols(), &sections));
        ElfModule {
            loads,
            sections,
            symtab,
            dynsym,
        }
    }

    /// Converts a file offset to an ELF virtual address through the PT_LOAD
    /// segment whose file range contains it.
    pub(crate) fn offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|l| offset >= l.offset && offset - l.offset < l.file_size)
            .map(|l| offset - l.offset + l.vaddr)
    }

    /// Converts an ELF virtual address to a file offset (the inverse of
    /// [`Self::offset_to_vaddr`]); `None` for addresses not backed by file bytes.
    pub(crate) fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        self.loads
            .iter()
            .find(|l| vaddr >= l.vaddr && vaddr - l.vaddr < l.file_size)
            .map(|l| vaddr - l.vaddr + l.offset)
    }

    /// The function containing `vaddr` according to `.symtab`.
    pub(crate) fn symtab_function_at(&self, vaddr: u64) -> Option<&Sym> {
        self.symtab.lookup(vaddr, &self.sections)
    }

    /// The function containing `vaddr` according to `.dynsym`.
    pub(crate) fn dynsym_function_at(&self, vaddr: u64) -> Option<&Sym> {
        self.dynsym.lookup(vaddr, &self.sections)
    }

    /// True when the module has no `.symtab` functions (stripped).
    pub(crate) fn symtab_is_empty(&self) -> bool {
        self.symtab.syms.is_empty()
    }

    /// A defined function named `name`, from `.symtab` first, then `.dynsym`.
    pub(crate) fn find_function(&self, name: &str) -> Option<&Sym> {
        self.symtab.find(name).or_else(|| self.dynsym.find(name))
    }
}

/// Strips a symbol version (`malloc@@GLIBC_2.2.5`, `memcpy@GLIBC_2.2.5`):
/// `.symtab` of a shared library can carry it inside the name.
pub(crate) fn strip_version(name: &str) -> &str {
    match name.find('@') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    }
}

fn collect_functions<'data, S, I>(symbols: I, sections: &[(u64, u64)]) -> Vec<Sym>
where
    S: ObjectSymbol<'data>,
    I: Iterator<Item = S>,
{
    symbols
        .filter_map(|sym| {
            // Only symbols defined in a section: undefined imports carry no
            // address, and absolute symbols are not code.
            let section = sym.section_index()?.0;
            let in_code = sections.get(section).is_some_and(|&(s, e)| e > s);
            let is_function = match sym.kind() {
                // STT_FUNC and STT_GNU_IFUNC.
                SymbolKind::Text => true,
                // Hand-written assembly often leaves labels untyped.
                SymbolKind::Unknown => in_code && sym.size() > 0,
                _ => false,
            };
            if !is_function {
                return None;
            }
            let name = strip_version(sym.name().ok()?);
            if name.is_empty() {
                return None;
            }
            Some(Sym {
                addr: sym.address(),
                size: sym.size(),
                name: name.into(),
                section,
                global: sym.is_global(),
            })
        })
        .collect()
}

/// The jump-slot relocations of a dynamic module: GOT slot address → the
/// symbol it is bound to (what each PLT stub calls).
pub(crate) fn jump_slots(
    path: &Path,
) -> Result<std::collections::HashMap<u64, String>, SymbolizeError> {
    let file = File::open(path).map_err(|source| SymbolizeError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|source| SymbolizeError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = std::collections::HashMap::new();
    let (Some(relocs), Some(dynsyms)) = (obj.dynamic_relocations(), obj.dynamic_symbol_table())
    else {
        return Ok(out);
    };
    for (slot, r) in relocs {
        if let object::RelocationTarget::Symbol(idx) = r.target() {
            if let Some(name) = dynsyms
                .symbol_by_index(idx)
                .ok()
                .and_then(|s| s.name().ok())
            {
                out.insert(slot, strip_version(name).to_string());
            }
        }
    }
    Ok(out)
}

/// Reads up to `len` bytes at `offset` of `path`, stopping at end of file.
pub(crate) fn read_bytes(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, SymbolizeError> {
    use std::io::{Read, Seek, SeekFrom};
    let io_err = |source| SymbolizeError::Open {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64)
        .read_to_end(&mut buf)
        .map_err(io_err)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(addr: u64, size: u64, name: &str, global: bool) -> Sym {
        Sym {
            addr,
            size,
            name: name.into(),
            section: 1,
            global,
        }
    }

    #[test]
    fn strip_version_suffixes() {
        assert_eq!(strip_version("malloc@@GLIBC_2.2.5"), "malloc");
        assert_eq!(strip_version("memcpy@GLIBC_2.2.5"), "memcpy");
        assert_eq!(strip_version("plain"), "plain");
        assert_eq!(strip_version("@odd"), "@odd");
    }

    #[test]
    fn lookup_prefers_covering_sized_symbol() {
        let sections = vec![(0, 0), (0x1000, 0x2000)];
        let t = SymbolTable::build(vec![
            sym(0x1000, 0x100, "outer", true),
            sym(0x1010, 0x10, "inner", false),
            sym(0x1200, 0, "label", false),
            sym(0x1000, 0x100, "outer_alias_local", false),
        ]);
        assert_eq!(t.lookup(0x1015, &sections).map(|s| &*s.name), Some("inner"));
        // Past `inner`'s end but still inside `outer`.
        assert_eq!(t.lookup(0x1050, &sections).map(|s| &*s.name), Some("outer"));
        // Gap after `outer`: the nearest symbol is sized and does not cover it.
        assert!(t.lookup(0x1150, &sections).is_none());
        // Zero-sized label: nearest preceding, bounded by its section.
        assert_eq!(t.lookup(0x1300, &sections).map(|s| &*s.name), Some("label"));
        assert!(t.lookup(0x2300, &sections).is_none());
        assert!(t.lookup(0x10, &sections).is_none());
    }

    #[test]
    fn find_prefers_global() {
        let t = SymbolTable::build(vec![sym(0x1000, 4, "f", false), sym(0x2000, 4, "f", true)]);
        assert_eq!(t.find("f").map(|s| s.addr), Some(0x2000));
        assert!(t.find("g").is_none());
    }
}
