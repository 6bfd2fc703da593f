//! Module identities and file offsets beside frames ([`Pc`]): written as
//! extra tagged fields of a frame, so files of either age read in either
//! direction.

use std::path::PathBuf;
use std::sync::Arc;

use super::format::{decode_site, encode_site};
use super::open;
use crate::profile::{Frame, ModuleId, Pc};
use crate::timeline::testutil::{frame, frame_src, frame_unknown};
use crate::timeline::{SiteId, SiteInfo};

fn with_pcs() -> SiteInfo {
    let exe = Arc::new(ModuleId {
        path: "/usr/bin/leaky".into(),
        build_id: vec![0x12, 0x34, 0xab],
    });
    let lib = Arc::new(ModuleId {
        path: "/opt/lib/libplugin.so".into(),
        build_id: Vec::new(),
    });
    let pc = |m: &Arc<ModuleId>, offset, address| {
        Some(Pc {
            module: Arc::clone(m),
            offset,
            address,
        })
    };
    SiteInfo {
        pid: 0,
        frames: vec![
            frame("main").with_pc(pc(&exe, 0x1180, 0x5600_0000_1180)),
            frame_src("push", "/src/v.h", 42, true).with_pc(pc(&exe, 0x1180, 0x5600_0000_1180)),
            frame_unknown("libplugin.so", 0x1234).with_pc(pc(&lib, 0x1234, 0)),
        ]
        .into(),
        api: "realloc",
    }
}

fn without_pcs(info: &SiteInfo) -> SiteInfo {
    SiteInfo {
        pid: 0,
        frames: info
            .frames
            .iter()
            .cloned()
            .map(|f| f.with_pc(None))
            .collect(),
        api: info.api,
    }
}

#[test]
fn pcs_round_trip() {
    let info = with_pcs();
    let (id, back) = decode_site(&encode_site(SiteId(7), &info)).expect("decode");
    assert_eq!(id, SiteId(7));
    assert_eq!(back, info);
    let pc = back.frames[0].pc().expect("pc");
    assert_eq!(pc.module.build_id_hex(), "1234ab");
}

/// Drops the fields a reader of the first format did not know (tags above
/// 6) from a site payload, as that reader's field loop skips them.
fn strip_new_fields(payload: &[u8]) -> Vec<u8> {
    fn varint(b: &[u8], at: &mut usize) -> u64 {
        let mut v = 0;
        let mut shift = 0;
        loop {
            let x = b[*at];
            *at += 1;
            v |= u64::from(x & 0x7f) << shift;
            if x & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
    fn put(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut at = 0;
    let mut out = Vec::new();
    let id = varint(payload, &mut at);
    put(&mut out, id);
    let api_len = varint(payload, &mut at) as usize;
    put(&mut out, api_len as u64);
    out.extend_from_slice(&payload[at..at + api_len]);
    at += api_len;
    let frames = varint(payload, &mut at);
    put(&mut out, frames);
    for _ in 0..frames {
        out.push(payload[at]);
        at += 1;
        let n = varint(payload, &mut at);
        let mut kept = Vec::new();
        for _ in 0..n {
            let tag = payload[at];
            at += 1;
            let len = varint(payload, &mut at) as usize;
            if tag <= 6 {
                kept.push((tag, payload[at..at + len].to_vec()));
            }
            at += len;
        }
        put(&mut out, kept.len() as u64);
        for (tag, v) in kept {
            out.push(tag);
            put(&mut out, v.len() as u64);
            out.extend_from_slice(&v);
        }
    }
    // The trailing pid (not a frame field) stays.
    out.extend_from_slice(&payload[at..]);
    out
}

#[test]
fn an_old_reader_sees_the_same_site_without_pcs() {
    let info = with_pcs();
    let old_view = strip_new_fields(&encode_site(SiteId(1), &info));
    assert_eq!(old_view, encode_site(SiteId(1), &without_pcs(&info)));
}

#[test]
fn a_file_written_before_pcs_reads_with_none() {
    let golden =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/recording_v1_before_pids.bin");
    let rec = open(&golden).expect("open the old-format golden recording");
    let frames: Vec<&Frame> = rec
        .timeline
        .sites()
        .iter()
        .flat_map(|s| s.frames.iter())
        .collect();
    assert!(!frames.is_empty());
    assert!(frames.iter().all(|f| f.pc().is_none()));
}
