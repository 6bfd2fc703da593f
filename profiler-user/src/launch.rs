//! Starting a command held at a gate, so probes are attached before its first
//! allocation: fork, the child blocks on a pipe, heapscope attaches to the
//! child's pid (uprobe filters follow the task across exec), then opens the gate.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A forked child waiting at the gate.
pub struct Suspended {
    pub pid: u32,
    gate: libc::c_int,
}

/// Finds `cmd` on `PATH` (or as given when it contains a `/`). Symlinks are
/// kept: a busybox-style program tells its applets apart by the name it was
/// started under.
pub fn resolve_program(cmd: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
            .unwrap_or(false)
    };
    if cmd.contains('/') {
        let p = PathBuf::from(cmd);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(cmd))
        .find(|p| is_exec(p))
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "argument contains a NUL byte"))
}

/// Forks a child that will exec `program` with `arg0` (the command as the
/// user typed it, as a shell passes it) and `args` once released.
pub fn spawn_suspended(program: &Path, arg0: &str, args: &[String]) -> io::Result<Suspended> {
    // Everything the child needs is prepared before fork: after fork only
    // async-signal-safe calls (read, execv, _exit) are allowed.
    let path = cstring(program.as_os_str().as_bytes())?;
    let mut argv_owned = vec![cstring(arg0.as_bytes())?];
    for a in args {
        argv_owned.push(cstring(a.as_bytes())?);
    }
    let mut argv: Vec<*const libc::c_char> = argv_owned.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());

    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: fork has no preconditions; the child only calls async-signal-safe functions.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = io::Error::last_os_error();
        // SAFETY: closing descriptors this function owns.
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
        return Err(err);
    }
    if pid == 0 {
        // SAFETY: in the child: read/execv/_exit are async-signal-safe, and
        // argv points into memory prepared before fork.
        unsafe {
            libc::close(write_end);
            let mut b = 0u8;
            let n = libc::read(read_end, (&mut b as *mut u8).cast(), 1);
            if n == 1 {
                libc::execv(path.as_ptr(), argv.as_ptr());
            }
            libc::_exit(127);
        }
    }
    // SAFETY: the parent does not use the read end.
    unsafe { libc::close(read_end) };
    Ok(Suspended {
        pid: pid as u32,
        gate: write_end,
    })
}

impl Suspended {
    /// Lets the child exec the command.
    pub fn release(self) -> io::Result<()> {
        let b = 1u8;
        // SAFETY: writing one byte from a valid buffer to a descriptor we own.
        let n = unsafe { libc::write(self.gate, (&b as *const u8).cast(), 1) };
        let err = io::Error::last_os_error();
        // SAFETY: closing the descriptor we own; `self` is consumed.
        unsafe { libc::close(self.gate) };
        std::mem::forget(self);
        if n == 1 {
            Ok(())
        } else {
            Err(err)
        }
    }
}

impl Drop for Suspended {
    /// Closing the gate unwritten makes the child exit with 127 without running the command.
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we own.
        unsafe { libc::close(self.gate) };
        let mut status = 0;
        // SAFETY: reaping our own child; status is a valid out-pointer.
        unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, 0) };
    }
}

/// Non-blocking check of a child: `Ok(Some(exit code))` once it has ended
/// (128 + signal number when killed), `Ok(None)` while it runs. An error
/// (the pid is not our child, or was reaped elsewhere) means its exit status
/// is unknown: the caller must say so, never invent one.
pub fn try_wait(pid: u32) -> io::Result<Option<i32>> {
    let mut status = 0;
    // SAFETY: waitpid on our own child with a valid out-pointer.
    let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if r == pid as libc::pid_t {
        if libc::WIFEXITED(status) {
            return Ok(Some(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(Some(128 + libc::WTERMSIG(status)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_on_path() {
        assert!(resolve_program("sh").is_some());
        assert!(resolve_program("/bin/sh").is_some());
        assert!(resolve_program("no-such-program-heapscope").is_none());
        assert!(resolve_program("/etc/passwd").is_none());
    }

    /// busybox-style programs dispatch on argv[0]: it stays the name the
    /// command was given as, and a symlink is not resolved to its target.
    #[test]
    fn argv0_and_symlinks_are_kept() {
        let dir = std::env::temp_dir().join(format!("heapscope-argv0-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let link = dir.join("applet");
        std::os::unix::fs::symlink("/bin/sh", &link).expect("symlink");
        let cmd = link.to_str().expect("utf8");
        assert_eq!(resolve_program(cmd), Some(link.clone()));
        let script =
            format!("tr '\\0' ' ' < /proc/$$/cmdline | grep -q '^{cmd} -c ' && exit 5; exit 6");
        let child = spawn_suspended(&link, cmd, &["-c".into(), script]).expect("spawn");
        let pid = child.pid;
        child.release().expect("release");
        let mut code = None;
        for _ in 0..500 {
            code = try_wait(pid).unwrap();
            if code.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(code, Some(5), "argv[0] seen by the child");
    }

    #[test]
    fn gate_releases_and_exit_code_is_reported() {
        let Some(sh) = resolve_program("sh") else {
            crate::testing::skip("no sh on PATH");
            return;
        };
        let child = spawn_suspended(&sh, "sh", &["-c".into(), "exit 7".into()]).expect("spawn");
        let pid = child.pid;
        assert_eq!(
            try_wait(pid).unwrap(),
            None,
            "the child must wait at the gate"
        );
        child.release().expect("release");
        let mut code = None;
        for _ in 0..500 {
            code = try_wait(pid).unwrap();
            if code.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(code, Some(7));
    }

    #[test]
    fn an_unknown_exit_status_is_an_error_not_a_code() {
        // pid 1 is not our child: waitpid fails (ECHILD). Before, this read
        // as "exited with -1" and `run` exited 0.
        let e = try_wait(1).expect_err("not our child");
        assert_eq!(e.raw_os_error(), Some(libc::ECHILD));
    }
}
