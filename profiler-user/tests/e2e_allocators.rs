//! End-to-end tests of allocator discovery: the every-API fixture and a C++
//! fixture under Debian's jemalloc, tcmalloc and mimalloc (LD_PRELOAD), static
//! glibc and musl builds, and a program whose allocator heapscope does not
//! know. Exact live bytes per call site with `--exact`. They need root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::driver::*;
use common::*;

const LIBS: &str = "/usr/lib/x86_64-linux-gnu";

/// (name, library, what the first lines call it)
const PRELOADS: [(&str, &str, &str); 3] = [
    (
        "jemalloc",
        "libjemalloc.so.2",
        "allocator: jemalloc 5.3.0, preloaded",
    ),
    (
        "tcmalloc",
        "libtcmalloc_minimal.so.4",
        "allocator: tcmalloc 2.10, preloaded",
    ),
    (
        "mimalloc",
        "libmimalloc.so.2",
        "allocator: mimalloc 2.0.9, preloaded",
    ),
];

const EXACT_FP: [&str; 3] = ["--exact", "--stacks", "fp"];

/// The allocator library, or a failure naming the setup step (a missing
/// library is a broken machine, not a skip).
fn library(file: &str) -> PathBuf {
    let p = Path::new(LIBS).join(file);
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask setup` (Debian libjemalloc2, libtcmalloc-minimal4, libmimalloc2.0)",
        p.display()
    );
    p
}

/// Runs `bin` (optionally with `preload`) under `attach --exact --stacks fp`
/// through the fixture protocol; returns (folded, report, stderr).
fn profile(bin: &Path, preload: Option<&Path>, test: &str) -> (String, String, String) {
    profile_with(bin, preload, test, &EXACT_FP)
}

/// [`profile`] with other capture flags.
fn profile_with(
    bin: &Path,
    preload: Option<&Path>,
    test: &str,
    flags: &[&str],
) -> (String, String, String) {
    let dir = scratch(test);
    let folded = dir.join("out.folded");
    let mut cmd = Command::new(bin);
    if let Some(p) = preload {
        cmd.env("LD_PRELOAD", p);
    }
    let mut fx = start_command(cmd);
    let mut args: Vec<&str> = flags.to_vec();
    args.extend(["--folded", folded.to_str().expect("utf8")]);
    let a = attach(fx.pid, &args);
    writeln!(fx.stdin, "go").expect("signal fixture");
    wait_for(&fx.lines, "done", &mut Vec::new());
    interrupt(&a.child);
    let (code, report, stderr) = finish(a);
    assert_eq!(code, 0, "heapscope exit code; stderr:\n{stderr}");
    writeln!(fx.stdin, "exit").expect("release fixture");
    assert_eq!(fx.child.wait().expect("wait fixture").code(), Some(3));
    let folded = std::fs::read_to_string(&folded).expect("folded written");
    (folded, report, stderr)
}

type Expected = std::collections::BTreeMap<String, u64>;

fn assert_exact(folded: &str, report: &str, expected: &Expected) {
    assert_sites_exact_no_stack_lost(folded, expected, report);
    assert_pre_attach_and_no_losses(report);
}

fn assert_pre_attach_and_no_losses(report: &str) {
    assert_eq!(
        counter(report, "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)"),
        Some(10),
        "{report}"
    );
    for lost in ["live map full", "per-thread state full", "ring buffer lost"] {
        assert_eq!(counter(report, lost), Some(0), "{lost}\n{report}");
    }
}

/// Live bytes per expected site: each stack counts for the innermost of its
/// frames that is a site name (libstdc++'s `operator new` sits between the
/// site and malloc under glibc).
fn by_named_frame(folded: &str, expected: &Expected) -> Expected {
    let mut out: Expected = expected.keys().map(|k| (k.clone(), 0)).collect();
    for (frames, w) in parse_folded(folded) {
        if let Some(site) = frames.iter().rev().find(|f| expected.contains_key(*f)) {
            *out.entry(site.clone()).or_insert(0) += w;
        }
    }
    out
}

#[test]
fn every_api_under_preloaded_allocators_is_exact() {
    if !root_or_skip("every_api_under_preloaded_allocators_is_exact") {
        return;
    }
    let bin = fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
    let expected = expected_sites(&bin);
    for (name, lib, headline) in PRELOADS {
        let lib = library(lib);
        let (folded, report, stderr) = profile(&bin, Some(&lib), &format!("c-{name}"));
        assert!(stderr.contains(headline), "{name}: first lines\n{stderr}");
        assert!(report.contains(headline), "{name}: report\n{report}");
        assert_exact(&folded, &report, &expected);
    }
}

#[test]
fn cxx_new_and_delete_under_every_allocator_are_exact() {
    if !root_or_skip("cxx_new_and_delete_under_every_allocator_are_exact") {
        return;
    }
    let bin = fixture_with(
        "c++",
        "leaks_cpp.cpp",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer"],
    );
    let expected = expected_sites(&bin);
    assert_eq!(expected.len(), 6, "fixture states its sites");
    // DWARF stacks: Debian's libstdc++ has no frame pointers.
    let flags = ["--exact", "--ringbuf-size", "64MiB"];
    // glibc: libstdc++'s operator new calls malloc, counted once as malloc.
    let (folded, report, _) = profile_with(&bin, None, "cpp-glibc", &flags);
    assert_eq!(by_named_frame(&folded, &expected), expected, "{folded}");
    assert_pre_attach_and_no_losses(&report);
    for (name, lib, headline) in PRELOADS {
        let lib = library(lib);
        let (folded, report, stderr) =
            profile_with(&bin, Some(&lib), &format!("cpp-{name}"), &flags);
        assert!(stderr.contains(headline), "{name}\n{stderr}");
        assert_eq!(
            by_named_frame(&folded, &expected),
            expected,
            "{name}: {folded}"
        );
        assert_pre_attach_and_no_losses(&report);
        // The allocator's own operator new, never through malloc.
        assert!(
            folded.contains(";leak_new;operator new "),
            "{name}: {folded}"
        );
        assert!(!folded.contains(";leak_new;malloc "), "{name}: {folded}");
    }
}

#[test]
fn static_glibc_and_musl_are_exact() {
    if !root_or_skip("static_glibc_and_musl_are_exact") {
        return;
    }
    let flags = ["-static", "-O2", "-g", "-fno-omit-frame-pointer"];
    for (compiler, variant, headline) in [
        ("cc", "static", "allocator: glibc, in the executable"),
        ("musl-gcc", "musl", "allocator: musl, in the executable"),
    ] {
        let bin = fixture_with(compiler, "leaks.c", variant, &flags);
        let expected = expected_sites(&bin);
        let (folded, report, stderr) = profile(&bin, None, variant);
        assert!(stderr.contains(headline), "{variant}\n{stderr}");
        assert_exact(&folded, &report, &expected);
    }
}

#[test]
fn an_allocator_heapscope_does_not_know_is_named() {
    if !root_or_skip("an_allocator_heapscope_does_not_know_is_named") {
        return;
    }
    let bin = fixture(
        "custom_malloc",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer"],
    );
    let (folded, report, stderr) = profile(&bin, None, "unknown");
    let warning = "defines malloc but is no allocator heapscope knows";
    let first: Vec<&str> = stderr.lines().take(3).collect();
    assert!(
        first.iter().any(|l| l.contains(warning)),
        "in the first lines:\n{stderr}"
    );
    assert!(
        stderr.contains("allocator: an allocator heapscope does not know, in the executable"),
        "{stderr}"
    );
    assert!(
        report
            .lines()
            .take(4)
            .any(|l| l.starts_with("WARNING:") && l.contains(warning)),
        "{report}"
    );
    // Its standard malloc is still probed and exact.
    assert_sites_exact(&folded, &expected_sites(&bin));
}

/// Builds `tests/fixtures/rust_jemalloc` (its own workspace; jemalloc is
/// compiled from source by tikv-jemalloc-sys, about a minute of CPU the
/// first time) once per test binary, beside the other fixtures.
fn rust_jemalloc_fixture() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/rust_jemalloc");
            let c_fixture = fixture("leaks", "fp", &["-O2", "-g", "-fno-omit-frame-pointer"]);
            let target = c_fixture.with_file_name("rust_jemalloc-target");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--release", "--locked", "--manifest-path"])
                .arg(src.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_TARGET_DIR")
                .env_remove("CARGO_BUILD_TARGET")
                .status()
                .expect("run cargo");
            assert!(status.success(), "building {} failed", src.display());
            target.join("release/rust_jemalloc")
        })
        .clone()
}

#[test]
fn rust_with_tikv_jemallocator_is_exact() {
    if !root_or_skip("rust_with_tikv_jemallocator_is_exact") {
        return;
    }
    let bin = rust_jemalloc_fixture();
    let expected = expected_sites(&bin);
    assert_eq!(expected.len(), 8, "fixture states its sites");
    // DWARF stacks: Rust's std is built without frame pointers.
    let flags = ["--exact", "--ringbuf-size", "64MiB"];
    let (folded, report, stderr) = profile_with(&bin, None, "rust-jemalloc", &flags);
    let headline = "jemalloc 5.3.0 (_rjem_-prefixed), in the executable";
    assert!(stderr.contains(headline), "first lines\n{stderr}");
    assert!(report.contains(headline), "report\n{report}");
    assert_eq!(by_named_frame(&folded, &expected), expected, "{folded}");
    // Every one of jemalloc's own API entry points the program reached.
    for api in ["malloc", "calloc", "realloc", "mallocx", "rallocx"] {
        assert!(
            folded.lines().any(|l| l
                .rsplit_once(' ')
                .is_some_and(|(s, _)| s.ends_with(&format!(";{api}")))),
            "{api}\n{folded}"
        );
    }
    // jemalloc's own mappings (its extents for the 4 MiB blocks, the
    // thread's cache) are nested in its calls: no program mmap anywhere.
    assert!(!folded.contains(";mmap "), "{folded}");
    assert!(
        counter(&report, "nested allocator calls (counted once)").unwrap_or(0) > 0,
        "{report}"
    );
    for lost in ["live map full", "per-thread state full", "ring buffer lost"] {
        assert_eq!(counter(&report, lost), Some(0), "{lost}\n{report}");
    }
    // The exact live heap is the sites' bytes plus what the program's own
    // thread left in libc (its thread-local blocks), a few hundred bytes.
    let sites: u64 = expected.values().sum();
    let live = report
        .lines()
        .find_map(|l| l.strip_prefix("live heap: "))
        .and_then(|l| {
            l.split_once('(')?
                .1
                .split_once(" B)")
                .map(|(n, _)| n.replace(',', ""))
        })
        .and_then(|n| n.parse::<u64>().ok())
        .expect("live heap line");
    assert!(
        live >= sites && live - sites < 4096,
        "live {live} vs sites {sites}\n{report}"
    );
}

#[test]
fn a_stripped_rust_jemalloc_is_named_as_unseen() {
    if !root_or_skip("a_stripped_rust_jemalloc_is_named_as_unseen") {
        return;
    }
    let bin = rust_jemalloc_fixture();
    let stripped = bin.with_file_name("rust_jemalloc-stripped");
    std::fs::copy(&bin, &stripped).expect("copy fixture");
    let status = Command::new("strip")
        .arg(&stripped)
        .status()
        .expect("run strip");
    assert!(status.success());
    let (_, report, stderr) = profile_with(
        &stripped,
        None,
        "rust-jemalloc-stripped",
        &["--exact", "--stacks", "fp"],
    );
    let warning = "contains jemalloc 5.3.0 (its own messages are in it) but none of its symbols";
    let first: Vec<&str> = stderr.lines().take(4).collect();
    assert!(
        first.iter().any(|l| l.contains(warning)),
        "in the first lines:\n{stderr}"
    );
    assert!(
        report
            .lines()
            .take(5)
            .any(|l| l.starts_with("WARNING:") && l.contains(warning)),
        "{report}"
    );
}

#[test]
fn run_through_a_symlink_keeps_the_allocators_own_mmaps_apart() {
    if !root_or_skip("run_through_a_symlink_keeps_the_allocators_own_mmaps_apart") {
        return;
    }
    // rustup's toolchains are symlinks: `heapscope run` of a program with
    // its allocator in the executable, started through one, must know the
    // executable by the path its memory map shows, or jemalloc's own mmaps
    // (seen on rustc: 43 MiB) become program allocations.
    let bin = rust_jemalloc_fixture();
    let expected = expected_sites(&bin);
    let dir = scratch("rust-jemalloc-link");
    let link = dir.join("linked-program");
    std::os::unix::fs::symlink(&bin, &link).expect("symlink the fixture");
    let folded = dir.join("out.folded");
    // stdin is closed: the fixture runs its sites at once.
    let out = Command::new(heapscope())
        .args([
            "run",
            "--exact",
            "--ringbuf-size",
            "64MiB",
            "--quiet",
            "--folded",
        ])
        .arg(&folded)
        .arg("--")
        .arg(&link)
        .output()
        .expect("heapscope run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let folded = std::fs::read_to_string(&folded).expect("folded written");
    assert_eq!(by_named_frame(&folded, &expected), expected, "{folded}");
    // jemalloc's own mmaps are nested in its calls; only those of its
    // start-up constructor, which runs before `run` has read the new image's
    // memory map (a limit the README states), may show.
    let program_mmaps: Vec<&str> = folded
        .lines()
        .filter(|l| l.contains(";mmap ") && !l.contains("malloc_init_hard"))
        .collect();
    assert!(program_mmaps.is_empty(), "{program_mmaps:#?}");
}

#[test]
fn run_of_a_program_linking_its_allocator_probes_it_from_the_start() {
    if !root_or_skip("run_of_a_program_linking_its_allocator_probes_it_from_the_start") {
        return;
    }
    // As Debian's redis-server links libjemalloc.so.2: `run` used to know
    // only the executable, LD_PRELOAD and libc, probed glibc, and found
    // jemalloc only once the exec was applied; what the program allocated
    // before that went unseen (redis-server --version: 5 calls of ~12,000).
    let jemalloc = library("libjemalloc.so.2");
    let jemalloc = jemalloc.to_str().expect("utf8");
    let bin = fixture(
        "leaks",
        "linked-jemalloc",
        &[
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-Wl,--no-as-needed",
            jemalloc,
        ],
    );
    let expected = expected_sites(&bin);
    let folded = scratch("linked-jemalloc").join("out.folded");
    // stdin is closed: the fixture runs its sites at once.
    let out = Command::new(heapscope())
        .args(["run"])
        .args(EXACT_FP)
        .arg("--folded")
        .arg(&folded)
        .arg("--")
        .arg(&bin)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("heapscope run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("allocator: jemalloc 5.3.0, linked"),
        "{stderr}"
    );
    assert!(!stderr.contains("has another allocator"), "{stderr}");
    let folded = std::fs::read_to_string(&folded).expect("folded written");
    assert_sites_exact_no_stack_lost(&folded, &expected, &report);
}
