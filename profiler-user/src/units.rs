//! Parsing of the command line's durations (`500ms`, `30s`, `5m`, `1h`, `2d`)
//! and sizes, range-checked so that no later arithmetic can overflow.

use std::time::Duration;

/// The longest duration accepted anywhere (100 years): far beyond any session,
/// far below what `Duration`, `Instant` and milliseconds in a `u64` can hold.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses a duration such as `500ms`, `30s`, `5m`, `2h`, `1d`, or a plain
/// number of seconds, at most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}': expected e.g. 500ms, 30s, 5m, 1h"))?;
    let scale = match unit {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => {
            return Err(format!(
                "invalid duration unit '{unit}' in '{s}': use ms, s, m, h or d"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration '{s}'"));
    }
    // Checked before converting: `Duration::from_secs_f64` panics on overflow.
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("duration '{s}' is too long: at most 100 years"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A `clap` value parser for a duration between `min` and `max` (inclusive),
/// with an error that names both bounds.
pub fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let d = parse_duration(s)?;
        if d < min || d > max {
            return Err(format!(
                "'{}' is out of range: between {} and {}",
                s.trim(),
                show_duration(min),
                show_duration(max)
            ));
        }
        Ok(d)
    }
}

/// A `clap` value parser for a size between `min` and `max` bytes (inclusive).
pub fn size_in(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let v = parse_size(s)?;
        if v < min || v > max {
            return Err(format!(
                "'{}' is out of range: between {} and {}",
                s.trim(),
                show_size(min),
                show_size(max)
            ));
        }
        Ok(v)
    }
}

/// `10ms`, `1s`, `1h`, `365d`: the largest whole unit, for error messages.
fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, n) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms >= n && ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// `1 byte`, `4KiB`, `1GiB`: the largest whole binary unit, for error messages.
fn show_size(v: u64) -> String {
    for (unit, n) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if v >= n && v.is_multiple_of(n) {
            return format!("{}{unit}", v / n);
        }
    }
    if v == 1 {
        "1 byte".to_string()
    } else {
        format!("{v} bytes")
    }
}

/// Parses a size such as `4096`, `64KiB`, `1MiB`, `512K`, `2M`, `1G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: u64 = num.parse().map_err(|e: std::num::ParseIntError| {
        if num.is_empty() || !matches!(e.kind(), std::num::IntErrorKind::PosOverflow) {
            format!("invalid size '{s}': expected e.g. 4096, 64KiB, 1MiB")
        } else {
            format!("size '{s}' is too large")
        }
    })?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "invalid size unit '{unit}' in '{s}': use KiB, MiB or GiB"
            ))
        }
    };
    value
        .checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// A byte count in binary units with one decimal (`512 B`, `1.5 KiB`, `1.2 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // Move up while the rounded value would print as 1024.0 or more.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests;
