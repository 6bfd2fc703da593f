//! The fallback for kernels without `uprobe_multi` links (before 6.6): one
//! perf-event uprobe per entry point and per return, attached one at a time
//! through aya.

use std::num::NonZeroU32;

use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;

use super::{attach_order, AllocatorTarget, ProbeError};

/// Loads program `name` once.
pub(super) fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut UProbe, ProbeError> {
    let prog: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })?;
    if prog.fd().is_err() {
        prog.load()
            .map_err(|source| ProbeError::Program { name, source })?;
    }
    Ok(prog)
}

/// Attaches `entry` and `ret` at every point of `target` for `pid`, frees
/// first (see `attach_order`), each return probe before its entry probe.
pub fn attach(
    ebpf: &mut Ebpf,
    pid: u32,
    target: &AllocatorTarget,
    entry: &'static str,
    ret: &'static str,
) -> Result<Vec<(&'static str, UProbeLinkId)>, ProbeError> {
    let scope_pid = NonZeroU32::new(pid).ok_or(ProbeError::NoSuchProcess(pid))?;
    let mut links = Vec::new();
    for point in attach_order(&target.points) {
        // Return probe first: on a shared address, the entry probe must not
        // see a call whose return would be missed.
        let mut order: Vec<(&'static str, u64)> = Vec::new();
        if point.spec.has_return_probe() {
            order.push((ret, point.func_offset));
        }
        order.push((entry, point.entry_offset));
        for (name, offset) in order {
            let prog = program(ebpf, name)?;
            let at = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie: Some(point.spec.cookie()),
            };
            let id = prog
                .attach(at, &point.file, UProbeScope::OneProcess(scope_pid))
                .map_err(|source| ProbeError::Attach {
                    symbol: point.symbol.as_str().into(),
                    path: point.file.clone(),
                    pid,
                    source,
                })?;
            links.push((name, id));
        }
    }
    Ok(links)
}

/// Detaches every link; errors are returned, not fatal.
pub fn detach(ebpf: &mut Ebpf, links: &mut Vec<(&'static str, UProbeLinkId)>) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, id) in links.drain(..) {
        let prog: Option<&mut UProbe> = ebpf.program_mut(name).and_then(|p| p.try_into().ok());
        match prog {
            Some(p) => {
                if let Err(e) = p.detach(id) {
                    errors.push(format!("detaching {name}: {e}"));
                }
            }
            None => errors.push(format!("detaching {name}: program missing")),
        }
    }
    errors
}
