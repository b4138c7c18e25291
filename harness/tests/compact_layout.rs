//! The compact CRR layout (docs/compact-layout.md) records exactly the
//! changes of the cr-sqlite layout: the same random local writes on a
//! database of each layout give identical `crsql_changes` (every column but
//! the site id, which differs per database: compared as "local or not"),
//! identical filtered reads, and identical packages read part by part from
//! an outbound stream that splits transactions, and an exact `lag_changes`
//! (DECISIONS D33) after every commit; `crsql_convert_layout` both ways
//! changes none of it. Operations the layout does
//! not support yet fail with an error naming the table and the operation.

use crsql_stream_harness::sql::{exists, fails, rows};
use crsql_stream_harness::{close, open_memory, prop_cases};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use rusqlite::types::Value;
use rusqlite::Connection;

/// Tables of every key shape: a rowid alias (its columns out of name
/// order, which primary-key changes move cells in), text, composite, a key
/// that is not a rowid alias (`WITHOUT ROWID`), and a key with no other
/// column.
const SCHEMA: &str = "
CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, m, b TEXT, c REAL DEFAULT 0);
CREATE TABLE s (k TEXT PRIMARY KEY NOT NULL, x INTEGER DEFAULT 0, y);
CREATE TABLE w (k1 TEXT NOT NULL, k2 INTEGER NOT NULL, v, PRIMARY KEY (k1, k2)) WITHOUT ROWID;
CREATE TABLE p (k1 TEXT NOT NULL, k2 INTEGER NOT NULL, PRIMARY KEY (k1, k2));";

const TABLES: [&str; 4] = ["t", "s", "w", "p"];

fn open(layout: &str) -> Connection {
    let conn = open_memory();
    let set: String = conn
        .query_row("SELECT crsql_config_set('crr-layout', ?1)", [layout], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(set, layout);
    conn.execute_batch(SCHEMA).unwrap();
    for t in TABLES {
        conn.query_row("SELECT crsql_as_crr(?1)", [t], |_| Ok(()))
            .unwrap();
    }
    conn.execute_batch("CREATE VIRTUAL TABLE out USING crsql_OutboundStream(max_changes = 2);")
        .unwrap();
    conn
}

/// One local write (keys from a small range, so rows are hit again).
#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u8, u8),
    Replace(u8, u8),
    Ignore(u8),
    /// Set some of t's columns (a bit mask) of one row, or of every row.
    Update(Option<u8>, u8, u8),
    Delete(u8),
    /// A primary-key change of t (`OR REPLACE` when set) or of s.
    MoveKey(bool, bool, u8, u8),
    KeyRow(&'static str, u8),
    KeyDelete(&'static str, u8),
    /// `crsql_compact()` (deletes become records, D22).
    Compact,
    Begin,
    Commit,
    Savepoint,
    RollbackTo,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..6;
    prop_oneof![
        4 => (k.clone(), any::<u8>(), any::<u8>()).prop_map(|(k, a, b)| Op::Insert(k, a, b)),
        2 => (k.clone(), any::<u8>()).prop_map(|(k, a)| Op::Replace(k, a)),
        1 => k.clone().prop_map(Op::Ignore),
        4 => (prop::option::weighted(0.8, k.clone()), 1u8..8, any::<u8>())
            .prop_map(|(k, m, v)| Op::Update(k, m, v)),
        2 => k.clone().prop_map(Op::Delete),
        2 => (any::<bool>(), any::<bool>(), k.clone(), k.clone()).prop_map(|(s, r, a, b)| Op::MoveKey(s, r, a, b)),
        2 => (prop::sample::select(vec!["s", "w", "p"]), k.clone()).prop_map(|(t, k)| Op::KeyRow(t, k)),
        1 => (prop::sample::select(vec!["s", "w", "p"]), k).prop_map(|(t, k)| Op::KeyDelete(t, k)),
        1 => Just(Op::Compact),
        1 => Just(Op::Begin),
        1 => Just(Op::Commit),
        1 => Just(Op::Savepoint),
        1 => Just(Op::RollbackTo),
    ]
}

/// A value of one of the storage classes, from a byte.
fn value(b: u8) -> Value {
    match b % 5 {
        0 => Value::Null,
        1 => Value::Integer(i64::from(b / 5)),
        2 => Value::Real(f64::from(b) / 4.0),
        3 => Value::Text(format!("v{}", b / 5)),
        _ => Value::Blob(vec![b; 2]),
    }
}

/// The statement of an op and its parameters (None: nothing to run now).
fn sql(op: &Op, in_tx: &mut bool, savepoint: &mut bool) -> Option<(String, Vec<Value>)> {
    let s = |sql: &str, p: Vec<Value>| Some((sql.to_string(), p));
    let key = |k: u8| Value::Integer(i64::from(k));
    match op {
        Op::Insert(k, a, b) => s(
            "INSERT OR IGNORE INTO t (id, m, b, c) VALUES (?1, ?2, ?3, ?4)",
            vec![key(*k), value(*a), value(*b), Value::Real(f64::from(*a))],
        ),
        Op::Replace(k, a) => s(
            "INSERT OR REPLACE INTO t (id, m, b) VALUES (?1, ?2, 'r')",
            vec![key(*k), value(*a)],
        ),
        Op::Ignore(k) => s("INSERT OR IGNORE INTO t (id) VALUES (?1)", vec![key(*k)]),
        Op::Update(k, mask, v) => {
            let sets: Vec<&str> = [(1, "m = ?1"), (2, "b = ?1"), (4, "c = c + 1")]
                .iter()
                .filter(|(bit, _)| mask & bit != 0)
                .map(|(_, set)| *set)
                .collect();
            let sets = sets.join(", ");
            let mut p = Vec::new();
            if sets.contains("?1") {
                p.push(value(*v));
            }
            let mut sql = format!("UPDATE t SET {sets}");
            if let Some(k) = k {
                p.push(key(*k));
                sql.push_str(&format!(" WHERE id = ?{}", p.len()));
            }
            Some((sql, p))
        }
        Op::Delete(k) => s("DELETE FROM t WHERE id = ?1", vec![key(*k)]),
        Op::MoveKey(on_s, replace, a, b) => {
            let or = if *replace {
                " OR REPLACE"
            } else {
                " OR IGNORE"
            };
            if *on_s {
                s(
                    &format!("UPDATE{or} s SET k = ?2 WHERE k = ?1"),
                    vec![Value::Text(format!("k{a}")), Value::Text(format!("k{b}"))],
                )
            } else {
                s(
                    &format!("UPDATE{or} t SET id = ?2 WHERE id = ?1"),
                    vec![key(*a), key(*b)],
                )
            }
        }
        Op::KeyRow(t, k) => match *t {
            "s" => s(
                "INSERT OR REPLACE INTO s (k, y) VALUES (?1, ?2)",
                vec![Value::Text(format!("k{k}")), value(*k)],
            ),
            "w" => s(
                "INSERT OR REPLACE INTO w (k1, k2, v) VALUES ('a', ?1, ?1)",
                vec![key(*k)],
            ),
            _ => s(
                "INSERT OR IGNORE INTO p (k1, k2) VALUES ('a', ?1)",
                vec![key(*k)],
            ),
        },
        Op::KeyDelete(t, k) => match *t {
            "s" => s(
                "DELETE FROM s WHERE k = ?1",
                vec![Value::Text(format!("k{k}"))],
            ),
            "w" => s("DELETE FROM w WHERE k2 = ?1", vec![key(*k)]),
            _ => s("DELETE FROM p WHERE k2 = ?1", vec![key(*k)]),
        },
        Op::Compact => s("SELECT crsql_compact()", vec![]),
        Op::Begin if !*in_tx => {
            *in_tx = true;
            s("BEGIN", vec![])
        }
        Op::Commit if *in_tx => {
            *in_tx = false;
            *savepoint = false;
            s("COMMIT", vec![])
        }
        Op::Savepoint if *in_tx && !*savepoint => {
            *savepoint = true;
            s("SAVEPOINT sp", vec![])
        }
        Op::RollbackTo if *savepoint => {
            *savepoint = false;
            s("ROLLBACK TO sp; RELEASE sp", vec![])
        }
        _ => None,
    }
}

/// Run the statements of an op (a `SELECT` of a function, or several
/// statements without parameters).
fn run_op(db: &Connection, sql: &str, params: &[Value]) {
    if params.is_empty() {
        db.execute_batch(sql)
    } else {
        db.execute(sql, rusqlite::params_from_iter(params))
            .map(drop)
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Every change, as `crsql_changes` gives it without ORDER BY (position
/// order), the site id as "local or not".
fn changes(conn: &Connection, filter: &str) -> Vec<Vec<Value>> {
    rows(
        conn,
        &format!(
            "SELECT \"table\", pk, cid, val, col_version, db_version, cl, seq, \
             site_id = crsql_site_id() FROM crsql_changes {filter}"
        ),
    )
}

fn packages(conn: &Connection) -> Vec<Value> {
    packages_of(conn, "out")
}

/// An outbound stream's packages, read one at a time from the last
/// cursor (so a split transaction is resumed in its middle), decoded.
fn packages_of(conn: &Connection, stream: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = "[0,0]".to_string();
    loop {
        let next: Option<(Vec<u8>, String)> = conn
            .query_row(
                &format!("SELECT package, cursor FROM {stream} WHERE cursor > ?1 LIMIT 1"),
                [&cursor],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        let Some((package, c)) = next else {
            return out;
        };
        cursor = c;
        let mut stmt = conn
            .prepare(
                "SELECT \"table\", pk, cid, val, col_version, db_version, cl, seq \
                 FROM crsql_package_changes(?1)",
            )
            .unwrap();
        let rows = stmt
            .query_map([&package], |r| {
                (0..8).map(|i| r.get::<_, Value>(i)).collect()
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<Vec<Value>>>>()
            .unwrap();
        out.push(Value::Text(cursor.clone()));
        out.extend(rows.into_iter().flatten());
        out.push(Value::Null);
        assert!(out.len() < 1_000_000, "the stream does not end");
    }
}

/// With nothing acknowledged, `lag_changes` is every change.
fn assert_lag_exact(db: &Connection, when: &str) {
    let (lag, count): (i64, i64) = db
        .query_row(
            "SELECT lag_changes, (SELECT count(*) FROM crsql_changes) FROM crsql_streams WHERE name = 'out'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(lag, count, "lag_changes {when}");
}

fn run(ops: &[Op]) {
    let dbs = [open("crsqlite"), open("compact")];
    let (mut in_tx, mut savepoint) = (false, false);
    for op in ops {
        let Some((sql, params)) = sql(op, &mut in_tx, &mut savepoint) else {
            continue;
        };
        for db in &dbs {
            run_op(db, &sql, &params);
        }
        if !in_tx {
            let [a, b] = [&dbs[0], &dbs[1]].map(|d| changes(d, ""));
            assert_eq!(a, b, "crsql_changes differ after {op:?}");
            // The lag counts (D33) follow rewrites of counted versions.
            for db in &dbs {
                assert_lag_exact(db, &format!("after {op:?}"));
            }
        }
    }
    if in_tx {
        for db in &dbs {
            db.execute_batch("COMMIT").unwrap();
        }
    }
    let all = changes(&dbs[0], "");
    assert_eq!(all, changes(&dbs[1], ""), "crsql_changes differ at the end");
    let mut sorted = all.clone();
    sorted.sort_by_key(|r| match (&r[5], &r[7]) {
        (Value::Integer(v), Value::Integer(s)) => (*v, *s),
        _ => (0, 0),
    });
    assert_eq!(all, sorted, "crsql_changes is not in position order");
    for filter in [
        "WHERE db_version > 3",
        "WHERE db_version = 2",
        "WHERE site_id = crsql_site_id() AND db_version <= 4",
        "ORDER BY \"table\", db_version DESC, seq",
    ] {
        assert_eq!(
            changes(&dbs[0], filter),
            changes(&dbs[1], filter),
            "{filter}"
        );
    }
    let [pa, pb] = [&dbs[0], &dbs[1]].map(packages);
    assert_eq!(pa, pb, "outbound packages differ");
    // Conversions keep every clock at its position, both ways.
    for (db, layouts) in [
        (&dbs[0], ["compact", "crsqlite", "compact"]),
        (&dbs[1], ["crsqlite", "compact", "crsqlite"]),
    ] {
        for layout in layouts {
            for t in TABLES {
                db.query_row("SELECT crsql_convert_layout(?1, ?2)", [t, layout], |_| {
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(changes(db, ""), all, "after converting to {layout}");
            assert_lag_exact(db, "after a conversion");
        }
    }
    // Compaction (nothing holds the horizon once the stream is gone) makes
    // the same records; inserts revive them alike; a snapshot stream sends
    // them at their positions.
    for db in &dbs {
        db.execute_batch(
            "DROP TABLE out; SELECT crsql_compact();
             WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < 3)
             INSERT OR IGNORE INTO t (id, m) SELECT i, 'again' FROM k;
             CREATE VIRTUAL TABLE snap USING crsql_OutboundStream(resync = 'snapshot', max_changes = 2);",
        )
        .unwrap();
    }
    assert_eq!(
        changes(&dbs[0], ""),
        changes(&dbs[1], ""),
        "after compaction"
    );
    let records =
        "SELECT tbl, pk, cl, db_version, seq, site_id = 0 FROM crsql_tombstones ORDER BY 1, 2";
    assert_eq!(rows(&dbs[0], records), rows(&dbs[1], records));
    let [pa, pb] = [&dbs[0], &dbs[1]].map(|db| packages_of(db, "snap"));
    assert_eq!(pa, pb, "snapshot packages differ");
    let versions: Vec<i64> = dbs
        .iter()
        .map(|d| {
            d.query_row("SELECT crsql_db_version()", [], |r| r.get(0))
                .unwrap()
        })
        .collect();
    assert_eq!(versions[0], versions[1]);
    let [db0, db1] = dbs;
    close(db0);
    close(db1);
}

fn config(default_cases: u32) -> Config {
    Config {
        cases: prop_cases(default_cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    fn both_layouts_record_the_same_changes(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops);
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    #[ignore = "long; run with `make soak`"]
    fn soak_both_layouts_record_the_same_changes(ops in prop::collection::vec(op(), 1..150)) {
        run(&ops);
    }
}

/// A big transaction read from an outbound stream in parts of 2 changes:
/// every part after the first resumes inside a run of the compact layout.
#[test]
fn a_split_transaction_reads_the_same_in_both_layouts() {
    let dbs = [open("crsqlite"), open("compact")];
    for db in &dbs {
        db.execute_batch(
            "BEGIN;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
             INSERT INTO t (id, m, b) SELECT i, i * 2, 'x' FROM n;
             UPDATE t SET b = 'y' WHERE id % 3 = 0;
             DELETE FROM t WHERE id % 7 = 0;
             COMMIT;",
        )
        .unwrap();
    }
    let [pa, pb] = [&dbs[0], &dbs[1]].map(packages);
    assert!(pa.len() > 300, "{} values", pa.len());
    assert_eq!(pa, pb);
    // Acknowledged inside the transaction, the lag counts what is after.
    for db in &dbs {
        let cursor: String = db
            .query_row("SELECT cursor FROM out LIMIT 1 OFFSET 3", [], |r| r.get(0))
            .unwrap();
        db.execute("INSERT INTO out (last_sent) VALUES (?1)", [&cursor])
            .unwrap();
        let (lag, after): (i64, i64) = db
            .query_row(
                "SELECT lag_changes, (SELECT count(*) FROM crsql_changes WHERE db_version > p ->> 0 \
                 OR (db_version = p ->> 0 AND seq > p ->> 1)) FROM crsql_streams, (SELECT ?1 AS p) \
                 WHERE name = 'out'",
                [&cursor],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(
            after > 0 && lag == after,
            "lag {lag}, changes after {cursor}: {after}"
        );
    }
}

/// Bad settings and conversions are refused, saying what is expected;
/// nothing is half done.
#[test]
fn bad_settings_and_conversions_are_refused() {
    let db = open("compact");
    db.execute_batch("INSERT INTO t (id, m) VALUES (1, 'x');")
        .unwrap();
    let before = changes(&db, "");
    let cases = [
        (
            "SELECT crsql_config_set('crr-layout', 'other')",
            "crr-layout",
            "'compact' or 'crsqlite'",
        ),
        (
            "SELECT crsql_convert_layout('t', 'other')",
            "crsql_convert_layout",
            "'compact' or 'crsqlite'",
        ),
        (
            "SELECT crsql_convert_layout('nope', 'compact')",
            "nope",
            "not a CRR",
        ),
    ];
    for (sql, table, what) in cases {
        let e = db.execute_batch(sql).expect_err(sql).to_string();
        assert!(e.contains(table) && e.contains(what), "{sql}: {e}");
    }
    assert_eq!(changes(&db, ""), before);
    // crsql_commit_alter with no window fails and keeps the caller's
    // transaction (it rolled it back, found with CRSQL_TEST_LAYOUT=compact).
    db.execute_batch("BEGIN; INSERT INTO t (id, m) VALUES (2, 'y');")
        .unwrap();
    let e = db
        .execute_batch("SELECT crsql_commit_alter('t')")
        .expect_err("no window")
        .to_string();
    assert!(e.contains("no crsql_begin_alter('t') is open"), "{e}");
    assert!(
        !db.is_autocommit(),
        "the caller's transaction is still open"
    );
    db.execute_batch("COMMIT").unwrap();
    assert_eq!(changes(&db, "").len(), before.len() + 3);
    // The setting is persisted and read back.
    let layout: String = db
        .query_row("SELECT crsql_config_get('crr-layout')", [], |r| r.get(0))
        .unwrap();
    assert_eq!(layout, "compact");
    close(db);
}

/// `crsql_as_crr` over existing rows (backfill), alterations in
/// begin/commit windows (one ended by a plain COMMIT), automigrate and
/// `crsql_new_site_id` give a compact table the changes they give a table
/// of the cr-sqlite layout.
#[test]
fn backfill_alter_and_automigrate_record_the_same_changes() {
    let script = "
        CREATE TABLE u (id INTEGER PRIMARY KEY NOT NULL, a, b, c);
        INSERT INTO u VALUES (1, 'x', 2, 3), (2, 'y', 3, 4), (3, 'z', 4, 5);
        SELECT crsql_as_crr('u');
        UPDATE u SET b = 10 WHERE id = 2;
        SELECT crsql_begin_alter('u');
        ALTER TABLE u ADD COLUMN d DEFAULT 7;
        UPDATE u SET a = 'changed in the window' WHERE id = 1;
        DELETE FROM u WHERE id = 3;
        SELECT crsql_commit_alter('u');
        INSERT INTO u VALUES (4, 'after', 1, 1, 1);
        SELECT crsql_begin_alter('u');
        ALTER TABLE u DROP COLUMN b;
        SELECT crsql_commit_alter('u');
        UPDATE u SET d = 8 WHERE id = 2;
        SELECT crsql_automigrate('CREATE TABLE IF NOT EXISTS u (id INTEGER PRIMARY KEY NOT NULL, a, c, d DEFAULT 7, e DEFAULT 0);');
        UPDATE u SET e = 1 WHERE id = 1;
        BEGIN; SELECT crsql_begin_alter('u'); ALTER TABLE u ADD COLUMN f; COMMIT;
        SELECT crsql_as_crr('u');
        UPDATE u SET f = 'f';";
    let dbs = [open("crsqlite"), open("compact")];
    for db in &dbs {
        db.execute_batch(script).unwrap();
        assert_lag_exact(db, "after the alterations");
        // Earlier changes keep the old site id as a former one.
        db.query_row("SELECT crsql_new_site_id()", [], |_| Ok(()))
            .unwrap();
        db.execute_batch("UPDATE u SET a = 'new site' WHERE id = 2;")
            .unwrap();
    }
    let all = changes(&dbs[0], "");
    assert!(all.len() > 10, "{} changes", all.len());
    assert_eq!(all, changes(&dbs[1], ""));
    let compact: i64 = dbs[1]
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('u__crsql_rows', 'u__crsql_cells')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(compact, 2, "u is still in the compact layout");
}

/// Peers of both layouts syncing through streams (packages split at 3
/// changes, read one at a time) converge; and two observers, one of each
/// layout, receiving the same packages in the same order, merge them into
/// identical `crsql_changes`: merging into a compact table takes the
/// versions, seqs and site ordinals the cr-sqlite layout takes.
mod mixed {
    use super::*;

    pub const LAYOUTS: [&str; 3] = ["crsqlite", "compact", "compact"];

    #[derive(Debug, Clone)]
    pub enum Step {
        Write(usize, Vec<Op>),
        Sync(usize, usize),
        Observe(usize),
    }

    pub fn step() -> impl Strategy<Value = Step> {
        let data = op().prop_filter("a data write", |o| {
            !matches!(o, Op::Begin | Op::Commit | Op::Savepoint | Op::RollbackTo)
        });
        prop_oneof![
            3 => (0..LAYOUTS.len(), prop::collection::vec(data, 1..5)).prop_map(|(p, o)| Step::Write(p, o)),
            2 => (0..LAYOUTS.len(), 0..LAYOUTS.len()).prop_map(|(a, b)| Step::Sync(a, b)),
            1 => (0..LAYOUTS.len()).prop_map(Step::Observe),
        ]
    }

    fn site(db: &Connection) -> String {
        db.query_row("SELECT hex(crsql_site_id())", [], |r| r.get(0))
            .unwrap()
    }

    /// Move every package of `out` on `from` after its last_sent to the
    /// inbound streams `inb` of `to` (each in turn), acknowledging them.
    fn send(from: &Connection, out: &str, to: &[&Connection], inb: &str) {
        loop {
            let next: Option<(Vec<u8>, String)> = from
                .query_row(
                    &format!("SELECT package, cursor FROM {out} LIMIT 1"),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .ok();
            let Some((package, cursor)) = next else {
                return;
            };
            for db in to {
                db.execute(
                    &format!("INSERT INTO {inb} (package) VALUES (?1)"),
                    [&package],
                )
                .unwrap_or_else(|e| panic!("applying to {inb}: {e}"));
            }
            from.execute(
                &format!("INSERT INTO {out} (last_sent) VALUES (?1)"),
                [&cursor],
            )
            .unwrap();
        }
    }

    pub fn run(steps: &[Step]) {
        let peers: Vec<Connection> = LAYOUTS.iter().map(|l| open(l)).collect();
        let observers = [open("crsqlite"), open("compact")];
        let sites: Vec<String> = peers.iter().map(site).collect();
        for (i, p) in peers.iter().enumerate() {
            for (j, site_j) in sites.iter().enumerate() {
                if i != j {
                    p.execute_batch(&format!(
                        "CREATE VIRTUAL TABLE to_{j} USING crsql_OutboundStream(exclude_sites = '{site_j}', max_changes = 3);
                         CREATE VIRTUAL TABLE from_{j} USING crsql_InboundStream(from = '{site_j}');"
                    ))
                    .unwrap();
                }
            }
            p.execute_batch(
                "CREATE VIRTUAL TABLE to_obs USING crsql_OutboundStream(max_changes = 3);",
            )
            .unwrap();
            for o in &observers {
                o.execute_batch(&format!(
                    "CREATE VIRTUAL TABLE from_{i} USING crsql_InboundStream(from = '{}');",
                    sites[i]
                ))
                .unwrap();
            }
        }
        let obs: Vec<&Connection> = observers.iter().collect();
        let sync = |a: usize, b: usize| {
            if a != b {
                send(
                    &peers[a],
                    &format!("to_{b}"),
                    &[&peers[b]],
                    &format!("from_{a}"),
                );
            }
        };
        for step in steps {
            match step {
                Step::Write(p, ops) => {
                    let db = &peers[*p];
                    db.execute_batch("BEGIN").unwrap();
                    let (mut in_tx, mut sp) = (true, false);
                    for op in ops {
                        if let Some((sql, params)) = sql(op, &mut in_tx, &mut sp) {
                            run_op(db, &sql, &params);
                        }
                    }
                    db.execute_batch("COMMIT").unwrap();
                }
                Step::Sync(a, b) => sync(*a, *b),
                Step::Observe(p) => send(&peers[*p], "to_obs", &obs, &format!("from_{p}")),
            }
        }
        // Everything everywhere: two rounds carry changes over two hops.
        for _ in 0..2 {
            for a in 0..peers.len() {
                for b in 0..peers.len() {
                    sync(a, b);
                }
            }
        }
        for (p, db) in peers.iter().enumerate() {
            send(db, "to_obs", &obs, &format!("from_{p}"));
        }
        let dump = |db: &Connection| -> Vec<Vec<Value>> {
            TABLES
                .iter()
                .flat_map(|t| rows(db, &format!("SELECT * FROM {t} ORDER BY 1, 2")))
                .collect()
        };
        let want = dump(&peers[0]);
        for (i, db) in peers.iter().chain(&observers).enumerate() {
            assert_eq!(dump(db), want, "database {i} did not converge");
            assert_lag_exact_for(db, "to_obs", &format!("database {i}"));
        }
        let q = "SELECT \"table\", pk, cid, val, col_version, db_version, cl, seq, site_id FROM crsql_changes";
        let [a, b] = [&observers[0], &observers[1]].map(|db| rows(db, q));
        assert_eq!(a, b, "the observers' crsql_changes differ");
    }

    pub fn assert_lag_exact_for(db: &Connection, stream: &str, who: &str) {
        let exists: bool = db
            .query_row(
                "SELECT count(*) FROM crsql_streams WHERE name = ?1",
                [stream],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            > 0;
        if !exists {
            return;
        }
        let (lag, after): (i64, i64) = db
            .query_row(
                "SELECT lag_changes, (SELECT count(*) FROM crsql_changes WHERE db_version > p ->> 0 \
                 OR (db_version = p ->> 0 AND seq > p ->> 1)) FROM crsql_streams, \
                 (SELECT last_sent AS p FROM crsql_streams WHERE name = ?1) WHERE name = ?1",
                [stream],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(lag, after, "lag_changes of {stream} on {who}");
    }
}

proptest! {
    #![proptest_config(config(25))]

    #[test]
    fn peers_of_both_layouts_converge_and_merge_alike(steps in prop::collection::vec(mixed::step(), 1..40)) {
        mixed::run(&steps);
    }
}

/// A compact CRR whose base table is dropped leaves its clock tables, and
/// `crsql_db_version()` does not go back (they still count). Creating the
/// table again (with a column dropped and one added) and calling
/// `crsql_as_crr` records what the cr-sqlite layout records (DECISIONS
/// D19): the old live rows' deletes, the resurrection of a deleted key,
/// new rows; the table stays compact. Another primary key is refused on
/// both layouts, naming the tables to drop.
#[test]
fn a_dropped_table_is_created_again_as_in_the_crsqlite_layout() {
    let dbs = [open("crsqlite"), open("compact")];
    let version = |db: &Connection| -> i64 {
        db.query_row("SELECT crsql_db_version()", [], |r| r.get(0))
            .unwrap()
    };
    for db in &dbs {
        db.execute_batch(
            "CREATE TABLE r (id INTEGER PRIMARY KEY NOT NULL, a, b);
             SELECT crsql_as_crr('r');
             INSERT INTO r VALUES (1, 'x', 'y'), (2, 'p', 'q'), (3, 'm', 'n');
             DELETE FROM r WHERE id = 3;",
        )
        .unwrap();
        let before = version(db);
        db.execute_batch("DROP TABLE r;").unwrap();
        assert_eq!(version(db), before);
        db.execute_batch(
            "CREATE TABLE r (id INTEGER PRIMARY KEY NOT NULL, a, c);
             INSERT INTO r VALUES (2, 'p', 'new'), (3, 'back', NULL), (4, 'fresh', 'z');
             SELECT crsql_as_crr('r');
             UPDATE r SET c = 'u' WHERE id = 4;
             DELETE FROM r WHERE id = 2;",
        )
        .unwrap();
        assert_lag_exact(db, "after the re-creation");
    }
    let all = changes(&dbs[0], "WHERE \"table\" = 'r'");
    assert!(all.len() > 5, "{all:?}");
    assert_eq!(all, changes(&dbs[1], "WHERE \"table\" = 'r'"));
    assert_eq!(layout_of(&dbs[1], "r"), "compact");
    // Another primary key: refused, nothing changed, the tables named.
    for (db, tables) in dbs.iter().zip(["r__crsql_clock", "r__crsql_rows"]) {
        db.execute_batch("DROP TABLE r; CREATE TABLE r (k TEXT PRIMARY KEY NOT NULL, a);")
            .unwrap();
        let e = fails(db, "SELECT crsql_as_crr('r')");
        assert!(
            e.contains("was dropped while it was a CRR") && e.contains(tables),
            "{e}"
        );
    }
    assert_eq!(changes(&dbs[0], ""), changes(&dbs[1], ""));
    close_all(dbs);
}

/// Which layout CRR `table` has, from its tables.
fn layout_of(db: &Connection, table: &str) -> &'static str {
    if exists(db, &format!("{table}__crsql_rows")) {
        "compact"
    } else {
        "crsqlite"
    }
}

fn close_all<const N: usize>(dbs: [Connection; N]) {
    for db in dbs {
        close(db);
    }
}

/// The changes of a database in `INSERT INTO crsql_changes` order.
fn all_changes(db: &Connection) -> Vec<Vec<Value>> {
    rows(
        db,
        "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes",
    )
}

/// Merge `changes` (as [`all_changes`] reads them) into `db`.
fn merge(db: &Connection, changes: &[Vec<Value>]) {
    let mut stmt = db
        .prepare("INSERT INTO crsql_changes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .unwrap();
    for c in changes {
        stmt.execute(rusqlite::params_from_iter(c)).unwrap();
    }
}

/// A bare `ALTER TABLE … ADD COLUMN` (no crsql_begin_alter) does on a
/// compact CRR what it does on the cr-sqlite layout: the new column is
/// read and merged, inserts and deletes are recorded, updates fail (the
/// triggers still have the old arity) with the same error until
/// crsql_begin_alter/crsql_commit_alter, and the table converts.
#[test]
fn a_bare_add_column_works_as_in_the_crsqlite_layout() {
    let dbs = [open("crsqlite"), open("compact")];
    // A peer that has the column from the start.
    let peer = open("crsqlite");
    peer.execute_batch(
        "CREATE TABLE foo (a INTEGER PRIMARY KEY NOT NULL, b, c DEFAULT 5);
         SELECT crsql_as_crr('foo');
         INSERT INTO foo VALUES (7, 'from', 'peer');",
    )
    .unwrap();
    let from_peer = all_changes(&peer);
    let mut errors = Vec::new();
    for db in &dbs {
        db.execute_batch(
            "CREATE TABLE foo (a INTEGER PRIMARY KEY NOT NULL, b);
             SELECT crsql_as_crr('foo');
             INSERT INTO foo VALUES (1, 'x'), (3, 'z');
             ALTER TABLE foo ADD COLUMN c DEFAULT 5;
             INSERT INTO foo VALUES (2, 'p', 'q');
             DELETE FROM foo WHERE a = 3;",
        )
        .unwrap();
        merge(db, &from_peer);
        errors.push(
            db.execute_batch("UPDATE foo SET b = 'y'")
                .expect_err("an update with the old triggers")
                .to_string(),
        );
        assert_eq!(
            db.query_row("SELECT crsql_as_crr('foo')", [], |r| r.get::<_, String>(0))
                .unwrap(),
            "OK"
        );
        assert_lag_exact(db, "after a bare ADD COLUMN");
        // A stream acknowledged inside the row inserted with the new
        // column: its lag counts that row's clocks one by one.
        let at: String = db
            .query_row(
                "SELECT '[' || db_version || ',' || seq || ']' FROM crsql_changes \
                 WHERE \"table\" = 'foo' AND cid = 'b' AND val = 'p'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        db.execute_batch("CREATE VIRTUAL TABLE part USING crsql_OutboundStream();")
            .unwrap();
        db.execute("INSERT INTO part(last_sent) VALUES (?1)", [&at])
            .unwrap();
        let layout: String = db
            .query_row("SELECT crsql_config_get('crr-layout')", [], |r| r.get(0))
            .unwrap();
        mixed::assert_lag_exact_for(db, "part", &format!("{layout} after a bare ADD COLUMN"));
    }
    assert!(errors[0].contains(" values, got "), "{}", errors[0]);
    assert_eq!(errors[0], errors[1]);
    let after_add = changes(&dbs[0], "");
    assert!(
        after_add.iter().any(|c| c[2] == Value::Text("c".into())),
        "{after_add:?}"
    );
    assert_eq!(after_add, changes(&dbs[1], ""));
    for db in &dbs {
        db.execute_batch(
            "SELECT crsql_begin_alter('foo'); SELECT crsql_commit_alter('foo');
             UPDATE foo SET b = 'y' WHERE a = 1;
             UPDATE foo SET c = 'r' WHERE a = 7;",
        )
        .unwrap();
        assert_lag_exact(db, "after the alteration");
    }
    assert_eq!(changes(&dbs[0], ""), changes(&dbs[1], ""));
    assert_eq!(layout_of(&dbs[1], "foo"), "compact");
    // A bare ADD COLUMN, then a conversion each way.
    dbs[1]
        .execute_batch("ALTER TABLE foo ADD COLUMN d; INSERT INTO foo VALUES (9, 1, 2, 3);")
        .unwrap();
    let before = changes(&dbs[1], "");
    for layout in ["crsqlite", "compact"] {
        dbs[1]
            .query_row("SELECT crsql_convert_layout('foo', ?1)", [layout], |_| {
                Ok(())
            })
            .unwrap();
        assert_eq!(changes(&dbs[1], ""), before, "converted to {layout}");
    }
    close(peer);
    close_all(dbs);
}

/// Primary-key columns named like the compact tables' own columns (any
/// case, and the prefix those are stored under) work as in the cr-sqlite
/// layout: local writes, primary-key changes, deletes, conversions and a
/// merge into a fresh replica give identical changes.
#[test]
fn primary_key_columns_named_like_internal_columns_work_in_both_layouts() {
    let schema = "
        CREATE TABLE r1 (seq INTEGER PRIMARY KEY NOT NULL, vers, cl);
        CREATE TABLE r2 (\"DB_Version\" TEXT NOT NULL, \"__crsql_pk_site_id\" INTEGER NOT NULL,
                         site_id, col_name, PRIMARY KEY (\"DB_Version\", \"__crsql_pk_site_id\")) WITHOUT ROWID;
        CREATE TABLE r3 (col_version TEXT PRIMARY KEY NOT NULL, \"COL_NAME\" INTEGER);
        SELECT crsql_as_crr('r1'); SELECT crsql_as_crr('r2'); SELECT crsql_as_crr('r3');";
    let writes = "
        INSERT INTO r1 VALUES (1, 'a', 'b'), (2, 'c', 'd'), (3, 'e', 'f');
        INSERT INTO r2 VALUES ('x', 1, 's', 'n'), ('y', 2, 't', 'm');
        INSERT INTO r3 VALUES ('k', 1), ('l', 2);
        UPDATE r1 SET vers = 'A' WHERE seq = 1;
        UPDATE r1 SET seq = 10 WHERE seq = 2;
        DELETE FROM r1 WHERE seq = 3;
        INSERT INTO r1 VALUES (3, 'again', NULL);
        UPDATE r2 SET \"__crsql_pk_site_id\" = 5, site_id = 'moved' WHERE \"DB_Version\" = 'x';
        DELETE FROM r2 WHERE \"DB_Version\" = 'y';
        UPDATE r3 SET \"COL_NAME\" = 3 WHERE col_version = 'k';
        DELETE FROM r3 WHERE col_version = 'l';";
    let dbs = [open("crsqlite"), open("compact")];
    for db in &dbs {
        db.execute_batch(schema).unwrap();
        db.execute_batch(writes).unwrap();
        assert_lag_exact(db, "after the writes");
    }
    for t in ["r1", "r2", "r3"] {
        assert_eq!(layout_of(&dbs[1], t), "compact");
    }
    let want = changes(&dbs[0], "");
    assert!(want.len() > 12, "{want:?}");
    assert_eq!(want, changes(&dbs[1], ""));
    for layout in ["crsqlite", "compact"] {
        for t in ["r1", "r2", "r3"] {
            dbs[1]
                .query_row("SELECT crsql_convert_layout(?1, ?2)", [t, layout], |_| {
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(changes(&dbs[1], ""), want, "converted to {layout}");
    }
    // A replica of each layout merges the changes alike.
    let replicas = [open("crsqlite"), open("compact")];
    let from = all_changes(&dbs[0]);
    for db in &replicas {
        db.execute_batch(schema).unwrap();
        merge(db, &from);
    }
    let q = "SELECT \"table\", pk, cid, val, col_version, db_version, cl, seq, site_id FROM crsql_changes";
    assert_eq!(rows(&replicas[0], q), rows(&replicas[1], q));
    for t in ["r1", "r2", "r3"] {
        let q = format!("SELECT * FROM {t} ORDER BY 1, 2");
        assert_eq!(rows(&replicas[1], &q), rows(&dbs[0], &q), "{t}");
    }
    close_all(dbs);
    close_all(replicas);
}

/// A database whose `crsql_change_counts` is missing (written before the
/// counts existed, or dropped) gets it back when the extension loads, its
/// rows counted, whether its CRRs are compact or not.
#[test]
fn the_counts_are_created_at_load_in_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    for layout in ["crsqlite", "compact"] {
        let path = dir.path().join(format!("{layout}.db"));
        let db = crsql_stream_harness::open(&path);
        db.query_row(
            "SELECT crsql_config_set('crr-layout', ?1)",
            [layout],
            |_| Ok(()),
        )
        .unwrap();
        db.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a, b);
             SELECT crsql_as_crr('t');
             INSERT INTO t VALUES (1, 'x', 'y'), (2, 'p', 'q');
             CREATE VIRTUAL TABLE out USING crsql_OutboundStream();
             DROP TABLE crsql_change_counts;",
        )
        .unwrap();
        close(db);
        let db = crsql_stream_harness::open(&path);
        assert!(
            exists(&db, "crsql_change_counts"),
            "{layout}: crsql_change_counts is created at load"
        );
        assert_eq!(layout_of(&db, "t"), layout);
        assert_lag_exact(&db, layout);
        close(db);
    }
}

/// `crsql_compact()` creating `crsql_tombstones` inside a savepoint that is
/// then rolled back leaves no stale "the table exists" behind, whether a
/// write came between (the connection reads the schema once per
/// transaction) or not: the next inserts of new keys (which look for a
/// compacted record of them) work, alike on both layouts (found by
/// `both_layouts_record_the_same_changes` with random seeds).
#[test]
fn a_rolled_back_compaction_leaves_no_stale_table_behind() {
    for between in ["", "UPDATE t SET id = 6 WHERE id = 5;"] {
        let script = format!(
            "BEGIN; INSERT INTO t (id, m) VALUES (5, 'x');
             SAVEPOINT s; SELECT crsql_compact(); {between} ROLLBACK TO s;
             INSERT INTO p (k1, k2) VALUES ('a', 1); INSERT INTO t (id, m) VALUES (1, 'y');
             COMMIT;"
        );
        let dbs = [open("crsqlite"), open("compact")];
        for db in &dbs {
            db.execute_batch(&script)
                .unwrap_or_else(|e| panic!("{script}: {e}"));
        }
        let all = changes(&dbs[0], "");
        assert_eq!(all.len(), 7, "{all:?}");
        assert_eq!(all, changes(&dbs[1], ""));
        close_all(dbs);
    }
}

/// A bare `RENAME COLUMN` on a compact CRR (its slots name the old column)
/// fails its writes with an error saying what happened and what to do,
/// not "table not found"; renamed back, the table works again, and renamed
/// between begin and commit alter it keeps working.
#[test]
fn a_bare_rename_column_on_a_compact_table_says_what_to_do() {
    let db = open("compact");
    db.execute_batch(
        "INSERT INTO s (k, x, y) VALUES ('a', 1, 2); ALTER TABLE s RENAME COLUMN y TO z;",
    )
    .unwrap();
    let e = fails(&db, "INSERT INTO s (k, x, z) VALUES ('b', 1, 2)");
    assert!(
        e.contains("columns of compact CRR s (x, z) no longer match its clocks' (x, y)")
            && e.contains("crsql_begin_alter('s')"),
        "{e}"
    );
    db.execute_batch(
        "ALTER TABLE s RENAME COLUMN z TO y;
         INSERT INTO s (k, x, y) VALUES ('b', 1, 2);
         SELECT crsql_begin_alter('s'); ALTER TABLE s RENAME COLUMN y TO z; SELECT crsql_commit_alter('s');
         INSERT INTO s (k, x, z) VALUES ('c', 1, 2);",
    )
    .unwrap();
    let cids: Vec<Vec<Value>> = rows(
        &db,
        "SELECT DISTINCT cid FROM crsql_changes WHERE \"table\" = 's' ORDER BY 1",
    );
    assert_eq!(cids, [["x"], ["z"]].map(|r| vec![Value::Text(r[0].into())]));
    close(db);
}

/// Issue 12 (compact known bug 3): a package merged in batch by an inbound
/// stream is *stored* as merging its changes one by one through
/// `crsql_changes` stores it: the same row clocks (runs) and the same cells
/// rows, not only the same `crsql_changes`. The workload's rows arrive as
/// a run broken by a later update (columns m and c at one version, b at
/// another), some rows deleted and inserted again, some updated twice, in
/// transactions split across packages (so they are staged).
#[test]
fn a_batch_merge_stores_rows_as_the_row_by_row_merge_does() {
    let src = updated_rows(300);
    src.execute_batch(
        "UPDATE t SET m = m || '?', c = c + 1 WHERE id % 7 = 0;
         DELETE FROM t WHERE id % 11 = 0;
         INSERT INTO t (id, m) SELECT id * 11, 'back' FROM t WHERE id <= 27;
         UPDATE t SET b = 'again' WHERE id % 5 = 0;",
    )
    .unwrap();
    let fresh = || {
        let c = open("compact");
        c.execute_batch("CREATE VIRTUAL TABLE inb USING crsql_InboundStream();")
            .unwrap();
        c
    };
    // Row by row: one INSERT INTO crsql_changes per change, one
    // transaction per source transaction (as the stream applies them).
    let row_by_row = fresh();
    let all = rows(&src, "SELECT * FROM crsql_changes");
    let mut insert = row_by_row
        .prepare("INSERT INTO crsql_changes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
        .unwrap();
    for (i, c) in all.iter().enumerate() {
        if i == 0 || all[i - 1][5] != c[5] {
            if i > 0 {
                row_by_row.execute_batch("COMMIT").unwrap();
            }
            row_by_row.execute_batch("BEGIN").unwrap();
        }
        insert.execute(rusqlite::params_from_iter(c)).unwrap();
    }
    row_by_row.execute_batch("COMMIT").unwrap();
    drop(insert);
    // In batch: the packages of a stream (2 changes each: every
    // transaction is split and staged), into one inbound stream.
    let batch = fresh();
    let mut read = src.prepare("SELECT package FROM out").unwrap();
    let packages: Vec<Vec<u8>> = read
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    drop(read);
    for p in &packages {
        batch
            .execute("INSERT INTO inb (package) VALUES (?1)", [p])
            .unwrap();
    }
    let stored = |c: &Connection| {
        [
            "SELECT * FROM t ORDER BY id",
            "SELECT * FROM crsql_changes",
            "SELECT * FROM t__crsql_rows ORDER BY id",
            "SELECT * FROM t__crsql_cells ORDER BY id, col_name",
        ]
        .map(|q| rows(c, q))
    };
    let (a, b) = (stored(&row_by_row), stored(&batch));
    for (i, what) in ["t", "crsql_changes", "row clocks", "cells"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            a[i], b[i],
            "{what}: row by row (left) and in batch (right) differ"
        );
    }
    // Every row holds a run (m at least: b and c follow at other seqs).
    let runs: i64 = batch
        .query_row(
            "SELECT count(*) FROM t__crsql_rows WHERE vers IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(runs, 300);
    for c in [src, row_by_row, batch] {
        close(c);
    }
}

/// A COMMIT that only inserted new rows into a compact CRR counts their
/// clocks from the row clocks' index and what the inserts recorded
/// (`compact::FastInserts`, D33's counts): inserts undone by a savepoint,
/// by a failed statement or by a rolled back transaction, and rows the
/// transaction also rewrote or deleted, must not be counted as inserted.
#[test]
fn commit_counts_of_new_rows_follow_rollbacks_and_rewrites() {
    let db = open("compact");
    let steps = [
        "BEGIN; INSERT INTO t (id, m) VALUES (100, 1), (101, 1); ROLLBACK;",
        "BEGIN; INSERT INTO t (id, m) VALUES (102, 1); COMMIT;",
        "BEGIN; INSERT INTO t (id) VALUES (1); SAVEPOINT a; INSERT INTO t (id) VALUES (2), (3); \
         ROLLBACK TO a; RELEASE a; INSERT INTO t (id) VALUES (4); COMMIT;",
        "BEGIN; INSERT INTO t (id) VALUES (20); DELETE FROM t WHERE id = 20; COMMIT;",
        "BEGIN; INSERT INTO t (id) VALUES (21); UPDATE t SET m = 2 WHERE id = 21; COMMIT;",
        "BEGIN; INSERT INTO p (k1, k2) VALUES ('a', 1), ('a', 2); COMMIT;",
        "INSERT INTO t (id) VALUES (30), (31);",
    ];
    for step in steps {
        db.execute_batch(step).unwrap();
        assert_lag_exact(&db, &format!("after {step}"));
    }
    // A statement that fails on its third row takes its first two back.
    db.execute_batch("BEGIN; INSERT INTO t (id) VALUES (10);")
        .unwrap();
    db.execute_batch("INSERT INTO t (id) VALUES (11), (12), (10);")
        .expect_err("a duplicate key");
    db.execute_batch("COMMIT;").unwrap();
    assert_lag_exact(&db, "after a failed statement");
    close(db);
}

/// Rows of a fresh replica of each layout, the changes of `src` merged row
/// by row (one transaction per source version) and through an inbound
/// stream; each replica's `crsql_changes` must be the cr-sqlite layout's.
fn merged_replicas(src: &Connection) -> [Connection; 2] {
    let all = all_changes(src);
    let packages = rows(src, "SELECT package FROM out");
    // One transaction per source version, as a stream applies them.
    let merge_by_version = |db: &Connection| {
        for v in all.chunk_by(|a, b| a[5] == b[5]) {
            db.execute_batch("BEGIN").unwrap();
            merge(db, v);
            db.execute_batch("COMMIT").unwrap();
        }
    };
    let reference = open("crsqlite");
    merge_by_version(&reference);
    let by_row = open("compact");
    merge_by_version(&by_row);
    let by_stream = open("compact");
    by_stream
        .execute_batch("CREATE VIRTUAL TABLE inb USING crsql_InboundStream();")
        .unwrap();
    for p in &packages {
        by_stream
            .execute("INSERT INTO inb (package) VALUES (?1)", [&p[0]])
            .unwrap();
    }
    let expected = rows(&reference, "SELECT * FROM crsql_changes");
    for db in [&by_row, &by_stream] {
        assert_eq!(rows(db, "SELECT * FROM crsql_changes"), expected);
    }
    close(reference);
    [by_row, by_stream]
}

/// A row whose columns were written at different versions (the bench's
/// UPDATE of one column of every row) arrives at a replica as m and c at
/// one version and b at another: m and c, merged at consecutive seqs, are
/// one run (the offsets form, DECISIONS "per-clock seqs"), so only b is a
/// cell; `crsql_changes` is the cr-sqlite layout's.
#[test]
fn a_row_merged_in_two_versions_keeps_one_run_and_one_cell() {
    let src = updated_rows(200);
    // At the source, b left each row's run for the cells table.
    assert_eq!(count(&src, "SELECT count(*) FROM t__crsql_cells"), 200);
    for db in merged_replicas(&src) {
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM t__crsql_cells WHERE col_name = 'b'"
            ),
            200
        );
        assert_eq!(count(&db, "SELECT count(*) FROM t__crsql_cells"), 200);
        assert_eq!(
            count(
                &db,
                "SELECT count(*) FROM t__crsql_rows WHERE crsql_internal_run_count(vers) = 2 \
                 AND typeof(vers) = 'blob' AND substr(vers, 1, 1) = x'02'"
            ),
            200
        );
        close(db);
    }
    close(src);
}

/// A compact database of `n` rows of t whose b was then updated (the
/// bench's workload: every row's columns at two versions).
fn updated_rows(n: u32) -> Connection {
    let src = open("compact");
    src.execute_batch(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
         INSERT INTO t (id, m, b, c) SELECT i, 'm' || i, 'b' || i, i / 3.0 FROM n;
         UPDATE t SET b = b || '!';"
    ))
    .unwrap();
    src
}

fn count(db: &Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Row clocks written before the offsets form (the slot form as a postcard
/// BLOB, which every earlier build wrote before the INTEGER form) read as
/// before and keep working: the same changes, lag and later writes as a
/// twin database that never had them; a row written again is stored in the
/// current form.
#[test]
fn row_clocks_in_the_previous_blob_form_keep_working() {
    let setup = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
         INSERT INTO t (id, m, b, c) SELECT i, 'm' || i, 'b' || i, i FROM n;
         UPDATE t SET b = 'x' WHERE id % 3 = 0;
         DELETE FROM t WHERE id % 5 = 0;";
    let [old, twin] = [open("compact"), open("compact")];
    for db in [&old, &twin] {
        db.execute_batch(setup).unwrap();
    }
    // 14 = m, b, c; 10 = m and c (b left); 1 = the sentinel of a delete.
    old.execute_batch(
        "UPDATE t__crsql_rows SET vers = CASE vers WHEN 14 THEN x'0003010101' \
         WHEN 10 THEN x'0003010001' WHEN 1 THEN x'0100' END",
    )
    .unwrap();
    assert_eq!(
        count(
            &old,
            "SELECT count(*) FROM t__crsql_rows WHERE typeof(vers) != 'blob'"
        ),
        0
    );
    let later = "UPDATE t SET m = 'y' WHERE id % 4 = 0;
         INSERT INTO t (id, m) VALUES (5, 'back'), (21, 'new');
         DELETE FROM t WHERE id = 7;
         UPDATE t SET m = 'z', b = 'z', c = 'z' WHERE id = 8;";
    let both = |db: &Connection| {
        (
            all_changes(db),
            rows(
                db,
                "SELECT lag_changes FROM crsql_streams WHERE name = 'out'",
            ),
        )
    };
    let same = |when: &str| {
        let (a, b) = (both(&old), both(&twin));
        assert_eq!(a.0.len(), b.0.len(), "{when}");
        for (x, y) in a.0.iter().zip(&b.0) {
            assert_eq!(x[..6], y[..6], "{when}");
            assert_eq!(x[7..], y[7..], "{when}");
        }
        assert_eq!(a.1, b.1, "{when}: lag");
    };
    same("read in the previous form");
    for db in [&old, &twin] {
        db.execute_batch(later).unwrap();
    }
    same("after later writes");
    // Rows written again are stored as the twin stores them.
    assert_eq!(
        rows(
            &old,
            "SELECT id, vers FROM t__crsql_rows WHERE id IN (5, 8, 21) ORDER BY id"
        ),
        rows(
            &twin,
            "SELECT id, vers FROM t__crsql_rows WHERE id IN (5, 8, 21) ORDER BY id"
        )
    );
    close_all([old, twin]);
}

/// A package merge reads its keys' stored clocks ahead (DECISIONS D54,
/// "Compact merges: rows read ahead"), which is only right for keys no
/// earlier change of the package can have written under another packed
/// key: the text `'2'` and the real 2.0 are the integer 2's row clock on
/// the compact layout (a rowid-alias key; docs/compact-layout.md, known
/// difference 1). Merged in one package after a change of 2 (and of
/// another row, so that 2's writes wait), they must see that change, as
/// the row-by-row merge does; on the cr-sqlite layout they are keys of
/// their own, also equal both ways.
#[test]
fn a_package_merge_reads_aliasing_keys_after_the_changes_before_them() {
    use crsql_stream_core::Value as V;
    aliasing_keys_merge_alike(&[
        (packed(V::Integer(2)), 1, V::Text("x".into())),
        (packed(V::Integer(5)), 1, V::Text("z".into())),
        (packed(V::Text("2".into())), 2, V::Text("y".into())),
        (packed(V::Real(2.0)), 3, V::Real(1.5)),
    ]);
}

/// The other way round: the real 2.0 and the text `'2'` (never read
/// ahead, written at once) come before the integer 2, whose stored clocks
/// were read ahead before either was written; and an integer packed in
/// more bytes than it needs (a valid encoding of 2, another byte string)
/// after a change of 2 whose writes wait. Each must see what came before
/// it in the package (found by review: the integer 2 read its stale
/// read-ahead entry and lost to nothing).
#[test]
fn a_package_merge_reads_a_key_read_ahead_after_its_aliases_and_long_encodings() {
    use crsql_stream_core::Value as V;
    // count 1, tag (2 bytes << 3) | INTEGER, big-endian 2.
    let long_two = vec![0x01, (2 << 3) | 1, 0x00, 0x02];
    aliasing_keys_merge_alike(&[
        (packed(V::Real(2.0)), 3, V::Real(1.5)),
        (packed(V::Text("2".into())), 2, V::Text("y".into())),
        (packed(V::Integer(2)), 1, V::Text("x".into())),
        (packed(V::Integer(5)), 1, V::Text("z".into())),
        (long_two, 2, V::Text("w".into())),
    ]);
}

/// `v` packed as a one-column primary key.
fn packed(v: crsql_stream_core::Value) -> Vec<u8> {
    crsql_stream_core::pack_columns([v.as_ref()]).unwrap()
}

/// Merge `changes` (packed pk of table `t`, column index, value; one
/// transaction, col_version 1, seqs in order) as one package through an
/// inbound stream and row by row through `crsql_changes`, on both
/// layouts: the tables, `crsql_changes` and the compact clock tables must
/// be equal, and on the compact layout the keys equal to 2 share one row
/// clock with 5's beside it.
fn aliasing_keys_merge_alike(changes: &[(Vec<u8>, u32, crsql_stream_core::Value)]) {
    let package = one_version_package(changes);
    for layout in ["compact", "crsqlite"] {
        let batch = open(layout);
        batch
            .execute_batch("CREATE VIRTUAL TABLE inb USING crsql_InboundStream();")
            .unwrap();
        batch
            .execute("INSERT INTO inb (package) VALUES (?1)", [&package])
            .unwrap();
        // Row by row: one `crsql_changes` insert (xUpdate) per change.
        let by_rows = open(layout);
        by_rows
            .execute(
                "INSERT INTO crsql_changes SELECT * FROM crsql_package_changes(?1)",
                [&package],
            )
            .unwrap();
        let mut queries = vec![
            "SELECT id, typeof(id), m, b, c FROM t ORDER BY id".to_string(),
            "SELECT \"table\", pk, cid, val, col_version, db_version, cl, seq FROM crsql_changes"
                .to_string(),
        ];
        if layout == "compact" {
            queries.push("SELECT * FROM t__crsql_rows ORDER BY id".into());
            queries.push("SELECT * FROM t__crsql_cells ORDER BY id, col_name".into());
        }
        for q in &queries {
            assert_eq!(
                rows(&batch, q),
                rows(&by_rows, q),
                "{layout}: {q}: in batch (left) and row by row (right) differ"
            );
        }
        // The text and real keys' changes joined the integer key's row
        // clock (their cells keep their own keys).
        if layout == "compact" {
            let clocks = rows(&batch, "SELECT id FROM t__crsql_rows ORDER BY id");
            assert_eq!(clocks, [[Value::Integer(2)], [Value::Integer(5)]]);
        }
        close(batch);
        close(by_rows);
    }
}

/// `changes` (packed pk of table `t`, column index, value) as one encoded
/// package of one transaction of one site: col_version 1, seqs in order.
fn one_version_package(changes: &[(Vec<u8>, u32, crsql_stream_core::Value)]) -> Vec<u8> {
    use crsql_stream_core::package::{
        schema_hash, Bytes, Encoding, Package, PackageKind, PkgChange, TableEntry, WireValue,
    };
    use crsql_stream_core::Position;
    let site = [0xA1u8; 16];
    Package {
        sender: Bytes::from(site.to_vec()),
        stream_id: Bytes::from(vec![7; 16]),
        stream: "aliases".into(),
        since: Position::new(0, 0),
        cursor: Position::new(1, changes.len() as i64 - 1),
        part: None,
        tables: vec![TableEntry {
            name: "t".into(),
            schema_hash: schema_hash("t", &["id"], &["m", "b", "c"]),
            columns: vec!["m".into(), "b".into(), "c".into()],
        }],
        sites: vec![Bytes::from(site.to_vec())],
        changes: changes
            .iter()
            .enumerate()
            .map(|(seq, (pk, cid, val))| PkgChange {
                table: 0,
                pk: Bytes::from(pk.clone()),
                cid: *cid,
                val: WireValue::Owned(val.clone()),
                col_version: 1,
                db_version: 1,
                site: 0,
                cl: 1,
                seq: seq as i64,
            })
            .collect(),
        kind: PackageKind::Changes,
    }
    .encode(Encoding::Binary)
    .unwrap()
}

/// A package merge writes the row clocks and cells of keys it read absent
/// by `INSERT OR IGNORE` (no statement journal); a key that is there after
/// all when they are written must still end as the upsert leaves it. Here
/// a user trigger on the base table writes key 200's row clock directly
/// while the merge inserts row 1, after the package's keys were read ahead
/// (as absent: the table was empty) and before key 200's clocks are
/// written (in the second batch of rows): the clock tables,
/// `crsql_changes` and the table must be those of a replica without the
/// trigger. Keys 1-300 also test that keys past the last stored key are
/// read as absent.
#[test]
fn a_row_clock_written_behind_a_package_merge_is_overwritten_as_by_the_upsert() {
    use crsql_stream_core::Value as V;
    let changes: Vec<_> = (1..=300)
        .flat_map(|i| {
            [
                (packed(V::Integer(i)), 0, V::Text(format!("m{i}"))),
                (packed(V::Integer(i)), 2, V::Real(i as f64)),
            ]
        })
        .collect();
    let package = one_version_package(&changes);
    let apply = |trigger: bool| {
        let db = open("compact");
        if trigger {
            db.execute_batch(
                "CREATE TABLE fired (n);
                 CREATE TRIGGER behind AFTER INSERT ON t WHEN new.id = 1 BEGIN
                   INSERT INTO t__crsql_rows (id, cl, db_version, site_id, seq, vers)
                     VALUES (200, 7, 7, 0, 7, NULL);
                   INSERT INTO fired VALUES (1);
                 END;",
            )
            .unwrap();
        }
        db.execute_batch("CREATE VIRTUAL TABLE inb USING crsql_InboundStream();")
            .unwrap();
        db.execute("INSERT INTO inb (package) VALUES (?1)", [&package])
            .unwrap();
        if trigger {
            assert_eq!(count(&db, "SELECT count(*) FROM fired"), 1);
        }
        db
    };
    let (plain, behind) = (apply(false), apply(true));
    for q in [
        "SELECT * FROM t ORDER BY id",
        "SELECT * FROM t__crsql_rows ORDER BY id",
        "SELECT * FROM t__crsql_cells ORDER BY id, col_name",
        "SELECT \"table\", pk, cid, val, col_version, db_version, cl, seq FROM crsql_changes",
    ] {
        assert_eq!(rows(&behind, q), rows(&plain, q), "{q}");
    }
    assert_eq!(count(&plain, "SELECT count(*) FROM t__crsql_rows"), 300);
    close(plain);
    close(behind);
}

/// The trigger helpers copy their arguments to the stack when there are at
/// most 16 (`functions::with_args`) and to a vector otherwise: tables on
/// both sides of that (an update of 6 and 7 columns passes 15 and 17
/// values, an insert of 15 and 16 primary-key columns 16 and 17) record the
/// same changes in both layouts, and an update of rows counted at an
/// earlier COMMIT, in a bucket of versions read whole, keeps `lag_changes`
/// exact (its departures, D33, go through the held counts statement).
#[test]
fn trigger_helpers_of_wide_tables_record_the_same_changes_in_both_layouts() {
    let cols = |n: usize, prefix: &str| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    };
    // (table, primary-key columns, other columns)
    let shapes = [("u6", 1, 6), ("u7", 1, 7), ("k15", 15, 1), ("k16", 16, 1)];
    let mut schema = String::new();
    let mut writes = String::new();
    let mut later = String::new();
    for (t, npk, ncol) in shapes {
        let pks = cols(npk, "k");
        let vals = cols(ncol, "c");
        let defs: Vec<String> = pks
            .iter()
            .map(|k| format!("{k} INTEGER NOT NULL"))
            .chain(vals.iter().cloned())
            .collect();
        schema.push_str(&format!(
            "CREATE TABLE {t} ({}, PRIMARY KEY ({})); SELECT crsql_as_crr('{t}');\n",
            defs.join(", "),
            pks.join(", ")
        ));
        let row = |k: usize, v: usize| -> String {
            let keys = (0..npk).map(|i| (k * 10 + i).to_string());
            let others = (0..ncol).map(|i| format!("'v{v}.{i}'"));
            keys.chain(others).collect::<Vec<_>>().join(", ")
        };
        for k in 0..4 {
            writes.push_str(&format!("INSERT INTO {t} VALUES ({});\n", row(k, 0)));
        }
        let all: Vec<String> = vals.iter().map(|c| format!("{c} = {c} || 'x'")).collect();
        writes.push_str(&format!(
            "UPDATE {t} SET {} WHERE k0 = 10;\n",
            all.join(", ")
        ));
        writes.push_str(&format!("UPDATE {t} SET c0 = 'one' WHERE k0 = 20;\n"));
        writes.push_str(&format!("DELETE FROM {t} WHERE k0 = 30;\n"));
        writes.push_str(&format!("INSERT INTO {t} VALUES ({});\n", row(3, 1)));
        // A later transaction rewrites cells counted at the first COMMIT.
        later.push_str(&format!("UPDATE {t} SET c0 = c0 || 'y';\n"));
        // The last column of a run: the run's last seq moves (no
        // `Compact::update_vers`: the upsert).
        later.push_str(&format!(
            "UPDATE {t} SET c{} = 'last' WHERE k0 = 30;\n",
            ncol - 1
        ));
        later.push_str(&format!("DELETE FROM {t} WHERE k0 = 0;\n"));
    }
    // The written rows' version in the second bucket of 1,024 versions and
    // the last one in the third, so that `lag_changes` (from 0) reads the
    // written rows' bucket whole (D33's two levels).
    schema.push_str(
        "CREATE TABLE many (id INTEGER PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('many');",
    );
    let versions = |from: usize| -> String {
        (from..from + 1030)
            .map(|i| format!("INSERT INTO many VALUES ({i}, {i});\n"))
            .collect()
    };
    let dbs = [open("crsqlite"), open("compact")];
    for db in &dbs {
        db.execute_batch(&schema).unwrap();
        db.execute_batch(&versions(0)).unwrap();
        db.execute_batch(&format!("BEGIN; {writes} COMMIT;"))
            .unwrap();
        assert_lag_exact(db, "after the first transaction");
        db.execute_batch(&versions(2000)).unwrap();
        db.execute_batch(&format!("BEGIN; {later} COMMIT;"))
            .unwrap();
        assert_lag_exact(db, "after rewriting counted rows");
    }
    for (t, _, _) in shapes {
        assert_eq!(layout_of(&dbs[1], t), "compact");
    }
    let want = changes(&dbs[0], "");
    assert!(want.len() > 40, "{want:?}");
    assert_eq!(changes(&dbs[1], ""), want);
    // The changes carry the rows' own keys and values (a helper given a
    // wrong argument records it identically in both layouts): a replica
    // merging them holds the tables as written.
    for (db, layout) in dbs.iter().zip(["crsqlite", "compact"]) {
        let replica = open(layout);
        replica.execute_batch(&schema).unwrap();
        merge(&replica, &all_changes(db));
        for (t, _, _) in shapes {
            let q = format!("SELECT * FROM {t} ORDER BY 1, 2, 3");
            let written = rows(db, &q);
            assert!(written.len() >= 3, "{t}: {written:?}");
            assert_eq!(rows(&replica, &q), written, "{t} merged from {layout}");
        }
        close(replica);
    }
    close_all(dbs);
}
