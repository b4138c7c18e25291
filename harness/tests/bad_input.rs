//! Malformed input through every SQL entry point: each call must fail with an
//! error that names the problem, leave the database exactly as it was (every
//! row of every table in sqlite_master, internal ones included, the schema
//! and `crsql_db_version()`), and never abort the process (everything runs
//! in-process, so an abort fails the whole run).
//!
//! Each bad statement runs twice: in autocommit mode, and inside an explicit
//! transaction that is then committed, so state leaked by a failed call (a
//! pending db_version, a half-applied merge) would be committed and seen.

use crsql_stream_harness::sql::*;
use crsql_stream_harness::{clock_table, close, open};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

// ---------------------------------------------------------------------------
// dump and fixture

#[derive(Debug, PartialEq)]
struct Dump {
    schema_version: i64,
    db_version: i64,
    master: Vec<Vec<Value>>,
    temp_master: Vec<Vec<Value>>,
    tables: Vec<(String, Vec<String>)>,
}

fn dump(c: &Connection) -> Dump {
    let master = rows(
        c,
        "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master ORDER BY type, name",
    );
    let temp_master = rows(
        c,
        "SELECT type, name, tbl_name, rootpage, sql FROM sqlite_temp_master ORDER BY type, name",
    );
    let names: Vec<String> = master
        .iter()
        .filter(|r| r[0] == t("table"))
        .map(|r| match &r[1] {
            Value::Text(s) => s.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let mut tables = Vec::new();
    for n in names {
        let mut content: Vec<String> =
            rows(c, &format!("SELECT * FROM \"{}\"", n.replace('"', "\"\"")))
                .into_iter()
                .map(|r| format!("{r:?}"))
                .collect();
        content.sort();
        tables.push((n, content));
    }
    Dump {
        schema_version: int(c, "PRAGMA schema_version"),
        db_version: dbv(c),
        master,
        temp_master,
        tables,
    }
}

/// A file database with several CRRs, local history, a merged remote change,
/// a dropped CRR base table and a plain table.
fn fixture() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let c = open(&dir.path().join("bad.db"));
    // A real file; skipping fsync only makes the many small commits faster.
    exec(&c, "PRAGMA synchronous = OFF");
    exec(
        &c,
        "CREATE TABLE foo(a PRIMARY KEY NOT NULL, b, c); SELECT crsql_as_crr('foo');
         CREATE TABLE comp(x NOT NULL, y NOT NULL, v, PRIMARY KEY (x, y)); SELECT crsql_as_crr('comp');
         CREATE TABLE pko(k PRIMARY KEY NOT NULL); SELECT crsql_as_crr('pko');
         CREATE TABLE s(id INTEGER PRIMARY KEY NOT NULL, n INTEGER) STRICT; SELECT crsql_as_crr('s');
         CREATE TABLE gone(id PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('gone');
         CREATE TABLE plain(id PRIMARY KEY NOT NULL, v);
         INSERT INTO foo VALUES (1, 'x', 'y');
         INSERT INTO foo VALUES (2, 'p', 'q');
         UPDATE foo SET b = 'x2' WHERE a = 1;
         DELETE FROM foo WHERE a = 2;
         INSERT INTO comp VALUES (1, 'a', 'v');
         INSERT INTO pko VALUES ('k');
         INSERT INTO s VALUES (1, 10);
         INSERT INTO gone VALUES (1, 1);
         INSERT INTO plain VALUES (1, 1);
         DROP TABLE gone;",
    );
    apply(&c, &chg("foo", pk1(3), "b", t("remote"), 1, 9, &R, 1, 0));
    (dir, c)
}

/// The parts of two dumps that differ.
fn diff(a: &Dump, b: &Dump) -> String {
    let mut out = Vec::new();
    if a.schema_version != b.schema_version {
        out.push(format!(
            "schema_version {} -> {}",
            a.schema_version, b.schema_version
        ));
    }
    if a.db_version != b.db_version {
        out.push(format!(
            "crsql_db_version() {} -> {}",
            a.db_version, b.db_version
        ));
    }
    for (name, x, y) in [
        ("sqlite_master", &a.master, &b.master),
        ("sqlite_temp_master", &a.temp_master, &b.temp_master),
    ] {
        for r in x.iter().filter(|r| !y.contains(r)) {
            out.push(format!("{name} lost {r:?}"));
        }
        for r in y.iter().filter(|r| !x.contains(r)) {
            out.push(format!("{name} gained {r:?}"));
        }
    }
    for (n, rows_a) in &a.tables {
        let rows_b = b
            .tables
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        for r in rows_a.iter().filter(|r| !rows_b.contains(r)) {
            out.push(format!("{n} lost {r}"));
        }
        for r in rows_b.iter().filter(|r| !rows_a.contains(r)) {
            out.push(format!("{n} gained {r}"));
        }
    }
    out.join("; ")
}

/// `m` mentions `id` as a whole word (not inside a longer identifier).
fn names_ident(m: &str, id: &str) -> bool {
    let word = |ch: Option<char>| ch.is_some_and(|ch| ch.is_alphanumeric() || ch == '_');
    m.match_indices(id).any(|(at, _)| {
        !word(m[..at].chars().next_back()) && !word(m[at + id.len()..].chars().next())
    })
}

fn generic(m: &str) -> bool {
    matches!(
        m,
        "SQL logic error"
            | "query aborted"
            | "unknown error"
            | "bad parameter or other API misuse"
            | ""
    )
}

/// Run `f` (a statement that must fail) in autocommit mode and inside a
/// committed transaction. Each time: it fails, its message contains every
/// `want` and is not a bare SQLite code text, and the
/// dump is unchanged.
fn rejects(
    c: &Connection,
    what: &str,
    want: &[&str],
    f: &dyn Fn(&Connection) -> rusqlite::Result<()>,
) {
    let before = dump(c);
    for in_tx in [false, true] {
        if in_tx {
            exec(c, "BEGIN");
        }
        let e = match f(c) {
            Ok(()) => panic!("{what}: accepted (in_tx = {in_tx})"),
            Err(e) => e,
        };
        let m = message(&e);
        if std::env::var("SHOW_MESSAGES").is_ok() {
            eprintln!("{what} => {m}");
        }
        assert!(!generic(&m), "{what}: message names nothing: {m:?}");
        for w in want {
            let found = match w.strip_prefix("ident:") {
                Some(id) => names_ident(&m, id),
                None => m.contains(w),
            };
            assert!(found, "{what}: message {m:?} does not mention {w:?}");
        }
        if in_tx {
            assert!(
                !c.is_autocommit(),
                "{what}: the failure ended the caller's transaction"
            );
            exec(c, "COMMIT");
        }
        assert!(c.is_autocommit(), "{what}: left a transaction open");
        let after = dump(c);
        if after != before {
            panic!(
                "{what}: database changed (in_tx = {in_tx}): {}",
                diff(&before, &after)
            );
        }
    }
}

fn rejects_sql(c: &Connection, sql: &str, want: &[&str]) {
    rejects(c, sql, want, &|c| try_rows(c, sql).map(|_| ()));
}

fn rejects_change(c: &Connection, what: &str, vals: [Value; 9], want: &[&str]) {
    rejects(c, what, want, &|c| {
        c.execute(
            "INSERT INTO crsql_changes VALUES (?,?,?,?,?,?,?,?,?)",
            params_from_iter(vals.iter()),
        )
        .map(|_| ())
    });
}

/// A change row for foo, key 5, column b, that would be applied as is.
fn good() -> [Value; 9] {
    [
        t("foo"),
        Value::Blob(pk1(5)),
        t("b"),
        t("v"),
        i(1),
        i(1),
        Value::Blob(R.to_vec()),
        i(1),
        i(0),
    ]
}

fn with(idx: usize, v: Value) -> [Value; 9] {
    let mut g = good();
    g[idx] = v;
    g
}

/// After the bad calls: the next local write takes the next version, and the
/// good change still applies.
fn still_works(c: &Connection, v0: i64) {
    exec(c, "INSERT INTO foo VALUES (77, 'after', 'after')");
    assert_eq!(
        int(
            c,
            "SELECT max(db_version) FROM crsql_changes WHERE \"table\" = 'foo'"
        ),
        v0 + 1
    );
    let g = good();
    c.execute(
        "INSERT INTO crsql_changes VALUES (?,?,?,?,?,?,?,?,?)",
        params_from_iter(g.iter()),
    )
    .unwrap();
    assert_eq!(rows(c, "SELECT b FROM foo WHERE a = 5"), vec![vec![t("v")]]);
}

fn blob(b: &[u8]) -> Value {
    Value::Blob(b.to_vec())
}

// ---------------------------------------------------------------------------
// INSERT INTO crsql_changes: pk

#[test]
fn a_null_empty_truncated_bad_tag_or_miscounted_pk_is_rejected_and_changes_nothing() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    let cases: Vec<(&str, Value)> = vec![
        ("NULL pk", NULL),
        ("empty pk", blob(&[])),
        ("count 1, no value", blob(&[0x01])),
        ("count 2, one value", blob(&[0x02, 0x09, 0x01])),
        ("truncated integer payload", blob(&[0x01, 0x11, 0x01])),
        (
            "truncated text payload",
            blob(&[0x01, 0x0b, 0x05, b'a', b'b']),
        ),
        ("truncated real", blob(&[0x01, 0x02, 0x3f, 0xf8])),
        ("type code 0", blob(&[0x01, 0x00])),
        ("type code 6", blob(&[0x01, 0x06])),
        ("type code 7", blob(&[0x01, 0x07])),
        (
            "integer with N = 9",
            blob(&[0x01, 0x49, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ),
        ("integer with N = 31", blob(&[0x01, 0xf9, 1, 2, 3])),
        (
            "text length with N = 5",
            blob(&[0x01, 0x2b, 0, 0, 0, 0, 1, b'a']),
        ),
        (
            "blob length with N = 9",
            blob(&[0x01, 0x4c, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa]),
        ),
        ("too many values", blob(&[0x02, 0x09, 0x01, 0x09, 0x02])),
        ("too few values", blob(&[0x00])),
        ("pk of TEXT type", t("\u{1}\u{9}\u{5}")),
        ("pk of INTEGER type", i(5)),
        ("pk of REAL type", Value::Real(1.5)),
    ];
    for (what, pk) in cases {
        rejects_change(&c, what, with(1, pk), &["pk"]);
    }
    // Miscounted pks for a composite and a pk-only table.
    let mut comp = good();
    comp[0] = t("comp");
    comp[1] = blob(&[0x01, 0x09, 0x01]);
    comp[2] = t("v");
    rejects_change(&c, "one value for a two-column pk", comp.clone(), &["pk"]);
    comp[1] = blob(&[0x03, 0x09, 0x01, 0x0b, 0x01, b'a', 0x05]);
    rejects_change(&c, "three values for a two-column pk", comp, &["pk"]);
    let mut pko = good();
    pko[0] = t("pko");
    pko[1] = blob(&[0x02, 0x0b, 0x01, b'k', 0x05]);
    pko[2] = t("-1");
    rejects_change(
        &c,
        "two values for a one-column pk-only table",
        pko,
        &["pk"],
    );
    still_works(&c, v0);
    close(c);
}

// ---------------------------------------------------------------------------
// table and cid

#[test]
fn an_unknown_table_is_rejected_with_the_specified_message_and_changes_nothing() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    for name in [
        "nope",
        "FOO",
        "plain",
        "gone",
        "crsql_master",
        "foo__crsql_clock",
        "",
    ] {
        rejects_change(
            &c,
            &format!("table {name:?}"),
            with(0, t(name)),
            &[&format!(
                "crsql - could not find the schema information for table {name}"
            )],
        );
    }
    let at_limit = "t".repeat(2048);
    rejects_change(
        &c,
        "a 2048-byte unknown table name",
        with(0, t(&at_limit)),
        &[&format!(
            "crsql - could not find the schema information for table {at_limit}"
        )],
    );
    still_works(&c, v0);
    close(c);
}

#[test]
fn a_table_name_over_2048_bytes_is_rejected_with_the_specified_message() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_change(
        &c,
        "2049-byte table",
        with(0, t(&"t".repeat(2049))),
        &["crsql - table name exceeded max length"],
    );
    rejects_change(
        &c,
        "1 MB table",
        with(0, t(&"t".repeat(1 << 20))),
        &["crsql - table name exceeded max length"],
    );
    still_works(&c, v0);
    close(c);
}

#[test]
fn a_table_of_the_wrong_type_is_rejected() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_change(&c, "NULL table", with(0, NULL), &["table"]);
    rejects_change(&c, "INTEGER table", with(0, i(5)), &["table"]);
    rejects_change(&c, "REAL table", with(0, Value::Real(1.5)), &["table"]);
    rejects_change(
        &c,
        "BLOB table spelling foo",
        with(0, blob(b"foo")),
        &["table"],
    );
    still_works(&c, v0);
    close(c);
}

#[test]
fn an_unknown_column_or_a_pk_column_as_cid_is_rejected_with_a_message_naming_it() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_change(
        &c,
        "unknown column",
        with(2, t("zzz_col")),
        &["ident:zzz_col", "ident:foo"],
    );
    rejects_change(
        &c,
        "case-mismatched column",
        with(2, t("B")),
        &["ident:B", "ident:foo"],
    );
    rejects_change(&c, "empty column", with(2, t("")), &["foo"]);
    rejects_change(&c, "pk column a", with(2, t("a")), &["primary key"]);
    let mut comp = good();
    comp[0] = t("comp");
    comp[1] = Value::Blob(pack(&[i(9), t("z")]));
    comp[2] = t("y");
    rejects_change(&c, "pk column y of comp", comp, &["primary key"]);
    let mut pko = good();
    pko[0] = t("pko");
    pko[1] = Value::Blob(pack(&[t("z")]));
    pko[2] = t("k");
    rejects_change(&c, "pk column of a pk-only table", pko, &["primary key"]);
    let mut pko = good();
    pko[0] = t("pko");
    pko[1] = Value::Blob(pack(&[t("z")]));
    pko[2] = t("b");
    rejects_change(
        &c,
        "a column a pk-only table does not have",
        pko,
        &["ident:b", "ident:pko"],
    );
    still_works(&c, v0);
    close(c);
}

#[test]
fn a_cid_over_2048_bytes_or_of_the_wrong_type_is_rejected() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_change(
        &c,
        "2049-byte cid",
        with(2, t(&"c".repeat(2049))),
        &["crsql - column name exceeded max length"],
    );
    rejects_change(&c, "NULL cid", with(2, NULL), &["cid"]);
    rejects_change(&c, "INTEGER cid", with(2, i(-1)), &["cid"]);
    rejects_change(&c, "BLOB cid spelling b", with(2, blob(b"b")), &["cid"]);
    still_works(&c, v0);
    close(c);
}

// ---------------------------------------------------------------------------
// numbers and site_id

#[test]
fn a_null_or_zero_cl_is_rejected() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_change(&c, "NULL cl", with(7, NULL), &["cl"]);
    rejects_change(&c, "cl 0", with(7, i(0)), &["cl"]);
    let mut sentinel = with(2, t("-1"));
    sentinel[7] = i(0);
    rejects_change(&c, "sentinel with cl 0", sentinel, &["cl"]);
    still_works(&c, v0);
    close(c);
}

#[test]
fn a_non_integer_col_version_db_version_cl_or_seq_is_rejected() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    for (idx, name) in [(4, "col_version"), (5, "db_version"), (7, "cl"), (8, "seq")] {
        for (what, v) in [
            ("TEXT", t("abc")),
            ("REAL", Value::Real(1.5)),
            ("BLOB", blob(&[1])),
        ] {
            rejects_change(&c, &format!("{what} {name}"), with(idx, v), &[name]);
        }
    }
    still_works(&c, v0);
    close(c);
}

#[test]
fn a_site_id_over_16_bytes_or_of_the_wrong_type_is_rejected() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_change(
        &c,
        "17-byte site",
        with(6, blob(&[7u8; 17])),
        &["crsql - site id exceeded max length"],
    );
    rejects_change(
        &c,
        "4 KB site",
        with(6, blob(&[7u8; 4096])),
        &["crsql - site id exceeded max length"],
    );
    rejects_change(&c, "TEXT site", with(6, t("abc")), &["site"]);
    rejects_change(&c, "INTEGER site", with(6, i(5)), &["site"]);
    rejects_change(&c, "REAL site", with(6, Value::Real(0.5)), &["site"]);
    still_works(&c, v0);
    close(c);
}

/// A change for the STRICT table `s`: column n = 'abc' (an INTEGER column).
fn strict_change(pk: i64, cl: i64) -> [Value; 9] {
    let mut s = good();
    s[0] = t("s");
    s[1] = Value::Blob(pk1(pk));
    s[2] = t("n");
    s[3] = t("abc");
    s[4] = i(9);
    s[7] = i(cl);
    s
}

const STRICT_MSG: &str = "cannot store TEXT value in INTEGER column s.n";

#[test]
fn a_value_that_breaks_a_strict_table_is_rejected_with_sqlites_message() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_change(
        &c,
        "TEXT into STRICT INTEGER, existing row",
        strict_change(1, 1),
        &[STRICT_MSG],
    );
    still_works(&c, v0);
    close(c);
}

#[test]
fn a_strict_violation_for_a_new_row_leaves_no_pks_key_behind() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_change(
        &c,
        "TEXT into STRICT INTEGER, new row",
        strict_change(2, 1),
        &[STRICT_MSG],
    );
    still_works(&c, v0);
    close(c);
}

#[test]
fn a_strict_violation_in_a_resurrecting_change_leaves_no_sentinel_row_or_version_behind() {
    // cl 3 for an unknown row: the sentinel and the row are written before the
    // cell fails.
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_change(
        &c,
        "TEXT into STRICT INTEGER, new row with cl 3",
        strict_change(3, 3),
        &[STRICT_MSG],
    );
    still_works(&c, v0);
    close(c);
}

// ---------------------------------------------------------------------------
// multi-row inserts

const GOOD_ROWS: &str =
    "('foo', X'010964', 'b', 'g1', 1, 3, X'5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a', 1, 0),
     ('foo', X'010965', 'b', 'g2', 1, 4, X'5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a', 1, 1),
     ('foo', X'010901', '-1', NULL, 2, 5, X'5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a', 2, 2)";

#[test]
fn an_insert_select_whose_last_row_is_bad_applies_none_of_its_rows() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    let bad_rows = [
        ("bad pk", "('foo', X'0100', 'b', 'x', 1, 1, X'5a', 1, 0)"),
        ("NULL pk", "('foo', NULL, 'b', 'x', 1, 1, X'5a', 1, 0)"),
        (
            "unknown table",
            "('nope', X'010901', 'b', 'x', 1, 1, X'5a', 1, 0)",
        ),
        (
            "unknown column",
            "('foo', X'010901', 'zzz', 'x', 1, 1, X'5a', 1, 0)",
        ),
        ("cl 0", "('foo', X'010966', 'b', 'x', 1, 1, X'5a', 0, 0)"),
        (
            "long site",
            "('foo', X'010966', 'b', 'x', 1, 1, zeroblob(17), 1, 0)",
        ),
        (
            "STRICT violation",
            "('s', X'010902', 'n', 'abc', 1, 1, X'5a', 1, 0)",
        ),
    ];
    for (what, bad) in bad_rows {
        let sql = format!("INSERT INTO crsql_changes SELECT * FROM (VALUES {GOOD_ROWS}, {bad})");
        rejects_sql(&c, &sql, &[]);
        let _ = what;
        // The bad row in the middle.
        let sql = format!(
            "INSERT INTO crsql_changes SELECT * FROM (VALUES ('foo', X'010964', 'b', 'g1', 1, 3, X'5a', 1, 0), {bad}, ('foo', X'010965', 'b', 'g2', 1, 4, X'5a', 1, 1))"
        );
        rejects_sql(&c, &sql, &[]);
    }
    // The same rows without the bad one do apply.
    exec(
        &c,
        &format!("INSERT INTO crsql_changes SELECT * FROM (VALUES {GOOD_ROWS})"),
    );
    assert_eq!(
        rows(&c, "SELECT a, b FROM foo WHERE a IN (100, 101) ORDER BY a"),
        vec![vec![i(100), t("g1")], vec![i(101), t("g2")]]
    );
    assert_eq!(
        rows(&c, "SELECT count(*) FROM foo WHERE a = 1"),
        vec![vec![i(0)]]
    );
    let _ = v0;
    close(c);
}

// ---------------------------------------------------------------------------
// UPDATE / DELETE on crsql_changes

#[test]
fn update_and_delete_on_crsql_changes_are_rejected_and_change_nothing() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    let m = "Only INSERT and SELECT statements are allowed against the crsql changes table";
    rejects_sql(&c, "UPDATE crsql_changes SET val = 'hacked'", &[m]);
    rejects_sql(&c, "DELETE FROM crsql_changes", &[m]);
    rejects_sql(&c, "DELETE FROM crsql_changes WHERE db_version = 1", &[m]);
    still_works(&c, v0);
    close(c);
}

// ---------------------------------------------------------------------------
// crsql_as_crr

#[test]
fn as_crr_on_hostile_or_missing_names_is_rejected_and_changes_nothing() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    let nopk = "has no primary key or primary key is nullable";
    for (name, want) in [
        ("nope", nopk),
        ("x\"; DROP TABLE foo; --", nopk),
        ("foo'); DROP TABLE foo; --", nopk),
        ("plain; DROP TABLE plain", nopk),
        ("foo\" , \"bar", nopk),
        ("sqlite_master", nopk),
        ("crsql_master", nopk),
        ("crsql_site_id", "has unique indices besidesthe primary key"),
        ("crsql_changes", nopk),
        ("gone", nopk),
    ] {
        let lit = format!("'{}'", name.replace('\'', "''"));
        rejects_sql(&c, &format!("SELECT crsql_as_crr({lit})"), &[want]);
        rejects_sql(&c, &format!("SELECT crsql_as_crr('main', {lit})"), &[want]);
    }
    // The layout's own clock table (the cr-sqlite layout's or the compact
    // one's) has a NOT NULL column without a default.
    let own = format!("'{}'", clock_table("foo"));
    for sql in [
        format!("SELECT crsql_as_crr({own})"),
        format!("SELECT crsql_as_crr('main', {own})"),
    ] {
        rejects_sql(&c, &sql, &["NOT NULL column without a DEFAULT VALUE"]);
    }
    rejects_sql(&c, "SELECT crsql_as_crr('')", &[]);
    rejects_sql(&c, "SELECT crsql_as_crr(NULL)", &[]);
    rejects_sql(&c, "SELECT crsql_as_crr(5)", &[]);
    rejects_sql(&c, "SELECT crsql_as_crr(X'666f6f')", &[]);
    rejects_sql(&c, "SELECT crsql_as_crr()", &["Wrong number of args"]);
    rejects_sql(
        &c,
        &format!("SELECT crsql_as_crr('{}')", "n".repeat(100_000)),
        &[],
    );
    still_works(&c, v0);
    close(c);
}

#[test]
fn as_crr_on_tables_failing_a_precondition_changes_nothing() {
    let (_d, c) = fixture();
    exec(
        &c,
        "CREATE TABLE u(id PRIMARY KEY NOT NULL, v UNIQUE); INSERT INTO u VALUES (1, 1);
         CREATE TABLE ai(id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL, v); INSERT INTO ai (v) VALUES (1);
         CREATE TABLE fk(id PRIMARY KEY NOT NULL, r REFERENCES plain(id));
         CREATE TABLE nn(id PRIMARY KEY NOT NULL, v NOT NULL); INSERT INTO nn VALUES (1, 1);",
    );
    let v0 = dbv(&c);
    rejects_sql(&c, "SELECT crsql_as_crr('u')", &["unique indices"]);
    rejects_sql(&c, "SELECT crsql_as_crr('ai')", &["auto-increment"]);
    rejects_sql(&c, "SELECT crsql_as_crr('fk')", &["foreign key"]);
    rejects_sql(
        &c,
        "SELECT crsql_as_crr('nn')",
        &["NOT NULL column without a DEFAULT"],
    );
    still_works(&c, v0);
    close(c);
}

// ---------------------------------------------------------------------------
// crsql_unpack_columns

#[test]
fn unpack_columns_rejects_bad_packages() {
    let (_d, c) = fixture();
    for (what, arg) in [
        ("empty", "X''"),
        ("NULL", "NULL"),
        ("count without values", "X'01'"),
        ("truncated integer", "X'0111'"),
        ("truncated text", "X'010B0561'"),
        ("type code 0", "X'0100'"),
        ("type code 6", "X'0106'"),
        ("type code 7", "X'0107'"),
        ("integer N = 9", "X'0149010203040506070809'"),
        ("text length N = 5", "X'012B000000000161'"),
        ("integer", "5"),
        ("real", "1.5"),
    ] {
        rejects(&c, what, &[], &|c| {
            try_rows(c, &format!("SELECT cell FROM crsql_unpack_columns({arg})")).map(|_| ())
        });
    }
    rejects_sql(&c, "SELECT cell FROM crsql_unpack_columns", &[]);
    close(c);
}

// ---------------------------------------------------------------------------
// trigger helpers called directly

#[test]
fn trigger_helpers_called_with_the_wrong_arity_are_rejected_and_change_nothing() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    for sql in [
        "SELECT crsql_after_insert('foo')",
        "SELECT crsql_after_insert('foo', 1, 2)",
        "SELECT crsql_after_insert('comp', 1)",
        "SELECT crsql_after_insert('comp', 1, 'a', 3)",
        "SELECT crsql_after_delete('foo')",
        "SELECT crsql_after_delete('foo', 1, 2)",
        "SELECT crsql_after_delete('comp', 1)",
        "SELECT crsql_after_update('foo')",
        "SELECT crsql_after_update('foo', 1)",
        "SELECT crsql_after_update('foo', 1, 1, 'b', 'c', 'b')",
        "SELECT crsql_after_update('foo', 1, 1, 'b', 'c', 'b', 'c', 'extra')",
        "SELECT crsql_after_update('pko', 'k')",
        "SELECT crsql_after_update('pko', 'k', 'k', 'x')",
    ] {
        rejects_sql(&c, sql, &["expected"]);
    }
    rejects_sql(
        &c,
        "SELECT crsql_after_insert()",
        &["expected at least 1 argument"],
    );
    rejects_sql(
        &c,
        "SELECT crsql_after_update()",
        &["expected at least 1 argument"],
    );
    rejects_sql(
        &c,
        "SELECT crsql_after_delete()",
        &["expected at least 1 argument"],
    );
    rejects_sql(
        &c,
        "SELECT crsql_after_insert('nope', 1)",
        &["table nope not found"],
    );
    rejects_sql(
        &c,
        "SELECT crsql_after_delete('plain', 1)",
        &["table plain not found"],
    );
    rejects_sql(
        &c,
        "SELECT crsql_after_update('gone', 1, 1, 2, 2)",
        &["table gone not found"],
    );
    rejects_sql(&c, "SELECT crsql_after_insert(NULL, 1)", &[]);
    rejects_sql(&c, "SELECT crsql_after_insert(5, 1)", &[]);
    still_works(&c, v0);
    close(c);
}

// ---------------------------------------------------------------------------
// other functions

#[test]
fn other_functions_reject_malformed_arguments_and_change_nothing() {
    let (_d, c) = fixture();
    let v0 = dbv(&c);
    rejects_sql(
        &c,
        "SELECT crsql_config_set('merge-equal-values', 'abc')",
        &["merge-equal-values"],
    );
    rejects_sql(
        &c,
        "SELECT crsql_config_set('merge-equal-values', 0.5)",
        &["merge-equal-values"],
    );
    rejects_sql(
        &c,
        "SELECT crsql_config_set('merge-equal-values', NULL)",
        &["merge-equal-values"],
    );
    rejects_sql(
        &c,
        "SELECT crsql_config_set('nope', 1)",
        &["Unknown setting name"],
    );
    rejects_sql(&c, "SELECT crsql_config_set(NULL, 1)", &[]);
    rejects_sql(
        &c,
        "SELECT crsql_config_get('nope')",
        &["Unknown setting name"],
    );
    rejects_sql(&c, "SELECT crsql_next_db_version('abc')", &[]);
    rejects_sql(&c, "SELECT crsql_next_db_version(1.5)", &[]);
    rejects_sql(&c, "SELECT crsql_next_db_version(1, 2)", &[]);
    rejects_sql(&c, "SELECT crsql_internal_sync_bit('x')", &[]);
    rejects_sql(&c, "SELECT crsql_begin_alter()", &[]);
    rejects_sql(&c, "SELECT crsql_commit_alter()", &[]);
    rejects_sql(&c, "SELECT crsql_commit_alter('foo')", &[]);
    rejects_sql(&c, "SELECT crsql_commit_alter('nope')", &[]);
    let many = vec!["1"; 256].join(",");
    rejects_sql(&c, &format!("SELECT crsql_pack_columns({many})"), &[]);
    assert_eq!(int(&c, "SELECT crsql_internal_sync_bit()"), 0);
    assert_eq!(int(&c, "SELECT crsql_config_get('merge-equal-values')"), 0);
    still_works(&c, v0);
    close(c);
}
