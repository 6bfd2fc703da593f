//! Call-site ids of a session: a [`SiteRef`] (stack + entry point, as the
//! capture knows it) gets a dense [`SiteId`] the first time a tick has it.

use std::collections::HashMap;

use crate::aggregate::{RawSnapshot, SiteRef};
use crate::profile::{Site, SiteStats};
use crate::timeline::{SiteId, SiteInfo};

/// Hands out site ids in order 0, 1, 2, ... (as [`crate::timeline::Timeline::add_site`]).
#[derive(Default)]
pub struct SiteIds {
    ids: HashMap<SiteRef, SiteId>,
}

impl SiteIds {
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

    /// Registers symbolized new sites (in the order of `refs`) and returns
    /// them with their ids.
    pub fn add(
        &mut self,
        refs: impl IntoIterator<Item = SiteRef>,
        sites: Vec<Site>,
    ) -> Vec<(SiteId, SiteInfo)> {
        let mut out = Vec::with_capacity(sites.len());
        for (r, site) in refs.into_iter().zip(sites) {
            // More than 4 billion sites cannot come from bounded kernel maps.
            let id = SiteId(u32::try_from(self.ids.len()).unwrap_or(u32::MAX));
            self.ids.insert(r, id);
            out.push((
                id,
                SiteInfo {
                    pid: site.pid,
                    frames: site.frames,
                    api: site.api,
                },
            ));
        }
        out
    }

    /// The numbers of every registered site of `snap`, by id.
    pub fn stats(&self, snap: &RawSnapshot) -> Vec<(SiteId, SiteStats)> {
        snap.sites
            .iter()
            .filter_map(|(k, v)| self.ids.get(k).map(|id| (*id, v.clone())))
            .collect()
    }

    /// The id of a call site, once registered.
    pub fn id(&self, site: &SiteRef) -> Option<SiteId> {
        self.ids.get(site).copied()
    }
}
