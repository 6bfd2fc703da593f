//! The arithmetic of sampling by bytes, shared by the eBPF side (integers
//! and lookup tables only) and tested here against the floating-point formulas.
//!
//! Each thread counts down the bytes left until its next sample; the
//! allocation that crosses zero is sampled and a new exponential interval
//! (mean `rate`) starts. A sampled allocation of `size` bytes stands for
//! `size / (1 - e^(-size/rate))` bytes (as tcmalloc, jemalloc and Go weigh
//! theirs), so per-site sums are unbiased.

use crate::tables::X_STEPS;
use crate::{COUNT_SCALE, TABLE_LEN};

/// The next interval, in bytes, from the exponential quantile `q` (16.16,
/// an entry of `tables::exp_quantile`): `rate * q`, at least 1.
/// `rate` must stay below 2^44 (the quantiles are below 2^20).
#[inline(always)]
pub fn interval(rate: u64, q: u64) -> i64 {
    (rate.wrapping_mul(q) >> 16).max(1) as i64
}

/// The countdown after an allocation of `size` bytes, with `left` bytes to go
/// before it: `Some(remaining)` when not sampled, `None` when this allocation
/// is sampled (the caller then starts a new [`interval`]).
#[inline(always)]
pub fn countdown(left: i64, size: u64) -> Option<i64> {
    if left <= 0 || size >= left as u64 {
        None
    } else {
        Some(left - size as i64)
    }
}

/// What a sampled allocation of `size` bytes stands for at mean `rate`:
/// `(est_bytes, est_count)`, the count in units of 1/[`COUNT_SCALE`].
/// `weight(i)` is entry `i` of `tables::weight` (16.16). `None` for a
/// zero-byte allocation (it stands for nothing). `rate` must be non-zero and
/// below 2^44.
#[inline(always)]
pub fn estimate(size: u64, rate: u64, weight: impl FnOnce(u32) -> u64) -> Option<(u64, u64)> {
    if size == 0 {
        return None;
    }
    // x = size/rate in steps of 1/X_STEPS; past the table (x >= 16) the
    // weight is 1 to within 1e-7: the allocation stands for itself.
    if size / rate >= u64::from(TABLE_LEN) / X_STEPS {
        return Some((size, COUNT_SCALE));
    }
    let xq = (size * X_STEPS) / rate;
    let g = weight(xq as u32);
    let est_bytes = (rate.wrapping_mul(g) >> 16).max(size);
    Some((est_bytes, est_bytes * COUNT_SCALE / size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables;
    use crate::tables::ONE;

    const RATE: u64 = 512 * 1024;

    fn w(i: u32) -> u64 {
        u64::from(tables::weight(i))
    }

    #[test]
    fn countdown_samples_the_allocation_that_crosses_zero() {
        assert_eq!(countdown(100, 40), Some(60));
        assert_eq!(countdown(100, 99), Some(1));
        assert_eq!(countdown(100, 100), None, "reaching zero samples");
        assert_eq!(countdown(100, 1 << 40), None);
        assert_eq!(countdown(100, u64::MAX), None, "no overflow");
        assert_eq!(countdown(0, 0), None, "a spent countdown samples");
        assert_eq!(
            countdown(5, 0),
            Some(5),
            "a zero-byte allocation moves nothing"
        );
    }

    #[test]
    fn intervals_have_the_requested_mean() {
        let n = TABLE_LEN;
        let sum: u64 = (0..n)
            .map(|i| interval(RATE, u64::from(tables::exp_quantile(i))) as u64)
            .sum();
        let mean = sum as f64 / f64::from(n);
        assert!((mean / RATE as f64 - 1.0).abs() < 0.01, "mean {mean}");
        assert_eq!(interval(RATE, 0), 1, "never zero");
    }

    #[test]
    fn small_allocations_stand_for_about_one_interval() {
        // g(x) = x/(1-e^-x) → 1 as x → 0: a tiny sample stands for ~rate bytes.
        let (b, c) = estimate(16, RATE, w).expect("sampled");
        let exact = 16.0 / (1.0 - (-16.0 / RATE as f64).exp());
        assert!((b as f64 / exact - 1.0).abs() < 0.01, "{b} vs {exact}");
        assert_eq!(c, b * COUNT_SCALE / 16);
    }

    #[test]
    fn estimates_follow_the_formula_across_the_table() {
        for size in [1u64, 100, 4096, 65536, RATE / 2, RATE, 3 * RATE, 15 * RATE] {
            let (b, _) = estimate(size, RATE, w).expect("sampled");
            let x = size as f64 / RATE as f64;
            let exact = size as f64 / (1.0 - (-x).exp());
            // Quantised in steps of 1/64 of the rate: within 1% for every size.
            assert!(
                (b as f64 / exact - 1.0).abs() < 0.01,
                "size {size}: {b} vs {exact}"
            );
            assert!(b >= size, "a sample stands for at least itself");
        }
    }

    #[test]
    fn large_allocations_stand_for_themselves() {
        assert_eq!(estimate(16 * RATE, RATE, w), Some((16 * RATE, COUNT_SCALE)));
        assert_eq!(
            estimate(u64::MAX, RATE, w),
            Some((u64::MAX, COUNT_SCALE)),
            "no overflow"
        );
        let mut asked = false;
        let _ = estimate(100 * RATE, RATE, |_| {
            asked = true;
            ONE
        });
        assert!(!asked, "no table lookup past its end");
    }

    #[test]
    fn zero_bytes_stand_for_nothing() {
        assert_eq!(estimate(0, RATE, w), None);
    }
}
