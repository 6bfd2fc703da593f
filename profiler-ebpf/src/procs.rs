//! Process tracepoints: a profiled process that execs is reported, so
//! userspace can release the old image's live blocks and probe the new one.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use profiler_common::{EventKind, ProcEvent};

use crate::maps::{bump, EVENTS, PROFILED};

/// `sched_process_exec` (a raw tracepoint: no tracefs needed): runs in the
/// task that exec'd, after the new image is in place; other processes
/// return at the map lookup.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn on_exec(_ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    if unsafe { PROFILED.get(&tgid) }.is_none() {
        return 0;
    }
    let ev = ProcEvent {
        kind: EventKind::Exec as u32,
        tgid,
        // SAFETY: a plain helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if EVENTS.output::<ProcEvent>(&ev, 0).is_err() {
        bump(profiler_common::counter::RINGBUF_LOST, 1);
    }
    0
}
