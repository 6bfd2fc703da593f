//! Debug information the user is missing: re-symbolizing with what can be
//! found now (installed packages, debuginfod), and saying which modules
//! still lack symbols and how to get them.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debuginfod::{self, Debuginfod};
use crate::resymbolize::{self, modules_without_symbols};
use crate::symbolize::DEFAULT_DEBUG_DIR;
use crate::timeline::{SiteInfo, Timeline};

/// Modules listed at most (the rest are counted).
const MAX_LISTED: usize = 6;

/// Re-symbolizes `timeline`'s sites with `/usr/lib/debug`, the debuginfod
/// cache and, with `DEBUGINFOD_URLS`, its servers; says what changed.
pub(super) fn resymbolize(timeline: &mut Timeline) {
    let mut client = Debuginfod::from_env();
    if let Some(c) = &client {
        if !c.skipped.is_empty() {
            eprintln!(
                "heapscope: note: DEBUGINFOD_URLS entries skipped (only http:// is supported): {}",
                c.skipped.join(" ")
            );
        }
    }
    let stats = resymbolize::resymbolize(
        timeline.sites_mut(),
        vec![PathBuf::from(DEFAULT_DEBUG_DIR)],
        client.as_mut(),
    );
    eprintln!(
        "heapscope: re-symbolized: {} of {} unresolved addresses now have symbols",
        stats.unknown_before - stats.unknown_after,
        stats.unknown_before
    );
    for (module, note) in &stats.modules {
        log::info!("{module}: {note}");
        if note.contains("debuginfod failed") {
            eprintln!("heapscope: note: {note}");
        }
    }
}

/// After a live session: with `DEBUGINFOD_URLS` set and frames left
/// unresolved, fetch and re-symbolize (the probes are already detached, so
/// the bounded lookups delay only the report).
pub(super) fn after_session(timeline: &mut Timeline) {
    let wanted = std::env::var("DEBUGINFOD_URLS").is_ok_and(|u| !u.trim().is_empty());
    if wanted && !modules_without_symbols(timeline.sites()).is_empty() {
        resymbolize(timeline);
    }
}

/// The Debian package that owns `path`, when dpkg knows it.
fn owning_package(path: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-S", path])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let pkg = text.lines().next()?.split(':').next()?.trim().to_string();
    (!pkg.is_empty()).then_some(pkg)
}

/// Debug package names to look for, for package `pkg` (`python3.11-dbg`
/// for `python3.11-minimal`, `memcached-dbgsym` from the debian-debug archive).
fn debug_candidates(pkg: &str) -> Vec<String> {
    let mut names = vec![format!("{pkg}-dbg"), format!("{pkg}-dbgsym")];
    if let Some(base) = pkg.strip_suffix("-minimal") {
        names.insert(0, format!("{base}-dbg"));
    }
    names
}

/// Which of `names` the package manager knows: one `apt-cache` call.
fn known_packages(names: &[String]) -> std::collections::HashSet<String> {
    if names.is_empty() {
        return Default::default();
    }
    let Ok(out) = Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .args(names)
        .output()
    else {
        return Default::default();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Package: "))
        .map(|p| p.trim().to_string())
        .collect()
}

/// Says which modules have unresolved frames and how to get their symbols.
pub(super) fn missing_symbols(sites: &[SiteInfo], recording: Option<&Path>) {
    let missing = modules_without_symbols(sites);
    if missing.is_empty() {
        return;
    }
    let then = match recording {
        Some(r) => format!(", then `heapscope report {} --resymbolize`", r.display()),
        None => String::new(),
    };
    let cache = debuginfod::default_cache_dir();
    let listed = &missing[..missing.len().min(MAX_LISTED)];
    let pkgs: Vec<Option<String>> = listed
        .iter()
        .map(|m| {
            m.module
                .starts_with('/')
                .then(|| owning_package(&m.module))
                .flatten()
        })
        .collect();
    let all: Vec<String> = pkgs
        .iter()
        .flatten()
        .flat_map(|p| debug_candidates(p))
        .collect();
    let known = known_packages(&all);
    for (m, pkg) in listed.iter().zip(pkgs) {
        let dbg = |p: &str| -> Vec<String> {
            debug_candidates(p)
                .into_iter()
                .filter(|c| known.contains(c))
                .collect()
        };
        // The file there now is another build (upgraded since recording?):
        // installed debug packages match it, not the recording.
        let rebuilt = !m.build_id.is_empty()
            && resymbolize::file_build_id(Path::new(&m.module)).is_some_and(|id| {
                id.iter().map(|b| format!("{b:02x}")).collect::<String>() != m.build_id
            });
        let install = match pkg.as_deref().map(|p| (p, dbg(p))) {
            _ if rebuilt => format!(
                "{} on this machine is another build than the recorded one (build-id {}), so its installed debug packages do not fit",
                m.module, m.build_id
            ),
            Some((_, dbg)) if !dbg.is_empty() => format!("install {}", dbg.join(" or ")),
            Some((p, _)) => format!(
                "install the debug symbols of package {p} ({p}-dbgsym, from the debian-debug archive)"
            ),
            None => "install its debug file under /usr/lib/debug".to_string(),
        };
        let fetch = if m.build_id.is_empty() {
            String::new()
        } else {
            format!(
                "{} by build-id: DEBUGINFOD_URLS=http://... (heapscope) or \
                 `debuginfod-find debuginfo {}` (fills {})",
                if rebuilt {
                    "; fetch the recorded build's"
                } else {
                    ", or fetch it"
                },
                m.build_id,
                cache.display()
            )
        };
        eprintln!(
            "heapscope: note: {} has no symbols for {} address{} (shown as [{}+0x…]): {install}{fetch}{then}",
            m.module,
            m.addresses,
            if m.addresses == 1 { "" } else { "es" },
            Path::new(&m.module)
                .file_name()
                .map_or_else(|| m.module.clone(), |n| n.to_string_lossy().into_owned()),
        );
    }
    if missing.len() > MAX_LISTED {
        eprintln!(
            "heapscope: note: {} more modules lack symbols",
            missing.len() - MAX_LISTED
        );
    }
}
