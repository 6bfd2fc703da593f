//! Damaged and crafted recordings through the real binary: memory stays
//! within a small multiple of the file size (peak RSS of `heapscope report`),
//! damage in the middle is reported with a non-zero exit unless
//! `--allow-damaged`, and a file without an end record says so. No root needed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use heapscope::record::format::{self, Header};
use heapscope::record::Writer;
use heapscope::timeline::{SiteId, SiteInfo, Tick};

use common::*;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn header_bytes() -> Vec<u8> {
    let mut out = format::MAGIC.to_vec();
    out.extend(format::VERSION.to_le_bytes());
    let h = Header {
        pid: 7,
        comm: "crafted".into(),
        tick_ms: 1000,
        heapscope_version: "0".into(),
        ..Header::default()
    };
    format::frame_record(format::TYPE_HEADER, &format::encode_header(&h), &mut out);
    out
}

fn site_payload(id: u64, frames: u64, frame: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    put_varint(&mut p, id);
    put_varint(&mut p, 6);
    p.extend(b"malloc");
    put_varint(&mut p, frames);
    for _ in 0..frames {
        p.extend(frame);
    }
    p
}

/// Sites of `frame` repeated (the smallest frames a decoder accepts), up to
/// `size` bytes, and a tick where each has a live block (so views run on them).
fn sites_of(frame: &[u8], size: usize) -> Vec<u8> {
    let mut out = header_bytes();
    let mut id = 0;
    while out.len() < size {
        let p = site_payload(id, 100_000, frame);
        format::frame_record(format::TYPE_SITE, &p, &mut out);
        id += 1;
    }
    let mut p = Vec::new();
    put_varint(&mut p, 1000);
    put_varint(&mut p, 0);
    p.push(0);
    put_varint(&mut p, id);
    for i in 0..id {
        put_varint(&mut p, i);
        p.extend([1, 1, 1, 1]);
    }
    format::frame_record(format::TYPE_TICK, &p, &mut out);
    out
}

/// 65,536 empty sites, then ticks changing every one of them, up to `size` bytes.
fn wide_ticks(size: usize) -> Vec<u8> {
    let mut out = header_bytes();
    let sites = 65_536u64;
    for id in 0..sites {
        format::frame_record(format::TYPE_SITE, &site_payload(id, 0, &[]), &mut out);
    }
    let mut t = 0u64;
    while out.len() < size {
        let mut p = Vec::new();
        put_varint(&mut p, t);
        put_varint(&mut p, 0);
        p.push(0);
        put_varint(&mut p, sites);
        for id in 0..sites {
            put_varint(&mut p, id);
            for v in [1 + t % 2, 0, 0, 0] {
                put_varint(&mut p, v);
            }
        }
        format::frame_record(format::TYPE_TICK, &p, &mut out);
        t += 1;
    }
    out
}

/// Records that each claim 60 MiB, up to `size` bytes.
fn huge_claims(size: usize) -> Vec<u8> {
    let mut out = header_bytes();
    while out.len() < size {
        out.extend((60u32 << 20).to_le_bytes());
        out.push(format::TYPE_TICK);
        out.extend([0x80u8; 4091]);
    }
    out
}

fn scratch_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write crafted file");
    p
}

/// Runs heapscope with `args`; (exit code, stderr, peak RSS in bytes).
// The child is reaped by `wait4` (for its rusage), not by `Child::wait`.
#[allow(clippy::zombie_processes)]
fn run_measured(args: &[&str]) -> (Option<i32>, String, u64) {
    let child = Command::new(heapscope())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("heapscope");
    let pid = child.id() as libc::pid_t;
    let out = child.stderr;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut e) = out {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `status` and `usage` are valid out-pointers; the child is ours
    // and not waited for elsewhere (`child` is not used after this).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let stderr = reader.join().expect("stderr reader");
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    (code, stderr, usage.ru_maxrss as u64 * 1024)
}

/// A small valid recording: three sites, a tick each second, an end.
fn valid(finish: bool) -> Vec<u8> {
    let header = Header {
        pid: 7,
        comm: "valid".into(),
        tick_ms: 1000,
        heapscope_version: "0".into(),
        ..Header::default()
    };
    let mut w = Writer::new(Vec::new(), Path::new("v"), &header).expect("writer");
    for name in ["a", "b", "c"] {
        w.site(&SiteInfo {
            pid: 7,
            frames: vec![heapscope::profile::Frame::function(name, "app")].into(),
            api: "malloc",
        })
        .expect("site");
    }
    for t in 0..20u64 {
        let sites = (0..3)
            .map(|i| {
                let s = heapscope::profile::SiteStats {
                    live_bytes: 100 * t + i,
                    live_count: t,
                    alloc_bytes: 200 * t,
                    alloc_count: 2 * t,
                    ..Default::default()
                };
                (SiteId(i as u32), s)
            })
            .collect();
        w.tick(&Tick {
            t_ms: 1000 * t,
            sites,
            totals: Default::default(),
            mem: None,
            arenas: Vec::new(),
        })
        .expect("tick");
    }
    if finish {
        w.finish(20_000).expect("finish")
    } else {
        w.into_inner().expect("flush")
    }
}

#[test]
fn crafted_recordings_take_memory_bounded_by_their_size() {
    let dir = scratch("crafted");
    let small = scratch_file(&dir, "small.heapscope", &valid(true));
    let (code, stderr, base_rss) = run_measured(&["report", small.to_str().expect("utf8")]);
    assert_eq!(code, Some(0), "{stderr}");
    let size = 12 << 20;
    let cases: [(&str, Vec<u8>); 4] = [
        // Function frames with an empty name: 4 bytes each.
        ("tiny-frames", sites_of(&[0, 1, 1, 0], size)),
        // Frames with a module identity (one shared module each) and an offset.
        ("pc-frames", sites_of(&[0, 3, 1, 0, 7, 0, 9, 1, 0], size)),
        ("wide-ticks", wide_ticks(size)),
        ("huge-claims", huge_claims(size)),
    ];
    for (name, bytes) in cases {
        let len = bytes.len() as u64;
        let path = scratch_file(&dir, name, &bytes);
        drop(bytes);
        let (code, stderr, rss) = run_measured(&["report", path.to_str().expect("utf8")]);
        let used = rss.saturating_sub(base_rss);
        eprintln!(
            "{name}: {} MiB file, exit {code:?}, peak RSS {} MiB above a small file's ({} MiB): {:.1}x",
            len >> 20,
            used >> 20,
            base_rss >> 20,
            used as f64 / len as f64
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(matches!(code, Some(0..=2)), "{name}: {code:?} {stderr}");
        assert!(
            used <= 16 * len,
            "{name}: {} MiB for a {} MiB file",
            used >> 20,
            len >> 20
        );
    }
    if std::env::var_os("HEAPSCOPE_KEEP_CRAFTED").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Start offsets of the records of a valid file.
fn record_starts(b: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = format::FILE_HEADER_LEN;
    while at + 5 <= b.len() {
        out.push(at);
        let len = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize;
        at += 9 + len;
    }
    out
}

fn report(path: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(heapscope())
        .arg("report")
        .arg(path)
        .args(extra)
        .output()
        .expect("heapscope report");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn damage_mid_file_is_reported_with_a_non_zero_exit() {
    let dir = scratch("damaged");
    let bytes = valid(true);
    let starts = record_starts(&bytes);
    // One flipped bit in the length of the tenth record (a tick).
    let at = starts[10];
    let mut b = bytes.clone();
    b[at + 1] ^= 0x04;
    let path = scratch_file(&dir, "flipped.heapscope", &b);
    let (code, stdout, stderr) = report(&path, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!("damaged at byte {at}"))
            && stderr.contains("1 record skipped")
            && stderr.contains("--allow-damaged"),
        "{stderr}"
    );
    let (code, stdout, stderr) = report(&path, &["--allow-damaged"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("live heap"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "warning: {} is damaged at byte {at}",
            path.display()
        )),
        "{stderr}"
    );
    // The ticks after the damage are read: the last one's (19 s) live bytes.
    assert!(
        stdout.contains("19.0s") && stdout.contains("      1902      19"),
        "{stdout}"
    );
    for cmd in [
        vec!["export", "--format", "folded"],
        vec!["diff", "--baseline", "0s..5s", "--window", "10s.."],
    ] {
        let out = Command::new(heapscope())
            .arg(cmd[0])
            .arg(&path)
            .args(&cmd[1..])
            .output()
            .expect("heapscope");
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_recording_without_an_end_record_says_the_profiler_was_killed() {
    let dir = scratch("no-end");
    let path = scratch_file(&dir, "killed.heapscope", &valid(false));
    let (code, _, stderr) = report(&path, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("has no end record: the profiler was killed"),
        "{stderr}"
    );
    let clean = scratch_file(&dir, "clean.heapscope", &valid(true));
    let (code, _, stderr) = report(&clean, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("end record"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
