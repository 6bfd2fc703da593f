//! Age of outstanding allocations: how long the live blocks have been live.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use crate::analysis::age::{AgeBuckets, AgeHistogram, BUCKET_LABELS};
use crate::timeline::{SiteId, Timeline};
use crate::views::{human_bytes, Labels};

fn row(label: &str, b: &AgeBuckets, out: &mut impl Write) -> io::Result<()> {
    let cells: Vec<String> = b
        .bytes
        .iter()
        .zip(b.counts)
        .map(|(bytes, n)| format!("{:>10} {:>6}", human_bytes(*bytes), n))
        .collect();
    writeln!(out, "{}  {label}", cells.join(" "))
}

/// The histogram overall and for the `top` sites with the most bytes.
pub fn write_age(
    hist: &AgeHistogram,
    timeline: &Timeline,
    top: usize,
    out: &mut impl Write,
) -> io::Result<()> {
    writeln!(
        out,
        "age of outstanding allocations, bytes and blocks per age (weighted like the call sites):"
    )?;
    let header: Vec<String> = BUCKET_LABELS.iter().map(|l| format!("{l:>17}")).collect();
    writeln!(out, "{}", header.join(" "))?;
    row("all call sites", &hist.total, out)?;
    let mut sites: Vec<_> = hist.per_site.iter().collect();
    sites.sort_by_key(|(_, b)| std::cmp::Reverse(b.bytes.iter().sum::<u64>()));
    for (id, b) in sites.into_iter().take(top) {
        row(&site_name(timeline, *id), b, out)?;
    }
    Ok(())
}

fn site_name(timeline: &Timeline, id: SiteId) -> String {
    timeline
        .site(id)
        .and_then(|s| {
            s.frames
                .last()
                .map(|f| format!("{} ({})", Labels::default().label(f), s.api))
        })
        .unwrap_or_else(|| "[unknown stack]".into())
}

/// Call sites by bytes of allocations at least `min` old (memleak's `-o`).
pub fn write_older_than(
    by_site: &BTreeMap<SiteId, (u64, u64)>,
    timeline: &Timeline,
    min: Duration,
    top: usize,
    out: &mut impl Write,
) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "call sites by bytes outstanding for at least {}:",
        humantime(min)
    )?;
    let mut rows: Vec<_> = by_site.iter().collect();
    rows.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
    if rows.is_empty() {
        writeln!(out, "  none")?;
    }
    for (id, (blocks, bytes)) in rows.into_iter().take(top) {
        writeln!(
            out,
            "{bytes:>12} B {blocks:>8} blocks  {}",
            site_name(timeline, *id)
        )?;
    }
    Ok(())
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 60.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{s}s")
    }
}
