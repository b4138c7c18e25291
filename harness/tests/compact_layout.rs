//! The compact CRR layout (docs/compact-layout.md) records exactly the
//! changes of the cr-sqlite layout: the same random local writes on a
//! database of each layout give identical `crsql_changes` (every column but
//! the site id, which differs per database: compared as "local or not"),
//! identical filtered reads, and identical packages read part by part from
//! an outbound stream that splits transactions, and an exact `lag_changes`
//! (DECISIONS D33) after every commit; `crsql_convert_layout` both ways
//! changes none of it. Operations the layout does
//! not support yet fail with an error naming the table and the operation.

use crsql_stream_harness::sql::rows;
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
/// nothing is half done. A primary-key column the compact tables use
/// themselves is refused by name.
#[test]
fn bad_settings_and_conversions_are_refused() {
    let db = open("compact");
    db.execute_batch("INSERT INTO t (id, m) VALUES (1, 'x');")
        .unwrap();
    let before = changes(&db, "");
    let cases = [
        (
            "CREATE TABLE r (seq INTEGER PRIMARY KEY NOT NULL, a); SELECT crsql_as_crr('r')",
            "r has a primary key column named \"seq\"",
            "'crr-layout', 'crsqlite'",
        ),
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

    fn assert_lag_exact_for(db: &Connection, stream: &str, who: &str) {
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
/// `crsql_db_version()` does not go back (they still count); creating the
/// table again is refused until that is built, naming what to do.
#[test]
fn a_dropped_compact_table_keeps_the_version() {
    let db = open("compact");
    db.execute_batch(
        "INSERT INTO t (id, m) VALUES (1, 'x'); INSERT INTO t (id, m) VALUES (2, 'y');",
    )
    .unwrap();
    let version = |db: &Connection| -> i64 {
        db.query_row("SELECT crsql_db_version()", [], |r| r.get(0))
            .unwrap()
    };
    let before = version(&db);
    db.execute_batch("DROP TABLE t;").unwrap();
    assert_eq!(version(&db), before);
    db.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, m);")
        .unwrap();
    let e = db
        .execute_batch("SELECT crsql_as_crr('t')")
        .expect_err("re-creation")
        .to_string();
    assert!(
        e.contains("table t") && e.contains("dropped and created again"),
        "{e}"
    );
    close(db);
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
