//! A synthetic profile shared by the view tests, and golden-file comparison.

use std::path::PathBuf;

use crate::profile::{Frame, LiveHeap, Profile, Site, SiteStats, Totals};

fn f(name: &str) -> Frame {
    Frame::function(name, "app")
}

fn at(name: &str, file: &str, line: u32, inlined: bool) -> Frame {
    Frame::Function {
        name: name.into(),
        module: "app".into(),
        file: Some(file.into()),
        line: Some(line),
        inlined,
        pc: None,
    }
}

fn stats(live_bytes: u64, live_count: u64, alloc_bytes: u64, alloc_count: u64) -> SiteStats {
    SiteStats {
        live_bytes,
        live_count,
        alloc_bytes,
        alloc_count,
        ..Default::default()
    }
}

/// A profile exercising merging, unknown frames, empty stacks, labels with
/// spaces and `;`, deep stacks, zero-live sites and lost events.
pub(crate) fn sample_profile() -> Profile {
    let base = || vec![f("main"), f("run_sites")];
    let with = |extra: &[Frame]| {
        let mut v = base();
        v.extend_from_slice(extra);
        v
    };
    Profile {
        pid: 4242,
        comm: "leaky".into(),
        duration_secs: 12.5,
        sites: vec![
            Site {
                pid: 0,
                frames: with(&[f("leak_malloc")]).into(),
                api: "malloc",
                stats: stats(6000, 6, 6000, 6),
            },
            // A second raw stack that symbolizes identically: merged with the first.
            Site {
                pid: 0,
                frames: with(&[f("leak_malloc")]).into(),
                api: "malloc",
                stats: stats(4000, 4, 5000, 5),
            },
            Site {
                pid: 0,
                frames: with(&[f(
                    "std::vector<int, std::allocator<int> >::push_back(int const&)",
                )])
                .into(),
                api: "realloc",
                stats: stats(1_258_291, 1, 2_000_000, 3),
            },
            Site {
                pid: 0,
                frames: with(&[Frame::Unknown {
                    module: "libplugin.so".into(),
                    offset: 0x1234,
                    pc: None,
                }])
                .into(),
                api: "calloc",
                stats: stats(512, 2, 1024, 4),
            },
            Site {
                pid: 0,
                frames: vec![].into(),
                api: "mmap",
                stats: stats(1 << 20, 1, 1 << 20, 1),
            },
            Site {
                pid: 0,
                frames: with(&[f("a;b"), f("deep1"), f("deep2"), f("deep3"), f("deep4")]).into(),
                api: "malloc",
                stats: stats(100, 1, 100, 1),
            },
            // Everything it allocated was freed: in alloc views, not in live ones.
            Site {
                pid: 0,
                frames: with(&[f("transient")]).into(),
                api: "malloc",
                stats: stats(0, 0, 9000, 90),
            },
        ],
        totals: Totals {
            allocs: 110,
            alloc_bytes: 3_065_700,
            frees: 95,
            free_bytes: 803_000,
            frees_unknown: 3,
            stack_failed: 2,
            nested: 7,
            alloc_failed: 1,
            untracked_unmaps: 4,
            // Fields added later default to 0 here.
            ..Totals::default()
        },
        live_heap: LiveHeap {
            bytes: 2_262_700,
            blocks: 15,
        },
        sample_rate: 0,
        allocator: "allocator: glibc 2.36, the C library's; 22 entry points".into(),
        allocator_notes: Vec::new(),
        processes: Vec::new(),
    }
}

/// A profile with source locations and an inlined frame, as DWARF gives
/// them, for the `--lines` renderings: two call sites of one function at
/// different lines, a frame without DWARF, and an unknown frame.
pub(crate) fn sample_profile_with_lines() -> Profile {
    let main = || at("main", "/src/leaks.c", 170, false);
    Profile {
        pid: 4243,
        comm: "leaky".into(),
        duration_secs: 2.0,
        sites: vec![
            Site {
                pid: 0,
                frames: vec![
                    main(),
                    at("leak_mmap", "/src/leaks.c", 82, false),
                    at("map_anon", "/src/leaks.c", 78, true),
                ]
                .into(),
                api: "mmap",
                stats: stats(36864, 3, 36864, 3),
            },
            Site {
                pid: 0,
                frames: vec![main(), at("leak_malloc", "/src/leaks.c", 37, false)].into(),
                api: "malloc",
                stats: stats(10000, 10, 10000, 10),
            },
            Site {
                pid: 0,
                frames: vec![main(), at("leak_malloc", "/src/leaks.c", 38, false)].into(),
                api: "malloc",
                stats: stats(500, 1, 500, 1),
            },
            Site {
                pid: 0,
                frames: vec![
                    Frame::Unknown {
                        module: "libc.so.6".into(),
                        offset: 0x2724a,
                        pc: None,
                    },
                    f("no_dwarf_here"),
                ]
                .into(),
                api: "calloc",
                stats: stats(64, 1, 64, 1),
            },
        ],
        totals: Totals {
            allocs: 15,
            alloc_bytes: 47428,
            ..Totals::default()
        },
        live_heap: LiveHeap {
            bytes: 47428,
            blocks: 15,
        },
        sample_rate: 0,
        allocator: String::new(),
        allocator_notes: Vec::new(),
        processes: Vec::new(),
    }
}

/// Compares `actual` with `tests/golden/<name>`, rewriting the file instead
/// when `HEAPSCOPE_BLESS=1`.
pub(crate) fn check_golden(name: &str, actual: &str) {
    // The viewer script inferno embeds (hundreds of lines, not ours) would
    // drown every diff of an SVG golden: it is left out of the comparison.
    let stripped;
    let actual = if name.ends_with(".svg") {
        stripped = without_script(actual);
        stripped.as_str()
    } else {
        actual
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
        .join(name);
    if std::env::var("HEAPSCOPE_BLESS").as_deref() == Ok("1") {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create golden dir");
        }
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (run with HEAPSCOPE_BLESS=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (run with HEAPSCOPE_BLESS=1 to update)\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

/// `svg` with the body of every `<script>` element replaced by a marker.
fn without_script(svg: &str) -> String {
    let mut out = String::with_capacity(svg.len());
    let mut rest = svg;
    while let Some(start) = rest.find("<script") {
        let Some(len) = rest[start..].find("</script>") else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str("<script><!-- inferno's viewer script, not compared --></script>");
        rest = &rest[start + len + "</script>".len()..];
    }
    out.push_str(rest);
    out
}
