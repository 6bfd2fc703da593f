//! Symbolization: `(file, file offset)` → [`Frame`]. A pure library: it reads
//! ELF files from disk and needs no privileges.
//!
//! Lookups never fail outward: anything that cannot be resolved (unreadable
//! file, not ELF, no covering symbol) becomes [`Frame::Unknown`] so the frame
//! still shows up in stacks as `[module+0xoffset]`.

mod elf;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::process::maps::FileOffset;
use crate::profile::Frame;

use elf::ElfModule;

/// How many bytes of a function's start [`find_function`] returns: enough to
/// decode the first few prologue instructions when choosing a probe offset.
pub const FIRST_BYTES: usize = 32;

/// Bounds the module cache; a process maps a few hundred files at most, so
/// this is only hit by a long-lived symbolizer across many processes.
const MAX_CACHED_MODULES: usize = 1024;

/// Errors of the operations that must report failure (finding a function to
/// attach to). Symbolization itself degrades to [`Frame::Unknown`] instead.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    #[error("cannot read {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path} as an object file")]
    Parse {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
}

/// Where a defined function lives in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionLocation {
    /// File offset of the function's first instruction (what uprobes attach by).
    pub file_offset: u64,
    /// Symbol size in bytes (0 when the symbol table does not say).
    pub size: u64,
    /// Up to [`FIRST_BYTES`] bytes of code from the function's start, fewer
    /// when the function (or the file) is shorter.
    pub first_bytes: Vec<u8>,
}

/// Finds a *defined* function symbol named `name` (searching `.symtab`, then
/// `.dynsym`) and returns its file offset and first bytes. Symbol versions
/// (`malloc@@GLIBC_2.2.5`) are ignored when comparing names.
pub fn find_function(file: &Path, name: &str) -> Result<Option<FunctionLocation>, SymbolizeError> {
    let module = ElfModule::open(file)?;
    let Some(sym) = module.find_function(name) else {
        return Ok(None);
    };
    let Some(file_offset) = module.vaddr_to_offset(sym.addr) else {
        return Ok(None);
    };
    let len = if sym.size > 0 {
        usize::try_from(sym.size).map_or(FIRST_BYTES, |s| s.min(FIRST_BYTES))
    } else {
        FIRST_BYTES
    };
    let first_bytes = elf::read_bytes(file, file_offset, len)?;
    Ok(Some(FunctionLocation {
        file_offset,
        size: sym.size,
        first_bytes,
    }))
}

/// Identity of a file's contents as far as the cache is concerned: a file
/// replaced in place (package upgrade, rebuild) gets parsed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    size: u64,
    mtime: Option<SystemTime>,
}

struct CacheEntry {
    stamp: FileStamp,
    /// `None` remembers that the file could not be parsed, so every frame in
    /// it does not retry the parse.
    module: Option<Arc<ElfModule>>,
}

/// Resolves file offsets to function names, caching parsed modules keyed by
/// (path, file size, mtime).
#[derive(Default)]
pub struct Symbolizer {
    cache: HashMap<PathBuf, CacheEntry>,
}

impl Symbolizer {
    /// An empty symbolizer.
    pub fn new() -> Symbolizer {
        Symbolizer::default()
    }

    /// Resolves `offset` in `file` to a function frame named after
    /// `module_name`. For a return address the call instruction is the byte
    /// before it, so `offset - 1` is looked up (a call at the very end of a
    /// function would otherwise resolve to the next function). Anything
    /// unresolvable yields `Frame::Unknown` with the original offset.
    pub fn symbolize(
        &mut self,
        file: &Path,
        module_name: &str,
        offset: FileOffset,
        is_return_address: bool,
    ) -> Frame {
        let unknown = || Frame::Unknown {
            module: module_name.to_string(),
            offset: offset.0,
        };
        let lookup = if is_return_address {
            match offset.0.checked_sub(1) {
                Some(o) => o,
                None => return unknown(),
            }
        } else {
            offset.0
        };
        let Some(module) = self.module(file) else {
            return unknown();
        };
        let Some(vaddr) = module.offset_to_vaddr(lookup) else {
            return unknown();
        };
        match module.function_at(vaddr) {
            Some(sym) => Frame::Function {
                name: demangle(&sym.name),
                module: module_name.to_string(),
            },
            None => unknown(),
        }
    }

    /// Number of modules currently cached (parsed or known-unparsable).
    pub fn cached_modules(&self) -> usize {
        self.cache.len()
    }

    fn module(&mut self, file: &Path) -> Option<Arc<ElfModule>> {
        let meta = match std::fs::metadata(file) {
            Ok(m) => m,
            Err(e) => {
                log::debug!("cannot stat {}: {e}", file.display());
                self.cache.remove(file);
                return None;
            }
        };
        let stamp = FileStamp {
            size: meta.len(),
            mtime: meta.modified().ok(),
        };
        if let Some(entry) = self.cache.get(file) {
            if entry.stamp == stamp {
                return entry.module.clone();
            }
        }
        let module = match ElfModule::open(file) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                log::debug!("{e}");
                None
            }
        };
        if self.cache.len() >= MAX_CACHED_MODULES && !self.cache.contains_key(file) {
            // Any victim will do: re-parsing an evicted module is correct, just slower.
            if let Some(victim) = self.cache.keys().next().cloned() {
                self.cache.remove(&victim);
            }
        }
        self.cache.insert(
            file.to_path_buf(),
            CacheEntry {
                stamp,
                module: module.clone(),
            },
        );
        module
    }
}

/// Demangles Rust (legacy and v0, without the hash suffix) and Itanium C++
/// names; anything else (C names, `foo.cold`) is returned unchanged.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(text) = sym.demangle() {
                return text;
            }
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests;
