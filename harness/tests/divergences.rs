//! Regression tests for the divergences and stuck states a hostile probe
//! found (issue "Reliability"): each reproduction, as the probe ran it,
//! through real database files and the stream tables. Every case must end
//! in convergence or in a refusal that changed nothing.

use crsql_stream_harness::sql::{exec, fails, int, rows, text};
use crsql_stream_harness::{close, open};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

/// Two database files, A and B, with `t(id TEXT PRIMARY KEY, v, w)` a CRR on
/// both, an outbound stream `o` on A and an inbound stream `i` on B.
struct Pair {
    _dir: tempfile::TempDir,
    a: Connection,
    b: Connection,
}

fn pair(table_sql: &str, crr: &str) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    let b = open(&dir.path().join("b.db"));
    for c in [&a, &b] {
        exec(c, table_sql);
        exec(c, &format!("SELECT crsql_as_crr('{crr}')"));
    }
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
    Pair { _dir: dir, a, b }
}

fn tpair() -> Pair {
    pair("CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v, w)", "t")
}

/// Carry every package from A's `o` to B's `i`, acknowledging each.
/// Returns the number of packages.
fn sync(p: &Pair) -> usize {
    carry(&p.a, &p.b)
}

/// Carry every package from `from`'s outbound stream `o` to `to`'s inbound
/// stream `i`, acknowledging each. Returns the number of packages.
fn carry(from: &Connection, to: &Connection) -> usize {
    let mut n = 0;
    loop {
        let got: Option<(Vec<u8>, String)> = from
            .query_row("SELECT package, cursor FROM o LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ok();
        let Some((pkg, cursor)) = got else {
            return n;
        };
        to.execute("INSERT INTO i(package) VALUES (?1)", [&pkg])
            .unwrap_or_else(|e| panic!("apply package {n}: {e}"));
        from.execute("INSERT INTO o(last_sent) VALUES (?1)", [&cursor])
            .unwrap();
        n += 1;
        assert!(n < 10_000, "sync does not end");
    }
}

fn table(c: &Connection, t: &str) -> Vec<Vec<Value>> {
    rows(c, &format!("SELECT * FROM \"{t}\" ORDER BY 1"))
}

fn assert_converged(p: &Pair, t: &str) {
    sync(p);
    assert_eq!(table(&p.a, t), table(&p.b, t), "{t} differs after sync");
}

fn s(v: &str) -> Value {
    Value::Text(v.to_string())
}

#[test]
fn update_or_replace_onto_an_existing_key_reaches_peers_with_the_moved_row() {
    let p = tpair();
    exec(
        &p.a,
        "INSERT INTO t VALUES ('a', 'x', NULL), ('b', 'y', NULL);
         UPDATE t SET w = 'y2' WHERE id = 'b';",
    );
    sync(&p);
    exec(&p.a, "UPDATE OR REPLACE t SET id = 'b' WHERE id = 'a'");
    assert_eq!(table(&p.a, "t"), vec![vec![s("b"), s("x"), Value::Null]]);
    assert_converged(&p, "t");
    // Also with recursive triggers on (the replaced row's delete trigger
    // fires then): the same end state, nothing recorded twice.
    exec(&p.a, "PRAGMA recursive_triggers = ON");
    exec(
        &p.a,
        "INSERT INTO t VALUES ('c', 'z', 'z2'); UPDATE t SET v = 'z3' WHERE id = 'c';",
    );
    sync(&p);
    exec(&p.a, "UPDATE OR REPLACE t SET id = 'c' WHERE id = 'b'");
    assert_converged(&p, "t");
    assert_eq!(table(&p.b, "t"), vec![vec![s("c"), s("x"), Value::Null]]);
}

#[test]
fn replace_and_upsert_over_a_live_row_with_higher_versions_reach_peers() {
    let p = tpair();
    exec(
        &p.a,
        "INSERT INTO t VALUES ('k', 'v1', 'w1');
         UPDATE t SET v = 'v2', w = 'w2' WHERE id = 'k';
         UPDATE t SET v = 'v3' WHERE id = 'k';",
    );
    sync(&p);
    for (stmt, want_v, want_w) in [
        ("INSERT OR REPLACE INTO t VALUES ('k', 'r1', NULL)", "r1", None),
        ("REPLACE INTO t (id, v) VALUES ('k', 'r2')", "r2", None),
        (
            "INSERT INTO t VALUES ('k', 'u1', 'u2') ON CONFLICT (id) DO UPDATE SET w = excluded.w",
            "r2",
            Some("u2"),
        ),
        (
            "INSERT INTO t VALUES ('k', 'u3', 'u4') ON CONFLICT DO UPDATE SET v = excluded.v, w = NULL",
            "u3",
            None,
        ),
    ] {
        exec(&p.a, stmt);
        assert_converged(&p, "t");
        let want = vec![vec![
            s("k"),
            s(want_v),
            want_w.map(s).unwrap_or(Value::Null),
        ]];
        assert_eq!(table(&p.b, "t"), want, "after {stmt}");
    }
}

#[test]
fn update_or_replace_converges_both_ways_with_concurrent_edits() {
    // B edits the replaced row concurrently; A's move (a delete of b and a
    // re-insert) must win on both, as a delete followed by an insert does.
    let p = tpair();
    exec(
        &p.b,
        "CREATE VIRTUAL TABLE back USING crsql_OutboundStream()",
    );
    exec(
        &p.a,
        "CREATE VIRTUAL TABLE back_in USING crsql_InboundStream()",
    );
    exec(
        &p.a,
        "INSERT INTO t VALUES ('a', 'x', 'xw'), ('b', 'y', 'yw')",
    );
    sync(&p);
    exec(&p.b, "UPDATE t SET v = 'concurrent' WHERE id = 'b'");
    exec(&p.a, "UPDATE OR REPLACE t SET id = 'b' WHERE id = 'a'");
    sync(&p);
    loop {
        let got: Option<(Vec<u8>, String)> =
            p.b.query_row("SELECT package, cursor FROM back LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ok();
        let Some((pkg, cursor)) = got else { break };
        p.a.execute("INSERT INTO back_in(package) VALUES (?1)", [&pkg])
            .unwrap();
        p.b.execute("INSERT INTO back(last_sent) VALUES (?1)", [&cursor])
            .unwrap();
    }
    assert_converged(&p, "t");
    assert_eq!(table(&p.b, "t"), vec![vec![s("b"), s("x"), s("xw")]]);
}

#[test]
fn column_names_the_clock_layout_reserves_are_refused_with_nothing_created() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(&dir.path().join("a.db"));
    exec(&c, "CREATE TABLE m (id TEXT PRIMARY KEY NOT NULL, \"-1\")");
    let e = fails(&c, "SELECT crsql_as_crr('m')");
    assert!(e.contains("column named \"-1\""), "{e}");
    exec(
        &c,
        "CREATE TABLE k (\"__crsql_key\" TEXT PRIMARY KEY NOT NULL, v)",
    );
    let e = fails(&c, "SELECT crsql_as_crr('k')");
    assert!(e.contains("__crsql_key"), "{e}");
    let long = "c".repeat(2049);
    exec(
        &c,
        &format!("CREATE TABLE l (id TEXT PRIMARY KEY NOT NULL, \"{long}\")"),
    );
    let e = fails(&c, "SELECT crsql_as_crr('l')");
    assert!(e.contains("2049 bytes"), "{e}");
    assert_eq!(
        int(
            &c,
            "SELECT count(*) FROM sqlite_master WHERE name LIKE '%crsql_clock' OR type = 'trigger'"
        ),
        0
    );
    // Taken in an alter window: commit_alter refuses and keeps the window open.
    exec(&c, "CREATE TABLE ok (id TEXT PRIMARY KEY NOT NULL, v)");
    exec(&c, "SELECT crsql_as_crr('ok')");
    exec(&c, "SELECT crsql_begin_alter('ok')");
    exec(&c, "ALTER TABLE ok ADD COLUMN \"-1\"");
    let e = fails(&c, "SELECT crsql_commit_alter('ok')");
    assert!(e.contains("column named \"-1\""), "{e}");
    exec(&c, "ALTER TABLE ok DROP COLUMN \"-1\"");
    exec(&c, "SELECT crsql_commit_alter('ok')");
    close(c);
}

#[test]
fn writes_to_existing_columns_in_an_alter_window_reach_a_peer() {
    let p = tpair();
    exec(
        &p.a,
        "INSERT INTO t VALUES ('r1', ' pad ', NULL), ('r2', 'keep', 'w'), ('r3', 'gone', NULL),
                              ('r4', 1, NULL);
         DELETE FROM t WHERE id = 'r4';",
    );
    sync(&p);
    exec(
        &p.a,
        "SELECT crsql_begin_alter('t');
         ALTER TABLE t ADD COLUMN x;
         UPDATE t SET v = trim(v), x = 'new';
         DELETE FROM t WHERE id = 'r3';
         INSERT INTO t VALUES ('r4', 'back', NULL, NULL), ('r5', 'fresh', NULL, 'n');
         SELECT crsql_commit_alter('t');",
    );
    exec(
        &p.b,
        "SELECT crsql_begin_alter('t'); ALTER TABLE t ADD COLUMN x; SELECT crsql_commit_alter('t');",
    );
    assert_converged(&p, "t");
    assert_eq!(
        table(&p.b, "t"),
        vec![
            vec![s("r1"), s("pad"), Value::Null, s("new")],
            vec![s("r2"), s("keep"), s("w"), s("new")],
            vec![s("r4"), s("back"), Value::Null, Value::Null],
            vec![s("r5"), s("fresh"), Value::Null, s("n")],
        ]
    );
    // The window's snapshot is gone, and a later window starts afresh.
    assert_eq!(
        int(&p.a, "SELECT count(*) FROM sqlite_temp_master"),
        0,
        "snapshot left behind"
    );
    exec(
        &p.a,
        "SELECT crsql_begin_alter('t'); UPDATE t SET x = 'again' WHERE id = 'r2'; SELECT crsql_commit_alter('t');",
    );
    assert_converged(&p, "t");
}

#[test]
fn an_alter_window_that_is_rolled_back_leaves_no_snapshot_or_clock_behind() {
    let p = tpair();
    exec(&p.a, "INSERT INTO t VALUES ('r1', 'a', 'b')");
    let before = int(&p.a, "SELECT crsql_db_version()");
    exec(
        &p.a,
        "BEGIN; SELECT crsql_begin_alter('t'); UPDATE t SET v = 'z'; ROLLBACK;",
    );
    assert_eq!(int(&p.a, "SELECT count(*) FROM sqlite_temp_master"), 0);
    assert_eq!(int(&p.a, "SELECT crsql_db_version()"), before);
    assert_eq!(text(&p.a, "SELECT v FROM t"), "a");
    // The triggers are back: a write is tracked and reaches the peer.
    exec(&p.a, "UPDATE t SET v = 'after'");
    assert_converged(&p, "t");
}

#[test]
fn a_crr_dropped_and_created_again_tells_peers_its_old_rows_are_gone() {
    let p = tpair();
    exec(
        &p.a,
        "INSERT INTO t VALUES ('old', 'o', 'w'), ('kept', 'k', NULL)",
    );
    sync(&p);
    // Same columns: the old rows are deleted on the peer, the new one arrives.
    exec(
        &p.a,
        "DROP TABLE t; CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v, w);
         INSERT INTO t VALUES ('kept', 'k2', NULL);
         SELECT crsql_as_crr('t');",
    );
    assert_converged(&p, "t");
    assert_eq!(
        table(&p.b, "t"),
        vec![vec![s("kept"), s("k2"), Value::Null]]
    );
    // A column set without `v`: the stream keeps working.
    exec(
        &p.a,
        "DROP TABLE t; CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, w);
         SELECT crsql_as_crr('t');
         INSERT INTO t VALUES ('n', 'nw');",
    );
    assert!(int(&p.a, "SELECT count(*) FROM o") >= 1);
    exec(
        &p.b,
        "SELECT crsql_begin_alter('t'); ALTER TABLE t DROP COLUMN v; SELECT crsql_commit_alter('t');",
    );
    assert_converged(&p, "t");
    assert_eq!(
        rows(&p.b, "SELECT id, w FROM t ORDER BY id"),
        vec![vec![s("n"), s("nw")]]
    );
    // A different primary key: refused, saying what to do, nothing created.
    exec(
        &p.a,
        "DROP TABLE t; CREATE TABLE t (code INTEGER PRIMARY KEY NOT NULL, w);",
    );
    let e = fails(&p.a, "SELECT crsql_as_crr('t')");
    assert!(e.contains("was dropped while it was a CRR"), "{e}");
    assert!(e.contains("primary key (id)"), "{e}");
    assert_eq!(
        int(
            &p.a,
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger'"
        ),
        0
    );
}

#[test]
fn versions_that_would_overflow_are_refused_never_wrapped() {
    let p = tpair();
    let e = fails(&p.a, "SELECT crsql_next_db_version(9223372036854775807)");
    assert!(e.contains("beyond the largest version"), "{e}");
    exec(&p.a, "INSERT INTO t VALUES ('a', 1, 2)");
    assert!(int(&p.a, "SELECT min(db_version) FROM crsql_changes") > 0);
    assert_eq!(sync(&p), 1);
    assert_eq!(table(&p.b, "t").len(), 1);

    // Incoming clocks beyond 2^62 are refused with nothing applied.
    let site: Vec<u8> =
        p.a.query_row("SELECT crsql_site_id()", [], |r| r.get(0))
            .unwrap();
    let before = table(&p.b, "t");
    for (what, cv, dbv, cl) in [
        ("col_version", i64::MAX, 5, 1),
        ("db_version", 1, i64::MAX, 1),
        ("cl", 1, 5, (1i64 << 62) + 1),
    ] {
        let e = p
            .b
            .execute(
                "INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns('a'), 'v', 'big', ?1, ?2, ?3, ?4, 0)",
                params![cv, dbv, site, cl],
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{what} ")) && e.contains("beyond"),
            "{e}"
        );
    }
    assert_eq!(table(&p.b, "t"), before);
    // At the largest accepted col_version, a local write that would pass it
    // (and be refused by every peer, leaving the stream stuck) is refused
    // with nothing changed; deleting and re-inserting the row restarts its
    // clocks, and the stream keeps flowing.
    p.b.execute(
        "INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns('a'), 'v', 'big', ?1, 5, ?2, 1, 0)",
        params![1i64 << 62, site],
    )
    .unwrap();
    exec(
        &p.b,
        "CREATE VIRTUAL TABLE back USING crsql_OutboundStream();
         CREATE TABLE sink (id TEXT PRIMARY KEY NOT NULL, v, w); SELECT crsql_as_crr('sink');",
    );
    let e = fails(&p.b, "UPDATE t SET v = 'local' WHERE id = 'a'");
    assert!(e.contains("beyond the largest value peers accept"), "{e}");
    assert_eq!(text(&p.b, "SELECT v FROM t WHERE id = 'a'"), "big");
    exec(
        &p.b,
        "DELETE FROM t WHERE id = 'a'; INSERT INTO t VALUES ('a', 'fresh', NULL)",
    );
    let c = open(&p._dir.path().join("c.db"));
    exec(
        &c,
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v, w); SELECT crsql_as_crr('t');
         CREATE TABLE sink (id TEXT PRIMARY KEY NOT NULL, v, w); SELECT crsql_as_crr('sink');
         CREATE VIRTUAL TABLE i USING crsql_InboundStream();",
    );
    let pkgs: Vec<Vec<u8>> =
        p.b.prepare("SELECT package FROM back")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    for pkg in &pkgs {
        c.execute("INSERT INTO i(package) VALUES (?1)", [pkg])
            .unwrap();
    }
    assert_eq!(table(&c, "t"), table(&p.b, "t"));
    close(c);
}

#[test]
fn a_null_primary_key_value_in_a_change_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(&dir.path().join("a.db"));
    exec(
        &c,
        "CREATE TABLE n (id INTEGER PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('n');",
    );
    let merge = "INSERT INTO crsql_changes VALUES ('n', crsql_pack_columns(NULL), 'v', 1, 1, 1, \
                 X'0102030405060708090a0b0c0d0e0f10', 1, 0)";
    for _ in 0..2 {
        let e = fails(&c, merge);
        assert!(e.contains("NULL"), "{e}");
    }
    assert_eq!(int(&c, "SELECT count(*) FROM n"), 0);
    close(c);
}

#[test]
fn two_thousand_crrs_work() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(&dir.path().join("many.db"));
    exec(&c, "BEGIN");
    for i in 0..2000 {
        exec(
            &c,
            &format!(
                "CREATE TABLE t{i} (id INTEGER PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('t{i}');"
            ),
        );
    }
    exec(&c, "COMMIT");
    exec(
        &c,
        "INSERT INTO t0 VALUES (1, 'a'); INSERT INTO t1999 VALUES (1, 'b')",
    );
    let v = int(&c, "SELECT crsql_db_version()");
    assert!(v >= 2, "{v}");
    assert_eq!(int(&c, "SELECT count(*) FROM crsql_changes"), 2);
    exec(&c, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    let pkgs = int(&c, "SELECT count(*) FROM o");
    assert!(pkgs >= 1, "{pkgs}");
    // A dropped table's clock tables count too, and do not break it.
    exec(&c, "DROP TABLE t5; INSERT INTO t2 VALUES (1, 'c')");
    assert!(int(&c, "SELECT crsql_db_version()") > v);
    close(c);
}

#[test]
fn stream_arguments_are_given_once_and_table_names_may_be_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(&dir.path().join("a.db"));
    exec(
        &c,
        "CREATE TABLE \" lead\" (id TEXT PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr(' lead');
         CREATE TABLE \"a,b\" (id TEXT PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('a,b');
         CREATE TABLE \"q\"\"\" (id TEXT PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('q\"');",
    );
    let e = fails(
        &c,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes=1, max_changes=2)",
    );
    assert!(e.contains("max_changes is given more than once"), "{e}");
    let e = fails(
        &c,
        "CREATE VIRTUAL TABLE i USING crsql_InboundStream(since='[1,0]', SINCE='[2,0]')",
    );
    assert!(e.contains("since is given more than once"), "{e}");
    exec(
        &c,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(tables = '\" lead\", \"a,b\", \"q\"\"\"')",
    );
    exec(
        &c,
        "INSERT INTO \" lead\" VALUES ('1', 'x'); INSERT INTO \"a,b\" VALUES ('1', 'y');
         INSERT INTO \"q\"\"\" VALUES ('1', 'z');",
    );
    let tables = rows(
        &c,
        "SELECT DISTINCT \"table\" FROM crsql_package_changes((SELECT package FROM o LIMIT 1)) ORDER BY 1",
    );
    assert_eq!(
        tables,
        vec![vec![s(" lead")], vec![s("a,b")], vec![s("q\"")]]
    );
    for bad in ["'\"unterminated'", "'\"a,b\" x'", "''"] {
        let e = fails(
            &c,
            &format!("CREATE VIRTUAL TABLE bad USING crsql_InboundStream(tables = {bad})"),
        );
        assert!(e.contains("tables"), "{bad}: {e}");
    }
    let e = fails(&c, "INSERT INTO o(package) VALUES (NULL)");
    assert!(e.contains("nothing to acknowledge"), "{e}");
    close(c);
}

#[test]
fn a_case_only_change_of_a_nocase_column_in_an_alter_window_reaches_a_peer() {
    let p = pair(
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, name TEXT COLLATE NOCASE, w)",
        "t",
    );
    exec(&p.a, "INSERT INTO t VALUES ('1', 'alice', NULL)");
    sync(&p);
    for c in [&p.a, &p.b] {
        exec(
            c,
            "SELECT crsql_begin_alter('t'); ALTER TABLE t ADD COLUMN x;",
        );
        if std::ptr::eq(c, &p.a) {
            exec(c, "UPDATE t SET name = 'Alice'");
        }
        exec(c, "SELECT crsql_commit_alter('t')");
    }
    assert_converged(&p, "t");
    assert_eq!(text(&p.b, "SELECT name FROM t"), "Alice");
}

#[test]
fn an_alter_window_ended_by_commit_is_recorded_by_crsql_as_crr() {
    let p = tpair();
    exec(
        &p.a,
        "INSERT INTO t VALUES ('1', 'a', NULL), ('2', 'b', NULL)",
    );
    sync(&p);
    // The window is ended by COMMIT instead of crsql_commit_alter.
    exec(
        &p.a,
        "BEGIN; SELECT crsql_begin_alter('t'); UPDATE t SET v = 'changed' WHERE id = '1';
         DELETE FROM t WHERE id = '2'; COMMIT;",
    );
    let e = fails(&p.a, "SELECT crsql_commit_alter('t')");
    assert!(e.contains("crsql_as_crr('t') records what it did"), "{e}");
    exec(&p.a, "SELECT crsql_as_crr('t')");
    assert_converged(&p, "t");
    assert_eq!(
        table(&p.b, "t"),
        vec![vec![s("1"), s("changed"), Value::Null]]
    );
}

/// Regressions for the bugs the hostile-schema property test found
/// (`hostile_schema.rs`), each as its shrunk reproduction.
mod found_by_hostile_schema {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let c = open(&dir.path().join("a.db"));
        (dir, c)
    }

    #[test]
    fn update_or_replace_after_a_schema_change_keeps_the_callers_transaction() {
        let (_d, c) = db();
        exec(
            &c,
            "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT); SELECT crsql_as_crr('t');
             INSERT INTO t VALUES ('u', NULL), ('q', NULL), ('a', NULL);
             PRAGMA recursive_triggers = ON; DELETE FROM t WHERE id = 'a'; CREATE TABLE zz (x);
             BEGIN; INSERT INTO t VALUES ('earlier', 'write');
             UPDATE OR REPLACE t SET id = 'q' WHERE id = 'u';
             COMMIT;",
        );
        assert_eq!(
            int(&c, "SELECT count(*) FROM t WHERE id IN ('earlier', 'q')"),
            2
        );
    }

    #[test]
    fn a_crr_re_created_with_another_primary_key_does_not_break_the_others() {
        let (_d, c) = db();
        exec(
            &c,
            "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('t');
             CREATE TABLE u (id TEXT PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('u');
             INSERT INTO u VALUES ('1', 'x');
             DROP TABLE t; CREATE TABLE t (code INTEGER PRIMARY KEY NOT NULL, w);",
        );
        assert_eq!(int(&c, "SELECT count(*) FROM crsql_changes"), 1);
        exec(&c, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
        assert_eq!(int(&c, "SELECT count(*) FROM o"), 1);
    }

    #[test]
    fn crsql_changes_follows_ddl_inside_an_alter_window() {
        let (_d, c) = db();
        exec(
            &c,
            "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, a, b); SELECT crsql_as_crr('t');
             INSERT INTO t VALUES ('x', 1, 2);
             SELECT crsql_begin_alter('t');",
        );
        assert_eq!(int(&c, "SELECT count(*) FROM crsql_changes"), 2);
        // Read after the DDL: no stale metadata error (b's clock stays
        // until the commit prunes it).
        exec(&c, "ALTER TABLE t DROP COLUMN b");
        assert_eq!(int(&c, "SELECT count(*) FROM crsql_changes"), 2);
        exec(&c, "SELECT crsql_commit_alter('t')");
        assert_eq!(int(&c, "SELECT count(*) FROM crsql_changes"), 1);
    }

    #[test]
    fn a_user_table_named_like_a_clock_table_is_not_one() {
        let (_d, c) = db();
        exec(
            &c,
            "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('t');
             INSERT INTO t VALUES (1, 'a');
             CREATE TABLE \"z__crsql_clock\" (id INTEGER PRIMARY KEY NOT NULL, db_version);
             INSERT INTO \"z__crsql_clock\" VALUES (1, 1000);
             CREATE VIRTUAL TABLE o USING crsql_OutboundStream();",
        );
        assert_eq!(int(&c, "SELECT crsql_db_version()"), 1);
        assert_eq!(int(&c, "SELECT count(*) FROM o"), 1);
    }

    #[test]
    fn an_acknowledged_position_stays_acknowledgeable_after_a_column_is_dropped() {
        let (_d, c) = db();
        exec(
            &c,
            "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v, w); SELECT crsql_as_crr('t');
             CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream();
             INSERT INTO t VALUES ('x', 'a', 'b');
             INSERT INTO to_b(last_sent) VALUES ('[1,1]');
             SELECT crsql_begin_alter('t'); ALTER TABLE t DROP COLUMN w; SELECT crsql_commit_alter('t');
             INSERT INTO to_b(last_sent) VALUES ('[1,1]');",
        );
        assert_eq!(text(&c, "SELECT last_sent FROM crsql_streams"), "[1,1]");
    }

    #[test]
    fn a_crr_re_created_without_a_column_tombstones_every_old_row() {
        let (_d, c) = db();
        exec(
            &c,
            "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('t');
             INSERT INTO t VALUES ('a', 1); INSERT INTO t VALUES ('b', 2);
             DROP TABLE t; CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, w); SELECT crsql_as_crr('t');",
        );
        assert!(int(&c, "SELECT crsql_db_version()") > 2);
        assert_eq!(
            int(
                &c,
                "SELECT count(*) FROM crsql_changes WHERE cid = '-1' AND cl = 2"
            ),
            2
        );
        exec(&c, "INSERT INTO t VALUES ('c', 3)");
        assert!(
            int(
                &c,
                "SELECT min(db_version) FROM crsql_changes WHERE cid = 'w'"
            ) > 2
        );
    }

    #[test]
    fn merging_after_a_generated_column_keeps_the_columns_affinity() {
        let (_d, c) = db();
        exec(
            &c,
            "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, g TEXT GENERATED ALWAYS AS ('x') VIRTUAL, r REAL, v);
             SELECT crsql_as_crr('t');
             INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns(1), 'r', NULL, 1, 1, X'0102030405060708090a0b0c0d0e0f10', 1, 0);
             INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns(1), 'v', 7, 1, 1, X'0102030405060708090a0b0c0d0e0f10', 1, 1);",
        );
        assert_eq!(text(&c, "SELECT typeof(v) FROM t"), "integer");
    }

    /// A primary-key column named `col_name` (a column of the clock
    /// table) was left out when `crsql_commit_alter` compared the key
    /// before and after the window: an empty window then looked like a new
    /// primary key and started every clock over, and a replica that had
    /// merged a newer causal length went back to 1 (HOSTILE_SEED=6216918143822384442).
    #[test]
    fn an_alter_window_keeps_the_clocks_of_a_pk_column_named_col_name() {
        let p = pair(
            "CREATE TABLE \"select\" (col_name INTEGER PRIMARY KEY NOT NULL)",
            "select",
        );
        exec(&p.a, "INSERT INTO \"select\" VALUES (1)");
        sync(&p);
        let window = "SELECT crsql_begin_alter('select'); SELECT crsql_commit_alter('select');";
        exec(&p.a, window);
        assert_eq!(
            int(&p.a, "SELECT crsql_db_version()"),
            1,
            "an empty window is no change"
        );
        exec(&p.a, "INSERT OR REPLACE INTO \"select\" VALUES (1)");
        sync(&p);
        exec(&p.b, window);
        assert_converged(&p, "select");
        for c in [&p.a, &p.b] {
            assert_eq!(int(c, "SELECT cl FROM crsql_changes"), 3);
        }
    }

    /// `-0.0` and `0.0` are equal to SQL but not the same value: a write
    /// of one over the other inside an alter window was not seen as a
    /// change, and a peer kept the other (HOSTILE_SEED=6704573227765703134).
    #[test]
    fn an_alter_window_write_of_the_other_zero_reaches_a_peer() {
        let p = pair(
            "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, v DEFAULT -0.0)",
            "t",
        );
        exec(&p.a, "INSERT INTO t (id) VALUES (1)");
        sync(&p);
        exec(
            &p.a,
            "SELECT crsql_begin_alter('t'); INSERT OR REPLACE INTO t VALUES (1, 0.0); \
             SELECT crsql_commit_alter('t');",
        );
        sync(&p);
        let sign =
            |c: &Connection| -> f64 { c.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap() };
        assert_eq!(sign(&p.a).to_bits(), 0.0f64.to_bits());
        assert_eq!(sign(&p.b).to_bits(), 0.0f64.to_bits(), "B kept -0.0");
    }

    /// A column added in an alter window with a default, and a row written
    /// there with a value SQL holds equal to the default but of another
    /// type (integer 0 for -0.0): the value got no clock, and a peer filled
    /// in the default (HOSTILE_SEED=12067930168502939943).
    #[test]
    fn a_value_equal_to_the_default_but_of_another_type_reaches_a_peer() {
        let p = tpair();
        exec(&p.a, "INSERT INTO t VALUES ('1', 'a', NULL)");
        sync(&p);
        for c in [&p.a, &p.b] {
            exec(
                c,
                "SELECT crsql_begin_alter('t'); ALTER TABLE t ADD COLUMN n BLOB DEFAULT -0.0;",
            );
            if std::ptr::eq(c, &p.a) {
                // Deleted and written again in the window, as the probe did.
                exec(
                    c,
                    "DELETE FROM t WHERE id = '1'; INSERT INTO t VALUES ('1', 'a', NULL, 0);",
                );
            }
            exec(c, "SELECT crsql_commit_alter('t')");
        }
        sync(&p);
        assert_converged(&p, "t");
        assert_eq!(
            text(&p.b, "SELECT typeof(n) FROM t WHERE id = '1'"),
            "integer"
        );
    }
}

#[test]
fn writing_zero_over_negative_zero_reaches_peers() {
    // A column without REAL affinity stores -0.0 and 0.0 apart, though SQL
    // compares them equal: the write of one over the other is a change.
    let p = tpair();
    exec(&p.a, "INSERT INTO t VALUES ('a', -0.0, 1)");
    assert_converged(&p, "t");
    exec(&p.a, "UPDATE t SET v = 0.0 WHERE id = 'a'");
    let sign = |c: &Connection| -> f64 {
        c.query_row("SELECT v FROM t WHERE id = 'a'", [], |r| r.get(0))
            .unwrap()
    };
    assert!(sign(&p.a).is_sign_positive());
    assert_converged(&p, "t");
    assert!(sign(&p.b).is_sign_positive(), "B kept -0.0");
    // Concurrent writes of the two at one col_version: the same winner on
    // both sides (0.0, the greater).
    exec(&p.a, "UPDATE t SET w = -0.0 WHERE id = 'a'");
    exec(&p.b, "UPDATE t SET w = 0.0 WHERE id = 'a'");
    assert_converged(&p, "t");
    exec(&p.b, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    exec(&p.a, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
    carry(&p.b, &p.a);
    for c in [&p.a, &p.b] {
        let w: f64 = c
            .query_row("SELECT w FROM t WHERE id = 'a'", [], |r| r.get(0))
            .unwrap();
        assert!(w.is_sign_positive(), "a tie of -0.0 and 0.0 kept -0.0");
    }
}
