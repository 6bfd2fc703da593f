//! Turning a timeline into answers: which call sites leak ([`growth`]),
//! whether the allocator holds freed memory ([`retention`]), how old the
//! outstanding allocations are ([`age`]). Pure functions over a
//! [`Timeline`]; see each module for the thresholds and why.

pub mod age;
pub mod arenas;
pub(crate) mod fit;
pub mod growth;
pub mod peak;
pub mod retention;

pub use age::{older_than, AgeBuckets, AgeHistogram, OutstandingAlloc};
pub use arenas::{CrossThreadSite, Mechanism};
pub use growth::{rank_suspects, GrowthParams, Suspect, LEAK_CONFIDENCE};
pub use peak::{peak_finding, PeakFinding, PeakParams};
pub use retention::{retention_finding, RetentionFinding, RetentionParams};

use crate::profile::Frame;
use crate::timeline::{SiteId, Timeline, Window};

/// A call site that leaks: a suspect with confidence ≥ [`LEAK_CONFIDENCE`].
#[derive(Clone, Debug, PartialEq)]
pub struct LeakFinding {
    pub site: SiteId,
    /// Root first, leaf last.
    pub frames: std::sync::Arc<[Frame]>,
    pub api: &'static str,
    pub slope_bytes_per_hour: f64,
    pub confidence: f64,
    /// Share of the site's changes that were rises (see [`Suspect::grew_share`]).
    pub grew_share: f64,
    pub rises: u64,
    pub changes: u64,
    pub live_bytes_start: u64,
    pub live_bytes_end: u64,
    pub live_count_end: u64,
}

/// One conclusion of the analysis.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    Leak(LeakFinding),
    AllocatorRetention(RetentionFinding),
    /// The live heap fell after a peak, RSS did not.
    RetainedAfterPeak(PeakFinding),
}

impl Finding {
    /// The `kind` of the JSON rendering: `leak`, `allocator-retention` or
    /// `retained-after-peak`.
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Leak(_) => "leak",
            Finding::AllocatorRetention(_) => "allocator-retention",
            Finding::RetainedAfterPeak(_) => "retained-after-peak",
        }
    }
}

/// Everything the report says about one window.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub window: Window,
    /// Ranked, strongest first (see [`growth`]).
    pub suspects: Vec<Suspect>,
    pub retention: Option<RetentionFinding>,
    /// Leaks in suspect order, then the retention finding, then memory kept
    /// after a peak.
    pub findings: Vec<Finding>,
    /// glibc's arenas at the end of the window and the call sites whose
    /// blocks were freed across threads (when arenas were recorded).
    pub mechanism: Option<Mechanism>,
}

/// Ranks suspects and checks for retention in `window` with the default
/// thresholds.
pub fn analyze(timeline: &Timeline, window: Window) -> Analysis {
    let suspects = rank_suspects(timeline, window);
    let mechanism = arenas::mechanism(timeline, window);
    let mut retention = retention_finding(timeline, window);
    if let Some(r) = &mut retention {
        r.mechanism.clone_from(&mechanism);
    }
    let mut findings = findings(timeline, &suspects, retention.as_ref());
    let mut peak = peak_finding(timeline, window);
    if let Some(p) = &mut peak {
        p.mechanism.clone_from(&mechanism);
    }
    findings.extend(peak.map(Finding::RetainedAfterPeak));
    Analysis {
        window,
        suspects,
        retention,
        findings,
        mechanism,
    }
}

/// Findings from ranked suspects (the leaks among them) and a retention finding.
pub fn findings(
    timeline: &Timeline,
    suspects: &[Suspect],
    retention: Option<&RetentionFinding>,
) -> Vec<Finding> {
    let mut out: Vec<Finding> = suspects
        .iter()
        .filter(|s| s.is_leak())
        .map(|s| {
            let (frames, api) = timeline
                .site(s.site)
                .map_or((std::sync::Arc::from([]), "?"), |i| {
                    (i.frames.clone(), i.api)
                });
            Finding::Leak(LeakFinding {
                site: s.site,
                frames,
                api,
                slope_bytes_per_hour: s.slope_bytes_per_hour,
                confidence: s.confidence,
                grew_share: s.grew_share,
                rises: s.rises,
                changes: s.changes,
                live_bytes_start: s.live_bytes_start,
                live_bytes_end: s.live_bytes_end,
                live_count_end: s.live_count_end,
            })
        })
        .collect();
    out.extend(retention.cloned().map(Finding::AllocatorRetention));
    out
}

#[cfg(test)]
mod tests;
