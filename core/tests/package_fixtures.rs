//! Byte fixtures of the package format (docs/package-format.md).
//!
//! A few fixed packages are encoded and compared byte for byte with the files
//! in `tests/fixtures/package/`, and the files decode back to the same
//! packages. A change to the wire format therefore fails here until the files
//! are regenerated on purpose:
//!
//! ```text
//! CRSQL_BLESS=1 cargo test -p crsql-stream-core --test package_fixtures
//! ```
//!
//! Review the diff of the fixtures (and update docs/package-format.md, whose
//! worked example is checked against `small.bin` below) before committing.
//! A format change that existing peers cannot read needs a new
//! `FORMAT_VERSION`, not just new fixtures.

use std::path::PathBuf;

use crsql_stream_core::package::{
    schema_hash, to_hex, Bytes, Encoding, Package, PackageKind, Part, PkgChange, TableEntry,
    WireValue,
};
use crsql_stream_core::{pack_columns, Position, Value, ValueRef};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/package")
}

fn blessing() -> bool {
    std::env::var("CRSQL_BLESS").is_ok_and(|v| v == "1")
}

/// Encodes `pkg`, compares the bytes with the fixture `name` (writing it
/// first under `CRSQL_BLESS=1`), and checks the fixture decodes back to `pkg`
/// and re-encodes to the same bytes. Returns the fixture's bytes.
fn check_fixture(name: &str, pkg: &Package, enc: Encoding) -> Vec<u8> {
    let path = fixture_dir().join(name);
    let encoded = pkg.encode(enc).unwrap();
    if blessing() {
        std::fs::create_dir_all(fixture_dir()).unwrap();
        std::fs::write(&path, &encoded).unwrap();
    }
    let stored = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read fixture {}: {e}; run with CRSQL_BLESS=1 to create it",
            path.display()
        )
    });
    match enc {
        Encoding::Binary => assert_eq!(
            to_hex(&encoded),
            to_hex(&stored),
            "{name}: the binary encoding changed; if on purpose, rerun with CRSQL_BLESS=1"
        ),
        Encoding::Json => assert_eq!(
            String::from_utf8_lossy(&encoded),
            String::from_utf8_lossy(&stored),
            "{name}: the JSON encoding changed; if on purpose, rerun with CRSQL_BLESS=1"
        ),
    }
    assert_eq!(Package::sniff(&stored), enc);
    let decoded = Package::decode(&stored).unwrap();
    assert_eq!(&decoded, pkg, "{name} decodes to a different package");
    // PartialEq takes -0.0 == 0.0; the re-encoding compares reals by bits.
    assert_eq!(decoded.encode(enc).unwrap(), stored);
    stored
}

fn pk(values: &[ValueRef<'_>]) -> Bytes<'static> {
    Bytes::from(pack_columns(values.iter().copied()).unwrap())
}

/// The worked example of docs/package-format.md: a row of `todos` created
/// with its title, two changes in one transaction.
fn small() -> Package<'static> {
    Package {
        sender: Bytes::from(vec![0x11; 16]),
        stream_id: Bytes::from(vec![0x22; 16]),
        stream: "to_b".into(),
        since: Position::new(3, 1),
        cursor: Position::new(4, 1),
        part: None,
        tables: vec![TableEntry {
            name: "todos".into(),
            schema_hash: schema_hash("todos", &["id"], &["title"]),
            columns: vec!["title".into()],
        }],
        sites: vec![Bytes::from(vec![0x33; 16])],
        changes: vec![
            PkgChange {
                table: 0,
                pk: pk(&[ValueRef::Integer(7)]),
                cid: 0,
                val: WireValue::Owned(Value::Null),
                col_version: 1,
                db_version: 4,
                site: 0,
                cl: 1,
                seq: 0,
            },
            PkgChange {
                table: 0,
                pk: pk(&[ValueRef::Integer(7)]),
                cid: 1,
                val: WireValue::Owned(Value::Text("hé".into())),
                col_version: 1,
                db_version: 4,
                site: 0,
                cl: 1,
                seq: 1,
            },
        ],
        kind: PackageKind::Changes,
    }
}

/// Every kind of value and the awkward ones of each kind, over two tables and
/// three origin sites (one of them shorter than 16 bytes).
fn all_values() -> Package<'static> {
    let values = vec![
        Value::Null,
        Value::Integer(0),
        Value::Integer(-1),
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Real(2.0),
        Value::Real(-0.0),
        Value::Real(0.1),
        Value::Real(f64::MAX),
        Value::Real(f64::MIN_POSITIVE / 4.0),
        Value::Real(f64::INFINITY),
        Value::Real(f64::NEG_INFINITY),
        Value::Text(String::new()),
        Value::Text("héllo wörld ✓ 日本語 🦀".into()),
        Value::Text("quote \" backslash \\ newline \n tab \t nul \0 del \u{7f}".into()),
        Value::Blob(vec![]),
        Value::Blob(vec![0x00, 0xff, 0x7f, 0x80, b'{', b'"']),
    ];
    let mut changes = Vec::new();
    let mut seq = 0;
    for (i, v) in values.into_iter().enumerate() {
        let table = (i % 2) as u32;
        changes.push(PkgChange {
            table,
            pk: pk(&[ValueRef::Integer(i as i64), ValueRef::Text("k".as_bytes())]),
            // table 0 has two columns, table 1 one: cycle through 1..=n.
            cid: 1 + (i as u32 / 2) % (2 - table),
            val: WireValue::Owned(v),
            col_version: [1, i64::MAX, 0][i % 3],
            db_version: 40 + (i as i64) / 6,
            site: (i % 3) as u32,
            cl: [1, 3, i64::MAX][i % 3],
            seq,
        });
        seq = if (i + 1) % 6 == 0 { 0 } else { seq + 1 };
    }
    // One sentinel change (cid 0) deleting a row of the second table.
    changes.push(PkgChange {
        table: 1,
        pk: pk(&[ValueRef::Blob(&[1, 2, 3])]),
        cid: 0,
        val: WireValue::Owned(Value::Null),
        col_version: 2,
        db_version: 42,
        site: 1,
        cl: 2,
        seq: 5,
    });
    let cursor = Position::new(42, 5);
    Package {
        sender: Bytes::from((0..16).collect::<Vec<u8>>()),
        stream_id: Bytes::from((0..16).map(|b| 0xf0 | b).collect::<Vec<u8>>()),
        stream: "to_server ✓".into(),
        since: Position::new(39, 7),
        cursor,
        part: None,
        tables: vec![
            TableEntry {
                name: "notes".into(),
                schema_hash: schema_hash("notes", &["id", "k"], &["body", "score"]),
                columns: vec!["body".into(), "score".into()],
            },
            TableEntry {
                name: "日本".into(),
                schema_hash: u64::MAX,
                columns: vec!["v".into()],
            },
        ],
        sites: vec![
            Bytes::from(vec![0xaa; 16]),
            Bytes::from(vec![0xbb; 16]),
            Bytes::from(vec![0x01]),
        ],
        changes,
        kind: PackageKind::Changes,
    }
}

/// One part of a transaction split over several packages: `first` is the
/// first part (not last), otherwise the last part.
fn split_part(last: bool) -> Package<'static> {
    let (since, cursor, seqs) = if last {
        (Position::new(9, 1), Position::new(9, 3), [2, 3])
    } else {
        (Position::new(8, 4), Position::new(9, 1), [0, 1])
    };
    Package {
        sender: Bytes::from(vec![0x44; 16]),
        stream_id: Bytes::from(vec![0x55; 16]),
        stream: "big".into(),
        since,
        cursor,
        part: Some(Part {
            db_version: 9,
            last,
        }),
        tables: vec![TableEntry {
            name: "blobs".into(),
            schema_hash: schema_hash("blobs", &["id"], &["data"]),
            columns: vec!["data".into()],
        }],
        sites: vec![Bytes::from(vec![0x44; 16])],
        changes: seqs
            .iter()
            .map(|&seq| PkgChange {
                table: 0,
                pk: pk(&[ValueRef::Integer(seq)]),
                cid: 1,
                val: WireValue::Owned(Value::Blob(vec![seq as u8; 20])),
                col_version: 1,
                db_version: 9,
                site: 0,
                cl: 1,
                seq,
            })
            .collect(),
        kind: PackageKind::Changes,
    }
}

/// A package of a stream catching up from below its database's compaction
/// horizon: a compacted delete, at the position it was made.
fn snapshot() -> Package<'static> {
    let mut p = small();
    p.kind = PackageKind::Snapshot;
    p.changes.truncate(1);
    p.changes[0].col_version = 2;
    p.changes[0].cl = 2;
    p.cursor = Position::new(4, 0);
    p
}

#[test]
fn a_snapshot_package_matches_its_fixtures_and_says_its_kind() {
    let bin = check_fixture("snapshot.bin", &snapshot(), Encoding::Binary);
    assert_eq!(bin[4..6], [2, 1], "format version 2, kind byte 1");
    let json = check_fixture("snapshot.json", &snapshot(), Encoding::Json);
    assert!(String::from_utf8(json)
        .unwrap()
        .contains("\"kind\":\"snapshot\""));
    // An ordinary package stays at format version 1, without the key.
    assert_eq!(small().encode(Encoding::Binary).unwrap()[4], 1);
    let small_json = small().encode(Encoding::Json).unwrap();
    assert!(!String::from_utf8(small_json).unwrap().contains("\"kind\""));
}

#[test]
fn the_small_binary_package_matches_its_fixture_byte_for_byte() {
    check_fixture("small.bin", &small(), Encoding::Binary);
}

#[test]
fn the_small_package_in_json_matches_its_fixture_byte_for_byte() {
    check_fixture("small.json", &small(), Encoding::Json);
}

#[test]
fn a_package_with_every_value_type_matches_its_binary_fixture() {
    check_fixture("all_values.bin", &all_values(), Encoding::Binary);
}

#[test]
fn a_package_with_every_value_type_matches_its_json_fixture() {
    let stored = check_fixture("all_values.json", &all_values(), Encoding::Json);
    let text = String::from_utf8(stored).unwrap();
    for needle in [
        "{\"Real\":\"2.0\"}",
        "{\"Real\":\"-0.0\"}",
        "{\"Real\":\"inf\"}",
        "{\"Real\":\"-inf\"}",
        "{\"Integer\":-9223372036854775808}",
        "{\"Integer\":9223372036854775807}",
        "{\"Text\":\"\"}",
        "{\"Blob\":\"\"}",
        "{\"Blob\":\"00ff7f807b22\"}",
        "\"val\":\"Null\"",
        "héllo wörld ✓ 日本語 🦀",
        "\"schema_hash\":18446744073709551615",
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
}

#[test]
fn the_first_part_of_a_split_transaction_matches_its_binary_fixture() {
    check_fixture("split_first_part.bin", &split_part(false), Encoding::Binary);
}

#[test]
fn the_last_part_of_a_split_transaction_matches_its_json_fixture() {
    let stored = check_fixture("split_last_part.json", &split_part(true), Encoding::Json);
    let text = String::from_utf8(stored).unwrap();
    assert!(text.contains("\"part\":{\"db_version\":9,\"last\":true}"));
}

#[test]
fn negative_zero_keeps_its_sign_through_both_fixtures() {
    for name in ["all_values.bin", "all_values.json"] {
        let bytes = std::fs::read(fixture_dir().join(name)).unwrap();
        let pkg = Package::decode(&bytes).unwrap();
        let reals: Vec<u64> = pkg
            .changes
            .iter()
            .filter_map(|c| match c.val.as_ref() {
                ValueRef::Real(r) => Some(r.to_bits()),
                _ => None,
            })
            .collect();
        assert!(reals.contains(&(-0.0f64).to_bits()), "{name}");
        assert!(reals.contains(&0.1f64.to_bits()), "{name}");
    }
}

/// The hex dump after `<!-- fixture: small.bin -->` in the format document.
fn documented_hex(doc: &str, marker: &str) -> String {
    let start = doc
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not found in docs/package-format.md"));
    let block = &doc[start..];
    let open = block.find("```").unwrap();
    let body = &block[open + 3..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let close = body.find("```").unwrap();
    body[..close]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

#[test]
fn the_worked_example_in_the_format_document_is_the_small_fixture() {
    let doc_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/package-format.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    let bin = std::fs::read(fixture_dir().join("small.bin")).unwrap();
    assert_eq!(
        documented_hex(&doc, "<!-- fixture: small.bin -->"),
        to_hex(&bin),
        "update the worked example in docs/package-format.md"
    );
    let json = std::fs::read_to_string(fixture_dir().join("small.json")).unwrap();
    assert!(
        doc.contains(&json),
        "docs/package-format.md must quote small.json verbatim:\n{json}"
    );
}
