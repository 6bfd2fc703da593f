//! Where the allocators' own code is (their calls from it are footprint),
//! and an allocator linked into the executable without symbols to probe.

use super::{FoundAllocator, Implementation, InternalCode, Linkage, Module};
use crate::probes::internals;

/// An allocator linked into the executable whose symbols are gone (a
/// stripped Rust program with tikv-jemallocator, a static mimalloc): its
/// calls cannot be probed, and the user must know.
pub(super) fn stripped_allocator(modules: &[Module<'_>], probed: &[String]) -> Option<String> {
    let exe = modules
        .iter()
        .find(|m| m.c.linkage == Linkage::Executable)?;
    if probed.contains(&exe.c.path) {
        return None;
    }
    let (imp, version) = crate::probes::identify::embedded_allocator(&exe.c.open)?;
    let version = version.map(|v| format!(" {v}")).unwrap_or_default();
    Some(format!(
        "{} contains {}{version} (its own messages are in it) but none of its symbols:          stripped? the allocations it serves are not seen; profile a build with symbols          (or its debug file beside it)",
        exe.c.path,
        imp.name()
    ))
}

/// The allocators' own code: a separate allocator library whole; in glibc
/// (libc.so or a static executable) only the malloc implementation (`strdup`
/// calling malloc makes a program allocation), when symbols tell where it is.
pub(super) fn internal_code(modules: &[Module<'_>], found: &[FoundAllocator]) -> Vec<InternalCode> {
    let mut out = Vec::new();
    for f in found {
        let Some(m) = modules.iter().find(|m| m.c.path == f.module) else {
            continue;
        };
        let code = if internals::is_allocator_library(&f.module) {
            Some(InternalCode::WholeModule(f.module.clone()))
        } else if f.implementation == Implementation::Jemalloc {
            // jemalloc linked in (Rust's tikv-jemallocator, a static build):
            // its names say where it is (the API's prefix, else its private
            // namespace: `_rjem_je_` in tikv's unprefixed builds, `je_`), so
            // its own mmaps are its footprint. Only tikv's (in a Rust
            // program, whose own functions are mangled) is widened over
            // jemalloc's static functions around them.
            let prefixes: &[&str] = if f.prefix.is_empty() {
                &["_rjem_je_", "je_"]
            } else {
                &[f.prefix]
            };
            prefixes.iter().find_map(|p| {
                match internals::prefixed_file_range(&m.c.open, p, p.starts_with("_rjem_")) {
                    Ok(Some((start, end))) => Some(InternalCode::FileRange {
                        path: f.module.clone(),
                        start,
                        end,
                    }),
                    _ => None,
                }
            })
        } else if f.implementation != Implementation::Glibc {
            // An executable with its own allocator (or musl's): its function
            // names say nothing reliable about what is the allocator (a
            // program's `leak_malloc` beside its `malloc`), so no call is
            // judged the allocator's outside a program call.
            None
        } else {
            // Without symbols to tell malloc's code apart, no call is judged
            // internal outside a program call.
            match internals::implementation_file_range(&m.c.open) {
                Ok(Some((start, end))) => Some(InternalCode::FileRange {
                    path: f.module.clone(),
                    start,
                    end,
                }),
                _ => None,
            }
        };
        if let Some(c) = code {
            if !out.contains(&c) {
                out.push(c);
            }
        }
    }
    out
}
