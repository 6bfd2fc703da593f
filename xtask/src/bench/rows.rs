//! `cargo xtask bench --rows A,B [--runs N]`: only the main table's rows
//! named so, after the two baselines, measured again in every run, with each
//! row's median and range of its per-run ratios at the end.

use std::path::Path;

use anyhow::Result;

use super::{measure, print_row, Mode, MODES};

/// Only the main table's rows whose name contains one of the
/// comma-separated `patterns` (`--rows sessions,default`), after the two
/// baselines the ratios are taken against, `runs` times over (`--runs N`):
/// each run measures every row again, so each ratio is in-run.
pub(super) fn bench_rows(
    bin: &Path,
    heapscope: &Path,
    pairs: u64,
    patterns: &str,
    runs: u32,
) -> Result<()> {
    const THREADS: [u32; 2] = [1, 2];
    let wanted: Vec<&str> = patterns.split(',').filter(|p| !p.is_empty()).collect();
    let modes: Vec<&Mode> = MODES
        .iter()
        .enumerate()
        .filter(|(i, m)| *i < 2 || wanted.iter().any(|p| m.name.contains(p)))
        .map(|(_, m)| m)
        .collect();
    println!(
        "malloc(64)/free pairs, {pairs} per thread; target CPU and wall ns per pair at 1 and 2 \
         threads, ratios of the CPU time to no profiler and to bare probes of the same run"
    );
    // Per row and thread count, each run's ratio to its bare probes.
    let mut ratios: Vec<[Vec<f64>; 2]> = modes.iter().map(|_| [vec![], vec![]]).collect();
    for run in 1..=runs {
        println!("run {run}:");
        let (mut none, mut bare) = (Vec::new(), Vec::new());
        for (row, mode) in modes.iter().enumerate() {
            let mut m = Vec::new();
            for t in THREADS {
                m.push(measure(bin, heapscope, mode, pairs, t)?);
            }
            if none.is_empty() {
                none = m.iter().map(|m| m.cpu_ns).collect();
            } else if bare.is_empty() {
                bare = m.iter().map(|m| m.cpu_ns).collect();
            }
            for (i, m) in m.iter().enumerate() {
                if let Some(b) = bare.get(i) {
                    ratios[row][i].push(m.cpu_ns / b);
                }
            }
            print_row(mode.name, &m, &none, &bare);
        }
    }
    if runs > 1 {
        println!("ratio to the bare probes of the same run, median (min-max) over {runs} runs, 1 / 2 threads:");
        for (mode, r) in modes.iter().zip(&ratios).skip(2) {
            let [one, two] = r;
            println!("  {:<34} {} / {}", mode.name, spread(one), spread(two));
        }
    }
    Ok(())
}

/// `median (min-max)` of ratios.
fn spread(v: &[f64]) -> String {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) => {
            let mid = v.len() / 2;
            let median = if v.len().is_multiple_of(2) {
                (v[mid - 1] + v[mid]) / 2.0
            } else {
                v[mid]
            };
            format!("{median:.2}x ({lo:.2}-{hi:.2})")
        }
        _ => "-".into(),
    }
}
