//! glibc's footprint split the way glibc holds it: the main arena's brk heap
//! (`[heap]`), each non-main arena's heaps, and large chunks glibc mmapped
//! on its own; reserved and resident bytes of each, from /proc/PID/smaps.
//! And for one block, which of those holds it (from its chunk header).
//!
//! glibc (malloc/arena.c, malloc.c) lays these out so they can be read from
//! outside:
//! - a non-main arena heap starts at a 64 MiB boundary with a `heap_info`
//!   whose first word is its arena (`ar_ptr`), so heaps group into arenas;
//! - every chunk has its size word at `ptr - 8`, with `IS_MMAPPED` (0x2) and
//!   `NON_MAIN_ARENA` (0x4); a non-main chunk's heap is `ptr & ~(64 MiB-1)`;
//! - an mmapped chunk starts its own mapping: `prev_size` (the alignment
//!   correction, usually 0) and `size | IS_MMAPPED` adding up to the mapping.
//!
//! Pure functions over text and a [`TargetMemory`] reader, so they are
//! tested with synthetic maps and memory.

use std::collections::BTreeMap;

use super::vm::VmRead;

/// glibc's `HEAP_MAX_SIZE` on 64-bit: `2 * DEFAULT_MMAP_THRESHOLD_MAX`
/// (2 × 32 MiB). Every non-main arena heap is a reservation of this size,
/// aligned to it, so that `heap_for_ptr` can find it by masking a pointer.
pub const ARENA_HEAP_SIZE: u64 = 64 << 20;

/// `IS_MMAPPED` bit of a chunk's size word.
pub const IS_MMAPPED: u64 = 0x2;
/// `NON_MAIN_ARENA` bit of a chunk's size word.
pub const NON_MAIN_ARENA: u64 = 0x4;
const SIZE_BITS: u64 = 0x7;

/// Reads the target's memory (process_vm_readv in a session, a map in tests).
pub trait TargetMemory {
    /// The 8-byte little-endian word at `addr`, `None` when unreadable.
    fn word(&self, addr: u64) -> Option<u64>;
}

/// Reserved (mapped) and resident bytes of some mappings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub reserved: u64,
    pub resident: u64,
}

impl Usage {
    fn add(&mut self, reserved: u64, resident: u64) {
        self.reserved = self.reserved.saturating_add(reserved);
        self.resident = self.resident.saturating_add(resident);
    }
}

/// One non-main arena: its heaps together.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaFootprint {
    /// The arena's address (`heap_info->ar_ptr`); 0 when it could not be read.
    pub arena: u64,
    pub heaps: u32,
    /// Accessible bytes (`rw`); the `---p` rest of each 64 MiB reservation
    /// is address space only and is not counted.
    pub usage: Usage,
}

/// glibc's memory at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    /// `[heap]`: the main arena.
    pub main_heap: Usage,
    /// Non-main arenas, by address.
    pub arenas: Vec<ArenaFootprint>,
    /// Chunks glibc served with their own mmap (above `M_MMAP_THRESHOLD`).
    pub mmapped: Usage,
    pub mmapped_chunks: u64,
}

impl Footprint {
    /// Everything glibc holds.
    pub fn total(&self) -> Usage {
        let mut u = self.main_heap;
        for a in &self.arenas {
            u.add(a.usage.reserved, a.usage.resident);
        }
        u.add(self.mmapped.reserved, self.mmapped.resident);
        u
    }
}

/// One mapping of a smaps file with its resident bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmapsEntry {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub anonymous: bool,
    pub path: String,
    pub rss: u64,
}

/// Parses /proc/PID/smaps: each mapping header line and its `Rss:`.
/// Unparsable lines are skipped (a measurement, not a validation).
pub fn parse_smaps(text: &str) -> Vec<SmapsEntry> {
    let mut out: Vec<SmapsEntry> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Rss:") {
            let kb = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok());
            if let (Some(kb), Some(last)) = (kb, out.last_mut()) {
                last.rss = kb.saturating_mul(1024);
            }
            continue;
        }
        let mut cols = line.splitn(6, ' ');
        let (Some(range), Some(perms)) = (cols.next(), cols.next()) else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16)) else {
            continue;
        };
        if perms.len() != 4 || end < start {
            continue;
        }
        let (_off, _dev, inode) = (cols.next(), cols.next(), cols.next().unwrap_or(""));
        let path = cols.next().unwrap_or("").trim().to_string();
        let anonymous = inode == "0" && (path.is_empty() || path.starts_with("[anon:"));
        out.push(SmapsEntry {
            start,
            end,
            perms: perms.to_string(),
            anonymous,
            path,
            rss: 0,
        });
    }
    out
}

/// Splits glibc's footprint out of a process's smaps, reading `heap_info`
/// and mmapped chunk headers through `mem`.
pub fn footprint(smaps: &[SmapsEntry], mem: &dyn TargetMemory) -> Footprint {
    let mut fp = Footprint::default();
    let mut arenas: BTreeMap<u64, ArenaFootprint> = BTreeMap::new();
    for m in smaps {
        let len = m.end - m.start;
        if m.path == "[heap]" {
            fp.main_heap.add(len, m.rss);
            continue;
        }
        if !m.anonymous || m.perms != "rw-p" || len == 0 {
            continue;
        }
        let named_arena = m.path.contains("malloc arena");
        if m.start.is_multiple_of(ARENA_HEAP_SIZE) || named_arena {
            // A heap_info: ar_ptr, prev, size (≤ 64 MiB, ≥ the mapping's rw part).
            let ar_ptr = mem.word(m.start);
            let size = mem.word(m.start + 16);
            let plausible = matches!(size, Some(s) if s > 0 && s <= ARENA_HEAP_SIZE);
            if named_arena || (plausible && ar_ptr.is_some_and(|a| a != 0)) {
                let key = ar_ptr.unwrap_or(0);
                let a = arenas.entry(key).or_insert(ArenaFootprint {
                    arena: key,
                    ..ArenaFootprint::default()
                });
                // A fully grown run of heaps may be one merged mapping.
                let heaps = len.div_ceil(ARENA_HEAP_SIZE).max(1);
                a.heaps = a
                    .heaps
                    .saturating_add(u32::try_from(heaps).unwrap_or(u32::MAX));
                a.usage.add(len, m.rss);
                continue;
            }
        }
        // An mmapped chunk: prev_size + (size & ~7) covers the mapping.
        if let (Some(prev), Some(size)) = (mem.word(m.start), mem.word(m.start + 8)) {
            if size & IS_MMAPPED != 0 && prev.saturating_add(size & !SIZE_BITS) == len {
                fp.mmapped.add(len, m.rss);
                fp.mmapped_chunks += 1;
            }
        }
    }
    fp.arenas = arenas.into_values().collect();
    fp
}

/// Where a block lives, from its chunk header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Home {
    /// The main arena (`[heap]`).
    Main,
    /// A non-main arena, by address.
    Arena(u64),
    /// Its own mmap.
    Mmapped,
}

/// The home of the glibc block at `ptr` (a pointer malloc returned), or
/// `None` when its header cannot be read or makes no sense.
pub fn home_of(ptr: u64, mem: &dyn TargetMemory) -> Option<Home> {
    home_from_size(ptr, mem.word(ptr.checked_sub(8)?)?, mem)
}

/// The home of the block at `ptr` whose chunk size word is `size` (read
/// while the block is live); only a non-main arena's `heap_info` is read.
pub fn home_from_size(ptr: u64, size: u64, mem: &dyn TargetMemory) -> Option<Home> {
    if size & !SIZE_BITS == 0 {
        return None;
    }
    if size & IS_MMAPPED != 0 {
        return Some(Home::Mmapped);
    }
    if size & NON_MAIN_ARENA == 0 {
        return Some(Home::Main);
    }
    let heap = ptr & !(ARENA_HEAP_SIZE - 1);
    let ar_ptr = mem.word(heap)?;
    (ar_ptr != 0).then_some(Home::Arena(ar_ptr))
}

/// A chunk's two header words, at `ptr - 16`: `prev_size` (for an mmapped
/// chunk, its offset in its mapping) and the size word with its flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkHead {
    pub prev_size: u64,
    pub size: u64,
}

/// A non-main arena heap, from its `heap_info`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapInfo {
    /// Its arena (`ar_ptr`).
    pub arena: u64,
    /// Bytes in use from the heap's start (`size`).
    pub size: u64,
}

/// The `heap_info` whose first four words (`ar_ptr`, `prev`, `size`,
/// `mprotect_size`) are `w`, if they look like one: glibc keeps both sizes
/// page-aligned, `size <= mprotect_size <= 64 MiB`, and `prev` is another
/// heap (64 MiB-aligned) or 0. Words of a `[heap]` or of an mmapped block
/// that happen to sit at a 64 MiB boundary rarely pass all of it.
pub fn heap_info(w: [u64; 4]) -> Option<HeapInfo> {
    let [arena, prev, size, mprotect] = w;
    let ok = arena != 0
        && arena.is_multiple_of(8)
        && prev.is_multiple_of(ARENA_HEAP_SIZE)
        && size > 0
        && size <= mprotect
        && mprotect <= ARENA_HEAP_SIZE
        && size.is_multiple_of(4096)
        && mprotect.is_multiple_of(4096);
    ok.then_some(HeapInfo { arena, size })
}

/// What places a block besides its header: the page size, the main
/// arena's `[heap]` (from the last memory map read, if known) and the
/// `heap_info` at a 64 MiB boundary, if any.
pub struct Layout<'a> {
    pub page: u64,
    pub main_heap: Option<(u64, u64)>,
    pub heap: &'a dyn Fn(u64) -> Option<HeapInfo>,
}

/// The home of the glibc block at `ptr` from its chunk header `head` read
/// some time after the allocation, maybe after the block was freed (the
/// probe no longer reads it: userspace reads a whole batch's headers at
/// once); `None` for an unreadable header. `None` when nothing places it.
///
/// Why a late read still places the block right, or not at all: a block
/// freed (even reused) before the read stays where it was, so its address
/// decides first, its header only when the address cannot:
/// - inside a non-main arena heap (its 64 MiB-aligned `heap_info` is
///   there; the whole 64 MiB is that heap's reservation): that arena,
///   whatever the header says. glibc rewrites the head of a chunk it frees
///   into a bin or the top as `size | PREV_INUSE`, clearing
///   `NON_MAIN_ARENA`; a trimmed heap reads as zeros or not at all;
/// - inside `[heap]` (brk): the main arena (no mmapped chunk is there);
/// - elsewhere, by the header: `IS_MMAPPED` when it also describes a chunk
///   starting a mapping (`ptr - 16 - prev_size` and `prev_size + size`
///   page-aligned), the main arena when neither flag is set (its memory
///   beyond `[heap]`: grown since the map was read, or mmapped when brk
///   failed). A set `NON_MAIN_ARENA` bit there is garbage (the old header
///   now lies inside another block's data) and places nothing, as does an
///   unreadable header (an mmapped block already freed and unmapped).
pub fn home_from_head(ptr: u64, head: Option<ChunkHead>, at: &Layout<'_>) -> Option<Home> {
    if let Some(h) = (at.heap)(ptr & !(ARENA_HEAP_SIZE - 1)) {
        return Some(Home::Arena(h.arena));
    }
    if at.main_heap.is_some_and(|(s, e)| ptr >= s && ptr < e) {
        return Some(Home::Main);
    }
    let head = head?;
    let size = head.size & !SIZE_BITS;
    if size == 0 {
        return None;
    }
    if head.size & IS_MMAPPED != 0 {
        let start = ptr.checked_sub(16)?.checked_sub(head.prev_size)?;
        let end = head.prev_size.checked_add(size)?;
        let page = at.page.max(1);
        return (start.is_multiple_of(page) && end.is_multiple_of(page)).then_some(Home::Mmapped);
    }
    (head.size & NON_MAIN_ARENA == 0).then_some(Home::Main)
}

/// Reads a live process's memory with `process_vm_readv`.
pub struct ProcessMemory {
    pub pid: u32,
}

impl TargetMemory for ProcessMemory {
    fn word(&self, addr: u64) -> Option<u64> {
        let mut buf = [0u8; 8];
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` points at our 8-byte buffer, which outlives the
        // call; `remote` is only read by the kernel in the target's address
        // space (a bad address is an error, not a fault here).
        let n =
            unsafe { libc::process_vm_readv(self.pid as libc::pid_t, &local, 1, &remote, 1, 0) };
        (n == 8).then(|| u64::from_le_bytes(buf))
    }
}

/// Most heaps a [`HeapInfoCache`] keeps before starting over.
pub const HEAP_INFO_CACHE: usize = 4096;

/// The `heap_info` (or its absence) per (process, 64 MiB boundary), so
/// placing a sampled block costs a `process_vm_readv` once per heap, not
/// once per block. Cleared at every tick: a heap unmapped and mapped again
/// for another arena is seen at the next one.
#[derive(Debug, Default)]
pub struct HeapInfoCache {
    heaps: std::cell::RefCell<std::collections::HashMap<(u32, u64), Option<HeapInfo>>>,
}

impl HeapInfoCache {
    /// The home of a sampled block of process `pid` whose chunk header,
    /// read from `mem` after the allocation, is `head` (see
    /// [`home_from_head`]); the `heap_info` is read through `mem` too.
    /// `main_heap` is its `[heap]` when known.
    pub fn home(
        &self,
        mem: &dyn VmRead,
        pid: u32,
        ptr: u64,
        head: Option<ChunkHead>,
        main_heap: Option<(u64, u64)>,
    ) -> Option<Home> {
        let heap = |base: u64| {
            let mut h = self.heaps.borrow_mut();
            if let Some(v) = h.get(&(pid, base)) {
                return *v;
            }
            if h.len() >= HEAP_INFO_CACHE {
                h.clear();
            }
            let mut out = [[0u64; 2]; 2];
            let v = match mem.read(pid, &[base, base + 16], &mut out) {
                Ok(2) => heap_info([out[0][0], out[0][1], out[1][0], out[1][1]]),
                _ => None,
            };
            h.insert((pid, base), v);
            v
        };
        let at = Layout {
            page: page_size(),
            main_heap,
            heap: &heap,
        };
        home_from_head(ptr, head, &at)
    }

    /// Forgets every heap (at each tick).
    pub fn clear(&self) {
        self.heaps.borrow_mut().clear();
    }
}

/// This machine's page size (the target's: same kernel), asked once: it is
/// needed for every sampled block placed.
pub fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf takes no pointers.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
    })
}

/// Reads and splits the footprint of a live process.
pub fn read_footprint(pid: u32) -> std::io::Result<Footprint> {
    let text = std::fs::read_to_string(super::procfs::dir(pid).join("smaps"))?;
    Ok(footprint(&parse_smaps(&text), &ProcessMemory { pid }))
}

#[cfg(test)]
mod tests;
