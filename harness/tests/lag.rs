//! `crsql_streams.lag_changes` is exact (issue 10, item 6; DECISIONS D33).
//!
//! A property test: one database A (a file, so it can be closed and opened
//! again) with two CRRs and four outbound streams with different filters
//! (none; `tables`; `exclude_sites` = peer B; `local_only`), each with a
//! small `max_changes` so that acknowledgements often land inside a
//! transaction. Two peers, B and C, write on their own; A merges what they
//! wrote. A random history interleaves on A: local transactions (inserts,
//! updates, deletes, re-inserts, primary-key changes, `INSERT OR REPLACE`,
//! a bulk statement writing every key) that commit, roll back, roll back to
//! a savepoint, or hold a statement that fails (so its statement journal
//! undoes it); merges from B or C (some rolled back); acknowledgements of
//! the next package or of everything; `crsql_compact()`; alter windows
//! (untracked updates and deletes, a column added or dropped);
//! `crsql_as_table` + `crsql_as_crr`; a base table dropped and created
//! again; `crsql_new_site_id()`; closing and opening A again. After every
//! step, every stream's `lag_changes` must equal a brute-force count of
//! the rows of `crsql_changes` after its `last_sent` that its filters let
//! through.
//!
//! Runs `PROPTEST_CASES` cases (default 60; the soak test 600).

use std::collections::HashSet;
use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use rusqlite::{params, Connection};

use crsql_stream_harness::{close, compact_layout, open, open_memory};

const KEYS: i64 = 8;

#[derive(Debug, Clone)]
enum Stmt {
    Insert { t: u8, k: i64, v: i64 },
    Update { t: u8, k: i64, v: i64 },
    Delete { t: u8, k: i64 },
    ChangePk { k: i64, to: i64 },
    Replace { k: i64, v: i64 },
    Bulk { v: i64 },
}

#[derive(Debug, Clone, Copy)]
enum End {
    Commit,
    Rollback,
    RollbackToSavepoint,
    FailingStatement,
}

#[derive(Debug, Clone)]
enum Op {
    Local(Vec<Stmt>, End),
    Merge {
        peer: usize,
        writes: Vec<Stmt>,
        rollback: bool,
    },
    AckNext(usize),
    AckAll(usize),
    Compact,
    Alter(u8),
    AsTableAsCrr,
    Recreate,
    NewSiteId,
    Reopen,
    /// Drop a stream and create it again from `[0,0]`, which compaction
    /// allows (a peer that starts from nothing): it must not count what
    /// compaction removed.
    NewStream(usize),
}

fn stmt() -> impl Strategy<Value = Stmt> {
    let k = 0..KEYS;
    let v = 0..5i64;
    prop_oneof![
        4 => (0..2u8, k.clone(), v.clone()).prop_map(|(t, k, v)| Stmt::Insert { t, k, v }),
        4 => (0..2u8, k.clone(), v.clone()).prop_map(|(t, k, v)| Stmt::Update { t, k, v }),
        3 => (0..2u8, k.clone()).prop_map(|(t, k)| Stmt::Delete { t, k }),
        1 => (k.clone(), k.clone()).prop_map(|(k, to)| Stmt::ChangePk { k, to }),
        1 => (k, v.clone()).prop_map(|(k, v)| Stmt::Replace { k, v }),
        1 => v.prop_map(|v| Stmt::Bulk { v }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let end = prop_oneof![
        6 => Just(End::Commit),
        1 => Just(End::Rollback),
        1 => Just(End::RollbackToSavepoint),
        1 => Just(End::FailingStatement),
    ];
    prop_oneof![
        8 => (prop::collection::vec(stmt(), 1..4), end).prop_map(|(s, e)| Op::Local(s, e)),
        5 => (0..2usize, prop::collection::vec(stmt(), 1..4), prop::bool::weighted(0.15))
            .prop_map(|(peer, writes, rollback)| Op::Merge { peer, writes, rollback }),
        5 => (0..4usize).prop_map(Op::AckNext),
        2 => (0..4usize).prop_map(Op::AckAll),
        2 => Just(Op::Compact),
        1 => (0..3u8).prop_map(Op::Alter),
        1 => Just(Op::AsTableAsCrr),
        1 => Just(Op::Recreate),
        1 => Just(Op::NewSiteId),
        1 => Just(Op::Reopen),
        1 => (0..4usize).prop_map(Op::NewStream),
    ]
}

const SCHEMA: &str = "CREATE TABLE t1 (id INTEGER PRIMARY KEY NOT NULL, a, b);
CREATE TABLE t2 (k INTEGER NOT NULL, s TEXT NOT NULL, v, PRIMARY KEY (k, s));
SELECT crsql_as_crr('t1');
SELECT crsql_as_crr('t2');";

const T2_DDL: &str = "CREATE TABLE t2 (k INTEGER NOT NULL, s TEXT NOT NULL, v, PRIMARY KEY (k, s))";

/// Streams of A: (name, tables filter, excludes B, local only).
const STREAMS: [(&str, Option<&str>, bool, bool); 4] = [
    ("s_all", None, false, false),
    ("s_t1", Some("t1"), false, false),
    ("s_ex", None, true, false),
    ("s_loc", None, false, true),
];

fn run_stmt(conn: &Connection, s: &Stmt) -> rusqlite::Result<()> {
    let t2_key = |k: i64| format!("s{}", k % 3);
    match *s {
        Stmt::Insert { t: 0, k, v } => conn
            .execute(
                "INSERT OR IGNORE INTO t1 VALUES (?1, ?2, ?2)",
                params![k, v],
            )
            .map(drop),
        Stmt::Insert { k, v, .. } => conn
            .execute(
                "INSERT OR IGNORE INTO t2 (k, s, v) VALUES (?1, ?2, ?3)",
                params![k, t2_key(k), v],
            )
            .map(drop),
        Stmt::Update { t: 0, k, v } => conn
            .execute("UPDATE t1 SET a = ?2 WHERE id = ?1", params![k, v])
            .map(drop),
        Stmt::Update { k, v, .. } => conn
            .execute("UPDATE t2 SET v = ?2 WHERE k = ?1", params![k, v])
            .map(drop),
        Stmt::Delete { t: 0, k } => conn.execute("DELETE FROM t1 WHERE id = ?1", [k]).map(drop),
        Stmt::Delete { k, .. } => conn.execute("DELETE FROM t2 WHERE k = ?1", [k]).map(drop),
        Stmt::ChangePk { k, to } => conn
            .execute(
                "UPDATE OR REPLACE t1 SET id = ?2 WHERE id = ?1",
                params![k, to],
            )
            .map(drop),
        Stmt::Replace { k, v } => conn
            .execute(
                "INSERT OR REPLACE INTO t1 VALUES (?1, ?2, 'r')",
                params![k, v],
            )
            .map(drop),
        Stmt::Bulk { v } => conn
            .execute(
                "WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM r WHERE i < ?1) \
                 INSERT OR REPLACE INTO t1 SELECT i, 'bulk', ?2 FROM r",
                params![KEYS - 1, v],
            )
            .map(drop),
    }
}

fn site_id(conn: &Connection) -> Vec<u8> {
    conn.query_row("SELECT crsql_site_id()", [], |r| r.get(0))
        .unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct World {
    path: std::path::PathBuf,
    a: Option<Connection>,
    peers: Vec<Connection>,
    /// Per peer: the db_version of it that A merged through.
    merged: Vec<i64>,
    b_site: Vec<u8>,
    t2_has_w: bool,
}

impl World {
    fn new(dir: &Path) -> World {
        let path = dir.join("a.db");
        let a = open(&path);
        a.execute_batch(SCHEMA).unwrap();
        let peers: Vec<Connection> = (0..2)
            .map(|_| {
                let p = open_memory();
                p.execute_batch(SCHEMA).unwrap();
                p
            })
            .collect();
        let b_site = site_id(&peers[0]);
        let w = World {
            path,
            a: Some(a),
            peers,
            merged: vec![0, 0],
            b_site,
            t2_has_w: false,
        };
        for i in 0..STREAMS.len() {
            w.create_stream(i);
        }
        w
    }

    fn create_stream(&self, i: usize) {
        let (name, tables, ex, local) = STREAMS[i];
        let mut args = vec!["max_changes = 3".to_string()];
        if let Some(t) = tables {
            args.push(format!("tables = '{t}'"));
        }
        if ex {
            args.push(format!("exclude_sites = '{}'", hex(&self.b_site)));
        }
        if local {
            args.push("local_only = 1".into());
        }
        self.a()
            .execute_batch(&format!(
                "CREATE VIRTUAL TABLE {name} USING crsql_OutboundStream({})",
                args.join(", ")
            ))
            .unwrap();
    }

    fn a(&self) -> &Connection {
        self.a.as_ref().unwrap()
    }

    fn local(&self, stmts: &[Stmt], end: End) {
        let a = self.a();
        a.execute_batch("BEGIN").unwrap();
        if matches!(end, End::RollbackToSavepoint) {
            a.execute_batch("SAVEPOINT sp").unwrap();
        }
        for s in stmts {
            run_stmt(a, s).unwrap();
        }
        match end {
            End::Commit => a.execute_batch("COMMIT").unwrap(),
            End::Rollback => a.execute_batch("ROLLBACK").unwrap(),
            End::RollbackToSavepoint => {
                a.execute_batch("ROLLBACK TO sp; RELEASE sp").unwrap();
                run_stmt(a, &stmts[0]).unwrap();
                a.execute_batch("COMMIT").unwrap();
            }
            End::FailingStatement => {
                // Every row of the failing statement is written, then the
                // last one breaks the primary key: the statement is undone.
                let r = a.execute_batch(
                    "INSERT INTO t1 VALUES (100, 'f', 1), (101, 'f', 1); \
                     UPDATE t1 SET a = 'f2' WHERE id IN (SELECT id FROM t1 LIMIT 3); \
                     INSERT INTO t1 SELECT 100, 'dup', 1 FROM t1 WHERE id = 100",
                );
                assert!(r.is_err(), "the duplicate key must fail");
                a.execute_batch("DELETE FROM t1 WHERE id >= 100; COMMIT")
                    .unwrap();
            }
        }
    }

    fn merge(&mut self, peer: usize, writes: &[Stmt], rollback: bool) {
        let p = &self.peers[peer];
        for s in writes {
            run_stmt(p, s).unwrap();
        }
        let since = self.merged[peer];
        let rows: Vec<Vec<rusqlite::types::Value>> = p
            .prepare(
                "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq \
                 FROM crsql_changes WHERE db_version > ?1",
            )
            .unwrap()
            .query_map([since], |r| (0..9).map(|i| r.get(i)).collect())
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let newest: i64 = p
            .query_row("SELECT crsql_db_version()", [], |r| r.get(0))
            .unwrap();
        let a = self.a.as_ref().unwrap();
        a.execute_batch("BEGIN").unwrap();
        for r in &rows {
            // A column A dropped is refused; the rest of the change set merges.
            let _ = a.execute(
                "INSERT INTO crsql_changes (\"table\", pk, cid, val, col_version, db_version, site_id, cl, seq) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                rusqlite::params_from_iter(r.iter()),
            );
        }
        if rollback {
            a.execute_batch("ROLLBACK").unwrap();
        } else {
            a.execute_batch("COMMIT").unwrap();
            self.merged[peer] = newest;
        }
    }

    fn ack(&self, stream: usize, all: bool) {
        let name = STREAMS[stream].0;
        let sql = if all {
            format!("SELECT cursor FROM {name} ORDER BY cursor DESC LIMIT 1")
        } else {
            format!("SELECT cursor FROM {name} LIMIT 1")
        };
        let cursor: rusqlite::Result<String> = if all {
            // Read every package: the last cursor is the newest.
            self.a()
                .prepare(&format!("SELECT cursor FROM {name}"))
                .and_then(|mut s| {
                    let all: Vec<String> = s
                        .query_map([], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    all.last()
                        .cloned()
                        .ok_or(rusqlite::Error::QueryReturnedNoRows)
                })
        } else {
            self.a().query_row(&sql, [], |r| r.get(0))
        };
        match cursor {
            Ok(c) => {
                self.a()
                    .execute(&format!("INSERT INTO {name}(last_sent) VALUES (?1)"), [c])
                    .unwrap();
            }
            Err(rusqlite::Error::QueryReturnedNoRows) => {}
            Err(e) if e.to_string().contains("resync required") => {}
            Err(e) => panic!("reading {name}: {e}"),
        }
    }

    fn alter(&mut self, kind: u8) {
        let a = self.a.as_ref().unwrap();
        match kind {
            0 => a
                .execute_batch(
                    "SELECT crsql_begin_alter('t1'); UPDATE t1 SET a = 'alt' WHERE id % 2 = 0; \
                     DELETE FROM t1 WHERE id = 3; INSERT OR IGNORE INTO t1 VALUES (5, 'w', 'w'); \
                     SELECT crsql_commit_alter('t1');",
                )
                .unwrap(),
            _ if !self.t2_has_w => {
                a.execute_batch(
                    "SELECT crsql_begin_alter('t2'); ALTER TABLE t2 ADD COLUMN w; UPDATE t2 SET w = 1; \
                     SELECT crsql_commit_alter('t2');",
                )
                .unwrap();
                self.t2_has_w = true;
            }
            _ => {
                a.execute_batch(
                    "SELECT crsql_begin_alter('t2'); ALTER TABLE t2 DROP COLUMN w; \
                     SELECT crsql_commit_alter('t2');",
                )
                .unwrap();
                self.t2_has_w = false;
            }
        }
    }

    fn recreate(&mut self) {
        let a = self.a.as_ref().unwrap();
        a.execute_batch(&format!(
            "BEGIN; CREATE TEMP TABLE keep AS SELECT k, s, v FROM t2 WHERE k % 2 = 0; DROP TABLE t2; {T2_DDL}; \
             INSERT INTO t2 SELECT * FROM keep; DROP TABLE keep; SELECT crsql_as_crr('t2'); COMMIT;"
        ))
        .unwrap();
        self.t2_has_w = false;
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Local(stmts, end) => self.local(stmts, *end),
            Op::Merge {
                peer,
                writes,
                rollback,
            } => self.merge(*peer, writes, *rollback),
            Op::AckNext(s) => self.ack(*s, false),
            Op::AckAll(s) => self.ack(*s, true),
            Op::Compact => {
                let _: i64 = self
                    .a()
                    .query_row("SELECT crsql_compact()", [], |r| r.get(0))
                    .unwrap();
            }
            Op::Alter(k) => self.alter(*k),
            Op::AsTableAsCrr => {
                self.a()
                    .execute_batch("SELECT crsql_as_table('t2'); SELECT crsql_as_crr('t2');")
                    .unwrap();
            }
            Op::Recreate => self.recreate(),
            Op::NewSiteId => {
                let _: Vec<u8> = self
                    .a()
                    .query_row("SELECT crsql_new_site_id()", [], |r| r.get(0))
                    .unwrap();
            }
            Op::NewStream(i) => {
                self.a()
                    .execute_batch(&format!("DROP TABLE {}", STREAMS[*i].0))
                    .unwrap();
                self.create_stream(*i);
            }
            Op::Reopen => {
                close(self.a.take().unwrap());
                self.a = Some(open(&self.path));
            }
        }
    }

    /// Every stream's `lag_changes` against a count over `crsql_changes`.
    fn check(&self, step: usize, op: &Op) {
        let a = self.a();
        let changes: Vec<(String, i64, i64, Vec<u8>)> = a
            .prepare("SELECT \"table\", db_version, seq, site_id FROM crsql_changes")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        let mut local: HashSet<Vec<u8>> = HashSet::from([site_id(a)]);
        let former: Option<Vec<u8>> = a
            .query_row(
                "SELECT value FROM crsql_master WHERE key = 'former_site_ids'",
                [],
                |r| r.get(0),
            )
            .ok();
        for c in former.unwrap_or_default().chunks(16) {
            local.insert(c.to_vec());
        }
        for (name, tables, ex, only_local) in STREAMS {
            let (pos, lag): (String, Option<i64>) = a
                .query_row(
                    "SELECT last_sent, lag_changes FROM crsql_streams WHERE name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let p: Vec<i64> = serde_json::from_str(&pos).unwrap();
            let expected = changes
                .iter()
                .filter(|(t, v, s, site)| {
                    (*v, *s) > (p[0], p[1])
                        && tables.is_none_or(|only| only == t)
                        && !(ex && *site == self.b_site)
                        && (!only_local || local.contains(site))
                })
                .count() as i64;
            assert_eq!(
                lag,
                Some(expected),
                "step {step} ({op:?}): {name} at {pos}: lag_changes is {lag:?}, crsql_changes has {expected}"
            );
        }
    }
}

fn run(history: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path());
    w.check(0, &Op::Compact);
    for (i, op) in history.iter().enumerate() {
        w.apply(op);
        w.check(i + 1, op);
    }
    close(w.a.take().unwrap());
}

/// `PROPTEST_CASES` cases (else `default_cases`); failures print the
/// minimal history and are not persisted.
fn config(default_cases: u32) -> Config {
    let from_env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok());
    Config {
        cases: from_env.unwrap_or(default_cases),
        max_shrink_time: 120_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(60))]

    #[test]
    fn lag_changes_equals_a_count_of_crsql_changes_after_every_step(h in prop::collection::vec(op(), 1..40)) {
        run(&h);
    }
}

proptest! {
    #![proptest_config(config(600))]

    #[test]
    #[ignore = "long; run with `make soak`"]
    fn soak_lag_changes_equals_a_count_of_crsql_changes_after_every_step(h in prop::collection::vec(op(), 1..80)) {
        run(&h);
    }
}

/// An existing database without counts (as written before `lag_changes`)
/// is counted when the extension loads, and stays exact afterwards.
#[test]
fn a_database_from_before_the_counts_gets_them_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let a = open(&path);
    a.execute_batch(SCHEMA).unwrap();
    a.execute_batch("CREATE VIRTUAL TABLE s USING crsql_OutboundStream(max_changes = 2)")
        .unwrap();
    for i in 0..20 {
        a.execute("INSERT INTO t1 VALUES (?1, 'x', 'y')", [i])
            .unwrap();
    }
    // What an older version of the extension left: no counts at all.
    a.execute_batch("DROP TABLE crsql_change_counts").unwrap();
    close(a);
    let a = open(&path);
    let has: i64 = a
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'crsql_change_counts'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(has, 1, "loading the extension creates the counts");
    let lag = |a: &Connection| -> i64 {
        a.query_row("SELECT lag_changes FROM crsql_streams", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(lag(&a), 40);
    a.execute_batch("UPDATE t1 SET a = 'z' WHERE id < 5")
        .unwrap();
    assert_eq!(
        lag(&a),
        40,
        "five cells moved to a newer version: still 40 changes"
    );
    a.execute_batch("DELETE FROM t1 WHERE id < 5").unwrap();
    assert_eq!(lag(&a), 35, "ten cells gone, five sentinels came");
    close(a);
}

/// Compaction removes deleted rows' tombstones below the horizon: the
/// stream of a forgotten peer, which the horizon no longer waits for, loses
/// them from its lag, exactly as `crsql_changes` loses them.
#[test]
fn compaction_removes_what_it_compacts_from_the_lag_of_streams_behind_it() {
    let a = open_memory();
    a.execute_batch(SCHEMA).unwrap();
    a.execute_batch(
        "CREATE VIRTUAL TABLE to_peer USING crsql_OutboundStream(peer = '0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b');
         CREATE VIRTUAL TABLE behind USING crsql_OutboundStream(peer = '0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c');",
    )
    .unwrap();
    for i in 0..10 {
        a.execute("INSERT INTO t1 VALUES (?1, 'x', 'y')", [i])
            .unwrap();
    }
    a.execute_batch("DELETE FROM t1 WHERE id < 6; INSERT INTO t1 VALUES (100, 'newest', 1)")
        .unwrap();
    let newest: String = a
        .query_row(
            "SELECT max(cursor) FROM (SELECT cursor FROM to_peer)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    a.execute("INSERT INTO to_peer(last_sent) VALUES (?1)", [newest])
        .unwrap();
    let lag = |a: &Connection| -> (i64, i64) {
        a.query_row(
            "SELECT lag_changes, (SELECT count(*) FROM crsql_changes) FROM crsql_streams WHERE name = 'behind'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    assert_eq!(lag(&a), (4 * 2 + 6 + 2, 16));
    a.execute_batch("SELECT crsql_forget_peer(x'0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c')")
        .unwrap();
    let removed: i64 = a
        .query_row("SELECT crsql_compact()", [], |r| r.get(0))
        .unwrap();
    // Six deletes: two clock-table rows each in the cr-sqlite layout, a row
    // clock each in the compact one.
    let per_delete = if compact_layout() { 1 } else { 2 };
    assert!(removed >= 6 * per_delete, "removed {removed}");
    let (lag_changes, changes) = lag(&a);
    assert_eq!(lag_changes, changes);
    assert_eq!(changes, 4 * 2 + 2, "the six tombstones are gone");
}

/// A COMMIT that fails with SQLITE_BUSY has already counted the
/// transaction (the counting runs in the first phase of COMMIT); the
/// transaction stays open and may write on. The retried COMMIT counts it
/// again from its rows, so nothing is counted twice or missed.
#[test]
fn a_commit_that_fails_busy_and_a_transaction_that_writes_on_are_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let a = open(&path);
    a.execute_batch(SCHEMA).unwrap();
    a.execute_batch("CREATE VIRTUAL TABLE s USING crsql_OutboundStream()")
        .unwrap();
    a.execute_batch("INSERT INTO t1 VALUES (1, 'x', 'y')")
        .unwrap();
    a.busy_timeout(std::time::Duration::ZERO).unwrap();
    let reader = Connection::open(&path).unwrap();
    a.execute_batch(
        "BEGIN; INSERT INTO t1 VALUES (2, 'x', 'y'); UPDATE t1 SET a = 'z' WHERE id = 1;",
    )
    .unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM t1;")
        .unwrap();
    let e = a
        .execute_batch("COMMIT")
        .expect_err("a reader holds the file");
    assert!(e.to_string().contains("locked"), "{e}");
    // The transaction goes on: a rewrite of its own rows, a new row, a delete.
    a.execute_batch(
        "UPDATE t1 SET b = 'w' WHERE id = 2; INSERT INTO t1 VALUES (3, 'x', 'y'); DELETE FROM t1 WHERE id = 1;",
    )
    .unwrap();
    reader.execute_batch("COMMIT").unwrap();
    a.execute_batch("COMMIT").unwrap();
    let (lag, changes): (i64, i64) = a
        .query_row(
            "SELECT lag_changes, (SELECT count(*) FROM crsql_changes) FROM crsql_streams",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(lag, changes);
    assert_eq!(changes, 2 + 2 + 1, "rows 2 and 3, and the sentinel of 1");
    // And later writes still count from there.
    a.execute_batch("UPDATE t1 SET a = 'v' WHERE id = 3")
        .unwrap();
    let lag: i64 = a
        .query_row("SELECT lag_changes FROM crsql_streams", [], |r| r.get(0))
        .unwrap();
    assert_eq!(lag, 5);
}

/// Clock rows another writer added without counting them (cr-sqlite on
/// the same file, say) are counted by the next COMMIT with their own sites
/// and seqs, also when that COMMIT's own transaction wrote only local rows
/// (whose count takes the `db_version` index alone).
#[test]
fn rows_another_writer_left_uncounted_are_counted_with_their_site_by_a_local_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.db");
    let a = open(&path);
    a.execute_batch(SCHEMA).unwrap();
    let other = [7u8; 16];
    a.execute_batch(&format!(
        "CREATE VIRTUAL TABLE s_all USING crsql_OutboundStream();
         CREATE VIRTUAL TABLE s_ex USING crsql_OutboundStream(exclude_sites = '{}');
         INSERT INTO t1 VALUES (1, 'x', 'y');",
        hex(&other)
    ))
    .unwrap();
    // The other writer: a key and two cells of another site, above every
    // version, with seqs above anything A hands out next (in the compact
    // layout: one row clock whose run holds both cells, at seqs 40 and 41).
    let raw = Connection::open(&path).unwrap();
    let site = format!(
        "(SELECT ordinal FROM crsql_site_id WHERE site_id = x'{}')",
        hex(&other)
    );
    let clocks = if compact_layout() {
        format!(
            "INSERT INTO t1__crsql_rows (id, cl, db_version, site_id, seq, vers)
               VALUES (50, 1, (SELECT max(db_version) + 1 FROM t1__crsql_rows), {site}, 41, x'00020101');"
        )
    } else {
        format!(
            "INSERT INTO t1__crsql_pks (id) VALUES (50);
             INSERT INTO t1__crsql_clock (key, col_name, col_version, db_version, site_id, seq)
               SELECT (SELECT __crsql_key FROM t1__crsql_pks WHERE id = 50), c, 1,
                      (SELECT max(db_version) + 1 FROM t1__crsql_clock), {site}, 40 + n
               FROM (SELECT 'a' AS c, 0 AS n UNION ALL SELECT 'b', 1);"
        )
    };
    raw.execute_batch(&format!(
        "BEGIN;
         INSERT INTO crsql_site_id (site_id) VALUES (x'{}');
         {clocks}
         COMMIT;",
        hex(&other),
    ))
    .unwrap();
    drop(raw);
    a.execute_batch("INSERT INTO t1 VALUES (2, 'x', 'y')")
        .unwrap();
    let lag = |name: &str| -> i64 {
        a.query_row(
            "SELECT lag_changes FROM crsql_streams WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap()
    };
    let count = |filter: &str| -> i64 {
        a.query_row(
            &format!("SELECT count(*) FROM crsql_changes {filter}"),
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(count(""), 6);
    assert_eq!(lag("s_all"), 6);
    let theirs = format!("WHERE site_id != x'{}'", hex(&other));
    assert_eq!(count(&theirs), 4);
    assert_eq!(lag("s_ex"), 4, "the other site's two cells are not A's");
    // Acknowledged up to the first of the other writer's cells: the one
    // after it (seq 41) and A's newer row remain.
    let v: i64 = a
        .query_row(
            "SELECT max(db_version) FROM crsql_changes WHERE seq = 40",
            [],
            |r| r.get(0),
        )
        .unwrap();
    a.execute(
        "INSERT INTO s_all(last_sent) VALUES (?1)",
        [format!("[{v},40]")],
    )
    .unwrap();
    assert_eq!(lag("s_all"), 3);
}

/// A package merged through an inbound stream (the batch merge) into rows
/// whose clocks are counted moves those cells to a new version: what left
/// the old versions is subtracted, as for a local write.
#[test]
fn a_package_merged_over_counted_rows_moves_their_counts() {
    let (a, b) = (open_memory(), open_memory());
    for c in [&a, &b] {
        c.execute_batch(SCHEMA).unwrap();
    }
    let packages = |from: &Connection, stream: &str| -> Vec<Vec<u8>> {
        from.prepare(&format!("SELECT package FROM {stream}"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    a.execute_batch(
        "CREATE VIRTUAL TABLE s_all USING crsql_OutboundStream();
         CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream();
         CREATE VIRTUAL TABLE from_b USING crsql_InboundStream();",
    )
    .unwrap();
    b.execute_batch(
        "CREATE VIRTUAL TABLE to_a USING crsql_OutboundStream();
         CREATE VIRTUAL TABLE from_a USING crsql_InboundStream();",
    )
    .unwrap();
    for i in 1..=6 {
        a.execute("INSERT INTO t1 VALUES (?1, 'x', 'y')", [i])
            .unwrap();
    }
    for p in packages(&a, "to_b") {
        b.execute("INSERT INTO from_a(package) VALUES (?1)", [p])
            .unwrap();
    }
    // B rewrites one column of every row; A merges that in one package.
    b.execute_batch("UPDATE t1 SET a = 'z'").unwrap();
    let back = packages(&b, "to_a");
    assert!(!back.is_empty());
    for p in back {
        a.execute("INSERT INTO from_b(package) VALUES (?1)", [p])
            .unwrap();
    }
    let (lag, changes): (i64, i64) = a
        .query_row(
            "SELECT lag_changes, (SELECT count(*) FROM crsql_changes) FROM crsql_streams WHERE name = 's_all'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(changes, 12);
    assert_eq!(
        lag, changes,
        "six cells moved to B's version: still 12 changes"
    );
}

/// An inbound stream's `lag_changes` is what it received and has not
/// applied: the staged parts of a split transaction, 0 once the last part
/// merges them.
#[test]
fn inbound_lag_counts_the_staged_parts_of_a_split_transaction() {
    let (a, b) = (open_memory(), open_memory());
    for c in [&a, &b] {
        c.execute_batch(SCHEMA).unwrap();
    }
    a.execute_batch("CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream(max_changes = 4); BEGIN")
        .unwrap();
    for i in 1..=7 {
        a.execute("INSERT INTO t1 VALUES (?1, 'x', 'y')", [i])
            .unwrap();
    }
    a.execute_batch("COMMIT").unwrap();
    b.execute_batch("CREATE VIRTUAL TABLE from_a USING crsql_InboundStream")
        .unwrap();
    let parts: Vec<Vec<u8>> = a
        .prepare("SELECT package FROM to_b")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(parts.len(), 4, "14 changes in parts of at most 4");
    let lag = || -> i64 {
        b.query_row(
            "SELECT lag_changes FROM crsql_streams WHERE name = 'from_a'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(lag(), 0);
    for (i, part) in parts.iter().enumerate() {
        b.execute("INSERT INTO from_a(package) VALUES (?1)", [part])
            .unwrap();
        let staged = if i + 1 < parts.len() {
            4 * (i as i64 + 1)
        } else {
            0
        };
        assert_eq!(lag(), staged, "after part {}", i + 1);
    }
    let rows: i64 = b
        .query_row("SELECT count(*) FROM t1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 7);
}
