//! Process tracepoints: a profiled process that execs is reported, so
//! userspace can release the old image's live blocks; a child it forks is
//! profiled from then on (its execs and forks reported) and reported, so
//! userspace attaches the child's own probes; one whose last thread exits
//! leaves the profiled set and is reported, so userspace releases its blocks.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use profiler_common::{EventKind, ProcEvent};

use crate::maps::{bump, config_u32, PROFILED};
use crate::sample::kread;

/// 1 to follow forks of profiled processes, set by userspace.
#[unsafe(no_mangle)]
pub(crate) static FOLLOW: u32 = 0;

/// Byte offset of task_struct.tgid (from the kernel's BTF); 0 when unknown
/// (then forks are not followed).
#[unsafe(no_mangle)]
pub(crate) static OFF_TASK_TGID: u32 = 0;

/// Byte offsets of task_struct.signal and signal_struct.live (threads not
/// yet exited; from the kernel's BTF); 0 when unknown (then exits are not
/// reported).
#[unsafe(no_mangle)]
pub(crate) static OFF_TASK_SIGNAL: u32 = 0;
#[unsafe(no_mangle)]
pub(crate) static OFF_SIGNAL_LIVE: u32 = 0;

#[inline(always)]
fn emit(kind: EventKind, tgid: u32, parent: u32) {
    let ev = ProcEvent {
        kind: kind as u32,
        tgid,
        parent,
        _pad: 0,
        // SAFETY: a plain helper call without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if !crate::ring::output(&ev) {
        bump(profiler_common::counter::RINGBUF_LOST, 1);
    }
}

/// `sched_process_fork(parent, child)`, in the forking task: a new process
/// (not a thread: those share the tgid) of a profiled one is profiled too.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn on_fork(ctx: RawTracePointContext) -> i32 {
    let off = config_u32(&OFF_TASK_TGID);
    if config_u32(&FOLLOW) == 0 || off == 0 {
        return 0;
    }
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: only tested for presence.
    if unsafe { PROFILED.get(&parent) }.is_none() {
        return 0;
    }
    let child_task: u64 = ctx.arg(1);
    // tgid is a 32-bit pid_t: the low half of the word read.
    let child = kread(child_task + off as u64) as u32;
    if child == 0 || child == parent {
        return 0;
    }
    // Full: the child's own forks and execs go unreported; userspace still
    // attaches its probes from the event and says the set is full.
    let _ = PROFILED.insert(&child, &1, 0);
    emit(EventKind::Fork, child, parent);
    0
}

/// `sched_process_exec` (a raw tracepoint: no tracefs needed): runs in the
/// task that exec'd, after the new image is in place; other processes
/// return at the map lookup.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn on_exec(ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the value is only tested for presence.
    if unsafe { PROFILED.get(&tgid) }.is_none() {
        return 0;
    }
    // (task, old_pid, bprm): old_pid is the thread that called exec, before
    // it took over the leader's pid (a pid_t: the low half).
    let old_tid: u64 = ctx.arg(1);
    // The new image maps the allocator elsewhere: before it runs, the entry
    // table (the old layout's addresses) stops being read.
    crate::maps::entry_table_exec();
    emit(EventKind::Exec, tgid, old_tid as u32);
    0
}

/// `sched_process_exit`, in every exiting thread: when it is the last of a
/// profiled process (do_exit has already taken it off `signal->live`), the
/// process leaves the profiled set and is reported. Two last threads racing
/// may both see 0: userspace releases a process once.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn on_exit(_ctx: RawTracePointContext) -> i32 {
    let (off_signal, off_live) = (config_u32(&OFF_TASK_SIGNAL), config_u32(&OFF_SIGNAL_LIVE));
    if off_signal == 0 || off_live == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: only tested for presence.
    if unsafe { PROFILED.get(&tgid) }.is_none() {
        return 0;
    }
    // SAFETY: a plain helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    let signal = kread(task + off_signal as u64);
    if signal == 0 {
        return 0;
    }
    // atomic_t is a 32-bit int: the low half of the word read.
    let live = kread(signal + off_live as u64) as u32;
    if live != 0 {
        return 0;
    }
    let _ = PROFILED.remove(&tgid);
    emit(EventKind::Exit, tgid, 0);
    0
}
