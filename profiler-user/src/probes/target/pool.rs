//! A custom pool allocator's entry points and own code (see
//! `probes::custom`), found in the process's modules.

use super::{Builder, Module, ProbeError};
use crate::probes::custom::CustomAllocator;
use crate::probes::internals::InternalCode;

/// The file range of `symbol`'s code in `m`, when its symbol has a size.
fn code_range(m: &Module<'_>, symbol: &str) -> Option<InternalCode> {
    let (_, loc) = m.functions.find(symbol)?;
    (loc.size > 0).then(|| InternalCode::FileRange {
        path: m.c.path.clone(),
        start: loc.file_offset,
        end: loc.file_offset + loc.size,
    })
}

/// The first module (in lookup order) defining `symbol`, or an error naming
/// the option, the symbol and the process.
fn defining<'m, 'a>(
    pid: u32,
    modules: &'m [Module<'a>],
    spec: String,
    symbol: &str,
) -> Result<&'m Module<'a>, ProbeError> {
    modules
        .iter()
        .find(|m| m.functions.has(symbol))
        .ok_or_else(|| ProbeError::CustomSymbol {
            pid,
            spec,
            symbol: symbol.to_string(),
            searched: modules.len(),
        })
}

/// Adds a probe for each custom entry point and returns the pool's code:
/// its entry points and `--pool-code` functions, whose allocator calls made
/// outside a program call (its start-up chunk, the frees of its chunks) are
/// the pool's footprint.
pub(super) fn add_pool(
    pid: u32,
    modules: &[Module<'_>],
    b: &mut Builder,
    custom: &CustomAllocator,
) -> Result<Vec<InternalCode>, ProbeError> {
    let mut code = Vec::new();
    let mut note = |b: &mut Builder, m: &Module<'_>, symbol: &str| match code_range(m, symbol) {
        Some(c) => code.push(c),
        None => b.unseen.push(format!(
            "{symbol} in {} has no size in its symbol table: allocator calls its code makes \
             outside a pool call are counted as the program's",
            m.c.path
        )),
    };
    for e in &custom.entries {
        let spec = format!("{} '{}'", e.shape.option(), e.text);
        let m = defining(pid, modules, spec, &e.symbol)?;
        b.point(m, &e.symbol, e.spec)?;
        note(b, m, &e.symbol);
    }
    for symbol in &custom.pool_code {
        let spec = format!("--pool-code {symbol}");
        let m = defining(pid, modules, spec, symbol)?;
        note(b, m, symbol);
    }
    Ok(code)
}
