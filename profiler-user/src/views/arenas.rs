//! glibc's arenas at the end of an `attach`: resident, live and retained
//! bytes each, the call sites holding them, and what pins the top of `[heap]`;
//! and per tick (live or recorded): the arenas and the cross-thread frees.

use std::io::{self, Write};

use crate::analysis::arenas::site_name as frames_name;
use crate::analysis::Mechanism;
use crate::process::arenas::Home;
use crate::session::arenas::ArenaReport;
use crate::timeline::{ArenaSample, SiteId, Timeline};
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

/// `main heap ([heap])`, `arena 0x7f.. (2 heaps)`, `mmapped chunks (3)`.
fn home_name(a: &ArenaSample) -> String {
    match a.home {
        Home::Main => "main heap ([heap])".to_string(),
        Home::Arena(addr) => format!("arena {addr:#x} ({} heaps)", a.heaps),
        Home::Mmapped => format!("mmapped chunks ({})", a.heaps),
    }
}

/// The per-arena table of a window's last tick with arenas, and the call
/// sites whose blocks were freed across threads; `sampled` marks live and
/// cross-thread numbers as estimates (exact with every allocation captured).
pub fn write_mechanism(m: &Mechanism, sampled: bool, out: &mut impl Write) -> io::Result<()> {
    let est = if sampled { "~" } else { "" };
    writeln!(
        out,
        "glibc arenas at {:.1}s (resident from smaps; live: {} by chunk header; \
         retained = resident - live):",
        m.t_ms as f64 / 1000.0,
        if sampled {
            "the sampled blocks, estimated"
        } else {
            "every block, exact"
        }
    )?;
    for a in &m.arenas {
        if a.reserved == 0 && a.live == 0 {
            continue;
        }
        writeln!(
            out,
            "  {:<36} reserved {:>10}  resident {:>10}  live {est}{:>10}  retained {est}{:>10}",
            home_name(a),
            human_bytes(a.reserved),
            human_bytes(a.resident),
            human_bytes(a.live),
            human_bytes(a.retained()),
        )?;
    }
    if m.cross_sites.is_empty() {
        writeln!(
            out,
            "cross-thread frees: none (no sampled block was freed by another thread into an \
             arena that thread does not allocate from)"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "cross-thread frees ({}): {est}{} in {est}{} blocks freed by another thread than the \
         one that allocated them, into an arena not the freeing thread's:",
        if sampled { "estimated" } else { "exact" },
        human_bytes(m.cross_bytes),
        m.cross_count,
    )?;
    writeln!(
        out,
        "  {:>12}  {:>10}  {:>12}  CALL SITE",
        "BYTES", "BLOCKS", "OF ALLOCATED"
    )?;
    for s in &m.cross_sites {
        let share = if s.alloc_bytes > 0 {
            format!("{:.0}%", 100.0 * s.bytes as f64 / s.alloc_bytes as f64)
        } else {
            "-".into()
        };
        writeln!(
            out,
            "  {:>12}  {:>10}  {:>12}  {}",
            format!("{est}{}", human_bytes(s.bytes)),
            format!("{est}{}", s.count),
            share,
            frames_name(&s.frames, s.api),
        )?;
    }
    Ok(())
}
