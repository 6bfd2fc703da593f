//! The arithmetic of sampling by bytes, shared by the eBPF side (integers
//! and lookup tables only) and tested here against the floating-point formulas.
//!
//! Each thread counts down the bytes left until its next sample; the
//! allocation that crosses zero is sampled and a new exponential interval
//! (mean `rate`) starts. Because the exponential is memoryless, every
//! allocation of `size` bytes is then sampled with probability
//! `1 - e^(-size/rate)` whatever came before it on its thread — a new
//! thread, or a countdown the kernel evicted and restarted, included — and
//! a sample stands for `size / (1 - e^(-size/rate))` bytes (as tcmalloc,
//! jemalloc and Go weigh theirs), so per-site sums are unbiased.
//!
//! Both the interval and the weight are interpolated between table edges.
//! Drawing an interval as one of N discrete quantiles made the first
//! interval of a fresh countdown lumpy: at 512 KiB the smallest one was
//! 256 B, so a 300-byte allocation at the start of a countdown was sampled
//! 1.7× as often as its weight assumed, and a 64-byte one never. Programs
//! whose threads start often or allocate little each were over-estimated.

use crate::tables::X_STEPS;
use crate::{COUNT_SCALE, TABLE_LEN};

const _: () = assert!(TABLE_LEN.is_power_of_two());

/// High bits of a 32-bit random draw that pick a quantile bucket.
const BUCKET_BITS: u32 = TABLE_LEN.trailing_zeros();
/// The low bits, which place the interval inside its bucket.
const FRAC_BITS: u32 = 32 - BUCKET_BITS;
const FRAC_MASK: u64 = (1 << FRAC_BITS) - 1;
/// Extra fractional bits of an interpolated quantile (16.16 + EXTRA).
const EXTRA_BITS: u32 = 12;

/// Draws for one interval at most. The last bucket (u ≥ 1 - 1/N) is the
/// exponential's tail: ln N plus a fresh draw (memoryless). After this many
/// tails in a row (probability N^-4) the sum is taken as it is.
pub const TAIL_DRAWS: u32 = 4;

/// Largest rate the fixed-point arithmetic handles; larger ones are clamped.
pub const MAX_RATE: u64 = 1 << 31;

/// The next interval, in bytes, at mean `rate`, at least 1. `random` gives
/// uniform 32-bit draws (one, rarely more); `quantile(i)` is entry `i` of
/// `tables::exp_quantile` (16.16, at bucket edges).
#[inline(always)]
pub fn interval(rate: u64, mut random: impl FnMut() -> u32, quantile: impl Fn(u32) -> u64) -> i64 {
    let rate = rate.min(MAX_RATE);
    // 16.(16 + EXTRA_BITS); below 2^33 (TAIL_DRAWS * ln N < 32).
    let mut q = 0u64;
    for _ in 0..TAIL_DRAWS {
        let r = random();
        let i = r >> FRAC_BITS;
        if i + 1 < TABLE_LEN {
            let lo = quantile(i);
            let hi = quantile(i + 1).max(lo);
            // At the middle of the draw's sub-step: no sub-step rounds to 0.
            let frac = 2 * (u64::from(r) & FRAC_MASK) + 1;
            let within = ((hi - lo) * frac) >> (FRAC_BITS + 1 - EXTRA_BITS);
            q += (lo << EXTRA_BITS) + within;
            break;
        }
        q += quantile(TABLE_LEN - 1) << EXTRA_BITS;
    }
    // Rounded up: an allocation of s bytes is sampled when the interval is
    // at most s, so P(sampled) = P(exact interval <= s) with no bias for
    // small s. rate <= 2^31 and q < 2^33: no overflow.
    let shift = 16 + EXTRA_BITS;
    ((rate * q).div_ceil(1 << shift)).max(1) as i64
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
/// `weight(i)` is entry `i` of `tables::weight` (16.16, at x = i/X_STEPS).
/// `None` for a zero-byte allocation (it stands for nothing). `rate` must
/// be non-zero; it is clamped to [`MAX_RATE`].
#[inline(always)]
pub fn estimate(size: u64, rate: u64, mut weight: impl FnMut(u32) -> u64) -> Option<(u64, u64)> {
    if size == 0 {
        return None;
    }
    let rate = rate.min(MAX_RATE);
    // Past x = 15 the weight is 1 to within 4e-7: the allocation stands for itself.
    if size / rate >= u64::from(TABLE_LEN) / X_STEPS - 1 {
        return Some((size, COUNT_SCALE));
    }
    // x = size/rate = (i + rem/rate) / X_STEPS, i <= 959; size < 2^41.
    let scaled = size * X_STEPS;
    let i = scaled / rate;
    let rem = scaled - i * rate;
    let lo = weight(i as u32);
    let hi = weight(i as u32 + 1).max(lo);
    // rate * g(x), g linear between the edges: rate*lo + (hi-lo)*rem.
    let est_bytes = ((rate * lo + (hi - lo) * rem + (1 << 15)) >> 16).max(size);
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

    fn q(i: u32) -> u64 {
        u64::from(tables::exp_quantile(i))
    }

    /// The interval drawn from `r`, a tail continuing with a fixed draw.
    fn interval_of(rate: u64, r: u32) -> i64 {
        let mut first = Some(r);
        interval(rate, || first.take().unwrap_or(1 << 31), q)
    }

    /// P(interval <= s) for a fresh countdown: the interval grows with the
    /// draw below the tail bucket, so the share of draws giving at most `s`
    /// is found by bisection, exactly.
    fn p_fresh(rate: u64, s: u64) -> f64 {
        let tail = ((TABLE_LEN - 1) << FRAC_BITS) - 1;
        if interval_of(rate, 0) as u64 > s {
            return 0.0;
        }
        let (mut lo, mut hi) = (0u32, tail);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if interval_of(rate, mid) as u64 <= s {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        (f64::from(lo) + 1.0) / 4_294_967_296.0
    }

    /// xorshift32: a fixed, reproducible sequence of draws.
    struct Rng(u32);
    impl Rng {
        fn next(&mut self) -> u32 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            self.0 = x;
            x
        }
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
        let mut rng = Rng(0x9e37_79b9);
        let n = 1u32 << 20;
        let sum: f64 = (0..n)
            .map(|k| {
                let mut first = Some((k << 12) | 0x800);
                interval(RATE, || first.take().unwrap_or_else(|| rng.next()), q) as f64
            })
            .sum();
        let mean = sum / f64::from(n);
        assert!((mean / RATE as f64 - 1.0).abs() < 0.002, "mean {mean}");
        assert_eq!(interval(RATE, || 0, q), 1, "never zero");
        assert!(interval(MAX_RATE * 4, || u32::MAX, q) > 0, "no overflow");
    }

    #[test]
    fn intervals_follow_the_exponential_from_the_first_byte() {
        for s in [16u64, 64, 300, 1000, 4096, 65536, RATE / 2, RATE, 3 * RATE] {
            let want = 1.0 - (-(s as f64) / RATE as f64).exp();
            let got = p_fresh(RATE, s);
            assert!(
                (got / want - 1.0).abs() < 0.01,
                "P(interval <= {s}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn a_fresh_countdown_is_unbiased_for_every_size() {
        // A thread's first allocations, or a countdown the kernel evicted
        // and restarted: E[estimate] = P(sampled) * weight = size.
        for rate in [4096u64, RATE, 8 << 20] {
            for s in [
                16u64, 64, 100, 257, 300, 400, 700, 1000, 4096, 20_000, 100_000,
            ] {
                let (b, _) = estimate(s, rate, w).expect("sampled");
                let mean = p_fresh(rate, s) * b as f64;
                assert!(
                    (mean / s as f64 - 1.0).abs() < 0.01,
                    "rate {rate}, size {s}: expected estimate {mean}"
                );
            }
        }
    }

    /// Threads allocate `sizes` in turn; each thread's countdown restarts
    /// every `restart` allocations (0: never). Returns (estimate, truth, sigma).
    fn simulate(threads: u32, per_thread: u32, sizes: &[u64], restart: u32) -> (f64, f64, f64) {
        let mut rng = Rng(0x2545_f491);
        let (mut est, mut truth, mut var) = (0f64, 0f64, 0f64);
        for t in 0..threads {
            let mut left = 0i64;
            for k in 0..per_thread {
                if k == 0 || (restart > 0 && k % restart == 0) {
                    left = interval(RATE, || rng.next(), q);
                }
                let s = sizes[((t + k) as usize) % sizes.len()];
                truth += s as f64;
                let p = 1.0 - (-(s as f64) / RATE as f64).exp();
                var += (s as f64).powi(2) * (1.0 / p - 1.0);
                match countdown(left, s) {
                    Some(rest) => left = rest,
                    None => {
                        est += estimate(s, RATE, w).expect("sampled").0 as f64;
                        left = interval(RATE, || rng.next(), q);
                    }
                }
            }
        }
        (est, truth, var.sqrt())
    }

    #[test]
    fn many_threads_with_restarted_countdowns_stay_within_4_sigma() {
        let sizes = [64u64, 300, 1000, 4096, 40_000];
        for restart in [0, 1, 3, 50] {
            let (est, truth, sigma) = simulate(256, 4000, &sizes, restart);
            assert!(
                (est - truth).abs() <= 4.0 * sigma,
                "restart every {restart}: {est} vs {truth} (sigma {sigma})"
            );
        }
    }

    #[test]
    fn small_allocations_stand_for_about_one_interval() {
        // g(x) = x/(1-e^-x) → 1 as x → 0: a tiny sample stands for ~rate bytes.
        let (b, c) = estimate(16, RATE, w).expect("sampled");
        let exact = 16.0 / (1.0 - (-16.0 / RATE as f64).exp());
        assert!((b as f64 / exact - 1.0).abs() < 1e-4, "{b} vs {exact}");
        assert_eq!(c, b * COUNT_SCALE / 16);
    }

    #[test]
    fn estimates_follow_the_formula_across_the_table() {
        for rate in [4096u64, RATE, MAX_RATE] {
            for size in [
                1u64,
                100,
                4096,
                65536,
                rate / 3,
                rate,
                3 * rate,
                15 * rate - 1,
            ] {
                let (b, _) = estimate(size, rate, w).expect("sampled");
                let x = size as f64 / rate as f64;
                let exact = size as f64 / (1.0 - (-x).exp());
                // Interpolated between edges 1/64 of the rate apart.
                assert!(
                    (b as f64 - exact).abs() <= (1e-4 * exact).max(1.0),
                    "rate {rate}, size {size}: {b} vs {exact}"
                );
                assert!(b >= size, "a sample stands for at least itself");
            }
        }
    }

    #[test]
    fn large_allocations_stand_for_themselves() {
        assert_eq!(estimate(15 * RATE, RATE, w), Some((15 * RATE, COUNT_SCALE)));
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
