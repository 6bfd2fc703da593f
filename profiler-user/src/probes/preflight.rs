//! Checks made before touching the kernel: the process exists and can be
//! profiled, heapscope has the privileges, the kernel has uprobes and BTF.

use std::path::Path;

use super::ProbeError;

/// Checks what can be checked before touching the kernel, so the user gets
/// the precise cause rather than a raw errno.
pub fn preflight(pid: u32) -> Result<(), ProbeError> {
    if !Path::new(&format!("/proc/{pid}")).exists() || pid == 0 {
        return Err(ProbeError::NoSuchProcess(pid));
    }
    check_process_kind(pid)?;
    if !has_bpf_privileges() {
        return Err(ProbeError::NotPrivileged);
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(ProbeError::NoUprobes);
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(ProbeError::NoBtf);
    }
    Ok(())
}

/// Zombies and kernel threads cannot be profiled: each is said as what it
/// is. A process whose main thread exited is profiled through a live thread.
pub fn check_process_kind(pid: u32) -> Result<(), ProbeError> {
    use crate::process::procfs;
    let Some(stat) = procfs::stat(pid) else {
        return Err(ProbeError::NoSuchProcess(pid));
    };
    if stat.is_kernel_thread() {
        return Err(ProbeError::KernelThread {
            pid,
            comm: stat.comm,
        });
    }
    // A dead leader with live threads (pthread_exit) is profiled through a
    // live thread (see `Probes::attach`); without one it is a zombie.
    if stat.is_dead() && procfs::live_thread(pid).is_none() {
        return Err(ProbeError::Zombie {
            pid,
            ppid: stat.ppid,
        });
    }
    Ok(())
}

/// True when the effective capabilities allow loading tracing programs:
/// CAP_SYS_ADMIN, or CAP_BPF together with CAP_PERFMON.
pub fn has_bpf_privileges() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    const CAP_PERFMON: u64 = 1 << 38;
    const CAP_BPF: u64 = 1 << 39;
    caps & CAP_SYS_ADMIN != 0 || (caps & CAP_BPF != 0 && caps & CAP_PERFMON != 0)
}
