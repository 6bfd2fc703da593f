//! Learning how much stack each thread's samples need, so the probes copy
//! only that much instead of a fixed 8 KiB.
//!
//! A complete unwind reads stack slots up to the return-address slot of the
//! thread's outermost frame (`start_thread`, `__libc_start_main`). Those
//! frames never move while the thread lives, so "one past the highest byte a
//! complete unwind read" is an address (the thread's *stack end*) that holds
//! for every later sample of that thread, however deep: a sample at `sp`
//! needs exactly `end - sp` bytes. Userspace learns the end from the first
//! full copy and pushes it to the probes (`STACK_ENDS`, per thread id); a
//! thread not known yet, a stack elsewhere (a signal stack, a coroutine) or
//! an end farther than the full copy gets the full copy.
//!
//! A learned end can be wrong only when its thread id was reused by a thread
//! with another stack: that sample's copy is cut short (counted in
//! [`StackExtents::cut_short`]) and the thread is relearned from a full copy.

use foldhash::HashMap;

use super::UnwindStop;

/// Most threads remembered; the probes' map holds as many (LRU there).
pub const MAX_THREADS: usize = profiler_common::STACK_END_ENTRIES as usize;

/// What one sample's unwind told about its thread's stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwoundCopy {
    pub tid: u32,
    /// The stack pointer the copy starts at.
    pub sp: u64,
    /// Bytes copied.
    pub stack_len: u32,
    /// Bytes of the copy the unwind read (one past its highest slot).
    pub read_end: u64,
    pub stop: UnwindStop,
}

/// An update of the probes' per-thread stack ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndUpdate {
    Set { tid: u32, end: u64 },
    Forget { tid: u32 },
}

/// The learned stack ends and the updates not yet pushed to the probes.
#[derive(Debug)]
pub struct StackExtents {
    /// Bytes of a full copy (what an unknown thread gets).
    full: u32,
    ends: HashMap<u32, u64>,
    pending: Vec<EndUpdate>,
    /// Samples whose copy was cut by a learned end that no longer held.
    pub cut_short: u64,
    /// Samples that copied only what their thread's learned end asked for.
    pub learned_copies: u64,
    /// Bytes those samples copied.
    pub learned_bytes: u64,
}

impl StackExtents {
    /// A learner for samples whose full copy is `full` bytes.
    pub fn new(full: u32) -> StackExtents {
        StackExtents {
            full,
            ends: HashMap::default(),
            pending: Vec::new(),
            cut_short: 0,
            learned_copies: 0,
            learned_bytes: 0,
        }
    }

    /// The end learned for `tid`, if any.
    pub fn end(&self, tid: u32) -> Option<u64> {
        self.ends.get(&tid).copied()
    }

    /// Learns from one unwound sample.
    pub fn observe(&mut self, u: UnwoundCopy) {
        let learned = self.end(u.tid);
        // The probes copied up to the learned end (and not the full copy)
        // exactly when the end was in range: mirror their choice.
        let by_learned = learned.is_some_and(|end| {
            end > u.sp && end - u.sp <= u64::from(self.full) && u.stack_len < self.full
        });
        if by_learned {
            self.learned_copies += 1;
            self.learned_bytes += u64::from(u.stack_len);
        }
        match u.stop {
            UnwindStop::Complete => {
                let end = u.sp.saturating_add(u.read_end);
                if u.read_end > 0 && learned != Some(end) {
                    self.set(u.tid, end);
                }
            }
            UnwindStop::StackCopyExhausted if by_learned => {
                // The end no longer holds (a reused thread id): copy in full
                // until a complete unwind says where this stack ends.
                self.cut_short += 1;
                self.ends.remove(&u.tid);
                self.pending.push(EndUpdate::Forget { tid: u.tid });
            }
            _ => {}
        }
    }

    fn set(&mut self, tid: u32, end: u64) {
        if self.ends.len() >= MAX_THREADS && !self.ends.contains_key(&tid) {
            // Bounded: start over; forgotten threads get full copies (the
            // probes' LRU map evicts on its own).
            self.ends.clear();
        }
        self.ends.insert(tid, end);
        self.pending.push(EndUpdate::Set { tid, end });
    }

    /// Takes the updates to push to the probes, oldest first.
    pub fn take_updates(&mut self) -> Vec<EndUpdate> {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(tid: u32, sp: u64, stack_len: u32, read_end: u64, stop: UnwindStop) -> UnwoundCopy {
        UnwoundCopy {
            tid,
            sp,
            stack_len,
            read_end,
            stop,
        }
    }

    #[test]
    fn a_complete_unwind_teaches_the_threads_stack_end_once() {
        let mut x = StackExtents::new(8192);
        x.observe(copy(7, 0x7fff_0000, 8192, 0x1a8, UnwindStop::Complete));
        assert_eq!(x.end(7), Some(0x7fff_01a8));
        assert_eq!(
            x.take_updates(),
            vec![EndUpdate::Set {
                tid: 7,
                end: 0x7fff_01a8
            }]
        );
        // Deeper on the same thread: the same end, nothing to push; the
        // probes copied just what was needed.
        x.observe(copy(7, 0x7ffe_ff00, 0x2a8, 0x2a8, UnwindStop::Complete));
        assert!(x.take_updates().is_empty());
        assert_eq!((x.learned_copies, x.learned_bytes), (1, 0x2a8));
        assert_eq!(x.cut_short, 0);
    }

    #[test]
    fn an_incomplete_unwind_teaches_nothing() {
        let mut x = StackExtents::new(8192);
        for stop in [
            UnwindStop::StackCopyExhausted,
            UnwindStop::NoCfi,
            UnwindStop::TooDeep,
        ] {
            x.observe(copy(1, 0x1000, 8192, 8192, stop));
        }
        assert_eq!(x.end(1), None);
        assert!(x.take_updates().is_empty());
    }

    #[test]
    fn a_copy_cut_by_a_stale_end_is_counted_and_the_thread_relearned() {
        let mut x = StackExtents::new(8192);
        x.observe(copy(3, 0x5000, 8192, 0x100, UnwindStop::Complete));
        x.take_updates();
        // A reused thread id with a deeper stack: the learned copy (0x80
        // bytes) ends before the unwind does.
        x.observe(copy(3, 0x5080, 0x80, 0x80, UnwindStop::StackCopyExhausted));
        assert_eq!(x.cut_short, 1);
        assert_eq!(x.end(3), None);
        assert_eq!(x.take_updates(), vec![EndUpdate::Forget { tid: 3 }]);
        // A full copy that ran out is the stack's depth, not a stale end.
        x.observe(copy(3, 0x5080, 8192, 8192, UnwindStop::StackCopyExhausted));
        assert_eq!(x.cut_short, 1);
    }

    #[test]
    fn a_complete_unwind_on_another_stack_moves_the_end() {
        let mut x = StackExtents::new(8192);
        x.observe(copy(9, 0x7000_0000, 8192, 0x200, UnwindStop::Complete));
        x.take_updates();
        // A signal handler on an alternate stack far below: full copy, and
        // its own complete unwind moves the end there.
        x.observe(copy(9, 0x1000_0000, 8192, 0x300, UnwindStop::Complete));
        assert_eq!(x.end(9), Some(0x1000_0300));
        assert_eq!(x.learned_copies, 0);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut x = StackExtents::new(8192);
        for tid in 0..(MAX_THREADS as u32 + 10) {
            x.observe(copy(tid, 0x1000, 8192, 0x10, UnwindStop::Complete));
        }
        assert!(x.ends.len() <= MAX_THREADS);
    }
}
