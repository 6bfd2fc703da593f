//! cgroup membership: the processes of a cgroup (`cgroup.procs`), the
//! cgroups of a process (`/proc/PID/cgroup`), and a container id resolved to
//! the cgroup its processes are in. The v2 hierarchy is preferred; on a
//! hybrid host (v2 at /sys/fs/cgroup/unified, controllers in v1) a v1
//! hierarchy's directory serves as well: both list their processes the same
//! way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where the cgroup v2 hierarchy usually is.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One mounted cgroup hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    /// v1 only: its controllers (`memory`, `name=systemd`); empty for v2.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The cgroup hierarchies in the text of `/proc/self/mountinfo`, v2 first.
pub fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    let mut out: Vec<Mount> = mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut r = right.split(' ');
            let fstype = r.next()?;
            let _source = r.next()?;
            let opts = r.next().unwrap_or("");
            let v2 = match fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => return None,
            };
            let controllers = if v2 {
                Vec::new()
            } else {
                opts.split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("relatime"))
                    .map(str::to_string)
                    .collect()
            };
            Some(Mount {
                point: PathBuf::from(point.replace("\\040", " ")),
                controllers,
                v2,
            })
        })
        .collect();
    out.sort_by_key(|m| !m.v2);
    out
}

/// The cgroup hierarchies mounted here.
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mounts(&t))
        .unwrap_or_default()
}

/// Most processes read from one `cgroup.procs` (the kernel side profiles at
/// most `MAX_PROFILED` at once anyway).
const MAX_PROCS: usize = 1 << 16;

/// Errors naming the cgroup or container and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "{path} is not a cgroup v2 directory (no cgroup.procs): give a directory under \
         {CGROUP_ROOT}, or a path as in /proc/PID/cgroup (e.g. /system.slice/nginx.service)"
    )]
    NotACgroup { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cgroup {path} has no processes: heapscope attaches to running processes \
         (start one in it first)"
    )]
    Empty { path: PathBuf },
    #[error(
        "container id {id:?}: it must be letters, digits, '-', '_' or '.' (e.g. 3f2a9c1e0b7d)"
    )]
    BadId { id: String },
    #[error(
        "no process is in a cgroup named after container {id:?} (searched /proc/*/cgroup); \
         is the container running on this host? `docker ps --no-trunc` shows full ids"
    )]
    NoContainer { id: String },
    #[error(
        "container id {id:?} matches {} cgroups ({}); give more of the id",
        .cgroups.len(), .cgroups.join(", ")
    )]
    Ambiguous { id: String, cgroups: Vec<String> },
}

/// The cgroup directory that `path` names: itself when it is a directory
/// of a mounted hierarchy, else the cgroup path (as `/proc/PID/cgroup`
/// shows it) in the v2 hierarchy, then in each v1 one.
pub fn resolve(path: &Path) -> Result<PathBuf, CgroupError> {
    resolve_in(path, &mounts())
}

fn resolve_in(path: &Path, mounts: &[Mount]) -> Result<PathBuf, CgroupError> {
    let in_a_hierarchy = |c: &Path| mounts.iter().any(|m| c.starts_with(&m.point));
    let rel = path.strip_prefix("/").unwrap_or(path);
    std::iter::once(path.to_path_buf())
        .filter(|c| in_a_hierarchy(c))
        .chain(mounts.iter().map(|m| m.point.join(rel)))
        .find(|c| c.join("cgroup.procs").is_file())
        .ok_or_else(|| CgroupError::NotACgroup {
            path: path.to_path_buf(),
        })
}

/// The pids of `cgroup.procs` text, sorted, at most [`MAX_PROCS`].
pub fn parse_procs(text: &str) -> Vec<u32> {
    let set: BTreeSet<u32> = text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&p| p != 0)
        .take(MAX_PROCS)
        .collect();
    set.into_iter().collect()
}

/// The processes in the cgroup directory `dir` now (not its sub-cgroups).
pub fn procs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let path = dir.join("cgroup.procs");
    std::fs::read_to_string(&path)
        .map(|t| parse_procs(&t))
        .map_err(|source| CgroupError::Read { path, source })
}

/// The cgroup v2 path in the text of `/proc/PID/cgroup` (the `0::` line).
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Every (controllers, path) line of `/proc/PID/cgroup`; v2's controllers
/// are empty.
pub fn proc_cgroup_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| {
        let mut f = l.splitn(3, ':');
        let _id = f.next()?;
        Some((f.next()?, f.next()?))
    })
}

/// The directory of cgroup `path` in the hierarchy of `controllers` (empty:
/// v2).
fn dir_of(mounts: &[Mount], controllers: &str, path: &str) -> Option<PathBuf> {
    let rel = path.trim_start_matches('/');
    mounts
        .iter()
        .find(|m| {
            if controllers.is_empty() {
                m.v2
            } else {
                !m.v2
                    && controllers
                        .split(',')
                        .all(|c| m.controllers.iter().any(|x| x == c))
            }
        })
        .map(|m| m.point.join(rel))
}

/// True when a component of the cgroup path `cgroup` names container `id`
/// (`docker-ID.scope`, `/docker/ID`, `crio-ID.scope`, `libpod-ID`...): the
/// component contains the id as a whole word of its hex run.
pub fn names_container(cgroup: &str, id: &str) -> bool {
    cgroup.split('/').any(|c| {
        c.split(['-', '.', ':', '_'])
            .any(|word| word == id || (id.len() >= 4 && word.starts_with(id)))
    })
}

/// The cgroup directory of container `id` (a full id or a prefix of at
/// least 4 characters), from the cgroups of the running processes.
pub fn find_container(id: &str) -> Result<PathBuf, CgroupError> {
    let valid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if id.is_empty() || !id.chars().all(valid) {
        return Err(CgroupError::BadId { id: id.into() });
    }
    let mounts = mounts();
    // The cgroup path of the container, with its directory in each
    // hierarchy it appears in (v2 first: mounts are sorted so).
    let mut found: BTreeMap<String, BTreeSet<(bool, PathBuf)>> = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
                continue;
            };
            for (controllers, cg) in proc_cgroup_lines(&text) {
                if !names_container(cg, id) {
                    continue;
                }
                if let Some(d) = dir_of(&mounts, controllers, cg) {
                    found
                        .entry(cg.to_string())
                        .or_default()
                        .insert((!controllers.is_empty(), d));
                }
            }
        }
    }
    if found.len() > 1 {
        return Err(CgroupError::Ambiguous {
            id: id.into(),
            cgroups: found.into_keys().collect(),
        });
    }
    found
        .into_values()
        .next()
        .and_then(|dirs| {
            dirs.into_iter()
                .map(|(_, d)| d)
                .find(|d| d.join("cgroup.procs").is_file())
        })
        .ok_or(CgroupError::NoContainer { id: id.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hierarchies_of_a_hybrid_host_v2_first() {
        let m = parse_mounts(HYBRID);
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            (m[0].point.as_path(), m[0].v2),
            (Path::new("/sys/fs/cgroup/unified"), true)
        );
        assert_eq!(m[1].controllers, vec!["memory".to_string()]);
        assert_eq!(m[2].controllers, vec!["name=systemd".to_string()]);
        let line = "4:memory:/process_api/abc";
        let (ctl, path) = proc_cgroup_lines(line).next().expect("a line");
        assert_eq!(
            dir_of(&m, ctl, path),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        assert_eq!(
            dir_of(&m, "", "/a.scope"),
            Some(PathBuf::from("/sys/fs/cgroup/unified/a.scope"))
        );
        // A directory of the tmpfs above the hierarchies is no cgroup.
        let e = resolve_in(Path::new("/sys/fs/cgroup/nothing"), &m).expect_err("not a cgroup");
        assert!(e.to_string().contains("not a cgroup"), "{e}");
    }

    #[test]
    fn procs_are_sorted_unique_and_skip_junk() {
        assert_eq!(parse_procs("42\n7\n\nx\n42\n0\n"), vec![7, 42]);
        assert!(parse_procs("").is_empty());
    }

    #[test]
    fn the_v2_line_of_proc_cgroup() {
        let text = "12:cpu:/old\n0::/system.slice/docker-abc123.scope\n";
        assert_eq!(
            parse_proc_cgroup(text),
            Some("/system.slice/docker-abc123.scope")
        );
        assert_eq!(parse_proc_cgroup("1:name=systemd:/\n"), None);
    }

    #[test]
    fn container_ids_match_whole_words_or_prefixes() {
        let id = "3f2a9c1e0b7d55aa";
        let docker = format!("/system.slice/docker-{id}.scope");
        assert!(names_container(&docker, id));
        assert!(names_container(&docker, "3f2a9c"));
        assert!(names_container(&format!("/docker/{id}"), id));
        assert!(names_container(&format!("/kubepods/pod1/crio-{id}"), id));
        assert!(!names_container(&docker, "3f2"), "too short a prefix");
        assert!(!names_container(&docker, "2a9c"), "not a prefix");
        assert!(!names_container("/user.slice", id));
    }

    #[test]
    fn bad_ids_and_paths_are_clear_errors() {
        let e = find_container("a/b").expect_err("a slash is not an id");
        assert!(e.to_string().contains("letters, digits"), "{e}");
        let e = resolve(Path::new("/no/such/cgroup")).expect_err("not a cgroup");
        assert!(e.to_string().contains("not a cgroup v2 directory"), "{e}");
    }
}
