//! Custom pool allocators the user names on the command line, such as
//! OpenSIPS's `pkg_malloc`/`pkg_free`: `--alloc 'pkg_malloc(size=arg1)'`,
//! `--free 'pkg_free(ptr=arg1)'`, `--realloc 'pkg_realloc(ptr=arg1,size=arg2)'`,
//! `--calloc 'pkg_calloc(count=arg1,size=arg2)'`, and `--pool-code FUNC` for
//! the pool's own functions outside those (its start-up, its growth).
//!
//! Each spec becomes a row like those of `profiler_common::ENTRY_POINTS`
//! (a kind and argument positions), marked as a pool's: the same entry
//! program probes it, and allocator calls made beneath a pool call, or from
//! the pool's own code, are the pool's footprint. This module only parses;
//! `target` finds the functions in the process.

use profiler_common::entry::ARG_NONE;
use profiler_common::{AllocKind, EntrySpec};

/// What a custom entry point does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Returns a new block of `size` bytes (malloc-like).
    Alloc,
    /// Releases `ptr` (free-like).
    Free,
    /// Resizes `ptr` to `size` bytes, maybe moving it (realloc-like).
    Realloc,
    /// Returns a new block of `count * size` bytes (calloc-like).
    Calloc,
}

impl Shape {
    /// The command-line option naming this shape.
    pub fn option(self) -> &'static str {
        match self {
            Shape::Alloc => "--alloc",
            Shape::Free => "--free",
            Shape::Realloc => "--realloc",
            Shape::Calloc => "--calloc",
        }
    }

    /// The argument roles, in the order of the kind's saved slots.
    fn roles(self) -> &'static [&'static str] {
        match self {
            Shape::Alloc => &["size"],
            Shape::Free => &["ptr"],
            Shape::Realloc => &["ptr", "size"],
            Shape::Calloc => &["count", "size"],
        }
    }

    fn kind(self) -> AllocKind {
        match self {
            Shape::Alloc => AllocKind::Malloc,
            Shape::Free => AllocKind::Free,
            Shape::Realloc => AllocKind::Realloc,
            Shape::Calloc => AllocKind::Calloc,
        }
    }

    /// A valid spec of this shape, for error messages.
    pub fn example(self) -> &'static str {
        match self {
            Shape::Alloc => "pkg_malloc(size=arg1)",
            Shape::Free => "pkg_free(ptr=arg1)",
            Shape::Realloc => "pkg_realloc(ptr=arg1,size=arg2)",
            Shape::Calloc => "pkg_calloc(count=arg1,size=arg2)",
        }
    }
}

/// Registers that carry arguments (x86-64 SysV): `arg1`..`arg6`.
const MAX_ARGS: u8 = 6;

/// One custom entry point as the user named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomEntry {
    pub shape: Shape,
    /// The function's symbol.
    pub symbol: String,
    /// Its kind and argument positions, marked as a pool's.
    pub spec: EntrySpec,
    /// The spec as given (normalised), for messages: `pkg_malloc(size=arg1)`.
    pub text: String,
}

/// A spec that does not parse: which option, what was given, what is wrong
/// and a valid example.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{option} '{spec}': {reason} (for example: {option} '{example}')")]
pub struct SpecError {
    pub option: &'static str,
    pub spec: String,
    pub reason: String,
    pub example: &'static str,
}

/// True for a symbol name as compilers emit them (C identifiers, mangled
/// C++/Rust names, `.`/`$` of local and versioned symbols).
pub fn is_symbol(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '.' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$'))
}

/// Parses `FUNC(role=argN, ...)` for `shape`.
pub fn parse(shape: Shape, text: &str) -> Result<CustomEntry, SpecError> {
    let fail = |reason: String| SpecError {
        option: shape.option(),
        spec: text.to_string(),
        reason,
        example: shape.example(),
    };
    let roles = shape.roles();
    let wanted = roles
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{r}=argN{}", if i + 1 < roles.len() { "," } else { "" }))
        .collect::<String>();
    let t = text.trim();
    let (name, rest) = t
        .split_once('(')
        .ok_or_else(|| fail(format!("expected FUNC({wanted})")))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(fail("the function name is missing".into()));
    }
    if !is_symbol(name) {
        return Err(fail(format!(
            "'{name}' is not a symbol name (letters, digits, _ . $)"
        )));
    }
    let inner = rest
        .strip_suffix(')')
        .ok_or_else(|| fail("missing the closing ')'".into()))?;
    let mut slots = [ARG_NONE; 3];
    for part in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (role, reg) = part.split_once('=').ok_or_else(|| {
            fail(format!(
                "'{part}' names no register: write {wanted} (arguments count from arg1)"
            ))
        })?;
        let (role, reg) = (role.trim(), reg.trim());
        let slot = roles.iter().position(|r| *r == role).ok_or_else(|| {
            fail(format!(
                "unknown argument '{role}': {} takes {}",
                shape.option(),
                roles.join(" and ")
            ))
        })?;
        let n: u8 = reg
            .strip_prefix("arg")
            .and_then(|n| n.parse().ok())
            .filter(|n| (1..=MAX_ARGS).contains(n))
            .ok_or_else(|| {
                fail(format!(
                    "'{reg}' is not a register argument: arg1..arg{MAX_ARGS} (the first {MAX_ARGS} integer arguments)"
                ))
            })?;
        if slots[slot] != ARG_NONE {
            return Err(fail(format!("'{role}' is given twice")));
        }
        slots[slot] = n - 1;
    }
    if let Some(missing) = roles.iter().zip(slots).find(|(_, s)| *s == ARG_NONE) {
        return Err(fail(format!(
            "where is '{}'? write {name}({wanted})",
            missing.0
        )));
    }
    let args_text: Vec<String> = roles
        .iter()
        .zip(slots)
        .map(|(r, s)| format!("{r}=arg{}", s + 1))
        .collect();
    Ok(CustomEntry {
        shape,
        symbol: name.to_string(),
        spec: EntrySpec::new(shape.kind(), slots).in_pool(),
        text: format!("{name}({})", args_text.join(",")),
    })
}

/// Everything the user said about a custom pool allocator.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomAllocator {
    pub entries: Vec<CustomEntry>,
    /// Functions of the pool's own besides its entry points (start-up,
    /// growth): their allocator calls are the pool's footprint.
    pub pool_code: Vec<String>,
}

impl CustomAllocator {
    /// True when no custom allocator was named.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.pool_code.is_empty()
    }

    /// What is missing for the pool to be counted, if anything: a pool
    /// whose blocks are never seen allocated cannot be.
    pub fn check(&self) -> Result<(), String> {
        if self.is_empty() {
            return Ok(());
        }
        if !self.entries.iter().any(|e| e.shape != Shape::Free) {
            return Err(format!(
                "a custom pool needs its allocation function too: add --alloc '{}' (or --calloc/--realloc)",
                Shape::Alloc.example()
            ));
        }
        if let Some(bad) = self.pool_code.iter().find(|s| !is_symbol(s)) {
            return Err(format!(
                "--pool-code '{bad}': not a symbol name (for example: --pool-code pool_init)"
            ));
        }
        Ok(())
    }

    /// `pkg_malloc(size=arg1), pkg_free(ptr=arg1)`.
    pub fn describe(&self) -> String {
        let entries: Vec<&str> = self.entries.iter().map(|e| e.text.as_str()).collect();
        entries.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_specs() {
        let e = parse(Shape::Alloc, "pkg_malloc(size=arg1)").unwrap();
        assert_eq!(e.symbol, "pkg_malloc");
        assert_eq!(
            e.spec,
            EntrySpec::new(AllocKind::Malloc, [0, ARG_NONE, ARG_NONE]).in_pool()
        );
        assert!(e.spec.pool);
        // OpenSIPS's fm_malloc(block, size, file, func, line).
        let e = parse(Shape::Alloc, " fm_malloc ( size = arg2 ) ").unwrap();
        assert_eq!(e.spec.args, [1, ARG_NONE, ARG_NONE]);
        assert_eq!(e.text, "fm_malloc(size=arg2)");
        let e = parse(Shape::Free, "pkg_free(ptr=arg1)").unwrap();
        assert_eq!(e.spec.kind, AllocKind::Free);
        // Roles in any order land in the kind's slots.
        let e = parse(Shape::Realloc, "pkg_realloc(size=arg3, ptr=arg2)").unwrap();
        assert_eq!(
            (e.spec.kind, e.spec.args),
            (AllocKind::Realloc, [1, 2, ARG_NONE])
        );
        assert_eq!(e.text, "pkg_realloc(ptr=arg2,size=arg3)");
        let e = parse(Shape::Calloc, "pkg_calloc(count=arg1,size=arg2)").unwrap();
        assert_eq!(
            (e.spec.kind, e.spec.args),
            (AllocKind::Calloc, [0, 1, ARG_NONE])
        );
        let e = parse(Shape::Alloc, "_ZN4pool5allocEm(size=arg2)").unwrap();
        assert_eq!(e.symbol, "_ZN4pool5allocEm");
    }

    fn reason(shape: Shape, text: &str) -> String {
        let e = parse(shape, text).unwrap_err();
        assert_eq!(e.option, shape.option());
        assert_eq!(e.spec, text);
        // Every message carries a valid example of the option.
        assert!(
            e.to_string().contains(&format!(
                "for example: {} '{}'",
                shape.option(),
                shape.example()
            )),
            "{e}"
        );
        e.reason
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(reason(Shape::Alloc, "pkg_malloc").contains("expected FUNC(size=argN)"));
        assert!(reason(Shape::Alloc, "(size=arg1)").contains("name is missing"));
        assert!(reason(Shape::Alloc, "pkg malloc(size=arg1)").contains("not a symbol name"));
        assert!(reason(Shape::Alloc, "pkg_malloc(size=arg1").contains("closing ')'"));
        assert!(reason(Shape::Alloc, "pkg_malloc(size)").contains("names no register"));
        assert!(reason(Shape::Alloc, "pkg_malloc(ptr=arg1)").contains("unknown argument 'ptr'"));
        assert!(reason(Shape::Alloc, "pkg_malloc(size=arg0)").contains("arg1..arg6"));
        assert!(reason(Shape::Alloc, "pkg_malloc(size=arg7)").contains("arg1..arg6"));
        assert!(reason(Shape::Alloc, "pkg_malloc(size=rdi)").contains("arg1..arg6"));
        assert!(reason(Shape::Alloc, "pkg_malloc()").contains("where is 'size'"));
        assert!(reason(Shape::Realloc, "r(ptr=arg1)")
            .contains("where is 'size'? write r(ptr=argN,size=argN)"));
        assert!(reason(Shape::Free, "f(ptr=arg1,ptr=arg2)").contains("given twice"));
        assert!(reason(Shape::Calloc, "c(n=arg1,size=arg2)").contains("takes count and size"));
    }

    #[test]
    fn a_pool_needs_an_allocation_function() {
        assert_eq!(CustomAllocator::default().check(), Ok(()));
        let free = parse(Shape::Free, "pkg_free(ptr=arg1)").unwrap();
        let alloc = parse(Shape::Alloc, "pkg_malloc(size=arg1)").unwrap();
        let only_free = CustomAllocator {
            entries: vec![free.clone()],
            pool_code: vec![],
        };
        assert!(only_free.check().unwrap_err().contains("--alloc"));
        let pool = CustomAllocator {
            entries: vec![alloc, free],
            pool_code: vec!["pool_init".into()],
        };
        assert_eq!(pool.check(), Ok(()));
        assert_eq!(pool.describe(), "pkg_malloc(size=arg1), pkg_free(ptr=arg1)");
        let bad = CustomAllocator {
            pool_code: vec!["pool init".into()],
            ..pool
        };
        assert!(bad.check().unwrap_err().contains("--pool-code 'pool init'"));
    }
}
