//! Which numbers may be called exact: one function of the sampling rate and
//! the loss counters, so that the report, the pprof comments, the JSON API
//! and the web page never disagree.

use profiler_common::counters::{CounterId, Section};

use crate::profile::{Profile, Totals};

/// What sampling and losses leave exact in one profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exactness {
    /// Bytes per sample on average; 0 when every allocation was recorded.
    pub sample_rate: u64,
    /// Lost events that make allocated − freed wrong: allocations or frees
    /// never counted, or counted without their size.
    pub lost_for_totals: u64,
    /// Every lost event, including ones that only lose attribution (a stack
    /// that could not be read).
    pub lost: u64,
    /// Allocations counted at entry only (uprobe sessions skip unsampled
    /// returns): non-zero makes the live heap a sampled estimate.
    pub untracked: u64,
}

impl Exactness {
    /// The exactness of counters `t` recorded at `sample_rate` (0: `--exact`).
    pub fn new(sample_rate: u64, t: &Totals) -> Exactness {
        let lost = t.section_total(Section::Lost);
        // A failed stack capture still counts the bytes, under an unknown stack.
        let lost_for_totals = lost.saturating_sub(t.get(CounterId::StackFailed));
        Exactness {
            sample_rate,
            lost_for_totals,
            lost,
            untracked: t.get(CounterId::UntrackedAllocs),
        }
    }

    /// The exactness of a profile (its own rate and totals).
    pub fn of(profile: &Profile) -> Exactness {
        Exactness::new(profile.sample_rate, &profile.totals)
    }

    /// The live heap and the process totals (allocated − freed over every
    /// allocation) are exact: nothing that changes them was lost. Sampling
    /// does not matter, every call is counted.
    pub fn totals_exact(&self) -> bool {
        self.lost_for_totals == 0 && self.untracked == 0
    }

    /// The live heap is the per-site estimate: unsampled blocks were not
    /// tracked (uprobe sessions).
    pub fn live_estimated(&self) -> bool {
        self.untracked > 0
    }

    /// Every per-site number is exact: no sampling and nothing lost,
    /// attribution included.
    pub fn sites_exact(&self) -> bool {
        self.sample_rate == 0 && self.lost == 0
    }

    /// One line saying how per-site numbers were obtained (pprof comments).
    pub fn sites_note(&self) -> String {
        match (self.sample_rate, self.lost) {
            (0, 0) => "exact: every allocation".to_string(),
            (0, n) => format!("every allocation recorded, but not exact: {n} events lost"),
            (rate, 0) => format!("sampled every {rate} bytes on average; unbiased estimates"),
            (rate, n) => format!(
                "sampled every {rate} bytes on average; unbiased estimates; {n} events lost"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(f: impl FnOnce(&mut Totals)) -> Totals {
        let mut t = Totals {
            allocs: 10,
            alloc_bytes: 1000,
            frees: 4,
            free_bytes: 400,
            ..Totals::default()
        };
        f(&mut t);
        t
    }

    #[test]
    fn exact_only_without_sampling_and_losses() {
        let clean = Exactness::new(0, &totals(|_| {}));
        assert!(clean.sites_exact() && clean.totals_exact());
        assert_eq!(clean.sites_note(), "exact: every allocation");

        let sampled = Exactness::new(524_288, &totals(|_| {}));
        assert!(!sampled.sites_exact());
        assert!(sampled.totals_exact(), "sampling never touches the totals");
        assert_eq!(
            sampled.sites_note(),
            "sampled every 524288 bytes on average; unbiased estimates"
        );
    }

    #[test]
    fn every_lost_counter_makes_it_inexact() {
        let lossy = Exactness::new(
            0,
            &totals(|t| {
                t.live_map_full = 5;
                t.ringbuf_lost = 2;
            }),
        );
        assert_eq!((lossy.lost, lossy.lost_for_totals), (7, 7));
        assert!(!lossy.sites_exact() && !lossy.totals_exact());
        assert_eq!(
            lossy.sites_note(),
            "every allocation recorded, but not exact: 7 events lost"
        );
        for id in profiler_common::counters::COUNTERS
            .iter()
            .filter(|d| d.section == Section::Lost)
            .map(|d| d.id)
        {
            let mut t = totals(|_| {});
            t.set(id, 1);
            let e = Exactness::new(0, &t);
            assert!(!e.sites_exact(), "{id:?}");
            assert_eq!(e.totals_exact(), id == CounterId::StackFailed, "{id:?}");
        }
    }

    #[test]
    fn untracked_allocations_make_the_totals_an_estimate() {
        let e = Exactness::new(524_288, &totals(|t| t.untracked_allocs = 9));
        assert!(e.live_estimated() && !e.totals_exact());
        assert_eq!(e.lost, 0, "nothing was lost: the sites stay unbiased");
    }

    #[test]
    fn a_failed_stack_loses_attribution_not_bytes() {
        let e = Exactness::new(0, &totals(|t| t.stack_failed = 3));
        assert!(e.totals_exact());
        assert!(!e.sites_exact());
        assert_eq!(
            Exactness::new(4096, &totals(|t| t.stack_failed = 3)).sites_note(),
            "sampled every 4096 bytes on average; unbiased estimates; 3 events lost"
        );
    }
}
