//! `go tool pprof` (Debian's golang-go), run offline, and its `-top` table.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// `go tool pprof ARGS`, offline and with its caches in `dir`.
pub fn go_pprof(dir: &Path, args: &[&str]) -> String {
    let home = dir.join("go-home");
    std::fs::create_dir_all(&home).expect("go home");
    // Every node, however small (pprof hides nodes under 0.5% by default).
    let out = Command::new("go")
        .args(["tool", "pprof", "-nodefraction=0", "-nodecount=100000"])
        .args(args)
        .env("HOME", &home)
        .env("GOCACHE", home.join("cache"))
        .env("GOPATH", home.join("gopath"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("PPROF_TMPDIR", &home)
        .output()
        .expect("run `go tool pprof` (install golang-go: `cargo xtask setup`)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "go tool pprof {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Rows of `-top` output (`-unit=byte`): function (with `file:line` under
/// `-lines`) → flat bytes.
pub fn top_rows(text: &str) -> BTreeMap<String, i64> {
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.trim_start().starts_with("flat") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 6 {
            continue;
        }
        let Ok(flat) = cols[0].trim_end_matches('B').parse::<i64>() else {
            continue;
        };
        *rows.entry(cols[5..].join(" ")).or_insert(0) += flat;
    }
    rows
}
