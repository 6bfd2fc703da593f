//! Symbolizing recorded frames again, from the module identity and file
//! offset kept beside each frame ([`Pc`]): once debug information is
//! installed, or reachable through debuginfod, a recording made without it
//! gets names, files and lines.
//!
//! A module is read from its recorded path when the file there still has
//! the recorded build-id; otherwise (another machine, an upgraded package)
//! from its debug file fetched by build-id. Frames that resolve no better
//! stay as they were.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::debuginfod::{Debuginfod, Lookup};
use crate::profile::{physical_frames, Frame, ModuleId, Pc};
use crate::symbolize::{ModuleAddr, ModuleSource, Symbolized, Symbolizer, SymbolizerOptions};
use crate::timeline::SiteInfo;

/// What re-symbolization did, for the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResymbolizeStats {
    /// Unresolved addresses before and after.
    pub unknown_before: usize,
    pub unknown_after: usize,
    /// Per module path: how its file was found, or why it was not.
    pub modules: BTreeMap<String, String>,
}

/// A module whose frames lack symbols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingSymbols {
    /// The module's path when recorded, else its file name.
    pub module: String,
    /// Build-id hex (empty when unknown).
    pub build_id: String,
    /// Unresolved addresses in it.
    pub addresses: usize,
}

/// The modules with unresolved addresses in `sites`, most addresses first.
pub fn modules_without_symbols(sites: &[SiteInfo]) -> Vec<MissingSymbols> {
    let mut seen: HashMap<(String, String), std::collections::HashSet<u64>> = HashMap::new();
    for site in sites {
        for f in site.frames.iter() {
            if let Frame::Unknown { module, offset, pc } = f {
                let key = match pc {
                    Some(pc) => (pc.module.path.clone(), pc.module.build_id_hex()),
                    None => (module.to_string(), String::new()),
                };
                seen.entry(key).or_default().insert(*offset);
            }
        }
    }
    let mut out: Vec<MissingSymbols> = seen
        .into_iter()
        // Not files: nothing to install (anonymous memory, JIT code, vdso).
        .filter(|((m, _), _)| m != "?" && m != "anon" && !m.starts_with('['))
        .map(|((module, build_id), offs)| MissingSymbols {
            module,
            build_id,
            addresses: offs.len(),
        })
        .collect();
    out.sort_by(|a, b| b.addresses.cmp(&a.addresses).then(a.module.cmp(&b.module)));
    out
}

/// The GNU build-id of the ELF file at `path`.
pub fn file_build_id(path: &Path) -> Option<Vec<u8>> {
    let cache = object::read::ReadCache::new(std::fs::File::open(path).ok()?);
    let obj = object::File::parse(&cache).ok()?;
    object::Object::build_id(&obj)
        .ok()
        .flatten()
        .map(<[u8]>::to_vec)
}

fn display_name(m: &ModuleId) -> String {
    Path::new(&m.path)
        .file_name()
        .map_or_else(|| m.path.clone(), |n| n.to_string_lossy().into_owned())
}

/// Symbolizes `offsets` of `module`: from its recorded path when that file
/// is the same build, else from its debug file by build-id.
fn symbolize_module(
    module: &ModuleId,
    offsets: &[u64],
    opts: &SymbolizerOptions,
    debuginfod: &mut Option<&mut Debuginfod>,
    note: &mut String,
) -> Vec<Option<Vec<Frame>>> {
    let name = display_name(module);
    let addrs: Vec<ModuleAddr> = offsets.iter().map(|o| ModuleAddr::ret(*o)).collect();
    let run = |source: &ModuleSource| -> Vec<Option<Vec<Frame>>> {
        Symbolizer::with_options(opts.clone())
            .symbolize_many(source, &addrs)
            .into_iter()
            .map(|r| match r {
                Symbolized::Frames(f) => Some(f),
                Symbolized::Unknown { .. } => None,
            })
            .collect()
    };
    let local = Path::new(&module.path);
    let same_build = local.is_file()
        && (module.build_id.is_empty()
            || file_build_id(local).is_some_and(|id| id == module.build_id));
    let mut results = if same_build {
        *note = format!("{} (same build-id)", module.path);
        run(&ModuleSource::from_path(local).named(&name))
    } else {
        *note = format!("{}: not this build here", module.path);
        vec![None; offsets.len()]
    };
    if results.iter().all(Option::is_some) || module.build_id.is_empty() {
        return results;
    }
    let Some(d) = debuginfod.as_deref_mut() else {
        return results;
    };
    match d.debuginfo(&module.build_id) {
        Lookup::Found(path) => {
            // With the module there, its debug file is found in the cache
            // (`debuginfod_caches`); without it, the debug file stands in.
            let again = if same_build {
                run(&ModuleSource::from_path(local).named(&name))
            } else {
                run(&ModuleSource::from_path(&path).named(&name))
            };
            *note = format!("{note}; debuginfod: {}", path.display());
            for (r, a) in results.iter_mut().zip(again) {
                if r.is_none() {
                    *r = a;
                }
            }
        }
        Lookup::NotFound => *note = format!("{note}; debuginfod: no server has it"),
        Lookup::Failed(e) => *note = format!("{note}; debuginfod failed: {e}"),
    }
    results
}

/// Re-symbolizes every frame of `sites` that has a recorded [`Pc`].
pub fn resymbolize(
    sites: &mut [SiteInfo],
    debug_dirs: Vec<PathBuf>,
    mut debuginfod: Option<&mut Debuginfod>,
) -> ResymbolizeStats {
    let mut stats = ResymbolizeStats::default();
    let opts = SymbolizerOptions {
        debug_dirs,
        debuginfod_caches: debuginfod
            .as_ref()
            .map(|d| vec![d.cache_dir().to_path_buf()])
            .unwrap_or_default(),
    };
    // Unique offsets per module.
    let mut wanted: BTreeMap<Arc<ModuleId>, Vec<u64>> = BTreeMap::new();
    let mut unknown = std::collections::HashSet::new();
    for site in sites.iter() {
        for f in site.frames.iter() {
            if let Some(pc) = f.pc() {
                wanted
                    .entry(Arc::clone(&pc.module))
                    .or_default()
                    .push(pc.offset);
                if matches!(f, Frame::Unknown { .. }) {
                    unknown.insert((Arc::clone(&pc.module), pc.offset));
                }
            }
        }
    }
    stats.unknown_before = unknown.len();
    let mut resolved: HashMap<(Arc<ModuleId>, u64), Vec<Frame>> = HashMap::new();
    for (module, mut offsets) in wanted {
        offsets.sort_unstable();
        offsets.dedup();
        let mut note = String::new();
        let results = symbolize_module(&module, &offsets, &opts, &mut debuginfod, &mut note);
        stats.modules.insert(module.path.clone(), note);
        for (off, r) in offsets.into_iter().zip(results) {
            if let Some(frames) = r {
                resolved.insert((Arc::clone(&module), off), frames);
            }
        }
    }
    for site in sites.iter_mut() {
        let mut out = Vec::with_capacity(site.frames.len());
        for group in physical_frames(&site.frames) {
            let pc: Option<Pc> = group.last().and_then(Frame::pc).cloned();
            let better = pc
                .as_ref()
                .and_then(|pc| resolved.get(&(Arc::clone(&pc.module), pc.offset)));
            match (better, pc) {
                (Some(frames), Some(pc)) => {
                    out.extend(frames.iter().cloned().map(|f| f.with_pc(Some(pc.clone()))))
                }
                _ => out.extend(group.iter().cloned()),
            }
        }
        site.frames = out.into();
    }
    stats.unknown_after = unknown
        .iter()
        .filter(|k| !resolved.contains_key(*k))
        .count();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(frames: Vec<Frame>) -> SiteInfo {
        SiteInfo {
            pid: 0,
            frames: frames.into(),
            api: "malloc",
        }
    }

    #[test]
    fn lists_modules_without_symbols() {
        let m = Arc::new(ModuleId {
            path: "/usr/bin/memcached".into(),
            build_id: vec![0xaa],
        });
        let pc = |o| {
            Some(Pc {
                module: Arc::clone(&m),
                offset: o,
                address: 0,
            })
        };
        let sites = vec![
            site(vec![
                Frame::unknown("memcached", 0x10).with_pc(pc(0x10)),
                Frame::unknown("memcached", 0x20).with_pc(pc(0x20)),
                Frame::unknown("anon", 0x5),
            ]),
            site(vec![
                Frame::unknown("memcached", 0x10).with_pc(pc(0x10)),
                Frame::unknown("libold.so", 0x30),
                Frame::function("main", "memcached"),
            ]),
        ];
        let missing = modules_without_symbols(&sites);
        assert_eq!(
            missing,
            vec![
                MissingSymbols {
                    module: "/usr/bin/memcached".into(),
                    build_id: "aa".into(),
                    addresses: 2
                },
                MissingSymbols {
                    module: "libold.so".into(),
                    build_id: String::new(),
                    addresses: 1
                },
            ]
        );
    }

    #[test]
    fn frames_without_a_usable_module_stay() {
        let m = Arc::new(ModuleId {
            path: "/nonexistent/lib.so".into(),
            build_id: vec![1, 2, 3],
        });
        let f = Frame::unknown("lib.so", 0x40).with_pc(Some(Pc {
            module: m,
            offset: 0x40,
            address: 0,
        }));
        let mut sites = vec![site(vec![Frame::function("main", "app"), f.clone()])];
        let before = sites.clone();
        let stats = resymbolize(&mut sites, Vec::new(), None);
        assert_eq!(sites, before);
        assert_eq!((stats.unknown_before, stats.unknown_after), (1, 1));
        assert!(stats.modules["/nonexistent/lib.so"].contains("not this build"));
    }
}
