//! Address newtypes shared by the normalizer (`process`) and the symbolizer
//! (`symbolize`): a leaf module, so neither of those imports the other.
//! Distinct types keep a runtime address from being handed to code that
//! expects a file offset (or the reverse).

use std::fmt;

/// An address in the target process's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RuntimeAddr(pub u64);

/// An offset from the start of a file on disk (what uprobes attach by, and
/// what the symbolizer takes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FileOffset(pub u64);

/// An address in an ELF file's own address space (`p_vaddr`, `st_value`,
/// DWARF addresses): a file offset translated through the PT_LOAD segment
/// that contains it. Equal to the runtime address only for a non-PIE
/// executable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ElfVaddr(pub u64);

impl fmt::Display for RuntimeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Display for FileOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
