//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just
//! enough to find struct member offsets. heapscope needs those of the
//! uprobe return-instance chain, to map return addresses that a pending
//! uretprobe replaced with its trampoline back to the real ones.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// Errors reading BTF; all name what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("btf: bad magic or truncated header")]
    Header,
    #[error("btf: truncated type section at byte {0}")]
    Truncated(usize),
    #[error("btf: unknown type kind {kind} at byte {at}")]
    UnknownKind { kind: u32, at: usize },
}

/// Struct member byte offsets by (struct name, member name), and the other
/// names asked for: enumerator values and function type ids.
#[derive(Debug, Default)]
pub struct StructOffsets {
    members: HashMap<(String, String), u32>,
    enumerators: HashMap<String, u32>,
    functions: HashMap<String, u32>,
}

const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn str_at(strings: &[u8], off: u32) -> &str {
    let rest = strings.get(off as usize..).unwrap_or(&[]);
    let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

impl StructOffsets {
    /// Parses a little-endian BTF blob, keeping the members of the named structs
    /// (the first struct of each name; kernel BTF has one).
    pub fn parse(data: &[u8], wanted: &[&str]) -> Result<StructOffsets, BtfError> {
        Self::parse_names(data, wanted, &[])
    }

    /// As [`StructOffsets::parse`], also keeping the values of the named
    /// enumerators and the type ids of the named functions (kfuncs).
    pub fn parse_names(
        data: &[u8],
        wanted: &[&str],
        names: &[&str],
    ) -> Result<StructOffsets, BtfError> {
        let magic = data.get(0..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::Header);
        }
        let field = |i: usize| u32_at(data, 8 + 4 * i).ok_or(BtfError::Header);
        let hdr_len = u32_at(data, 4).ok_or(BtfError::Header)? as usize;
        let (type_off, type_len, str_off, str_len) = (field(0)?, field(1)?, field(2)?, field(3)?);
        let types_start = hdr_len + type_off as usize;
        let types = data
            .get(types_start..types_start + type_len as usize)
            .ok_or(BtfError::Header)?;
        let str_start = hdr_len + str_off as usize;
        let strings = data
            .get(str_start..str_start + str_len as usize)
            .ok_or(BtfError::Header)?;
        let mut out = StructOffsets::default();
        // Members of anonymous structs and unions (mm_struct keeps nearly
        // all of its fields in one), by type id: (name offset in the string
        // section, byte offset, type).
        let mut anonymous: HashMap<u32, Vec<(u32, u32, u32)>> = HashMap::new();
        // Anonymous members of wanted structs: (struct, type id, byte offset).
        let mut nested: Vec<(String, u32, u32)> = Vec::new();
        let mut at = 0usize;
        // Type ids start at 1 (0 is void).
        let mut id = 0u32;
        while at < types.len() {
            id += 1;
            let name_off = u32_at(types, at).ok_or(BtfError::Truncated(at))?;
            let info = u32_at(types, at + 4).ok_or(BtfError::Truncated(at))?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let extra = match kind {
                1 | 14 | 17 => 4,          // INT, VAR, DECL_TAG
                2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF.., FUNC, FLOAT, TYPE_TAG
                3 => 12,                   // ARRAY
                4 | 5 => 12 * vlen,        // STRUCT, UNION
                6 | 13 => 8 * vlen,        // ENUM, FUNC_PROTO
                15 | 19 => 12 * vlen,      // DATASEC, ENUM64
                _ => return Err(BtfError::UnknownKind { kind, at }),
            };
            let body = at + 12;
            if kind == KIND_FUNC && !names.is_empty() {
                let name = str_at(strings, name_off);
                if names.contains(&name) {
                    out.functions.entry(name.to_string()).or_insert(id);
                }
            }
            if kind == KIND_ENUM && !names.is_empty() {
                for m in 0..vlen {
                    let base = body + 8 * m;
                    let ename = u32_at(types, base).ok_or(BtfError::Truncated(base))?;
                    let name = str_at(strings, ename);
                    if names.contains(&name) {
                        let v = u32_at(types, base + 4).ok_or(BtfError::Truncated(base))?;
                        out.enumerators.insert(name.to_string(), v);
                    }
                }
            }
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let name = str_at(strings, name_off);
                let keep = kind == KIND_STRUCT
                    && wanted.contains(&name)
                    && !out.members.keys().any(|(s, _)| s == name);
                if keep || name_off == 0 {
                    let mut members = Vec::with_capacity(vlen);
                    for m in 0..vlen {
                        let base = body + 12 * m;
                        let mname = u32_at(types, base).ok_or(BtfError::Truncated(base))?;
                        let mtype = u32_at(types, base + 4).ok_or(BtfError::Truncated(base))?;
                        let moff = u32_at(types, base + 8).ok_or(BtfError::Truncated(base))?;
                        // With kind_flag the low 24 bits are the bit offset.
                        let bits = if kind_flag { moff & 0xff_ffff } else { moff };
                        members.push((mname, bits / 8, mtype));
                    }
                    if keep {
                        for (mname, off, mtype) in members {
                            let mname = str_at(strings, mname);
                            if mname.is_empty() {
                                nested.push((name.to_string(), mtype, off));
                            } else {
                                out.members
                                    .insert((name.to_string(), mname.to_string()), off);
                            }
                        }
                    } else {
                        anonymous.insert(id, members);
                    }
                }
            }
            at = body + extra;
        }
        // Fields of anonymous members count as the struct's own, at their
        // offset within it (bounded: anonymous types nest a few levels).
        let mut steps = 0;
        while let Some((name, ty, base)) = nested.pop() {
            steps += 1;
            if steps > 10_000 {
                break;
            }
            for (mname, off, mtype) in anonymous.get(&ty).into_iter().flatten() {
                let mname = str_at(strings, *mname);
                if mname.is_empty() {
                    nested.push((name.clone(), *mtype, base + off));
                } else {
                    out.members
                        .entry((name.clone(), mname.to_string()))
                        .or_insert(base + off);
                }
            }
        }
        Ok(out)
    }

    /// The value of enumerator `name` (asked for in `parse_names`).
    pub fn enumerator(&self, name: &str) -> Option<u32> {
        self.enumerators.get(name).copied()
    }

    /// The type id of function `name` (asked for in `parse_names`).
    pub fn function(&self, name: &str) -> Option<u32> {
        self.functions.get(name).copied()
    }

    /// The byte offset of `member` in `struct name`.
    pub fn get(&self, name: &str, member: &str) -> Option<u32> {
        self.members
            .get(&(name.to_string(), member.to_string()))
            .copied()
    }
}

/// The kernel's BTF, read and parsed once for every struct member the
/// probes need (the tgid, exit, main-stack and return-chain offsets each
/// read and parsed the 5-6 MB file on their own, four times per attach).
pub struct KernelBtf(StructOffsets);

/// The structs whose member offsets the probes use.
const PROBE_STRUCTS: [&str; 6] = [
    "task_struct",
    "thread_struct",
    "signal_struct",
    "mm_struct",
    "uprobe_task",
    "return_instance",
];

impl KernelBtf {
    /// Reads `/sys/kernel/btf/vmlinux`; `None` without it.
    pub fn read() -> Option<KernelBtf> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
        Self::from_btf(&data)
    }

    pub fn from_btf(data: &[u8]) -> Option<KernelBtf> {
        StructOffsets::parse(data, &PROBE_STRUCTS)
            .ok()
            .map(KernelBtf)
    }

    /// task_struct.tgid (the fork tracepoint reads the child's process id
    /// with it).
    pub fn task_tgid(&self) -> Option<u32> {
        self.0.get("task_struct", "tgid")
    }

    /// task_struct.signal and signal_struct.live (the exit tracepoint
    /// tells a process's last thread by them).
    pub fn exit(&self) -> Option<(u32, u32)> {
        Some((
            self.0.get("task_struct", "signal")?,
            self.0.get("signal_struct", "live")?,
        ))
    }

    /// task_struct.mm and mm_struct.start_stack (a main thread's samples
    /// copy its stack up to there until its end is learned).
    pub fn main_stack(&self) -> Option<(u32, u32)> {
        Some((
            self.0.get("task_struct", "mm")?,
            self.0.get("mm_struct", "start_stack")?,
        ))
    }

    /// The offset of a task's user `fsbase` in task_struct (task_struct.thread
    /// plus thread_struct.fsbase): a glibc thread's control block, which
    /// glibc puts at the top of the thread's stack mapping, above its stack.
    pub fn task_fsbase(&self) -> Option<u32> {
        Some(self.0.get("task_struct", "thread")? + self.0.get("thread_struct", "fsbase")?)
    }

    /// The offsets of the pending-uretprobe chain.
    pub fn return_chain(&self) -> Option<ReturnChainOffsets> {
        let s = &self.0;
        Some(ReturnChainOffsets {
            task_utask: s.get("task_struct", "utask")?,
            utask_instances: s.get("uprobe_task", "return_instances")?,
            ri_orig_ret: s.get("return_instance", "orig_ret_vaddr")?,
            ri_stack: s.get("return_instance", "stack")?,
            ri_next: s.get("return_instance", "next")?,
        })
    }
}

/// What attaching allocator entry points as uprobe sessions (kernel 6.13+)
/// needs from the kernel: the attach type's value and the type id of the
/// kfunc `bpf_session_is_return`. `None` on a kernel without them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionSupport {
    pub attach_type: u32,
    pub is_return_kfunc: u32,
}

impl SessionSupport {
    /// Reads them from `/sys/kernel/btf/vmlinux`.
    pub fn from_kernel() -> Option<SessionSupport> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
        Self::from_btf(&data)
    }

    pub fn from_btf(data: &[u8]) -> Option<SessionSupport> {
        let s = StructOffsets::parse_names(
            data,
            &[],
            &["BPF_TRACE_UPROBE_SESSION", "bpf_session_is_return"],
        )
        .ok()?;
        Some(SessionSupport {
            attach_type: s.enumerator("BPF_TRACE_UPROBE_SESSION")?,
            is_return_kfunc: s.function("bpf_session_is_return")?,
        })
    }
}

/// Offsets the eBPF side needs to walk a thread's pending uretprobes:
/// task_struct.utask → uprobe_task.return_instances → return_instance
/// {orig_ret_vaddr, stack, next}. `None` when the kernel's BTF lacks any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReturnChainOffsets {
    pub task_utask: u32,
    pub utask_instances: u32,
    pub ri_orig_ret: u32,
    pub ri_stack: u32,
    pub ri_next: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with one struct `s { int a; long b; }` and its int types.
    fn tiny_btf() -> Vec<u8> {
        let strings = b"\0s\0a\0b\0int\0".to_vec();
        let mut types = Vec::new();
        let push = |t: &mut Vec<u8>, v: u32| t.extend_from_slice(&v.to_le_bytes());
        // [1] int: name "int"(7), kind INT, size 4, + encoding word.
        push(&mut types, 7);
        push(&mut types, 1 << 24);
        push(&mut types, 4);
        push(&mut types, 32);
        // [2] struct s, 2 members, size 16.
        push(&mut types, 1);
        push(&mut types, (4 << 24) | 2);
        push(&mut types, 16);
        for (name, off_bits) in [(3u32, 0u32), (5, 64)] {
            push(&mut types, name);
            push(&mut types, 1);
            push(&mut types, off_bits);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.push(1);
        b.push(0);
        push(&mut b, 24);
        push(&mut b, 0);
        push(&mut b, types.len() as u32);
        push(&mut b, types.len() as u32);
        push(&mut b, strings.len() as u32);
        b.extend_from_slice(&types);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn member_offsets_in_bytes() {
        let s = StructOffsets::parse(&tiny_btf(), &["s"]).expect("parse");
        assert_eq!(s.get("s", "a"), Some(0));
        assert_eq!(s.get("s", "b"), Some(8));
        assert_eq!(s.get("s", "c"), None);
    }

    #[test]
    fn garbage_and_truncation_are_errors() {
        assert_eq!(
            StructOffsets::parse(b"nope", &[]).err(),
            Some(BtfError::Header)
        );
        let b = tiny_btf();
        for cut in 0..b.len() {
            // Never panics; a cut inside the sections is a header error.
            let _ = StructOffsets::parse(&b[..cut], &["s"]);
        }
    }

    #[test]
    fn running_kernel_has_the_return_chain() {
        match std::fs::read("/sys/kernel/btf/vmlinux") {
            Ok(data) => {
                let o = KernelBtf::from_btf(&data)
                    .and_then(|k| k.return_chain())
                    .expect("uprobe structs in vmlinux BTF");
                assert_ne!(o.ri_orig_ret, o.ri_next);
            }
            Err(_) => crate::testing::skip("no /sys/kernel/btf/vmlinux"),
        }
    }

    #[test]
    fn running_kernel_names_a_tasks_fsbase() {
        match std::fs::read("/sys/kernel/btf/vmlinux") {
            Ok(_) => {
                let off = KernelBtf::read()
                    .and_then(|k| k.task_fsbase())
                    .expect("task_struct.thread.fsbase");
                let thread = KernelBtf::read()
                    .and_then(|k| k.0.get("task_struct", "thread"))
                    .expect("task_struct.thread");
                assert!(off > thread, "fsbase is not thread_struct's first member");
            }
            Err(_) => crate::testing::skip("no /sys/kernel/btf/vmlinux"),
        }
    }

    #[test]
    fn running_kernel_names_the_main_stack_start() {
        match std::fs::read("/sys/kernel/btf/vmlinux") {
            Ok(_) => {
                let (mm, start) = KernelBtf::read()
                    .and_then(|k| k.main_stack())
                    .expect("task_struct.mm, mm_struct.start_stack");
                assert!(mm > 0 && start > 0);
            }
            Err(_) => crate::testing::skip("no /sys/kernel/btf/vmlinux"),
        }
    }

    #[test]
    fn running_kernel_has_uprobe_sessions() {
        // This machine kind runs 6.18; uprobe sessions came in 6.13.
        match std::fs::read("/sys/kernel/btf/vmlinux") {
            Ok(data) => {
                let s = SessionSupport::from_btf(&data).expect("uprobe session support in BTF");
                // enum bpf_attach_type: BPF_TRACE_UPROBE_MULTI is 48, sessions come later.
                assert!(s.attach_type > super::super::multi::BPF_TRACE_UPROBE_MULTI);
                assert!(s.is_return_kfunc > 0);
            }
            Err(_) => crate::testing::skip("no /sys/kernel/btf/vmlinux"),
        }
    }
}
