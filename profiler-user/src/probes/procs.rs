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

/// Attaches the `sched_process_exec` raw tracepoint program (raw: it needs
/// no tracefs mount). It runs for every
/// exec on the machine but returns at once unless the process is profiled:
/// it puts no breakpoint anywhere.
pub fn watch_exec(ebpf: &mut Ebpf) -> Result<RawTracePointLinkId, ProbeError> {
    let name = EXEC_PROGRAM;
    let prog: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::Program { name, source })?;
    prog.load()
        .map_err(|source| ProbeError::Program { name, source })?;
    prog.attach("sched_process_exec")
        .map_err(|source| ProbeError::Program { name, source })
}

/// Detaches the exec tracepoint.
pub fn unwatch_exec(ebpf: &mut Ebpf, id: RawTracePointLinkId) -> Result<(), String> {
    let prog: Option<&mut RawTracePoint> = ebpf
        .program_mut(EXEC_PROGRAM)
        .and_then(|p| p.try_into().ok());
    match prog {
        Some(p) => p
            .detach(id)
            .map_err(|e| format!("detaching {EXEC_PROGRAM}: {e}")),
        None => Err(format!("detaching {EXEC_PROGRAM}: program missing")),
    }
}
