//! The findings document: `heapscope report --json` and `/api/v1/findings`.

use serde::Serialize;

use crate::analysis::{Analysis, Finding, Mechanism, Suspect};
use crate::process::arenas::Home;
use crate::profile::{Frame, Metric, Profile};
use crate::timeline::Timeline;
use crate::views::{frame_text, merge_sites, Labels};

use super::{r3, WindowJson};

/// Process totals of the window (exact counters).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TotalsJson {
    pub allocs: u64,
    pub alloc_bytes: u64,
    pub frees: u64,
    pub free_bytes: u64,
}

/// One call site by live bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopSite {
    /// Frame labels, root first (with several processes, the first is the
    /// process: `comm [pid N]`).
    pub frames: Vec<String>,
    /// The process, when the profile has several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub api: &'static str,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub alloc_bytes: u64,
    pub allocs: u64,
}

/// A ranked leak suspect.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SuspectJson {
    pub frames: Vec<String>,
    pub api: &'static str,
    pub site_id: u32,
    pub slope_bytes_per_hour: f64,
    pub confidence: f64,
    /// Share of the site's changes of live bytes that were rises (not a
    /// share of ticks: a leak slower than the tick changes in few of them).
    pub grew_share: f64,
    pub live_bytes_start: u64,
    pub live_bytes_end: u64,
    /// Confidence at or above the leak threshold.
    pub leak: bool,
}

/// One finding, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum FindingJson {
    #[serde(rename = "leak")]
    Leak {
        frames: Vec<String>,
        api: &'static str,
        site_id: u32,
        slope_bytes_per_hour: f64,
        confidence: f64,
        grew_share: f64,
        live_bytes_start: u64,
        live_bytes_end: u64,
        live_blocks_end: u64,
    },
    #[serde(rename = "allocator-retention")]
    AllocatorRetention {
        start_ms: u64,
        end_ms: u64,
        live_heap_start: u64,
        live_heap_end: u64,
        rss_anon_start: u64,
        rss_anon_end: u64,
        gap_start: i64,
        gap_end: i64,
        gap_growth_bytes: i64,
        gap_growth_bytes_per_hour: f64,
        live_growth_bytes_per_hour: f64,
        heap_mappings_start: u64,
        heap_mappings_end: u64,
        arena_heaps: u64,
        allocator_mapped: u64,
        remedies: Vec<&'static str>,
        /// Remedies chosen from the per-arena numbers, with them (first).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        measured_remedies: Vec<String>,
        /// glibc's footprint split at the end (0 when not read).
        main_heap_resident: u64,
        arenas: u64,
        arena_resident: u64,
        mmapped_resident: u64,
    },
    #[serde(rename = "retained-after-peak")]
    RetainedAfterPeak {
        peak_ms: u64,
        end_ms: u64,
        live_peak: u64,
        live_end: u64,
        rss_anon_peak: u64,
        rss_anon_end: u64,
        retained: u64,
        main_heap_resident: u64,
        arenas: u64,
        arena_resident: u64,
        mmapped_resident: u64,
        remedies: Vec<&'static str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        measured_remedies: Vec<String>,
    },
}

/// One row of glibc's arenas.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArenaJson {
    /// `main`, `arena` or `mmapped`.
    pub kind: &'static str,
    /// The arena's address (`malloc_state`), 0 for the others.
    pub address: u64,
    pub heaps: u32,
    pub reserved: u64,
    pub resident: u64,
    /// Estimated when `estimated` (sampled blocks by chunk header).
    pub live: u64,
    pub retained: u64,
}

/// A call site whose blocks were freed across threads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrossThreadJson {
    pub frames: Vec<String>,
    pub api: &'static str,
    pub bytes: u64,
    pub blocks: u64,
    pub alloc_bytes: u64,
}

/// glibc's arenas at the end of the window and the cross-thread frees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArenasDoc {
    pub t_ms: u64,
    /// Live and cross-thread numbers are sampled estimates.
    pub estimated: bool,
    /// Lost events the live and cross-thread numbers miss (see the counters).
    pub lost_events: u64,
    /// Cross-thread frees were judged by arena (glibc, DWARF stacks); false:
    /// by thread alone (frame-pointer stacks, other allocators).
    pub arenas_compared: bool,
    pub arenas: Vec<ArenaJson>,
    pub cross_thread_bytes: u64,
    pub cross_thread_blocks: u64,
    pub cross_thread_sites: Vec<CrossThreadJson>,
}

fn arenas_doc(m: &Mechanism, estimated: bool, lost_events: u64) -> ArenasDoc {
    ArenasDoc {
        t_ms: m.t_ms,
        estimated,
        lost_events,
        arenas_compared: m.arenas_compared(),
        arenas: m
            .arenas
            .iter()
            .map(|a| {
                let (kind, address) = match a.home {
                    Home::Main => ("main", 0),
                    Home::Arena(addr) => ("arena", addr),
                    Home::Mmapped => ("mmapped", 0),
                };
                ArenaJson {
                    kind,
                    address,
                    heaps: a.heaps,
                    reserved: a.reserved,
                    resident: a.resident,
                    live: a.live,
                    retained: a.retained(),
                }
            })
            .collect(),
        cross_thread_bytes: m.cross_bytes,
        cross_thread_blocks: m.cross_count,
        cross_thread_sites: m
            .cross_sites
            .iter()
            .map(|c| CrossThreadJson {
                frames: labels(&c.frames),
                api: c.api,
                bytes: c.bytes,
                blocks: c.count,
                alloc_bytes: c.alloc_bytes,
            })
            .collect(),
    }
}

fn measured(m: Option<&Mechanism>) -> Vec<String> {
    m.map(|m| {
        m.remedies
            .iter()
            .map(crate::views::arenas::remedy_text)
            .collect()
    })
    .unwrap_or_default()
}

/// The whole document: process, window, totals, top sites, suspects, findings.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportDoc {
    pub pid: u32,
    pub comm: String,
    pub window: WindowJson,
    pub duration_secs: f64,
    /// Exact: allocated − freed since attach, over every allocation; with
    /// uprobe sessions (`live_estimated`) the sampled sites' estimate.
    pub live_bytes: u64,
    pub live_blocks: u64,
    /// True when `live_bytes` is an estimate: uprobe sessions left unsampled
    /// blocks untracked.
    pub live_estimated: bool,
    /// Mean bytes between samples; 0 when every allocation was captured.
    pub sample_rate: u64,
    /// Per-site numbers are unbiased estimates (sampled).
    pub sites_estimated: bool,
    pub sites_live_bytes: u64,
    pub sites_live_blocks: u64,
    pub totals: TotalsJson,
    pub top_sites: Vec<TopSite>,
    pub suspects: Vec<SuspectJson>,
    pub findings: Vec<FindingJson>,
    /// Each profiled process with the sums of its call sites (one entry for
    /// a single-process session).
    pub processes: Vec<ProcessJson>,
    /// glibc's arenas and cross-thread frees (recorded sessions since they
    /// were stored; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arenas: Option<ArenasDoc>,
    /// What the overhead guard did (`--max-overhead`; absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_guard: Option<super::guard::GuardJson>,
}

/// One profiled process and the sums of its call sites in the window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcessJson {
    pub pid: u32,
    /// 0 for a process named on the command line.
    pub parent: u32,
    pub comm: String,
    pub cmdline: String,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub alloc_bytes: u64,
    pub allocs: u64,
    pub sites: u64,
}

fn labels(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| frame_text(f, Labels::default()))
        .collect()
}

/// The `top` call sites of `profile` with live bytes, largest first (ties in
/// stack order).
pub fn top_sites(profile: &Profile, top: usize) -> Vec<TopSite> {
    top_sites_by(profile, Metric::LiveBytes, top)
}

/// The `top` call sites by `metric` (those with 0 of it left out), largest
/// first, ties in stack order.
pub fn top_sites_by(profile: &Profile, metric: Metric, top: usize) -> Vec<TopSite> {
    let mut sites = merge_sites(profile, Labels::default());
    sites.retain(|s| metric.of(&s.stats) > 0);
    // merge_sites is sorted by stack and the sort is stable.
    sites.sort_by_key(|s| std::cmp::Reverse(metric.of(&s.stats)));
    sites
        .into_iter()
        .take(top)
        .map(|s| TopSite {
            frames: s.frames,
            pid: s.pid,
            api: s.api,
            live_bytes: s.stats.live_bytes,
            live_blocks: s.stats.live_count,
            alloc_bytes: s.stats.alloc_bytes,
            allocs: s.stats.alloc_count,
        })
        .collect()
}

fn suspect_json(s: &Suspect, timeline: &Timeline) -> SuspectJson {
    let (api, frames) = timeline
        .site(s.site)
        .map_or(("?", Vec::new()), |i| (i.api, labels(&i.frames)));
    SuspectJson {
        frames,
        api,
        site_id: s.site.0,
        slope_bytes_per_hour: s.slope_bytes_per_hour.round(),
        confidence: r3(s.confidence),
        grew_share: r3(s.grew_share),
        live_bytes_start: s.live_bytes_start,
        live_bytes_end: s.live_bytes_end,
        leak: s.is_leak(),
    }
}

fn finding_json(f: &Finding) -> FindingJson {
    match f {
        Finding::Leak(l) => FindingJson::Leak {
            frames: labels(&l.frames),
            api: l.api,
            site_id: l.site.0,
            slope_bytes_per_hour: l.slope_bytes_per_hour.round(),
            confidence: r3(l.confidence),
            grew_share: r3(l.grew_share),
            live_bytes_start: l.live_bytes_start,
            live_bytes_end: l.live_bytes_end,
            live_blocks_end: l.live_count_end,
        },
        Finding::AllocatorRetention(r) => FindingJson::AllocatorRetention {
            start_ms: r.start_ms,
            end_ms: r.end_ms,
            live_heap_start: r.live_heap_start,
            live_heap_end: r.live_heap_end,
            rss_anon_start: r.rss_anon_start,
            rss_anon_end: r.rss_anon_end,
            gap_start: r.gap_start,
            gap_end: r.gap_end,
            gap_growth_bytes: r.gap_growth_bytes,
            gap_growth_bytes_per_hour: r.gap_growth_bytes_per_hour.round(),
            live_growth_bytes_per_hour: r.live_growth_bytes_per_hour.round(),
            heap_mappings_start: r.heap_mappings_start,
            heap_mappings_end: r.heap_mappings_end,
            arena_heaps: r.arena_heaps,
            allocator_mapped: r.allocator_mapped,
            remedies: r.remedies.clone(),
            measured_remedies: measured(r.mechanism.as_ref()),
            main_heap_resident: r.mem_end.main_heap_resident,
            arenas: r.mem_end.arenas,
            arena_resident: r.mem_end.arena_resident,
            mmapped_resident: r.mem_end.mmapped_resident,
        },
        Finding::RetainedAfterPeak(p) => FindingJson::RetainedAfterPeak {
            peak_ms: p.peak_ms,
            end_ms: p.end_ms,
            live_peak: p.live_peak,
            live_end: p.live_end,
            rss_anon_peak: p.rss_anon_peak,
            rss_anon_end: p.rss_anon_end,
            retained: p.retained(),
            main_heap_resident: p.mem_end.main_heap_resident,
            arenas: p.mem_end.arenas,
            arena_resident: p.mem_end.arena_resident,
            mmapped_resident: p.mem_end.mmapped_resident,
            remedies: p.remedies.clone(),
            measured_remedies: measured(p.mechanism.as_ref()),
        },
    }
}

/// The findings document of one window: `top` sites by live bytes, the
/// `top` strongest suspects, and every finding.
pub fn report_doc(
    profile: &Profile,
    analysis: &Analysis,
    timeline: &Timeline,
    top: usize,
) -> ReportDoc {
    let estimated = crate::exactness::Exactness::of(profile).live_estimated();
    ReportDoc {
        pid: profile.pid,
        comm: profile.comm.clone(),
        window: analysis.window.into(),
        duration_secs: profile.duration_secs,
        live_bytes: if estimated {
            profile.sites_live_bytes()
        } else {
            profile.live_heap.bytes
        },
        live_blocks: if estimated {
            profile.sites_live_count()
        } else {
            profile.live_heap.blocks
        },
        live_estimated: estimated,
        sample_rate: profile.sample_rate,
        sites_estimated: profile.sampled(),
        sites_live_bytes: profile.sites_live_bytes(),
        sites_live_blocks: profile.sites_live_count(),
        totals: TotalsJson {
            allocs: profile.totals.allocs,
            alloc_bytes: profile.totals.alloc_bytes,
            frees: profile.totals.frees,
            free_bytes: profile.totals.free_bytes,
        },
        top_sites: top_sites(profile, top),
        suspects: analysis
            .suspects
            .iter()
            .take(top)
            .map(|s| suspect_json(s, timeline))
            .collect(),
        findings: analysis.findings.iter().map(finding_json).collect(),
        processes: profile
            .by_process()
            .into_iter()
            .map(|sh| ProcessJson {
                pid: sh.process.pid,
                parent: sh.process.parent,
                comm: sh.process.comm,
                cmdline: sh.process.cmdline,
                live_bytes: sh.stats.live_bytes,
                live_blocks: sh.stats.live_count,
                alloc_bytes: sh.stats.alloc_bytes,
                allocs: sh.stats.alloc_count,
                sites: sh.sites,
            })
            .collect(),
        arenas: analysis.mechanism.as_ref().map(|m| {
            let lost = crate::exactness::Exactness::of(profile).lost;
            arenas_doc(m, profile.sampled(), lost)
        }),
        overhead_guard: timeline.guard().and_then(super::guard::guard_json),
    }
}
