//! End-to-end: cross-thread frees per call site and glibc's arenas per tick
//! (the ksqlDB mechanism). Producer threads allocate in their own arenas,
//! consumer threads free those blocks: `attach`, and `report` on its
//! recording, name the producing call site with exact counts under
//! `--exact` (estimates, labelled so, when sampled), show each arena's
//! resident, live and retained bytes, and give per-arena remedies with the
//! numbers. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::path::Path;
use std::process::Command;

use common::driver::{run_attached, start_fixture};
use common::*;
use serde_json::Value;

/// produce_block: 2 producers x 1000 blocks of 8192 B, all freed by consumers.
const CROSS_BLOCKS: u64 = 2_000;
const CROSS_BYTES: u64 = 2_000 * 8_192;

use common::xthread::run;

fn report_json(file: &Path) -> Value {
    let out = Command::new(heapscope())
        .args(["report", "--json"])
        .arg(file)
        .output()
        .expect("run heapscope report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report --json is JSON")
}

fn report_text(file: &Path) -> String {
    let out = Command::new(heapscope())
        .arg("report")
        .arg(file)
        .output()
        .expect("run heapscope report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn leaf(site: &Value) -> &str {
    site["frames"]
        .as_array()
        .and_then(|f| f.last())
        .and_then(Value::as_str)
        .unwrap_or("")
}

#[test]
fn cross_thread_frees_exact_per_site_and_arenas_in_the_recording() {
    let test = "cross_thread_frees_exact_per_site_and_arenas_in_the_recording";
    if !root_or_skip(test) {
        return;
    }
    // A 64 MiB ring: the producers' 2,000 samples of 8 KiB stacks come in one burst.
    let (attach_report, file) = run(test, &["--exact", "--ringbuf-size", "64MiB"]);
    let line = "cross-thread frees (exact): 15.6 MiB in 2000 blocks";
    assert!(attach_report.contains(line), "{attach_report}");
    // One arena table (the per-tick one); the end of the session adds only
    // the call sites holding each arena's blocks, not a second table.
    assert_eq!(
        attach_report.matches("glibc arenas at ").count(),
        1,
        "{attach_report}"
    );
    assert!(
        !attach_report.contains("glibc arenas (resident from smaps"),
        "{attach_report}"
    );
    assert!(
        attach_report.contains("glibc arenas, call sites holding their live blocks at the end"),
        "{attach_report}"
    );

    let doc = report_json(&file);
    let arenas = &doc["arenas"];
    assert_eq!(arenas["estimated"], false, "{arenas:#}");
    assert_eq!(arenas["cross_thread_bytes"], CROSS_BYTES, "{arenas:#}");
    assert_eq!(arenas["cross_thread_blocks"], CROSS_BLOCKS, "{arenas:#}");
    // Only produce_block: produce_big's blocks were their own mmaps,
    // produce_scratch's were freed by their own thread.
    let sites = arenas["cross_thread_sites"].as_array().expect("sites");
    assert_eq!(sites.len(), 1, "{arenas:#}");
    assert_eq!(leaf(&sites[0]), "produce_block", "{arenas:#}");
    assert_eq!(sites[0]["alloc_bytes"], CROSS_BYTES, "{arenas:#}");

    // Two producer arenas (each: the 4096 B block kept live, the 8 MB its
    // consumer freed retained) and two consumer arenas (64 B each).
    let rows = arenas["arenas"].as_array().expect("arena rows");
    let arena_rows: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "arena").collect();
    assert_eq!(arena_rows.len(), 4, "{arenas:#}");
    let mut live: Vec<u64> = arena_rows
        .iter()
        .map(|r| r["live"].as_u64().expect("live"))
        .collect();
    live.sort_unstable();
    assert_eq!(live, vec![64, 64, 4096, 4096], "{arenas:#}");
    let producers: Vec<&&Value> = arena_rows.iter().filter(|r| r["live"] == 4096).collect();
    for p in producers {
        let retained = p["retained"].as_u64().expect("retained");
        assert!(
            retained >= 7 << 20,
            "producer arena retains its blocks: {p:#}"
        );
    }

    // The finding explains it, with remedies from these numbers.
    let text = report_text(&file);
    assert!(text.contains(line), "{text}");
    assert!(text.contains("glibc arenas at "), "{text}");
    assert!(
        text.contains("- memory not returned after a peak"),
        "{text}"
    );
    assert!(
        text.contains("Blocks freed across threads, into arenas the freeing threads do not allocate from: produce_block"),
        "{text}"
    );
    assert!(
        text.contains("  - MALLOC_ARENA_MAX=2 (or 1 for few threads): 4 arenas hold "),
        "{text}"
    );
    assert!(
        text.contains("  - free blocks on the thread that allocated them (or hand them back to it): produce_block <- producer <- start_thread <- clone3 (malloc) had 15.6 MiB in 2000 blocks"),
        "{text}"
    );
    assert!(
        text.contains("  - call malloc_trim(0) after bursts: "),
        "{text}"
    );
    let finding = doc["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["kind"] == "retained-after-peak")
        .cloned()
        .expect("retained-after-peak finding");
    assert!(
        finding["measured_remedies"]
            .as_array()
            .is_some_and(|r| r.len() >= 3),
        "{finding:#}"
    );
}

#[test]
fn cross_thread_frees_sampled_are_labelled_estimates() {
    let test = "cross_thread_frees_sampled_are_labelled_estimates";
    if !root_or_skip(test) {
        return;
    }
    // 64 KiB mean: ~250 samples of produce_block's 16 MB.
    let (report, file) = run(test, &["--sample-rate", "64KiB"]);
    assert!(
        report.contains("cross-thread frees (estimated): ~"),
        "{report}"
    );
    let doc = report_json(&file);
    let arenas = &doc["arenas"];
    assert_eq!(arenas["estimated"], true, "{arenas:#}");
    let sites = arenas["cross_thread_sites"].as_array().expect("sites");
    assert_eq!(leaf(&sites[0]), "produce_block", "{arenas:#}");
    // An unbiased estimate of 16,384,000 B: well within a factor of two.
    let bytes = sites[0]["bytes"].as_u64().expect("bytes");
    assert!(
        (CROSS_BYTES / 2..CROSS_BYTES * 2).contains(&bytes),
        "{arenas:#}"
    );
}

#[test]
fn cross_thread_frees_with_frame_pointer_stacks_by_thread_alone() {
    let test = "cross_thread_frees_with_frame_pointer_stacks_by_thread_alone";
    if !root_or_skip(test) {
        return;
    }
    // Frame-pointer sites live in the kernel: the live map keeps the
    // allocating thread, the free compares it; arenas are not compared, so
    // produce_big's own-mmap blocks (2 x 4 of 256 KiB) count too.
    let (report, file) = run(test, &["--exact", "--stacks", "fp"]);
    assert!(
        report.contains("cross-thread frees (exact): 17.6 MiB in 2008 blocks freed by another thread than the one that allocated them (arenas not compared"),
        "{report}"
    );
    let doc = report_json(&file);
    let arenas = &doc["arenas"];
    assert_eq!(arenas["arenas_compared"], false, "{arenas:#}");
    assert_eq!(
        arenas["arenas"].as_array().map(Vec::len),
        Some(0),
        "{arenas:#}"
    );
    let sites = arenas["cross_thread_sites"].as_array().expect("sites");
    let got: Vec<(&str, u64, u64)> = sites
        .iter()
        .map(|s| {
            (
                leaf(s),
                s["bytes"].as_u64().expect("bytes"),
                s["blocks"].as_u64().expect("blocks"),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("produce_block", CROSS_BYTES, CROSS_BLOCKS),
            ("produce_big", 8 * 262_144, 8)
        ],
        "{arenas:#}"
    );
}

/// pingpong.c: 20,000 blocks of 2,048 B allocated by a thread pinned to CPU
/// 0 and freed at once by one pinned to CPU 1, nearly every next block at
/// the address just freed. The allocations and the frees reach userspace
/// through different CPUs' rings; applied out of order, a free would land
/// on the block that reused its address (counted as `replaced`) and a
/// handed-off block would stay live.
#[test]
fn blocks_freed_on_another_cpu_and_reused_at_once_stay_exact() {
    let test = "blocks_freed_on_another_cpu_and_reused_at_once_stay_exact";
    if !root_or_skip(test) {
        return;
    }
    let bin = fixture(
        "pingpong",
        "fp",
        &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"],
    );
    let folded = scratch(test).join("live.folded");
    let report = run_attached(
        start_fixture(&bin),
        &["--exact", "--folded", folded.to_str().expect("utf8")],
    );
    let text = std::fs::read_to_string(&folded).expect("folded written");
    let sites = by_site(&parse_folded(&text));
    assert_eq!(
        sites.get("keep_block"),
        Some(&(20 * 4096)),
        "{text}\n{report}"
    );
    assert_eq!(sites.get("handoff_block"), None, "{text}\n{report}");
    for name in [
        "ring buffer lost",
        "replaced (free not seen)",
        "frees of untracked pointers (allocated before attach, or unsampled under uprobe sessions)",
    ] {
        assert_eq!(counter(&report, name), Some(0), "{name}\n{report}");
    }
}
