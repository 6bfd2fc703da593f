//! Age of outstanding allocations: a histogram per call site and an
//! "older than" filter (as bcc memleak's `-o`). Fed from the kernel's live
//! map, whose timestamps are `bpf_ktime_get_ns` (CLOCK_MONOTONIC).

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

/// One outstanding allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutstandingAlloc {
    pub site: SiteId,
    /// When it was allocated, in the clock of `now_ns` (monotonic ns).
    pub ts_ns: u64,
    pub size: u64,
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
    fn add(&mut self, bucket: usize, size: u64) {
        if let (Some(c), Some(b)) = (self.counts.get_mut(bucket), self.bytes.get_mut(bucket)) {
            *c += 1;
            *b = b.saturating_add(size);
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
            h.total.add(b, a.size);
            h.per_site.entry(a.site).or_default().add(b, a.size);
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
/// live numbers of a profile restricted by `--older-than`.
pub fn older_than_by_site(
    allocs: &[OutstandingAlloc],
    now_ns: u64,
    min_age: Duration,
) -> BTreeMap<SiteId, (u64, u64)> {
    let mut out: BTreeMap<SiteId, (u64, u64)> = BTreeMap::new();
    for a in older_than(allocs, now_ns, min_age) {
        let e = out.entry(a.site).or_default();
        e.0 += 1;
        e.1 = e.1.saturating_add(a.size);
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
            ts_ns,
            size,
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
}
