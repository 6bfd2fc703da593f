//! Compilation units parsed on demand for [`super::dwarf::DwarfInfo`]: a
//! unit's function ranges and line table, and the cache that bounds how
//! many bytes of parsed units a module keeps.

use std::collections::HashMap;
use std::rc::Rc;

use gimli::Reader as _;

use super::dwarf_sections::Reader;

/// Bytes of parsed units one module keeps (estimated: the tables below
/// plus [`UNIT_OVERHEAD`] each); the least recently used go first. Debian's
/// libc has 4,126 units of a few KiB each; a program's largest unit (an
/// interpreter's main loop) can need a few MiB, and is kept alone then.
const MAX_UNIT_BYTES: usize = 4 << 20;

/// What a parsed unit costs besides its tables: its abbreviations and line
/// program header (file and directory names), typically a few KiB.
const UNIT_OVERHEAD: usize = 16 << 10;

/// Entries read between two releases of the section pages they touched
/// (python3.11's largest unit spans ~10 MB of `.debug_info`: read whole, its
/// pages were a 10 MB spike of heapscope's RSS).
const RELEASE_EVERY: usize = 4096;

/// Deepest nesting of inlined functions followed (bounds the recursion on
/// malformed input).
const MAX_INLINE_DEPTH: usize = 64;

/// Where an inlined function was called from (in its caller).
pub(crate) struct Inlined {
    pub(crate) offset: gimli::UnitOffset<usize>,
    pub(crate) call_file: Option<u64>,
    pub(crate) call_line: Option<u32>,
}

/// One row of a line table: from `addr` on, `file:line` (0: no line).
struct Row {
    addr: u64,
    file: u64,
    line: u32,
}

/// A contiguous run of rows, `begin..end`.
struct Sequence {
    begin: u64,
    end: u64,
    rows: Vec<Row>,
}

/// A unit's function ranges and line table, for lookups by address.
#[derive(Default)]
struct Tables {
    /// (begin, end, offset of the `DW_TAG_subprogram`), sorted by begin.
    functions: Vec<(u64, u64, gimli::UnitOffset<usize>)>,
    /// `max_end[i]`: the largest end among `functions[..=i]`.
    max_end: Vec<u64>,
    /// Sorted by begin.
    sequences: Vec<Sequence>,
}

impl Tables {
    /// `release` is called every [`RELEASE_EVERY`] entries read.
    fn build(
        dwarf: &gimli::Dwarf<Reader>,
        unit: &gimli::Unit<Reader>,
        release: &dyn Fn(),
    ) -> Tables {
        let mut t = Tables::default();
        let mut entries = unit.entries();
        let mut read = 0usize;
        while let Ok(Some((_, entry))) = entries.next_dfs() {
            read += 1;
            if read.is_multiple_of(RELEASE_EVERY) {
                release();
            }
            if entry.tag() != gimli::DW_TAG_subprogram {
                continue;
            }
            let Ok(mut ranges) = dwarf.die_ranges(unit, entry) else {
                continue;
            };
            while let Ok(Some(r)) = ranges.next() {
                if r.begin < r.end {
                    t.functions.push((r.begin, r.end, entry.offset()));
                }
            }
        }
        t.functions.sort_unstable_by_key(|f| (f.0, f.1));
        let mut max = 0;
        t.max_end = t
            .functions
            .iter()
            .map(|f| {
                max = max.max(f.1);
                max
            })
            .collect();
        if let Some(program) = unit.line_program.clone() {
            let mut rows = program.rows();
            let mut current: Vec<Row> = Vec::new();
            while let Ok(Some((_, row))) = rows.next_row() {
                if row.end_sequence() {
                    if let Some(first) = current.first() {
                        if first.addr < row.address() {
                            t.sequences.push(Sequence {
                                begin: first.addr,
                                end: row.address(),
                                rows: std::mem::take(&mut current),
                            });
                        }
                    }
                    current.clear();
                    continue;
                }
                let next = Row {
                    addr: row.address(),
                    file: row.file_index(),
                    line: row
                        .line()
                        .map_or(0, |l| u32::try_from(l.get()).unwrap_or(0)),
                };
                // Several rows at one address: the last one describes it.
                match current.last_mut() {
                    Some(last) if last.addr == next.addr => *last = next,
                    _ => current.push(next),
                }
            }
            t.sequences.sort_unstable_by_key(|s| s.begin);
        }
        t.functions.shrink_to_fit();
        t.sequences.shrink_to_fit();
        t
    }

    fn bytes(&self) -> usize {
        self.functions.capacity() * 24
            + self.max_end.capacity() * 8
            + self
                .sequences
                .iter()
                .map(|s| 24 + s.rows.capacity() * 24)
                .sum::<usize>()
    }
}

/// One parsed compilation unit.
pub(crate) struct ParsedUnit {
    pub(crate) unit: gimli::Unit<Reader>,
    /// `None` for a unit parsed only to read names from.
    tables: Option<Tables>,
}

impl ParsedUnit {
    /// The innermost function whose ranges contain `vaddr`.
    pub(crate) fn function_at(&self, vaddr: u64) -> Option<gimli::UnitOffset<usize>> {
        let t = self.tables.as_ref()?;
        let end = t.functions.partition_point(|r| r.0 <= vaddr);
        (0..end)
            .rev()
            .take_while(|&i| t.max_end[i] > vaddr)
            .map(|i| &t.functions[i])
            .filter(|r| r.1 > vaddr)
            .min_by_key(|r| r.1 - r.0)
            .map(|r| r.2)
    }

    /// `file:line` of `vaddr` in the line table (`None` outside it).
    pub(crate) fn location(
        &self,
        dwarf: &gimli::Dwarf<Reader>,
        vaddr: u64,
    ) -> Option<(Option<String>, Option<u32>)> {
        let seqs = &self.tables.as_ref()?.sequences;
        let seq = &seqs[seqs.partition_point(|s| s.begin <= vaddr).checked_sub(1)?];
        if vaddr >= seq.end {
            return None;
        }
        let row = &seq.rows[seq
            .rows
            .partition_point(|r| r.addr <= vaddr)
            .checked_sub(1)?];
        Some((
            self.file_name(dwarf, row.file),
            (row.line != 0).then_some(row.line),
        ))
    }

    /// The path of file `index` of the line table: the unit's directory,
    /// the file's directory and its name, each replacing what comes before
    /// when absolute.
    pub(crate) fn file_name(&self, dwarf: &gimli::Dwarf<Reader>, index: u64) -> Option<String> {
        let header = self.unit.line_program.as_ref()?.header();
        let file = header.file(index)?;
        let text = |v| -> Option<String> {
            let s = dwarf.attr_string(&self.unit, v).ok()?;
            Some(s.to_string_lossy().ok()?.into_owned())
        };
        let mut path = match &self.unit.comp_dir {
            Some(dir) => dir.to_string_lossy().ok()?.into_owned(),
            None => String::new(),
        };
        // Directory 0 is the unit's own (already in `path`).
        if file.directory_index() != 0 {
            if let Some(dir) = file.directory(header).and_then(text) {
                push_path(&mut path, &dir);
            }
        }
        push_path(&mut path, &text(file.path_name())?);
        Some(path)
    }

    /// The inlined functions of the function at `function` that contain
    /// `vaddr`, outermost first.
    /// `release` drops the section pages read every [`RELEASE_EVERY`]
    /// entries (an interpreter's main loop spans megabytes of entries).
    pub(crate) fn inlined_chain(
        &self,
        dwarf: &gimli::Dwarf<Reader>,
        function: gimli::UnitOffset<usize>,
        vaddr: u64,
        release: &dyn Fn(),
    ) -> Result<Vec<Inlined>, gimli::Error> {
        let mut tree = self.unit.entries_tree(Some(function))?;
        let mut walk = Walk {
            dwarf,
            unit: &self.unit,
            vaddr,
            chain: Vec::new(),
            read: 0,
            release,
        };
        walk.descend(tree.root()?)?;
        Ok(walk.chain)
    }
}

/// The state of one search for the inlined functions at an address.
struct Walk<'a> {
    dwarf: &'a gimli::Dwarf<Reader>,
    unit: &'a gimli::Unit<Reader>,
    vaddr: u64,
    /// Found so far, outermost first.
    chain: Vec<Inlined>,
    /// Entries read (see [`RELEASE_EVERY`]).
    read: usize,
    release: &'a dyn Fn(),
}

impl Walk<'_> {
    /// Appends to `chain` the inlined subroutine under `node` containing
    /// the address, then the ones inside it; true when one was found.
    /// Lexical blocks and other scopes are looked through; nested functions
    /// are not.
    fn descend(
        &mut self,
        node: gimli::EntriesTreeNode<'_, '_, '_, Reader>,
    ) -> Result<bool, gimli::Error> {
        if self.chain.len() >= MAX_INLINE_DEPTH {
            return Ok(false);
        }
        let mut children = node.children();
        while let Some(child) = children.next()? {
            self.read += 1;
            if self.read.is_multiple_of(RELEASE_EVERY) {
                (self.release)();
            }
            let entry = child.entry();
            match entry.tag() {
                gimli::DW_TAG_subprogram => {}
                gimli::DW_TAG_inlined_subroutine => {
                    if !contains(self.dwarf, self.unit, entry, self.vaddr) {
                        continue;
                    }
                    let call_file = match entry.attr_value(gimli::DW_AT_call_file)? {
                        // File 0 is valid from DWARF 5 on only.
                        Some(gimli::AttributeValue::FileIndex(f))
                            if f > 0 || self.unit.header.version() >= 5 =>
                        {
                            Some(f)
                        }
                        _ => None,
                    };
                    let call_line = entry
                        .attr(gimli::DW_AT_call_line)?
                        .and_then(|a| a.udata_value())
                        .and_then(|l| u32::try_from(l).ok())
                        .filter(|&l| l != 0);
                    self.chain.push(Inlined {
                        offset: entry.offset(),
                        call_file,
                        call_line,
                    });
                    self.descend(child)?;
                    return Ok(true);
                }
                _ => {
                    if entry.has_children() && self.descend(child)? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }
}

fn contains(
    dwarf: &gimli::Dwarf<Reader>,
    unit: &gimli::Unit<Reader>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader>,
    vaddr: u64,
) -> bool {
    let Ok(mut ranges) = dwarf.die_ranges(unit, entry) else {
        return false;
    };
    while let Ok(Some(r)) = ranges.next() {
        if r.begin <= vaddr && vaddr < r.end {
            return true;
        }
    }
    false
}

fn push_path(path: &mut String, part: &str) {
    if part.starts_with('/') {
        *path = part.to_string();
    } else {
        if !path.is_empty() && !path.ends_with('/') {
            path.push('/');
        }
        path.push_str(part);
    }
}

/// Parsed units of one module, bounded by [`MAX_UNIT_BYTES`].
#[derive(Default)]
pub(crate) struct UnitCache {
    /// (in the supplement, unit index) → (unit, estimated bytes, last use).
    units: HashMap<(bool, usize), (Rc<ParsedUnit>, usize, u64)>,
    bytes: usize,
    clock: u64,
    /// Units dropped to stay within the bound.
    pub(crate) evictions: u64,
}

impl UnitCache {
    /// The unit at `key`, parsed from `header` unless cached (with its
    /// tables when `tables`; `release` drops the section pages read, now
    /// and then while building them).
    pub(crate) fn get(
        &mut self,
        dwarf: &gimli::Dwarf<Reader>,
        key: (bool, usize),
        header: &gimli::UnitHeader<Reader>,
        tables: bool,
        release: &dyn Fn(),
    ) -> Result<Rc<ParsedUnit>, gimli::Error> {
        self.clock += 1;
        if let Some((unit, _, used)) = self.units.get_mut(&key) {
            if unit.tables.is_some() || !tables {
                *used = self.clock;
                return Ok(Rc::clone(unit));
            }
        }
        if let Some((_, bytes, _)) = self.units.remove(&key) {
            self.bytes -= bytes;
        }
        let unit = dwarf.unit(header.clone())?;
        let tables = tables.then(|| Tables::build(dwarf, &unit, release));
        let bytes = UNIT_OVERHEAD + tables.as_ref().map_or(0, Tables::bytes);
        while !self.units.is_empty() && self.bytes + bytes > MAX_UNIT_BYTES {
            let Some((&victim, _)) = self.units.iter().min_by_key(|(_, v)| v.2) else {
                break;
            };
            if let Some((_, b, _)) = self.units.remove(&victim) {
                self.bytes -= b;
                self.evictions += 1;
            }
        }
        let parsed = Rc::new(ParsedUnit { unit, tables });
        self.units
            .insert(key, (Rc::clone(&parsed), bytes, self.clock));
        self.bytes += bytes;
        Ok(parsed)
    }
}
