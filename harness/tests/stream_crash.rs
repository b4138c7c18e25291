//! Crash safety of the streams: a child process (`src/bin/crash_child.rs`)
//! writes on a sender database, moves packages to a receiver database through
//! `crsql_OutboundStream` / `crsql_InboundStream` and acknowledges them, and
//! is killed with SIGKILL at a random moment, many times over.
//!
//! After every kill the test reopens the files and checks:
//!
//! - `PRAGMA integrity_check` is `ok` on both databases;
//! - positions are consistent: the sender's `last_sent` is not beyond the
//!   receiver's `last_applied`, and neither went backwards since the last kill;
//! - no half-applied package: the child logs every package before applying
//!   it, and replaying the logged packages in the same order into a fresh
//!   database reaches the receiver's `last_applied` exactly, with the same
//!   CRR tables and the same staged parts (split transactions);
//! - a package applied in one transaction with a user row (`notes`) is
//!   applied exactly when that row exists;
//! - nothing is lost or doubled: on copies of both files, syncing to the end
//!   gives the receiver the sender's CRR tables and clocks.
//!
//! Both sides also run `crsql_compact()` now and then (the sender at times
//! with every peer expired, so its stream, created with `resync =
//! 'snapshot'`, sends compacted deletes from their records: the child is
//! also killed while compacting and while applying such packages).
//!
//! The next round resumes from the killed state (the child acknowledges the
//! receiver's `last_applied` and reads on). The master seed is printed and can
//! be set with `CRASH_SEED`; `CRASH_ROUNDS` sets the number of kills
//! (default 60; 300 in the soak test).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crsql_stream_core::package::{Package, PackageKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::types::Value;
use rusqlite::Connection;

use crsql_stream_harness::tables::{changes_without_positions, Exact, Pos};
use crsql_stream_harness::{close, kill_and_collect, open, open_memory};

const SHARED: &str = "
CREATE TABLE items (id INTEGER PRIMARY KEY NOT NULL, a, b TEXT, c REAL, d BLOB);
CREATE TABLE pairs (x INTEGER NOT NULL, y TEXT NOT NULL, v, PRIMARY KEY (x, y));
CREATE TABLE kv (k NOT NULL PRIMARY KEY, v);
SELECT crsql_as_crr('items');
SELECT crsql_as_crr('pairs');
SELECT crsql_as_crr('kv');
";

const RECEIVER_ONLY: &str = "
CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, cursor TEXT, note TEXT);
SELECT crsql_as_crr('notes');
";

const TABLES: &[(&str, &str)] = &[("items", "id"), ("pairs", "x, y"), ("kv", "k")];

type Rows = Vec<Vec<Exact>>;

fn rows(conn: &Connection, sql: &str) -> Rows {
    let mut stmt = conn.prepare(sql).unwrap();
    let n = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, Value>(i).map(Exact::from))
                .collect()
        })
        .unwrap()
        .collect::<rusqlite::Result<Rows>>()
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows
}

/// The shared CRR tables, in primary-key order.
fn dump(conn: &Connection) -> Vec<Rows> {
    TABLES
        .iter()
        .map(|(t, pk)| rows(conn, &format!("SELECT * FROM {t} ORDER BY {pk}")))
        .collect()
}

/// The clocks of the shared tables, without the local positions.
fn clocks(conn: &Connection) -> Rows {
    changes_without_positions(conn, &["items", "pairs", "kv"], true)
}

fn staged(conn: &Connection) -> Rows {
    rows(
        conn,
        "SELECT part, package FROM crsql_stream_staging WHERE name = 'from_s' ORDER BY part",
    )
}

fn text(conn: &Connection, sql: &str) -> String {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn last_applied(conn: &Connection) -> Pos {
    Pos::parse(&text(conn, "SELECT last_applied FROM from_s"))
}

fn last_sent(conn: &Connection) -> Pos {
    Pos::parse(&text(
        conn,
        "SELECT last_sent FROM crsql_streams WHERE name = 'to_r'",
    ))
}

fn db_version(conn: &Connection) -> i64 {
    conn.query_row("SELECT crsql_db_version()", [], |r| r.get(0))
        .unwrap()
}

/// Apply one package; Ok(false) for a gap.
fn apply(conn: &Connection, pkg: &[u8]) -> rusqlite::Result<bool> {
    match conn.execute("INSERT INTO from_s(package) VALUES (?1)", [pkg]) {
        Ok(_) => Ok(true),
        Err(e) if e.to_string().contains("gap") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sync the sender to the receiver until nothing is left.
fn sync_to_end(s: &Connection, r: &Connection) {
    for _ in 0..10_000 {
        let la = last_applied(r);
        s.execute("INSERT INTO to_r(last_sent) VALUES (?1)", [la.to_string()])
            .unwrap();
        let pkgs: Vec<Vec<u8>> = {
            let mut stmt = s.prepare("SELECT package FROM to_r LIMIT 50").unwrap();
            let rows = stmt
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            rows
        };
        if pkgs.is_empty() {
            return;
        }
        for p in pkgs {
            assert!(
                apply(r, &p).unwrap_or_else(|e| panic!("final sync: applying failed: {e}")),
                "final sync: a package read after last_applied {la} left a gap"
            );
        }
    }
    panic!("the sync did not finish");
}

/// One logged package.
struct Record {
    with_note: bool,
    pkg: Vec<u8>,
}

/// Read `packages.log`, dropping an incomplete last record (the child was
/// killed while writing it, so it never applied that package).
fn read_log(path: &Path) -> Vec<Record> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        if at + 5 + len > bytes.len() {
            break;
        }
        out.push(Record {
            with_note: bytes[at] == 1,
            pkg: bytes[at + 5..at + 5 + len].to_vec(),
        });
        at += 5 + len;
    }
    out
}

fn write_log(path: &Path, records: &[Record]) {
    let mut bytes = Vec::new();
    for r in records {
        bytes.push(u8::from(r.with_note));
        bytes.extend_from_slice(&(r.pkg.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&r.pkg);
    }
    std::fs::write(path, bytes).unwrap();
}

fn integrity(conn: &Connection, what: &str) {
    let res = rows(conn, "PRAGMA integrity_check");
    assert_eq!(
        res,
        vec![vec![Exact::Text("ok".into())]],
        "integrity_check of the {what}"
    );
}

struct Harness {
    dir: tempfile::TempDir,
    sender_hex: String,
    /// The receiver's expected history: every logged package up to the
    /// receiver's committed `last_applied`, applied into a fresh database.
    replay: Connection,
    /// Records of packages.log already replayed.
    replayed: usize,
    replay_pos: Pos,
    /// Cursors of packages applied together with a note row.
    noted: BTreeSet<Pos>,
    sender_version: i64,
    seed: u64,
    kills: usize,
    finished: usize,
    /// Replayed packages of kind snapshot (compacted deletes in them).
    snapshots: usize,
    /// Kills after logging a package whose effect was then not committed
    /// (or was a no-op).
    unapplied: usize,
    /// Kills that left a hot rollback journal (inside a write transaction).
    hot: usize,
}

impl Harness {
    fn new(seed: u64, rng: &mut StdRng) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir.path().join("sender.db"));
        let r = open(&dir.path().join("receiver.db"));
        s.execute_batch(SHARED).unwrap();
        r.execute_batch(SHARED).unwrap();
        r.execute_batch(RECEIVER_ONLY).unwrap();
        let sender_hex = text(&s, "SELECT hex(crsql_site_id())");
        let receiver_hex = text(&r, "SELECT hex(crsql_site_id())");
        let max_changes = rng.gen_range(2..=12);
        let max_bytes = if rng.gen_bool(0.3) {
            format!(", max_bytes = {}", rng.gen_range(200..2000))
        } else {
            String::new()
        };
        s.execute_batch(&format!(
            "CREATE VIRTUAL TABLE to_r USING crsql_OutboundStream(\
             exclude_sites = '{receiver_hex}', max_changes = {max_changes}{max_bytes}, resync = 'snapshot')"
        ))
        .unwrap();
        r.execute_batch(&format!(
            "CREATE VIRTUAL TABLE from_s USING crsql_InboundStream(from = '{sender_hex}')"
        ))
        .unwrap();
        close(s);
        close(r);
        let replay = open_memory();
        replay.execute_batch(SHARED).unwrap();
        replay
            .execute_batch(&format!(
                "CREATE VIRTUAL TABLE from_s USING crsql_InboundStream(from = '{sender_hex}')"
            ))
            .unwrap();
        eprintln!(
            "stream_crash: seed {seed}, max_changes {max_changes}{max_bytes}, dir {}",
            dir.path().display()
        );
        Harness {
            dir,
            sender_hex,
            replay,
            replayed: 0,
            replay_pos: Pos(0, 0),
            noted: BTreeSet::new(),
            sender_version: 0,
            seed,
            kills: 0,
            finished: 0,
            snapshots: 0,
            unapplied: 0,
            hot: 0,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Run the child and kill it `delay` after its "ready" line, or after
    /// its `after_lines`-th line of progress.
    /// Returns its stdout lines.
    fn run_child(&mut self, seed: u64, delay: Duration, after_lines: usize) -> Vec<String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_child"))
            .arg(self.dir.path())
            .arg(seed.to_string())
            .arg("1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn crash_child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line == "ready" || lines.len() == after_lines {
                    let _ = tx.send(());
                }
                lines.push(line);
            }
            lines
        });
        // Wait for "ready" (or the child's early death), then let it run.
        let ready = rx.recv_timeout(Duration::from_secs(60)).is_ok();
        if ready {
            if after_lines > 0 {
                let _ = rx.recv_timeout(Duration::from_secs(60));
            }
            std::thread::sleep(delay);
        }
        let (status, lines, err) = kill_and_collect(&mut child, reader);
        match status.signal() {
            Some(9) => self.kills += 1,
            _ if status.success() => self.finished += 1,
            _ => panic!(
                "seed {}: crash_child (seed {seed}) failed with {status}: {err}\nlast output, newest first: {:?}",
                self.seed,
                lines.iter().rev().take(10).collect::<Vec<_>>()
            ),
        }
        assert!(
            ready,
            "seed {}: crash_child never became ready: {err}",
            self.seed
        );
        lines
    }

    /// Everything checked after a kill.
    fn check(&mut self, round: usize) {
        let ctx = format!("seed {}, round {round}", self.seed);
        // A rollback journal that still starts with its magic number is hot:
        // the kill interrupted a write transaction.
        let hot = ["sender.db-journal", "receiver.db-journal"]
            .iter()
            .any(|j| {
                std::fs::read(self.path(j))
                    .is_ok_and(|b| b.starts_with(&[0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7]))
            });
        self.hot += usize::from(hot);
        let s = open(&self.path("sender.db"));
        let r = open(&self.path("receiver.db"));
        integrity(&s, &format!("sender ({ctx})"));
        integrity(&r, &format!("receiver ({ctx})"));
        let applied = last_applied(&r);
        let sent = last_sent(&s);
        assert!(
            sent <= applied,
            "{ctx}: the sender's last_sent {sent} is beyond the receiver's last_applied {applied}"
        );
        assert!(
            applied >= self.replay_pos,
            "{ctx}: last_applied went back from {} to {applied}",
            self.replay_pos
        );
        let v = db_version(&s);
        assert!(
            v >= self.sender_version,
            "{ctx}: the sender's db_version went back from {} to {v}",
            self.sender_version
        );
        self.sender_version = v;
        let tables = dump(&r);
        let staged_r = staged(&r);
        let notes: BTreeSet<Pos> = rows(&r, "SELECT cursor FROM notes WHERE cursor IS NOT NULL")
            .into_iter()
            .map(|row| match &row[0] {
                Exact::Text(t) => Pos::parse(t),
                other => panic!("{ctx}: a note's cursor is {other:?}"),
            })
            .collect();
        close(s);
        close(r);

        // Replay the new log records until the replica reaches last_applied.
        let log_path = self.path("packages.log");
        let mut records = read_log(&log_path);
        let mut i = self.replayed;
        while self.replay_pos != applied {
            let Some(rec) = records.get(i) else {
                panic!(
                    "{ctx}: the receiver's last_applied is {applied}, but replaying all {} logged packages \
                     only reaches {}",
                    records.len(),
                    self.replay_pos
                );
            };
            let pkg = Package::decode(&rec.pkg)
                .unwrap_or_else(|e| panic!("{ctx}: logged package {i} does not decode: {e}"));
            let ok = apply(&self.replay, &rec.pkg)
                .unwrap_or_else(|e| panic!("{ctx}: replaying logged package {i} failed: {e}"));
            let cursor = Pos(pkg.cursor.db_version, pkg.cursor.seq);
            self.snapshots += usize::from(pkg.kind == PackageKind::Snapshot);
            if ok && rec.with_note {
                self.noted.insert(cursor);
            }
            self.replay_pos = last_applied(&self.replay);
            assert!(
                self.replay_pos <= applied,
                "{ctx}: the receiver's last_applied {applied} is not the cursor of a package: replaying \
                 the logged packages goes from below it to {} (package {i})",
                self.replay_pos
            );
            i += 1;
        }
        // Later records were not applied (killed before commit), or were
        // no-ops or gaps: forget them, the child will send again.
        self.unapplied += usize::from(records.len() > i);
        records.truncate(i);
        write_log(&log_path, &records);
        self.replayed = i;

        let expected = dump(&self.replay);
        for (t, (name, _)) in TABLES.iter().enumerate() {
            assert_eq!(
                tables[t], expected[t],
                "{ctx}: at last_applied {applied}, table {name} differs from the replay of the packages \
                 up to it (half-applied package?)"
            );
        }
        assert_eq!(
            staged_r,
            staged(&self.replay),
            "{ctx}: at last_applied {applied}, the staged parts differ from the replay"
        );
        let missing: Vec<&Pos> = self.noted.difference(&notes).collect();
        assert!(
            missing.is_empty(),
            "{ctx}: packages applied in one transaction with a note have no note: {missing:?}"
        );
        let beyond: Vec<&Pos> = notes.iter().filter(|p| **p > applied).collect();
        assert!(
            beyond.is_empty(),
            "{ctx}: notes written in one transaction with a package exist, but last_applied is {applied}: \
             {beyond:?}"
        );

        self.check_sync_on_copies(&ctx);
    }

    /// On copies of both files: sync to the end, then the receiver has the
    /// sender's tables and clocks.
    fn check_sync_on_copies(&self, ctx: &str) {
        let copy = tempfile::tempdir().unwrap();
        for name in ["sender.db", "receiver.db"] {
            for suffix in ["", "-wal"] {
                let from = self.path(&format!("{name}{suffix}"));
                if from.exists() {
                    std::fs::copy(&from, copy.path().join(format!("{name}{suffix}"))).unwrap();
                }
            }
        }
        let s = open(&copy.path().join("sender.db"));
        let r = open(&copy.path().join("receiver.db"));
        sync_to_end(&s, &r);
        assert_syncs_match(&s, &r, ctx);
        close(s);
        close(r);
    }
}

fn assert_syncs_match(s: &Connection, r: &Connection, ctx: &str) {
    let (ts, tr) = (dump(s), dump(r));
    for (t, (name, _)) in TABLES.iter().enumerate() {
        assert_eq!(
            tr[t], ts[t],
            "{ctx}: after syncing to the end, the receiver's {name} differs from the sender's"
        );
    }
    assert_eq!(
        clocks(r),
        clocks(s),
        "{ctx}: after syncing to the end, the receiver's clocks differ from the sender's"
    );
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

fn crash_rounds(default_rounds: usize) {
    let seed = env_u64("CRASH_SEED").unwrap_or_else(rand::random);
    let rounds = env_u64("CRASH_ROUNDS").map_or(default_rounds, |n| n as usize);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = Harness::new(seed, &mut rng);
    let start = Instant::now();
    let (mut events, mut compactions) = (0, 0);
    for round in 0..rounds {
        let (delay, after_lines) = match rng.gen_range(0..10) {
            0 => (Duration::ZERO, 0),
            1..=3 => (Duration::from_micros(rng.gen_range(0..30_000)), 0),
            4..=5 => (Duration::from_millis(rng.gen_range(30..150)), 0),
            // Right after some progress line, likely inside the next step.
            _ => (
                Duration::from_micros(rng.gen_range(0..800)),
                rng.gen_range(1..60),
            ),
        };
        let lines = h.run_child(rng.gen(), delay, after_lines);
        events += lines.len();
        compactions += lines
            .iter()
            .filter(|l| l.starts_with("compacted") && !l.ends_with(" 0"))
            .count();
        h.check(round);
    }
    // Resume once more in-process and sync the real files to the end.
    let s = open(&h.path("sender.db"));
    let r = open(&h.path("receiver.db"));
    sync_to_end(&s, &r);
    assert_syncs_match(&s, &r, &format!("seed {seed}, end"));
    let (applied, version) = (last_applied(&r), db_version(&s));
    close(s);
    close(r);
    eprintln!(
        "stream_crash: seed {seed}: {} kills ({} inside a write transaction with a rollback journal, {} after logging a package \
         not applied), {} runs finished, {events} child events, {} logged packages replayed, \
         {} of them snapshot packages, {compactions} compactions removing rows, \
         final last_applied {applied} (sender db_version {version}), from {} in {:?}",
        h.kills,
        h.hot,
        h.unapplied,
        h.finished,
        h.replayed,
        h.snapshots,
        h.sender_hex,
        start.elapsed()
    );
    assert!(
        h.kills >= rounds / 2,
        "only {} of {rounds} runs were killed",
        h.kills
    );
}

#[test]
fn a_receiver_killed_at_random_moments_never_half_applies_loses_or_doubles_a_package() {
    crash_rounds(60);
}

#[test]
#[ignore = "long; run by make soak"]
fn soak_a_receiver_killed_hundreds_of_times_stays_consistent() {
    crash_rounds(300);
}
