//! End-to-end tests of the timeline, findings and recordings: a steady leak
//! gives a `leak` finding naming its function; glibc arena retention gives an
//! `allocator-retention` finding and no leak; `report` on the recording says
//! what `attach` said. They need root; without it they say they were skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::driver::*;
use common::*;
use serde_json::Value;

fn growth() -> PathBuf {
    fixture(
        "growth",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"],
    )
}

/// Profiles `growth MODE` into a recording; returns it and attach's report.
fn record(mode: &str, test: &str) -> (PathBuf, String) {
    let dir = scratch(test);
    let file = dir.join("session.rec");
    let mut cmd = Command::new(growth());
    cmd.arg(mode);
    let fx = start_command(cmd);
    let flags = [
        "--exact",
        "--stacks",
        "fp",
        "--record",
        file.to_str().expect("utf8"),
    ];
    let report = run_attached(fx, &flags);
    (file, report)
}

fn heapscope_on(args: &[&str], file: &Path) -> Output {
    Command::new(heapscope())
        .args(args)
        .arg(file)
        .output()
        .expect("run heapscope")
}

fn findings(file: &Path) -> Vec<Value> {
    let out = heapscope_on(&["report", "--json"], file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("report --json is JSON");
    doc["findings"].as_array().cloned().unwrap_or_default()
}

fn frames_of(f: &Value) -> Vec<String> {
    f["frames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn leak_findings_with(findings: &[Value], function: &str) -> usize {
    findings
        .iter()
        .filter(|f| f["kind"] == "leak" && frames_of(f).iter().any(|x| x == function))
        .count()
}

#[test]
fn steady_leak_is_a_leak_finding_and_report_matches_attach() {
    if !root_or_skip("steady_leak_is_a_leak_finding_and_report_matches_attach") {
        return;
    }
    let (file, attach_report) = record("leak", "leak-finding");
    let found = findings(&file);
    assert_eq!(leak_findings_with(&found, "leak_slowly"), 1, "{found:#?}");
    assert_eq!(leak_findings_with(&found, "churn"), 0, "{found:#?}");
    assert!(
        found.iter().all(|f| f["kind"] != "allocator-retention"),
        "{found:#?}"
    );

    // The report on the recording is the report attach ended with.
    let out = heapscope_on(&["report"], &file);
    assert!(out.status.success());
    let offline = String::from_utf8_lossy(&out.stdout);
    assert!(
        attach_report.starts_with(offline.as_ref()),
        "attach:\n{attach_report}\nreport:\n{offline}"
    );

    // diff: the leaking site grew between the first second and the end.
    let out = heapscope_on(
        &[
            "diff",
            "--baseline",
            "0s..1s",
            "--window",
            "4s..",
            "--format",
            "folded",
        ],
        &file,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("leak_slowly"))
        .expect("leak_slowly in diff");
    let nums: Vec<u64> = line
        .rsplitn(3, ' ')
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(nums.len(), 2, "{line}");
    assert!(nums[0] > nums[1], "after > before: {line}");
    let out = heapscope_on(
        &[
            "diff",
            "--baseline",
            "0s..1s",
            "--window",
            "4s..",
            "--format",
            "svg",
        ],
        &file,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
    let out = heapscope_on(
        &["export", "--format", "folded", "--window", "2s..4s"],
        &file,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("leak_slowly"));
}

#[test]
fn arena_retention_is_not_a_leak() {
    if !root_or_skip("arena_retention_is_not_a_leak") {
        return;
    }
    let (file, _) = record("arena", "arena-retention");
    let found = findings(&file);
    let retention: Vec<&Value> = found
        .iter()
        .filter(|f| f["kind"] == "allocator-retention")
        .collect();
    assert_eq!(retention.len(), 1, "{found:#?}");
    assert!(
        retention[0]["arena_heaps"].as_u64().unwrap_or(0) >= 2,
        "{found:#?}"
    );
    assert_eq!(leak_findings_with(&found, "cache_refill"), 0, "{found:#?}");
}

#[test]
fn cut_and_garbage_recordings() {
    if !root_or_skip("cut_and_garbage_recordings") {
        return;
    }
    let (file, _) = record("leak", "cut");
    let bytes = std::fs::read(&file).expect("recording");
    let cut = file.with_extension("cut");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).expect("write cut copy");
    let out = heapscope_on(&["report"], &cut);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("partial record"));

    let garbage = file.with_extension("garbage");
    std::fs::write(&garbage, b"this is not a recording").expect("write garbage");
    let out = heapscope_on(&["report"], &garbage);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(garbage.to_str().expect("utf8")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
