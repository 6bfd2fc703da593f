//! `uprobe_multi` links (kernel 6.6+): every entry point of one file attached
//! in a single `bpf(BPF_LINK_CREATE)` call, scoped to one process, detached by
//! closing one descriptor. aya 0.14 does not wrap them, so this module loads
//! the two programs itself (the attach type must be declared at load time)
//! from the object aya parsed and whose maps aya created.
//!
//! Why: one probe at a time, an attach is two syscalls and a trip through
//! the scheduler per probe (seconds when the target saturates the CPUs), and
//! each detach waits for an SRCU grace period (~0.1 s each, 2 s for 22 probes).
//! A link registers all its offsets in one call and waits once when closed.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use aya::Ebpf;
use aya_obj::generated::bpf_insn;

use super::bpf_sys::{
    bpf_fd, load_program, map_data, set_program, LinkCreateAttr, BPF_LINK_CREATE,
};

/// `enum bpf_attach_type` (checked against this kernel's BTF).
pub const BPF_TRACE_UPROBE_MULTI: u32 = 48;
/// `BPF_F_UPROBE_MULTI_RETURN`: the link's probes are return probes.
const BPF_F_UPROBE_MULTI_RETURN: u32 = 1;

/// Errors of the multi-link path. None is fatal: the caller falls back to
/// one perf-event uprobe per entry point.
#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("parsing the embedded eBPF object: {0}")]
    Parse(String),
    #[error("relocating program {name}: {reason}")]
    Relocate { name: &'static str, reason: String },
    #[error("program {0} is missing from the embedded object (rebuild heapscope)")]
    MissingProgram(&'static str),
    #[error("loading {name} for uprobe_multi: {source}")]
    Load {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("creating a uprobe_multi link on {path} ({count} offsets): {source}")]
    Link {
        path: String,
        count: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Programs loaded for `uprobe_multi` links.
pub struct MultiPrograms {
    pub entry: OwnedFd,
    /// The return program: loaded with the others without a session program;
    /// with one, only once a process without sessions is linked (a child, a
    /// second `-p`): verifying it beside the session program made an idle
    /// attach ~55 ms longer on two CPUs.
    ret: std::sync::OnceLock<Result<OwnedFd, String>>,
    /// What loading `ret` later takes: its relocated instructions.
    ret_later: Option<(&'static str, Vec<bpf_insn>, CString)>,
    /// Attached as uprobe sessions at the entry points with a return (then
    /// `ret` is not attached).
    pub session: Option<SessionProgram>,
}

impl MultiPrograms {
    /// The return program, loaded now if it was left for later.
    pub fn ret(&self) -> Result<&OwnedFd, MultiError> {
        let loaded = self.ret.get_or_init(|| match &self.ret_later {
            Some((name, insns, license)) => {
                load_program(name, insns, license, BPF_TRACE_UPROBE_MULTI)
                    .map_err(|e| format!("loading it for uprobe_multi: {e}"))
            }
            None => Err("no return program".to_string()),
        });
        loaded.as_ref().map_err(|reason| MultiError::Relocate {
            name: "alloc_return",
            reason: reason.clone(),
        })
    }
}

/// A program loaded with the uprobe session attach type.
pub struct SessionProgram {
    pub fd: OwnedFd,
    pub attach_type: u32,
    /// Its return half (`SESSION_RETURN` in profiler-ebpf), held in the
    /// program array too.
    _return_half: OwnedFd,
}

/// The program names to load, and for sessions what the kernel needs.
pub struct ProgramNames {
    pub entry: &'static str,
    pub ret: &'static str,
    /// The session program and the kernel's session support.
    pub session: Option<(&'static str, super::btf::SessionSupport)>,
}

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `src_reg` of a call of a kernel function by BTF id (vmlinux when `off` is 0).
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// Rewrites the placeholder helper calls of `bpf_session_is_return` (see
/// `profiler_common::KFUNC_SESSION_IS_RETURN`) into calls of the kfunc with
/// BTF type id `kfunc`. Returns how many it rewrote.
fn patch_session_calls(insns: &mut [bpf_insn], kfunc: u32) -> usize {
    let mut n = 0;
    for insn in insns.iter_mut() {
        if insn.code == CALL
            && insn.src_reg() == 0
            && insn.imm == profiler_common::KFUNC_SESSION_IS_RETURN
        {
            insn.set_src_reg(BPF_PSEUDO_KFUNC_CALL);
            insn.off = 0;
            insn.imm = kfunc as i32;
            n += 1;
        }
    }
    n
}

/// Loads the entry and return programs of `names` from `object` with the
/// `uprobe_multi` attach type (and the session program, if any, with the
/// session attach type), their map references resolved to the maps of
/// `ebpf` (created from the same object, globals already set).
pub fn load(object: &[u8], ebpf: &Ebpf, names: &ProgramNames) -> Result<MultiPrograms, MultiError> {
    let entry = names.entry;
    let ret = names.ret;
    let mut obj = aya_obj::Object::parse(object).map_err(|e| MultiError::Parse(e.to_string()))?;
    let maps: Vec<(String, RawFd, aya_obj::Map)> = ebpf
        .maps()
        .filter_map(|(name, map)| {
            let def = obj.maps.get(name)?.clone();
            Some((
                name.to_string(),
                map_data(map).fd().as_fd().as_raw_fd(),
                def,
            ))
        })
        .collect();
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    obj.relocate_maps(
        maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
        &text_sections,
    )
    .map_err(|e| MultiError::Relocate {
        name: entry,
        reason: e.to_string(),
    })?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| MultiError::Relocate {
            name: entry,
            reason: e.to_string(),
        })?;
    let license = obj.license.clone();
    let mut phases = crate::phases::Phases::new("uprobe_multi");
    phases.mark("object parsed and relocated");
    let insns_of = |name: &'static str| -> Result<Vec<bpf_insn>, MultiError> {
        let prog = obj
            .programs
            .get(name)
            .ok_or(MultiError::MissingProgram(name))?;
        let func = obj
            .functions
            .get(&prog.function_key())
            .ok_or(MultiError::MissingProgram(name))?;
        Ok(func.instructions.clone())
    };
    let load_one =
        |name: &'static str, attach_type: u32, kfunc: Option<u32>| -> Result<OwnedFd, MultiError> {
            let mut insns = insns_of(name)?;
            if let Some(id) = kfunc {
                patch_session_calls(&mut insns, id);
            }
            load_program(name, &insns, &license, attach_type)
                .map_err(|source| MultiError::Load { name, source })
        };
    // With a session program the return program waits until it is needed.
    let ret_later = match names.session {
        Some(_) => Some((ret, insns_of(ret)?, license.clone())),
        None => None,
    };
    // The kernel verifies each program in the loading thread (most of an
    // idle attach: ~100 ms for the return program alone), so the programs
    // are loaded on threads of their own, one CPU each.
    // They run at the caller's priority (a raised attach stays ahead of a
    // saturating target, see `process::priority`).
    use crate::process::priority::inheriting;
    let (entry_fd, ret_fd, session) = std::thread::scope(|scope| {
        let ret_fd = ret_later
            .is_none()
            .then(|| inheriting(|| scope.spawn(|| load_one(ret, BPF_TRACE_UPROBE_MULTI, None))));
        // With sessions: the session program and its return half (the
        // return program loaded with the session attach type, which a tail
        // call into it requires), each on a thread of its own.
        let session = names.session.map(|(name, support)| {
            let load = &load_one;
            (
                inheriting(|| {
                    scope.spawn(move || {
                        load(name, support.attach_type, Some(support.is_return_kfunc))
                    })
                }),
                inheriting(|| scope.spawn(move || load(ret, support.attach_type, None))),
                support.attach_type,
            )
        });
        let entry_fd = load_one(entry, BPF_TRACE_UPROBE_MULTI, None);
        let joined = |h: std::thread::ScopedJoinHandle<'_, Result<OwnedFd, MultiError>>,
                      name: &'static str| {
            h.join().unwrap_or(Err(MultiError::Relocate {
                name,
                reason: "the loading thread panicked".to_string(),
            }))
        };
        let session = session.map(|(h, half, attach_type)| {
            (
                joined(h, names.session.map_or(entry, |(n, _)| n)),
                joined(half, ret),
                attach_type,
            )
        });
        (entry_fd, ret_fd.map(|h| joined(h, ret)), session)
    });
    let session = match session {
        Some((fd, half, attach_type)) => {
            let half = half?;
            let tail = ebpf
                .map("SESSION_RETURN")
                .ok_or(MultiError::MissingProgram("SESSION_RETURN"))?;
            set_program(tail, 0, &half).map_err(|source| MultiError::Load { name: ret, source })?;
            Some(SessionProgram {
                fd: fd?,
                attach_type,
                _return_half: half,
            })
        }
        None => None,
    };
    let loaded = std::sync::OnceLock::new();
    if let Some(fd) = ret_fd {
        let _ = loaded.set(Ok(fd?));
    }
    let programs = MultiPrograms {
        entry: entry_fd?,
        ret: loaded,
        ret_later,
        session,
    };
    phases.mark("programs loaded and verified");
    Ok(programs)
}

/// One offset of a link: where, and the cookie its program reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MultiPoint {
    pub offset: u64,
    pub cookie: u64,
}

/// How a link's program runs at its points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Entry,
    Return,
    /// A uprobe session with this attach type: entry, and the return when
    /// the entry returned 0.
    Session(u32),
}

/// Attaches `prog` at every point of `file`, in order, for process `pid`
/// only, as `kind`. Closing the descriptor detaches all.
pub fn link(
    prog: &OwnedFd,
    file: &Path,
    points: &[MultiPoint],
    kind: LinkKind,
    pid: u32,
) -> Result<OwnedFd, MultiError> {
    let err = |source| MultiError::Link {
        path: file.display().to_string(),
        count: points.len(),
        source,
    };
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(file.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    let offsets: Vec<u64> = points.iter().map(|p| p.offset).collect();
    let cookies: Vec<u64> = points.iter().map(|p| p.cookie).collect();
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: match kind {
            LinkKind::Session(t) => t,
            _ => BPF_TRACE_UPROBE_MULTI,
        },
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt: points.len() as u32,
        multi_flags: if kind == LinkKind::Return {
            BPF_F_UPROBE_MULTI_RETURN
        } else {
            0
        },
        pid,
        ..Default::default()
    };
    bpf_fd(BPF_LINK_CREATE, &mut attr).map_err(err)
}

/// Links attached for one process: dropping them detaches every probe.
pub struct MultiLinks {
    /// Return links first, then entry links (the order they went in).
    links: Vec<OwnedFd>,
    programs: Arc<MultiPrograms>,
    /// Probes (offsets) over all links.
    pub probes: usize,
}

impl MultiLinks {
    /// Number of links (one per file and direction).
    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// The programs, to link them for another process.
    pub fn programs(&self) -> Arc<MultiPrograms> {
        Arc::clone(&self.programs)
    }
}

/// Detaches every link of `sets` (one per process) at once, each closed on
/// a thread of its own: a close waits for the kernel's grace periods (one
/// per link, not one per probe), and closed together their waits overlap
/// instead of adding up. The order does not matter: the session detaches
/// only after it has stopped counting (`Probes::disarm`) and taken its last
/// snapshot. Closer threads run at the caller's priority.
pub fn detach_all(sets: Vec<MultiLinks>) {
    use crate::process::priority::inheriting;
    std::thread::scope(|s| {
        for l in sets
            .into_iter()
            .flat_map(|mut m| std::mem::take(&mut m.links))
        {
            let closer = std::thread::Builder::new().name("heapscope-detach".into());
            // If the thread cannot start, its closure, and with it the link,
            // is dropped here: closed on this thread.
            let _ = inheriting(|| closer.spawn_scoped(s, move || drop(l)));
        }
    });
}

/// Attaches `programs` at every point of `target` for `pid`: per file, one
/// link for the return probes, then per file one link for the entry probes,
/// frees first (see `super::attach_order`). With a session program: per
/// file one link for the entry-only points (frees) first, then one session
/// link for the points with a return; without `sessions` (another process
/// than the first), plain entry and return links even so. `hold` (a file
/// and offset: `_exit`) joins its file's entry link with the hold cookie.
pub fn attach(
    programs: Arc<MultiPrograms>,
    pid: u32,
    target: &super::AllocatorTarget,
    sessions: bool,
    hold: Option<&(std::path::PathBuf, u64)>,
) -> Result<MultiLinks, MultiError> {
    let order = super::attach_order(&target.points);
    let mut files: Vec<&Path> = Vec::new();
    for p in &order {
        if !files.contains(&p.file.as_path()) {
            files.push(&p.file);
        }
    }
    // The passes, in order: which points, at which offset (the function's
    // start, or the probe placement of a plain entry link), through which
    // program. Under sessions every link is at the function's start.
    type Keep = fn(&super::AttachPoint) -> bool;
    let returns: Keep = |p| p.spec.has_return_probe();
    let entry_only: Keep = |p| !p.spec.has_return_probe();
    let every: Keep = |_| true;
    let session = programs.session.as_ref().filter(|_| sessions);
    let passes: Vec<(Keep, bool, &OwnedFd, LinkKind)> = match session {
        Some(session) => vec![
            (entry_only, true, &programs.entry, LinkKind::Entry),
            (
                returns,
                true,
                &session.fd,
                LinkKind::Session(session.attach_type),
            ),
        ],
        None => vec![
            (returns, true, programs.ret()?, LinkKind::Return),
            (every, false, &programs.entry, LinkKind::Entry),
        ],
    };
    let mut links = Vec::new();
    let mut probes = 0;
    let hold_point = |file: &Path| {
        hold.filter(|(f, _)| f == file)
            .map(|(_, offset)| MultiPoint {
                offset: *offset,
                cookie: profiler_common::entry::HOLD_COOKIE,
            })
    };
    let mut hold_linked = false;
    let mut phases = crate::phases::Phases::new("uprobe_multi");
    for (keep, at_start, prog, kind) in passes {
        for file in &files {
            let mut points: Vec<MultiPoint> = order
                .iter()
                .filter(|p| p.file == *file && keep(p))
                .map(|p| MultiPoint {
                    offset: if at_start {
                        p.func_offset
                    } else {
                        p.entry_offset
                    },
                    cookie: p.spec.cookie(),
                })
                .collect();
            // Allocator probes; the hold point is not one.
            let count = points.len();
            if kind == LinkKind::Entry {
                if let Some(h) = hold_point(file) {
                    points.push(h);
                    hold_linked = true;
                }
            }
            if points.is_empty() {
                continue;
            }
            links.push(link(prog, file, &points, kind, pid)?);
            phases.mark(&format!(
                "link of {} points in {}",
                points.len(),
                file.display()
            ));
            probes += count;
        }
    }
    if let (Some((file, offset)), false) = (hold, hold_linked) {
        // `_exit` in a file with no entry point (a static allocator's
        // program, libc unprobed): a link of its own.
        let point = MultiPoint {
            offset: *offset,
            cookie: profiler_common::entry::HOLD_COOKIE,
        };
        links.push(link(&programs.entry, file, &[point], LinkKind::Entry, pid)?);
    }
    Ok(MultiLinks {
        links,
        programs,
        probes,
    })
}
