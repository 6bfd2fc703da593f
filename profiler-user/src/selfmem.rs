//! heapscope's own memory against its bound: resident set size at most
//! [`FIXED_BYTES`] plus [`PER_BLOCK_BYTES`] per allocation it tracks (the
//! ring buffer's mapped pages, pending records and every cache included:
//! the whole RSS counts). Read from `/proc/self/status` at every tick
//! (`VmRSS`) and at the end (`VmHWM`, the kernel's high-water mark, which
//! also catches peaks between ticks).

use std::io::Write;

/// What heapscope may use whatever it tracks: 50 MB (decimal).
pub const FIXED_BYTES: u64 = 50_000_000;

/// What each tracked allocation may add.
pub const PER_BLOCK_BYTES: u64 = 64;

/// The bound with `tracked` allocations tracked.
pub fn bound(tracked: u64) -> u64 {
    FIXED_BYTES.saturating_add(tracked.saturating_mul(PER_BLOCK_BYTES))
}

/// One reading: RSS with `tracked` allocations tracked, at `t_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub t_ms: u64,
    pub rss: u64,
    pub tracked: u64,
}

impl Reading {
    /// Bytes under the bound (negative: over it).
    pub fn headroom(&self) -> i64 {
        bound(self.tracked) as i64 - self.rss as i64
    }
}

/// The session's own memory: the tick closest to the bound, the peak.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SelfMemory {
    /// Ticks read.
    pub ticks: u64,
    /// The tick with the least headroom.
    pub worst: Option<Reading>,
    /// Most allocations tracked at a tick.
    pub peak_tracked: u64,
    /// `VmHWM` at the end: the highest RSS at any moment.
    pub peak_rss: Option<u64>,
}

impl SelfMemory {
    /// Notes one tick's reading.
    pub fn observe(&mut self, r: Reading) {
        self.ticks += 1;
        self.peak_tracked = self.peak_tracked.max(r.tracked);
        if self.worst.is_none_or(|w| r.headroom() < w.headroom()) {
            self.worst = Some(r);
        }
    }

    /// Reads this process's RSS now and notes it with `tracked`
    /// allocations tracked now; `peak_tracked`: the most since the last
    /// tick (the high-water mark is set against the most ever tracked).
    pub fn observe_self(&mut self, t_ms: u64, tracked: u64, peak_tracked: u64) {
        self.peak_tracked = self.peak_tracked.max(peak_tracked);
        if let Some((rss, _)) = read_self() {
            self.observe(Reading { t_ms, rss, tracked });
        }
    }

    /// Reads the high-water mark (at the end of the session).
    pub fn finish(&mut self) {
        self.peak_rss = read_self().map(|(_, hwm)| hwm);
    }

    /// True when no reading was over the bound: every tick, and the peak
    /// against the bound at the most allocations tracked.
    pub fn within(&self) -> bool {
        self.worst.is_none_or(|w| w.headroom() >= 0)
            && self.peak_rss.is_none_or(|p| p <= bound(self.peak_tracked))
    }

    /// The report's section.
    pub fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "heapscope's own memory (bound: RSS <= {} + {} B per tracked allocation, ring buffer \
             and queues included):",
            mb(FIXED_BYTES),
            PER_BLOCK_BYTES
        )?;
        if let Some(peak) = self.peak_rss {
            let b = bound(self.peak_tracked);
            writeln!(
                out,
                "  peak RSS: {} (high-water mark), bound {} at the most allocations tracked \
                 ({}): {}",
                mb(peak),
                mb(b),
                self.peak_tracked,
                verdict(b as i64 - peak as i64)
            )?;
        }
        if let Some(w) = self.worst {
            writeln!(
                out,
                "  closest tick: {} at {:.1}s with {} allocations tracked, bound {}: {}",
                mb(w.rss),
                w.t_ms as f64 / 1000.0,
                w.tracked,
                mb(bound(w.tracked)),
                verdict(w.headroom())
            )?;
        }
        Ok(())
    }
}

fn verdict(headroom: i64) -> String {
    if headroom >= 0 {
        format!("within ({} to spare)", mb(headroom as u64))
    } else {
        format!("OVER by {}", mb(headroom.unsigned_abs()))
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Arenas glibc may give heapscope's threads (see [`limit_arenas`]).
const MAX_ARENAS: libc::c_int = 2;

/// Caps glibc's arenas for this process at [`MAX_ARENAS`] (`M_ARENA_MAX`;
/// the default is 8 per CPU). heapscope's threads (capture, ring pump,
/// symbolizer, server) each got an arena of their own, and memory one
/// thread freed stayed resident in its arena instead of serving the
/// others: three arenas held 15 MB under `--exact` on python3.11. Also fixes
/// the mmap threshold at [`MMAP_THRESHOLD`]: glibc raises it (up to 32 MiB)
/// each time a large mmapped block is freed, after which the large
/// temporaries of the first ticks (event batches, DWARF units) came from the
/// arenas and stayed resident once freed: python3.11 `run --exact` peaked at
/// 58–61 MB, 46–47 MB with it fixed. Called first thing in `main`, before
/// any thread starts.
pub fn limit_arenas() {
    // SAFETY: mallopt only sets a glibc tunable; called before threads exist.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, MAX_ARENAS) };
    // SAFETY: as above.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
}

/// Blocks from this size up are mmapped and unmapped on free (glibc's
/// default before it adjusts the threshold).
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Returns the free memory of this process's glibc arenas to the system
/// (`malloc_trim(0)`: free pages inside every arena, not only at the top of
/// the main heap). A no-op with another allocator.
pub fn trim() {
    // SAFETY: malloc_trim only walks and trims glibc's own arenas.
    unsafe { libc::malloc_trim(0) };
}

/// (`VmRSS`, `VmHWM`) of this process, in bytes.
pub fn read_self() -> Option<(u64, u64)> {
    parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// (`VmRSS`, `VmHWM`) from the text of `/proc/PID/status`.
fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_is_fixed_plus_per_block() {
        assert_eq!(bound(0), 50_000_000);
        assert_eq!(bound(1_000), 50_064_000);
        assert_eq!(bound(u64::MAX), u64::MAX);
    }

    #[test]
    fn worst_tick_is_the_least_headroom_not_the_most_rss() {
        let mut m = SelfMemory::default();
        m.observe(Reading {
            t_ms: 1000,
            rss: 49_000_000,
            tracked: 100_000, // bound 56.4 MB: 7.4 MB to spare
        });
        m.observe(Reading {
            t_ms: 2000,
            rss: 45_000_000,
            tracked: 0, // 5 MB to spare
        });
        assert_eq!(m.worst.map(|w| w.t_ms), Some(2000));
        assert_eq!(m.peak_tracked, 100_000);
        assert!(m.within());
        m.peak_rss = Some(57_000_000);
        assert!(!m.within(), "the peak is over the bound at the most blocks");
    }

    #[test]
    fn report_says_within_or_over() {
        let mut m = SelfMemory::default();
        m.observe(Reading {
            t_ms: 1500,
            rss: 51_000_000,
            tracked: 1_000,
        });
        m.peak_rss = Some(52_000_000);
        let mut out = Vec::new();
        m.write(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("peak RSS: 52.0 MB (high-water mark), bound 50.1 MB"));
        assert!(text.contains("OVER by 1.9 MB"), "{text}");
        assert!(text.contains("closest tick: 51.0 MB at 1.5s with 1000 allocations tracked"));
    }

    #[test]
    fn status_fields_in_bytes() {
        let text = "Name:\theapscope\nVmHWM:\t   48076 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_status(text), Some((40_000 * 1024, 48_076 * 1024)));
        assert_eq!(parse_status("Name: x\n"), None);
        assert!(read_self().is_some_and(|(rss, hwm)| rss > 0 && hwm >= rss));
    }
}
