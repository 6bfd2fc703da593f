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
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use aya::maps::{Map, MapData};
use aya::Ebpf;
use aya_obj::generated::bpf_insn;

/// `enum bpf_cmd`.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `enum bpf_prog_type`: uprobes are kprobe-type programs.
const BPF_PROG_TYPE_KPROBE: u32 = 2;
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

/// The fields of `union bpf_attr` that `BPF_PROG_LOAD` reads, in the uapi
/// layout; the kernel zero-extends a shorter attribute.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with its `uprobe_multi` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad: u32,
}

/// Calls `bpf(cmd, attr)` and returns the new descriptor.
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, fully initialised `#[repr(C)]` prefix of
    // `union bpf_attr` for `cmd`, and its size is passed along; the pointers
    // inside it point to buffers the caller keeps alive for this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success the bpf syscall returns a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// The descriptor of a map aya created.
fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    }
}

/// Programs loaded for `uprobe_multi` links.
pub struct MultiPrograms {
    pub entry: OwnedFd,
    pub ret: OwnedFd,
    /// Attached as uprobe sessions at the entry points with a return (then
    /// `ret` is not attached).
    pub session: Option<SessionProgram>,
}

/// A program loaded with the uprobe session attach type.
pub struct SessionProgram {
    pub fd: OwnedFd,
    pub attach_type: u32,
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
    let load_one =
        |name: &'static str, attach_type: u32, kfunc: Option<u32>| -> Result<OwnedFd, MultiError> {
            let prog = obj
                .programs
                .get(name)
                .ok_or(MultiError::MissingProgram(name))?;
            let func = obj
                .functions
                .get(&prog.function_key())
                .ok_or(MultiError::MissingProgram(name))?;
            let mut insns = func.instructions.clone();
            if let Some(id) = kfunc {
                patch_session_calls(&mut insns, id);
            }
            load_program(name, &insns, &license, attach_type)
        };
    // The kernel verifies each program in the loading thread (most of an
    // idle attach: ~100 ms for the return program alone), so the programs
    // are loaded on threads of their own, one CPU each.
    // They run at the caller's priority (a raised attach stays ahead of a
    // saturating target, see `process::priority`).
    use crate::process::priority::inheriting;
    let (entry_fd, ret_fd, session) = std::thread::scope(|scope| {
        let ret_fd = inheriting(|| scope.spawn(|| load_one(ret, BPF_TRACE_UPROBE_MULTI, None)));
        let session = names.session.map(|(name, support)| {
            let load = &load_one;
            (
                inheriting(|| {
                    scope.spawn(move || {
                        load(name, support.attach_type, Some(support.is_return_kfunc))
                    })
                }),
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
        let session = session.map(|(h, attach_type)| {
            (
                joined(h, names.session.map_or(entry, |(n, _)| n)),
                attach_type,
            )
        });
        (entry_fd, joined(ret_fd, ret), session)
    });
    let session = match session {
        Some((fd, attach_type)) => Some(SessionProgram {
            fd: fd?,
            attach_type,
        }),
        None => None,
    };
    let programs = MultiPrograms {
        entry: entry_fd?,
        ret: ret_fd?,
        session,
    };
    phases.mark("programs loaded and verified");
    Ok(programs)
}

fn load_program(
    name: &'static str,
    insns: &[bpf_insn],
    license: &CString,
    attach_type: u32,
) -> Result<OwnedFd, MultiError> {
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: attach_type,
        ..Default::default()
    };
    bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|source| MultiError::Load { name, source })
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
            (returns, true, &programs.ret, LinkKind::Return),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts_match_the_uapi() {
        // Offsets of `union bpf_attr` members in include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, insns), 8);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, path), 16);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, cookies), 40);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, cnt), 48);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, pid), 56);
    }
}
