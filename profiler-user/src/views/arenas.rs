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

/// The per-arena section at the end of an `attach`; `sampled` marks live
/// bytes as estimates. With `rows_shown` (the report's per-tick arena table
/// is printed already) only what that table lacks: the call sites holding
/// each arena's live blocks, and what pins the top of `[heap]`; otherwise
/// each arena's resident, live and retained bytes too.
pub fn write_arenas(
    report: &ArenaReport,
    timeline: &Timeline,
    sampled: bool,
    rows_shown: bool,
    out: &mut impl Write,
) -> io::Result<()> {
    let est = if sampled { "~" } else { "" };
    let any_sites = report.rows.iter().any(|r| !r.top_sites.is_empty());
    if rows_shown && !any_sites && report.top_block.is_none() && report.unreadable == 0 {
        return Ok(());
    }
    if rows_shown {
        writeln!(
            out,
            "glibc arenas, call sites holding their {}live blocks at the end (by chunk header):",
            if sampled { "sampled " } else { "" }
        )?;
    } else {
        writeln!(
            out,
            "glibc arenas (resident from smaps; live: the {}blocks each holds, by chunk header):",
            if sampled { "sampled " } else { "" }
        )?;
    }
    let mut above = false;
    for r in &report.rows {
        let name = match r.home {
            Home::Main => "main heap ([heap])".to_string(),
            Home::Arena(a) => format!("arena {a:#x} ({} heaps)", r.heaps),
            Home::Mmapped => format!("mmapped chunks ({})", r.heaps),
        };
        if rows_shown {
            if r.top_sites.is_empty() {
                continue;
            }
            writeln!(out, "  {name}:")?;
        } else {
            let mark = if r.live > r.usage.resident {
                above = true;
                "*"
            } else {
                ""
            };
            writeln!(
                out,
                "  {name}: resident {}, live {est}{}{mark}, retained {est}{}",
                human_bytes(r.usage.resident),
                human_bytes(r.live),
                human_bytes(r.retained()),
            )?;
        }
        for (site, bytes) in &r.top_sites {
            writeln!(
                out,
                "    {est}{} {}",
                human_bytes(*bytes),
                site_name(timeline, *site)
            )?;
        }
    }
    if above {
        writeln!(out, "  {}", live_above_resident(sampled))?;
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

/// The footnote of an arena whose live bytes exceed its resident bytes.
fn live_above_resident(sampled: bool) -> String {
    format!(
        "* live above resident: {}blocks allocated but not (all) written, whose pages are not \
         resident yet; retained shown as 0",
        if sampled {
            "the sampled estimate's error (each sample stands for about a sampling interval of \
             bytes), or "
        } else {
            ""
        }
    )
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
    let mut above = false;
    for a in &m.arenas {
        if a.reserved == 0 && a.live == 0 {
            continue;
        }
        let mark = if a.live > a.resident {
            above = true;
            "*"
        } else {
            ""
        };
        writeln!(
            out,
            "  {:<36} reserved {:>10}  resident {:>10}  live {:>12}  retained {:>11}",
            home_name(a),
            human_bytes(a.reserved),
            human_bytes(a.resident),
            format!("{est}{}{mark}", human_bytes(a.live)),
            format!("{est}{}", human_bytes(a.retained())),
        )?;
    }
    if above {
        writeln!(out, "  {}", live_above_resident(sampled))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn arena(addr: u64, resident: u64, live: u64) -> ArenaSample {
        ArenaSample {
            home: Home::Arena(addr),
            heaps: 1,
            reserved: 1 << 20,
            resident,
            live,
        }
    }

    fn table(sampled: bool, arenas: Vec<ArenaSample>) -> String {
        let m = Mechanism {
            t_ms: 10_000,
            arenas,
            cross_sites: Vec::new(),
            cross_bytes: 0,
            cross_count: 0,
            remedies: Vec::new(),
        };
        let mut out = Vec::new();
        write_mechanism(&m, sampled, 0, &mut out).expect("write");
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn live_above_resident_is_marked_and_explained() {
        let text = table(
            true,
            vec![arena(0x1000, 4096, 64), arena(0x2000, 4096, 40_000)],
        );
        let rows: Vec<&str> = text.lines().filter(|l| l.contains("arena 0x")).collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert!(!rows[0].contains('*'), "{text}");
        assert!(rows[1].contains("~39.1 KiB*"), "{text}");
        assert!(rows[1].ends_with("retained        ~0 B"), "{text}");
        assert!(
            text.contains("* live above resident: the sampled estimate's error"),
            "{text}"
        );
        // Exact: only untouched pages explain it.
        let text = table(false, vec![arena(0x2000, 4096, 40_000)]);
        assert!(
            text.contains("* live above resident: blocks allocated but not (all) written"),
            "{text}"
        );
        let text = table(false, vec![arena(0x1000, 4096, 64)]);
        assert!(!text.contains("live above resident"), "{text}");
    }
}
