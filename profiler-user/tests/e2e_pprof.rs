//! End-to-end tests of the pprof export: `go tool pprof` (Debian's
//! golang-go, installed by `cargo xtask setup`) reads what heapscope wrote
//! from a real capture, with the fixture's exact byte counts and
//! `file:line`, and `-diff_base` on two windows shows the grown site.
//! They need root; without it they say they were skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::driver::*;
use common::gopprof::{go_pprof, top_rows};
use common::*;

fn export(file: &Path, window: &str, out: &Path) {
    let o = Command::new(heapscope())
        .args(["export", "--format", "pprof", "--window", window, "-o"])
        .arg(out)
        .arg(file)
        .output()
        .expect("run heapscope export");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn record_leaks(dir: &Path) -> (PathBuf, PathBuf) {
    let bin = fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let rec = dir.join("leaks.rec");
    let fx = start_fixture(&bin);
    run_attached(
        fx,
        &[
            "--exact",
            "--stacks",
            "fp",
            "--record",
            rec.to_str().expect("utf8"),
        ],
    );
    (bin, rec)
}

#[test]
fn go_pprof_reads_the_exact_leaks() {
    if !root_or_skip("go_pprof_reads_the_exact_leaks") {
        return;
    }
    let dir = scratch("pprof-top");
    let (bin, rec) = record_leaks(&dir);
    let pb = dir.join("leaks.pb.gz");
    export(&rec, "..", &pb);
    let pb_s = pb.to_str().expect("utf8");
    let top = go_pprof(
        &dir,
        &["-top", "-unit=byte", "-sample_index=inuse_space", pb_s],
    );
    assert!(top.contains("Type: inuse_space"), "{top}");
    let rows = top_rows(&top);
    for (site, want) in expected_sites(&bin) {
        let got = rows.get(&site).copied().unwrap_or(0);
        assert_eq!(got, want as i64, "inuse_space of {site}\n{top}");
    }
    // Every sample type is there, in Go's order.
    let raw = go_pprof(&dir, &["-raw", pb_s]);
    assert!(
        raw.contains(
            "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes[dflt]"
        ),
        "{raw}"
    );
    assert!(raw.contains("Period: 1"), "exact mode: {raw}");
    // file:line from heapscope's DWARF symbolization.
    let lines = go_pprof(
        &dir,
        &[
            "-top",
            "-lines",
            "-unit=byte",
            "-sample_index=inuse_space",
            pb_s,
        ],
    );
    let leak = top_rows(&lines)
        .into_iter()
        .find(|(k, _)| k.starts_with("leak_malloc "))
        .unwrap_or_else(|| panic!("no leak_malloc row:\n{lines}"));
    assert!(leak.0.contains("leaks.c:"), "{leak:?}");
    assert_eq!(leak.1, expected_sites(&bin)["leak_malloc"] as i64);
}

#[test]
fn go_pprof_diff_base_shows_the_growing_site() {
    if !root_or_skip("go_pprof_diff_base_shows_the_growing_site") {
        return;
    }
    let dir = scratch("pprof-diff");
    let growth = fixture(
        "growth",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"],
    );
    let rec = dir.join("growth.rec");
    let mut cmd = Command::new(growth);
    cmd.arg("leak");
    let fx = start_command(cmd);
    run_attached(
        fx,
        &[
            "--exact",
            "--stacks",
            "fp",
            "--record",
            rec.to_str().expect("utf8"),
        ],
    );
    // `diff --format pprof` writes the difference and the two windows.
    let out = dir.join("diff.pb.gz");
    let o = Command::new(heapscope())
        .args([
            "diff",
            "--baseline",
            "0s..1s",
            "--window",
            "4s..",
            "--format",
            "pprof",
            "-o",
        ])
        .arg(&out)
        .arg(&rec)
        .output()
        .expect("run heapscope diff");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (base, win) = (dir.join("diff.base.pb.gz"), dir.join("diff.window.pb.gz"));
    // The two windows, as exported one by one, are what diff wrote.
    let exported = dir.join("window-export.pb.gz");
    export(&rec, "4s..", &exported);
    let top_of = |p: &Path| {
        go_pprof(
            &dir,
            &[
                "-top",
                "-unit=byte",
                "-sample_index=inuse_space",
                p.to_str().expect("utf8"),
            ],
        )
    };
    assert_eq!(top_rows(&top_of(&win)), top_rows(&top_of(&exported)));
    let diff = go_pprof(
        &dir,
        &[
            "-top",
            "-unit=byte",
            "-sample_index=inuse_space",
            "-diff_base",
            base.to_str().expect("utf8"),
            win.to_str().expect("utf8"),
        ],
    );
    // The single-file difference says the same per function.
    let single = top_rows(&top_of(&out));
    assert_eq!(
        single.get("leak_slowly"),
        top_rows(&diff).get("leak_slowly"),
        "{diff}"
    );
    let rows = top_rows(&diff);
    let grown = rows.get("leak_slowly").copied().unwrap_or(0);
    assert!(grown > 0, "leak_slowly grew between the windows:\n{diff}");
    assert_eq!(rows.get("churn").copied().unwrap_or(0), 0, "{diff}");
}
