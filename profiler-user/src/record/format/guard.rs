//! Guard records: one decision window of the overhead guard
//! (`--max-overhead`), written before the tick it was taken at.

use super::{put_varint, Cursor};
use crate::timeline::GuardPoint;

/// Payload of a guard record:
/// `t_ms budget_centi percent_centi from rate floor:u8`.
pub fn encode_guard(p: &GuardPoint) -> Vec<u8> {
    let mut out = Vec::new();
    for v in [p.t_ms, p.budget_centi, p.percent_centi, p.from, p.rate] {
        put_varint(&mut out, v);
    }
    out.push(u8::from(p.floor));
    out
}

/// Decodes a guard payload.
pub fn decode_guard(buf: &[u8]) -> Result<GuardPoint, &'static str> {
    let mut c = Cursor::new(buf);
    let p = GuardPoint {
        t_ms: c.varint()?,
        budget_centi: c.varint()?,
        percent_centi: c.varint()?,
        from: c.varint()?,
        rate: c.varint()?,
        floor: match c.u8()? {
            0 => false,
            1 => true,
            _ => return Err("bad guard floor flag"),
        },
    };
    c.done()?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_points_round_trip() {
        let p = GuardPoint {
            t_ms: 4000,
            budget_centi: 100,
            percent_centi: 3150,
            from: 0,
            rate: 65536,
            floor: true,
        };
        let b = encode_guard(&p);
        assert_eq!(decode_guard(&b), Ok(p));
        assert!(decode_guard(&b[..b.len() - 1]).is_err());
        let mut bad = b.clone();
        *bad.last_mut().expect("a byte") = 7;
        assert!(decode_guard(&bad).is_err());
    }
}
