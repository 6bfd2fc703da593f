//! The files behind a process's executable mappings, held open while it runs.
//!
//! Symbolization happens late (at the end of a session, once per unique
//! address), when the target may have exited, unlinked a plugin it dlopen'ed
//! or been upgraded on disk. A snapshot therefore keeps an open handle per
//! module, taken through `/proc/PID/map_files/<range>` (the exact file the
//! kernel mapped: deleted, replaced or inside a container alike), and later
//! reads through `/proc/self/fd/N`, which reopens that same inode.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::maps::{MemoryMap, Region};

/// How to read the module behind one mapping: what the symbolizer needs,
/// in the normalizer's own terms (the session builds the symbolizer's
/// `ModuleSource` from it, so `process` does not depend on `symbolize`).
#[derive(Clone, Debug)]
pub struct MappedModule {
    /// The file name (`libc.so.6`).
    pub name: String,
    /// Where heapscope opens the file: `/proc/self/fd/N` of a captured
    /// handle, `/proc/PID/root/<path>`, or a plain path.
    pub open_path: PathBuf,
    /// The path as the process sees it (the maps column).
    pub path: PathBuf,
    /// The process's root directory (`/proc/PID/root`) when readable.
    pub root: Option<PathBuf>,
    /// Keeps a captured file open (and `open_path` valid) while this lives.
    pub handle: Option<Arc<File>>,
}

/// One captured module file.
#[derive(Debug)]
struct Captured {
    dev: (u32, u32),
    inode: u64,
    path: String,
    file: Arc<File>,
}

/// Open handles on the files behind executable mappings, one per distinct
/// (device, inode, path). Cloning shares the handles.
#[derive(Clone, Debug, Default)]
pub struct ModuleFiles {
    files: Arc<Vec<Captured>>,
    /// Executable file mappings that could not be opened.
    missed: usize,
}

impl ModuleFiles {
    /// Opens the file of every executable, file-backed region of `pid`.
    /// Failures are skipped (logged at debug level): such modules are read by
    /// path at symbolization time instead.
    pub fn capture(pid: u32, regions: &[Region]) -> ModuleFiles {
        let mut files: Vec<Captured> = Vec::new();
        let mut missed = 0;
        for region in regions {
            let Some(path) = region.path.as_deref() else {
                continue;
            };
            if !region.perms.execute || !region.is_file() {
                continue;
            }
            let dev = (region.dev.major, region.dev.minor);
            if files
                .iter()
                .any(|c| c.dev == dev && c.inode == region.inode && c.path == path)
            {
                continue;
            }
            match open_region(pid, region, path) {
                Some(file) => files.push(Captured {
                    dev,
                    inode: region.inode,
                    path: path.to_string(),
                    file: Arc::new(file),
                }),
                None => {
                    missed += 1;
                    log::debug!("cannot capture {path} of pid {pid}; it is read by path later");
                }
            }
        }
        ModuleFiles {
            files: Arc::new(files),
            missed,
        }
    }

    /// Number of executable file mappings that could not be opened.
    pub fn missed(&self) -> usize {
        self.missed
    }

    /// Number of captured files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when nothing was captured.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn find(&self, region: &Region) -> Option<&Captured> {
        let path = region.path.as_deref()?;
        self.files.iter().find(|c| {
            c.dev == (region.dev.major, region.dev.minor)
                && c.inode == region.inode
                && c.path == path
        })
    }
}

/// The mapped file itself through `map_files` (needs CAP_SYS_ADMIN, which a
/// profiler loading eBPF has), else the path inside the process's root when
/// it still names the mapped inode.
fn open_region(pid: u32, region: &Region, path: &str) -> Option<File> {
    let map_file = format!(
        "{}/map_files/{:x}-{:x}",
        super::procfs::dir(pid).display(),
        region.start,
        region.end
    );
    if let Ok(f) = File::open(&map_file) {
        return Some(f);
    }
    if region.deleted {
        return None;
    }
    let f = File::open(format!("{}/root{path}", super::procfs::dir(pid).display())).ok()?;
    // A file replaced by rename since it was mapped is another inode: reading
    // it would symbolize against the wrong code.
    let meta = f.metadata().ok()?;
    (meta.ino() == region.inode).then_some(f)
}

impl MemoryMap {
    /// How to read the module behind `region` of process `pid`: through the
    /// handle captured with this snapshot when there is one, else by path
    /// (inside the process's root while it runs). `None` for anonymous and
    /// pseudo mappings (`[heap]`, `[vdso]`).
    pub fn mapped_module(&self, pid: u32, region: &Region) -> Option<MappedModule> {
        if !region.is_file() {
            return None;
        }
        let path = region.path.as_deref()?;
        let name = region.file_name().unwrap_or(path).to_string();
        let root = super::procfs::dir(pid).join("root");
        let root = root.is_dir().then_some(root);
        let source = match self.files.find(region) {
            Some(c) => MappedModule {
                name,
                open_path: PathBuf::from(format!("/proc/self/fd/{}", c.file.as_raw_fd())),
                path: PathBuf::from(path),
                root,
                handle: Some(Arc::clone(&c.file)),
            },
            None => MappedModule {
                name,
                open_path: super::procfs::in_root(pid, path),
                path: PathBuf::from(path),
                root,
                handle: None,
            },
        };
        Some(source)
    }

    /// Number of module files this snapshot holds open.
    pub fn captured_files(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::maps::RuntimeAddr;

    #[test]
    fn captures_own_modules_and_reads_through_fd() {
        let map = MemoryMap::read(std::process::id()).expect("own maps");
        assert!(map.captured_files() > 0);
        let here = RuntimeAddr(captures_own_modules_and_reads_through_fd as *const () as u64);
        let (region, _) = map.lookup(here).expect("own code mapped");
        let source = map
            .mapped_module(std::process::id(), region)
            .expect("file backed");
        assert!(source.handle.is_some(), "own executable captured");
        assert!(source.open_path.starts_with("/proc/self/fd/"));
        // The fd path reopens the mapped inode.
        let meta = std::fs::metadata(&source.open_path).expect("stat through fd");
        assert_eq!(meta.ino(), region.inode);
        assert_eq!(Some(source.name.as_str()), region.file_name());
    }

    #[test]
    fn parsed_text_has_no_handles_and_falls_back_to_paths() {
        let map = MemoryMap::parse(
            "1000-2000 r-xp 00000000 00:01 5 /nonexistent/heapscope/lib.so\n\
             3000-4000 rw-p 00000000 00:00 0 [heap]\n",
        )
        .expect("parse");
        assert_eq!(map.captured_files(), 0);
        let source = map
            .mapped_module(u32::MAX, &map.regions[0])
            .expect("file backed");
        assert!(source.handle.is_none());
        assert_eq!(
            source.open_path,
            PathBuf::from("/nonexistent/heapscope/lib.so")
        );
        assert_eq!(source.name, "lib.so");
        assert!(map.mapped_module(u32::MAX, &map.regions[1]).is_none());
    }
}
