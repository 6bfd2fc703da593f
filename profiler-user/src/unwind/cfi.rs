//! Call-frame information of one ELF module: `.eh_frame` (or `.debug_frame`)
//! indexed once by address, then evaluated per lookup with gimli.

use std::path::Path;
use std::sync::Arc;

use gimli::{
    BaseAddresses, CfaRule, DebugFrame, EhFrame, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment};

type Slice = gimli::EndianArcSlice<LittleEndian>;

/// How to recover the caller's registers at one address: the CFA and where
/// the return address and the caller's `rbp` were saved, relative to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRule {
    /// CFA = value of this register + offset.
    pub cfa_register: CfaBase,
    pub cfa_offset: i64,
    /// The return address is at CFA + this offset (None: undefined, the outermost frame).
    pub ra_offset: Option<i64>,
    /// The caller's rbp is at CFA + this offset (None: rbp is unchanged).
    pub rbp_offset: Option<i64>,
}

/// The register a CFA is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CfaBase {
    Rsp,
    Rbp,
}

/// Why no rule could be given for an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoRule {
    /// No FDE covers the address.
    NotCovered,
    /// The rule uses a DWARF expression or another register (PLT stubs, signal frames).
    Unsupported,
}

/// A PT_LOAD segment: file offset ↔ ELF virtual address.
#[derive(Clone, Copy, Debug)]
struct Segment {
    offset: u64,
    vaddr: u64,
    size: u64,
}

enum Section {
    Eh(EhFrame<Slice>),
    Debug(DebugFrame<Slice>),
}

/// Parsed CFI of one module.
pub struct ModuleCfi {
    segments: Vec<Segment>,
    section: Option<Section>,
    bases: BaseAddresses,
    /// (start vaddr, end vaddr, FDE offset in the section), sorted by start.
    index: Vec<(u64, u64, usize)>,
}

fn arc_slice(data: &[u8]) -> Slice {
    Slice::new(Arc::from(data), LittleEndian)
}

impl ModuleCfi {
    /// Reads the CFI of the ELF file at `path`; a file without any yields an
    /// empty index (every lookup is `NotCovered`).
    ///
    /// Only the headers and the CFI section are read (a cache of the ranges
    /// asked for): reading the whole file cost heapscope's memory the size
    /// of the module (python3.11: 6.8 MB) for a section of a few hundred KB.
    pub fn load(path: &Path) -> Result<ModuleCfi, String> {
        let file = std::fs::File::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let cache = object::ReadCache::new(file);
        Self::parse_from(&cache).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses CFI from ELF bytes.
    pub fn parse(data: &[u8]) -> Result<ModuleCfi, String> {
        Self::parse_from(data)
    }

    fn parse_from<'d, R: object::ReadRef<'d>>(data: R) -> Result<ModuleCfi, String> {
        let file = object::File::parse(data).map_err(|e| format!("not an ELF file: {e}"))?;
        let segments = file
            .segments()
            .filter_map(|s| {
                let (offset, size) = s.file_range();
                (size > 0).then_some(Segment {
                    offset,
                    vaddr: s.address(),
                    size,
                })
            })
            .collect();
        let mut bases = BaseAddresses::default();
        if let Some(text) = file.section_by_name(".text") {
            bases = bases.set_text(text.address());
        }
        if let Some(got) = file.section_by_name(".got") {
            bases = bases.set_got(got.address());
        }
        let mut section = None;
        let mut index = Vec::new();
        if let Some(eh) = file.section_by_name(".eh_frame") {
            let bytes = eh.uncompressed_data().map_err(|e| e.to_string())?;
            bases = bases.set_eh_frame(eh.address());
            let sec = EhFrame::from(arc_slice(&bytes));
            index = build_index(&sec, &bases);
            section = Some(Section::Eh(sec));
        }
        if index.is_empty() {
            if let Some(df) = file.section_by_name(".debug_frame") {
                let bytes = df.uncompressed_data().map_err(|e| e.to_string())?;
                let mut sec = DebugFrame::from(arc_slice(&bytes));
                sec.set_address_size(8);
                index = build_index(&sec, &bases);
                section = Some(Section::Debug(sec));
            }
        }
        Ok(ModuleCfi {
            segments,
            section,
            bases,
            index,
        })
    }

    /// Number of functions with CFI.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when the module has no CFI.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// ELF virtual address of a file offset (through the PT_LOAD containing it).
    pub fn offset_to_vaddr(&self, offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| offset >= s.offset && offset - s.offset < s.size)
            .map(|s| offset - s.offset + s.vaddr)
    }

    /// The unwind rule at ELF virtual address `vaddr`.
    pub fn rule(&self, vaddr: u64, ctx: &mut UnwindContext<usize>) -> Result<FrameRule, NoRule> {
        let i = self.index.partition_point(|(start, _, _)| *start <= vaddr);
        let Some(&(start, end, fde_offset)) = i.checked_sub(1).and_then(|i| self.index.get(i))
        else {
            return Err(NoRule::NotCovered);
        };
        if vaddr < start || vaddr >= end {
            return Err(NoRule::NotCovered);
        }
        match &self.section {
            Some(Section::Eh(s)) => row_rule(s, &self.bases, ctx, fde_offset, vaddr),
            Some(Section::Debug(s)) => row_rule(s, &self.bases, ctx, fde_offset, vaddr),
            None => Err(NoRule::NotCovered),
        }
    }
}

fn build_index<S: UnwindSection<Slice>>(sec: &S, bases: &BaseAddresses) -> Vec<(u64, u64, usize)>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let mut out = Vec::new();
    let mut entries = sec.entries(bases);
    // A malformed entry ends the walk: what was indexed so far stays usable.
    while let Ok(Some(entry)) = entries.next() {
        if let gimli::CieOrFde::Fde(partial) = entry {
            if let Ok(fde) = partial.parse(S::cie_from_offset) {
                let start = fde.initial_address();
                let len = fde.len();
                if len > 0 {
                    out.push((start, start.saturating_add(len), fde.offset()));
                }
            }
        }
    }
    out.sort_unstable();
    out
}

fn row_rule<S: UnwindSection<Slice>>(
    sec: &S,
    bases: &BaseAddresses,
    ctx: &mut UnwindContext<usize>,
    fde_offset: usize,
    vaddr: u64,
) -> Result<FrameRule, NoRule>
where
    S::Offset: gimli::UnwindOffset<usize>,
{
    let fde = sec
        .fde_from_offset(bases, S::Offset::from(fde_offset), S::cie_from_offset)
        .map_err(|_| NoRule::NotCovered)?;
    let row = fde
        .unwind_info_for_address(sec, bases, ctx, vaddr)
        .map_err(|_| NoRule::NotCovered)?;
    let (cfa_register, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => {
            (CfaBase::Rsp, *offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => {
            (CfaBase::Rbp, *offset)
        }
        _ => return Err(NoRule::Unsupported),
    };
    let ra_offset = match row.register(X86_64::RA) {
        RegisterRule::Offset(o) => Some(o),
        RegisterRule::Undefined => None,
        _ => return Err(NoRule::Unsupported),
    };
    let rbp_offset = match row.register(X86_64::RBP) {
        RegisterRule::Offset(o) => Some(o),
        RegisterRule::Undefined | RegisterRule::SameValue => None,
        _ => return Err(NoRule::Unsupported),
    };
    Ok(FrameRule {
        cfa_register,
        cfa_offset,
        ra_offset,
        rbp_offset,
    })
}
