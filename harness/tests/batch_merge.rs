//! The inbound stream's batch merge (`crsql_internal_merge`, which decides
//! the changes of a row together and writes once per row) against the
//! one-change-at-a-time merge of `INSERT INTO crsql_changes`.
//!
//! Each case builds a receiver database with local writes (and sometimes
//! `merge-equal-values` on), copies its file, and merges the same random
//! changes into both copies: into one as packages applied by a
//! `crsql_InboundStream`, into the other row by row with
//! `INSERT INTO crsql_changes VALUES (...)`, one transaction per package.
//! The changes come straight from the package format (built with the
//! core crate), so they cover what real peers rarely produce: many changes
//! of one row in one package, ties on col_version with values of every
//! storage class (and affinity conversions: `'5'` into an INTEGER column),
//! deletes and resurrections with any causal length, the receiver's own
//! site as origin, local writes between packages, base rows the clocks do
//! not know (written with the sync bit set, or the same INTEGER PRIMARY KEY
//! under another packed key: an insert of a new row then finds it there). Two tables: a narrow one
//! (every clock row of a row read with its key) and one of 66 columns
//! (clocks read one by one). Both copies must end byte for byte equal:
//! base tables (with storage classes), clock tables, key tables,
//! `crsql_site_id`, every row of `crsql_changes` and the db_version.

use std::path::Path;

use crsql_stream_core::package::{
    schema_hash, Bytes, Encoding, Package, PackageKind, PkgChange, TableEntry, WireValue,
};
use crsql_stream_core::{pack_columns, Position, Value as CoreValue};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use rusqlite::types::Value;
use rusqlite::Connection;

use crsql_stream_harness::sql::{rows, Change, INSERT_CHANGE};
use crsql_stream_harness::{close, compact_layout, open};

const WIDE_COLUMNS: usize = 66;

fn schema() -> String {
    let wide: Vec<String> = (0..WIDE_COLUMNS).map(|i| format!("c{i}")).collect();
    format!(
        "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a, b INTEGER, c TEXT);
         SELECT crsql_as_crr('t');
         CREATE TABLE w (k TEXT PRIMARY KEY NOT NULL, {});
         SELECT crsql_as_crr('w');",
        wide.join(", ")
    )
}

/// The columns a change may name, per table (the sentinel is `-1`).
fn columns(table: usize) -> Vec<String> {
    match table {
        0 => vec!["a".into(), "b".into(), "c".into()],
        _ => (0..WIDE_COLUMNS).map(|i| format!("c{i}")).collect(),
    }
}

const TABLE_NAMES: [&str; 2] = ["t", "w"];
const PK_NAMES: [&str; 2] = ["id", "k"];

fn values() -> Vec<CoreValue> {
    vec![
        CoreValue::Null,
        CoreValue::Integer(1),
        CoreValue::Integer(2),
        CoreValue::Real(1.0),
        CoreValue::Real(2.5),
        CoreValue::Text("1".into()),
        CoreValue::Text("5".into()),
        CoreValue::Text("x".into()),
        CoreValue::Blob(vec![1]),
        CoreValue::Blob(vec![]),
    ]
}

fn pk(table: usize, row: usize) -> Vec<u8> {
    let v = match (table, row) {
        // TEXT '2' is a key of its own in the clocks, but the same row as
        // the integer 2 in the INTEGER PRIMARY KEY column. Not on the
        // compact layout, whose row clocks are keyed by that column itself
        // (docs/compact-layout.md, "Known differences"): a row of its own there.
        (0, 3) if compact_layout() => CoreValue::Integer(4),
        (0, 3) => CoreValue::Text("2".into()),
        (0, _) => CoreValue::Integer(row as i64 + 1),
        _ => CoreValue::Text(format!("r{row}")),
    };
    pack_columns([v.as_ref()]).expect("pack a primary key")
}

/// One generated change, as indexes into the domains above.
#[derive(Clone, Debug)]
struct Gen {
    table: usize,
    row: usize,
    /// 0: the sentinel, else 1 + index into the table's first three columns.
    cid: usize,
    val: usize,
    col_version: i64,
    cl: i64,
    /// Index into the sites; the last is the receiver's own.
    site: usize,
    /// Repeat the previous change's row (so runs of one row are common).
    same_row: bool,
}

fn gen_change() -> impl Strategy<Value = Gen> {
    (
        0..2usize,
        0..4usize,
        0..4usize,
        0..10usize,
        0..4i64,
        1..6i64,
        0..4usize,
        any::<bool>(),
    )
        .prop_map(
            |(table, row, cid, val, col_version, cl, site, same_row)| Gen {
                table,
                row,
                cid,
                val,
                col_version,
                cl,
                site,
                same_row,
            },
        )
}

/// A local write at the receiver (same SQL on both copies).
#[derive(Clone, Debug)]
enum Local {
    Upsert {
        row: usize,
        val: usize,
    },
    Update {
        row: usize,
        val: usize,
    },
    Delete {
        row: usize,
    },
    /// Written with the sync bit set: a base row without key or clocks.
    Untracked {
        row: usize,
        val: usize,
    },
}

fn gen_local() -> impl Strategy<Value = Local> {
    prop_oneof![
        (0..3usize, 0..10usize).prop_map(|(row, val)| Local::Upsert { row, val }),
        (0..3usize, 0..10usize).prop_map(|(row, val)| Local::Update { row, val }),
        (0..3usize).prop_map(|row| Local::Delete { row }),
        (0..3usize, 0..10usize).prop_map(|(row, val)| Local::Untracked { row, val }),
    ]
}

#[derive(Clone, Debug)]
struct Case {
    merge_equal_values: bool,
    before: Vec<Local>,
    /// Packages, each with the local writes that follow it.
    packages: Vec<(Vec<Gen>, Vec<Local>)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop::collection::vec(gen_local(), 0..8),
        prop::collection::vec(
            (
                prop::collection::vec(gen_change(), 1..40),
                prop::collection::vec(gen_local(), 0..3),
            ),
            1..5,
        ),
    )
        .prop_map(|(merge_equal_values, before, packages)| Case {
            merge_equal_values,
            before,
            packages,
        })
}

fn sql_value(v: &CoreValue) -> Value {
    match v {
        CoreValue::Null => Value::Null,
        CoreValue::Integer(i) => Value::Integer(*i),
        CoreValue::Real(r) => Value::Real(*r),
        CoreValue::Text(t) => Value::Text(t.clone()),
        CoreValue::Blob(b) => Value::Blob(b.clone()),
    }
}

fn local_write(c: &Connection, w: &Local) {
    let vals = values();
    let (sql, args): (&str, Vec<Value>) = match w {
        Local::Upsert { row, val } => (
            "INSERT INTO t (id, a, b, c) VALUES (?1, ?2, ?2, ?2) \
             ON CONFLICT (id) DO UPDATE SET a = ?2, c = ?2",
            vec![Value::Integer(*row as i64 + 1), sql_value(&vals[*val])],
        ),
        Local::Update { row, val } => (
            "UPDATE t SET b = ?2 WHERE id = ?1",
            vec![Value::Integer(*row as i64 + 1), sql_value(&vals[*val])],
        ),
        Local::Delete { row } => (
            "DELETE FROM t WHERE id = ?1",
            vec![Value::Integer(*row as i64 + 1)],
        ),
        Local::Untracked { row, val } => {
            c.query_row("SELECT crsql_internal_sync_bit(1)", [], |_| Ok(()))
                .expect("sync bit");
            c.execute(
                "INSERT OR REPLACE INTO w (k, c0, c1) VALUES (?1, ?2, ?2)",
                rusqlite::params![format!("r{row}"), sql_value(&vals[*val])],
            )
            .expect("untracked write");
            c.query_row("SELECT crsql_internal_sync_bit(0)", [], |_| Ok(()))
                .expect("sync bit");
            return;
        }
    };
    c.execute(sql, rusqlite::params_from_iter(args))
        .expect("local write");
}

/// The packages of a case: consecutive positions, one stream.
fn packages(case: &Case, sites: &[[u8; 16]]) -> Vec<Package<'static>> {
    let tables: Vec<TableEntry> = (0..2)
        .map(|t| {
            let cols = columns(t);
            let refs: Vec<&str> = cols.iter().map(String::as_str).collect();
            TableEntry {
                name: TABLE_NAMES[t].into(),
                schema_hash: schema_hash(TABLE_NAMES[t], &[PK_NAMES[t]], &refs),
                columns: cols,
            }
        })
        .collect();
    let vals = values();
    let mut pos = Position::new(0, 0);
    let mut out = Vec::new();
    let mut prev: Option<(usize, usize)> = None;
    for (changes, _) in &case.packages {
        let since = pos;
        let mut list = Vec::new();
        for g in changes {
            let (table, row) = match (g.same_row, prev) {
                (true, Some(p)) => p,
                _ => (g.table, g.row),
            };
            prev = Some((table, row));
            // A few versions per package, seqs counting up within each.
            pos = if g.col_version == 0 {
                Position::new(pos.db_version + 1, 0)
            } else {
                Position::new(pos.db_version.max(1), pos.seq + 1)
            };
            list.push(PkgChange {
                table: table as u32,
                pk: Bytes::from(pk(table, row)),
                cid: g.cid as u32,
                val: WireValue::Owned(if g.cid == 0 {
                    CoreValue::Null
                } else {
                    vals[g.val].clone()
                }),
                col_version: g.col_version,
                db_version: pos.db_version,
                site: g.site as u32,
                cl: g.cl,
                seq: pos.seq,
            });
        }
        out.push(Package {
            sender: Bytes::from(sites[0].to_vec()),
            stream_id: Bytes::from(vec![7; 16]),
            stream: "gen".into(),
            since,
            cursor: pos,
            part: None,
            tables: tables.clone(),
            sites: sites.iter().map(|s| Bytes::from(s.to_vec())).collect(),
            changes: list,
            kind: PackageKind::Changes,
        });
    }
    out
}

/// Everything the two copies must agree on.
fn state(c: &Connection) -> Vec<Vec<Vec<Value>>> {
    let wide: Vec<String> = (0..WIDE_COLUMNS)
        .map(|i| format!("c{i}, typeof(c{i})"))
        .collect();
    // The clock tables of the layout under test, byte for byte.
    let clocks: [String; 4] = if compact_layout() {
        [
            "t__crsql_rows",
            "w__crsql_rows",
            "t__crsql_cells",
            "w__crsql_cells",
        ]
        .map(|t| format!("SELECT * FROM {t} ORDER BY 1, 2"))
    } else {
        [
            "t__crsql_clock ORDER BY key, col_name",
            "w__crsql_clock ORDER BY key, col_name",
            "t__crsql_pks ORDER BY 1",
            "w__crsql_pks ORDER BY 1",
        ]
        .map(|t| format!("SELECT * FROM {t}"))
    };
    [
        "SELECT id, a, typeof(a), b, typeof(b), c, typeof(c) FROM t ORDER BY id".to_string(),
        format!("SELECT k, {} FROM w ORDER BY k", wide.join(", ")),
        "SELECT ordinal, site_id FROM crsql_site_id ORDER BY ordinal".into(),
        "SELECT * FROM crsql_changes".into(),
        "SELECT crsql_db_version()".into(),
    ]
    .into_iter()
    .chain(clocks)
    .map(|q| rows(c, &q))
    .collect()
}

fn run(case: &Case) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("temp dir");
    let batch_path = dir.path().join("batch.db");
    let rows_path = dir.path().join("rows.db");
    let receiver = open(&batch_path);
    receiver.execute_batch(&schema()).expect("schema");
    if case.merge_equal_values {
        receiver
            .query_row(
                "SELECT crsql_config_set('merge-equal-values', 1)",
                [],
                |_| Ok(()),
            )
            .expect("config");
    }
    for w in &case.before {
        local_write(&receiver, w);
    }
    let own: Vec<u8> = receiver
        .query_row("SELECT crsql_site_id()", [], |r| r.get(0))
        .expect("site id");
    receiver
        .execute("VACUUM INTO ?1", [path_str(&rows_path)])
        .expect("copy the receiver");
    let by_rows = open(&rows_path);
    let own: [u8; 16] = own.try_into().expect("16-byte site id");
    let sites = [[0xA1; 16], [0x0B; 16], [0xFF; 16], own];
    receiver
        .execute_batch("CREATE VIRTUAL TABLE from_gen USING crsql_InboundStream()")
        .expect("inbound stream");
    for (pkg, (_, after)) in packages(case, &sites).iter().zip(&case.packages) {
        let bytes = pkg.encode(Encoding::Binary).expect("encode");
        let batched = receiver
            .execute("INSERT INTO from_gen(package) VALUES (?1)", [&bytes])
            .map(|_| ());
        let one_by_one = apply_row_by_row(&by_rows, &bytes);
        prop_assert_eq!(
            batched.is_ok(),
            one_by_one.is_ok(),
            "batch: {:?}, row by row: {:?}",
            batched,
            one_by_one
        );
        if batched.is_err() {
            // Refused on both sides: later packages would be a gap.
            break;
        }
        for w in after {
            local_write(&receiver, w);
            local_write(&by_rows, w);
        }
    }
    let (a, b) = (state(&receiver), state(&by_rows));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        prop_assert_eq!(x, y, "query {} differs (batch left, row by row right)", i);
    }
    close(receiver);
    close(by_rows);
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_string()
}

/// The package's changes, one `INSERT INTO crsql_changes` each, in one
/// transaction (rolled back on an error, as the stream's apply is).
fn apply_row_by_row(c: &Connection, package: &[u8]) -> rusqlite::Result<()> {
    let changes: Vec<Change> = c
        .prepare("SELECT * FROM crsql_package_changes(?1)")?
        .query_map([package], Change::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    c.execute_batch("BEGIN")?;
    let r = (|| {
        let mut stmt = c.prepare(INSERT_CHANGE)?;
        for ch in &changes {
            ch.insert(&mut stmt)?;
        }
        Ok(())
    })();
    c.execute_batch(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
    r
}

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(Config {
        cases: cases(150),
        max_shrink_iters: 2000,
        max_shrink_time: 120_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    })]

    #[test]
    fn a_package_merged_in_batch_ends_byte_for_byte_as_merged_row_by_row(c in case()) {
        run(&c)?;
    }
}

#[test]
fn the_core_value_types_convert_as_used_here() {
    // pk() packs with the core crate; crsql_unpack_columns must read it back.
    let c = crsql_stream_harness::open_memory();
    let got = rows(
        &c,
        &format!(
            "SELECT cell FROM crsql_unpack_columns(X'{}')",
            pk(1, 2)
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
        ),
    );
    assert_eq!(got, vec![vec![Value::Text("r2".into())]]);
}
