//! The stream virtual tables through real connections on real database
//! files: every statement and guarantee of the stream contract in
//! docs/streams.md ("The contract") and docs/sql.md
//! (`crsql_OutboundStream`, `crsql_InboundStream`, `crsql_streams`) and the
//! package helpers `crsql_package_info` / `crsql_package_changes`.
//!
//! Expected values come from the contract. Where a concrete position is
//! needed it is read from `crsql_changes`, the independent oracle for "every
//! change row a database holds has a unique position", never from the
//! stream under test. Files are closed and reopened to show durability, and
//! a child process that aborts mid-transaction stands in for a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crsql_stream_core::package::{crc64, Bytes, Encoding, Package};
use crsql_stream_harness::sql::{exec, int, message, rows, text, try_rows};
use crsql_stream_harness::{close, open};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

// ---------------------------------------------------------------------------
// helpers: SQL

fn try_exec(c: &Connection, sql: &str) -> Result<(), String> {
    c.execute_batch(sql).map_err(|e| message(&e))
}

/// The error of a statement that must fail.
fn error_of(c: &Connection, sql: &str) -> String {
    match try_exec(c, sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(m) => m,
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::Text(t) => t.clone(),
        other => panic!("expected TEXT, got {other:?}"),
    }
}

fn as_int(v: &Value) -> i64 {
    match v {
        Value::Integer(i) => *i,
        other => panic!("expected INTEGER, got {other:?}"),
    }
}

/// A value rendered so that equal strings mean identical storage class and
/// bits (a REAL's bit pattern, not its numeric value).
fn exact(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Integer(i) => format!("INTEGER {i}"),
        Value::Real(r) => format!("REAL {r:?} ({:016x})", r.to_bits()),
        Value::Text(t) => format!("TEXT {t:?}"),
        Value::Blob(b) => format!("BLOB {}", hex(b)),
    }
}

fn exact_row(r: &[Value]) -> String {
    r.iter().map(exact).collect::<Vec<_>>().join(" | ")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

// ---------------------------------------------------------------------------
// helpers: databases

const SCHEMA: &str = "
CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, score);
SELECT crsql_as_crr('todos');
CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body);
SELECT crsql_as_crr('notes');
CREATE TABLE plain(x);
";

/// A temporary directory of database files.
struct Dir {
    tmp: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(format!("{name}.db"))
    }

    /// Open (creating if needed) a database file, without schema.
    fn open(&self, name: &str) -> Connection {
        let c = open(&self.path(name));
        exec(&c, "PRAGMA synchronous = OFF");
        c
    }

    /// A new database file with the standard schema.
    fn create(&self, name: &str) -> Connection {
        let c = self.open(name);
        exec(&c, SCHEMA);
        c
    }

    /// Close cleanly and open the same file again.
    fn reopen(&self, name: &str, c: Connection) -> Connection {
        close(c);
        self.open(name)
    }
}

fn site(c: &Connection) -> String {
    text(c, "SELECT hex(crsql_site_id())")
}

fn db_version(c: &Connection) -> i64 {
    int(c, "SELECT crsql_db_version()")
}

/// Every ordinary table of the database (CRRs, their clock tables, the
/// extension's own bookkeeping), rows rendered exactly and sorted, plus the
/// db_version. Two equal dumps mean nothing observable changed.
fn dump(c: &Connection) -> Vec<(String, Vec<String>)> {
    let names: Vec<String> = rows(
        c,
        "SELECT name FROM sqlite_master WHERE type = 'table' \
         AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name",
    )
    .into_iter()
    .map(|r| as_text(&r[0]))
    .collect();
    let mut out = Vec::new();
    for n in names {
        let mut rs: Vec<String> = rows(c, &format!("SELECT * FROM \"{n}\""))
            .iter()
            .map(|r| exact_row(r))
            .collect();
        rs.sort();
        out.push((n, rs));
    }
    out.push(("crsql_db_version()".into(), vec![db_version(c).to_string()]));
    out
}

/// A CRR's rows, exactly, ordered by primary key.
fn table_rows(c: &Connection, table: &str) -> Vec<String> {
    rows(c, &format!("SELECT * FROM \"{table}\" ORDER BY 1"))
        .iter()
        .map(|r| exact_row(r))
        .collect()
}

/// One row of `crsql_changes`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ChangeRow {
    table: String,
    pk: String,
    cid: String,
    val: String,
    col_version: i64,
    site: String,
    cl: i64,
    pos: Pos,
}

fn change_rows(c: &Connection) -> Vec<ChangeRow> {
    rows(
        c,
        "SELECT [table], pk, cid, val, col_version, db_version, site_id, cl, seq \
         FROM crsql_changes ORDER BY db_version, seq",
    )
    .into_iter()
    .map(|r| ChangeRow {
        table: as_text(&r[0]),
        pk: exact(&r[1]),
        cid: as_text(&r[2]),
        val: exact(&r[3]),
        col_version: as_int(&r[4]),
        site: match &r[6] {
            Value::Blob(b) => hex(b),
            other => panic!("site_id {other:?}"),
        },
        cl: as_int(&r[7]),
        pos: (as_int(&r[5]), as_int(&r[8])),
    })
    .collect()
}

/// The replicated content of a change, without its local position.
fn content(r: &ChangeRow) -> (String, String, String, String, i64, String, i64) {
    (
        r.table.clone(),
        r.pk.clone(),
        r.cid.clone(),
        r.val.clone(),
        r.col_version,
        r.site.clone(),
        r.cl,
    )
}

/// A predicate on change rows (which ones a filter lets through).
type Filter<'a> = Box<dyn Fn(&ChangeRow) -> bool + 'a>;

type Content = BTreeSet<(String, String, String, String, i64, String, i64)>;

fn contents<'a>(rs: impl IntoIterator<Item = &'a ChangeRow>) -> Content {
    rs.into_iter().map(content).collect()
}

/// Positions of every change row, in order.
fn positions(c: &Connection) -> Vec<Pos> {
    change_rows(c).into_iter().map(|r| r.pos).collect()
}

/// `n` transactions, each inserting one todo (two change rows).
fn add_todos(c: &Connection, first_id: i64, n: i64) {
    for id in first_id..first_id + n {
        exec(
            c,
            &format!("INSERT INTO todos VALUES ({id}, 'todo {id}', {id})"),
        );
    }
}

/// `n` transactions, each inserting one note (one change row).
fn add_notes(c: &Connection, first_id: i64, n: i64) {
    for id in first_id..first_id + n {
        exec(c, &format!("INSERT INTO notes VALUES ({id}, 'note {id}')"));
    }
}

// ---------------------------------------------------------------------------
// helpers: streams

type Pos = (i64, i64);

fn parse_pos(s: &str) -> Pos {
    let v: (i64, i64) =
        serde_json::from_str(s).unwrap_or_else(|e| panic!("position {s:?} is not [a,b]: {e}"));
    v
}

fn pos_text(p: Pos) -> String {
    format!("[{},{}]", p.0, p.1)
}

/// One row of an outbound stream.
#[derive(Clone, Debug)]
struct Pkg {
    package: Value,
    cursor: String,
    since: String,
    changes: i64,
    bytes: i64,
}

impl Pkg {
    fn bytes_of(&self) -> Vec<u8> {
        match &self.package {
            Value::Blob(b) => b.clone(),
            Value::Text(t) => t.as_bytes().to_vec(),
            other => panic!("package is {other:?}"),
        }
    }
    fn cursor(&self) -> Pos {
        parse_pos(&self.cursor)
    }
    fn since(&self) -> Pos {
        parse_pos(&self.since)
    }
}

fn try_pull(c: &Connection, stream: &str, tail: &str) -> Result<Vec<Pkg>, String> {
    let sql = format!("SELECT package, cursor, since, changes, bytes FROM {stream} {tail}");
    let rs = try_rows(c, &sql).map_err(|e| message(&e))?;
    Ok(rs
        .into_iter()
        .map(|r| Pkg {
            package: r[0].clone(),
            cursor: as_text(&r[1]),
            since: as_text(&r[2]),
            changes: as_int(&r[3]),
            bytes: as_int(&r[4]),
        })
        .collect())
}

/// Packages of an outbound stream (`tail` is e.g. `LIMIT 1`).
fn pull(c: &Connection, stream: &str, tail: &str) -> Vec<Pkg> {
    try_pull(c, stream, tail).unwrap_or_else(|e| panic!("SELECT FROM {stream} {tail}: {e}"))
}

fn ack(c: &Connection, stream: &str, pos: &str) -> Result<(), String> {
    c.execute(
        &format!("INSERT INTO {stream}(last_sent) VALUES (?1)"),
        [pos],
    )
    .map(|_| ())
    .map_err(|e| message(&e))
}

fn ack_ok(c: &Connection, stream: &str, pos: &str) {
    ack(c, stream, pos).unwrap_or_else(|e| panic!("ack {pos} on {stream}: {e}"));
}

fn apply(c: &Connection, inbound: &str, package: &Value) -> Result<(), String> {
    c.execute(
        &format!("INSERT INTO {inbound}(package) VALUES (?1)"),
        [package],
    )
    .map(|_| ())
    .map_err(|e| message(&e))
}

fn apply_ok(c: &Connection, inbound: &str, p: &Pkg) {
    apply(c, inbound, &p.package).unwrap_or_else(|e| {
        panic!(
            "applying package ({}, {}] to {inbound}: {e}",
            p.since, p.cursor
        )
    });
}

fn last_applied(c: &Connection, inbound: &str) -> String {
    text(c, &format!("SELECT last_applied FROM {inbound}"))
}

/// A row of `crsql_streams`.
#[derive(Clone, Debug, PartialEq)]
struct StreamRow {
    direction: String,
    peer: Option<String>,
    last_sent: Option<String>,
    last_retrieved: Option<String>,
    last_applied: Option<String>,
    lag_versions: Option<i64>,
}

fn streams(c: &Connection) -> BTreeMap<String, StreamRow> {
    rows(
        c,
        "SELECT name, direction, peer, last_sent, last_retrieved, last_applied, lag_versions \
         FROM crsql_streams",
    )
    .into_iter()
    .map(|r| {
        let opt_text = |v: &Value| match v {
            Value::Null => None,
            other => Some(as_text(other)),
        };
        (
            as_text(&r[0]),
            StreamRow {
                direction: as_text(&r[1]),
                peer: opt_text(&r[2]).map(|p| p.to_ascii_uppercase()),
                last_sent: opt_text(&r[3]),
                last_retrieved: opt_text(&r[4]),
                last_applied: opt_text(&r[5]),
                lag_versions: match &r[6] {
                    Value::Null => None,
                    other => Some(as_int(other)),
                },
            },
        )
    })
    .collect()
}

fn stream(c: &Connection, name: &str) -> StreamRow {
    streams(c)
        .remove(name)
        .unwrap_or_else(|| panic!("crsql_streams has no row for {name}"))
}

fn last_sent(c: &Connection, name: &str) -> String {
    stream(c, name)
        .last_sent
        .unwrap_or_else(|| panic!("{name}: last_sent is NULL"))
}

fn last_retrieved(c: &Connection, name: &str) -> Option<String> {
    stream(c, name).last_retrieved
}

/// The header of a package as JSON, via `crsql_package_info`.
fn info(c: &Connection, p: &Value) -> serde_json::Value {
    let s: String = c
        .query_row("SELECT crsql_package_info(?1)", [p], |r| r.get(0))
        .unwrap_or_else(|e| panic!("crsql_package_info: {e}"));
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("crsql_package_info is not JSON: {e}: {s}"))
}

/// Whether a package is one part of a split transaction.
fn is_part(c: &Connection, p: &Pkg) -> bool {
    !info(c, &p.package)["part"].is_null()
}

/// The changes a package carries, as `crsql_changes`-shaped rows.
fn package_changes(c: &Connection, p: &Value) -> Vec<Vec<Value>> {
    let mut stmt = c
        .prepare(
            "SELECT [table], pk, cid, val, col_version, db_version, site_id, cl, seq \
             FROM crsql_package_changes(?1)",
        )
        .unwrap();
    let n = stmt.column_count();
    stmt.query_map([p], |r| (0..n).map(|i| r.get::<_, Value>(i)).collect())
        .unwrap()
        .collect::<rusqlite::Result<Vec<Vec<Value>>>>()
        .unwrap()
}

/// Assert a list of packages forms a contiguous chain starting at `start`.
fn assert_chain(pkgs: &[Pkg], start: &str) {
    let mut prev = start.to_string();
    for (i, p) in pkgs.iter().enumerate() {
        assert_eq!(
            p.since, prev,
            "package {i}: since must equal the previous cursor"
        );
        assert!(
            p.cursor() > p.since(),
            "package {i}: cursor {} must be after since {}",
            p.cursor,
            p.since
        );
        prev = p.cursor.clone();
    }
}

/// Apply every package of `stream` (from its `last_sent`) to `inbound`,
/// acknowledging as it goes, until the stream is empty. Returns how many
/// packages moved.
fn sync(from: &Connection, stream: &str, to: &Connection, inbound: &str) -> usize {
    let mut moved = 0;
    loop {
        let pkgs = pull(from, stream, "LIMIT 50");
        if pkgs.is_empty() {
            return moved;
        }
        for p in &pkgs {
            apply_ok(to, inbound, p);
            moved += 1;
        }
        let applied = last_applied(to, inbound);
        ack_ok(from, stream, &applied);
    }
}

/// An outbound stream on `a` to `b` and the matching inbound stream on `b`.
fn link(a: &Connection, b: &Connection, out: &str, inb: &str, out_args: &str) {
    let args = if out_args.is_empty() {
        format!("exclude_sites = '{}'", site(b))
    } else {
        format!("exclude_sites = '{}', {out_args}", site(b))
    };
    exec(
        a,
        &format!("CREATE VIRTUAL TABLE {out} USING crsql_OutboundStream({args})"),
    );
    exec(
        b,
        &format!(
            "CREATE VIRTUAL TABLE {inb} USING crsql_InboundStream(from = '{}')",
            site(a)
        ),
    );
}

/// Assert that applying `package` fails and leaves the receiver exactly as it was.
fn assert_rejected(c: &Connection, inbound: &str, package: &Value, what: &str) -> String {
    let before = dump(c);
    let la = last_applied(c, inbound);
    let err = match apply(c, inbound, package) {
        Ok(()) => panic!("{what}: the package was accepted"),
        Err(e) => e,
    };
    assert!(!err.is_empty(), "{what}: empty error message");
    assert_eq!(last_applied(c, inbound), la, "{what}: last_applied moved");
    assert_eq!(dump(c), before, "{what}: the database changed");
    err
}

// ---------------------------------------------------------------------------
// Positions

#[test]
fn positions_are_compact_json_pairs_unique_per_change_and_ordered_by_db_version_then_seq() {
    let d = Dir::new();
    let a = d.create("a");
    let c = d.create("c");
    // Twelve multi-statement transactions: db_version goes past 9 (so text
    // order and position order differ) and seq takes several values.
    for i in 1..=12 {
        exec(
            &a,
            &format!(
                "BEGIN; INSERT INTO todos VALUES ({i}, 't{i}', {i}); \
                 INSERT INTO notes VALUES ({i}, 'n{i}'); COMMIT;"
            ),
        );
    }
    // Changes merged from a peer get positions of this database too.
    add_todos(&c, 100, 3);
    link(&c, &a, "to_a", "from_c", "");
    sync(&c, "to_a", &a, "from_c");
    add_notes(&a, 50, 2);

    let ps = positions(&a);
    let unique: BTreeSet<Pos> = ps.iter().copied().collect();
    assert_eq!(unique.len(), ps.len(), "positions must be unique: {ps:?}");
    assert!(
        ps.iter().all(|p| *p > (0, 0)),
        "'[0,0]' is before everything"
    );
    assert!(
        change_rows(&a).iter().any(|r| r.site == site(&c)),
        "the merged changes are part of the stream's database"
    );

    // With max_changes = 1 every package covers exactly one change, so the
    // cursors list every position in stream order.
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 1)",
    );
    let pkgs = pull(&a, "o", "");
    assert_chain(&pkgs, "[0,0]");
    for p in &pkgs {
        assert_eq!(p.cursor, pos_text(p.cursor()), "compact JSON text");
        assert_eq!(p.since, pos_text(p.since()), "compact JSON text");
        assert_eq!(p.changes, 1);
    }
    let cursors: Vec<Pos> = pkgs.iter().map(Pkg::cursor).collect();
    assert_eq!(cursors, ps, "one package per position, in position order");
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "db_version first, then seq"
    );
    assert!(
        cursors.iter().any(|p| p.0 >= 10) && cursors.iter().any(|p| p.0 == 9),
        "the history crosses db_version 9 -> 10"
    );
}

#[test]
fn a_reader_that_has_seen_up_to_a_position_never_later_finds_an_older_change() {
    let d = Dir::new();
    let a = d.create("a");
    exec(&a, "PRAGMA journal_mode = WAL");
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    let w = d.open("a");
    add_todos(&a, 1, 2);
    // A write transaction is in flight on another connection.
    exec(
        &w,
        "BEGIN IMMEDIATE; INSERT INTO todos VALUES (50, 'in flight', 0);",
    );
    let seen = pull(&a, "o", "");
    let high = seen.last().expect("packages").cursor.clone();
    for p in &seen {
        for ch in package_changes(&a, &p.package) {
            assert_ne!(
                exact(&ch[1]),
                exact(&Value::Blob(vec![1, 9, 50])),
                "uncommitted change seen"
            );
        }
    }
    exec(&w, "COMMIT");
    add_todos(&a, 3, 1);
    let later = pull(&a, "o", &format!("WHERE cursor > '{high}'"));
    assert_chain(&later, &high);
    let carried: Vec<Pos> = later
        .iter()
        .flat_map(|p| package_changes(&a, &p.package))
        .map(|ch| (as_int(&ch[5]), as_int(&ch[8])))
        .collect();
    let expected: Vec<Pos> = positions(&a)
        .into_iter()
        .filter(|p| *p > parse_pos(&high))
        .collect();
    assert_eq!(
        carried, expected,
        "everything committed after the reader's position, the late commit included"
    );
    assert_eq!(expected.len(), 4, "the in-flight insert and todo 3");
    close(w);
}

// ---------------------------------------------------------------------------
// CREATE arguments

#[test]
fn every_argument_is_optional_and_the_defaults_hold() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream");
    exec(&a, "CREATE VIRTUAL TABLE o2 USING crsql_OutboundStream()");
    exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream");
    assert_eq!(last_sent(&a, "o"), "[0,0]");
    assert_eq!(last_sent(&a, "o2"), "[0,0]");
    assert_eq!(last_applied(&b, "i"), "[0,0]");
    assert_eq!(int(&b, "SELECT count(*) FROM i"), 1, "one row");

    // max_changes defaults to 1000: a transaction of exactly 1000 changes
    // travels whole, one of 1001 changes is split.
    exec(
        &a,
        "BEGIN;
         WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000)
         INSERT INTO notes SELECT x, 'n' || x FROM n;
         COMMIT;
         BEGIN;
         WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1001)
         INSERT INTO notes SELECT 10000 + x, 'm' || x FROM n;
         COMMIT;",
    );
    // `tables` defaults to every CRR, including one made later.
    for c in [&a, &b] {
        exec(
            c,
            "CREATE TABLE later(id INTEGER PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('later');",
        );
    }
    exec(&a, "INSERT INTO later VALUES (1, 'made after the stream')");

    let pkgs = pull(&a, "o", "");
    assert_chain(&pkgs, "[0,0]");
    for p in &pkgs {
        assert!(
            matches!(p.package, Value::Blob(_)),
            "binary encoding by default"
        );
        assert!(p.changes <= 1000);
    }
    assert_eq!(pkgs[0].changes, 1000, "the 1000-change transaction whole");
    assert!(!is_part(&a, &pkgs[0]));
    let parts: Vec<&Pkg> = pkgs.iter().filter(|p| is_part(&a, p)).collect();
    assert!(
        parts.len() >= 2,
        "1001 changes exceed the default max_changes"
    );
    assert_eq!(parts.iter().map(|p| p.changes).sum::<i64>(), 1001);

    for p in &pkgs {
        apply_ok(&b, "i", p);
    }
    for t in ["notes", "later"] {
        assert_eq!(table_rows(&b, t), table_rows(&a, t), "{t}");
    }
    assert_eq!(
        stream(&b, "i").peer.as_deref(),
        Some(site(&a).as_str()),
        "from defaults to the first package's sender"
    );
}

#[test]
fn max_bytes_defaults_to_one_mebibyte() {
    let d = Dir::new();
    let a = d.create("a");
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    // 2 x 400 kB fit in 1 MiB: one whole package. 2 x 600 kB do not: split.
    exec(
        &a,
        "BEGIN; INSERT INTO notes VALUES (1, zeroblob(400000)), (2, zeroblob(400000)); COMMIT;
         BEGIN; INSERT INTO notes VALUES (3, zeroblob(600000)), (4, zeroblob(600000)); COMMIT;",
    );
    let pkgs = pull(&a, "o", "");
    assert_chain(&pkgs, "[0,0]");
    assert_eq!(pkgs[0].changes, 2);
    assert!(!is_part(&a, &pkgs[0]));
    assert!(pkgs[0].bytes <= 1 << 20);
    assert_eq!(pkgs.len(), 3, "the second transaction in two parts");
    for p in &pkgs[1..] {
        assert!(is_part(&a, p));
        assert_eq!(p.changes, 1);
    }
}

#[test]
fn the_since_argument_sets_where_streams_start() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    add_todos(&a, 1, 5);
    let ps = positions(&a);
    let end3 = *ps.iter().filter(|p| p.0 == 3).max().unwrap();
    let end4 = *ps.iter().filter(|p| p.0 == 4).max().unwrap();
    exec(
        &a,
        &format!(
            "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(since = '{}', exclude_sites = '{}');
             CREATE VIRTUAL TABLE late USING crsql_OutboundStream(since = '{}');",
            pos_text(end3),
            site(&b),
            pos_text(end4)
        ),
    );
    assert_eq!(last_sent(&a, "o"), pos_text(end3));
    let pkgs = pull(&a, "o", "");
    assert_chain(&pkgs, &pos_text(end3));
    let carried: Vec<Pos> = pkgs
        .iter()
        .flat_map(|p| package_changes(&a, &p.package))
        .map(|ch| (as_int(&ch[5]), as_int(&ch[8])))
        .collect();
    let expected: Vec<Pos> = ps.iter().copied().filter(|p| *p > end3).collect();
    assert_eq!(carried, expected);

    exec(
        &b,
        &format!(
            "CREATE VIRTUAL TABLE i USING crsql_InboundStream(since = '{}')",
            pos_text(end3)
        ),
    );
    assert_eq!(last_applied(&b, "i"), pos_text(end3));
    // A package that starts after `since` is a gap.
    let late = pull(&a, "late", "");
    assert_eq!(late[0].since, pos_text(end4));
    let e = assert_rejected(&b, "i", &late[0].package, "package starting after since");
    assert!(
        e.contains(&pos_text(end3)) && e.contains(&pos_text(end4)),
        "{e}"
    );
    // The first package must start at `since`: it does.
    for p in &pkgs {
        apply_ok(&b, "i", p);
    }
    assert_eq!(last_applied(&b, "i"), pkgs.last().unwrap().cursor);
    let ids: Vec<i64> = rows(&b, "SELECT id FROM todos ORDER BY id")
        .iter()
        .map(|r| as_int(&r[0]))
        .collect();
    assert_eq!(ids, vec![4, 5], "only the changes after since");
}

/// A CREATE that must fail; its message must name `arg`, and no table or
/// stream may be left behind.
fn assert_bad_create(c: &Connection, module: &str, args: &str, arg: &str) {
    let sql = format!("CREATE VIRTUAL TABLE bad USING {module}({args})");
    let e = error_of(c, &sql);
    assert!(
        e.to_ascii_lowercase().contains(arg),
        "{sql}: the error must name {arg:?}: {e}"
    );
    assert_eq!(
        int(c, "SELECT count(*) FROM sqlite_master WHERE name = 'bad'"),
        0,
        "{sql}: table left behind"
    );
    assert!(
        !streams(c).contains_key("bad"),
        "{sql}: stream state left behind"
    );
}

#[test]
fn a_bad_outbound_argument_is_a_create_error_that_names_the_argument() {
    let d = Dir::new();
    let a = d.create("a");
    let good = site(&a);
    let m = "crsql_OutboundStream";
    for (args, arg) in [
        ("bogus = 1", "bogus"),
        ("max_change = 5", "max_change"),
        ("since = '[1]'", "since"),
        ("since = 'abc'", "since"),
        ("since = '[-1,0]'", "since"),
        ("since = '[1,2,3]'", "since"),
        ("since = '[1.5,0]'", "since"),
        ("since = ''", "since"),
        ("exclude_sites = 'xyz'", "exclude_sites"),
        ("exclude_sites = 'ABCD'", "exclude_sites"),
        ("local_only = 2", "local_only"),
        ("local_only = 'yes'", "local_only"),
        ("local_only = -1", "local_only"),
        ("max_changes = 0", "max_changes"),
        ("max_changes = -5", "max_changes"),
        ("max_changes = 'many'", "max_changes"),
        ("max_changes = 1.5", "max_changes"),
        ("max_changes = ''", "max_changes"),
        ("max_bytes = 0", "max_bytes"),
        ("max_bytes = -1", "max_bytes"),
        ("max_bytes = 'big'", "max_bytes"),
        ("encoding = 'xml'", "encoding"),
        ("encoding = ''", "encoding"),
        ("encoding = 'json', since = 'x'", "since"),
    ] {
        assert_bad_create(&a, m, args, arg);
    }
    assert_bad_create(
        &a,
        m,
        &format!("exclude_sites = '{good},zz'"),
        "exclude_sites",
    );
    assert_bad_create(
        &a,
        m,
        &format!("exclude_sites = '{good}00'"),
        "exclude_sites",
    );
}

#[test]
fn a_bad_inbound_argument_is_a_create_error_that_names_the_argument() {
    let d = Dir::new();
    let a = d.create("a");
    let m = "crsql_InboundStream";
    for (args, arg) in [
        ("bogus = 1", "bogus"),
        ("exclude_sites = 'ab'", "exclude_sites"),
        ("from = 'nothex'", "from"),
        ("from = 'ABCD'", "from"),
        ("since = '[1]'", "since"),
        ("since = 'x'", "since"),
        ("since = '[0,-1]'", "since"),
    ] {
        assert_bad_create(&a, m, args, arg);
    }
    let s = site(&a);
    assert_bad_create(&a, m, &format!("from = '{s}{s}'"), "from");
}

#[test]
fn tables_naming_anything_but_a_crr_is_a_create_error_that_names_the_argument() {
    let d = Dir::new();
    let a = d.create("a");
    for m in ["crsql_OutboundStream", "crsql_InboundStream"] {
        for t in [
            "plain",
            "nosuch",
            "todos,plain",
            "todos,nosuch",
            "crsql_changes",
        ] {
            assert_bad_create(&a, m, &format!("tables = '{t}'"), "tables");
        }
        // Valid lists are accepted.
        exec(
            &a,
            &format!("CREATE VIRTUAL TABLE ok USING {m}(tables = 'todos,notes'); DROP TABLE ok;"),
        );
    }
}

#[test]
fn site_ids_are_accepted_in_either_case_and_as_lists() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    let c = d.create("c");
    let (sb, sc) = (site(&b), site(&c));
    exec(
        &a,
        &format!(
            "CREATE VIRTUAL TABLE up USING crsql_OutboundStream(exclude_sites = '{sb}');
             CREATE VIRTUAL TABLE low USING crsql_OutboundStream(exclude_sites = '{}');
             CREATE VIRTUAL TABLE two USING crsql_OutboundStream(exclude_sites = '{sb}, {}');
             CREATE VIRTUAL TABLE i1 USING crsql_InboundStream(from = '{sc}');
             CREATE VIRTUAL TABLE i2 USING crsql_InboundStream(from = '{}');",
            sb.to_ascii_lowercase(),
            sc.to_ascii_lowercase(),
            sc.to_ascii_lowercase(),
        ),
    );
    let all = streams(&a);
    for n in ["up", "low", "two", "i1", "i2"] {
        assert!(all.contains_key(n), "{n}");
    }
    assert_eq!(all["up"].peer.as_deref(), Some(sb.as_str()));
    assert_eq!(all["low"].peer.as_deref(), Some(sb.as_str()));
    assert_eq!(all["i2"].peer.as_deref(), Some(sc.as_str()));
}

// ---------------------------------------------------------------------------
// crsql_OutboundStream: streams, columns, reading

#[test]
fn two_outbound_tables_with_the_same_arguments_are_two_streams() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE s1 USING crsql_OutboundStream(max_changes = 2);
         CREATE VIRTUAL TABLE s2 USING crsql_OutboundStream(max_changes = 2);",
    );
    add_todos(&a, 1, 3);
    let p1 = pull(&a, "s1", "");
    let p2 = pull(&a, "s2", "");
    assert_eq!(p1.len(), 3);
    assert_eq!(p2.len(), 3);
    ack_ok(&a, "s1", &p1[1].cursor);
    assert_eq!(last_sent(&a, "s1"), p1[1].cursor);
    assert_eq!(last_sent(&a, "s2"), "[0,0]", "acks are per stream");
    assert_eq!(pull(&a, "s2", "")[0].since, "[0,0]");
    assert_eq!(pull(&a, "s1", "")[0].since, p1[1].cursor);
    let a = d.reopen("a", a);
    assert_eq!(last_sent(&a, "s1"), p1[1].cursor);
    assert_eq!(last_sent(&a, "s2"), "[0,0]");
}

#[test]
fn a_package_from_another_stream_than_the_pinned_one_is_rejected() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    let b2 = d.create("b2");
    exec(
        &a,
        "CREATE VIRTUAL TABLE s1 USING crsql_OutboundStream(max_changes = 2);
         CREATE VIRTUAL TABLE s2 USING crsql_OutboundStream(max_changes = 2);",
    );
    add_todos(&a, 1, 3);
    let p1 = pull(&a, "s1", "");
    let p2 = pull(&a, "s2", "");
    // Same boundaries, so only the stream tells them apart.
    assert_eq!(p1[0].cursor, p2[0].cursor);
    assert_eq!(p2[1].since, p1[0].cursor);

    // Pinned by the first package.
    exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
    apply_ok(&b, "i", &p1[0]);
    assert_rejected(
        &b,
        "i",
        &p2[1].package,
        "package of stream s2 on s1's inbound",
    );
    let b = d.reopen("b", b);
    assert_rejected(&b, "i", &p2[1].package, "package of stream s2 after reopen");
    apply_ok(&b, "i", &p1[1]);
    apply_ok(&b, "i", &p1[2]);

    // Also with `from` given explicitly.
    exec(
        &b2,
        &format!(
            "CREATE VIRTUAL TABLE i USING crsql_InboundStream(from = '{}')",
            site(&a)
        ),
    );
    apply_ok(&b2, "i", &p2[0]);
    assert_rejected(
        &b2,
        "i",
        &p1[1].package,
        "package of stream s1 on s2's inbound",
    );
}

#[test]
fn the_outbound_table_has_the_contract_columns() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream();
         CREATE VIRTUAL TABLE j USING crsql_OutboundStream(encoding = 'json');",
    );
    add_todos(&a, 1, 2);
    add_notes(&a, 1, 1);
    for t in ["o", "j"] {
        let stmt = a.prepare(&format!("SELECT * FROM {t}")).unwrap();
        assert_eq!(
            stmt.column_names(),
            vec!["package", "cursor", "since", "changes", "bytes"],
            "{t}: SELECT * shows the visible columns"
        );
        drop(stmt);
        let hidden: Vec<(String, i64)> = rows(
            &a,
            &format!("SELECT name, hidden FROM pragma_table_xinfo('{t}') ORDER BY cid"),
        )
        .iter()
        .map(|r| (as_text(&r[0]), as_int(&r[1])))
        .collect();
        let names: Vec<&str> = hidden.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "package",
                "cursor",
                "since",
                "changes",
                "bytes",
                "last_sent",
                "last_retrieved",
                "rewind"
            ]
        );
        assert!(hidden[..5].iter().all(|(_, h)| *h == 0));
        assert!(hidden[5..].iter().all(|(_, h)| *h != 0), "{hidden:?}");
    }
    let r = rows(
        &a,
        "SELECT typeof(package), typeof(cursor), typeof(since), typeof(changes), typeof(bytes),
                typeof(last_sent), typeof(last_retrieved), last_sent, last_retrieved, cursor,
                bytes = length(CAST(package AS BLOB)), package
         FROM o",
    );
    assert_eq!(r.len(), 1);
    let types: Vec<String> = r[0][..7].iter().map(as_text).collect();
    assert_eq!(
        types,
        vec!["blob", "text", "text", "integer", "integer", "text", "text"]
    );
    assert_eq!(as_text(&r[0][7]), "[0,0]");
    assert_eq!(r[0][8], r[0][9], "last_retrieved is the cursor just read");
    assert_eq!(as_int(&r[0][10]), 1, "bytes is the package's size");
    let p = &r[0][11];
    let carried = package_changes(&a, p);
    let all = change_rows(&a);
    assert_eq!(carried.len(), all.len(), "changes is the count");
    assert_eq!(
        int(&a, "SELECT changes FROM o"),
        carried.len() as i64,
        "changes column"
    );
    assert_eq!(
        as_text(&r[0][9]),
        pos_text(all.last().unwrap().pos),
        "cursor: position of the last change covered"
    );
    let j = rows(
        &a,
        "SELECT typeof(package), bytes = length(CAST(package AS BLOB)), json_valid(package) FROM j",
    );
    assert_eq!(as_text(&j[0][0]), "text", "encoding json gives TEXT");
    assert_eq!(as_int(&j[0][1]), 1);
    assert_eq!(as_int(&j[0][2]), 1, "a JSON package is valid JSON");
}

#[test]
fn packages_are_produced_lazily_so_limit_1_builds_one_package() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    add_todos(&a, 1, 40);
    let first = pull(&a, "o", "LIMIT 1");
    assert_eq!(first.len(), 1);
    assert_eq!(
        last_retrieved(&a, "o").as_deref(),
        Some(first[0].cursor.as_str()),
        "only the first package was produced"
    );
    let three = pull(&a, "o", "LIMIT 3");
    assert_eq!(
        last_retrieved(&a, "o").as_deref(),
        Some(three[2].cursor.as_str())
    );
    assert_eq!(pull(&a, "o", "").len(), 40);
}

#[test]
fn each_row_starts_where_the_previous_row_ended_and_together_they_cover_everything() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 4)",
    );
    add_todos(&a, 1, 3);
    exec(
        &a,
        "BEGIN;
         WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 11)
         INSERT INTO notes SELECT x, 'n' FROM n;
         COMMIT;",
    );
    add_notes(&a, 100, 5);
    exec(&a, "UPDATE todos SET title = 'changed' WHERE id = 2");
    exec(&a, "DELETE FROM notes WHERE id = 3");
    let pkgs = pull(&a, "o", "");
    assert_chain(&pkgs, "[0,0]");
    let mut carried = Vec::new();
    for p in &pkgs {
        let cs = package_changes(&a, &p.package);
        assert_eq!(cs.len() as i64, p.changes);
        for ch in cs {
            let pos = (as_int(&ch[5]), as_int(&ch[8]));
            assert!(
                pos > p.since() && pos <= p.cursor(),
                "{pos:?} outside ({}, {}]",
                p.since,
                p.cursor
            );
            carried.push(pos);
        }
    }
    assert_eq!(
        carried,
        positions(&a),
        "every change exactly once, in order"
    );
    assert_eq!(
        pkgs.last().unwrap().cursor(),
        *positions(&a).last().unwrap()
    );
}

#[test]
fn where_cursor_greater_than_starts_after_that_position_comparing_positions_not_text() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    add_todos(&a, 1, 12);
    let all = pull(&a, "o", "");
    assert_eq!(all.len(), 12);
    let k = all.iter().position(|p| p.cursor().0 == 9).unwrap();
    let from = all[k].cursor.clone();
    let got = pull(&a, "o", &format!("WHERE cursor > '{from}'"));
    let summary = |ps: &[Pkg]| -> Vec<(String, String, i64)> {
        ps.iter()
            .map(|p| (p.since.clone(), p.cursor.clone(), p.changes))
            .collect()
    };
    assert_eq!(
        summary(&got),
        summary(&all[k + 1..]),
        "'[10,x]' comes after '[9,x]'"
    );
    assert_eq!(got[0].since, from);
    // Bound as a parameter too.
    let mut stmt = a
        .prepare("SELECT since, cursor FROM o WHERE cursor > ?1")
        .unwrap();
    let n = stmt
        .query_map([&all[2].cursor], |r| r.get::<_, String>(0))
        .unwrap()
        .count();
    assert_eq!(n, 9);
    drop(stmt);
    assert_eq!(last_sent(&a, "o"), "[0,0]", "reading never acknowledges");
    assert_eq!(
        pull(&a, "o", &format!("WHERE cursor > '{}'", all[11].cursor)).len(),
        0
    );
}

#[test]
fn last_retrieved_follows_reads_and_last_sent_moves_only_on_acknowledgement() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    add_todos(&a, 1, 5);
    let p = pull(&a, "o", "LIMIT 3");
    assert_eq!(
        last_retrieved(&a, "o").as_deref(),
        Some(p[2].cursor.as_str())
    );
    assert_eq!(last_sent(&a, "o"), "[0,0]");
    // Reading an earlier package again does not move last_retrieved back.
    let r = rows(&a, "SELECT last_sent, last_retrieved FROM o LIMIT 1");
    assert_eq!(as_text(&r[0][0]), "[0,0]");
    assert_eq!(
        as_text(&r[0][1]),
        p[2].cursor,
        "the largest cursor returned"
    );
    assert_eq!(
        last_retrieved(&a, "o").as_deref(),
        Some(p[2].cursor.as_str())
    );

    ack_ok(&a, "o", &p[1].cursor);
    assert_eq!(last_sent(&a, "o"), p[1].cursor);
    assert_eq!(
        last_retrieved(&a, "o").as_deref(),
        Some(p[2].cursor.as_str())
    );
    let rest = pull(&a, "o", "");
    assert_eq!(
        rest[0].since, p[1].cursor,
        "a plain SELECT starts after last_sent"
    );
    assert_eq!(rest.len(), 3);
    assert_eq!(
        last_retrieved(&a, "o").as_deref(),
        Some(rest[2].cursor.as_str())
    );
    assert_eq!(last_sent(&a, "o"), p[1].cursor);
}

#[test]
fn acknowledgements_are_idempotent_and_order_insensitive() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    add_todos(&a, 1, 4);
    let p = pull(&a, "o", "");
    for (pos, expected) in [
        (&p[2].cursor, &p[2].cursor),
        (&p[0].cursor, &p[2].cursor),
        (&p[2].cursor, &p[2].cursor),
        (&p[1].cursor, &p[2].cursor),
        (&"[0,0]".to_string(), &p[2].cursor),
        (&p[3].cursor, &p[3].cursor),
        (&p[3].cursor, &p[3].cursor),
    ] {
        ack_ok(&a, "o", pos);
        assert_eq!(&last_sent(&a, "o"), expected, "after acknowledging {pos}");
    }
    let a = d.reopen("a", a);
    ack_ok(&a, "o", &p[0].cursor);
    assert_eq!(
        last_sent(&a, "o"),
        p[3].cursor,
        "the maximum, across reopen"
    );
    let r = rows(&a, "SELECT last_sent FROM o");
    assert!(r.is_empty(), "nothing left to send");
}

#[test]
fn acknowledging_beyond_the_newest_db_version_is_an_error() {
    let d = Dir::new();
    let a = d.create("a");
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    add_todos(&a, 1, 3);
    let p = pull(&a, "o", "");
    ack_ok(&a, "o", &p[0].cursor);
    let v = db_version(&a);
    for beyond in [format!("[{},0]", v + 1), format!("[{},5]", v + 100)] {
        let before = dump(&a);
        let e = ack(&a, "o", &beyond).expect_err(&beyond);
        assert!(!e.is_empty());
        assert_eq!(last_sent(&a, "o"), p[0].cursor, "{beyond}: last_sent moved");
        assert_eq!(dump(&a), before);
    }
}

#[test]
fn acknowledging_beyond_the_newest_change_is_an_error() {
    let d = Dir::new();
    let a = d.create("a");
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    add_todos(&a, 1, 3);
    let newest = *positions(&a).last().unwrap();
    let beyond = pos_text((newest.0, newest.1 + 50));
    let e = ack(&a, "o", &beyond);
    assert!(
        e.is_err(),
        "{beyond} is after the newest change {newest:?}, nothing exists there"
    );
    assert_eq!(last_sent(&a, "o"), "[0,0]");
    ack_ok(&a, "o", &pos_text(newest));
    assert_eq!(last_sent(&a, "o"), pos_text(newest));
}

#[test]
fn malformed_acknowledgements_are_errors_that_change_nothing() {
    let d = Dir::new();
    let a = d.create("a");
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    add_todos(&a, 1, 2);
    let before = dump(&a);
    for v in [
        "'abc'",
        "'[1]'",
        "'[-1,0]'",
        "'[1,2,3]'",
        "''",
        "NULL",
        "1",
        "x'5b312c305d'",
        "1.5",
    ] {
        let sql = format!("INSERT INTO o(last_sent) VALUES ({v})");
        let e = error_of(&a, &sql);
        assert!(!e.is_empty(), "{sql}");
        assert_eq!(last_sent(&a, "o"), "[0,0]", "{sql}");
    }
    assert_eq!(dump(&a), before);
}

#[test]
fn an_unacknowledged_package_is_produced_again() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    add_todos(&a, 1, 3);
    let summary = |ps: &[Pkg]| -> Vec<(String, String, i64)> {
        ps.iter()
            .map(|p| (p.since.clone(), p.cursor.clone(), p.changes))
            .collect()
    };
    let first = pull(&a, "o", "");
    assert_eq!(summary(&pull(&a, "o", "")), summary(&first));
    let a = d.reopen("a", a);
    assert_eq!(summary(&pull(&a, "o", "")), summary(&first), "after reopen");
    ack_ok(&a, "o", &first[0].cursor);
    assert_eq!(summary(&pull(&a, "o", "")), summary(&first[1..]));
    // And a receiver can apply the re-produced copy.
    let b = d.create("b");
    exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
    apply_ok(&b, "i", &first[0]);
    for p in pull(&a, "o", "") {
        apply_ok(&b, "i", &p);
    }
    assert_eq!(table_rows(&b, "todos"), table_rows(&a, "todos"));
}

#[test]
fn last_sent_survives_reopen() {
    let d = Dir::new();
    let a = d.create("a");
    add_todos(&a, 1, 4);
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(since = '[1,0]', max_changes = 2)",
    );
    let p = pull(&a, "o", "");
    ack_ok(&a, "o", &p[1].cursor);
    let a = d.reopen("a", a);
    assert_eq!(
        last_sent(&a, "o"),
        p[1].cursor,
        "the stored position, not the since argument"
    );
    assert_eq!(pull(&a, "o", "")[0].since, p[1].cursor);
    let r = rows(&a, "SELECT last_sent FROM o LIMIT 1");
    assert_eq!(as_text(&r[0][0]), p[1].cursor);
}

#[test]
fn acknowledgements_are_part_of_the_callers_transaction() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    add_todos(&a, 1, 3);
    let p = pull(&a, "o", "");
    let before = dump(&a);

    exec(&a, "BEGIN");
    ack_ok(&a, "o", &p[1].cursor);
    exec(&a, "INSERT INTO plain VALUES ('same transaction')");
    assert_eq!(
        last_sent(&a, "o"),
        p[1].cursor,
        "visible inside the transaction"
    );
    exec(&a, "ROLLBACK");
    assert_eq!(last_sent(&a, "o"), "[0,0]");
    assert_eq!(dump(&a), before, "rolled back: no trace");

    exec(&a, "BEGIN; SAVEPOINT s;");
    ack_ok(&a, "o", &p[1].cursor);
    exec(&a, "ROLLBACK TO s; RELEASE s; COMMIT;");
    assert_eq!(last_sent(&a, "o"), "[0,0]");
    assert_eq!(dump(&a), before, "rolled back to a savepoint: no trace");

    exec(&a, "BEGIN");
    ack_ok(&a, "o", &p[0].cursor);
    exec(&a, "INSERT INTO plain VALUES ('same transaction'); COMMIT;");
    let a = d.reopen("a", a);
    assert_eq!(last_sent(&a, "o"), p[0].cursor);
    assert_eq!(int(&a, "SELECT count(*) FROM plain"), 1);
}

// ---------------------------------------------------------------------------
// Whole transactions, limits and split transactions

/// Positions of each db_version in the database.
fn versions(c: &Connection) -> BTreeMap<i64, Vec<Pos>> {
    let mut m: BTreeMap<i64, Vec<Pos>> = BTreeMap::new();
    for p in positions(c) {
        m.entry(p.0).or_default().push(p);
    }
    m
}

/// Assert every non-part package holds whole transactions and ends on one.
fn assert_whole_transactions(c: &Connection, pkgs: &[Pkg]) {
    let vs = versions(c);
    for p in pkgs {
        if is_part(c, p) {
            continue;
        }
        let mut carried: BTreeMap<i64, usize> = BTreeMap::new();
        for ch in package_changes(c, &p.package) {
            *carried.entry(as_int(&ch[5])).or_default() += 1;
        }
        for (v, n) in &carried {
            assert_eq!(
                *n,
                vs[v].len(),
                "package ({}, {}] holds part of db_version {v} without being marked as a part",
                p.since,
                p.cursor
            );
        }
        let last = p.cursor();
        assert_eq!(
            Some(&last),
            vs[&last.0].last(),
            "package ({}, {}] ends inside a transaction",
            p.since,
            p.cursor
        );
    }
}

#[test]
fn packages_hold_whole_transactions_within_max_changes() {
    let d = Dir::new();
    let a = d.create("a");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 5)",
    );
    let mut id = 0;
    for size in [1, 3, 2, 4, 1, 5, 2, 2, 3] {
        let mut sql = String::from("BEGIN;");
        for _ in 0..size {
            id += 1;
            sql.push_str(&format!("INSERT INTO notes VALUES ({id}, 'n');"));
        }
        sql.push_str("COMMIT;");
        exec(&a, &sql);
    }
    let pkgs = pull(&a, "o", "");
    assert_chain(&pkgs, "[0,0]");
    for p in &pkgs {
        assert!(
            p.changes <= 5,
            "({}, {}]: {} changes",
            p.since,
            p.cursor,
            p.changes
        );
        assert!(!is_part(&a, p), "no transaction exceeds the limit");
    }
    assert_whole_transactions(&a, &pkgs);
    assert_eq!(pkgs.iter().map(|p| p.changes).sum::<i64>(), id);
}

#[test]
fn max_bytes_bounds_every_package_but_a_lone_oversized_change_travels_alone() {
    let d = Dir::new();
    let a = d.create("a");
    // Transactions of 1-3 notes of ~600 bytes (text and blob), one
    // oversized single-change transaction, then small ones again.
    let mut id = 0;
    for size in [1, 2, 1, 3, 1, 2] {
        let mut sql = String::from("BEGIN;");
        for k in 0..size {
            id += 1;
            let v = if k % 2 == 0 {
                "printf('%.600c', 'x')"
            } else {
                "randomblob(600)"
            };
            sql.push_str(&format!("INSERT INTO notes VALUES ({id}, {v});"));
        }
        sql.push_str("COMMIT;");
        exec(&a, &sql);
    }
    exec(&a, "INSERT INTO notes VALUES (1000, randomblob(10000))");
    add_notes(&a, 2000, 3);
    for enc in ["binary", "json"] {
        exec(
            &a,
            &format!(
                "CREATE VIRTUAL TABLE o_{enc} USING crsql_OutboundStream(max_bytes = 2000, encoding = '{enc}')"
            ),
        );
        let pkgs = pull(&a, &format!("o_{enc}"), "");
        assert_chain(&pkgs, "[0,0]");
        let mut lone = None;
        for p in &pkgs {
            let carries_the_big_one = package_changes(&a, &p.package)
                .iter()
                .any(|ch| matches!(&ch[3], Value::Blob(v) if v.len() == 10000));
            if p.changes > 1 {
                assert!(
                    p.bytes <= 2000,
                    "{enc}: package ({}, {}] of {} changes has {} bytes > max_bytes 2000",
                    p.since,
                    p.cursor,
                    p.changes,
                    p.bytes
                );
            }
            if carries_the_big_one {
                lone = Some(p.changes);
            }
        }
        assert_eq!(lone, Some(1), "{enc}: the oversized change travels alone");
        assert_whole_transactions(&a, &pkgs);
        let b = d.create(&format!("b_{enc}"));
        exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
        for p in &pkgs {
            apply_ok(&b, "i", p);
        }
        assert_eq!(table_rows(&b, "notes"), table_rows(&a, "notes"), "{enc}");
    }
}

/// Notes 1-2 in two transactions, `n` notes (ids 101..) in one transaction,
/// notes 201-202 in two more. Returns the big transaction's db_version.
fn history_with_a_big_transaction(a: &Connection, n: i64, body: &str) -> i64 {
    add_notes(a, 1, 2);
    exec(
        a,
        &format!(
            "BEGIN;
             WITH RECURSIVE k(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM k WHERE x < {n})
             INSERT INTO notes SELECT 100 + x, {body} FROM k;
             COMMIT;"
        ),
    );
    let big = db_version(a);
    add_notes(a, 201, 2);
    big
}

/// Apply a stream's packages to `b` one by one, checking that nothing of
/// the split transaction `big` is visible before its last part.
fn apply_checking_parts(a: &Connection, pkgs: &[Pkg], b: &Connection, inbound: &str, big: i64) {
    let big_ids: BTreeSet<i64> = rows(a, "SELECT id FROM notes WHERE id > 100 AND id < 200")
        .iter()
        .map(|r| as_int(&r[0]))
        .collect();
    let visible = |b: &Connection| -> usize {
        rows(b, "SELECT id FROM notes")
            .iter()
            .filter(|r| big_ids.contains(&as_int(&r[0])))
            .count()
    };
    let parts: Vec<&Pkg> = pkgs.iter().filter(|p| is_part(a, p)).collect();
    assert!(parts.len() >= 2, "the big transaction is split");
    for p in &parts {
        assert_eq!(p.cursor().0, big, "parts belong to db_version {big}");
    }
    assert_eq!(
        parts.last().unwrap().cursor(),
        *versions(a)[&big].last().unwrap()
    );
    let mut seen_parts = 0;
    for p in pkgs {
        let before_changes = change_rows(b).len();
        apply_ok(b, inbound, p);
        assert_eq!(
            last_applied(b, inbound),
            p.cursor,
            "last_applied moves per part"
        );
        if is_part(a, p) {
            seen_parts += 1;
            if seen_parts < parts.len() {
                assert_eq!(visible(b), 0, "part {seen_parts}: nothing visible yet");
                assert_eq!(
                    change_rows(b).len(),
                    before_changes,
                    "part {seen_parts}: no change rows yet"
                );
            } else {
                assert_eq!(visible(b), big_ids.len(), "last part: all visible");
            }
        }
    }
    assert_eq!(table_rows(b, "notes"), table_rows(a, "notes"));
}

#[test]
fn a_transaction_larger_than_max_changes_is_split_into_marked_parts_applied_together() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    let big = history_with_a_big_transaction(&a, 25, "'n'");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 10)",
    );
    exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
    let pkgs = pull(&a, "o", "");
    assert_chain(&pkgs, "[0,0]");
    for p in &pkgs {
        assert!(p.changes <= 10);
    }
    let parts: Vec<&Pkg> = pkgs.iter().filter(|p| is_part(&a, p)).collect();
    assert_eq!(parts.iter().map(|p| p.changes).sum::<i64>(), 25);
    assert!(parts.len() >= 3);
    assert_whole_transactions(&a, &pkgs);
    apply_checking_parts(&a, &pkgs, &b, "i", big);
}

#[test]
fn a_transaction_larger_than_max_bytes_is_split_too() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    let big = history_with_a_big_transaction(&a, 10, "randomblob(1000)");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_bytes = 3000)",
    );
    exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
    let pkgs = pull(&a, "o", "");
    assert_chain(&pkgs, "[0,0]");
    for p in &pkgs {
        if p.changes > 1 {
            assert!(
                p.bytes <= 3000,
                "({}, {}] has {} bytes",
                p.since,
                p.cursor,
                p.bytes
            );
        }
    }
    let parts: Vec<&Pkg> = pkgs.iter().filter(|p| is_part(&a, p)).collect();
    assert_eq!(parts.iter().map(|p| p.changes).sum::<i64>(), 10);
    apply_checking_parts(&a, &pkgs, &b, "i", big);
}

#[test]
fn staged_parts_survive_reopening_both_sides_between_parts() {
    let d = Dir::new();
    let mut a = d.create("a");
    let mut b = d.create("b");
    history_with_a_big_transaction(&a, 40, "'n'");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 10)",
    );
    exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
    let expected = table_rows(&a, "notes");
    let mut parts_seen = 0;
    while let Some(p) = pull(&a, "o", "LIMIT 1").pop() {
        apply_ok(&b, "i", &p);
        ack_ok(&a, "o", &last_applied(&b, "i"));
        if is_part(&a, &p) {
            parts_seen += 1;
        }
        // Reopen both databases after every package.
        a = d.reopen("a", a);
        b = d.reopen("b", b);
        assert_eq!(last_applied(&b, "i"), p.cursor);
        assert_eq!(last_sent(&a, "o"), p.cursor);
        if parts_seen > 0 && parts_seen < 4 {
            assert_eq!(
                int(
                    &b,
                    "SELECT count(*) FROM notes WHERE id BETWEEN 101 AND 199"
                ),
                0,
                "a staged part is not visible"
            );
        }
    }
    assert_eq!(parts_seen, 4);
    assert_eq!(table_rows(&b, "notes"), expected);
}

#[test]
fn a_duplicate_part_is_a_no_op_and_a_missing_part_is_a_gap() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    history_with_a_big_transaction(&a, 30, "'n'");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 10)",
    );
    exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
    let pkgs = pull(&a, "o", "");
    let first_part = pkgs.iter().position(|p| is_part(&a, p)).unwrap();
    for p in &pkgs[..=first_part] {
        apply_ok(&b, "i", p);
    }
    // Duplicate of the staged part.
    let before = dump(&b);
    apply_ok(&b, "i", &pkgs[first_part]);
    assert_eq!(dump(&b), before, "duplicate part: no-op");
    // Skipping a part is a gap.
    assert_rejected(
        &b,
        "i",
        &pkgs[first_part + 2].package,
        "part after a missing part",
    );
    for p in &pkgs[first_part + 1..] {
        apply_ok(&b, "i", p);
    }
    assert_eq!(table_rows(&b, "notes"), table_rows(&a, "notes"));
}

// ---------------------------------------------------------------------------
// Filters

#[test]
fn filters_skip_changes_but_never_leave_gaps_and_skip_nothing_that_matches() {
    let d = Dir::new();
    let a = d.create("a");
    let c = d.create("c");
    let other = d.create("other");
    let (sa, sc) = (site(&a), site(&c));
    link(&c, &a, "to_a", "from_c", "");
    // Interleave local changes of A with changes merged from C.
    add_todos(&c, 100, 3);
    add_notes(&c, 100, 2);
    sync(&c, "to_a", &a, "from_c");
    add_todos(&a, 1, 3);
    add_notes(&a, 1, 3);
    exec(&a, "UPDATE todos SET title = 'edited' WHERE id = 1");
    exec(&a, "DELETE FROM notes WHERE id = 2");
    add_todos(&c, 200, 2);
    exec(&c, "UPDATE notes SET body = 'c edit' WHERE id = 100");
    sync(&c, "to_a", &a, "from_c");
    add_todos(&a, 10, 2);
    // The history ends with changes every filter but one skips.
    add_notes(&c, 300, 2);
    sync(&c, "to_a", &a, "from_c");

    let cases: Vec<(&str, String, Filter)> = vec![
        (
            "ex",
            format!("exclude_sites = '{sc}'"),
            Box::new(|r: &ChangeRow| r.site != sc),
        ),
        (
            "ex2",
            format!(
                "exclude_sites = '{},{}'",
                sc.to_ascii_lowercase(),
                site(&other)
            ),
            Box::new(|r: &ChangeRow| r.site != sc),
        ),
        (
            "loc",
            "local_only = 1".into(),
            Box::new(|r: &ChangeRow| r.site == sa),
        ),
        (
            "tab",
            "tables = 'todos'".into(),
            Box::new(|r: &ChangeRow| r.table == "todos"),
        ),
        (
            "both",
            "tables = 'notes', local_only = 1".into(),
            Box::new(|r: &ChangeRow| r.table == "notes" && r.site == sa),
        ),
        (
            "self",
            format!("exclude_sites = '{sa}'"),
            Box::new(|r: &ChangeRow| r.site != sa),
        ),
        ("none", "".into(), Box::new(|_: &ChangeRow| true)),
    ];
    for (k, (name, args, keep)) in cases.iter().enumerate() {
        let all = change_rows(&a);
        let sep = if args.is_empty() { "" } else { ", " };
        exec(
            &a,
            &format!(
                "CREATE VIRTUAL TABLE f_{name} USING crsql_OutboundStream({args}{sep}max_changes = 2)"
            ),
        );
        let b = d.create(&format!("b_{name}"));
        exec(
            &b,
            &format!("CREATE VIRTUAL TABLE i USING crsql_InboundStream(from = '{sa}')"),
        );
        let pkgs = pull(&a, &format!("f_{name}"), "");
        assert_chain(&pkgs, "[0,0]");
        for p in &pkgs {
            for ch in package_changes(&a, &p.package) {
                let pos = (as_int(&ch[5]), as_int(&ch[8]));
                let row = all.iter().find(|r| r.pos == pos).unwrap();
                assert!(keep(row), "{name}: the filter let {row:?} through");
            }
            apply(&b, "i", &p.package).unwrap_or_else(|e| {
                panic!("{name}: package ({}, {}] refused: {e}", p.since, p.cursor)
            });
        }
        let expected = contents(all.iter().filter(|r| keep(r)));
        assert_eq!(
            contents(&change_rows(&b)),
            expected,
            "{name}: every matching change arrives, nothing else"
        );
        // After the (possibly filtered) tail, the next package continues
        // where the receiver stands.
        ack_ok(&a, &format!("f_{name}"), &last_applied(&b, "i"));
        let id = 5000 + k;
        exec(&a, &format!("INSERT INTO todos VALUES ({id}, '{name}', 0)"));
        exec(&a, &format!("INSERT INTO notes VALUES ({id}, '{name}')"));
        let next = pull(&a, &format!("f_{name}"), "");
        assert_eq!(next[0].since, last_applied(&b, "i"), "{name}");
        for p in &next {
            apply_ok(&b, "i", p);
        }
        let expected = contents(change_rows(&a).iter().filter(|r| keep(r)));
        assert_eq!(
            contents(&change_rows(&b)),
            expected,
            "{name}: after the tail"
        );
        close(b);
    }
}

// ---------------------------------------------------------------------------
// crsql_InboundStream: applying

/// A with four one-todo transactions and a stream `o` (one transaction per
/// package), B with an inbound stream `i` following it.
fn pair(d: &Dir) -> (Connection, Connection, Vec<Pkg>) {
    let a = d.create("a");
    let b = d.create("b");
    add_todos(&a, 1, 4);
    link(&a, &b, "o", "i", "max_changes = 2");
    let pkgs = pull(&a, "o", "");
    assert_eq!(pkgs.len(), 4);
    (a, b, pkgs)
}

#[test]
fn last_applied_starts_at_since_is_one_row_and_is_durable() {
    let d = Dir::new();
    let b = d.create("b");
    exec(
        &b,
        "CREATE VIRTUAL TABLE i0 USING crsql_InboundStream();
         CREATE VIRTUAL TABLE i1 USING crsql_InboundStream(since = '[7,2]');",
    );
    assert_eq!(last_applied(&b, "i0"), "[0,0]");
    assert_eq!(last_applied(&b, "i1"), "[7,2]");
    assert_eq!(int(&b, "SELECT count(*) FROM i1"), 1);
    let b = d.reopen("b", b);
    assert_eq!(last_applied(&b, "i1"), "[7,2]");
    assert_eq!(stream(&b, "i1").last_applied.as_deref(), Some("[7,2]"));
}

#[test]
fn a_package_is_applied_atomically_with_last_applied_in_the_callers_transaction() {
    let d = Dir::new();
    let (a, b, p) = pair(&d);
    let before = dump(&b);

    exec(&b, "BEGIN");
    apply_ok(&b, "i", &p[0]);
    assert_eq!(last_applied(&b, "i"), p[0].cursor);
    assert_eq!(int(&b, "SELECT count(*) FROM todos"), 1);
    exec(&b, "ROLLBACK");
    assert_eq!(last_applied(&b, "i"), "[0,0]");
    assert_eq!(dump(&b), before, "rolled back: no trace");

    exec(&b, "BEGIN; SAVEPOINT s;");
    apply_ok(&b, "i", &p[0]);
    exec(&b, "ROLLBACK TO s; RELEASE s; COMMIT;");
    assert_eq!(dump(&b), before, "rolled back to a savepoint: no trace");

    apply_ok(&b, "i", &p[0]);
    assert_eq!(last_applied(&b, "i"), p[0].cursor);
    exec(&b, "BEGIN");
    apply_ok(&b, "i", &p[1]);
    apply_ok(&b, "i", &p[2]);
    exec(&b, "COMMIT");
    let b = d.reopen("b", b);
    assert_eq!(last_applied(&b, "i"), p[2].cursor);
    let want: Vec<String> = table_rows(&a, "todos")[..3].to_vec();
    assert_eq!(table_rows(&b, "todos"), want);
}

#[test]
fn a_duplicate_package_is_a_no_op() {
    let d = Dir::new();
    let (a, b, p) = pair(&d);
    apply_ok(&b, "i", &p[0]);
    apply_ok(&b, "i", &p[1]);
    let before = dump(&b);
    for q in [&p[0], &p[1], &p[0], &p[1]] {
        apply_ok(&b, "i", q);
        assert_eq!(dump(&b), before, "duplicate ({}, {}]", q.since, q.cursor);
    }
    let b = d.reopen("b", b);
    apply_ok(&b, "i", &p[1]);
    assert_eq!(dump(&b), before);
    apply_ok(&b, "i", &p[2]);
    apply_ok(&b, "i", &p[3]);
    assert_eq!(table_rows(&b, "todos"), table_rows(&a, "todos"));
}

#[test]
fn an_overlapping_package_is_applied() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    add_todos(&a, 1, 4);
    link(&a, &b, "o", "i", "max_changes = 4");
    // Two transactions per package: P0 = tx1+tx2, P1 = tx3+tx4.
    let p = pull(&a, "o", "");
    assert_eq!(p.len(), 2);
    let end1 = pos_text(versions(&a)[&1].last().copied().unwrap());
    // Q starts inside P0: tx2+tx3.
    let q = pull(&a, "o", &format!("WHERE cursor > '{end1}' LIMIT 1")).remove(0);
    assert_eq!(q.since, end1);
    apply_ok(&b, "i", &p[0]);
    assert!(q.since() < p[0].cursor() && q.cursor() > p[0].cursor());
    apply_ok(&b, "i", &q);
    assert_eq!(last_applied(&b, "i"), q.cursor, "the overlap is applied");
    assert_eq!(int(&b, "SELECT count(*) FROM todos"), 3);
    apply_ok(&b, "i", &p[1]);
    assert_eq!(last_applied(&b, "i"), p[1].cursor);
    assert_eq!(table_rows(&b, "todos"), table_rows(&a, "todos"));
}

#[test]
fn a_gap_is_rejected_naming_the_expected_and_received_positions_and_changes_nothing() {
    let d = Dir::new();
    let (a, b, p) = pair(&d);
    let e = assert_rejected(&b, "i", &p[1].package, "first package after [0,0]");
    assert!(e.contains("[0,0]") && e.contains(&p[1].since), "{e}");
    apply_ok(&b, "i", &p[0]);
    let e = assert_rejected(&b, "i", &p[2].package, "p2 after p0");
    assert!(
        e.contains(&p[0].cursor) && e.contains(&p[2].since),
        "the error must say expected {} and received {}: {e}",
        p[0].cursor,
        p[2].since
    );
    let e = assert_rejected(&b, "i", &p[3].package, "p3 after p0");
    assert!(e.contains(&p[0].cursor) && e.contains(&p[3].since), "{e}");
    for q in &p[1..] {
        apply_ok(&b, "i", q);
    }
    assert_eq!(table_rows(&b, "todos"), table_rows(&a, "todos"));
}

/// Every single-byte corruption of `good`: each byte flipped with several
/// masks, each byte removed, a byte inserted at each offset. Returns the
/// corruptions that were accepted.
fn corruptions_accepted(b: &Connection, inbound: &str, good: &[u8], json: bool) -> Vec<String> {
    let before = dump(b);
    let la = last_applied(b, inbound);
    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..good.len() {
        for mask in [0x01u8, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff] {
            let mut v = good.to_vec();
            v[i] ^= mask;
            variants.push((format!("byte {i} ^ {mask:#04x}"), v));
        }
        let mut v = good.to_vec();
        v.remove(i);
        variants.push((format!("byte {i} removed"), v));
    }
    for i in 0..=good.len() {
        for extra in [0x00u8, b' ', b'0', b'a'] {
            let mut v = good.to_vec();
            v.insert(i, extra);
            variants.push((format!("{extra:#04x} inserted at {i}"), v));
        }
    }
    let mut accepted = Vec::new();
    for (n, (what, bytes)) in variants.into_iter().enumerate() {
        let value = match (json, String::from_utf8(bytes.clone())) {
            (true, Ok(s)) => Value::Text(s),
            _ => Value::Blob(bytes),
        };
        exec(b, "SAVEPOINT corrupt");
        match apply(b, inbound, &value) {
            Ok(()) => accepted.push(what),
            Err(e) => {
                assert!(!e.is_empty());
                assert_eq!(last_applied(b, inbound), la, "{what}");
                if n % 64 == 0 {
                    assert_eq!(dump(b), before, "{what}");
                }
            }
        }
        exec(b, "ROLLBACK TO corrupt; RELEASE corrupt;");
    }
    assert_eq!(dump(b), before);
    accepted
}

#[test]
fn every_flipped_missing_or_extra_byte_of_a_binary_package_is_detected() {
    let d = Dir::new();
    let (_a, b, p) = pair(&d);
    let good = p[0].bytes_of();
    let accepted = corruptions_accepted(&b, "i", &good, false);
    assert!(
        accepted.is_empty(),
        "{} corruptions of a {}-byte package were accepted: {:?}",
        accepted.len(),
        good.len(),
        &accepted[..accepted.len().min(20)]
    );
    apply_ok(&b, "i", &p[0]);
}

#[test]
fn every_flipped_missing_or_extra_byte_of_a_json_package_is_detected() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    add_todos(&a, 1, 2);
    link(&a, &b, "o", "i", "encoding = 'json', max_changes = 2");
    let p = pull(&a, "o", "");
    let good = p[0].bytes_of();
    let accepted = corruptions_accepted(&b, "i", &good, true);
    assert!(
        accepted.is_empty(),
        "{} corruptions of a {}-byte JSON package were accepted, e.g. {:?}; package: {}",
        accepted.len(),
        good.len(),
        &accepted[..accepted.len().min(20)],
        String::from_utf8_lossy(&good)
    );
    apply_ok(&b, "i", &p[0]);
}

#[test]
fn malformed_truncated_and_foreign_packages_are_rejected_without_changes() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    add_todos(&a, 1, 2);
    link(&a, &b, "o", "i", "");
    exec(
        &a,
        "CREATE VIRTUAL TABLE j USING crsql_OutboundStream(encoding = 'json')",
    );
    let bin = pull(&a, "o", "").remove(0).bytes_of();
    let json = String::from_utf8(pull(&a, "j", "").remove(0).bytes_of()).unwrap();

    let mut bad: Vec<(String, Value)> = vec![
        ("NULL".into(), Value::Null),
        ("integer".into(), Value::Integer(42)),
        ("real".into(), Value::Real(4.2)),
        ("empty text".into(), Value::Text(String::new())),
        ("empty blob".into(), Value::Blob(Vec::new())),
        ("text".into(), Value::Text("hello".into())),
        ("zeros".into(), Value::Blob(vec![0; 100])),
        ("magic only".into(), Value::Blob(b"CRSP".to_vec())),
        (
            "sqlite header".into(),
            Value::Blob(b"SQLite format 3\0\x10\x00\x01\x01".to_vec()),
        ),
        ("json object".into(), Value::Text("{}".into())),
        (
            "json shaped".into(),
            Value::Text("{\"body\":{},\"crc\":\"0000000000000000\"}".into()),
        ),
    ];
    // Well-formed envelopes (valid checksums) around foreign content.
    let body = "{\"hello\":\"world\"}";
    bad.push((
        "json envelope, foreign body".into(),
        Value::Text(format!(
            "{{\"body\":{body},\"crc\":\"{:016x}\"}}",
            crc64(body.as_bytes())
        )),
    ));
    let mut v = b"CRSP\x01garbage garbage garbage".to_vec();
    let crc = crc64(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    bad.push(("binary envelope, foreign body".into(), Value::Blob(v)));
    let mut v = bin[..bin.len() - 8].to_vec();
    v[4] = 2;
    let crc = crc64(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    bad.push(("future format version".into(), Value::Blob(v)));
    // Two genuine packages glued together.
    let mut v = bin.clone();
    v.extend_from_slice(json.as_bytes());
    bad.push(("two packages glued".into(), Value::Blob(v)));
    // Every truncation.
    for n in 0..bin.len() {
        bad.push((format!("binary cut to {n}"), Value::Blob(bin[..n].to_vec())));
    }
    for n in 0..json.len() {
        bad.push((
            format!("json cut to {n}"),
            Value::Text(json[..n].to_string()),
        ));
    }
    // Random garbage and random multi-byte damage.
    let mut rng = StdRng::seed_from_u64(7);
    for k in 0..300 {
        let len = rng.gen_range(0..400);
        let g: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        bad.push((format!("random {k}"), Value::Blob(g)));
        let mut g = if k % 2 == 0 {
            bin.clone()
        } else {
            json.as_bytes().to_vec()
        };
        for _ in 0..rng.gen_range(2..6) {
            let i = rng.gen_range(0..g.len());
            g[i] = rng.gen();
        }
        bad.push((format!("damaged {k}"), Value::Blob(g)));
    }
    for (what, v) in &bad {
        assert_rejected(&b, "i", v, what);
        // The inspection helpers reject it too, without crashing.
        let info: rusqlite::Result<String> =
            b.query_row("SELECT crsql_package_info(?1)", [v], |r| r.get(0));
        assert!(info.is_err(), "crsql_package_info accepted {what}");
        let n: rusqlite::Result<i64> =
            b.query_row("SELECT count(*) FROM crsql_package_changes(?1)", [v], |r| {
                r.get(0)
            });
        assert!(n.is_err(), "crsql_package_changes accepted {what}");
    }
    apply(&b, "i", &Value::Blob(bin)).expect("the genuine package still applies");
}

#[test]
fn a_package_from_another_sender_than_from_is_rejected() {
    let d = Dir::new();
    let a = d.create("a");
    let c = d.create("c");
    let b = d.create("b");
    add_todos(&a, 1, 2);
    add_todos(&c, 100, 2);
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    exec(&c, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    exec(
        &b,
        &format!(
            "CREATE VIRTUAL TABLE i USING crsql_InboundStream(from = '{}')",
            site(&c).to_ascii_lowercase()
        ),
    );
    let pa = pull(&a, "o", "");
    let pc = pull(&c, "o", "");
    assert_rejected(&b, "i", &pa[0].package, "package from A on a stream from C");
    apply_ok(&b, "i", &pc[0]);
    assert_rejected(&b, "i", &pa[0].package, "package from A after C's");
    // A package this database produced itself is from another sender too.
    exec(&b, "INSERT INTO todos VALUES (900, 'b', 0)");
    exec(&b, "CREATE VIRTUAL TABLE ob USING crsql_OutboundStream()");
    let pb = pull(&b, "ob", "");
    assert_rejected(&b, "i", &pb[0].package, "package from B itself");
}

#[test]
fn the_first_package_pins_the_sender_and_the_stream() {
    let d = Dir::new();
    let a = d.create("a");
    let c = d.create("c");
    let b = d.create("b");
    add_todos(&a, 1, 2);
    add_todos(&c, 100, 5);
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    exec(
        &c,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
    let pa = pull(&a, "o", "");
    let pc = pull(&c, "o", "");
    apply_ok(&b, "i", &pa[0]);
    assert_eq!(stream(&b, "i").peer.as_deref(), Some(site(&a).as_str()));
    // C's second package would continue the chain position-wise.
    assert_eq!(pc[1].since, pa[0].cursor);
    assert_rejected(&b, "i", &pc[1].package, "package from C after A's");
    let b = d.reopen("b", b);
    assert_rejected(&b, "i", &pc[1].package, "package from C after reopen");
    apply_ok(&b, "i", &pa[1]);
}

#[test]
fn a_package_touching_a_table_outside_the_allow_list_is_rejected() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    add_todos(&a, 1, 1);
    exec(
        &a,
        "BEGIN; INSERT INTO todos VALUES (2, 'x', 0); INSERT INTO notes VALUES (2, 'x'); COMMIT;",
    );
    add_todos(&a, 3, 1);
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 3)",
    );
    exec(
        &b,
        "CREATE VIRTUAL TABLE i USING crsql_InboundStream(tables = 'todos')",
    );
    let p = pull(&a, "o", "");
    assert_eq!(p.len(), 3);
    apply_ok(&b, "i", &p[0]);
    let e = assert_rejected(&b, "i", &p[1].package, "package touching notes");
    assert!(e.contains("notes"), "{e}");
    // Nothing of that package, not even its todos change, was applied.
    assert_eq!(int(&b, "SELECT count(*) FROM todos"), 1);
}

#[test]
fn a_package_touching_a_table_the_receiver_lacks_applies_the_rest_and_its_changes_wait() {
    let d = Dir::new();
    let a = d.create("a");
    add_todos(&a, 1, 1);
    exec(
        &a,
        "BEGIN; INSERT INTO todos VALUES (2, 'x', 0); INSERT INTO notes VALUES (2, 'x'); COMMIT;",
    );
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 3)",
    );
    let p = pull(&a, "o", "");
    assert_eq!(p.len(), 2);
    for (name, schema) in [
        (
            "missing",
            "CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, score);
             SELECT crsql_as_crr('todos');",
        ),
        (
            "not_a_crr",
            "CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, score);
             SELECT crsql_as_crr('todos');
             CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body);",
        ),
    ] {
        let b = d.open(name);
        exec(&b, schema);
        exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
        apply_ok(&b, "i", &p[0]);
        apply_ok(&b, "i", &p[1]);
        assert_eq!(int(&b, "SELECT count(*) FROM todos"), 2, "{name}");
        assert_eq!(
            int(
                &b,
                "SELECT count(*) FROM crsql_pending_changes WHERE \"table\" = 'notes'"
            ),
            1,
            "{name}: the notes change waits"
        );
        assert_eq!(last_applied(&b, "i"), p[1].cursor, "{name}");
    }
}

#[test]
fn other_columns_apply_and_another_primary_key_is_rejected_naming_the_table() {
    let d = Dir::new();
    let a = d.create("a");
    add_todos(&a, 1, 1);
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    let p = pull(&a, "o", "");
    for (name, ddl) in [
        ("extra", "CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, score, extra)"),
        ("renamed", "CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, name TEXT, score)"),
        ("fewer", "CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT)"),
        ("other_pk", "CREATE TABLE todos(key INTEGER PRIMARY KEY NOT NULL, title TEXT, score)"),
        (
            "two_pks",
            "CREATE TABLE todos(id INTEGER NOT NULL, title TEXT NOT NULL, score, PRIMARY KEY (id, title))",
        ),
    ] {
        let b = d.open(name);
        exec(&b, &format!("{ddl}; SELECT crsql_as_crr('todos');"));
        exec(&b, "CREATE VIRTUAL TABLE i USING crsql_InboundStream()");
        if name.contains("pk") {
            let e = assert_rejected(&b, "i", &p[0].package, name);
            assert!(
                e.contains("todos") && e.contains("primary key"),
                "{name}: the message must name the table: {e}"
            );
        } else {
            // Columns we lack wait; the others apply.
            apply_ok(&b, "i", &p[0]);
            assert_eq!(int(&b, "SELECT count(*) FROM todos"), 1, "{name}");
        }
    }
}

/// Decode a binary package, let `f` alter it, re-encode it with a valid
/// checksum: well-formed packages with wrong content.
fn crafted(p: &Pkg, f: impl FnOnce(&mut Package)) -> Value {
    let bytes = p.bytes_of();
    let mut pkg = Package::decode(&bytes).expect("decode");
    f(&mut pkg);
    Value::Blob(pkg.encode(Encoding::Binary).expect("encode"))
}

#[test]
fn a_package_naming_a_column_the_receiver_lacks_is_rejected_and_changes_nothing() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    add_todos(&a, 1, 1);
    link(&a, &b, "o", "i", "");
    let p = pull(&a, "o", "");
    // todos' second column renamed in the package's dictionary; the first
    // change (title) is fine, the second (score -> ghost) is not.
    let v = crafted(&p[0], |pkg| {
        let t = &mut pkg.tables[0];
        assert_eq!(t.columns, vec!["title", "score"]);
        t.columns[1] = "ghost".into();
    });
    let e = assert_rejected(&b, "i", &v, "column ghost, autocommit");
    assert!(e.contains("ghost"), "{e}");
    exec(&b, "BEGIN");
    let before = dump(&b);
    let e = apply(&b, "i", &v).expect_err("column ghost");
    assert!(e.contains("ghost"), "{e}");
    assert_eq!(dump(&b), before, "inside a transaction: nothing applied");
    exec(&b, "COMMIT");
    apply_ok(&b, "i", &p[0]);
}

#[test]
fn a_package_that_fails_midway_leaves_nothing_applied() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.open("b");
    // Same names as A (the schemas match) but a CHECK the second row breaks.
    exec(
        &b,
        "CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, score CHECK (score < 100));
         SELECT crsql_as_crr('todos');
         CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body);
         SELECT crsql_as_crr('notes');",
    );
    exec(
        &a,
        "BEGIN; INSERT INTO todos VALUES (1, 'fine', 1); INSERT INTO notes VALUES (1, 'fine');
         INSERT INTO todos VALUES (2, 'too big', 500); COMMIT;",
    );
    link(&a, &b, "o", "i", "");
    let p = pull(&a, "o", "");
    assert_eq!(p.len(), 1);
    assert_rejected(&b, "i", &p[0].package, "CHECK failure, autocommit");
    exec(&b, "BEGIN");
    let before = dump(&b);
    assert!(apply(&b, "i", &p[0].package).is_err());
    assert_eq!(
        dump(&b),
        before,
        "inside a transaction: the rows merged before the failing one must not stay"
    );
    exec(&b, "COMMIT");
    assert_eq!(int(&b, "SELECT count(*) FROM todos"), 0);
    assert_eq!(int(&b, "SELECT count(*) FROM notes"), 0);

    // A corrupt primary key in the last change, behind a valid checksum.
    let c = d.create("c");
    exec(
        &c,
        &format!(
            "CREATE VIRTUAL TABLE i USING crsql_InboundStream(from = '{}')",
            site(&a)
        ),
    );
    let v = crafted(&p[0], |pkg| {
        let last = pkg.changes.len() - 1;
        pkg.changes[last].pk = Bytes::from(vec![0xff, 0x13, 0x00]);
    });
    assert_rejected(&c, "i", &v, "corrupt pk, autocommit");
    exec(&c, "BEGIN");
    let before = dump(&c);
    assert!(apply(&c, "i", &v).is_err());
    assert_eq!(dump(&c), before, "corrupt pk inside a transaction");
    exec(&c, "COMMIT");
}

// ---------------------------------------------------------------------------
// Origins and relays

#[test]
fn merged_changes_keep_their_origin_and_a_relay_never_echoes_them_back() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    let c = d.create("c");
    let (sa, sb) = (site(&a), site(&b));
    link(&a, &b, "to_b", "from_a", "max_changes = 3");
    link(&b, &a, "to_a", "from_b", "max_changes = 3");
    link(&b, &c, "to_c", "from_b", "max_changes = 3");
    add_todos(&a, 1, 3);
    exec(&a, "UPDATE todos SET title = 'a edit' WHERE id = 1");
    add_notes(&b, 50, 2);
    sync(&a, "to_b", &b, "from_a");
    add_todos(&b, 60, 1);

    // B keeps A's site id on the merged changes.
    let at_b = change_rows(&b);
    let from_a: Vec<&ChangeRow> = at_b
        .iter()
        .filter(|r| r.table == "todos" && r.pk.ends_with("01"))
        .collect();
    assert!(!from_a.is_empty());
    for r in &from_a {
        assert_eq!(r.site, sa, "{r:?}");
    }
    assert_eq!(
        contents(at_b.iter().filter(|r| r.site == sa)),
        contents(&change_rows(&a)),
        "every change of A at B, with A's site id"
    );

    // B's stream back to A carries none of A's changes.
    let back = pull(&b, "to_a", "");
    assert_chain(&back, "[0,0]");
    for p in &back {
        for ch in package_changes(&b, &p.package) {
            let origin = match &ch[6] {
                Value::Blob(s) => hex(s),
                other => panic!("{other:?}"),
            };
            assert_ne!(origin, sa, "B echoed a change of A back to A");
        }
    }
    let before_a = change_rows(&a);
    sync(&b, "to_a", &a, "from_b");
    let after_a = change_rows(&a);
    assert_eq!(
        contents(after_a.iter().filter(|r| r.site == sa)),
        contents(&before_a),
        "A's own changes are untouched"
    );
    assert_eq!(
        contents(after_a.iter().filter(|r| r.site == sb)),
        contents(change_rows(&b).iter().filter(|r| r.site == sb))
    );

    // Relayed to C, A's changes still carry A's site id.
    sync(&b, "to_c", &c, "from_b");
    assert_eq!(contents(&change_rows(&c)), contents(&change_rows(&b)));
    for t in ["todos", "notes"] {
        assert_eq!(table_rows(&c, t), table_rows(&a, t), "{t}");
        assert_eq!(table_rows(&b, t), table_rows(&a, t), "{t}");
    }
    // A's next round from B brings nothing of its own.
    exec(&a, "UPDATE todos SET score = 99 WHERE id = 2");
    sync(&a, "to_b", &b, "from_a");
    for p in pull(&b, "to_a", "") {
        for ch in package_changes(&b, &p.package) {
            assert_ne!(
                ch[6],
                Value::Blob(hex_bytes(&sa)),
                "echo after a second round"
            );
        }
    }
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// Encodings

const VALS: &str = "CREATE TABLE vals(id INTEGER PRIMARY KEY NOT NULL, v);
                    SELECT crsql_as_crr('vals');";

fn tricky_values() -> Vec<Value> {
    vec![
        Value::Real(2.0),
        Value::Real(-0.5),
        Value::Real(0.1),
        Value::Real(1e300),
        Value::Real(-1.5e-300),
        Value::Real(5e-324),
        Value::Real(f64::INFINITY),
        Value::Real(f64::NEG_INFINITY),
        Value::Real(9007199254740993.0),
        Value::Real(1e16),
        Value::Integer(i64::MAX),
        Value::Integer(i64::MIN),
        Value::Integer(9007199254740993),
        Value::Integer(0),
        Value::Integer(-1),
        Value::Blob(Vec::new()),
        Value::Blob((0..=255).collect()),
        Value::Blob(b"{\"not\":\"json\"}".to_vec()),
        Value::Text(String::new()),
        Value::Text("héllo \"quoted\" \\ back\nslash \u{1F600} \u{0}nul".into()),
        Value::Text("2.0".into()),
        Value::Text("00ff".into()),
        Value::Null,
    ]
}

#[test]
fn both_encodings_keep_every_value_exactly_and_json_packages_apply() {
    let d = Dir::new();
    let a = d.create("a");
    exec(&a, VALS);
    for (i, v) in tricky_values().iter().enumerate() {
        a.execute("INSERT INTO vals VALUES (?1, ?2)", params![i as i64, v])
            .unwrap();
    }
    // The source holds exactly what was written.
    let src: Vec<Value> = rows(&a, "SELECT v FROM vals ORDER BY id")
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect();
    assert_eq!(
        src.iter().map(exact).collect::<Vec<_>>(),
        tricky_values().iter().map(exact).collect::<Vec<_>>()
    );
    for enc in ["json", "binary"] {
        let b = d.create(&format!("b_{enc}"));
        exec(&b, VALS);
        link(
            &a,
            &b,
            &format!("o_{enc}"),
            "i",
            &format!("encoding = '{enc}', max_changes = 5"),
        );
        let pkgs = pull(&a, &format!("o_{enc}"), "");
        for p in &pkgs {
            match enc {
                "json" => {
                    assert!(matches!(p.package, Value::Text(_)), "json: TEXT");
                    let ok: i64 = a
                        .query_row("SELECT json_valid(?1)", [&p.package], |r| r.get(0))
                        .unwrap();
                    assert_eq!(ok, 1, "a JSON package is valid JSON");
                }
                _ => assert!(matches!(p.package, Value::Blob(_)), "binary: BLOB"),
            }
            apply_ok(&b, "i", p);
        }
        assert_eq!(
            table_rows(&b, "vals"),
            table_rows(&a, "vals"),
            "{enc}: storage class and bits kept"
        );
        assert_eq!(text(&b, "SELECT typeof(v) FROM vals WHERE id = 0"), "real");
        assert_eq!(
            int(&b, "SELECT v FROM vals WHERE id = 10"),
            i64::MAX,
            "{enc}"
        );
        assert_eq!(int(&b, "SELECT v FROM vals WHERE id = 11"), i64::MIN);
        // crsql_changes shows the same values with their types.
        let vals_at = |c: &Connection| -> Content {
            contents(change_rows(c).iter().filter(|r| r.table == "vals"))
        };
        assert_eq!(vals_at(&b), vals_at(&a), "{enc}");
        close(b);
    }
}

#[test]
fn json_packages_carry_tricky_primary_keys_and_split_parts() {
    let d = Dir::new();
    let a = d.open("a");
    let b = d.open("b");
    let ddl =
        "CREATE TABLE k(a NOT NULL, b NOT NULL, v, PRIMARY KEY (a, b)); SELECT crsql_as_crr('k');";
    exec(&a, ddl);
    exec(&b, ddl);
    exec(&a, "BEGIN");
    for (i, v) in tricky_values().iter().enumerate() {
        if *v == Value::Null {
            continue;
        }
        a.execute("INSERT INTO k VALUES (?1, ?2, ?3)", params![v, i as i64, v])
            .unwrap();
    }
    exec(&a, "COMMIT");
    link(&a, &b, "o", "i", "encoding = 'json', max_changes = 4");
    let pkgs = pull(&a, "o", "");
    assert!(pkgs.iter().filter(|p| is_part(&a, p)).count() > 1);
    for p in &pkgs {
        apply_ok(&b, "i", p);
    }
    assert_eq!(table_rows(&b, "k"), table_rows(&a, "k"));
}

// ---------------------------------------------------------------------------
// Observability and inspection

#[test]
fn crsql_streams_lists_every_stream_with_direction_peer_positions_and_lag() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    let c = d.create("c");
    let (sb, sc) = (site(&b), site(&c));
    assert!(streams(&a).is_empty(), "no streams yet");
    exec(
        &a,
        &format!(
            "CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream(exclude_sites = '{sb}', max_changes = 2);
             CREATE VIRTUAL TABLE to_all USING crsql_OutboundStream();
             CREATE VIRTUAL TABLE from_b USING crsql_InboundStream(from = '{sb}');
             CREATE VIRTUAL TABLE from_c USING crsql_InboundStream(since = '[0,0]');"
        ),
    );
    let s = streams(&a);
    assert_eq!(
        s.keys().cloned().collect::<Vec<_>>(),
        vec!["from_b", "from_c", "to_all", "to_b"]
    );
    assert_eq!(s["to_b"].direction, "outbound");
    assert_eq!(s["to_all"].direction, "outbound");
    assert_eq!(s["from_b"].direction, "inbound");
    assert_eq!(s["from_c"].direction, "inbound");
    assert_eq!(s["to_b"].peer.as_deref(), Some(sb.as_str()));
    assert_eq!(s["from_b"].peer.as_deref(), Some(sb.as_str()));
    assert_eq!(s["to_b"].last_sent.as_deref(), Some("[0,0]"));
    assert_eq!(s["from_b"].last_applied.as_deref(), Some("[0,0]"));
    assert_eq!(s["to_b"].lag_versions, Some(0));

    add_todos(&a, 1, 4);
    let v = db_version(&a);
    let s = stream(&a, "to_b");
    assert_eq!(
        s.lag_versions,
        Some(v),
        "nothing acknowledged: lag = db_version"
    );
    let p = pull(&a, "to_b", "LIMIT 3");
    ack_ok(&a, "to_b", &p[0].cursor);
    let s = stream(&a, "to_b");
    assert_eq!(s.last_sent.as_deref(), Some(p[0].cursor.as_str()));
    assert_eq!(s.last_retrieved.as_deref(), Some(p[2].cursor.as_str()));
    assert_eq!(s.lag_versions, Some(v - p[0].cursor().0));
    assert_eq!(stream(&a, "to_all").lag_versions, Some(v));

    // Inbound positions, and the pinned peer once a package arrived.
    add_todos(&c, 100, 2);
    exec(&c, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    let pc = pull(&c, "o", "");
    apply_ok(&a, "from_c", &pc[0]);
    let s = stream(&a, "from_c");
    assert_eq!(s.last_applied.as_deref(), Some(pc[0].cursor.as_str()));
    assert_eq!(s.peer.as_deref(), Some(sc.as_str()));
    // Merging moved A's db_version; the lag follows it.
    let v2 = db_version(&a);
    assert!(v2 > v);
    assert_eq!(stream(&a, "to_b").lag_versions, Some(v2 - p[0].cursor().0));

    // Durable across reopen (last_retrieved aside, which the contract does
    // not call durable).
    let before: BTreeMap<String, StreamRow> = streams(&a)
        .into_iter()
        .map(|(k, mut r)| {
            r.last_retrieved = None;
            (k, r)
        })
        .collect();
    let a = d.reopen("a", a);
    let after: BTreeMap<String, StreamRow> = streams(&a)
        .into_iter()
        .map(|(k, mut r)| {
            r.last_retrieved = None;
            (k, r)
        })
        .collect();
    assert_eq!(after, before);
}

#[test]
fn crsql_package_info_describes_a_package() {
    let d = Dir::new();
    let a = d.create("a");
    add_todos(&a, 1, 2);
    add_notes(&a, 1, 1);
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2);
         CREATE VIRTUAL TABLE j USING crsql_OutboundStream(max_changes = 2, encoding = 'json');",
    );
    for s in ["o", "j"] {
        for p in pull(&a, s, "") {
            let i = info(&a, &p.package);
            assert_eq!(
                i["sender"].as_str().map(str::to_ascii_uppercase),
                Some(site(&a)),
                "{i}"
            );
            assert_eq!(i["since"], serde_json::json!(p.since()), "{i}");
            assert_eq!(i["cursor"], serde_json::json!(p.cursor()), "{i}");
            assert_eq!(i["changes"], serde_json::json!(p.changes), "{i}");
            assert_eq!(i["stream"], serde_json::json!(s), "{i}");
        }
    }
}

#[test]
fn crsql_package_changes_lists_the_changes_and_feeds_crsql_changes_of_a_third_database() {
    let d = Dir::new();
    let a = d.create("a");
    let c = d.create("c");
    let third = d.create("third");
    add_todos(&c, 100, 1);
    link(&c, &a, "to_a", "from_c", "");
    sync(&c, "to_a", &a, "from_c");
    add_todos(&a, 1, 3);
    add_notes(&a, 1, 2);
    exec(&a, "DELETE FROM todos WHERE id = 2");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 3);
         CREATE VIRTUAL TABLE j USING crsql_OutboundStream(max_changes = 3, encoding = 'json');",
    );
    let all = rows(
        &a,
        "SELECT [table], pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes",
    );
    for s in ["o", "j"] {
        let mut listed = Vec::new();
        for p in pull(&a, s, "") {
            let cs = package_changes(&a, &p.package);
            assert_eq!(cs.len() as i64, p.changes);
            listed.extend(cs);
        }
        assert_eq!(
            listed.iter().map(|r| exact_row(r)).collect::<Vec<_>>(),
            all.iter().map(|r| exact_row(r)).collect::<Vec<_>>(),
            "{s}: exactly the rows of crsql_changes"
        );
    }
    let stmt_sql = "INSERT INTO crsql_changes SELECT * FROM crsql_package_changes(?1)";
    for p in pull(&a, "o", "") {
        third.execute(stmt_sql, [&p.package]).unwrap();
    }
    for t in ["todos", "notes"] {
        assert_eq!(table_rows(&third, t), table_rows(&a, t), "{t}");
    }
    assert_eq!(
        contents(&change_rows(&third)),
        contents(&change_rows(&a)),
        "origin site ids kept"
    );
}

#[test]
fn drop_table_removes_a_streams_state() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    history_with_a_big_transaction(&a, 30, "'n'");
    link(&a, &b, "o", "i", "max_changes = 10");
    let p = pull(&a, "o", "");
    let first_part = p.iter().position(|q| is_part(&a, q)).unwrap();
    for q in &p[..=first_part] {
        apply_ok(&b, "i", q);
    }
    ack_ok(&a, "o", &p[first_part].cursor);

    exec(&a, "DROP TABLE o");
    exec(&b, "DROP TABLE i");
    assert!(!streams(&a).contains_key("o"));
    assert!(!streams(&b).contains_key("i"));
    let a = d.reopen("a", a);
    let b = d.reopen("b", b);
    assert!(!streams(&a).contains_key("o"));
    assert!(!streams(&b).contains_key("i"));

    // Re-created: a fresh outbound stream from [0,0] with a new identity.
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 10)",
    );
    assert_eq!(last_sent(&a, "o"), "[0,0]");
    assert_eq!(pull(&a, "o", "")[0].since, "[0,0]");
    // Re-created inbound: the staged first part is gone, so the later parts
    // of the split transaction are refused (merged alone, they would lose
    // the first part for good), and nothing of the dropped staging comes
    // back.
    exec(
        &b,
        &format!(
            "CREATE VIRTUAL TABLE i USING crsql_InboundStream(since = '{}')",
            p[first_part].cursor
        ),
    );
    assert_eq!(last_applied(&b, "i"), p[first_part].cursor);
    let staged_ids: BTreeSet<i64> = package_changes(&a, &p[first_part].package)
        .iter()
        .map(|ch| {
            i64::from(*match &ch[1] {
                Value::Blob(k) => k.last().unwrap(),
                other => panic!("{other:?}"),
            })
        })
        .collect();
    let before = rows(&b, "SELECT count(*) FROM notes");
    let e = apply(&b, "i", &p[first_part + 1].package).unwrap_err();
    assert!(e.contains("none of its earlier parts"), "{e}");
    assert_eq!(rows(&b, "SELECT count(*) FROM notes"), before);
    assert_eq!(last_applied(&b, "i"), p[first_part].cursor);
    let notes: BTreeSet<i64> = rows(&b, "SELECT id FROM notes")
        .iter()
        .map(|r| as_int(&r[0]))
        .collect();
    for id in staged_ids {
        assert!(
            !notes.contains(&id),
            "note {id} came from a dropped stream's staging"
        );
    }
}

// ---------------------------------------------------------------------------
// Crashes: a child process runs a script against a database file and
// aborts (no close, no rollback, no cleanup) at the end of it.

const CHILD_SCRIPT: &str = "CRSQL_STREAMS_TEST_CRASH_SCRIPT";
const CHILD_TEST: &str = "crash_helper_does_nothing_unless_spawned_by_a_crash_test";

/// Not a test of its own: the body of the child process of the crash tests.
/// Script lines: `open<TAB>path`, `exec<TAB>sql`, `apply<TAB>inbound<TAB>file`.
#[test]
fn crash_helper_does_nothing_unless_spawned_by_a_crash_test() {
    let Ok(script) = std::env::var(CHILD_SCRIPT) else {
        return;
    };
    let script = std::fs::read_to_string(&script).expect("script");
    let mut conn: Option<Connection> = None;
    let mut marker = None;
    for line in script.lines() {
        let parts: Vec<&str> = line.split('\t').collect();
        match parts[0] {
            "open" => conn = Some(open(Path::new(parts[1]))),
            "exec" => exec(conn.as_ref().unwrap(), parts[1]),
            "apply" => {
                let bytes = std::fs::read(parts[2]).unwrap();
                apply(conn.as_ref().unwrap(), parts[1], &Value::Blob(bytes)).unwrap();
            }
            "marker" => marker = Some(parts[1].to_string()),
            other => panic!("bad script line {other}"),
        }
    }
    std::fs::write(marker.expect("marker"), b"reached").unwrap();
    std::process::abort();
}

/// Run `lines` in a child process that then aborts.
fn crash_child(dir: &Dir, lines: &[String]) {
    let marker = dir.tmp.path().join("crash-point-reached");
    let _ = std::fs::remove_file(&marker);
    let script = dir.tmp.path().join("crash-script");
    let mut text = lines.join("\n");
    text.push_str(&format!("\nmarker\t{}\n", marker.display()));
    std::fs::write(&script, text).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--test-threads", "1", "--nocapture"])
        .env(CHILD_SCRIPT, &script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn the crash child");
    assert!(
        marker.exists(),
        "the child failed before its crash point: {status:?}"
    );
    assert!(!status.success(), "the child must have aborted");
}

fn save_package(dir: &Dir, name: &str, p: &Pkg) -> String {
    let path = dir.tmp.path().join(name);
    std::fs::write(&path, p.bytes_of()).unwrap();
    path.display().to_string()
}

#[test]
fn a_crash_mid_transaction_leaves_data_and_positions_consistent_and_resuming_loses_nothing() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    add_todos(&a, 1, 6);
    link(&a, &b, "o", "i", "max_changes = 2");
    let p = pull(&a, "o", "");
    assert_eq!(p.len(), 6);
    let files: Vec<String> = p
        .iter()
        .enumerate()
        .map(|(k, q)| save_package(&d, &format!("p{k}"), q))
        .collect();
    close(b);
    crash_child(
        &d,
        &[
            format!("open\t{}", d.path("b").display()),
            format!("apply\ti\t{}", files[0]),
            format!("apply\ti\t{}", files[1]),
            "exec\tBEGIN".into(),
            format!("apply\ti\t{}", files[2]),
            format!("apply\ti\t{}", files[3]),
        ],
    );
    let b = d.open("b");
    assert_eq!(text(&b, "PRAGMA integrity_check"), "ok");
    assert_eq!(
        last_applied(&b, "i"),
        p[1].cursor,
        "the committed packages only"
    );
    assert_eq!(
        table_rows(&b, "todos"),
        table_rows(&a, "todos")[..2].to_vec(),
        "data matches last_applied"
    );
    // Resume: the sender learns last_applied and continues from there.
    ack_ok(&a, "o", &last_applied(&b, "i"));
    sync(&a, "o", &b, "i");
    assert_eq!(table_rows(&b, "todos"), table_rows(&a, "todos"));
}

#[test]
fn an_acknowledgement_survives_a_crash_and_an_uncommitted_one_leaves_no_trace() {
    let d = Dir::new();
    let a = d.create("a");
    add_todos(&a, 1, 4);
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    let p = pull(&a, "o", "");
    close(a);
    crash_child(
        &d,
        &[
            format!("open\t{}", d.path("a").display()),
            format!("exec\tINSERT INTO o(last_sent) VALUES ('{}')", p[1].cursor),
            "exec\tBEGIN".into(),
            format!("exec\tINSERT INTO o(last_sent) VALUES ('{}')", p[3].cursor),
        ],
    );
    let a = d.open("a");
    assert_eq!(last_sent(&a, "o"), p[1].cursor);
    assert_eq!(pull(&a, "o", "")[0].since, p[1].cursor);
}

#[test]
fn a_crash_between_parts_keeps_the_staged_parts_and_resuming_completes_the_transaction() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    history_with_a_big_transaction(&a, 40, "'n'");
    link(&a, &b, "o", "i", "max_changes = 10");
    let p = pull(&a, "o", "");
    let parts: Vec<usize> = (0..p.len()).filter(|k| is_part(&a, &p[*k])).collect();
    assert_eq!(parts.len(), 4);
    // Up to and including the second part, committed; the third part in an
    // open transaction when the process dies.
    let mut lines = vec![format!("open\t{}", d.path("b").display())];
    for (k, q) in p.iter().enumerate().take(parts[1] + 1) {
        lines.push(format!(
            "apply\ti\t{}",
            save_package(&d, &format!("p{k}"), q)
        ));
    }
    lines.push("exec\tBEGIN".into());
    lines.push(format!(
        "apply\ti\t{}",
        save_package(&d, "third", &p[parts[2]])
    ));
    close(b);
    crash_child(&d, &lines);

    let b = d.open("b");
    assert_eq!(text(&b, "PRAGMA integrity_check"), "ok");
    assert_eq!(last_applied(&b, "i"), p[parts[1]].cursor);
    assert_eq!(
        int(
            &b,
            "SELECT count(*) FROM notes WHERE id BETWEEN 101 AND 199"
        ),
        0,
        "staged parts stay invisible"
    );
    // The sender resumes inside the split transaction.
    ack_ok(&a, "o", &last_applied(&b, "i"));
    let rest = pull(&a, "o", "");
    assert_eq!(rest[0].since, p[parts[1]].cursor);
    for q in &rest {
        apply_ok(&b, "i", q);
    }
    assert_eq!(table_rows(&b, "notes"), table_rows(&a, "notes"));
}

// ---------------------------------------------------------------------------
// Guarantees: convergence and bounded cost

/// Sites linked by streams along `edges` (both directions), random local
/// writes, deliveries delayed, duplicated and reordered, acknowledgements
/// delayed and reordered, reopens; then drain and compare.
fn converge(topology: &str, n: usize, edges: &[(usize, usize)], seed: u64) {
    let d = Dir::new();
    let names: Vec<String> = (0..n).map(|k| format!("{topology}{k}")).collect();
    let mut conns: Vec<Option<Connection>> = names.iter().map(|s| Some(d.create(s))).collect();
    let sites: Vec<String> = conns.iter().map(|c| site(c.as_ref().unwrap())).collect();
    let mut links = Vec::new();
    for &(x, y) in edges {
        for (from, to) in [(x, y), (y, x)] {
            let out = format!("to_{to}");
            let inb = format!("from_{from}");
            exec(
                conns[from].as_ref().unwrap(),
                &format!(
                    "CREATE VIRTUAL TABLE {out} USING crsql_OutboundStream(exclude_sites = '{}', max_changes = 3)",
                    sites[to]
                ),
            );
            exec(
                conns[to].as_ref().unwrap(),
                &format!(
                    "CREATE VIRTUAL TABLE {inb} USING crsql_InboundStream(from = '{}')",
                    sites[from]
                ),
            );
            links.push((from, to, out, inb));
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut in_flight: Vec<(usize, Value, Pos, Pos)> = Vec::new();
    let mut acks: Vec<(usize, String)> = Vec::new();
    let (mut gaps, mut duplicates, mut applied) = (0, 0, 0);
    for step in 0..250 {
        let roll = rng.gen_range(0..100);
        if roll < 35 {
            // A local transaction of 1-3 writes.
            let k = rng.gen_range(0..n);
            let c = conns[k].as_ref().unwrap();
            exec(c, "BEGIN");
            for _ in 0..rng.gen_range(1..4) {
                let id = rng.gen_range(0..8);
                let sql = match rng.gen_range(0..5) {
                    0 => {
                        format!("INSERT OR REPLACE INTO todos VALUES ({id}, 's{k}-{step}', {step})")
                    }
                    1 => format!("UPDATE todos SET title = 'u{k}-{step}' WHERE id = {id}"),
                    2 => format!("DELETE FROM todos WHERE id = {id}"),
                    3 => format!("INSERT OR REPLACE INTO notes VALUES ({id}, {step}.5)"),
                    _ => format!("DELETE FROM notes WHERE id = {id}"),
                };
                exec(c, &sql);
            }
            exec(c, "COMMIT");
        } else if roll < 55 {
            // Send: a few packages from last_sent go on the wire.
            let l = rng.gen_range(0..links.len());
            let (from, _, out, _) = &links[l];
            let limit = rng.gen_range(1..4);
            for p in pull(
                conns[*from].as_ref().unwrap(),
                out,
                &format!("LIMIT {limit}"),
            ) {
                if rng.gen_bool(0.2) {
                    in_flight.push((l, p.package.clone(), p.since(), p.cursor()));
                }
                let (since, cursor) = (p.since(), p.cursor());
                in_flight.push((l, p.package, since, cursor));
            }
        } else if roll < 85 {
            // Deliver a random in-flight package (reordered); sometimes keep
            // a copy to deliver again later.
            if in_flight.is_empty() {
                continue;
            }
            let i = rng.gen_range(0..in_flight.len());
            let (l, pkg, since, cursor) = if rng.gen_bool(0.2) {
                in_flight[i].clone()
            } else {
                in_flight.swap_remove(i)
            };
            let (_, to, _, inb) = &links[l];
            let c = conns[*to].as_ref().unwrap();
            let before = parse_pos(&last_applied(c, inb));
            match apply(c, inb, &pkg) {
                Ok(()) => {
                    assert!(since <= before, "a gap was accepted");
                    if cursor <= before {
                        duplicates += 1;
                    } else {
                        applied += 1;
                    }
                    let after = parse_pos(&last_applied(c, inb));
                    assert_eq!(after, before.max(cursor));
                }
                Err(e) => {
                    gaps += 1;
                    assert!(since > before, "refused a package that fits: {e}");
                    assert_eq!(parse_pos(&last_applied(c, inb)), before);
                }
            }
            if rng.gen_bool(0.5) {
                acks.push((l, last_applied(c, inb)));
            }
        } else if roll < 95 {
            // Deliver a random (stale, reordered) acknowledgement.
            if acks.is_empty() {
                continue;
            }
            let (l, pos) = acks.swap_remove(rng.gen_range(0..acks.len()));
            let (from, _, out, _) = &links[l];
            ack_ok(conns[*from].as_ref().unwrap(), out, &pos);
        } else {
            let k = rng.gen_range(0..n);
            let c = conns[k].take().unwrap();
            conns[k] = Some(d.reopen(&names[k], c));
        }
    }
    assert!(
        gaps > 0 && duplicates > 0 && applied > 0,
        "{topology}: the schedule must exercise gaps ({gaps}), duplicates ({duplicates}) and applies ({applied})"
    );
    // Drain: every link, in order, until nothing moves.
    for round in 0.. {
        assert!(round < 50, "{topology}: no quiescence");
        let mut moved = 0;
        for (from, to, out, inb) in &links {
            moved += sync(
                conns[*from].as_ref().unwrap(),
                out,
                conns[*to].as_ref().unwrap(),
                inb,
            );
        }
        if moved == 0 {
            break;
        }
    }
    let reference: Vec<Vec<String>> = ["todos", "notes"]
        .iter()
        .map(|t| table_rows(conns[0].as_ref().unwrap(), t))
        .collect();
    assert!(!reference[0].is_empty() || !reference[1].is_empty());
    for (k, c) in conns.iter().enumerate() {
        let got: Vec<Vec<String>> = ["todos", "notes"]
            .iter()
            .map(|t| table_rows(c.as_ref().unwrap(), t))
            .collect();
        assert_eq!(got, reference, "{topology}: site {k} differs from site 0");
    }
}

#[test]
fn streams_converge_in_a_star_a_line_and_a_mesh_despite_delays_duplicates_and_reordering() {
    for seed in 0..3 {
        converge("star", 4, &[(0, 1), (0, 2), (0, 3)], seed);
        converge("line", 4, &[(0, 1), (1, 2), (2, 3)], seed);
        converge(
            "mesh",
            4,
            &[(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)],
            seed,
        );
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(f: impl Fn() -> T) -> Duration {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .reduce(|a, b| a.min(b))
        .unwrap()
}

#[test]
fn producing_a_package_costs_time_proportional_to_the_package_not_the_backlog() {
    let d = Dir::new();
    let a = d.create("a");
    exec(&a, "PRAGMA journal_mode = MEMORY");
    // 6000 transactions of 5 changes each: a 30000-change backlog.
    {
        let mut stmt = a.prepare("INSERT INTO notes VALUES (?1, ?2)").unwrap();
        for t in 0..6000i64 {
            a.execute_batch("BEGIN").unwrap();
            for k in 0..5 {
                stmt.execute(params![t * 5 + k, "x"]).unwrap();
            }
            a.execute_batch("COMMIT").unwrap();
        }
    }
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 100)",
    );
    let newest = *positions(&a).last().unwrap();
    let near_end = pos_text((newest.0 - 3, 0));
    let one = median(vec![
        time(|| pull(&a, "o", "LIMIT 1")),
        time(|| pull(&a, "o", "LIMIT 1")),
    ]);
    let tail = time(|| pull(&a, "o", &format!("WHERE cursor > '{near_end}' LIMIT 1")));
    let all = time(|| pull(&a, "o", "").len());
    assert_eq!(pull(&a, "o", "").len(), 300);
    assert!(
        one * 20 < all,
        "LIMIT 1 ({one:?}) must cost a small fraction of reading all 300 packages ({all:?})"
    );
    assert!(
        tail * 20 < all,
        "a package at the end ({tail:?}) must not scan the backlog ({all:?})"
    );
}

/// One transaction inserting notes 1001 ..= 1000 + n, each with `body` (an
/// SQL expression of x, 1 ..= n).
fn notes_in_one_transaction(c: &Connection, n: i64, body: &str) {
    exec(
        c,
        &format!(
            "BEGIN;
             WITH RECURSIVE k(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM k WHERE x < {n})
             INSERT INTO notes SELECT 1000 + x, {body} FROM k;
             COMMIT;"
        ),
    );
}

/// Page through a stream one package at a time (`LIMIT 1` after
/// `last_sent`, as the bindings do), applying and acknowledging each one;
/// `each` sees every package after it is applied. Returns the packages.
fn page_through(
    a: &Connection,
    out: &str,
    b: &Connection,
    inb: &str,
    mut each: impl FnMut(&Pkg),
) -> Vec<Pkg> {
    let mut seen = Vec::new();
    while let Some(p) = pull(a, out, "LIMIT 1").pop() {
        apply_ok(b, inb, &p);
        ack_ok(a, out, &p.cursor);
        each(&p);
        seen.push(p);
    }
    seen
}

#[test]
fn a_transaction_split_into_more_parts_than_a_compound_select_allows_applies_whole() {
    // SQLite allows 500 terms in a compound SELECT; 1100 parts must still
    // apply, in one statement streaming the staged parts. With one change
    // per package the sender's memo windows hold 1024 rows, so the parts
    // also cross from one window to the next.
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    notes_in_one_transaction(&a, 1100, "'n' || x");
    link(&a, &b, "o", "i", "max_changes = 1");
    let mut n = 0;
    let pkgs = page_through(&a, "o", &b, "i", |p| {
        n += 1;
        let visible = int(&b, "SELECT count(*) FROM notes");
        if n < 1100 {
            assert!(is_part(&a, p), "package {n} is a part");
            assert_eq!(visible, 0, "nothing visible before the last part ({n})");
            assert_eq!(
                int(&b, "SELECT count(*) FROM crsql_stream_staging"),
                n as i64
            );
        } else {
            assert_eq!(visible, 1100, "the last part applies the whole transaction");
        }
    });
    assert_eq!(pkgs.len(), 1100);
    assert_eq!(table_rows(&b, "notes"), table_rows(&a, "notes"));
    assert_eq!(int(&b, "SELECT count(*) FROM crsql_stream_staging"), 0);
    assert_eq!(last_applied(&b, "i"), pkgs[1099].cursor);
}

#[test]
fn a_transaction_split_by_max_bytes_is_read_part_by_part_and_applied_whole() {
    // 300 rows of 1000-byte values, at most ~16 changes a package: split by
    // bytes, not by max_changes, and resumed inside the transaction through
    // the memo (the transaction has more than 256 rows).
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    notes_in_one_transaction(&a, 300, "randomblob(1000)");
    link(&a, &b, "o", "i", "max_bytes = 20000");
    let mut parts = 0;
    let pkgs = page_through(&a, "o", &b, "i", |p| {
        assert!(
            p.bytes <= 20000,
            "({}, {}] has {} bytes",
            p.since,
            p.cursor,
            p.bytes
        );
        if is_part(&a, p) {
            parts += 1;
        }
    });
    assert!(parts >= 15, "{parts} parts");
    assert_eq!(pkgs.iter().map(|p| p.changes).sum::<i64>(), 300);
    assert_eq!(table_rows(&b, "notes"), table_rows(&a, "notes"));
}

/// A transaction of ten notes at `a` sent to `b` in three parts, the
/// first two applied (so staged at `b`): the directory, `a`, `b` and the
/// three packages.
fn two_parts_staged() -> (Dir, Connection, Connection, Vec<Pkg>) {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    notes_in_one_transaction(&a, 10, "'n' || x");
    link(&a, &b, "o", "i", "max_changes = 4");
    let p = pull(&a, "o", "");
    assert_eq!(p.len(), 3);
    apply_ok(&b, "i", &p[0]);
    apply_ok(&b, "i", &p[1]);
    (d, a, b, p)
}

#[test]
fn a_corrupted_staged_part_refuses_the_last_part_and_changes_nothing() {
    let (_d, _a, b, p) = two_parts_staged();
    // Damage on disk (or by hand) to the second staged part.
    exec(
        &b,
        "UPDATE crsql_stream_staging SET package = x'00112233' WHERE part = 1",
    );
    let before = dump(&b);
    let err = apply(&b, "i", &p[2].package).unwrap_err();
    assert!(
        err.contains("merging the staged parts of a split transaction")
            && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(dump(&b), before, "nothing merged, the last part not staged");
    assert_eq!(last_applied(&b, "i"), p[1].cursor);
}

/// A staged part whose header reads but whose changes do not decode (its
/// checksum is right: staged by a build that validated differently, or
/// edited by hand) passes the staged parts' header check; its merge fails,
/// the one statement merges nothing, and the parts stay staged, so the
/// transaction applies once the part is put right.
#[test]
fn a_staged_part_whose_changes_do_not_decode_refuses_the_last_part_and_changes_nothing() {
    staged_part_that_does_not_decode(|pkg| pkg.changes[0].table = 7);
}

/// The same, the part's table entry also wrong (a schema hash the receiver
/// does not have, which its header shows): the error is still the part's
/// decode error, not a schema error about that entry (D59).
#[test]
fn a_staged_part_that_does_not_decode_is_reported_before_its_wrong_table_entry() {
    staged_part_that_does_not_decode(|pkg| {
        pkg.changes[0].table = 7;
        pkg.tables[0].schema_hash ^= 1;
    });
}

fn staged_part_that_does_not_decode(edit: impl FnOnce(&mut Package)) {
    let (_d, a, b, p) = two_parts_staged();
    let bad = crafted(&p[1], edit);
    b.execute(
        "UPDATE crsql_stream_staging SET package = ?1 WHERE part = 1",
        [&bad],
    )
    .unwrap();
    let before = dump(&b);
    let staged = "SELECT part, package FROM crsql_stream_staging ORDER BY part";
    let staged_before = rows(&b, staged);
    let err = apply(&b, "i", &p[2].package).unwrap_err();
    assert!(
        err.contains("merging the staged parts of a split transaction")
            && err.contains("change 0 names table #7"),
        "{err}"
    );
    assert_eq!(dump(&b), before, "nothing merged");
    assert_eq!(
        rows(&b, staged),
        staged_before,
        "the parts stay staged, the last one not"
    );
    assert_eq!(last_applied(&b, "i"), p[1].cursor);
    b.execute(
        "UPDATE crsql_stream_staging SET package = ?1 WHERE part = 1",
        [&p[1].package],
    )
    .unwrap();
    apply_ok(&b, "i", &p[2]);
    assert_eq!(table_rows(&b, "notes"), table_rows(&a, "notes"));
    assert_eq!(int(&b, "SELECT count(*) FROM crsql_stream_staging"), 0);
}

/// The staged parts are deleted before the merge that applies them, so
/// the merge reuses their pages: the receiver is not left with the staged
/// size as free pages (it used to be about half as large again as the sender).
#[test]
fn applying_staged_parts_leaves_no_staging_space_behind() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    notes_in_one_transaction(&a, 3000, "printf('%0200d', x)");
    link(&a, &b, "o", "i", "max_changes = 500");
    let p = pull(&a, "o", "");
    assert!(p.len() >= 6, "{} packages", p.len());
    let (last, staged) = p.split_last().unwrap();
    for q in staged {
        apply_ok(&b, "i", q);
    }
    let staged_bytes = int(&b, "SELECT sum(length(package)) FROM crsql_stream_staging");
    assert!(staged_bytes > 500_000, "{staged_bytes} bytes staged");
    apply_ok(&b, "i", last);
    assert_eq!(int(&b, "SELECT count(*) FROM crsql_stream_staging"), 0);
    let free = int(&b, "PRAGMA freelist_count") * int(&b, "PRAGMA page_size");
    assert!(
        free < staged_bytes / 10,
        "{free} bytes of free pages after merging {staged_bytes} staged bytes"
    );
    assert_eq!(int(&b, "SELECT count(*) FROM notes"), 3000);
}

#[test]
fn parts_read_after_their_transaction_changed_leave_out_the_rows_that_moved_on() {
    // The rest of a split transaction is read in seq order from a memo made
    // when the stream first resumed inside it; rows rewritten or deleted
    // since then belong to newer versions and must travel there, once.
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    notes_in_one_transaction(&a, 60, "'n' || x");
    let big = db_version(&a);
    link(&a, &b, "o", "i", "max_changes = 10");
    // Two parts: the second one resumes inside the transaction.
    for _ in 0..2 {
        let p = pull(&a, "o", "LIMIT 1").pop().unwrap();
        assert!(is_part(&a, &p));
        apply_ok(&b, "i", &p);
        ack_ok(&a, "o", &p.cursor);
    }
    exec(
        &a,
        "UPDATE notes SET body = 'moved' WHERE id BETWEEN 1031 AND 1035;
         DELETE FROM notes WHERE id BETWEEN 1041 AND 1045;",
    );
    let rest = page_through(&a, "o", &b, "i", |_| {});
    let in_big: i64 = rest
        .iter()
        .filter(|p| p.cursor().0 == big)
        .map(|p| p.changes)
        .sum();
    assert_eq!(
        in_big,
        60 - 20 - 10,
        "the moved rows left the old transaction"
    );
    let big_parts: Vec<i64> = rest
        .iter()
        .filter(|p| p.cursor().0 == big)
        .map(|p| p.changes)
        .collect();
    assert_eq!(
        big_parts,
        vec![10, 10, 10],
        "full parts: no gap where rows moved on"
    );
    assert!(
        rest.iter().any(|p| p.cursor().0 > big),
        "and travel in the newer ones"
    );
    assert_eq!(table_rows(&b, "notes"), table_rows(&a, "notes"));
    assert_eq!(
        contents(change_rows(&b).iter()),
        contents(change_rows(&a).iter())
    );
    assert_eq!(
        int(&b, "SELECT count(*) FROM notes WHERE body = 'moved'"),
        5
    );
}

#[test]
fn a_version_taken_by_a_refused_statement_is_not_reused_by_a_later_write() {
    // crsql_next_db_version() under PRAGMA query_only takes a version and
    // then fails before SQLite opens a write transaction, so no commit or
    // rollback hook forgets it. The connection must neither look like it is
    // writing nor reuse that version after another connection committed it
    // (two transactions at one version: the stream, already past it, would
    // never send the second one).
    let d = Dir::new();
    let a = d.create("a");
    let b = d.open("a");
    add_notes(&a, 1, 1);
    exec(&a, "CREATE VIRTUAL TABLE o USING crsql_OutboundStream()");
    exec(&b, "PRAGMA query_only = 1");
    assert!(try_exec(&b, "SELECT crsql_next_db_version()").is_err());
    exec(&b, "PRAGMA query_only = 0");
    add_notes(&a, 2, 1);
    let p = pull(&a, "o", "").pop().unwrap();
    ack_ok(&a, "o", &p.cursor);
    // B can still read packages (it has no write transaction)...
    let _ = pull(&b, "o", "");
    // ...and its next write takes a version above A's.
    add_notes(&b, 3, 1);
    let pos = positions(&a);
    let mut unique = pos.clone();
    unique.dedup();
    assert_eq!(unique, pos, "positions are unique: {pos:?}");
    let rest = pull(&a, "o", "");
    assert_eq!(
        rest.iter().map(|p| p.changes).sum::<i64>(),
        1,
        "B's note is sent"
    );
    assert!(rest[0].cursor() > p.cursor());
}

#[test]
fn a_split_transaction_whose_merge_fails_at_the_last_part_applies_nothing() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.open("b");
    exec(
        &b,
        "CREATE TABLE todos(id INTEGER PRIMARY KEY NOT NULL, title TEXT, score);
         SELECT crsql_as_crr('todos');
         CREATE TABLE notes(id INTEGER PRIMARY KEY NOT NULL, body CHECK (body <> 'bad'));
         SELECT crsql_as_crr('notes');",
    );
    // Note 103, in the first part, breaks B's CHECK.
    history_with_a_big_transaction(&a, 25, "CASE x WHEN 3 THEN 'bad' ELSE 'n' END");
    link(&a, &b, "o", "i", "max_changes = 10");
    let p = pull(&a, "o", "");
    let parts: Vec<usize> = (0..p.len()).filter(|k| is_part(&a, &p[*k])).collect();
    assert_eq!(parts.len(), 3);
    let last = *parts.last().unwrap();
    for q in &p[..last] {
        apply_ok(&b, "i", q);
    }
    assert_rejected(&b, "i", &p[last].package, "last part, autocommit");
    exec(&b, "BEGIN");
    let before = dump(&b);
    assert!(apply(&b, "i", &p[last].package).is_err());
    assert_eq!(
        dump(&b),
        before,
        "last part inside a transaction: nothing applied"
    );
    exec(&b, "COMMIT");
    assert_eq!(
        int(
            &b,
            "SELECT count(*) FROM notes WHERE id BETWEEN 101 AND 199"
        ),
        0
    );
    assert_eq!(last_applied(&b, "i"), p[parts[1]].cursor);
}

#[test]
fn a_split_transaction_whose_unsent_parts_were_overwritten_meanwhile_still_converges() {
    for overwrite in [
        "UPDATE notes SET body = 'later' WHERE id > 115 AND id < 200",
        "UPDATE notes SET body = 'later' WHERE id > 101 AND id < 200",
        "DELETE FROM notes WHERE id > 110 AND id < 200",
    ] {
        let d = Dir::new();
        let a = d.create("a");
        let b = d.create("b");
        history_with_a_big_transaction(&a, 25, "'n'");
        link(&a, &b, "o", "i", "max_changes = 10");
        let p = pull(&a, "o", "");
        let first_part = p.iter().position(|q| is_part(&a, q)).unwrap();
        for q in &p[..=first_part] {
            apply_ok(&b, "i", q);
        }
        ack_ok(&a, "o", &last_applied(&b, "i"));
        // Before the other parts are sent, the sender overwrites cells of
        // the split transaction in a new one.
        exec(&a, overwrite);
        let rest = pull(&a, "o", "");
        assert_chain(&rest, &p[first_part].cursor);
        for q in &rest {
            apply_ok(&b, "i", q);
        }
        assert_eq!(
            table_rows(&b, "notes"),
            table_rows(&a, "notes"),
            "{overwrite}"
        );
        assert_eq!(
            contents(&change_rows(&b)),
            contents(&change_rows(&a)),
            "{overwrite}"
        );
    }
}

#[test]
fn stream_positions_are_shared_by_every_connection_to_the_database() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    exec(&b, "PRAGMA journal_mode = WAL");
    add_todos(&a, 1, 4);
    link(&a, &b, "o", "i", "max_changes = 2");
    let a2 = d.open("a");
    let b2 = d.open("b");
    let p = pull(&a, "o", "");
    // Acknowledged on one connection, seen on the other.
    ack_ok(&a, "o", &p[1].cursor);
    assert_eq!(last_sent(&a2, "o"), p[1].cursor);
    assert_eq!(pull(&a2, "o", "")[0].since, p[1].cursor);
    ack_ok(&a2, "o", &p[0].cursor);
    assert_eq!(
        last_sent(&a, "o"),
        p[1].cursor,
        "the maximum, whichever connection"
    );
    // Applied on one connection, continued on the other.
    apply_ok(&b, "i", &p[0]);
    assert_eq!(last_applied(&b2, "i"), p[0].cursor);
    apply_ok(&b2, "i", &p[1]);
    let before = dump(&b);
    apply_ok(&b, "i", &p[1]);
    assert_eq!(
        dump(&b),
        before,
        "a duplicate, though first applied elsewhere"
    );
    assert_rejected(&b2, "i", &p[3].package, "gap seen by the other connection");
    apply_ok(&b, "i", &p[2]);
    apply_ok(&b2, "i", &p[3]);
    assert_eq!(table_rows(&b, "todos"), table_rows(&a, "todos"));
    close(a2);
    close(b2);
}

#[test]
fn creating_or_dropping_a_stream_in_a_rolled_back_transaction_leaves_no_trace() {
    let d = Dir::new();
    let a = d.create("a");
    add_todos(&a, 1, 3);
    exec(
        &a,
        "BEGIN; CREATE VIRTUAL TABLE o USING crsql_OutboundStream(); ROLLBACK;",
    );
    assert!(!streams(&a).contains_key("o"));
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    let p = pull(&a, "o", "");
    ack_ok(&a, "o", &p[1].cursor);
    exec(&a, "BEGIN; DROP TABLE o; ROLLBACK;");
    assert_eq!(last_sent(&a, "o"), p[1].cursor, "the drop was rolled back");
    assert_eq!(pull(&a, "o", "")[0].since, p[1].cursor);
    let a = d.reopen("a", a);
    assert_eq!(last_sent(&a, "o"), p[1].cursor);
}

#[test]
fn a_package_read_inside_a_transaction_that_rolls_back_never_costs_the_receiver_a_change() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    add_todos(&a, 1, 2);
    link(&a, &b, "o", "i", "");
    sync(&a, "o", &b, "i");
    // Read while an uncommitted write is pending in the same transaction.
    exec(
        &a,
        "BEGIN; INSERT INTO todos VALUES (10, 'never committed', 0);",
    );
    // Reading inside a transaction that wrote is refused outright (a
    // rollback could otherwise un-skip rows the package passed).
    let inside = match try_pull(&a, "o", "") {
        Ok(p) => p,
        Err(e) => {
            assert!(
                e.contains("cannot read packages inside a transaction"),
                "{e}"
            );
            Vec::new()
        }
    };
    exec(&a, "ROLLBACK");
    let mut carried_uncommitted = false;
    for p in &inside {
        for ch in package_changes(&a, &p.package) {
            carried_uncommitted |= ch[1] == Value::Blob(vec![1, 9, 10]);
        }
        // The transport delivers what it was given.
        let _ = apply(&b, "i", &p.package);
    }
    // The next committed transaction must still reach the receiver, which
    // reports where it stands, as senders are told to resume.
    exec(&a, "INSERT INTO todos VALUES (11, 'committed', 0)");
    ack_ok(&a, "o", &last_applied(&b, "i"));
    sync(&a, "o", &b, "i");
    assert!(
        !carried_uncommitted,
        "a package read inside the transaction carried its uncommitted change \
         (positions are assigned at commit)"
    );
    assert_eq!(table_rows(&b, "todos"), table_rows(&a, "todos"));
}

/// A split transaction's last part reaching the receiver after the
/// transaction was applied whole in a later, shorter form (a write at the
/// sender moved its tail to a newer version, and the old part came again: a
/// stale or duplicated delivery) merges. It was refused as if the stream
/// had been created inside the transaction, a stuck stream; found by random
/// seeds of stream_convergence.rs.
#[test]
fn a_stale_tail_of_a_transaction_applied_whole_since_merges() {
    let d = Dir::new();
    let a = d.create("a");
    let b = d.create("b");
    exec(
        &a,
        "CREATE VIRTUAL TABLE o USING crsql_OutboundStream(max_changes = 2)",
    );
    exec(
        &b,
        &format!(
            "CREATE VIRTUAL TABLE i USING crsql_InboundStream(from = '{}')",
            site(&a)
        ),
    );
    exec(
        &a,
        "BEGIN; INSERT INTO notes VALUES (1, 'one'); INSERT INTO notes VALUES (2, 'two');
         INSERT INTO notes VALUES (3, 'three'); COMMIT;",
    );
    let old = pull(&a, "o", "");
    let spans = |p: &[Pkg]| -> Vec<(String, String)> {
        p.iter()
            .map(|p| (p.since.clone(), p.cursor.clone()))
            .collect()
    };
    let span = |s: &str, c: &str| (s.to_string(), c.to_string());
    assert_eq!(
        spans(&old),
        [span("[0,0]", "[1,1]"), span("[1,1]", "[1,2]")],
        "version 1 split in two parts"
    );
    // Row 3's clock leaves version 1, which now fits one package.
    exec(&a, "UPDATE notes SET body = 'three, later' WHERE id = 3");
    exec(&a, "INSERT INTO o(rewind) VALUES ('[0,0]')");
    let new = pull(&a, "o", "");
    assert_eq!(
        spans(&new),
        [span("[0,0]", "[1,1]"), span("[1,1]", "[2,0]")]
    );
    apply_ok(&b, "i", &new[0]);
    assert_eq!(last_applied(&b, "i"), "[1,1]");
    // The old last part, after version 1 was applied whole.
    apply_ok(&b, "i", &old[1]);
    apply_ok(&b, "i", &new[1]);
    let all = "SELECT id, body FROM notes ORDER BY id";
    assert_eq!(rows(&b, all), rows(&a, all));
    assert_eq!(last_applied(&b, "i"), "[2,0]");
}
