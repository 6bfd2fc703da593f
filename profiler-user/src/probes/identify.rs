//! Which allocator a module is, and its version, from its own symbols and
//! bytes: named on the first lines of every session.

use crate::symbolize::Functions;

/// Which allocator implementation a module is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Implementation {
    Glibc,
    Musl,
    Jemalloc,
    Tcmalloc,
    Mimalloc,
    /// A module that defines `malloc` and none of the signatures above.
    Unknown,
}

impl Implementation {
    /// The name users know it by.
    pub fn name(&self) -> &'static str {
        match self {
            Implementation::Glibc => "glibc",
            Implementation::Musl => "musl",
            Implementation::Jemalloc => "jemalloc",
            Implementation::Tcmalloc => "tcmalloc",
            Implementation::Mimalloc => "mimalloc",
            Implementation::Unknown => "an allocator heapscope does not know",
        }
    }
}

/// Symbols that identify an implementation, tried in order.
pub const SIGNATURES: [(&str, Implementation); 9] = [
    ("mallocx", Implementation::Jemalloc),
    ("je_mallocx", Implementation::Jemalloc),
    ("_rjem_mallocx", Implementation::Jemalloc),
    ("tc_malloc", Implementation::Tcmalloc),
    ("mi_malloc", Implementation::Mimalloc),
    // musl (mallocng, oldmalloc) before glibc: musl has a `__libc_malloc` too.
    ("__libc_malloc_impl", Implementation::Musl),
    ("__malloc_donate", Implementation::Musl),
    // glibc, shared or static.
    ("_int_malloc", Implementation::Glibc),
    ("__libc_malloc", Implementation::Glibc),
];

/// The version an implementation states in its own bytes, when it does:
/// jemalloc's `5.3.0-0-g<sha>`, tcmalloc's `gperftools 2.10`, glibc's
/// `release version 2.36.`. (mimalloc's comes from its `mi_version` code.)
pub fn version_in(imp: &Implementation, data: &[u8]) -> Option<String> {
    let find = |needle: &[u8]| data.windows(needle.len()).position(|w| w == needle);
    let token = |from: usize, stop: &[u8]| -> Option<String> {
        let rest = data.get(from..)?;
        let end = rest
            .iter()
            .position(|b| stop.contains(b) || !b.is_ascii_graphic())
            .unwrap_or(rest.len().min(32));
        let t = std::str::from_utf8(rest.get(..end)?).ok()?;
        (!t.is_empty()).then(|| t.to_string())
    };
    match imp {
        Implementation::Tcmalloc => {
            let at = find(b"gperftools ")? + b"gperftools ".len();
            token(at, b" ")
        }
        Implementation::Glibc => {
            let at = find(b"release version ")? + b"release version ".len();
            token(at, b" ").map(|v| v.trim_end_matches('.').to_string())
        }
        Implementation::Jemalloc => jemalloc_version(data),
        _ => None,
    }
}

/// jemalloc's `JEMALLOC_VERSION`: `X.Y.Z-N-g` followed by 40 hex digits
/// (`N` commits after the release tag: 0 for Debian's, 1 for the build
/// Rust's tikv-jemalloc-sys vendors).
fn jemalloc_version(data: &[u8]) -> Option<String> {
    let pat = b"-g";
    let mut start = 0usize;
    while let Some(rel) = data.get(start..)?.windows(pat.len()).position(|w| w == pat) {
        let at = start + rel;
        start = at + pat.len();
        let hex_ok = data
            .get(at + pat.len()..at + pat.len() + 40)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        if !hex_ok {
            continue;
        }
        // Walk back over `N`, then `-`, then `X.Y.Z`.
        let back = |mut b: usize, ok: fn(&u8) -> bool| {
            while b > 0 && data.get(b - 1).is_some_and(ok) {
                b -= 1;
            }
            b
        };
        let n = back(at, u8::is_ascii_digit);
        if n == at || n == 0 || data.get(n - 1) != Some(&b'-') {
            continue;
        }
        let v = back(n - 1, |c| c.is_ascii_digit() || *c == b'.');
        let Some(ver) = data.get(v..n - 1).and_then(|v| std::str::from_utf8(v).ok()) else {
            continue;
        };
        if ver.split('.').count() == 3 && ver.split('.').all(|p| !p.is_empty()) {
            return Some(ver.to_string());
        }
    }
    None
}

/// The implementation a module defining allocator entry points is, and
/// its version when the module states it.
pub fn identify(functions: &Functions, file: &std::path::Path) -> (Implementation, Option<String>) {
    let mut imp = SIGNATURES
        .iter()
        .find(|(sym, _)| functions.has(sym))
        .map_or(Implementation::Unknown, |(_, imp)| imp.clone());
    // musl's shared libc hides its allocator's internals; its name says it.
    let name = file.to_string_lossy();
    if imp == Implementation::Unknown && (name.contains("ld-musl") || name.contains("/musl/")) {
        imp = Implementation::Musl;
    }
    let version = match imp {
        Implementation::Mimalloc => functions
            .find("mi_version")
            .and_then(|(_, loc)| functions.code(&loc).ok())
            .and_then(|(code, _)| mimalloc_version(&code)),
        Implementation::Unknown | Implementation::Musl => None,
        _ => rodata(file).and_then(|data| version_in(&imp, &data)),
    };
    (imp, version)
}

/// The read-only data of an ELF file (where version strings live).
fn rodata(file: &std::path::Path) -> Option<Vec<u8>> {
    use object::{Object, ObjectSection};
    let data = std::fs::read(file).ok()?;
    let obj = object::File::parse(&*data).ok()?;
    let section = obj.section_by_name(".rodata")?;
    section.data().ok().map(<[u8]>::to_vec)
}

/// Messages only an allocator's own code prints, by which it is recognised
/// in a module that has no symbols for it (a stripped executable).
pub const EMBEDDED_MARKERS: [(&[u8], Implementation); 3] = [
    (b"<jemalloc>: ", Implementation::Jemalloc),
    (b"mimalloc: error: ", Implementation::Mimalloc),
    (b"tcmalloc: large alloc", Implementation::Tcmalloc),
];

/// The allocator whose own messages are in `data` (a module's read-only
/// data), and its version when it states it.
pub fn embedded_in(data: &[u8]) -> Option<(Implementation, Option<String>)> {
    let (_, imp) = EMBEDDED_MARKERS
        .iter()
        .find(|(m, _)| data.windows(m.len()).any(|w| w == *m))?;
    Some((imp.clone(), version_in(imp, data)))
}

/// Executables larger than this are not searched for an embedded allocator.
const MAX_SEARCHED: u64 = 1 << 30;

/// The allocator linked into `file` whose symbols are gone (stripped), if
/// its messages say there is one.
pub fn embedded_allocator(file: &std::path::Path) -> Option<(Implementation, Option<String>)> {
    if std::fs::metadata(file).ok()?.len() > MAX_SEARCHED {
        return None;
    }
    embedded_in(&rodata(file)?)
}

/// mimalloc's `mi_version()` is `mov $NNN,%eax; ret` (209 = 2.0.9).
pub fn mimalloc_version(code: &[u8]) -> Option<String> {
    // b8 imm32 (mov eax, imm32)
    if code.first() != Some(&0xb8) {
        return None;
    }
    let v = u32::from_le_bytes(code.get(1..5)?.try_into().ok()?);
    Some(format!("{}.{}.{}", v / 100, (v / 10) % 10, v % 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_allocators_by_their_messages() {
        let je = b"..<jemalloc>: Invalid conf value\x005.3.0-1-ge13ca993e8ccb9ba9847cc330696e02839f328f7\x00";
        assert_eq!(
            embedded_in(je),
            Some((Implementation::Jemalloc, Some("5.3.0".into())))
        );
        assert_eq!(
            embedded_in(b"mimalloc: error: mi_free: invalid pointer"),
            Some((Implementation::Mimalloc, None))
        );
        assert_eq!(
            embedded_in(b"uses jemalloc or tcmalloc"),
            None,
            "a mention is not one"
        );
    }

    #[test]
    fn versions_from_bytes() {
        let je = b"xx\x005.3.0-0-g54eaed1d8b56b1aa528be3bdd1877e59c56fa90c\x00";
        assert_eq!(
            version_in(&Implementation::Jemalloc, je).as_deref(),
            Some("5.3.0")
        );
        let tc = b"\x00gperftools 2.10\x00";
        assert_eq!(
            version_in(&Implementation::Tcmalloc, tc).as_deref(),
            Some("2.10")
        );
        let g = b"GNU C Library (Debian GLIBC 2.36-9+deb12u14) stable release version 2.36.\n";
        assert_eq!(
            version_in(&Implementation::Glibc, g).as_deref(),
            Some("2.36")
        );
        assert_eq!(version_in(&Implementation::Jemalloc, b"1.2-0-gzz"), None);
        // tikv-jemalloc-sys vendors jemalloc one commit after 5.3.0.
        let tikv = b"\x005.3.0-1-ge13ca993e8ccb9ba9847cc330696e02839f328f7\x00";
        assert_eq!(
            version_in(&Implementation::Jemalloc, tikv).as_deref(),
            Some("5.3.0")
        );
        // mov $0xd1,%eax; ret
        assert_eq!(
            mimalloc_version(&[0xb8, 0xd1, 0, 0, 0, 0xc3]).as_deref(),
            Some("2.0.9")
        );
        assert_eq!(mimalloc_version(&[0xc3]), None);
    }
}
