//! `crsql_compact()`: tombstones shrink to a compacted record once every
//! active peer has acknowledged them; the record keeps the delete in force
//! against late concurrent changes and lets a re-insert win everywhere;
//! peers left behind are told to resync (DECISIONS D22).

use crsql_stream_harness::sql::{crr_state, exec, fails, int, pump, rows, text};
use crsql_stream_harness::{assert_internal_eq, close, compact_layout, open};
use rusqlite::types::Value;
use rusqlite::Connection;

struct Pair {
    _dir: tempfile::TempDir,
    a: Connection,
    b: Connection,
}

/// A and B syncing both ways, each outbound stream naming its peer.
fn pair() -> Pair {
    pair_with("")
}

/// [`pair`], with more arguments for A's outbound stream `to_b`.
fn pair_with(to_b_args: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    let b = open(&dir.path().join("b.db"));
    for c in [&a, &b] {
        exec(
            c,
            "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT); SELECT crsql_as_crr('t');",
        );
    }
    let site = |c: &Connection| text(c, "SELECT lower(hex(crsql_site_id()))");
    let (sa, sb) = (site(&a), site(&b));
    exec(
        &a,
        &format!(
            "CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream(exclude_sites = '{sb}'{to_b_args});
             CREATE VIRTUAL TABLE from_b USING crsql_InboundStream(from = '{sb}');"
        ),
    );
    exec(
        &b,
        &format!(
            "CREATE VIRTUAL TABLE to_a USING crsql_OutboundStream(exclude_sites = '{sa}');
             CREATE VIRTUAL TABLE from_a USING crsql_InboundStream(from = '{sa}');"
        ),
    );
    Pair { _dir: dir, a, b }
}

fn sync(p: &Pair) {
    for _ in 0..2 {
        pump(&p.a, "to_b", &p.b, "from_a").unwrap();
        pump(&p.b, "to_a", &p.a, "from_b").unwrap();
    }
}

/// Tombstones of `t` not compacted yet (either layout: a sentinel with an
/// even causal length).
fn tombstones(c: &Connection) -> i64 {
    int(
        c,
        "SELECT count(*) FROM crsql_changes WHERE \"table\" = 't' AND cid = '-1' AND cl % 2 = 0",
    )
}

/// Rows of `t`'s clock tables (the layout's own: clock and pks tables, or
/// the compact layout's row clocks and cells). The assertions on their
/// number count the cr-sqlite layout's rows (`assert_internal_eq!`): a
/// compact tombstone is one row clock, not a clock row and a pks row.
fn metadata_rows(c: &Connection) -> i64 {
    let tables = if compact_layout() {
        ["t__crsql_rows", "t__crsql_cells"]
    } else {
        ["t__crsql_clock", "t__crsql_pks"]
    };
    tables
        .iter()
        .map(|t| int(c, &format!("SELECT count(*) FROM {t}")))
        .sum()
}

/// Run `crsql_compact()`, which returns the number of clock-table rows it
/// removed: `rows` in the cr-sqlite layout (a sentinel and a pks row per
/// delete). The compact layout removes fewer (usually one row clock per
/// delete, docs/sql.md), at least one when anything was compacted.
fn assert_compacted(c: &Connection, rows: i64) {
    let removed = int(c, "SELECT crsql_compact()");
    if compact_layout() {
        assert_eq!(removed > 0, rows > 0, "removed {removed}");
        assert!(removed <= rows, "removed {removed}");
    } else {
        assert_eq!(removed, rows);
    }
}

fn table(c: &Connection) -> Vec<Vec<Value>> {
    rows(c, "SELECT * FROM t ORDER BY 1")
}

#[test]
fn deleted_rows_metadata_goes_once_every_peer_acknowledged_and_nothing_else_moves() {
    let p = pair();
    exec(
        &p.a,
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO t SELECT i, 'v' || i FROM n;",
    );
    sync(&p);
    exec(&p.a, "DELETE FROM t WHERE id > 100");
    // Not yet sent: nothing may go.
    assert_compacted(&p.a, 0);
    sync(&p);
    // One more local write, so the deletes are not at the newest version.
    exec(&p.a, "UPDATE t SET v = 'last' WHERE id = 1");
    sync(&p);
    let (before_rows, before_meta) = (table(&p.a), metadata_rows(&p.a));
    let before_changes = rows(
        &p.a,
        "SELECT pk, cid, val, col_version, db_version, seq FROM crsql_changes WHERE cid != '-1' ORDER BY 1, 2",
    );
    let (dbv, streams) = (
        int(&p.a, "SELECT crsql_db_version()"),
        rows(&p.a, "SELECT * FROM crsql_streams ORDER BY name"),
    );
    assert_eq!(tombstones(&p.a), 900);
    assert_compacted(&p.a, 1800); // 900 sentinels and 900 pks rows

    assert_eq!(tombstones(&p.a), 0);
    assert_internal_eq!(metadata_rows(&p.a), before_meta - 1800);
    // Nothing else moved: the table, the live rows' clocks, versions, positions.
    assert_eq!(table(&p.a), before_rows);
    assert_eq!(
        rows(
            &p.a,
            "SELECT pk, cid, val, col_version, db_version, seq FROM crsql_changes WHERE cid != '-1' ORDER BY 1, 2"
        ),
        before_changes
    );
    assert_eq!(int(&p.a, "SELECT crsql_db_version()"), dbv);
    assert_eq!(
        rows(&p.a, "SELECT * FROM crsql_streams ORDER BY name"),
        streams
    );
    // Syncing goes on: new writes, a re-insert of a compacted key.
    exec(&p.a, "INSERT INTO t VALUES (500, 'again')");
    exec(&p.b, "UPDATE t SET v = 'from b' WHERE id = 2");
    sync(&p);
    assert_eq!(table(&p.a), table(&p.b));
    assert_eq!(
        text(&p.b, "SELECT v FROM t WHERE id = 500"),
        "again",
        "the re-inserted row reached B"
    );
    close(p.a);
    close(p.b);
}

#[test]
fn a_late_update_concurrent_with_a_compacted_delete_still_loses() {
    let p = pair();
    exec(&p.a, "INSERT INTO t VALUES (1, 'x'), (2, 'y')");
    sync(&p);
    // B edits row 1 and has not sent it; A deletes row 1, B acknowledges the
    // delete, and A compacts it.
    exec(&p.b, "UPDATE t SET v = 'edited on b' WHERE id = 1");
    // B's package with the edit is on its way to A (read, not yet applied).
    let in_flight: Vec<u8> =
        p.b.query_row("SELECT package FROM to_a LIMIT 1", [], |r| r.get(0))
            .unwrap();
    exec(
        &p.a,
        "DELETE FROM t WHERE id = 1; UPDATE t SET v = 'later' WHERE id = 2",
    );
    pump(&p.a, "to_b", &p.b, "from_a").unwrap();
    assert_compacted(&p.a, 2);
    assert_eq!(tombstones(&p.a), 0);
    assert_eq!(int(&p.a, "SELECT count(*) FROM crsql_tombstones"), 1);
    // B's edit (causal length 1) arrives late: the compacted record of the
    // delete (causal length 2) still wins.
    p.a.execute("INSERT INTO from_b(package) VALUES (?1)", [&in_flight])
        .unwrap();
    assert_eq!(int(&p.a, "SELECT count(*) FROM t WHERE id = 1"), 0);
    sync(&p);
    assert_eq!(int(&p.a, "SELECT count(*) FROM t WHERE id = 1"), 0);
    assert_eq!(table(&p.a), table(&p.b));
    assert_eq!(
        table(&p.a),
        vec![vec![Value::Integer(2), Value::Text("later".into())]]
    );
}

#[test]
fn a_compacted_key_inserted_again_resurrects_on_every_peer() {
    let p = pair();
    exec(&p.a, "INSERT INTO t VALUES (1, 'x'), (2, 'y'), (3, 'z')");
    sync(&p);
    exec(
        &p.a,
        "DELETE FROM t WHERE id IN (1, 2, 3); INSERT INTO t VALUES (9, 'newest')",
    );
    sync(&p);
    assert_compacted(&p.a, 6);
    assert_compacted(&p.b, 6);
    // Again here by insert, by a pk change, and by a peer's insert; B's own
    // copy of the delete was compacted too.
    exec(
        &p.a,
        "INSERT INTO t VALUES (1, 'again'); UPDATE t SET id = 2 WHERE id = 9;",
    );
    exec(&p.b, "INSERT INTO t VALUES (3, 'again on b')");
    sync(&p);
    assert_eq!(table(&p.a), table(&p.b));
    assert_eq!(
        table(&p.a),
        vec![
            vec![Value::Integer(1), Value::Text("again".into())],
            vec![Value::Integer(2), Value::Text("newest".into())],
            vec![Value::Integer(3), Value::Text("again on b".into())],
        ]
    );
    assert_eq!(int(&p.a, "SELECT count(*) FROM crsql_tombstones"), 0);
}

#[test]
fn an_expired_peer_must_resync_and_rewinding_below_the_horizon_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    exec(
        &a,
        "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT); SELECT crsql_as_crr('t');
         INSERT INTO t VALUES (1, 'x'), (2, 'y');
         CREATE VIRTUAL TABLE to_gone USING crsql_OutboundStream(peer = '0102030405060708090a0b0c0d0e0f10');
         CREATE VIRTUAL TABLE to_here USING crsql_OutboundStream(peer = '0102030405060708090a0b0c0d0e0f11');
         DELETE FROM t WHERE id = 1;
         UPDATE t SET v = 'z' WHERE id = 2;",
    );
    let newest = text(
        &a,
        "SELECT cursor FROM to_here ORDER BY cursor DESC LIMIT 1",
    );
    exec(
        &a,
        &format!("INSERT INTO to_here(last_sent) VALUES ('{newest}')"),
    );
    // The peer of to_gone acknowledged nothing: it holds the tombstone.
    assert_compacted(&a, 0);
    exec(
        &a,
        "SELECT crsql_forget_peer('0102030405060708090a0b0c0d0e0f10')",
    );
    assert_compacted(&a, 2);
    let e = fails(&a, "SELECT * FROM to_gone");
    assert!(e.contains("resync required"), "{e}");
    assert!(e.contains("[2,0]") || e.contains("compacted"), "{e}");
    let e = fails(&a, "INSERT INTO to_here(rewind) VALUES ('[0,0]')");
    assert!(e.contains("resync required"), "{e}");
    // The active peer's stream is untouched.
    assert_eq!(int(&a, "SELECT count(*) FROM to_here"), 0);
    close(a);
}

#[test]
fn without_streams_everything_below_the_newest_version_is_compactable() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    exec(
        &a,
        "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT); SELECT crsql_as_crr('t');
         INSERT INTO t VALUES (1, 'x'), (2, 'y'), (3, 'z');
         DELETE FROM t WHERE id = 1;
         DELETE FROM t WHERE id = 2;",
    );
    // The newest version (the delete of 2) stays, so the newest position
    // does not move.
    assert_compacted(&a, 2);
    assert_eq!(tombstones(&a), 1);
    assert_eq!(int(&a, "SELECT crsql_db_version()"), 3);
    // In the caller's transaction: a rollback restores the tombstone.
    exec(&a, "INSERT INTO t VALUES (4, 'w')");
    exec(&a, "BEGIN; SELECT crsql_compact(); ROLLBACK;");
    assert_eq!(tombstones(&a), 1);
    close(a);
}

#[test]
fn every_stream_of_a_peer_must_pass_a_delete_before_it_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    exec(
        &a,
        "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT); SELECT crsql_as_crr('t');
         CREATE TABLE u (id INTEGER PRIMARY KEY NOT NULL, v TEXT); SELECT crsql_as_crr('u');
         CREATE VIRTUAL TABLE to_b_t USING crsql_OutboundStream(peer = '0102030405060708090a0b0c0d0e0f10', tables = 't');
         CREATE VIRTUAL TABLE to_b_u USING crsql_OutboundStream(peer = '0102030405060708090a0b0c0d0e0f10', tables = 'u');
         INSERT INTO u VALUES (1, 'x');",
    );
    let c = text(&a, "SELECT cursor FROM to_b_u");
    exec(&a, &format!("INSERT INTO to_b_u(last_sent) VALUES ('{c}')"));
    exec(
        &a,
        "DELETE FROM u WHERE id = 1; INSERT INTO t VALUES (1, 'y'); INSERT INTO t VALUES (2, 'z');",
    );
    let c = text(&a, "SELECT max(cursor) FROM (SELECT cursor FROM to_b_t)");
    exec(&a, &format!("INSERT INTO to_b_t(last_sent) VALUES ('{c}')"));
    // to_b_u has not carried the delete of u: it holds it.
    assert_compacted(&a, 0);
    let c = text(&a, "SELECT max(cursor) FROM (SELECT cursor FROM to_b_u)");
    exec(&a, &format!("INSERT INTO to_b_u(last_sent) VALUES ('{c}')"));
    assert_compacted(&a, 2);
    close(a);
}

#[test]
fn no_way_around_a_compacted_horizon_but_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    exec(
        &a,
        "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT); SELECT crsql_as_crr('t');
         INSERT INTO t VALUES (1, 'x'), (2, 'y');
         DELETE FROM t WHERE id = 1;
         UPDATE t SET v = 'z' WHERE id = 2;",
    );
    assert_compacted(&a, 2);
    // A stream created, or read, after a position below the horizon would
    // skip the compacted delete.
    let e = fails(
        &a,
        "CREATE VIRTUAL TABLE late USING crsql_OutboundStream(since = '[1,0]')",
    );
    assert!(e.contains("resync required"), "{e}");
    exec(
        &a,
        "CREATE VIRTUAL TABLE fresh USING crsql_OutboundStream()",
    );
    // A stream created from the start sends the compacted deletes, from
    // their records, until it passes the horizon: its peer may be a
    // restored copy that still holds the deleted rows.
    // (kind, deletes) of each package.
    let kinds = |sql: &str| -> Vec<Vec<Value>> {
        rows(&a, &format!("SELECT package FROM fresh {sql}"))
            .into_iter()
            .map(|r| {
                a.query_row(
                    "SELECT json_extract(crsql_package_info(?1), '$.kind'), \
                     (SELECT count(*) FROM crsql_package_changes(?1) WHERE cid = '-1' AND cl % 2 = 0)",
                    [&r[0]],
                    |row| Ok(vec![row.get(0)?, row.get(1)?]),
                )
                .unwrap()
            })
            .collect()
    };
    let snapshot = |deletes: i64| vec![Value::Text("snapshot".into()), Value::Integer(deletes)];
    assert_eq!(kinds(""), vec![snapshot(1)]);
    assert_eq!(kinds("WHERE cursor > '[1,0]'"), vec![snapshot(1)]);
    // Past the horizon, packages are ordinary again.
    let c = text(&a, "SELECT cursor FROM fresh LIMIT 1");
    exec(&a, &format!("INSERT INTO fresh(last_sent) VALUES ('{c}')"));
    exec(&a, "INSERT INTO t VALUES (3, 'w')");
    assert_eq!(
        kinds(""),
        vec![vec![Value::Text("changes".into()), Value::Integer(0)]]
    );
    close(a);
}

/// An expired peer coming back to a stream created with
/// `resync = 'snapshot'`: it gets the deletes compacted while it was away,
/// and keeps what it wrote meanwhile, which reaches the other side.
#[test]
fn an_expired_peer_catches_up_by_snapshot_and_keeps_its_own_writes() {
    let Pair { _dir, a, b } = pair_with(", resync = 'snapshot', max_changes = 2");
    exec(
        &a,
        "INSERT INTO t VALUES (1, 'a1'), (2, 'a2'), (3, 'a3'), (4, 'a4')",
    );
    pump(&a, "to_b", &b, "from_a").unwrap();
    // B goes away. A deletes rows B has, edits one, and compacts with B
    // expired: the deletes' metadata goes.
    exec(
        &a,
        "DELETE FROM t WHERE id IN (1, 2); UPDATE t SET v = 'a3 again' WHERE id = 3;
         INSERT INTO t VALUES (5, 'a5'); DELETE FROM t WHERE id = 5; INSERT INTO t VALUES (6, 'a6');
         SELECT crsql_config_set('peer-expiry-seconds', 0);",
    );
    assert!(int(&a, "SELECT crsql_compact()") > 0);
    assert_eq!(
        int(&a, "SELECT count(*) FROM crsql_peers WHERE expired = 1"),
        1
    );
    // Meanwhile B wrote, unseen by A.
    exec(
        &b,
        "INSERT INTO t VALUES (7, 'b7'); UPDATE t SET v = 'b4' WHERE id = 4;",
    );
    // B comes back: snapshot packages, then ordinary ones.
    let kinds: Vec<String> = {
        let mut st = a
            .prepare("SELECT json_extract(crsql_package_info(package), '$.kind') FROM to_b")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("snapshot"),
        "{kinds:?}"
    );
    for _ in 0..2 {
        pump(&a, "to_b", &b, "from_a").unwrap();
        pump(&b, "to_a", &a, "from_b").unwrap();
    }
    let want = vec![
        vec![Value::Integer(3), Value::Text("a3 again".into())],
        vec![Value::Integer(4), Value::Text("b4".into())],
        vec![Value::Integer(6), Value::Text("a6".into())],
        vec![Value::Integer(7), Value::Text("b7".into())],
    ];
    assert_eq!(table(&a), want);
    assert_eq!(table(&b), want);
    // The default stream would have refused: a second stream of the same
    // peer, left behind at the start.
    close(a);
    close(b);
}

#[test]
fn a_re_insert_in_the_transaction_that_compacted_still_wins() {
    let p = pair();
    exec(&p.a, "INSERT INTO t VALUES (1, 'x')");
    sync(&p);
    exec(&p.a, "DELETE FROM t WHERE id = 1");
    sync(&p);
    exec(
        &p.a,
        "BEGIN; INSERT INTO t VALUES (2, 'y'); SELECT crsql_compact(); INSERT INTO t VALUES (1, 'again'); COMMIT;",
    );
    sync(&p);
    assert_eq!(table(&p.a), table(&p.b));
    assert_eq!(text(&p.b, "SELECT v FROM t WHERE id = 1"), "again");
}

#[test]
fn a_new_primary_key_forgets_the_compacted_records_of_the_old_one() {
    let p = pair();
    exec(
        &p.a,
        "INSERT INTO t VALUES (5, 'x'); DELETE FROM t WHERE id = 5; INSERT INTO t VALUES (6, 'y');",
    );
    sync(&p);
    assert_compacted(&p.a, 2);
    for c in [&p.a, &p.b] {
        exec(
            c,
            "SELECT crsql_begin_alter('t');
             CREATE TABLE t2 (code INTEGER PRIMARY KEY NOT NULL, v TEXT);
             INSERT INTO t2 SELECT id, v FROM t; DROP TABLE t; ALTER TABLE t2 RENAME TO t;
             SELECT crsql_commit_alter('t');",
        );
    }
    assert_eq!(int(&p.a, "SELECT count(*) FROM crsql_tombstones"), 0);
    exec(&p.b, "INSERT INTO t VALUES (5, 'new identity')");
    sync(&p);
    assert_eq!(table(&p.a), table(&p.b));
    assert_eq!(int(&p.a, "SELECT count(*) FROM t"), 2);
}

#[test]
fn streams_from_before_last_seen_existed_are_not_expired_on_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        // The stream state layout of the previous release.
        let raw = Connection::open(&path).unwrap();
        raw.execute_batch(
            "CREATE TABLE crsql_stream_state (name TEXT PRIMARY KEY NOT NULL, direction TEXT NOT NULL,
               stream_id BLOB, peer BLOB, db_version INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0) STRICT;
             INSERT INTO crsql_stream_state VALUES ('to_b', 'outbound', randomblob(16), X'0102030405060708090a0b0c0d0e0f10', 0, 0);",
        )
        .unwrap();
    }
    let a = open(&path);
    assert_eq!(int(&a, "SELECT expired FROM crsql_peers"), 0);
    assert!(int(&a, "SELECT last_seen FROM crsql_peers") > 1_700_000_000);
    close(a);
}

#[test]
fn compaction_on_a_full_disk_fails_cleanly_and_succeeds_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    exec(
        &a,
        "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v TEXT); SELECT crsql_as_crr('t');
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO t SELECT i, hex(randomblob(40)) FROM n;
         DELETE FROM t WHERE id % 2 = 0;
         UPDATE t SET v = 'last' WHERE id = 1;
         VACUUM;",
    );
    let snapshot = |c: &Connection| {
        (
            crr_state(c, &["t"]),
            // The cr-sqlite layout's own tables (none under the compact one).
            (!compact_layout()).then(|| {
                (
                    rows(c, "SELECT * FROM t__crsql_clock ORDER BY key, col_name"),
                    rows(c, "SELECT * FROM t__crsql_pks ORDER BY 1"),
                )
            }),
            int(c, "SELECT crsql_db_version()"),
            int(
                c,
                "SELECT count(*) FROM sqlite_master WHERE name = 'crsql_tombstones'",
            ),
        )
    };
    let before = snapshot(&a);
    let pages = int(&a, "PRAGMA page_count");
    exec(&a, &format!("PRAGMA max_page_count = {pages}"));
    let e = fails(&a, "SELECT crsql_compact()");
    assert!(e.contains("full"), "{e}");
    assert!(a.is_autocommit());
    assert_eq!(
        snapshot(&a),
        before,
        "a failed compaction changed something"
    );
    exec(&a, &format!("PRAGMA max_page_count = {}", pages * 4));
    assert_compacted(&a, 2000);
    assert_eq!(int(&a, "SELECT count(*) FROM crsql_tombstones"), 1000);
    close(a);
}

/// Tables the extension creates inside a user's transaction (the first
/// `crsql_compact()` creates `crsql_tombstones`) can be undone by `ROLLBACK
/// TO`: the writes after it must see that they are gone, not fail on them.
#[test]
fn a_compaction_rolled_back_to_a_savepoint_leaves_later_writes_working() {
    let p = pair();
    exec(
        &p.a,
        "INSERT INTO t VALUES (1, 'x'); DELETE FROM t WHERE id = 1",
    );
    exec(
        &p.a,
        "BEGIN; SAVEPOINT s; SELECT crsql_compact(); ROLLBACK TO s; RELEASE s;
         INSERT OR REPLACE INTO t VALUES (1, 'back'); DELETE FROM t WHERE id = 1;
         INSERT INTO t VALUES (2, 'y'); COMMIT;",
    );
    assert!(fails(&p.a, "SELECT count(*) FROM crsql_tombstones").contains("no such table"));
    // The same for a CRR made and rolled back inside the transaction.
    exec(
        &p.a,
        "BEGIN; SAVEPOINT s; CREATE TABLE u (id INTEGER PRIMARY KEY NOT NULL, w);
         SELECT crsql_as_crr('u'); INSERT INTO u VALUES (1, 'gone'); ROLLBACK TO s; RELEASE s;
         INSERT INTO t VALUES (3, 'z'); COMMIT;",
    );
    assert_eq!(
        int(
            &p.a,
            "SELECT count(*) FROM crsql_changes WHERE \"table\" = 'u'"
        ),
        0
    );
    sync(&p);
    assert_eq!(table(&p.a), table(&p.b));
    assert_eq!(table(&p.b).len(), 2);
    // Two live rows' cells and the delete of 1.
    assert_eq!(int(&p.b, "SELECT count(*) FROM crsql_changes"), 3);
}
