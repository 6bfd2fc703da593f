//! Sampling by bytes, and stack samples for userspace DWARF unwinding.

use aya_ebpf::{
    helpers::{
        bpf_get_current_task, bpf_get_prandom_u32, bpf_probe_read_kernel, bpf_probe_read_user_buf,
    },
    programs::RetProbeContext,
};
use profiler_common::{
    counter, sampling, stack_end_slot, tables, AllocKind, EventKind, SampleHeader, COUNT_SCALE,
    MAX_PENDING,
};

use crate::maps::{
    bump, config_u32, sample_rate, COUNTDOWN, EXP_TABLE, STACK_COPY, STACK_ENDS, WEIGHT_TABLE,
};

/// Byte offsets (from the kernel's BTF) of task_struct.utask,
/// uprobe_task.return_instances and return_instance.{orig_ret_vaddr, stack,
/// next}; RET_CHAIN = 0 when unknown. Used to record the real return
/// addresses hidden behind pending uretprobes' trampolines.
#[unsafe(no_mangle)]
pub(crate) static RET_CHAIN: u32 = 0;
#[unsafe(no_mangle)]
pub(crate) static OFF_TASK_UTASK: u32 = 0;
#[unsafe(no_mangle)]
pub(crate) static OFF_UTASK_INSTANCES: u32 = 0;
#[unsafe(no_mangle)]
pub(crate) static OFF_RI_ORIG_RET: u32 = 0;
#[unsafe(no_mangle)]
pub(crate) static OFF_RI_STACK: u32 = 0;
#[unsafe(no_mangle)]
pub(crate) static OFF_RI_NEXT: u32 = 0;

/// Byte offsets of task_struct.mm and mm_struct.start_stack (from the
/// kernel's BTF); 0 when unknown. A main thread's stack ends at its
/// `start_stack` (argc, argv and the environment lie just above where its
/// first frame starts), so its samples copy no more than that before
/// userspace has learned its end: a program's first milliseconds (redis's
/// ~12,000 start-up allocations) no longer send full 8 KiB copies.
#[unsafe(no_mangle)]
pub(crate) static OFF_TASK_MM: u32 = 0;
#[unsafe(no_mangle)]
pub(crate) static OFF_MM_START_STACK: u32 = 0;

/// Byte offset of a task's user `fsbase` in task_struct (from the kernel's
/// BTF); 0 when unknown. glibc puts a thread's control block, where its
/// `fsbase` points, at the top of the thread's stack mapping, just above the
/// stack: another thread's samples copy no more than up to there before
/// userspace has learned its end (a program starting threads that allocate
/// at once sent 8 KiB copies for each until then, filling the ring).
#[unsafe(no_mangle)]
pub(crate) static OFF_TASK_FSBASE: u32 = 0;

#[inline(always)]
pub(crate) fn kread(addr: u64) -> u64 {
    if addr == 0 {
        return 0;
    }
    // SAFETY: a fault-tolerant read of kernel memory; errors read as 0.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}

/// Fills the pending-uretprobe fields of a sample from the current task's
/// return-instance chain.
#[inline(always)]
pub(crate) fn pending_returns(h: &mut SampleHeader) {
    if config_u32(&RET_CHAIN) == 0 {
        return;
    }
    // SAFETY: a plain helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    let utask = kread(task + config_u32(&OFF_TASK_UTASK) as u64);
    let mut ri = kread(utask + config_u32(&OFF_UTASK_INSTANCES) as u64);
    let (off_ret, off_stack, off_next) = (
        config_u32(&OFF_RI_ORIG_RET) as u64,
        config_u32(&OFF_RI_STACK) as u64,
        config_u32(&OFF_RI_NEXT) as u64,
    );
    let mut n = 0u32;
    for i in 0..MAX_PENDING {
        if ri == 0 {
            break;
        }
        h.pending_ret[i] = kread(ri + off_ret);
        h.pending_slot[i] = kread(ri + off_stack);
        ri = kread(ri + off_next);
        n += 1;
    }
    h.n_pending = n;
}

/// The next sampling interval: exponentially distributed with mean `rate`.
#[inline(always)]
fn next_interval(rate: u64) -> i64 {
    sampling::interval(
        rate,
        // SAFETY: a plain helper call without arguments.
        || unsafe { bpf_get_prandom_u32() },
        |i| u64::from(EXP_TABLE.get(i).copied().unwrap_or(tables::ONE as u32)),
    )
}

/// Decides whether an allocation of `size` is sampled, and what it stands for:
/// `Some((est_bytes, est_count))` when sampled.
#[inline(always)]
pub(crate) fn sample(size: u64) -> Option<(u64, u64)> {
    let rate = sample_rate();
    if rate == 0 {
        return Some((size, COUNT_SCALE));
    }
    let left = COUNTDOWN.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; the program runs with migration disabled.
    // (Only a preempting program on the same CPU could interleave, with
    // kernel preemption on: a lost update shifts one interval, no bias.)
    unsafe {
        if *left == 0 {
            // Not started on this CPU yet.
            *left = next_interval(rate);
        }
        match sampling::countdown(*left, size) {
            Some(rest) => {
                *left = rest;
                return None;
            }
            None => *left = next_interval(rate),
        }
    }
    sampling::estimate(size, rate, |i| {
        u64::from(WEIGHT_TABLE.get(i).copied().unwrap_or(tables::ONE as u32))
    })
}

/// What an allocation of `size` that was drawn as a sample stands for,
/// without drawing again (a session entry drew it).
#[inline(always)]
pub(crate) fn estimate_drawn(size: u64) -> Option<(u64, u64)> {
    let rate = sample_rate();
    if rate == 0 {
        return Some((size, COUNT_SCALE));
    }
    sampling::estimate(size, rate, |i| {
        u64::from(WEIGHT_TABLE.get(i).copied().unwrap_or(tables::ONE as u32))
    })
}

/// A ring-buffer record of a sample with an `N`-byte stack copy.
#[repr(C)]
struct Sample<const N: usize> {
    header: SampleHeader,
    stack: [u8; N],
}

/// Copies the header and `want` (at most `N`) bytes of user stack into the
/// ring buffer. A copy crossing the end of the stack mapping fails as a
/// whole, so smaller copies are tried. Returns false when the ring buffer is
/// full.
#[inline(always)]
fn emit_sample_n<const N: usize>(mut header: SampleHeader, want: usize) -> bool {
    let Some((ring, rec)) = crate::ring::reserve::<Sample<N>>() else {
        return false;
    };
    let sp = header.sp;
    let mut len = 0u32;
    let mut n = if want > N { N } else { want };
    for _ in 0..4 {
        // SAFETY: rec points to a reserved Sample<N>; the slice stays within
        // its `stack` field (n <= N); the source is user memory read through
        // the fault-tolerant helper.
        let ok = unsafe {
            let dst = core::slice::from_raw_parts_mut((*rec).stack.as_mut_ptr(), n);
            bpf_probe_read_user_buf(sp as *const u8, dst).is_ok()
        };
        if ok {
            len = n as u32;
            break;
        }
        n /= 2;
    }
    if len == 0 {
        bump(counter::STACK_COPY_FAILED, 1);
    }
    header.stack_len = len;
    // SAFETY: writing the header field of the reserved record.
    unsafe { core::ptr::write(&mut (*rec).header, header) };
    ring.submit(rec);
    true
}

/// Bytes to copy for a sample of thread `tid` of process `tgid` at `sp`: up
/// to the end its earlier complete unwinds reached (learned by userspace),
/// else for a main thread up to its `start_stack`, else up to its `fsbase`
/// when that lies above `sp` within `full`, else `full`.
#[inline(always)]
fn copy_len(tgid: u32, tid: u32, sp: u64, full: u64) -> u64 {
    let upto = |end: Option<u64>| match end {
        Some(end) if end > sp && end - sp <= full => end - sp,
        _ => full,
    };
    match STACK_ENDS.get(stack_end_slot(tid)).copied() {
        Some(e) if e.tid == tid && e.end > sp && e.end - sp <= full => e.end - sp,
        _ if tid == tgid => upto(main_stack_start()),
        _ => upto(thread_fsbase()),
    }
}

/// The current thread's user `fsbase`, when its offset is known.
#[inline(always)]
fn thread_fsbase() -> Option<u64> {
    let off = config_u32(&OFF_TASK_FSBASE);
    if off == 0 {
        return None;
    }
    // SAFETY: a plain helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    let fsbase = kread(task + u64::from(off));
    (fsbase != 0).then_some(fsbase)
}

/// The current process's `mm->start_stack`, when its offsets are known.
#[inline(always)]
fn main_stack_start() -> Option<u64> {
    let (off_mm, off_start) = (config_u32(&OFF_TASK_MM), config_u32(&OFF_MM_START_STACK));
    if off_mm == 0 || off_start == 0 {
        return None;
    }
    // SAFETY: a plain helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    let mm = kread(task + u64::from(off_mm));
    let start = kread(mm + u64::from(off_start));
    (start != 0).then_some(start)
}

/// Sends a sample with as much stack as its thread needs (see `STACK_ENDS`),
/// in the smallest record that holds it.
#[inline(always)]
pub(crate) fn emit_sample(header: SampleHeader) -> bool {
    let full = u64::from(config_u32(&STACK_COPY));
    let want = copy_len(header.tgid, header.tid, header.sp, full) as usize;
    if want <= 256 {
        emit_sample_n::<256>(header, want)
    } else if want <= 512 {
        emit_sample_n::<512>(header, want)
    } else if want <= 1024 {
        emit_sample_n::<1024>(header, want)
    } else if want <= 2048 {
        emit_sample_n::<2048>(header, want)
    } else if want <= 4096 {
        emit_sample_n::<4096>(header, want)
    } else if want <= 8192 {
        emit_sample_n::<8192>(header, want)
    } else {
        emit_sample_n::<16384>(header, want)
    }
}

/// Who made a sampled call and when: (tgid, tid, ktime ns).
pub(crate) type SampleOrigin = (u32, u32, u64);

/// The header of a sample, with the registers at the allocator's return.
#[inline(always)]
pub(crate) fn sample_header(
    ctx: &RetProbeContext,
    (tgid, tid, ts_ns): SampleOrigin,
    kind: AllocKind,
    ptr: u64,
    size: u64,
    est: (u64, u64),
) -> SampleHeader {
    // SAFETY: ctx.regs is the pt_regs the kernel passed to this program.
    let (ip, sp, bp) = unsafe { ((*ctx.regs).rip, (*ctx.regs).rsp, (*ctx.regs).rbp) };
    let mut h = SampleHeader {
        kind: EventKind::Sample as u32,
        tgid,
        alloc_kind: kind as u32,
        stack_len: 0,
        ptr,
        size,
        est_bytes: est.0,
        est_count: est.1,
        ts_ns,
        ip,
        sp,
        bp,
        pending_ret: [0; MAX_PENDING],
        pending_slot: [0; MAX_PENDING],
        n_pending: 0,
        tid,
        chunk: 0, // read by userspace, batched (profiler-user events::chunks)
    };
    pending_returns(&mut h);
    h
}
