//! The row-by-row merge's memo (`INSERT INTO crsql_changes` keeps the last
//! merged row's clocks and the site ordinals it met between calls,
//! `crr::merge::RowMemo`, DECISIONS "the row-by-row merge keeps the last
//! row"): whatever happens between two changes of one row, the result must
//! be the one of a merge that reads everything again.
//!
//! Each scenario runs twice on fresh copies of one database: as written,
//! and with `SELECT crsql_finalize()` before every merged change (which
//! empties the memo, as any call of a writing function does), and both
//! copies must end equal, table by table and value by value (storage
//! classes included): base tables, clock tables, key tables,
//! `crsql_site_id` and `crsql_changes`. The scenarios put between two
//! changes of a row what could leave the memo stale: a local write of the
//! row, `ROLLBACK TO` (also of a new site's ordinal), a package merged by
//! an inbound stream, another connection's commit, a direct write to a
//! clock table, a CRR turned back into a table and into a CRR again, and
//! user triggers on the base table that write during the merge. Each
//! scenario's changes are chosen so that a stale memo decides them
//! differently (a tie read as a win, a delete read as live, a site under
//! another's ordinal).

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{params, Connection};

use crsql_stream_harness::sql::{exec, int, rows, INSERT_CHANGE};
use crsql_stream_harness::{close, compact_layout, open};

const SCHEMA: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c TEXT);
     SELECT crsql_as_crr('t');
     CREATE TABLE u (id INTEGER PRIMARY KEY NOT NULL, v TEXT);
     SELECT crsql_as_crr('u');";

const X: [u8; 16] = [0x11; 16];
const Y: [u8; 16] = [0x22; 16];
const Z: [u8; 16] = [0x33; 16];

/// One step of a scenario.
enum Step {
    /// Merge a change: table, id, cid, value, col_version, db_version,
    /// site, cl.
    Merge(
        &'static str,
        i64,
        &'static str,
        Value,
        i64,
        i64,
        [u8; 16],
        i64,
    ),
    /// Run SQL on the receiver.
    Sql(&'static str),
    /// Run SQL on the receiver that must fail.
    Fails(&'static str),
    /// Run SQL on a second connection to the receiver's file.
    Other(&'static str),
    /// Merge, through the receiver's inbound stream `i`, the package of
    /// what this SQL writes on a sender (made once per scenario, so both
    /// runs merge the same bytes).
    Package(&'static str),
}

use Step::*;

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// The package of what `sql` writes on a fresh sender with the schema.
fn package(sql: &str) -> Vec<u8> {
    let src = Connection::open_in_memory().unwrap();
    crsql_stream_harness::load(&src).unwrap();
    src.execute_batch(SCHEMA).unwrap();
    src.execute_batch(sql).unwrap();
    src.execute_batch("CREATE VIRTUAL TABLE o USING crsql_OutboundStream()")
        .unwrap();
    let package = src
        .query_row("SELECT package FROM o LIMIT 1", [], |r| r.get(0))
        .unwrap();
    close(src);
    package
}

/// Run `steps` on the database at `path`; with `fresh`, empty the memo
/// before every merged change. `packages` holds one package per `Package`
/// step, in order.
fn run(path: &Path, steps: &[Step], packages: &[Vec<u8>], fresh: bool) {
    let c = open(path);
    let other = open(path);
    let mut packages = packages.iter();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Merge(table, id, cid, val, cv, dbv, site, cl) => {
                if fresh {
                    exec(&c, "SELECT crsql_finalize()");
                }
                let pk: Vec<u8> = c
                    .query_row("SELECT crsql_pack_columns(?1)", [id], |r| r.get(0))
                    .unwrap();
                c.execute(
                    INSERT_CHANGE,
                    params![table, pk, cid, val, cv, dbv, &site[..], cl, 0],
                )
                .unwrap_or_else(|e| panic!("step {i}: {e}"));
            }
            Sql(sql) => c
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("step {i}: {sql}: {e}")),
            Fails(sql) => {
                assert!(c.execute_batch(sql).is_err(), "step {i}: {sql} succeeded");
            }
            Other(sql) => other
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("step {i}: {sql}: {e}")),
            Package(_) => {
                let package = packages.next().expect("a package per Package step");
                c.execute("INSERT INTO i(package) VALUES (?1)", [package])
                    .unwrap_or_else(|e| panic!("step {i}: package: {e}"));
            }
        }
    }
    close(other);
    close(c);
}

/// Every table of the database (but the streams' state), every row in
/// order, with storage classes; and every row of `crsql_changes`.
fn dump(path: &Path) -> Vec<(String, Vec<Vec<Value>>)> {
    let c = open(path);
    let names: Vec<String> = rows(
        &c,
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE 'crsql_stream%' AND sql NOT LIKE 'CREATE VIRTUAL%' ORDER BY name",
    )
    .into_iter()
    .map(|r| match &r[0] {
        Value::Text(t) => t.clone(),
        other => panic!("table name {other:?}"),
    })
    .collect();
    let mut out = Vec::new();
    for name in names {
        let n = int(
            &c,
            &format!("SELECT count(*) FROM pragma_table_info('{name}')"),
        );
        let order: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        let sql = format!("SELECT * FROM \"{name}\" ORDER BY {}", order.join(", "));
        out.push((name, rows(&c, &sql)));
    }
    out.push((
        "crsql_changes".into(),
        rows(
            &c,
            "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq \
             FROM crsql_changes ORDER BY db_version, seq",
        ),
    ));
    close(c);
    out
}

/// Run the scenario with and without the memo and compare the databases.
fn check(name: &str, steps: &[Step]) {
    let dir = tempfile::tempdir().unwrap();
    let (kept, fresh) = (dir.path().join("kept.db"), dir.path().join("fresh.db"));
    let c = open(&kept);
    c.execute_batch(SCHEMA).unwrap();
    c.execute_batch(
        "INSERT INTO t VALUES (9, 'x', 1, 'y');
         CREATE VIRTUAL TABLE i USING crsql_InboundStream();",
    )
    .unwrap();
    close(c);
    std::fs::copy(&kept, &fresh).unwrap();
    let packages: Vec<Vec<u8>> = steps
        .iter()
        .filter_map(|s| match s {
            Package(sql) => Some(package(sql)),
            _ => None,
        })
        .collect();
    run(&kept, steps, &packages, false);
    run(&fresh, steps, &packages, true);
    let (a, b) = (dump(&kept), dump(&fresh));
    for ((ta, ra), (tb, rb)) in a.iter().zip(&b) {
        assert_eq!(ta, tb, "{name}: tables");
        assert_eq!(
            ra, rb,
            "{name}: table {ta} differs between the merge that kept the row and the one that read it again"
        );
    }
    assert_eq!(a.len(), b.len(), "{name}: tables");
}

/// [`check`] of one transaction: row 1's `a` from X (col_version 1), then
/// `between`, then `then`.
fn between(name: &str, between: Step, then: Vec<Step>) {
    let first = Merge("t", 1, "a", text("m"), 1, 5, X, 1);
    let mut steps = vec![Sql("BEGIN"), first, between];
    steps.extend(then);
    steps.push(Sql("COMMIT"));
    check(name, &steps);
}

#[test]
fn a_local_write_between_two_changes_of_a_row() {
    // The local write gives `a` col_version 2: the second change ties
    // (and loses on value) instead of winning over the memo's 1.
    between(
        "local write",
        Sql("UPDATE t SET a = 'local' WHERE id = 1"),
        vec![
            Merge("t", 1, "a", text("aa"), 2, 6, X, 1),
            Merge("t", 1, "b", Value::Integer(7), 1, 6, X, 1),
        ],
    );
}

#[test]
fn a_local_delete_between_two_changes_of_a_row() {
    // After the local delete the row's causal length is 2: a cell at
    // causal length 1 is ignored, not merged into a live row.
    between(
        "local delete",
        Sql("DELETE FROM t WHERE id = 1"),
        vec![Merge("t", 1, "b", Value::Integer(3), 1, 5, X, 1)],
    );
}

#[test]
fn rollback_to_between_two_changes_of_a_row() {
    between(
        "rollback to",
        Sql("SAVEPOINT s"),
        vec![
            Merge("t", 1, "a", text("n"), 3, 6, X, 1),
            Sql("ROLLBACK TO s"),
            // The memo had col_version 3: this one would lose.
            Merge("t", 1, "a", text("o"), 2, 7, X, 1),
            Sql("SAVEPOINT s2"),
            Merge("t", 2, "a", text("p"), 1, 7, X, 1),
            Merge("t", 2, "-1", Value::Null, 2, 8, X, 2),
            Sql("ROLLBACK TO s2; RELEASE s2"),
            // The memo had row 2 deleted: this one would be ignored.
            Merge("t", 2, "b", Value::Integer(4), 1, 9, X, 1),
        ],
    );
}

#[test]
fn rollback_to_undoes_a_new_sites_ordinal() {
    // Y's ordinal, taken inside the savepoint, is given again to Z after
    // the rollback: a memo still holding Y's would write Z's cells under Y.
    between(
        "site ordinal",
        Sql("SAVEPOINT s"),
        vec![
            Merge("t", 2, "a", text("y"), 1, 5, Y, 1),
            Sql("ROLLBACK TO s"),
            Merge("t", 3, "a", text("z"), 1, 5, Z, 1),
            Merge("t", 4, "a", text("y"), 1, 5, Y, 1),
        ],
    );
}

#[test]
fn a_statement_rolled_back_between_two_changes_of_a_row() {
    // The INSERT … SELECT merges row 1's `a` at col_version 5, then fails
    // on its second row (its value is an error): its statement journal
    // undoes the merge, and SQLite tells crsql_changes (xRollbackTo).
    between(
        "statement rollback",
        Fails(
            "INSERT INTO crsql_changes
             SELECT 't', crsql_pack_columns(1), 'a', CASE n WHEN 1 THEN 'q' ELSE json('{') END,
                    5, 9, x'11111111111111111111111111111111', 1, 0
             FROM (SELECT 1 AS n UNION ALL SELECT 2)",
        ),
        vec![
            // The memo had col_version 5: this one would lose.
            Merge("t", 1, "a", text("n"), 2, 6, X, 1),
        ],
    );
}

#[test]
fn a_package_merged_between_two_changes_of_a_row() {
    // The inbound stream's merge writes row 1's `a` at col_version 4
    // without calling any writing function (cr-sqlite layout: its base
    // write's triggers only test the sync bit): only the change count
    // tells.
    between(
        "package",
        Package(
            "INSERT INTO t VALUES (1, 'pk', 0, NULL);
             UPDATE t SET a = 'p2' WHERE id = 1; UPDATE t SET a = 'p3' WHERE id = 1;
             UPDATE t SET a = 'p4' WHERE id = 1;",
        ),
        vec![
            Merge("t", 1, "a", text("zz"), 3, 6, X, 1),
            Merge("t", 1, "c", text("c"), 1, 6, X, 1),
        ],
    );
}

#[test]
fn a_rolled_back_transaction_between_two_changes_of_a_row() {
    // Nothing counts a ROLLBACK: only the transaction's end (the rollback
    // hook) tells that row 1 is gone again.
    check(
        "rollback",
        &[
            Sql("BEGIN"),
            Merge("t", 1, "a", text("m"), 2, 5, X, 1),
            Sql("ROLLBACK"),
            Sql("BEGIN"),
            // The memo had col_version 2: this one would lose.
            Merge("t", 1, "a", text("n"), 1, 5, X, 1),
            Sql("COMMIT"),
        ],
    );
}

#[test]
fn another_connections_commit_between_two_changes_of_a_row() {
    check(
        "other connection",
        &[
            Merge("t", 1, "a", text("m"), 1, 5, X, 1),
            Other("UPDATE t SET a = 'other' WHERE id = 1; UPDATE t SET a = 'other2' WHERE id = 1"),
            Sql("BEGIN"),
            Merge("t", 1, "a", text("aa"), 3, 6, X, 1),
            Sql("COMMIT"),
            Sql("BEGIN"),
            Merge("t", 1, "b", Value::Integer(1), 1, 7, X, 1),
            Sql("COMMIT"),
            Other("DELETE FROM t WHERE id = 1"),
            Sql("BEGIN"),
            Merge("t", 1, "c", text("c"), 1, 8, X, 1),
            Sql("COMMIT"),
        ],
    );
}

#[test]
fn a_direct_write_to_the_clock_table_between_two_changes() {
    // Tampering, but a write like any other: only the change count tells.
    if compact_layout() {
        return; // the cr-sqlite layout's clock table
    }
    between(
        "direct write",
        Sql("UPDATE t__crsql_clock SET col_version = 9 WHERE col_name = 'a'"),
        vec![Merge("t", 1, "a", text("n"), 2, 6, X, 1)],
    );
}

#[test]
fn a_statement_rolled_back_as_the_transactions_first_write_to_crsql_changes() {
    // The failing INSERT … SELECT is the transaction's first write to
    // crsql_changes, and its first change loses (writes nothing): SQLite
    // calls xRollbackTo only for savepoints the table saw begin
    // (xSavepoint). The rolled-back statement's row count is lost too, so
    // a one-row write after it matches the count the memo waits for.
    if compact_layout() {
        return; // the cr-sqlite layout's clock table
    }
    check(
        "first write rolled back",
        &[
            Merge("t", 1, "a", text("m"), 5, 5, X, 1),
            Sql("BEGIN"),
            Fails(
                "INSERT INTO crsql_changes
                 SELECT 't', crsql_pack_columns(1), 'a', CASE n WHEN 1 THEN 'l' ELSE json('{') END,
                        1, 6, x'11111111111111111111111111111111', 1, 0
                 FROM (SELECT 1 AS n UNION ALL SELECT 2)",
            ),
            // One row changed, as many as the rolled-back statement's calls.
            Sql(
                "UPDATE t__crsql_clock SET col_version = 9 WHERE col_name = 'a' \
                 AND key = (SELECT __crsql_key FROM t__crsql_pks WHERE id = 1)",
            ),
            // The memo had col_version 5: this one would win.
            Merge("t", 1, "a", text("x"), 7, 8, X, 1),
            Sql("COMMIT"),
        ],
    );
}

#[test]
fn a_crr_made_again_between_two_changes_of_a_row() {
    // Row 1 of `u` is deleted (`u` has no base row): turning `u` back into
    // a table and into a CRR again leaves it no clock and changes no row;
    // only the function calls tell.
    check(
        "crr again",
        &[
            Sql("BEGIN"),
            Merge("u", 1, "-1", Value::Null, 2, 5, X, 2),
            Sql("SELECT crsql_as_table('u'); SELECT crsql_as_crr('u');"),
            // The memo had row 1 deleted (causal length 2): this one would
            // be ignored.
            Merge("u", 1, "v", text("a"), 1, 6, X, 1),
            Sql("COMMIT"),
        ],
    );
}

#[test]
fn user_triggers_that_write_during_the_merge() {
    // The merge's base write fires them with the sync bit set: they change
    // the row (and another CRR) without clocks; the next change of the row
    // must see what they left.
    check(
        "triggers",
        &[
            Sql("CREATE TRIGGER tu AFTER UPDATE OF a ON t BEGIN
                   UPDATE t SET c = 'from trigger ' || NEW.a WHERE id = NEW.id;
                   DELETE FROM u WHERE id = NEW.id;
                   INSERT INTO u VALUES (NEW.id, NEW.a);
                 END;
                 CREATE TRIGGER ti AFTER INSERT ON t WHEN NEW.a = 'gone' BEGIN
                   DELETE FROM t WHERE id = NEW.id;
                 END;"),
            Sql("BEGIN"),
            Merge("t", 1, "b", Value::Integer(1), 1, 5, X, 1),
            Merge("t", 1, "a", text("m"), 1, 5, X, 1),
            Merge("t", 1, "c", text("cc"), 1, 5, X, 1),
            Merge("t", 1, "a", text("n"), 2, 6, X, 1),
            Merge("u", 1, "v", text("v"), 1, 6, X, 1),
            Merge("t", 2, "a", text("gone"), 1, 6, X, 1),
            Merge("t", 2, "b", Value::Integer(2), 1, 6, X, 1),
            Sql("COMMIT"),
        ],
    );
}

#[test]
fn one_statement_merging_many_changes_and_the_statements_around_it() {
    // INSERT … SELECT: several calls in one statement (the change count
    // grows only when it ends), then single-row statements, with local
    // writes and losing changes between them.
    check(
        "statements",
        &[
            Sql("BEGIN"),
            Merge("t", 1, "a", text("m"), 1, 5, X, 1),
            Sql(
                "INSERT INTO crsql_changes VALUES
                   ('t', crsql_pack_columns(1), 'b', 1, 1, 5, x'11111111111111111111111111111111', 1, 0),
                   ('t', crsql_pack_columns(1), 'a', 'lose', 1, 5, x'11111111111111111111111111111111', 1, 0),
                   ('t', crsql_pack_columns(2), 'a', 'two', 1, 5, x'11111111111111111111111111111111', 1, 0)",
            ),
            Merge("t", 2, "b", Value::Integer(2), 1, 6, X, 1),
            Sql("UPDATE t SET b = 20 WHERE id = 2"),
            Merge("t", 2, "b", Value::Integer(3), 2, 6, X, 1),
            Merge("t", 2, "a", text("a"), 1, 6, X, 1),
            Sql("COMMIT"),
        ],
    );
}

#[test]
fn a_write_inside_the_merging_statement_that_counts_as_many_rows_as_its_calls() {
    // An INSERT … SELECT whose SELECT calls a user function that writes
    // row 1 locally before the statement's next change of row 1. The
    // statement has not ended, so the change count grows only by that
    // write: as many rows as the statement's calls so far (the rows merged
    // before it are chosen so), which the count alone would take for the
    // end of the calls' statements. The CRR trigger's helper call tells.
    fn with_local_write(c: &Connection) {
        c.create_scalar_function(
            "local_write",
            1,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8,
            |ctx| {
                if ctx.get::<i64>(0)? == 1 {
                    // SAFETY: the connection running this statement, used
                    // only inside the call, on its thread.
                    let conn = unsafe { ctx.get_connection()? };
                    conn.execute("UPDATE t SET a = 'local' WHERE id = 1", [])?;
                }
                Ok(0)
            },
        )
        .unwrap();
    }
    // How many rows that local write counts as.
    let dir = tempfile::tempdir().unwrap();
    let probe = open(&dir.path().join("probe.db"));
    probe.execute_batch(SCHEMA).unwrap();
    probe
        .execute_batch(
            "BEGIN; INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns(1), 'a', 'm', 1, 5,
               x'11111111111111111111111111111111', 1, 0)",
        )
        .unwrap();
    let before = probe.total_changes();
    probe
        .execute("UPDATE t SET a = 'local' WHERE id = 1", [])
        .unwrap();
    let rows_of_write = (probe.total_changes() - before) as i64;
    exec(&probe, "ROLLBACK");
    close(probe);
    assert!(rows_of_write >= 1);

    let first = dir.path().join("false.db");
    let c = open(&first);
    c.execute_batch(SCHEMA).unwrap();
    close(c);
    std::fs::copy(&first, dir.path().join("true.db")).unwrap();
    let mut results = Vec::new();
    for fresh in [false, true] {
        let path = dir.path().join(format!("{fresh}.db"));
        let c = open(&path);
        with_local_write(&c);
        exec(&c, "BEGIN");
        // `rows_of_write` changes (other rows, then row 1's `a`), the
        // local write, then row 1's `a` again at col_version 2 (a tie with
        // the local write, which it loses on value; over the memo's
        // col_version 1 it would win).
        let mut values = Vec::new();
        for i in 1..rows_of_write {
            values.push(format!("(100 + {i}, 1, 'o', 1, 0)"));
        }
        values.push("(1, 1, 'm', 1, 0)".to_string());
        values.push("(1, 2, 'aa', 1, 1)".to_string());
        let sql = format!(
            "INSERT INTO crsql_changes
             SELECT 't', crsql_pack_columns(id), 'a', val, cv, 5, x'11111111111111111111111111111111', 1,
                    local_write(w) + {}
             FROM (SELECT column1 AS id, column2 AS cv, column3 AS val, column4 AS cl, column5 AS w
                   FROM (VALUES {}))",
            // Per row (it reads the row's column): empties the memo.
            if fresh { "CASE WHEN w >= 0 THEN 0 * length(crsql_finalize()) END" } else { "0" },
            values.join(", ")
        );
        exec(&c, &sql);
        exec(&c, "COMMIT");
        assert_eq!(
            crsql_stream_harness::sql::text(&c, "SELECT a FROM t WHERE id = 1"),
            "local",
            "the change tied with the local write (fresh: {fresh})"
        );
        close(c);
        results.push(dump(&path));
    }
    assert_eq!(
        results[0], results[1],
        "a write inside the merging statement: the memo was used stale"
    );
}

/// The statements every merge holds (`crr::held::Held`, kept by the
/// connection from one merge to the next, package merges and
/// `INSERT INTO crsql_changes` alike) are reset after every use, errors
/// included, follow schema changes and go at the connection's close: after
/// a package and a change refused by a CHECK constraint both merges go on,
/// VACUUM finds no statement running, a column added in an alter window
/// and a CRR dropped change nothing for them, and the connection closes
/// without `crsql_finalize()`.
#[test]
fn held_statements_survive_errors_schema_changes_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.db");
    let c = open(&path);
    c.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER CHECK (b < 100), c TEXT);
         SELECT crsql_as_crr('t');
         CREATE TABLE u (id INTEGER PRIMARY KEY NOT NULL, v TEXT);
         SELECT crsql_as_crr('u');",
    )
    .unwrap();
    // One inbound stream per package: each comes from a fresh sender.
    let streams = std::cell::Cell::new(0);
    let merge_package = |c: &Connection, sql: &str| {
        streams.set(streams.get() + 1);
        let s = format!("i{}", streams.get());
        exec(
            c,
            &format!("CREATE VIRTUAL TABLE {s} USING crsql_InboundStream()"),
        );
        c.execute(
            &format!("INSERT INTO {s}(package) VALUES (?1)"),
            [package(sql)],
        )
    };
    let merge = |c: &Connection, id: i64, cid: &str, val: Value, cv: i64| {
        let pk: Vec<u8> = c
            .query_row("SELECT crsql_pack_columns(?1)", [id], |r| r.get(0))
            .unwrap();
        c.execute(
            INSERT_CHANGE,
            params!["t", pk, cid, val, cv, 1, &X[..], 1, 0],
        )
    };
    merge_package(
        &c,
        "INSERT INTO t VALUES (1, 'a', 1, 'c'), (2, 'b', 2, 'd'); INSERT INTO u VALUES (1, 'v');",
    )
    .unwrap();
    let e = merge_package(&c, "INSERT INTO t VALUES (3, 'x', 500, 'y')").unwrap_err();
    assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
    merge(&c, 1, "b", Value::Integer(7), 5).unwrap();
    let e = merge(&c, 1, "b", Value::Integer(700), 6).unwrap_err();
    assert!(e.to_string().contains("CHECK constraint failed"), "{e}");
    // Both merges go on with the statements the errors left.
    merge_package(&c, "INSERT INTO t VALUES (4, 'e', 4, 'f')").unwrap();
    merge(&c, 2, "b", Value::Integer(8), 5).unwrap();
    merge(&c, 2, "a", text("B"), 5).unwrap();
    merge(&c, 5, "a", text("new"), 1).unwrap();
    exec(&c, "VACUUM");
    exec(
        &c,
        "SELECT crsql_begin_alter('t'); ALTER TABLE t ADD COLUMN d TEXT; SELECT crsql_commit_alter('t');
         SELECT crsql_as_table('u'); DROP TABLE u;",
    );
    merge(&c, 1, "d", text("D"), 1).unwrap();
    merge(&c, 4, "d", text("E"), 1).unwrap();
    merge_package(&c, "INSERT INTO t VALUES (6, 'g', 6, 'h')").unwrap();
    let stored: String = c
        .query_row(
            "SELECT group_concat(id || ' ' || quote(a) || ' ' || quote(b) || ' ' || quote(c) \
             || ' ' || quote(d), '; ') FROM (SELECT * FROM t ORDER BY id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        stored,
        "1 'a' 7 'c' 'D'; 2 'B' 8 'd' NULL; 4 'e' 4 'f' 'E'; 5 'new' NULL NULL NULL; \
         6 'g' 6 'h' NULL"
    );
    // The refused row left no change behind.
    let refused = "SELECT count(*) FROM crsql_changes WHERE pk = crsql_pack_columns(3)";
    assert_eq!(int(&c, refused), 0);
    // No crsql_finalize(): the close drops the held statements itself.
    c.close()
        .map_err(|(_, e)| e)
        .expect("close with held statements");
}
