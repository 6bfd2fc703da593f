//! Leak suspects: call sites whose outstanding bytes keep growing.
//!
//! For every site that changed inside the window, its live bytes are sampled
//! at up to [`GrowthParams::max_points`] ticks and fitted with Theil–Sen (a
//! median of pairwise slopes, robust to spikes). A site is a suspect when the
//! fitted line grows by at least [`GrowthParams::min_growth_bytes`] over the
//! window; its confidence is
//!
//! `confidence = tau × R² × (0.25 + 0.75 × persistence)`
//!
//! - `tau` (Kendall): does it rise monotonically? A sawtooth scores near 0.
//! - `R²` of the robust line: is a straight line a good description? A
//!   sawtooth or a rise-then-plateau is not.
//! - `persistence`: the slope over the last third of the window relative to
//!   the whole one, clamped to [0, 1]: a leak that stopped scores 0 here,
//!   which cuts its confidence to a quarter (it did leak, it no longer does).
//!
//! Sites with confidence ≥ [`LEAK_CONFIDENCE`] rank first (by slope ×
//! confidence), then weaker candidates the same way.

use std::collections::BTreeMap;

use crate::timeline::{SiteId, Timeline, Window};

use super::fit::{kendall_tau, median, r_squared, subsample, theil_sen};

/// From this confidence on, a suspect is reported as a leak finding.
pub const LEAK_CONFIDENCE: f64 = 0.5;

/// Thresholds of [`rank_suspects_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct GrowthParams {
    /// Ticks the window needs before anything is ranked (a trend needs points).
    pub min_points: usize,
    /// Window length needed, in ms: shorter windows show startup, not leaks.
    pub min_span_ms: u64,
    /// Growth of the fitted line over the window below which a site is noise
    /// (one page: allocator and bookkeeping jitter stays below it).
    pub min_growth_bytes: u64,
    /// Points per site given to the O(n²) fits.
    pub max_points: usize,
    /// Suspects below this confidence are not listed at all.
    pub min_confidence: f64,
}

impl Default for GrowthParams {
    fn default() -> GrowthParams {
        GrowthParams {
            min_points: 5,
            min_span_ms: 5_000,
            min_growth_bytes: 4096,
            max_points: 200,
            min_confidence: 0.05,
        }
    }
}

/// A call site whose outstanding bytes grew in the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Suspect {
    pub site: SiteId,
    /// Slope of the robust fit of live bytes over time.
    pub slope_bytes_per_hour: f64,
    /// Share of the site's changes of live bytes that were rises, in [0, 1]
    /// (`rises / changes`). Not a share of ticks: a steady leak slower than
    /// the tick, or one seen through sampling, changes in few ticks, and
    /// rises at every one of its changes.
    pub grew_share: f64,
    /// Ticks in which the site's live bytes rose.
    pub rises: u64,
    /// Ticks in which the site's live bytes changed at all.
    pub changes: u64,
    /// In [0, 1]; see the module doc.
    pub confidence: f64,
    /// Live bytes at the window's first and last tick.
    pub live_bytes_start: u64,
    pub live_bytes_end: u64,
    /// Live blocks at the window's last tick.
    pub live_count_end: u64,
}

impl Suspect {
    /// Whether this suspect is strong enough to be called a leak.
    pub fn is_leak(&self) -> bool {
        self.confidence >= LEAK_CONFIDENCE
    }
}

/// Live-bytes history of one site inside the window.
#[derive(Default)]
struct Track {
    /// Live bytes at the window's first tick.
    initial: u64,
    /// (window tick index, live bytes, live blocks) after each change.
    steps: Vec<(usize, u64, u64)>,
    grew: u64,
}

impl Track {
    fn changes(&self) -> u64 {
        self.steps.len() as u64
    }
}

/// [`rank_suspects_with`] with the default thresholds.
pub fn rank_suspects(timeline: &Timeline, window: Window) -> Vec<Suspect> {
    rank_suspects_with(timeline, window, &GrowthParams::default())
}

/// Ranks the sites of `window` by the growth of their outstanding bytes,
/// most likely and fastest leak first (see the module doc).
pub fn rank_suspects_with(timeline: &Timeline, window: Window, p: &GrowthParams) -> Vec<Suspect> {
    let range = timeline.range(window);
    let n = range.len();
    if n < p.min_points.max(2) {
        return Vec::new();
    }
    let mut times: Vec<u64> = Vec::with_capacity(n);
    let mut tracks: BTreeMap<SiteId, Track> = BTreeMap::new();
    timeline.replay(range.clone(), |v| {
        let k = v.index - range.start;
        times.push(v.t_ms);
        if k == 0 {
            return; // changes into the first tick happened before the window
        }
        for c in v.changes {
            let (before, after) = (c.before.live_bytes, c.after.live_bytes);
            if before == after {
                continue;
            }
            // The first change's `before` is the value at the window's start.
            let t = tracks.entry(c.site).or_insert_with(|| Track {
                initial: before,
                ..Track::default()
            });
            t.grew += u64::from(after > before);
            t.steps.push((k, after, c.after.live_count));
        }
    });
    let (Some(&t0), Some(&t_end)) = (times.first(), times.last()) else {
        return Vec::new();
    };
    if t_end.saturating_sub(t0) < p.min_span_ms {
        return Vec::new();
    }
    let span_s = (t_end - t0) as f64 / 1000.0;
    let picks = subsample(n, p.max_points);
    let mut out: Vec<Suspect> = tracks
        .into_iter()
        .filter_map(|(site, track)| {
            let points = sampled_points(&track, &picks, &times, t0);
            let mut s = score(&points, span_s, p)?;
            let last = track
                .steps
                .last()
                .map_or((track.initial, 0), |s| (s.1, s.2));
            s.site = site;
            s.rises = track.grew;
            s.changes = track.changes();
            s.grew_share = track.grew as f64 / track.changes().max(1) as f64;
            s.live_bytes_start = track.initial;
            (s.live_bytes_end, s.live_count_end) = last;
            Some(s)
        })
        .collect();
    out.sort_by(|a, b| {
        b.is_leak()
            .cmp(&a.is_leak())
            .then_with(|| {
                let (ka, kb) = (
                    a.slope_bytes_per_hour * a.confidence,
                    b.slope_bytes_per_hour * b.confidence,
                );
                kb.total_cmp(&ka)
            })
            .then(a.site.cmp(&b.site))
    });
    out
}

/// (seconds since the window's first tick, live bytes) at the picked ticks.
fn sampled_points(track: &Track, picks: &[usize], times: &[u64], t0: u64) -> Vec<(f64, f64)> {
    let mut value = track.initial;
    let mut next = 0;
    picks
        .iter()
        .filter_map(|&k| {
            while let Some(&(at, live, _)) = track.steps.get(next) {
                if at > k {
                    break;
                }
                value = live;
                next += 1;
            }
            let t = times.get(k)?;
            Some(((t - t0) as f64 / 1000.0, value as f64))
        })
        .collect()
}

/// Slope and confidence of one site's points; `None` when it is not a suspect.
fn score(points: &[(f64, f64)], span_s: f64, p: &GrowthParams) -> Option<Suspect> {
    // Cheap reject before the O(n²) fits: no net rise from the first few
    // points to the last few means no sustained growth.
    let ends = 3.min(points.len());
    let head = median(&mut points[..ends].iter().map(|q| q.1).collect::<Vec<_>>())?;
    let tail = median(
        &mut points[points.len() - ends..]
            .iter()
            .map(|q| q.1)
            .collect::<Vec<_>>(),
    )?;
    if tail <= head {
        return None;
    }
    let line = theil_sen(points)?;
    if line.slope * span_s < p.min_growth_bytes as f64 {
        return None;
    }
    let tau = kendall_tau(points);
    if tau <= 0.0 {
        return None;
    }
    let r2 = r_squared(points, line);
    let recent_from = points.len() - (points.len() / 3).max(3).min(points.len());
    let persistence = theil_sen(&points[recent_from..])
        .map_or(1.0, |recent| (recent.slope / line.slope).clamp(0.0, 1.0));
    let confidence = tau * r2 * (0.25 + 0.75 * persistence);
    if confidence < p.min_confidence {
        return None;
    }
    Some(Suspect {
        site: SiteId(0),
        slope_bytes_per_hour: line.slope * 3600.0,
        grew_share: 0.0,
        rises: 0,
        changes: 0,
        confidence,
        live_bytes_start: 0,
        live_bytes_end: 0,
        live_count_end: 0,
    })
}
