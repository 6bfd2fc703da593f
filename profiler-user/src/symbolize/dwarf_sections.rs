//! Where a module's debug sections live while it is symbolized: decompressed
//! into an unlinked temporary file on disk and mapped read-only, so they
//! cost heapscope page cache (shared, reclaimable) rather than resident
//! memory of its own; the pages a batch of lookups touched are dropped from
//! the mapping after it ([`Sections::release`]). Debian's python3.11 debug
//! file holds ~27 MB of sections a lookup may read, libc's ~8.6 MB: kept
//! on the heap, they alone went over heapscope's memory bound.
//!
//! Sections are decompressed as streams (zlib, zstd, `.zdebug`) from the
//! file into the temporary file, never whole in memory. Without a usable
//! temporary directory on a disk (none, or `tmpfs`, where the file would be
//! memory all the same), they are read into the heap as before.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use object::{CompressionFormat, Object, ObjectSection};

/// `statfs` magic numbers of file systems whose files are memory.
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The sections' storage.
#[derive(Debug)]
enum Backing {
    Heap(Vec<u8>),
    Mapped(Mapping),
}

/// A read-only shared mapping of the whole temporary file.
#[derive(Debug)]
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    /// Keeps the file (and so the mapping's pages) alive.
    _file: OwnedFd,
}

// SAFETY: the mapping is read-only and never remapped or written while it
// exists; sharing read access across threads is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above: only shared reads.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing borrows
        // the bytes any more (every `SectionBytes` holds the `Arc` to us).
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Heap(v) => v,
            // SAFETY: a valid read-only mapping of `len` bytes, alive as
            // long as `self`.
            Backing::Mapped(m) => unsafe { std::slice::from_raw_parts(m.ptr as *const u8, m.len) },
        }
    }
}

/// One section's bytes, shared by the readers into it.
#[derive(Clone, Debug)]
pub(super) struct SectionBytes {
    backing: Arc<Backing>,
    start: usize,
    len: usize,
}

impl std::ops::Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.backing.bytes()[self.start..self.start + self.len]
    }
}

// SAFETY: the bytes are a heap buffer never mutated or reallocated once
// shared, or a mapping never moved while the `Arc` lives: neither moving a
// `SectionBytes` nor cloning it moves them.
unsafe impl gimli::StableDeref for SectionBytes {}
// SAFETY: clones share the same backing (see above), so they deref to the
// same address.
unsafe impl gimli::CloneStableDeref for SectionBytes {}

pub(super) type Reader = gimli::EndianReader<gimli::RunTimeEndian, SectionBytes>;

/// The sections of one file, for [`gimli::Dwarf::load`].
pub(super) struct Sections {
    backing: Arc<Backing>,
    /// (section, start, length) in `backing`.
    spans: Vec<(gimli::SectionId, usize, usize)>,
    endian: gimli::RunTimeEndian,
}

/// True for the sections a lookup reads.
fn needed(id: gimli::SectionId) -> bool {
    use gimli::SectionId as S;
    matches!(
        id,
        S::DebugAbbrev
            | S::DebugAddr
            | S::DebugAranges
            | S::DebugInfo
            | S::DebugLine
            | S::DebugLineStr
            | S::DebugStr
            | S::DebugStrOffsets
            | S::DebugRanges
            | S::DebugRngLists
    )
}

/// Every section id a lookup reads (what [`gimli::Dwarf::load`] asks for
/// and [`needed`] accepts).
const IDS: [gimli::SectionId; 10] = [
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugAddr,
    gimli::SectionId::DebugAranges,
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugLine,
    gimli::SectionId::DebugLineStr,
    gimli::SectionId::DebugStr,
    gimli::SectionId::DebugStrOffsets,
    gimli::SectionId::DebugRanges,
    gimli::SectionId::DebugRngLists,
];

/// An unlinked temporary file on a disk-backed file system.
fn temp_file() -> Option<File> {
    let dir = std::env::temp_dir();
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid C string; the returned descriptor is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    // SAFETY: an all-zero statfs is a valid value for fstatfs to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and out-pointer.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    let kind = st.f_type as i64;
    (kind != TMPFS_MAGIC && kind != RAMFS_MAGIC).then_some(file)
}

/// Streams the (decompressed) bytes of `section` of the file at `path` into `out`.
fn copy_section<'data>(
    path: &Path,
    section: &impl ObjectSection<'data>,
    out: &mut impl Write,
) -> std::io::Result<u64> {
    let range = section
        .compressed_file_range()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(range.offset))?;
    let mut src = BufReader::new(file.take(range.compressed_size));
    match range.format {
        CompressionFormat::None => std::io::copy(&mut src, out),
        CompressionFormat::Zlib => std::io::copy(&mut flate2::bufread::ZlibDecoder::new(src), out),
        CompressionFormat::Zstandard => {
            let mut n = 0;
            // Frames back to back until the input ends.
            while !std::io::BufRead::fill_buf(&mut src)?.is_empty() {
                let mut decoder = ruzstd::StreamingDecoder::new(&mut src)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                n += std::io::copy(&mut decoder, out)?;
            }
            Ok(n)
        }
        _ => Err(std::io::Error::other("unsupported compression")),
    }
}

impl Sections {
    /// Reads the sections a lookup needs of `obj` (the file at `path`).
    pub(super) fn read<'data, O: Object<'data>>(
        obj: &O,
        path: &Path,
    ) -> Result<Sections, (&'static str, std::io::Error)> {
        Sections::read_into(obj, path, temp_file())
    }

    /// [`Sections::read`] into `temp` (mapped), or into the heap without one.
    fn read_into<'data, O: Object<'data>>(
        obj: &O,
        path: &Path,
        temp: Option<File>,
    ) -> Result<Sections, (&'static str, std::io::Error)> {
        let endian = if obj.is_little_endian() {
            gimli::RunTimeEndian::Little
        } else {
            gimli::RunTimeEndian::Big
        };
        let present: Vec<_> = IDS
            .iter()
            .filter(|&&id| needed(id))
            .filter_map(|&id| {
                let s = obj.section_by_name(id.name())?;
                // NOBITS sections (stripped into a debug file) have no bytes.
                s.file_range().is_some().then_some((id, s))
            })
            .collect();
        let mut spans = Vec::new();
        if let Some(file) = temp {
            let mut out = BufWriter::with_capacity(64 << 10, &file);
            let mut at = 0usize;
            for (id, s) in &present {
                let n = copy_section(path, s, &mut out).map_err(|e| (id.name(), e))? as usize;
                spans.push((*id, at, n));
                at += n;
            }
            out.flush().map_err(|e| ("(temporary file)", e))?;
            drop(out);
            let backing = if at == 0 {
                Backing::Heap(Vec::new())
            } else {
                // SAFETY: mapping `at` bytes of a file we just wrote that
                // many bytes to, read-only and shared; checked below.
                let ptr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        at,
                        libc::PROT_READ,
                        libc::MAP_SHARED,
                        file.as_raw_fd(),
                        0,
                    )
                };
                if ptr == libc::MAP_FAILED {
                    return Err(("(mapping)", std::io::Error::last_os_error()));
                }
                Backing::Mapped(Mapping {
                    ptr,
                    len: at,
                    _file: OwnedFd::from(file),
                })
            };
            return Ok(Sections {
                backing: Arc::new(backing),
                spans,
                endian,
            });
        }
        let mut heap = Vec::new();
        for (id, s) in &present {
            let start = heap.len();
            copy_section(path, s, &mut heap).map_err(|e| (id.name(), e))?;
            spans.push((*id, start, heap.len() - start));
        }
        heap.shrink_to_fit();
        Ok(Sections {
            backing: Arc::new(Backing::Heap(heap)),
            spans,
            endian,
        })
    }

    /// The reader of section `id` (empty when absent or not needed).
    pub(super) fn reader(&self, id: gimli::SectionId) -> Reader {
        let (start, len) = self
            .spans
            .iter()
            .find(|s| s.0 == id)
            .map_or((0, 0), |s| (s.1, s.2));
        gimli::EndianReader::new(
            SectionBytes {
                backing: Arc::clone(&self.backing),
                start,
                len,
            },
            self.endian,
        )
    }

    /// A handle that drops the mapped pages from the process's memory.
    pub(super) fn pages(&self) -> Pages {
        Pages(Arc::clone(&self.backing))
    }
}

/// The mapped pages of one file's sections.
pub(super) struct Pages(Arc<Backing>);

impl Pages {
    /// Drops the pages lookups touched from this process's resident set;
    /// they stay in the page cache and come back on the next read.
    pub(super) fn release(&self) {
        if let Backing::Mapped(m) = &*self.0 {
            // SAFETY: advising on exactly our own read-only shared mapping:
            // its contents are the file's, read again on the next access.
            unsafe { libc::madvise(m.ptr, m.len, libc::MADV_DONTNEED) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary's own (uncompressed) DWARF, read both ways.
    #[test]
    fn mapped_and_heap_sections_hold_the_same_bytes() {
        let path = std::env::current_exe().unwrap();
        let data = std::fs::read(&path).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let info = obj.section_by_name(".debug_info").unwrap();
        let expected = info.uncompressed_data().unwrap();
        let mapped = Sections::read_into(&obj, &path, temp_file()).unwrap();
        assert!(
            matches!(*mapped.backing, Backing::Mapped(_)),
            "/tmp is a disk here"
        );
        let heap = Sections::read_into(&obj, &path, None).unwrap();
        assert!(matches!(*heap.backing, Backing::Heap(_)));
        for s in [&mapped, &heap] {
            let r = s.reader(gimli::SectionId::DebugInfo);
            assert_eq!(r.bytes(), &*expected);
            assert!(
                s.reader(gimli::SectionId::DebugLocLists).is_empty(),
                "not needed"
            );
        }
        mapped.pages().release();
        assert_eq!(
            mapped.reader(gimli::SectionId::DebugInfo).bytes(),
            &*expected
        );
    }
}
