//! `/metrics`: the session in Prometheus text format (version 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::api::counters;
use crate::views::{merge_sites, Labels};

use super::state::Shared;

/// Longest label value; longer function names are cut (labels stay bounded).
const MAX_LABEL: usize = 120;

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars().take(MAX_LABEL) {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        let _ = writeln!(self.0, "{name} {value}");
    }
}

/// Renders every metric at the newest tick.
pub(super) fn render(shared: &Shared) -> String {
    let latest = shared.latest();
    let d = shared.read();
    let mut o = Out(String::new());
    o.family("heapscope_info", "gauge", "The profiled process (value 1).");
    let _ = writeln!(
        o.0,
        "heapscope_info{{pid=\"{}\",comm=\"{}\",version=\"{}\",live=\"{}\"}} 1",
        d.info.pid,
        escape(&d.info.comm),
        escape(&d.info.heapscope_version),
        d.info.live
    );
    if crate::exactness::Exactness::new(d.info.sample_rate, &d.last).live_estimated() {
        // Uprobe sessions: unsampled blocks are not tracked, so there is no
        // exact live heap; the estimate goes under names of its own rather
        // than pass for the exact series.
        o.one(
            "heapscope_live_heap_estimated_bytes",
            "gauge",
            "Live heap, estimated from the samples: uprobe sessions skipped the returns of \
             unsampled allocations (heapscope_untracked_allocs_total), whose blocks are not \
             tracked. heapscope_live_heap_bytes (exact) is not exported in this mode.",
            latest.sites_live_bytes(),
        );
        o.one(
            "heapscope_live_blocks_estimated",
            "gauge",
            "Live blocks, estimated from the samples (uprobe sessions; see \
             heapscope_live_heap_estimated_bytes).",
            latest.sites_live_count(),
        );
    } else {
        o.one(
            "heapscope_live_heap_bytes",
            "gauge",
            "Live heap: allocated minus freed bytes since attach, exact (every allocation).",
            d.last.live_bytes(),
        );
        o.one(
            "heapscope_live_blocks",
            "gauge",
            "Live blocks: allocations minus frees since attach, exact.",
            d.last.live_blocks(),
        );
    }
    o.one(
        "heapscope_sites_live_bytes",
        "gauge",
        "Live bytes summed over call sites; unbiased estimates when sampled.",
        latest.sites_live_bytes(),
    );
    if let Some(m) = d.last_mem {
        o.one(
            "heapscope_rss_anon_bytes",
            "gauge",
            "RssAnon of the process.",
            m.rss_anon,
        );
        o.one(
            "heapscope_rss_file_bytes",
            "gauge",
            "RssFile of the process.",
            m.rss_file,
        );
        o.one(
            "heapscope_allocator_footprint_bytes",
            "gauge",
            "[heap] + glibc arena heaps + what the allocator mapped itself.",
            m.heap_mappings.saturating_add(m.allocator_mapped),
        );
    }
    let guard = d.timeline.guard().and_then(|g| g.last);
    o.one(
        "heapscope_sample_rate_bytes",
        "gauge",
        "Mean bytes between sampled allocations now (--max-overhead may change it); 0 when \
         every allocation is captured.",
        guard.map_or(d.info.sample_rate, |p| p.rate),
    );
    if let Some(p) = guard {
        for (name, help, value) in [
            (
                "heapscope_overhead_estimated_percent",
                "The probes' estimated share of the target's CPU in the overhead guard's last \
                 window (hits x calibrated per-hit cost).",
                p.percent(),
            ),
            (
                "heapscope_overhead_budget_percent",
                "The overhead guard's budget (--max-overhead), percent of the target's CPU.",
                p.budget(),
            ),
        ] {
            o.family(name, "gauge", help);
            let _ = writeln!(o.0, "{name} {value}");
        }
    }
    for c in counters(&d.last) {
        let section = match c.section {
            crate::api::Section::Counted => "",
            crate::api::Section::Lost => " (lost: numbers are incomplete when non-zero)",
        };
        let help = format!("{}{section}", c.help.trim_end_matches('.'));
        o.one(
            &format!("heapscope_{}_total", c.id),
            "counter",
            &help,
            c.value,
        );
    }
    o.one(
        "heapscope_server_dropped_ticks_total",
        "counter",
        "Live ticks the web server could not take in time (the session kept them).",
        shared.dropped.load(Ordering::Relaxed),
    );
    drop(d);
    // Top sites by live bytes, labelled by their two leaf-most frames and
    // API; sites that share those labels are summed.
    let mut by_label: BTreeMap<(String, String, &str), (u64, u64)> = BTreeMap::new();
    for s in merge_sites(&latest, Labels::default()) {
        let leaf = s.frames.last().cloned().unwrap_or_default();
        let caller = s.frames.iter().rev().nth(1).cloned().unwrap_or_default();
        let e = by_label.entry((leaf, caller, s.api)).or_default();
        e.0 = e.0.saturating_add(s.stats.live_bytes);
        e.1 = e.1.saturating_add(s.stats.live_count);
    }
    let mut top: Vec<_> = by_label.into_iter().filter(|(_, v)| v.0 > 0).collect();
    top.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
    top.truncate(shared.metrics_top);
    for (name, idx, help) in [
        (
            "heapscope_site_live_bytes",
            0,
            "Live bytes of the top call sites by live bytes.",
        ),
        (
            "heapscope_site_live_blocks",
            1,
            "Live blocks of the top call sites by live bytes.",
        ),
    ] {
        o.family(name, "gauge", help);
        for ((function, caller, api), v) in &top {
            let value = if idx == 0 { v.0 } else { v.1 };
            let _ = writeln!(
                o.0,
                "{name}{{function=\"{}\",caller=\"{}\",api=\"{}\"}} {value}",
                escape(function),
                escape(caller),
                escape(api)
            );
        }
    }
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SessionInfo;
    use crate::server::Source;
    use crate::timeline::{GuardPoint, Tick, Timeline};

    fn metrics(timeline: Timeline) -> String {
        let info = SessionInfo {
            sample_rate: 256,
            ..SessionInfo::default()
        };
        let (shared, _) = Shared::new(Source::Recording { info, timeline }, "t".into(), 1, 10);
        render(&shared)
    }

    #[test]
    fn under_uprobe_sessions_the_live_heap_is_exported_as_an_estimate() {
        let mut tl = Timeline::default();
        let mut tick = Tick {
            t_ms: 1000,
            ..Tick::default()
        };
        tick.totals.allocs = 3;
        tick.totals.alloc_bytes = 300;
        tick.totals.untracked_allocs = 40;
        tl.push(tick);
        let text = metrics(tl);
        assert!(
            text.contains("\nheapscope_live_heap_estimated_bytes 0\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP heapscope_live_heap_estimated_bytes Live heap, estimated"),
            "{text}"
        );
        assert!(
            text.contains("\nheapscope_live_blocks_estimated 0\n"),
            "{text}"
        );
        // The tracked blocks alone never pass for the exact live heap.
        assert!(!text.contains("\nheapscope_live_heap_bytes "), "{text}");
        assert!(!text.contains("heapscope_live_blocks "), "{text}");
    }

    #[test]
    fn the_overhead_guard_shows_its_rate_estimate_and_budget() {
        let mut tl = Timeline::default();
        tl.push(Tick {
            t_ms: 1000,
            ..Tick::default()
        });
        let text = metrics(tl.clone());
        assert!(
            text.contains("\nheapscope_sample_rate_bytes 256\n"),
            "{text}"
        );
        assert!(!text.contains("heapscope_overhead_"), "{text}");
        tl.guard_window(GuardPoint {
            t_ms: 1000,
            budget_centi: 200,
            percent_centi: 3150,
            from: 256,
            rate: 1024,
            floor: false,
        });
        let text = metrics(tl);
        for want in [
            "\nheapscope_sample_rate_bytes 1024\n",
            "\nheapscope_overhead_estimated_percent 31.5\n",
            "\nheapscope_overhead_budget_percent 2\n",
            "# TYPE heapscope_overhead_budget_percent gauge",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
    }
}
