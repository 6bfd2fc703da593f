//! One line of `/proc/PID/maps`: a mapped range, its permissions and the
//! file (and offset in it) behind it.

use std::fmt;

use crate::addr::{FileOffset, RuntimeAddr};

/// Access permissions of a mapping (the `rwxp` / `rwxs` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
    /// `s` (shared) rather than `p` (private, copy-on-write).
    pub shared: bool,
}

impl Perms {
    pub(super) fn parse(text: &str) -> Option<Perms> {
        let b = text.as_bytes();
        if b.len() != 4 {
            return None;
        }
        let flag = |c: u8, set: u8| match c {
            _ if c == set => Some(true),
            b'-' => Some(false),
            _ => None,
        };
        Some(Perms {
            read: flag(b[0], b'r')?,
            write: flag(b[1], b'w')?,
            execute: flag(b[2], b'x')?,
            shared: match b[3] {
                b's' => true,
                b'p' => false,
                _ => return None,
            },
        })
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |on: bool, ch: char| if on { ch } else { '-' };
        write!(
            f,
            "{}{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.execute, 'x'),
            if self.shared { 's' } else { 'p' }
        )
    }
}

/// Device number (`major:minor`, hex in the maps file) of the backing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Device {
    pub major: u32,
    pub minor: u32,
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address of the mapping.
    pub end: u64,
    pub perms: Perms,
    /// Offset in the backing file that `start` maps.
    pub file_offset: u64,
    pub dev: Device,
    pub inode: u64,
    /// The path column with any ` (deleted)` suffix removed; pseudo paths such
    /// as `[heap]` are kept verbatim. `None` for anonymous mappings.
    pub path: Option<String>,
    /// The backing file was unlinked after it was mapped (` (deleted)` suffix).
    pub deleted: bool,
}

impl Region {
    /// True when the mapping is backed by a file on disk rather than being a
    /// pseudo mapping (`[heap]`, `[vdso]`, `[anon:...]`, `anon_inode:...`).
    pub fn is_file(&self) -> bool {
        // Kernel-named mappings never start with '/', real files always do.
        self.path.as_deref().is_some_and(|p| p.starts_with('/'))
    }

    /// True when the mapping contains `addr`.
    pub fn contains(&self, addr: RuntimeAddr) -> bool {
        self.start <= addr.0 && addr.0 < self.end
    }

    /// The file offset that `addr` maps to, if `addr` is inside this region.
    pub fn file_offset_of(&self, addr: RuntimeAddr) -> Option<FileOffset> {
        if !self.contains(addr) {
            return None;
        }
        Some(FileOffset(addr.0 - self.start + self.file_offset))
    }

    /// The last path component, used as the module name in frames.
    pub fn file_name(&self) -> Option<&str> {
        let path = self.path.as_deref()?;
        Some(path.rsplit('/').next().unwrap_or(path))
    }
}
