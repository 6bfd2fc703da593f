//! Process trees: the children of profiled processes, found at attach (from
//! /proc) and as they are forked (from the fork tracepoint), and the live
//! heap of each process at the end, read from the kernel's live map.

use std::collections::BTreeMap;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Ebpf;
use profiler_common::{LiveAlloc, LiveKey};

use crate::probes::ProbeError;
use crate::profile::ProcessInfo;

/// A process profiled besides the first one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Followed {
    pub pid: u32,
    /// Its parent; 0 when it was given on the command line.
    pub parent: u32,
    pub comm: String,
    /// Forked while the session ran (its probes went in after it started):
    /// allocations between its fork and `probes_after_ms` later are not
    /// seen, and there is no way to count them.
    pub forked: bool,
    /// Milliseconds from the fork to its probes being live (forked only).
    pub probes_after_ms: u64,
    /// Found in the profiled cgroup after the session started (not forked
    /// by a profiled process): allocations before are not seen.
    pub joined: bool,
}

impl Followed {
    /// One line for the terminal.
    pub fn describe(&self) -> String {
        if self.joined {
            format!(
                "following pid {} ({}), which joined the cgroup; profiled from now on \
                 (its allocations before are not seen)",
                self.pid, self.comm
            )
        } else if self.forked {
            format!(
                "following pid {} ({}), forked by pid {}; its probes were live {} ms after the \
                 fork: allocations it made before then are not seen (heapscope cannot count them)",
                self.pid, self.comm, self.parent, self.probes_after_ms
            )
        } else if self.parent != 0 {
            format!(
                "following pid {} ({}), an existing child of pid {}",
                self.pid, self.comm, self.parent
            )
        } else {
            format!("also profiling pid {} ({})", self.pid, self.comm)
        }
    }
}

/// The exact live malloc-family blocks of one process at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessLive {
    pub pid: u32,
    pub comm: String,
    pub blocks: u64,
    pub bytes: u64,
}

/// Longest command line kept per process (bytes): the report shows one line.
const MAX_CMDLINE: usize = 1024;

/// `/proc/PID/cmdline` (NUL-separated arguments) as one line, cut at
/// [`MAX_CMDLINE`] bytes on a character boundary.
pub fn cmdline_text(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    let text: String = String::from_utf8_lossy(raw)
        .chars()
        .map(|c| if c == '\0' || c.is_control() { ' ' } else { c })
        .collect();
    if text.len() <= MAX_CMDLINE {
        return text;
    }
    let mut end = MAX_CMDLINE;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// What the views call process `pid` (found under `parent`, 0 when named
/// on the command line); `comm` is used when /proc no longer has it.
pub fn process_info(pid: u32, parent: u32, comm: &str) -> ProcessInfo {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| cmdline_text(&b))
        .unwrap_or_default();
    ProcessInfo {
        pid,
        parent,
        comm: comm.to_string(),
        cmdline,
    }
}

/// The parent pid in the text of `/proc/PID/stat`.
pub fn parse_ppid(stat: &str) -> Option<u32> {
    // The command name is parenthesised and may contain anything: fields
    // resume after the last ')'. Then: state, ppid.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every process (not thread) below `roots` now, from /proc, parents before
/// children; `roots` themselves excluded.
pub fn descendants(roots: &[u32]) -> Vec<(u32, u32)> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_ppid(&s))
            {
                parent_of.push((pid, ppid));
            }
        }
    }
    tree_below(roots, &parent_of)
}

/// The (pid, parent) pairs below `roots` in a (pid, ppid) table, parents first.
pub fn tree_below(roots: &[u32], parent_of: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    let mut frontier: Vec<u32> = roots.to_vec();
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in parent_of {
            if ppid == p && !roots.contains(&pid) && !out.iter().any(|(q, _)| *q == pid) {
                out.push((pid, p));
                frontier.push(pid);
            }
        }
    }
    out
}

/// Live blocks and bytes per process in the kernel's live map.
pub fn live_by_process(ebpf: &Ebpf) -> Result<BTreeMap<u32, (u64, u64)>, ProbeError> {
    let name = "LIVE";
    let map = ebpf.map(name).ok_or(ProbeError::MissingMap(name))?;
    let live: BpfHashMap<&MapData, LiveKey, LiveAlloc> =
        BpfHashMap::try_from(map).map_err(|source| ProbeError::Map { name, source })?;
    let mut out: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for (k, a) in live.iter().filter_map(Result::ok) {
        let e = out.entry(k.tgid).or_default();
        e.0 += 1;
        e.1 += a.size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_read_as_one_bounded_line() {
        assert_eq!(
            cmdline_text(b"./server\0--port\08080\0"),
            "./server --port 8080"
        );
        assert_eq!(cmdline_text(b""), "");
        let long = "é".repeat(MAX_CMDLINE);
        let t = cmdline_text(long.as_bytes());
        assert!(
            t.len() <= MAX_CMDLINE + 3 && t.ends_with("..."),
            "{}",
            t.len()
        );
    }

    #[test]
    fn ppid_after_a_name_with_parentheses_and_spaces() {
        assert_eq!(parse_ppid("42 (a) b (c)) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("42 (x"), None);
    }

    #[test]
    fn the_tree_below_the_roots_parents_first() {
        let table = [(10, 1), (11, 10), (12, 11), (13, 10), (20, 1), (30, 20)];
        let got = tree_below(&[10], &table);
        assert_eq!(got.len(), 3);
        for (pid, parent) in &got {
            assert!([11, 12, 13].contains(pid));
            let at = |p: u32| got.iter().position(|(q, _)| *q == p);
            if *parent != 10 {
                assert!(at(*parent) < at(*pid), "{got:?}");
            }
        }
        assert!(tree_below(&[10, 20], &table).iter().any(|(p, _)| *p == 30));
    }
}
