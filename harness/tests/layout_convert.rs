//! `crsql_convert_layout` round trips (issue 12, docs/compact-layout.md):
//! converting a CRR compact → crsqlite → compact keeps every clock at its
//! position, so `crsql_changes` (all nine columns), the compaction records,
//! `crsql_db_version()` and the tables read exactly the same after each
//! conversion, whatever happened before: random local writes (upserts,
//! single-column and whole-row updates, deletes, primary-key changes),
//! merges from a peer, `crsql_compact()`, reopening.
//!
//! Each case runs twins: A, whose tables are converted back and forth at
//! random moments, and B, never converted; both get the same writes and the
//! same merges, so after every step their `crsql_changes` must be identical
//! (the site id compared as "local or not"): a conversion must also leave
//! the state later writes and merges build on (positions, causal lengths,
//! counts) as it was.
//!
//! Also here: a database written by cr-sqlite 0.16 itself (the fixtures'
//! `basic.db`) converted to the compact layout and back keeps its changes
//! and keeps syncing.
//!
//! The crash test of a conversion (SIGKILL mid-way) is
//! `tests/convert_crash.rs`.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use crsql_stream_harness::sql::{crr_state, exec, rows, INSERT_CHANGE, SELECT_CHANGES};
use crsql_stream_harness::{close, open, prop_cases, Layout};

/// Tables of every key shape the compact layout stores differently: a rowid
/// alias, a text key, a composite key of a `WITHOUT ROWID` table and a key
/// with no other column.
const SCHEMA: &str = "
CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a, b TEXT, c REAL);
CREATE TABLE s (k TEXT PRIMARY KEY NOT NULL, x, y DEFAULT 0);
CREATE TABLE w (k1 TEXT NOT NULL, k2 INTEGER NOT NULL, v, PRIMARY KEY (k1, k2)) WITHOUT ROWID;
CREATE TABLE p (k NOT NULL PRIMARY KEY);
SELECT crsql_as_crr('t');
SELECT crsql_as_crr('s');
SELECT crsql_as_crr('w');
SELECT crsql_as_crr('p');
";

const TABLES: [&str; 4] = ["t", "s", "w", "p"];
const PKS: [&[&str]; 4] = [&["id"], &["k"], &["k1", "k2"], &["k"]];
const COLS: [&[&str]; 4] = [&["a", "b", "c"], &["x", "y"], &["v"], &[]];

/// The primary key number `i` of table `t` (a small domain: rows are hit again).
fn key(t: usize, i: u8) -> Vec<Value> {
    let i = i % 6;
    match t {
        0 => vec![Value::Integer(i as i64 - 1)],
        1 => vec![Value::Text(format!("k{i}"))],
        2 => vec![
            Value::Text(["a", "b"][i as usize % 2].into()),
            Value::Integer(i as i64 / 2),
        ],
        _ => vec![[
            Value::Integer(1),
            Value::Text("1".into()),
            Value::Blob(vec![1]),
            Value::Integer(-7),
            Value::Text("x".into()),
            Value::Blob(vec![]),
        ][i as usize]
            .clone()],
    }
}

/// A value of one of the storage classes, from a byte.
fn value(b: u8) -> Value {
    match b % 5 {
        0 => Value::Null,
        1 => Value::Integer(b as i64 * 1_000_003 - 77),
        2 => Value::Real(b as f64 / 8.0),
        3 => Value::Text(format!("v{b}")),
        _ => Value::Blob(vec![b; (b % 4) as usize]),
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// `INSERT … ON CONFLICT DO UPDATE` of every column.
    Upsert {
        t: usize,
        k: u8,
        v: u8,
    },
    /// One column.
    Update {
        t: usize,
        k: u8,
        col: usize,
        v: u8,
    },
    /// Every column (a new run in the compact layout).
    UpdateAll {
        t: usize,
        k: u8,
        v: u8,
    },
    Delete {
        t: usize,
        k: u8,
    },
    /// `UPDATE OR IGNORE … SET pk = new`.
    MoveKey {
        t: usize,
        k: u8,
        to: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..TABLES.len();
    prop_oneof![
        5 => (t.clone(), any::<u8>(), any::<u8>()).prop_map(|(t, k, v)| Op::Upsert { t, k, v }),
        4 => (t.clone(), any::<u8>(), 0..3usize, any::<u8>())
            .prop_map(|(t, k, col, v)| Op::Update { t, k, col, v }),
        2 => (t.clone(), any::<u8>(), any::<u8>()).prop_map(|(t, k, v)| Op::UpdateAll { t, k, v }),
        3 => (t.clone(), any::<u8>()).prop_map(|(t, k)| Op::Delete { t, k }),
        1 => (t, any::<u8>(), any::<u8>()).prop_map(|(t, k, to)| Op::MoveKey { t, k, to }),
    ]
}

fn pk_where(t: usize, first: usize) -> String {
    PKS[t]
        .iter()
        .enumerate()
        .map(|(i, p)| format!("\"{p}\" = ?{}", first + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `<verb> t SET c1 = ?1, … WHERE <pk> = ?n+1 …`.
fn update_sql(t: usize, verb: &str, cols: &[&str]) -> String {
    let set: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| format!("\"{c}\" = ?{}", i + 1))
        .collect();
    format!(
        "{verb} {} SET {} WHERE {}",
        TABLES[t],
        set.join(", "),
        pk_where(t, cols.len() + 1)
    )
}

/// The statement of an op and its parameters (None: nothing to do).
fn statement(op: &Op) -> Option<(String, Vec<Value>)> {
    let name = |t: usize| TABLES[t];
    Some(match *op {
        Op::Upsert { t, k, v } => {
            let cols: Vec<&str> = PKS[t].iter().chain(COLS[t]).copied().collect();
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
            let conflict = if COLS[t].is_empty() {
                "NOTHING".to_string()
            } else {
                let set: Vec<String> = COLS[t]
                    .iter()
                    .map(|c| format!("\"{c}\" = excluded.\"{c}\""))
                    .collect();
                format!("UPDATE SET {}", set.join(", "))
            };
            let sql = format!(
                "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO {conflict}",
                name(t),
                cols.join(", "),
                marks.join(", "),
                PKS[t].join(", ")
            );
            let mut params = key(t, k);
            params.extend((0..COLS[t].len()).map(|i| value(v.wrapping_add(i as u8 * 7))));
            (sql, params)
        }
        Op::Update { t, k, col, v } => {
            let c = COLS[t].get(col % COLS[t].len().max(1))?;
            let sql = format!(
                "UPDATE {} SET \"{c}\" = ?1 WHERE {}",
                name(t),
                pk_where(t, 2)
            );
            let mut params = vec![value(v)];
            params.extend(key(t, k));
            (sql, params)
        }
        Op::UpdateAll { t, k, v } => {
            if COLS[t].is_empty() {
                return None;
            }
            let sql = update_sql(t, "UPDATE", COLS[t]);
            let mut params: Vec<Value> = (0..COLS[t].len())
                .map(|i| value(v.wrapping_add(i as u8 * 3)))
                .collect();
            params.extend(key(t, k));
            (sql, params)
        }
        Op::Delete { t, k } => (
            format!("DELETE FROM {} WHERE {}", name(t), pk_where(t, 1)),
            key(t, k),
        ),
        Op::MoveKey { t, k, to } => {
            let sql = update_sql(t, "UPDATE OR IGNORE", PKS[t]);
            let mut params = key(t, to);
            params.extend(key(t, k));
            (sql, params)
        }
    })
}

#[derive(Clone, Debug)]
enum Step {
    /// One transaction of ops on both twins.
    Write(Vec<Op>),
    /// One transaction of ops on the peer.
    PeerWrite(Vec<Op>),
    /// Merge everything of the peer's the twins have not seen (one
    /// transaction, in position order or reversed).
    Sync { reversed: bool },
    /// `crsql_compact()` on both twins (no stream holds the horizon).
    Compact,
    /// Convert table `t` of A to the other layout.
    Convert { t: usize },
    /// Close and reopen A.
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    let ops = || prop::collection::vec(op(), 1..5);
    prop_oneof![
        6 => ops().prop_map(Step::Write),
        3 => ops().prop_map(Step::PeerWrite),
        3 => any::<bool>().prop_map(|reversed| Step::Sync { reversed }),
        1 => Just(Step::Compact),
        4 => (0..TABLES.len()).prop_map(|t| Step::Convert { t }),
        1 => Just(Step::Reopen),
    ]
}

/// Open a database file whose CRRs get `layout`, with the schema.
fn create(path: &Path, layout: Layout) -> Connection {
    let conn = open(path);
    layout.set(&conn).unwrap();
    exec(&conn, SCHEMA);
    conn
}

fn run_ops(conn: &Connection, ops: &[Op]) {
    exec(conn, "BEGIN");
    for op in ops {
        if let Some((sql, params)) = statement(op) {
            conn.execute(&sql, params_from_iter(&params))
                .unwrap_or_else(|e| panic!("{op:?}: {sql}: {e}"));
        }
    }
    exec(conn, "COMMIT");
}

/// Everything a conversion must keep, of one database: its changes (all
/// nine columns, in the order `crsql_changes` gives them), its compaction
/// records, its db_version and its tables.
fn state(conn: &Connection) -> Vec<Vec<Value>> {
    crr_state(conn, &TABLES)
}

/// The changes of a twin, its own site id read as NULL (the twins' ids differ).
fn twin_changes(conn: &Connection) -> Vec<Vec<Value>> {
    rows(
        conn,
        "SELECT \"table\", pk, cid, val, col_version, db_version, \
         nullif(site_id, crsql_site_id()), cl, seq FROM crsql_changes",
    )
}

/// Convert `t` to `layout`, checking that nothing else changed.
fn convert_checked(conn: &Connection, t: &str, layout: Layout, what: &str) {
    convert_checked_of(conn, &TABLES, t, layout, what)
}

/// [`convert_checked`] in a database with CRRs `tables`.
fn convert_checked_of(conn: &Connection, tables: &[&str], t: &str, layout: Layout, what: &str) {
    let before = crr_state(conn, tables);
    layout
        .convert(conn, t)
        .unwrap_or_else(|e| panic!("{what}: converting {t} to {layout:?}: {e}"));
    assert_eq!(
        Layout::of(conn, t),
        layout,
        "{what}: {t} after its conversion"
    );
    assert_eq!(
        crr_state(conn, tables),
        before,
        "{what}: converting {t} to {layout:?} changed the state"
    );
}

/// Merge the peer's changes after `since` into `conn` in one transaction.
fn merge(conn: &Connection, batch: &[Vec<Value>]) {
    exec(conn, "BEGIN");
    {
        let mut stmt = conn.prepare_cached(INSERT_CHANGE).unwrap();
        for c in batch {
            stmt.execute(params_from_iter(c))
                .unwrap_or_else(|e| panic!("merging {c:?}: {e}"));
        }
    }
    exec(conn, "COMMIT");
}

fn run(steps: &[Step], peer_layout: Layout) {
    let dir = tempfile::tempdir().unwrap();
    let a_path = dir.path().join("a.db");
    let mut a = create(&a_path, Layout::Compact);
    let b = create(&dir.path().join("b.db"), Layout::Compact);
    let peer = create(&dir.path().join("peer.db"), peer_layout);
    let mut seen = 0i64;
    for (i, s) in steps.iter().enumerate() {
        let what = format!("step {i} ({s:?})");
        match s {
            Step::Write(ops) => {
                run_ops(&a, ops);
                run_ops(&b, ops);
            }
            Step::PeerWrite(ops) => run_ops(&peer, ops),
            Step::Sync { reversed } => {
                let mut batch = rows(
                    &peer,
                    &format!("{SELECT_CHANGES} WHERE db_version > {seen}"),
                );
                if let Some(max) = batch
                    .iter()
                    .filter_map(|c| match c[5] {
                        Value::Integer(v) => Some(v),
                        _ => None,
                    })
                    .max()
                {
                    seen = max;
                }
                if *reversed {
                    batch.reverse();
                }
                merge(&a, &batch);
                merge(&b, &batch);
            }
            Step::Compact => {
                for c in [&a, &b] {
                    c.query_row("SELECT crsql_compact()", [], |_| Ok(()))
                        .unwrap();
                }
            }
            Step::Convert { t } => {
                let t = TABLES[*t];
                let to = Layout::of(&a, t).other();
                convert_checked(&a, t, to, &what);
            }
            Step::Reopen => {
                let before = state(&a);
                close(a);
                a = open(&a_path);
                assert_eq!(state(&a), before, "{what}: reopening changed the state");
            }
        }
        assert_eq!(
            twin_changes(&a),
            twin_changes(&b),
            "{what}: the converted twin (left) and the other (right) differ"
        );
    }
    // The round trip of every table, whatever layout it is in now.
    for t in TABLES {
        for layout in [Layout::Compact, Layout::Crsqlite, Layout::Compact] {
            if Layout::of(&a, t) != layout {
                convert_checked(&a, t, layout, "the final round trip");
            }
        }
    }
    assert_eq!(
        twin_changes(&a),
        twin_changes(&b),
        "after the final round trip"
    );
    for c in [a, b, peer] {
        close(c);
    }
}

fn config(default_cases: u32) -> Config {
    Config {
        cases: prop_cases(default_cases),
        max_shrink_iters: 2000,
        max_shrink_time: 60_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(40))]

    #[test]
    fn round_trips_between_layouts_keep_every_change_and_later_behaviour(
        steps in prop::collection::vec(step(), 1..40),
        compact_peer in any::<bool>(),
    ) {
        run(&steps, if compact_peer { Layout::Compact } else { Layout::Crsqlite });
    }
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    #[ignore = "long; run with `make soak`"]
    fn soak_round_trips_between_layouts_keep_every_change_and_later_behaviour(
        steps in prop::collection::vec(step(), 1..120),
        compact_peer in any::<bool>(),
    ) {
        run(&steps, if compact_peer { Layout::Compact } else { Layout::Crsqlite });
    }
}

// ---------------------------------------------------------------------------
// basic.db, written by cr-sqlite 0.16

const BASIC_CRRS: [&str; 4] = ["kv", "tags", "todo_tags", "todos"];

/// Local writes on basic.db's tables (every kind: update, delete, insert,
/// insert over a deleted key, primary-key change).
const BASIC_LOCAL: &str = "
UPDATE todos SET title = 'local ' || id WHERE id % 2 = 1;
DELETE FROM tags WHERE name = 'red';
INSERT OR REPLACE INTO kv (k, v) VALUES (x'0102', 'local');
INSERT OR IGNORE INTO todo_tags (todo_id, tag) VALUES (1, 'local');
UPDATE OR IGNORE todos SET id = id + 100 WHERE id = 3;
INSERT OR IGNORE INTO tags (name, color) VALUES ('red', 'again');";

/// The peer's writes, concurrent with [`BASIC_LOCAL`].
const BASIC_PEER: &str = "
UPDATE todos SET done = 1, score = 2.5;
UPDATE todos SET title = 'peer ' || id WHERE id % 3 = 0;
INSERT OR REPLACE INTO tags (name, color) VALUES ('peer', 'teal');
DELETE FROM kv WHERE v IS NOT NULL AND k > x'00';
INSERT OR IGNORE INTO todos (id, title) VALUES (1000, 'from the peer');
DELETE FROM todo_tags WHERE todo_id = 2;";

fn basic_tables(conn: &Connection) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    for t in BASIC_CRRS {
        out.extend(rows(conn, &format!("SELECT * FROM {t} ORDER BY 1, 2")));
    }
    out
}

/// Merge every change of `from` not authored by `to` into `to` (the merges
/// are idempotent: a full pull each time).
fn pull(to: &Connection, from: &Connection) {
    let site: Vec<u8> = to
        .query_row("SELECT crsql_site_id()", [], |r| r.get(0))
        .unwrap();
    let mut stmt = from
        .prepare(&format!("{SELECT_CHANGES} WHERE site_id IS NOT ?1"))
        .unwrap();
    let batch: Vec<Vec<Value>> = stmt
        .query_map([&site], |r| (0..9).map(|i| r.get(i)).collect())
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    merge(to, &batch);
}

/// cr-sqlite's own `basic.db` is converted to the compact layout (its
/// changes read exactly as cr-sqlite wrote them), keeps writing and merging
/// with peers of both layouts exactly as a copy left in the cr-sqlite layout
/// does (same site id: identical `crsql_changes`), and converts back.
#[test]
fn basic_db_written_by_cr_sqlite_converts_to_compact_and_back_and_keeps_syncing() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/crsqlite-0.16/basic/basic.db");
    let dir = tempfile::tempdir().unwrap();
    let [conv_path, twin_path] = ["conv.db", "twin.db"].map(|n| dir.path().join(n));
    for p in [&conv_path, &twin_path] {
        std::fs::copy(&src, p).unwrap();
    }
    let conv = open(&conv_path);
    let twin = open(&twin_path);
    let theirs = crr_state(&twin, &BASIC_CRRS);
    assert!(
        theirs.len() > 40,
        "basic.db has its changes: {}",
        theirs.len()
    );
    for t in BASIC_CRRS {
        assert_eq!(
            Layout::of(&conv, t),
            Layout::Crsqlite,
            "basic.db as cr-sqlite wrote it"
        );
        convert_checked_of(&conv, &BASIC_CRRS, t, Layout::Compact, "basic.db");
    }
    assert_eq!(crr_state(&conv, &BASIC_CRRS), theirs);

    // Peers of both layouts, created from basic.db's schema, that got
    // everything basic.db had.
    let schema: Vec<String> = rows(
        &twin,
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name IN ('kv', 'tags', 'todo_tags', 'todos')",
    )
    .into_iter()
    .map(|r| match &r[0] {
        Value::Text(s) => s.clone(),
        other => panic!("schema: {other:?}"),
    })
    .collect();
    let peers: Vec<Connection> = Layout::ALL
        .iter()
        .map(|layout| {
            let p = open(&dir.path().join(format!("peer-{}.db", layout.name())));
            layout.set(&p).unwrap();
            for sql in &schema {
                exec(&p, sql);
            }
            for t in BASIC_CRRS {
                exec(&p, &format!("SELECT crsql_as_crr('{t}')"));
            }
            pull(&p, &twin);
            assert_eq!(basic_tables(&p), basic_tables(&twin));
            p
        })
        .collect();

    // Concurrent writes, then syncing both ways, twice over (the second
    // round after converting back to the cr-sqlite layout).
    for round in 0..2 {
        for db in [&conv, &twin] {
            exec(db, &format!("BEGIN; {BASIC_LOCAL} COMMIT;"));
        }
        for p in &peers {
            exec(p, &format!("BEGIN; {BASIC_PEER} COMMIT;"));
        }
        for p in &peers {
            pull(&conv, p);
            pull(&twin, p);
        }
        assert_eq!(
            crr_state(&conv, &BASIC_CRRS),
            crr_state(&twin, &BASIC_CRRS),
            "round {round}: the converted basic.db (left) and the copy in the cr-sqlite layout (right)"
        );
        for p in &peers {
            pull(p, &conv);
        }
        for p in &peers {
            pull(p, &peers[0]);
            pull(p, &peers[1]);
            assert_eq!(
                basic_tables(p),
                basic_tables(&conv),
                "round {round}: a peer and basic.db"
            );
        }
        if round == 0 {
            for t in BASIC_CRRS {
                convert_checked_of(&conv, &BASIC_CRRS, t, Layout::Crsqlite, "basic.db back");
            }
        }
    }
    assert_eq!(crr_state(&conv, &BASIC_CRRS), crr_state(&twin, &BASIC_CRRS));
    for c in [conv, twin].into_iter().chain(peers) {
        close(c);
    }
}
