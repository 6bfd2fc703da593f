//! Tests against real ELF files: fixtures compiled with `cc` at test time,
//! and the system libc.

use super::*;

use std::process::Command;
use std::sync::OnceLock;

const PROGRAM: &str = r#"
#include <stdlib.h>
#include <stdio.h>

__attribute__((noinline)) void *leak_malloc(size_t n) {
    void *p = malloc(n);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}

__attribute__((noipa)) static long hidden_helper(long x) {
    return x * 3 + 1;
}

__attribute__((noinline)) long run_sites(int n) {
    long total = 0;
    for (int i = 0; i < n; i++) {
        total += (long)leak_malloc(16) + hidden_helper(i);
    }
    return total;
}

int main(int argc, char **argv) {
    (void)argv;
    printf("%ld\n", run_sites(argc));
    return 0;
}
"#;

const LIBRARY: &str = r#"
__attribute__((noipa)) static int lib_hidden(int x) {
    return x * 7 + 5;
}

__attribute__((noinline)) int lib_exported(int x) {
    return lib_hidden(x) + lib_hidden(x + 1);
}
"#;

/// Paths of the compiled fixtures, built once per test process.
struct Fixtures {
    pie: PathBuf,
    no_pie: PathBuf,
    shared: PathBuf,
    stripped_shared: PathBuf,
    stripped_pie: PathBuf,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "heapscope-symbolize-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create fixture dir");
        let prog_c = dir.join("prog.c");
        let lib_c = dir.join("lib.c");
        std::fs::write(&prog_c, PROGRAM).expect("write prog.c");
        std::fs::write(&lib_c, LIBRARY).expect("write lib.c");
        let cc = |extra: &[&str], src: &Path, out: &Path| {
            run(Command::new("cc")
                .args(["-O1", "-g", "-fno-omit-frame-pointer"])
                .args(extra)
                .arg("-o")
                .arg(out)
                .arg(src));
        };
        let f = Fixtures {
            pie: dir.join("prog-pie"),
            no_pie: dir.join("prog-nopie"),
            shared: dir.join("libfixture.so"),
            stripped_shared: dir.join("libfixture-stripped.so"),
            stripped_pie: dir.join("prog-pie-stripped"),
        };
        cc(&["-fPIE", "-pie"], &prog_c, &f.pie);
        cc(&["-fno-pie", "-no-pie"], &prog_c, &f.no_pie);
        cc(&["-shared", "-fPIC"], &lib_c, &f.shared);
        run(Command::new("strip")
            .arg("-o")
            .arg(&f.stripped_shared)
            .arg(&f.shared));
        run(Command::new("strip")
            .arg("-o")
            .arg(&f.stripped_pie)
            .arg(&f.pie));
        f
    })
}

fn location(file: &Path, name: &str) -> FunctionLocation {
    match find_function(file, name) {
        Ok(Some(loc)) => loc,
        other => panic!("find_function({}, {name}) = {other:?}", file.display()),
    }
}

fn addr(offset: u64, ret: bool) -> ModuleAddr {
    if ret {
        ModuleAddr::ret(offset)
    } else {
        ModuleAddr::ip(offset)
    }
}

/// Symbolizes like the old single-frame API: the outermost frame.
fn frame_at(s: &mut Symbolizer, file: &Path, module: &str, offset: u64, ret: bool) -> Frame {
    let source = ModuleSource::from_path(file).named(module);
    let mut frames = s.symbolize(&source, addr(offset, ret)).into_frames();
    assert!(!frames.is_empty());
    frames.swap_remove(0)
}

fn name_at(s: &mut Symbolizer, file: &Path, offset: u64, ret: bool) -> String {
    match frame_at(s, file, "fixture", offset, ret) {
        Frame::Function { name, module, .. } => {
            assert_eq!(&*module, "fixture");
            name.to_string()
        }
        unknown => panic!("offset {offset:#x} unresolved: {unknown:?}"),
    }
}

#[test]
fn resolves_functions_in_pie_and_non_pie_executables() {
    let f = fixtures();
    let mut s = Symbolizer::new();
    for exe in [&f.pie, &f.no_pie] {
        for func in ["leak_malloc", "run_sites", "main", "hidden_helper"] {
            let loc = location(exe, func);
            assert!(loc.size > 0, "{func} has a size");
            assert!(!loc.first_bytes.is_empty());
            assert!(loc.first_bytes.len() <= FIRST_BYTES);
            assert_eq!(name_at(&mut s, exe, loc.file_offset, false), func);
            assert_eq!(name_at(&mut s, exe, loc.file_offset + 3, true), func);
            // The last byte of the function as an instruction pointer, and
            // its end as a return address (a trailing call), stay inside it.
            let last = loc.file_offset + loc.size - 1;
            assert_eq!(name_at(&mut s, exe, last, false), func);
            assert_eq!(name_at(&mut s, exe, last + 1, true), func);
        }
    }
    assert_eq!(s.cached_modules(), 2);
}

#[test]
fn first_bytes_match_the_file() {
    let f = fixtures();
    let loc = location(&f.no_pie, "run_sites");
    let data = std::fs::read(&f.no_pie).expect("read fixture");
    let start = usize::try_from(loc.file_offset).expect("offset fits");
    assert_eq!(
        &data[start..start + loc.first_bytes.len()],
        &loc.first_bytes[..]
    );
    // -fno-omit-frame-pointer: the prologue pushes %rbp (0x55), possibly after endbr64.
    assert!(
        loc.first_bytes[..8].contains(&0x55),
        "{:02x?}",
        loc.first_bytes
    );
}

#[test]
fn non_pie_offset_differs_from_vaddr() {
    // In a non-PIE executable symbols live at 0x400000+; the offset must be
    // translated through PT_LOAD rather than used as an address.
    let f = fixtures();
    let loc = location(&f.no_pie, "main");
    assert!(loc.file_offset < 0x40_0000, "{:#x}", loc.file_offset);
}

#[test]
fn resolves_shared_library_functions() {
    let f = fixtures();
    let mut s = Symbolizer::new();
    for func in ["lib_exported", "lib_hidden"] {
        let loc = location(&f.shared, func);
        assert_eq!(name_at(&mut s, &f.shared, loc.file_offset + 3, true), func);
    }
}

#[test]
fn stripped_library_falls_back_to_dynsym() {
    let f = fixtures();
    let mut s = Symbolizer::new();
    // Offsets are unchanged by strip; take them from the unstripped copy.
    let exported = location(&f.shared, "lib_exported");
    let hidden = location(&f.shared, "lib_hidden");
    assert_eq!(
        location(&f.stripped_shared, "lib_exported").file_offset,
        exported.file_offset
    );
    assert_eq!(
        find_function(&f.stripped_shared, "lib_hidden").ok(),
        Some(None)
    );
    assert_eq!(
        name_at(&mut s, &f.stripped_shared, exported.file_offset + 3, true),
        "lib_exported"
    );
    let frame = frame_at(
        &mut s,
        &f.stripped_shared,
        "libfixture-stripped.so",
        hidden.file_offset + 3,
        true,
    );
    assert_eq!(
        frame,
        Frame::Unknown {
            module: "libfixture-stripped.so".into(),
            offset: hidden.file_offset + 3,
            pc: None,
        }
    );
}

#[test]
fn stripped_executable_is_unknown() {
    let f = fixtures();
    let mut s = Symbolizer::new();
    let loc = location(&f.pie, "run_sites");
    let frame = frame_at(&mut s, &f.stripped_pie, "prog", loc.file_offset + 3, true);
    assert_eq!(
        frame,
        Frame::Unknown {
            module: "prog".into(),
            offset: loc.file_offset + 3,
            pc: None,
        }
    );
    assert_eq!(frame.label(), format!("[prog+{:#x}]", loc.file_offset + 3));
}

#[test]
fn unreadable_or_foreign_files_are_unknown() {
    let f = fixtures();
    let mut s = Symbolizer::new();
    let missing = Path::new("/nonexistent/heapscope/lib.so");
    let unknown = |module: &str, offset| Frame::Unknown {
        module: module.into(),
        offset,
        pc: None,
    };
    assert_eq!(
        frame_at(&mut s, missing, "lib.so", 0x10, true),
        unknown("lib.so", 0x10)
    );
    let reason = |s: &mut Symbolizer, file: &Path, a| {
        s.symbolize(&ModuleSource::from_path(file), a).reason()
    };
    assert_eq!(
        reason(&mut s, missing, ModuleAddr::ret(0x10)),
        Some(UnknownReason::Unreadable)
    );
    let not_elf = f.pie.with_file_name("prog.c");
    assert_eq!(
        frame_at(&mut s, &not_elf, "prog.c", 4, false),
        unknown("prog.c", 4)
    );
    assert_eq!(
        reason(&mut s, &not_elf, ModuleAddr::ip(4)),
        Some(UnknownReason::NotObject)
    );
    // Offset past every PT_LOAD, and a return address of 0.
    assert_eq!(
        frame_at(&mut s, &f.pie, "p", u64::MAX / 2, false),
        unknown("p", u64::MAX / 2)
    );
    assert_eq!(frame_at(&mut s, &f.pie, "p", 0, true), unknown("p", 0));
    assert_eq!(
        reason(&mut s, &f.pie, ModuleAddr::ret(0)),
        Some(UnknownReason::OutsideSegments)
    );
    assert!(matches!(
        find_function(missing, "x"),
        Err(SymbolizeError::Open { .. })
    ));
    let err = find_function(&not_elf, "x").expect_err("not an object file");
    assert!(err.to_string().contains("prog.c"), "{err}");
}

#[test]
fn cache_notices_replaced_file() {
    let f = fixtures();
    let mut s = Symbolizer::new();
    let copy = f.pie.with_file_name("replaced.so");
    std::fs::copy(&f.shared, &copy).expect("copy");
    let loc = location(&copy, "lib_exported");
    assert_eq!(
        name_at(&mut s, &copy, loc.file_offset, false),
        "lib_exported"
    );
    // Replace it with another build (the PIE executable: another build-id):
    // the offset must now resolve in the new file, not from the stale entry.
    std::fs::copy(&f.pie, &copy).expect("replace");
    let main = location(&copy, "main");
    assert_eq!(name_at(&mut s, &copy, main.file_offset, false), "main");
    assert_eq!(s.cached_modules(), 2);
}

#[test]
fn resolves_malloc_in_system_libc() {
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    if !libc.exists() {
        crate::testing::skip(&format!("{} not present", libc.display()));
        return;
    }
    let loc = location(libc, "malloc");
    assert!(loc.size > 0);
    assert_eq!(loc.first_bytes.len(), FIRST_BYTES);
    let mut s = Symbolizer::new();
    match frame_at(&mut s, libc, "libc.so.6", loc.file_offset + 4, false) {
        Frame::Function { name, module, .. } => {
            assert!(name.contains("malloc"), "{name}");
            assert_eq!(&*module, "libc.so.6");
        }
        other => panic!("malloc unresolved: {other:?}"),
    }
    assert_eq!(
        find_function(libc, "no_such_function_heapscope").ok(),
        Some(None)
    );
}

#[test]
fn demangles_rust_and_cpp() {
    assert_eq!(
        demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
        "core::fmt::write"
    );
    assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
    assert_eq!(demangle("_ZN3foo3barEi"), "foo::bar(int)");
    assert_eq!(
        demangle("_ZNSt6vectorIiSaIiEE9push_backERKi"),
        "std::vector<int, std::allocator<int> >::push_back(int const&)"
    );
    assert_eq!(demangle("malloc"), "malloc");
    assert_eq!(demangle("_Zbroken"), "_Zbroken");
}
