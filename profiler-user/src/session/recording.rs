//! The recording file as a session output: every new site and every tick is
//! appended as it comes (see [`crate::record`]).

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::record::format::Header;
use crate::record::writer::Writer;
use crate::record::RecordError;

use super::output::{SessionOutput, TickUpdate};

/// Writes a session to a recording file.
pub struct RecordingOutput {
    writer: Option<Writer<BufWriter<File>>>,
    /// Processes as last written, so a changed one is written again.
    processes: std::collections::BTreeMap<u32, crate::profile::ProcessInfo>,
    /// Set when writing failed: the session goes on, the file stays readable
    /// up to its last whole tick, and the user is told at the end.
    error: Option<RecordError>,
    /// Decision windows of the overhead guard seen so far.
    guard_windows: u64,
    /// The guard's changes written so far (`GuardLog::changes`).
    guard_changes: usize,
}

impl RecordingOutput {
    /// Creates (or truncates) `path` and writes its header.
    pub fn create(path: &Path, header: &Header) -> Result<RecordingOutput, RecordError> {
        Ok(RecordingOutput {
            writer: Some(Writer::create(path, header)?),
            processes: Default::default(),
            error: None,
            guard_windows: 0,
            guard_changes: 0,
        })
    }

    fn fail(&mut self, e: RecordError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
        // Stop writing: a partial record would only be discarded by readers.
        self.writer = None;
    }
}

impl SessionOutput for RecordingOutput {
    fn tick(&mut self, update: &TickUpdate<'_>) {
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        let mut result = Ok(());
        for p in update.timeline.processes() {
            if self.processes.get(&p.pid) == Some(p) {
                continue;
            }
            result = w.process(p);
            if result.is_err() {
                break;
            }
            self.processes.insert(p.pid, p.clone());
        }
        for (_, info) in update.new_sites {
            if result.is_err() {
                break;
            }
            result = w.site(info).map(|_| ());
            if result.is_err() {
                break;
            }
        }
        // Every change of the guard's not written yet, then its newest
        // window when it is new and not one of them. (Only the newest had
        // been written: when ticks came late, waiting for the symbolizer on
        // a saturated machine, the changes between two of them were lost.)
        if let Some(g) = update.timeline.guard() {
            let mut written = None;
            for p in g.changes.iter().skip(self.guard_changes) {
                result = result.and_then(|()| w.guard(p));
                written = Some(*p);
            }
            self.guard_changes = g.changes.len();
            if let (Some(p), true) = (g.last, g.windows > self.guard_windows) {
                if written != Some(p) {
                    result = result.and_then(|()| w.guard(&p));
                }
            }
            self.guard_windows = g.windows;
        }
        if let Err(e) = result.and_then(|()| w.tick(update.tick)) {
            self.fail(e);
        }
    }

    fn finish(&mut self, end_ms: u64) -> Option<String> {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.finish(end_ms) {
                self.fail(e);
            }
        }
        self.error.as_ref().map(|e| {
            let mut msg = format!("the recording stopped at its last whole tick: {e}");
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            msg
        })
    }
}
