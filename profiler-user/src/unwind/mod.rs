//! Unwinding a copied user stack with the modules' call-frame information, for
//! binaries built without frame pointers (most distribution binaries).
//!
//! Input: the registers at the allocator's return (ip = return address in the
//! caller, sp, bp) and the bytes above sp; output: return addresses, leaf
//! first. Every frame's address is a return address, so CFI is looked up at
//! `ra - 1` (the call instruction), never at `ra`, which may belong to the
//! next function.

pub mod cfi;
pub mod extent;
pub mod memo;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use foldhash::fast::FixedState;
use gimli::UnwindContext;

use crate::process::maps::{FileOffset, MemoryMap, Region, RuntimeAddr};
use cfi::{CfaBase, ModuleCfi, NoRule};

/// Most frames unwound per stack.
pub const MAX_FRAMES: usize = 128;

/// Registers at the sample point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Regs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// A return address a pending uretprobe replaced with its trampoline: the
/// stack slot it was in and the real address the kernel kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingReturn {
    pub slot: u64,
    pub ret: u64,
}

/// The name of the kernel's uretprobe trampoline mapping in /proc/PID/maps.
pub const UPROBES_MAPPING: &str = "[uprobes]";

/// Why an unwind stopped before the outermost frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnwindStop {
    /// The outermost frame (return address undefined, or 0).
    Complete,
    /// A read beyond the copied stack bytes.
    StackCopyExhausted,
    /// An address outside every file mapping, with no usable frame pointer.
    NoModule,
    /// A module without CFI for the address and no usable frame pointer.
    NoCfi,
    /// A CFI rule heapscope cannot evaluate (expressions, other registers).
    UnsupportedRule,
    /// A uretprobe trampoline whose real return address was not recorded.
    Trampoline,
    /// The stack pointer did not move up: a loop, or corrupt data.
    NoProgress,
    /// [`MAX_FRAMES`] reached.
    TooDeep,
}

/// Where module files are found: the file the kernel mapped for `region`
/// (a deploy may have replaced or deleted the file at its path since), as a
/// path this process can open; `None` when it cannot be read.
pub trait ModulePaths {
    fn open_path(&self, maps: &MemoryMap, region: &Region) -> Option<PathBuf>;
}

/// A module file as the kernel mapped it: a file replaced at the same path
/// is another inode, so it gets its own CFI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ModuleKey {
    dev: (u32, u32),
    inode: u64,
    path: String,
}

/// A mapping as the walk meets it: its start and the file the kernel mapped
/// there. The same key names the same module without building its path
/// (every frame asks; the path is only needed on the first sight).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MappingKey {
    start: u64,
    dev: (u32, u32),
    inode: u64,
}

/// Most CFI rules cached by address before the cache is cleared.
const RULE_CACHE_MAX: usize = 1 << 16;

/// Most mappings remembered before that cache is cleared.
const MAPPING_CACHE_MAX: usize = 1 << 12;

/// A fast, fixed hasher: the keys are addresses and inode numbers heapscope
/// read itself, not input an attacker chooses to collide.
type FastMap<K, V> = HashMap<K, V, FixedState>;

/// Unwinds stacks, caching each module's parsed CFI and the rule found at
/// each address (stacks repeat the same return addresses).
#[derive(Default)]
pub struct Unwinder {
    /// The id (index in `loaded`) of each module file met; `None`: no CFI.
    modules: HashMap<ModuleKey, Option<usize>>,
    /// The modules with CFI, by id.
    loaded: Vec<Arc<ModuleCfi>>,
    /// The module of each mapping met (see [`MappingKey`]): an id, looked
    /// up per frame (an `Arc` cloned per frame was ~13% of the capture
    /// thread on redis-server).
    mappings: FastMap<MappingKey, Option<usize>>,
    rules: FastMap<(usize, u64), Result<cfi::FrameRule, NoRule>>,
    ctx: Option<Box<UnwindContext<usize>>>,
    /// Stacks per stop reason, for the report.
    pub stops: HashMap<UnwindStop, u64>,
    /// Bytes of its copy the last walk read (one past its highest slot).
    last_read_end: u64,
    /// Complete walks, to give repeated stacks without walking.
    pub memo: memo::StackMemo,
    /// The slots the last walk read: (offset from sp, word).
    slots: Vec<(u32, u64)>,
}

/// Reads 8 bytes of the copied stack at `addr`.
fn read_u64(stack: &[u8], sp0: u64, addr: u64) -> Option<u64> {
    let off = usize::try_from(addr.checked_sub(sp0)?).ok()?;
    let bytes = stack.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

impl Unwinder {
    fn module(
        &mut self,
        maps: &MemoryMap,
        region: &Region,
        path: &str,
        files: &dyn ModulePaths,
    ) -> Option<usize> {
        let fast = MappingKey {
            start: region.start,
            dev: (region.dev.major, region.dev.minor),
            inode: region.inode,
        };
        if let Some(m) = self.mappings.get(&fast) {
            return *m;
        }
        if self.mappings.len() >= MAPPING_CACHE_MAX {
            self.mappings.clear();
        }
        let m = self.module_by_file(maps, region, path, files);
        self.mappings.insert(fast, m);
        m
    }

    fn module_by_file(
        &mut self,
        maps: &MemoryMap,
        region: &Region,
        path: &str,
        files: &dyn ModulePaths,
    ) -> Option<usize> {
        let key = ModuleKey {
            dev: (region.dev.major, region.dev.minor),
            inode: region.inode,
            path: path.to_string(),
        };
        if let Some(m) = self.modules.get(&key) {
            return *m;
        }
        let id = self.loaded.len();
        let m = files
            .open_path(maps, region)
            .and_then(|p| ModuleCfi::load(&p).ok())
            .map(|m| {
                self.loaded.push(Arc::new(m));
                id
            });
        self.modules.insert(key, m);
        m
    }

    fn rule(
        &mut self,
        id: usize,
        vaddr: u64,
        ctx: &mut UnwindContext<usize>,
    ) -> Result<cfi::FrameRule, NoRule> {
        if let Some(r) = self.rules.get(&(id, vaddr)) {
            return *r;
        }
        if self.rules.len() >= RULE_CACHE_MAX {
            self.rules.clear();
        }
        let Some(m) = self.loaded.get(id) else {
            return Err(NoRule::NotCovered);
        };
        let r = m.rule(vaddr, ctx);
        self.rules.insert((id, vaddr), r);
        r
    }

    /// Return addresses of the stack, leaf first (the first is `regs.ip`).
    /// `pending` maps uretprobe trampolines back to the real return addresses.
    pub fn unwind(
        &mut self,
        regs: Regs,
        stack: &[u8],
        pending: &[PendingReturn],
        maps: &MemoryMap,
        files: &dyn ModulePaths,
    ) -> (Vec<u64>, UnwindStop) {
        let (frames, stop) = self.walk(regs, stack, pending, maps, files);
        self.count_stop(stop);
        (frames, stop)
    }

    /// Bytes of the stack copy the last walk read: one past the highest
    /// slot, relative to the copy's start (see [`extent`]).
    pub fn last_read_end(&self) -> u64 {
        self.last_read_end
    }

    /// Counts one stack's stop reason in [`Unwinder::stops`] (for callers of
    /// [`Unwinder::walk`], which counts nothing).
    pub fn count_stop(&mut self, stop: UnwindStop) {
        *self.stops.entry(stop).or_insert(0) += 1;
    }

    /// [`Unwinder::unwind`] without counting the stop reason: for a caller
    /// that may unwind the same stack again (after re-reading the map) and
    /// counts once with [`Unwinder::count_stop`].
    pub fn walk(
        &mut self,
        regs: Regs,
        stack: &[u8],
        pending: &[PendingReturn],
        maps: &MemoryMap,
        files: &dyn ModulePaths,
    ) -> (Vec<u64>, UnwindStop) {
        // The region of the last lookup: a return address is looked up
        // once for the trampoline check and once (less one) as the next
        // frame's, nearly always in the same region (the second binary
        // search over the regions was ~9% of the capture thread).
        let mut last: Option<&Region> = None;
        let mut region_of = |addr: u64| -> Option<(&Region, FileOffset)> {
            if let Some(r) = last.filter(|r| r.start <= addr && addr < r.end) {
                return r.file_offset_of(RuntimeAddr(addr)).map(|o| (r, o));
            }
            let found = maps.lookup(RuntimeAddr(addr));
            last = found.map(|(r, _)| r);
            found
        };
        let mut used = 0usize;
        let sp0 = regs.sp;
        let mut read_end = 0u64;
        let mut slots = std::mem::take(&mut self.slots);
        slots.clear();
        let mut read = |addr: u64| {
            let v = read_u64(stack, sp0, addr)?;
            let off = addr - sp0;
            read_end = read_end.max(off + 8);
            // (A copy is far below 4 GiB: every read offset fits.)
            slots.push((off as u32, v));
            Some(v)
        };
        let mut ctx = self
            .ctx
            .take()
            .unwrap_or_else(|| Box::new(UnwindContext::new()));
        let mut frames = Vec::new();
        let mut r = regs;
        let stop = loop {
            if r.ip == 0 {
                break UnwindStop::Complete;
            }
            frames.push(r.ip);
            if frames.len() >= MAX_FRAMES {
                break UnwindStop::TooDeep;
            }
            let lookup = r.ip - 1;
            let rule = match region_of(lookup) {
                Some((region, offset)) => match region.path.as_deref() {
                    Some(path) if region.is_file() => {
                        let vaddr = self.module(maps, region, path, files).and_then(|id| {
                            Some((id, self.loaded.get(id)?.offset_to_vaddr(offset.0)?))
                        });
                        match vaddr {
                            Some((id, vaddr)) => self.rule(id, vaddr, &mut ctx),
                            None => Err(NoRule::NotCovered),
                        }
                    }
                    _ => Err(NoRule::NotCovered),
                },
                None => Err(NoRule::NotCovered),
            };
            let next = match rule {
                Ok(rule) => {
                    let base = match rule.cfa_register {
                        CfaBase::Rsp => r.sp,
                        CfaBase::Rbp => r.bp,
                    };
                    let cfa = base.wrapping_add(rule.cfa_offset as u64);
                    let Some(ra_off) = rule.ra_offset else {
                        break UnwindStop::Complete;
                    };
                    let slot = cfa.wrapping_add(ra_off as u64);
                    let Some(mut ra) = read(slot) else {
                        break UnwindStop::StackCopyExhausted;
                    };
                    // A pending uretprobe replaced the return address in this
                    // slot with its trampoline; the kernel kept the real one.
                    // (The [uprobes] mapping appears lazily, so a slot match
                    // is trusted even when the map does not show it yet.)
                    if let Some(p) = pending.iter().find(|p| p.slot == slot) {
                        ra = p.ret;
                    } else if region_of(ra)
                        .is_some_and(|(r, _)| r.path.as_deref() == Some(UPROBES_MAPPING))
                    {
                        match pending.get(used) {
                            Some(p) => {
                                used += 1;
                                ra = p.ret;
                            }
                            None => {
                                frames.push(ra);
                                break UnwindStop::Trampoline;
                            }
                        }
                    }
                    let bp = match rule.rbp_offset {
                        Some(o) => match read(cfa.wrapping_add(o as u64)) {
                            Some(v) => v,
                            None => break UnwindStop::StackCopyExhausted,
                        },
                        None => r.bp,
                    };
                    Regs {
                        ip: ra,
                        sp: cfa,
                        bp,
                    }
                }
                Err(why) => {
                    // Code without CFI (JIT, hand-written asm) may still keep
                    // frame pointers: try one frame-pointer step.
                    match (read(r.bp), read(r.bp.wrapping_add(8))) {
                        (Some(bp), Some(ra)) if r.bp >= r.sp => Regs {
                            ip: ra,
                            sp: r.bp.wrapping_add(16),
                            bp,
                        },
                        _ => {
                            break match why {
                                NoRule::Unsupported => UnwindStop::UnsupportedRule,
                                NoRule::NotCovered if region_of(lookup).is_none() => {
                                    UnwindStop::NoModule
                                }
                                NoRule::NotCovered => UnwindStop::NoCfi,
                            }
                        }
                    }
                }
            };
            if next.sp <= r.sp {
                break UnwindStop::NoProgress;
            }
            r = next;
        };
        self.ctx = Some(ctx);
        self.last_read_end = read_end;
        self.slots = slots;
        (frames, stop)
    }

    /// [`Unwinder::walk`] of a sample of process `tgid`, given from the
    /// memo when the same registers and slot words were walked before (see
    /// [`memo`]); a complete walk without pending returns is remembered.
    pub fn walk_memo(
        &mut self,
        tgid: u32,
        regs: Regs,
        stack: &[u8],
        pending: &[PendingReturn],
        maps: &MemoryMap,
        files: &dyn ModulePaths,
    ) -> (Vec<u64>, UnwindStop) {
        if !pending.is_empty() {
            return self.walk(regs, stack, pending, maps, files);
        }
        let start = (regs.ip, regs.sp, regs.bp);
        if let Some((frames, read_end)) = self.memo.get(tgid, start, maps.generation, stack) {
            let frames = frames.to_vec();
            self.last_read_end = read_end;
            return (frames, UnwindStop::Complete);
        }
        let (frames, stop) = self.walk(regs, stack, pending, maps, files);
        if stop == UnwindStop::Complete {
            self.memo.put(
                tgid,
                start,
                maps.generation,
                &self.slots,
                &frames,
                self.last_read_end,
            );
        }
        (frames, stop)
    }

    /// Loads the call-frame information of every executable file `maps`
    /// maps, ahead of the first samples; returns how many modules have it.
    /// (Loaded on the first stack through a module otherwise, while the
    /// target already allocates at full rate and records pile up.)
    pub fn preload(&mut self, maps: &MemoryMap, files: &dyn ModulePaths) -> usize {
        let mut loaded = 0;
        for region in &maps.regions {
            if !region.perms.execute || !region.is_file() {
                continue;
            }
            let Some(path) = region.path.as_deref() else {
                continue;
            };
            if path == UPROBES_MAPPING {
                continue;
            }
            loaded += usize::from(self.module(maps, region, path, files).is_some());
        }
        loaded
    }
}

#[cfg(test)]
mod tests;
