//! One shared allocation per distinct frame string and module identity.
//!
//! Every call site keeps its own frames, and the same function, module and
//! source file recur in thousands of them: copied per frame, a CPython
//! start-up's sites took 11 MB of heapscope's memory, and a recording of
//! deep stacks one allocation per name read. An [`Interner`] hands out one
//! `Arc` per distinct value, so a repeated name costs a reference count.

use std::collections::HashSet;
use std::sync::Arc;

use crate::profile::ModuleId;

/// Bytes the allocator takes for a block of `len` bytes (16-byte granules,
/// 8 bytes of header, 32 at least), as glibc does on 64-bit.
pub fn heap_bytes(len: usize) -> u64 {
    if len == 0 {
        0
    } else {
        ((len as u64 + 8).div_ceil(16) * 16).max(32)
    }
}

/// Reference counts in front of an `Arc`'s value.
const ARC_HEADER: usize = 16;

/// Distinct strings and module identities, each allocated once. Not bounded
/// by itself: it holds what its owner keeps anyway (the names of the frames
/// symbolized or read), and [`Interner::bytes`] says how much.
#[derive(Debug, Default)]
pub struct Interner {
    strs: HashSet<Arc<str>>,
    modules: HashSet<Arc<ModuleId>>,
    /// Heap bytes of the values held (the tables are counted apart).
    value_bytes: u64,
}

impl Interner {
    /// A new, empty interner.
    pub fn new() -> Interner {
        Interner::default()
    }

    /// The shared copy of `s` (allocated on first use).
    pub fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.strs.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.value_bytes += heap_bytes(ARC_HEADER + s.len());
        self.strs.insert(Arc::clone(&a));
        a
    }

    /// The shared copy of `m` (allocated on first use).
    pub fn module(&mut self, m: ModuleId) -> Arc<ModuleId> {
        if let Some(a) = self.modules.get(&m) {
            return Arc::clone(a);
        }
        self.value_bytes += heap_bytes(ARC_HEADER + std::mem::size_of::<ModuleId>())
            + heap_bytes(m.path.capacity())
            + heap_bytes(m.build_id.capacity());
        let a = Arc::new(m);
        self.modules.insert(Arc::clone(&a));
        a
    }

    /// Distinct strings held.
    pub fn len(&self) -> usize {
        self.strs.len()
    }

    /// True when nothing was interned yet.
    pub fn is_empty(&self) -> bool {
        self.strs.is_empty() && self.modules.is_empty()
    }

    /// Heap bytes held: every value once, plus the two hash tables (a
    /// pointer and a control byte per bucket, ~8/7 buckets per slot).
    pub fn bytes(&self) -> u64 {
        fn table<T>(capacity: usize) -> u64 {
            if capacity == 0 {
                return 0;
            }
            let buckets = (capacity * 8 / 7).next_power_of_two();
            heap_bytes(buckets * (std::mem::size_of::<T>() + 1))
        }
        self.value_bytes
            + table::<Arc<str>>(self.strs.capacity())
            + table::<Arc<ModuleId>>(self.modules.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_allocation() {
        let mut i = Interner::new();
        let a = i.str("PyEval_EvalFrameDefault");
        let before = i.bytes();
        let owned = String::from("PyEval_EvalFrameDefault");
        let b = i.str(&owned);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.bytes(), before, "a repeated string costs nothing");
        let c = i.str("main");
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(i.len(), 2);
        assert!(i.bytes() > before);
    }

    #[test]
    fn equal_modules_share_one_allocation() {
        let mut i = Interner::new();
        let id = |p: &str| ModuleId {
            path: p.into(),
            build_id: vec![1, 2],
        };
        let a = i.module(id("/usr/bin/python3.11"));
        let before = i.bytes();
        let b = i.module(id("/usr/bin/python3.11"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.bytes(), before);
        assert!(!Arc::ptr_eq(&a, &i.module(id("/lib/libc.so.6"))));
    }

    #[test]
    fn heap_sizes_round_as_the_allocator_does() {
        assert_eq!(heap_bytes(0), 0);
        assert_eq!(heap_bytes(1), 32);
        assert_eq!(heap_bytes(24), 32);
        assert_eq!(heap_bytes(25), 48);
        assert_eq!(heap_bytes(88), 96);
    }
}
