//! glibc's arenas at the end of an `attach`: resident, live and retained
//! bytes each, the call sites holding them, and what pins the top of `[heap]`.

use std::io::{self, Write};

use crate::process::arenas::Home;
use crate::session::arenas::ArenaReport;
use crate::timeline::{SiteId, Timeline};
use crate::views::{human_bytes, Labels};

fn site_name(timeline: &Timeline, id: SiteId) -> String {
    timeline
        .site(id)
        .map(|s| {
            let frames: Vec<String> = s
                .frames
                .iter()
                .rev()
                .take(3)
                .map(|f| Labels::default().label(f))
                .collect();
            format!("{} ({})", frames.join(" <- "), s.api)
        })
        .unwrap_or_else(|| "[unknown stack]".into())
}

/// The per-arena section; `sampled` marks live bytes as estimates.
pub fn write_arenas(
    report: &ArenaReport,
    timeline: &Timeline,
    sampled: bool,
    out: &mut impl Write,
) -> io::Result<()> {
    let est = if sampled { "~" } else { "" };
    writeln!(
        out,
        "glibc arenas (resident from smaps; live: the {}blocks each holds, by chunk header):",
        if sampled { "sampled " } else { "" }
    )?;
    for r in &report.rows {
        let name = match r.home {
            Home::Main => "main heap ([heap])".to_string(),
            Home::Arena(a) => format!("arena {a:#x} ({} heaps)", r.heaps),
            Home::Mmapped => format!("mmapped chunks ({})", r.heaps),
        };
        writeln!(
            out,
            "  {name}: resident {}, live {est}{}, retained {est}{}",
            human_bytes(r.usage.resident),
            human_bytes(r.live),
            human_bytes(r.retained()),
        )?;
        for (site, bytes) in &r.top_sites {
            writeln!(
                out,
                "    {est}{} {}",
                human_bytes(*bytes),
                site_name(timeline, *site)
            )?;
        }
    }
    if let Some(t) = &report.top_block {
        writeln!(
            out,
            "  top of [heap]: the highest live block is {} from {}, {} below the top; glibc \
trims [heap] only above its highest live block, so the {} resident below it stay while it lives",
            human_bytes(t.size),
            site_name(timeline, t.site),
            human_bytes(t.below_top),
            human_bytes(t.heap_resident),
        )?;
    }
    if report.unreadable > 0 {
        writeln!(
            out,
            "  ({} sampled blocks could not be placed: freed while being read)",
            report.unreadable
        )?;
    }
    Ok(())
}
