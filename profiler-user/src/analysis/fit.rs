//! Robust trend statistics over short series: Theil–Sen slope, Kendall's
//! tau, R² of a line, even subsampling. Pairwise methods are O(n²), so
//! callers cap `n` with [`subsample`] (200 points ≈ 20,000 pairs).

/// Up to `max` indices of `0..n`, evenly spread, always including the first
/// and the last.
pub(crate) fn subsample(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    if max < 2 {
        return (0..max).collect();
    }
    (0..max).map(|k| k * (n - 1) / (max - 1)).collect()
}

/// Median of `v` (reorders it); `None` when empty.
pub(crate) fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mid = v.len() / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let upper = *m;
    if v.len() % 2 == 1 {
        return Some(upper);
    }
    // The lower middle is the largest value left of `mid` after selection.
    let lower = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((lower + upper) / 2.0)
}

/// A line `y = slope * x + intercept`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Line {
    pub slope: f64,
    pub intercept: f64,
}

impl Line {
    pub fn at(&self, x: f64) -> f64 {
        self.slope * x + self.intercept
    }
}

/// Theil–Sen estimator: the median of the slopes of all pairs with distinct
/// `x`, intercept the median of `y - slope * x`. Up to 29% of the points can
/// be outliers without moving it. `None` with fewer than two distinct `x`.
pub(crate) fn theil_sen(points: &[(f64, f64)]) -> Option<Line> {
    let mut slopes = Vec::with_capacity(points.len() * points.len().saturating_sub(1) / 2);
    for (i, &(xi, yi)) in points.iter().enumerate() {
        for &(xj, yj) in &points[i + 1..] {
            if xj != xi {
                slopes.push((yj - yi) / (xj - xi));
            }
        }
    }
    let slope = median(&mut slopes)?;
    let mut offsets: Vec<f64> = points.iter().map(|&(x, y)| y - slope * x).collect();
    let intercept = median(&mut offsets)?;
    Some(Line { slope, intercept })
}

/// Kendall's tau-a: (concordant − discordant) / all pairs, in [-1, 1].
/// 1 for a series that only rises; ties count as neither.
pub(crate) fn kendall_tau(points: &[(f64, f64)]) -> f64 {
    let (mut score, mut pairs) = (0i64, 0i64);
    for (i, &(xi, yi)) in points.iter().enumerate() {
        for &(xj, yj) in &points[i + 1..] {
            let s = (xj - xi).signum() * (yj - yi).signum();
            if yj != yi && xj != xi {
                score += s as i64;
            }
            pairs += 1;
        }
    }
    if pairs == 0 {
        0.0
    } else {
        score as f64 / pairs as f64
    }
}

/// R² of `line` over `points`, clamped to [0, 1]: the share of the variance
/// the line explains. A constant series is explained only by a flat line.
pub(crate) fn r_squared(points: &[(f64, f64)], line: Line) -> f64 {
    if points.is_empty() {
        return 0.0;
    }
    let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let ss_tot: f64 = points.iter().map(|p| (p.1 - mean).powi(2)).sum();
    let ss_res: f64 = points.iter().map(|&(x, y)| (y - line.at(x)).powi(2)).sum();
    if ss_tot <= f64::EPSILON {
        return if ss_res <= f64::EPSILON { 1.0 } else { 0.0 };
    }
    (1.0 - ss_res / ss_tot).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(ys: &[f64]) -> Vec<(f64, f64)> {
        ys.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect()
    }

    #[test]
    fn subsample_keeps_ends_and_bound() {
        assert_eq!(subsample(5, 200), vec![0, 1, 2, 3, 4]);
        assert_eq!(subsample(0, 200), Vec::<usize>::new());
        let s = subsample(1000, 200);
        assert_eq!(s.len(), 200);
        assert_eq!((s[0], s[199]), (0, 999));
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn theil_sen_ignores_outliers() {
        let mut p = pts(&[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0]);
        p[3].1 = 1e9;
        p[7].1 = -1e9;
        let line = theil_sen(&p).expect("line");
        assert!((line.slope - 2.0).abs() < 1e-9, "{line:?}");
        assert!(line.intercept.abs() < 1e-9, "{line:?}");
        assert!(theil_sen(&[(1.0, 1.0), (1.0, 5.0)]).is_none());
    }

    #[test]
    fn kendall_and_r2() {
        assert_eq!(kendall_tau(&pts(&[1.0, 2.0, 3.0, 4.0])), 1.0);
        assert_eq!(kendall_tau(&pts(&[4.0, 3.0, 2.0, 1.0])), -1.0);
        assert_eq!(kendall_tau(&pts(&[1.0, 1.0, 1.0])), 0.0);
        let p = pts(&[1.0, 3.0, 5.0, 7.0]);
        let fit = theil_sen(&p).expect("line");
        assert!((r_squared(&p, fit) - 1.0).abs() < 1e-12);
        let flat = Line {
            slope: 0.0,
            intercept: 4.0,
        };
        assert_eq!(r_squared(&p, flat), 0.0);
    }
}
