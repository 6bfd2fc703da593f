//! Writing a recording while attached.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::profile::SiteStats;
use crate::timeline::{SiteId, SiteInfo, Tick};

use super::format::{self, Header};
use super::RecordError;

/// Appends records to a recording. Sites are buffered; every tick is written
/// and flushed to the OS (no fsync per tick: a killed profiler loses nothing
/// that reached the kernel, and [`Writer::finish`] syncs nothing itself).
pub struct Writer<W: Write> {
    out: W,
    path: PathBuf,
    sites: u32,
    /// Site numbers of the last tick written, so a tick stores only changes.
    prev: BTreeMap<SiteId, SiteStats>,
    last_t_ms: u64,
    scratch: Vec<u8>,
}

impl Writer<BufWriter<File>> {
    /// Creates (or truncates) `path` and writes the file header and `header`.
    pub fn create(path: &Path, header: &Header) -> Result<Self, RecordError> {
        let file = File::create(path).map_err(|source| RecordError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        Writer::new(BufWriter::new(file), path, header)
    }
}

impl<W: Write> Writer<W> {
    /// Starts a recording on `out`; `path` names it in errors.
    pub fn new(out: W, path: &Path, header: &Header) -> Result<Self, RecordError> {
        let mut w = Writer {
            out,
            path: path.to_path_buf(),
            sites: 0,
            prev: BTreeMap::new(),
            last_t_ms: 0,
            scratch: Vec::new(),
        };
        let mut head = Vec::with_capacity(format::FILE_HEADER_LEN);
        head.extend_from_slice(&format::MAGIC);
        head.extend_from_slice(&format::VERSION.to_le_bytes());
        w.write_bytes(&head)?;
        w.record(format::TYPE_HEADER, &format::encode_header(header))?;
        w.flush()?;
        Ok(w)
    }

    fn write_bytes(&mut self, b: &[u8]) -> Result<(), RecordError> {
        self.out.write_all(b).map_err(|source| RecordError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn flush(&mut self) -> Result<(), RecordError> {
        self.out.flush().map_err(|source| RecordError::Write {
            path: self.path.clone(),
            source,
        })
    }

    fn record(&mut self, kind: u8, payload: &[u8]) -> Result<(), RecordError> {
        if payload.len() > format::MAX_PAYLOAD as usize {
            return Err(self.invalid(format!(
                "a record of {} bytes exceeds the format's 64 MiB limit",
                payload.len()
            )));
        }
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        format::frame_record(kind, payload, &mut buf);
        let r = self.write_bytes(&buf);
        self.scratch = buf;
        r
    }

    fn invalid(&self, reason: String) -> RecordError {
        RecordError::InvalidInput {
            path: self.path.clone(),
            reason,
        }
    }

    /// Writes a call site; ids are handed out 0, 1, 2... in the same order
    /// as [`crate::timeline::Timeline::add_site`].
    pub fn site(&mut self, info: &SiteInfo) -> Result<SiteId, RecordError> {
        let id = SiteId(self.sites);
        self.record(format::TYPE_SITE, &format::encode_site(id, info))?;
        self.sites = self.sites.saturating_add(1);
        Ok(id)
    }

    /// Writes a process (again when its entry changed: the last one counts).
    pub fn process(&mut self, p: &crate::profile::ProcessInfo) -> Result<(), RecordError> {
        self.record(format::TYPE_PROCESS, &format::encode_process(p))
    }

    /// Writes one decision window of the overhead guard (before its tick).
    pub fn guard(&mut self, p: &crate::timeline::GuardPoint) -> Result<(), RecordError> {
        self.record(format::TYPE_GUARD, &format::encode_guard(p))
    }

    /// Writes a tick (only the sites that changed since the previous one)
    /// and flushes. Every site it names must have been written before, and
    /// ticks must not go back in time.
    pub fn tick(&mut self, tick: &Tick) -> Result<(), RecordError> {
        if tick.t_ms < self.last_t_ms {
            return Err(self.invalid(format!(
                "tick at {} ms after a tick at {} ms",
                tick.t_ms, self.last_t_ms
            )));
        }
        if let Some((id, _)) = tick.sites.iter().find(|(id, _)| id.0 >= self.sites) {
            return Err(self.invalid(format!("tick names site {} before it was written", id.0)));
        }
        let zero = SiteStats::default();
        let next: BTreeMap<SiteId, SiteStats> = tick
            .sites
            .iter()
            .filter(|(_, s)| *s != zero)
            .cloned()
            .collect();
        let mut changes: Vec<(SiteId, SiteStats)> = next
            .iter()
            .filter(|(id, s)| self.prev.get(id) != Some(s))
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        changes.extend(
            self.prev
                .keys()
                .filter(|id| !next.contains_key(id))
                .map(|id| (*id, zero.clone())),
        );
        changes.sort_by_key(|(id, _)| *id);
        let cross: Vec<(SiteId, u64, u64)> = changes
            .iter()
            .filter(|(_, s)| s.cross_free_bytes > 0 || s.cross_free_count > 0)
            .map(|(id, s)| (*id, s.cross_free_bytes, s.cross_free_count))
            .collect();
        if !cross.is_empty() || !tick.arenas.is_empty() {
            let extra = format::TickExtra {
                t_ms: tick.t_ms,
                cross,
                arenas: tick.arenas.clone(),
            };
            self.record(format::TYPE_TICK_EXTRA, &format::encode_tick_extra(&extra))?;
        }
        self.record(format::TYPE_TICK, &format::encode_tick(tick, &changes))?;
        self.flush()?;
        self.prev = next;
        self.last_t_ms = tick.t_ms;
        Ok(())
    }

    /// Flushes and hands back the output without an end record (what a
    /// profiler that is killed leaves behind).
    pub fn into_inner(mut self) -> Result<W, RecordError> {
        self.flush()?;
        Ok(self.out)
    }

    /// Writes the end record (a clean stop at `end_ms`), flushes, and hands
    /// back the output (call `sync_all` on a file to make it durable).
    pub fn finish(mut self, end_ms: u64) -> Result<W, RecordError> {
        self.record(format::TYPE_END, &format::encode_end(end_ms))?;
        self.flush()?;
        Ok(self.out)
    }
}
