//! Choosing where in a function an entry probe goes.
//!
//! A uprobe whose first instruction the kernel can emulate (push, nop, jmp)
//! costs ~0.6 µs per hit here; one it must single-step (test, cmp, mov) costs
//! ~10 µs. glibc's `free` starts with `test %rdi,%rdi; je <return>`: the
//! skipped path is `free(NULL)`, a no-op, so probing just after the branch
//! keeps every path that frees something, with `%rdi` intact, at a tenth of
//! the cost. Return probes must stay at +0, where `[rsp]` is the return address.

use profiler_common::AllocKind;

const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];
const TEST_RDI_RDI: [u8; 3] = [0x48, 0x85, 0xff];

/// Byte offset from the function's start at which to place an entry-only
/// probe for `kind`, given the function's first bytes. 0 unless a known
/// no-op guard can be skipped safely.
pub fn entry_skip(kind: AllocKind, bytes: &[u8]) -> u64 {
    if kind != AllocKind::Free {
        return 0;
    }
    let mut at = 0usize;
    if bytes.starts_with(&ENDBR64) {
        at = ENDBR64.len();
    }
    let Some(rest) = bytes.get(at..) else {
        return 0;
    };
    if !rest.starts_with(&TEST_RDI_RDI) {
        return 0;
    }
    let after_test = &rest[TEST_RDI_RDI.len()..];
    let branch_len = match after_test {
        [0x74, _, ..] => 2,                // je rel8
        [0x0f, 0x84, _, _, _, _, ..] => 6, // je rel32
        _ => return 0,
    };
    (at + TEST_RDI_RDI.len() + branch_len) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_236_free_skips_null_guard() {
        // __libc_free from Debian's glibc 2.36.
        let bytes = [
            0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55, 0x48,
        ];
        assert_eq!(entry_skip(AllocKind::Free, &bytes), 9);
    }

    #[test]
    fn short_branch_and_endbr() {
        let bytes = [0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x10, 0x55];
        assert_eq!(entry_skip(AllocKind::Free, &bytes), 9);
    }

    #[test]
    fn unknown_prologue_stays_at_entry() {
        let push = [0x41, 0x54, 0x55, 0x53];
        assert_eq!(entry_skip(AllocKind::Free, &push), 0);
        // A test not followed by a branch on zero: the guard is not a no-op path.
        let bytes = [0x48, 0x85, 0xff, 0x75, 0x10];
        assert_eq!(entry_skip(AllocKind::Free, &bytes), 0);
        assert_eq!(entry_skip(AllocKind::Free, &[0x48, 0x85]), 0);
    }

    #[test]
    fn only_free_is_moved() {
        let bytes = [0x48, 0x85, 0xff, 0x74, 0x10, 0x55];
        assert_eq!(entry_skip(AllocKind::Malloc, &bytes), 0);
        assert_eq!(entry_skip(AllocKind::Munmap, &bytes), 0);
    }
}
