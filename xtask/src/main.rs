//! Project tasks: `cargo xtask setup | demo | lint | test | bench`.
//!
//! `setup` is idempotent and installs what a fresh machine lacks; `demo` and
//! `test` run it first, so the README's two commands work on a fresh clone.

mod bench;
mod bench_attach;
mod bench_load;
mod child;
mod demo;
mod lint;
mod setup;
mod util;

use anyhow::{bail, Result};

const USAGE: &str = "usage: cargo xtask <setup|demo|lint|test|bench> [args]
  setup   install rust-src (nightly), rustfmt, clippy, bpf-linker 0.10.3 and the Debian packages the tests need
  demo    set up, build, start the bundled demo server, attach heapscope by PID, print the report
  lint    cargo fmt --check, then clippy on every target with -D warnings
  test    set up, lint, build, run every test (the end-to-end tests need root)
  bench   malloc/free pair cost per mode at 1 and 2 threads (vs no profiler, bare probes,
          heaptrack and bcc's memleak), then attach/detach times idle and saturated (a few
          minutes); --long: also probes at +0, per allocator, symbolization, web server;
          --symbols, --server, --allocators, --attach: only that one; --peers: only the
          baselines and the peers; --pairs N;
          --load: only the records --exact loses under sustained and bursty load
          (also in --long), --load-seconds N per row (default 10)";

fn main() {
    if let Err(e) = run() {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match cmd.as_str() {
        "setup" => setup::setup(),
        "demo" => {
            setup::setup()?;
            demo::demo(rest)
        }
        "lint" => lint::lint(),
        "test" => {
            setup::setup()?;
            // What CI runs: the lints first, so a style problem fails fast
            // and says so, before half an hour of end-to-end tests.
            lint::lint()?;
            test(rest)
        }
        "bench" => {
            setup::setup()?;
            bench::bench(rest)
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task '{other}'\n{USAGE}"),
    }
}

/// Builds everything and runs every test of the workspace.
fn test(extra: &[String]) -> Result<()> {
    let root = util::workspace_root()?;
    let mut cmd = std::process::Command::new(util::cargo());
    cmd.current_dir(&root)
        .args(["test", "--workspace"])
        .args(extra);
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        // In CI the end-to-end tests must run, not skip.
        cmd.env("HEAPSCOPE_REQUIRE_ROOT", "1");
    }
    util::run(&mut cmd)
}
