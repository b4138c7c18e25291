//! Peers on different schema versions keep syncing (docs/schema-evolution.md):
//! changes to columns or tables the receiver does not have yet wait in
//! `crsql_pending_changes` and apply when its schema gains them; everything
//! else applies as usual, atomically per package; only a primary key that
//! differs refuses a package.

use crsql_stream_harness::sql::{exec, int, pump, rows};
use crsql_stream_harness::{close, open};
use rusqlite::types::Value;
use rusqlite::Connection;

struct Pair {
    _dir: tempfile::TempDir,
    a: Connection,
    b: Connection,
}

/// A sends to B; both have `notes(id, body)` as a CRR.
fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    let b = open(&dir.path().join("b.db"));
    for c in [&a, &b] {
        exec(
            c,
            "CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT); SELECT crsql_as_crr('notes');",
        );
    }
    exec(
        &a,
        "CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream(max_changes = 3)",
    );
    exec(
        &b,
        "CREATE VIRTUAL TABLE from_a USING crsql_InboundStream()",
    );
    Pair { _dir: dir, a, b }
}

fn sync(p: &Pair) -> usize {
    pump(&p.a, "to_b", &p.b, "from_a").unwrap()
}

fn add_column(c: &Connection, table: &str, column: &str) {
    exec(
        c,
        &format!(
            "SELECT crsql_begin_alter('{table}'); ALTER TABLE {table} ADD COLUMN {column}; \
             SELECT crsql_commit_alter('{table}');"
        ),
    );
}

fn cells(c: &Connection) -> Vec<Vec<Value>> {
    rows(
        c,
        "SELECT \"table\", pk, cid, val, col_version, cl, site_id FROM crsql_changes ORDER BY 1, 2, 3",
    )
}

fn pending(c: &Connection) -> Vec<Vec<Value>> {
    rows(
        c,
        "SELECT \"table\", \"column\", changes, reason FROM crsql_pending_schema ORDER BY 1, 2",
    )
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn a_sender_ahead_by_a_column_and_a_table_keeps_syncing_and_its_changes_wait_for_the_schema() {
    let p = pair();
    exec(&p.a, "INSERT INTO notes VALUES (1, 'one')");
    sync(&p);
    // A migrates first: a column, and a new CRR.
    add_column(&p.a, "notes", "color TEXT");
    exec(
        &p.a,
        "CREATE TABLE tags (id INTEGER PRIMARY KEY NOT NULL, tag TEXT); SELECT crsql_as_crr('tags');
         UPDATE notes SET color = 'blue', body = 'one!' WHERE id = 1;
         INSERT INTO notes VALUES (2, 'two', 'red');
         INSERT INTO tags VALUES (1, 'x');",
    );
    assert!(sync(&p) >= 2);
    // Everything B has a place for applied; positions moved on.
    assert_eq!(
        rows(&p.b, "SELECT * FROM notes ORDER BY id"),
        vec![
            vec![Value::Integer(1), t("one!")],
            vec![Value::Integer(2), t("two")]
        ]
    );
    assert_eq!(
        int(&p.a, "SELECT count(*) FROM to_b"),
        0,
        "nothing to send again"
    );
    assert_eq!(
        pending(&p.b),
        vec![
            vec![
                t("notes"),
                t("color"),
                Value::Integer(2),
                t("the table has no such column here")
            ],
            vec![
                t("tags"),
                t("tag"),
                Value::Integer(1),
                t("the table is not a CRR here")
            ],
        ]
    );
    // B migrates: the waiting changes apply at once.
    add_column(&p.b, "notes", "color TEXT");
    exec(
        &p.b,
        "CREATE TABLE tags (id INTEGER PRIMARY KEY NOT NULL, tag TEXT); SELECT crsql_as_crr('tags');",
    );
    assert_eq!(pending(&p.b), Vec::<Vec<Value>>::new());
    assert_eq!(
        rows(&p.b, "SELECT * FROM notes ORDER BY id"),
        rows(&p.a, "SELECT * FROM notes ORDER BY id")
    );
    assert_eq!(
        rows(&p.b, "SELECT * FROM tags"),
        rows(&p.a, "SELECT * FROM tags")
    );
    assert_eq!(cells(&p.b), cells(&p.a));
    close(p.a);
    close(p.b);
}

#[test]
fn a_receiver_ahead_applies_as_usual_and_a_waiting_change_meets_the_merge_rules() {
    let p = pair();
    add_column(&p.b, "notes", "color TEXT");
    exec(&p.a, "INSERT INTO notes VALUES (1, 'one')");
    sync(&p);
    assert_eq!(
        rows(&p.b, "SELECT * FROM notes"),
        vec![vec![Value::Integer(1), t("one"), Value::Null]]
    );
    // B writes the column twice (col_version 2); A's first write to it,
    // waiting at B until... it is there already: A's arrives as version 1
    // and loses at B, as it would anywhere.
    exec(
        &p.b,
        "UPDATE notes SET color = 'b1' WHERE id = 1; UPDATE notes SET color = 'b2' WHERE id = 1;",
    );
    add_column(&p.a, "notes", "color TEXT");
    exec(&p.a, "UPDATE notes SET color = 'a1' WHERE id = 1");
    sync(&p);
    assert_eq!(int(&p.b, "SELECT count(*) FROM crsql_pending_changes"), 0);
    assert_eq!(rows(&p.b, "SELECT color FROM notes"), vec![vec![t("b2")]]);
    close(p.a);
    close(p.b);
}

#[test]
fn a_primary_key_that_differs_is_refused_and_nothing_applies() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    let b = open(&dir.path().join("b.db"));
    exec(
        &a,
        "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, k TEXT, v); SELECT crsql_as_crr('t');
         CREATE TABLE u (id INTEGER PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('u');
         CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream();
         INSERT INTO u VALUES (1, 'u');
         INSERT INTO t VALUES (1, 'k', 'v');",
    );
    exec(
        &b,
        "CREATE TABLE t (id INTEGER NOT NULL, k TEXT NOT NULL, v, PRIMARY KEY (id, k)); SELECT crsql_as_crr('t');
         CREATE TABLE u (id INTEGER PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('u');
         CREATE VIRTUAL TABLE from_a USING crsql_InboundStream();",
    );
    let e = pump(&a, "to_b", &b, "from_a").unwrap_err();
    assert!(e.contains("table t") && e.contains("primary key"), "{e}");
    assert_eq!(
        int(&b, "SELECT count(*) FROM u"),
        0,
        "nothing of the package applied"
    );
    assert_eq!(int(&b, "SELECT count(*) FROM crsql_pending_changes"), 0);
    close(a);
    close(b);
}

#[test]
fn a_refused_package_keeps_nothing_waiting() {
    let p = pair();
    exec(
        &p.b,
        "SELECT crsql_begin_alter('notes');
         CREATE TABLE notes2 (id INTEGER PRIMARY KEY NOT NULL, body TEXT CHECK (body <> 'bad'));
         INSERT INTO notes2 SELECT * FROM notes; DROP TABLE notes; ALTER TABLE notes2 RENAME TO notes;
         SELECT crsql_commit_alter('notes');",
    );
    add_column(&p.a, "notes", "color TEXT");
    exec(&p.a, "INSERT INTO notes VALUES (1, 'bad', 'red')");
    let e = pump(&p.a, "to_b", &p.b, "from_a").unwrap_err();
    assert!(e.contains("CHECK constraint failed"), "{e}");
    assert_eq!(int(&p.b, "SELECT count(*) FROM crsql_pending_changes"), 0);
    assert_eq!(int(&p.b, "SELECT count(*) FROM notes"), 0);
    close(p.a);
    close(p.b);
}

#[test]
fn a_split_transaction_across_a_schema_change_applies_whole_and_its_new_columns_wait() {
    let p = pair();
    add_column(&p.a, "notes", "color TEXT");
    exec(
        &p.a,
        "BEGIN;
         WITH RECURSIVE k(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM k WHERE x < 10)
         INSERT INTO notes SELECT x, 'n' || x, 'c' || x FROM k;
         COMMIT;",
    );
    sync(&p);
    assert_eq!(int(&p.b, "SELECT count(*) FROM notes"), 10);
    assert_eq!(int(&p.b, "SELECT changes FROM crsql_pending_schema"), 10);
    add_column(&p.b, "notes", "color TEXT");
    assert_eq!(cells(&p.b), cells(&p.a));
    close(p.a);
    close(p.b);
}

/// Staged parts from before a schema change completed by a package read
/// after it name the same table twice, with other columns: the changes to a
/// column we lack wait whichever entry they come with (found by
/// `hostile_schema.rs`, HOSTILE_SEED=14563440008444929312).
#[test]
fn a_package_naming_a_table_twice_keeps_waiting_what_we_lack() {
    use crsql_stream_core::package::{Encoding, Package};
    let p = pair();
    add_column(&p.a, "notes", "color TEXT");
    exec(&p.a, "INSERT INTO notes VALUES (1, 'one', 'red')");
    let bytes: Vec<u8> =
        p.a.query_row("SELECT package FROM to_b LIMIT 1", [], |r| r.get(0))
            .unwrap();
    let mut pkg = Package::decode(&bytes).unwrap();
    // A second entry for notes without color, first in the dictionary,
    // and every change moved to it: the color change now names a column
    // its entry lacks, but the table is the same.
    let mut other = pkg.tables[0].clone();
    other.columns.retain(|c| c != "color");
    other.schema_hash = crsql_stream_core::package::schema_hash("notes", &["id"], &["body"]);
    pkg.tables.push(other);
    let body = pkg
        .changes
        .iter()
        .position(|c| pkg.cid_of(c) == "body")
        .unwrap();
    pkg.changes[body].table = 1;
    pkg.changes[body].cid = 1;
    let crafted = pkg.encode(Encoding::Binary).unwrap();
    p.b.execute("INSERT INTO from_a(package) VALUES (?1)", [&crafted])
        .unwrap();
    assert_eq!(
        rows(&p.b, "SELECT * FROM notes"),
        vec![vec![Value::Integer(1), t("one")]]
    );
    assert_eq!(int(&p.b, "SELECT changes FROM crsql_pending_schema"), 1);
    close(p.a);
    close(p.b);
}
