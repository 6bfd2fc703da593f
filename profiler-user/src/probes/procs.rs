//! The process watch: the exec tracepoint and the set of profiled processes
//! it reports on (the eBPF `PROFILED` map).

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::raw_trace_point::RawTracePointLinkId;
use aya::programs::RawTracePoint;
use aya::Ebpf;

use super::ProbeError;

const EXEC_PROGRAM: &str = "on_exec";

/// Adds `pid` to the processes the tracepoints report on.
pub fn profile_pid(ebpf: &mut Ebpf, pid: u32) -> Result<(), ProbeError> {
    let name = "PROFILED";
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    let mut set: BpfHashMap<&mut MapData, u32, u32> =
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    set.insert(pid, 1, 0)
        .map_err(|source| ProbeError::Map { name, source })
}

const FORK_PROGRAM: &str = "on_fork";
const EXIT_PROGRAM: &str = "on_exit";

/// Attaches the `sched_process_exec`, `sched_process_fork` and
/// `sched_process_exit` raw tracepoint programs (raw: they need no tracefs
/// mount). They run for every exec, fork and thread exit on the machine but
/// return at once unless the process is profiled: they put no breakpoint
/// anywhere.
pub fn watch_exec(ebpf: &mut Ebpf) -> Result<Vec<(&'static str, RawTracePointLinkId)>, ProbeError> {
    let mut links = Vec::new();
    for (name, tp) in [
        (EXEC_PROGRAM, "sched_process_exec"),
        (FORK_PROGRAM, "sched_process_fork"),
        (EXIT_PROGRAM, "sched_process_exit"),
    ] {
        let prog: &mut RawTracePoint = ebpf
            .program_mut(name)
            .ok_or(ProbeError::MissingProgram(name))?
            .try_into()
            .map_err(|source| ProbeError::Program { name, source })?;
        prog.load()
            .map_err(|source| ProbeError::Program { name, source })?;
        let id = prog
            .attach(tp)
            .map_err(|source| ProbeError::Program { name, source })?;
        links.push((name, id));
    }
    Ok(links)
}

/// Detaches the process tracepoints.
pub fn unwatch_exec(
    ebpf: &mut Ebpf,
    links: Vec<(&'static str, RawTracePointLinkId)>,
) -> Vec<String> {
    let mut errors = Vec::new();
    for (name, id) in links {
        let prog: Option<&mut RawTracePoint> =
            ebpf.program_mut(name).and_then(|p| p.try_into().ok());
        let r = match prog {
            Some(p) => p.detach(id).map_err(|e| format!("detaching {name}: {e}")),
            None => Err(format!("detaching {name}: program missing")),
        };
        if let Err(e) = r {
            errors.push(e);
        }
    }
    errors
}
