//! Open handles on the files behind a process's executable mappings,
//! taken through `/proc/PID/map_files` while it runs.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::region::Region;

/// One captured module file.
#[derive(Debug)]
pub(super) struct Captured {
    pub(super) dev: (u32, u32),
    pub(super) inode: u64,
    pub(super) path: String,
    pub(super) file: Arc<File>,
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

    pub(super) fn find(&self, region: &Region) -> Option<&Captured> {
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
