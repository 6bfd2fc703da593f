//! pprof (`profile.proto`, gzipped): the format `go tool pprof`, Grafana
//! Pyroscope and Parca read.
//!
//! Sample types follow Go's heap profiles — `alloc_objects/count`,
//! `alloc_space/bytes`, `inuse_objects/count`, `inuse_space/bytes`, with
//! `inuse_space` the default — so tools treat the file as a heap profile.
//! Every physical frame becomes a `Location` in a `Mapping` that names the
//! module file, its build-id and the file offset of the address, so a tool
//! can symbolize again where heapscope could not; frames inlined at one
//! address are the `Line`s of one location, innermost first.

mod proto;

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::exactness::Exactness;
use crate::profile::{physical_frames, Frame, ModuleId, Profile};

use super::ViewError;
use proto::Message;

/// Go's heap sample types, in Go's order: (type, unit).
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// Label key of the allocator entry point on each sample (`malloc`, `mmap`...).
pub const ALLOCATOR_LABEL: &str = "allocator";
/// Label keys of the process of each sample (numeric pid, and its name),
/// when the profile has several processes (`go tool pprof -tagroot pid`).
pub const PID_LABEL: &str = "pid";
pub const COMM_LABEL: &str = "comm";

/// Where the modules without a known load address are placed (each gets
/// its own 4 GiB slot from here), so their addresses never overlap.
const SYNTHETIC_BASE: u64 = 0x7e00_0000_0000;

/// What the profile carries besides the sites.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PprofOptions {
    /// Mean bytes between sampled allocations; 0 when every allocation was
    /// captured (the period is then 1).
    pub sample_rate: u64,
    /// Start of the window, nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// Length of the window in nanoseconds.
    pub duration_nanos: i64,
    /// Free text shown by `go tool pprof -comments`.
    pub comments: Vec<String>,
}

impl PprofOptions {
    /// Options of a window ending `end_ms` after attach and lasting
    /// `duration_ms`, of a session that attached at `start_unix_ms` to `pid`
    /// (`comm`), with the window's sampling and losses in `exactness`.
    pub fn for_window(
        start_unix_ms: u64,
        end_ms: u64,
        duration_ms: u64,
        exactness: Exactness,
        pid: u32,
        comm: &str,
    ) -> PprofOptions {
        let start_ms = start_unix_ms.saturating_add(end_ms.saturating_sub(duration_ms));
        let sample_rate = exactness.sample_rate;
        let mode = exactness.sites_note();
        let nanos = |ms: u64| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        PprofOptions {
            sample_rate,
            time_nanos: nanos(start_ms),
            duration_nanos: nanos(duration_ms),
            comments: vec![format!("heapscope: pid {pid} ({comm})"), mode],
        }
    }
}

/// The string table: index 0 is the empty string, as pprof requires.
struct Strings {
    index: HashMap<String, i64>,
    table: Vec<String>,
}

impl Strings {
    fn new() -> Strings {
        Strings {
            index: HashMap::from([(String::new(), 0)]),
            table: vec![String::new()],
        }
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(i) = self.index.get(s) {
            return *i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// One module's mapping, built from the frames that name it.
struct MappingInfo {
    id: u64,
    module: Arc<ModuleId>,
    /// Load address: runtime address − file offset of the first frame seen.
    base: u64,
    min_offset: u64,
    max_offset: u64,
    all_functions: bool,
    any_file: bool,
    any_line: bool,
    any_inlined: bool,
}

/// Builder state: ids are handed out in order of first use (1, 2, ...), so
/// the output depends only on the profile.
struct Builder {
    strings: Strings,
    mappings: Vec<MappingInfo>,
    mapping_ids: HashMap<Arc<ModuleId>, usize>,
    functions: HashMap<(String, String), u64>,
    function_msgs: Vec<Message>,
    /// A physical frame (its frames, root-most first) → location id.
    locations: HashMap<Vec<Frame>, u64>,
    location_frames: Vec<Vec<Frame>>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            strings: Strings::new(),
            mappings: Vec::new(),
            mapping_ids: HashMap::new(),
            functions: HashMap::new(),
            function_msgs: Vec::new(),
            locations: HashMap::new(),
            location_frames: Vec::new(),
        }
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (name.to_string(), file.to_string());
        if let Some(id) = self.functions.get(&key) {
            return *id;
        }
        let id = self.function_msgs.len() as u64 + 1;
        let (name_id, file_id) = (self.strings.id(name), self.strings.id(file));
        let mut m = Message::new();
        // The symbolizer keeps demangled names only: the system name is the same.
        m.uint(1, id)
            .int(2, name_id)
            .int(3, name_id)
            .int(4, file_id);
        self.function_msgs.push(m);
        self.functions.insert(key, id);
        id
    }

    fn note_mapping(&mut self, group: &[Frame]) {
        let Some(pc) = group.last().and_then(Frame::pc) else {
            return;
        };
        let idx = match self.mapping_ids.get(&pc.module) {
            Some(i) => *i,
            None => {
                let i = self.mappings.len();
                let base = match pc.address.checked_sub(pc.offset) {
                    Some(b) if pc.address != 0 => b,
                    _ => SYNTHETIC_BASE + ((i as u64) << 32),
                };
                self.mappings.push(MappingInfo {
                    id: i as u64 + 1,
                    module: Arc::clone(&pc.module),
                    base,
                    min_offset: pc.offset,
                    max_offset: pc.offset,
                    all_functions: true,
                    any_file: false,
                    any_line: false,
                    any_inlined: false,
                });
                self.mapping_ids.insert(Arc::clone(&pc.module), i);
                i
            }
        };
        let m = &mut self.mappings[idx];
        m.min_offset = m.min_offset.min(pc.offset);
        m.max_offset = m.max_offset.max(pc.offset);
        for f in group {
            match f {
                Frame::Function {
                    file,
                    line,
                    inlined,
                    ..
                } => {
                    m.any_file |= file.is_some();
                    m.any_line |= line.is_some();
                    m.any_inlined |= *inlined;
                }
                Frame::Unknown { .. } => m.all_functions = false,
            }
        }
    }

    fn location(&mut self, group: &[Frame]) -> u64 {
        if let Some(id) = self.locations.get(group) {
            return *id;
        }
        self.note_mapping(group);
        let id = self.location_frames.len() as u64 + 1;
        self.locations.insert(group.to_vec(), id);
        self.location_frames.push(group.to_vec());
        id
    }

    /// The encoded location `id` (mappings must be final: limits are used).
    fn location_msg(&mut self, id: u64, group: &[Frame]) -> Message {
        let mut m = Message::new();
        m.uint(1, id);
        if let Some(pc) = group.last().and_then(Frame::pc) {
            if let Some(map) = self.mapping_ids.get(&pc.module).map(|i| &self.mappings[*i]) {
                m.uint(2, map.id).uint(3, map.base.wrapping_add(pc.offset));
            }
        }
        // Lines leaf first: the innermost inlined function, then its callers.
        for f in group.iter().rev() {
            let (name, file, line) = match f {
                Frame::Function {
                    name, file, line, ..
                } => (name.to_string(), file.as_deref().unwrap_or(""), *line),
                // An unresolved address with a mapping stays without lines, so
                // tools symbolize it from the module; without one its label
                // is all there is to show.
                Frame::Unknown { pc: Some(_), .. } => continue,
                Frame::Unknown { pc: None, .. } => (f.label(), "", None),
            };
            let fid = self.function(&name, file);
            let mut l = Message::new();
            l.uint(1, fid).int(2, line.map_or(0, i64::from));
            m.message(4, &l);
        }
        m
    }

    /// pprof takes the first mapping for the main binary (its `File:`
    /// line): move the module defining `main` there, or else the one named
    /// like the process (`comm`, at most 15 characters of the file name).
    fn main_mapping_first(&mut self, comm: &str) {
        let main = self.location_frames.iter().find_map(|g| {
            let defines_main = g
                .iter()
                .any(|f| matches!(f, Frame::Function { name, .. } if &**name == "main"));
            defines_main
                .then(|| g.last().and_then(Frame::pc))
                .flatten()
                .map(|pc| Arc::clone(&pc.module))
        });
        let named_like_comm = || {
            self.mappings.iter().find_map(|m| {
                let name = std::path::Path::new(&m.module.path).file_name()?.to_str()?;
                (!comm.is_empty() && name.starts_with(comm)).then(|| Arc::clone(&m.module))
            })
        };
        let Some(idx) = main
            .or_else(named_like_comm)
            .and_then(|m| self.mapping_ids.get(&m).copied())
        else {
            return;
        };
        let m = self.mappings.remove(idx);
        self.mappings.insert(0, m);
        for (i, m) in self.mappings.iter_mut().enumerate() {
            m.id = i as u64 + 1;
            self.mapping_ids.insert(Arc::clone(&m.module), i);
        }
    }

    fn mapping_msg(&mut self, map_idx: usize) -> Message {
        let (path, build_id) = {
            let map = &self.mappings[map_idx];
            (map.module.path.clone(), map.module.build_id_hex())
        };
        let (file_id, build_id_id) = (self.strings.id(&path), self.strings.id(&build_id));
        let map = &self.mappings[map_idx];
        // Page-aligned, so `address - start + file_offset` is the frame's file offset.
        let first = map.min_offset & !0xfff;
        let mut m = Message::new();
        m.uint(1, map.id)
            .uint(2, map.base.wrapping_add(first))
            .uint(3, map.base.wrapping_add(map.max_offset).wrapping_add(1))
            .uint(4, first)
            .int(5, file_id)
            .int(6, build_id_id)
            .boolean(7, map.all_functions)
            .boolean(8, map.any_file)
            .boolean(9, map.any_line)
            .boolean(10, map.any_inlined);
        m
    }
}

/// Encodes `profile` as an uncompressed `profile.proto` message.
pub fn encode(opts: &PprofOptions, profile: &Profile) -> Vec<u8> {
    encode_parts(opts, &[(profile, 1)])
}

/// Encodes `window` minus `baseline`: the baseline's samples with negated
/// values beside the window's, which pprof tools sum per stack (what
/// `go tool pprof -diff_base` computes from two files).
pub fn encode_diff(opts: &PprofOptions, baseline: &Profile, window: &Profile) -> Vec<u8> {
    encode_parts(opts, &[(window, 1), (baseline, -1)])
}

/// Encodes the sites of each profile with its values multiplied by its sign.
fn encode_parts(opts: &PprofOptions, parts: &[(&Profile, i64)]) -> Vec<u8> {
    let mut b = Builder::new();
    let mut top = Message::new();
    for (ty, unit) in SAMPLE_TYPES {
        let mut vt = Message::new();
        vt.int(1, b.strings.id(ty)).int(2, b.strings.id(unit));
        top.message(1, &vt);
    }
    for (profile, sign) in parts {
        let several = profile.several_processes();
        let mut comms: std::collections::BTreeMap<u32, String> = Default::default();
        for site in &profile.sites {
            let s = &site.stats;
            let values = [s.alloc_count, s.alloc_bytes, s.live_count, s.live_bytes];
            if values.iter().all(|v| *v == 0) {
                continue;
            }
            let mut ids: Vec<u64> = physical_frames(&site.frames)
                .into_iter()
                .map(|g| b.location(g))
                .collect();
            ids.reverse();
            let mut sample = Message::new();
            sample.packed(1, ids);
            // Negative values (a subtracted baseline) are two's complement,
            // as protobuf encodes int64.
            sample.packed(
                2,
                values
                    .iter()
                    .map(|v| i64::try_from(*v).unwrap_or(i64::MAX).saturating_mul(*sign) as u64),
            );
            let mut label = Message::new();
            label
                .int(1, b.strings.id(ALLOCATOR_LABEL))
                .int(2, b.strings.id(site.api));
            sample.message(3, &label);
            if several {
                let mut pid = Message::new();
                pid.int(1, b.strings.id(PID_LABEL))
                    .int(3, i64::from(site.pid));
                sample.message(3, &pid);
                let comm = comms
                    .entry(site.pid)
                    .or_insert_with(|| profile.process(site.pid).comm);
                let mut name = Message::new();
                name.int(1, b.strings.id(COMM_LABEL))
                    .int(2, b.strings.id(comm));
                sample.message(3, &name);
            }
            top.message(2, &sample);
        }
    }
    let comm = parts.first().map_or("", |(p, _)| p.comm.as_str());
    b.main_mapping_first(comm);
    for i in 0..b.mappings.len() {
        let m = b.mapping_msg(i);
        top.message(3, &m);
    }
    let groups = std::mem::take(&mut b.location_frames);
    for (i, g) in groups.iter().enumerate() {
        let m = b.location_msg(i as u64 + 1, g);
        top.message(4, &m);
    }
    for f in &b.function_msgs {
        top.message(5, f);
    }
    let mut period_type = Message::new();
    period_type
        .int(1, b.strings.id("space"))
        .int(2, b.strings.id("bytes"));
    let comments: Vec<u64> = opts
        .comments
        .iter()
        .map(|c| b.strings.id(c) as u64)
        .collect();
    let default_type = b.strings.id("inuse_space");
    for s in &b.strings.table {
        top.bytes(6, s.as_bytes());
    }
    top.int(9, opts.time_nanos)
        .int(10, opts.duration_nanos)
        .message(11, &period_type)
        .int(
            12,
            i64::try_from(opts.sample_rate.max(1)).unwrap_or(i64::MAX),
        )
        .packed(13, comments)
        .int(14, default_type);
    top.into_bytes()
}

/// Writes `profile` as gzipped pprof (what `go tool pprof` reads).
pub fn write_pprof(
    opts: &PprofOptions,
    profile: &Profile,
    out: &mut dyn Write,
) -> Result<(), ViewError> {
    gzip(&encode(opts, profile), out)
}

/// Writes `window` minus `baseline` as gzipped pprof (see [`encode_diff`]).
pub fn write_pprof_diff(
    opts: &PprofOptions,
    baseline: &Profile,
    window: &Profile,
    out: &mut dyn Write,
) -> Result<(), ViewError> {
    gzip(&encode_diff(opts, baseline, window), out)
}

fn gzip(raw: &[u8], out: &mut dyn Write) -> Result<(), ViewError> {
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(raw)?;
    gz.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests;
