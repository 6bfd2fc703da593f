//! Loading the embedded eBPF object and attaching it to one process's allocator.

mod bpf_sys;
pub mod btf;
mod config;
pub mod custom;
mod entry_table;
mod error;
mod exit_hold;
pub mod identify;
pub mod internals;
mod layouts;
mod more;
pub mod multi;
mod preflight;
pub mod procs;
pub mod prologue;
mod single;
pub mod stack_ends;
pub mod target;

use aya::programs::uprobe::UProbeLinkId;
use std::sync::Arc;

use aya::maps::{ArrayOfMaps, MapData, RingBuf};
use aya::{Ebpf, EbpfLoader};

use crate::events::rings::{RingPlan, RingSet};
use profiler_common::{StackMode, ALLOC_TEXT_RANGES};

pub use config::{CaptureConfig, MapSizes, ProbeMode};
use error::source_chain;
pub use error::ProbeError;
pub use preflight::{check_process_kind, has_bpf_privileges, preflight};
pub use target::{AllocatorTarget, AttachPoint};

/// The eBPF object built from `profiler-ebpf` by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/profiler-ebpf"));

/// Fills the fixed-point tables the eBPF side samples and weighs with.
fn fill_tables(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    use profiler_common::{tables, TABLE_LEN};
    for (name, f) in [
        ("EXP_TABLE", tables::exp_quantile as fn(u32) -> u32),
        ("WEIGHT_TABLE", tables::weight as fn(u32) -> u32),
    ] {
        let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
        let mut arr: aya::maps::Array<&mut aya::maps::MapData, u32> =
            aya::maps::Array::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
        for i in 0..TABLE_LEN {
            arr.set(i, f(i), 0)
                .map_err(|source| ProbeError::Map { name, source })?;
        }
    }
    Ok(())
}

/// How the probes went in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachMethod {
    /// `uprobe_multi` links: all entry points of a file in one call each.
    Multi { links: usize },
    /// One perf-event uprobe per probe; `why` says why links were not used.
    Single { why: String },
}

enum Links {
    Multi(multi::MultiLinks),
    Single(Vec<(&'static str, UProbeLinkId)>),
    Detached,
}

/// The loaded programs and maps, attached to one process. Dropping it detaches.
pub struct Probes {
    pub ebpf: Ebpf,
    pub pid: u32,
    links: Links,
    /// Probes attached (entry + return).
    count: usize,
    /// How they were attached.
    pub method: AttachMethod,
    /// Loading the programs and attaching them took this long.
    pub attach_time: std::time::Duration,
    /// Each process's layout last written to the eBPF side.
    layouts: std::collections::BTreeMap<u32, profiler_common::nesting::AllocLayout>,
    /// The exec tracepoint, or why it could not be attached (then an exec
    /// of the target goes unnoticed, and the session says so).
    exec_watch: Result<
        Vec<(
            &'static str,
            aya::programs::raw_trace_point::RawTracePointLinkId,
        )>,
        String,
    >,
    /// What was attached to the first process, attached again to each child.
    target: AllocatorTarget,
    /// The entry and return programs.
    programs: (&'static str, &'static str),
    /// Probes of the other processes, attached one at a time (without
    /// `uprobe_multi`, or when linking failed).
    extra: Vec<(&'static str, UProbeLinkId)>,
    /// Links of the other processes, with the first one's programs.
    extra_multi: Vec<multi::MultiLinks>,
    /// The functions probed in each process (see `more::Probed`): an exec'd
    /// program's probes skip those its old ones still cover.
    probed: std::collections::BTreeMap<u32, std::collections::HashSet<more::Probed>>,
    /// Every process with probes, the first one first.
    pids: Vec<u32>,
    /// The allocator target of each process added with one of its own (a
    /// child forked later gets its parent's).
    targets: std::collections::BTreeMap<u32, AllocatorTarget>,
    /// Children are followed (not `--no-follow`).
    pub follow: bool,
    /// Bytes of user stack a DWARF sample copies when its thread's extent is unknown.
    pub stack_copy: u32,
    /// Userspace holds the live blocks (see `CaptureConfig::user_live`).
    pub user_live: bool,
    /// Bytes of the event rings together.
    pub ringbuf_bytes: u32,
    /// The event rings, until the session takes them ([`Probes::take_rings`]).
    rings: Option<Vec<RingBuf<MapData>>>,
    /// `Ok` when the allocation entry points of the first process went in
    /// as uprobe sessions (unsampled calls skip their return probe), else
    /// why not.
    pub sessions: Result<(), String>,
    /// The process held at `_exit` (see [`Probes::hold_at_exit`]), if any.
    exit_hold: Option<u32>,
    /// The entry table's probes while it may be on (see `entry_table`).
    entry_table: Option<entry_table::EntryTable>,
    /// Where the first process's entry programs are hit in a function.
    entry_offset: fn(&AttachPoint) -> u64,
}

/// Unread bytes in the event ring past which a record wakes the reader: an
/// eighth of the ring. Below it records are read at the reader's next poll
/// timeout (`session::control`), not one wakeup per record (a wakeup costs
/// the allocating thread an interrupt and heapscope a context switch).
fn wakeup_bytes(ringbuf_bytes: u32) -> u64 {
    u64::from(ringbuf_bytes / 8)
}

/// The one entry program: the attach cookie tells it which row of the
/// entry-point table it serves.
const ENTRY_PROGRAM: &str = "alloc_enter";
/// The one return program.
const RETURN_PROGRAM: &str = "alloc_return";
/// Entry and return as one uprobe session program.
const SESSION_PROGRAM: &str = "alloc_session";

/// The allocator's executable ranges `[start, end)` for the eBPF `ALLOC_TEXT`
/// map: adjacent ranges merged, sorted. Returns the ranges that fit and how
/// many did not (calls from those would be judged the program's).
pub fn text_ranges(
    maps: &crate::process::maps::MemoryMap,
    modules: &[String],
) -> (Vec<(u64, u64)>, usize) {
    let mut ranges: Vec<(u64, u64)> = maps
        .regions
        .iter()
        .filter(|r| r.perms.execute && r.path.as_ref().is_some_and(|p| modules.contains(p)))
        .map(|r| (r.start, r.end))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    let fit = ALLOC_TEXT_RANGES as usize;
    let dropped = merged.len().saturating_sub(fit);
    merged.truncate(fit);
    (merged, dropped)
}

/// Sorted ranges with touching ones merged: functions laid out one after
/// the other (a pool's entry points) take one slot. A gap of less than 16
/// bytes is alignment padding, never another function.
pub fn merge_adjacent(ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start < last.1.saturating_add(16) => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// The order probes go in, one at a time, while the target runs: free and
/// munmap first, so a block allocated before its allocator's probe was in is
/// a pre-attach free, never a live block whose free went unseen.
pub fn attach_order(points: &[AttachPoint]) -> Vec<&AttachPoint> {
    let mut out: Vec<&AttachPoint> = points.iter().collect();
    out.sort_by_key(|p| p.spec.has_return_probe());
    out
}

/// Loads the eBPF object: maps sized, globals set, tables filled; no
/// program is loaded into the kernel yet.
fn load(
    sizes: MapSizes,
    capture: CaptureConfig,
) -> Result<(Ebpf, Vec<RingBuf<MapData>>), ProbeError> {
    let plan = RingPlan::for_machine(sizes.ringbuf_bytes);
    let mut phases = crate::phases::Phases::new("load");
    // Without these offsets samples carry no pending-uretprobe addresses,
    // and an unwind stops at a trampoline instead of looking past it.
    let kernel = btf::KernelBtf::read();
    phases.mark("kernel BTF offsets");
    let kernel = kernel.as_ref();
    let chain = kernel.and_then(btf::KernelBtf::return_chain);
    let ret_chain = u32::from(chain.is_some());
    let off = chain.unwrap_or(btf::ReturnChainOffsets {
        task_utask: 0,
        utask_instances: 0,
        ri_orig_ret: 0,
        ri_stack: 0,
        ri_next: 0,
    });
    // Without them, a process's exit is not seen: its blocks stay live.
    let exit_offsets = kernel.and_then(btf::KernelBtf::exit).unwrap_or((0, 0));
    // Without them a main thread's first samples copy the full stack size.
    let main_stack = kernel
        .and_then(btf::KernelBtf::main_stack)
        .unwrap_or((0, 0));
    // Without it another thread's first samples copy the full stack size.
    let fsbase = kernel.and_then(btf::KernelBtf::task_fsbase).unwrap_or(0);
    let fp_stacks = if capture.stack_mode == StackMode::Dwarf {
        1
    } else {
        sizes.stacks
    };
    let mut ebpf = EbpfLoader::new()
        .map_max_entries("LIVE", sizes.live)
        .map_max_entries("SITES", sizes.sites)
        // DWARF mode never walks frame pointers in the kernel.
        .map_max_entries("STACK_TABLE", fp_stacks)
        .map_max_entries("INFLIGHT", sizes.inflight)
        .override_global("SAMPLE_RATE", &capture.sample_rate, true)
        // Whether or not the session links then go in, the probes keep the
        // tracked-block filter from the start (see SESSIONS in profiler-ebpf).
        .override_global(
            "SESSIONS",
            &u32::from(capture.sessions && capture.sample_rate != 0),
            true,
        )
        .override_global("USER_LIVE", &u32::from(capture.user_live()), true)
        .override_global("STACK_MODE", &(capture.stack_mode as u32), true)
        .override_global("STACK_COPY", &capture.stack_copy, true)
        .override_global("RING_COUNT", &plan.count, true)
        .override_global("WAKEUP_BYTES", &wakeup_bytes(plan.bytes_each), true)
        .override_global("RET_CHAIN", &ret_chain, true)
        .override_global("OFF_TASK_UTASK", &off.task_utask, true)
        .override_global("OFF_UTASK_INSTANCES", &off.utask_instances, true)
        .override_global("OFF_RI_ORIG_RET", &off.ri_orig_ret, true)
        .override_global("OFF_RI_STACK", &off.ri_stack, true)
        .override_global("OFF_RI_NEXT", &off.ri_next, true)
        .override_global("FOLLOW", &u32::from(capture.follow), true)
        .override_global(
            "OFF_TASK_TGID",
            &kernel.and_then(btf::KernelBtf::task_tgid).unwrap_or(0),
            true,
        )
        .override_global("OFF_TASK_SIGNAL", &exit_offsets.0, true)
        .override_global("OFF_SIGNAL_LIVE", &exit_offsets.1, true)
        .override_global("OFF_TASK_MM", &main_stack.0, true)
        .override_global("OFF_MM_START_STACK", &main_stack.1, true)
        .override_global("OFF_TASK_FSBASE", &fsbase, true)
        .load(EBPF_OBJECT)
        .map_err(|e| match &e {
            aya::EbpfError::MapError(_) | aya::EbpfError::ProgramError(_)
                if !has_bpf_privileges() =>
            {
                ProbeError::NotPrivileged
            }
            _ => ProbeError::Load(e),
        })?;
    phases.mark("object loaded, maps created");
    fill_tables(&mut ebpf)?;
    phases.mark("sampling tables");
    // Mapping a ring's pages for reading is most of this (~10 ms a ring
    // here); made on a thread of its own while aya loaded the object, it
    // saved nothing measurable.
    let rings = make_rings(&mut ebpf, plan)?;
    phases.mark("event rings");
    Ok((ebpf, rings))
}

/// Creates the event rings of `plan` and puts them in `EVENT_RINGS`, where
/// the probes find the one of their CPU.
fn make_rings(ebpf: &mut Ebpf, plan: RingPlan) -> Result<Vec<RingBuf<MapData>>, ProbeError> {
    let name = "EVENT_RINGS";
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut outer: ArrayOfMaps<&mut MapData> =
        ArrayOfMaps::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    (0..plan.count)
        .map(|i| {
            let def = aya_obj::Map::new_from_params(
                aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
                0,
                0,
                plan.bytes_each,
                0,
            );
            let ring = MapData::create(def, "heapscope_ring", None)
                .map_err(|source| ProbeError::Map { name, source })?;
            outer
                .set(i, &ring, 0)
                .map_err(|source| ProbeError::Map { name, source })?;
            RingBuf::try_from(aya::maps::Map::RingBuf(ring))
                .map_err(|source| ProbeError::Map { name, source })
        })
        .collect()
}

impl Probes {
    /// Loads the eBPF object with the given map sizes and attaches every probe
    /// of `target` to `pid` (all its threads): with `uprobe_multi` links where
    /// the kernel has them, else one probe at a time. Nothing is counted until
    /// [`Probes::arm`].
    pub fn attach(
        pid: u32,
        target: &AllocatorTarget,
        sizes: MapSizes,
        capture: CaptureConfig,
        mode: ProbeMode,
    ) -> Result<Probes, ProbeError> {
        if pid == 0 {
            return Err(ProbeError::NoSuchProcess(pid));
        }
        let t0 = std::time::Instant::now();
        let mut phases = crate::phases::Phases::new("attach probes");
        let (mut ebpf, rings) = load(sizes, capture)?;
        phases.mark("maps and tables");
        // The exec watch goes in before the probes: an exec while they go in
        // still releases the old image's blocks.
        let exec_watch = procs::profile_pid(&mut ebpf, pid)
            .and_then(|()| procs::watch_exec(&mut ebpf))
            .map_err(|e| format!("{e}: {}", source_chain(&e)));
        let (entry, ret, session_prog) = match mode {
            ProbeMode::Profile => (ENTRY_PROGRAM, RETURN_PROGRAM, SESSION_PROGRAM),
            ProbeMode::Bare => ("noop_enter", "noop_return", "noop_session"),
        };
        // Sessions only pay off when most calls are unsampled.
        let session = if !capture.sessions {
            Err("not asked for".to_string())
        } else if capture.sample_rate == 0 && mode == ProbeMode::Profile {
            Err("every allocation is recorded (--exact)".to_string())
        } else {
            btf::SessionSupport::from_kernel().ok_or_else(|| {
                "this kernel has no uprobe sessions (6.13+, BPF_TRACE_UPROBE_SESSION)".to_string()
            })
        };
        // The kernel's uprobe filters compare the probed mm with the mm of
        // the task the probes were opened for: a leader that exited
        // (pthread_exit) has none, so its probes would never fire. Per-thread
        // perf events opened on a live thread (sharing the process's mm) do;
        // uprobe_multi links take only the thread-group id.
        let live_thread = crate::process::procfs::stat(pid)
            .filter(|s| s.is_dead())
            .and_then(|_| crate::process::procfs::live_thread(pid));
        // With the hold, its point goes in the entry link of its file.
        let hold = target.exit_point.as_ref().filter(|_| capture.hold_exit);
        // The entry table, before any link: the session program is hit at
        // the function's start (`func_offset`), a plain entry program at
        // its placement. The exec watch is in, and the exec generation is
        // read before the map: an exec after that keeps the table off.
        let entry_offset: fn(&AttachPoint) -> u64 = if session.is_ok() {
            |p| p.func_offset
        } else {
            |p| p.entry_offset
        };
        let entry_table = if mode == ProbeMode::Profile {
            entry_table::EntryTable::fill_for(&mut ebpf, pid, target, entry_offset, None)
        } else {
            None
        };
        let multi = if let Some(tid) = live_thread {
            Err(format!(
                "the main thread has exited: probes opened on thread {tid}"
            ))
        } else if std::env::var_os("HEAPSCOPE_NO_UPROBE_MULTI").is_some() {
            Err("HEAPSCOPE_NO_UPROBE_MULTI is set".to_string())
        } else {
            let names = |session| multi::ProgramNames {
                entry,
                ret,
                session,
            };
            match &session {
                Ok(s) => multi::load(EBPF_OBJECT, &ebpf, &names(Some((session_prog, *s))))
                    .and_then(|progs| multi::attach(Arc::new(progs), pid, target, true, hold))
                    .map(|l| (l, Ok(())))
                    .or_else(|e| {
                        // Sessions failed: today's links, and say why.
                        multi::load(EBPF_OBJECT, &ebpf, &names(None))
                            .and_then(|progs| {
                                multi::attach(Arc::new(progs), pid, target, true, hold)
                            })
                            .map(|l| (l, Err(e.to_string())))
                    }),
                Err(why) => multi::load(EBPF_OBJECT, &ebpf, &names(None))
                    .and_then(|progs| multi::attach(Arc::new(progs), pid, target, true, hold))
                    .map(|l| (l, Err(why.clone()))),
            }
            .map_err(|e| e.to_string())
        };
        phases.mark("programs loaded, verified and linked");
        let mut sessions = Err("the probes went in one at a time".to_string());
        let (links, count, method) = match multi {
            Ok((m, s)) => {
                sessions = s;
                let (count, n) = (m.probes, m.links());
                (Links::Multi(m), count, AttachMethod::Multi { links: n })
            }
            Err(why) => {
                let scope = live_thread.unwrap_or(pid);
                let l = single::attach(&mut ebpf, scope, target, entry, ret)?;
                let count = l.len();
                (Links::Single(l), count, AttachMethod::Single { why })
            }
        };
        let mut probes = Probes {
            ebpf,
            pid,
            links,
            count,
            method,
            attach_time: t0.elapsed(),
            layouts: std::collections::BTreeMap::new(),
            exec_watch,
            target: target.clone(),
            programs: (entry, ret),
            extra: Vec::new(),
            extra_multi: Vec::new(),
            probed: std::collections::BTreeMap::from([(pid, more::probed(target))]),
            pids: vec![pid],
            targets: std::collections::BTreeMap::new(),
            follow: capture.follow,
            stack_copy: capture.stack_copy,
            user_live: capture.user_live(),
            ringbuf_bytes: sizes.ringbuf_bytes,
            rings: Some(rings),
            sessions,
            exit_hold: None,
            entry_table,
            entry_offset,
        };
        if hold.is_some() && matches!(probes.links, Links::Multi(_)) {
            // Its point is in the links: armed now, before the command runs.
            probes.arm_exit_hold().map_err(ProbeError::ExitHold)?;
        }
        Ok(probes)
    }

    /// The event rings, read as one stream; `None` once taken.
    pub fn take_rings(&mut self) -> Option<RingSet> {
        self.rings.take().map(RingSet::new)
    }

    /// Starts counting: the session calls this once it has taken its starting
    /// point, so nothing the probes saw before is reported as after it.
    pub fn arm(&mut self) -> Result<(), ProbeError> {
        self.set_armed(1)
    }

    /// Stops all counting at once, probes still attached: every program
    /// checks the flag before it counts, so the counters stop together and a
    /// read after this is one consistent state (nothing moves between the
    /// reads of two counters). Calls made from now on are not counted.
    pub fn disarm(&mut self) -> Result<(), ProbeError> {
        self.set_armed(0)
    }

    fn set_armed(&mut self, value: u32) -> Result<(), ProbeError> {
        let name = "ARMED";
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        let mut arr: aya::maps::Array<&mut aya::maps::MapData, u32> =
            aya::maps::Array::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
        arr.set(0, value, 0)
            .map_err(|source| ProbeError::Map { name, source })
    }

    /// Samples at `rate` from now on (one sample per `rate` bytes on
    /// average; 0 goes back to the rate the probes were loaded with).
    pub fn set_sample_rate(&mut self, rate: u64) -> Result<(), ProbeError> {
        let name = "RATE_NOW";
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(ProbeError::MissingMap(name))?;
        let mut arr: aya::maps::Array<&mut aya::maps::MapData, u64> =
            aya::maps::Array::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
        arr.set(0, rate, 0)
            .map_err(|source| ProbeError::Map { name, source })
    }

    /// Tells the eBPF side where `pid`'s uretprobe trampoline page is (the
    /// `[uprobes]` mapping, created at the first probe hit) and where its
    /// allocator's code is, so it can tell a tail call or the allocator calling
    /// itself from a call the program made after a return it did not see.
    /// Each process has its own (`maps` is its memory map). Returns how many
    /// of the allocator's code ranges did not fit.
    pub fn note_layout(
        &mut self,
        pid: u32,
        maps: &crate::process::maps::MemoryMap,
    ) -> Result<usize, ProbeError> {
        let (layout, dropped) = layouts::layout_of(maps, self.target_of(pid));
        if self.layouts.get(&pid) == Some(&layout) {
            return Ok(dropped);
        }
        layouts::set(&mut self.ebpf, pid, &layout)?;
        self.layouts.insert(pid, layout);
        Ok(dropped)
    }

    /// Whether `pid`'s layout is known with its trampoline page (which
    /// appears at its first probe hit; until then its map is read again).
    pub fn layout_complete(&self, pid: u32) -> bool {
        self.layouts.get(&pid).is_some_and(|l| l.xol != 0)
    }

    /// A profiled process whose probes ran while its layout was incomplete
    /// (its map is worth reading now), if any.
    pub fn take_wanted_layout(&mut self) -> Result<Option<u32>, ProbeError> {
        let pid = layouts::take_wanted(&mut self.ebpf)?;
        Ok(pid.filter(|p| self.pids.contains(p) && !self.layout_complete(*p)))
    }

    /// Forgets the layout of a process that exited.
    pub fn forget_layout(&mut self, pid: u32) -> Result<(), ProbeError> {
        self.layouts.remove(&pid);
        layouts::remove(&mut self.ebpf, pid)
    }

    /// Why exec of the target cannot be noticed, if it cannot.
    pub fn exec_watch_error(&self) -> Option<&str> {
        self.exec_watch.as_ref().err().map(String::as_str)
    }

    /// Number of attached probes (entry + return).
    pub fn probe_count(&self) -> usize {
        self.count
    }

    /// Every process with probes, the first one first.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Detaches every probe; the target runs on untouched. Errors are
    /// reported but not fatal: dropping the object detaches too.
    pub fn detach(&mut self) -> Vec<String> {
        // Every process's uprobe_multi links close at once (see
        // `multi::detach_all`).
        let mut sets: Vec<multi::MultiLinks> = self.extra_multi.drain(..).collect();
        let mut errors = match std::mem::replace(&mut self.links, Links::Detached) {
            Links::Multi(m) => {
                sets.push(m);
                Vec::new()
            }
            Links::Single(mut l) => single::detach(&mut self.ebpf, &mut l),
            Links::Detached => Vec::new(),
        };
        multi::detach_all(sets);
        errors.extend(single::detach(&mut self.ebpf, &mut self.extra));
        // After the probe is gone: nothing can be held from now on.
        self.end_exit_hold();
        let watch = std::mem::replace(&mut self.exec_watch, Err("detached".into()));
        if let Ok(links) = watch {
            errors.extend(procs::unwatch_exec(&mut self.ebpf, links));
        }
        errors
    }
}

impl Drop for Probes {
    /// A command held at its exit never stays stopped, even when the
    /// session fails before its detach.
    fn drop(&mut self) {
        self.end_exit_hold();
    }
}

#[cfg(test)]
mod tests;
