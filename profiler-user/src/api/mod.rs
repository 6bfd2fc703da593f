//! The JSON documents of the web API (`/api/v1/...`) and of `report --json`:
//! serde types built from the model (timeline, profile, analysis), one
//! source for every JSON output. Builders are pure functions.
//!
//! Field names are part of the versioned API: add fields, never rename or
//! remove them within `v1`.

pub mod counters;
pub mod guard;
pub mod report;
pub mod series;
pub mod tree;

use serde::Serialize;

use crate::timeline::Window;

pub use counters::{counters, Counter, Section};
pub use report::{report_doc, ReportDoc};
pub use series::{meta, series, Meta, SessionInfo, TimelinePoint};
pub use tree::{diff_doc, profile_doc, DiffDoc, ProfileDoc};

/// The version in the API's paths.
pub const API_VERSION: u32 = 1;

/// A window as the API shows it: milliseconds since attach, `null` for an open end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WindowJson {
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
}

impl From<Window> for WindowJson {
    fn from(w: Window) -> WindowJson {
        WindowJson {
            start_ms: w.start_ms,
            end_ms: w.end_ms,
        }
    }
}

/// Rounds to 3 decimals so the JSON is readable and stable.
pub(crate) fn r3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}
