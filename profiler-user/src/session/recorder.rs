//! Turns each tick's raw snapshot into the timeline (and the recording file,
//! when asked): new call sites are symbolized once, when first seen, so the
//! recording carries what symbolization needs and reads anywhere.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use crate::aggregate::{RawSnapshot, SiteRef};
use crate::profile::{Site, SiteStats};
use crate::record::format::Header;
use crate::record::writer::Writer;
use crate::record::RecordError;
use crate::timeline::{MemSample, SiteId, SiteInfo, Tick, Timeline};

/// The timeline of a session and its optional recording.
pub struct Recorder {
    pub timeline: Timeline,
    ids: HashMap<SiteRef, SiteId>,
    writer: Option<Writer<BufWriter<File>>>,
    /// Set when writing the recording failed: the session goes on, the file
    /// stays readable up to its last whole tick, and the user is told.
    pub write_error: Option<String>,
    /// Frame-pointer stacks cut where the walk left executable code, by the
    /// module it broke in (see `resolve::Resolver::fp_cut`).
    pub fp_cut: std::collections::BTreeMap<String, u64>,
}

impl Recorder {
    /// A recorder writing to `path` when given.
    pub fn new(path: Option<&Path>, header: &Header) -> Result<Recorder, RecordError> {
        let writer = path.map(|p| Writer::create(p, header)).transpose()?;
        Ok(Recorder {
            timeline: Timeline::default(),
            ids: HashMap::new(),
            writer,
            write_error: None,
            fp_cut: Default::default(),
        })
    }

    /// Sites of `snap` not seen before.
    pub fn new_sites(&self, snap: &RawSnapshot) -> RawSnapshot {
        RawSnapshot {
            sites: snap
                .sites
                .iter()
                .filter(|(k, _)| !self.ids.contains_key(k))
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            totals: snap.totals.clone(),
        }
    }

    /// Registers symbolized new sites (in the order of `refs`).
    pub fn add_sites(&mut self, refs: impl IntoIterator<Item = SiteRef>, sites: Vec<Site>) {
        for (r, site) in refs.into_iter().zip(sites) {
            let info = SiteInfo {
                frames: site.frames,
                api: site.api,
            };
            if let Some(w) = self.writer.as_mut() {
                if let Err(e) = w.site(&info) {
                    self.fail(e);
                }
            }
            let id = self.timeline.add_site(info);
            self.ids.insert(r, id);
        }
    }

    /// Appends one tick of cumulative numbers.
    pub fn tick(&mut self, t_ms: u64, snap: &RawSnapshot, mem: Option<MemSample>) {
        let sites: Vec<(SiteId, SiteStats)> = snap
            .sites
            .iter()
            .filter_map(|(k, v)| self.ids.get(k).map(|id| (*id, v.clone())))
            .collect();
        let tick = Tick {
            t_ms,
            sites,
            totals: snap.totals.clone(),
            mem,
        };
        if let Some(w) = self.writer.as_mut() {
            if let Err(e) = w.tick(&tick) {
                self.fail(e);
            }
        }
        self.timeline.push(tick);
    }

    /// The site id of a call site, once registered.
    pub fn id(&self, site: &SiteRef) -> Option<SiteId> {
        self.ids.get(site).copied()
    }

    fn fail(&mut self, e: RecordError) {
        if self.write_error.is_none() {
            self.write_error = Some(e.to_string());
        }
        // Stop writing: a partial record would only be discarded by readers.
        self.writer = None;
    }

    /// Writes the end record (a clean stop).
    pub fn finish(&mut self, end_ms: u64) {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.finish(end_ms) {
                self.fail(e);
            }
        }
    }
}
