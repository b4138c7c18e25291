//! The binding against the real extension: the built `.so` by default,
//! the compiled-in copy with `--features static`.

use crsql_stream_rs::{
    self as crsql, Cursor, Encoding, Inbound, InboundOptions, Outbound, OutboundOptions,
};
use rusqlite::{Connection, ErrorCode};

mod layout;

const SCHEMA: &str = "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0);
                      SELECT crsql_as_crr('todos');";

fn open(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    layout::load(&conn);
    conn
}

fn peer() -> Connection {
    let conn = Connection::open_in_memory().expect("open");
    layout::load(&conn);
    conn.execute_batch(SCHEMA).expect("schema");
    conn
}

fn todos(conn: &Connection) -> Vec<(String, Option<String>, i64)> {
    let mut stmt = conn
        .prepare("SELECT id, title, done FROM todos ORDER BY id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn message(e: &rusqlite::Error) -> &str {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => m,
        other => panic!("expected an SQLite error with a message, got {other:?}"),
    }
}

#[test]
fn load_registers_the_extension_and_is_idempotent() {
    let conn = Connection::open_in_memory().unwrap();
    crsql::load(&conn).unwrap();
    crsql::load(&conn).unwrap();
    assert!(!crsql::version(&conn).unwrap().is_empty());
    assert_eq!(crsql::site_id(&conn).unwrap().len(), 16);
    conn.execute_batch(SCHEMA).unwrap();
    conn.execute("INSERT INTO todos (id, title) VALUES ('t1', 'x')", [])
        .unwrap();
    assert_eq!(crsql::db_version(&conn).unwrap(), 1);
    crsql::close(conn).unwrap();
}

#[cfg(not(feature = "static"))]
#[test]
fn load_from_an_explicit_path_and_a_clear_error_for_a_missing_one() {
    let path = crsql::find_extension().expect("make build first");
    let conn = Connection::open_in_memory().unwrap();
    crsql::load_from(&conn, &path).unwrap();
    assert!(!crsql::version(&conn).unwrap().is_empty());

    let other = Connection::open_in_memory().unwrap();
    let err = crsql::load_from(&other, "/nonexistent/libcrsql_stream.so").unwrap_err();
    assert!(matches!(err, rusqlite::Error::SqliteFailure(..)), "{err:?}");
    // Extension loading is switched off again afterwards.
    assert!(other
        .query_row("SELECT crsql_version()", [], |_| Ok(()))
        .is_err());
}

#[cfg(feature = "static")]
#[test]
fn static_load_needs_no_library_file() {
    // Whatever the environment says, the compiled-in copy is registered.
    let conn = Connection::open_in_memory().unwrap();
    crsql::load(&conn).unwrap();
    let loaded: i64 = conn
        .query_row(
            "SELECT count(*) FROM pragma_module_list WHERE name = 'crsql_OutboundStream'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(loaded, 1);
}

#[test]
fn cursors_bind_and_read_as_json_text() {
    let conn = Connection::open_in_memory().unwrap();
    let c: Cursor = conn
        .query_row("SELECT ?1", [Cursor::new(12, 3)], |r| r.get(0))
        .unwrap();
    assert_eq!(c, Cursor::new(12, 3));
    let text: String = conn
        .query_row("SELECT ?1", [Cursor::new(12, 3)], |r| r.get(0))
        .unwrap();
    assert_eq!(text, "[12,3]");
}

#[test]
fn two_peers_sync_both_ways_and_converge() {
    let (a, b) = (peer(), peer());
    let (site_a, site_b) = (crsql::site_id(&a).unwrap(), crsql::site_id(&b).unwrap());
    a.execute_batch(
        "INSERT INTO todos VALUES ('t1', 'buy milk', 0), ('t2', 'write the report', 0);
         UPDATE todos SET done = 1 WHERE id = 't1';",
    )
    .unwrap();
    b.execute_batch(
        "INSERT INTO todos VALUES ('t3', 'call mum', 0);
         INSERT INTO todos VALUES ('t2', 'write the REPORT', 1);",
    )
    .unwrap();

    let opts = |peer| OutboundOptions::new().exclude_site(peer).max_changes(2);
    let to_b = Outbound::create(&a, "to_b", &opts(site_b)).unwrap();
    let to_a = Outbound::create(&b, "to_a", &opts(site_a)).unwrap();
    let from_b = Inbound::create(&a, "from_b", &InboundOptions::new().from(site_b)).unwrap();
    let from_a = Inbound::create(&b, "from_a", &InboundOptions::new().from(site_a)).unwrap();

    // A to B by hand: a chain of packages, each starting where the last ended.
    let packages: Vec<_> = to_b.packages().collect::<Result<_, _>>().unwrap();
    assert!(packages.len() >= 2, "max_changes = 2 splits: {packages:?}");
    assert_eq!(packages[0].since, Cursor::ZERO);
    for pair in packages.windows(2) {
        assert_eq!(pair[1].since, pair[0].cursor);
    }
    for p in &packages {
        from_a.apply(&p.bytes).unwrap();
        from_a.apply(&p.bytes).unwrap(); // duplicates are no-ops
    }
    let last = packages.last().unwrap().cursor;
    assert_eq!(from_a.last_applied().unwrap(), last);
    assert_eq!(to_b.last_retrieved().unwrap(), Some(last));
    assert_eq!(to_b.last_sent().unwrap(), Cursor::ZERO);
    to_b.ack(from_a.last_applied().unwrap()).unwrap();
    assert_eq!(to_b.last_sent().unwrap(), last);
    assert_eq!(to_b.next_package().unwrap(), None);

    // B to A with the helper; B's copy of A's changes is not echoed back.
    assert!(crsql::pump(&to_a, &from_b).unwrap() >= 1);
    assert_eq!(todos(&a), todos(&b));
    assert_eq!(todos(&a).len(), 3);

    // New edits travel on the next round, and only they do.
    a.execute(
        "UPDATE todos SET title = 'buy oat milk' WHERE id = 't1'",
        [],
    )
    .unwrap();
    assert_eq!(crsql::pump(&to_b, &from_a).unwrap(), 1);
    assert_eq!(crsql::pump(&to_a, &from_b).unwrap(), 1); // a heartbeat over the echo
    assert_eq!(todos(&a), todos(&b));
    assert_eq!(todos(&b)[0].1.as_deref(), Some("buy oat milk"));

    assert_eq!(from_a.sender().unwrap(), Some(site_a));
    let fresh = Inbound::create(&a, "fresh", &InboundOptions::new()).unwrap();
    assert_eq!(fresh.sender().unwrap(), None);
    fresh.drop_stream().unwrap();
    assert!(Inbound::open(&a, "fresh").is_err());

    // Reopening the streams by name.
    assert_eq!(Outbound::open(&a, "to_b").unwrap().last_sent().unwrap(), {
        to_b.last_sent().unwrap()
    });
    let err = Outbound::open(&a, "from_b").unwrap_err();
    assert!(message(&err).contains("inbound"), "{err}");
    let err = Inbound::open(&a, "nope").unwrap_err();
    assert!(
        message(&err).contains("no inbound stream named nope"),
        "{err}"
    );

    drop((to_a, to_b, from_a, from_b));
    crsql::close(a).unwrap();
    crsql::close(b).unwrap();
}

#[test]
fn sync_helper_converges_two_databases_and_resumes_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let (a, b) = (open(&pa), open(&pb));
    a.execute_batch(SCHEMA).unwrap();
    b.execute_batch(SCHEMA).unwrap();
    for i in 0..50 {
        a.execute(
            "INSERT INTO todos (id, title) VALUES (?1, 'a')",
            [format!("a{i}")],
        )
        .unwrap();
        b.execute(
            "INSERT INTO todos (id, title) VALUES (?1, 'b')",
            [format!("b{i}")],
        )
        .unwrap();
    }
    let stats = crsql::sync(&a, &b).unwrap();
    assert!(stats.a_to_b >= 1 && stats.b_to_a >= 1, "{stats:?}");
    assert_eq!(todos(&a), todos(&b));
    assert_eq!(todos(&a).len(), 100);
    crsql::close(a).unwrap();
    crsql::close(b).unwrap();

    // The positions are durable: after a reopen only new changes move.
    let (a, b) = (open(&pa), open(&pb));
    a.execute("UPDATE todos SET done = 1 WHERE id = 'b7'", [])
        .unwrap();
    let stats = crsql::sync(&a, &b).unwrap();
    assert_eq!(stats.a_to_b, 1, "{stats:?}");
    assert_eq!(todos(&a), todos(&b));
    assert_eq!(crsql::sync(&a, &b).unwrap(), crsql::SyncStats::default());
    let err = crsql::sync(&a, &a).unwrap_err();
    assert!(message(&err).contains("same database"), "{err}");
    crsql::close(a).unwrap();
    crsql::close(b).unwrap();
}

#[test]
fn sync_reports_progress_from_lag_changes() {
    let (a, b) = (peer(), peer());
    for i in 0..40 {
        a.execute(
            "INSERT INTO todos (id, title) VALUES (?1, 'a')",
            [format!("a{i}")],
        )
        .unwrap();
    }
    for i in 0..10 {
        b.execute(
            "INSERT INTO todos (id, title) VALUES (?1, 'b')",
            [format!("b{i}")],
        )
        .unwrap();
    }
    let count = |c: &rusqlite::Connection| -> u64 {
        c.query_row("SELECT count(*) FROM crsql_changes", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap() as u64
    };
    let expected = count(&a) + count(&b);
    let mut calls = Vec::new();
    crsql::sync_with_progress(&a, &b, |done, total| calls.push((done, total))).unwrap();
    assert_eq!(calls.first(), Some(&(0, expected)), "{calls:?}");
    assert_eq!(calls.last(), Some(&(expected, expected)), "{calls:?}");
    assert!(calls.len() >= 3, "{calls:?}");
    for w in calls.windows(2) {
        assert!(
            w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[1].0 <= w[1].1,
            "{calls:?}"
        );
    }
    // After a sync both streams have caught up, by their own figure.
    let out = Outbound::open(
        &a,
        &format!("crsql_sync_to_{}", crsql::hex(&crsql::site_id(&b).unwrap())),
    )
    .unwrap();
    assert_eq!(out.lag_changes().unwrap(), 0);
}

#[test]
fn json_packages_apply_like_binary_ones() {
    let (a, b) = (peer(), peer());
    a.execute("INSERT INTO todos VALUES ('t1', 'x', 0)", [])
        .unwrap();
    let out =
        Outbound::create(&a, "to_b", &OutboundOptions::new().encoding(Encoding::Json)).unwrap();
    let inb = Inbound::create(&b, "from_a", &InboundOptions::new()).unwrap();
    let p = out.next_package().unwrap().unwrap();
    assert!(std::str::from_utf8(&p.bytes).unwrap().starts_with('{'));
    inb.apply(&p.bytes).unwrap();
    assert_eq!(todos(&a), todos(&b));
}

#[test]
fn a_corrupted_package_is_a_rusqlite_error_with_the_extensions_message() {
    let (a, b) = (peer(), peer());
    a.execute("INSERT INTO todos VALUES ('t1', 'x', 0)", [])
        .unwrap();
    let out = Outbound::create(&a, "to_b", &OutboundOptions::new()).unwrap();
    let inb = Inbound::create(&b, "from_a", &InboundOptions::new()).unwrap();
    let mut p = out.next_package().unwrap().unwrap();
    let mid = p.bytes.len() / 2;
    p.bytes[mid] ^= 0x40;

    let err = inb.apply(&p.bytes).unwrap_err();
    assert_eq!(err.sqlite_error_code(), Some(ErrorCode::Unknown), "{err:?}");
    let msg = message(&err);
    assert!(msg.starts_with("crsql_InboundStream from_a: "), "{msg}");
    assert!(msg.contains("checksum"), "{msg}");
    // Nothing changed.
    assert_eq!(inb.last_applied().unwrap(), Cursor::ZERO);
    assert!(todos(&b).is_empty());

    // A truncated one, and a gap, likewise.
    let good = out.next_package().unwrap().unwrap();
    let err = inb.apply(&good.bytes[..good.bytes.len() - 3]).unwrap_err();
    assert!(
        message(&err).starts_with("crsql_InboundStream from_a: "),
        "{err}"
    );
    a.execute("INSERT INTO todos VALUES ('t2', 'y', 0)", [])
        .unwrap();
    let second = out.packages_after(good.cursor).next().unwrap().unwrap();
    let err = inb.apply(&second.bytes).unwrap_err();
    assert!(message(&err).contains("gap"), "{err}");
    inb.apply(&good.bytes).unwrap();
    inb.apply(&second.bytes).unwrap();
    assert_eq!(todos(&a), todos(&b));
}

#[test]
fn close_finalizes_and_reports_success_even_with_cached_stream_statements() {
    let (a, b) = (peer(), peer());
    a.execute("INSERT INTO todos VALUES ('t1', 'x', 0)", [])
        .unwrap();
    crsql::sync(&a, &b).unwrap();
    crsql::close(a).unwrap();
    crsql::close(b).unwrap();

    // A plain connection without the extension: close reports the missing
    // function as an error rather than panicking.
    let plain = Connection::open_in_memory().unwrap();
    let err = crsql::close(plain).unwrap_err();
    assert!(err.to_string().contains("crsql_finalize"), "{err}");
}

#[test]
fn names_compare_without_case_and_other_tables_are_never_taken_or_dropped() {
    let a = peer();
    a.execute("INSERT INTO todos VALUES ('t1', 'x', 0)", [])
        .unwrap();
    let out = Outbound::create(&a, "To_B", &OutboundOptions::new()).unwrap();
    // The same stream under another case: open finds it, positions agree.
    let same = Outbound::open_or_create(&a, "to_b", &OutboundOptions::new()).unwrap();
    let pkg = same.next_package().unwrap().unwrap();
    same.ack(pkg.cursor).unwrap();
    assert_eq!(out.last_sent().unwrap(), pkg.cursor);
    let err = Inbound::open(&a, "TO_B").unwrap_err();
    assert!(message(&err).contains("is an outbound stream"), "{err}");

    // The user's CRR is not a stream: open refuses, create gets SQLite's error.
    assert!(Outbound::open(&a, "todos").is_err());
    assert!(Outbound::open_or_create(&a, "todos", &OutboundOptions::new()).is_err());
    // A name reserved by the extension.
    let err = Outbound::create(&a, "crsql_changes", &OutboundOptions::new()).unwrap_err();
    assert!(message(&err).contains("reserved"), "{err}");
    // A stream replaced by a plain table is not dropped.
    let inb = Inbound::create(&a, "swap", &InboundOptions::new()).unwrap();
    a.execute_batch("DROP TABLE swap; CREATE TABLE swap (kept)")
        .unwrap();
    let err = inb.drop_stream().unwrap_err();
    assert!(
        message(&err).contains("no inbound stream named swap"),
        "{err}"
    );
    assert_eq!(
        a.query_row("SELECT count(*) FROM swap", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        0
    );
    assert_eq!(todos(&a).len(), 1);

    // Names reach the extension exactly (quoted): a comma or outer spaces
    // name a table of that name, not two tables or a trimmed one.
    for bad in ["todos,notes", " todos", ""] {
        let err = Outbound::create(&a, "t", &OutboundOptions::new().tables([bad])).unwrap_err();
        assert!(message(&err).contains("tables:"), "{bad:?}: {err}");
        let err = Inbound::create(&a, "t", &InboundOptions::new().tables([bad])).unwrap_err();
        assert!(message(&err).contains("tables:"), "{bad:?}: {err}");
        if !bad.is_empty() {
            assert!(
                message(&err).contains(&format!("{bad} is not a CRR")),
                "{err}"
            );
        }
    }
    a.execute_batch(
        "CREATE TABLE \"a, \"\"b\" (id TEXT PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('a, \"b');",
    )
    .unwrap();
    Outbound::create(&a, "odd", &OutboundOptions::new().tables(["a, \"b"])).unwrap();
}
