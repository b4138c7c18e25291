//! Fractional indexing (`crsql_fract_as_ordered`, the `<table>_fractindex`
//! view, `crsql_fract_fix_conflict_return_old_key`) on peers that sync only
//! through the stream virtual tables, on real database files.
//!
//! Every peer has `todo(id, list, title, position)` ordered by `position`
//! within `list`; one peer creates it through the `clset` module, the others
//! with `crsql_as_crr`. Concurrent reorders of the same rows and concurrent
//! inserts after the same row (which give two rows the same key, as in
//! cr-sqlite) must converge, and the next insert after a row that shares its
//! key must land right after it.
//!
//! The property test runs random histories on three fully linked peers:
//! inserts after a row, at the start or the end, moves through the view or
//! with -1 / 1, deletes, and syncs of single links at random moments. After
//! each local operation the row must sit where it was asked to (right after
//! its anchor, first or last, in `(position, id)` order); at the end all
//! peers hold identical tables whose every key is valid.

use std::path::Path;

use crsql_stream_core::fract::validate_key;
use crsql_stream_harness::sql::{exec, pump, rows, text};
use crsql_stream_harness::{close, open};
use proptest::prelude::*;
use proptest::sample::Index;
use rusqlite::types::Value;
use rusqlite::Connection;

const NAMES: [&str; 3] = ["a", "b", "c"];

struct Peers {
    conns: Vec<Connection>,
}

/// Open `n` peers in `dir`, create the ordered table on each (peer 1 via
/// clset) and link every pair with an outbound and an inbound stream.
fn peers(dir: &Path, n: usize) -> Peers {
    let conns: Vec<Connection> = (0..n)
        .map(|i| {
            let c = open(&dir.join(format!("{}.db", NAMES[i])));
            // Durability is not under test here; fsyncs would dominate the run.
            exec(&c, "PRAGMA synchronous = OFF;");
            let create = if i == 1 {
                "CREATE VIRTUAL TABLE todo_schema USING clset(id INTEGER PRIMARY KEY NOT NULL, list TEXT, title TEXT, position);"
            } else {
                "CREATE TABLE todo (id INTEGER PRIMARY KEY NOT NULL, list TEXT, title TEXT, position);
                 SELECT crsql_as_crr('todo');"
            };
            exec(&c, create);
            exec(&c, "SELECT crsql_fract_as_ordered('todo', 'position', 'list');");
            c
        })
        .collect();
    let sites: Vec<String> = conns
        .iter()
        .map(|c| text(c, "SELECT hex(crsql_site_id())"))
        .collect();
    for (i, c) in conns.iter().enumerate() {
        for (j, site) in sites.iter().enumerate() {
            if i != j {
                exec(
                    c,
                    &format!(
                        "CREATE VIRTUAL TABLE to_{to} USING crsql_OutboundStream(exclude_sites = '{site}', max_changes = 3);
                         CREATE VIRTUAL TABLE from_{to} USING crsql_InboundStream(from = '{site}');",
                        to = NAMES[j]
                    ),
                );
            }
        }
    }
    Peers { conns }
}

impl Peers {
    /// Carry every pending package from peer `from` to peer `to`.
    fn sync(&self, from: usize, to: usize) {
        pump(
            &self.conns[from],
            &format!("to_{}", NAMES[to]),
            &self.conns[to],
            &format!("from_{}", NAMES[from]),
        )
        .unwrap_or_else(|e| panic!("sync {} -> {}: {e}", NAMES[from], NAMES[to]));
    }

    /// Sync every link until the peers hold the same rows (a change relayed
    /// by one peer reaches the others in the next round).
    fn sync_all(&self) {
        for _ in 0..self.conns.len() {
            for from in 0..self.conns.len() {
                for to in 0..self.conns.len() {
                    if from != to {
                        self.sync(from, to);
                    }
                }
            }
        }
    }

    fn assert_converged(&self) {
        let first = table(&self.conns[0]);
        for (i, c) in self.conns.iter().enumerate().skip(1) {
            assert_eq!(table(c), first, "peer {} differs from peer a", NAMES[i]);
        }
        for row in &first {
            if let Value::Text(key) = &row[3] {
                assert!(validate_key(key).is_ok(), "invalid key in {row:?}");
            } else {
                panic!("row without a key: {row:?}");
            }
        }
    }

    fn close(self) {
        for c in self.conns {
            close(c);
        }
    }
}

/// Every row, in list order: by list, then position, then id.
fn table(c: &Connection) -> Vec<Vec<Value>> {
    rows(
        c,
        "SELECT id, list, title, position FROM todo ORDER BY list, position, id",
    )
}

/// The ids of one list, in order.
fn list(c: &Connection, list: &str) -> Vec<i64> {
    rows(
        c,
        &format!("SELECT id FROM todo WHERE list = '{list}' ORDER BY position, id"),
    )
    .into_iter()
    .map(|r| match r[0] {
        Value::Integer(i) => i,
        ref other => panic!("id {other:?}"),
    })
    .collect()
}

fn position(c: &Connection, id: i64) -> String {
    text(c, &format!("SELECT position FROM todo WHERE id = {id}"))
}

fn insert_after(c: &Connection, id: i64, after: i64) {
    exec(
        c,
        &format!(
            "INSERT INTO todo_fractindex (id, list, title, after_id) VALUES ({id}, 'L', 't{id}', {after})"
        ),
    );
}

fn move_after(c: &Connection, id: i64, after: i64) {
    exec(
        c,
        &format!("UPDATE todo_fractindex SET after_id = {after} WHERE id = {id}"),
    );
}

#[test]
fn concurrent_reorders_and_inserts_after_the_same_row_converge_through_streams() {
    let dir = tempfile::tempdir().unwrap();
    let p = peers(dir.path(), 2);
    let (a, b) = (&p.conns[0], &p.conns[1]);
    for id in 1..=5 {
        exec(
            a,
            &format!("INSERT INTO todo VALUES ({id}, 'L', 't{id}', 1)"),
        );
    }
    p.sync_all();
    assert_eq!(list(b, "L"), [1, 2, 3, 4, 5]);

    // The same row moved to two places, another to both ends, and two new
    // rows inserted after the same row, concurrently.
    move_after(a, 1, 4);
    move_after(b, 1, 2);
    exec(a, "UPDATE todo SET position = -1 WHERE id = 5");
    exec(b, "UPDATE todo SET position = 1 WHERE id = 5");
    insert_after(a, 6, 3);
    insert_after(b, 7, 3);
    let (a1, b1) = (position(a, 1), position(b, 1));
    assert_eq!(list(a, "L"), [5, 2, 3, 6, 4, 1]);
    assert_eq!(list(b, "L"), [2, 1, 3, 7, 4, 5]);
    p.sync_all();
    p.assert_converged();
    // One of the two moves won, on both peers.
    let won = position(a, 1);
    assert!(won == a1 || won == b1, "{won} is neither {a1} nor {b1}");
    // 6 and 7 got the same key, as they do in cr-sqlite.
    assert_eq!(position(a, 6), position(a, 7));

    // Inserting after 6 moves 6 before the shared key: 8 lands right after
    // it, 7 keeps the key.
    insert_after(b, 8, 6);
    let order = list(b, "L");
    let at = order.iter().position(|&x| x == 6).unwrap();
    assert_eq!(&order[at..at + 3], [6, 8, 7]);
    assert_ne!(position(b, 6), position(b, 7));
    p.sync_all();
    p.assert_converged();
    assert_eq!(list(a, "L"), order);
    p.close();
}

#[derive(Debug, Clone)]
enum Op {
    /// Insert a new row right after the row at this index of the list.
    InsertAfter(usize, Index),
    /// Insert a new row first (-1) or last (1).
    InsertEnd(usize, i64),
    /// Move a row right after another through the view.
    MoveAfter(usize, Index, Index),
    /// Move a row first (-1) or last (1) by writing the order column.
    MoveEnd(usize, Index, i64),
    Delete(usize, Index),
    Sync(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let peer = 0..3usize;
    prop_oneof![
        3 => (peer.clone(), any::<Index>()).prop_map(|(p, i)| Op::InsertAfter(p, i)),
        1 => (peer.clone(), prop_oneof![Just(-1i64), Just(1)]).prop_map(|(p, e)| Op::InsertEnd(p, e)),
        3 => (peer.clone(), any::<Index>(), any::<Index>()).prop_map(|(p, i, j)| Op::MoveAfter(p, i, j)),
        1 => (peer.clone(), any::<Index>(), prop_oneof![Just(-1i64), Just(1)]).prop_map(|(p, i, e)| Op::MoveEnd(p, i, e)),
        1 => (peer.clone(), any::<Index>()).prop_map(|(p, i)| Op::Delete(p, i)),
        3 => (peer.clone(), peer).prop_map(|(f, t)| Op::Sync(f, t)),
    ]
}

/// Run one history; after each local operation check that the row landed
/// where it was asked to.
fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let p = peers(dir.path(), 3);
    let mut next_id = 100 + 1;
    // A few rows every peer starts from.
    exec(
        &p.conns[0],
        "INSERT INTO todo VALUES (1, 'L', 't1', 1), (2, 'L', 't2', 1), (3, 'L', 't3', 1)",
    );
    p.sync_all();
    for op in ops {
        match *op {
            Op::InsertAfter(peer, ref at) => {
                let c = &p.conns[peer];
                let order = list(c, "L");
                if order.is_empty() {
                    continue;
                }
                let after = order[at.index(order.len())];
                next_id += 1;
                insert_after(c, next_id, after);
                check_follows(c, next_id, after);
            }
            Op::InsertEnd(peer, end) => {
                let c = &p.conns[peer];
                next_id += 1;
                exec(
                    c,
                    &format!("INSERT INTO todo VALUES ({next_id}, 'L', 'e', {end})"),
                );
                check_end(c, next_id, end);
            }
            Op::MoveAfter(peer, ref row, ref at) => {
                let c = &p.conns[peer];
                let order = list(c, "L");
                if order.len() < 2 {
                    continue;
                }
                let (id, after) = (order[row.index(order.len())], order[at.index(order.len())]);
                if id == after {
                    continue;
                }
                move_after(c, id, after);
                check_follows(c, id, after);
            }
            Op::MoveEnd(peer, ref row, end) => {
                let c = &p.conns[peer];
                let order = list(c, "L");
                if order.is_empty() {
                    continue;
                }
                let id = order[row.index(order.len())];
                exec(
                    c,
                    &format!("UPDATE todo SET position = {end} WHERE id = {id}"),
                );
                check_end(c, id, end);
            }
            Op::Delete(peer, ref row) => {
                let c = &p.conns[peer];
                let order = list(c, "L");
                if order.len() > 1 {
                    let id = order[row.index(order.len())];
                    exec(c, &format!("DELETE FROM todo WHERE id = {id}"));
                }
            }
            Op::Sync(from, to) => {
                if from != to {
                    p.sync(from, to);
                }
            }
        }
    }
    p.sync_all();
    p.assert_converged();
    p.close();
}

/// Row `id` comes right after row `after` in the list.
fn check_follows(c: &Connection, id: i64, after: i64) {
    let now = list(c, "L");
    let i = now.iter().position(|&x| x == after).unwrap();
    assert_eq!(now.get(i + 1), Some(&id), "{id} after {after}: {now:?}");
}

fn check_end(c: &Connection, id: i64, end: i64) {
    let now = list(c, "L");
    let want = if end < 0 { now.first() } else { now.last() };
    assert_eq!(want, Some(&id), "{id} to end {end}: {now:?}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_reorders_on_three_peers_converge(ops in proptest::collection::vec(op(), 1..40)) {
        run(&ops);
    }
}
