//! The errors of loading and attaching probes.

use std::path::PathBuf;

/// Errors of loading and attaching, each naming its cause and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no such process: pid {0} (check it with `ps -p {0}`)")]
    NoSuchProcess(u32),
    #[error("holding the command at its exit: {0}")]
    ExitHold(String),
    #[error("permission denied: heapscope needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE) to load eBPF; run it with sudo")]
    NotPrivileged,
    #[error("this kernel has no uprobe support (/sys/bus/event_source/devices/uprobe is missing); it needs CONFIG_UPROBE_EVENTS=y")]
    NoUprobes,
    #[error("this kernel exposes no BTF (/sys/kernel/btf/vmlinux is missing); heapscope needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.8 or newer)")]
    NoBtf,
    #[error("cannot read the memory map of pid {pid}: {reason}")]
    Maps { pid: u32, reason: String },
    #[error("no allocator found in pid {pid}: none of its {searched} mapped executable files defines malloc (a stripped static binary has no symbols to probe)")]
    NoAllocator { pid: u32, searched: usize },
    #[error("pid {pid} is a zombie: it has exited and waits for its parent (pid {ppid}) to reap it; there is nothing left to profile")]
    Zombie { pid: u32, ppid: u32 },
    #[error("pid {pid} ({comm}) is a kernel thread: it has no user-space heap to profile")]
    KernelThread { pid: u32, comm: String },
    #[error("cannot read /proc/{pid}/maps: permission denied (a hardened /proc, `hidepid`, or a process in another user namespace); run heapscope as root in the process's PID namespace")]
    MapsUnreadable { pid: u32 },
    #[error("pid {pid} ({path}) is a Go program: the Go runtime manages its heap without malloc, so there is nothing for heapscope to probe; use Go's own heap profile (net/http/pprof, /debug/pprof/heap)")]
    GoProgram { pid: u32, path: String },
    #[error("{spec}: pid {pid} defines no function {symbol} (searched its {searched} mapped executable files; a static or inlined function has no symbol to probe: check with `nm -D FILE` or `nm FILE`)")]
    CustomSymbol {
        pid: u32,
        spec: String,
        symbol: String,
        searched: usize,
    },
    #[error("{spec}: {} defines no function {symbol}, nor do LD_PRELOAD or the C library (`run` searches only these; for a function of a linked library, start the program and use `heapscope attach -p PID`)", exe.display())]
    CustomSymbolForCommand {
        spec: String,
        symbol: String,
        exe: PathBuf,
    },
    #[error("cannot read {path}: {reason}")]
    Module { path: PathBuf, reason: String },
    #[error("loading the eBPF programs failed (is the kernel 5.8+ with BPF enabled?)")]
    Load(#[source] aya::EbpfError),
    #[error("eBPF map {0} is missing from the embedded object (rebuild heapscope)")]
    MissingMap(&'static str),
    #[error("initialising eBPF map {name} failed")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF program {0} is missing from the embedded object (rebuild heapscope)")]
    MissingProgram(&'static str),
    #[error("loading eBPF program {name} failed")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to {symbol} in {path} (pid {pid}) failed")]
    Attach {
        symbol: Box<str>,
        path: PathBuf,
        pid: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// The causes below an error, for a one-line message.
pub(super) fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}
