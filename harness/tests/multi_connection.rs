//! Several connections to one database file must behave as one.
//!
//! The extension keeps state per connection: the cached db_version and
//! seq, the row-by-row merge's memo (DECISIONS D50), held statements
//! (`crr::held`), the counts behind `lag_changes` and their seq cache
//! (D33), the compact layout's per-transaction records, `last_retrieved`,
//! the schema caches. An application writing locally while a sync process
//! applies packages opens one file from several connections, and each
//! connection must notice what the others committed.
//!
//! A property test: one file opened through 2–3 connections (rollback
//! journal or WAL), with two CRRs (an INTEGER key, and a composite
//! (INTEGER, TEXT) key), three outbound streams (every change; `t1`'s
//! local ones; all but the peer's) and an inbound stream from a peer
//! database. A random history runs, each step on a random connection,
//! serialized (one write transaction at a time): transactions of local
//! INSERT, `INSERT OR REPLACE`, UPDATE, `UPDATE OR REPLACE` of a key and
//! DELETE, row-by-row merges of windows of the peer's changes
//! (`INSERT INTO crsql_changes`) and packages of the peer applied through
//! the inbound stream, each transaction autocommitted, committed, rolled
//! back or rolled back to a savepoint; reads of the committed state by
//! another connection while a transaction is open; writes on the peer;
//! packages read from an outbound stream and acknowledged;
//! `crsql_compact()`; `crsql_forget_peer`; an alteration of `t1` (a
//! column added or dropped, `crsql_begin_alter` … `crsql_commit_alter`);
//! an outbound stream dropped and created again; a connection closed and
//! opened again.
//!
//! The oracle is a second file with the same setup through a single
//! connection, fed the same history in lock step (the same peer changes
//! and package bytes). Every statement must have the same outcome on
//! both, every package read the same positions and changes, and after
//! every step both files must hold the same rows, the same `crsql_changes`
//! (all nine columns: positions included), the same compaction records
//! and the same `crsql_streams` positions and lags (each file's own site
//! id read as a placeholder). On the multi-connection file, every
//! stream's `lag_changes` must equal a count over `crsql_changes` after
//! every step; at the end, through every connection: the state equals the
//! oracle's, `crsql_db_version()` is one value, `PRAGMA integrity_check`
//! is ok, positions are unique, and (before any compaction) a fresh read
//! of every stream delivers `lag_changes` changes.
//!
//! A connection that keeps its cached db_version after another
//! connection committed fails it in two steps (an insert on one
//! connection, a read on the other). Runs `PROPTEST_CASES` cases
//! (default 40).

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence};
use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use crsql_stream_harness::sql::{assert_positions_unique, exec, message, rows, INSERT_CHANGE};
use crsql_stream_harness::{close, open, open_memory, prop_cases};

const KEYS: i64 = 5;

const SCHEMA: &str = "CREATE TABLE t1 (id INTEGER PRIMARY KEY NOT NULL, a, b);
CREATE TABLE t2 (k INTEGER NOT NULL, s TEXT NOT NULL, v, PRIMARY KEY (k, s));
SELECT crsql_as_crr('t1');
SELECT crsql_as_crr('t2');";

/// Outbound streams of the files: name, `tables`, local only, excludes
/// the peer (which also makes it the peer's stream, for the horizon).
const STREAMS: [(&str, Option<&str>, bool, bool); 3] = [
    ("s_all", None, false, false),
    ("s_t1", Some("t1"), true, false),
    ("s_ex", None, false, true),
];

#[derive(Clone, Debug)]
enum Stmt {
    Insert {
        t: u8,
        k: i64,
        v: i64,
        replace: bool,
    },
    Update {
        t: u8,
        k: i64,
        v: i64,
    },
    Delete {
        t: u8,
        k: i64,
    },
    /// `UPDATE OR REPLACE` of the primary key, maybe onto a live key.
    MoveKey {
        t: u8,
        k: i64,
        to: i64,
    },
    /// Merge up to `n` of the peer's changes, in position order, from a
    /// random one on, row by row.
    Merge {
        from: Index,
        n: usize,
    },
    /// Apply the peer's next package through inbound stream `from_p`.
    Apply,
    /// Another connection reads the committed state.
    Peek {
        conn: Index,
    },
}

#[derive(Clone, Copy, Debug)]
enum End {
    /// No BEGIN: each statement is its own transaction.
    Auto,
    Commit,
    Rollback,
    /// `SAVEPOINT` before statement `i`, `ROLLBACK TO` it after the last,
    /// then COMMIT.
    RollbackTo(Index),
}

#[derive(Clone, Debug)]
enum Step {
    Txn {
        conn: Index,
        stmts: Vec<Stmt>,
        end: End,
    },
    /// Local writes on the peer (autocommitted).
    PeerWrite(Vec<Stmt>),
    /// Read up to `n` packages of a stream, and acknowledge the last.
    Pull {
        conn: Index,
        stream: usize,
        n: usize,
        ack: bool,
    },
    Compact {
        conn: Index,
    },
    ForgetPeer {
        conn: Index,
    },
    /// An alteration of `t1`: a column added (with non-default values for
    /// some rows), or the last added one dropped.
    Alter {
        conn: Index,
    },
    /// Close a connection of the multi-connection file and open it again
    /// (the oracle keeps its connection).
    Reopen {
        conn: Index,
    },
    /// `DROP TABLE` of an outbound stream, and CREATE again (from `[0,0]`).
    NewStream {
        conn: Index,
        stream: usize,
    },
}

fn local_stmt() -> impl Strategy<Value = Stmt> {
    let k = 0..KEYS;
    let v = 0..4i64;
    prop_oneof![
        4 => (0..2u8, k.clone(), v.clone(), any::<bool>())
            .prop_map(|(t, k, v, replace)| Stmt::Insert { t, k, v, replace }),
        3 => (0..2u8, k.clone(), v).prop_map(|(t, k, v)| Stmt::Update { t, k, v }),
        2 => (0..2u8, k.clone()).prop_map(|(t, k)| Stmt::Delete { t, k }),
        1 => (0..2u8, k.clone(), k).prop_map(|(t, k, to)| Stmt::MoveKey { t, k, to }),
    ]
}

fn stmt() -> impl Strategy<Value = Stmt> {
    prop_oneof![
        10 => local_stmt(),
        3 => (any::<Index>(), 1..8usize).prop_map(|(from, n)| Stmt::Merge { from, n }),
        3 => Just(Stmt::Apply),
        1 => any::<Index>().prop_map(|conn| Stmt::Peek { conn }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let end = prop_oneof![
        4 => Just(End::Auto),
        4 => Just(End::Commit),
        1 => Just(End::Rollback),
        1 => any::<Index>().prop_map(End::RollbackTo),
    ];
    prop_oneof![
        10 => (any::<Index>(), prop::collection::vec(stmt(), 1..5), end)
            .prop_map(|(conn, stmts, end)| Step::Txn { conn, stmts, end }),
        3 => prop::collection::vec(local_stmt(), 1..4).prop_map(Step::PeerWrite),
        4 => (any::<Index>(), 0..STREAMS.len(), 1..4usize, prop::bool::weighted(0.8))
            .prop_map(|(conn, stream, n, ack)| Step::Pull { conn, stream, n, ack }),
        1 => any::<Index>().prop_map(|conn| Step::Compact { conn }),
        1 => any::<Index>().prop_map(|conn| Step::ForgetPeer { conn }),
        1 => any::<Index>().prop_map(|conn| Step::Alter { conn }),
        1 => any::<Index>().prop_map(|conn| Step::Reopen { conn }),
        1 => (any::<Index>(), 0..STREAMS.len())
            .prop_map(|(conn, stream)| Step::NewStream { conn, stream }),
    ]
}

#[derive(Debug)]
struct Case {
    conns: usize,
    wal: bool,
    steps: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        2..=3usize,
        any::<bool>(),
        prop::collection::vec(step(), 1..40),
    )
        .prop_map(|(conns, wal, steps)| Case { conns, wal, steps })
}

/// The result of a statement or a read: its rows, or its error.
type Out = Result<Vec<Vec<Value>>, String>;

/// A file's own site id, as a blob and in hex, read as a placeholder.
struct Site(Vec<u8>, String);

impl Site {
    fn of(c: &Connection) -> Site {
        let id = crsql_stream_harness::sql::site(c);
        let hex = id.iter().map(|b| format!("{b:02x}")).collect();
        Site(id, hex)
    }

    fn value(&self, v: Value) -> Value {
        match v {
            Value::Blob(b) if b == self.0 => Value::Text("<own site>".into()),
            Value::Text(t) => Value::Text(self.text(&t)),
            v => v,
        }
    }

    fn text(&self, t: &str) -> String {
        t.replace(&self.1, "<own site>")
            .replace(&self.1.to_uppercase(), "<own site>")
    }

    fn rows(&self, rows: Vec<Vec<Value>>) -> Vec<Vec<Value>> {
        rows.into_iter()
            .map(|r| r.into_iter().map(|v| self.value(v)).collect())
            .collect()
    }

    fn out(&self, out: Out) -> Out {
        out.map(|r| self.rows(r)).map_err(|e| self.text(&e))
    }
}

fn query(c: &Connection, sql: &str, args: &[Value]) -> Out {
    let mut stmt = c.prepare(sql).map_err(|e| message(&e))?;
    let n = stmt.column_count();
    let mut rows = stmt
        .query(params_from_iter(args))
        .map_err(|e| message(&e))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(|e| message(&e))? {
        out.push((0..n).map(|i| r.get(i).unwrap()).collect());
    }
    Ok(out)
}

fn batch(c: &Connection, sql: &str) -> Out {
    c.execute_batch(sql)
        .map(|()| Vec::new())
        .map_err(|e| message(&e))
}

fn changed(c: &Connection, sql: &str, args: &[Value]) -> Out {
    c.execute(sql, params_from_iter(args))
        .map(|n| vec![vec![Value::Integer(n as i64)]])
        .map_err(|e| message(&e))
}

/// A local write (on a file or on the peer).
fn write(c: &Connection, s: &Stmt) -> Out {
    let (i, t) = (Value::Integer, Value::Text);
    let s2 = |k: i64| t(format!("s{}", k % 2));
    match *s {
        Stmt::Insert {
            t: 0,
            k,
            v,
            replace,
        } => changed(
            c,
            if replace {
                "INSERT OR REPLACE INTO t1 (id, a, b) VALUES (?1, ?2, ?3)"
            } else {
                "INSERT INTO t1 (id, a, b) VALUES (?1, ?2, ?3)"
            },
            &[i(k), i(v), t(format!("b{v}"))],
        ),
        Stmt::Insert { k, v, replace, .. } => changed(
            c,
            if replace {
                "INSERT OR REPLACE INTO t2 VALUES (?1, ?2, ?3)"
            } else {
                "INSERT INTO t2 VALUES (?1, ?2, ?3)"
            },
            &[i(k), s2(k), i(v)],
        ),
        Stmt::Update { t: 0, k, v } => {
            changed(c, "UPDATE t1 SET a = ?2 WHERE id = ?1", &[i(k), i(v)])
        }
        Stmt::Update { k, v, .. } => changed(c, "UPDATE t2 SET v = ?2 WHERE k = ?1", &[i(k), i(v)]),
        Stmt::Delete { t: 0, k } => changed(c, "DELETE FROM t1 WHERE id = ?1", &[i(k)]),
        Stmt::Delete { k, .. } => changed(c, "DELETE FROM t2 WHERE k = ?1", &[i(k)]),
        Stmt::MoveKey { t: 0, k, to } => changed(
            c,
            "UPDATE OR REPLACE t1 SET id = ?2 WHERE id = ?1",
            &[i(k), i(to)],
        ),
        Stmt::MoveKey { k, to, .. } => changed(
            c,
            "UPDATE OR REPLACE t2 SET k = ?2 WHERE k = ?1",
            &[i(k), i(to)],
        ),
        _ => unreachable!("not a local write: {s:?}"),
    }
}

/// One file: its connections (one for the oracle) and its site id.
struct File {
    path: std::path::PathBuf,
    conns: Vec<Connection>,
    site: Site,
}

impl File {
    fn new(path: &std::path::Path, conns: usize, wal: bool, peer: &str) -> File {
        let first = open(path);
        if wal {
            exec(&first, "PRAGMA journal_mode = WAL");
        }
        exec(&first, SCHEMA);
        for i in 0..STREAMS.len() {
            exec(&first, &create_stream(i, peer));
        }
        exec(
            &first,
            &format!("CREATE VIRTUAL TABLE from_p USING crsql_InboundStream(from = '{peer}')"),
        );
        let site = Site::of(&first);
        let mut all = vec![first];
        all.extend((1..conns).map(|_| open(path)));
        File {
            path: path.to_path_buf(),
            conns: all,
            site,
        }
    }

    /// Everything both files must agree on, read through connection `c`.
    fn state(&self, c: usize) -> Vec<Vec<Value>> {
        let c = &self.conns[c];
        let mut sqls = vec![
            "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq \
             FROM crsql_changes ORDER BY db_version, seq, \"table\", pk, cid",
            "SELECT crsql_db_version()",
            "SELECT * FROM t1 ORDER BY id",
            "SELECT * FROM t2 ORDER BY k, s",
            "SELECT name, last_sent, last_applied, lag_versions, lag_changes \
             FROM crsql_streams ORDER BY name",
            "SELECT name, part, package FROM crsql_stream_staging ORDER BY 1, 2",
        ];
        if compacted(c) {
            sqls.push("SELECT * FROM crsql_tombstones ORDER BY tbl, pk");
        }
        let mut out = Vec::new();
        for sql in sqls {
            out.push(vec![Value::Text(sql.into())]);
            out.extend(self.site.rows(rows(c, sql)));
        }
        out
    }

    /// What another connection sees while a transaction is open (the
    /// committed state), read through connection `c`.
    fn view(&self, c: usize) -> Out {
        let c = &self.conns[c];
        let mut out = Vec::new();
        for sql in [
            "SELECT crsql_db_version(), (SELECT count(*) FROM crsql_changes)",
            "SELECT name, last_sent, last_applied, lag_versions, lag_changes \
             FROM crsql_streams ORDER BY name",
            "SELECT since, cursor, changes FROM s_all LIMIT 2",
        ] {
            out.extend(self.site.out(query(c, sql, &[]))?);
        }
        Ok(out)
    }

    /// Every stream's `lag_changes`, read through connection `c`, against
    /// a count of the rows of `crsql_changes` it lets through.
    fn check_lag(&self, c: usize, when: &str) {
        let conn = &self.conns[c];
        let changes = rows(
            conn,
            "SELECT \"table\", db_version, seq, site_id FROM crsql_changes",
        );
        let peer: Vec<u8> = conn
            .query_row(
                "SELECT peer FROM crsql_stream_state WHERE name = 'from_p'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        for (name, tables, local, ex) in STREAMS {
            let (sent, lag): (String, i64) = conn
                .query_row(
                    "SELECT last_sent, lag_changes FROM crsql_streams WHERE name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            let p: (i64, i64) = serde_json::from_str(&sent).unwrap();
            let expected = changes
                .iter()
                .filter(|r| {
                    let [Value::Text(t), Value::Integer(v), Value::Integer(s), Value::Blob(site)] =
                        &r[..]
                    else {
                        panic!("a change {r:?}")
                    };
                    (*v, *s) > p
                        && tables.is_none_or(|only| only == t)
                        && (!local || *site == self.site.0)
                        && !(ex && *site == peer)
                })
                .count() as i64;
            assert_eq!(
                lag, expected,
                "{when}: connection {c}: stream {name} at {sent}: lag_changes is {lag}, \
                 crsql_changes has {expected} changes after it"
            );
        }
    }
}

/// The CREATE statement of outbound stream `i`.
fn create_stream(i: usize, peer: &str) -> String {
    let (name, tables, local, ex) = STREAMS[i];
    let mut args = vec!["max_changes = 3".to_string()];
    if let Some(t) = tables {
        args.push(format!("tables = '{t}'"));
    }
    if local {
        args.push("local_only = 1".into());
    }
    if ex {
        args.push(format!("exclude_sites = '{peer}'"));
    }
    format!(
        "CREATE VIRTUAL TABLE {name} USING crsql_OutboundStream({})",
        args.join(", ")
    )
}

fn compacted(c: &Connection) -> bool {
    crsql_stream_harness::sql::exists(c, "crsql_tombstones")
}

/// The multi-connection file, its oracle, and the peer.
struct World {
    multi: File,
    oracle: File,
    peer: Connection,
    peer_hex: String,
    /// Columns `Alter` added to `t1`.
    added: std::cell::Cell<usize>,
}

impl World {
    fn new(dir: &std::path::Path, conns: usize, wal: bool) -> World {
        let peer = open_memory();
        exec(&peer, SCHEMA);
        exec(
            &peer,
            "CREATE VIRTUAL TABLE to_f USING crsql_OutboundStream(max_changes = 4)",
        );
        let hex = Site::of(&peer).1;
        World {
            multi: File::new(&dir.join("multi.db"), conns, wal, &hex),
            oracle: File::new(&dir.join("oracle.db"), 1, wal, &hex),
            peer,
            peer_hex: hex,
            added: std::cell::Cell::new(0),
        }
    }

    fn conn(&self, i: &Index) -> usize {
        i.index(self.multi.conns.len())
    }

    /// Run `f` on connection `c` of the multi file and on the oracle; both
    /// must give the same result.
    fn both(&self, c: usize, what: &dyn std::fmt::Debug, f: impl Fn(&Connection) -> Out) {
        let m = self.multi.site.out(f(&self.multi.conns[c]));
        let o = self.oracle.site.out(f(&self.oracle.conns[0]));
        assert_eq!(
            m, o,
            "{what:?} on connection {c}: the multi-connection file (left) and the oracle (right) differ"
        );
    }

    fn run_stmt(&self, c: usize, s: &Stmt, before: &Option<Out>) {
        match s {
            Stmt::Merge { from, n } => {
                let peer = rows(
                    &self.peer,
                    "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq \
                     FROM crsql_changes ORDER BY db_version, seq",
                );
                if peer.is_empty() {
                    return;
                }
                let lo = from.index(peer.len());
                let window = &peer[lo..(lo + n).min(peer.len())];
                self.both(c, s, |conn| {
                    let mut stmt = conn.prepare_cached(INSERT_CHANGE).unwrap();
                    Ok(window
                        .iter()
                        .map(|ch| match stmt.execute(params_from_iter(ch)) {
                            Ok(n) => vec![Value::Integer(n as i64)],
                            Err(e) => vec![Value::Text(message(&e))],
                        })
                        .collect())
                });
            }
            Stmt::Apply => {
                let applied: String = self.multi.conns[c]
                    .query_row("SELECT last_applied FROM from_p", [], |r| r.get(0))
                    .unwrap();
                let package: Option<Vec<u8>> = self
                    .peer
                    .query_row(
                        "SELECT package FROM to_f WHERE cursor > ?1 LIMIT 1",
                        [&applied],
                        |r| r.get(0),
                    )
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })
                    .unwrap();
                let Some(package) = package else { return };
                self.both(c, s, |conn| {
                    conn.execute("INSERT INTO from_p(package) VALUES (?1)", [&package])
                        .map_err(|e| message(&e))?;
                    query(conn, "SELECT last_applied FROM from_p", &[])
                });
            }
            Stmt::Peek { conn } => {
                let n = self.multi.conns.len();
                let other = (c + 1 + conn.index(n - 1)) % n;
                let seen = self.multi.view(other);
                let committed = before.clone().unwrap_or_else(|| self.oracle.view(0));
                assert_eq!(
                    seen, committed,
                    "{s:?}: connection {other} reads the committed state while connection {c} \
                     runs the step (left: what it read, right: the oracle's committed state \
                     before the step's transaction)"
                );
            }
            local => self.both(c, s, |conn| write(conn, local)),
        }
    }

    fn txn(&self, c: usize, stmts: &[Stmt], end: End) {
        if let End::Auto = end {
            for s in stmts {
                self.run_stmt(c, s, &None);
            }
            return;
        }
        let peeks = stmts.iter().any(|s| matches!(s, Stmt::Peek { .. }));
        let before = peeks.then(|| self.oracle.view(0));
        let savepoint = match end {
            End::RollbackTo(i) => Some(i.index(stmts.len())),
            _ => None,
        };
        let sql = |what: &str| self.both(c, &what, |conn| query(conn, what, &[]));
        sql("BEGIN");
        for (i, s) in stmts.iter().enumerate() {
            if savepoint == Some(i) {
                sql("SAVEPOINT sp");
            }
            self.run_stmt(c, s, &before);
        }
        match end {
            End::Commit => sql("COMMIT"),
            End::Rollback => sql("ROLLBACK"),
            _ => {
                sql("ROLLBACK TO sp");
                sql("RELEASE sp");
                sql("COMMIT");
            }
        }
    }

    fn pull(&self, c: usize, stream: usize, n: usize, ack: bool) {
        let name = STREAMS[stream].0;
        self.both(c, &(name, n, ack), |conn| {
            let packages = query(
                conn,
                &format!("SELECT since, cursor, changes, package FROM {name} LIMIT {n}"),
                &[],
            )?;
            let mut out = Vec::new();
            for mut p in packages {
                let package = p.pop().unwrap();
                out.push(p);
                // Decoded on the peer, which leaves the file's connections alone.
                out.extend(rows_of(
                    &self.peer,
                    "SELECT \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq \
                     FROM crsql_package_changes(?1)",
                    &[package],
                ));
            }
            let last = out
                .iter()
                .rev()
                .find(|r| r.len() == 3)
                .map(|r| r[1].clone());
            if let (true, Some(cursor)) = (ack, last) {
                out.extend(changed(
                    conn,
                    &format!("INSERT INTO {name}(last_sent) VALUES (?1)"),
                    &[cursor],
                )?);
            }
            Ok(out)
        });
    }

    fn apply(&mut self, step: &Step) -> Option<usize> {
        match step {
            Step::Txn { conn, stmts, end } => {
                let c = self.conn(conn);
                self.txn(c, stmts, *end);
                Some(c)
            }
            Step::PeerWrite(stmts) => {
                for s in stmts {
                    let _ = write(&self.peer, s);
                }
                None
            }
            Step::Pull {
                conn,
                stream,
                n,
                ack,
            } => {
                let c = self.conn(conn);
                self.pull(c, *stream, *n, *ack);
                Some(c)
            }
            Step::Compact { conn } => {
                let c = self.conn(conn);
                self.both(c, step, |conn| query(conn, "SELECT crsql_compact()", &[]));
                Some(c)
            }
            Step::ForgetPeer { conn } => {
                let c = self.conn(conn);
                let peer = Site::of(&self.peer).0;
                self.both(c, step, |conn| {
                    query(
                        conn,
                        "SELECT crsql_forget_peer(?1)",
                        &[Value::Blob(peer.clone())],
                    )
                });
                Some(c)
            }
            Step::Alter { conn } => {
                let c = self.conn(conn);
                let n = self.added.get();
                let sql = if n < 2 {
                    self.added.set(n + 1);
                    format!(
                        "SELECT crsql_begin_alter('t1'); ALTER TABLE t1 ADD COLUMN x{n} DEFAULT 0; \
                         UPDATE t1 SET x{n} = id WHERE id % 2 = 1; SELECT crsql_commit_alter('t1');"
                    )
                } else {
                    self.added.set(n - 1);
                    format!(
                        "SELECT crsql_begin_alter('t1'); ALTER TABLE t1 DROP COLUMN x{}; \
                         SELECT crsql_commit_alter('t1');",
                        n - 1
                    )
                };
                self.both(c, &sql, |conn| batch(conn, &sql));
                Some(c)
            }
            Step::Reopen { conn } => {
                let c = self.conn(conn);
                let fresh = open(&self.multi.path);
                close(std::mem::replace(&mut self.multi.conns[c], fresh));
                Some(c)
            }
            Step::NewStream { conn, stream } => {
                let c = self.conn(conn);
                let sql = format!(
                    "DROP TABLE {}; {}",
                    STREAMS[*stream].0,
                    create_stream(*stream, &self.peer_hex)
                );
                self.both(c, &sql, |conn| batch(conn, &sql));
                Some(c)
            }
        }
    }

    fn compare(&self, c: usize, when: &str) {
        let (m, o) = (self.multi.state(c), self.oracle.state(0));
        if m != o {
            // The first differing section (each starts with its SQL).
            let sections = |s: &[Vec<Value>]| -> Vec<Vec<Vec<Value>>> {
                s.chunk_by(|_, b| !matches!(&b[..], [Value::Text(t)] if t.starts_with("SELECT")))
                    .map(|c| c.to_vec())
                    .collect()
            };
            let (ms, os) = (sections(&m), sections(&o));
            let (ms, os) = ms.iter().zip(&os).find(|(a, b)| a != b).unwrap();
            panic!(
                "{when}: the multi-connection file, read through connection {c}, differs from \
                 the oracle: {:?}\n  multi:  {:?}\n  oracle: {:?}",
                ms[0][0],
                &ms[1..],
                &os[1..]
            );
        }
        self.multi.check_lag(c, when);
    }

    /// The end of a case: every connection of the multi file agrees.
    fn finish(&self) {
        let m = &self.multi;
        let version = |c: &Connection| -> i64 {
            c.query_row("SELECT crsql_db_version()", [], |r| r.get(0))
                .unwrap()
        };
        let expected = version(&self.oracle.conns[0]);
        for (i, conn) in m.conns.iter().enumerate() {
            assert_eq!(
                version(conn),
                expected,
                "crsql_db_version() of connection {i}"
            );
            self.compare(i, "at the end");
            if !compacted(conn) {
                for (name, ..) in STREAMS {
                    let lag: i64 = conn
                        .query_row(
                            "SELECT lag_changes FROM crsql_streams WHERE name = ?1",
                            [name],
                            |r| r.get(0),
                        )
                        .unwrap();
                    let read: i64 = conn
                        .query_row(
                            &format!("SELECT COALESCE(sum(changes), 0) FROM {name}"),
                            [],
                            |r| r.get(0),
                        )
                        .unwrap();
                    assert_eq!(
                        lag, read,
                        "connection {i}: {name}: lag_changes against a fresh read"
                    );
                }
            }
        }
        let ok: String = m.conns[0]
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok", "PRAGMA integrity_check");
        assert_positions_unique(&m.conns[0]);
    }

    fn close(self) {
        self.multi.conns.into_iter().for_each(close);
        self.oracle.conns.into_iter().for_each(close);
        close(self.peer);
    }
}

fn rows_of(c: &Connection, sql: &str, args: &[Value]) -> Vec<Vec<Value>> {
    query(c, sql, args).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn run(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let mut w = World::new(dir.path(), case.conns, case.wal);
    for (i, step) in case.steps.iter().enumerate() {
        if let Some(c) = w.apply(step) {
            w.compare(c, &format!("after step {i} ({step:?})"));
        }
    }
    w.finish();
    w.close();
}

proptest! {
    #![proptest_config(Config {
        cases: prop_cases(40),
        max_shrink_time: 120_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    })]

    #[test]
    fn connections_sharing_a_file_end_like_one_connection(case in case()) {
        run(&case);
    }
}
