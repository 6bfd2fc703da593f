//! Where the allocator's own implementation is, so that a call into an
//! allocator entry point made from it, with no call of the program in
//! flight, is recognised as the allocator's (arenas created inside `free`,
//! heaps trimmed, caches released at thread exit).
//!
//! A separate allocator library (jemalloc, tcmalloc, mimalloc) is all
//! allocator. In glibc (libc.so or a static executable) only the malloc code
//! is (an executable with an allocator of its own gets no range: its
//! function names are the program's, `leak_malloc` beside `malloc`):
//! `strdup` or `fopen` calling malloc make the program's allocations. glibc
//! builds its malloc as one object file (malloc.c includes arena.c), whose
//! functions are contiguous; its exported functions are allocator API
//! (`malloc`, `free`, `malloc_trim`, `mallopt`...). The implementation is
//! taken as the run of exported functions around `malloc` whose names are
//! allocator API, widened to the neighbouring non-allocator exports: the
//! static functions (`_int_malloc`, `arena_get2`, `alloc_new_heap`) lie in
//! between.

use std::path::Path;

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

/// The allocator's implementation in one module, as the process sees its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InternalCode {
    /// Every executable mapping of the module.
    WholeModule(String),
    /// File offsets `[start, end)` of the module.
    FileRange { path: String, start: u64, end: u64 },
}

/// A global function symbol: name (without `@version`), ELF address, size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuncSym {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// Whether an exported function belongs to the allocator's API.
pub fn is_allocator_api(name: &str) -> bool {
    let n = name.trim_start_matches('_');
    let n = n.strip_prefix("libc_").unwrap_or(n);
    [
        "alloc", "memalign", "free", "mallopt", "mallinfo", "morecore", "arena", "tcache",
    ]
    .iter()
    .any(|k| n.contains(k))
}

/// The ELF address range `[start, end)` of the allocator's implementation,
/// from the module's global function symbols; `None` without `malloc`.
pub fn implementation_range(syms: &[FuncSym]) -> Option<(u64, u64)> {
    // One entry per address: (addr, end, api), api if any alias is.
    let mut by_addr: Vec<(u64, u64, bool)> = Vec::new();
    let mut sorted: Vec<&FuncSym> = syms.iter().collect();
    sorted.sort_by_key(|s| s.addr);
    for s in sorted {
        let end = s.addr.saturating_add(s.size);
        let api = is_allocator_api(&s.name);
        match by_addr.last_mut() {
            Some(last) if last.0 == s.addr => {
                last.1 = last.1.max(end);
                last.2 |= api;
            }
            _ => by_addr.push((s.addr, end, api)),
        }
    }
    let malloc = syms.iter().find(|s| s.name == "malloc")?.addr;
    let at = by_addr.iter().position(|g| g.0 == malloc)?;
    let mut first = at;
    while first > 0 && by_addr[first - 1].2 {
        first -= 1;
    }
    let mut last = at;
    while last + 1 < by_addr.len() && by_addr[last + 1].2 {
        last += 1;
    }
    let start = match first.checked_sub(1) {
        Some(prev) => by_addr[prev].1.min(by_addr[first].0),
        None => by_addr[first].0,
    };
    let end = match by_addr.get(last + 1) {
        Some(next) => next.0,
        None => by_addr[last].1,
    };
    Some((start, end.max(start)))
}

/// A function symbol of an executable's symbol table, for
/// [`prefixed_range`]: local (static) functions matter there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextSym {
    pub name: String,
    pub addr: u64,
    pub size: u64,
    pub local: bool,
}

/// A mangled Rust or C++ name: the program's, never a C allocator's.
fn is_mangled(name: &str) -> bool {
    name.starts_with("_R") || name.starts_with("_Z")
}

/// The ELF address range of a prefixed jemalloc linked into an executable
/// (Rust's tikv-jemallocator: `_rjem_malloc`, `_rjem_je_arena_...`): from
/// the first to the last function named with `prefix`, widened over the
/// neighbouring local C functions (jemalloc's static ones, `rtree_read`,
/// `arena_decay_impl`), up to the program's code (a mangled name or a
/// global function). jemalloc's objects are linked as one run. Without
/// `widen` (a C program, whose own static functions may be the neighbours)
/// only the run from the first to the last prefixed function is taken.
pub fn prefixed_range(syms: &[TextSym], prefix: &str, widen: bool) -> Option<(u64, u64)> {
    let mut sorted: Vec<&TextSym> = syms.iter().collect();
    sorted.sort_by_key(|s| s.addr);
    let first = sorted.iter().position(|s| s.name.starts_with(prefix))?;
    let last = sorted.iter().rposition(|s| s.name.starts_with(prefix))?;
    let theirs =
        |s: &TextSym| s.name.starts_with(prefix) || (widen && s.local && !is_mangled(&s.name));
    let mut a = first;
    while a > 0 && theirs(sorted[a - 1]) {
        a -= 1;
    }
    let mut b = last;
    while b + 1 < sorted.len() && theirs(sorted[b + 1]) {
        b += 1;
    }
    let end = match sorted.get(b + 1) {
        Some(next) => next.addr,
        None => sorted[b].addr.saturating_add(sorted[b].size),
    };
    Some((sorted[a].addr, end.max(sorted[a].addr)))
}

/// The file-offset range of a `prefix`ed jemalloc in the executable `file`
/// (see [`prefixed_range`]), or `None` without its symbols.
pub fn prefixed_file_range(
    file: &Path,
    prefix: &str,
    widen: bool,
) -> Result<Option<(u64, u64)>, InternalsError> {
    let data = std::fs::read(file).map_err(|source| InternalsError::Read {
        path: file.display().to_string(),
        source,
    })?;
    let obj = object::File::parse(&*data).map_err(|source| InternalsError::Parse {
        path: file.display().to_string(),
        source,
    })?;
    let syms: Vec<TextSym> = obj
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition())
        .filter_map(|s| {
            Some(TextSym {
                name: s.name().ok()?.to_string(),
                addr: s.address(),
                size: s.size(),
                local: !s.is_global(),
            })
        })
        .collect();
    let Some((start, end)) = prefixed_range(&syms, prefix, widen) else {
        return Ok(None);
    };
    Ok(file_offset(&obj, start).zip(file_offset(&obj, end)))
}

/// ELF address → file offset through the PT_LOAD segment holding it.
fn file_offset(obj: &object::File<'_>, vaddr: u64) -> Option<u64> {
    obj.segments().find_map(|seg| {
        let (off, size) = seg.file_range();
        let base = seg.address();
        (vaddr >= base && vaddr <= base + size).then(|| vaddr - base + off)
    })
}

/// Errors reading a module's symbols.
#[derive(Debug, thiserror::Error)]
pub enum InternalsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path} as ELF: {source}")]
    Parse {
        path: String,
        #[source]
        source: object::Error,
    },
}

/// The file-offset range of the allocator's implementation in `file`
/// (opened from heapscope), or `None` when it cannot be told.
pub fn implementation_file_range(file: &Path) -> Result<Option<(u64, u64)>, InternalsError> {
    let data = std::fs::read(file).map_err(|source| InternalsError::Read {
        path: file.display().to_string(),
        source,
    })?;
    let obj = object::File::parse(&*data).map_err(|source| InternalsError::Parse {
        path: file.display().to_string(),
        source,
    })?;
    let mut syms: Vec<FuncSym> = obj
        .dynamic_symbols()
        .chain(obj.symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.is_global())
        .filter_map(|s| {
            let name = s.name().ok()?;
            let name = name.split('@').next().unwrap_or(name);
            Some(FuncSym {
                name: name.to_string(),
                addr: s.address(),
                size: s.size(),
            })
        })
        .collect();
    syms.sort_by(|a, b| (a.addr, &a.name).cmp(&(b.addr, &b.name)));
    syms.dedup();
    let Some((start, end)) = implementation_range(&syms) else {
        return Ok(None);
    };
    Ok(file_offset(&obj, start).zip(file_offset(&obj, end)))
}

/// Whether a module is a separate allocator library (all of it allocator):
/// a shared library other than libc.
pub fn is_allocator_library(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("lib")
        && name.contains(".so")
        && !name.starts_with("libc.so")
        && !name.starts_with("libc-")
}

/// Runtime ranges of `code` in a process's memory map.
pub fn runtime_ranges(
    code: &[InternalCode],
    maps: &crate::process::maps::MemoryMap,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for c in code {
        for r in maps.regions.iter().filter(|r| r.perms.execute) {
            match c {
                InternalCode::WholeModule(p) if r.path.as_deref() == Some(p.as_str()) => {
                    out.push((r.start, r.end));
                }
                InternalCode::FileRange { path, start, end }
                    if r.path.as_deref() == Some(path.as_str()) =>
                {
                    let (fs, fe) = (r.file_offset, r.file_offset + (r.end - r.start));
                    let (s, e) = ((*start).max(fs), (*end).min(fe));
                    if s < e {
                        out.push((r.start + (s - fs), r.start + (e - fs)));
                    }
                }
                _ => {}
            }
        }
    }
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, addr: u64, size: u64) -> FuncSym {
        FuncSym {
            name: name.into(),
            addr,
            size,
        }
    }

    /// The exports around malloc in Debian's glibc 2.36 (libc.so.6 .dynsym).
    fn glibc_like() -> Vec<FuncSym> {
        vec![
            sym("timer_settime", 0x944f0, 16),
            sym("__default_morecore", 0x96030, 51),
            sym("malloc", 0x98930, 791),
            sym("__libc_malloc", 0x98930, 791),
            sym("free", 0x98ef0, 257),
            sym("cfree", 0x98ef0, 257),
            sym("realloc", 0x99130, 1247),
            sym("memalign", 0x99610, 52),
            sym("aligned_alloc", 0x99610, 52),
            sym("valloc", 0x99650, 47),
            sym("pvalloc", 0x99680, 81),
            sym("calloc", 0x996e0, 944),
            sym("malloc_trim", 0x99a90, 679),
            sym("malloc_usable_size", 0x99d40, 51),
            sym("mallinfo2", 0x99d80, 287),
            sym("mallinfo", 0x99ea0, 108),
            sym("malloc_stats", 0x99f10, 487),
            sym("mallopt", 0x9a100, 369),
            sym("posix_memalign", 0x9a280, 119),
            sym("malloc_info", 0x9a300, 54),
            sym("mcheck_check_all", 0x9a340, 1),
            sym("strdup", 0x9e990, 57),
        ]
    }

    #[test]
    fn glibc_malloc_object_spans_its_static_functions() {
        let (start, end) = implementation_range(&glibc_like()).expect("range");
        assert_eq!((start, end), (0x94500, 0x9a340));
        // Static functions of malloc.o (from libc6-dbg), all inside.
        for (name, addr) in [
            ("malloc_printerr", 0x94850),
            ("alloc_new_heap", 0x95500),
            ("arena_get2", 0x957a0),
            ("_int_free", 0x96120),
            ("sysmalloc", 0x96b20),
            ("__malloc_arena_thread_freeres", 0x99000),
        ] {
            assert!(start <= addr && addr < end, "{name}");
        }
        let strdup = 0x9e990;
        assert!(
            !(start <= strdup && strdup < end),
            "strdup is the program's"
        );
    }

    #[test]
    fn a_prefixed_jemalloc_spans_its_static_functions() {
        let t = |name: &str, addr, local| TextSym {
            name: name.into(),
            addr,
            size: 0x10,
            local,
        };
        // As linked in the rust_jemalloc fixture (tikv-jemallocator 0.6).
        let syms = vec![
            t("_start", 0x26850, false),
            t(
                "_ZN13rust_jemalloc8leak_vec17h7033b10315f416d2E",
                0x27240,
                true,
            ),
            t("main", 0x27600, false),
            t(
                "_RNvCsfLfy6EI15iL_7___rustc35___rust_no_alloc_shim_is_unstable_v2",
                0x27630,
                true,
            ),
            t("default_junk_alloc", 0x27640, true),
            t("rtree_read.constprop.0", 0x277d0, true),
            t("_rjem_je_arena_set", 0x2c260, true),
            t("_rjem_malloc", 0x2fd30, false),
            t("arena_decay_impl", 0x352f0, true),
            t("_rjem_je_witness_postfork_child", 0x71d70, true),
            t("_RINvMNtNtCsgEmfK2I1SDS_4core4cell4once", 0x71d80, true),
        ];
        assert_eq!(
            prefixed_range(&syms, "_rjem_", true),
            Some((0x27640, 0x71d80))
        );
        // Not widened: from the first prefixed function to the next after the last.
        assert_eq!(
            prefixed_range(&syms, "_rjem_", false),
            Some((0x2c260, 0x71d80))
        );
        assert_eq!(prefixed_range(&syms, "je_", true), None);
    }

    #[test]
    fn api_names() {
        for n in [
            "malloc",
            "__libc_free",
            "cfree",
            "malloc_trim",
            "mallopt",
            "__default_morecore",
            "aligned_alloc",
        ] {
            assert!(is_allocator_api(n), "{n}");
        }
        for n in ["strdup", "mcheck_check_all", "timer_settime", "fopen"] {
            assert!(!is_allocator_api(n), "{n}");
        }
    }

    #[test]
    fn no_malloc_no_range() {
        assert_eq!(implementation_range(&[sym("strdup", 0x10, 4)]), None);
        assert_eq!(
            implementation_range(&[sym("malloc", 0x10, 4)]),
            Some((0x10, 0x14))
        );
    }

    #[test]
    fn allocator_libraries() {
        assert!(is_allocator_library(
            "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
        ));
        assert!(is_allocator_library("/usr/lib/libtcmalloc_minimal.so.4"));
        assert!(!is_allocator_library("/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(!is_allocator_library("/usr/bin/server"));
    }

    #[test]
    fn runtime_ranges_follow_the_mappings() {
        let maps = crate::process::maps::MemoryMap::parse(
            "7f0000028000-7f00001bd000 r-xp 00028000 08:01 1 /lib/libc.so.6\n\
             7f0000400000-7f0000500000 r-xp 00010000 08:01 2 /lib/libjemalloc.so.2\n",
        )
        .expect("maps");
        let code = vec![
            InternalCode::FileRange {
                path: "/lib/libc.so.6".into(),
                start: 0x94500,
                end: 0x9a340,
            },
            InternalCode::WholeModule("/lib/libjemalloc.so.2".into()),
        ];
        assert_eq!(
            runtime_ranges(&code, &maps),
            vec![
                (0x7f0000094500, 0x7f000009a340),
                (0x7f0000400000, 0x7f0000500000)
            ]
        );
    }

    #[test]
    fn system_libc_has_an_implementation_range() {
        let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
        if !libc.exists() {
            crate::testing::skip(&format!("{} not present", libc.display()));
            return;
        }
        let (start, end) = implementation_file_range(libc)
            .expect("read libc")
            .expect("libc has malloc");
        let func = |n: &str| {
            crate::symbolize::find_function(libc, n)
                .expect("read libc")
                .expect("defined")
                .file_offset
        };
        for n in ["malloc", "free", "calloc", "realloc", "malloc_trim"] {
            let at = func(n);
            assert!(
                start <= at && at < end,
                "{n} at {at:#x} in {start:#x}..{end:#x}"
            );
        }
        for n in ["strdup", "fopen", "qsort"] {
            let at = func(n);
            assert!(!(start <= at && at < end), "{n} is not the allocator");
        }
        assert!(end - start < 0x20000, "malloc's code, not all of libc");
    }
}
