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
    /// An entry point of a custom pool allocator the user named (`--alloc`):
    /// allocator calls made beneath it are the pool's own.
    pub pool: bool,
}

/// Set in every valid cookie so that a cookie of 0 (not set) decodes to nothing.
const COOKIE_VALID: u64 = 1 << 63;
/// Set in the cookie of a custom pool allocator's entry point.
const COOKIE_POOL: u64 = 1 << 32;

/// The cookie of the point where the entry program holds a `run` command at
/// `_exit` (see profiler-ebpf's `hold.rs`): not a valid entry spec, so
/// nothing else reads it as one.
pub const HOLD_COOKIE: u64 = 0x686f_6c64;

impl EntrySpec {
    /// A spec saving argument positions `args` (use [`ARG_NONE`] for unused slots).
    pub const fn new(kind: AllocKind, args: [u8; 3]) -> EntrySpec {
        EntrySpec {
            kind,
            args,
            pool: false,
        }
    }

    /// The same spec, marked as a custom pool allocator's entry point.
    pub const fn in_pool(self) -> EntrySpec {
        EntrySpec { pool: true, ..self }
    }

    /// The attach cookie carrying this spec to the eBPF entry program.
    pub const fn cookie(self) -> u64 {
        let pool = if self.pool { COOKIE_POOL } else { 0 };
        COOKIE_VALID
            | pool
            | (self.kind as u64)
            | ((self.args[0] as u64) << 8)
            | ((self.args[1] as u64) << 16)
            | ((self.args[2] as u64) << 24)
    }

    /// Decodes a cookie; `None` when it is not one [`EntrySpec::cookie`] made
    /// (not set, unknown kind, or an argument position past the registers).
    pub fn from_cookie(cookie: u64) -> Option<EntrySpec> {
        if cookie & COOKIE_VALID == 0 || cookie & !(COOKIE_VALID | COOKIE_POOL | 0xffff_ffff) != 0 {
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
        Some(EntrySpec {
            kind,
            args,
            pool: cookie & COOKIE_POOL != 0,
        })
    }

    /// True when the call's result matters, so a return probe goes on it too.
    /// `free` and `munmap` are judged at entry: skipping the return trap halves their cost.
    pub const fn has_return_probe(self) -> bool {
        !matches!(self.kind, AllocKind::Free | AllocKind::Munmap)
    }
}

/// Which module of the process an entry point is looked up in (its family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EntryModule {
    /// The C standard names: the first module in symbol-lookup order that
    /// defines each (the executable, preloaded and linked libraries, libc),
    /// which is the one the program's calls reach.
    Standard,
    /// C++ `operator new`/`delete`, where the allocator itself defines them
    /// (jemalloc, tcmalloc, mimalloc, a static executable). libstdc++'s
    /// operators call malloc, so there each allocation counts once as malloc.
    Cxx,
    /// jemalloc's own API, unprefixed or `je_`/`_rjem_`-prefixed.
    Jemalloc,
    /// gperftools tcmalloc's `tc_*` API.
    Tcmalloc,
    /// mimalloc's `mi_*` API.
    Mimalloc,
    /// The mapping calls: the first module in lookup order that defines each.
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
/// Where two names are one function (aliases), the first row wins, so the
/// standard names come before their `tc_`/`mi_` twins and frees first.
///
/// Slot meanings per kind (see [`outcome`]): size-only allocators save the
/// size in slot 0; calloc/reallocarray save their factors; realloc the old
/// pointer then the size; posix_memalign the out-pointer then the size; mmap
/// the length then the flags; mremap the old address, old and new length;
/// free the pointer; munmap the address and length.
pub const ENTRY_POINTS: &[EntryPoint] = {
    use AllocKind as K;
    use EntryModule::{
        Cxx as X, Jemalloc as J, Mapper as M, Mimalloc as I, Standard as S, Tcmalloc as T,
    };
    const SIZE: [u8; 3] = [0, N, N];
    const PTR: [u8; 3] = [0, N, N];
    const N_SIZE: [u8; 3] = [0, 1, N];
    const PTR_SIZE: [u8; 3] = [0, 1, N];
    // (alignment, size)
    const ALIGN_SIZE: [u8; 3] = [1, N, N];
    // (memptr, alignment, size)
    const MEMPTR_SIZE: [u8; 3] = [0, 2, N];
    &[
        row("free", S, K::Free, PTR),
        row("malloc", S, K::Malloc, SIZE),
        row("calloc", S, K::Calloc, N_SIZE),
        row("realloc", S, K::Realloc, PTR_SIZE),
        row("reallocarray", S, K::Reallocarray, [0, 1, 2]),
        row("posix_memalign", S, K::PosixMemalign, MEMPTR_SIZE),
        // glibc's aligned_alloc is a weak alias of memalign: probed once, as memalign.
        row("memalign", S, K::Memalign, ALIGN_SIZE),
        row("aligned_alloc", S, K::AlignedAlloc, ALIGN_SIZE),
        row("valloc", S, K::Valloc, SIZE),
        row("pvalloc", S, K::Pvalloc, SIZE),
        // C++ delete: plain, sized, aligned, nothrow; scalar and array.
        row("_ZdlPv", X, K::Free, PTR),
        row("_ZdaPv", X, K::Free, PTR),
        row("_ZdlPvm", X, K::Free, PTR),
        row("_ZdaPvm", X, K::Free, PTR),
        row("_ZdlPvSt11align_val_t", X, K::Free, PTR),
        row("_ZdaPvSt11align_val_t", X, K::Free, PTR),
        row("_ZdlPvmSt11align_val_t", X, K::Free, PTR),
        row("_ZdaPvmSt11align_val_t", X, K::Free, PTR),
        row("_ZdlPvRKSt9nothrow_t", X, K::Free, PTR),
        row("_ZdaPvRKSt9nothrow_t", X, K::Free, PTR),
        row("_ZdlPvSt11align_val_tRKSt9nothrow_t", X, K::Free, PTR),
        row("_ZdaPvSt11align_val_tRKSt9nothrow_t", X, K::Free, PTR),
        // C++ new: plain, nothrow, aligned, aligned nothrow.
        row("_Znwm", X, K::New, SIZE),
        row("_Znam", X, K::NewArray, SIZE),
        row("_ZnwmRKSt9nothrow_t", X, K::New, SIZE),
        row("_ZnamRKSt9nothrow_t", X, K::NewArray, SIZE),
        row("_ZnwmSt11align_val_t", X, K::New, SIZE),
        row("_ZnamSt11align_val_t", X, K::NewArray, SIZE),
        row("_ZnwmSt11align_val_tRKSt9nothrow_t", X, K::New, SIZE),
        row("_ZnamSt11align_val_tRKSt9nothrow_t", X, K::NewArray, SIZE),
        // jemalloc's non-standard API (prefixed builds add je_ / _rjem_ to
        // every jemalloc name, the standard ones included).
        row("sdallocx", J, K::Free, PTR),
        row("dallocx", J, K::Free, PTR),
        row("mallocx", J, K::Mallocx, SIZE),
        row("rallocx", J, K::Rallocx, PTR_SIZE),
        // tcmalloc.
        row("tc_free", T, K::Free, PTR),
        row("tc_cfree", T, K::Free, PTR),
        row("tc_free_sized", T, K::Free, PTR),
        row("tc_delete", T, K::Free, PTR),
        row("tc_deletearray", T, K::Free, PTR),
        row("tc_delete_sized", T, K::Free, PTR),
        row("tc_deletearray_sized", T, K::Free, PTR),
        row("tc_delete_nothrow", T, K::Free, PTR),
        row("tc_deletearray_nothrow", T, K::Free, PTR),
        row("tc_delete_aligned", T, K::Free, PTR),
        row("tc_deletearray_aligned", T, K::Free, PTR),
        row("tc_malloc", T, K::Malloc, SIZE),
        row("tc_malloc_skip_new_handler", T, K::Malloc, SIZE),
        row("tc_calloc", T, K::Calloc, N_SIZE),
        row("tc_realloc", T, K::Realloc, PTR_SIZE),
        row("tc_memalign", T, K::Memalign, ALIGN_SIZE),
        row("tc_posix_memalign", T, K::PosixMemalign, MEMPTR_SIZE),
        row("tc_valloc", T, K::Valloc, SIZE),
        row("tc_pvalloc", T, K::Pvalloc, SIZE),
        row("tc_new", T, K::New, SIZE),
        row("tc_newarray", T, K::NewArray, SIZE),
        row("tc_new_nothrow", T, K::New, SIZE),
        row("tc_newarray_nothrow", T, K::NewArray, SIZE),
        // mimalloc.
        row("mi_free", I, K::Free, PTR),
        row("mi_cfree", I, K::Free, PTR),
        row("mi_free_size", I, K::Free, PTR),
        row("mi_free_aligned", I, K::Free, PTR),
        row("mi_free_size_aligned", I, K::Free, PTR),
        row("mi_malloc", I, K::Malloc, SIZE),
        row("mi_zalloc", I, K::Malloc, SIZE),
        row("mi_malloc_small", I, K::Malloc, SIZE),
        row("mi_zalloc_small", I, K::Malloc, SIZE),
        row("mi_malloc_aligned", I, K::Malloc, SIZE),
        row("mi_zalloc_aligned", I, K::Malloc, SIZE),
        row("mi_calloc", I, K::Calloc, N_SIZE),
        row("mi_mallocn", I, K::Calloc, N_SIZE),
        row("mi_calloc_aligned", I, K::Calloc, N_SIZE),
        row("mi_realloc", I, K::Realloc, PTR_SIZE),
        row("mi_reallocf", I, K::Realloc, PTR_SIZE),
        row("mi_rezalloc", I, K::Realloc, PTR_SIZE),
        row("mi_realloc_aligned", I, K::Realloc, PTR_SIZE),
        row("mi_reallocn", I, K::Reallocarray, [0, 1, 2]),
        row("mi_new", I, K::New, SIZE),
        row("mi_new_nothrow", I, K::New, SIZE),
        row("mi_new_aligned", I, K::New, SIZE),
        row("mi_new_aligned_nothrow", I, K::New, SIZE),
        row("mi_new_n", I, K::Calloc, N_SIZE),
        row("mi_heap_malloc", I, K::Malloc, [1, N, N]),
        row("mi_heap_zalloc", I, K::Malloc, [1, N, N]),
        row("mi_heap_calloc", I, K::Calloc, [1, 2, N]),
        row("mi_heap_realloc", I, K::Realloc, [1, 2, N]),
        // (addr, length, prot, flags, fd, offset)
        row("munmap", M, K::Munmap, [0, 1, N]),
        row("mmap", M, K::Mmap, [1, 3, N]),
        // (old_address, old_size, new_size, flags, ...)
        row("mremap", M, K::Mremap, [0, 1, 2]),
    ]
};

/// Prefixes jemalloc builds can put on every one of its names
/// (`je_malloc`, Rust's tikv-jemallocator `_rjem_mallocx`).
pub const JEMALLOC_PREFIXES: [&str; 2] = ["je_", "_rjem_"];

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
        AllocKind::Malloc
        | AllocKind::AlignedAlloc
        | AllocKind::Memalign
        | AllocKind::Valloc
        | AllocKind::New
        | AllocKind::NewArray
        | AllocKind::Mallocx => alloc(ret, a0),
        // pvalloc rounds the request up to whole pages.
        AllocKind::Pvalloc => alloc(ret, a0.wrapping_add(4095) & !4095u64),
        AllocKind::Calloc => alloc(ret, a0.wrapping_mul(a1)),
        AllocKind::Realloc => realloc(ret, a0, a1),
        // rallocx never frees: a NULL return is a failure that keeps the block.
        AllocKind::Rallocx if ret == 0 => Outcome::Failed,
        AllocKind::Rallocx => Outcome::Realloc {
            old: a0,
            new: ret,
            size: a1,
        },
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

/// What a heap-block allocation asks for, known at its entry: the size its
/// successful return will record (as [`outcome`] computes it) and the block
/// it may free (realloc's old pointer, 0 for none). `None` for the mapping
/// calls and the frees, whose return (if any) must always be seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub size: u64,
    pub old: u64,
}

/// The [`Request`] of a call of `kind` with saved arguments `args`.
pub fn requested(kind: AllocKind, args: [u64; 3]) -> Option<Request> {
    let [a0, a1, a2] = args;
    let (size, old) = match kind {
        AllocKind::Malloc
        | AllocKind::AlignedAlloc
        | AllocKind::Memalign
        | AllocKind::Valloc
        | AllocKind::New
        | AllocKind::NewArray
        | AllocKind::Mallocx => (a0, 0),
        AllocKind::Pvalloc => (a0.wrapping_add(4095) & !4095u64, 0),
        AllocKind::Calloc => (a0.wrapping_mul(a1), 0),
        AllocKind::Realloc | AllocKind::Rallocx => (a1, a0),
        AllocKind::Reallocarray => (a1.wrapping_mul(a2), a0),
        AllocKind::PosixMemalign => (a1, 0),
        AllocKind::Mmap | AllocKind::Mremap | AllocKind::Free | AllocKind::Munmap => return None,
    };
    Some(Request { size, old })
}

/// Whether a uprobe-session entry of `kind` may skip the return of an
/// unsampled outermost call (counting it at entry only). Only calls that
/// never enter another probed heap entry point on the way: skipped, such a
/// call leaves nothing pending, so the inner call would be counted (and
/// drawn for a sample) a second time. glibc's `realloc(NULL, n)` tail-calls
/// `malloc`, `realloc(p, 0)` calls `free`, the memalign family may call
/// `malloc`; `realloc(p, n)` of an untracked block grows or moves it with
/// the allocator's internal functions.
pub fn may_skip_return(kind: AllocKind, req: Request) -> bool {
    match kind {
        AllocKind::Malloc
        | AllocKind::Calloc
        | AllocKind::New
        | AllocKind::NewArray
        | AllocKind::Mallocx => true,
        AllocKind::Realloc | AllocKind::Rallocx => req.old != 0 && req.size != 0,
        _ => false,
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

/// Slots of the entry table (`ENTRY_IPS` in profiler-ebpf).
pub const ENTRY_IP_SLOTS: u32 = 256;

/// The `ENTRY_IPS` slot of a probe at runtime address `ip` (Fibonacci
/// hashing: the few dozen probes of a process rarely share a slot, and one
/// that does is left out and read the slow way).
#[inline(always)]
pub const fn entry_ip_slot(ip: u64) -> u32 {
    (ip.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u32 & (ENTRY_IP_SLOTS - 1)
}

/// One slot of `ENTRY_IPS`: a probe's runtime address in the profiled
/// processes (0: empty) and the attach cookie of its link. A program that
/// finds the address it was hit at here knows, without a helper call, that
/// it runs at an entry (a return address never equals a probe's) and what
/// its cookie is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EntryIp {
    pub ip: u64,
    pub cookie: u64,
}

#[cfg(test)]
mod tests;
