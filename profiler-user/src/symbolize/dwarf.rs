//! DWARF lookups: function names, `file:line` and inlined functions for an
//! ELF virtual address, with memory bounded whatever the module's size.
//!
//! Only the sections a lookup reads are copied out of the object file
//! (decompressing zlib, zstd and `.zdebug` sections) into reference-counted
//! buffers; location lists, macros and type units are never read. Loading
//! keeps only an index of compilation units (their offsets and address
//! ranges, from `.debug_aranges` where present). A unit is parsed (its
//! abbreviations, line table and function ranges) when an address inside
//! it is first looked up, and parsed units are kept in a cache bounded in
//! bytes, least recently used first out ([`super::dwarf_units`]). Parsing every unit up
//! front (what addr2line's context does) cost 28 MB for the 4,126 units of
//! Debian's libc debug file alone, more than the profiler's whole budget.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use gimli::Reader as _;
use object::{Object, ObjectSection};

use super::demangle;
use super::dwarf_units::{ParsedUnit, UnitCache};

pub(super) use super::dwarf_sections::Reader;
use super::dwarf_sections::{Pages, Sections};

/// Looked-up addresses kept per module (their frames), so a site seen at
/// every tick is not looked up again: about 200 B each.
const MAX_CACHED_ADDRS: usize = 4096;

/// Bytes of `.debug_info` indexed between two releases of the pages read
/// (each unit's header is read; releasing every 256 units instead let
/// python3.11's 506 units, 25 MB, touch 9 MB of pages at once).
const INDEX_RELEASE_BYTES: usize = 1 << 20;

/// Why DWARF of a file could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DwarfError {
    #[error("cannot read debug section {section}")]
    Section {
        section: &'static str,
        #[source]
        source: std::io::Error,
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

/// Compilation units of one file: where each starts, and which addresses
/// each covers.
struct UnitIndex {
    headers: Vec<gimli::UnitHeader<Reader>>,
    /// `.debug_info` offset of each of `headers` (ascending).
    offsets: Vec<usize>,
    /// (begin, end, index into `headers`), sorted by begin.
    ranges: Vec<(u64, u64, usize)>,
    /// `max_end[i]`: the largest end among `ranges[..=i]` (ranges may nest
    /// or overlap, so a backward scan stops only below this).
    max_end: Vec<u64>,
}

impl UnitIndex {
    /// Indexes the units of `dwarf`; address ranges only when `with_ranges`
    /// (a dwz supplement holds partial units only, looked up by offset).
    /// `release` is called every [`INDEX_RELEASE_BYTES`] of units.
    fn build(
        dwarf: &gimli::Dwarf<Reader>,
        with_ranges: bool,
        release: &dyn Fn(),
    ) -> Result<UnitIndex, gimli::Error> {
        let mut aranges: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
        if with_ranges {
            let mut headers = dwarf.debug_aranges.headers();
            while let Some(h) = headers.next()? {
                let mut entries = h.entries();
                while let Some(e) = entries.next()? {
                    let r = e.range();
                    if r.begin < r.end {
                        aranges
                            .entry(h.debug_info_offset().0)
                            .or_default()
                            .push((r.begin, r.end));
                    }
                }
            }
        }
        let mut index = UnitIndex {
            headers: Vec::new(),
            offsets: Vec::new(),
            ranges: Vec::new(),
            max_end: Vec::new(),
        };
        let mut units = dwarf.units();
        let mut released_at = 0;
        while let Some(header) = units.next()? {
            let Some(offset) = header.offset().as_debug_info_offset() else {
                continue;
            };
            let needs_ranges = match header.type_() {
                gimli::UnitType::Type { .. } | gimli::UnitType::SplitType { .. } => continue,
                // Only referred to by other units; no addresses of its own.
                gimli::UnitType::Partial => false,
                _ => with_ranges,
            };
            let i = index.headers.len();
            if needs_ranges {
                match aranges.remove(&offset.0) {
                    Some(rs) => index.ranges.extend(rs.into_iter().map(|(b, e)| (b, e, i))),
                    // Not in .debug_aranges: the unit's own DW_AT_ranges or
                    // low/high pc (the unit is parsed for this and dropped).
                    None => {
                        if let Ok(unit) = dwarf.unit(header.clone()) {
                            if let Ok(mut rs) = dwarf.unit_ranges(&unit) {
                                while let Ok(Some(r)) = rs.next() {
                                    if r.begin < r.end {
                                        index.ranges.push((r.begin, r.end, i));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            index.offsets.push(offset.0);
            index.headers.push(header);
            if offset.0 - released_at >= INDEX_RELEASE_BYTES {
                release();
                released_at = offset.0;
            }
        }
        index.ranges.sort_unstable();
        let mut max = 0;
        index.max_end = index
            .ranges
            .iter()
            .map(|r| {
                max = max.max(r.1);
                max
            })
            .collect();
        Ok(index)
    }

    /// Units whose ranges contain `vaddr`, lowest start first.
    fn units_at(&self, vaddr: u64) -> Vec<usize> {
        let end = self.ranges.partition_point(|r| r.0 <= vaddr);
        let mut out: Vec<usize> = (0..end)
            .rev()
            .take_while(|&i| self.max_end[i] > vaddr)
            .filter(|&i| self.ranges[i].1 > vaddr)
            .map(|i| self.ranges[i].2)
            .collect();
        out.reverse();
        out.dedup();
        out
    }

    /// The unit holding `.debug_info` offset `offset`, and the offset
    /// within it.
    fn unit_of(&self, offset: usize) -> Option<(usize, gimli::UnitOffset<usize>)> {
        let i = self
            .offsets
            .partition_point(|&o| o <= offset)
            .checked_sub(1)?;
        let at = gimli::DebugInfoOffset(offset).to_unit_offset(&self.headers[i])?;
        Some((i, at))
    }
}

/// vaddr → (its frames, last use).
type AddrCache = HashMap<u64, (Rc<[SourceFrame]>, u64)>;

/// The DWARF of one module (from the module itself or its debug file).
pub(crate) struct DwarfInfo {
    dwarf: gimli::Dwarf<Reader>,
    /// The mapped sections of the file (and of its supplement).
    pages: Vec<Pages>,
    index: UnitIndex,
    /// The units of the dwz supplement, if any (`dwarf.sup`).
    sup_index: Option<UnitIndex>,
    units: RefCell<UnitCache>,
    /// vaddr → (frames, last use): see [`MAX_CACHED_ADDRS`].
    addrs: RefCell<AddrCache>,
    clock: std::cell::Cell<u64>,
}

/// True when `obj` carries DWARF line or function information in its file
/// (a stripped module or a NOBITS placeholder has none).
pub(crate) fn has_dwarf<'data, O: Object<'data>>(obj: &O) -> bool {
    obj.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0 && s.file_range().is_some())
}

/// Reads the sections of `obj` (the file at `path`) a lookup reads.
fn load_sections<'data, O: Object<'data>>(
    obj: &O,
    path: &Path,
) -> Result<(gimli::Dwarf<Reader>, Pages), DwarfError> {
    let sections = Sections::read(obj, path)
        .map_err(|(section, source)| DwarfError::Section { section, source })?;
    let dwarf = gimli::Dwarf::load(|id| Ok::<_, DwarfError>(sections.reader(id)))?;
    Ok((dwarf, sections.pages()))
}

impl DwarfInfo {
    fn new(dwarf: gimli::Dwarf<Reader>, pages: Vec<Pages>) -> Result<DwarfInfo, DwarfError> {
        let release = || pages.iter().for_each(Pages::release);
        let index = UnitIndex::build(&dwarf, true, &release)?;
        let sup_index = match dwarf.sup() {
            Some(sup) => Some(UnitIndex::build(sup, false, &release)?),
            None => None,
        };
        release();
        Ok(DwarfInfo {
            pages,
            dwarf,
            index,
            sup_index,
            units: RefCell::new(UnitCache::default()),
            addrs: RefCell::new(HashMap::new()),
            clock: std::cell::Cell::new(0),
        })
    }

    /// Reads the DWARF of `obj` (the file at `path`).
    pub(crate) fn load<'data, O: Object<'data>>(
        obj: &O,
        path: &Path,
    ) -> Result<DwarfInfo, DwarfError> {
        let (dwarf, pages) = load_sections(obj, path)?;
        DwarfInfo::new(dwarf, vec![pages])
    }

    /// Reads the DWARF of `obj` whose shared parts dwz moved into `sup` (the
    /// file named by `.gnu_debugaltlink`).
    pub(crate) fn load_with_sup<'a, 'b, O: Object<'a>, S: Object<'b>>(
        (obj, path): (&O, &Path),
        (sup, sup_path): (&S, &Path),
    ) -> Result<DwarfInfo, DwarfError> {
        let (mut dwarf, pages) = load_sections(obj, path)?;
        let (sup, sup_pages) = load_sections(sup, sup_path)?;
        dwarf.set_sup(sup);
        DwarfInfo::new(dwarf, vec![pages, sup_pages])
    }

    /// Drops the section pages lookups touched from heapscope's resident
    /// memory (after a batch of lookups; see [`super::dwarf_sections`]).
    pub(crate) fn release_pages(&self) {
        self.pages.iter().for_each(Pages::release);
    }

    /// Parsed units dropped to stay within the cache's bytes (each is parsed
    /// again when needed: slower, never wrong).
    pub(crate) fn unit_evictions(&self) -> u64 {
        self.units.borrow().evictions
    }

    /// Frames at `vaddr`, root-most first (the function containing it, then
    /// the functions inlined into it down to the innermost). Empty when no
    /// compilation unit covers the address.
    pub(crate) fn frames(&self, vaddr: u64) -> Result<Vec<SourceFrame>, gimli::Error> {
        let now = self.clock.get() + 1;
        self.clock.set(now);
        if let Some((frames, used)) = self.addrs.borrow_mut().get_mut(&vaddr) {
            *used = now;
            return Ok(frames.to_vec());
        }
        let mut out = Vec::new();
        for unit in self.index.units_at(vaddr) {
            let parsed = self.parsed(false, unit, true)?;
            if let Some(frames) = self.frames_in(&parsed, vaddr)? {
                out = frames;
                break;
            }
        }
        // A large unit's entries span megabytes of mapped pages: out of
        // the resident set after each lookup that read them, not only
        // after the batch.
        self.release_pages();
        let mut addrs = self.addrs.borrow_mut();
        if addrs.len() >= MAX_CACHED_ADDRS {
            // Least recently used half out, at once (amortized O(1)).
            let mut uses: Vec<u64> = addrs.values().map(|(_, u)| *u).collect();
            let (_, median, _) = uses.select_nth_unstable(MAX_CACHED_ADDRS / 2);
            let median = *median;
            addrs.retain(|_, (_, u)| *u > median);
        }
        addrs.insert(vaddr, (Rc::from(out.as_slice()), now));
        Ok(out)
    }

    fn dwarf_of(&self, sup: bool) -> Option<&gimli::Dwarf<Reader>> {
        if sup {
            self.dwarf.sup()
        } else {
            Some(&self.dwarf)
        }
    }

    /// Unit `i` of the main file (or of the supplement), parsed through the
    /// cache; `tables`: with its function ranges and line table.
    fn parsed(&self, sup: bool, i: usize, tables: bool) -> Result<Rc<ParsedUnit>, gimli::Error> {
        let (Some(dwarf), Some(index)) = (
            self.dwarf_of(sup),
            if sup {
                self.sup_index.as_ref()
            } else {
                Some(&self.index)
            },
        ) else {
            return Err(gimli::Error::NoEntryAtGivenOffset);
        };
        let header = index
            .headers
            .get(i)
            .ok_or(gimli::Error::NoEntryAtGivenOffset)?;
        self.units
            .borrow_mut()
            .get(dwarf, (sup, i), header, tables, &|| self.release_pages())
    }

    /// The frames at `vaddr` from one unit, innermost last; `None` when the
    /// unit has neither a function nor a line there.
    fn frames_in(
        &self,
        parsed: &ParsedUnit,
        vaddr: u64,
    ) -> Result<Option<Vec<SourceFrame>>, gimli::Error> {
        let dwarf = &self.dwarf;
        let location = parsed.location(dwarf, vaddr);
        let Some(function) = parsed.function_at(vaddr) else {
            return Ok(location.map(|(file, line)| {
                vec![SourceFrame {
                    name: None,
                    file,
                    line,
                }]
            }));
        };
        let chain = parsed.inlined_chain(dwarf, function, vaddr, &|| self.release_pages())?;
        // The innermost function is at the line table's location; each
        // function further out is at the call site of the one it inlined.
        let (mut file, mut line) = location.unwrap_or((None, None));
        let mut out = Vec::with_capacity(chain.len() + 1);
        for inlined in chain.iter().rev() {
            out.push(SourceFrame {
                name: self.name_of(false, &parsed.unit, inlined.offset, 16),
                file: file.take(),
                line: line.take(),
            });
            file = inlined.call_file.and_then(|f| parsed.file_name(dwarf, f));
            line = inlined.call_line;
        }
        out.push(SourceFrame {
            name: self.name_of(false, &parsed.unit, function, 16),
            file,
            line,
        });
        out.reverse();
        Ok(Some(out))
    }

    /// The name of the entry at `offset` (linkage name first, demangled),
    /// following `DW_AT_abstract_origin` and `DW_AT_specification` up to
    /// `depth` times, across units and into the dwz supplement.
    fn name_of(
        &self,
        sup: bool,
        unit: &gimli::Unit<Reader>,
        offset: gimli::UnitOffset<usize>,
        depth: u32,
    ) -> Option<String> {
        if depth == 0 {
            return None;
        }
        let dwarf = self.dwarf_of(sup)?;
        let entry = unit.entry(offset).ok()?;
        let mut name = None;
        let mut next = None;
        let mut attrs = entry.attrs();
        while let Ok(Some(attr)) = attrs.next() {
            match attr.name() {
                gimli::DW_AT_linkage_name | gimli::DW_AT_MIPS_linkage_name => {
                    if let Ok(s) = dwarf.attr_string(unit, attr.value()) {
                        return Some(demangle(&s.to_string_lossy().ok()?));
                    }
                }
                gimli::DW_AT_name => {
                    if let Ok(s) = dwarf.attr_string(unit, attr.value()) {
                        name = s.to_string_lossy().ok().map(|n| demangle(&n));
                    }
                }
                gimli::DW_AT_abstract_origin | gimli::DW_AT_specification => {
                    next = Some(attr.value());
                }
                _ => {}
            }
        }
        if name.is_some() {
            return name;
        }
        let (to_sup, at) = match next? {
            gimli::AttributeValue::UnitRef(o) => return self.name_of(sup, unit, o, depth - 1),
            gimli::AttributeValue::DebugInfoRef(o) => (sup, o.0),
            gimli::AttributeValue::DebugInfoRefSup(o) => (true, o.0),
            _ => return None,
        };
        let index = if to_sup {
            self.sup_index.as_ref()?
        } else {
            &self.index
        };
        let (i, unit_offset) = index.unit_of(at)?;
        let other = self.parsed(to_sup, i, false).ok()?;
        self.name_of(to_sup, &other.unit, unit_offset, depth - 1)
    }
}
