//! Planning on the system's libc and on Debian's jemalloc, tcmalloc and
//! mimalloc (installed by `cargo xtask setup`; skipped when absent).

use super::*;

const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";
const JEMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2";
const TCMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4";
const MIMALLOC: &str = "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2";

fn present(paths: &[&str]) -> bool {
    let missing: Vec<&&str> = paths.iter().filter(|p| !Path::new(p).exists()).collect();
    if !missing.is_empty() {
        crate::testing::skip(&format!("{missing:?} not installed"));
    }
    missing.is_empty()
}

fn candidates(list: &[(&str, Linkage)]) -> Vec<Candidate> {
    list.iter()
        .map(|(p, l)| Candidate {
            path: p.to_string(),
            open: PathBuf::from(p),
            linkage: *l,
        })
        .collect()
}

fn none() -> CustomAllocator {
    CustomAllocator::default()
}

fn point<'a>(t: &'a AllocatorTarget, symbol: &str) -> Option<&'a AttachPoint> {
    t.points.iter().find(|p| p.symbol == symbol)
}

#[test]
fn executable_first_libc_last() {
    let files = vec![
        "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
        "/usr/lib/libjemalloc.so.2".to_string(),
        "/usr/bin/server".to_string(),
    ];
    let order = candidate_order(Some("/usr/bin/server"), &files);
    assert_eq!(
        order,
        vec![
            "/usr/bin/server".to_string(),
            "/usr/lib/libjemalloc.so.2".to_string(),
            "/usr/lib/x86_64-linux-gnu/libc.so.6".to_string(),
        ]
    );
    assert_eq!(
        linkage("/usr/lib/libjemalloc.so.2", None, "/x/libjemalloc.so.2"),
        Linkage::Preloaded
    );
    assert_eq!(
        linkage("/usr/lib/libjemalloc.so.2", None, ""),
        Linkage::Linked
    );
    assert_eq!(
        linkage(
            "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10",
            None,
            "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
        ),
        Linkage::Preloaded
    );
}

#[test]
fn glibc_alone() {
    if !present(&[LIBC]) {
        return;
    }
    let t = plan(1, &candidates(&[(LIBC, Linkage::Libc)]), true, &none()).expect("libc target");
    assert!(
        t.headline().starts_with("allocator: glibc 2."),
        "{}",
        t.headline()
    );
    assert!(t.headline().contains("the C library's"));
    for sym in ["malloc", "free", "calloc", "realloc", "mmap", "munmap"] {
        assert!(point(&t, sym).is_some(), "{sym}");
    }
    // libstdc++'s operators call malloc: not probed (not even looked for in libc).
    assert!(t.points.iter().all(|p| !p.symbol.starts_with("_Z")));
    let mut offs: Vec<u64> = t.points.iter().map(|p| p.func_offset).collect();
    offs.sort_unstable();
    offs.dedup();
    assert_eq!(offs.len(), t.points.len(), "aliases must be probed once");
    // The hot entry points get an emulated instruction; glibc's
    // reallocarray (`mul`), munmap (`syscall`) and mremap (`sub %rsp`) are
    // single-stepped, and listed.
    for sym in [
        "malloc",
        "free",
        "calloc",
        "realloc",
        "posix_memalign",
        "memalign",
        "mmap",
    ] {
        assert_eq!(
            point(&t, sym).and_then(|p| p.stepped.clone()),
            None,
            "{sym}"
        );
    }
    let stepped = t.stepped();
    assert!(
        stepped.iter().any(|s| s == "munmap (+0x5 is `syscall`)"),
        "{stepped:?}"
    );
    assert!(t.unseen.is_empty());
}

#[test]
fn jemalloc_preloaded_has_its_own_api_and_cxx() {
    if !present(&[LIBC, JEMALLOC]) {
        return;
    }
    let t = plan(
        1,
        &candidates(&[(JEMALLOC, Linkage::Preloaded), (LIBC, Linkage::Libc)]),
        true,
        &none(),
    )
    .expect("target");
    assert!(
        t.headline()
            .starts_with("allocator: jemalloc 5.3.0, preloaded; "),
        "{}",
        t.headline()
    );
    let jm = PathBuf::from(JEMALLOC);
    for sym in [
        "malloc", "free", "mallocx", "sdallocx", "rallocx", "_Znwm", "_ZdlPvm",
    ] {
        let p = point(&t, sym).unwrap_or_else(|| panic!("{sym} probed"));
        assert_eq!(p.file, jm, "{sym} in jemalloc");
    }
    // jemalloc has no reallocarray/pvalloc: the program's calls reach libc's.
    assert_eq!(
        point(&t, "reallocarray").map(|p| p.file.clone()),
        Some(PathBuf::from(LIBC))
    );
    // `operator delete(void*)` is `jmp free@plt`: counted at free.
    assert!(point(&t, "_ZdlPv").is_none());
    // malloc's probe sits on the `ja` after `cmp $0x1000,%rdi`, size in %rdi.
    let malloc = point(&t, "malloc").expect("malloc");
    assert!(malloc.stepped.is_none());
    assert_eq!(malloc.spec.args[0], 0);
    for sym in [
        "malloc", "free", "calloc", "realloc", "_Znwm", "_ZdlPvm", "sdallocx",
    ] {
        assert_eq!(
            point(&t, sym).and_then(|p| p.stepped.clone()),
            None,
            "{sym}"
        );
    }
}

#[test]
fn tcmalloc_and_mimalloc_preloaded() {
    if !present(&[LIBC, TCMALLOC, MIMALLOC]) {
        return;
    }
    let tc = plan(
        1,
        &candidates(&[(TCMALLOC, Linkage::Preloaded), (LIBC, Linkage::Libc)]),
        true,
        &none(),
    )
    .expect("tcmalloc target");
    assert!(
        tc.headline()
            .starts_with("allocator: tcmalloc 2.10, preloaded"),
        "{}",
        tc.headline()
    );
    assert!(
        point(&tc, "_Znwm").is_some() && point(&tc, "tc_malloc").is_none(),
        "alias of malloc"
    );
    // tcmalloc defines mmap: the program's mmaps reach it.
    assert_eq!(
        point(&tc, "mmap").map(|p| p.file.clone()),
        Some(PathBuf::from(TCMALLOC))
    );

    let mi = plan(
        1,
        &candidates(&[(MIMALLOC, Linkage::Preloaded), (LIBC, Linkage::Libc)]),
        true,
        &none(),
    )
    .expect("mimalloc target");
    assert!(
        mi.headline()
            .starts_with("allocator: mimalloc 2.0.9, preloaded"),
        "{}",
        mi.headline()
    );
    // malloc's size is in %rsi at its probe.
    let malloc = point(&mi, "malloc").expect("malloc");
    assert_eq!(malloc.spec.args[0], 1);
    assert!(malloc.func_offset > 0);
    // calloc moves its count to %rax: single-stepped, and said so.
    let calloc = point(&mi, "calloc").expect("calloc");
    assert!(calloc.stepped.is_some());
    assert!(
        mi.stepped().iter().any(|s| s.starts_with("calloc (")),
        "{:?}",
        mi.stepped()
    );
}
