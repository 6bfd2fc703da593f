//! Where a process's /proc files are read, and what kind of process it is.
//!
//! When a process's main thread has exited (`pthread_exit`) while other
//! threads run on, the thread-group leader is a zombie: `/proc/PID/maps` is
//! empty and `exe`, `root` and `environ` are gone, though the process is
//! alive. The same files of a live thread, `/proc/PID/task/TID/...`, still
//! describe the shared address space.

use std::path::PathBuf;

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/PID/stat` (or of one task) heapscope looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: u32,
    pub flags: u64,
}

impl Stat {
    /// Parses the text of a stat file; the command name is parenthesised
    /// and may contain spaces and parentheses.
    pub fn parse(text: &str) -> Option<Stat> {
        let open = text.find('(')?;
        let close = text.rfind(')')?;
        let comm = text.get(open + 1..close)?.to_string();
        let mut rest = text.get(close + 1..)?.split_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        // pgrp, session, tty_nr, tpgid, then flags.
        let flags = rest.nth(4)?.parse().ok()?;
        Some(Stat {
            comm,
            state,
            ppid,
            flags,
        })
    }

    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// The stat of `pid` (its thread-group leader).
pub fn stat(pid: u32) -> Option<Stat> {
    Stat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A thread of `pid` that has not exited, other than a dead leader.
pub fn live_thread(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))
                .ok()
                .and_then(|t| Stat::parse(&t))
                .is_some_and(|s| !s.is_dead())
        })
}

/// True while `pid` has a thread that has not exited.
pub fn alive(pid: u32) -> bool {
    match stat(pid) {
        Some(s) if !s.is_dead() => true,
        Some(_) => live_thread(pid).is_some(),
        None => false,
    }
}

/// The directory to read `pid`'s address space through: `/proc/PID`, or
/// `/proc/PID/task/TID` of a live thread when the main thread has exited.
pub fn dir(pid: u32) -> PathBuf {
    let leader = PathBuf::from(format!("/proc/{pid}"));
    match stat(pid) {
        Some(s) if s.is_dead() => match live_thread(pid) {
            Some(tid) => leader.join("task").join(tid.to_string()),
            None => leader,
        },
        _ => leader,
    }
}

/// `path` as the process sees it (inside its mount namespace), opened from
/// heapscope's: `/proc/PID/root/<path>`. After the process exits its root is
/// gone and the plain path is the best guess left.
pub fn in_root(pid: u32, path: &str) -> PathBuf {
    let rooted = PathBuf::from(format!("{}/root{path}", dir(pid).display()));
    if rooted.exists() {
        rooted
    } else {
        PathBuf::from(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let s = Stat::parse("42 (a) b (c)) Z 7 42 42 0 -1 4194560 0 0").expect("parse");
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!((s.state, s.ppid, s.flags), ('Z', 7, 4_194_560));
        assert!(s.is_dead() && !s.is_kernel_thread());
        let k = Stat::parse("2 (kthreadd) S 0 0 0 0 -1 2129984 0 0").expect("parse");
        assert!(k.is_kernel_thread());
        assert!(Stat::parse("garbage").is_none());
    }

    #[test]
    fn this_process_is_alive_and_read_through_its_own_directory() {
        let me = std::process::id();
        assert!(alive(me));
        assert_eq!(dir(me), PathBuf::from(format!("/proc/{me}")));
        assert!(!stat(me).expect("stat").is_kernel_thread());
    }
}
