//! Turning stack ids into symbolized frames, once per unique address.

use std::collections::HashMap;

use aya::maps::{MapData, StackTraceMap};
use aya::Ebpf;
use profiler_common::{AllocKind, STACK_NONE};

use crate::aggregate::RawSnapshot;
use crate::probes::target::in_root;
use crate::process::maps::{MemoryMap, RuntimeAddr};
use crate::profile::{Frame, Site};
use crate::symbolize::Symbolizer;

/// Resolves every site of `snap` to root-first frames.
pub struct Resolver<'a> {
    pub pid: u32,
    pub maps: &'a MemoryMap,
    pub symbolizer: &'a mut Symbolizer,
    frames_by_ip: HashMap<u64, Frame>,
    /// Stack ids no longer (or never) present in the stack map.
    pub missing_stacks: u64,
}

impl<'a> Resolver<'a> {
    pub fn new(pid: u32, maps: &'a MemoryMap, symbolizer: &'a mut Symbolizer) -> Self {
        Resolver {
            pid,
            maps,
            symbolizer,
            frames_by_ip: HashMap::new(),
            missing_stacks: 0,
        }
    }

    /// Symbolizes one return address (all frames of a stack captured at a
    /// return probe are return addresses, the leaf included).
    fn frame(&mut self, ip: u64) -> Frame {
        if let Some(f) = self.frames_by_ip.get(&ip) {
            return f.clone();
        }
        let f = match self.maps.lookup(RuntimeAddr(ip)) {
            Some((region, offset)) => match region.path.as_deref() {
                Some(path) if region.is_file() => {
                    let module = region.file_name().unwrap_or(path).to_string();
                    let file = in_root(self.pid, path);
                    self.symbolizer.symbolize(&file, &module, offset, true)
                }
                _ => Frame::Unknown {
                    module: region.path.clone().unwrap_or_else(|| "anon".into()),
                    offset: ip - region.start,
                },
            },
            None => Frame::Unknown {
                module: "?".into(),
                offset: ip,
            },
        };
        self.frames_by_ip.insert(ip, f.clone());
        f
    }

    /// Builds the symbolized sites of a snapshot.
    pub fn sites(&mut self, snap: &RawSnapshot, ebpf: &Ebpf) -> anyhow::Result<Vec<Site>> {
        let map = ebpf
            .map("STACKS")
            .ok_or_else(|| anyhow::anyhow!("map STACKS missing from the eBPF object"))?;
        let stacks: StackTraceMap<&MapData> = StackTraceMap::try_from(map)?;
        let mut by_id: HashMap<i32, Vec<Frame>> = HashMap::new();
        let mut out = Vec::with_capacity(snap.sites.len());
        for (key, stats) in &snap.sites {
            let frames = if key.stack_id == STACK_NONE || key.stack_id < 0 {
                Vec::new()
            } else if let Some(f) = by_id.get(&key.stack_id) {
                f.clone()
            } else {
                let f = match stacks.get(&(key.stack_id as u32), 0) {
                    Ok(trace) => {
                        let ips: Vec<u64> = trace.frames().iter().map(|fr| fr.ip).collect();
                        // The kernel gives leaf first; profiles are root first.
                        ips.iter().rev().map(|&ip| self.frame(ip)).collect()
                    }
                    Err(_) => {
                        self.missing_stacks += 1;
                        Vec::new()
                    }
                };
                by_id.insert(key.stack_id, f.clone());
                f
            };
            let api = AllocKind::from_u32(key.kind)
                .map(AllocKind::symbol)
                .unwrap_or("?");
            out.push(Site {
                frames,
                api,
                stats: stats.clone(),
            });
        }
        Ok(out)
    }
}
