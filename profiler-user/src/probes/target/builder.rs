//! Building the list of attach points: one per probed function, placed
//! where the kernel emulates the instruction, aliases and forwarding frees
//! probed once.

use std::path::PathBuf;

use profiler_common::entry::{ARG_NONE, JEMALLOC_PREFIXES};
use profiler_common::{AllocKind, EntrySpec, ENTRY_POINTS};

use super::{AttachPoint, Module};
use crate::probes::{prologue, ProbeError};
use crate::symbolize::Functions;

pub(super) struct Builder {
    pub(super) skip_prologue: bool,
    pub(super) points: Vec<AttachPoint>,
    /// (file, function start) of every probed function: aliases are probed once.
    pub(super) starts: Vec<(PathBuf, u64)>,
    pub(super) modules: Vec<String>,
    pub(super) unseen: Vec<String>,
}

impl Builder {
    pub(super) fn add(
        &mut self,
        m: &Module<'_>,
        symbol: &str,
        spec: EntrySpec,
    ) -> Result<(), ProbeError> {
        if self.point(m, symbol, spec)? && !self.modules.contains(&m.c.path) {
            self.modules.push(m.c.path.clone());
        }
        Ok(())
    }

    /// Adds the probe of `symbol` in `m`; false when it is not defined there,
    /// already probed (an alias) or left to the entry point it forwards to.
    pub(super) fn point(
        &mut self,
        m: &Module<'_>,
        symbol: &str,
        spec: EntrySpec,
    ) -> Result<bool, ProbeError> {
        let Some((vaddr, loc)) = m.functions.find(symbol) else {
            return Ok(false);
        };
        if self
            .starts
            .iter()
            .any(|(f, s)| *f == m.c.open && *s == loc.file_offset)
        {
            return Ok(false);
        }
        let (code, whole) = m.functions.code(&loc).map_err(|e| ProbeError::Module {
            path: m.c.open.clone(),
            reason: e.to_string(),
        })?;
        if spec.kind == AllocKind::Free && forwards(&code, vaddr, &m.functions) {
            // `jmp free@plt`, `call sdallocx@plt`: counted where it lands.
            return Ok(false);
        }
        self.starts.push((m.c.open.clone(), loc.file_offset));
        let needed: Vec<usize> = spec
            .args
            .iter()
            .filter(|a| **a != ARG_NONE)
            .map(|a| usize::from(*a))
            .collect();
        let (offset, spec, stepped) = self.place(&code, whole, &needed, spec);
        self.points.push(AttachPoint {
            spec,
            symbol: symbol.to_string(),
            file: m.c.open.clone(),
            func_offset: loc.file_offset + offset,
            entry_offset: loc.file_offset + offset,
            stepped,
        });
        Ok(true)
    }

    /// The placement's offset and the spec with its argument positions as
    /// they are there.
    fn place(
        &self,
        code: &[u8],
        whole: bool,
        needed: &[usize],
        spec: EntrySpec,
    ) -> (u64, EntrySpec, Option<String>) {
        if !self.skip_prologue {
            return (0, spec, None);
        }
        match prologue::place(code, whole, needed) {
            Ok(p) => {
                let mut moved = spec;
                for (slot, a) in spec.args.iter().enumerate() {
                    if *a != ARG_NONE {
                        moved.args[slot] = p.args[usize::from(*a)];
                    }
                }
                (p.offset, moved, None)
            }
            Err(why) => (0, spec, Some(why.to_string())),
        }
    }
}

/// True when a free-like function hands its block on to another free-like
/// entry point (a jump or call through the PLT to `free`, `sdallocx`, ...,
/// or straight to one defined in the module): that one is probed, and a
/// free has no return probe to tell the two calls apart, so only the inner
/// one is probed. A first `jmp` to code no symbol covers is a PLT forward too.
fn forwards(code: &[u8], vaddr: u64, functions: &Functions) -> bool {
    if prologue::first_jump(code, vaddr).is_some_and(|t| !functions.covers(t)) {
        return true;
    }
    let is_free_name = |name: &str| {
        let bare = JEMALLOC_PREFIXES
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .unwrap_or(name);
        ENTRY_POINTS
            .iter()
            .any(|r| r.spec.kind == AllocKind::Free && r.symbol == bare)
    };
    prologue::branch_targets(code, vaddr)
        .into_iter()
        .filter(|t| *t != vaddr)
        .any(|t| match functions.plt_target(t) {
            Some(name) => is_free_name(name),
            None => ENTRY_POINTS.iter().any(|r| {
                r.spec.kind == AllocKind::Free
                    && functions.find(r.symbol).is_some_and(|(v, _)| v == t)
            }),
        })
}
