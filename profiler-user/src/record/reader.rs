//! Reading a recording back into a [`Timeline`].
//!
//! A record that runs past the end of the file, or the file's last record
//! failing its CRC, is the tail of a profiler that was killed (or of a torn
//! write): it is dropped and the recording is marked `truncated`. Damage
//! followed by more data is an error naming the byte offset.

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use crate::timeline::{Timeline, DEFAULT_MAX_TICKS};

use super::format::{self, Header};
use super::RecordError;

/// A recording as read from disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    pub header: Header,
    pub timeline: Timeline,
    /// A partial or damaged last record was ignored.
    pub truncated: bool,
    /// The end record's time: `Some` when the profiler stopped cleanly.
    pub end_ms: Option<u64>,
    /// Records of types this build does not know (from a newer writer).
    pub skipped_records: u64,
}

/// Opens and reads `path`, keeping up to [`DEFAULT_MAX_TICKS`] ticks.
pub fn open(path: &Path) -> Result<Recording, RecordError> {
    open_with(path, DEFAULT_MAX_TICKS)
}

/// Opens and reads `path`, keeping up to `max_ticks` ticks (older ones are
/// downsampled as in [`Timeline`]).
pub fn open_with(path: &Path, max_ticks: usize) -> Result<Recording, RecordError> {
    let file = File::open(path).map_err(|source| RecordError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    read(BufReader::new(file), path, max_ticks)
}

/// Reads as much of `buf` as is available, stopping early only at EOF.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// What one attempt to read a record gave.
enum Next {
    Record {
        kind: u8,
        payload: Vec<u8>,
    },
    /// Clean end of file between records.
    Eof,
    /// The file ends inside this record, or its last record is damaged.
    Partial,
}

struct Input<R> {
    r: R,
    path: PathBuf,
    offset: u64,
}

impl<R: BufRead> Input<R> {
    fn io(&self, source: std::io::Error) -> RecordError {
        RecordError::Read {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> RecordError {
        RecordError::Corrupt {
            path: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn at_eof(&mut self) -> Result<bool, RecordError> {
        match self.r.fill_buf() {
            Ok(b) => Ok(b.is_empty()),
            Err(e) => Err(self.io(e)),
        }
    }

    fn next(&mut self) -> Result<Next, RecordError> {
        let start = self.offset;
        let mut prefix = [0u8; format::RECORD_PREFIX_LEN];
        let got = read_full(&mut self.r, &mut prefix).map_err(|e| self.io(e))?;
        match got {
            0 => return Ok(Next::Eof),
            n if n < prefix.len() => return Ok(Next::Partial),
            _ => {}
        }
        let len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let kind = prefix[4];
        if len > format::MAX_PAYLOAD {
            return Err(self.corrupt(start, format!("record length {len} exceeds 64 MiB")));
        }
        // `take` + `read_to_end` grows with the data actually there, so a
        // corrupt length does not allocate 64 MiB up front.
        let mut payload = Vec::new();
        let got = (&mut self.r)
            .take(u64::from(len))
            .read_to_end(&mut payload)
            .map_err(|e| self.io(e))?;
        let mut crc = [0u8; format::RECORD_SUFFIX_LEN];
        if got < len as usize || read_full(&mut self.r, &mut crc).map_err(|e| self.io(e))? < 4 {
            return Ok(Next::Partial);
        }
        if u32::from_le_bytes(crc) != format::record_crc(kind, &payload) {
            if self.at_eof()? {
                return Ok(Next::Partial);
            }
            return Err(self.corrupt(start, "record checksum mismatch"));
        }
        self.offset =
            start + (format::RECORD_PREFIX_LEN + format::RECORD_SUFFIX_LEN) as u64 + u64::from(len);
        Ok(Next::Record { kind, payload })
    }
}

/// Reads a recording from `r`; `path` names it in errors. Never panics,
/// whatever the bytes.
pub fn read(mut r: impl BufRead, path: &Path, max_ticks: usize) -> Result<Recording, RecordError> {
    let path_buf = path.to_path_buf();
    let mut head = [0u8; format::FILE_HEADER_LEN];
    let got = read_full(&mut r, &mut head).map_err(|source| RecordError::Read {
        path: path_buf.clone(),
        source,
    })?;
    let magic_len = got.min(format::MAGIC.len());
    if head[..magic_len] != format::MAGIC[..magic_len] {
        return Err(RecordError::BadMagic { path: path_buf });
    }
    if got < head.len() {
        return Err(RecordError::TooShort {
            path: path_buf,
            len: got as u64,
        });
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != format::VERSION {
        return Err(RecordError::UnsupportedVersion {
            path: path_buf,
            version,
            supported: format::VERSION,
        });
    }
    let mut input = Input {
        r,
        path: path_buf.clone(),
        offset: format::FILE_HEADER_LEN as u64,
    };
    let mut header: Option<Header> = None;
    let mut timeline = Timeline::new(max_ticks);
    let mut last_t: u64 = 0;
    let (mut truncated, mut end_ms, mut skipped) = (false, None, 0u64);
    loop {
        let at = input.offset;
        let (kind, payload) = match input.next()? {
            Next::Record { kind, payload } => (kind, payload),
            Next::Eof => break,
            Next::Partial => {
                truncated = true;
                break;
            }
        };
        let bad = |reason: &str| input.corrupt(at, reason);
        if end_ms.is_some() {
            return Err(bad("record after the end record"));
        }
        match (kind, header.is_some()) {
            (format::TYPE_HEADER, false) => {
                header = Some(format::decode_header(&payload).map_err(bad)?);
            }
            (format::TYPE_HEADER, true) => return Err(bad("second header record")),
            (_, false) => return Err(bad("the first record is not the header")),
            (format::TYPE_SITE, true) => {
                let (id, info) = format::decode_site(&payload).map_err(bad)?;
                if id.0 as usize != timeline.sites().len() {
                    return Err(bad(&format!("site {} out of order", id.0)));
                }
                timeline.add_site(info);
            }
            (format::TYPE_TICK, true) => {
                let t = format::decode_tick(&payload).map_err(bad)?;
                if t.t_ms < last_t {
                    return Err(bad("tick goes back in time"));
                }
                last_t = t.t_ms;
                if let Some((id, _)) = t
                    .changes
                    .iter()
                    .find(|(id, _)| id.0 as usize >= timeline.sites().len())
                {
                    return Err(bad(&format!("tick names unknown site {}", id.0)));
                }
                timeline.push_changes(t.t_ms, t.changes, t.totals, t.mem);
            }
            (format::TYPE_END, true) => end_ms = Some(format::decode_end(&payload).map_err(bad)?),
            // A record type from a newer writer of this version: skip it.
            _ => skipped += 1,
        }
    }
    let header = header.ok_or(RecordError::MissingHeader { path: path_buf })?;
    Ok(Recording {
        header,
        timeline,
        truncated,
        end_ms,
        skipped_records: skipped,
    })
}
