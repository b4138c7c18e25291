//! Property tests of the package codec (docs/package-format.md).
//!
//! - Arbitrary valid packages round-trip in both encodings, exactly (reals by
//!   bits), and the encoding of a decoded package is the same bytes.
//! - Arbitrary bytes, arbitrary postcard bodies behind a valid header and
//!   checksum, and arbitrary JSON bodies behind a valid checksum never make
//!   `Package::decode` panic; whatever it accepts passes `validate` and
//!   re-encodes stably.
//! - Any changed byte, any truncation and any extra byte of a valid encoding
//!   is rejected.
//! - A package that breaks one validation rule is rejected even when its
//!   checksum is correct.
//!
//! `PROPTEST_CASES=50000` runs more cases (256 by default; 50 000 take ~20 s).

use crsql_stream_core::package::{
    crc64, Bytes, Encoding, Package, PackageKind, Part, PkgChange, TableEntry, WireValue,
    FORMAT_VERSION, MAGIC,
};
use crsql_stream_core::{Position, Value, ValueRef};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};

fn config(default_cases: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------
// Strategies

/// Any value: every i64, every f64 bit pattern except NaN (SQLite stores a
/// NaN as NULL; JSON would keep a NaN but not its payload bits), any text.
fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Integer),
        prop::sample::select(vec![0, -1, 1, 63, 64, -65, i64::MIN, i64::MAX])
            .prop_map(Value::Integer),
        any::<u64>()
            .prop_map(f64::from_bits)
            .prop_filter("not NaN", |r| !r.is_nan())
            .prop_map(Value::Real),
        prop::sample::select(vec![
            2.0,
            -0.0,
            0.0,
            0.1,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            f64::INFINITY,
            f64::NEG_INFINITY
        ])
        .prop_map(Value::Real),
        any::<String>().prop_map(Value::Text),
        prop::collection::vec(any::<u8>(), 0..40).prop_map(Value::Blob),
    ]
}

fn bytes(len: impl Into<prop::collection::SizeRange>) -> impl Strategy<Value = Bytes<'static>> {
    prop::collection::vec(any::<u8>(), len).prop_map(Bytes::from)
}

fn table_entry() -> impl Strategy<Value = TableEntry> {
    (
        any::<String>(),
        any::<u64>(),
        prop::collection::vec(any::<String>(), 0..5),
    )
        .prop_map(|(name, schema_hash, columns)| TableEntry {
            name,
            schema_hash,
            columns,
        })
}

/// A change before its position and dictionary indexes are fixed: the raw
/// numbers are reduced modulo the dictionary sizes in `package()`.
#[derive(Clone, Debug)]
struct RawChange {
    table: u32,
    cid: u32,
    site: u32,
    pk: Bytes<'static>,
    val: Value,
    col_version: i64,
    cl: i64,
    /// Step to the next position: `None` = next seq, `Some(d)` = db_version + d.
    step: Option<i64>,
    seq_gap: i64,
}

fn raw_change() -> impl Strategy<Value = RawChange> {
    (
        (any::<u32>(), any::<u32>(), any::<u32>()),
        bytes(0..12),
        any_value(),
        (any::<i64>(), any::<i64>()),
        prop::option::of(1i64..1000),
        0i64..3,
    )
        .prop_map(
            |((table, cid, site), pk, val, (col_version, cl), step, seq_gap)| RawChange {
                table,
                cid,
                site,
                pk,
                val,
                col_version,
                cl,
                step,
                seq_gap,
            },
        )
}

/// A valid package: ids of 16 bytes, ordered positions inside
/// `(since, cursor]`, indexes inside the dictionaries, `part` matching the
/// cursor. Positions start small or near `i64::MAX`.
fn package() -> impl Strategy<Value = Package<'static>> {
    (
        (bytes(16..=16), bytes(16..=16), any::<String>()),
        prop_oneof![
            (0i64..100, 0i64..100),
            ((i64::MAX - 1_000_000)..(i64::MAX - 500_000), 0i64..100),
        ],
        prop::collection::vec(table_entry(), 1..4),
        prop::collection::vec(bytes(1..=16), 1..4),
        prop::collection::vec(raw_change(), 0..10),
        (0i64..3, prop::option::of(any::<bool>())),
    )
        .prop_map(
            |((sender, stream_id, stream), since, tables, sites, raw, (tail, part))| {
                let since = Position::new(since.0, since.1);
                let mut pos = since;
                let mut changes = Vec::new();
                for r in raw {
                    pos = match r.step {
                        None => Position::new(pos.db_version, pos.seq + 1 + r.seq_gap),
                        Some(d) => Position::new(pos.db_version + d, r.seq_gap),
                    };
                    let table = r.table % tables.len() as u32;
                    let ncols = tables[table as usize].columns.len() as u32;
                    changes.push(PkgChange {
                        table,
                        pk: r.pk,
                        cid: r.cid % (ncols + 1),
                        val: WireValue::Owned(r.val),
                        col_version: r.col_version,
                        db_version: pos.db_version,
                        site: r.site % sites.len() as u32,
                        cl: r.cl,
                        seq: pos.seq,
                    });
                }
                // Filtered changes may follow the last one: the cursor can lie beyond.
                let cursor = Position::new(pos.db_version, pos.seq + tail);
                let part = part.map(|last| Part {
                    db_version: cursor.db_version,
                    last,
                });
                Package {
                    sender,
                    stream_id,
                    stream,
                    since,
                    cursor,
                    part,
                    tables,
                    sites,
                    changes,
                    // Both kinds, drawn from a bit the strategy already varies.
                    kind: if since.seq % 2 == 0 {
                        PackageKind::Changes
                    } else {
                        PackageKind::Snapshot
                    },
                }
            },
        )
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Binary), Just(Encoding::Json)]
}

// ---------------------------------------------------------------------------
// Helpers

/// Exact equality of packages: reals compared by bits (PartialEq on f64
/// would take -0.0 for 0.0).
fn same(a: &Package, b: &Package) -> bool {
    let same_val = |x: ValueRef, y: ValueRef| match (x, y) {
        (ValueRef::Real(x), ValueRef::Real(y)) => x.to_bits() == y.to_bits(),
        _ => x == y,
    };
    a == b
        && a.changes
            .iter()
            .zip(&b.changes)
            .all(|(x, y)| same_val(x.val.as_ref(), y.val.as_ref()))
}

/// A binary package with `body` as its postcard body and a correct CRC.
fn wrap_binary(body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(FORMAT_VERSION);
    out.extend_from_slice(body);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A JSON package with `body` as its body and a correct CRC.
fn wrap_json(body: &[u8]) -> Vec<u8> {
    let mut out = b"{\"body\":".to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(format!(",\"crc\":\"{:016x}\"}}", crc64(body)).as_bytes());
    out
}

/// What must hold of any package `decode` accepted.
fn check_accepted(pkg: &Package) -> Result<(), TestCaseError> {
    prop_assert!(pkg.validate().is_ok());
    for c in &pkg.changes {
        let _ = pkg.cid_of(c);
    }
    for enc in [Encoding::Binary, Encoding::Json] {
        let bytes = pkg.encode(enc).unwrap();
        let again = Package::decode(&bytes).unwrap();
        prop_assert_eq!(again.encode(enc).unwrap(), bytes);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_packages_round_trip_exactly_in_both_encodings(
        pkg in package(),
        enc in encoding(),
    ) {
        prop_assert!(pkg.validate().is_ok(), "the strategy made an invalid package");
        let bytes = pkg.encode(enc).unwrap();
        prop_assert_eq!(Package::sniff(&bytes), enc);
        let back = Package::decode(&bytes).unwrap();
        prop_assert!(same(&back, &pkg), "{:?}\ncame back as\n{:?}", pkg, back);
        prop_assert_eq!(back.encode(enc).unwrap(), bytes, "re-encoding is not identical");
    }

    #[test]
    fn binary_and_json_decode_to_the_same_package(pkg in package()) {
        let (bin, json) = (pkg.encode(Encoding::Binary).unwrap(), pkg.encode(Encoding::Json).unwrap());
        let bin = Package::decode(&bin).unwrap();
        let json = Package::decode(&json).unwrap();
        prop_assert!(same(&bin, &json));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            // Start like a package, so the checks after the magic are reached.
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| [&b"CRSP\x01"[..], &b].concat()),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| [&b"{\"body\":"[..], &b].concat()),
        ]
    ) {
        if let Ok(pkg) = Package::decode(&bytes) {
            check_accepted(&pkg)?;
        }
    }

    #[test]
    fn arbitrary_bodies_behind_a_valid_header_and_checksum_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok(pkg) = Package::decode(&wrap_binary(&body)) {
            check_accepted(&pkg)?;
        }
    }

    #[test]
    fn mutated_valid_bodies_behind_a_correct_checksum_never_panic(
        pkg in package(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        // Mostly-valid bodies get much deeper into the decoder than random ones.
        let bin = pkg.encode(Encoding::Binary).unwrap();
        let mut body = bin[5..bin.len() - 8].to_vec();
        for (i, b) in &edits {
            let i = i.index(body.len());
            body[i] = *b;
        }
        if let Some(c) = cut {
            body.truncate(c.index(body.len()));
        }
        if let Ok(p) = Package::decode(&wrap_binary(&body)) {
            check_accepted(&p)?;
        }
        let json = pkg.encode(Encoding::Json).unwrap();
        let mut body = json[8..json.len() - 26].to_vec();
        for (i, b) in &edits {
            let i = i.index(body.len());
            body[i] = *b;
        }
        if let Ok(p) = Package::decode(&wrap_json(&body)) {
            check_accepted(&p)?;
        }
    }

    #[test]
    fn any_changed_byte_of_a_valid_package_is_rejected(
        pkg in package(),
        enc in encoding(),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut bytes = pkg.encode(enc).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        prop_assert!(
            Package::decode(&bytes).is_err(),
            "{:?} byte {} of {} xor {:#04x} was accepted", enc, i, bytes.len(), xor
        );
    }

    #[test]
    fn any_strict_prefix_of_a_valid_package_is_rejected(
        pkg in package(),
        enc in encoding(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = pkg.encode(enc).unwrap();
        let len = cut.index(bytes.len());
        prop_assert!(Package::decode(&bytes[..len]).is_err(), "{:?} prefix of {} bytes", enc, len);
    }

    #[test]
    fn any_extra_byte_in_a_valid_package_is_rejected(
        pkg in package(),
        enc in encoding(),
        at in any::<prop::sample::Index>(),
        extra in any::<u8>(),
        append in any::<bool>(),
    ) {
        let mut bytes = pkg.encode(enc).unwrap();
        let i = if append { bytes.len() } else { at.index(bytes.len() + 1) };
        bytes.insert(i, extra);
        prop_assert!(Package::decode(&bytes).is_err(), "{:?} byte {:#04x} inserted at {}", enc, extra, i);
    }

    #[test]
    fn a_broken_rule_is_rejected_even_with_a_correct_checksum(
        pkg in package(),
        enc in encoding(),
        rule in 0u8..9,
        pick in any::<prop::sample::Index>(),
    ) {
        let mut p = pkg;
        let n = p.changes.len();
        let c = if n == 0 { None } else { Some(pick.index(n)) };
        match (rule, c) {
            (0, _) => p.sender.0.to_mut().push(0),
            (1, _) => { p.stream_id.0.to_mut().pop(); }
            (2, _) => { p.since = Position::new(p.cursor.db_version, p.cursor.seq + 1); }
            (3, _) => { p.part = Some(Part { db_version: p.cursor.db_version + 1, last: true }); }
            (4, _) => { p.sites[0].0.to_mut().clear(); p.changes.iter_mut().for_each(|c| c.site = 0); }
            (5, Some(i)) => p.changes[i].table = p.tables.len() as u32,
            (6, Some(i)) => {
                let t = p.changes[i].table as usize;
                p.changes[i].cid = p.tables[t].columns.len() as u32 + 1;
            }
            (7, Some(i)) => p.changes[i].site = p.sites.len() as u32,
            (8, Some(i)) => {
                // Out of order: move the change to `since` (or before the previous one).
                p.changes[i].db_version = p.since.db_version;
                p.changes[i].seq = p.since.seq;
            }
            _ => { p.cursor = Position::new(-1, 0); p.since = Position::new(-1, 0); p.part = None; }
        }
        prop_assert!(p.validate().is_err());
        let bytes = p.encode(enc).unwrap();
        prop_assert!(Package::decode(&bytes).is_err(), "rule {} broken but accepted", rule);
    }
}
