//! DWARF lookups through addr2line: function names, `file:line` and inlined
//! functions for an ELF virtual address.
//!
//! Debug sections are copied out of the object file once (decompressing
//! zlib, zstd and `.zdebug` sections) into reference-counted buffers, so the
//! addr2line context owns its data and can be cached without borrowing the
//! file. addr2line parses compilation units lazily: the first lookup in a
//! unit pays for it, later ones in the same unit are cheap.

use std::sync::Arc;

use gimli;
use object::{Object, ObjectSection};

use super::demangle;

type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// Why DWARF of a file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DwarfError {
    #[error("cannot read debug section {section}")]
    Section {
        section: &'static str,
        #[source]
        source: object::Error,
    },
    #[error("malformed DWARF")]
    Parse(#[from] gimli::Error),
}

/// One frame found in DWARF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SourceFrame {
    /// Demangled name; `None` when DWARF has a line but no function here.
    pub(crate) name: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
}

/// The DWARF of one module (from the module itself or its debug file).
pub(crate) struct DwarfInfo {
    ctx: addr2line::Context<Reader>,
}

/// True when `obj` carries DWARF line or function information in its file
/// (a stripped module or a NOBITS placeholder has none).
pub(crate) fn has_dwarf<'data, O: Object<'data>>(obj: &O) -> bool {
    obj.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0 && s.file_range().is_some())
}

/// Copies (and decompresses) one section; a missing one is empty.
fn section_data<'data, O: Object<'data>>(
    obj: &O,
    name: &'static str,
    endian: gimli::RunTimeEndian,
) -> Result<Reader, DwarfError> {
    let data: Arc<[u8]> = match obj.section_by_name(name) {
        // NOBITS sections (stripped into a debug file) have no bytes.
        Some(section) if section.file_range().is_some() => {
            let bytes = section
                .uncompressed_data()
                .map_err(|source| DwarfError::Section {
                    section: name,
                    source,
                })?;
            Arc::from(&*bytes)
        }
        _ => Arc::from(&[][..]),
    };
    Ok(gimli::EndianArcSlice::new(data, endian))
}

/// Loads every DWARF section of `obj` into a [`gimli::Dwarf`].
fn load_sections<'data, O: Object<'data>>(obj: &O) -> Result<gimli::Dwarf<Reader>, DwarfError> {
    let endian = if obj.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    gimli::Dwarf::load(|id| section_data(obj, id.name(), endian))
}

impl DwarfInfo {
    /// Reads the DWARF of `obj`.
    pub(crate) fn load<'data, O: Object<'data>>(obj: &O) -> Result<DwarfInfo, DwarfError> {
        let dwarf = load_sections(obj)?;
        Ok(DwarfInfo {
            ctx: addr2line::Context::from_dwarf(dwarf)?,
        })
    }

    /// Reads the DWARF of `obj` whose shared parts dwz moved into `sup` (the
    /// file named by `.gnu_debugaltlink`).
    pub(crate) fn load_with_sup<'a, 'b, O: Object<'a>, S: Object<'b>>(
        obj: &O,
        sup: &S,
    ) -> Result<DwarfInfo, DwarfError> {
        let mut dwarf = load_sections(obj)?;
        dwarf.set_sup(load_sections(sup)?);
        Ok(DwarfInfo {
            ctx: addr2line::Context::from_dwarf(dwarf)?,
        })
    }

    /// Frames at `vaddr`, root-most first (the function containing it, then
    /// the functions inlined into it down to the innermost). Empty when no
    /// compilation unit covers the address.
    pub(crate) fn frames(&self, vaddr: u64) -> Result<Vec<SourceFrame>, gimli::Error> {
        // Split DWARF (.dwo) is not followed: skipping its loads keeps what
        // the skeleton unit knows (function names from the line table's
        // unit, lines) instead of failing.
        let mut iter = self.ctx.find_frames(vaddr).skip_all_loads()?;
        let mut out = Vec::new();
        while let Some(frame) = iter.next()? {
            let name = frame
                .function
                .as_ref()
                .and_then(|f| f.raw_name().ok())
                .map(|n| demangle(&n));
            let (file, line) = match &frame.location {
                Some(loc) => (loc.file.map(str::to_string), loc.line),
                None => (None, None),
            };
            out.push(SourceFrame { name, file, line });
        }
        // addr2line yields the innermost inlined function first.
        out.reverse();
        Ok(out)
    }
}
