//! One test per deliberate fix of a cr-sqlite 0.16 quirk: the quirks Q1–Q25
//! and the policy for them are in docs/compat.md, the reasons in
//! docs/DECISIONS.md. Each test names the quirk (Qn) it covers and the
//! cr-sqlite outcome it replaces.

use crsql_stream_harness::sql::*;
use crsql_stream_harness::{assert_internal_eq, clock_table, close, open, open_memory};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

// ---------------------------------------------------------------------------
// Positions are unique and never move backwards (Q17, Q16, D4)

#[test]
fn merged_changes_take_fresh_local_seqs_so_positions_stay_unique() {
    // cr-sqlite keeps the sender's seq: these three cells would all sit at (5, 0).
    let c = open_memory();
    foo(&c);
    let s2 = [0x22u8; 16];
    exec(&c, "BEGIN");
    apply(&c, &chg("foo", pk1(1), "b", t("x"), 1, 5, &R, 1, 0));
    apply(&c, &chg("foo", pk1(2), "b", t("y"), 1, 5, &R, 1, 0));
    apply(&c, &chg("foo", pk1(3), "c", t("z"), 1, 5, &s2, 1, 0));
    exec(&c, "COMMIT");
    let mut p = positions(&c);
    p.sort();
    assert_eq!(p, vec![(5, 0), (5, 1), (5, 2)]);
    // The default order follows the order of application.
    let order: Vec<Vec<u8>> = changes(&c).into_iter().map(|x| x.pk).collect();
    assert_eq!(order, vec![pk1(1), pk1(2), pk1(3)]);
}

#[test]
fn merging_remote_versions_5_3_7_in_one_transaction_gives_unique_positions() {
    let c = open_memory();
    foo(&c);
    exec(&c, "BEGIN");
    apply(&c, &chg("foo", pk1(1), "b", t("x"), 1, 5, &R, 1, 0));
    apply(&c, &chg("foo", pk1(2), "b", t("y"), 1, 3, &R, 1, 0));
    apply(&c, &chg("foo", pk1(3), "b", t("z"), 1, 7, &R, 1, 0));
    exec(&c, "INSERT INTO foo VALUES (4, 4, 4)");
    exec(&c, "COMMIT");
    let dbvs: Vec<(Vec<u8>, i64)> = changes(&c)
        .into_iter()
        .map(|x| (x.pk, x.db_version))
        .collect();
    assert_eq!(
        dbvs,
        vec![
            (pk1(1), 5),
            (pk1(2), 5),
            (pk1(3), 7),
            (pk1(4), 7),
            (pk1(4), 7)
        ],
        "db_versions stay max(local+1, pending, incoming) as in cr-sqlite"
    );
    assert_positions_unique(&c);
    assert_eq!(dbv(&c), 7);
}

#[test]
fn zeroed_cells_of_a_row_resurrected_by_a_peer_take_fresh_seqs() {
    // cr-sqlite keeps the zeroed cells' old seqs: (2,0) and (2,1), colliding
    // with the sentinel that keeps the sender's seq 0.
    let c = open_memory();
    foo(&c);
    exec(&c, "INSERT INTO foo VALUES (1, 'x', 'y')");
    apply(&c, &chg("foo", pk1(1), "-1", NULL, 3, 1, &R, 3, 0));
    assert_internal_eq!(
        clock_noseq(&c, "foo"),
        vec![
            nsq(1, "-1", 3, 2, 1),
            nsq(1, "b", 0, 2, 0),
            nsq(1, "c", 0, 2, 0)
        ]
    );
    assert_positions_unique(&c);
}

#[test]
fn positions_stay_unique_and_increasing_over_a_mixed_history_of_local_writes_and_merges() {
    let a = open_memory();
    let b = open_memory();
    for x in [&a, &b] {
        foo(x);
    }
    let mut since_a = 0;
    let mut since_b = 0;
    let mut last_b = 0;
    for round in 0..20i64 {
        exec(
            &a,
            &format!(
                "INSERT OR REPLACE INTO foo VALUES ({}, 'a{round}', {round})",
                round % 5
            ),
        );
        exec(
            &b,
            &format!(
                "INSERT OR REPLACE INTO foo VALUES ({}, 'b{round}', {round})",
                (round + 2) % 5
            ),
        );
        if round % 3 == 0 {
            exec(
                &a,
                &format!("DELETE FROM foo WHERE a = {}", (round + 1) % 5),
            );
        }
        if round % 4 == 1 {
            exec(
                &b,
                &format!("UPDATE foo SET a = a + 100 WHERE a = {}", round % 5),
            );
        }
        sync(&a, &b, since_a);
        since_a = dbv(&a);
        sync(&b, &a, since_b);
        since_b = dbv(&b);
        for x in [&a, &b] {
            assert_positions_unique(x);
        }
        // b's new positions all come after everything b committed before.
        let newest = changes_where(&b, &format!("WHERE db_version > {last_b}"));
        assert!(newest.iter().all(|x| x.db_version > last_b));
        last_b = dbv(&b);
    }
    // Both sides converge.
    assert_eq!(
        base(&a, "SELECT * FROM foo ORDER BY a"),
        base(&b, "SELECT * FROM foo ORDER BY a")
    );
}

#[test]
fn db_version_persists_across_reopen_after_next_db_version_10() {
    // Q16: cr-sqlite reports 10 until the reopen, then 1.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q16.db");
    let c = open(&path);
    foo(&c);
    exec(&c, "INSERT INTO foo VALUES (1, 1, 1)");
    exec(&c, "BEGIN; SELECT crsql_next_db_version(10); COMMIT;");
    assert_eq!(dbv(&c), 10);
    close(c);
    let c = open(&path);
    assert_eq!(dbv(&c), 10);
    exec(&c, "INSERT INTO foo VALUES (2, 2, 2)");
    assert_internal_eq!(
        int(
            &c,
            "SELECT db_version FROM foo__crsql_clock WHERE key = 2 AND col_name = 'b'"
        ),
        11
    );
    close(c);
}

#[test]
fn the_version_used_by_a_no_op_update_survives_reopen() {
    // §3.3 / Q14: the no-op UPDATE uses up version 2 with no clock row; in
    // cr-sqlite the database reads as version 1 again after a reopen.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noop.db");
    let c = open(&path);
    foo(&c);
    exec(
        &c,
        "INSERT INTO foo VALUES (1, 1, 1); UPDATE foo SET b = b;",
    );
    assert_eq!(dbv(&c), 2);
    close(c);
    let c = open(&path);
    assert_eq!(dbv(&c), 2);
    exec(&c, "UPDATE foo SET b = 5");
    assert_eq!(
        int(
            &c,
            "SELECT max(db_version) FROM crsql_changes WHERE \"table\" = 'foo' AND cid = 'b'"
        ),
        3
    );
    close(c);
}

#[test]
fn db_version_does_not_go_backwards_after_an_alter_drops_the_newest_clocks_and_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alter.db");
    let c = open(&path);
    foo(&c);
    exec(
        &c,
        "INSERT INTO foo VALUES (1, 1, 1); UPDATE foo SET c = 2; UPDATE foo SET c = 3;",
    );
    assert_eq!(dbv(&c), 3);
    exec(&c, "SELECT crsql_begin_alter('foo'); ALTER TABLE foo DROP COLUMN c; SELECT crsql_commit_alter('foo');");
    let after_alter = dbv(&c);
    assert!(after_alter >= 3, "{after_alter}");
    close(c);
    let c = open(&path);
    assert_eq!(dbv(&c), after_alter);
    exec(&c, "UPDATE foo SET b = 9");
    assert!(
        int(
            &c,
            "SELECT max(db_version) FROM crsql_changes WHERE \"table\" = 'foo' AND cid = 'b'"
        ) > after_alter
    );
    close(c);
}

#[test]
fn a_version_raised_by_a_merge_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("merge.db");
    let c = open(&path);
    foo(&c);
    apply(&c, &chg("foo", pk1(1), "b", t("x"), 1, 40, &R, 1, 0));
    assert_eq!(dbv(&c), 40);
    close(c);
    let c = open(&path);
    assert_eq!(dbv(&c), 40);
    close(c);
}

// ---------------------------------------------------------------------------
// Q4: a primary-key change re-stamps the moved cells

#[test]
fn a_pk_change_delivers_the_moved_values_to_a_peer_syncing_since_its_last_version() {
    // cr-sqlite: the moved cells keep db_version 1, so B ends with (2, NULL, NULL).
    let a = open_memory();
    let b = open_memory();
    for x in [&a, &b] {
        foo(x);
    }
    exec(&a, "INSERT INTO foo VALUES (1, 'x', 'y')");
    sync(&a, &b, 0);
    let last = dbv(&a);
    exec(&a, "UPDATE foo SET a = 2 WHERE a = 1");
    let moved: Vec<(String, i64)> = clock(&a, "foo")
        .into_iter()
        .filter(|x| x.0 == 2)
        .map(|x| (x.1, x.3))
        .collect();
    assert_internal_eq!(
        moved,
        vec![
            ("-1".to_string(), 2),
            ("b".to_string(), 2),
            ("c".to_string(), 2)
        ],
        "moved cells carry the new db_version"
    );
    assert_positions_unique(&a);
    sync(&a, &b, last);
    assert_eq!(
        base(&b, "SELECT * FROM foo"),
        vec![vec![i(2), t("x"), t("y")]]
    );
    assert_eq!(base(&a, "SELECT * FROM foo"), base(&b, "SELECT * FROM foo"));
}

#[test]
fn update_or_replace_of_a_pk_delivers_the_moved_values_to_a_since_sync_peer() {
    let a = open_memory();
    let b = open_memory();
    for x in [&a, &b] {
        foo(x);
    }
    exec(
        &a,
        "INSERT INTO foo VALUES (1, 'x', 'y'); INSERT INTO foo VALUES (2, 'p', 'q');",
    );
    sync(&a, &b, 0);
    let last = dbv(&a);
    exec(&a, "UPDATE OR REPLACE foo SET a = 2 WHERE a = 1");
    assert_positions_unique(&a);
    sync(&a, &b, last);
    assert_eq!(
        base(&b, "SELECT * FROM foo"),
        vec![vec![i(2), t("x"), t("y")]]
    );
}

// ---------------------------------------------------------------------------
// Q8: malformed input is an error, never an abort

#[test]
fn malformed_pk_blobs_are_errors_that_name_the_pk_not_aborts() {
    let c = open_memory();
    foo(&c);
    let bad: Vec<(&str, Value)> = vec![
        ("NULL pk", NULL),
        ("empty pk", Value::Blob(vec![])),
        (
            "integer tag with N = 9",
            Value::Blob(vec![0x01, 0x49, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ),
        (
            "text length with N = 31",
            Value::Blob(vec![0x01, 0xfb, 1, 2, 3]),
        ),
        ("truncated integer", Value::Blob(vec![0x01, 0x11, 0x01])),
        ("type code 0", Value::Blob(vec![0x01, 0x00])),
        ("type code 6", Value::Blob(vec![0x01, 0x06])),
        ("type code 7", Value::Blob(vec![0x01, 0x07])),
    ];
    for (what, pk) in bad {
        let r = c.execute(
            "INSERT INTO crsql_changes VALUES ('foo', ?, 'b', 'v', 1, 1, ?, 1, 0)",
            params![pk, R.to_vec()],
        );
        let e = r.expect_err(what);
        let m = message(&e);
        assert!(
            m.to_lowercase().contains("pk"),
            "{what}: message does not name the pk: {m}"
        );
    }
    assert_eq!(changes(&c), vec![]);
    assert_eq!(base(&c, "SELECT * FROM foo"), Vec::<Vec<Value>>::new());
}

#[test]
fn malformed_packages_for_unpack_columns_are_errors_not_aborts() {
    let c = open_memory();
    for blob in [
        "X''",
        "X'0149010203040506070809'",
        "X'020901'",
        "X'0100'",
        "X'0107'",
        "X'01'",
    ] {
        let r = try_rows(
            &c,
            &format!("SELECT cell FROM crsql_unpack_columns({blob})"),
        );
        assert!(r.is_err(), "{blob}: {r:?}");
    }
    assert_eq!(int(&c, "SELECT 1"), 1);
}

// ---------------------------------------------------------------------------
// Q21: unknown or PK columns get a message

#[test]
fn an_unknown_column_in_a_change_gets_a_message_naming_the_column() {
    // cr-sqlite: a message-less `SQL logic error`.
    let c = open_memory();
    foo(&c);
    let e = try_apply(&c, &chg("foo", pk1(1), "zzz_col", t("v"), 1, 1, &R, 1, 0)).unwrap_err();
    let m = message(&e);
    assert!(m.contains("zzz_col"), "{m}");
    assert!(m.contains("foo"), "{m}");
    assert_internal_eq!(
        int(&c, "SELECT count(*) FROM foo__crsql_pks"),
        0,
        "no key left behind"
    );
}

#[test]
fn a_pk_column_used_as_cid_gets_a_message_naming_the_column() {
    let c = open_memory();
    foo(&c);
    let e = try_apply(&c, &chg("foo", pk1(1), "a", i(7), 1, 1, &R, 1, 0)).unwrap_err();
    let m = message(&e);
    assert!(
        m.contains("\"a\"") || m.contains("'a'") || m.contains(" a "),
        "{m}"
    );
    assert_ne!(m, "SQL logic error");
    assert_internal_eq!(
        int(&c, "SELECT count(*) FROM foo__crsql_pks"),
        0,
        "no key left behind"
    );
}

#[test]
fn a_change_without_cl_is_an_error_not_a_silent_drop() {
    let c = open_memory();
    foo(&c);
    let r = c.execute(
        "INSERT INTO crsql_changes VALUES ('foo', ?, 'b', 'v', 1, 1, ?, NULL, 0)",
        params![pk1(1), R.to_vec()],
    );
    let m = message(&r.unwrap_err());
    assert!(m.contains("cl"), "{m}");
    assert_internal_eq!(int(&c, "SELECT count(*) FROM foo__crsql_pks"), 0);
}

// ---------------------------------------------------------------------------
// Q13: a sentinel change stores its cl

#[test]
fn a_delete_sentinel_stores_its_cl_not_its_col_version() {
    // cr-sqlite: ('-1', col_version 5, cl 2) deletes the row but records cl 5,
    // i.e. alive.
    let c = open_memory();
    foo(&c);
    exec(&c, "INSERT INTO foo VALUES (1, 'x', 'y')");
    apply(&c, &chg("foo", pk1(1), "-1", NULL, 5, 1, &R, 2, 0));
    assert_eq!(base(&c, "SELECT * FROM foo"), Vec::<Vec<Value>>::new());
    assert_internal_eq!(clock_noseq(&c, "foo"), vec![nsq(1, "-1", 2, 2, 1)]);
    let ch = changes(&c);
    assert_eq!((ch[0].col_version, ch[0].cl), (2, 2));
    // The row is known to be deleted: a resurrection at cl 3 brings it back.
    apply(&c, &chg("foo", pk1(1), "b", t("back"), 1, 1, &R, 3, 0));
    assert_eq!(
        base(&c, "SELECT a, b FROM foo"),
        vec![vec![i(1), t("back")]]
    );
}

#[test]
fn a_resurrecting_sentinel_stores_its_cl_not_its_col_version() {
    let c = open_memory();
    foo(&c);
    exec(&c, "INSERT INTO foo VALUES (1, 'x', 'y'); DELETE FROM foo;");
    apply(&c, &chg("foo", pk1(1), "-1", NULL, 9, 1, &R, 3, 0));
    assert_internal_eq!(clock_noseq(&c, "foo"), vec![nsq(1, "-1", 3, 3, 1)]);
    assert_eq!(base(&c, "SELECT a FROM foo"), vec![vec![i(1)]]);
}

// ---------------------------------------------------------------------------
// Q9: failures roll back to the function's own savepoint

#[test]
fn a_failing_as_crr_keeps_the_callers_transaction_and_earlier_writes() {
    // cr-sqlite issues a bare ROLLBACK: the earlier insert is lost and the
    // transaction is gone.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q9.db");
    let c = open(&path);
    exec(&c, "CREATE TABLE plain(x); CREATE TABLE bad(a, b UNIQUE);");
    exec(&c, "BEGIN; INSERT INTO plain VALUES (1);");
    assert!(try_rows(&c, "SELECT crsql_as_crr('bad')").is_err());
    assert!(!c.is_autocommit(), "the caller's transaction is still open");
    assert_eq!(int(&c, "SELECT count(*) FROM plain"), 1);
    exec(&c, "INSERT INTO plain VALUES (2); COMMIT;");
    close(c);
    let c = open(&path);
    assert_eq!(int(&c, "SELECT count(*) FROM plain"), 2);
    assert!(!exists(&c, "bad__crsql_clock"));
    close(c);
}

#[test]
fn a_failing_as_crr_inside_a_savepoint_keeps_the_savepoint() {
    let c = open_memory();
    exec(&c, "CREATE TABLE plain(x); CREATE TABLE bad(a)");
    exec(&c, "SAVEPOINT mine; INSERT INTO plain VALUES (1);");
    assert!(try_rows(&c, "SELECT crsql_as_crr('bad')").is_err());
    exec(&c, "INSERT INTO plain VALUES (2); RELEASE mine;");
    assert!(c.is_autocommit());
    assert_eq!(int(&c, "SELECT count(*) FROM plain"), 2);
}

#[test]
fn a_failing_commit_alter_keeps_the_callers_transaction_and_earlier_writes() {
    // commit_alter without begin_alter fails (§11.1); cr-sqlite then issues a
    // bare ROLLBACK and the caller's insert is lost.
    let c = open_memory();
    foo(&c);
    exec(
        &c,
        "CREATE TABLE plain(x); INSERT INTO foo VALUES (1, 'x', 'y');",
    );
    exec(&c, "BEGIN; INSERT INTO plain VALUES (1);");
    assert!(try_rows(&c, "SELECT crsql_commit_alter('foo')").is_err());
    assert!(!c.is_autocommit(), "the caller's transaction is still open");
    assert_eq!(int(&c, "SELECT count(*) FROM plain"), 1);
    exec(&c, "COMMIT");
    assert_eq!(int(&c, "SELECT count(*) FROM plain"), 1);
    assert!(exists(&c, "foo__crsql_itrig"));
    exec(&c, "UPDATE foo SET b = 'z'");
    assert_eq!(
        int(
            &c,
            "SELECT max(col_version) FROM crsql_changes WHERE \"table\" = 'foo' AND cid = 'b'"
        ),
        2
    );
}

#[test]
fn a_commit_alter_refused_by_a_precondition_keeps_the_callers_writes_and_can_be_retried() {
    // D9: the alter_crr savepoint stays open so the user can fix the schema.
    let c = open_memory();
    foo(&c);
    exec(
        &c,
        "CREATE TABLE plain(x); INSERT INTO foo VALUES (1, 'x', 'y');",
    );
    exec(&c, "BEGIN; INSERT INTO plain VALUES (1); SELECT crsql_begin_alter('foo'); CREATE UNIQUE INDEX foo_b ON foo(b);");
    assert!(
        try_rows(&c, "SELECT crsql_commit_alter('foo')").is_err(),
        "§11.2 step 4 re-runs create_crr, whose §5.2 checks refuse a unique index"
    );
    assert!(!c.is_autocommit());
    assert_eq!(int(&c, "SELECT count(*) FROM plain"), 1);
    exec(
        &c,
        "DROP INDEX foo_b; SELECT crsql_commit_alter('foo'); COMMIT;",
    );
    assert!(exists(&c, "foo__crsql_itrig"));
    assert_eq!(int(&c, "SELECT count(*) FROM plain"), 1);
    exec(&c, "UPDATE foo SET b = 'z'");
    assert_eq!(
        int(
            &c,
            "SELECT max(col_version) FROM crsql_changes WHERE \"table\" = 'foo' AND cid = 'b'"
        ),
        2
    );
}

// ---------------------------------------------------------------------------
// Q10: identifiers are always quoted

const WEIRD_TABLES: [&str; 5] = ["my tbl", "we\"ird", "it's", "ünï 表", "a]b"];

fn q(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn weird_schema(c: &Connection, tbl: &str) {
    exec(
        c,
        &format!(
            "CREATE TABLE {} ({} NOT NULL PRIMARY KEY, {}, {} DEFAULT 'd''f', {})",
            q(tbl),
            q("p k\"'"),
            q("my col"),
            q("q\"c'x"),
            q("ç")
        ),
    );
}

#[test]
fn tables_and_columns_with_spaces_quotes_and_unicode_work_end_to_end() {
    // cr-sqlite: `crsql_as_crr('my tbl')` fails with `SQL logic error`.
    let a = open_memory();
    let b = open_memory();
    for tbl in WEIRD_TABLES {
        for x in [&a, &b] {
            weird_schema(x, tbl);
        }
        // A row that exists before as_crr is backfilled.
        exec(
            &a,
            &format!("INSERT INTO {} VALUES ('k0', 'v0', 'w0', 'u0')", q(tbl)),
        );
        for x in [&a, &b] {
            assert_eq!(
                text(x, &format!("SELECT crsql_as_crr({})", lit(tbl))),
                "OK",
                "{tbl}"
            );
            assert!(exists(x, &clock_table(tbl)), "{tbl}");
            assert!(exists(x, &format!("{tbl}__crsql_itrig")), "{tbl}");
        }
        let qt = q(tbl);
        exec(
            &a,
            &format!("INSERT INTO {qt} VALUES ('k1', 'v1', 'w1', 'u1')"),
        );
        exec(
            &a,
            &format!(
                "UPDATE {qt} SET {} = 'v2', {} = 'u2' WHERE {} = 'k1'",
                q("my col"),
                q("ç"),
                q("p k\"'")
            ),
        );
        exec(
            &a,
            &format!("INSERT INTO {qt} ({}) VALUES ('k2')", q("p k\"'")),
        );
        exec(
            &a,
            &format!("DELETE FROM {qt} WHERE {} = 'k2'", q("p k\"'")),
        );
        exec(
            &a,
            &format!(
                "UPDATE {qt} SET {} = 'k3' WHERE {} = 'k0'",
                q("p k\"'"),
                q("p k\"'")
            ),
        );
        let ch = changes_where(&a, &format!("WHERE \"table\" = {}", lit(tbl)));
        assert!(!ch.is_empty());
        let mut cids: Vec<String> = ch.iter().map(|x| x.cid.clone()).collect();
        cids.sort();
        cids.dedup();
        assert_eq!(
            cids,
            vec![
                "-1".to_string(),
                "my col".into(),
                "q\"c'x".into(),
                "ç".into()
            ],
            "{tbl}"
        );
        // Alteration with a weird column name.
        exec(
            &a,
            &format!(
                "SELECT crsql_begin_alter({l}); ALTER TABLE {qt} ADD COLUMN {nc}; UPDATE {qt} SET {nc} = 'n' WHERE {pk} = 'k1'; SELECT crsql_commit_alter({l});",
                l = lit(tbl),
                nc = q("new \"col\""),
                pk = q("p k\"'")
            ),
        );
        exec(
            &b,
            &format!(
                "SELECT crsql_begin_alter({l}); ALTER TABLE {qt} ADD COLUMN {nc}; SELECT crsql_commit_alter({l});",
                l = lit(tbl),
                nc = q("new \"col\"")
            ),
        );
        sync(&a, &b, 0);
        let sel = format!("SELECT * FROM {qt} ORDER BY 1");
        assert_eq!(base(&a, &sel), base(&b, &sel), "{tbl}");
        assert_eq!(base(&b, &sel).len(), 2, "{tbl}");
        assert_eq!(
            value(&a, &format!("SELECT crsql_as_table({})", lit(tbl))),
            NULL
        );
        assert!(!exists(&a, &format!("{tbl}__crsql_clock")), "{tbl}");
        assert!(changes_where(&a, &format!("WHERE \"table\" = {}", lit(tbl))).is_empty());
    }
}

// ---------------------------------------------------------------------------
// Q12: CRRs are discovered exactly

#[test]
fn a_user_table_whose_name_ends_like_a_clock_table_does_not_break_crsql_changes() {
    // cr-sqlite: `LIKE '%__crsql_clock'` matches myxcrsql_clock and every read
    // fails with `query aborted`.
    let c = open_memory();
    foo(&c);
    exec(
        &c,
        "CREATE TABLE myxcrsql_clock(x, y); INSERT INTO myxcrsql_clock VALUES (1, 2);
         CREATE TABLE \"Other__CRSQL_CLOCK\"(z); INSERT INTO foo VALUES (1, 'x', 'y');",
    );
    let ch = changes(&c);
    assert_eq!(ch.len(), 2);
    assert!(ch.iter().all(|x| x.table == "foo"));
    apply(&c, &chg("foo", pk1(2), "b", t("m"), 1, 1, &R, 1, 0));
    assert_eq!(changes(&c).len(), 3);
}

#[test]
fn a_crr_base_table_dropped_without_as_table_does_not_break_crsql_changes() {
    let c = open_memory();
    foo(&c);
    exec(
        &c,
        "CREATE TABLE gone(id PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('gone');",
    );
    exec(
        &c,
        "INSERT INTO foo VALUES (1, 'x', 'y'); INSERT INTO gone VALUES (1, 1);",
    );
    exec(&c, "DROP TABLE gone");
    let ch = changes(&c);
    let foo_rows: Vec<&Change> = ch.iter().filter(|x| x.table == "foo").collect();
    assert_eq!(foo_rows.len(), 2);
    exec(&c, "INSERT INTO foo VALUES (2, 'p', 'q')");
    assert_eq!(changes_where(&c, "WHERE \"table\" = 'foo'").len(), 4);
}

// ---------------------------------------------------------------------------
// Q5: rows_impacted resets on rollback

#[test]
fn rows_impacted_starts_from_zero_after_a_rolled_back_transaction() {
    // cr-sqlite: 1 then 2.
    let c = open_memory();
    foo(&c);
    exec(&c, "BEGIN");
    apply(&c, &chg("foo", pk1(1), "b", t("x"), 1, 1, &R, 1, 0));
    assert_eq!(impacted(&c), 1);
    exec(&c, "ROLLBACK");
    exec(&c, "BEGIN");
    apply(&c, &chg("foo", pk1(2), "b", t("x"), 1, 1, &R, 1, 0));
    assert_eq!(impacted(&c), 1);
    exec(&c, "COMMIT");
    assert_eq!(impacted(&c), 0);
}

// ---------------------------------------------------------------------------
// Q6: crsql_config_set returns what it stored and refuses what it cannot load

#[test]
fn config_set_returns_the_stored_integer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q6.db");
    let c = open(&path);
    assert_eq!(
        value(&c, "SELECT crsql_config_set('merge-equal-values', 1)"),
        i(1)
    );
    assert_eq!(int(&c, "SELECT crsql_config_get('merge-equal-values')"), 1);
    assert_eq!(
        rows(
            &c,
            "SELECT value, typeof(value) FROM crsql_master WHERE key = 'config.merge-equal-values'"
        ),
        vec![vec![i(1), t("integer")]]
    );
    close(c);
    let c = open(&path);
    assert_eq!(int(&c, "SELECT crsql_config_get('merge-equal-values')"), 1);
    assert_eq!(
        value(&c, "SELECT crsql_config_set('merge-equal-values', 0)"),
        i(0)
    );
    assert_eq!(int(&c, "SELECT crsql_config_get('merge-equal-values')"), 0);
    close(c);
}

#[test]
fn config_set_refuses_values_that_are_not_integers_and_the_database_still_loads() {
    // cr-sqlite stores any value, and a non-integer makes every later load fail.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q6b.db");
    let c = open(&path);
    exec(&c, "SELECT crsql_config_set('merge-equal-values', 1)");
    for bad in ["'abc'", "1.5", "X'01'", "NULL", "'1'"] {
        let m = fails(
            &c,
            &format!("SELECT crsql_config_set('merge-equal-values', {bad})"),
        );
        assert!(m.contains("merge-equal-values"), "{bad}: {m}");
        assert_eq!(
            int(&c, "SELECT crsql_config_get('merge-equal-values')"),
            1,
            "{bad}"
        );
    }
    assert_eq!(
        rows(
            &c,
            "SELECT value FROM crsql_master WHERE key = 'config.merge-equal-values'"
        ),
        vec![vec![i(1)]]
    );
    close(c);
    let c = open(&path);
    assert_eq!(int(&c, "SELECT crsql_config_get('merge-equal-values')"), 1);
    close(c);
}

// ---------------------------------------------------------------------------
// crsql_version() exists

#[test]
fn crsql_version_returns_the_crate_version() {
    // cr-sqlite 0.16: `no such function: crsql_version`.
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).unwrap();
    let want = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("workspace version");
    let c = open_memory();
    assert_eq!(text(&c, "SELECT crsql_version()"), want);
}

// ---------------------------------------------------------------------------
// Q22: commit_alter backfills at a new version

#[test]
fn rows_written_during_an_alter_window_reach_a_peer_that_already_synced() {
    // cr-sqlite backfills at the current version 1, which B has already seen.
    let a = open_memory();
    let b = open_memory();
    for x in [&a, &b] {
        foo(x);
    }
    exec(&a, "INSERT INTO foo VALUES (1, 'x', 'y')");
    sync(&a, &b, 0);
    let last = dbv(&a);
    assert_eq!(last, 1);
    exec(&a, "SELECT crsql_begin_alter('foo'); INSERT INTO foo VALUES (2, 'p', 'q'); SELECT crsql_commit_alter('foo');");
    let k2: Vec<i64> = clock(&a, "foo")
        .into_iter()
        .filter(|x| x.0 == 2)
        .map(|x| x.3)
        .collect();
    assert_internal_eq!(k2, vec![2, 2], "backfilled at the next version");
    assert_eq!(dbv(&a), 2);
    assert_positions_unique(&a);
    sync(&a, &b, last);
    assert_eq!(
        base(&b, "SELECT * FROM foo ORDER BY a"),
        base(&a, "SELECT * FROM foo ORDER BY a")
    );
}

#[test]
fn values_of_a_column_added_during_an_alter_window_reach_a_peer_that_already_synced() {
    let a = open_memory();
    let b = open_memory();
    for x in [&a, &b] {
        exec(
            x,
            "CREATE TABLE foo(a PRIMARY KEY NOT NULL, b); SELECT crsql_as_crr('foo');",
        );
    }
    exec(&a, "INSERT INTO foo VALUES (1, 'x')");
    sync(&a, &b, 0);
    let last = dbv(&a);
    for x in [&a, &b] {
        exec(
            x,
            "SELECT crsql_begin_alter('foo'); ALTER TABLE foo ADD COLUMN c;",
        );
        if std::ptr::eq(x, &a) {
            exec(x, "UPDATE foo SET c = 'new'");
        }
        exec(x, "SELECT crsql_commit_alter('foo')");
    }
    assert!(
        int(
            &a,
            "SELECT max(db_version) FROM crsql_changes WHERE \"table\" = 'foo' AND cid = 'c'"
        ) > last
    );
    sync(&a, &b, last);
    assert_eq!(
        base(&b, "SELECT * FROM foo"),
        vec![vec![i(1), t("x"), t("new")]]
    );
}

// ---------------------------------------------------------------------------
// Q2 / D5: ORDER BY directions are honoured

#[test]
fn order_by_db_version_desc_seq_asc_returns_descending_versions() {
    // cr-sqlite applies only the last term's direction: ascending rows.
    let c = open_memory();
    foo(&c);
    exec(&c, "INSERT INTO foo VALUES (1, 1, 1); INSERT INTO foo VALUES (2, 2, 2); INSERT INTO foo VALUES (3, 3, 3);");
    let got: Vec<(i64, i64)> = changes_where(&c, "ORDER BY db_version DESC, seq ASC")
        .iter()
        .map(|x| (x.db_version, x.seq))
        .collect();
    assert_eq!(got, vec![(3, 0), (3, 1), (2, 0), (2, 1), (1, 0), (1, 1)]);
    let got: Vec<Value> = changes_where(&c, "WHERE cid = 'b' ORDER BY val")
        .into_iter()
        .map(|x| x.val)
        .collect();
    assert_eq!(got, vec![i(1), i(2), i(3)]);
}
