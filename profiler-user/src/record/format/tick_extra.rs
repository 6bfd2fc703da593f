//! Tick-extra records: cross-thread frees per site and glibc's arenas at
//! one tick.

use super::{put_varint, Cursor};
use crate::process::arenas::Home;
use crate::timeline::{ArenaSample, SiteId};

/// The extras of the tick at `t_ms`: cross-thread frees of the sites in
/// its changes that have any, and its arenas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TickExtra {
    pub t_ms: u64,
    /// (site, cross_free_bytes, cross_free_count), cumulative.
    pub cross: Vec<(SiteId, u64, u64)>,
    pub arenas: Vec<ArenaSample>,
}

const HOME_MAIN: u8 = 0;
const HOME_ARENA: u8 = 1;
const HOME_MMAPPED: u8 = 2;

/// Payload of a tick-extra record:
/// `t_ms ncross (site bytes count)* narenas (home:u8 addr heaps reserved resident live)*`.
pub fn encode_tick_extra(x: &TickExtra) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, x.t_ms);
    put_varint(&mut out, x.cross.len() as u64);
    for (id, bytes, count) in &x.cross {
        for v in [u64::from(id.0), *bytes, *count] {
            put_varint(&mut out, v);
        }
    }
    put_varint(&mut out, x.arenas.len() as u64);
    for a in &x.arenas {
        let (kind, addr) = match a.home {
            Home::Main => (HOME_MAIN, 0),
            Home::Arena(addr) => (HOME_ARENA, addr),
            Home::Mmapped => (HOME_MMAPPED, 0),
        };
        out.push(kind);
        for v in [addr, u64::from(a.heaps), a.reserved, a.resident, a.live] {
            put_varint(&mut out, v);
        }
    }
    out
}

/// Decodes a tick-extra payload.
pub fn decode_tick_extra(buf: &[u8]) -> Result<TickExtra, &'static str> {
    let mut c = Cursor::new(buf);
    let t_ms = c.varint()?;
    let n = c.count(3)?;
    let mut cross = Vec::with_capacity(n);
    for _ in 0..n {
        cross.push((SiteId(c.u32()?), c.varint()?, c.varint()?));
    }
    let n = c.count(6)?;
    let mut arenas = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = c.u8()?;
        let addr = c.varint()?;
        let home = match kind {
            HOME_MAIN => Home::Main,
            HOME_ARENA => Home::Arena(addr),
            HOME_MMAPPED => Home::Mmapped,
            _ => return Err("bad arena kind"),
        };
        arenas.push(ArenaSample {
            home,
            heaps: c.u32()?,
            reserved: c.varint()?,
            resident: c.varint()?,
            live: c.varint()?,
        });
    }
    c.done()?;
    Ok(TickExtra {
        t_ms,
        cross,
        arenas,
    })
}
