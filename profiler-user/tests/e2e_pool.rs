//! End-to-end tests of custom pool allocators (`--alloc`, `--free`,
//! `--realloc`, `--pool-code`) on the pool fixture: the pool's call sites
//! exact, the pool's own chunks its footprint, never program allocations;
//! bad specs and absent functions refused with what to do. They need root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;
use std::process::Command;

use common::driver::*;
use common::*;

const POOL_FLAGS: [&str; 8] = [
    "--alloc",
    "pkg_malloc(size=arg1)",
    "--free",
    "pkg_free(ptr=arg1)",
    "--realloc",
    "pkg_realloc(ptr=arg1,size=arg2)",
    "--pool-code",
    "pool_init",
];

/// The fixture's start-up chunk (pool_init's malloc).
const CHUNK: u64 = 1 << 20;

#[test]
fn pool_call_sites_are_exact_and_its_chunks_are_footprint() {
    if !root_or_skip("pool_call_sites_are_exact_and_its_chunks_are_footprint") {
        return;
    }
    let bin = fixture("pool", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let expected = expected_sites(&bin);
    assert_eq!(expected.len(), 5, "fixture states its sites");
    let dir = scratch("pool");
    let folded = dir.join("out.folded");
    let fx = start_fixture(&bin);
    let mut flags = vec!["--exact", "--stacks", "fp"];
    flags.extend(POOL_FLAGS);
    flags.extend(["--folded", folded.to_str().expect("utf8")]);
    let a = attach(fx.pid, &flags);
    let Fixture {
        mut child,
        mut stdin,
        lines,
        ..
    } = fx;
    writeln!(stdin, "go").expect("signal fixture");
    let done = wait_for(&lines, "done", &mut Vec::new());
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "heapscope exit code; stderr:\n{stderr}");
    writeln!(stdin, "exit").expect("release fixture");
    assert_eq!(child.wait().expect("wait fixture").code(), Some(3));
    // One chunk from malloc at start-up, one mapped inside pkg_malloc.
    assert_eq!(done, format!("done {}", 2 * CHUNK));

    let headline = "+ custom pool pkg_malloc(size=arg1), pkg_realloc(ptr=arg1,size=arg2), \
                    pkg_free(ptr=arg1);";
    assert!(stderr.contains(headline), "first lines:\n{stderr}");
    assert!(report.contains(headline), "report:\n{report}");
    let folded = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact_no_stack_lost(&folded, &expected, &report);
    // The pool's chunks are no program allocation: neither the start-up
    // malloc nor the mmap made inside pkg_malloc has a site.
    for own in ["pool_init", "pool_grow", "pkg_malloc", "mmap"] {
        assert!(!folded.contains(own), "{own} is the pool's own\n{folded}");
    }
    // The exact live heap is the pool users' bytes alone.
    let live: u64 = expected.values().sum();
    assert!(
        report.contains(&format!("({} B)", thousands(live))),
        "live heap {live}\n{report}"
    );
    // The start-up chunk is the pool's footprint.
    assert_eq!(
        counter(
            &report,
            "bytes mapped by the allocator itself (or a pool's own blocks)"
        ),
        Some(CHUNK),
        "{report}"
    );
    for c in [
        "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)",
        "live map full",
        "per-thread state full",
        "ring buffer lost",
        "unmatched returns",
    ] {
        assert_eq!(counter(&report, c), Some(0), "{c}\n{report}");
    }
    // pkg_realloc's own pkg_malloc/pkg_free and pool_grow's mmap are nested.
    assert!(
        counter(&report, "nested allocator calls (counted once)").unwrap_or(0) >= 3,
        "{report}"
    );
}

/// `1207600` → `1,207,600`, as the report prints exact bytes.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn bad_pool_specs_are_refused_with_an_example() {
    // Refused while parsing the options: no process is touched, no root needed.
    for (option, spec, says) in [
        ("--alloc", "pkg_malloc(size)", "names no register"),
        ("--alloc", "pkg_malloc(size=arg9)", "arg1..arg6"),
        ("--free", "pkg_free(size=arg1)", "unknown argument 'size'"),
        ("--realloc", "pkg_realloc(ptr=arg1)", "where is 'size'"),
    ] {
        let out = Command::new(heapscope())
            .args(["attach", "-p", "1", option, spec])
            .output()
            .expect("run heapscope");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{option} {spec}: {err}");
        assert!(
            err.contains(spec) && err.contains(says),
            "{option} {spec}: {err}"
        );
        assert!(err.contains("for example"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = Command::new(heapscope())
        .args(["attach", "-p", "1", "--free", "pkg_free(ptr=arg1)"])
        .output()
        .expect("run heapscope");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs its allocation function too"), "{err}");
}

#[test]
fn an_absent_pool_function_names_the_symbol_and_the_pid() {
    if !root_or_skip("an_absent_pool_function_names_the_symbol_and_the_pid") {
        return;
    }
    let bin = fixture("pool", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let fx = start_fixture(&bin);
    let out = Command::new(heapscope())
        .args(["attach", "-p", &fx.pid.to_string()])
        .args(["--alloc", "shm_malloc(size=arg1)"])
        .output()
        .expect("run heapscope");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "--alloc 'shm_malloc(size=arg1)': pid {} defines no function shm_malloc",
            fx.pid
        )),
        "{err}"
    );
    fx.run_to_exit();
}
