//! Reading many small pieces of a target's memory with few system calls:
//! one `process_vm_readv` carries up to [`IOV_MAX`] pieces, so placing a
//! whole batch of sampled blocks costs heapscope one call, and the target
//! nothing (the probe used to read each header itself, ~57 ns of the
//! target's time per sample).

/// Most pieces one `process_vm_readv` takes (the kernel's `UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// One piece: two 8-byte little-endian words.
pub type Piece = [u64; 2];

/// A target's memory, read a piece of 16 bytes per address.
pub trait VmRead {
    /// Reads the 16 bytes at each of `addrs` (at most [`IOV_MAX`]) of
    /// process `pid` into `out` (as long as `addrs`) in one call, in order.
    /// Returns how many leading pieces were read: the kernel stops at the
    /// first unreadable one. An error means none was read: `EFAULT` when
    /// the first piece is unreadable, anything else when the process
    /// cannot be read at all (gone, not permitted).
    fn read(&self, pid: u32, addrs: &[u64], out: &mut [Piece]) -> std::io::Result<usize>;
}

/// A live process's memory, through `process_vm_readv`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessVm;

impl VmRead for ProcessVm {
    fn read(&self, pid: u32, addrs: &[u64], out: &mut [Piece]) -> std::io::Result<usize> {
        let n = addrs.len().min(out.len()).min(IOV_MAX);
        let local: Vec<libc::iovec> = out[..n]
            .iter_mut()
            .map(|p| libc::iovec {
                iov_base: p.as_mut_ptr().cast(),
                iov_len: std::mem::size_of::<Piece>(),
            })
            .collect();
        let remote: Vec<libc::iovec> = addrs[..n]
            .iter()
            .map(|&a| libc::iovec {
                iov_base: a as *mut libc::c_void,
                iov_len: std::mem::size_of::<Piece>(),
            })
            .collect();
        // SAFETY: `local` holds `n` iovecs pointing at distinct 16-byte
        // pieces of `out`, which outlives the call; `remote` is only read
        // by the kernel in the target's address space (a bad address is an
        // error or a short count, never a fault here).
        let got = unsafe {
            libc::process_vm_readv(
                pid as libc::pid_t,
                local.as_ptr(),
                n as libc::c_ulong,
                remote.as_ptr(),
                n as libc::c_ulong,
                0,
            )
        };
        if got < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Little-endian words (x86-64, aarch64): the bytes were copied raw.
        for p in &mut out[..n] {
            *p = [u64::from_le(p[0]), u64::from_le(p[1])];
        }
        // Never a split piece (the kernel transfers whole iovecs only).
        Ok(got as usize / std::mem::size_of::<Piece>())
    }
}

/// Reads the piece at each `(pid, addr)` of `wanted` into `out` (same
/// order; `None` when unreadable), grouped by process, each address once
/// (a batch of a malloc/free loop names the same block again and again:
/// each piece costs the kernel a page pin, ~0.3 µs), at most [`IOV_MAX`]
/// pieces per call: one call per process and 1,024 addresses, plus one more
/// after each unreadable piece (the kernel stops there). All are read at
/// one moment, so an address named twice has one answer. Returns the
/// number of calls.
pub fn read_pieces(mem: &dyn VmRead, wanted: &[(u32, u64)], out: &mut Vec<Option<Piece>>) -> u64 {
    out.clear();
    out.resize(wanted.len(), None);
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_unstable_by_key(|&i| wanted[i]);
    let mut addrs = Vec::new();
    let mut got = Vec::new();
    let mut buf = vec![[0u64; 2]; IOV_MAX.min(wanted.len())];
    let mut calls = 0;
    for group in order.chunk_by(|&a, &b| wanted[a].0 == wanted[b].0) {
        let pid = wanted[group[0]].0;
        addrs.clear();
        addrs.extend(group.iter().map(|&k| wanted[k].1));
        addrs.dedup();
        got.clear();
        got.resize(addrs.len(), None);
        calls += read_process(mem, pid, &addrs, &mut got, &mut buf);
        for &k in group {
            if let Ok(at) = addrs.binary_search(&wanted[k].1) {
                out[k] = got[at];
            }
        }
    }
    calls
}

/// [`read_pieces`] for distinct addresses of one process.
fn read_process(
    mem: &dyn VmRead,
    pid: u32,
    addrs: &[u64],
    out: &mut [Option<Piece>],
    buf: &mut [Piece],
) -> u64 {
    let mut calls = 0;
    let mut i = 0;
    while i < addrs.len() {
        let end = (i + IOV_MAX.min(buf.len())).min(addrs.len());
        calls += 1;
        let read = match mem.read(pid, &addrs[i..end], &mut buf[..end - i]) {
            Ok(n) => n.min(end - i),
            Err(e) if e.raw_os_error() == Some(libc::EFAULT) => 0,
            // The process cannot be read: the rest stays unread.
            Err(_) => break,
        };
        for (o, piece) in out[i..i + read].iter_mut().zip(buf.iter()) {
            *o = Some(*piece);
        }
        // Past the unreadable piece (if the call stopped at one).
        i += read + usize::from(i + read < end);
    }
    calls
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;

    /// Pieces at addresses per process, with the process_vm_readv
    /// semantics; records each call's length.
    struct FakeVm {
        pieces: HashMap<(u32, u64), Piece>,
        calls: RefCell<Vec<(u32, usize)>>,
    }

    impl VmRead for FakeVm {
        fn read(&self, pid: u32, addrs: &[u64], out: &mut [Piece]) -> std::io::Result<usize> {
            assert!(addrs.len() <= IOV_MAX && out.len() >= addrs.len());
            self.calls.borrow_mut().push((pid, addrs.len()));
            if !self.pieces.keys().any(|(p, _)| *p == pid) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            for (n, a) in addrs.iter().enumerate() {
                match self.pieces.get(&(pid, *a)) {
                    Some(p) => out[n] = *p,
                    None if n == 0 => return Err(std::io::Error::from_raw_os_error(libc::EFAULT)),
                    None => return Ok(n),
                }
            }
            Ok(addrs.len())
        }
    }

    fn fake(pieces: impl IntoIterator<Item = ((u32, u64), Piece)>) -> FakeVm {
        FakeVm {
            pieces: pieces.into_iter().collect(),
            calls: RefCell::new(Vec::new()),
        }
    }

    #[test]
    fn more_than_iov_max_pieces_split_into_calls() {
        let n = 2 * IOV_MAX + 5;
        let mem = fake((0..n as u64).map(|i| ((7, 0x1000 + 16 * i), [i, i + 1])));
        let wanted: Vec<(u32, u64)> = (0..n as u64).map(|i| (7, 0x1000 + 16 * i)).collect();
        let mut out = Vec::new();
        assert_eq!(read_pieces(&mem, &wanted, &mut out), 3);
        assert_eq!(
            *mem.calls.borrow(),
            vec![(7, IOV_MAX), (7, IOV_MAX), (7, 5)]
        );
        for (i, p) in out.iter().enumerate() {
            assert_eq!(*p, Some([i as u64, i as u64 + 1]));
        }
    }

    #[test]
    fn unreadable_pieces_are_none_and_the_rest_still_read() {
        // Readable, unreadable (first of a call: EFAULT), readable,
        // unreadable (a short count), readable.
        let mem = fake([
            ((1, 0x10), [1, 1]),
            ((1, 0x30), [3, 3]),
            ((1, 0x50), [5, 5]),
        ]);
        let wanted = [(1, 0x10), (1, 0x20), (1, 0x30), (1, 0x40), (1, 0x50)];
        let mut out = Vec::new();
        let calls = read_pieces(&mem, &wanted, &mut out);
        assert_eq!(
            out,
            vec![Some([1, 1]), None, Some([3, 3]), None, Some([5, 5])]
        );
        // Stops after 0x10, restarts at 0x30, stops after it, restarts at 0x50.
        assert_eq!(calls, 3);
        assert_eq!(*mem.calls.borrow(), vec![(1, 5), (1, 3), (1, 1)]);
        let mem = fake([((1, 0x10), [1, 1])]);
        let mut out = Vec::new();
        assert_eq!(read_pieces(&mem, &[(1, 0x10), (1, 0x8)], &mut out), 2);
        assert_eq!(out, vec![Some([1, 1]), None], "EFAULT on the first piece");
    }

    #[test]
    fn one_call_per_process_and_a_gone_process_reads_nothing() {
        let mem = fake([
            ((1, 0x10), [1, 0]),
            ((2, 0x10), [2, 0]),
            ((2, 0x20), [2, 1]),
        ]);
        // Interleaved processes; process 3 is gone.
        let wanted = [(2, 0x10), (1, 0x10), (3, 0x10), (2, 0x20), (3, 0x20)];
        let mut out = Vec::new();
        assert_eq!(read_pieces(&mem, &wanted, &mut out), 3);
        assert_eq!(
            out,
            vec![Some([2, 0]), Some([1, 0]), None, Some([2, 1]), None]
        );
        assert_eq!(*mem.calls.borrow(), vec![(1, 1), (2, 2), (3, 2)]);
        assert_eq!(read_pieces(&mem, &[], &mut out), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn each_address_is_read_once() {
        let mem = fake([((4, 0x10), [1, 2]), ((4, 0x20), [3, 4])]);
        let wanted: Vec<(u32, u64)> = (0..3000).map(|i| (4, 0x10 + 0x10 * (i % 2))).collect();
        let mut out = Vec::new();
        assert_eq!(read_pieces(&mem, &wanted, &mut out), 1);
        assert_eq!(*mem.calls.borrow(), vec![(4, 2)]);
        for (i, p) in out.iter().enumerate() {
            assert_eq!(*p, Some(if i % 2 == 0 { [1, 2] } else { [3, 4] }));
        }
    }

    #[test]
    fn reads_this_process() {
        let v: Vec<u64> = vec![0x1111, 0x2222, 0x3333, 0x4444];
        let pid = std::process::id();
        let base = v.as_ptr() as u64;
        let wanted = [(pid, base), (pid, 8), (pid, base + 16)];
        let mut out = Vec::new();
        assert_eq!(read_pieces(&ProcessVm, &wanted, &mut out), 2);
        assert_eq!(
            out,
            vec![Some([0x1111, 0x2222]), None, Some([0x3333, 0x4444])]
        );
    }
}
