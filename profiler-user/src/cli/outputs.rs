//! Output files and streams: checked before anything is attached (a target is
//! never slowed down for a file that cannot be written), then written
//! independently (one failing output does not cost the others).

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::path::Path;

use anyhow::{bail, Context as _, Result};

/// Fails when `path` (given with `flag`) could not be written later: a
/// missing directory, a directory in its place, a read-only file system, no
/// permission. Creates nothing that was not there: a probe file is removed.
pub fn check_writable(path: &Path, flag: &str) -> Result<()> {
    let shown = path.display();
    let parent = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        bail!(
            "{flag} {shown}: cannot write it, directory {} does not exist",
            parent.display()
        );
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            bail!("{flag} {shown}: is a directory; give a file name, e.g. {flag} {shown}/out")
        }
        // Opened for writing without truncating: what is there stays intact.
        Ok(m) if m.is_file() => OpenOptions::new()
            .write(true)
            .open(path)
            .map(drop)
            .with_context(|| format!("{flag} {shown}: cannot write it")),
        // A device or a pipe (`/dev/stdout`, `/dev/null`): opening a pipe
        // could block, and writing is what it is for.
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("{flag} {shown}: cannot create it"))?;
            std::fs::remove_file(path)
                .with_context(|| format!("{flag} {shown}: cannot remove the probe file"))
        }
        Err(e) => Err(e).with_context(|| format!("{flag} {shown}: cannot write it")),
    }
}

/// The outcome of writing several outputs one after the other.
#[derive(Default)]
pub struct Outputs {
    failures: Vec<String>,
}

impl Outputs {
    /// Writes one output; a failure is remembered and the next one still written.
    pub fn write(&mut self, what: &str, f: impl FnOnce() -> Result<()>) {
        if let Err(e) = f() {
            if is_broken_pipe(&e) {
                // `| head`: the reader has what it wanted; not a failure.
                super::note(&format!(
                    "{what}: the reader closed the pipe; output cut short"
                ));
            } else {
                self.failures.push(format!("{what}: {e:#}"));
            }
        }
    }

    /// Every failure, as one error naming each output, or `Ok`.
    pub fn finish(self) -> Result<()> {
        match self.failures.len() {
            0 => Ok(()),
            1 => bail!("{}", self.failures[0]),
            n => bail!("{n} outputs failed:\n  {}", self.failures.join("\n  ")),
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe)
    })
}

/// Creates `path` and writes it with `f`, naming the file in any error.
pub fn write_file(
    path: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    f(&mut w)
        .and_then(|_| w.flush().map_err(Into::into))
        .with_context(|| format!("cannot write {}", path.display()))?;
    super::note(&format!("wrote {}", path.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("heapscope-outputs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn directories_and_missing_parents_are_refused() {
        let d = scratch("dirs");
        let e = check_writable(&d, "--record").unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = check_writable(&d.join("no/such/file"), "--svg")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_writable_path_is_left_as_it_was() {
        let d = scratch("ok");
        let new = d.join("new.folded");
        check_writable(&new, "--folded").expect("writable");
        assert!(!new.exists(), "the probe file is removed");
        let old = d.join("old.folded");
        std::fs::write(&old, "keep").expect("write");
        check_writable(&old, "--folded").expect("writable");
        assert_eq!(std::fs::read_to_string(&old).expect("read"), "keep");
        check_writable(Path::new("/dev/null"), "--svg").expect("a device");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn every_output_is_written_and_every_failure_named() {
        let mut out = Outputs::default();
        let mut written = Vec::new();
        out.write("the report", || {
            Err(std::io::Error::from(ErrorKind::BrokenPipe)).context("writing the report")
        });
        out.write("a", || bail!("disk full"));
        out.write("b", || {
            written.push("b");
            Ok(())
        });
        out.write("c", || bail!("read-only"));
        assert_eq!(written, ["b"]);
        let e = out.finish().unwrap_err().to_string();
        assert_eq!(e, "2 outputs failed:\n  a: disk full\n  c: read-only");
    }
}
