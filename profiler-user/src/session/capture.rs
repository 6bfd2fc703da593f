//! Everything a session accumulates while attached: events applied to the
//! region tracker and the sample table, the newest memory map, the unwinder.

use std::path::PathBuf;

use crate::aggregate::{self, regions::RegionTracker, samples::SampleTable, RawSnapshot};
use crate::events::{EventReader, EventSink};
use crate::probes::target::in_root;
use crate::probes::Probes;
use crate::process::maps::MemoryMap;
use crate::unwind::{ModuleFiles, Unwinder};

/// Opens module files through the target's root (containers).
pub struct RootedFiles {
    pub pid: u32,
}

impl ModuleFiles for RootedFiles {
    fn open_path(&self, region_path: &str) -> Option<PathBuf> {
        Some(in_root(self.pid, region_path))
    }
}

/// The state of an attached session.
pub struct Capture {
    pub pid: u32,
    pub events: EventReader,
    pub regions: RegionTracker,
    pub samples: SampleTable,
    pub unwinder: Unwinder,
    pub maps: MemoryMap,
    /// False until a non-empty memory map of the target was read.
    pub have_maps: bool,
    pub comm: String,
}

fn read_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_maps(pid: u32) -> Option<MemoryMap> {
    MemoryMap::read(pid).ok().filter(|m| !m.regions.is_empty())
}

impl Capture {
    pub fn new(probes: &mut Probes) -> anyhow::Result<Capture> {
        let pid = probes.pid;
        let maps = read_maps(pid);
        Ok(Capture {
            pid,
            events: EventReader::new(&mut probes.ebpf)?,
            regions: RegionTracker::default(),
            samples: SampleTable::default(),
            unwinder: Unwinder::default(),
            have_maps: maps.is_some(),
            maps: maps.unwrap_or_default(),
            comm: read_comm(pid).unwrap_or_default(),
        })
    }

    /// Keeps the newest memory map and name while the target lives: after it
    /// exits, the last ones still symbolize what was captured.
    pub fn refresh(&mut self) {
        if let Some(m) = read_maps(self.pid) {
            self.maps = m;
            self.have_maps = true;
        }
        if let Some(c) = read_comm(self.pid) {
            self.comm = c;
        }
    }

    /// Applies every pending event.
    pub fn drain(&mut self) {
        let pid = self.pid;
        let files = RootedFiles { pid };
        let mut refresh = || read_maps(pid);
        let mut sink = EventSink {
            regions: &mut self.regions,
            samples: &mut self.samples,
            unwinder: &mut self.unwinder,
            maps: &mut self.maps,
            files: &files,
            refresh: &mut refresh,
            refreshed: false,
        };
        self.events.drain(&mut sink);
    }

    /// Drains events and reads the kernel's counters into one raw snapshot.
    pub fn snapshot(&mut self, probes: &Probes) -> anyhow::Result<RawSnapshot> {
        self.drain();
        let counters = aggregate::read_counters(&probes.ebpf)?;
        let sites = aggregate::read_sites(&probes.ebpf)?;
        Ok(aggregate::merge(
            &sites,
            &self.samples,
            &counters,
            &self.regions,
        ))
    }
}
