//! Byte layout of a recording (described in docs/recording-format.md):
//! the file header, record framing, and the payload of each record type.
//!
//! Integers in payloads are unsigned LEB128 varints; strings are a varint
//! length plus UTF-8. Decoding never panics: every read is bounds-checked
//! and every count is checked against the bytes that remain.

use profiler_common::AllocKind;

use crate::intern::Interner;
use crate::profile::{Frame, ModuleId, Pc, ProcessInfo, SiteStats};
use crate::timeline::{totals_from_slice, totals_to_array, MemSample, SiteId, SiteInfo, Tick};

/// First bytes of every recording.
pub const MAGIC: [u8; 8] = *b"HEAPSCP\0";
/// The version this build writes and reads.
pub const VERSION: u32 = 1;
/// Magic + version.
pub const FILE_HEADER_LEN: usize = 12;
/// Payloads larger than this are corruption, not data (a tick of 65,536
/// sites is under 4 MiB).
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// Length (u32) + type (u8) in front of a payload.
pub const RECORD_PREFIX_LEN: usize = 5;
/// CRC-32 (u32) after a payload.
pub const RECORD_SUFFIX_LEN: usize = 4;

/// Record type bytes.
pub const TYPE_HEADER: u8 = 1;
pub const TYPE_SITE: u8 = 2;
pub const TYPE_TICK: u8 = 3;
pub const TYPE_END: u8 = 4;
/// A profiled process (added after version 1 shipped: older readers skip it).
pub const TYPE_PROCESS: u8 = 5;
/// What a tick carries beyond version 1's first tick layout (cross-thread
/// frees per site, glibc's arenas); written just before its tick, skipped
/// by older readers.
pub const TYPE_TICK_EXTRA: u8 = 6;
/// One decision window of the overhead guard (`--max-overhead`), written
/// before its tick; skipped by older readers.
pub const TYPE_GUARD: u8 = 7;

/// Frame kinds and field tags of a site record.
const FRAME_FUNCTION: u8 = 0;
const FRAME_UNKNOWN: u8 = 1;
const FIELD_NAME: u8 = 1;
const FIELD_MODULE: u8 = 2;
const FIELD_FILE: u8 = 3;
const FIELD_LINE: u8 = 4;
const FIELD_INLINED: u8 = 5;
const FIELD_OFFSET: u8 = 6;
/// Module identity and file offset of the frame's address ([`Pc`]); added
/// after version 1 shipped, so older readers skip them and files without
/// them read as `pc: None`.
const FIELD_PC_PATH: u8 = 7;
const FIELD_PC_BUILD_ID: u8 = 8;
const FIELD_PC_OFFSET: u8 = 9;
const FIELD_PC_ADDRESS: u8 = 10;

/// What the session was attached to; the first record of every file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub pid: u32,
    /// /proc/PID/comm of the target.
    pub comm: String,
    /// Attach time, milliseconds since the Unix epoch.
    pub start_unix_ms: u64,
    /// The tick interval the session used.
    pub tick_ms: u64,
    /// The heapscope version that wrote the file.
    pub heapscope_version: String,
    /// Mean bytes between sampled allocations; 0 when every allocation was
    /// captured. A trailing field: files without it read as 0.
    pub sample_rate: u64,
    /// The allocator line (`allocator: jemalloc 5.3.0, preloaded; 26 entry
    /// points`); trailing, empty in older files.
    pub allocator: String,
    /// What heapscope could not see or what its probes cost (the warnings of
    /// the first lines); trailing, empty in older files.
    pub allocator_notes: Vec<String>,
}

/// CRC-32 (IEEE) of a record's type byte and payload.
pub fn record_crc(kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Frames one record: length, type, payload, CRC.
pub fn frame_record(kind: u8, payload: &[u8], out: &mut Vec<u8>) {
    // Payloads are built by this module and stay far below u32::MAX.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out.extend_from_slice(&record_crc(kind, payload).to_le_bytes());
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_field(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn varint_bytes(v: u64) -> Vec<u8> {
    let mut b = Vec::new();
    put_varint(&mut b, v);
    b
}

/// Payload of a header record.
pub fn encode_header(h: &Header) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, u64::from(h.pid));
    put_str(&mut out, &h.comm);
    put_varint(&mut out, h.start_unix_ms);
    put_varint(&mut out, h.tick_ms);
    put_str(&mut out, &h.heapscope_version);
    put_varint(&mut out, h.sample_rate);
    put_str(&mut out, &h.allocator);
    put_varint(&mut out, h.allocator_notes.len() as u64);
    for n in &h.allocator_notes {
        put_str(&mut out, n);
    }
    out
}

/// One frame as a kind byte and tagged fields, so a field added to `Frame`
/// later is one more tag and old files still read (missing → default).
/// The match is exhaustive on purpose: a new field must be stored here.
fn encode_frame(out: &mut Vec<u8>, frame: &Frame) {
    let mut fields: Vec<(u8, Vec<u8>)> = Vec::new();
    let kind = match frame {
        Frame::Function {
            name,
            module,
            file,
            line,
            inlined,
            pc: _,
        } => {
            fields.push((FIELD_NAME, name.as_bytes().to_vec()));
            fields.push((FIELD_MODULE, module.as_bytes().to_vec()));
            if let Some(f) = file {
                fields.push((FIELD_FILE, f.as_bytes().to_vec()));
            }
            if let Some(l) = line {
                fields.push((FIELD_LINE, varint_bytes(u64::from(*l))));
            }
            if *inlined {
                fields.push((FIELD_INLINED, vec![1]));
            }
            FRAME_FUNCTION
        }
        Frame::Unknown { module, offset, .. } => {
            fields.push((FIELD_MODULE, module.as_bytes().to_vec()));
            fields.push((FIELD_OFFSET, varint_bytes(*offset)));
            FRAME_UNKNOWN
        }
    };
    if let Some(pc) = frame.pc() {
        fields.push((FIELD_PC_PATH, pc.module.path.as_bytes().to_vec()));
        if !pc.module.build_id.is_empty() {
            fields.push((FIELD_PC_BUILD_ID, pc.module.build_id.clone()));
        }
        fields.push((FIELD_PC_OFFSET, varint_bytes(pc.offset)));
        fields.push((FIELD_PC_ADDRESS, varint_bytes(pc.address)));
    }
    out.push(kind);
    put_varint(out, fields.len() as u64);
    for (tag, value) in fields {
        put_field(out, tag, &value);
    }
}

/// Payload of a site record.
pub fn encode_site(id: SiteId, info: &SiteInfo) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, u64::from(id.0));
    put_str(&mut out, info.api);
    put_varint(&mut out, info.frames.len() as u64);
    for f in info.frames.iter() {
        encode_frame(&mut out, f);
    }
    // Trailing: files from before sites had a process read it as absent.
    put_varint(&mut out, u64::from(info.pid));
    out
}

/// Payload of a process record; a later record of the same pid replaces it.
pub fn encode_process(p: &ProcessInfo) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, u64::from(p.pid));
    put_varint(&mut out, u64::from(p.parent));
    put_str(&mut out, &p.comm);
    put_str(&mut out, &p.cmdline);
    out
}

/// Decodes a process payload.
pub fn decode_process(buf: &[u8]) -> Result<ProcessInfo, &'static str> {
    let mut c = Cursor::new(buf);
    let p = ProcessInfo {
        pid: c.u32()?,
        parent: c.u32()?,
        comm: c.string()?,
        cmdline: c.string()?,
    };
    c.done()?;
    Ok(p)
}

/// A tick's memory sample in a fixed order; values added later go at the
/// end (older files read them as 0).
fn mem_to_array(m: &MemSample) -> [u64; 13] {
    let MemSample {
        rss_anon,
        rss_file,
        rss_shmem,
        heap_mappings,
        arena_heaps,
        allocator_mapped,
        main_heap_resident,
        arenas,
        arena_reserved,
        arena_resident,
        mmapped_chunks,
        mmapped_bytes,
        mmapped_resident,
    } = *m;
    [
        rss_anon,
        rss_file,
        rss_shmem,
        heap_mappings,
        arena_heaps,
        allocator_mapped,
        main_heap_resident,
        arenas,
        arena_reserved,
        arena_resident,
        mmapped_chunks,
        mmapped_bytes,
        mmapped_resident,
    ]
}

/// Payload of a tick record: time, totals, memory sample, and the sites in
/// `changes` (those that differ from the previous tick record; all-zero
/// numbers mean the site went away).
pub fn encode_tick(tick: &Tick, changes: &[(SiteId, SiteStats)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, tick.t_ms);
    let totals = totals_to_array(&tick.totals);
    put_varint(&mut out, totals.len() as u64);
    totals.iter().for_each(|v| put_varint(&mut out, *v));
    match &tick.mem {
        None => out.push(0),
        Some(m) => {
            out.push(1);
            let values = mem_to_array(m);
            put_varint(&mut out, values.len() as u64);
            values.iter().for_each(|v| put_varint(&mut out, *v));
        }
    }
    put_varint(&mut out, changes.len() as u64);
    for (id, s) in changes {
        put_varint(&mut out, u64::from(id.0));
        for v in [s.live_bytes, s.live_count, s.alloc_bytes, s.alloc_count] {
            put_varint(&mut out, v);
        }
    }
    out
}

/// Payload of an end record.
pub fn encode_end(t_ms: u64) -> Vec<u8> {
    varint_bytes(t_ms)
}

/// A decoded tick record, before its changes are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TickRecord {
    pub t_ms: u64,
    pub totals: crate::profile::Totals,
    pub mem: Option<MemSample>,
    pub changes: Vec<(SiteId, SiteStats)>,
}

/// Bounds-checked reading of one payload; errors are short reasons that
/// the reader turns into messages with the file and offset.
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        let b = *self.buf.get(self.pos).ok_or("payload ends early")?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err("varint overflows 64 bits");
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes")
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        u32::try_from(self.varint()?).map_err(|_| "value does not fit 32 bits")
    }

    /// A count of items of at least `min_size` bytes each, checked against
    /// what remains so a corrupt count cannot make us allocate.
    fn count(&mut self, min_size: usize) -> Result<usize, &'static str> {
        let n = usize::try_from(self.varint()?).map_err(|_| "count too large")?;
        if n.saturating_mul(min_size.max(1)) > self.remaining() {
            return Err("count larger than the payload");
        }
        Ok(n)
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        let end = self.pos.checked_add(len).ok_or("length overflows")?;
        let b = self.buf.get(self.pos..end).ok_or("payload ends early")?;
        self.pos = end;
        Ok(b)
    }

    fn string(&mut self) -> Result<String, &'static str> {
        let len = self.count(1)?;
        let b = self.bytes(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| "string is not UTF-8")
    }

    fn done(&self) -> Result<(), &'static str> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err("trailing bytes in payload")
        }
    }
}

fn utf8(b: &[u8]) -> Result<String, &'static str> {
    utf8_str(b).map(str::to_string)
}

fn utf8_str(b: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(b).map_err(|_| "string is not UTF-8")
}

/// Decodes a header payload.
pub fn decode_header(buf: &[u8]) -> Result<Header, &'static str> {
    let mut c = Cursor::new(buf);
    let h = Header {
        pid: c.u32()?,
        comm: c.string()?,
        start_unix_ms: c.varint()?,
        tick_ms: c.varint()?,
        heapscope_version: c.string()?,
        sample_rate: 0,
        allocator: String::new(),
        allocator_notes: Vec::new(),
    };
    let mut h = if c.remaining() > 0 {
        Header {
            sample_rate: c.varint()?,
            ..h
        }
    } else {
        h
    };
    if c.remaining() > 0 {
        h.allocator = c.string()?;
        let n = c.count(1)?;
        h.allocator_notes = (0..n).map(|_| c.string()).collect::<Result<_, _>>()?;
    }
    c.done()?;
    Ok(h)
}

/// Decodes one frame; its strings and module identity come from `names`, so
/// repeated ones share one allocation.
fn decode_frame(c: &mut Cursor<'_>, names: &mut Interner) -> Result<Frame, &'static str> {
    let kind = c.u8()?;
    let n = c.count(2)?;
    let (mut name, mut module, mut file, mut line, mut inlined, mut offset) =
        (None, None, None, None, false, None);
    let (mut pc_path, mut pc_build_id, mut pc_offset, mut pc_address) = (None, Vec::new(), None, 0);
    for _ in 0..n {
        let tag = c.u8()?;
        let len = c.count(1)?;
        let value = c.bytes(len)?;
        let mut v = Cursor::new(value);
        match tag {
            FIELD_NAME => name = Some(names.str(utf8_str(value)?)),
            FIELD_MODULE => module = Some(names.str(utf8_str(value)?)),
            FIELD_FILE => file = Some(names.str(utf8_str(value)?)),
            FIELD_LINE => line = Some(v.u32()?),
            FIELD_INLINED => inlined = v.u8()? != 0,
            FIELD_OFFSET => offset = Some(v.varint()?),
            FIELD_PC_PATH => pc_path = Some(utf8(value)?),
            FIELD_PC_BUILD_ID => pc_build_id = value.to_vec(),
            FIELD_PC_OFFSET => pc_offset = Some(v.varint()?),
            FIELD_PC_ADDRESS => pc_address = v.varint()?,
            // Fields of a newer writer: skipped, their length says how far.
            _ => {}
        }
    }
    let pc = match (pc_path, pc_offset) {
        (Some(path), Some(offset)) => Some(Pc {
            module: names.module(ModuleId {
                path,
                build_id: pc_build_id,
            }),
            offset,
            address: pc_address,
        }),
        _ => None,
    };
    match kind {
        FRAME_FUNCTION => Ok(Frame::Function {
            name: name.ok_or("function frame without a name")?,
            module: module.unwrap_or_else(|| names.str("")),
            file,
            line,
            inlined,
            pc,
        }),
        FRAME_UNKNOWN => Ok(Frame::Unknown {
            module: module.unwrap_or_else(|| names.str("?")),
            offset: offset.ok_or("unknown frame without an offset")?,
            pc,
        }),
        _ => Err("unknown frame kind"),
    }
}

/// The `&'static str` of an allocator API name; `?` for names this build
/// does not know.
pub fn api_symbol(name: &str) -> &'static str {
    AllocKind::ALL
        .iter()
        .map(|k| k.symbol())
        .find(|s| *s == name)
        .unwrap_or("?")
}

/// Decodes a site payload; `pid` is 0 in files written before sites had a
/// process (the reader puts the header's pid there).
pub fn decode_site(buf: &[u8]) -> Result<(SiteId, SiteInfo), &'static str> {
    decode_site_with(buf, &mut Interner::new())
}

/// [`decode_site`] taking the frames' strings from `names`, shared with the
/// sites decoded before.
pub fn decode_site_with(
    buf: &[u8],
    names: &mut Interner,
) -> Result<(SiteId, SiteInfo), &'static str> {
    let mut c = Cursor::new(buf);
    let id = SiteId(c.u32()?);
    let api = api_symbol(&c.string()?);
    let n = c.count(2)?;
    let frames = (0..n)
        .map(|_| decode_frame(&mut c, names))
        .collect::<Result<Vec<_>, _>>()?;
    let pid = if c.remaining() > 0 { c.u32()? } else { 0 };
    c.done()?;
    Ok((
        id,
        SiteInfo {
            pid,
            frames: frames.into(),
            api,
        },
    ))
}

/// Decodes a tick payload.
pub fn decode_tick(buf: &[u8]) -> Result<TickRecord, &'static str> {
    let mut c = Cursor::new(buf);
    let t_ms = c.varint()?;
    let n = c.count(1)?;
    let totals: Vec<u64> = (0..n).map(|_| c.varint()).collect::<Result<_, _>>()?;
    let mem = match c.u8()? {
        0 => None,
        1 => {
            let n = c.count(1)?;
            let v: Vec<u64> = (0..n).map(|_| c.varint()).collect::<Result<_, _>>()?;
            let g = |i: usize| v.get(i).copied().unwrap_or(0);
            Some(MemSample {
                rss_anon: g(0),
                rss_file: g(1),
                rss_shmem: g(2),
                heap_mappings: g(3),
                arena_heaps: g(4),
                allocator_mapped: g(5),
                main_heap_resident: g(6),
                arenas: g(7),
                arena_reserved: g(8),
                arena_resident: g(9),
                mmapped_chunks: g(10),
                mmapped_bytes: g(11),
                mmapped_resident: g(12),
            })
        }
        _ => return Err("bad memory-sample flag"),
    };
    let n = c.count(5)?;
    let mut changes = Vec::with_capacity(n);
    for _ in 0..n {
        let id = SiteId(c.u32()?);
        let stats = SiteStats {
            live_bytes: c.varint()?,
            live_count: c.varint()?,
            alloc_bytes: c.varint()?,
            alloc_count: c.varint()?,
            cross_free_bytes: 0,
            cross_free_count: 0,
        };
        changes.push((id, stats));
    }
    c.done()?;
    Ok(TickRecord {
        t_ms,
        totals: totals_from_slice(&totals),
        mem,
        changes,
    })
}

/// Decodes an end payload.
pub fn decode_end(buf: &[u8]) -> Result<u64, &'static str> {
    let mut c = Cursor::new(buf);
    let t = c.varint()?;
    c.done()?;
    Ok(t)
}

mod guard;
mod tick_extra;
pub use guard::{decode_guard, encode_guard};
pub use tick_extra::{decode_tick_extra, encode_tick_extra, TickExtra};

#[cfg(test)]
mod tests;
