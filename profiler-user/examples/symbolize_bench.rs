//! Symbolization throughput: unique addresses per second on one binary,
//! cold (the first pass parses the module and its DWARF) and warm (the same
//! addresses again, module cached, addr2line's units already parsed).
//!
//! `cargo run --release -p profiler-user --example symbolize_bench -- FILE [MAX]`
//! (run by `cargo xtask bench`). The addresses are the middle of every
//! function in FILE's `.symtab` (up to MAX, default 50,000), as return
//! addresses, like the stacks heapscope symbolizes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: failing loudly is its job

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use heapscope::symbolize::{ModuleAddr, ModuleSource, Symbolized, Symbolizer};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

fn addresses(file: &PathBuf, max: usize) -> Result<Vec<ModuleAddr>> {
    let data = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let obj =
        object::File::parse(&*data).with_context(|| format!("cannot parse {}", file.display()))?;
    let segments: Vec<(u64, u64, u64)> = obj
        .segments()
        .map(|s| (s.address(), s.file_range().0, s.file_range().1))
        .collect();
    let mut out: Vec<ModuleAddr> = obj
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 1)
        .filter_map(|s| {
            let mid = s.address() + s.size() / 2;
            let &(vaddr, off, _) = segments
                .iter()
                .find(|&&(v, _, len)| mid >= v && mid - v < len)?;
            Some(ModuleAddr::ret(mid - vaddr + off))
        })
        .collect();
    out.sort();
    out.dedup();
    // Spread the sample over the whole binary rather than its first part.
    let step = out.len().div_ceil(max.max(1)).max(1);
    Ok(out.into_iter().step_by(step).collect())
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(file) = args.next().map(PathBuf::from) else {
        bail!("usage: symbolize_bench FILE [MAX_ADDRESSES]");
    };
    let max: usize = args
        .next()
        .map(|m| m.parse())
        .transpose()?
        .unwrap_or(50_000);
    let addrs = addresses(&file, max)?;
    if addrs.is_empty() {
        bail!("{} has no function symbols to sample", file.display());
    }
    let size = std::fs::metadata(&file)?.len();
    let source = ModuleSource::from_path(&file);
    let mut symbolizer = Symbolizer::new();
    let t = Instant::now();
    let cold = symbolizer.symbolize_many(&source, &addrs);
    let cold_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let warm = symbolizer.symbolize_many(&source, &addrs);
    let warm_s = t.elapsed().as_secs_f64();
    let resolved = cold
        .iter()
        .filter(|s| matches!(s, Symbolized::Frames(_)))
        .count();
    let with_lines = cold
        .iter()
        .filter(|s| match s {
            Symbolized::Frames(f) => f.iter().any(|f| f.source_location().is_some()),
            _ => false,
        })
        .count();
    let frames: usize = warm
        .iter()
        .map(|s| match s {
            Symbolized::Frames(f) => f.len(),
            _ => 1,
        })
        .sum();
    println!(
        "symbolization of {} ({:.1} MiB): {} unique addresses, {} resolved, {} with file:line, {} frames with inlines",
        file.display(),
        size as f64 / (1024.0 * 1024.0),
        addrs.len(),
        resolved,
        with_lines,
        frames
    );
    let n = addrs.len() as f64;
    println!(
        "  cold (parse + lookups) {:>10.1} ms  {:>12.0} addresses/s",
        cold_s * 1e3,
        n / cold_s
    );
    println!(
        "  warm (cached)          {:>10.1} ms  {:>12.0} addresses/s",
        warm_s * 1e3,
        n / warm_s
    );
    Ok(())
}
