//! Finding the allocator a process uses and the file offsets to probe.

use std::path::{Path, PathBuf};

use profiler_common::{AllocKind, EntryModule, EntrySpec, ENTRY_POINTS};

use super::internals::{self, InternalCode};
use super::{prologue, ProbeError};
use crate::process::maps::MemoryMap;
use crate::symbolize::find_function;

/// One place to attach: a function of a module, at a file offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachPoint {
    /// What the function does and where its arguments are (a row of
    /// `profiler_common::ENTRY_POINTS`), passed to the eBPF side as the attach cookie.
    pub spec: EntrySpec,
    /// The symbol probed, for messages.
    pub symbol: String,
    /// The path to open (through `/proc/PID/root` for a running process).
    pub file: PathBuf,
    /// File offset of the function's first instruction (return probes go here).
    pub func_offset: u64,
    /// File offset for the entry probe (may skip a no-op guard, see `prologue`).
    pub entry_offset: u64,
}

/// What heapscope will probe in one process.
#[derive(Clone, Debug)]
pub struct AllocatorTarget {
    /// The module that defines malloc, as the process sees the path.
    pub allocator: String,
    pub points: Vec<AttachPoint>,
    /// Entry points the allocator does not define (e.g. jemalloc has no pvalloc).
    pub missing: Vec<AllocKind>,
    /// Paths (as the process sees them) of the probed modules: calls made from
    /// their code while a program call is in flight are the allocator's own.
    pub modules: Vec<String>,
    /// The allocator's own implementation: calls made from it are the
    /// allocator's even when no program call is in flight.
    pub internal: Vec<InternalCode>,
}

/// A path as seen from inside the process's mount namespace, opened from ours.
pub fn in_root(pid: u32, path: &str) -> PathBuf {
    let rooted = PathBuf::from(format!("/proc/{pid}/root{path}"));
    if rooted.exists() {
        rooted
    } else {
        PathBuf::from(path)
    }
}

fn is_libc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so") || name.starts_with("libc-")
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

/// Finds the allocator of a running process from its memory map.
pub fn discover(pid: u32, skip_prologue: bool) -> Result<AllocatorTarget, ProbeError> {
    let maps = MemoryMap::read(pid).map_err(|e| ProbeError::Maps {
        pid,
        reason: e.to_string(),
    })?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
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
    let order = candidate_order(exe.as_deref(), &files);
    let resolve = |p: &str| in_root(pid, p);
    let Some(allocator) = order.iter().find(|f| defines_malloc(&resolve(f))) else {
        return Err(ProbeError::NoAllocator {
            pid,
            searched: order.len(),
        });
    };
    let libc = order.iter().find(|f| is_libc(f)).unwrap_or(allocator);
    build_target(allocator, libc, resolve, skip_prologue)
}

/// Finds the allocator a command will use once it runs: the executable when it
/// defines malloc (static or custom allocator), else the libc this system loads.
pub fn for_command(exe: &Path, skip_prologue: bool) -> Result<AllocatorTarget, ProbeError> {
    let exe_str = exe.to_string_lossy().to_string();
    let own = MemoryMap::read(std::process::id()).map_err(|e| ProbeError::Maps {
        pid: std::process::id(),
        reason: e.to_string(),
    })?;
    let libc = own
        .executable_files()
        .into_iter()
        .find(|f| is_libc(f))
        .map(String::from);
    let resolve = |p: &str| PathBuf::from(p);
    if defines_malloc(exe) {
        let mapper = libc.clone().unwrap_or_else(|| exe_str.clone());
        // A static executable has its own mmap; a dynamic one uses libc's.
        let mapper = if has_function(exe, "mmap") {
            exe_str.clone()
        } else {
            mapper
        };
        return build_target(&exe_str, &mapper, resolve, skip_prologue);
    }
    match libc {
        Some(l) => build_target(&l, &l, resolve, skip_prologue),
        None => Err(ProbeError::NoAllocator {
            pid: std::process::id(),
            searched: 1,
        }),
    }
}

/// Where free's entry probe goes (free has no return probe, so its entry may
/// move alone): the first emulated instruction with its pointer intact.
fn free_entry_skip(kind: AllocKind, bytes: &[u8]) -> u64 {
    if kind != AllocKind::Free {
        return 0;
    }
    match prologue::place(bytes, false, &[0]) {
        Ok(p) if p.args[0] == 0 => p.offset,
        _ => 0,
    }
}

fn has_function(file: &Path, name: &str) -> bool {
    matches!(find_function(file, name), Ok(Some(_)))
}

fn defines_malloc(file: &Path) -> bool {
    has_function(file, "malloc")
}

fn build_target(
    allocator: &str,
    mapper: &str,
    resolve: impl Fn(&str) -> PathBuf,
    skip_prologue: bool,
) -> Result<AllocatorTarget, ProbeError> {
    let mut points: Vec<AttachPoint> = Vec::new();
    let mut missing = Vec::new();
    for row in ENTRY_POINTS {
        let file = resolve(match row.module {
            EntryModule::Allocator => allocator,
            EntryModule::Mapper => mapper,
        });
        let kind = row.spec.kind;
        let loc = find_function(&file, row.symbol).map_err(|e| ProbeError::Module {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        let Some(loc) = loc else {
            missing.push(kind);
            continue;
        };
        // Aliases (glibc's aligned_alloc is memalign) get one probe.
        if points
            .iter()
            .any(|p| p.file == file && p.func_offset == loc.file_offset)
        {
            continue;
        }
        let skip = if skip_prologue {
            free_entry_skip(kind, &loc.first_bytes)
        } else {
            0
        };
        points.push(AttachPoint {
            spec: row.spec,
            symbol: row.symbol.to_string(),
            file,
            func_offset: loc.file_offset,
            entry_offset: loc.file_offset + skip,
        });
    }
    let mut modules = vec![allocator.to_string()];
    if mapper != allocator {
        modules.push(mapper.to_string());
    }
    let internal = if internals::is_allocator_library(allocator) {
        vec![InternalCode::WholeModule(allocator.to_string())]
    } else {
        // Without symbols to tell malloc's code apart, no call is judged
        // internal outside a program call (the behaviour before this existed).
        match internals::implementation_file_range(&resolve(allocator)) {
            Ok(Some((start, end))) => vec![InternalCode::FileRange {
                path: allocator.to_string(),
                start,
                end,
            }],
            _ => Vec::new(),
        }
    };
    Ok(AllocatorTarget {
        allocator: allocator.to_string(),
        points,
        missing,
        modules,
        internal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_first_libc_last() {
        let files = vec![
            "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
            "/usr/lib/libjemalloc.so.2".to_string(),
            "/usr/bin/server".to_string(),
        ];
        let order = candidate_order(Some("/usr/bin/server"), &files);
        assert_eq!(
            order,
            vec![
                "/usr/bin/server".to_string(),
                "/usr/lib/libjemalloc.so.2".to_string(),
                "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
            ]
        );
    }

    #[test]
    fn system_libc_target_has_every_function_once() {
        let libc = "/lib/x86_64-linux-gnu/libc.so.6";
        if !Path::new(libc).exists() {
            eprintln!("skipped: {libc} not present");
            return;
        }
        let t = build_target(libc, libc, |p: &str| PathBuf::from(p), true).expect("libc target");
        assert!(t.points.iter().any(|p| p.spec.kind == AllocKind::Malloc));
        assert!(t.points.iter().any(|p| p.spec.kind == AllocKind::Free));
        assert!(t.points.iter().any(|p| p.spec.kind == AllocKind::Mmap));
        let mut offs: Vec<u64> = t.points.iter().map(|p| p.func_offset).collect();
        offs.sort_unstable();
        offs.dedup();
        assert_eq!(offs.len(), t.points.len(), "aliases must be probed once");
    }
}
