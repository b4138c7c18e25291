//! The restore story of docs/operations.md, step by step, on real files: a
//! database restored from a `VACUUM INTO` backup meets an error naming the
//! fix, gets a new site id, its peer follows the new identity and moves its
//! outbound stream back, and both end equal with nothing lost.

use crsql_stream_harness::sql::{exec, int, pump, rows, text};
use crsql_stream_harness::{close, open};
use rusqlite::Connection;

fn hex_site(c: &Connection) -> String {
    text(c, "SELECT lower(hex(crsql_site_id()))")
}

fn todos(c: &Connection) -> Vec<Vec<rusqlite::types::Value>> {
    rows(c, "SELECT * FROM todos ORDER BY id")
}

fn position(c: &Connection, stream: &str, col: &str) -> String {
    text(
        c,
        &format!("SELECT {col} FROM crsql_streams WHERE name = '{stream}'"),
    )
}

#[test]
fn a_restored_database_gets_its_lost_changes_back_through_a_rewound_stream() {
    restore_story(false);
}

#[test]
fn a_restored_database_gets_its_lost_changes_back_through_re_created_streams() {
    restore_story(true);
}

/// With `exclude`, B's stream to A excludes A's site (as the bindings' sync
/// does) and must be re-created; without, it names A as its `peer` and is
/// rewound.
fn restore_story(exclude: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let backup = dir.path().join("a-backup.db");
    let a = open(&a_path);
    let b = open(&b_path);
    for c in [&a, &b] {
        exec(
            c,
            "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT);
             SELECT crsql_as_crr('todos');",
        );
    }
    let (sa, sb) = (hex_site(&a), hex_site(&b));
    exec(
        &a,
        &format!(
            "CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream(exclude_sites = '{sb}');
             CREATE VIRTUAL TABLE from_b USING crsql_InboundStream();"
        ),
    );
    let to_a_args = if exclude {
        format!("exclude_sites = '{sa}'")
    } else {
        format!("peer = '{sa}'")
    };
    exec(
        &b,
        &format!(
            "CREATE VIRTUAL TABLE to_a USING crsql_OutboundStream({to_a_args});
             CREATE VIRTUAL TABLE from_a USING crsql_InboundStream();"
        ),
    );
    let sync = |a: &Connection, b: &Connection| -> Result<(), String> {
        pump(a, "to_b", b, "from_a")?;
        pump(b, "to_a", a, "from_b")?;
        Ok(())
    };
    exec(&a, "INSERT INTO todos VALUES ('a1', 'before backup')");
    exec(&b, "INSERT INTO todos VALUES ('b1', 'from b')");
    sync(&a, &b).unwrap();
    exec(&a, &format!("VACUUM INTO '{}'", backup.display()));

    // After the backup: A writes more, B too, and they sync.
    exec(
        &a,
        "INSERT INTO todos VALUES ('a2', 'lost by the restore'); UPDATE todos SET title = 'edited' WHERE id = 'a1'",
    );
    exec(&b, "INSERT INTO todos VALUES ('b2', 'also lost by A')");
    sync(&a, &b).unwrap();
    let before_restore = todos(&b);
    assert_eq!(todos(&a), before_restore);
    close(a);

    // Restore A from the backup.
    std::fs::copy(&backup, &a_path).unwrap();
    let a = open(&a_path);
    // A new write, then the first sync meets the error naming the fix.
    exec(&a, "INSERT INTO todos VALUES ('a3', 'after the restore')");
    let err = sync(&a, &b).unwrap_err();
    assert!(err.contains("crsql_new_site_id"), "{err}");

    // The procedure of docs/operations.md.
    let new_a: String = text(&a, "SELECT lower(hex(crsql_new_site_id()))");
    assert_ne!(new_a, sa);
    let a_sent = position(&a, "to_b", "last_sent");
    let a_applied = position(&a, "from_b", "last_applied");
    exec(
        &b,
        &format!(
            "DROP TABLE from_a;
             CREATE VIRTUAL TABLE from_a USING crsql_InboundStream(since = '{a_sent}');"
        ),
    );
    if exclude {
        exec(
            &b,
            &format!(
                "DROP TABLE to_a;
                 CREATE VIRTUAL TABLE to_a USING crsql_OutboundStream(since = '{a_applied}', exclude_sites = '{new_a}');"
            ),
        );
        exec(
            &a,
            &format!(
                "DROP TABLE from_b;
                 CREATE VIRTUAL TABLE from_b USING crsql_InboundStream(since = '{a_applied}');"
            ),
        );
    } else {
        exec(
            &b,
            &format!("INSERT INTO to_a(rewind) VALUES ('{a_applied}')"),
        );
    }
    exec(&a, "INSERT INTO todos VALUES ('a4', 'with the new id')");
    sync(&a, &b).unwrap();
    sync(&a, &b).unwrap();
    assert_eq!(todos(&a), todos(&b));
    let ids: Vec<String> = todos(&a)
        .iter()
        .map(|r| match &r[0] {
            rusqlite::types::Value::Text(t) => t.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids, ["a1", "a2", "a3", "a4", "b1", "b2"]);
    assert_eq!(
        text(&a, "SELECT title FROM todos WHERE id = 'a1'"),
        "edited",
        "A's lost edit came back from B"
    );
    // A's writes after the rekey carry the new id; the restored ones the old.
    let site_of = |id: &str| {
        text(
            &b,
            &format!(
                "SELECT lower(hex(site_id)) FROM crsql_changes WHERE pk = crsql_pack_columns('{id}') AND cid = 'title'"
            ),
        )
    };
    assert_eq!(site_of("a4"), new_a);
    assert_eq!(site_of("a2"), sa);
    close(a);
    close(b);
}

#[test]
fn a_new_site_id_keeps_local_only_streams_whole_and_reaches_other_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let a = open(&path);
    let other = open(&path);
    exec(
        &a,
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v); SELECT crsql_as_crr('t');
         CREATE VIRTUAL TABLE mine USING crsql_OutboundStream(local_only = 1);
         INSERT INTO t VALUES ('1', 'before');",
    );
    let before = text(&other, "SELECT hex(crsql_site_id())");
    exec(&a, "SELECT crsql_new_site_id()");
    exec(&a, "INSERT INTO t VALUES ('2', 'after')");
    // Both local writes, under the old and the new id, are local.
    assert_eq!(int(&a, "SELECT sum(changes) FROM mine"), 2);
    // A second new id keeps both former ones (their list stays a blob of
    // 16-byte ids: SQL's `||` used to turn it into text and lose them).
    exec(&a, "SELECT crsql_new_site_id()");
    exec(&a, "INSERT INTO t VALUES ('3', 'later')");
    assert_eq!(int(&a, "SELECT sum(changes) FROM mine"), 3);
    assert_eq!(
        int(
            &a,
            "SELECT length(value) FROM crsql_master WHERE key = 'former_site_ids' AND typeof(value) = 'blob'"
        ),
        32
    );
    // Another connection sees the new id.
    let after = text(&other, "SELECT hex(crsql_site_id())");
    assert_ne!(before, after);
    assert_eq!(after, text(&a, "SELECT hex(crsql_site_id())"));
    // A busy database: refused, and no transaction is left open.
    other
        .execute_batch("BEGIN; SELECT count(*) FROM t;")
        .unwrap();
    a.busy_timeout(std::time::Duration::ZERO).unwrap();
    let journal: String = a
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    if journal != "wal" {
        assert!(a.execute_batch("SELECT crsql_new_site_id()").is_err());
        assert!(
            a.is_autocommit(),
            "a failed crsql_new_site_id left a transaction open"
        );
    }
    other.execute_batch("COMMIT").unwrap();
    close(other);
    close(a);
}
