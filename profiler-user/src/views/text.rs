//! The human-readable text report: totals, top call sites, counters and losses.
//!
//! The `counters:` and `lost:` sections are `name: N` lines with plain
//! integers so scripts and end-to-end tests can parse them.

use std::io::{self, Write};

use profiler_common::counters::Section as CounterSection;

use crate::exactness::Exactness;
use crate::profile::{Profile, Totals};

use super::callsite::call_site_text;
use super::{group_digits, human_bytes, merge_sites, Labels, MergedSite};

const LOST_WARNING: &str =
    "WARNING: some events were lost; numbers above are incomplete (see lost:)";

/// `1.2 MiB (1,258,291 B)`.
fn bytes_both(bytes: u64) -> String {
    format!("{} ({} B)", human_bytes(bytes), group_digits(bytes))
}

/// `label: value` lines of one report section.
type Section = Vec<(&'static str, u64)>;

/// Counter lines as (label, value), counted and lost, from the counter table.
fn counter_sections(t: &Totals) -> (Section, Section) {
    let of = |section: CounterSection| -> Section {
        t.entries()
            .filter(|(d, _)| d.section == section)
            .map(|(d, v)| (d.label, v))
            .collect()
    };
    (of(CounterSection::Counted), of(CounterSection::Lost))
}

/// What the text report shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextReportOptions {
    /// At most this many call sites, by live bytes.
    pub top: usize,
    /// How frames are labelled (`--lines`).
    pub labels: Labels,
}

/// Writes the text report, listing at most `opts.top` call sites by live bytes.
pub fn write_report(
    profile: &Profile,
    opts: &TextReportOptions,
    out: &mut impl Write,
) -> io::Result<()> {
    let (top, labels) = (opts.top, opts.labels);
    let t = &profile.totals;
    writeln!(
        out,
        "heapscope: pid {} ({}), {:.1}s",
        profile.pid, profile.comm, profile.duration_secs
    )?;
    if !profile.allocator.is_empty() {
        writeln!(out, "{}", profile.allocator)?;
    }
    for note in &profile.allocator_notes {
        writeln!(out, "{note}")?;
    }
    // The headline is exact whatever the sampling: allocated − freed since
    // attach, over every allocation — unless events were lost.
    let e = Exactness::of(profile);
    let lost_events = e.lost_for_totals;
    if e.live_estimated() {
        // Unsampled blocks were never tracked: the sites' estimate is the
        // only live figure there is.
        writeln!(
            out,
            "live heap: ~{} in ~{} blocks (estimate from the samples: uprobe sessions \
             skipped the returns of {} unsampled allocations, whose blocks are not tracked)",
            bytes_both(profile.sites_live_bytes()),
            group_digits(profile.sites_live_count()),
            group_digits(e.untracked)
        )?;
    } else {
        let how = if lost_events == 0 {
            "exact: allocated - freed since attach".to_string()
        } else {
            format!(
                "allocated - freed since attach; not exact: {} events lost, see lost:",
                group_digits(lost_events)
            )
        };
        writeln!(
            out,
            "live heap: {} in {} blocks ({how})",
            bytes_both(profile.live_heap.bytes),
            group_digits(profile.live_heap.blocks)
        )?;
    }
    if e.live_estimated() {
        // Every call is counted, at its return or (unsampled) at its entry:
        // allocations stay exact; the bytes freed are known for tracked
        // blocks only.
        writeln!(
            out,
            "allocated: {} in {} calls (exact: tracked + counted at entry); freed: {} calls, \
             {} of them of tracked blocks ({})",
            bytes_both(t.alloc_bytes.saturating_add(t.untracked_bytes)),
            group_digits(t.allocs.saturating_add(t.untracked_allocs)),
            group_digits(t.frees.saturating_add(t.frees_unknown)),
            group_digits(t.frees),
            bytes_both(t.free_bytes)
        )?;
    } else {
        writeln!(
            out,
            "allocated: {} in {} calls; freed: {} in {} calls",
            bytes_both(t.alloc_bytes),
            group_digits(t.allocs),
            bytes_both(t.free_bytes),
            group_digits(t.frees)
        )?;
    }
    writeln!(out)?;
    if profile.several_processes() {
        write_processes(profile, out)?;
        writeln!(out)?;
    }
    write_top_sites(profile, top, labels, out)?;

    let (counters, lost) = counter_sections(t);
    writeln!(out)?;
    writeln!(out, "counters:")?;
    for (name, value) in &counters {
        writeln!(out, "{name}: {value}")?;
    }
    writeln!(out)?;
    writeln!(out, "lost:")?;
    for (name, value) in &lost {
        writeln!(out, "{name}: {value}")?;
    }
    if lost.iter().any(|&(_, v)| v > 0) {
        writeln!(out)?;
        writeln!(out, "{LOST_WARNING}")?;
    }
    Ok(())
}

/// Each process's sums of call sites, with a total row.
fn write_processes(profile: &Profile, out: &mut impl Write) -> io::Result<()> {
    let shares = profile.by_process();
    let tilde = if profile.sampled() { "~" } else { "" };
    writeln!(
        out,
        "per process (sums of its call sites{}):",
        if profile.sampled() {
            "; ~: sampled estimates"
        } else {
            ""
        }
    )?;
    let header = [
        "PID".to_string(),
        format!("{tilde}LIVE BYTES"),
        format!("{tilde}BLOCKS"),
        format!("{tilde}ALLOC BYTES"),
        format!("{tilde}ALLOCS"),
        "SITES".to_string(),
        "PROCESS".to_string(),
    ];
    let row = |pid: String, s: &crate::profile::SiteStats, sites: u64, name: String| {
        [
            pid,
            s.live_bytes.to_string(),
            s.live_count.to_string(),
            s.alloc_bytes.to_string(),
            s.alloc_count.to_string(),
            sites.to_string(),
            name,
        ]
    };
    let mut total = crate::profile::SiteStats::default();
    let mut total_sites = 0;
    let mut rows: Vec<[String; 7]> = Vec::with_capacity(shares.len() + 1);
    for sh in &shares {
        let p = &sh.process;
        let mut name = p.comm.clone();
        if p.parent != 0 {
            name.push_str(&format!(" (child of {})", p.parent));
        }
        if !p.cmdline.is_empty() {
            name.push_str(&format!(": {}", p.cmdline));
        }
        rows.push(row(p.pid.to_string(), &sh.stats, sh.sites, name));
        total.live_bytes += sh.stats.live_bytes;
        total.live_count += sh.stats.live_count;
        total.alloc_bytes += sh.stats.alloc_bytes;
        total.alloc_count += sh.stats.alloc_count;
        total_sites += sh.sites;
    }
    rows.push(row(
        "total".to_string(),
        &total,
        total_sites,
        format!("{} processes", shares.len()),
    ));
    let mut widths = [0usize; 7];
    for r in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        writeln!(
            out,
            "{:>w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:>w4$}  {:>w5$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            r[6],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
            w5 = widths[5],
        )?;
    }
    Ok(())
}

fn write_top_sites(
    profile: &Profile,
    top: usize,
    labels: Labels,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut sites: Vec<MergedSite> = merge_sites(profile, labels)
        .into_iter()
        .filter(|s| s.stats.live_bytes > 0)
        .collect();
    // merge_sites is sorted by stack text, and the sort is stable, so ties
    // in live bytes stay in stack order.
    sites.sort_by_key(|s| std::cmp::Reverse(s.stats.live_bytes));
    let total = sites.len();
    sites.truncate(top);

    if profile.sampled() {
        writeln!(
            out,
            "top call sites by live bytes (~: sampled estimates; all sites together ~{} in ~{} blocks):",
            bytes_both(profile.sites_live_bytes()),
            group_digits(profile.sites_live_count())
        )?;
    } else if !Exactness::of(profile).sites_exact() {
        // Lost records: the sites hold what was seen, never more than the
        // live heap (see SampleTable::reconcile), but not all of it.
        writeln!(
            out,
            "top call sites by live bytes (not exact: {} events lost, see lost:; \
             all sites together {} in {} blocks):",
            group_digits(Exactness::of(profile).lost),
            bytes_both(profile.sites_live_bytes()),
            group_digits(profile.sites_live_count())
        )?;
    } else {
        writeln!(out, "top call sites by live bytes:")?;
    }
    if sites.is_empty() {
        writeln!(out, "(no live allocations)")?;
        return Ok(());
    }
    let header = if profile.sampled() {
        [
            "~LIVE BYTES",
            "~BLOCKS",
            "~ALLOC BYTES",
            "~ALLOCS",
            "API",
            "CALL SITE",
        ]
    } else {
        [
            "LIVE BYTES",
            "BLOCKS",
            "ALLOC BYTES",
            "ALLOCS",
            "API",
            "CALL SITE",
        ]
    };
    let rows: Vec<[String; 6]> = sites
        .iter()
        .map(|s| {
            [
                s.stats.live_bytes.to_string(),
                s.stats.live_count.to_string(),
                s.stats.alloc_bytes.to_string(),
                s.stats.alloc_count.to_string(),
                s.api.to_string(),
                match s.pid {
                    Some(pid) => format!("[pid {pid}] {}", call_site_text(s.program_frames())),
                    None => call_site_text(s.program_frames()),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        // Numbers right-aligned, text left-aligned; the last column unpadded
        // so no line ends in spaces.
        format!(
            "{:>w0$}  {:>w1$}  {:>w2$}  {:>w3$}  {:<w4$}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        )
    };
    writeln!(out, "{}", line(header))?;
    for row in &rows {
        writeln!(out, "{}", line(row.each_ref().map(String::as_str)))?;
    }
    if total > rows.len() {
        writeln!(
            out,
            "({} more call sites with live bytes not shown)",
            total - rows.len()
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::testdata::{check_golden, sample_profile, sample_profile_with_lines};

    fn render(profile: &Profile, top: usize) -> String {
        let mut out = Vec::new();
        let opts = TextReportOptions {
            top,
            ..Default::default()
        };
        write_report(profile, &opts, &mut out).expect("write to vec");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn several_processes_are_broken_down_with_a_total() {
        use crate::profile::ProcessInfo;
        let mut p = sample_profile();
        let mut child = p.sites[0].clone();
        child.pid = 4300;
        child.stats.live_bytes = 1234;
        p.sites.iter_mut().for_each(|s| s.pid = p.pid);
        p.sites.push(child);
        p.processes = vec![
            ProcessInfo {
                pid: p.pid,
                comm: "leaky".into(),
                cmdline: "./leaky -n 3".into(),
                ..ProcessInfo::default()
            },
            ProcessInfo {
                pid: 4300,
                parent: p.pid,
                comm: "leaky".into(),
                ..ProcessInfo::default()
            },
        ];
        let text = render(&p, 20);
        let section = text
            .split("per process")
            .nth(1)
            .expect("a per-process section");
        let rows: Vec<Vec<&str>> = section
            .lines()
            .skip(2)
            .take(3)
            .map(|l| l.split_whitespace().collect())
            .collect();
        let parent_live: u64 = p.sites[..p.sites.len() - 1]
            .iter()
            .map(|s| s.stats.live_bytes)
            .sum();
        assert_eq!(
            rows[0][..2],
            ["4242", &parent_live.to_string()[..]],
            "{text}"
        );
        assert!(section.contains("leaky: ./leaky -n 3"), "{text}");
        assert_eq!(rows[1][..2], ["4300", "1234"], "{text}");
        assert!(section.contains("(child of 4242)"), "{text}");
        assert_eq!(rows[2][0], "total");
        assert_eq!(rows[2][1], (parent_live + 1234).to_string());
        assert!(
            text.contains("[pid 4300] "),
            "top sites name the process\n{text}"
        );
    }

    #[test]
    fn golden_report() {
        check_golden("report.txt", &render(&sample_profile(), 20));
    }

    #[test]
    fn golden_report_top_2() {
        check_golden("report_top2.txt", &render(&sample_profile(), 2));
    }

    #[test]
    fn golden_report_lines() {
        let mut out = Vec::new();
        let opts = TextReportOptions {
            top: 20,
            labels: Labels { lines: true },
        };
        write_report(&sample_profile_with_lines(), &opts, &mut out).expect("write to vec");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("map_anon (leaks.c:78, inlined) <- leak_mmap (leaks.c:82) <- main"));
        check_golden("report_lines.txt", &text);
    }

    #[test]
    fn golden_empty_report() {
        check_golden("report_empty.txt", &render(&Profile::default(), 20));
    }

    #[test]
    fn counters_are_parsable() {
        let text = render(&sample_profile(), 20);
        let value = |name: &str| -> u64 {
            let prefix = format!("{name}: ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no counter {name}"))
        };
        assert_eq!(value("frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)"), 3);
        assert_eq!(value("allocations seen"), 110);
        assert_eq!(value("stack capture failed"), 2);
        assert_eq!(value("unmatched returns"), 0);
        assert!(text.trim_end().ends_with(LOST_WARNING));
        assert!(text.contains(
            "live heap: 2.2 MiB (2,262,700 B) in 15 blocks (exact: allocated - freed since attach)"
        ));
        assert!(
            !text.contains("transient"),
            "zero-live sites are not listed"
        );
    }

    #[test]
    fn the_headline_is_exact_only_when_nothing_was_lost() {
        let mut p = sample_profile();
        p.totals.live_map_full = 5;
        p.totals.ringbuf_lost = 2;
        let text = render(&p, 20);
        assert!(
            text.contains(
                "in 15 blocks (allocated - freed since attach; not exact: 7 events lost, see lost:)"
            ),
            "{text}"
        );
        assert!(!text.contains("(exact"), "{text}");
        assert_eq!(Exactness::of(&p).lost, 9);
    }

    #[test]
    fn sampled_sites_are_marked_as_estimates() {
        let mut p = sample_profile();
        let exact = render(&p, 20);
        assert!(!exact.contains('~'), "{exact}");
        p.sample_rate = 512 * 1024;
        let text = render(&p, 20);
        let lines: Vec<&str> = text.lines().collect();
        // The headline stays the exact figure; the table is marked.
        assert_eq!(lines[1], exact.lines().nth(1).unwrap_or_default());
        assert!(text.contains("all sites together ~2.2 MiB (2,317,479 B) in ~15 blocks"));
        assert!(text.contains("~LIVE BYTES  ~BLOCKS"), "{text}");
    }

    #[test]
    fn allocator_line_and_what_is_unseen_come_first() {
        let mut p = sample_profile();
        p.allocator_notes =
            vec!["WARNING: libbump.so defines malloc but is no allocator heapscope knows".into()];
        let text = render(&p, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "allocator: glibc 2.36, the C library's; 22 entry points"
        );
        assert_eq!(
            lines[2],
            "WARNING: libbump.so defines malloc but is no allocator heapscope knows"
        );
        assert!(lines[3].starts_with("live heap: "));
    }

    #[test]
    fn no_warning_without_losses() {
        let mut p = sample_profile();
        p.totals.stack_failed = 0;
        let text = render(&p, 20);
        assert!(!text.contains("WARNING"));
    }

    #[test]
    fn call_site_is_leaf_first_and_truncated() {
        let text = render(&sample_profile(), 20);
        assert!(text.contains("deep4 <- deep3 <- deep2 <- deep1 <- ..."));
        assert!(text.contains("leak_malloc <- run_sites <- main\n"));
        assert!(text.contains("[unknown stack]\n"));
    }
}
