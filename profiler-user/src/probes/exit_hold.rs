//! Holding a command heapscope started at its exit (see profiler-ebpf's
//! `hold.rs`): without it, a command that ends before its memory map was
//! read leaves every frame a bare address (a short `heapscope run`, or any
//! run on a busy machine). Only for `run`: the command is heapscope's own
//! child, and a process heapscope attached to is never stopped.

use std::num::NonZeroU32;
use std::path::PathBuf;

use aya::maps::Array;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};

use super::{single, Probes};

/// The program holding a `run` command at `_exit` without `uprobe_multi`
/// (with it, the entry program does, at the hold cookie).
const HOLD_PROGRAM: &str = "hold_at_exit";
/// The hold's map.
const MAP: &str = "EXIT_HOLD";
/// Slots of the map: the tgid to hold, and the tgid held.
const WANT: u32 = 0;
const HELD: u32 = 1;

impl Probes {
    /// Holds the first process at `_exit` until [`Probes::release_exit`].
    /// With `uprobe_multi` links and `CaptureConfig::hold_exit` the point is
    /// already in its file's entry link (an extra link's close would cost
    /// the detach a grace period) and armed; else it goes in as one
    /// perf-event probe. Returns the module, or why the hold is not possible
    /// (then a command that ends quickly may keep bare addresses).
    pub fn hold_at_exit(&mut self) -> Result<PathBuf, String> {
        let pid = self.pid;
        let scope = NonZeroU32::new(pid).ok_or("no process")?;
        let (file, offset) = self
            .target
            .exit_point
            .clone()
            .ok_or("no probed module defines _exit")?;
        if self.exit_hold.is_some() {
            return Ok(file);
        }
        self.hold_one_probe(scope, file, offset)
    }

    /// The hold as one perf-event probe (kernels without `uprobe_multi`).
    fn hold_one_probe(
        &mut self,
        scope: NonZeroU32,
        file: PathBuf,
        offset: u64,
    ) -> Result<PathBuf, String> {
        let prog = single::program(&mut self.ebpf, HOLD_PROGRAM).map_err(|e| e.to_string())?;
        let at = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: None,
        };
        let link = prog
            .attach(at, &file, UProbeScope::OneProcess(scope))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        self.extra.push((HOLD_PROGRAM, link));
        self.arm_exit_hold()?;
        Ok(file)
    }

    /// Tells the probes which process to hold.
    pub(super) fn arm_exit_hold(&mut self) -> Result<(), String> {
        let pid = self.pid;
        self.hold_map()?
            .set(WANT, pid, 0)
            .map_err(|e| format!("arming the exit hold: {e}"))?;
        self.exit_hold = Some(pid);
        Ok(())
    }

    /// The process the probe has stopped at `_exit`, if any.
    pub fn held_at_exit(&self) -> Option<u32> {
        self.exit_hold?;
        let map = self.ebpf.map(MAP)?;
        let array = Array::<_, u32>::try_from(map).ok()?;
        array.get(&HELD, 0).ok().filter(|&t| t != 0)
    }

    /// Lets a held process go on (SIGCONT), at most once.
    pub fn release_exit(&mut self, tgid: u32) {
        if let Ok(mut m) = self.hold_map() {
            let _ = m.set(HELD, 0, 0);
        }
        if self.exit_hold == Some(tgid) {
            // SAFETY: kill takes no pointers; the pid is the session's own
            // child, held by the probe and not yet continued.
            unsafe { libc::kill(tgid as libc::pid_t, libc::SIGCONT) };
        }
    }

    /// Ends the hold for good: a process not yet at `_exit` is not held
    /// from now on, and one held is let go (the session is ending, or
    /// heapscope is failing: either way the command must not stay stopped).
    pub fn end_exit_hold(&mut self) {
        if self.exit_hold.is_none() {
            return;
        }
        if let Ok(mut m) = self.hold_map() {
            let _ = m.set(WANT, 0, 0);
        }
        if let Some(tgid) = self.held_at_exit() {
            self.release_exit(tgid);
        }
        self.exit_hold = None;
    }

    fn hold_map(&mut self) -> Result<Array<&mut aya::maps::MapData, u32>, String> {
        let map = self
            .ebpf
            .map_mut(MAP)
            .ok_or_else(|| format!("map {MAP} missing from the eBPF object"))?;
        Array::try_from(map).map_err(|e| format!("map {MAP}: {e}"))
    }
}
