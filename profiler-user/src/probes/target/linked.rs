//! The libraries a command will link, before it runs: its dynamic loader
//! lists them (`ld.so --list`, what `ldd` does: the libraries are mapped and
//! named, no code of the command or of them runs). Without them `run` knew
//! only the executable, `LD_PRELOAD` and libc, so a program linking its
//! allocator (Debian's redis-server and libjemalloc.so.2) was first probed
//! as glibc, and its allocator only after its exec was noticed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The program interpreter `exe` names (`PT_INTERP`), if it is dynamic.
fn interpreter(exe: &Path) -> Option<PathBuf> {
    use object::{Object as _, ObjectSection as _};
    let data = std::fs::read(exe).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let interp = file.section_by_name(".interp")?.data().ok()?;
    let end = interp.iter().position(|&b| b == 0).unwrap_or(interp.len());
    let path = std::str::from_utf8(&interp[..end]).ok()?;
    (!path.is_empty()).then(|| PathBuf::from(path))
}

/// Paths of the libraries in `ld.so --list` output (`name => path (addr)`
/// lines; the vDSO, the loader itself and libraries not found are skipped).
pub(super) fn parse_list(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once("=>")?;
            let path = rest
                .trim()
                .rsplit_once(" (")
                .map_or(rest.trim(), |(p, _)| p);
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The libraries `exe` links, in the loader's order; empty for a static
/// program, or when its loader cannot list them (then `run` finds them
/// after the exec, as before).
pub(super) fn libraries(exe: &Path) -> Vec<PathBuf> {
    let Some(loader) = interpreter(exe) else {
        return Vec::new();
    };
    let out = Command::new(&loader)
        .arg("--list")
        .arg(exe)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => parse_list(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_output_gives_the_found_libraries() {
        let text = "\tlinux-vdso.so.1 (0x00007ff8d2f04000)\n\
            \tlibjemalloc.so.2 => /lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007ff8d2800000)\n\
            \tlibmissing.so.1 => not found\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ff8d24a5000)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007ff8d2f06000)\n";
        assert_eq!(
            parse_list(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libjemalloc.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            ]
        );
    }

    #[test]
    fn a_dynamic_program_lists_libc_and_a_missing_file_nothing() {
        let libs = libraries(Path::new("/bin/sh"));
        assert!(
            libs.iter().any(|p| p.to_string_lossy().contains("libc.so")),
            "{libs:?}"
        );
        assert!(libraries(Path::new("/nonexistent/program")).is_empty());
    }
}
