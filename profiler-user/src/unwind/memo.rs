//! Repeated stacks: a thread that allocates again from the same place, with
//! the same registers, usually has the same words in the stack slots the
//! last walk read. A walk is a function of the registers, of those words and
//! of the modules' layout, so when every recorded slot still holds its word
//! the frames are the same, and are given without walking (~0.5 µs of the
//! capture thread's time per sample under `--exact`, a fifth of it).
//!
//! Only complete walks without pending returns are kept: a walk cut short
//! by the copy's end could go further with a longer copy, and pending
//! returns are a second input. A walk is given again only against the same
//! memory map it was made with (its `MemoryMap::generation`): any re-read
//! of a process's map (a library loaded, an exec) makes it stale.

use std::collections::HashMap;

use foldhash::fast::FixedState;

/// The registers a walk starts from: ip, sp and bp.
pub type Start = (u64, u64, u64);

/// Bytes of remembered walks at most (slots and frames): a bound on memory
/// whatever the stacks' depth.
const MEMO_MAX_BYTES: usize = 4 << 20;

/// Remembered complete walks, by process and registers.
#[derive(Debug, Default)]
pub struct StackMemo {
    walks: HashMap<(u32, u64, u64, u64), Walk, FixedState>,
    bytes: usize,
    /// Samples whose frames came from here, and samples walked.
    pub hits: u64,
    pub misses: u64,
    /// Times the memo was emptied because it was full.
    pub full: u64,
}

#[derive(Debug)]
struct Walk {
    /// The memory map's generation the walk was made with.
    generation: u64,
    /// (offset from sp, word) of every slot the walk read.
    slots: Box<[(u32, u64)]>,
    frames: Box<[u64]>,
    read_end: u64,
}

impl Walk {
    fn bytes(&self) -> usize {
        std::mem::size_of::<Walk>() + 64 + self.slots.len() * 16 + self.frames.len() * 8
    }
}

fn word_at(stack: &[u8], off: u32) -> Option<u64> {
    let off = off as usize;
    let bytes = stack.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

impl StackMemo {
    /// The frames and the copy's read end of the walk of `stack` from
    /// `start` in process `tgid` against map `generation`, when remembered
    /// and every slot it read still holds its word. Counts a hit or a miss.
    pub fn get(
        &mut self,
        tgid: u32,
        (ip, sp, bp): Start,
        generation: u64,
        stack: &[u8],
    ) -> Option<(&[u64], u64)> {
        let hit = self.walks.get(&(tgid, ip, sp, bp)).filter(|w| {
            w.generation == generation
                && w.slots
                    .iter()
                    .all(|&(off, v)| word_at(stack, off) == Some(v))
        });
        match hit {
            Some(w) => {
                self.hits += 1;
                Some((&w.frames, w.read_end))
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Remembers a complete walk from `start` against map `generation`:
    /// `slots` as (offset from its sp, word).
    pub fn put(
        &mut self,
        tgid: u32,
        (ip, sp, bp): Start,
        generation: u64,
        slots: &[(u32, u64)],
        frames: &[u64],
        read_end: u64,
    ) {
        let walk = Walk {
            generation,
            slots: slots.into(),
            frames: frames.into(),
            read_end,
        };
        let bytes = walk.bytes();
        if self.bytes + bytes > MEMO_MAX_BYTES {
            self.walks.clear();
            self.bytes = 0;
            self.full += 1;
        }
        self.bytes += bytes;
        if let Some(old) = self.walks.insert((tgid, ip, sp, bp), walk) {
            self.bytes -= old.bytes();
        }
    }

    /// Forgets every walk (a layout may have changed).
    pub fn clear(&mut self) {
        self.walks.clear();
        self.bytes = 0;
    }

    /// Walks remembered.
    pub fn len(&self) -> usize {
        self.walks.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.walks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Start = (0x1000, 0x7000, 0);

    fn stack(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn a_walk_is_given_again_only_while_its_slots_hold_their_words() {
        let mut m = StackMemo::default();
        let s = stack(&[0xaa, 0x2000, 0xbb, 0x3000]);
        assert!(m.get(1, R, 1, &s).is_none());
        m.put(
            1,
            R,
            1,
            &[(8, 0x2000), (24, 0x3000)],
            &[0x1000, 0x2000, 0x3000],
            32,
        );
        let (frames, end) = m.get(1, R, 1, &s).expect("remembered");
        assert_eq!((frames, end), (&[0x1000, 0x2000, 0x3000][..], 32));
        // Other words elsewhere do not matter.
        let s2 = stack(&[0xcc, 0x2000, 0xdd, 0x3000]);
        assert!(m.get(1, R, 1, &s2).is_some());
        // A slot with another word, a shorter copy, another process, other
        // registers: walked again.
        assert!(m
            .get(1, R, 1, &stack(&[0xaa, 0x2000, 0xbb, 0x3001]))
            .is_none());
        assert!(m.get(1, R, 1, &stack(&[0xaa, 0x2000, 0xbb])).is_none());
        assert!(m.get(2, R, 1, &s).is_none());
        assert!(m.get(1, (R.0, 0x7008, R.2), 1, &s).is_none());
        assert_eq!((m.hits, m.misses), (2, 5));
        m.clear();
        assert!(m.get(1, R, 1, &s).is_none());
        assert!(m.is_empty());
    }

    #[test]
    fn a_walk_made_against_another_map_is_stale() {
        let mut m = StackMemo::default();
        let s = stack(&[0xaa, 0x2000]);
        m.put(1, R, 7, &[(8, 0x2000)], &[0x1000, 0x2000], 16);
        assert!(m.get(1, R, 7, &s).is_some());
        assert!(m.get(1, R, 8, &s).is_none(), "the map was read again");
    }

    #[test]
    fn memory_stays_bounded() {
        let mut m = StackMemo::default();
        let slots: Vec<(u32, u64)> = (0..256).map(|i| (i * 8, u64::from(i))).collect();
        let frames: Vec<u64> = (0..128).collect();
        for ip in 0..10_000u64 {
            m.put(1, (ip, R.1, R.2), 1, &slots, &frames, 2048);
            assert!(m.bytes <= MEMO_MAX_BYTES);
        }
        assert!(m.full > 0);
        assert!(m.len() < 10_000);
    }
}
