//! The newest position (`[db_version, largest seq at it]`) an outbound
//! stream learns from its own scan when that scan reads every clock row of
//! the newest transaction (DECISIONS D57) is the one the clock tables
//! give: after a stream read every package on a fresh connection (no
//! newest position cached), acknowledging that position is accepted and
//! one seq past it refused (the acknowledgement is checked against the
//! newest position the scan left cached).
//!
//! The newest transaction writes two tables, ending in the one named by
//! the case, so its largest seq is in the first or the last table read;
//! on the cr-sqlite layout that row's key loses its pks row (a damaged
//! file: no stream or `crsql_changes` returns the row, yet its seq is the
//! newest position's). It is larger than a `max_changes = 1` stream's
//! 1,024-row window (sorted in runs on disk) and, with no temporary
//! directory, sorted by SQLite (the scan cannot tell its largest seq).

use crsql_stream_harness::sql::exec;
use crsql_stream_harness::{close, compact_layout, open};
use rusqlite::Connection;

/// Rows of `big`; the newest transaction updates column b of half of
/// them (1,500 rows: past a `max_changes = 1` stream's 1,024-row window).
const N: i64 = 3000;

/// A database whose newest transaction writes `big` and `small`, the
/// table `last` last; returns the position of its largest seq.
fn history(c: &Connection, last: &str) -> (i64, i64) {
    exec(
        c,
        &format!(
            "CREATE TABLE big (id INTEGER PRIMARY KEY NOT NULL, a, b);
             CREATE TABLE small (id INTEGER PRIMARY KEY NOT NULL, c);
             SELECT crsql_as_crr('big');
             SELECT crsql_as_crr('small');
             BEGIN;
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {N})
             INSERT INTO big SELECT i, i, i FROM s;
             INSERT INTO small VALUES (1, 'x'), (2, 'y'), (3, 'z');
             COMMIT;"
        ),
    );
    let (first, then) = if last == "big" {
        ("small", "big")
    } else {
        ("big", "small")
    };
    let update = |t: &str| {
        format!(
            "UPDATE {t} SET {} WHERE id % 2 = 1",
            if t == "big" { "b = -b" } else { "c = c || '!'" }
        )
    };
    exec(
        c,
        &format!("BEGIN; {}; {}; COMMIT;", update(first), update(then)),
    );
    let (table, newest): (String, (i64, i64)) = c
        .query_row(
            "SELECT \"table\", db_version, seq FROM crsql_changes ORDER BY db_version DESC, seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))),
        )
        .unwrap();
    assert_eq!(table, last, "the newest change's table");
    if !compact_layout() {
        // The key of `last` at the largest seq loses its pks row: the
        // newest position stays, but no change shows it any more.
        exec(
            c,
            &format!(
                "DELETE FROM {last}__crsql_pks WHERE __crsql_key = \
                 (SELECT key FROM {last}__crsql_clock WHERE db_version = {} AND seq = {})",
                newest.0, newest.1
            ),
        );
        let shown: (i64, i64) = c
            .query_row(
                "SELECT db_version, seq FROM crsql_changes ORDER BY db_version DESC, seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(
            shown < newest,
            "{shown:?} after the pks row went, {newest:?} before"
        );
    }
    newest
}

/// Read every package of a new stream with `args` on a fresh connection,
/// then acknowledge one seq past `newest` (refused) and `newest`.
fn check(path: &std::path::Path, name: &str, args: &str, newest: (i64, i64)) {
    let c = open(path);
    exec(
        &c,
        &format!("CREATE VIRTUAL TABLE {name} USING crsql_OutboundStream({args})"),
    );
    let packages: i64 = c
        .query_row(&format!("SELECT count(*) FROM {name}"), [], |r| r.get(0))
        .unwrap();
    assert!(packages > 0, "{args}: no package");
    let ack = |seq: i64| {
        c.execute(
            &format!("INSERT INTO {name}(last_sent) VALUES (?1)"),
            [format!("[{},{seq}]", newest.0)],
        )
    };
    let past = ack(newest.1 + 1);
    assert!(
        past.as_ref().is_err_and(|e| e
            .to_string()
            .contains("the newest change of this database is at")),
        "{args}: acknowledging one seq past the newest position {newest:?}: {past:?}"
    );
    ack(newest.1)
        .unwrap_or_else(|e| panic!("{args}: acknowledging the newest position {newest:?}: {e}"));
    close(c);
}

#[test]
fn a_stream_learns_the_exact_newest_position_from_its_scan() {
    let dir = tempfile::tempdir().unwrap();
    let streams = [
        ("s_1000", "max_changes = 1000"),
        ("s_1", "max_changes = 1"),
        ("s_local", "max_changes = 500, local_only = 1"),
        // One table listed twice is not every table: the scan of `big`
        // alone cannot tell the newest seq when `small` holds it.
        ("s_twice", "tables = 'big, big'"),
    ];
    let mut paths = Vec::new();
    for last in ["big", "small"] {
        let path = dir.path().join(format!("{last}.db"));
        let c = open(&path);
        exec(&c, "PRAGMA journal_mode = WAL;");
        let newest = history(&c, last);
        close(c);
        for (name, args) in streams {
            check(&path, name, args, newest);
        }
        paths.push((path, newest));
    }
    // Without a temporary directory the newest transaction is sorted by
    // SQLite: the newest position comes from the clock tables. The only
    // test of this file, so no other thread reads TMPDIR.
    let missing = dir.path().join("missing");
    std::env::set_var("TMPDIR", &missing);
    for (path, newest) in &paths {
        check(path, "sorted_1", "max_changes = 1", *newest);
    }
    std::env::remove_var("TMPDIR");
    assert!(!missing.exists());
}
