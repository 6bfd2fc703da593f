//! Time windows of a session (`30s..90s`, `5m..6m`, `..90s`, `30s..`).

use std::fmt;
use std::str::FromStr;

use crate::units::parse_duration;

/// A closed time range relative to attach, in milliseconds; `None` ends are open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// First millisecond included; `None` = from the first tick.
    pub start_ms: Option<u64>,
    /// Last millisecond included; `None` = up to the last tick.
    pub end_ms: Option<u64>,
}

/// A window that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid window '{text}': {reason}")]
pub struct WindowError {
    pub text: String,
    pub reason: String,
}

/// A window that holds no tick of a timeline: outside the recording, or
/// between two ticks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window {window} holds no tick of the recording, which spans {}", Window { start_ms: Some(*first_ms), end_ms: Some(*last_ms) })]
pub struct EmptyWindow {
    pub window: Window,
    pub first_ms: u64,
    pub last_ms: u64,
}

impl Window {
    /// The whole session.
    pub const ALL: Window = Window {
        start_ms: None,
        end_ms: None,
    };

    /// Parses `A..B` where `A` and `B` are durations since attach (`30s`, `5m`,
    /// `1.5s`, `500ms`, `1h`); either side may be empty for an open end.
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let err = |reason: String| WindowError {
            text: text.to_string(),
            reason,
        };
        let (a, b) = text
            .trim()
            .split_once("..")
            .ok_or_else(|| err("expected START..END, e.g. 30s..90s, ..90s or 30s..".into()))?;
        let bound = |s: &str| -> Result<Option<u64>, WindowError> {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            let d = parse_duration(s).map_err(err)?;
            // Durations beyond u64 milliseconds (585 million years) saturate.
            Ok(Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
        };
        let window = Window {
            start_ms: bound(a)?,
            end_ms: bound(b)?,
        };
        if let (Some(s), Some(e)) = (window.start_ms, window.end_ms) {
            if s > e {
                return Err(err("the start is after the end".into()));
            }
        }
        Ok(window)
    }

    /// True when `t_ms` lies inside the window (both ends included).
    pub fn contains(&self, t_ms: u64) -> bool {
        self.start_ms.is_none_or(|s| t_ms >= s) && self.end_ms.is_none_or(|e| t_ms <= e)
    }
}

impl FromStr for Window {
    type Err = WindowError;
    fn from_str(s: &str) -> Result<Window, WindowError> {
        Window::parse(s)
    }
}

/// `12.5s` for 12500 ms: seconds with up to 3 decimals, no trailing zeros.
fn secs(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        format!("{}s", s.trim_end_matches('0'))
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.start_ms {
            f.write_str(&secs(s))?;
        }
        f.write_str("..")?;
        if let Some(e) = self.end_ms {
            f.write_str(&secs(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: Option<u64>, e: Option<u64>) -> Window {
        Window {
            start_ms: s,
            end_ms: e,
        }
    }

    #[test]
    fn parses_closed_and_open_windows() {
        assert_eq!(Window::parse("30s..90s"), Ok(w(Some(30_000), Some(90_000))));
        assert_eq!(Window::parse("5m..6m"), Ok(w(Some(300_000), Some(360_000))));
        assert_eq!(Window::parse("..90s"), Ok(w(None, Some(90_000))));
        assert_eq!(Window::parse("30s.."), Ok(w(Some(30_000), None)));
        assert_eq!(Window::parse(".."), Ok(Window::ALL));
        assert_eq!(Window::parse(" 1.5s .. 2s "), Ok(w(Some(1500), Some(2000))));
        assert_eq!(
            Window::parse("500ms..1h"),
            Ok(w(Some(500), Some(3_600_000)))
        );
    }

    #[test]
    fn rejects_bad_windows() {
        for bad in ["30s", "90s..30s", "x..1s", "1s..2parsecs", "", "-1s..2s"] {
            let e = Window::parse(bad).expect_err(bad);
            assert!(e.to_string().contains("invalid window"), "{e}");
        }
    }

    #[test]
    fn contains_and_display_round_trip() {
        let win = Window::parse("30s..90s").expect("parse");
        assert!(!win.contains(29_999));
        assert!(win.contains(30_000) && win.contains(90_000));
        assert!(!win.contains(90_001));
        assert!(Window::ALL.contains(0) && Window::ALL.contains(u64::MAX));
        for text in ["30s..90s", "..1.5s", "0.25s..", ".."] {
            let parsed = Window::parse(text).expect("parse");
            assert_eq!(parsed.to_string(), text);
            assert_eq!(Window::parse(&parsed.to_string()), Ok(parsed));
        }
    }
}
