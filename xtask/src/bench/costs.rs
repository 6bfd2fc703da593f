//! The `--max-overhead` per-event costs derived from a bench run.

/// The per-event costs `--max-overhead` estimates with, derived from the
/// modes just measured without uprobe sessions (a pair is 3 probe hits and 2
/// counted calls; at 512 KiB a 64-byte allocation is almost never sampled),
/// beside the constants heapscope has (`profiler-user/src/overhead.rs`).
pub(super) fn per_hit_costs(measured: &[(&str, f64)]) {
    let ns = |name: &str| measured.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let (Some(none), Some(bare), Some(sampled), Some(fp_exact), Some(dwarf_exact)) = (
        ns("no profiler"),
        ns("bare probes"),
        ns("default --no-sessions"),
        ns("--stacks fp --exact"),
        ns("--exact (DWARF)"),
    ) else {
        return;
    };
    println!(
        "  --max-overhead costs, measured (calibrated in overhead.rs): trap {:.0} ns/hit (612), \
         map work {:.0} ns/call (833), fp capture {:.0} ns (661), DWARF capture {:.0} ns (906)",
        (bare - none) / 3.0,
        (sampled - bare) / 2.0,
        fp_exact - sampled,
        dwarf_exact - sampled,
    );
}
