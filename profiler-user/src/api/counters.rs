//! The session's counters as a list of (id, help, section, value): what the
//! API's `counters` and the Prometheus `/metrics` are generated from.

use profiler_common::counters::Section as CounterSection;
use serde::Serialize;

use crate::profile::Totals;

/// Whether a counter counts what happened or what could not be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Counted,
    Lost,
}

/// One counter with its stable id (snake_case, used in metric names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Counter {
    pub id: &'static str,
    pub help: &'static str,
    pub section: Section,
    pub value: u64,
}

/// Every counter of `t`, counted ones first, from the counter table
/// (`profiler_common::counters::COUNTERS`).
pub fn counters(t: &Totals) -> Vec<Counter> {
    t.entries()
        .map(|(d, value)| Counter {
            id: d.name,
            help: d.help,
            section: match d.section {
                CounterSection::Counted => Section::Counted,
                CounterSection::Lost => Section::Lost,
            },
            value,
        })
        .collect()
}

/// Sum of the lost counters.
pub fn lost_total(t: &Totals) -> u64 {
    t.section_total(CounterSection::Lost)
}
