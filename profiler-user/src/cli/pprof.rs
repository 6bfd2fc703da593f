//! pprof files from a timeline: the window's time range and the
//! process identity go into the profile beside its sites.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::outputs::write_file;
use crate::exactness::Exactness;
use crate::profile::Profile;
use crate::timeline::{Timeline, Window};
use crate::views::pprof::{write_pprof, write_pprof_diff, PprofOptions};

/// Options of the pprof file of `profile`, which is `timeline`'s `window`
/// of a session that started at `start_unix_ms`.
pub(super) fn options(
    timeline: &Timeline,
    window: Window,
    profile: &Profile,
    start_unix_ms: u64,
    sample_rate: u64,
) -> PprofOptions {
    let range = timeline.range(window);
    let end_ms = timeline
        .tick_times()
        .nth(range.end.saturating_sub(1))
        .unwrap_or(0);
    let duration_ms = (profile.duration_secs * 1000.0).round() as u64;
    PprofOptions::for_window(
        start_unix_ms,
        end_ms,
        duration_ms,
        Exactness::new(sample_rate, &profile.totals),
        profile.pid,
        &profile.comm,
    )
}

/// Writes `profile` to `path` as gzipped pprof.
pub(super) fn write(path: &Path, opts: &PprofOptions, profile: &Profile) -> Result<()> {
    write_file(path, |f| write_pprof(opts, profile, f).map_err(Into::into))
}

/// Writes `window` minus `baseline` to `path` as gzipped pprof.
pub(super) fn write_diff(
    path: &Path,
    opts: &PprofOptions,
    baseline: &Profile,
    window: &Profile,
) -> Result<()> {
    write_file(path, |f| {
        write_pprof_diff(opts, baseline, window, f).map_err(Into::into)
    })
}

/// `OUT.base.pb.gz` and `OUT.window.pb.gz` beside `OUT.pb.gz` (or `OUT`).
pub(super) fn diff_base_paths(path: &Path) -> (PathBuf, PathBuf) {
    let text = path.to_string_lossy();
    let stem = text.strip_suffix(".pb.gz").unwrap_or(&text);
    (
        PathBuf::from(format!("{stem}.base.pb.gz")),
        PathBuf::from(format!("{stem}.window.pb.gz")),
    )
}
