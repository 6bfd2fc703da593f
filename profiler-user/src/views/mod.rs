//! Renderings of a [`Profile`]: pure functions `(options, &Profile, writer)`.
//!
//! Every view goes through [`merge_sites`] so that the folded output, the
//! flame graph and the text report agree on what a "call site" is.

pub mod age;
pub mod arenas;
pub mod callsite;
pub mod diff;
pub mod findings;
pub mod folded;
pub mod overhead;
pub mod pprof;
pub mod svg;
pub mod text;

use std::collections::BTreeMap;

use crate::profile::{Frame, Profile, SiteStats};

pub use folded::{write_folded, FoldedOptions};
pub use svg::{write_svg, SvgOptions};
pub use text::{write_report, TextReportOptions};

/// The frame text used for a site that has no frames at all.
pub const UNKNOWN_STACK: &str = "[unknown stack]";

/// Errors of views that do more than plain writes.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("cannot write view output")]
    Io(#[from] std::io::Error),
    #[error("cannot render flame graph {title:?}")]
    Flamegraph {
        title: String,
        #[source]
        source: std::io::Error,
    },
}

/// Sites of a profile after merging those that render identically.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedSite {
    /// Frame labels, root first, leaf last; never empty (a site without
    /// frames gets [`UNKNOWN_STACK`]). Labels are already made safe for the
    /// folded format (no `;`, no line breaks). When the profile has several
    /// processes, the root frame is the process (`comm [pid N]`), so every
    /// view built on these breaks the stacks down per process.
    pub frames: Vec<String>,
    /// The process of the site when the profile has several (then
    /// `frames[0]` names it); `None` for a single-process profile.
    pub pid: Option<u32>,
    /// The allocator entry point.
    pub api: &'static str,
    pub stats: SiteStats,
}

impl MergedSite {
    /// The frames of the program, without the process root frame.
    pub fn program_frames(&self) -> &[String] {
        match self.pid {
            Some(_) => self.frames.get(1..).unwrap_or_default(),
            None => &self.frames,
        }
    }

    /// The folded-format stack: frames root→leaf, then the allocator API as
    /// the final leaf, joined by `;`.
    pub fn folded_stack(&self) -> String {
        let mut s = self.frames.join(";");
        s.push(';');
        s.push_str(self.api);
        s
    }
}

/// How frames are labelled in every view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    /// Add the source location to function frames: `leak_malloc (leaks.c:42)`,
    /// and mark inlined functions: `map_anon (leaks.c:78, inlined)`.
    pub lines: bool,
}

impl Labels {
    /// The label of `frame` under these options (not yet made safe for
    /// folded output; see [`frame_text`]).
    pub fn label(self, frame: &Frame) -> String {
        let base = frame.label();
        if !self.lines {
            return base;
        }
        let inlined = matches!(frame, Frame::Function { inlined: true, .. });
        match (frame.source_location(), inlined) {
            (Some(loc), false) => format!("{base} ({loc})"),
            (Some(loc), true) => format!("{base} ({loc}, inlined)"),
            (None, true) => format!("{base} (inlined)"),
            (None, false) => base,
        }
    }
}

/// A frame label under `labels` (e.g. `--lines`) made safe for line- and
/// `;`-delimited formats. Spaces are kept: folded readers take the count
/// from the last space-separated token.
pub fn frame_text(frame: &Frame, labels: Labels) -> String {
    safe_text(&labels.label(frame))
}

/// `text` made safe for line- and `;`-delimited formats.
pub fn safe_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            ';' => ':',
            '\n' | '\r' | '\t' => ' ',
            c => c,
        })
        .collect()
}

/// Merges sites whose rendered frames and API are identical (e.g. distinct
/// raw stacks that symbolize to the same functions), summing their stats.
/// Output is sorted by [`MergedSite::folded_stack`], so every
/// view built on it is deterministic. With `labels.lines`, one function at
/// two lines is two frames, so sites merge only when their lines agree too.
/// Sites of different processes never merge when the profile has several.
pub fn merge_sites(profile: &Profile, labels: Labels) -> Vec<MergedSite> {
    let mut merged: BTreeMap<String, MergedSite> = BTreeMap::new();
    let several = profile.several_processes();
    let mut process_frames: BTreeMap<u32, String> = BTreeMap::new();
    for site in &profile.sites {
        let mut frames = Vec::with_capacity(site.frames.len() + 1);
        if several {
            let label = process_frames
                .entry(site.pid)
                .or_insert_with(|| safe_text(&profile.process(site.pid).frame_label()));
            frames.push(label.clone());
        }
        frames.extend(site.frames.iter().map(|f| frame_text(f, labels)));
        if site.frames.is_empty() {
            frames.push(UNKNOWN_STACK.to_string());
        }
        let entry = MergedSite {
            frames,
            pid: several.then_some(site.pid),
            api: site.api,
            stats: SiteStats::default(),
        };
        // The API is part of the folded stack, so this key is (frames, api).
        let m = merged.entry(entry.folded_stack()).or_insert(entry);
        m.stats.live_bytes = m.stats.live_bytes.saturating_add(site.stats.live_bytes);
        m.stats.live_count = m.stats.live_count.saturating_add(site.stats.live_count);
        m.stats.alloc_bytes = m.stats.alloc_bytes.saturating_add(site.stats.alloc_bytes);
        m.stats.alloc_count = m.stats.alloc_count.saturating_add(site.stats.alloc_count);
    }
    merged.into_values().collect()
}

pub use crate::units::human_bytes;

/// An integer with `,` between groups of three digits (`1,258,291`).
pub fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
pub(crate) mod testdata;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Site, SiteStats};

    fn func(name: &str) -> Frame {
        Frame::function(name, "m")
    }

    fn site(frames: Vec<Frame>, api: &'static str, live: u64) -> Site {
        Site {
            pid: 0,
            frames: frames.into(),
            api,
            stats: SiteStats {
                live_bytes: live,
                live_count: 1,
                alloc_bytes: live * 2,
                alloc_count: 2,
                ..Default::default()
            },
        }
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1_258_291), "1.2 MiB");
        assert_eq!(human_bytes(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn digit_groups() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1_258_291), "1,258,291");
        assert_eq!(group_digits(u64::MAX), "18,446,744,073,709,551,615");
    }

    /// Two processes with the same stack stay apart, each under its own
    /// root frame; a single-process profile has none.
    #[test]
    fn several_processes_get_a_root_frame_each() {
        use crate::profile::ProcessInfo;
        let mut a = site(vec![func("main"), func("leak")], "malloc", 10);
        a.pid = 10;
        let mut b = a.clone();
        b.pid = 11;
        b.stats.live_bytes = 7;
        let proc_info = |pid: u32, comm: &str| ProcessInfo {
            pid,
            comm: comm.into(),
            ..ProcessInfo::default()
        };
        let mut profile = Profile {
            pid: 10,
            sites: vec![a.clone(), b],
            processes: vec![proc_info(10, "srv"), proc_info(11, "srv;w")],
            ..Profile::default()
        };
        let merged = merge_sites(&profile, Labels::default());
        let stacks: Vec<(String, Option<u32>, u64)> = merged
            .iter()
            .map(|m| (m.folded_stack(), m.pid, m.stats.live_bytes))
            .collect();
        assert_eq!(
            stacks,
            vec![
                ("srv [pid 10];main;leak;malloc".to_string(), Some(10), 10),
                ("srv:w [pid 11];main;leak;malloc".to_string(), Some(11), 7),
            ]
        );
        assert_eq!(merged[0].program_frames(), ["main", "leak"]);
        let shares = profile.by_process();
        assert_eq!(shares.len(), 2);
        assert_eq!((shares[1].process.pid, shares[1].stats.live_bytes), (11, 7));
        profile.sites = vec![a];
        profile.processes.truncate(1);
        let merged = merge_sites(&profile, Labels::default());
        assert_eq!(merged[0].folded_stack(), "main;leak;malloc");
        assert_eq!(merged[0].pid, None);
    }

    #[test]
    fn merges_identical_rendered_stacks() {
        let a = func("a");
        // Same name in another module renders the same, so it merges.
        let a2 = Frame::function("a", "other");
        let profile = Profile {
            sites: vec![
                site(vec![a.clone(), func("b")], "malloc", 10),
                site(vec![a2, func("b")], "malloc", 5),
                site(vec![a.clone(), func("b")], "calloc", 7),
                site(vec![], "malloc", 1),
                site(vec![func("x;y\nz")], "malloc", 2),
            ],
            ..Profile::default()
        };
        let merged = merge_sites(&profile, Labels::default());
        let stacks: Vec<String> = merged.iter().map(|m| m.folded_stack()).collect();
        assert_eq!(
            stacks,
            vec![
                "[unknown stack];malloc",
                "a;b;calloc",
                "a;b;malloc",
                "x:y z;malloc"
            ]
        );
        assert_eq!(merged[2].stats.live_bytes, 15);
        assert_eq!(merged[2].stats.alloc_count, 4);
    }

    fn at(name: &str, file: &str, line: u32, inlined: bool) -> Frame {
        Frame::Function {
            name: name.into(),
            module: "m".into(),
            file: Some(file.into()),
            line: Some(line),
            inlined,
            pc: None,
        }
    }

    #[test]
    fn lines_label_and_split_sites() {
        let lines = Labels { lines: true };
        let outer = at("leak_mmap", "/src/leaks.c", 82, false);
        let inner = at("map_anon", "/src/leaks.c", 78, true);
        assert_eq!(lines.label(&outer), "leak_mmap (leaks.c:82)");
        assert_eq!(lines.label(&inner), "map_anon (leaks.c:78, inlined)");
        assert_eq!(Labels::default().label(&inner), "map_anon");
        assert_eq!(lines.label(&func("plain")), "plain");
        let unknown = Frame::Unknown {
            module: "lib.so".into(),
            offset: 0x10,
            pc: None,
        };
        assert_eq!(lines.label(&unknown), "[lib.so+0x10]");
        // The same function at two lines: one site without lines, two with.
        let profile = Profile {
            sites: vec![
                site(vec![outer.clone(), inner.clone()], "mmap", 3),
                site(
                    vec![at("leak_mmap", "/src/leaks.c", 90, false), inner],
                    "mmap",
                    4,
                ),
            ],
            ..Profile::default()
        };
        let plain = merge_sites(&profile, Labels::default());
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].folded_stack(), "leak_mmap;map_anon;mmap");
        let with_lines = merge_sites(&profile, lines);
        let stacks: Vec<String> = with_lines.iter().map(|m| m.folded_stack()).collect();
        assert_eq!(
            stacks,
            vec![
                "leak_mmap (leaks.c:82);map_anon (leaks.c:78, inlined);mmap",
                "leak_mmap (leaks.c:90);map_anon (leaks.c:78, inlined);mmap",
            ]
        );
    }
}
