use super::*;
use crate::process::arenas::Home;
use crate::timeline::ArenaSample;

#[test]
fn varints_round_trip_and_reject_overflow() {
    for v in [0, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
        let b = varint_bytes(v);
        let mut c = Cursor::new(&b);
        assert_eq!(c.varint(), Ok(v));
        assert!(c.done().is_ok());
    }
    let mut c = Cursor::new(&[0xff; 11]);
    assert!(c.varint().is_err());
    let mut c = Cursor::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]);
    assert_eq!(c.varint(), Err("varint overflows 64 bits"));
    assert!(Cursor::new(&[0x80]).varint().is_err());
}

#[test]
fn api_names_map_back_to_static_symbols() {
    assert_eq!(api_symbol("calloc"), "calloc");
    assert_eq!(api_symbol("mmap"), "mmap");
    assert_eq!(api_symbol("operator new"), "operator new");
    assert_eq!(api_symbol("operator new[]"), "operator new[]");
    assert_eq!(api_symbol("no such api"), "?");
}

#[test]
fn tick_extras_round_trip() {
    let x = TickExtra {
        t_ms: 1500,
        cross: vec![(SiteId(3), 4096, 16)],
        arenas: vec![
            ArenaSample {
                home: Home::Main,
                heaps: 1,
                reserved: 135_168,
                resident: 135_168,
                live: 1000,
            },
            ArenaSample {
                home: Home::Arena(0x7f12_3400_0020),
                heaps: 2,
                reserved: 1 << 20,
                resident: 1 << 19,
                live: 77,
            },
            ArenaSample {
                home: Home::Mmapped,
                heaps: 3,
                reserved: 3 << 20,
                resident: 3 << 20,
                live: 3 << 20,
            },
        ],
    };
    let b = encode_tick_extra(&x);
    assert_eq!(decode_tick_extra(&b), Ok(x));
    assert!(decode_tick_extra(&b[..b.len() - 1]).is_err());
}

#[test]
fn counts_cannot_exceed_the_payload() {
    // A site claiming 2^40 frames in a 10-byte payload.
    let mut b = vec![0];
    put_str(&mut b, "malloc");
    put_varint(&mut b, 1 << 40);
    assert_eq!(decode_site(&b), Err("count larger than the payload"));
}
