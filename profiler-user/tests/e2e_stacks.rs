//! End-to-end tests of full stacks without frame pointers (DWARF unwinding of
//! copied stacks) and of byte-based sampling. They need root; without it
//! they say they were skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;
use std::process::Command;

use common::driver::*;
use common::*;

fn nofp(name: &str) -> std::path::PathBuf {
    fixture(name, "nofp", &["-O2", "-g", "-fomit-frame-pointer"])
}

/// Runs the fixture's sites under heapscope attached with `flags`; returns
/// the folded live bytes and the report.
fn profile(fx: Fixture, flags: &[&str], test: &str) -> (String, String) {
    let dir = scratch(test);
    let folded = dir.join("live.folded");
    let mut args: Vec<&str> = flags.to_vec();
    let folded_arg = folded.to_str().expect("utf8").to_string();
    args.extend(["--folded", &folded_arg]);
    let report = run_attached(fx, &args);
    (
        std::fs::read_to_string(&folded).expect("folded written"),
        report,
    )
}

/// Stacks (root first, API leaf last) whose site function is `site`.
fn stacks_of(folded: &str, site: &str) -> Vec<(Vec<String>, u64)> {
    parse_folded(folded)
        .into_iter()
        .filter(|(f, _)| f.len() >= 2 && f[f.len() - 2] == site)
        .collect()
}

fn assert_path(frames: &[String], path: &[&str]) {
    // `path` is leaf-most first: the frames just above the API leaf.
    let n = frames.len();
    for (i, want) in path.iter().enumerate() {
        let got = frames.get(n.wrapping_sub(2 + i)).map(String::as_str);
        assert_eq!(got, Some(*want), "frame {i} above the leaf in {frames:?}");
    }
}

/// Every leaking site of leaks.c is reached from main through run_sites.
fn assert_leak_stacks_complete(folded: &str, expected: &std::collections::BTreeMap<String, u64>) {
    for (site, want) in expected {
        if *want == 0 {
            continue;
        }
        for (frames, _) in stacks_of(folded, site) {
            assert_path(&frames, &[site, "run_sites", "main"]);
        }
    }
}

#[test]
fn exact_dwarf_stacks_without_frame_pointers() {
    if !root_or_skip("exact_dwarf_stacks_without_frame_pointers") {
        return;
    }
    let bin = nofp("leaks");
    let expected = expected_sites(&bin);
    let (folded, report) = profile(
        start_fixture(&bin),
        &["--exact", "--ringbuf-size", "64MiB"],
        "dwarf-exact",
    );
    assert_sites_exact(&folded, &expected);
    assert_leak_stacks_complete(&folded, &expected);
    assert_eq!(counter(&report, "ring buffer lost"), Some(0), "{report}");
    assert_eq!(
        counter(&report, "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)"),
        Some(10)
    );
}

#[test]
fn default_mode_gives_complete_stacks_without_frame_pointers() {
    if !root_or_skip("default_mode_gives_complete_stacks_without_frame_pointers") {
        return;
    }
    let bin = nofp("sampling");
    let (folded, report) = profile(start_fixture(&bin), &[], "default-mode");
    let stacks = stacks_of(&folded, "leak_steady");
    assert!(
        !stacks.is_empty(),
        "the 7.8 MiB leak is sampled:\n{folded}\n{report}"
    );
    for (frames, _) in &stacks {
        assert_path(frames, &["leak_steady", "phase_leak", "main"]);
    }
}

#[test]
fn sampled_estimates_are_within_15_percent() {
    if !root_or_skip("sampled_estimates_are_within_15_percent") {
        return;
    }
    let bin = nofp("sampling");
    let truth = expected_sites(&bin);
    let (folded, report) = profile(
        start_fixture(&bin),
        &[
            "--sample-rate",
            "4KiB",
            "--stack-size",
            "4KiB",
            "--ringbuf-size",
            "64MiB",
        ],
        "sampling",
    );
    let sites = by_site(&parse_folded(&folded));
    let want = truth["leak_steady"] as f64;
    let got = sites.get("leak_steady").copied().unwrap_or(0) as f64;
    assert!(
        (got - want).abs() <= 0.15 * want,
        "estimated {got} vs true {want}\n{folded}\n{report}"
    );
    let churn = sites.get("churn_many").copied().unwrap_or(0) as f64;
    assert!(churn <= 0.01 * want, "churn estimate {churn}\n{folded}");
    assert_eq!(counter(&report, "ring buffer lost"), Some(0), "{report}");
    // Process totals stay exact under sampling: with uprobe sessions (the
    // default) an unsampled call is counted at its entry instead.
    let allocs = counter(&report, "allocations seen").expect("allocations counter")
        + counter(&report, ENTRY_ONLY).unwrap_or(0);
    assert_eq!(allocs, 8192 + 5000, "{report}");
}

#[test]
fn python_stacks_reach_the_interpreter_and_main() {
    if !root_or_skip("python_stacks_reach_the_interpreter_and_main") {
        return;
    }
    let python = std::path::Path::new("/usr/bin/python3");
    assert!(
        python.exists(),
        "Debian's python3 is installed by `cargo xtask setup`"
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/leaky.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script);
    let (folded, report) = profile(start_command(cmd), &[], "python");
    let deep: Vec<_> = parse_folded(&folded)
        .into_iter()
        .filter(|(f, w)| *w > 0 && f.iter().any(|x| x == "_PyEval_EvalFrameDefault"))
        .collect();
    assert!(
        !deep.is_empty(),
        "no stack through the interpreter:\n{folded}\n{report}"
    );
    let (frames, _) = &deep[0];
    assert!(frames.len() >= 10, "{frames:?}");
    assert!(
        frames
            .iter()
            .any(|f| f == "Py_BytesMain" || f == "Py_RunMain"),
        "the walk reaches the interpreter's entry: {frames:?}"
    );
    assert!(
        frames.iter().any(|f| f.contains("__libc_start")),
        "and libc's start below main: {frames:?}"
    );
}

#[test]
fn stacks_reach_past_another_tools_pending_uretprobe() {
    use heapscope::probes::{
        AllocatorTarget, AttachPoint, CaptureConfig, MapSizes, ProbeMode, Probes,
    };
    use profiler_common::AllocKind;
    if !root_or_skip("stacks_reach_past_another_tools_pending_uretprobe") {
        return;
    }
    let bin = nofp("leaks");
    let expected = expected_sites(&bin);
    let fx = start_fixture(&bin);
    // Another tool's return probe on run_sites: while the sites run, its
    // return address into main is the kernel's [uprobes] trampoline.
    let loc = heapscope::symbolize::find_function(&bin, "run_sites")
        .expect("read fixture")
        .expect("run_sites defined");
    let other = AllocatorTarget {
        allocator: bin.display().to_string(),
        points: vec![AttachPoint {
            spec: profiler_common::EntrySpec::new(AllocKind::Malloc, [0, 0xff, 0xff]),
            symbol: "run_sites".to_string(),
            file: bin.clone(),
            func_offset: loc.file_offset,
            entry_offset: loc.file_offset,
            stepped: None,
        }],
        found: vec![],
        missing: vec![],
        modules: vec![],
        internal: vec![],
        custom: String::new(),
        unseen: vec![],
        exit_point: None,
    };
    let other = Probes::attach(
        fx.pid,
        &other,
        MapSizes::default(),
        // Return probes on every call, as the other tool has.
        CaptureConfig {
            sessions: false,
            ..CaptureConfig::default()
        },
        ProbeMode::Bare,
    )
    .expect("attach the other tool's uretprobe");
    let (folded, report) = profile(fx, &["--exact", "--ringbuf-size", "64MiB"], "trampoline");
    drop(other);
    assert_sites_exact(&folded, &expected);
    assert_leak_stacks_complete(&folded, &expected);
    assert!(!folded.contains("[uprobes"), "{folded}\n{report}");
}

/// A deploy while the target runs: the binary it was started from is
/// deleted, or another file is renamed over its path. The unwinder must read
/// the CFI of the file the kernel mapped, not whatever the path now names.
fn stacks_of_a_binary_changed_on_disk(test: &str, change: impl FnOnce(&std::path::Path)) {
    let bin = nofp("leaks");
    let expected = expected_sites(&bin);
    let dir = scratch(test);
    let copy = dir.join("leaks");
    std::fs::copy(&bin, &copy).expect("copy the fixture");
    let fx = start_fixture(&copy);
    change(&copy);
    let (folded, report) = profile(fx, &["--exact", "--ringbuf-size", "64MiB"], test);
    assert_sites_exact(&folded, &expected);
    assert_leak_stacks_complete(&folded, &expected);
    assert_eq!(counter(&report, "ring buffer lost"), Some(0), "{report}");
}

#[test]
fn stacks_of_a_deleted_binary_are_complete() {
    if !root_or_skip("stacks_of_a_deleted_binary_are_complete") {
        return;
    }
    stacks_of_a_binary_changed_on_disk("deleted-binary", |path| {
        std::fs::remove_file(path).expect("delete the running binary");
    });
}

#[test]
fn stacks_of_a_replaced_binary_are_complete() {
    if !root_or_skip("stacks_of_a_replaced_binary_are_complete") {
        return;
    }
    // Another program (other code, other CFI) renamed over the path.
    let other = nofp("sampling");
    stacks_of_a_binary_changed_on_disk("replaced-binary", |path| {
        let staged = path.with_extension("new");
        std::fs::copy(&other, &staged).expect("stage the new binary");
        std::fs::rename(&staged, path).expect("rename over the running binary");
    });
}

#[test]
fn lost_records_never_leave_sites_above_the_live_heap() {
    if !root_or_skip("lost_records_never_leave_sites_above_the_live_heap") {
        return;
    }
    // A 16 KiB ring holds two full stack copies (a thread's first) or about
    // forty copies sized to the thread's stack. The fixture allocates
    // 40,200 blocks, then frees 40,000 of them in one burst: many samples
    // get through while many frees of sampled blocks are lost, which used
    // to leave their bytes at their sites.
    let bin = nofp("peak");
    let mut fx = start_fixture(&bin);
    let a = attach(fx.pid, &["--exact", "--ringbuf-size", "16KiB"]);
    for step in ["peak", "freed", "done"] {
        writeln!(fx.stdin, "go").expect("signal fixture");
        wait_for(&fx.lines, step, &mut Vec::new());
    }
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "{stderr}");
    writeln!(fx.stdin, "exit").expect("release fixture");
    assert_eq!(fx.child.wait().expect("wait fixture").code(), Some(3));
    let lost = counter(&report, "ring buffer lost").expect("lost counter");
    assert!(lost > 0, "the tiny ring lost records:\n{report}");
    let live = headline_live_bytes(&report).expect("headline");
    let sites = top_sites_live_bytes(&report).expect("sites total");
    assert!(
        sites <= live,
        "per-site live bytes {sites} exceed the live heap {live}\n{report}"
    );
}

/// `all sites together 1.2 MiB (1,234,567 B)` of the top-sites line.
fn top_sites_live_bytes(report: &str) -> Option<u64> {
    let line = report
        .lines()
        .find(|l| l.starts_with("top call sites by live bytes (not exact: "))?;
    let rest = line.split_once("all sites together ")?.1;
    let inner = rest.split_once('(')?.1.split_once(" B)")?.0;
    inner.replace(',', "").parse().ok()
}

/// 4,096 distinct frame-pointer stacks, one 100-byte block each: every stack
/// is kept (heapscope's own stack table; the kernel's stack-trace map lost
/// 11% of them to bucket collisions) and each has exactly its block.
#[test]
fn thousands_of_distinct_fp_stacks_are_all_kept() {
    if !root_or_skip("thousands_of_distinct_fp_stacks_are_all_kept") {
        return;
    }
    let bin = fixture(
        "many_stacks",
        "fp",
        &[
            "-O1",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
        ],
    );
    let (folded, report) = profile(
        start_fixture(&bin),
        &["--stacks", "fp", "--exact"],
        "many-stacks",
    );
    assert_eq!(
        counter(&report, "stack capture failed").unwrap_or(0),
        0,
        "{report}"
    );
    let leaf: Vec<(Vec<String>, u64)> = parse_folded(&folded)
        .into_iter()
        .filter(|(f, _)| f.iter().any(|x| x == "leaf"))
        .collect();
    let distinct: std::collections::BTreeSet<&Vec<String>> = leaf.iter().map(|(f, _)| f).collect();
    assert_eq!(
        distinct.len(),
        4096,
        "distinct stacks through leaf\n{report}"
    );
    assert!(leaf.iter().all(|(_, b)| *b == 100), "{folded}");
}
