//! Reading a recording back into a [`Timeline`].
//!
//! A record cut off by the end of the file, or a last record failing its CRC,
//! is the tail of a profiler that was killed (or of a torn write): it is
//! dropped and the recording is marked `truncated`. Damage followed by more
//! data (a bad length or CRC, an undecodable or out-of-order record) is
//! skipped: reading resumes at the next valid record and the damage is listed
//! in [`Recording::damage`]. Memory stays within a small multiple of the file
//! size whatever the bytes: call sites beyond [`SITE_MEMORY_FACTOR`] times the
//! bytes read are refused.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::intern::{heap_bytes, Interner};
use crate::profile::Frame;
use crate::timeline::{SiteId, SiteInfo, Timeline, DEFAULT_MAX_TICKS};

use super::format::{self, Header};
use super::scan::{At, Scanner};
use super::RecordError;

/// Call sites may take this many bytes of memory per byte of file read
/// (plus [`SITE_MEMORY_BASE`]). Strings are interned, so a frame costs its
/// slot (88 bytes) and each distinct string once; the smallest frame
/// heapscope writes (an unresolved `?` address) takes 12 bytes of file, and
/// real recordings, whose frames carry names, paths and build-ids, stay far
/// below. Crafted files of 4-byte frames are refused early.
pub const SITE_MEMORY_FACTOR: u64 = 8;
pub const SITE_MEMORY_BASE: u64 = 32 << 20;
/// Damaged stretches listed one by one; beyond, only counted.
const MAX_DAMAGE_LISTED: usize = 32;
/// Record types a resynchronisation may land on (never a second header).
const RESYNC_KINDS: [u8; 6] = [
    format::TYPE_SITE,
    format::TYPE_TICK,
    format::TYPE_END,
    format::TYPE_PROCESS,
    format::TYPE_TICK_EXTRA,
    format::TYPE_GUARD,
];

/// A stretch of a recording that could not be read and was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// File offset of the first damaged byte.
    pub offset: u64,
    /// Bytes skipped.
    pub bytes: u64,
    /// Records lost (at least one; more when several records lie in the stretch
    /// their count cannot be known and it counts as one).
    pub records: u64,
    pub reason: String,
}

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
    /// Damaged stretches skipped, in file order (the first
    /// [`MAX_DAMAGE_LISTED`]; `damaged_records` counts them all).
    pub damage: Vec<Damage>,
    /// Records lost to damage, all stretches included.
    pub damaged_records: u64,
    /// Tick entries dropped because they named a call site that was lost.
    pub orphan_changes: u64,
}

impl Recording {
    /// True when something in the middle of the file was skipped.
    pub fn is_damaged(&self) -> bool {
        self.damaged_records > 0
    }

    /// `damaged at byte N, K records skipped` for the user.
    pub fn damage_summary(&self) -> Option<String> {
        let first = self.damage.first()?;
        let regions = if self.damage.len() > 1 {
            format!(" ({} damaged stretches)", self.damage.len())
        } else {
            String::new()
        };
        Some(format!(
            "damaged at byte {}: {}; {} record{} skipped{regions}",
            first.offset,
            first.reason,
            self.damaged_records,
            if self.damaged_records == 1 { "" } else { "s" }
        ))
    }
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

/// Bytes of memory a decoded call site holds beyond its strings and module
/// identities (the interner counts those, once each): what the site budget
/// counts, with [`Interner::bytes`].
fn site_memory(info: &SiteInfo) -> u64 {
    std::mem::size_of::<SiteInfo>() as u64
        + heap_bytes(16 + info.frames.len() * std::mem::size_of::<Frame>())
}

/// Reads as much of `buf` as is available, stopping early only at EOF.
fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// The state of a read in progress.
struct State {
    path: PathBuf,
    header: Option<Header>,
    timeline: Timeline,
    last_t: u64,
    end_ms: Option<u64>,
    skipped: u64,
    damage: Vec<Damage>,
    damaged_records: u64,
    /// Bytes skipped as damage: lost call sites may leave gaps in the site
    /// ids, each at least a minimal site record long.
    damaged_bytes: u64,
    orphan_changes: u64,
    site_memory: u64,
    /// The frames' strings and module identities, one allocation each.
    names: Interner,
    /// The extras of the next tick, read just before it.
    extra: Option<format::TickExtra>,
}

/// Processes a recording may name: the kernel side profiles at most
/// `MAX_PROFILED` at once; a few times that allows for exits and new ones.
const MAX_PROCESSES: usize = 4 * profiler_common::MAX_PROFILED as usize;

/// The smallest site record: framing, id, empty api, no frames.
const MIN_SITE_RECORD: u64 = (format::RECORD_PREFIX_LEN + format::RECORD_SUFFIX_LEN) as u64 + 3;

impl State {
    fn damaged(&mut self, offset: u64, bytes: u64, reason: impl Into<String>) {
        self.damaged_records += 1;
        self.damaged_bytes += bytes;
        if self.damage.len() < MAX_DAMAGE_LISTED {
            self.damage.push(Damage {
                offset,
                bytes,
                records: 1,
                reason: reason.into(),
            });
        }
    }

    /// Placeholders for call sites lost to damage, up to `id` excluded; false
    /// when the gap is larger than the damaged bytes could have held.
    fn fill_site_gap(&mut self, id: SiteId) -> bool {
        let have = self.timeline.sites().len() as u64;
        let gap = u64::from(id.0).saturating_sub(have);
        if gap == 0 {
            return true;
        }
        if gap > self.damaged_bytes / MIN_SITE_RECORD {
            return false;
        }
        for _ in 0..gap {
            self.timeline.add_site(SiteInfo {
                pid: self.header.as_ref().map_or(0, |h| h.pid),
                frames: vec![Frame::Unknown {
                    module: self.names.str("[lost: recording damaged]"),
                    offset: 0,
                    pc: None,
                }]
                .into(),
                api: "?",
            });
        }
        true
    }

    /// Applies one framed record; `Err` is a reason to count it as damage.
    fn apply(&mut self, kind: u8, payload: &[u8], bytes_read: u64) -> Result<(), String> {
        if self.end_ms.is_some() {
            return Err("record after the end record".into());
        }
        match (kind, self.header.is_some()) {
            (format::TYPE_HEADER, false) => self.header = Some(format::decode_header(payload)?),
            (format::TYPE_HEADER, true) => return Err("second header record".into()),
            (_, false) => return Err("the first record is not the header".into()),
            (format::TYPE_SITE, true) => {
                let (id, mut info) = format::decode_site_with(payload, &mut self.names)?;
                if info.pid == 0 {
                    // Written before sites had a process: the one process.
                    info.pid = self.header.as_ref().map_or(0, |h| h.pid);
                }
                if (id.0 as usize) < self.timeline.sites().len() {
                    return Err(format!("site {} out of order", id.0));
                }
                if !self.fill_site_gap(id) {
                    return Err(format!("site {} out of order", id.0));
                }
                self.site_memory += site_memory(&info);
                let used = self.site_memory + self.names.bytes();
                let budget = SITE_MEMORY_FACTOR
                    .saturating_mul(bytes_read)
                    .saturating_add(SITE_MEMORY_BASE);
                if used > budget {
                    return Err(format!(
                        "call sites would take {} MiB of memory",
                        used >> 20
                    ));
                }
                self.timeline.add_site(info);
            }
            (format::TYPE_TICK, true) => {
                let mut t = format::decode_tick(payload)?;
                if t.t_ms < self.last_t {
                    return Err("tick goes back in time".into());
                }
                self.last_t = t.t_ms;
                if self.damaged_records > 0 {
                    // Sites lost to damage get placeholders (as far as the
                    // damaged bytes could have held them); beyond, entries
                    // cannot be shown.
                    if let Some(max) = t.changes.iter().map(|(id, _)| id.0).max() {
                        let _ = self.fill_site_gap(SiteId(max.saturating_add(1)));
                    }
                    let known = self.timeline.sites().len();
                    let before = t.changes.len();
                    t.changes.retain(|(id, _)| (id.0 as usize) < known);
                    self.orphan_changes += (before - t.changes.len()) as u64;
                } else if let Some((id, _)) = t
                    .changes
                    .iter()
                    .find(|(id, _)| id.0 as usize >= self.timeline.sites().len())
                {
                    return Err(format!("tick names unknown site {}", id.0));
                }
                // Extras belong to the tick written right after them.
                let extra = self.extra.take().filter(|x| x.t_ms == t.t_ms);
                let arenas = match extra {
                    Some(x) => {
                        let cross: std::collections::BTreeMap<SiteId, (u64, u64)> =
                            x.cross.iter().map(|(id, b, c)| (*id, (*b, *c))).collect();
                        for (id, s) in &mut t.changes {
                            if let Some((b, c)) = cross.get(id) {
                                s.cross_free_bytes = *b;
                                s.cross_free_count = *c;
                            }
                        }
                        x.arenas
                    }
                    None => Vec::new(),
                };
                self.timeline
                    .push_changes_with_arenas(t.t_ms, t.changes, t.totals, t.mem, arenas);
            }
            (format::TYPE_TICK_EXTRA, true) => {
                self.extra = Some(format::decode_tick_extra(payload)?);
            }
            (format::TYPE_GUARD, true) => {
                let p = format::decode_guard(payload)?;
                if p.t_ms < self.last_t {
                    return Err("guard record goes back in time".into());
                }
                self.timeline.guard_window(p);
            }
            (format::TYPE_END, true) => self.end_ms = Some(format::decode_end(payload)?),
            (format::TYPE_PROCESS, true) => {
                let p = format::decode_process(payload)?;
                let known = self.timeline.processes().iter().any(|q| q.pid == p.pid);
                if !known && self.timeline.processes().len() >= MAX_PROCESSES {
                    return Err(format!("more than {MAX_PROCESSES} processes"));
                }
                self.timeline.set_process(p);
            }
            // A record type from a newer writer of this version: skip it.
            _ => self.skipped += 1,
        }
        Ok(())
    }
}

/// Reads a recording from `r`; `path` names it in errors. Never panics and
/// stays within a small multiple of the input's size, whatever the bytes.
pub fn read(mut r: impl BufRead, path: &Path, max_ticks: usize) -> Result<Recording, RecordError> {
    let path_buf = path.to_path_buf();
    let io = |source| RecordError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut head = [0u8; format::FILE_HEADER_LEN];
    let got = read_full(&mut r, &mut head).map_err(io)?;
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
    let mut scan = Scanner::new(r, format::FILE_HEADER_LEN as u64);
    let mut st = State {
        path: path_buf,
        header: None,
        timeline: Timeline::new(max_ticks),
        last_t: 0,
        end_ms: None,
        skipped: 0,
        damage: Vec::new(),
        damaged_records: 0,
        damaged_bytes: 0,
        orphan_changes: 0,
        site_memory: 0,
        names: Interner::new(),
        extra: None,
    };
    let mut truncated = false;
    loop {
        let at = scan.offset;
        match scan.at().map_err(io)? {
            At::Eof => break,
            At::Record { kind, len } => {
                let read_so_far = scan.bytes_read();
                let result = st.apply(kind, scan.payload(len), read_so_far);
                scan.consume(format::RECORD_PREFIX_LEN + len + format::RECORD_SUFFIX_LEN);
                if let Err(reason) = result {
                    if st.header.is_none() {
                        return Err(RecordError::Corrupt {
                            path: st.path,
                            offset: at,
                            reason,
                        });
                    }
                    if reason.starts_with("call sites would take") {
                        return Err(RecordError::Corrupt {
                            path: st.path,
                            offset: at,
                            reason: format!(
                                "{reason} for {} bytes read: not a recording heapscope writes",
                                scan.bytes_read()
                            ),
                        });
                    }
                    st.damaged(at, scan.offset - at, reason);
                }
            }
            At::BadTail => {
                truncated = true;
                break;
            }
            bad @ (At::Partial | At::Bad { .. }) => {
                // A length flipped upwards looks like a cut-off tail: only
                // the absence of any valid record after it says it is one.
                let found = scan.resync(&RESYNC_KINDS).map_err(io)?;
                if !found && matches!(bad, At::Partial) {
                    truncated = true;
                    break;
                }
                let reason = match bad {
                    At::Bad { reason } => reason.to_string(),
                    _ => "record length runs past the next records".to_string(),
                };
                let reason = if found {
                    reason
                } else {
                    format!("{reason}; no valid record follows")
                };
                st.damaged(at, scan.offset - at, reason);
                if !found {
                    break;
                }
            }
        }
    }
    let header = st.header.ok_or(RecordError::MissingHeader {
        path: path.to_path_buf(),
    })?;
    if st.timeline.processes().is_empty() {
        // Written before processes were recorded: the one in the header.
        st.timeline.set_process(crate::profile::ProcessInfo {
            pid: header.pid,
            comm: header.comm.clone(),
            ..Default::default()
        });
    }
    Ok(Recording {
        header,
        timeline: st.timeline,
        truncated,
        end_ms: st.end_ms,
        skipped_records: st.skipped,
        damage: st.damage,
        damaged_records: st.damaged_records,
        orphan_changes: st.orphan_changes,
    })
}
