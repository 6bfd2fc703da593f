//! `cargo xtask lint`: formatting and clippy with every warning an error,
//! the checks CI runs before the tests. Each step says what failed and how
//! to reproduce or fix it.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{cargo, workspace_root};

/// Runs `cargo fmt --check`, then clippy on every target with `-D warnings`
/// (the workspace lints deny `unwrap`, `expect` and unsafe blocks without a
/// `// SAFETY:` comment outside tests).
pub fn lint() -> Result<()> {
    let root = workspace_root()?;
    eprintln!("xtask lint: cargo fmt --all -- --check");
    let fmt = Command::new(cargo())
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"])
        .status()
        .context("cannot start cargo fmt (is rustfmt installed? `rustup component add rustfmt`)")?;
    if !fmt.success() {
        bail!("lint: formatting differs (the diff is above); run `cargo fmt --all` and commit");
    }
    eprintln!("xtask lint: cargo clippy --workspace --all-targets -- -D warnings");
    let clippy = Command::new(cargo())
        .current_dir(&root)
        .args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        .status()
        .context(
            "cannot start cargo clippy (is clippy installed? `rustup component add clippy`)",
        )?;
    if !clippy.success() {
        bail!(
            "lint: clippy found problems (listed above); reproduce with \
             `cargo clippy --workspace --all-targets -- -D warnings`"
        );
    }
    Ok(())
}
