//! Baseline vs window: per call site change of live bytes, as text, as
//! two-column folded stacks (`stack before after`, what inferno's and
//! flamegraph.pl's differential mode read) and as a differential flame graph.

use std::collections::BTreeMap;
use std::io::{self, Write};

use inferno::flamegraph::{self, Options};

use crate::profile::{Metric, Profile};

use super::callsite::call_site_text;
use super::{group_digits, human_bytes, merge_sites, Labels, SvgOptions, ViewError};

/// One call site's live bytes in the baseline and in the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffRow {
    /// Frame labels, root first (as in [`super::MergedSite::frames`]).
    pub frames: Vec<String>,
    /// The process, when the profiles have several (`frames[0]` names it).
    pub pid: Option<u32>,
    pub api: &'static str,
    /// The folded-format stack (frames then API, `;`-joined).
    pub stack: String,
    pub before: u64,
    pub after: u64,
}

impl DiffRow {
    /// `after − before`.
    pub fn delta(&self) -> i128 {
        i128::from(self.after) - i128::from(self.before)
    }
}

/// Every call site live in either profile, sorted by stack.
pub fn diff_rows(base: &Profile, window: &Profile) -> Vec<DiffRow> {
    let mut rows: BTreeMap<String, DiffRow> = BTreeMap::new();
    for (profile, is_base) in [(base, true), (window, false)] {
        for site in merge_sites(profile, Labels::default()) {
            let live = Metric::LiveBytes.of(&site.stats);
            if live == 0 {
                continue;
            }
            let stack = site.folded_stack();
            let row = rows.entry(stack.clone()).or_insert_with(|| DiffRow {
                frames: site.frames.clone(),
                pid: site.pid,
                api: site.api,
                stack,
                before: 0,
                after: 0,
            });
            if is_base {
                row.before = live;
            } else {
                row.after = live;
            }
        }
    }
    rows.into_values().collect()
}

/// `+1.5 KiB` / `-512 B` / `0 B`.
fn signed_human(delta: i128) -> String {
    let sign = match delta.signum() {
        1 => "+",
        -1 => "-",
        _ => "",
    };
    format!(
        "{sign}{}",
        human_bytes(u64::try_from(delta.unsigned_abs()).unwrap_or(u64::MAX))
    )
}

/// A table of the `top` call sites with the largest change of live bytes
/// (growth and shrink alike, largest magnitude first).
pub fn write_diff_text(
    base: &Profile,
    window: &Profile,
    top: usize,
    out: &mut impl Write,
) -> io::Result<()> {
    // The exact live heap at each window's end; call sites below may be
    // estimates. With uprobe sessions there is no exact figure: the sites'
    // estimates, labelled so.
    let estimated = crate::exactness::Exactness::of(base).live_estimated()
        || crate::exactness::Exactness::of(window).live_estimated();
    let live = |p: &Profile| {
        if estimated {
            p.sites_live_bytes()
        } else {
            p.live_heap.bytes
        }
    };
    let (b, w) = (live(base), live(window));
    let d = i128::from(w) - i128::from(b);
    let sign = if d < 0 { "-" } else { "+" };
    let exact = group_digits(u64::try_from(d.unsigned_abs()).unwrap_or(u64::MAX));
    let (tilde, note) = if estimated {
        ("~", "; estimates from the samples: uprobe sessions")
    } else {
        ("", "")
    };
    writeln!(
        out,
        "live heap: {tilde}{} in the baseline, {tilde}{} in the window ({}, {sign}{exact} B{note})",
        human_bytes(b),
        human_bytes(w),
        signed_human(d),
    )?;
    let mut rows: Vec<DiffRow> = diff_rows(base, window)
        .into_iter()
        .filter(|r| r.delta() != 0)
        .collect();
    if rows.is_empty() {
        writeln!(out, "\nno call site's live bytes changed")?;
        return Ok(());
    }
    rows.sort_by(|x, y| {
        y.delta()
            .unsigned_abs()
            .cmp(&x.delta().unsigned_abs())
            .then_with(|| y.delta().cmp(&x.delta()))
            .then_with(|| x.stack.cmp(&y.stack))
    });
    let api_width = rows.iter().map(|r| r.api.len()).max().unwrap_or(3).max(3);
    writeln!(out, "\ncall sites by change of live bytes:")?;
    writeln!(
        out,
        "{:>12}  {:>12}  {:>12}  {:<api_width$}  CALL SITE",
        "CHANGE", "BASELINE", "WINDOW", "API"
    )?;
    for r in rows.iter().take(top) {
        writeln!(
            out,
            "{:>12}  {:>12}  {:>12}  {:<api_width$}  {}",
            format!("{:+}", r.delta()),
            r.before,
            r.after,
            r.api,
            match r.pid {
                Some(pid) => format!(
                    "[pid {pid}] {}",
                    call_site_text(r.frames.get(1..).unwrap_or_default())
                ),
                None => call_site_text(&r.frames),
            }
        )?;
    }
    if rows.len() > top {
        writeln!(
            out,
            "({} more changed call sites not shown)",
            rows.len() - top
        )?;
    }
    Ok(())
}

/// Two-column folded lines: `stack before after`, sorted by stack, sites
/// with nothing live in either profile omitted.
pub fn write_diff_folded(base: &Profile, window: &Profile, out: &mut impl Write) -> io::Result<()> {
    for r in diff_rows(base, window) {
        writeln!(out, "{} {} {}", r.stack, r.before, r.after)?;
    }
    Ok(())
}

/// A differential flame graph (inferno): frame widths are the window's live
/// bytes, red where they grew since the baseline, blue where they shrank.
/// Stacks that are gone in the window have no width (the text and folded
/// views list them). An empty window gives a valid "no samples" SVG.
pub fn write_diff_svg(
    base: &Profile,
    window: &Profile,
    title: &str,
    out: &mut impl Write,
) -> Result<(), ViewError> {
    let rows = diff_rows(base, window);
    if rows.iter().all(|r| r.after == 0) {
        let opts = SvgOptions {
            metric: Metric::LiveBytes,
            title: title.to_string(),
            ..Default::default()
        };
        return super::write_svg(&Profile::default(), &opts, out);
    }
    let lines: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {} {}", r.stack, r.before, r.after))
        .collect();
    let mut opt = Options::default();
    opt.title = title.to_string();
    opt.count_name = "bytes".to_string();
    // Reproducible output (golden tests); differential colors are by delta anyway.
    opt.deterministic = true;
    flamegraph::from_lines(&mut opt, lines.iter().map(String::as_str), &mut *out).map_err(
        |source| ViewError::Flamegraph {
            title: title.to_string(),
            source,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Site, SiteStats};
    use crate::timeline::testutil::frame;
    use crate::views::testdata::{check_golden, sample_profile};

    /// The sample profile after some growth, some shrink, a new and a gone site.
    fn later() -> Profile {
        let mut p = sample_profile();
        for s in &mut p.sites {
            let leaf = s.frames.last().map(|f| f.label()).unwrap_or_default();
            match leaf.as_str() {
                "leak_malloc" => s.stats.live_bytes *= 3,
                "[libplugin.so+0x1234]" => s.stats.live_bytes = 0,
                l if l.starts_with("std::vector") => s.stats.live_bytes /= 2,
                _ => {}
            }
        }
        p.sites.push(Site {
            pid: 0,
            frames: vec![frame("main"), frame("new_cache")].into(),
            api: "calloc",
            stats: SiteStats {
                live_bytes: 4096,
                live_count: 1,
                alloc_bytes: 4096,
                alloc_count: 1,
                ..Default::default()
            },
        });
        p.live_heap.bytes = p.sites_live_bytes();
        p
    }

    fn render<E: std::fmt::Debug>(f: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> String {
        let mut out = Vec::new();
        f(&mut out).expect("render");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn rows_pair_sites_across_profiles() {
        let rows = diff_rows(&sample_profile(), &later());
        let get = |needle: &str| {
            rows.iter()
                .find(|r| r.stack.contains(needle))
                .map(|r| (r.before, r.after))
        };
        assert_eq!(get("leak_malloc;malloc"), Some((10_000, 30_000)));
        assert_eq!(get("libplugin"), Some((512, 0)));
        assert_eq!(get("new_cache;calloc"), Some((0, 4096)));
        assert_eq!(get("transient"), None, "never live");
        assert!(rows.windows(2).all(|w| w[0].stack < w[1].stack));
    }

    #[test]
    fn text_golden() {
        let text = render(|o| write_diff_text(&sample_profile(), &later(), 3, o));
        assert!(text.contains("+20000"), "{text}");
        check_golden("diff_top3.txt", &text);
        let same = render(|o| write_diff_text(&sample_profile(), &sample_profile(), 3, o));
        assert!(same.contains("no call site's live bytes changed"), "{same}");
    }

    #[test]
    fn folded_golden_is_two_column() {
        let text = render(|o| write_diff_folded(&sample_profile(), &later(), o));
        for line in text.lines() {
            let mut cols = line.rsplitn(3, ' ');
            let after: u64 = cols.next().and_then(|c| c.parse().ok()).expect("after");
            let before: u64 = cols.next().and_then(|c| c.parse().ok()).expect("before");
            assert!(before > 0 || after > 0, "{line}");
        }
        assert!(text.contains("main;run_sites;leak_malloc;malloc 10000 30000\n"));
        check_golden("diff_folded.txt", &text);
    }

    #[test]
    fn svg_colors_growth_red_and_shrink_blue() {
        let svg = render(|o| write_diff_svg(&sample_profile(), &later(), "growth", o));
        assert!(svg.contains("<svg") && svg.contains("growth"));
        assert!(svg.contains("leak_malloc") && svg.contains("new_cache"));
        // inferno's differential palette: red hues (r=255) for growth, blue
        // hues (b=255) for shrink.
        assert!(svg.contains("rgb(255,"), "no red frame");
        assert!(svg.contains(",255)"), "no blue frame");
        check_golden("diff.svg", &svg);
        let empty = render(|o| write_diff_svg(&sample_profile(), &Profile::default(), "t", o));
        assert!(empty.contains("no samples"));
    }
}
