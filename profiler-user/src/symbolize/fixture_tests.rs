//! Golden tests of DWARF symbolization on fixtures compiled at test time
//! (`tests/fixtures/symbols_*`), in every variant where distributions put
//! debug information: in the module, in a separate file found by
//! `.gnu_debuglink` (same directory, `.debug/`, the debug root) or by
//! build-id, with zlib- or zstd-compressed sections; PIE, non-PIE, a shared
//! library; C++ and Rust (legacy and v0 mangling) for demangling.
//!
//! The addresses are found, not hard-coded: every direct call (`e8 rel32`)
//! in an entry function whose target starts a known function gives a return
//! address (inside the caller, possibly in inlined code) and a target
//! instruction pointer. Their frames are compared with golden files
//! (`tests/golden/symbols_*.txt`, regenerated with `HEAPSCOPE_BLESS=1`):
//! all variants of one source must agree with the same file.

use super::*;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;

use object::{Object, ObjectSymbol};

use crate::views::testdata::check_golden;

fn fixtures_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn run(cmd: &mut Command) -> bool {
    match cmd.output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
            false
        }
        Err(e) => {
            eprintln!("cannot run {cmd:?}: {e}");
            false
        }
    }
}

fn must(cmd: &mut Command) {
    assert!(run(cmd), "{cmd:?} failed");
}

/// Where a variant's debug information lives.
struct Variant {
    name: &'static str,
    /// The module handed to the symbolizer.
    module: PathBuf,
    /// An unstripped build with the same layout (addresses are taken from
    /// its `.symtab`).
    symbols: PathBuf,
    /// A separate debug file the symbolizer must find, if any.
    expect_debug_file: Option<PathBuf>,
    /// The symbolizer's debug directories for this variant: each variant
    /// gets its own, so one variant's debug file cannot satisfy another.
    debug_dirs: Vec<PathBuf>,
}

struct Built {
    dir: PathBuf,
    debug_root: PathBuf,
    c: Vec<Variant>,
    lib: Variant,
    cpp: Variant,
    rust: Vec<Variant>,
    zstd: bool,
}

fn objcopy(args: &[&str], input: &Path, output: Option<&Path>) -> bool {
    let mut cmd = Command::new("objcopy");
    cmd.args(args).arg(input);
    if let Some(o) = output {
        cmd.arg(o);
    }
    run(&mut cmd)
}

fn build_id_hex(path: &Path) -> String {
    let data = std::fs::read(path).expect("read fixture");
    let obj = object::File::parse(&*data).expect("parse fixture");
    let id = obj
        .build_id()
        .expect("notes")
        .expect("fixture has a build-id");
    debuginfo::hex(id)
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        // Beside the test binary (removed by `cargo clean`), not in /tmp,
        // where every run left 8.7 MiB behind; rebuilt from scratch per run.
        let dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("heapscope-symbolize-fixtures")))
            .unwrap_or_else(|| std::env::temp_dir().join("heapscope-symbolize-fixtures"));
        let _ = std::fs::remove_dir_all(&dir);
        let debug_root = dir.join("usr-lib-debug");
        let build_id_root = dir.join("build-id-root");
        std::fs::create_dir_all(&debug_root).expect("create fixture dirs");
        let src = fixtures_src();
        let c_src = src.join("symbols_c.c");
        let cc = |out: &Path, extra: &[&str]| {
            must(
                Command::new("cc")
                    .args(["-O2", "-g", "-fno-omit-frame-pointer"])
                    .args(extra)
                    .arg("-o")
                    .arg(out)
                    .arg(&c_src),
            );
        };
        let variant = |name, module: &Path, symbols: &Path, debug: Option<PathBuf>| Variant {
            name,
            module: module.to_path_buf(),
            symbols: symbols.to_path_buf(),
            expect_debug_file: debug,
            debug_dirs: vec![debug_root.clone()],
        };
        let mut c = Vec::new();
        let pie = dir.join("c-pie");
        cc(&pie, &["-fPIE", "-pie"]);
        c.push(variant("pie, own DWARF", &pie, &pie, None));
        let nopie = dir.join("c-nopie");
        cc(&nopie, &["-fno-pie", "-no-pie"]);
        c.push(variant("non-PIE, own DWARF", &nopie, &nopie, None));
        let zlib = dir.join("c-zlib");
        cc(&zlib, &["-fPIE", "-pie", "-gz=zlib"]);
        c.push(variant("zlib-compressed DWARF", &zlib, &zlib, None));
        let zstd_out = dir.join("c-zstd");
        let zstd = objcopy(&["--compress-debug-sections=zstd"], &pie, Some(&zstd_out));
        if zstd {
            c.push(variant("zstd-compressed DWARF", &zstd_out, &pie, None));
        } else {
            crate::testing::skip("objcopy cannot compress with zstd here: zstd variant");
        }

        // Separate debug files: a fully stripped module (no .symtab either,
        // so names must come from the debug file) plus its debug file.
        let split =
            |tag: &str, debug_at: &dyn Fn(&Path) -> PathBuf, link: bool| -> (PathBuf, PathBuf) {
                let sub = dir.join(tag);
                std::fs::create_dir_all(&sub).expect("mkdir");
                let module = sub.join("c-split");
                let full_debug = sub.join("c-split.debug");
                assert!(objcopy(&["--only-keep-debug"], &pie, Some(&full_debug)));
                let mut args = vec!["--strip-all"];
                let link_arg = format!("--add-gnu-debuglink={}", full_debug.display());
                if link {
                    args.push(&link_arg);
                }
                assert!(objcopy(&args, &pie, Some(&module)));
                let dest = debug_at(&sub);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent).expect("mkdir debug dir");
                }
                std::fs::rename(&full_debug, &dest).expect("place debug file");
                (module, dest)
            };
        let (m, d) = split(
            "link-same-dir",
            &|sub: &Path| sub.join("c-split.debug"),
            true,
        );
        c.push(variant("debuglink, same directory", &m, &pie, Some(d)));
        let (m, d) = split(
            "link-dot-debug",
            &|sub: &Path| sub.join(".debug/c-split.debug"),
            true,
        );
        c.push(variant("debuglink, .debug/", &m, &pie, Some(d)));
        let root = debug_root.clone();
        let (m, d) = split(
            "link-debug-root",
            &|sub: &Path| {
                let rel = sub.strip_prefix("/").unwrap_or(sub);
                root.join(rel).join("c-split.debug")
            },
            true,
        );
        c.push(variant("debuglink, debug root", &m, &pie, Some(d)));
        let id = build_id_hex(&pie);
        let root = build_id_root.clone();
        let (m, d) = split(
            "build-id",
            &|_: &Path| {
                root.join(".build-id")
                    .join(&id[..2])
                    .join(format!("{}.debug", &id[2..]))
            },
            false,
        );
        let mut by_id = variant("build-id in debug root", &m, &pie, Some(d));
        by_id.debug_dirs = vec![build_id_root.clone()];
        c.push(by_id);

        let lib_path = dir.join("libsymbols.so");
        must(
            Command::new("cc")
                .args([
                    "-O2",
                    "-g",
                    "-fno-omit-frame-pointer",
                    "-shared",
                    "-fPIC",
                    "-o",
                ])
                .arg(&lib_path)
                .arg(src.join("symbols_lib.c")),
        );
        let lib = variant("shared library", &lib_path, &lib_path, None);

        let cpp_path = dir.join("cpp");
        must(
            Command::new("g++")
                .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
                .arg(&cpp_path)
                .arg(src.join("symbols_cpp.cpp")),
        );
        let cpp = variant("C++", &cpp_path, &cpp_path, None);

        let mut rust = Vec::new();
        // Legacy is rustc's default (naming it needs -Z unstable-options).
        for (name, mangling) in [
            ("Rust legacy mangling", None),
            ("Rust v0 mangling", Some("v0")),
        ] {
            let out = dir.join(format!("rs-{}", mangling.unwrap_or("legacy")));
            let mut cmd = Command::new("rustc");
            cmd.args([
                "-C",
                "debuginfo=2",
                "-C",
                "opt-level=1",
                "-C",
                "force-frame-pointers=yes",
            ]);
            if let Some(m) = mangling {
                cmd.arg("-C").arg(format!("symbol-mangling-version={m}"));
            }
            must(cmd.arg("-o").arg(&out).arg(src.join("symbols_rs.rs")));
            rust.push(variant(name, &out, &out, None));
        }
        Built {
            dir,
            debug_root,
            c,
            lib,
            cpp,
            rust,
            zstd,
        }
    })
}

fn symbolizer_for(v: &Variant) -> Symbolizer {
    Symbolizer::with_options(SymbolizerOptions {
        debug_dirs: v.debug_dirs.clone(),
        debuginfod_caches: Vec::new(),
    })
}

fn symbolizer() -> Symbolizer {
    Symbolizer::with_options(SymbolizerOptions {
        debug_dirs: vec![built().debug_root.clone()],
        debuginfod_caches: Vec::new(),
    })
}

/// Function symbols of `path` (mangled name → (file offset, size)), through
/// the symbolizer's own segment translation.
fn functions(path: &Path) -> BTreeMap<String, (u64, u64)> {
    let data = std::fs::read(path).expect("read fixture");
    let obj = object::File::parse(&*data).expect("parse fixture");
    let elf = ElfModule::from_object(&obj);
    obj.symbols()
        .filter(|s| s.kind() == object::SymbolKind::Text && s.size() > 0)
        .filter_map(|s| {
            let off = elf.vaddr_to_offset(s.address())?;
            Some((s.name().ok()?.to_string(), (off, s.size())))
        })
        .collect()
}

/// One frame as a golden line fragment: `name (file:line[, inlined])`.
fn render(s: &Symbolized) -> String {
    match s {
        Symbolized::Frames(frames) => frames
            .iter()
            .map(|f| crate::views::Labels { lines: true }.label(f))
            .collect::<Vec<_>>()
            .join(" | "),
        Symbolized::Unknown { reason, .. } => format!("[unknown: {reason}]"),
    }
}

/// Golden text for one variant: every direct call in `entry` to a known
/// function, its return address's frames and its target's frames.
fn golden_text(s: &mut Symbolizer, v: &Variant, entry: &str) -> String {
    let funcs = functions(&v.symbols);
    let by_offset: BTreeMap<u64, &str> = funcs.iter().map(|(n, &(o, _))| (o, n.as_str())).collect();
    let &(start, size) = funcs
        .get(entry)
        .unwrap_or_else(|| panic!("{entry} in {}", v.name));
    let data = std::fs::read(&v.symbols).expect("read fixture");
    let body = &data[start as usize..(start + size) as usize];
    let source = ModuleSource::from_path(&v.module).named("fixture");
    let mut out = format!(
        "entry {entry}: {}\n",
        render(&s.symbolize(&source, ModuleAddr::ip(start)))
    );
    for i in 0..body.len().saturating_sub(4) {
        if body[i] != 0xe8 {
            continue;
        }
        let rel = i32::from_le_bytes([body[i + 1], body[i + 2], body[i + 3], body[i + 4]]);
        let ret = start + i as u64 + 5;
        let Some(target) = ret.checked_add_signed(rel as i64) else {
            continue;
        };
        let Some(callee) = by_offset.get(&target) else {
            continue;
        };
        let at_ret = s.symbolize(&source, ModuleAddr::ret(ret));
        let at_target = s.symbolize(&source, ModuleAddr::ip(target));
        out.push_str(&format!(
            "call {}\n  return address: {}\n  target: {}\n",
            demangle(callee),
            render(&at_ret),
            render(&at_target)
        ));
    }
    out
}

fn check_variants(variants: &[Variant], entry: &str, golden: &str) {
    let mut first: Option<(String, &str)> = None;
    for v in variants {
        let mut s = symbolizer_for(v);
        let text = golden_text(&mut s, v, entry);
        let source = ModuleSource::from_path(&v.module);
        assert_eq!(
            s.debug_file(&source),
            v.expect_debug_file,
            "{}: debug file",
            v.name
        );
        match &first {
            None => {
                check_golden(golden, &text);
                first = Some((text, v.name));
            }
            Some((expected, name)) => assert!(
                *expected == text,
                "{} differs from {name}:\n--- {name}\n{expected}\n--- {}\n{text}",
                v.name,
                v.name
            ),
        }
    }
}

#[test]
fn c_variants_match_golden() {
    let b = built();
    assert!(b.c.len() >= 8 + usize::from(b.zstd) - 1);
    check_variants(&b.c, "outer_function", "symbols_c_outer.txt");
    check_variants(&b.c, "run_symbol_sites", "symbols_c_run.txt");
}

#[test]
fn inlined_function_is_its_own_frame() {
    let b = built();
    let v = &b.c[0];
    let funcs = functions(&v.symbols);
    let (start, size) = funcs["outer_function"];
    let note = funcs["note_ptr"].0;
    let data = std::fs::read(&v.symbols).expect("read");
    let body = &data[start as usize..(start + size) as usize];
    // The call to note_ptr inside outer_function comes from inlined_alloc.
    let ret = (0..body.len() - 4)
        .find(|&i| {
            body[i] == 0xe8
                && (start + i as u64 + 5).checked_add_signed(i32::from_le_bytes([
                    body[i + 1],
                    body[i + 2],
                    body[i + 3],
                    body[i + 4],
                ]) as i64)
                    == Some(note)
        })
        .map(|i| start + i as u64 + 5)
        .expect("outer_function calls note_ptr");
    let mut s = symbolizer();
    let frames = s
        .symbolize(&ModuleSource::from_path(&v.module), ModuleAddr::ret(ret))
        .into_frames();
    let names: Vec<(String, bool)> = frames
        .iter()
        .map(|f| match f {
            Frame::Function { name, inlined, .. } => (name.to_string(), *inlined),
            other => panic!("unresolved {other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("outer_function".into(), false),
            ("inlined_alloc".into(), true)
        ]
    );
    let src = std::fs::read_to_string(fixtures_src().join("symbols_c.c")).expect("source");
    let line_of = |marker: &str| {
        src.lines()
            .position(|l| {
                l.contains(&format!("LINE:{marker} ")) || l.ends_with(&format!("LINE:{marker} */"))
            })
            .map(|i| i as u32 + 1)
            .unwrap_or_else(|| panic!("marker {marker}"))
    };
    assert_eq!(
        frames[0].source_location(),
        Some(format!("symbols_c.c:{}", line_of("outer_calls_inline")))
    );
    assert_eq!(
        frames[1].source_location(),
        Some(format!("symbols_c.c:{}", line_of("inlined_note")))
    );
}

#[test]
fn shared_library_matches_golden() {
    check_variants(
        std::slice::from_ref(&built().lib),
        "lib_entry",
        "symbols_lib.txt",
    );
}

#[test]
fn cpp_names_are_demangled() {
    let b = built();
    check_variants(std::slice::from_ref(&b.cpp), "cpp_entry", "symbols_cpp.txt");
    let text = golden_text(&mut symbolizer(), &b.cpp, "cpp_entry");
    assert!(
        text.contains("heapscope_fixture::Widget<int>::grow(int)"),
        "{text}"
    );
    assert!(
        text.contains("heapscope_fixture::overloaded(double)"),
        "{text}"
    );
}

#[test]
fn rust_legacy_and_v0_are_demangled() {
    let b = built();
    check_variants(&b.rust[..1], "rs_entry", "symbols_rs_legacy.txt");
    check_variants(&b.rust[1..], "rs_entry", "symbols_rs_v0.txt");
    let legacy = golden_text(&mut symbolizer(), &b.rust[0], "rs_entry");
    assert!(
        legacy.contains("symbols_rs::outer::inner::Widget::grow"),
        "{legacy}"
    );
    // v0 keeps more: the impl's self type and generic arguments.
    let v0 = golden_text(&mut symbolizer(), &b.rust[1], "rs_entry");
    assert!(
        v0.contains("<symbols_rs::outer::inner::Widget>::grow"),
        "{v0}"
    );
    assert!(v0.contains("symbols_rs::generic_sum::<u32>"), "{v0}");
    for text in [legacy, v0] {
        assert!(
            !text.contains("::h") && !text.contains("_R") && !text.contains("_ZN"),
            "{text}"
        );
        assert!(
            text.contains("symbols_rs::outer::inner::inlined_twice (symbols_rs.rs:"),
            "{text}"
        );
    }
}

#[test]
fn wrong_debug_file_is_rejected() {
    let b = built();
    // The non-PIE build, stripped, links to a debug file that is then
    // replaced by the PIE build's: build-id and CRC differ, so it must not
    // be used (its lines would be confidently wrong).
    let nopie = &b.c[1];
    let sub = b.dir.join("mismatch");
    std::fs::create_dir_all(&sub).expect("mkdir");
    let module = sub.join("c-split");
    let debug = sub.join("real.debug");
    assert!(objcopy(&["--only-keep-debug"], &nopie.module, Some(&debug)));
    let link = format!("--add-gnu-debuglink={}", debug.display());
    assert!(objcopy(
        &["--strip-all", &link],
        &nopie.module,
        Some(&module)
    ));
    assert!(objcopy(
        &["--only-keep-debug"],
        &b.c[0].module,
        Some(&debug)
    ));
    let mut s = symbolizer();
    let source = ModuleSource::from_path(&module);
    assert_eq!(s.debug_file(&source), None);
    let start = functions(&nopie.symbols)["outer_function"].0;
    assert_eq!(
        s.symbolize(&source, ModuleAddr::ip(start)).reason(),
        Some(UnknownReason::NoSymbol)
    );
}

#[test]
fn cache_is_shared_by_build_id() {
    let b = built();
    let mut s = symbolizer();
    // A copy of the PIE build (another inode) has its build-id: one parsed module.
    let pie = ModuleSource::from_path(&b.c[0].module);
    let start = functions(&b.c[0].symbols)["note_ptr"].0;
    assert!(matches!(
        s.symbolize(&pie, ModuleAddr::ip(start)),
        Symbolized::Frames(_)
    ));
    let copy = b.dir.join("pie-copy");
    std::fs::copy(&b.c[0].module, &copy).expect("copy");
    let frames = s.symbolize(&ModuleSource::from_path(&copy), ModuleAddr::ip(start));
    assert!(matches!(frames, Symbolized::Frames(_)));
    assert_eq!(s.cached_modules(), 1);
}
