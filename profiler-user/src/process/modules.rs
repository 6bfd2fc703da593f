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
use std::path::PathBuf;
use std::sync::Arc;

pub use super::files::ModuleFiles;
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
    use std::os::unix::fs::MetadataExt;

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
