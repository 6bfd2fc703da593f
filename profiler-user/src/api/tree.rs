//! Call trees for the flame graphs: a profile's tree (`/api/v1/profile`)
//! and the differential tree of two windows (`/api/v1/diff`).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::profile::{Metric, Profile, SiteStats};
use crate::views::diff::{diff_rows, DiffRow};
use crate::views::{frame_text, Labels, UNKNOWN_STACK};

use super::WindowJson;

/// One node of a call tree: a frame (or the allocator API as the leaf).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlameNode {
    pub name: String,
    /// `file:line` when DWARF knew it and every merged frame agrees.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loc: Option<String>,
    pub live_bytes: u64,
    pub live_blocks: u64,
    pub alloc_bytes: u64,
    pub allocs: u64,
    /// Sorted by name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<FlameNode>,
}

/// `/api/v1/profile`: the call tree of one window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProfileDoc {
    pub window: WindowJson,
    /// `live-bytes`, `alloc-bytes` or `allocs`: sites with 0 of it are left out.
    pub metric: &'static str,
    /// Per-site numbers are exact (no sampling); otherwise unbiased estimates.
    pub exact: bool,
    pub duration_secs: f64,
    /// Call sites in the tree.
    pub sites: usize,
    /// The root (`name` = `all`) holds the totals of the tree.
    pub root: FlameNode,
}

/// The API name of a metric.
pub fn metric_name(m: Metric) -> &'static str {
    match m {
        Metric::LiveBytes => "live-bytes",
        Metric::AllocBytes => "alloc-bytes",
        Metric::Allocs => "allocs",
    }
}

/// Parses an API metric name.
pub fn parse_metric(s: &str) -> Option<Metric> {
    match s {
        "live-bytes" => Some(Metric::LiveBytes),
        "alloc-bytes" => Some(Metric::AllocBytes),
        "allocs" => Some(Metric::Allocs),
        _ => None,
    }
}

/// A tree node under construction: children by name, and whether the
/// merged frames disagree on their location.
#[derive(Default)]
struct Building {
    loc: Option<String>,
    loc_conflict: bool,
    stats: SiteStats,
    children: BTreeMap<String, Building>,
}

fn add(into: &mut SiteStats, s: &SiteStats) {
    into.live_bytes = into.live_bytes.saturating_add(s.live_bytes);
    into.live_count = into.live_count.saturating_add(s.live_count);
    into.alloc_bytes = into.alloc_bytes.saturating_add(s.alloc_bytes);
    into.alloc_count = into.alloc_count.saturating_add(s.alloc_count);
}

impl Building {
    fn finish(self, name: String) -> FlameNode {
        FlameNode {
            name,
            loc: if self.loc_conflict { None } else { self.loc },
            live_bytes: self.stats.live_bytes,
            live_blocks: self.stats.live_count,
            alloc_bytes: self.stats.alloc_bytes,
            allocs: self.stats.alloc_count,
            children: self
                .children
                .into_iter()
                .map(|(n, b)| b.finish(n))
                .collect(),
        }
    }
}

/// The call tree of `profile`, keeping the sites with a non-zero `metric`.
pub fn profile_doc(
    profile: &Profile,
    metric: Metric,
    window: WindowJson,
    exact: bool,
) -> ProfileDoc {
    let mut root = Building::default();
    let mut sites = 0;
    for site in &profile.sites {
        if metric.of(&site.stats) == 0 {
            continue;
        }
        sites += 1;
        add(&mut root.stats, &site.stats);
        let mut node = &mut root;
        let unknown = [(UNKNOWN_STACK.to_string(), None)];
        let frames: Vec<(String, Option<String>)> = if site.frames.is_empty() {
            unknown.to_vec()
        } else {
            site.frames
                .iter()
                .map(|f| (frame_text(f, Labels::default()), f.source_location()))
                .collect()
        };
        let path = frames.into_iter().chain([(site.api.to_string(), None)]);
        for (label, loc) in path {
            let fresh = !node.children.contains_key(&label);
            let child = node.children.entry(label).or_default();
            if fresh {
                child.loc = loc;
            } else if child.loc != loc {
                child.loc_conflict = true;
            }
            add(&mut child.stats, &site.stats);
            node = child;
        }
    }
    ProfileDoc {
        window,
        metric: metric_name(metric),
        exact,
        duration_secs: profile.duration_secs,
        sites,
        root: root.finish("all".to_string()),
    }
}

/// A node of the differential tree: live bytes in the baseline and window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DiffNode {
    pub name: String,
    pub before: u64,
    pub after: u64,
    /// Nothing live under this node in the baseline.
    pub new: bool,
    /// Nothing live under this node in the window.
    pub gone: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<DiffNode>,
}

/// One call site's change, for the table of biggest changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DiffChange {
    pub frames: Vec<String>,
    pub api: &'static str,
    pub before: u64,
    pub after: u64,
    pub delta: i64,
    pub new: bool,
    pub gone: bool,
}

/// `/api/v1/diff`: live bytes of a baseline window against a later window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiffDoc {
    pub baseline: WindowJson,
    pub window: WindowJson,
    pub exact: bool,
    pub before_total: u64,
    pub after_total: u64,
    /// Call sites whose live bytes changed.
    pub changed_sites: usize,
    /// The `top` largest changes, largest magnitude first.
    pub changes: Vec<DiffChange>,
    pub root: DiffNode,
}

#[derive(Default)]
struct DiffBuilding {
    before: u64,
    after: u64,
    children: BTreeMap<String, DiffBuilding>,
}

impl DiffBuilding {
    fn finish(self, name: String) -> DiffNode {
        DiffNode {
            name,
            new: self.before == 0 && self.after > 0,
            gone: self.after == 0 && self.before > 0,
            before: self.before,
            after: self.after,
            children: self
                .children
                .into_iter()
                .map(|(n, b)| b.finish(n))
                .collect(),
        }
    }
}

fn delta(r: &DiffRow) -> i64 {
    i64::try_from(r.delta()).unwrap_or(if r.delta() < 0 { i64::MIN } else { i64::MAX })
}

/// The differential document of `base` against `window`, listing the `top`
/// biggest changes.
pub fn diff_doc(
    base: &Profile,
    window: &Profile,
    windows: (WindowJson, WindowJson),
    exact: bool,
    top: usize,
) -> DiffDoc {
    let rows = diff_rows(base, window);
    let mut root = DiffBuilding::default();
    for r in &rows {
        root.before = root.before.saturating_add(r.before);
        root.after = root.after.saturating_add(r.after);
        let mut node = &mut root;
        for label in r.frames.iter().map(String::as_str).chain([r.api]) {
            node = node.children.entry(label.to_string()).or_default();
            node.before = node.before.saturating_add(r.before);
            node.after = node.after.saturating_add(r.after);
        }
    }
    let mut changed: Vec<&DiffRow> = rows.iter().filter(|r| r.delta() != 0).collect();
    changed.sort_by(|x, y| {
        y.delta()
            .unsigned_abs()
            .cmp(&x.delta().unsigned_abs())
            .then_with(|| y.delta().cmp(&x.delta()))
            .then_with(|| x.stack.cmp(&y.stack))
    });
    DiffDoc {
        baseline: windows.0,
        window: windows.1,
        exact,
        before_total: root.before,
        after_total: root.after,
        changed_sites: changed.len(),
        changes: changed
            .iter()
            .take(top)
            .map(|r| DiffChange {
                frames: r.frames.clone(),
                api: r.api,
                before: r.before,
                after: r.after,
                delta: delta(r),
                new: r.before == 0,
                gone: r.after == 0,
            })
            .collect(),
        root: root.finish("all".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{Frame, Site};

    fn at(name: &str, line: u32) -> Frame {
        Frame::Function {
            name: name.into(),
            module: "m".into(),
            file: Some("/src/a.c".into()),
            line: Some(line),
            inlined: false,
            pc: None,
        }
    }

    fn site(frames: Vec<Frame>, live: u64, allocs: u64) -> Site {
        Site {
            pid: 0,
            frames: frames.into(),
            api: "malloc",
            stats: SiteStats {
                live_bytes: live,
                live_count: live / 8,
                alloc_bytes: live,
                alloc_count: allocs,
                ..Default::default()
            },
        }
    }

    const ALL: WindowJson = WindowJson {
        start_ms: None,
        end_ms: None,
    };

    #[test]
    fn tree_sums_sites_and_keeps_agreeing_locations() {
        let p = Profile {
            sites: vec![
                site(vec![at("main", 1), at("leak", 10)], 800, 100),
                site(vec![at("main", 2), at("leak", 10)], 80, 10),
                site(vec![at("main", 2), at("churn", 20)], 0, 5),
            ],
            ..Profile::default()
        };
        let doc = profile_doc(&p, Metric::LiveBytes, ALL, true);
        assert_eq!(doc.sites, 2, "churn has no live bytes");
        assert_eq!(doc.root.live_bytes, 880);
        let main = &doc.root.children[0];
        assert_eq!((main.name.as_str(), main.loc.as_deref()), ("main", None));
        let leak = &main.children[0];
        assert_eq!(leak.loc.as_deref(), Some("a.c:10"));
        assert_eq!(leak.children[0].name, "malloc");
        assert_eq!(leak.children[0].live_bytes, 880);
        let doc = profile_doc(&p, Metric::Allocs, ALL, true);
        assert_eq!(doc.root.allocs, 115);
        assert_eq!(doc.root.children[0].children.len(), 2);
    }

    #[test]
    fn diff_marks_new_and_gone_and_ranks_changes() {
        let base = Profile {
            sites: vec![
                site(vec![at("main", 1), at("old", 1)], 500, 1),
                site(vec![at("main", 1), at("grow", 1)], 100, 1),
            ],
            ..Profile::default()
        };
        let win = Profile {
            sites: vec![
                site(vec![at("main", 1), at("grow", 1)], 1000, 1),
                site(vec![at("main", 1), at("fresh", 1)], 50, 1),
            ],
            ..Profile::default()
        };
        let d = diff_doc(&base, &win, (ALL, ALL), true, 10);
        assert_eq!((d.before_total, d.after_total), (600, 1050));
        let names: Vec<(&str, i64, bool, bool)> = d
            .changes
            .iter()
            .map(|c| (c.frames[1].as_str(), c.delta, c.new, c.gone))
            .collect();
        assert_eq!(
            names,
            vec![
                ("grow", 900, false, false),
                ("old", -500, false, true),
                ("fresh", 50, true, false)
            ]
        );
        let main = &d.root.children[0];
        let fresh = main
            .children
            .iter()
            .find(|c| c.name == "fresh")
            .expect("fresh");
        assert!(fresh.new && !fresh.gone);
        let old = main.children.iter().find(|c| c.name == "old").expect("old");
        assert!(old.gone && old.after == 0);
    }
}
