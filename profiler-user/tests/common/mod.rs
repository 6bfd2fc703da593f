//! Shared helpers of the end-to-end tests: fixture builds, root checks,
//! running heapscope and parsing its outputs.
#![allow(dead_code)]

pub mod driver;
pub mod gopprof;
pub mod http;
pub mod serve;
pub mod webdriver;
pub mod xthread;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The heapscope binary built for this test run.
pub fn heapscope() -> &'static str {
    env!("CARGO_BIN_EXE_heapscope")
}

/// True when the end-to-end tests can load eBPF. Without root they say they
/// were skipped; with `HEAPSCOPE_REQUIRE_ROOT=1` (CI) a skip is a failure.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var("HEAPSCOPE_REQUIRE_ROOT").as_deref() == Ok("1") {
            panic!("{test}: needs root but HEAPSCOPE_REQUIRE_ROOT=1");
        }
        eprintln!(
            "SKIPPED {test}: needs root to load eBPF (run as root, e.g. `sudo cargo xtask test`)"
        );
    }
    root
}

fn fixtures_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn build_dir() -> PathBuf {
    // Beside the test binary, so `cargo clean` removes it and runs do not collide.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .expect("test binary directory")
        .join("heapscope-fixtures");
    std::fs::create_dir_all(&dir).expect("create fixture dir");
    dir
}

/// Compiles `tests/fixtures/<name>.c` with the given flags once per test binary.
pub fn fixture(name: &str, variant: &str, flags: &[&str]) -> PathBuf {
    fixture_with("cc", &format!("{name}.c"), variant, flags)
}

/// Compiles `tests/fixtures/<source>` with `compiler` (`c++`, `musl-gcc`)
/// into `<stem>-<variant>`.
///
/// Built once per test process, into a temporary name renamed over the
/// result: rebuilt in place for each test, a fixture that another test's
/// process was about to exec (exec_leak execs itself) could be half
/// written, and the exec failed.
pub fn fixture_with(compiler: &str, source: &str, variant: &str, flags: &[&str]) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(|| std::sync::Mutex::new(BTreeMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let key = format!("{compiler} {source} {variant} {}", flags.join(" "));
    if let Some(out) = built.get(&key) {
        return out.clone();
    }
    let src = fixtures_src().join(source);
    let stem = source.split('.').next().unwrap_or(source);
    let out = build_dir().join(format!("{stem}-{variant}"));
    let tmp = build_dir().join(format!(".{stem}-{variant}.{}", std::process::id()));
    let status = Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("run {compiler} (install it: `cargo xtask setup`): {e}"));
    assert!(status.success(), "compiling {} failed", src.display());
    std::fs::rename(&tmp, &out).expect("move the fixture into place");
    built.insert(key, out.clone());
    out
}

/// The fixture's own statement of the truth: `site -> live bytes`.
pub fn expected_sites(fixture: &Path) -> BTreeMap<String, u64> {
    let out = Command::new(fixture)
        .arg("--expect")
        .output()
        .expect("run fixture --expect");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (name, n) = l.split_once(' ')?;
            Some((name.to_string(), n.trim().parse().ok()?))
        })
        .collect()
}

/// Parses folded stacks: `frames... weight` per line.
pub fn parse_folded(text: &str) -> Vec<(Vec<String>, u64)> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (stack, w) = l.rsplit_once(' ').expect("folded line has a weight");
            (
                stack.split(';').map(str::to_string).collect(),
                w.parse().expect("folded weight is an integer"),
            )
        })
        .collect()
}

/// Sums folded weights by the call-site function: the frame just above the
/// allocator API leaf.
pub fn by_site(folded: &[(Vec<String>, u64)]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (frames, w) in folded {
        if frames.len() >= 2 {
            *out.entry(frames[frames.len() - 2].clone()).or_insert(0) += w;
        }
    }
    out
}

/// The bytes of the report's headline `live heap: 1.2 MiB (1,234,567 B) ...`
/// (exact, or `~` estimated under uprobe sessions).
pub fn headline_live_bytes(report: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.starts_with("live heap: "))?;
    let inner = line.split_once('(')?.1.split_once(" B)")?.0;
    inner.replace(',', "").parse().ok()
}

/// The report's counter of unsampled calls seen at entry only (uprobe sessions).
pub const ENTRY_ONLY: &str =
    "allocations seen at entry only (uprobe sessions; their frees are in frees_unknown)";

/// Reads `name: N` from the report's counters.
pub fn counter(report: &str, name: &str) -> Option<u64> {
    report.lines().find_map(|l| {
        l.trim()
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// A scratch directory for one test's outputs.
pub fn scratch(test: &str) -> PathBuf {
    let d = build_dir().join(format!("out-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// Asserts every site of `expected` has exactly its live bytes in `folded`
/// and that the report counted no failed stack capture (heapscope's own
/// stack table has no bucket collisions: a failure is a bug).
#[allow(dead_code)]
pub fn assert_sites_exact_no_stack_lost(
    folded: &str,
    expected: &BTreeMap<String, u64>,
    report: &str,
) {
    assert_eq!(
        counter(report, "stack capture failed").unwrap_or(0),
        0,
        "stack captures failed\n{report}"
    );
    assert_sites_exact(folded, expected);
}

/// Asserts every site of `expected` has exactly its live bytes in `folded`.
pub fn assert_sites_exact(folded: &str, expected: &BTreeMap<String, u64>) {
    let sites = by_site(&parse_folded(folded));
    for (site, want) in expected {
        let got = sites.get(site).copied().unwrap_or(0);
        assert_eq!(got, *want, "live bytes of {site}\nfolded:\n{folded}");
    }
}

/// The report's `per process` rows: pid (or `total`) → live bytes.
#[allow(dead_code)]
pub fn site_sum_rows(report: &str) -> std::collections::BTreeMap<String, u64> {
    let mut rows = std::collections::BTreeMap::new();
    let Some(at) = report.find("per process (sums of its call sites") else {
        return rows;
    };
    for l in report[at..].lines().skip(2) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(bytes) = f.get(1).and_then(|b| b.parse().ok()) else {
            break;
        };
        rows.insert(f[0].to_string(), bytes);
        if f[0] == "total" {
            break;
        }
    }
    rows
}

/// Every process's stacks are under its own root frame `comm [pid P]`, and
/// each holds exactly its leak at its own call site (a stack capture the
/// report counts as failed may move bytes to `[unknown stack]`, which must
/// then be exactly what is missing).
#[allow(dead_code)]
pub fn assert_per_process_sites(
    folded: &str,
    leaked: &std::collections::BTreeMap<u32, u64>,
    site: impl Fn(u32) -> &'static str,
    report: &str,
) {
    let lines = parse_folded(folded);
    for (pid, bytes) in leaked {
        let root = format!("[pid {pid}]");
        let own: String = lines
            .iter()
            .filter(|(frames, _)| frames[0].ends_with(&root))
            .map(|(frames, w)| format!("{} {w}\n", frames[1..].join(";")))
            .collect();
        let all: u64 = parse_folded(&own).iter().map(|(_, w)| w).sum();
        assert_eq!(all, *bytes, "pid {pid}'s live bytes\n{folded}");
        let expected = std::collections::BTreeMap::from([(site(*pid).to_string(), *bytes)]);
        assert_sites_exact_no_stack_lost(&own, &expected, report);
    }
    assert!(
        lines.iter().all(|(frames, _)| frames[0].contains("[pid ")),
        "every stack has its process\n{folded}"
    );
}

/// Spawns `cmd`, retrying while its file is "busy" (ETXTBSY): a binary the
/// test just wrote or copied can still be open for writing in a child that
/// another test thread forked at that moment (until that child execs).
#[allow(dead_code)]
pub fn spawn_when_not_busy(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
