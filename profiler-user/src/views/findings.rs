//! Leak suspects and findings: the text sections of `heapscope report` and
//! the JSON document of `report --json`.

use std::io::{self, Write};

use serde_json::Value;

use crate::analysis::{
    Analysis, Finding, LeakFinding, Mechanism, RetentionFinding, Suspect, LEAK_CONFIDENCE,
};
use crate::profile::{Frame, Profile};
use crate::timeline::Timeline;

use super::callsite::call_site_text;
use super::{frame_text, human_bytes, Labels, ViewError};

fn labels(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| frame_text(f, Labels::default()))
        .collect()
}

/// `+7.2 MiB/h`, `-1.0 KiB/h`.
fn rate(bytes_per_hour: f64) -> String {
    let sign = if bytes_per_hour < 0.0 { "-" } else { "+" };
    // Saturating float → int conversion: a rate beyond 16 EiB/h shows as that.
    format!(
        "{sign}{}/h",
        human_bytes(bytes_per_hour.abs().round() as u64)
    )
}

/// `-1.5 KiB` for negative gaps.
fn signed_bytes(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    format!("{sign}{}", human_bytes(v.unsigned_abs()))
}

/// The ranked leak suspects, `top` of them, as a table.
pub fn write_suspects(
    suspects: &[Suspect],
    timeline: &Timeline,
    top: usize,
    out: &mut impl Write,
) -> io::Result<()> {
    if suspects.is_empty() {
        writeln!(
            out,
            "leak suspects: none (no call site's live bytes grew steadily)"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "leak suspects by growth of live bytes (confidence >= {LEAK_CONFIDENCE:.2}: a leak):"
    )?;
    let site = |s: &Suspect| {
        timeline
            .site(s.site)
            .map_or(("?", Vec::new()), |i| (i.api, labels(&i.frames)))
    };
    let api_width = suspects
        .iter()
        .take(top)
        .map(|s| site(s).0.len())
        .max()
        .unwrap_or(3)
        .max(3);
    writeln!(
        out,
        "{:>12}  {:>10}  {:>5}  {:>12}  {:<api_width$}  CALL SITE",
        "GROWTH", "CONFIDENCE", "ROSE", "LIVE AT END", "API"
    )?;
    let several = timeline.processes().len() > 1;
    for s in suspects.iter().take(top) {
        let (api, frames) = site(s);
        let pid = match timeline.site(s.site) {
            Some(i) if several => format!("[pid {}] ", i.pid),
            _ => String::new(),
        };
        writeln!(
            out,
            "{:>12}  {:>10.2}  {:>5}  {:>12}  {:<api_width$}  {pid}{}",
            rate(s.slope_bytes_per_hour),
            s.confidence,
            format!("{}/{}", s.rises, s.changes),
            human_bytes(s.live_bytes_end),
            api,
            call_site_text(&frames)
        )?;
    }
    if suspects.len() > top {
        writeln!(out, "({} more suspects not shown)", suspects.len() - top)?;
    }
    Ok(())
}

fn leak_text(l: &LeakFinding) -> String {
    format!(
        "leak: {} ({}) holds {} more every hour (confidence {:.2}, rose at {} of its {} changes); \
live {} -> {} in the window",
        call_site_text(&labels(&l.frames)),
        l.api,
        human_bytes(l.slope_bytes_per_hour.max(0.0).round() as u64),
        l.confidence,
        l.rises,
        l.changes,
        human_bytes(l.live_bytes_start),
        human_bytes(l.live_bytes_end),
    )
}

fn retention_text(r: &RetentionFinding) -> String {
    format!(
        "allocator retention, not a leak: RSS (anon) went {} -> {} while the live heap \
went only {} -> {}; the gap (RSS anon - live heap) went {} -> {} ({}, live heap {}). \
[heap] + glibc arena heaps: {} -> {} ({} arena heaps{}). The allocator keeps memory \
the program freed (retention or fragmentation).",
        human_bytes(r.rss_anon_start),
        human_bytes(r.rss_anon_end),
        human_bytes(r.live_heap_start),
        human_bytes(r.live_heap_end),
        signed_bytes(r.gap_start),
        signed_bytes(r.gap_end),
        rate(r.gap_growth_bytes_per_hour),
        rate(r.live_growth_bytes_per_hour),
        human_bytes(r.heap_mappings_start),
        human_bytes(r.heap_mappings_end),
        r.arena_heaps,
        if r.allocator_mapped > 0 {
            format!(
                "; mapped by the allocator: {}",
                human_bytes(r.allocator_mapped)
            )
        } else {
            String::new()
        },
    ) + &footprint_text(&r.mem_end, r.live_heap_end)
}

/// ` glibc holds ...: main heap X resident, N arenas Y, mmapped chunks Z;
/// gap to the live heap W.` (empty when the split was not read).
fn footprint_text(m: &crate::timeline::MemSample, live: u64) -> String {
    let fp = m.footprint_resident();
    if fp == 0 {
        return String::new();
    }
    format!(
        " glibc's resident footprint at the end: {} (main heap {}, {} arenas {}, {} mmapped chunks {}), {} more than the live heap.",
        human_bytes(fp),
        human_bytes(m.main_heap_resident),
        m.arenas,
        human_bytes(m.arena_resident),
        m.mmapped_chunks,
        human_bytes(m.mmapped_resident),
        signed_bytes(i64::try_from(fp).unwrap_or(i64::MAX) - i64::try_from(live).unwrap_or(i64::MAX)),
    )
}

fn peak_text(p: &crate::analysis::PeakFinding) -> String {
    format!(
        "memory not returned after a peak: the live heap fell from {} (at {:.1}s) to {} while RSS (anon) stayed at {} (peak {}); the allocator keeps {} the program freed.",
        human_bytes(p.live_peak),
        p.peak_ms as f64 / 1000.0,
        human_bytes(p.live_end),
        human_bytes(p.rss_anon_end),
        human_bytes(p.rss_anon_peak),
        human_bytes(p.retained()),
    ) + &footprint_text(&p.mem_end, p.live_end)
}

/// What the arenas retain and which sites free across threads, in a sentence.
fn mechanism_text(m: Option<&Mechanism>) -> String {
    let Some(m) = m else {
        return String::new();
    };
    let arenas: Vec<_> = m.arena_rows().collect();
    let mut s = String::new();
    if !arenas.is_empty() {
        let retained: u64 = arenas.iter().map(|a| a.retained()).sum();
        let per: Vec<String> = arenas
            .iter()
            .map(|a| human_bytes(a.retained()))
            .take(8)
            .collect();
        s += &format!(
            " {} arenas retain {} (each: {}{}).",
            arenas.len(),
            human_bytes(retained),
            per.join(", "),
            if arenas.len() > 8 { ", ..." } else { "" }
        );
    }
    if !m.cross_sites.is_empty() {
        let sites: Vec<String> = m
            .cross_sites
            .iter()
            .take(3)
            .map(|c| {
                format!(
                    "{} ({} in {} blocks)",
                    super::arenas::site_label(&c.frames, c.api),
                    human_bytes(c.bytes),
                    c.count
                )
            })
            .collect();
        let into = if m.arenas_compared() {
            ", into arenas the freeing threads do not allocate from"
        } else {
            ""
        };
        s += &format!(" Blocks freed across threads{into}: {}.", sites.join("; "));
    }
    s
}

/// The measured remedies first, then the general ones.
fn write_remedies(
    m: Option<&Mechanism>,
    general: &[&'static str],
    out: &mut impl Write,
) -> io::Result<()> {
    writeln!(out, "  remedies:")?;
    let measured = m.map(|m| m.remedies.as_slice()).unwrap_or_default();
    for remedy in measured {
        writeln!(out, "  - {}", super::arenas::remedy_text(remedy))?;
    }
    // A general remedy a measured one already gives, with numbers, is left out.
    let covered = |g: &str| measured.iter().any(|r| g.contains(r.key()));
    for remedy in general.iter().filter(|g| !covered(g)) {
        writeln!(out, "  - {remedy}")?;
    }
    Ok(())
}

/// The findings as `- ...` paragraphs, with remedies for retention.
pub fn write_findings_text(findings: &[Finding], out: &mut impl Write) -> io::Result<()> {
    if findings.is_empty() {
        writeln!(out, "findings: none (no leak, no allocator retention)")?;
        return Ok(());
    }
    writeln!(out, "findings:")?;
    for f in findings {
        match f {
            Finding::Leak(l) => writeln!(out, "- {}", leak_text(l))?,
            Finding::AllocatorRetention(r) => {
                writeln!(
                    out,
                    "- {}{}",
                    retention_text(r),
                    mechanism_text(r.mechanism.as_ref())
                )?;
                write_remedies(r.mechanism.as_ref(), &r.remedies, out)?;
            }
            Finding::RetainedAfterPeak(p) => {
                writeln!(
                    out,
                    "- {}{}",
                    peak_text(p),
                    mechanism_text(p.mechanism.as_ref())
                )?;
                write_remedies(p.mechanism.as_ref(), &p.remedies, out)?;
            }
        }
    }
    Ok(())
}

/// The JSON document of `report --json` ([`crate::api::ReportDoc`], the
/// same document as `/api/v1/findings`). Keys are sorted, so the output is
/// deterministic.
pub fn findings_json(
    profile: &Profile,
    analysis: &Analysis,
    timeline: &Timeline,
    top: usize,
) -> Value {
    // A struct of strings and numbers always converts; Null is unreachable.
    serde_json::to_value(crate::api::report_doc(profile, analysis, timeline, top))
        .unwrap_or(Value::Null)
}

/// Writes [`findings_json`] pretty-printed, with a final newline.
pub fn write_findings_json(
    profile: &Profile,
    analysis: &Analysis,
    timeline: &Timeline,
    top: usize,
    out: &mut impl Write,
) -> Result<(), ViewError> {
    let doc = findings_json(profile, analysis, timeline, top);
    serde_json::to_writer_pretty(&mut *out, &doc).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::analyze;
    use crate::timeline::testutil::timeline_with_mem;
    use crate::timeline::{MemSample, ProfileMeta, Window};
    use crate::views::testdata::check_golden;
    use serde_json::json;

    const MIB: u64 = 1 << 20;

    /// A leaking site, a stable one, and RSS rising far faster than the leak.
    fn scenario() -> (Timeline, Profile, Analysis) {
        let leak = |i: usize| 2_000 * i as u64;
        let stable = |_: usize| 64 * 1024;
        let tl = timeline_with_mem(
            60,
            &[("stable_pool", &stable), ("leak_site", &leak)],
            &|i, live| {
                Some(MemSample {
                    rss_anon: 40 * MIB + live + i as u64 * MIB,
                    rss_file: 8 * MIB,
                    rss_shmem: 0,
                    heap_mappings: 30 * MIB + i as u64 * MIB,
                    arena_heaps: 4,
                    ..MemSample::default()
                })
            },
        );
        let meta = ProfileMeta {
            pid: 77,
            comm: "server".into(),
            ..ProfileMeta::default()
        };
        let profile = tl.profile_for(Window::ALL, &meta);
        let analysis = analyze(&tl, Window::ALL);
        (tl, profile, analysis)
    }

    fn text(f: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).expect("render");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn text_golden() {
        let (tl, _, a) = scenario();
        let mut s = text(|o| write_suspects(&a.suspects, &tl, 5, o));
        s += &text(|o| write_findings_text(&a.findings, o));
        assert!(
            s.contains("leak: leak_site <- handle_request <- main (malloc)"),
            "{s}"
        );
        assert!(s.contains("allocator retention, not a leak"), "{s}");
        assert!(s.contains("MALLOC_ARENA_MAX"), "{s}");
        check_golden("findings.txt", &s);
    }

    #[test]
    fn empty_sections_say_none() {
        let tl = Timeline::default();
        assert!(text(|o| write_suspects(&[], &tl, 5, o)).contains("none"));
        assert!(text(|o| write_findings_text(&[], o)).contains("none"));
    }

    #[test]
    fn json_names_kinds_and_frames() {
        let (tl, profile, a) = scenario();
        let mut out = Vec::new();
        write_findings_json(&profile, &a, &tl, 10, &mut out).expect("json");
        let doc: Value = serde_json::from_slice(&out).expect("valid JSON");
        let findings = doc["findings"].as_array().expect("findings array");
        let kinds: Vec<&str> = findings.iter().filter_map(|f| f["kind"].as_str()).collect();
        assert_eq!(kinds, vec!["leak", "allocator-retention"]);
        assert_eq!(
            findings[0]["frames"],
            json!(["main", "handle_request", "leak_site"])
        );
        assert_eq!(findings[0]["live_bytes_end"], json!(2_000 * 59));
        assert_eq!(findings[1]["arena_heaps"], json!(4));
        assert_eq!(doc["pid"], json!(77));
        assert_eq!(doc["top_sites"][0]["frames"][2], json!("leak_site"));
        check_golden("findings.json", &String::from_utf8(out).expect("utf-8"));
    }
}
