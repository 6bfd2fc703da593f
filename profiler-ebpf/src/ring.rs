//! The event rings: records for userspace (mapping calls, DWARF stack
//! samples, frees of blocks userspace holds, process events), written to
//! the ring of the CPU the program runs on, or to the next ring when that
//! one is full.
//!
//! One ring for all CPUs made every record contend for its reservation
//! lock: at two allocating threads on two CPUs, `--exact`'s entry program
//! went from 94 to 173 ns per run and its return program from 254 to
//! 439 ns (kernel `bpf_stats`). With a ring per CPU (`RING_COUNT` rings,
//! CPU `c` writing ring `c % RING_COUNT`), a CPU's records never wait for
//! another's. Userspace merges the rings by the time each record carries
//! (`profiler-user` `events::rings`): a record caused by another (a free
//! of a block, after its allocation's record) is committed before its
//! cause returns to the program, so it is never missing when the later one
//! is read.

use core::ffi::c_void;

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::btf_maps::{ArrayOfMaps, RingBuf};
use aya_ebpf::helpers::{
    bpf_get_smp_processor_id, bpf_ringbuf_output, bpf_ringbuf_query, bpf_ringbuf_reserve,
    bpf_ringbuf_submit,
};
use aya_ebpf::macros::btf_map;
use profiler_common::MAX_RINGS;

use crate::maps::{config_u32, config_u64, WAKE_TICK};

/// The rings, created and put in by userspace at load time (their sizes
/// depend on the number of CPUs). The inner definition is only the
/// template the kernel checks them against.
#[btf_map]
static EVENT_RINGS: ArrayOfMaps<RingBuf<u8, 4096>, { MAX_RINGS as usize }> = ArrayOfMaps::new();

/// Rings in use (1..=`MAX_RINGS`), set by userspace at load time.
#[unsafe(no_mangle)]
static RING_COUNT: u32 = 1;

/// Unread bytes in a ring past which a record wakes the reader; below,
/// the reader finds it at its next poll timeout. Set by userspace.
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 0;

/// Records a CPU submits between two looks at how full its ring is.
const WAKE_CHECK_EVERY: u32 = 16;

/// One event ring.
#[derive(Clone, Copy)]
pub(crate) struct Ring(*mut c_void);

/// The ring `step` places after the current CPU's; `None` only if
/// userspace did not put it in.
#[inline(always)]
fn ring_at(step: u32) -> Option<Ring> {
    let n = config_u32(&RING_COUNT);
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let idx = if n > 1 { (cpu + step) % n } else { 0 };
    EVENT_RINGS
        .get(idx)
        .map(|r| Ring((r as *const RingBuf<u8, 4096>).cast_mut().cast()))
}

/// True when there is a ring to spill into.
#[inline(always)]
fn can_spill() -> bool {
    config_u32(&RING_COUNT) > 1
}

/// Copies `v` into the current CPU's ring, or into the next one when that
/// is full (a single busy thread would otherwise have only its CPU's share
/// of the ring memory). The order stays right: a record spilled is still
/// committed before the call it describes returns. False when neither had
/// room.
#[inline(always)]
pub(crate) fn output<T>(v: &T) -> bool {
    if ring_at(0).is_some_and(|r| r.output(v)) {
        return true;
    }
    can_spill() && ring_at(1).is_some_and(|r| r.output(v))
}

/// Reserves a `T` in the current CPU's ring, or in the next one when that
/// is full (see [`output`]); the reservation must go to [`Ring::submit`]
/// of the ring returned (the verifier checks it).
#[inline(always)]
pub(crate) fn reserve<T>() -> Option<(Ring, *mut T)> {
    if let Some(r) = ring_at(0) {
        if let Some(p) = r.reserve::<T>() {
            return Some((r, p));
        }
    }
    if !can_spill() {
        return None;
    }
    let r = ring_at(1)?;
    r.reserve::<T>().map(|p| (r, p))
}

impl Ring {
    /// Copies `v` into the ring as one record; false when it is full.
    #[inline(always)]
    fn output<T>(self, v: &T) -> bool {
        let flags = self.wake_flags();
        // SAFETY: `self.0` is a ring map from EVENT_RINGS; `v` is a live
        // value of `size_of::<T>()` bytes (the helper copies it).
        let ret = unsafe {
            bpf_ringbuf_output(
                self.0,
                (v as *const T).cast_mut().cast(),
                core::mem::size_of::<T>() as u64,
                flags,
            )
        };
        ret >= 0
    }

    /// Reserves a `T` in the ring.
    #[inline(always)]
    fn reserve<T>(self) -> Option<*mut T> {
        // SAFETY: `self.0` is a ring map; the size is a constant.
        let p = unsafe { bpf_ringbuf_reserve(self.0, core::mem::size_of::<T>() as u64, 0) };
        (!p.is_null()).then_some(p.cast())
    }

    /// Commits a reservation of [`Ring::reserve`].
    #[inline(always)]
    pub(crate) fn submit<T>(self, rec: *mut T) {
        let flags = self.wake_flags();
        // SAFETY: `rec` came from `reserve` and is submitted once.
        unsafe { bpf_ringbuf_submit(rec.cast(), flags) };
    }

    /// Submit flags: wake the reader only once enough is waiting (one
    /// wakeup per record costs more than the record). The fill is looked at
    /// every `WAKE_CHECK_EVERY`th record of a CPU (a helper call saved on
    /// the others; the mark is an eighth of the ring, far more than that
    /// many records).
    #[inline(always)]
    fn wake_flags(self) -> u64 {
        if let Some(n) = WAKE_TICK.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a per-CPU array; a preempting
            // program updating it meanwhile only moves the next look by a
            // record.
            let k = unsafe {
                let k = (*n).wrapping_add(1);
                *n = k;
                k
            };
            if k % WAKE_CHECK_EVERY != 0 {
                return BPF_RB_NO_WAKEUP as u64;
            }
        }
        // SAFETY: `self.0` is a ring map.
        let avail = unsafe { bpf_ringbuf_query(self.0, BPF_RB_AVAIL_DATA as u64) };
        if avail >= config_u64(&WAKEUP_BYTES) {
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            BPF_RB_NO_WAKEUP as u64
        }
    }
}
