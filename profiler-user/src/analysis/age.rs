//! Age of outstanding allocations: a histogram per call site and an
//! "older than" filter (as bcc memleak's `-o`). Fed from the kernel's live
//! map, whose timestamps are `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
//!
//! Only sampled allocations have a call site; each one counts with the
//! weight it has in the per-site numbers (bytes and allocations it stands
//! for), so the table sums to the same estimates as the call sites.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::timeline::SiteId;

/// Upper bounds (exclusive) of the age buckets; the last bucket is open.
pub const BUCKET_LIMITS: [Duration; 5] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];

/// Labels of the six buckets, youngest first.
pub const BUCKET_LABELS: [&str; 6] = ["<1s", "<10s", "<1m", "<10m", "<1h", ">=1h"];

/// Fixed-point scale of [`OutstandingAlloc::est_count`].
pub const COUNT_SCALE: u64 = profiler_common::COUNT_SCALE;

/// One outstanding (sampled) allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutstandingAlloc {
    pub site: SiteId,
    /// Its address in the target.
    pub ptr: u64,
    /// When it was allocated, in the clock of `now_ns` (monotonic ns).
    pub ts_ns: u64,
    pub size: u64,
    /// Bytes it stands for in the per-site estimates (`size` when exact).
    pub est_bytes: u64,
    /// Allocations it stands for, in units of 1/[`COUNT_SCALE`].
    pub est_count: u64,
}

impl OutstandingAlloc {
    /// Age at `now_ns`; 0 for a timestamp in the future (clock read races).
    pub fn age(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.ts_ns))
    }
}

/// Blocks and bytes per age bucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgeBuckets {
    pub counts: [u64; 6],
    pub bytes: [u64; 6],
}

impl AgeBuckets {
    /// Adds a weight; counts stay in 1/COUNT_SCALE units until [`Self::round`].
    fn add(&mut self, bucket: usize, a: &OutstandingAlloc) {
        if let (Some(c), Some(b)) = (self.counts.get_mut(bucket), self.bytes.get_mut(bucket)) {
            *c = c.saturating_add(a.est_count);
            *b = b.saturating_add(a.est_bytes);
        }
    }

    /// Scaled counts → whole allocations.
    fn round(&mut self) {
        for c in &mut self.counts {
            *c = c.saturating_add(COUNT_SCALE / 2) / COUNT_SCALE;
        }
    }
}

/// Age histogram of outstanding allocations, overall and per call site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgeHistogram {
    pub total: AgeBuckets,
    pub per_site: BTreeMap<SiteId, AgeBuckets>,
}

/// The bucket index (0..6) of an age.
pub fn bucket_of(age: Duration) -> usize {
    BUCKET_LIMITS
        .iter()
        .position(|limit| age < *limit)
        .unwrap_or(BUCKET_LIMITS.len())
}

impl AgeHistogram {
    /// Buckets `allocs` by their age at `now_ns`.
    pub fn build<'a>(now_ns: u64, allocs: impl IntoIterator<Item = &'a OutstandingAlloc>) -> Self {
        let mut h = AgeHistogram::default();
        for a in allocs {
            let b = bucket_of(a.age(now_ns));
            h.total.add(b, a);
            h.per_site.entry(a.site).or_default().add(b, a);
        }
        h.total.round();
        for b in h.per_site.values_mut() {
            b.round();
        }
        h
    }
}

/// The allocations at least `min_age` old at `now_ns` (memleak `-o`).
pub fn older_than(
    allocs: &[OutstandingAlloc],
    now_ns: u64,
    min_age: Duration,
) -> impl Iterator<Item = &OutstandingAlloc> {
    allocs.iter().filter(move |a| a.age(now_ns) >= min_age)
}

/// Blocks and bytes per site of the allocations at least `min_age` old: the
/// live numbers of a profile restricted by `--older-than` (weighted like the
/// per-site numbers).
pub fn older_than_by_site(
    allocs: &[OutstandingAlloc],
    now_ns: u64,
    min_age: Duration,
) -> BTreeMap<SiteId, (u64, u64)> {
    let mut out: BTreeMap<SiteId, (u64, u64)> = BTreeMap::new();
    for a in older_than(allocs, now_ns, min_age) {
        let e = out.entry(a.site).or_default();
        e.0 = e.0.saturating_add(a.est_count);
        e.1 = e.1.saturating_add(a.est_bytes);
    }
    for e in out.values_mut() {
        e.0 = e.0.saturating_add(COUNT_SCALE / 2) / COUNT_SCALE;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn alloc(site: u32, ts_ns: u64, size: u64) -> OutstandingAlloc {
        OutstandingAlloc {
            site: SiteId(site),
            ptr: 0,
            ts_ns,
            size,
            est_bytes: size,
            est_count: COUNT_SCALE,
        }
    }

    #[test]
    fn buckets_by_age() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_millis(999)), 0);
        assert_eq!(bucket_of(Duration::from_secs(1)), 1);
        assert_eq!(bucket_of(Duration::from_secs(59)), 2);
        assert_eq!(bucket_of(Duration::from_secs(3599)), 4);
        assert_eq!(bucket_of(Duration::from_secs(3600)), 5);
    }

    #[test]
    fn histogram_per_site_and_filter() {
        let now = 10_000 * S;
        let allocs = [
            alloc(0, now - S / 2, 10),    // <1s
            alloc(0, now - 5 * S, 20),    // <10s
            alloc(1, now - 7200 * S, 30), // >=1h
            alloc(1, now - 120 * S, 40),  // <10m
            alloc(1, now + S, 50),        // future: age 0
        ];
        let h = AgeHistogram::build(now, &allocs);
        assert_eq!(h.total.counts, [2, 1, 0, 1, 0, 1]);
        assert_eq!(h.total.bytes, [60, 20, 0, 40, 0, 30]);
        assert_eq!(h.per_site[&SiteId(0)].counts, [1, 1, 0, 0, 0, 0]);
        assert_eq!(h.per_site[&SiteId(1)].bytes, [50, 0, 0, 40, 0, 30]);

        let old: Vec<u64> = older_than(&allocs, now, Duration::from_secs(60))
            .map(|a| a.size)
            .collect();
        assert_eq!(old, vec![30, 40]);
        let by_site = older_than_by_site(&allocs, now, Duration::from_secs(5));
        assert_eq!(by_site.get(&SiteId(0)), Some(&(1, 20)));
        assert_eq!(by_site.get(&SiteId(1)), Some(&(2, 70)));
    }

    #[test]
    fn sampled_allocations_weigh_what_they_stand_for() {
        let now = 100 * S;
        // A 1 KiB sample standing for 512.5 KiB in 512.5 blocks, and a 1 MiB one for itself.
        let small = OutstandingAlloc {
            est_bytes: 524_800,
            est_count: 512 * COUNT_SCALE + COUNT_SCALE / 2,
            ..alloc(0, now - 2 * S, 1024)
        };
        let big = alloc(1, now - 2 * S, 1 << 20);
        let h = AgeHistogram::build(now, &[small, big]);
        assert_eq!(h.total.bytes[1], 524_800 + (1 << 20));
        assert_eq!(h.total.counts[1], 514, "512.5 + 1 rounds to 514");
        assert_eq!(h.per_site[&SiteId(0)].counts[1], 513);
        let by_site = older_than_by_site(&[small, big], now, Duration::from_secs(1));
        assert_eq!(by_site.get(&SiteId(0)), Some(&(513, 524_800)));
    }
}
