//! `report`, `diff` and `export`: commands on a recording.

use std::io::Write;
use std::path::Path;

use anyhow::{Context as _, Result};

use super::note;
use super::outputs::{write_file, Outputs};
use super::{DiffArgs, DiffFormat, ExportArgs, ExportFormat, ReportArgs};
use crate::profile::Metric;
use crate::record::{self, Recording};
use crate::report::{self, ReportOptions};
use crate::timeline::{ProfileMeta, Window};
use crate::views::{self, Labels};

/// Reads a recording and says what is wrong with it: damage in the middle
/// is an error unless `allow_damaged`; a missing end record is a note.
pub(super) fn open(path: &Path, allow_damaged: bool) -> Result<Recording> {
    let rec = record::open(path)?;
    let shown = path.display();
    if let Some(summary) = rec.damage_summary() {
        if !allow_damaged {
            anyhow::bail!(
                "{shown} is {summary}; numbers after a damaged stretch may be wrong \
                 (a lost tick's changes, a lost call site's frames): read what remains with --allow-damaged"
            );
        }
        note(&format!("warning: {shown} is {summary}"));
        for d in &rec.damage {
            note(&format!(
                "warning: damaged at byte {} ({} bytes skipped): {}",
                d.offset, d.bytes, d.reason
            ));
        }
        if rec.orphan_changes > 0 {
            note(&format!(
                "warning: {} tick entries of lost call sites dropped",
                rec.orphan_changes
            ));
        }
    }
    let last = rec.timeline.span_ms().map_or(0, |(_, l)| l);
    if rec.truncated {
        note(&format!(
            "note: {shown} ends with a partial record and no end record: the profiler was killed mid-write; read up to its last whole tick ({})",
            Window { start_ms: Some(last), end_ms: None }.to_string().trim_end_matches('.')
        ));
    } else if rec.end_ms.is_none() {
        note(&format!(
            "note: {shown} has no end record: the profiler was killed (or is still recording); read up to its last tick ({})",
            Window { start_ms: Some(last), end_ms: None }.to_string().trim_end_matches('.')
        ));
    }
    if rec.timeline.is_empty() {
        anyhow::bail!("{} holds no tick yet: nothing to report", path.display());
    }
    Ok(rec)
}

/// Checks that `w` holds a tick of `rec`: a window outside the recording is
/// an error naming the recording's span, not an empty report.
fn window(rec: &Recording, w: Window, flag: &str) -> Result<Window> {
    rec.timeline.check_window(w).context(flag.to_string())?;
    Ok(w)
}

fn meta(rec: &Recording) -> ProfileMeta {
    ProfileMeta {
        pid: rec.header.pid,
        comm: rec.header.comm.clone(),
        // The header has the rate the session began with; the overhead
        // guard's windows say what it sampled at since.
        sample_rate: rec.timeline.guard().map_or(rec.header.sample_rate, |g| {
            g.describing_rate(rec.header.sample_rate)
        }),
        allocator: rec.header.allocator.clone(),
        allocator_notes: rec.header.allocator_notes.clone(),
    }
}

/// Writes to `path`, or to stdout (a reader closing the pipe is not a failure).
fn output(path: Option<&Path>, f: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let mut outputs = Outputs::default();
    match path {
        Some(p) => outputs.write("-o", || write_file(p, |w| f(w))),
        None => outputs.write("stdout", || {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            f(&mut out)?;
            out.flush().context("writing to stdout")
        }),
    }
    outputs.finish()
}

pub(super) fn report(args: ReportArgs) -> Result<i32> {
    let mut rec = open(&args.file, args.allow_damaged)?;
    if args.resymbolize {
        super::hints::resymbolize(&mut rec.timeline);
    }
    let opts = ReportOptions {
        top: args.top,
        window: window(&rec, args.window, "--window")?,
        json: args.json,
        labels: Labels { lines: args.lines },
    };
    output(None, |out| {
        report::write(&rec.timeline, &meta(&rec), &opts, &mut &mut *out).map_err(Into::into)
    })?;
    super::hints::missing_symbols(rec.timeline.sites(), Some(&args.file));
    Ok(0)
}

pub(super) fn diff(args: DiffArgs) -> Result<i32> {
    let rec = open(&args.file, args.allow_damaged)?;
    let m = meta(&rec);
    let base = rec
        .timeline
        .profile_for(window(&rec, args.baseline, "--baseline")?, &m);
    let win_window = window(&rec, args.window, "--window")?;
    let win = rec.timeline.profile_for(win_window, &m);
    if let DiffFormat::Pprof = args.format {
        let Some(path) = args.output.as_deref() else {
            anyhow::bail!("--format pprof writes binary files: give them with -o FILE.pb.gz");
        };
        let (start, rate) = (rec.header.start_unix_ms, rec.header.sample_rate);
        let opts = super::pprof::options(&rec.timeline, win_window, &win, start, rate);
        let base_window = window(&rec, args.baseline, "--baseline")?;
        let base_opts = super::pprof::options(&rec.timeline, base_window, &base, start, rate);
        super::pprof::write_diff(path, &opts, &base, &win)?;
        let (b, w) = super::pprof::diff_base_paths(path);
        super::pprof::write(&b, &base_opts, &base)?;
        super::pprof::write(&w, &opts, &win)?;
        eprintln!(
            "heapscope: for `go tool pprof -diff_base {} {}`",
            b.display(),
            w.display()
        );
        return Ok(0);
    }
    output(args.output.as_deref(), |out| {
        let mut out = out;
        match args.format {
            DiffFormat::Text => views::diff::write_diff_text(&base, &win, args.top, &mut out)?,
            DiffFormat::Folded => views::diff::write_diff_folded(&base, &win, &mut out)?,
            DiffFormat::Svg => {
                let title = format!(
                    "heapscope diff: pid {} ({}), {} vs {}",
                    m.pid, m.comm, args.baseline, args.window
                );
                views::diff::write_diff_svg(&base, &win, &title, &mut out)?
            }
            DiffFormat::Pprof => {}
        }
        Ok(())
    })?;
    Ok(0)
}

pub(super) fn export(args: ExportArgs) -> Result<i32> {
    let rec = open(&args.file, args.allow_damaged)?;
    let m = meta(&rec);
    let w = window(&rec, args.window, "--window")?;
    let profile = rec.timeline.profile_for(w, &m);
    if let ExportFormat::Pprof = args.format {
        let Some(path) = args.output.as_deref() else {
            anyhow::bail!("--format pprof writes a binary file: give it with -o FILE.pb.gz");
        };
        let (start, rate) = (rec.header.start_unix_ms, rec.header.sample_rate);
        let opts = super::pprof::options(&rec.timeline, w, &profile, start, rate);
        super::pprof::write(path, &opts, &profile)?;
        return Ok(0);
    }
    let metric: Metric = args.metric.into();
    let labels = Labels { lines: args.lines };
    output(args.output.as_deref(), |out| {
        let mut out = out;
        match args.format {
            ExportFormat::Folded => views::folded::write_folded(
                &profile,
                &views::FoldedOptions { metric, labels },
                &mut out,
            )?,
            ExportFormat::Svg => {
                let opts = views::SvgOptions {
                    metric,
                    labels,
                    title: format!(
                        "heapscope: pid {} ({}), window {}",
                        m.pid, m.comm, args.window
                    ),
                };
                views::svg::write_svg(&profile, &opts, &mut out)?
            }
            ExportFormat::Pprof => {}
        }
        Ok(())
    })?;
    Ok(0)
}
