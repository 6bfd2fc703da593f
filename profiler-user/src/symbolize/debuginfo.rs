//! Finding separate debug files where distributions put them.
//!
//! - by build-id: `<debug dir>/.build-id/ab/cdef….debug` (Debian's
//!   `*-dbgsym` and `libc6-dbg`, Fedora's `debuginfo`);
//! - by `.gnu_debuglink` name: next to the module, in its `.debug/`
//!   subdirectory, and under `<debug dir>/<module's directory>/` (what GDB
//!   searches);
//! - dwz supplementary files named by `.gnu_debugaltlink`.
//!
//! Each path is tried inside the process's root first (containers ship their
//! own debug packages), then in heapscope's. A candidate is accepted only
//! when it matches the module: same build-id, or, for a debuglink without
//! build-ids on both sides, the CRC-32 the link records — a stale debug file
//! would give confidently wrong lines.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use object::read::ReadCache;
use object::Object;

use super::{ModuleSource, SymbolizerOptions};

/// How a candidate was found, which decides how it is verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    BuildId,
    DebugLink { crc: u32 },
}

/// What the module says about its debug file.
#[derive(Clone, Debug, Default)]
pub(crate) struct DebugRefs {
    pub(crate) build_id: Option<Vec<u8>>,
    /// `.gnu_debuglink`: file name and CRC-32 of the debug file.
    pub(crate) debuglink: Option<(String, u32)>,
}

impl DebugRefs {
    /// Reads the build-id note and `.gnu_debuglink` of `obj`.
    pub(crate) fn of<'data, O: Object<'data>>(obj: &O) -> DebugRefs {
        let build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let debuglink = obj
            .gnu_debuglink()
            .ok()
            .flatten()
            .and_then(|(name, crc)| Some((std::str::from_utf8(name).ok()?.to_string(), crc)));
        DebugRefs {
            build_id,
            debuglink,
        }
    }
}

/// Lower-case hex of a build-id.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `<dir>/.build-id/ab/cdef….debug`, or `None` for a too-short build-id.
fn build_id_path(dir: &Path, build_id: &[u8]) -> Option<PathBuf> {
    if build_id.len() < 2 {
        return None;
    }
    let h = hex(build_id);
    Some(
        dir.join(".build-id")
            .join(&h[..2])
            .join(format!("{}.debug", &h[2..])),
    )
}

/// `path` (as the process sees it) inside `root`, then as is.
fn in_roots(root: Option<&Path>, path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::with_capacity(2);
    if let Some(root) = root {
        if let Ok(rel) = path.strip_prefix("/") {
            out.push(root.join(rel));
        }
    }
    out.push(path.to_path_buf());
    out
}

fn candidates(
    opts: &SymbolizerOptions,
    source: &ModuleSource,
    refs: &DebugRefs,
) -> Vec<(PathBuf, Via)> {
    let root = source.root.as_deref();
    let mut out: Vec<(PathBuf, Via)> = Vec::new();
    let mut push = |p: PathBuf, via: Via| {
        for p in in_roots(root, &p) {
            if !out.iter().any(|(q, _)| *q == p) {
                out.push((p, via));
            }
        }
    };
    if let Some(id) = &refs.build_id {
        for dir in &opts.debug_dirs {
            if let Some(p) = build_id_path(dir, id) {
                push(p, Via::BuildId);
            }
        }
    }
    if let Some(id) = refs.build_id.as_deref().filter(|id| !id.is_empty()) {
        for dir in &opts.debuginfod_caches {
            push(dir.join(hex(id)).join("debuginfo"), Via::BuildId);
        }
    }
    if let Some((name, crc)) = &refs.debuglink {
        let via = Via::DebugLink { crc: *crc };
        let module_dir = source.path.parent().unwrap_or(Path::new("/"));
        push(module_dir.join(name), via);
        push(module_dir.join(".debug").join(name), via);
        let rel = module_dir.strip_prefix("/").unwrap_or(module_dir);
        for dir in &opts.debug_dirs {
            push(dir.join(rel).join(name), via);
        }
    }
    out
}

/// CRC-32 (the zlib polynomial, as `.gnu_debuglink` records) of a whole file.
fn file_crc(path: &Path) -> std::io::Result<u32> {
    let mut f = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher.finalize());
        }
        hasher.update(&buf[..n]);
    }
}

/// True when `candidate` is a debug file for a module with `refs`.
fn matches(candidate: &Path, via: Via, refs: &DebugRefs) -> bool {
    let Ok(file) = File::open(candidate) else {
        return false;
    };
    let cache = ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else {
        log::debug!("{} is not an object file", candidate.display());
        return false;
    };
    let theirs = obj.build_id().ok().flatten();
    match (refs.build_id.as_deref(), theirs, via) {
        (Some(ours), Some(theirs), _) => ours == theirs,
        // Found under the module's own build-id: the path is the match.
        (_, _, Via::BuildId) => true,
        (_, _, Via::DebugLink { crc }) => file_crc(candidate).is_ok_and(|c| c == crc),
    }
}

/// Identity of an opened file, to avoid taking the module as its own debug file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The first existing candidate that matches the module, if any.
pub(crate) fn find_debug_file(
    opts: &SymbolizerOptions,
    source: &ModuleSource,
    refs: &DebugRefs,
) -> Option<PathBuf> {
    candidates(opts, source, refs)
        .into_iter()
        .filter(|(p, _)| p.is_file() && !same_file(p, &source.open_path))
        .find(|(p, via)| {
            let ok = matches(p, *via, refs);
            if !ok {
                log::debug!(
                    "{} does not match {} (build-id or CRC differs)",
                    p.display(),
                    source.path.display()
                );
            }
            ok
        })
        .map(|(p, _)| p)
}

/// The dwz supplementary file of a debug object (`.gnu_debugaltlink`: a path,
/// absolute or relative to the debug file, and the supplement's build-id),
/// also looked up by that build-id under the debug directories.
pub(crate) fn find_sup_file<'data, O: Object<'data>>(
    opts: &SymbolizerOptions,
    source: &ModuleSource,
    debug_path: &Path,
    obj: &O,
) -> Option<PathBuf> {
    let (path, build_id) = obj.gnu_debugaltlink().ok().flatten()?;
    let path = Path::new(std::str::from_utf8(path).ok()?);
    let refs = DebugRefs {
        build_id: Some(build_id.to_vec()),
        debuglink: None,
    };
    sup_candidates(opts, source, debug_path, path, build_id)
        .into_iter()
        .find(|p| p.is_file() && matches(p, Via::BuildId, &refs))
}

/// Where a supplement named `alt` may be, in order. A relative name is
/// relative to the directory of the file that names it: when that is the
/// module itself, opened through a captured handle (`/proc/self/fd/N`), the
/// directory is the module's own, as the process sees it (inside its root).
fn sup_candidates(
    opts: &SymbolizerOptions,
    source: &ModuleSource,
    debug_path: &Path,
    alt: &Path,
    build_id: &[u8],
) -> Vec<PathBuf> {
    let root = source.root.as_deref();
    let mut tries: Vec<PathBuf> = Vec::new();
    if alt.is_absolute() {
        tries.extend(in_roots(root, alt));
    } else if debug_path == source.open_path {
        if let Some(dir) = source.path.parent() {
            tries.extend(in_roots(root, &dir.join(alt)));
        }
    } else if let Some(dir) = debug_path.parent() {
        tries.push(dir.join(alt));
    }
    for dir in &opts.debug_dirs {
        if let Some(p) = build_id_path(dir, build_id) {
            tries.extend(in_roots(root, &p));
        }
    }
    tries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_supplement_of_a_captured_module_is_beside_the_module() {
        let opts = SymbolizerOptions {
            debug_dirs: vec![PathBuf::from("/dbg")],
            debuginfod_caches: Vec::new(),
        };
        let mut source = ModuleSource::from_path("/usr/lib/libx.so");
        source.open_path = PathBuf::from("/proc/self/fd/7");
        source.root = Some(PathBuf::from("/proc/7/root"));
        let alt = Path::new("../.dwz/x.debug");
        let tries = sup_candidates(
            &opts,
            &source,
            &source.open_path.clone(),
            alt,
            &[0xab, 0xcd],
        );
        // Before: /proc/self/fd/../.dwz/x.debug.
        assert_eq!(
            tries,
            [
                "/proc/7/root/usr/lib/../.dwz/x.debug",
                "/usr/lib/../.dwz/x.debug",
                "/proc/7/root/dbg/.build-id/ab/cd.debug",
                "/dbg/.build-id/ab/cd.debug",
            ]
            .map(PathBuf::from)
        );
        // A separate debug file names it relative to its own directory.
        let tries = sup_candidates(
            &opts,
            &source,
            Path::new("/usr/lib/debug/libx.so.debug"),
            alt,
            &[0xab, 0xcd],
        );
        assert_eq!(tries[0], PathBuf::from("/usr/lib/debug/../.dwz/x.debug"));
    }

    #[test]
    fn candidate_order_and_roots() {
        let opts = SymbolizerOptions {
            debug_dirs: vec![PathBuf::from("/dbg")],
            debuginfod_caches: Vec::new(),
        };
        let mut source = ModuleSource::from_path("/usr/lib/libx.so");
        source.root = Some(PathBuf::from("/proc/7/root"));
        let refs = DebugRefs {
            build_id: Some(vec![0xab, 0xcd, 0xef]),
            debuglink: Some(("libx.so.debug".into(), 42)),
        };
        let paths: Vec<String> = candidates(&opts, &source, &refs)
            .into_iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert_eq!(
            paths,
            vec![
                "/proc/7/root/dbg/.build-id/ab/cdef.debug",
                "/dbg/.build-id/ab/cdef.debug",
                "/proc/7/root/usr/lib/libx.so.debug",
                "/usr/lib/libx.so.debug",
                "/proc/7/root/usr/lib/.debug/libx.so.debug",
                "/usr/lib/.debug/libx.so.debug",
                "/proc/7/root/dbg/usr/lib/libx.so.debug",
                "/dbg/usr/lib/libx.so.debug",
            ]
        );
    }

    #[test]
    fn short_build_id_has_no_path() {
        assert!(build_id_path(Path::new("/d"), &[1]).is_none());
        assert_eq!(hex(&[0, 0x1f, 0xa0]), "001fa0");
    }
}
