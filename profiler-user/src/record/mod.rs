//! Recordings: a versioned, append-only file of a session, written while
//! attached and read by `report`, `diff` and `export`.
//!
//! Every record is framed with its length and a CRC-32 and each tick is
//! flushed as it comes, so a profiler killed mid-run leaves a file that reads
//! up to its last whole record. The layout is in `docs/recording-format.md`
//! and [`format`].

pub mod format;
pub mod reader;
mod scan;
pub mod writer;

use std::path::PathBuf;

pub use format::Header;
pub use reader::{open, open_with, read, Damage, Recording};
pub use writer::Writer;

/// Errors of reading or writing a recording; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot create recording {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write recording {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read recording {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a heapscope recording (bad magic)", .path.display())]
    BadMagic { path: PathBuf },
    #[error("{} is too short to be a heapscope recording ({len} bytes)", .path.display())]
    TooShort { path: PathBuf, len: u64 },
    #[error(
        "{} is recording format version {version}; this heapscope reads version {supported}",
        .path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        version: u32,
        supported: u32,
    },
    #[error("{} has no complete header record (cut before the first tick?)", .path.display())]
    MissingHeader { path: PathBuf },
    #[error("{} is corrupt at byte {offset}: {reason}", .path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("cannot record to {}: {reason}", .path.display())]
    InvalidInput { path: PathBuf, reason: String },
}

#[cfg(test)]
mod damage_tests;
#[cfg(test)]
mod pc_tests;
#[cfg(test)]
mod tests;
