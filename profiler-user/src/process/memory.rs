//! The target's memory as the kernel sees it: the RSS split of
//! /proc/PID/status and the allocator's heap mappings in /proc/PID/maps.
//!
//! Pure parsers over text plus [`sample`], which reads /proc (no root needed
//! for a process of the same user).

use std::io;

use super::maps::Region;
use crate::timeline::MemSample;

use super::arenas::ARENA_HEAP_SIZE;

/// Errors of the /proc parsers.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("/proc/{pid}/status has no {field} line")]
    MissingField { pid: String, field: &'static str },
    #[error("/proc/{pid}/status: cannot parse {field} value {value:?}")]
    BadValue {
        pid: String,
        field: &'static str,
        value: String,
    },
}

impl From<MemoryError> for io::Error {
    fn from(e: MemoryError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// The resident set split by kind, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RssSplit {
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
}

/// Heap mappings found in a maps file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapMappings {
    /// Size of `[heap]` (the main arena's brk heap).
    pub brk_heap: u64,
    /// Accessible (`rw`) bytes of glibc's non-main arena heaps: what the
    /// arenas hold; their `---p` remainder is reserved address space only.
    pub arena_bytes: u64,
    /// Number of arena heaps (64 MiB reservations).
    pub arena_heaps: u64,
    /// Reserved, inaccessible (`---p`) bytes of those heaps.
    pub arena_reserved: u64,
}

impl HeapMappings {
    /// `[heap]` plus the arenas' accessible bytes.
    pub fn total(&self) -> u64 {
        self.brk_heap.saturating_add(self.arena_bytes)
    }
}

/// The value in bytes of a `Name:   123 kB` line.
fn kb_field(text: &str, pid: &str, field: &'static str) -> Result<u64, MemoryError> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .ok_or_else(|| MemoryError::MissingField {
            pid: pid.to_string(),
            field,
        })?;
    let bad = || MemoryError::BadValue {
        pid: pid.to_string(),
        field,
        value: line.trim().to_string(),
    };
    let mut parts = line.split_whitespace();
    let kb: u64 = parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
    match parts.next() {
        Some("kB") | None => Ok(kb.saturating_mul(1024)),
        Some(_) => Err(bad()),
    }
}

/// The RSS split of a /proc/PID/status text (`RssAnon`, `RssFile`,
/// `RssShmem`, Linux 4.5+); `pid` only names the file in errors.
pub fn parse_status(text: &str, pid: &str) -> Result<RssSplit, MemoryError> {
    Ok(RssSplit {
        anon: kb_field(text, pid, "RssAnon")?,
        file: kb_field(text, pid, "RssFile")?,
        shmem: kb_field(text, pid, "RssShmem")?,
    })
}

/// Bytes a mapping spans.
fn span(r: &Region) -> u64 {
    r.end - r.start
}

/// An anonymous mapping: no file, or one named by `prctl` (`[anon:...]`).
fn anonymous(r: &Region) -> bool {
    r.inode == 0
        && r.path
            .as_deref()
            .is_none_or(|p| p.is_empty() || p.starts_with("[anon:"))
}

/// True for the permissions `perms` spells (`rw-p`).
fn perms_are(r: &Region, perms: &str) -> bool {
    r.perms.to_string() == perms
}

/// Finds `[heap]` and glibc's arena heaps in a /proc/PID/maps text.
///
/// An arena heap is a 64 MiB-aligned anonymous private range of 64 MiB:
/// an `rw-p` part (the heap grows it with mprotect) directly followed by a
/// `---p` rest up to the next 64 MiB boundary, or an `rw-p` mapping that is
/// a whole multiple of 64 MiB (fully grown heaps, which the kernel may merge).
/// A program's own 64 MiB-aligned anonymous mappings of that exact shape would
/// be counted too; that is rare and errs on the side of "allocator memory".
/// Unparsable lines are skipped (this is a measurement, not a validation).
pub fn heap_mappings(maps_text: &str) -> HeapMappings {
    let lines: Vec<Region> = maps_text
        .lines()
        .filter_map(|l| super::maps::parse_line(l).ok())
        .collect();
    let mut out = HeapMappings::default();
    let mut i = 0;
    while i < lines.len() {
        let m = &lines[i];
        i += 1;
        let path = m.path.as_deref().unwrap_or("");
        if path == "[heap]" {
            out.brk_heap = out.brk_heap.saturating_add(span(m));
            continue;
        }
        let named_arena = path.contains("malloc arena");
        if !(anonymous(m) && perms_are(m, "rw-p")) {
            continue;
        }
        if !m.start.is_multiple_of(ARENA_HEAP_SIZE) && !named_arena {
            continue;
        }
        let reserve = lines
            .get(i)
            .filter(|n| n.start == m.end && perms_are(n, "---p") && anonymous(n));
        match reserve {
            Some(r) if r.end.saturating_sub(m.start) == ARENA_HEAP_SIZE => {
                out.arena_bytes += span(m);
                out.arena_reserved += span(r);
                out.arena_heaps += 1;
                i += 1;
            }
            _ if span(m) > 0 && span(m).is_multiple_of(ARENA_HEAP_SIZE) => {
                out.arena_bytes += span(m);
                out.arena_heaps += span(m) / ARENA_HEAP_SIZE;
            }
            _ if named_arena => {
                out.arena_bytes += span(m);
                out.arena_heaps += 1;
            }
            _ => {}
        }
    }
    out
}

/// [`sample`], plus glibc's footprint split from /proc/PID/smaps when the
/// allocator is glibc (`glibc`): reading smaps walks every page table of
/// the process, so it is skipped for other allocators.
pub fn sample_with_footprint(pid: u32, glibc: bool) -> io::Result<MemSample> {
    Ok(sample_and_footprint(pid, glibc)?.0)
}

/// [`sample_with_footprint`], also handing back glibc's footprint per arena.
pub fn sample_and_footprint(
    pid: u32,
    glibc: bool,
) -> io::Result<(MemSample, Option<super::arenas::Footprint>)> {
    let mut m = sample(pid)?;
    let mut split = None;
    if glibc {
        let fp = super::arenas::read_footprint(pid)?;
        let arenas = fp
            .arenas
            .iter()
            .fold(super::arenas::Usage::default(), |mut u, a| {
                u.reserved = u.reserved.saturating_add(a.usage.reserved);
                u.resident = u.resident.saturating_add(a.usage.resident);
                u
            });
        m.main_heap_resident = fp.main_heap.resident;
        m.arenas = fp.arenas.len() as u64;
        m.arena_reserved = arenas.reserved;
        m.arena_resident = arenas.resident;
        m.mmapped_chunks = fp.mmapped_chunks;
        m.mmapped_bytes = fp.mmapped.reserved;
        m.mmapped_resident = fp.mmapped.resident;
        split = Some(fp);
    }
    Ok((m, split))
}

/// Reads /proc/PID/status and /proc/PID/maps into a [`MemSample`].
/// `allocator_mapped` is 0: only the probes see the allocator's own mmaps.
pub fn sample(pid: u32) -> io::Result<MemSample> {
    let status = std::fs::read_to_string(super::procfs::dir(pid).join("status"))?;
    let rss = parse_status(&status, &pid.to_string())?;
    let maps = std::fs::read_to_string(super::procfs::dir(pid).join("maps"))?;
    let heaps = heap_mappings(&maps);
    Ok(MemSample {
        rss_anon: rss.anon,
        rss_file: rss.file,
        rss_shmem: rss.shmem,
        heap_mappings: heaps.total(),
        arena_heaps: heaps.arena_heaps,
        ..MemSample::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tksql\nVmRSS:\t  300 kB\nRssAnon:\t     204 kB\n\
RssFile:\t      92 kB\nRssShmem:\t       4 kB\nThreads:\t3\n";

    #[test]
    fn status_rss_split() {
        let rss = parse_status(STATUS, "42").expect("parse");
        assert_eq!(
            rss,
            RssSplit {
                anon: 204 * 1024,
                file: 92 * 1024,
                shmem: 4 * 1024,
            }
        );
    }

    #[test]
    fn status_errors_name_the_field() {
        let e = parse_status("Name:\tx\nRssAnon:\t1 kB\n", "42").expect_err("missing");
        assert_eq!(e.to_string(), "/proc/42/status has no RssFile line");
        let e = parse_status("RssAnon:\tlots kB\n", "7").expect_err("bad");
        assert!(e.to_string().contains("RssAnon"), "{e}");
        let e = parse_status("RssAnon:\t1 MB\n", "7").expect_err("unit");
        assert!(e.to_string().contains("cannot parse"), "{e}");
    }

    /// Two arena heaps (one growing, one fully grown), `[heap]`, and
    /// look-alikes that are not arena heaps.
    const MAPS: &str = "\
5581d0a00000-5581d0a21000 r--p 00000000 08:01 1311 /usr/bin/app
5581d1c6e000-5581d1d8f000 rw-p 00000000 00:00 0                          [heap]
7f2c1c000000-7f2c1c321000 rw-p 00000000 00:00 0 
7f2c1c321000-7f2c20000000 ---p 00000000 00:00 0 
7f2c20000000-7f2c24000000 rw-p 00000000 00:00 0 
7f2c24000000-7f2c24001000 rw-p 00000000 00:00 0 
7f2c24001000-7f2c24800000 ---p 00000000 00:00 0 
7f2c28000000-7f2c28100000 rw-p 00000000 08:01 99 /data/file
7f2c2a000000-7f2c2a100000 rw-p 00000000 00:00 0 
7f2c2b7ff000-7f2c2b800000 ---p 00000000 00:00 0 
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
garbage line
";

    #[test]
    fn finds_brk_heap_and_arena_heaps() {
        let h = heap_mappings(MAPS);
        assert_eq!(h.brk_heap, 0x5581d1d8f000 - 0x5581d1c6e000);
        // 0x321000 rw + 64 MiB fully grown; the 0x7f2c24000000 one's reserve
        // ends at 8 MiB (a thread stack's guard-like shape), not 64 MiB.
        assert_eq!(h.arena_heaps, 2);
        assert_eq!(h.arena_bytes, 0x321000 + ARENA_HEAP_SIZE);
        assert_eq!(h.arena_reserved, 0x7f2c20000000 - 0x7f2c1c321000);
        assert_eq!(h.total(), h.brk_heap + h.arena_bytes);
    }

    #[test]
    fn named_arenas_count_without_alignment() {
        let maps = "7f0000100000-7f0000200000 rw-p 00000000 00:00 0 [anon: glibc: malloc arena]\n\
7f0000200000-7f0000300000 rw-p 00000000 00:00 0 [anon: glibc: malloc]\n";
        let h = heap_mappings(maps);
        assert_eq!((h.arena_heaps, h.arena_bytes), (1, 0x100000));
    }

    #[test]
    fn empty_and_garbage_maps_give_nothing() {
        assert_eq!(heap_mappings(""), HeapMappings::default());
        assert_eq!(
            heap_mappings("zz-yy rw-p\n\n1-0 rw-p 0 0 0\n"),
            HeapMappings::default()
        );
    }

    #[test]
    fn samples_this_process() {
        // Reading our own /proc needs no privileges.
        let m = sample(std::process::id()).expect("sample self");
        assert!(m.rss_anon > 0 && m.rss_file > 0);
        assert_eq!(m.allocator_mapped, 0);
    }
}
