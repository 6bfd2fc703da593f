//! Choosing where in a function its probes go.
//!
//! A uprobe on an instruction the kernel emulates (push of a register, a
//! relative jmp/jcc/call, nop) costs ~0.6 µs per hit here; on one it must
//! single-step out of line (test, cmp, mov, ...) it costs ~10 µs. Allocators'
//! fast paths often start with such instructions (glibc's `free` with `test
//! %rdi,%rdi`, jemalloc's `malloc` with `cmp $0x1000,%rdi`, mimalloc's with
//! `mov`s), so probing at +0 makes every call 10× dearer.
//!
//! [`place`] decodes the function's first instructions and moves both probes
//! to the first emulated instruction that every call reaches, as long as
//! everything before it:
//! - falls through (no branch: every call passes the chosen instruction),
//! - leaves the stack pointer alone (`[rsp]` is still the return address, so
//!   the return probe works there and the entry's stack position is the
//!   caller's),
//! - does not destroy an argument the probe reads (a copy to another register
//!   is followed: the probe then reads the argument there).
//!
//! A branch to the chosen instruction must not come from inside the skipped
//! prefix's range later in the function (it would fire twice in one call), so
//! the whole function is scanned for branch targets when its size is known.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

/// Register indices: the six System V argument registers first, so an
/// argument's position is its register's index.
mod argreg {
    pub const RDI: u8 = 0;
    pub const RSI: u8 = 1;
    pub const RDX: u8 = 2;
    pub const RCX: u8 = 3;
    pub const R8: u8 = 4;
    pub const R9: u8 = 5;
    pub const RAX: u8 = 6;
    pub const RBX: u8 = 7;
    pub const RBP: u8 = 8;
    pub const R10: u8 = 9;
    pub const R11: u8 = 10;
    pub const R12: u8 = 11;
    pub const R13: u8 = 12;
    pub const R14: u8 = 13;
    pub const R15: u8 = 14;
    pub const RSP: u8 = 15;
}

/// No register holds the argument any more.
pub const LOST: u8 = 0xff;

/// How many instructions are looked at before giving up.
const MAX_SKIPPED: usize = 12;

/// Where a function's probes go and where its arguments are there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Byte offset from the function's start.
    pub offset: u64,
    /// For each System V argument (rdi, rsi, rdx, rcx, r8, r9), the
    /// argument register holding it at `offset` (0 = rdi ... 5 = r9: the
    /// position an entry probe reads), or [`LOST`] when only another
    /// register (or none) has it.
    pub args: [u8; 6],
    /// True when the instruction at `offset` is one the kernel emulates.
    pub emulated: bool,
}

/// Why a function's probe stays on a single-stepped instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stepped {
    /// The path forks before any emulated instruction (`cmp; ja` is fine: the
    /// jcc is emulated; a `ret` or an indirect jump is not).
    Branches { at: u64, text: String },
    /// An argument the probe needs is overwritten before one.
    ArgumentLost { at: u64, arg: usize },
    /// The stack pointer moves before one.
    StackMoves { at: u64 },
    /// An instruction heapscope does not model comes first.
    Unmodelled { at: u64, text: String },
    /// A later branch jumps into the skipped prefix.
    BranchBack { from: u64, to: u64 },
    /// Nothing emulated within the first instructions.
    TooFar,
    /// The bytes do not decode.
    Undecodable,
}

impl std::fmt::Display for Stepped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stepped::Branches { at, text } => write!(f, "its path forks at +{at:#x} ({text})"),
            Stepped::ArgumentLost { at, arg } => {
                write!(f, "argument {} is overwritten at +{at:#x}", arg + 1)
            }
            Stepped::StackMoves { at } => write!(f, "the stack pointer moves at +{at:#x}"),
            Stepped::Unmodelled { at, text } => write!(f, "+{at:#x} is `{text}`"),
            Stepped::BranchBack { from, to } => {
                write!(f, "a branch at +{from:#x} comes back to +{to:#x}")
            }
            Stepped::TooFar => write!(f, "no emulated instruction in its first {MAX_SKIPPED}"),
            Stepped::Undecodable => write!(f, "its first bytes do not decode"),
        }
    }
}

/// The System V argument registers, in order (each argument's own).
pub const ABI_ARGS: [u8; 6] = [0, 1, 2, 3, 4, 5];

/// The `argreg` index of a general-purpose register of any width.
fn gpr(r: Register) -> Option<u8> {
    use Register::*;
    Some(match r {
        RAX | EAX | AX | AL | AH => argreg::RAX,
        RBX | EBX | BX | BL | BH => argreg::RBX,
        RCX | ECX | CX | CL | CH => argreg::RCX,
        RDX | EDX | DX | DL | DH => argreg::RDX,
        RSI | ESI | SI | SIL => argreg::RSI,
        RDI | EDI | DI | DIL => argreg::RDI,
        RBP | EBP | BP | BPL => argreg::RBP,
        RSP | ESP | SP | SPL => argreg::RSP,
        R8 | R8D | R8W | R8L => argreg::R8,
        R9 | R9D | R9W | R9L => argreg::R9,
        R10 | R10D | R10W | R10L => argreg::R10,
        R11 | R11D | R11W | R11L => argreg::R11,
        R12 | R12D | R12W | R12L => argreg::R12,
        R13 | R13D | R13W | R13L => argreg::R13,
        R14 | R14D | R14W | R14L => argreg::R14,
        R15 | R15D | R15W | R15L => argreg::R15,
        _ => return Option::None,
    })
}

fn is_full_width(r: Register) -> bool {
    matches!(
        r,
        Register::RAX
            | Register::RBX
            | Register::RCX
            | Register::RDX
            | Register::RSI
            | Register::RDI
            | Register::RBP
            | Register::R8
            | Register::R9
            | Register::R10
            | Register::R11
            | Register::R12
            | Register::R13
            | Register::R14
            | Register::R15
    )
}

/// Conditional jumps (the kernel emulates the rel8/rel32 forms; not
/// jrcxz/loop).
fn is_jcc(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Ja | Jae | Jb | Jbe | Je | Jne | Jg | Jge | Jl | Jle | Jo | Jno | Jp | Jnp | Js | Jns
    )
}

/// A relative (direct) jmp, jcc or call.
fn is_direct_branch(ins: &Instruction) -> bool {
    matches!(
        ins.op0_kind(),
        OpKind::NearBranch64 | OpKind::NearBranch32 | OpKind::NearBranch16
    ) && (matches!(ins.mnemonic(), Mnemonic::Jmp | Mnemonic::Call) || is_jcc(ins.mnemonic()))
}

/// Instructions that move the stack pointer implicitly.
fn moves_stack(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Push | Pop | Pushf | Pushfq | Popf | Popfq | Call | Ret | Enter | Leave
    )
}

/// True for instructions the x86 uprobe code emulates instead of
/// single-stepping: push of a register, relative jmp/jcc/call, nop.
pub fn is_emulated(ins: &Instruction) -> bool {
    if is_direct_branch(ins) {
        return true;
    }
    match ins.mnemonic() {
        Mnemonic::Push => ins.op0_kind() == OpKind::Register && is_full_width(ins.op0_register()),
        Mnemonic::Nop => true,
        _ => false,
    }
}

/// What a skippable instruction writes: `Some(reg)` for one register,
/// `None` for nothing but flags; `Err` when it is not modelled.
fn written(ins: &Instruction) -> Result<Option<u8>, ()> {
    match ins.mnemonic() {
        // Flags only.
        Mnemonic::Cmp | Mnemonic::Test | Mnemonic::Endbr64 | Mnemonic::Bt => Ok(None),
        // The destination (operand 0) only.
        Mnemonic::Mov
        | Mnemonic::Movzx
        | Mnemonic::Movsx
        | Mnemonic::Movsxd
        | Mnemonic::Lea
        | Mnemonic::Add
        | Mnemonic::Sub
        | Mnemonic::And
        | Mnemonic::Or
        | Mnemonic::Xor
        | Mnemonic::Shl
        | Mnemonic::Shr
        | Mnemonic::Sar
        | Mnemonic::Rol
        | Mnemonic::Ror
        | Mnemonic::Inc
        | Mnemonic::Dec
        | Mnemonic::Neg
        | Mnemonic::Not
        | Mnemonic::Setb
        | Mnemonic::Setae
        | Mnemonic::Sete
        | Mnemonic::Setne
        | Mnemonic::Seta
        | Mnemonic::Setbe
        | Mnemonic::Seto
        | Mnemonic::Cmove
        | Mnemonic::Cmovne
        | Mnemonic::Cmova
        | Mnemonic::Cmovae
        | Mnemonic::Cmovb
        | Mnemonic::Cmovbe => match ins.op0_kind() {
            OpKind::Register => gpr(ins.op0_register()).map(Some).ok_or(()),
            // A store to memory changes no register.
            OpKind::Memory => Ok(None),
            _ => Err(()),
        },
        _ => Err(()),
    }
}

/// The source register of a register-to-register `mov` (a copy).
fn copied_from(ins: &Instruction) -> Option<u8> {
    if ins.mnemonic() == Mnemonic::Mov
        && ins.op0_kind() == OpKind::Register
        && ins.op1_kind() == OpKind::Register
        && is_full_width(ins.op0_register())
        && is_full_width(ins.op1_register())
    {
        gpr(ins.op1_register())
    } else {
        None
    }
}

/// Where to probe a function starting with `bytes` (its first bytes, or all
/// of it when `whole` is true), whose probe reads the System V arguments
/// listed in `needed` (0-based positions). `Err` says why the probe must stay
/// at +0 on an instruction the kernel single-steps; a function starting with
/// an emulated instruction gets offset 0.
pub fn place(bytes: &[u8], whole: bool, needed: &[usize]) -> Result<Placement, Stepped> {
    let mut decoder = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
    // Registers holding each argument (a bit set of argreg indices).
    let mut holds: [u32; 6] = ABI_ARGS.map(|r| 1u32 << r);
    let mut skipped = 0usize;
    let found = loop {
        if !decoder.can_decode() || skipped >= MAX_SKIPPED {
            return Err(if skipped == 0 {
                Stepped::Undecodable
            } else {
                Stepped::TooFar
            });
        }
        let ins = decoder.decode();
        if ins.code() == Code::INVALID {
            return Err(if skipped == 0 {
                Stepped::Undecodable
            } else {
                Stepped::TooFar
            });
        }
        let at = ins.ip();
        if is_emulated(&ins) {
            break at;
        }
        let text = format!("{:?}", ins.mnemonic()).to_lowercase();
        let m = ins.mnemonic();
        if matches!(m, Mnemonic::Jmp | Mnemonic::Call | Mnemonic::Ret) || is_jcc(m) {
            return Err(Stepped::Branches { at, text });
        }
        if moves_stack(m) {
            return Err(Stepped::StackMoves { at });
        }
        let Ok(w) = written(&ins) else {
            return Err(Stepped::Unmodelled { at, text });
        };
        if let Some(w) = w {
            if w == argreg::RSP {
                return Err(Stepped::StackMoves { at });
            }
            let src = copied_from(&ins);
            for h in &mut holds {
                let had_src = src.is_some_and(|s| *h & (1 << s) != 0);
                *h &= !(1u32 << w);
                if had_src {
                    *h |= 1 << w;
                }
            }
            // The probe reads only the six argument registers.
            if let Some(&arg) = needed
                .iter()
                .find(|&&a| holds.get(a).is_some_and(|h| *h & 0x3f == 0))
            {
                return Err(Stepped::ArgumentLost { at, arg });
            }
        }
        skipped += 1;
    };
    if found > 0 && whole {
        // A branch later in the function into (0, found] would hit the probe
        // again within the same call.
        let mut rest = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
        while rest.can_decode() {
            let ins = rest.decode();
            if is_direct_branch(&ins) && ins.ip() >= found {
                let to = ins.near_branch_target();
                if to > 0 && to <= found {
                    return Err(Stepped::BranchBack { from: ins.ip(), to });
                }
            }
        }
    }
    let mut args = [LOST; 6];
    for (i, h) in holds.iter().enumerate() {
        // The argument's own register if it still holds it, else the first
        // argument register with a copy.
        args[i] = if h & (1 << i) != 0 {
            i as u8
        } else {
            (0..6u8).find(|r| h & (1 << r) != 0).unwrap_or(LOST)
        };
    }
    Ok(Placement {
        offset: found,
        args,
        emulated: true,
    })
}

/// Targets of the direct jumps and calls in `bytes` (a function at `vaddr`),
/// decoded linearly.
pub fn branch_targets(bytes: &[u8], vaddr: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, bytes, vaddr, DecoderOptions::NONE);
    let mut out = Vec::new();
    while decoder.can_decode() {
        let ins = decoder.decode();
        if is_direct_branch(&ins) && matches!(ins.mnemonic(), Mnemonic::Jmp | Mnemonic::Call) {
            out.push(ins.near_branch_target());
        }
    }
    out
}

/// The target of the function's first instruction when it is a direct
/// unconditional `jmp` (a function that only forwards), given the
/// function's address.
pub fn first_jump(bytes: &[u8], vaddr: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, bytes, vaddr, DecoderOptions::NONE);
    if !decoder.can_decode() {
        return None;
    }
    let ins = decoder.decode();
    // Skip an endbr64 landing pad.
    let ins = if ins.mnemonic() == Mnemonic::Endbr64 && decoder.can_decode() {
        decoder.decode()
    } else {
        ins
    };
    (ins.mnemonic() == Mnemonic::Jmp && is_direct_branch(&ins)).then(|| ins.near_branch_target())
}

/// The placement for a function, falling back to +0 (single-stepped) with
/// the reason when no emulated instruction qualifies.
pub fn place_or_entry(bytes: &[u8], whole: bool, needed: &[usize]) -> (Placement, Option<Stepped>) {
    match place(bytes, whole, needed) {
        Ok(p) => (p, None),
        Err(why) => (
            Placement {
                offset: 0,
                args: ABI_ARGS,
                emulated: false,
            },
            Some(why),
        ),
    }
}

#[cfg(test)]
mod tests;
