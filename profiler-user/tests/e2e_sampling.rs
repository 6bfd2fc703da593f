//! End-to-end tests of sampling by bytes with many threads and mixed
//! lifetimes (`tests/fixtures/sampling_threads.c`): every sampled per-site
//! estimate lands within 4σ of the fixture's truth, σ computed from the
//! sampling rate and the live blocks' sizes. They need root; without it they
//! say they were skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::driver::*;
use common::*;

/// The fixture's truth for `threads` threads of `rounds` rounds: live bytes
/// per site, and the live blocks per site as (size, count).
struct Truth {
    live: BTreeMap<String, u64>,
    blocks: BTreeMap<String, Vec<(u64, u64)>>,
}

fn truth(bin: &std::path::Path, threads: u32, rounds: u32) -> Truth {
    let out = Command::new(bin)
        .args(["--expect", &threads.to_string(), &rounds.to_string()])
        .output()
        .expect("run fixture --expect");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut t = Truth {
        live: BTreeMap::new(),
        blocks: BTreeMap::new(),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["blocks", site, size, count] => t
                .blocks
                .entry(site.to_string())
                .or_default()
                .push((size.parse().unwrap(), count.parse().unwrap())),
            [site, bytes] => {
                t.live.insert(site.to_string(), bytes.parse().unwrap());
            }
            _ => panic!("unexpected --expect line {line:?}"),
        }
    }
    t
}

/// The standard deviation of a site's sampled live-bytes estimate: each
/// block of `s` bytes is sampled with p = 1 - e^(-s/rate) and then stands
/// for s/p, so its variance is s²(1/p - 1).
fn sigma(blocks: &[(u64, u64)], rate: u64) -> f64 {
    blocks
        .iter()
        .map(|&(s, n)| {
            let s = s as f64;
            let p = 1.0 - (-s / rate as f64).exp();
            n as f64 * s * s * (1.0 / p - 1.0)
        })
        .sum::<f64>()
        .sqrt()
}

/// Runs `threads` × `rounds` of the fixture under heapscope with `flags`
/// (sampling at `rate`) and checks every site against the truth.
fn check(test: &str, variant_flags: &[&str], threads: u32, rounds: u32, rate: u64, flags: &[&str]) {
    let mut cflags = vec!["-O2", "-g", "-pthread"];
    cflags.extend_from_slice(variant_flags);
    let variant = if variant_flags.contains(&"-fomit-frame-pointer") {
        "nofp"
    } else {
        "fp"
    };
    let bin = fixture("sampling_threads", variant, &cflags);
    let truth = truth(&bin, threads, rounds);
    let dir = scratch(test);
    let folded = dir.join("live.folded");
    let rate_arg = format!("{rate}");
    let mut args: Vec<&str> = vec!["--sample-rate", &rate_arg, "--folded"];
    let folded_arg = folded.to_str().expect("utf8").to_string();
    args.push(&folded_arg);
    args.extend_from_slice(flags);
    let mut cmd = Command::new(&bin);
    cmd.args([threads.to_string(), rounds.to_string()]);
    let report = run_attached(start_command(cmd), &args);
    let text = std::fs::read_to_string(&folded).expect("folded written");
    let sites = by_site(&parse_folded(&text));
    assert_eq!(counter(&report, "ring buffer lost"), Some(0), "{report}");
    for (site, want) in &truth.live {
        let got = sites.get(site).copied().unwrap_or(0);
        if *want == 0 {
            // Every sampled block of these sites was freed, and each free
            // takes back exactly what its allocation added.
            assert_eq!(got, 0, "{site} is all freed\n{report}");
            continue;
        }
        let sd = sigma(&truth.blocks[site], rate);
        let err = got as f64 - *want as f64;
        assert!(
            err.abs() <= 4.0 * sd,
            "{site}: estimated {got} vs true {want}: {:.1}σ (σ = {sd:.0})\n{report}",
            err / sd
        );
        eprintln!(
            "{test}: {site} estimated {got} vs true {want} ({:+.2}σ, σ = {:.2}%)",
            err / sd,
            100.0 * sd / *want as f64
        );
    }
    let all: u64 = truth.live.values().sum();
    if flags.contains(&"--no-sessions") {
        // Every return probe kept: the headline is exact, the fixture's live
        // blocks plus its own bookkeeping (the array of leaked pointers
        // predates the session).
        let live = counter(&report, "allocated bytes").expect("allocated bytes")
            - counter(&report, "freed bytes").expect("freed bytes");
        assert!(
            live >= all && live - all < 64 * 1024,
            "{live} vs {all}\n{report}"
        );
    } else {
        // Uprobe sessions (the default): the headline is the sites'
        // estimate, within 4σ of all sites together (their samples are
        // independent, so their variances add).
        assert!(
            report.lines().any(|l| l.starts_with("live heap: ~")),
            "an estimated headline\n{report}"
        );
        let live = headline_live_bytes(&report).expect("headline bytes");
        let sd = truth
            .blocks
            .values()
            .map(|b| sigma(b, rate).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(
            (live as f64 - all as f64).abs() <= 4.0 * sd,
            "headline {live} vs true {all}: σ = {sd:.0}\n{report}"
        );
    }
}

#[test]
fn sampling_is_unbiased_with_64_threads_and_mixed_lifetimes() {
    if !root_or_skip("sampling_is_unbiased_with_64_threads_and_mixed_lifetimes") {
        return;
    }
    // Default stacks (copied and unwound in userspace) and uprobe sessions
    // (the sample drawn at entry); the free of a sampled block is matched in
    // userspace. About 1,400 samples: unwound
    // long before the session's final drain gives up, even on a busy machine.
    check(
        "sampling-64",
        &["-fomit-frame-pointer"],
        64,
        200,
        64 * 1024,
        &["--stack-size", "4KiB", "--ringbuf-size", "64MiB"],
    );
}

/// The same without uprobe sessions: every call's return probe draws the
/// sample, and the headline is exact.
#[test]
fn sampling_is_unbiased_with_64_threads_without_uprobe_sessions() {
    if !root_or_skip("sampling_is_unbiased_with_64_threads_without_uprobe_sessions") {
        return;
    }
    check(
        "sampling-64-returns",
        &["-fomit-frame-pointer"],
        64,
        200,
        64 * 1024,
        &[
            "--stack-size",
            "4KiB",
            "--ringbuf-size",
            "64MiB",
            "--no-sessions",
        ],
    );
}

#[test]
fn sampling_is_unbiased_with_256_threads_in_kernel_aggregation() {
    if !root_or_skip("sampling_is_unbiased_with_256_threads_in_kernel_aggregation") {
        return;
    }
    // Frame-pointer stacks: sites summed in the kernel, frees of sampled
    // blocks taken back there.
    check(
        "sampling-256",
        &["-fno-omit-frame-pointer"],
        256,
        100,
        8 * 1024,
        &["--stacks", "fp"],
    );
}
