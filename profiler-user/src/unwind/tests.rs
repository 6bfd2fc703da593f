//! The unwinder on stack snapshots recorded by a fixture built without frame
//! pointers (tests/fixtures/unwind_snapshot.c), symbolized by name.

use std::path::{Path, PathBuf};

use std::process::Command;

use super::*;
use crate::process::maps::FileOffset;
use crate::profile::Frame;
use crate::symbolize::{ModuleAddr, ModuleSource, Symbolizer};

struct Identity;
impl ModulePaths for Identity {
    fn open_path(&self, _: &MemoryMap, region: &crate::process::maps::Region) -> Option<PathBuf> {
        region.path.as_ref().map(PathBuf::from)
    }
}

struct Snapshot {
    regs: Regs,
    stack: Vec<u8>,
    maps: MemoryMap,
}

/// Builds the fixture with `flags` and records one snapshot.
fn record(flags: &[&str], tag: &str) -> Snapshot {
    let dir = std::env::temp_dir().join(format!("heapscope-unwind-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/unwind_snapshot.c");
    let bin = dir.join("unwind_snapshot");
    let ok = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc")
        .success();
    assert!(ok, "compiling {}", src.display());
    let prefix = dir.join("rec");
    let ok = Command::new(&bin)
        .arg(&prefix)
        .status()
        .expect("run fixture")
        .success();
    assert!(ok, "fixture failed");
    let snap = std::fs::read(prefix.with_extension("snap")).expect("snapshot");
    let word = |i: usize| u64::from_le_bytes(snap[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let len = word(3) as usize;
    let maps = std::fs::read_to_string(prefix.with_extension("maps")).expect("maps");
    Snapshot {
        regs: Regs {
            ip: word(0),
            sp: word(1),
            bp: word(2),
        },
        stack: snap[32..32 + len].to_vec(),
        maps: MemoryMap::parse(&maps).expect("parse maps"),
    }
}

/// The function owning each address (the outermost frame when inlined
/// functions expand it).
fn names(frames: &[u64], maps: &MemoryMap) -> Vec<String> {
    let mut sym = Symbolizer::default();
    frames
        .iter()
        .map(|&ip| match maps.lookup(RuntimeAddr(ip)) {
            Some((region, FileOffset(off))) => {
                let path = region.path.clone().unwrap_or_default();
                let source = ModuleSource::from_path(path);
                sym.symbolize(&source, ModuleAddr::ret(off))
                    .into_frames()
                    .first()
                    .map(Frame::label)
                    .unwrap_or_default()
            }
            None => "?".into(),
        })
        .collect()
}

fn assert_chain(names: &[String]) {
    let want = ["level3", "level2", "level1", "main"];
    let pos: Vec<Option<usize>> = want
        .iter()
        .map(|w| names.iter().position(|n| n == w))
        .collect();
    for (w, p) in want.iter().zip(&pos) {
        assert!(p.is_some(), "{w} missing from {names:?}");
    }
    let pos: Vec<usize> = pos.into_iter().flatten().collect();
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "out of order: {names:?}"
    );
    assert_eq!(pos[0], 0, "the leaf is the sampled caller: {names:?}");
}

#[test]
fn unwinds_without_frame_pointers_through_main() {
    let s = record(&["-O2", "-g", "-fomit-frame-pointer"], "nofp");
    let mut u = Unwinder::default();
    let (frames, stop) = u.unwind(s.regs, &s.stack, &[], &s.maps, &Identity);
    let n = names(&frames, &s.maps);
    assert_chain(&n);
    // libc's CFI carries the walk to _start, whose return address is undefined.
    assert_eq!(stop, UnwindStop::Complete, "{n:?}");
}

#[test]
fn pie_and_non_pie_agree() {
    for (flags, tag) in [
        (&["-O2", "-fomit-frame-pointer", "-no-pie"][..], "nopie"),
        (&["-O1", "-fomit-frame-pointer", "-fpie", "-pie"][..], "pie"),
    ] {
        let s = record(flags, tag);
        let (frames, _) = Unwinder::default().unwind(s.regs, &s.stack, &[], &s.maps, &Identity);
        assert_chain(&names(&frames, &s.maps));
    }
}

#[test]
fn truncated_copy_stops_cleanly() {
    let s = record(&["-O2", "-fomit-frame-pointer"], "trunc");
    let mut u = Unwinder::default();
    let (frames, stop) = u.unwind(s.regs, &s.stack[..16], &[], &s.maps, &Identity);
    assert!(!frames.is_empty() && frames.len() < 4, "{frames:?}");
    assert_eq!(stop, UnwindStop::StackCopyExhausted);
}

#[test]
fn unknown_module_stops_without_panic() {
    let maps = MemoryMap::parse("").expect("empty maps");
    let regs = Regs {
        ip: 0x1234,
        sp: 0x1000,
        bp: 0,
    };
    let (frames, stop) = Unwinder::default().unwind(regs, &[0u8; 64], &[], &maps, &Identity);
    assert_eq!(frames, vec![0x1234]);
    assert_eq!(stop, UnwindStop::NoModule);
}

#[test]
fn trampoline_return_addresses_are_mapped_back() {
    let s = record(&["-O2", "-fomit-frame-pointer"], "tramp");
    let (frames, _) = Unwinder::default().unwind(s.regs, &s.stack, &[], &s.maps, &Identity);
    // Replace level2's return address into level1 on the stack copy, as a
    // pending uretprobe on level2 would have.
    let real = frames[2];
    let off = s
        .stack
        .chunks_exact(8)
        .position(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")) == real)
        .expect("return address on the copied stack")
        * 8;
    let mut stack = s.stack.clone();
    let trampoline = 0x7fff_ffff_e000u64;
    stack[off..off + 8].copy_from_slice(&trampoline.to_le_bytes());
    let slot = s.regs.sp + off as u64;

    let (broken, _) = Unwinder::default().unwind(s.regs, &stack, &[], &s.maps, &Identity);
    assert!(
        !names(&broken, &s.maps).contains(&"main".to_string()),
        "the trampoline breaks the walk"
    );

    let pending = [PendingReturn { slot, ret: real }];
    let (fixed, stop) = Unwinder::default().unwind(s.regs, &stack, &pending, &s.maps, &Identity);
    assert_eq!(fixed, frames, "mapped back to the real return address");
    assert_eq!(stop, UnwindStop::Complete);
}
