//! Peers that migrate at different moments keep syncing and converge
//! (issue 13): `crsql_automigrate` through a sequence of schema versions,
//! while the peers sync through the stream virtual tables.
//!
//! Each case opens 3–4 replicas (real files) linked as a star, a line or a
//! mesh: an outbound stream on the sender (a small random `max_changes`, so
//! transactions are split) and an inbound stream on the receiver, per
//! direction. Every replica starts at schema version 0, created with
//! `crsql_automigrate`. The versions add columns (one NOT NULL with a
//! default), tables (CRRs) and indexes, and change an index's columns:
//! [`VERSIONS`]. A random history interleaves:
//!
//! - local writes on a replica, to the tables and columns *its* version has:
//!   upserts, updates, deletes of 8 keys per table, each value unique;
//! - syncs of 1–3 packages over a link (a receiver behind the sender keeps
//!   the changes for what it lacks in `crsql_pending_changes`);
//! - migrations of a replica by 1–2 versions with `crsql_automigrate`.
//!
//! At the end every replica migrates to the last version, and the links are
//! pumped until nothing moves. Then every replica must have no pending
//! change left and hold exactly what an oracle holds: a replica at the last
//! version into which every replica's own changes were merged directly,
//! right after each write or migration, and at the end (cells a merge
//! stamped with the receiver's site: values kept, with zeroed clocks, when
//! a peer resurrected their row), so that a change lost anywhere on the way
//! and not overwritten later shows. The replicas' `crsql_changes`
//! must be the same too (value, versions, causal length, site).
//!
//! `PROPTEST_CASES` cases (default 30, 1–100 steps each); `PROPTEST_RNG_SEED` fixes the
//! seed (`make test` sets it); `make soak` runs the longer variant.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use rusqlite::types::Value;
use rusqlite::Connection;

use crsql_stream_harness::sql::{apply, changes_where, exec, int, pump, pump_at_most, rows};
use crsql_stream_harness::tables::{links_of, Topology};
use crsql_stream_harness::{close, open, prop_cases};

/// One schema version: its SQL, and the columns each of its tables has
/// besides the primary key `id` (INTEGER).
struct Version {
    sql: &'static str,
    tables: &'static [(&'static str, &'static [&'static str])],
}

const VERSIONS: &[Version] = &[
    Version {
        sql: "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY NOT NULL, name TEXT);
SELECT crsql_as_crr('items');",
        tables: &[("items", &["name"])],
    },
    Version {
        sql: "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY NOT NULL, name TEXT, qty INTEGER NOT NULL DEFAULT 0);
SELECT crsql_as_crr('items');",
        tables: &[("items", &["name", "qty"])],
    },
    Version {
        sql: "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY NOT NULL, name TEXT, qty INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS items_name ON items (name);
SELECT crsql_as_crr('items');
CREATE TABLE IF NOT EXISTS tags (id INTEGER PRIMARY KEY NOT NULL, label TEXT);
SELECT crsql_as_crr('tags');",
        tables: &[("items", &["name", "qty"]), ("tags", &["label"])],
    },
    Version {
        sql: "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY NOT NULL, name TEXT, qty INTEGER NOT NULL DEFAULT 0, note TEXT);
CREATE INDEX IF NOT EXISTS items_name ON items (name, qty);
SELECT crsql_as_crr('items');
CREATE TABLE IF NOT EXISTS tags (id INTEGER PRIMARY KEY NOT NULL, label TEXT, color TEXT DEFAULT 'none');
SELECT crsql_as_crr('tags');",
        tables: &[("items", &["name", "qty", "note"]), ("tags", &["label", "color"])],
    },
    Version {
        sql: "CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY NOT NULL, name TEXT, qty INTEGER NOT NULL DEFAULT 0, note TEXT);
CREATE INDEX IF NOT EXISTS items_name ON items (name, qty);
SELECT crsql_as_crr('items');
CREATE TABLE IF NOT EXISTS tags (id INTEGER PRIMARY KEY NOT NULL, label TEXT, color TEXT DEFAULT 'none');
CREATE INDEX IF NOT EXISTS tags_label ON tags (label);
SELECT crsql_as_crr('tags');
CREATE TABLE IF NOT EXISTS logs (id INTEGER PRIMARY KEY NOT NULL, msg TEXT, level INTEGER DEFAULT 1);
SELECT crsql_as_crr('logs');",
        tables: &[
            ("items", &["name", "qty", "note"]),
            ("tags", &["label", "color"]),
            ("logs", &["msg", "level"]),
        ],
    },
];

const KEYS: i64 = 8;

#[derive(Clone, Copy, Debug)]
enum Write {
    Upsert,
    Update,
    Delete,
}

#[derive(Clone, Debug)]
enum Step {
    Write {
        peer: Index,
        table: Index,
        key: i64,
        col: Index,
        how: Write,
    },
    Sync {
        link: Index,
        packages: usize,
    },
    Migrate {
        peer: Index,
        by: usize,
    },
}

#[derive(Clone)]
struct Case {
    peers: usize,
    topology: Topology,
    /// `max_changes` of each link's outbound stream.
    max_changes: Vec<usize>,
    steps: Vec<Step>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} peers, {:?}, max_changes {:?}",
            self.peers, self.topology, self.max_changes
        )?;
        self.steps.iter().try_for_each(|s| writeln!(f, "  {s:?}"))
    }
}

fn step() -> impl Strategy<Value = Step> {
    let how =
        prop_oneof![4 => Just(Write::Upsert), 3 => Just(Write::Update), 1 => Just(Write::Delete)];
    prop_oneof![
        6 => (any::<Index>(), any::<Index>(), 0..KEYS, any::<Index>(), how)
            .prop_map(|(peer, table, key, col, how)| Step::Write { peer, table, key, col, how }),
        6 => (any::<Index>(), 1..4usize).prop_map(|(link, packages)| Step::Sync { link, packages }),
        1 => (any::<Index>(), 1..3usize).prop_map(|(peer, by)| Step::Migrate { peer, by }),
    ]
}

fn case(max_steps: usize) -> impl Strategy<Value = Case> {
    (
        3..=4usize,
        prop_oneof![
            Just(Topology::Star),
            Just(Topology::Line),
            Just(Topology::Mesh)
        ],
        prop::collection::vec(1..6usize, 12),
        prop::collection::vec(step(), 1..max_steps),
    )
        .prop_map(|(peers, topology, max_changes, steps)| Case {
            peers,
            topology,
            max_changes,
            steps,
        })
}

fn migrate(c: &Connection, version: usize) {
    let done: String = c
        .query_row(
            "SELECT crsql_automigrate(?1)",
            [VERSIONS[version].sql],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("crsql_automigrate to version {version}: {e}"));
    assert_eq!(done, "migration complete");
}

struct Peer {
    conn: Connection,
    version: usize,
    /// The newest db_version of its own changes already merged into the oracle.
    copied: i64,
}

struct Net {
    peers: Vec<Peer>,
    oracle: Connection,
    links: Vec<(usize, usize)>,
    writes: i64,
}

static MIGRATIONS: AtomicUsize = AtomicUsize::new(0);
static STASHED: AtomicUsize = AtomicUsize::new(0);

impl Net {
    fn new(dir: &Path, case: &Case) -> Net {
        let oracle = open(&dir.join("oracle.db"));
        migrate(&oracle, VERSIONS.len() - 1);
        let peers: Vec<Peer> = (0..case.peers)
            .map(|p| {
                let conn = open(&dir.join(format!("p{p}.db")));
                migrate(&conn, 0);
                Peer {
                    conn,
                    version: 0,
                    copied: 0,
                }
            })
            .collect();
        let links = links_of(case.peers, case.topology);
        for (i, &(s, r)) in links.iter().enumerate() {
            let max = case.max_changes[i % case.max_changes.len()];
            exec(
                &peers[s].conn,
                &format!(
                    "CREATE VIRTUAL TABLE to_{r} USING crsql_OutboundStream(max_changes = {max})"
                ),
            );
            exec(
                &peers[r].conn,
                &format!("CREATE VIRTUAL TABLE from_{s} USING crsql_InboundStream()"),
            );
        }
        Net {
            peers,
            oracle,
            links,
            writes: 0,
        }
    }

    /// Merge peer `p`'s own changes since the last copy into the oracle.
    fn copy_to_oracle(&mut self, p: usize) {
        let peer = &mut self.peers[p];
        let mine = changes_where(
            &peer.conn,
            &format!(
                "WHERE db_version > {} AND site_id = crsql_site_id()",
                peer.copied
            ),
        );
        for ch in &mine {
            apply(&self.oracle, ch);
            peer.copied = peer.copied.max(ch.db_version);
        }
    }

    fn write(&mut self, p: usize, table: Index, key: i64, col: Index, how: Write) {
        self.writes += 1;
        let peer = &self.peers[p];
        let tables = VERSIONS[peer.version].tables;
        let (t, cols) = tables[table.index(tables.len())];
        let c = cols[col.index(cols.len())];
        // Unique values: a lost change cannot hide behind an equal one.
        let val = if c == "qty" || c == "level" {
            Value::Integer(self.writes)
        } else {
            Value::Text(format!("p{p}w{}", self.writes))
        };
        let sql = match how {
            Write::Upsert => format!(
                "INSERT INTO {t} (id, {c}) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET {c} = excluded.{c}"
            ),
            Write::Update => format!("UPDATE {t} SET {c} = ?2 WHERE id = ?1"),
            Write::Delete => format!("DELETE FROM {t} WHERE id = ?1 AND ?2 IS NOT NULL"),
        };
        peer.conn
            .execute(&sql, rusqlite::params![key, val])
            .unwrap_or_else(|e| panic!("peer {p}: {sql}: {e}"));
        self.copy_to_oracle(p);
    }

    fn migrate(&mut self, p: usize, by: usize) {
        let peer = &mut self.peers[p];
        let to = (peer.version + by).min(VERSIONS.len() - 1);
        if to == peer.version {
            return;
        }
        migrate(&peer.conn, to);
        peer.version = to;
        MIGRATIONS.fetch_add(1, Ordering::Relaxed);
        self.copy_to_oracle(p);
    }

    fn sync(&self, link: usize, packages: usize) -> usize {
        let (s, r) = self.links[link];
        let (from, to) = (&self.peers[s].conn, &self.peers[r].conn);
        let moved = pump_at_most(from, &format!("to_{r}"), to, &format!("from_{s}"), packages)
            .unwrap_or_else(|e| panic!("link {s} -> {r}: {e}"));
        let waiting = int(
            to,
            "SELECT count(*) FROM sqlite_master WHERE name = 'crsql_pending_changes'",
        );
        if waiting > 0 && int(to, "SELECT count(*) FROM crsql_pending_changes") > 0 {
            STASHED.fetch_add(1, Ordering::Relaxed);
        }
        moved
    }

    fn quiesce(&self) {
        for round in 0.. {
            assert!(round < 50, "the links did not quiesce in 50 rounds");
            let moved: usize = (0..self.links.len()).map(|l| self.sync_all(l)).sum();
            if moved == 0 {
                return;
            }
        }
    }

    fn sync_all(&self, link: usize) -> usize {
        let (s, r) = self.links[link];
        pump(
            &self.peers[s].conn,
            &format!("to_{r}"),
            &self.peers[r].conn,
            &format!("from_{s}"),
        )
        .unwrap_or_else(|e| panic!("link {s} -> {r}: {e}"))
    }

    fn check(&self) {
        let last = VERSIONS.last().unwrap();
        let dump = |c: &Connection| -> Vec<Vec<Vec<Value>>> {
            last.tables
                .iter()
                .map(|(t, cols)| {
                    rows(
                        c,
                        &format!("SELECT id, {} FROM {t} ORDER BY id", cols.join(", ")),
                    )
                })
                .collect()
        };
        let cells = |c: &Connection| {
            rows(
                c,
                // Which site a cell is attributed to is not compared: equal
                // clocks with equal values (two sites deleting a row, or
                // writing NULL) keep whichever the replica saw first.
                "SELECT \"table\", pk, cid, val, col_version, cl FROM crsql_changes ORDER BY 1, 2, 3",
            )
        };
        let want = dump(&self.oracle);
        let first_cells = cells(&self.peers[0].conn);
        for (p, peer) in self.peers.iter().enumerate() {
            let pending = int(
                &peer.conn,
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'crsql_pending_changes') \
                 THEN (SELECT count(*) FROM crsql_pending_changes) ELSE 0 END",
            );
            assert_eq!(
                pending, 0,
                "peer {p} still has changes waiting in crsql_pending_changes"
            );
            let got = dump(&peer.conn);
            for (i, (t, _)) in last.tables.iter().enumerate() {
                assert_eq!(
                    got[i], want[i],
                    "peer {p} differs from the oracle (every change merged directly) in table {t}"
                );
            }
            assert_eq!(
                cells(&peer.conn),
                first_cells,
                "peers 0 and {p} differ in crsql_changes"
            );
        }
        // The migrations left the same tables and indexes everywhere.
        let schema = |c: &Connection| {
            rows(
                c,
                "SELECT m.name, i.* FROM sqlite_master AS m, pragma_table_info(m.name) AS i \
                 WHERE m.name IN ('items', 'tags', 'logs') \
                 UNION ALL SELECT m.name, i.*, NULL, NULL, NULL FROM sqlite_master AS m, pragma_index_info(m.name) AS i \
                 WHERE m.type = 'index' AND m.tbl_name IN ('items', 'tags', 'logs') AND m.sql IS NOT NULL ORDER BY 1, 2",
            )
        };
        let oracle_schema = schema(&self.oracle);
        for (p, peer) in self.peers.iter().enumerate() {
            assert_eq!(
                schema(&peer.conn),
                oracle_schema,
                "peer {p}'s tables and indexes after the migrations"
            );
        }
    }
}

fn run(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(dir.path(), case);
    let n = case.peers;
    for s in &case.steps {
        match s {
            Step::Write {
                peer,
                table,
                key,
                col,
                how,
            } => net.write(peer.index(n), *table, *key, *col, *how),
            Step::Sync { link, packages } => {
                net.sync(link.index(net.links.len()), *packages);
            }
            Step::Migrate { peer, by } => net.migrate(peer.index(n), *by),
        }
    }
    for p in 0..n {
        net.migrate(p, VERSIONS.len());
    }
    net.quiesce();
    // A merge can stamp a cell with its own site: a row resurrected by a
    // peer keeps the values written under its old causal length, with
    // zeroed clocks, and sends them on. The oracle gets those too.
    for p in 0..n {
        net.copy_to_oracle(p);
    }
    net.check();
    for peer in net.peers {
        close(peer.conn);
    }
    close(net.oracle);
}

fn run_all(default_cases: u32, max_steps: usize) {
    let config = Config {
        cases: prop_cases(default_cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    };
    let cases = config.cases;
    let start = Instant::now();
    let result = TestRunner::new(config).run(&case(max_steps), |c| {
        run(&c);
        Ok(())
    });
    eprintln!(
        "automigrate_convergence: {cases} cases in {:?}; {} migrations; {} syncs left changes waiting",
        start.elapsed(),
        MIGRATIONS.load(Ordering::Relaxed),
        STASHED.load(Ordering::Relaxed),
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn peers_migrating_at_random_moments_while_syncing_converge_without_losing_a_change() {
    run_all(30, 100);
}

#[test]
#[ignore = "long; run by make soak"]
fn soak_peers_migrating_at_random_moments_converge() {
    run_all(500, 200);
}

/// A at version `va` sends to B at version `vb`.
fn a_sends_to_b(va: usize, vb: usize) -> (tempfile::TempDir, Connection, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a.db"));
    let b = open(&dir.path().join("b.db"));
    migrate(&a, va);
    migrate(&b, vb);
    exec(&a, "CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream()");
    exec(
        &b,
        "CREATE VIRTUAL TABLE from_a USING crsql_InboundStream()",
    );
    (dir, a, b)
}

/// The pending path in one picture: a receiver two versions behind keeps
/// a new column's and a new table's changes waiting, and one
/// `crsql_automigrate` applies them.
#[test]
fn one_automigrate_applies_the_changes_that_waited_for_its_columns_and_tables() {
    let (_dir, a, b) = a_sends_to_b(0, 0);
    migrate(&a, 3);
    exec(
        &a,
        "INSERT INTO items (id, name, qty, note) VALUES (1, 'one', 5, 'n');
         INSERT INTO tags (id, label, color) VALUES (7, 'red', 'crimson');",
    );
    pump(&a, "to_b", &b, "from_a").unwrap();
    let t = |s: &str| Value::Text(s.into());
    assert_eq!(
        rows(
            &b,
            "SELECT \"table\", \"column\", changes, reason FROM crsql_pending_schema ORDER BY 1, 2"
        ),
        vec![
            vec![
                t("items"),
                t("note"),
                Value::Integer(1),
                t("the table has no such column here")
            ],
            vec![
                t("items"),
                t("qty"),
                Value::Integer(1),
                t("the table has no such column here")
            ],
            vec![
                t("tags"),
                t("color"),
                Value::Integer(1),
                t("the table is not a CRR here")
            ],
            vec![
                t("tags"),
                t("label"),
                Value::Integer(1),
                t("the table is not a CRR here")
            ],
        ]
    );
    assert_eq!(
        rows(&b, "SELECT * FROM items"),
        vec![vec![Value::Integer(1), Value::Text("one".into())]]
    );
    migrate(&b, 3);
    assert_eq!(int(&b, "SELECT count(*) FROM crsql_pending_changes"), 0);
    assert_eq!(
        rows(&b, "SELECT * FROM items"),
        vec![vec![
            Value::Integer(1),
            Value::Text("one".into()),
            Value::Integer(5),
            Value::Text("n".into())
        ]]
    );
    assert_eq!(
        rows(&b, "SELECT * FROM tags"),
        vec![vec![
            Value::Integer(7),
            Value::Text("red".into()),
            Value::Text("crimson".into())
        ]]
    );
    close(a);
    close(b);
}

/// A change that waited while its row was deleted and inserted again (a
/// higher causal length) still loses when the migration applies it.
#[test]
fn a_waiting_change_to_a_row_deleted_and_reinserted_since_still_loses() {
    let (_dir, a, b) = a_sends_to_b(1, 0);
    exec(&a, "INSERT INTO items (id, name, qty) VALUES (2, 'old', 3)");
    pump(&a, "to_b", &b, "from_a").unwrap();
    exec(&a, "DELETE FROM items WHERE id = 2");
    exec(&a, "INSERT INTO items (id, name) VALUES (2, 'new')");
    pump(&a, "to_b", &b, "from_a").unwrap();
    migrate(&b, 1);
    let want = rows(&a, "SELECT * FROM items");
    assert_eq!(
        want,
        vec![vec![
            Value::Integer(2),
            Value::Text("new".into()),
            Value::Integer(0)
        ]]
    );
    assert_eq!(rows(&b, "SELECT * FROM items"), want);
    close(a);
    close(b);
}
