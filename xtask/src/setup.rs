//! Idempotent installation of what the build and the tests need.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::util::{have, output, run};

const BPF_LINKER_VERSION: &str = "0.10.3";

/// Installs rust-src for nightly, bpf-linker, and Debian packages, when missing.
pub fn setup() -> Result<()> {
    nightly_rust_src()?;
    lint_components()?;
    bpf_linker()?;
    debian_packages()?;
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(()),
        Some(_) => {
            eprintln!("xtask setup: installing rust-src for nightly");
            run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))
        }
        None => {
            eprintln!("xtask setup: installing the nightly toolchain with rust-src");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
        }
    }
}

/// rustfmt and clippy for the toolchain that builds the workspace (`xtask lint`).
fn lint_components() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    for c in ["rustfmt", "clippy"] {
        if !installed.lines().any(|l| l.starts_with(c)) {
            eprintln!("xtask setup: installing {c}");
            run(Command::new("rustup").args(["component", "add", c]))?;
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
    // bpf-linker 0.11+ needs a system LLVM 23; 0.10.3 uses nightly's own LLVM.
    run(Command::new(crate::util::cargo()).args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
    .context("installing bpf-linker")
}

/// Commands the tests use, and the Debian package that provides each.
const PACKAGES: &[(&str, &str)] = &[
    ("cc", "gcc"),
    ("setpriv", "util-linux"),
    ("strip", "binutils"),
    // tikv-jemalloc-sys builds jemalloc (configure + make) for the Rust
    // jemalloc fixture.
    ("make", "make"),
    ("g++", "g++"),
    ("musl-gcc", "musl-tools"),
    // The web UI tests: headless chromium driven over WebDriver.
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    // The /metrics test: Prometheus' parser (promtool) and a real scrape.
    ("promtool", "prometheus"),
    // Serves a fixture's split debug file in the debuginfod test.
    ("debuginfod", "debuginfod"),
];

/// Debian packages that provide files rather than commands, checked with
/// `dpkg -s`: `libc6-dbg` puts libc's DWARF under `/usr/lib/debug/.build-id`,
/// so the symbolizer names libc frames (`__libc_start_call_main`); `python3`
/// is Debian's interpreter (built without frame pointers), which a test
/// profiles — another python3 earlier on PATH does not count; `golang-go`
/// gives `go tool pprof`, which the pprof tests read heapscope's exports with;
/// jemalloc, tcmalloc and mimalloc are the allocators the end-to-end tests
/// preload under the fixtures (and the benchmark times).
const FILE_PACKAGES: &[&str] = &[
    "libc6-dbg",
    "python3",
    "golang-go",
    "libjemalloc2",
    "libtcmalloc-minimal4",
    "libmimalloc2.0",
];

/// The peers `cargo xtask bench` compares with (not needed by the tests, so
/// not in `setup`): heaptrack, and bcc's memleak (`bpfcc-tools`) with
/// Debian's kernel headers to compile its program against (this VM's kernel
/// has none of its own; see `bench/memleak.rs`). Each installs in about
/// 10 s here. A failed install is said, not fatal: the benchmark then skips
/// that row.
pub fn bench_packages() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let headers = std::path::Path::new(&format!("/lib/modules/{}/build", release.trim())).exists()
        || std::fs::read_dir("/usr/src").is_ok_and(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with("-amd64"))
        });
    let mut missing = Vec::new();
    if !have("heaptrack") {
        missing.push("heaptrack");
    }
    if !std::path::Path::new("/usr/sbin/memleak-bpfcc").exists() {
        missing.push("bpfcc-tools");
    }
    if !headers {
        missing.push("linux-headers-amd64");
    }
    if missing.is_empty() || !have("apt-get") {
        return;
    }
    eprintln!("xtask bench: installing {missing:?} with apt-get (peers in the table)");
    let ok = run(Command::new("apt-get").arg("update")).and_then(|()| {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    });
    if let Err(e) = ok {
        eprintln!("xtask bench: {missing:?} not installed ({e:#}); their rows are skipped");
    }
}

/// True when dpkg reports `pkg` as installed; false without dpkg.
fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f", "${Status}", pkg]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn debian_packages() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !have(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if have("dpkg-query") {
        missing.extend(FILE_PACKAGES.iter().filter(|p| !dpkg_installed(p)));
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !have("apt-get") {
        anyhow::bail!("missing {missing:?} and no apt-get to install them; install them by hand");
    }
    eprintln!("xtask setup: installing {missing:?} with apt-get");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
