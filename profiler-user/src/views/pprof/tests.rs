//! The pprof view against a golden text dump of the decoded protobuf.

use std::io::Read;
use std::sync::Arc;

use super::*;
use crate::profile::{physical_frames, Pc, Site, SiteStats};
use crate::views::testdata::{check_golden, sample_profile};

/// A decoded field: varint or length-delimited bytes.
enum Value {
    Int(u64),
    Bytes(Vec<u8>),
}

fn varint(buf: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let b = buf[*pos];
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// Decodes one message into (field, value) pairs, in order.
fn fields(buf: &[u8]) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = varint(buf, &mut pos);
        match key & 7 {
            0 => out.push((key >> 3, Value::Int(varint(buf, &mut pos)))),
            2 => {
                let len = varint(buf, &mut pos) as usize;
                out.push((key >> 3, Value::Bytes(buf[pos..pos + len].to_vec())));
                pos += len;
            }
            w => panic!("wire type {w} is not used by profile.proto"),
        }
    }
    out
}

fn packed(b: &[u8]) -> Vec<i64> {
    let mut pos = 0;
    let mut v = Vec::new();
    while pos < b.len() {
        v.push(varint(b, &mut pos) as i64);
    }
    v
}

/// A text dump of `profile.proto` bytes: one line per message, strings
/// resolved through the string table (shown as `"text"`).
fn dump(buf: &[u8]) -> String {
    let top = fields(buf);
    let strings: Vec<String> = top
        .iter()
        .filter(|(f, _)| *f == 6)
        .map(|(_, v)| match v {
            Value::Bytes(b) => String::from_utf8(b.clone()).expect("utf-8"),
            Value::Int(_) => panic!("string as varint"),
        })
        .collect();
    let s = |v: &Value| match v {
        Value::Int(i) => format!("{:?}", strings[*i as usize]),
        Value::Bytes(_) => panic!("string index as bytes"),
    };
    let int = |v: &Value| match v {
        Value::Int(i) => (*i as i64).to_string(),
        Value::Bytes(b) => format!("{:?}", packed(b)),
    };
    // Per message type: which fields are string indexes, and sub-messages.
    let sub =
        |name: &str, b: &[u8], strs: &[u64], nested: &dyn Fn(u64, &[u8]) -> Option<String>| {
            let parts: Vec<String> = fields(b)
                .iter()
                .map(|(f, v)| match v {
                    Value::Bytes(inner) if nested(*f, inner).is_some() => {
                        format!("{f}={}", nested(*f, inner).unwrap_or_default())
                    }
                    _ if strs.contains(f) => format!("{f}={}", s(v)),
                    _ => format!("{f}={}", int(v)),
                })
                .collect();
            format!("{name} {{{}}}", parts.join(" "))
        };
    let none = |_: u64, _: &[u8]| None;
    let mut out = String::new();
    for (f, v) in &top {
        let b = match v {
            Value::Bytes(b) => b.as_slice(),
            Value::Int(_) => &[],
        };
        let line = match f {
            1 => sub("sample_type", b, &[1, 2], &none),
            2 => sub("sample", b, &[], &|f, inner| {
                (f == 3).then(|| sub("label", inner, &[1, 2], &none))
            }),
            3 => sub("mapping", b, &[5, 6], &none),
            4 => sub("location", b, &[], &|f, inner| {
                (f == 4).then(|| sub("line", inner, &[], &none))
            }),
            5 => sub("function", b, &[2, 3, 4], &none),
            6 => continue,
            11 => sub("period_type", b, &[1, 2], &none),
            13 => format!(
                "comment {:?}",
                packed(b)
                    .iter()
                    .map(|i| strings[*i as usize].clone())
                    .collect::<Vec<_>>()
            ),
            14 => format!("default_sample_type {}", s(v)),
            f => format!("{f}={}", int(v)),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn opts() -> PprofOptions {
    PprofOptions {
        sample_rate: 524288,
        time_nanos: 1_700_000_000_000_000_000,
        duration_nanos: 12_500_000_000,
        comments: vec!["heapscope: pid 4242 (leaky)".into()],
    }
}

/// The shared sample profile plus frames with module identities: an
/// inlined pair at one address and an unresolved frame of a stripped library.
fn profile_with_pcs() -> Profile {
    let mut p = sample_profile();
    let app = Arc::new(ModuleId {
        path: "/usr/bin/app".into(),
        build_id: vec![0xde, 0xad, 0xbe, 0xef],
    });
    let lib = Arc::new(ModuleId {
        path: "/usr/lib/libplugin.so".into(),
        build_id: Vec::new(),
    });
    let pc = |m: &Arc<ModuleId>, offset: u64, address: u64| {
        Some(Pc {
            module: Arc::clone(m),
            offset,
            address,
        })
    };
    let f = |name: &str, line: u32, inlined: bool, at: Option<Pc>| Frame::Function {
        name: name.into(),
        module: "app".into(),
        file: Some("/src/app.c".into()),
        line: Some(line),
        inlined,
        pc: at,
    };
    p.sites.push(Site {
        pid: 0,
        frames: vec![
            f("main", 10, false, pc(&app, 0x1100, 0x5555_0000_1100)),
            f("serve", 20, false, pc(&app, 0x1234, 0x5555_0000_1234)),
            f("cache_put", 30, true, pc(&app, 0x1234, 0x5555_0000_1234)),
            Frame::unknown("libplugin.so", 0x42).with_pc(pc(&lib, 0x42, 0)),
        ]
        .into(),
        api: "calloc",
        stats: SiteStats {
            live_bytes: 4096,
            live_count: 2,
            alloc_bytes: 8192,
            alloc_count: 4,
            ..Default::default()
        },
    });
    p
}

#[test]
fn golden_pprof() {
    check_golden("pprof.txt", &dump(&encode(&opts(), &profile_with_pcs())));
}

#[test]
fn inlined_frames_share_a_location_leaf_first() {
    let text = dump(&encode(&opts(), &profile_with_pcs()));
    // cache_put (inlined) and serve are two lines of one location at
    // app's base + 0x1234, innermost first.
    let loc = text
        .lines()
        .find(|l| l.contains(&format!("3={}", 0x5555_0000_1234u64)))
        .expect("location of serve");
    assert_eq!(loc.matches("line {").count(), 2, "{loc}");
    // The stripped library has a mapping with has_functions unset.
    let lib = text
        .lines()
        .find(|l| l.contains("libplugin.so"))
        .expect("mapping of libplugin.so");
    assert!(!lib.contains(" 7=1"), "{lib}");
    assert!(text.contains("\"deadbeef\""), "{text}");
}

#[test]
fn physical_frames_group_inlined_callees() {
    let a = Frame::function("a", "m");
    let b = Frame::function("b", "m");
    let inl = Frame::Function {
        name: "i".into(),
        module: "m".into(),
        file: None,
        line: None,
        inlined: true,
        pc: None,
    };
    let frames = vec![a, inl.clone(), b, inl];
    let groups = physical_frames(&frames);
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0].len(), 2);
    assert_eq!(groups[1].len(), 2);
    assert!(physical_frames(&[]).is_empty());
}

#[test]
fn gzipped_output_decompresses_to_the_encoding() {
    let p = profile_with_pcs();
    let mut gz = Vec::new();
    write_pprof(&opts(), &p, &mut gz).expect("write");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut raw)
        .expect("gunzip");
    assert_eq!(raw, encode(&opts(), &p));
}

#[test]
fn exact_profiles_have_period_one() {
    let o = PprofOptions {
        sample_rate: 0,
        ..opts()
    };
    let text = dump(&encode(&o, &Profile::default()));
    assert!(text.contains("\n12=1\n"), "{text}");
    assert!(
        text.contains("default_sample_type \"inuse_space\""),
        "{text}"
    );
}

#[test]
fn diff_negates_the_baseline() {
    let p = profile_with_pcs();
    let text = dump(&encode_diff(&opts(), &p, &p));
    // Every window sample has its negated twin from the baseline.
    let samples: Vec<&str> = text.lines().filter(|l| l.starts_with("sample {")).collect();
    assert_eq!(samples.len() % 2, 0);
    assert!(text.contains("2=[-6, -6000, -6, -6000]"), "{text}");
    assert!(text.contains("2=[6, 6000, 6, 6000]"), "{text}");
}

#[test]
fn the_process_binary_is_the_first_mapping() {
    // No `main` resolved (a stripped server): the module named like comm leads.
    let lib = Arc::new(ModuleId {
        path: "/usr/lib/libc.so.6".into(),
        build_id: vec![1],
    });
    let exe = Arc::new(ModuleId {
        path: "/usr/bin/memcached".into(),
        build_id: vec![2],
    });
    let at = |m: &Arc<ModuleId>, off: u64| {
        Frame::unknown("x", off).with_pc(Some(Pc {
            module: Arc::clone(m),
            offset: off,
            address: 0,
        }))
    };
    let p = Profile {
        comm: "memcached".into(),
        sites: vec![Site {
            pid: 0,
            frames: vec![at(&lib, 0x10), at(&exe, 0x20)].into(),
            api: "malloc",
            stats: SiteStats {
                live_bytes: 1,
                live_count: 1,
                alloc_bytes: 1,
                alloc_count: 1,
                ..Default::default()
            },
        }],
        ..Profile::default()
    };
    let text = dump(&encode(&opts(), &p));
    let first = text
        .lines()
        .find(|l| l.starts_with("mapping"))
        .expect("mapping");
    assert!(
        first.contains("1=1 ") && first.contains("/usr/bin/memcached"),
        "{text}"
    );
}

#[test]
fn the_comment_says_exact_only_when_nothing_was_lost() {
    let mut p = sample_profile();
    p.sample_rate = 0;
    // A stack that could not be read loses attribution: not exact per site.
    assert!(!Exactness::of(&p).sites_exact());
    p.totals.stack_failed = 0;
    let comment = |p: &Profile| {
        PprofOptions::for_window(0, 2000, 1000, Exactness::of(p), 7, "x").comments[1].clone()
    };
    assert_eq!(comment(&p), "exact: every allocation");
    p.totals.ringbuf_lost = 3;
    assert_eq!(
        comment(&p),
        "every allocation recorded, but not exact: 3 events lost"
    );
}
