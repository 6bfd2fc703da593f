//! The report on a timeline: totals, top call sites, leak suspects and
//! findings — one function for the end of `attach` and for `heapscope report`
//! on its recording, so both say the same.

use std::io::Write;

use crate::analysis;
use crate::exactness::Exactness;
use crate::timeline::{ProfileMeta, Timeline, Window};
use crate::views::{self, Labels, ViewError};

/// What the report shows.
#[derive(Clone, Copy, Debug)]
pub struct ReportOptions {
    pub top: usize,
    pub window: Window,
    pub json: bool,
    pub labels: Labels,
}

/// Writes the report of `window` of `timeline`.
pub fn write(
    timeline: &Timeline,
    meta: &ProfileMeta,
    opts: &ReportOptions,
    out: &mut impl Write,
) -> Result<(), ViewError> {
    let profile = timeline.profile_for(opts.window, meta);
    let analysis = analysis::analyze(timeline, opts.window);
    if opts.json {
        return views::findings::write_findings_json(&profile, &analysis, timeline, opts.top, out);
    }
    let text = views::TextReportOptions {
        top: opts.top,
        labels: opts.labels,
    };
    views::text::write_report(&profile, &text, out)?;
    writeln!(out)?;
    write_sampling_note(Exactness::of(&profile), out)?;
    if let Some(g) = timeline.guard() {
        views::overhead::write_guard_log(g, out)?;
    }
    views::findings::write_suspects(&analysis.suspects, timeline, opts.top, out)?;
    writeln!(out)?;
    if let Some(m) = &analysis.mechanism {
        let e = Exactness::of(&profile);
        views::arenas::write_mechanism(m, profile.sampled(), e.lost, out)?;
        writeln!(out)?;
    }
    views::findings::write_findings_text(&analysis.findings, out)?;
    Ok(())
}

/// Says which numbers are estimates, and that nothing is exact once events
/// were lost.
fn write_sampling_note(e: Exactness, out: &mut impl Write) -> std::io::Result<()> {
    // Per-site numbers also miss stacks that could not be read; the totals
    // only miss what changes allocated − freed.
    let lost = if e.sample_rate == 0 {
        e.lost
    } else {
        e.lost_for_totals
    };
    if e.live_estimated() {
        writeln!(
            out,
            "sampling: one sample per {} allocated on average, with uprobe sessions: every \
             number but the counters is an estimate (the live heap too: {} unsampled \
             allocations were counted at entry only and their blocks not tracked; their \
             frees are among the frees of unknown pointers)",
            views::human_bytes(e.sample_rate),
            e.untracked
        )?;
        return writeln!(out);
    }
    match (e.sample_rate, lost) {
        (0, 0) => writeln!(out, "sampling: none (--exact); every number is exact")?,
        (0, n) => writeln!(
            out,
            "sampling: none (--exact); numbers miss {n} lost events (see lost:), otherwise exact"
        )?,
        (rate, 0) => writeln!(
            out,
            "sampling: one sample per {} allocated on average; per-site bytes and blocks \
             (and the age table) are unbiased estimates; the live heap, process totals and \
             counters are exact",
            views::human_bytes(rate)
        )?,
        (rate, n) => writeln!(
            out,
            "sampling: one sample per {} allocated on average; per-site bytes and blocks \
             (and the age table) are unbiased estimates; the live heap, process totals and \
             counters miss {n} lost events (see lost:)",
            views::human_bytes(rate)
        )?,
    }
    writeln!(out)
}
