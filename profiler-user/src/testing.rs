//! Helpers for unit tests.

/// True under CI (`cargo xtask test` with `CI=true` sets
/// `HEAPSCOPE_REQUIRE_ROOT=1`), where nothing a test needs may be missing.
fn strict() -> bool {
    let on = |k: &str| std::env::var(k).is_ok_and(|v| v == "1" || v == "true");
    on("HEAPSCOPE_REQUIRE_ROOT") || on("CI")
}

/// A test whose prerequisite is missing: a failure under CI, elsewhere a
/// `SKIPPED` line (as the end-to-end tests do without root).
pub(crate) fn skip(why: &str) {
    assert!(
        !strict(),
        "{why}: under CI a missing prerequisite is a failure (`cargo xtask setup` installs it)"
    );
    eprintln!("SKIPPED: {why}");
}
