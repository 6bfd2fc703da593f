//! Ages of the outstanding allocations, read from the kernel's live map at
//! the end of a session (only sampled ones have a call site).

use aya::maps::{HashMap as BpfHashMap, MapData};
use profiler_common::{LiveAlloc, LiveKey, STACK_USER};

use super::capture::Capture;
use super::sites::SiteIds;
use crate::aggregate::{SiteRef, StackRef};
use crate::analysis::age::OutstandingAlloc;
use crate::probes::{ProbeError, Probes};

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The sampled outstanding allocations with their sites, and the time their
/// ages are measured at.
pub fn outstanding(
    probes: &Probes,
    cap: &Capture,
    ids: &SiteIds,
) -> Result<(Vec<OutstandingAlloc>, u64), ProbeError> {
    if cap.samples.holds_live() {
        let now_ns = monotonic_ns();
        let out = cap
            .samples
            .live_blocks()
            .filter_map(|(_, ptr, site, ts_ns, est_bytes, est_count)| {
                Some(OutstandingAlloc {
                    site: ids.id(&site)?,
                    ptr,
                    ts_ns,
                    // Held blocks are every allocation, weighted by itself.
                    size: est_bytes,
                    est_bytes,
                    est_count,
                })
            })
            .collect();
        return Ok((out, now_ns));
    }
    let name = "LIVE";
    let map = probes.ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
    let live: BpfHashMap<&MapData, LiveKey, LiveAlloc> =
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    let now_ns = monotonic_ns();
    let mut out = Vec::new();
    for entry in live.iter() {
        let Ok((key, a)) = entry else { continue };
        let site = if a.stack_id == STACK_USER {
            cap.samples.site_of(key.tgid, key.ptr)
        } else if a.stack_id >= 0 {
            Some(SiteRef {
                pid: key.tgid,
                stack: StackRef::Kernel(a.stack_id),
                kind: a.kind,
            })
        } else {
            None
        };
        if let Some(id) = site.and_then(|s| ids.id(&s)) {
            out.push(OutstandingAlloc {
                site: id,
                ptr: key.ptr,
                ts_ns: a.ts_ns,
                size: a.size,
                est_bytes: a.est_bytes,
                est_count: a.est_count,
            });
        }
    }
    Ok((out, now_ns))
}
