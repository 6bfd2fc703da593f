//! Turning stack ids into symbolized frames: every unique address of every
//! stack is normalized (runtime address → module + file offset) and then
//! symbolized in one batch per module, so each module is parsed once and
//! each address looked up once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aya::maps::{HashMap as AyaHashMap, MapData};
use aya::Ebpf;
use profiler_common::{AllocKind, FpStack};

use crate::aggregate::samples::SampleTable;
use crate::aggregate::{RawSnapshot, StackRef};
use crate::probes::ProbeError;
use crate::process::maps::{MemoryMap, RuntimeAddr};
use crate::process::modules::MappedModule;
use crate::profile::{Frame, ModuleId, Pc, Site};
use crate::symbolize::{ModuleAddr, ModuleSource, Symbolized, Symbolizer, UnknownReason};

/// What the symbolizer reads for a module the normalizer found mapped.
fn module_source(m: MappedModule) -> ModuleSource {
    ModuleSource {
        name: m.name,
        open_path: m.open_path,
        path: m.path,
        root: m.root,
        handle: m.handle,
    }
}

/// The addresses of one module, symbolized in one call.
struct ModuleBatch {
    source: ModuleSource,
    /// Runtime addresses, in the order of `addrs`.
    ips: Vec<u64>,
    addrs: Vec<ModuleAddr>,
}

/// Resolves sites to root-first frames (their stacks read by [`raw_stacks`]).
pub struct Resolver<'a> {
    pub pid: u32,
    pub maps: &'a MemoryMap,
    pub symbolizer: &'a mut Symbolizer,
    /// Frames of each address, root-most first (inlined functions expand
    /// one address into several frames).
    frames_by_ip: HashMap<u64, Vec<Frame>>,
    /// Unique addresses left unresolved, by reason.
    pub unknown: BTreeMap<UnknownReason, u64>,
}

impl<'a> Resolver<'a> {
    pub fn new(pid: u32, maps: &'a MemoryMap, symbolizer: &'a mut Symbolizer) -> Self {
        Resolver {
            pid,
            maps,
            symbolizer,
            frames_by_ip: HashMap::new(),
            unknown: BTreeMap::new(),
        }
    }

    /// Symbolizes every address of `ips` not resolved yet. All of them are
    /// return addresses: stacks are captured at the allocator's return
    /// probe, so even the leaf is the caller's return address.
    pub fn resolve(&mut self, ips: impl IntoIterator<Item = u64>) {
        // Group by module so each module is looked up in the cache once.
        let mut by_module: BTreeMap<(u64, u64), ModuleBatch> = BTreeMap::new();
        for ip in ips {
            if self.frames_by_ip.contains_key(&ip) {
                continue;
            }
            let (region, offset) = match self.maps.lookup(RuntimeAddr(ip)) {
                Some(found) => found,
                None => {
                    self.set(ip, "?".into(), ip, UnknownReason::Unmapped);
                    continue;
                }
            };
            let Some(source) = self.maps.mapped_module(self.pid, region).map(module_source) else {
                let name = region.path.clone().unwrap_or_else(|| "anon".into());
                self.set(ip, name, ip - region.start, UnknownReason::NotFileBacked);
                continue;
            };
            let key = (region.dev.major as u64) << 32 | region.dev.minor as u64;
            let batch = by_module
                .entry((key, region.inode))
                .or_insert_with(|| ModuleBatch {
                    source,
                    ips: Vec::new(),
                    addrs: Vec::new(),
                });
            batch.ips.push(ip);
            batch.addrs.push(ModuleAddr::ret(offset.0));
        }
        for batch in by_module.into_values() {
            let results = self.symbolizer.symbolize_many(&batch.source, &batch.addrs);
            // Kept beside each frame so recordings can be re-symbolized and
            // exported with real mappings (pprof) later.
            let build_id = self.symbolizer.build_id(&batch.source);
            let module = self.symbolizer.intern_module(ModuleId {
                path: batch.source.path.display().to_string(),
                build_id,
            });
            for ((ip, addr), result) in batch.ips.into_iter().zip(batch.addrs).zip(results) {
                if let Some(reason) = result.reason() {
                    *self.unknown.entry(reason).or_insert(0) += 1;
                }
                let pc = Pc {
                    module: Arc::clone(&module),
                    offset: addr.offset.0,
                    address: ip,
                };
                let frames = result
                    .into_frames()
                    .into_iter()
                    .map(|f| f.with_pc(Some(pc.clone())))
                    .collect();
                self.frames_by_ip.insert(ip, frames);
            }
        }
    }

    fn set(&mut self, ip: u64, module: String, offset: u64, reason: UnknownReason) {
        *self.unknown.entry(reason).or_insert(0) += 1;
        let unknown = Symbolized::Unknown {
            module: self.symbolizer.intern(&module),
            offset,
            reason,
        };
        self.frames_by_ip.insert(ip, unknown.into_frames());
    }

    /// Root-first frames of a stack given leaf first (as the kernel gives
    /// it); addresses not resolved yet are resolved first.
    pub fn stack_frames(&mut self, leaf_first: &[u64]) -> Vec<Frame> {
        self.resolve(leaf_first.iter().copied());
        let mut out = Vec::with_capacity(leaf_first.len());
        for ip in leaf_first.iter().rev() {
            if let Some(frames) = self.frames_by_ip.get(ip) {
                out.extend(frames.iter().cloned());
            }
        }
        out
    }

    /// Symbolizes the sites of `snap` whose stacks were read by [`raw_stacks`].
    pub fn sites_from(
        &mut self,
        snap: &RawSnapshot,
        ips_by_ref: &HashMap<StackRef, Vec<u64>>,
    ) -> Vec<Site> {
        // Every address first, in one batch per module.
        self.resolve(ips_by_ref.values().flatten().copied());
        // Sites of one stack (other APIs or processes) share its frames.
        let mut by_ref: HashMap<StackRef, Arc<[Frame]>> = HashMap::new();
        let mut out = Vec::with_capacity(snap.sites.len());
        for (key, stats) in &snap.sites {
            let frames = match ips_by_ref.get(&key.stack) {
                Some(ips) => Arc::clone(
                    by_ref
                        .entry(key.stack)
                        .or_insert_with(|| self.stack_frames(ips).into()),
                ),
                None => Arc::from([]),
            };
            let api = AllocKind::from_u32(key.kind)
                .map(AllocKind::symbol)
                .unwrap_or("?");
            out.push(Site {
                pid: key.pid,
                frames,
                api,
                stats: stats.clone(),
            });
        }
        if !self.unknown.is_empty() {
            log::debug!("unresolved addresses by reason: {:?}", self.unknown);
        }
        out
    }
}

/// The return addresses of a snapshot's stacks, leaf first, read where the
/// capture keeps them: quick, and done where the capture's maps are; the
/// slow part, symbolizing them, can then happen elsewhere.
#[derive(Debug, Default)]
pub struct RawStacks {
    pub ips_by_ref: HashMap<StackRef, Vec<u64>>,
    /// Stack ids no longer (or never) present in the stack map.
    pub missing_stacks: u64,
    /// Frame-pointer stacks cut where the walk left executable code, by the
    /// module of the last frame before the cut (it lacks frame pointers).
    pub fp_cut: BTreeMap<String, u64>,
}

/// Reads the stack of every site of `snap` (see [`RawStacks`]).
pub fn raw_stacks(
    maps: &MemoryMap,
    snap: &RawSnapshot,
    ebpf: &Ebpf,
    samples: &SampleTable,
) -> Result<RawStacks, ProbeError> {
    let name = "STACK_TABLE";
    let map = ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
    let stacks: AyaHashMap<&MapData, u32, FpStack> =
        AyaHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    let mut raw = RawStacks::default();
    for key in snap.sites.keys() {
        if raw.ips_by_ref.contains_key(&key.stack) {
            continue;
        }
        let ips = match key.stack {
            StackRef::Kernel(id) if id < 0 => Vec::new(),
            StackRef::Kernel(id) => match stacks.get(&(id as u32), 0) {
                Ok(trace) => {
                    let mut ips: Vec<u64> = trace
                        .ips
                        .iter()
                        .copied()
                        .take_while(|&ip| ip != 0)
                        .collect();
                    cut_fp_walk(maps, &mut ips, &mut raw.fp_cut);
                    ips
                }
                Err(_) => {
                    raw.missing_stacks += 1;
                    Vec::new()
                }
            },
            StackRef::User(id) => samples.stack(id).map(<[u64]>::to_vec).unwrap_or_default(),
        };
        raw.ips_by_ref.insert(key.stack, ips);
    }
    Ok(raw)
}

/// A frame-pointer walk through code built without frame pointers reads
/// arbitrary data as return addresses: the first one outside executable
/// code (`[heap]`, a stack, unmapped) ends the real stack. Cuts
/// `leaf_first` there and counts the module the walk broke in.
fn cut_fp_walk(maps: &MemoryMap, leaf_first: &mut Vec<u64>, fp_cut: &mut BTreeMap<String, u64>) {
    let exec = |ip: u64| {
        maps.lookup(RuntimeAddr(ip))
            .is_some_and(|(r, _)| r.perms.execute)
    };
    let Some(bad) = leaf_first.iter().position(|&ip| !exec(ip)) else {
        return;
    };
    let module = match bad.checked_sub(1).and_then(|i| leaf_first.get(i)) {
        Some(&ip) => maps
            .lookup(RuntimeAddr(ip))
            .and_then(|(r, _)| r.path.clone())
            .unwrap_or_else(|| "?".into()),
        None => "the allocator's caller".into(),
    };
    *fp_cut.entry(module).or_insert(0) += 1;
    leaf_first.truncate(bad);
}
