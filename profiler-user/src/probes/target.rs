//! Finding the allocator a process uses, every entry point it offers the
//! program, and where to probe each.
//!
//! Modules are searched in symbol-lookup order (the executable, preloaded and
//! linked libraries, libc last). Each row of `profiler_common::ENTRY_POINTS`
//! is looked up by its family: a C standard name in the first module that
//! defines it (the one the program's calls reach); C++ `operator new`/
//! `delete` where the allocator defines them; jemalloc's, tcmalloc's and
//! mimalloc's own APIs (jemalloc's also `je_`/`_rjem_`-prefixed) wherever
//! they are defined. Each function's probes go where [`prologue::place`]
//! says; a free-like function that only jumps on to another entry point is
//! left to that one, so a call counts once.

use std::path::{Path, PathBuf};

use profiler_common::entry::JEMALLOC_PREFIXES;
use profiler_common::{AllocKind, EntryModule, EntrySpec, ENTRY_POINTS};

use super::custom::CustomAllocator;
use super::identify::{identify, Implementation};
use super::internals::InternalCode;
use super::ProbeError;
use crate::process::maps::MemoryMap;
use crate::process::procfs;
use crate::symbolize::Functions;
use builder::Builder;

/// One place to attach: a function of a module, at a file offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachPoint {
    /// What the function does and where its arguments are (a row of
    /// `profiler_common::ENTRY_POINTS`, with argument positions as they are
    /// at the probed instruction), passed to the eBPF side as the attach cookie.
    pub spec: EntrySpec,
    /// The symbol probed, for messages.
    pub symbol: String,
    /// The path to open (through `/proc/PID/root` for a running process).
    pub file: PathBuf,
    /// File offset of the return probe: the function's start, or the first
    /// emulated instruction before the stack moves (`[rsp]` is still the
    /// return address there).
    pub func_offset: u64,
    /// File offset for the entry probe (the same place, see `prologue`).
    pub entry_offset: u64,
    /// Why the probe is on an instruction the kernel single-steps (~10× the
    /// cost of an emulated one), when it is.
    pub stepped: Option<String>,
}

/// How the allocator got into the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Linkage {
    /// Linked into the executable (static binaries, Rust global allocators).
    Executable,
    /// Named in `LD_PRELOAD`.
    Preloaded,
    /// A shared library the program links.
    Linked,
    /// The C library itself.
    Libc,
}

impl Linkage {
    fn describe(self) -> &'static str {
        match self {
            Linkage::Executable => "in the executable",
            Linkage::Preloaded => "preloaded",
            Linkage::Linked => "linked",
            Linkage::Libc => "the C library's",
        }
    }
}

/// One allocator found in the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundAllocator {
    pub implementation: Implementation,
    pub version: Option<String>,
    pub linkage: Linkage,
    /// The module, as the process sees its path.
    pub module: String,
    /// jemalloc's symbol prefix (`je_`, `_rjem_`), empty otherwise.
    pub prefix: &'static str,
}

impl FoundAllocator {
    /// `jemalloc 5.3.0, preloaded`.
    pub fn describe(&self) -> String {
        let name = match &self.version {
            Some(v) => format!("{} {v}", self.implementation.name()),
            None => self.implementation.name().to_string(),
        };
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!(" ({}-prefixed)", self.prefix)
        };
        format!("{name}{prefix}, {}", self.linkage.describe())
    }
}

/// What heapscope will probe in one process.
#[derive(Clone, Debug)]
pub struct AllocatorTarget {
    /// The module that defines malloc, as the process sees the path.
    pub allocator: String,
    /// The allocators found: the one serving malloc first.
    pub found: Vec<FoundAllocator>,
    pub points: Vec<AttachPoint>,
    /// Standard entry points no module defines.
    pub missing: Vec<AllocKind>,
    /// Paths (as the process sees them) of the probed modules: calls made from
    /// their code while a program call is in flight are the allocator's own.
    pub modules: Vec<String>,
    /// The allocator's own implementation: calls made from it are the
    /// allocator's even when no program call is in flight.
    pub internal: Vec<InternalCode>,
    /// What heapscope cannot see: an allocator it does not know, entry points
    /// it will not count. Said on the first lines and in the report.
    pub unseen: Vec<String>,
    /// The custom pool allocator's entry points the user named
    /// (`pkg_malloc(size=arg1), pkg_free(ptr=arg1)`), empty without one.
    pub custom: String,
    /// `_exit` (where `exit` and a return from `main` end): the file and
    /// offset of the first module that defines it, where a `run` command is
    /// held at its exit (see `probes::exit_hold`).
    pub exit_point: Option<(PathBuf, u64)>,
}

impl AllocatorTarget {
    /// `allocator: jemalloc 5.3.0, preloaded; 26 entry points`.
    pub fn headline(&self) -> String {
        let names: Vec<String> = self.found.iter().map(FoundAllocator::describe).collect();
        let pool = if self.custom.is_empty() {
            String::new()
        } else {
            format!(" + custom pool {}", self.custom)
        };
        format!(
            "allocator: {}{pool}; {} entry points",
            if names.is_empty() {
                "none found".to_string()
            } else {
                names.join(" + ")
            },
            self.points.len()
        )
    }

    /// True when glibc serves malloc (its arenas can be read).
    pub fn is_glibc(&self) -> bool {
        self.found
            .first()
            .is_some_and(|f| f.implementation == Implementation::Glibc)
    }

    /// One line per probe the kernel must single-step, with why.
    pub fn stepped(&self) -> Vec<String> {
        self.points
            .iter()
            .filter_map(|p| Some(format!("{} ({})", p.symbol, p.stepped.as_ref()?)))
            .collect()
    }
}

/// A path through which `path`, mapped by `pid`, opens from here: inside
/// the process's root; else the mapped file itself through
/// `/proc/PID/map_files` (a process chroot'ed inside a private mount
/// namespace maps files that neither the host's paths nor its root reach);
/// else the path as given.
fn openable(pid: u32, maps: &MemoryMap, path: &str) -> PathBuf {
    let dir = procfs::dir(pid);
    let rooted = PathBuf::from(format!("{}/root{path}", dir.display()));
    if rooted.exists() {
        return rooted;
    }
    let mapped = maps
        .regions
        .iter()
        .filter(|r| r.path.as_deref() == Some(path))
        .map(|r| dir.join(format!("map_files/{:x}-{:x}", r.start, r.end)))
        .find(|p| std::fs::metadata(p).is_ok());
    mapped.unwrap_or_else(|| PathBuf::from(path))
}

fn is_libc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Orders candidate modules the way symbol lookup finds malloc: the executable
/// first, then preloaded/linked allocators (jemalloc, tcmalloc), libc last.
fn candidate_order(exe: Option<&str>, files: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(e) = exe {
        if files.iter().any(|f| f == e) {
            out.push(e.to_string());
        }
    }
    out.extend(
        files
            .iter()
            .filter(|f| Some(f.as_str()) != exe && !is_libc(f))
            .cloned(),
    );
    out.extend(
        files
            .iter()
            .filter(|f| Some(f.as_str()) != exe && is_libc(f))
            .cloned(),
    );
    out
}

/// A module to search: its path as the process sees it, where we open it,
/// and how it got there.
struct Candidate {
    path: String,
    open: PathBuf,
    linkage: Linkage,
}

/// `libtcmalloc_minimal.so.4.5.10` → `libtcmalloc_minimal.so`: a preload
/// names the soname link, the memory map the file it points to.
fn so_stem(path: &str) -> &str {
    let name = file_name(path);
    name.find(".so").map_or(name, |i| &name[..i + 3])
}

fn linkage(path: &str, exe: Option<&str>, preload: &str) -> Linkage {
    if Some(path) == exe {
        Linkage::Executable
    } else if is_libc(path) {
        Linkage::Libc
    } else if preload
        .split([' ', ':'])
        .any(|p| !p.is_empty() && (p == path || so_stem(p) == so_stem(path)))
    {
        Linkage::Preloaded
    } else {
        Linkage::Linked
    }
}

/// The memory map of `pid` once its program is mapped: a process caught
/// in the middle of `execve` (its parent resumes, its new address space is
/// in place, the program's segments are not mapped yet) lists no file at
/// all for a moment. Read again for up to ~0.2 s, then taken as it is.
fn read_settled(pid: u32) -> Result<MemoryMap, crate::process::maps::MapsError> {
    let mut maps = MemoryMap::read(pid)?;
    for _ in 0..20 {
        if !maps.executable_files().is_empty() || !procfs::alive(pid) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        maps = MemoryMap::read(pid)?;
    }
    Ok(maps)
}

/// Finds the allocators of a running process from its memory map.
pub fn discover(
    pid: u32,
    skip_prologue: bool,
    custom: &CustomAllocator,
) -> Result<AllocatorTarget, ProbeError> {
    let maps = read_settled(pid).map_err(|e| match e {
        crate::process::maps::MapsError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            ProbeError::MapsUnreadable { pid }
        }
        e => ProbeError::Maps {
            pid,
            reason: e.to_string(),
        },
    })?;
    let exe = std::fs::read_link(procfs::dir(pid).join("exe"))
        .ok()
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        });
    let files: Vec<String> = maps
        .executable_files()
        .into_iter()
        .map(String::from)
        .collect();
    let preload = std::fs::read(procfs::dir(pid).join("environ"))
        .ok()
        .and_then(|env| {
            env.split(|b| *b == 0)
                .find_map(|kv| kv.strip_prefix(b"LD_PRELOAD="))
                .map(|v| String::from_utf8_lossy(v).to_string())
        })
        .unwrap_or_default();
    let candidates: Vec<Candidate> = candidate_order(exe.as_deref(), &files)
        .into_iter()
        .map(|path| Candidate {
            open: openable(pid, &maps, &path),
            linkage: linkage(&path, exe.as_deref(), &preload),
            path,
        })
        .collect();
    plan(pid, &candidates, skip_prologue, custom)
}

/// Finds the allocators a command will use once it runs: the executable,
/// what `LD_PRELOAD` names, the libraries it links (as its loader lists
/// them), and the libc this system loads.
pub fn for_command(
    exe: &Path,
    skip_prologue: bool,
    custom: &CustomAllocator,
) -> Result<AllocatorTarget, ProbeError> {
    let me = std::process::id();
    let own = MemoryMap::read(me).map_err(|e| ProbeError::Maps {
        pid: me,
        reason: e.to_string(),
    })?;
    // The process's memory map names files by their resolved paths: a
    // command run through a symlink (rustup's toolchain links) must be
    // known by that path, or its allocator's code ranges match nothing.
    let as_mapped = |p: &Path| {
        std::fs::canonicalize(p).map_or_else(
            |_| p.to_string_lossy().to_string(),
            |c| c.to_string_lossy().to_string(),
        )
    };
    let mut candidates = vec![Candidate {
        path: as_mapped(exe),
        open: exe.to_path_buf(),
        linkage: Linkage::Executable,
    }];
    let preload = std::env::var("LD_PRELOAD").unwrap_or_default();
    for p in preload.split([' ', ':']).filter(|p| !p.is_empty()) {
        candidates.push(Candidate {
            path: as_mapped(Path::new(p)),
            open: PathBuf::from(p),
            linkage: Linkage::Preloaded,
        });
    }
    // The libraries it links (an allocator among them), before libc, in
    // the loader's order, as symbol lookup will search them.
    for lib in linked::libraries(exe) {
        let path = as_mapped(&lib);
        if is_libc(&path) || candidates.iter().any(|c| c.path == path) {
            continue;
        }
        candidates.push(Candidate {
            path,
            open: lib,
            linkage: Linkage::Linked,
        });
    }
    if let Some(libc) = own.executable_files().into_iter().find(|f| is_libc(f)) {
        candidates.push(Candidate {
            path: libc.to_string(),
            open: PathBuf::from(libc),
            linkage: Linkage::Libc,
        });
    }
    plan(me, &candidates, skip_prologue, custom).map_err(|e| match e {
        ProbeError::CustomSymbol { spec, symbol, .. } => ProbeError::CustomSymbolForCommand {
            spec,
            symbol,
            exe: exe.to_path_buf(),
        },
        e => e,
    })
}

/// True for an executable the Go toolchain built (its build-info or
/// line-table section is there even when it is stripped).
fn is_go_program(path: &Path) -> bool {
    use object::{Object as _, ObjectSection as _};
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*data) else {
        return false;
    };
    let found = file.sections().any(|s| {
        matches!(
            s.name(),
            Ok(".go.buildinfo" | ".gopclntab" | ".note.go.buildid")
        )
    });
    found
}

/// A candidate module with its symbols parsed.
struct Module<'a> {
    c: &'a Candidate,
    functions: Functions,
}

/// Chooses what to probe among `candidates` (in lookup order).
fn plan(
    pid: u32,
    candidates: &[Candidate],
    skip_prologue: bool,
    custom: &CustomAllocator,
) -> Result<AllocatorTarget, ProbeError> {
    let modules: Vec<Module<'_>> = candidates
        .iter()
        .filter_map(|c| {
            Functions::open(&c.open)
                .ok()
                .map(|functions| Module { c, functions })
        })
        .collect();
    let Some(provider) = modules.iter().position(|m| m.functions.has("malloc")) else {
        if let Some(go) = candidates
            .iter()
            .find(|c| c.linkage == Linkage::Executable && is_go_program(&c.open))
        {
            return Err(ProbeError::GoProgram {
                pid,
                path: go.path.clone(),
            });
        }
        return Err(ProbeError::NoAllocator {
            pid,
            searched: candidates.len(),
        });
    };
    let mut b = Builder {
        skip_prologue,
        points: Vec::new(),
        starts: Vec::new(),
        modules: Vec::new(),
        unseen: Vec::new(),
    };
    let mut found: Vec<FoundAllocator> = Vec::new();
    let mut missing = Vec::new();

    // The allocator serving malloc, then other modules with an allocator API
    // of their own (a program calling mi_malloc, a Rust global jemalloc).
    let (imp, version) = identify(&modules[provider].functions, &modules[provider].c.open);
    found.push(FoundAllocator {
        implementation: imp.clone(),
        version,
        linkage: modules[provider].c.linkage,
        module: modules[provider].c.path.clone(),
        prefix: "",
    });
    if imp == Implementation::Unknown {
        b.unseen.push(format!(
            "{} defines malloc but is no allocator heapscope knows: its standard entry points \
             are probed, calls to any entry point of its own are not seen",
            modules[provider].c.path
        ));
    }

    for row in ENTRY_POINTS {
        match row.module {
            EntryModule::Standard | EntryModule::Mapper => {
                match modules.iter().find(|m| m.functions.has(row.symbol)) {
                    Some(m) => b.add(m, row.symbol, row.spec)?,
                    None if row.module == EntryModule::Standard => missing.push(row.spec.kind),
                    None => {}
                }
            }
            EntryModule::Cxx => {
                // Where the allocator defines them: a known allocator library
                // or the executable that defines malloc, not libstdc++.
                for m in &modules {
                    let own = m.c.linkage == Linkage::Executable && m.functions.has("malloc");
                    let allocator = SIG_OF_FAMILIES.iter().any(|s| m.functions.has(s));
                    if (own || allocator) && m.functions.has(row.symbol) {
                        b.add(m, row.symbol, row.spec)?;
                        break;
                    }
                }
            }
            EntryModule::Jemalloc | EntryModule::Tcmalloc | EntryModule::Mimalloc => {
                for m in &modules {
                    if m.functions.has(row.symbol) {
                        b.add(m, row.symbol, row.spec)?;
                    }
                }
            }
        }
    }
    // Prefixed jemalloc builds: every jemalloc name, standard ones included.
    for m in &modules {
        for prefix in JEMALLOC_PREFIXES {
            if !m.functions.has(&format!("{prefix}mallocx")) {
                continue;
            }
            let (_, version) = identify(&m.functions, &m.c.open);
            found.push(FoundAllocator {
                implementation: Implementation::Jemalloc,
                version,
                linkage: m.c.linkage,
                module: m.c.path.clone(),
                prefix,
            });
            for row in ENTRY_POINTS
                .iter()
                .filter(|r| matches!(r.module, EntryModule::Standard | EntryModule::Jemalloc))
            {
                let name = format!("{prefix}{}", row.symbol);
                if m.functions.has(&name) {
                    b.add(m, &name, row.spec)?;
                }
            }
        }
    }
    // Other modules with an allocator API of their own (not the provider).
    for (i, m) in modules.iter().enumerate() {
        if i == provider {
            continue;
        }
        let own_api = ["mallocx", "tc_malloc", "mi_malloc"]
            .iter()
            .any(|s| m.functions.has(s));
        if own_api && b.modules.contains(&m.c.path) {
            let (imp, version) = identify(&m.functions, &m.c.open);
            found.push(FoundAllocator {
                implementation: imp,
                version,
                linkage: m.c.linkage,
                module: m.c.path.clone(),
                prefix: "",
            });
        }
    }
    b.unseen
        .extend(own_code::stripped_allocator(&modules, &b.modules));
    let mut internal = own_code::internal_code(&modules, &found);
    internal.extend(pool::add_pool(pid, &modules, &mut b, custom)?);
    Ok(AllocatorTarget {
        allocator: modules[provider].c.path.clone(),
        found,
        points: b.points,
        missing,
        modules: b.modules,
        internal,
        unseen: b.unseen,
        custom: custom.describe(),
        exit_point: modules.iter().find_map(|m| {
            let (_, loc) = m.functions.find("_exit")?;
            Some((m.c.open.clone(), loc.file_offset))
        }),
    })
}

/// Symbols only a known allocator library defines (its own API).
const SIG_OF_FAMILIES: [&str; 5] = [
    "mallocx",
    "je_mallocx",
    "_rjem_mallocx",
    "tc_malloc",
    "mi_malloc",
];

mod builder;
mod linked;
mod own_code;
mod pool;
#[cfg(test)]
mod tests;
