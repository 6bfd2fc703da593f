//! Damage in the middle of a recording: skipped, resynchronised on the next
//! valid record, named by its byte offset; a missing end record.

use super::format;
use super::tests::{read_bytes, record_ends, recording_bytes, sites, ticks};
use crate::timeline::testutil::Rng;

/// Start offsets of the records of a valid file, with their type.
fn record_starts(b: &[u8]) -> Vec<(u8, usize)> {
    let ends = record_ends(b);
    let mut at = format::FILE_HEADER_LEN;
    ends.iter()
        .map(|(t, e)| {
            let s = at;
            at = *e;
            (*t, s)
        })
        .collect()
}

#[test]
fn a_flipped_bit_anywhere_after_the_header_skips_one_record() {
    let bytes = recording_bytes(true);
    let starts = record_starts(&bytes);
    let ends = record_ends(&bytes);
    // Every bit of every record but the header and the last one.
    for (i, &(kind, start)) in starts.iter().enumerate().skip(1) {
        if i + 1 == starts.len() {
            continue;
        }
        let end = ends[i].1;
        for byte in start..end {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[byte] ^= 1 << bit;
                let rec = read_bytes(&b).unwrap_or_else(|e| panic!("byte {byte} bit {bit}: {e}"));
                assert_eq!(rec.damaged_records, 1, "byte {byte} bit {bit}");
                assert_eq!(rec.damage[0].offset, start as u64, "byte {byte} bit {bit}");
                assert_eq!(rec.damage[0].bytes, (end - start) as u64, "byte {byte}");
                assert!(!rec.truncated, "byte {byte} bit {bit}");
                assert_eq!(rec.end_ms, Some(5500), "byte {byte} bit {bit}");
                let lost_ticks = usize::from(kind == format::TYPE_TICK);
                assert_eq!(rec.timeline.len(), ticks().len() - lost_ticks);
                if kind == format::TYPE_SITE {
                    // A lost site keeps its id: later sites stay in place.
                    assert_eq!(rec.timeline.sites().len(), sites().len());
                }
            }
        }
    }
}

#[test]
fn a_length_flipped_upwards_mid_file_is_damage_not_a_cut_tail() {
    // The case that used to drop the rest of the file as "stopped mid-write".
    let bytes = recording_bytes(true);
    let starts = record_starts(&bytes);
    let (_, at) = starts[4];
    let mut b = bytes.clone();
    b[at + 3] ^= 0x10; // + 256 MiB: past the end of the file
    let rec = read_bytes(&b).expect("read");
    assert!(!rec.truncated);
    assert_eq!(rec.damaged_records, 1);
    assert_eq!(rec.damage[0].offset, at as u64);
    assert!(rec.damage[0].reason.contains("length"), "{:?}", rec.damage);
    assert_eq!(rec.end_ms, Some(5500));
    // Slightly longer: the CRC no longer matches; resynchronised all the same.
    let mut b = bytes.clone();
    b[at] ^= 0x01;
    let rec = read_bytes(&b).expect("read");
    assert_eq!((rec.damaged_records, rec.end_ms), (1, Some(5500)));
}

#[test]
fn zeroed_stretches_and_garbage_are_skipped_and_counted() {
    let bytes = recording_bytes(true);
    let starts = record_starts(&bytes);
    // Two separate stretches of zeros, each over one tick's start.
    let mut b = bytes.clone();
    for &(_, at) in [starts[5], starts[7]].iter() {
        b[at..at + 6].fill(0);
    }
    let rec = read_bytes(&b).expect("read");
    assert_eq!(rec.damaged_records, 2, "{:?}", rec.damage);
    assert_eq!(rec.damage.len(), 2);
    let summary = rec.damage_summary().expect("damaged");
    assert!(
        summary.starts_with(&format!("damaged at byte {}", starts[5].1))
            && summary.contains("2 records skipped (2 damaged stretches)"),
        "{summary}"
    );
    // Garbage inserted between two records.
    let mut b = bytes.clone();
    let at = starts[6].1;
    b.splice(at..at, [0xde, 0xad, 0xbe, 0xef, 0x03, 0x00, 0x11]);
    let rec = read_bytes(&b).expect("read");
    assert_eq!(rec.damaged_records, 1);
    assert_eq!(rec.damage[0].bytes, 7);
    assert_eq!(rec.timeline.ticks(), ticks());
}

#[test]
fn a_file_without_an_end_record_says_so() {
    let bytes = recording_bytes(false);
    let rec = read_bytes(&bytes).expect("read");
    assert_eq!(rec.end_ms, None);
    assert!(!rec.truncated && !rec.is_damaged());
    // Cut inside its last record: truncated, not damaged.
    let rec = read_bytes(&bytes[..bytes.len() - 3]).expect("read");
    assert!(rec.truncated && !rec.is_damaged());
}

#[test]
fn data_after_the_end_record_is_damage() {
    let mut bytes = recording_bytes(true);
    format::frame_record(format::TYPE_TICK, &[0, 0, 0, 0], &mut bytes);
    let rec = read_bytes(&bytes).expect("read");
    assert_eq!(rec.damaged_records, 1);
    assert_eq!(rec.damage[0].reason, "record after the end record");
}

/// Random mutations of several kinds: never a panic, and what is read is
/// consistent (no more ticks or sites than written, damage inside the file).
#[test]
fn random_damage_never_panics() {
    let bytes = recording_bytes(true);
    let mut rng = Rng(0xda_3a6e);
    let mut damaged = 0;
    for _ in 0..3000 {
        let mut b = bytes.clone();
        match rng.below(4) {
            0 => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(b.len() as u64) as usize;
                let n = (rng.below(64) as usize).min(b.len() - i);
                b[i..i + n].fill(rng.next() as u8);
            }
            2 => {
                let i = rng.below(b.len() as u64) as usize;
                let junk: Vec<u8> = (0..rng.below(32)).map(|_| rng.next() as u8).collect();
                b.splice(i..i, junk);
            }
            _ => {
                let i = rng.below(b.len() as u64) as usize;
                let n = (rng.below(48) as usize).min(b.len() - i);
                b.drain(i..i + n);
            }
        }
        if let Ok(rec) = read_bytes(&b) {
            assert!(rec.timeline.len() <= ticks().len() + 1);
            for d in &rec.damage {
                assert!(d.offset + d.bytes <= b.len() as u64, "{d:?}");
            }
            damaged += usize::from(rec.is_damaged());
        }
    }
    assert!(damaged > 500, "damage reported in {damaged} of 3000");
}
