//! Record framing over a byte stream, with resynchronisation after damage.
//!
//! The reader looks at the stream through a window that holds at most the
//! record being examined: a claimed length is never allocated up front, only
//! the bytes actually there are read, so memory stays below the file size
//! (and below one maximal record). After a bad length or checksum the scanner
//! slides one byte at a time until a whole record with a known type and a
//! matching CRC starts there; the CRC work of that search is bounded by a
//! multiple of the bytes read, so crafted input cannot make it quadratic.

use std::io::{ErrorKind, Read};

use super::format;

/// Bytes read from the source at a time.
const CHUNK: usize = 64 << 10;
/// CRC work allowed while resynchronising: this many times the bytes read
/// so far, plus [`RESYNC_BASE`].
const RESYNC_FACTOR: u64 = 32;
const RESYNC_BASE: u64 = 64 << 20;

/// What lies at the current position.
#[derive(Debug, PartialEq, Eq)]
pub enum At {
    /// A whole record whose CRC matches: `len` payload bytes follow the prefix.
    Record { kind: u8, len: usize },
    /// Nothing more: a clean end between records.
    Eof,
    /// The stream ends inside the record starting here.
    Partial,
    /// A length above the maximum, or a CRC mismatch, with more data after it.
    Bad { reason: &'static str },
    /// A CRC mismatch on the last record of the stream (a torn write).
    BadTail,
}

/// A sliding window over `r`.
pub struct Scanner<R> {
    r: R,
    buf: Vec<u8>,
    /// Index in `buf` of the current position.
    start: usize,
    /// File offset of the current position.
    pub offset: u64,
    eof: bool,
    /// Bytes read from `r` so far.
    read_total: u64,
    /// CRC bytes computed while resynchronising.
    resync_work: u64,
}

impl<R: Read> Scanner<R> {
    /// A scanner whose current position is file offset `offset`.
    pub fn new(r: R, offset: u64) -> Scanner<R> {
        Scanner {
            r,
            buf: Vec::new(),
            start: 0,
            offset,
            eof: false,
            read_total: 0,
            resync_work: 0,
        }
    }

    /// Bytes read from the source so far.
    pub fn bytes_read(&self) -> u64 {
        self.read_total
    }

    /// Makes at least `n` bytes available from the current position, or all
    /// that remain; returns how many are available.
    fn fill(&mut self, n: usize) -> std::io::Result<usize> {
        while self.buf.len() - self.start < n && !self.eof {
            // Drop consumed bytes before growing, so the window holds only
            // what is being examined.
            if self.start > 0 && self.start >= self.buf.len() / 2 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let want = (n - (self.buf.len() - self.start)).clamp(1, CHUNK);
            let old = self.buf.len();
            self.buf.resize(old + want, 0);
            let got = loop {
                match self.r.read(&mut self.buf[old..]) {
                    Ok(g) => break g,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.truncate(old);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(old + got);
            self.read_total += got as u64;
            if got == 0 {
                self.eof = true;
            }
        }
        Ok((self.buf.len() - self.start).min(n))
    }

    /// The payload of the record at the current position (after [`At::Record`]).
    pub fn payload(&self, len: usize) -> &[u8] {
        let p = self.start + format::RECORD_PREFIX_LEN;
        &self.buf[p..p + len]
    }

    /// Moves the current position `n` bytes on (`n` must be available).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len() - self.start);
        self.start += n;
        self.offset += n as u64;
    }

    /// Examines the record at the current position.
    pub fn at(&mut self) -> std::io::Result<At> {
        let prefix = format::RECORD_PREFIX_LEN;
        match self.fill(prefix)? {
            0 => return Ok(At::Eof),
            n if n < prefix => return Ok(At::Partial),
            _ => {}
        }
        let b = &self.buf[self.start..];
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let kind = b[4];
        if len > format::MAX_PAYLOAD {
            return Ok(At::Bad {
                reason: "record length exceeds 64 MiB",
            });
        }
        let whole = prefix + len as usize + format::RECORD_SUFFIX_LEN;
        if self.fill(whole)? < whole {
            return Ok(At::Partial);
        }
        let b = &self.buf[self.start..self.start + whole];
        let payload = &b[prefix..prefix + len as usize];
        let crc = u32::from_le_bytes([b[whole - 4], b[whole - 3], b[whole - 2], b[whole - 1]]);
        if crc == format::record_crc(kind, payload) {
            return Ok(At::Record {
                kind,
                len: len as usize,
            });
        }
        if self.fill(whole + 1)? == whole {
            return Ok(At::BadTail);
        }
        Ok(At::Bad {
            reason: "record checksum mismatch",
        })
    }

    /// After damage at the current position: slides on to the next whole
    /// record of a type in `kinds` with a matching CRC. Returns true when one
    /// was found (the current position is then that record), false when the
    /// stream ended or the search budget ran out (the position is then the end
    /// of what was examined).
    pub fn resync(&mut self, kinds: &[u8]) -> std::io::Result<bool> {
        let prefix = format::RECORD_PREFIX_LEN;
        let suffix = format::RECORD_SUFFIX_LEN;
        self.consume(1);
        loop {
            if self.fill(prefix)? < prefix {
                let rest = self.buf.len() - self.start;
                self.consume(rest);
                return Ok(false);
            }
            let b = &self.buf[self.start..];
            let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            if !kinds.contains(&b[4]) || len > format::MAX_PAYLOAD {
                self.consume(1);
                continue;
            }
            let whole = prefix + len as usize + suffix;
            if self.fill(whole)? < whole {
                self.consume(1);
                continue;
            }
            self.resync_work += whole as u64;
            let budget = RESYNC_FACTOR
                .saturating_mul(self.read_total)
                .saturating_add(RESYNC_BASE);
            if self.resync_work > budget {
                // Give up: everything from here on counts as damaged.
                while self.fill(CHUNK)? > 0 {
                    let rest = self.buf.len() - self.start;
                    self.consume(rest);
                }
                return Ok(false);
            }
            if self.at()?
                == (At::Record {
                    kind: self.buf[self.start + 4],
                    len: len as usize,
                })
            {
                return Ok(true);
            }
            self.consume(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        format::frame_record(kind, payload, &mut out);
        out
    }

    #[test]
    fn frames_records_and_ends() {
        let mut b = rec(3, b"abc");
        b.extend(rec(4, b"z"));
        let mut s = Scanner::new(&b[..], 12);
        assert_eq!(s.at().unwrap(), At::Record { kind: 3, len: 3 });
        assert_eq!(s.payload(3), b"abc");
        s.consume(12);
        assert_eq!(s.offset, 24);
        assert_eq!(s.at().unwrap(), At::Record { kind: 4, len: 1 });
        s.consume(10);
        assert_eq!(s.at().unwrap(), At::Eof);
    }

    #[test]
    fn a_bad_crc_mid_stream_is_bad_at_the_end_a_torn_tail() {
        let mut b = rec(3, b"abc");
        b[6] ^= 1;
        let mut tail = b.clone();
        assert_eq!(Scanner::new(&tail[..], 0).at().unwrap(), At::BadTail);
        tail.extend(rec(3, b"def"));
        assert_eq!(
            Scanner::new(&tail[..], 0).at().unwrap(),
            At::Bad {
                reason: "record checksum mismatch"
            }
        );
    }

    #[test]
    fn resync_finds_the_next_record() {
        let mut b = rec(3, b"first");
        b[0] = 0xff; // a length far beyond the data
        let second_at = b.len();
        b.extend(rec(2, b"second"));
        let mut s = Scanner::new(&b[..], 0);
        assert!(matches!(s.at().unwrap(), At::Partial | At::Bad { .. }));
        assert!(s.resync(&[2, 3, 4]).unwrap());
        assert_eq!(s.offset, second_at as u64);
        assert_eq!(s.at().unwrap(), At::Record { kind: 2, len: 6 });
    }

    #[test]
    fn a_claimed_length_is_not_allocated() {
        // 60 MiB claimed, 20 bytes there.
        let mut b = (60u32 << 20).to_le_bytes().to_vec();
        b.extend([3u8; 16]);
        let mut s = Scanner::new(&b[..], 0);
        assert_eq!(s.at().unwrap(), At::Partial);
        assert!(s.buf.capacity() < 1 << 20, "{}", s.buf.capacity());
    }
}
