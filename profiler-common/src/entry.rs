//! Allocator entry points as rows of one table: symbol → what the call does
//! and where its arguments are.
//!
//! One eBPF entry program serves every row: userspace attaches it with the
//! row's [`EntrySpec`] packed into the uprobe's attach cookie, and the program
//! saves the arguments the spec names. What a call's result means is decided
//! by [`outcome`] from the kind alone, so a new allocator (jemalloc's
//! `mallocx`, C++ `operator new`, a prefixed build) is a new row, not a new
//! program.

use crate::{AllocKind, MAP_ANONYMOUS, MAP_FAILED, MAP_STACK};

/// Marks an unused argument slot of an [`EntrySpec`].
pub const ARG_NONE: u8 = 0xff;
/// Registers an argument can be read from (x86-64 SysV: rdi, rsi, rdx, rcx, r8, r9).
pub const MAX_ARG: u8 = 5;

/// What one probed function does and which of its arguments the return side needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntrySpec {
    pub kind: AllocKind,
    /// Argument positions (0-based) saved into the per-thread slots
    /// `arg0..arg2`, or [`ARG_NONE`]. What each slot means is fixed per kind,
    /// see [`outcome`]: e.g. Malloc reads its size from slot 0.
    pub args: [u8; 3],
}

/// Set in every valid cookie so that a cookie of 0 (not set) decodes to nothing.
const COOKIE_VALID: u64 = 1 << 63;

impl EntrySpec {
    /// A spec saving argument positions `args` (use [`ARG_NONE`] for unused slots).
    pub const fn new(kind: AllocKind, args: [u8; 3]) -> EntrySpec {
        EntrySpec { kind, args }
    }

    /// The attach cookie carrying this spec to the eBPF entry program.
    pub const fn cookie(self) -> u64 {
        COOKIE_VALID
            | (self.kind as u64)
            | ((self.args[0] as u64) << 8)
            | ((self.args[1] as u64) << 16)
            | ((self.args[2] as u64) << 24)
    }

    /// Decodes a cookie; `None` when it is not one [`EntrySpec::cookie`] made
    /// (not set, unknown kind, or an argument position past the registers).
    pub fn from_cookie(cookie: u64) -> Option<EntrySpec> {
        if cookie & COOKIE_VALID == 0 || cookie & !(COOKIE_VALID | 0xffff_ffff) != 0 {
            return None;
        }
        let kind = AllocKind::from_u32((cookie & 0xff) as u32)?;
        let mut args = [ARG_NONE; 3];
        let mut i = 0;
        while i < 3 {
            let a = ((cookie >> (8 + 8 * i)) & 0xff) as u8;
            if a != ARG_NONE && a > MAX_ARG {
                return None;
            }
            args[i] = a;
            i += 1;
        }
        Some(EntrySpec { kind, args })
    }

    /// True when the call's result matters, so a return probe goes on it too.
    /// `free` and `munmap` are judged at entry: skipping the return trap halves their cost.
    pub const fn has_return_probe(self) -> bool {
        !matches!(self.kind, AllocKind::Free | AllocKind::Munmap)
    }
}

/// Which module of the process an entry point is looked up in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryModule {
    /// The module that defines `malloc` (libc, a preloaded allocator, a static executable).
    Allocator,
    /// The module whose `mmap` the allocator uses (libc, or the static executable).
    Mapper,
}

/// One row of the entry-point table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryPoint {
    pub symbol: &'static str,
    pub module: EntryModule,
    pub spec: EntrySpec,
}

const N: u8 = ARG_NONE;

const fn row(
    symbol: &'static str,
    module: EntryModule,
    kind: AllocKind,
    args: [u8; 3],
) -> EntryPoint {
    EntryPoint {
        symbol,
        module,
        spec: EntrySpec::new(kind, args),
    }
}

/// Every entry point heapscope probes, in the order they are looked up.
///
/// Slot meanings per kind (see [`outcome`]): size-only allocators save the
/// size in slot 0; calloc/reallocarray save their factors; realloc the old
/// pointer then the size; posix_memalign the out-pointer then the size; mmap
/// the length then the flags; mremap the old address, old and new length;
/// free the pointer; munmap the address and length.
pub const ENTRY_POINTS: [EntryPoint; 13] = {
    use AllocKind as K;
    use EntryModule::{Allocator as A, Mapper as M};
    [
        row("malloc", A, K::Malloc, [0, N, N]),
        row("calloc", A, K::Calloc, [0, 1, N]),
        row("realloc", A, K::Realloc, [0, 1, N]),
        row("reallocarray", A, K::Reallocarray, [0, 1, 2]),
        // (memptr, alignment, size)
        row("posix_memalign", A, K::PosixMemalign, [0, 2, N]),
        // glibc's aligned_alloc is a weak alias of memalign: probed once, as memalign.
        row("memalign", A, K::Memalign, [1, N, N]),
        row("aligned_alloc", A, K::AlignedAlloc, [1, N, N]),
        row("valloc", A, K::Valloc, [0, N, N]),
        row("pvalloc", A, K::Pvalloc, [0, N, N]),
        row("free", A, K::Free, [0, N, N]),
        // (addr, length, prot, flags, fd, offset)
        row("mmap", M, K::Mmap, [1, 3, N]),
        row("munmap", M, K::Munmap, [0, 1, N]),
        // (old_address, old_size, new_size, flags, ...)
        row("mremap", M, K::Mremap, [0, 1, 2]),
    ]
};

/// What the return of an allocator call means for the accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new block `ptr` of `size` bytes.
    Alloc { ptr: u64, size: u64 },
    /// A new block of `size` bytes whose address the call stored at `memptr`
    /// (posix_memalign); a null or unreadable pointer there is a failure.
    AllocAt { memptr: u64, size: u64 },
    /// `old` (0: none) was freed and `new` of `size` bytes allocated.
    Realloc { old: u64, new: u64, size: u64 },
    /// Only a free: glibc's `realloc(p, 0)` frees p and returns NULL.
    Free { ptr: u64 },
    /// An anonymous mapping that may be heap: `addr`, `len` bytes.
    Map { addr: u64, len: u64 },
    /// A mapping moved or resized.
    Remap {
        old: u64,
        old_len: u64,
        new: u64,
        new_len: u64,
    },
    /// The call failed (returned NULL or an error).
    Failed,
    /// Nothing to account (a failed or file-backed mapping, a thread stack,
    /// a kind judged at entry).
    Ignore,
}

/// The meaning of the return `ret` of a call of `kind` whose entry saved `args`.
pub fn outcome(kind: AllocKind, args: [u64; 3], ret: u64) -> Outcome {
    let [a0, a1, a2] = args;
    match kind {
        AllocKind::Malloc | AllocKind::AlignedAlloc | AllocKind::Memalign | AllocKind::Valloc => {
            alloc(ret, a0)
        }
        // pvalloc rounds the request up to whole pages.
        AllocKind::Pvalloc => alloc(ret, a0.wrapping_add(4095) & !4095u64),
        AllocKind::Calloc => alloc(ret, a0.wrapping_mul(a1)),
        AllocKind::Realloc => realloc(ret, a0, a1),
        AllocKind::Reallocarray => realloc(ret, a0, a1.wrapping_mul(a2)),
        // Returns 0 on success and stores the block through memptr.
        AllocKind::PosixMemalign if ret as u32 != 0 => Outcome::Failed,
        AllocKind::PosixMemalign => Outcome::AllocAt {
            memptr: a0,
            size: a1,
        },
        // Only anonymous memory is heap; thread stacks are not.
        AllocKind::Mmap if ret == MAP_FAILED || a1 & MAP_ANONYMOUS == 0 || a1 & MAP_STACK != 0 => {
            Outcome::Ignore
        }
        AllocKind::Mmap => Outcome::Map { addr: ret, len: a0 },
        AllocKind::Mremap if ret == MAP_FAILED => Outcome::Ignore,
        AllocKind::Mremap => Outcome::Remap {
            old: a0,
            old_len: a1,
            new: ret,
            new_len: a2,
        },
        AllocKind::Free | AllocKind::Munmap => Outcome::Ignore,
    }
}

fn alloc(ret: u64, size: u64) -> Outcome {
    if ret == 0 {
        Outcome::Failed
    } else {
        Outcome::Alloc { ptr: ret, size }
    }
}

/// A failed realloc keeps the old block; glibc's realloc(p, 0) frees p and returns NULL.
fn realloc(ret: u64, old: u64, size: u64) -> Outcome {
    match ret {
        0 if size == 0 && old != 0 => Outcome::Free { ptr: old },
        0 => Outcome::Failed,
        new => Outcome::Realloc { old, new, size },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_round_trips_through_its_cookie() {
        for e in ENTRY_POINTS {
            assert_eq!(
                EntrySpec::from_cookie(e.spec.cookie()),
                Some(e.spec),
                "{}",
                e.symbol
            );
        }
    }

    #[test]
    fn every_kind_has_exactly_one_row() {
        for k in AllocKind::ALL {
            let n = ENTRY_POINTS.iter().filter(|e| e.spec.kind == k).count();
            assert_eq!(n, 1, "{k:?}");
        }
    }

    #[test]
    fn bad_cookies_decode_to_nothing() {
        assert_eq!(EntrySpec::from_cookie(0), None, "cookie not set");
        let malloc = EntrySpec::new(AllocKind::Malloc, [0, N, N]).cookie();
        assert_eq!(EntrySpec::from_cookie(malloc & !COOKIE_VALID), None);
        assert_eq!(EntrySpec::from_cookie(malloc | 1 << 40), None, "stray bits");
        assert_eq!(
            EntrySpec::from_cookie(COOKIE_VALID | 99),
            None,
            "unknown kind"
        );
        let bad_arg = EntrySpec::new(AllocKind::Malloc, [6, N, N]).cookie();
        assert_eq!(EntrySpec::from_cookie(bad_arg), None, "no seventh register");
    }

    #[test]
    fn only_free_and_munmap_skip_the_return_probe() {
        for k in AllocKind::ALL {
            let spec = EntrySpec::new(k, [0, N, N]);
            assert_eq!(
                spec.has_return_probe(),
                !matches!(k, AllocKind::Free | AllocKind::Munmap),
                "{k:?}"
            );
        }
    }

    #[test]
    fn allocations_and_failures() {
        use AllocKind as K;
        for k in [K::Malloc, K::AlignedAlloc, K::Memalign, K::Valloc] {
            assert_eq!(
                outcome(k, [100, 0, 0], 0x1000),
                Outcome::Alloc {
                    ptr: 0x1000,
                    size: 100
                }
            );
            assert_eq!(outcome(k, [100, 0, 0], 0), Outcome::Failed);
        }
        assert_eq!(
            outcome(K::Pvalloc, [1, 0, 0], 0x1000),
            Outcome::Alloc {
                ptr: 0x1000,
                size: 4096
            }
        );
        assert_eq!(
            outcome(K::Pvalloc, [4096, 0, 0], 0x1000),
            Outcome::Alloc {
                ptr: 0x1000,
                size: 4096
            }
        );
        assert_eq!(
            outcome(K::Pvalloc, [0, 0, 0], 0x1000),
            Outcome::Alloc {
                ptr: 0x1000,
                size: 0
            }
        );
        assert_eq!(
            outcome(K::Calloc, [10, 24, 0], 0x1000),
            Outcome::Alloc {
                ptr: 0x1000,
                size: 240
            }
        );
        assert_eq!(outcome(K::Calloc, [10, 24, 0], 0), Outcome::Failed);
    }

    #[test]
    fn realloc_frees_the_old_block() {
        use AllocKind as K;
        let r = |old, size, ret| outcome(K::Realloc, [old, size, 0], ret);
        assert_eq!(
            r(0x10, 64, 0x20),
            Outcome::Realloc {
                old: 0x10,
                new: 0x20,
                size: 64
            }
        );
        assert_eq!(
            r(0, 64, 0x20),
            Outcome::Realloc {
                old: 0,
                new: 0x20,
                size: 64
            },
            "realloc(NULL, n)"
        );
        assert_eq!(r(0x10, 0, 0), Outcome::Free { ptr: 0x10 }, "realloc(p, 0)");
        assert_eq!(r(0x10, 64, 0), Outcome::Failed, "failure keeps the block");
        assert_eq!(r(0, 0, 0), Outcome::Failed);
        assert_eq!(
            outcome(K::Reallocarray, [0x10, 3, 8], 0x20),
            Outcome::Realloc {
                old: 0x10,
                new: 0x20,
                size: 24
            }
        );
        assert_eq!(
            outcome(K::Reallocarray, [0x10, 0, 8], 0),
            Outcome::Free { ptr: 0x10 }
        );
    }

    #[test]
    fn posix_memalign_reports_through_its_out_pointer() {
        let k = AllocKind::PosixMemalign;
        assert_eq!(
            outcome(k, [0x7ff0, 256, 0], 0),
            Outcome::AllocAt {
                memptr: 0x7ff0,
                size: 256
            }
        );
        assert_eq!(
            outcome(k, [0x7ff0, 256, 0], 12 /* ENOMEM */),
            Outcome::Failed
        );
    }

    #[test]
    fn only_anonymous_non_stack_mappings_are_heap() {
        let k = AllocKind::Mmap;
        let anon = MAP_ANONYMOUS | 0x02; // MAP_PRIVATE
        assert_eq!(
            outcome(k, [8192, anon, 0], 0x5000),
            Outcome::Map {
                addr: 0x5000,
                len: 8192
            }
        );
        assert_eq!(
            outcome(k, [8192, 0x02, 0], 0x5000),
            Outcome::Ignore,
            "file-backed"
        );
        assert_eq!(
            outcome(k, [8192, anon | MAP_STACK, 0], 0x5000),
            Outcome::Ignore,
            "thread stack"
        );
        assert_eq!(outcome(k, [8192, anon, 0], MAP_FAILED), Outcome::Ignore);
        assert_eq!(
            outcome(AllocKind::Mremap, [0x5000, 8192, 16384], 0x9000),
            Outcome::Remap {
                old: 0x5000,
                old_len: 8192,
                new: 0x9000,
                new_len: 16384
            }
        );
        assert_eq!(
            outcome(AllocKind::Mremap, [0x5000, 8192, 16384], MAP_FAILED),
            Outcome::Ignore
        );
    }

    #[test]
    fn entry_judged_kinds_have_no_outcome() {
        assert_eq!(outcome(AllocKind::Free, [0x10, 0, 0], 0), Outcome::Ignore);
        assert_eq!(
            outcome(AllocKind::Munmap, [0x10, 4096, 0], 0),
            Outcome::Ignore
        );
    }
}
