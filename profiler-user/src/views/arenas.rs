//! glibc's arenas at the end of an `attach`: resident, live and retained
//! bytes each, the call sites holding them, and what pins the top of `[heap]`;
//! and per tick (live or recorded): the arenas and the cross-thread frees.

use std::io::{self, Write};

use crate::analysis::arenas::Remedy;
use crate::analysis::Mechanism;
use crate::process::arenas::Home;
use crate::profile::Frame;
use crate::session::arenas::ArenaReport;
use crate::timeline::{ArenaSample, SiteId, Timeline};
use crate::views::callsite::call_site_text;
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
/// cross-thread numbers as estimates (exact with every allocation captured,
/// unless `lost` events are missing from them).
pub fn write_mechanism(
    m: &Mechanism,
    sampled: bool,
    lost: u64,
    out: &mut impl Write,
) -> io::Result<()> {
    let est = if sampled { "~" } else { "" };
    let into = if m.arenas_compared() {
        ", into an arena not the freeing thread's"
    } else {
        " (arenas not compared: frame-pointer stacks or not glibc)"
    };
    let exact = match (sampled, lost) {
        (true, _) => "estimated".to_string(),
        (false, 0) => "exact".to_string(),
        (false, n) => format!("exact but for {n} lost events"),
    };
    if m.arenas_compared() {
        write_arena_rows(m, sampled, &exact, out)?;
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
         one that allocated them{into}:",
        exact,
        human_bytes(m.cross_bytes),
        m.cross_count,
    )?;
    write_cross_rows(m, est, out)
}

/// The arena rows of [`write_mechanism`].
fn write_arena_rows(
    m: &Mechanism,
    sampled: bool,
    exact: &str,
    out: &mut impl Write,
) -> io::Result<()> {
    let est = if sampled { "~" } else { "" };
    writeln!(
        out,
        "glibc arenas at {:.1}s (resident from smaps; live: {} by chunk header; \
         retained = resident - live):",
        m.t_ms as f64 / 1000.0,
        if sampled {
            "the sampled blocks, estimated".to_string()
        } else {
            format!("every block, {exact}")
        }
    )?;
    for a in &m.arenas {
        if a.reserved == 0 && a.live == 0 {
            continue;
        }
        writeln!(
            out,
            "  {:<36} reserved {:>10}  resident {:>10}  live {:>11}  retained {:>11}",
            home_name(a),
            human_bytes(a.reserved),
            human_bytes(a.resident),
            format!("{est}{}", human_bytes(a.live)),
            format!("{est}{}", human_bytes(a.retained())),
        )?;
    }
    Ok(())
}

/// The cross-thread call sites of [`write_mechanism`].
fn write_cross_rows(m: &Mechanism, est: &str, out: &mut impl Write) -> io::Result<()> {
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
            site_label(&s.frames, s.api),
        )?;
    }
    Ok(())
}

/// `program_frame <- caller (api)`, as the CALL SITE column shows it.
pub fn site_label(frames: &[Frame], api: &str) -> String {
    let labels: Vec<String> = frames.iter().map(|f| Labels::default().label(f)).collect();
    format!("{} ({api})", call_site_text(&labels))
}

/// A measured remedy as a sentence with its numbers.
pub fn remedy_text(r: &Remedy) -> String {
    match r {
        Remedy::ArenaMax {
            arenas,
            resident,
            live,
            retained,
            worst,
        } => {
            let worst = worst.map_or(String::new(), |(addr, ret, res)| {
                format!(
                    " (arena {addr:#x} alone: {} of {})",
                    human_bytes(ret),
                    human_bytes(res)
                )
            });
            format!(
                "MALLOC_ARENA_MAX=2 (or 1 for few threads): {arenas} arenas hold {} resident for \
                 {} live, {} retained{worst}; with fewer arenas, memory one thread frees is reused \
                 by the others instead of staying in per-thread 64 MiB heaps",
                human_bytes(*resident),
                human_bytes(*live),
                human_bytes(*retained),
            )
        }
        Remedy::FreeOnAllocatingThread {
            arenas_compared,
            frames,
            api,
            bytes,
            count,
            share,
        } => format!(
            "free blocks on the thread that allocated them (or hand them back to it): {} had {} \
             in {count} blocks freed by other threads{}{}; freed there, the memory is reused \
             only when the allocating thread allocates again",
            site_label(frames, api),
            human_bytes(*bytes),
            if *arenas_compared {
                " into arenas those threads do not allocate from"
            } else {
                ""
            },
            share.map_or(String::new(), |s| format!(
                ", {:.0}% of what it allocated",
                100.0 * s
            )),
        ),
        Remedy::Trim {
            total,
            main,
            arenas,
        } => format!(
            "call malloc_trim(0) after bursts: {} is resident but not live ([heap] {}, arenas \
             {}); glibc gives back free pages inside its heaps only in malloc_trim",
            human_bytes(*total),
            human_bytes(*main),
            human_bytes(*arenas),
        ),
        Remedy::TrimThreshold { main } => format!(
            "set MALLOC_TRIM_THRESHOLD_=131072 (M_TRIM_THRESHOLD): [heap] keeps {} it does not \
             use; glibc trims its top only past the trim threshold, which freeing a large mmapped \
             block raises to twice the mmap threshold (up to 64 MiB); setting it fixes both",
            human_bytes(*main),
        ),
        Remedy::MmapThreshold {
            sites,
            frames,
            api,
            mean,
        } => format!(
            "set MALLOC_MMAP_THRESHOLD_=131072 (M_MMAP_THRESHOLD): {sites} call site(s) allocate \
             blocks of 128.0 KiB+ on average (e.g. {}: {}); once glibc has freed one mmapped \
             block it raises its mmap threshold (up to 32 MiB) and serves later ones from heaps, \
             where they fragment; a fixed threshold keeps each in its own mapping, unmapped at \
             free",
            site_label(frames, api),
            human_bytes(*mean),
        ),
    }
}
