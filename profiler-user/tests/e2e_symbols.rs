//! End-to-end tests of symbolization on live processes: the fixture's
//! functions by name with `file:line` and an inlined frame (`--lines`), libc
//! frames by name from `libc6-dbg`, and a binary deleted after it started,
//! symbolized after the process exited, and a `run` command that exits before
//! heapscope has read anything of it (held at its exit). They need root;
//! without it they say they were skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

/// Generous guard against hangs only; no test asserts on elapsed time.
const HANG_GUARD: Duration = Duration::from_secs(120);

const FLAGS: &[&str] = &["-O2", "-g", "-fno-omit-frame-pointer"];

fn lines_of(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for(rx: &mpsc::Receiver<String>, what: &str) -> String {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(HANG_GUARD) {
            Ok(l) if l.contains(what) => return l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("never saw '{what}'; output so far:\n{}", seen.join("\n")),
        }
    }
}

/// Line number (1-based) of the `LINE:<marker>` comment in a fixture source.
fn line_of(source: &str, marker: &str) -> u32 {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(source),
    )
    .expect("read fixture source");
    let tag = format!("LINE:{marker} ");
    text.lines()
        .position(|l| l.contains(&tag))
        .map(|i| i as u32 + 1)
        .unwrap_or_else(|| panic!("no {tag} in {source}"))
}

/// Capture options that record every allocation, when this heapscope
/// samples by default (the fixture makes only 20 small allocations).
fn exact_flags() -> Vec<&'static str> {
    let help = Command::new(heapscope())
        .args(["attach", "--help"])
        .output()
        .expect("heapscope --help");
    let help = String::from_utf8_lossy(&help.stdout);
    if help.contains("--exact") {
        vec!["--exact"]
    } else {
        Vec::new()
    }
}

/// Starts `bin`, optionally deletes it, attaches heapscope, lets the fixture
/// allocate and exit, and returns heapscope's folded output and report.
fn profile(bin: &Path, delete_after_start: bool, extra: &[&str], test: &str) -> (String, String) {
    let dir = scratch(test);
    let folded = dir.join("out.folded");
    let mut fixture = spawn_when_not_busy(
        Command::new(bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )
    .expect("start fixture");
    let mut stdin = fixture.stdin.take().expect("fixture stdin");
    let out = lines_of(fixture.stdout.take().expect("fixture stdout"));
    let pid = wait_for(&out, "ready")
        .split_whitespace()
        .nth(1)
        .expect("fixture prints its pid")
        .to_string();
    if delete_after_start {
        std::fs::remove_file(bin).expect("delete the running binary");
    }
    let mut hs = Command::new(heapscope())
        .args(["attach", "-p", &pid, "--tick", "100ms", "--folded"])
        .arg(&folded)
        .args(exact_flags())
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start heapscope");
    let err = lines_of(hs.stderr.take().expect("heapscope stderr"));
    wait_for(&err, "attached");
    // The first status line shows the session runs, so it has read the
    // target's memory map (and opened its modules) before the target
    // allocates and exits.
    wait_for(&err, "live");
    writeln!(stdin, "go").expect("signal fixture");
    wait_for(&out, "done");
    // The fixture exits before heapscope symbolizes anything.
    writeln!(stdin, "exit").expect("release fixture");
    assert_eq!(fixture.wait().expect("wait fixture").code(), Some(0));
    let report = {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut hs.stdout.take().expect("stdout"), &mut s)
            .expect("read report");
        s
    };
    let status = hs.wait().expect("wait heapscope");
    let stderr: Vec<String> = err.try_iter().collect();
    assert!(
        status.success(),
        "heapscope failed:\n{}\n{report}",
        stderr.join("\n")
    );
    let text = std::fs::read_to_string(&folded).expect("folded written");
    // heapscope's notes and warnings go with the report, to explain a failure.
    (
        text,
        format!("{report}\n--- heapscope stderr:\n{}", stderr.join("\n")),
    )
}

fn weight_of(folded: &str, suffix: &str) -> u64 {
    parse_folded(folded)
        .into_iter()
        .filter(|(frames, _)| frames.join(";").ends_with(suffix))
        .map(|(_, w)| w)
        .sum()
}

#[test]
fn live_process_functions_lines_and_inlines() {
    if !root_or_skip("live_process_functions_lines_and_inlines") {
        return;
    }
    let bin = fixture("symbols_c", "lines", FLAGS);
    let (folded, report) = profile(&bin, false, &["--lines"], "symbols-lines");
    let c = |m| line_of("symbols_c.c", m);
    // 10 calls of outer_function, each malloc(200) in inlined_alloc.
    let inlined = format!(
        "run_symbol_sites (symbols_c.c:{});outer_function (symbols_c.c:{});inlined_alloc (symbols_c.c:{}, inlined);malloc",
        c("run_calls_outer"),
        c("outer_calls_inline"),
        c("inlined_malloc")
    );
    assert_eq!(
        weight_of(&folded, &inlined),
        2000,
        "{inlined}\n{folded}\n{report}"
    );
    let direct = format!(
        "direct_caller (symbols_c.c:{});static_alloc (symbols_c.c:{});malloc",
        c("direct_calls_static"),
        c("static_alloc")
    );
    assert_eq!(
        weight_of(&folded, &direct),
        3000,
        "{direct}\n{folded}\n{report}"
    );
    assert!(report.contains("inlined_alloc (symbols_c.c:"), "{report}");

    // libc's own frames are named when its debug file is installed
    // (`cargo xtask setup` installs libc6-dbg).
    let dbg = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "libc6-dbg"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false);
    if dbg {
        assert!(
            folded.contains("__libc_start_call_main ("),
            "libc frame by name with a line:\n{folded}"
        );
    } else {
        eprintln!("libc6-dbg not installed: libc frame names not checked");
    }
}

#[test]
fn deleted_binary_of_exited_process_symbolizes() {
    if !root_or_skip("deleted_binary_of_exited_process_symbolizes") {
        return;
    }
    let built = fixture("symbols_c", "deleted", FLAGS);
    // A private copy: the test deletes it while the process runs.
    let dir = scratch("symbols-deleted-bin");
    let bin = dir.join("symbols_c-deleted");
    std::fs::copy(&built, &bin).expect("copy fixture");
    let (folded, _) = profile(&bin, true, &[], "symbols-deleted");
    assert!(!bin.exists());
    assert_eq!(
        weight_of(
            &folded,
            "run_symbol_sites;outer_function;inlined_alloc;malloc"
        ),
        2000,
        "{folded}"
    );
    assert_eq!(
        weight_of(
            &folded,
            "run_symbol_sites;direct_caller;static_alloc;malloc"
        ),
        3000,
        "{folded}"
    );
    assert!(!folded.contains("[symbols_c-deleted+"), "{folded}");
}

#[test]
fn a_command_that_exits_before_heapscope_runs_again_is_symbolized() {
    let test = "a_command_that_exits_before_heapscope_runs_again_is_symbolized";
    if !root_or_skip(test) {
        return;
    }
    let bin = fixture("quick_exit", "plain", FLAGS);
    let folded = scratch("quick-exit").join("out.folded");
    // The command stops heapscope, allocates and exits: heapscope reads
    // nothing of it before its exit, as on a machine whose CPUs are taken.
    // Held at `_exit`, its map is read then (without the hold, every frame
    // was a bare address).
    let out = Command::new(heapscope())
        .args(["run", "--quiet", "--folded"])
        .arg(&folded)
        .args(exact_flags())
        .arg("--")
        .arg(&bin)
        .arg("--stop-parent")
        .output()
        .expect("run heapscope");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "heapscope failed:\n{stderr}");
    assert!(!stderr.contains("is not held at its exit"), "{stderr}");
    let text = std::fs::read_to_string(&folded).expect("folded written");
    assert_eq!(
        weight_of(&text, "main;leak_at_once;malloc"),
        100_000,
        "{text}\n{stderr}"
    );
}
