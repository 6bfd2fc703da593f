//! Every option parser on extreme values: a value in range or a clear error,
//! never a panic, never a value that overflows later.

use clap::Parser;

use super::*;
use crate::timeline::Window;

const EXTREMES: &[&str] = &[
    "0",
    "1",
    "-1",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999",
    "10000000000000000000",
    "1e400",
    "nan",
    "inf",
    "",
    " ",
    "1.5",
    "0.0000000001s",
    "99999999999999999999ms",
    "9999999999h",
    "1GiB",
    "16KiB",
    "16385",
    "3GiB",
    "..",
    "99999999999999999999..",
    "..99999999999999999999",
    "1h..1s",
];

const LIVE_OPTIONS: &[&str] = &[
    "--sample-rate",
    "--stack-size",
    "--duration",
    "--tick",
    "--top",
    "--live-map-entries",
    "--site-map-entries",
    "--stack-map-entries",
    "--inflight-entries",
    "--older-than",
    "--ringbuf-size",
    "--push-interval",
];

/// Parses `args`; on success, every derived setting is computed too.
fn parse(args: &[&str]) -> Result<Cli, String> {
    let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
    if let Command::Attach(a) = &cli.command {
        let c = &a.common;
        let _ = c.map_sizes();
        let _ = c.capture();
        if let Ok(o) = c.session_options() {
            assert!(o.tick >= args::MIN_TICK && o.tick <= args::MAX_TICK);
            assert!(o.duration.is_none_or(|d| d <= args::MAX_SESSION));
            // What the session computes from them must not overflow.
            let now = std::time::Instant::now();
            let _ = now + o.duration.unwrap_or_default();
        }
    }
    Ok(cli)
}

#[test]
fn live_options_on_extreme_values() {
    for opt in LIVE_OPTIONS {
        for v in EXTREMES {
            let _ = parse(&["heapscope", "attach", "-p", "1", opt, v]);
            let _ = parse(&["heapscope", "run", opt, v, "--", "true"]);
        }
    }
    for v in EXTREMES {
        let _ = parse(&["heapscope", "attach", "-p", v]);
    }
}

#[test]
fn offline_options_on_extreme_values() {
    for v in EXTREMES {
        for args in [
            vec!["heapscope", "report", "f", "--window", v],
            vec!["heapscope", "report", "f", "--top", v],
            vec!["heapscope", "export", "f", "--format", "svg", "--window", v],
            vec!["heapscope", "diff", "f", "--baseline", v, "--window", ".."],
            vec!["heapscope", "diff", "f", "--baseline", "..", "--window", v],
            vec![
                "heapscope",
                "diff",
                "f",
                "--baseline",
                "..",
                "--window",
                "..",
                "--top",
                v,
            ],
        ] {
            let _ = parse(&args);
        }
        let _ = Window::parse(v);
    }
}

#[test]
fn the_reported_panics_are_clear_errors() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--duration", "99999999999999999999"],
            "duration '99999999999999999999' is too long: at most 100 years",
        ),
        (
            &["--duration", "10000000000000000000"],
            "too long: at most 100 years",
        ),
        (
            &["--duration", "400d"],
            "out of range: between 1ms and 365d",
        ),
        (&["--duration", "0"], "out of range: between 1ms and 365d"),
        (&["--tick", "99999999999999999999"], "too long"),
        (&["--tick", "0"], "out of range: between 10ms and 1h"),
        (&["--tick", "2h"], "out of range: between 10ms and 1h"),
        (
            &["--sample-rate", "2GiB"],
            "out of range: between 1 byte and 1GiB",
        ),
        (
            &["--stack-size", "32KiB"],
            "out of range: between 1 byte and 16KiB",
        ),
        (&["--live-map-entries", "0"], "not in 1..=16777216"),
        (&["--live-map-entries", "4294967295"], "not in 1..=16777216"),
        (&["--top", "0"], "not in 1..=1000000"),
        (&["--older-than", "99999999999999999999"], "too long"),
        (
            &["--push-interval", "0"],
            "out of range: between 100ms and 1d",
        ),
    ];
    for (extra, want) in cases {
        let mut args = vec!["heapscope", "attach", "-p", "1"];
        args.extend_from_slice(extra);
        let e = parse(&args).map(|_| ()).expect_err(&extra.join(" "));
        assert!(e.contains(want), "{extra:?}: {e}");
    }
    let e = parse(&[
        "heapscope",
        "report",
        "f",
        "--window",
        "99999999999999999999..",
    ])
    .map(|_| ())
    .unwrap_err();
    assert!(
        e.contains("invalid window") && e.contains("too long"),
        "{e}"
    );
    let e = parse(&["heapscope", "attach", "-p", "0"])
        .map(|_| ())
        .unwrap_err();
    assert!(e.contains("not in 1.."), "{e}");
}

#[test]
fn ring_buffer_sizes_must_be_powers_of_two() {
    let cli = parse(&["heapscope", "attach", "-p", "1", "--ringbuf-size", "12KiB"]).expect("parse");
    let Command::Attach(a) = cli.command else {
        unreachable!()
    };
    let e = a.common.map_sizes().unwrap_err().to_string();
    assert!(e.contains("power of two"), "{e}");
}

#[test]
fn the_command_line_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn verbose_sets_the_log_level_anywhere_on_the_line() {
    // Before, -v did not exist and the library's log messages went nowhere.
    for args in [
        &["heapscope", "-v", "report", "x.rec"][..],
        &["heapscope", "report", "x.rec", "-v"][..],
    ] {
        let cli = parse(args).expect("parses");
        assert_eq!(log_level(cli.verbose), log::LevelFilter::Debug, "{args:?}");
    }
    let cli = parse(&["heapscope", "report", "-vv", "x.rec"]).expect("parses");
    assert_eq!(log_level(cli.verbose), log::LevelFilter::Trace);
    let cli = parse(&["heapscope", "report", "x.rec"]).expect("parses");
    assert_eq!(log_level(cli.verbose), log::LevelFilter::Warn);
}

#[test]
fn max_overhead_is_a_percentage() {
    for ok in ["5", "0.5", "2.5%", "100"] {
        assert!(
            parse(&["heapscope", "attach", "-p", "1", "--max-overhead", ok]).is_ok(),
            "{ok}"
        );
    }
    for bad in ["0", "101", "x", "", "NaN", "inf"] {
        let e = parse(&["heapscope", "attach", "-p", "1", "--max-overhead", bad]).expect_err(bad);
        assert!(e.contains("percentage"), "{bad}: {e}");
    }
}

#[test]
fn exact_with_max_overhead_refuses_outputs_that_would_call_it_exact() {
    let check = |extra: &[&str]| {
        let mut args = vec![
            "heapscope",
            "attach",
            "-p",
            "1",
            "--exact",
            "--max-overhead",
            "5",
        ];
        args.extend_from_slice(extra);
        let cli = parse(&args).expect("parses");
        let Command::Attach(a) = &cli.command else {
            panic!("attach")
        };
        a.common.check_outputs().map_err(|e| e.to_string())
    };
    let e = check(&["--record", "/tmp/x.heapscope"]).expect_err("refused");
    assert!(
        e.contains("--record") && e.contains("--max-overhead"),
        "{e}"
    );
    assert!(check(&["--serve", "127.0.0.1:0"]).is_err());
    assert!(check(&[]).is_ok(), "the report says what the guard did");
}

/// Attaching and detaching run ahead of the target unless asked not to;
/// the old opt-in flag is still accepted and means the default.
#[test]
fn attach_priority_is_the_default() {
    let raise = |extra: &[&str]| -> Option<bool> {
        let mut a = vec!["heapscope", "attach", "-p", "1"];
        a.extend_from_slice(extra);
        match parse(&a).ok()?.command {
            Command::Attach(a) => a.common.session_options().ok().map(|o| o.raise_priority),
            _ => None,
        }
    };
    assert_eq!(raise(&[]), Some(true));
    assert_eq!(raise(&["--attach-priority"]), Some(true));
    assert_eq!(raise(&["--no-attach-priority"]), Some(false));
    assert_eq!(raise(&["--attach-priority", "--no-attach-priority"]), None);
}
