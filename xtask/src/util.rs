//! Small helpers shared by the tasks.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context as _, Result};

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent()
        .map(PathBuf::from)
        .context("xtask has no parent directory")
}

/// The cargo that runs us.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs a command, failing with its command line when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None when it cannot start or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when `name` is found on PATH.
pub fn have(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Builds heapscope in release mode and returns the binary's path.
pub fn build_heapscope() -> Result<PathBuf> {
    let root = workspace_root()?;
    run(Command::new(cargo()).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "profiler-user",
        "--bin",
        "heapscope",
    ]))?;
    Ok(target_dir(&root).join("release/heapscope"))
}

/// Cargo's target directory: CARGO_TARGET_DIR when set, else `ROOT/target`.
pub fn target_dir(root: &std::path::Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Compiles a C program from tests/fixtures into target/xtask/.
pub fn build_c(name: &str, flags: &[&str]) -> Result<PathBuf> {
    let root = workspace_root()?;
    let out_dir = root.join("target/xtask");
    std::fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(name);
    run(Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(root.join(format!("tests/fixtures/{name}.c"))))?;
    Ok(out)
}
