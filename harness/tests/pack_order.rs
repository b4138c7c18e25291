//! What an outbound stream packs, change by change, against `crsql_changes`
//! (in the cr-sqlite layout both read through the same transaction scan,
//! so `crsql_changes` is itself checked against one SQL query over the
//! clock, pks and base tables, sorted by SQLite; the compact layout's
//! `crsql_changes` has its own statements):
//! every change in position order, with its values, primary key, column,
//! causal length and site, whatever the package limits and however the
//! stream is read (all packages at once, or one per statement from its
//! acknowledged position).
//!
//! The history is made so that position order and the clock index's order
//! differ everywhere they can: rows updated in descending key order, columns
//! written in the reverse of their name order, names sorting below the
//! sentinel's `-1`, two tables interleaved in one transaction, deleted and
//! re-inserted rows (causal lengths above 1, sentinels at other versions),
//! primary-key changes, and transactions larger than the window the
//! cr-sqlite layout's scanner sorts in memory (`max_changes = 2`: 2,048
//! rows; `max_changes = 1`: 1,024, which the descending updates pass),
//! which it sorts in runs merged from a temporary file instead, or, when
//! no temporary file can be created, hands to SQLite's sorter.

use crsql_stream_harness::sql::{exec, rows};
use crsql_stream_harness::{close, compact_layout, open};
use rusqlite::types::Value;
use rusqlite::Connection;

const SCHEMA: &str = r#"
CREATE TABLE m (id INTEGER PRIMARY KEY NOT NULL, z TEXT, y INTEGER, x REAL);
CREATE TABLE k (a TEXT NOT NULL, b INTEGER NOT NULL, w, v, PRIMARY KEY (b, a));
CREATE TABLE odd (id TEXT PRIMARY KEY NOT NULL, zz, "-2", "-1x", "!a", " b", "+");
SELECT crsql_as_crr('m');
SELECT crsql_as_crr('k');
SELECT crsql_as_crr('odd');
"#;

/// Rows of m: its first transaction writes 6,000 clock rows, over 3,000 of
/// which stay there, above the 2,048-row window of `max_changes = 2`.
const N: i64 = 2000;

fn history(c: &Connection) {
    exec(c, SCHEMA);
    // 1: inserts.
    exec(
        c,
        &format!(
            "BEGIN;
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {N})
             INSERT INTO m SELECT i, 'z' || i, i * 3, i / 7.0 FROM s;
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 300)
             INSERT INTO k SELECT 'a' || ({N} - i), i % 40, randomblob(4), NULL FROM s;
             COMMIT;"
        ),
    );
    // 2: every other row of m updated in descending key order, x before z
    // (seq order is the reverse of the index's); k interleaved.
    exec(c, "BEGIN");
    for i in (1..=N).rev().step_by(2) {
        exec(
            c,
            &format!("UPDATE m SET x = {i} * 1.5, z = 'u{i}' WHERE id = {i}"),
        );
        if i % 10 == 1 {
            exec(
                c,
                &format!("UPDATE k SET w = {i} WHERE b = {} ", (i / 10) % 40),
            );
        }
    }
    exec(c, "COMMIT");
    // 3: odd names, deletes, re-inserts, primary-key changes, small
    // transactions mixing the tables.
    for t in 0..120i64 {
        let j = (t * 7) % 50;
        let mut sql = format!(
            "BEGIN;
             INSERT OR REPLACE INTO odd VALUES ('o{j}', {t}, {t} + 1, {t} + 2, {t} + 3, {t} + 4, {t} + 5);
             UPDATE odd SET \"!a\" = {t} * 7, zz = 'v{t}' WHERE id = 'o{}';
             UPDATE m SET y = y + 1 WHERE id = {};",
            (t * 11) % 50,
            (t * 37) % N + 1,
        );
        if t % 6 == 0 {
            sql += &format!("DELETE FROM odd WHERE id = 'o{}';", (t * 13) % 50);
        }
        if t % 10 == 0 {
            sql += &format!("DELETE FROM m WHERE id = {};", (t * 53) % N + 1);
        }
        if t % 15 == 0 {
            sql += &format!(
                "UPDATE m SET id = id + 100000 WHERE id = {};",
                (t * 71) % N + 1
            );
        }
        if t % 9 == 0 {
            sql += &format!(
                "INSERT OR REPLACE INTO m VALUES ({}, 'again', 1, 2.5);",
                (t * 53) % N + 1
            );
        }
        sql += "COMMIT;";
        exec(c, &sql);
    }
    // 4: one more large transaction in reverse, over every odd row too.
    exec(
        c,
        "BEGIN;
         UPDATE odd SET \" b\" = 'rev', \"-2\" = NULL, \"+\" = 1;
         UPDATE m SET y = -y WHERE id % 3 = 0;
         COMMIT;",
    );
    // Keys whose pks row is gone (a damaged file): crsql_changes leaves
    // their clock rows out, and so must the streams.
    if !compact_layout() {
        exec(
            c,
            "DELETE FROM m__crsql_pks WHERE __crsql_key IN (5, 6, 900, 1999)",
        );
    }
}

/// Every change of `crsql_changes`, in its (position) order.
fn expected(c: &Connection) -> Vec<Vec<Value>> {
    rows(
        c,
        "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes",
    )
}

/// Every change as one SQL query over the cr-sqlite layout's clock, pks
/// and base tables computes it (as `crsql_changes` did before reading by
/// transaction), sorted by SQLite.
fn expected_by_sql(c: &Connection) -> Vec<Vec<Value>> {
    let mut selects = Vec::new();
    for t in ["m", "k", "odd"] {
        // (name, pk index) by cid.
        let cols: Vec<(String, i64)> = rows(
            c,
            &format!("SELECT name, pk FROM pragma_table_info('{t}') ORDER BY cid"),
        )
        .into_iter()
        .map(|r| match (&r[0], &r[1]) {
            (Value::Text(n), Value::Integer(pk)) => (n.clone(), *pk),
            other => panic!("pragma_table_info: {other:?}"),
        })
        .collect();
        let q = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
        let mut pks: Vec<&(String, i64)> = cols.iter().filter(|c| c.1 > 0).collect();
        pks.sort_by_key(|c| c.1);
        let packed = pks
            .iter()
            .map(|c| format!("p.{}", q(&c.0)))
            .collect::<Vec<_>>()
            .join(", ");
        let join = pks
            .iter()
            .map(|c| format!("b.{0} = p.{0}", q(&c.0)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let val = cols
            .iter()
            .filter(|c| c.1 == 0)
            .map(|c| format!("WHEN '{}' THEN b.{}", c.0.replace('\'', "''"), q(&c.0)))
            .collect::<Vec<_>>()
            .join(" ");
        selects.push(format!(
            "SELECT '{t}' AS tbl, crsql_pack_columns({packed}) AS pk, c.col_name AS cid, \
             CASE c.col_name {val} END AS val, c.col_version AS col_version, \
             c.db_version AS db_version, \
             (SELECT site_id FROM crsql_site_id WHERE ordinal = c.site_id) AS site_id, \
             COALESCE((SELECT s.col_version FROM {t}__crsql_clock AS s \
                       WHERE s.key = c.key AND s.col_name = '-1'), 1) AS cl, c.seq AS seq \
             FROM {t}__crsql_clock AS c JOIN {t}__crsql_pks AS p ON p.__crsql_key = c.key \
             LEFT JOIN {t} AS b ON {join}"
        ));
    }
    rows(
        c,
        &format!("{} ORDER BY db_version, seq", selects.join(" UNION ALL ")),
    )
}

/// The changes of packages, in package order.
fn unpacked(c: &Connection, packages: &[Value]) -> Vec<Vec<Value>> {
    let mut stmt = c
        .prepare(
            "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq \
             FROM crsql_package_changes(?1)",
        )
        .unwrap();
    let mut out = Vec::new();
    for p in packages {
        let rows = stmt
            .query_map([p], |r| {
                (0..9)
                    .map(|i| r.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap();
        for r in rows {
            out.push(r.unwrap());
        }
    }
    out
}

/// Every package of stream `name`, read in one statement.
fn read_all(c: &Connection, name: &str) -> Vec<Value> {
    let mut stmt = c.prepare(&format!("SELECT package FROM {name}")).unwrap();
    let rows = stmt.query_map([], |r| r.get(0)).unwrap();
    rows.map(Result::unwrap).collect()
}

/// Every package of stream `name`, one statement each, acknowledged as it
/// comes (each statement starts from the acknowledged position: inside a
/// split transaction after the first part). Each cursor must pass the last.
fn read_acked(c: &Connection, name: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut last = (0, 0);
    loop {
        let next: Option<(Value, String)> = c
            .query_row(
                &format!("SELECT package, cursor FROM {name} LIMIT 1"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        let Some((package, cursor)) = next else {
            return out;
        };
        let pos: (i64, i64) = {
            let v: Vec<i64> = cursor
                .trim_matches(|ch| ch == '[' || ch == ']')
                .split(',')
                .map(|x| x.parse().unwrap())
                .collect();
            (v[0], v[1])
        };
        assert!(pos > last, "{name}: cursor {cursor} after {last:?}");
        last = pos;
        c.execute(
            &format!("INSERT INTO {name}(last_sent) VALUES (?1)"),
            [&cursor],
        )
        .unwrap();
        out.push(package);
    }
}

/// The first difference between two change lists, for the failure message.
fn first_difference(got: &[Vec<Value>], want: &[Vec<Value>]) -> String {
    match got.iter().zip(want).position(|(g, w)| g != w) {
        Some(i) => format!(
            "change {i}: packed {:?}, crsql_changes {:?}",
            got[i], want[i]
        ),
        None => format!(
            "{} changes packed, {} in crsql_changes",
            got.len(),
            want.len()
        ),
    }
}

#[test]
fn packages_hold_every_change_in_position_order_with_its_values() {
    let dir = tempfile::tempdir().unwrap();
    let c = open(&dir.path().join("a.db"));
    // Thousands of acknowledgements, each a write transaction: no fsync.
    exec(&c, "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;");
    history(&c);
    let want = expected(&c);
    assert!(want.len() > 6_000, "{} changes", want.len());
    if !compact_layout() {
        let by_sql = expected_by_sql(&c);
        assert!(
            want == by_sql,
            "crsql_changes against SQL: {}",
            first_difference(&want, &by_sql)
        );
        // And with pushed-down constraints (a range of versions; the
        // local site, or any other: none).
        let range = "db_version > 3 AND db_version <= 40";
        let in_range: Vec<Vec<Value>> = by_sql
            .iter()
            .filter(|r| matches!(r[5], Value::Integer(v) if v > 3 && v <= 40))
            .cloned()
            .collect();
        for (cond, oracle) in [
            (range.to_string(), in_range.clone()),
            (format!("{range} AND site_id = crsql_site_id()"), in_range),
            (
                format!("{range} AND site_id != crsql_site_id()"),
                Vec::new(),
            ),
        ] {
            let got = rows(
                &c,
                &format!("SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crsql_changes WHERE {cond}"),
            );
            assert!(!got.is_empty() || oracle.is_empty(), "{cond}");
            assert!(
                got == oracle,
                "crsql_changes WHERE {cond}: {}",
                first_difference(&got, &oracle)
            );
        }
    }
    let largest: i64 = c
        .query_row(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM crsql_changes GROUP BY db_version)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(largest > 2048, "largest transaction: {largest} changes");
    let causal: i64 = c
        .query_row("SELECT max(cl) FROM crsql_changes", [], |r| r.get(0))
        .unwrap();
    assert!(causal >= 3, "re-inserted rows carry cl {causal}");
    // (stream, arguments, one statement per package)
    let configs = [
        ("all_1000", "max_changes = 1000", false),
        ("all_1", "max_changes = 1", false),
        ("all_7", "max_changes = 7", false),
        ("all_2", "max_changes = 2", false),
        ("all_bytes", "max_bytes = 2000", false),
        ("all_json", "max_changes = 500, encoding = 'json'", false),
        ("acked_7", "max_changes = 7", true),
        ("acked_2", "max_changes = 2", true),
    ];
    for (name, args, acked) in configs {
        exec(
            &c,
            &format!("CREATE VIRTUAL TABLE {name} USING crsql_OutboundStream({args})"),
        );
        check_stream(&c, name, args, acked, &want);
    }
    // Without a temporary directory the runs cannot be written: the large
    // transactions go to SQLite's sorter (which finds another directory).
    // The only test of this file, so no other thread reads TMPDIR.
    let missing = dir.path().join("missing");
    std::env::set_var("TMPDIR", &missing);
    for (name, args) in [
        ("sorted_1", "max_changes = 1"),
        ("sorted_2", "max_changes = 2"),
    ] {
        exec(
            &c,
            &format!("CREATE VIRTUAL TABLE {name} USING crsql_OutboundStream({args})"),
        );
        check_stream(&c, name, args, false, &want);
    }
    std::env::remove_var("TMPDIR");
    assert!(!missing.exists());
    close(c);
}

/// The changes of every package of stream `name` (created with `args`) are
/// `want`, in order.
fn check_stream(c: &Connection, name: &str, args: &str, acked: bool, want: &[Vec<Value>]) {
    let packages = if acked {
        read_acked(c, name)
    } else {
        read_all(c, name)
    };
    let got = unpacked(c, &packages);
    assert!(
        got == want,
        "{args}, {}: {}",
        if acked {
            "one statement per package"
        } else {
            "read at once"
        },
        first_difference(&got, want)
    );
}
