//! bcc's memleak (Debian's `bpfcc-tools`) on the benchmark workload: the
//! other eBPF peer a user would pick. It attaches to a running PID like
//! `heapscope attach`, with uprobes on the allocator and a stack per
//! allocation. When it cannot run here the row is skipped with the reason.
//!
//! Two things stand in its way on this machine kind, both worked around
//! without touching the system:
//! - bcc compiles its program against the running kernel's headers
//!   (`/lib/modules/$(uname -r)/build`); none exist for this VM's kernel.
//!   Debian's `linux-headers-amd64` (another kernel version: the program
//!   only uses `pt_regs` and helpers) is merged from its split directories
//!   (`-amd64` generated files, `-common` sources) into a temporary tree of
//!   symlinks named by `BCC_KERNEL_SOURCE`.
//! - Debian's python3-bpfcc 0.26 declares `bpf_attach_uprobe` with six
//!   arguments while libbcc's takes a seventh (`ref_ctr_offset`): it gets a
//!   register's leftover value and the kernel refuses the probe (EINVAL). A
//!   small wrapper passes 0.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

use super::{read_pair_costs, Measurement};
use crate::child::{lines_of, spawn_target, wait_cpu, wait_for, Target};

const MEMLEAK: &str = "/usr/sbin/memleak-bpfcc";
/// Debian's python, which has bcc's module (not a pyenv shim).
const PYTHON: &str = "/usr/bin/python3";

/// Runs memleak-bpfcc with python3-bpfcc 0.26's `bpf_attach_uprobe`
/// declaration completed (see the module comment); arguments are memleak's.
const WRAPPER: &str = r#"import ctypes, runpy, sys
from bcc import libbcc
f = libbcc.lib.bpf_attach_uprobe
if len(f.argtypes) == 6:
    f.argtypes = list(f.argtypes) + [ctypes.c_uint32]
    libbcc.lib.bpf_attach_uprobe = lambda *a: f(*a, 0)
sys.argv = ["memleak-bpfcc"] + sys.argv[1:]
runpy.run_path("/usr/sbin/memleak-bpfcc", run_name="__main__")
"#;

/// What memleak needs here, prepared once per benchmark.
pub(super) struct Memleak {
    dir: PathBuf,
    /// The merged headers tree, when the running kernel has none.
    kernel_source: Option<PathBuf>,
    /// What it runs against, for the row's name.
    pub headers: String,
}

impl Drop for Memleak {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Prepares memleak, or says why it cannot run here.
pub(super) fn prepare() -> std::result::Result<Memleak, String> {
    if !Path::new(MEMLEAK).exists() || !Path::new(PYTHON).exists() {
        return Err(format!(
            "{MEMLEAK} not installed (apt-get install bpfcc-tools)"
        ));
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("reading the kernel release: {e}"))?;
    let dir = std::env::temp_dir().join(format!("heapscope-bench-memleak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut m = Memleak {
        dir,
        kernel_source: None,
        headers: format!("headers of {release}"),
    };
    std::fs::write(m.dir.join("memleak.py"), WRAPPER)
        .map_err(|e| format!("writing the memleak wrapper: {e}"))?;
    if Path::new(&format!("/lib/modules/{release}/build")).exists() {
        return Ok(m);
    }
    let Some((amd64, common)) = debian_headers() else {
        return Err(format!(
            "bcc compiles its program against kernel headers: /lib/modules/{release}/build is \
             missing and no Debian linux-headers-*-amd64 is installed (apt-get install \
             linux-headers-amd64)"
        ));
    };
    let tree = m.dir.join("kernel");
    merge_tree(&amd64, &common, &tree)
        .map_err(|e| format!("merging {} and {}: {e}", amd64.display(), common.display()))?;
    m.headers = format!(
        "Debian's {} headers, no {release} headers exist",
        amd64
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned())
            .trim_start_matches("linux-headers-")
    );
    m.kernel_source = Some(tree);
    Ok(m)
}

/// The newest `/usr/src/linux-headers-*-amd64` and its `-common` sibling.
fn debian_headers() -> Option<(PathBuf, PathBuf)> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-headers-") && n.ends_with("-amd64"))
        })
        .collect();
    found.sort();
    let amd64 = found.pop()?;
    let name = amd64.file_name()?.to_str()?;
    let common = amd64.with_file_name(format!("{}-common", name.strip_suffix("-amd64")?));
    common.is_dir().then_some((amd64, common))
}

/// Builds `dst` as the union of `a` and `b` in symlinks: an entry in one of
/// them is linked; a directory in both is merged again; a file in both is
/// taken from `a`.
fn merge_tree(a: &Path, b: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dst)?;
    let mut names = std::collections::BTreeSet::new();
    for d in [a, b] {
        for e in std::fs::read_dir(d)? {
            names.insert(e?.file_name());
        }
    }
    for name in names {
        let (pa, pb) = (a.join(&name), b.join(&name));
        let target = dst.join(&name);
        if pa.is_dir() && pb.is_dir() {
            merge_tree(&pa, &pb, &target)?;
        } else if pa.exists() {
            std::os::unix::fs::symlink(&pa, &target)?;
        } else {
            std::os::unix::fs::symlink(&pb, &target)?;
        }
    }
    Ok(())
}

/// The workload with memleak attached by PID (every allocation traced with
/// its stack, outstanding allocations printed every second). `Err` with the
/// reason when memleak fails to attach.
pub(super) fn measure(
    m: &Memleak,
    bin: &Path,
    pairs: u64,
    threads: u32,
) -> Result<std::result::Result<Measurement, String>> {
    let Target {
        child: mut target,
        mut stdin,
        out,
        pid,
    } = spawn_target(
        Command::new(bin)
            .arg(pairs.to_string())
            .arg(threads.to_string()),
    )?;
    let mut cmd = Command::new(PYTHON);
    cmd.arg(m.dir.join("memleak.py"))
        .args(["-p", &pid, "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(src) = &m.kernel_source {
        cmd.env("BCC_KERNEL_SOURCE", src);
    }
    let mut p = cmd.spawn().context("starting memleak-bpfcc")?;
    let report = lines_of(p.stdout.take().context("memleak stdout")?);
    let err = lines_of(p.stderr.take().context("memleak stderr")?);
    // The first report comes a second after every probe is in.
    let attached = wait_for(&report, "Top ");
    if attached.is_err() {
        let _ = p.kill();
        let _ = p.wait();
        // Its stderr ends with it.
        let why: Vec<String> = err.iter().collect();
        let _ = target.kill();
        let _ = target.wait();
        let last = why
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| "no output".into());
        return Ok(Err(format!("memleak did not attach: {last}")));
    }
    writeln!(stdin, "go")?;
    let mut r = read_pair_costs(&out)?;
    // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(p.id() as libc::pid_t, libc::SIGINT) };
    let (cpu, rss) = wait_cpu(&p)?;
    r.cpu_secs = Some(cpu);
    r.peak_rss_mb = Some(rss);
    writeln!(stdin, "exit")?;
    target.wait()?;
    Ok(Ok(r))
}
