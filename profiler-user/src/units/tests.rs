use super::*;
use crate::timeline::testutil::Rng;

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
    assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
    assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert!(parse_duration("5 parsecs").is_err());
    assert!(parse_duration("").is_err());
    assert!(parse_duration("s").is_err());
}

#[test]
fn extreme_durations_are_errors_not_panics() {
    for s in [
        "99999999999999999999",
        "10000000000000000000",
        "18446744073709551616s",
        "99999999999999999999ms",
        "1e400",
        "1e30s",
        "36501d",
        "101y",
        "-1s",
        "nan",
        "inf",
        "..",
        ".",
        "1.2.3s",
    ] {
        assert!(parse_duration(s).is_err(), "{s}");
    }
    let long = "9".repeat(400);
    assert!(parse_duration(&long).is_err());
    assert_eq!(
        parse_duration("36499d"),
        Ok(Duration::from_secs(36499 * 86400))
    );
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert_eq!(
        parse_duration("99999999999999999999").unwrap_err(),
        "duration '99999999999999999999' is too long: at most 100 years"
    );
}

#[test]
fn bounded_durations_name_their_range() {
    let p = duration_in(Duration::from_millis(10), Duration::from_secs(3600));
    assert_eq!(p("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(p("10ms"), Ok(Duration::from_millis(10)));
    assert_eq!(p("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(
        p("0").unwrap_err(),
        "'0' is out of range: between 10ms and 1h"
    );
    assert!(p("1h1ms").is_err());
    assert!(p("3601").is_err());
}

#[test]
fn sizes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("4KiB"), Ok(4096));
    assert_eq!(parse_size("512K"), Ok(512 * 1024));
    assert_eq!(parse_size("1MiB"), Ok(1 << 20));
    assert!(parse_size("1XB").is_err());
    assert!(parse_size("99999999999999GiB").is_err());
    assert_eq!(
        parse_size("99999999999999999999").unwrap_err(),
        "size '99999999999999999999' is too large"
    );
    assert!(parse_size("-1").is_err());
    let p = size_in(1, 1 << 30);
    assert_eq!(p("1GiB"), Ok(1 << 30));
    assert_eq!(
        p("0").unwrap_err(),
        "'0' is out of range: between 1 byte and 1GiB"
    );
    assert!(p("1025MiB").is_err());
}

/// Random strings over the parsers' alphabet: a value or an error, never a panic,
/// and every accepted value within the bounds.
#[test]
fn random_inputs_never_panic() {
    let alphabet = [
        "0", "1", "9", "99999", ".", "ms", "s", "m", "h", "d", "min", "KiB", "G", "-", " ", "e",
        "x", "\u{e9}",
    ];
    let mut rng = Rng(12);
    for _ in 0..20_000 {
        let n = rng.below(8) as usize;
        let s: String = (0..n)
            .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
            .collect();
        if let Ok(d) = parse_duration(&s) {
            assert!(d <= MAX_DURATION, "{s}");
        }
        let _ = parse_size(&s);
    }
}
