//! `/proc/PID/maps` snapshots: which file (and where in it) backs a runtime address.
//!
//! This is the "normalize" half of symbolization: a runtime address becomes
//! `(region, file offset)`, and only that pair travels on to the symbolizer.
//! Addresses are kept in distinct newtypes so a runtime address can never be
//! handed to code that expects a file offset (or the reverse).

use std::path::PathBuf;

use super::files::ModuleFiles;
pub use super::region::{Device, Perms, Region};

pub use crate::addr::{ElfVaddr, FileOffset, RuntimeAddr};

/// Errors reading or parsing a maps file.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} exited while /proc/{pid}/maps was read")]
    Exiting { pid: u32 },
    #[error("malformed line {line} in {path}: {reason}")]
    Parse {
        path: String,
        line: usize,
        reason: &'static str,
    },
}

/// A snapshot of a process's memory mappings, sorted by start address.
///
/// A snapshot read from a live process also holds open handles on the files
/// behind its executable mappings (see [`ModuleFiles`]), so the modules can
/// still be read after the process exits or the files are deleted.
#[derive(Clone, Debug, Default)]
pub struct MemoryMap {
    pub regions: Vec<Region>,
    /// Handles on the files behind executable mappings, taken at read time.
    pub(crate) files: ModuleFiles,
    /// Which parse this is: every parse gets a new number (0: none), so a
    /// result computed against one map is known stale against another
    /// (`unwind::memo`).
    pub generation: u64,
}

/// The last [`MemoryMap::generation`] given.
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The memory maps of profiled processes other than the session's target
/// (children, other `-p` PIDs, cgroup members: each has its own layout),
/// read when first needed and forgotten when the process exits.
#[derive(Debug, Default)]
pub struct OtherMaps {
    maps: std::collections::BTreeMap<u32, MemoryMap>,
}

impl OtherMaps {
    /// The map of `pid`, read now when `fresh` or not read yet (an
    /// unreadable or empty one keeps the last).
    pub fn get(&mut self, pid: u32, fresh: bool) -> Option<&MemoryMap> {
        if fresh || !self.maps.contains_key(&pid) {
            if let Ok(m) = MemoryMap::read(pid) {
                if !m.regions.is_empty() {
                    self.maps.insert(pid, m);
                }
            }
        }
        self.maps.get(&pid)
    }

    /// Drops the map of a process that exited.
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
    }
}

/// Two snapshots are equal when their mappings are; captured handles are a
/// means to read the files, not part of what the snapshot says.
impl PartialEq for MemoryMap {
    fn eq(&self, other: &MemoryMap) -> bool {
        self.regions == other.regions
    }
}

impl Eq for MemoryMap {}

impl MemoryMap {
    /// Reads and parses `/proc/PID/maps`, and opens the file behind every
    /// executable mapping (through `/proc/PID/map_files/`, else
    /// `/proc/PID/root/...`) so symbolization can read it later even if the
    /// process has exited or the file was deleted or replaced. Files that
    /// cannot be opened are skipped: they are read by path later, if at all.
    pub fn read(pid: u32) -> Result<MemoryMap, MapsError> {
        let mut map = Self::read_regions(pid)?;
        map.files = ModuleFiles::capture(pid, &map.regions);
        if map.files.missed() > 0 {
            // A process tearing down its address space still lists its
            // maps for a moment, but its files can no longer be opened:
            // such a snapshot must not replace an earlier, complete one.
            let still_mapped = Self::read_regions(pid).is_ok_and(|m| !m.regions.is_empty());
            if !still_mapped {
                return Err(MapsError::Exiting { pid });
            }
        }
        Ok(map)
    }

    /// Reads and parses `/proc/PID/maps` without opening any module file.
    pub fn read_regions(pid: u32) -> Result<MemoryMap, MapsError> {
        let path = super::procfs::dir(pid).join("maps");
        let bytes = std::fs::read(&path).map_err(|source| MapsError::Read {
            path: path.clone(),
            source,
        })?;
        // Paths are arbitrary bytes; a lossy conversion only affects how an
        // exotic path is displayed, never the addresses.
        let text = String::from_utf8_lossy(&bytes);
        Self::parse_from(&text, &path.display().to_string())
    }

    /// Parses maps text (the format of `/proc/PID/maps`).
    pub fn parse(text: &str) -> Result<MemoryMap, MapsError> {
        Self::parse_from(text, "<maps text>")
    }

    fn parse_from(text: &str, origin: &str) -> Result<MemoryMap, MapsError> {
        let mut regions = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let region = parse_line(line).map_err(|reason| MapsError::Parse {
                path: origin.to_string(),
                line: i + 1,
                reason,
            })?;
            regions.push(region);
        }
        // The kernel already emits ascending order; sorting keeps lookup's
        // binary search correct for hand-written or concatenated input.
        regions.sort_by_key(|r| r.start);
        Ok(MemoryMap {
            regions,
            files: ModuleFiles::default(),
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
        })
    }

    /// The region containing `addr` and the file offset `addr` corresponds to.
    /// Pseudo and anonymous regions are returned too (their offset is
    /// meaningless); check [`Region::is_file`] before symbolizing.
    pub fn lookup(&self, addr: RuntimeAddr) -> Option<(&Region, FileOffset)> {
        let idx = self.regions.partition_point(|r| r.start <= addr.0);
        let region = self.regions.get(idx.checked_sub(1)?)?;
        let offset = region.file_offset_of(addr)?;
        Some((region, offset))
    }

    /// Distinct paths of files that have at least one executable mapping, in
    /// address order of their first such mapping.
    pub fn executable_files(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for region in &self.regions {
            if !region.perms.execute || !region.is_file() {
                continue;
            }
            if let Some(path) = region.path.as_deref() {
                if !out.contains(&path) {
                    out.push(path);
                }
            }
        }
        out
    }
}

/// Splits off the next whitespace-separated field, returning it and the rest.
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    if s.is_empty() {
        return None;
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

/// Parses one line of `/proc/PID/maps`.
pub(super) fn parse_line(line: &str) -> Result<Region, &'static str> {
    let (range, rest) = next_field(line).ok_or("missing address range")?;
    let (perms, rest) = next_field(rest).ok_or("missing permissions")?;
    let (offset, rest) = next_field(rest).ok_or("missing offset")?;
    let (dev, rest) = next_field(rest).ok_or("missing device")?;
    let (inode, rest) = next_field(rest).ok_or("missing inode")?;

    let (start, end) = range.split_once('-').ok_or("bad address range")?;
    let start = u64::from_str_radix(start, 16).map_err(|_| "bad start address")?;
    let end = u64::from_str_radix(end, 16).map_err(|_| "bad end address")?;
    if end < start {
        return Err("end address before start address");
    }
    let perms = Perms::parse(perms).ok_or("bad permissions")?;
    let file_offset = u64::from_str_radix(offset, 16).map_err(|_| "bad offset")?;
    let (major, minor) = dev.split_once(':').ok_or("bad device")?;
    let dev = Device {
        major: u32::from_str_radix(major, 16).map_err(|_| "bad device major")?,
        minor: u32::from_str_radix(minor, 16).map_err(|_| "bad device minor")?,
    };
    let inode = inode.parse::<u64>().map_err(|_| "bad inode")?;

    // The path is everything after the padding, spaces included; only the
    // leading padding is dropped so a name ending in a space stays intact.
    let raw_path = rest.trim_start();
    let (path, deleted) = if raw_path.is_empty() {
        (None, false)
    } else if let Some(p) = raw_path.strip_suffix(" (deleted)") {
        (Some(p.to_string()), true)
    } else {
        (Some(raw_path.to_string()), false)
    };

    Ok(Region {
        start,
        end,
        perms,
        file_offset,
        dev,
        inode,
        path,
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
56407bab1000-56407bab3000 r--p 00000000 fe:00 247030                     /usr/bin/cat
56407bab3000-56407bab8000 r-xp 00002000 fe:00 247030                     /usr/bin/cat
56407babc000-56407babd000 rw-p 0000a000 fe:00 247030                     /usr/bin/cat
5640bb1ff000-5640bb220000 rw-p 00000000 00:00 0                          [heap]
7f6e14d1a000-7f6e14d3c000 rw-p 00000000 00:00 0 
7f6e14d9f000-7f6e14dc5000 r--p 00000000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f6e14dc5000-7f6e14f1b000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7f6e14f20000-7f6e14f21000 r-xp 00001000 08:01 4242                       /opt/my app/lib plugin.so (deleted)
7f6e14f30000-7f6e14f31000 r-xs 00000000 08:01 77                         /tmp/jit code (deleted)
7ffc1e7d0000-7ffc1e7f1000 rw-p 00000000 00:00 0                          [stack]
7ffc1e7f8000-7ffc1e7fa000 r-xp 00000000 00:00 0                          [vdso]
7fffffffe000-7ffffffff000 --xp 00000000 00:00 0                          [uprobes]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    fn map() -> MemoryMap {
        match MemoryMap::parse(MAPS) {
            Ok(m) => m,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    #[test]
    fn parses_all_fields() {
        let m = map();
        assert_eq!(m.regions.len(), 13);
        let r = &m.regions[1];
        assert_eq!(r.start, 0x56407bab3000);
        assert_eq!(r.end, 0x56407bab8000);
        assert_eq!(
            r.perms,
            Perms {
                read: true,
                write: false,
                execute: true,
                shared: false
            }
        );
        assert_eq!(r.perms.to_string(), "r-xp");
        assert_eq!(r.file_offset, 0x2000);
        assert_eq!(
            r.dev,
            Device {
                major: 0xfe,
                minor: 0
            }
        );
        assert_eq!(r.inode, 247030);
        assert_eq!(r.path.as_deref(), Some("/usr/bin/cat"));
        assert!(!r.deleted);
        assert!(r.is_file());
        assert_eq!(r.file_name(), Some("cat"));
    }

    #[test]
    fn anonymous_and_pseudo_paths() {
        let m = map();
        let anon = &m.regions[4];
        assert_eq!(anon.path, None);
        assert!(!anon.is_file());
        for (i, name) in [
            (3, "[heap]"),
            (9, "[stack]"),
            (10, "[vdso]"),
            (11, "[uprobes]"),
        ] {
            assert_eq!(m.regions[i].path.as_deref(), Some(name));
            assert!(!m.regions[i].is_file(), "{name} is not a file");
        }
    }

    #[test]
    fn deleted_suffix_and_spaces() {
        let m = map();
        let r = &m.regions[7];
        assert_eq!(r.path.as_deref(), Some("/opt/my app/lib plugin.so"));
        assert!(r.deleted);
        assert!(r.is_file());
        assert_eq!(r.file_name(), Some("lib plugin.so"));
        let shared = &m.regions[8];
        assert!(shared.perms.shared);
        assert_eq!(shared.path.as_deref(), Some("/tmp/jit code"));
        assert!(shared.deleted);
    }

    #[test]
    fn lookup_computes_file_offset() {
        let m = map();
        let (r, off) = m
            .lookup(RuntimeAddr(0x7f6e14dc5000 + 0x1234))
            .expect("mapped");
        assert_eq!(
            r.path.as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(off, FileOffset(0x26000 + 0x1234));
        // First and last byte of a region, and the byte just past it.
        assert_eq!(
            m.lookup(RuntimeAddr(0x56407bab1000)).map(|(_, o)| o),
            Some(FileOffset(0))
        );
        assert_eq!(
            m.lookup(RuntimeAddr(0x56407bab7fff)).map(|(_, o)| o),
            Some(FileOffset(0x2000 + 0x4fff))
        );
        // Gap between the executable and the rw mapping of cat.
        assert!(m.lookup(RuntimeAddr(0x56407bab8000)).is_none());
        assert!(m.lookup(RuntimeAddr(0x1000)).is_none());
        assert!(m.lookup(RuntimeAddr(u64::MAX)).is_none());
        let (r, _) = m.lookup(RuntimeAddr(0x7fffffffe010)).expect("uprobes page");
        assert_eq!(r.path.as_deref(), Some("[uprobes]"));
    }

    #[test]
    fn executable_files_are_distinct_and_file_backed() {
        let m = map();
        assert_eq!(
            m.executable_files(),
            vec![
                "/usr/bin/cat",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/opt/my app/lib plugin.so",
                "/tmp/jit code",
            ]
        );
    }

    #[test]
    fn unsorted_input_is_sorted() {
        let text = "\
2000-3000 r-xp 00000000 00:01 1 /b
1000-2000 r-xp 00000000 00:01 2 /a
";
        let m = MemoryMap::parse(text).expect("parse");
        assert_eq!(m.regions[0].path.as_deref(), Some("/a"));
        assert_eq!(m.lookup(RuntimeAddr(0x2500)).map(|(r, _)| r.inode), Some(1));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let err = MemoryMap::parse("1000-2000 r-xp 0 00:01\n").expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "malformed line 1 in <maps text>: missing inode"
        );
        let err = MemoryMap::parse("\nzz-2000 r-xp 0 00:01 1 /a\n").expect_err("must fail");
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(MemoryMap::parse("1000-2000 rwzp 0 00:01 1\n").is_err());
        assert!(MemoryMap::parse("3000-2000 r-xp 0 00:01 1\n").is_err());
    }

    #[test]
    fn reads_own_maps() {
        let m = MemoryMap::read(std::process::id()).expect("read own maps");
        assert!(!m.executable_files().is_empty());
        let here = RuntimeAddr(reads_own_maps as *const () as usize as u64);
        let (r, _) = m.lookup(here).expect("own code is mapped");
        assert!(r.perms.execute);
        assert!(r.is_file());
    }

    #[test]
    fn read_error_names_path() {
        let err = MemoryMap::read(u32::MAX).expect_err("no such pid");
        assert_eq!(
            err.to_string(),
            format!("cannot read /proc/{}/maps", u32::MAX)
        );
    }
}
