//! Crash safety of `crsql_convert_layout` (issue 12): a child process
//! (`src/bin/convert_child.rs`) converts the CRRs of a database back and
//! forth between the compact and the cr-sqlite layout, one table per
//! conversion, and is killed with SIGKILL at a random moment, many times
//! over, with a random journal mode (rollback journals and WAL).
//!
//! After every kill the test reopens the file and checks:
//!
//! - `PRAGMA integrity_check` is `ok`;
//! - every table is wholly in one layout (the tables of exactly one layout
//!   exist): the layout of its last finished conversion, or, for the table
//!   the kill interrupted, that one or the next (fully converted or
//!   untouched);
//! - `crsql_changes` (all nine columns, in order), the compaction records,
//!   `crsql_db_version()` and the tables are exactly what they were before
//!   the first conversion;
//! - the database still works: a write after the last round is recorded
//!   as in a copy that was never converted.
//!
//! The master seed is printed and can be set with `CRASH_SEED`;
//! `CRASH_ROUNDS` sets the number of kills (default 25; 200 in the soak
//! test).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::types::Value;

use crsql_stream_harness::sql::{crr_state, exec, rows, text};
use crsql_stream_harness::{close, kill_and_collect, open, Layout};

const TABLES: [&str; 3] = ["t", "s", "w"];

/// Three key shapes, a few thousand rows with diverged cells, deletes
/// before and after a compaction (records and tombstones).
const SETUP: &str = "
CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a, b TEXT, c REAL);
CREATE TABLE s (k TEXT PRIMARY KEY NOT NULL, x, y DEFAULT 0);
CREATE TABLE w (k1 TEXT NOT NULL, k2 INTEGER NOT NULL, v, PRIMARY KEY (k1, k2)) WITHOUT ROWID;
SELECT crsql_as_crr('t');
SELECT crsql_as_crr('s');
SELECT crsql_as_crr('w');
BEGIN;
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 3000)
INSERT INTO t (id, a, b, c) SELECT i, i * 7, 'b' || i, i / 4.0 FROM k;
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 1500)
INSERT INTO s (k, x) SELECT 'k' || i, randomblob(i % 9) FROM k;
WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < 1500)
INSERT INTO w (k1, k2, v) SELECT char(97 + i % 5), i, NULL FROM k;
COMMIT;
UPDATE t SET b = 'updated' WHERE id % 5 = 0;
UPDATE s SET y = x, x = NULL WHERE rowid % 3 = 0;
DELETE FROM t WHERE id % 11 = 0;
DELETE FROM w WHERE k2 % 7 = 0;
SELECT crsql_compact();
DELETE FROM t WHERE id % 13 = 0;
DELETE FROM s WHERE rowid % 17 = 0;
INSERT INTO t (id, a) VALUES (22, 'revived after its compaction');
UPDATE w SET v = k2 WHERE k2 % 4 = 0;
";

/// A write after the last round, on the converted file and on a copy that
/// never was.
const LATER: &str = "
UPDATE t SET a = 'later' WHERE id % 9 = 0;
DELETE FROM s WHERE rowid % 19 = 0;
INSERT OR REPLACE INTO w (k1, k2, v) VALUES ('z', 1, 'later');";

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Run the child on `db` and kill it `delay` after its `after`-th
/// progress line (the 0th: "ready"). Returns its stdout lines.
fn run_child(db: &Path, after: usize, delay: Duration) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_convert_child"))
        .arg(db)
        .args(TABLES)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn convert_child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines: Vec<String> = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            lines.push(line);
            if lines.len() == after + 1 {
                let _ = tx.send(());
            }
        }
        lines
    });
    let progressed = rx.recv_timeout(Duration::from_secs(120)).is_ok();
    if progressed {
        std::thread::sleep(delay);
    }
    let (status, lines, err) = kill_and_collect(&mut child, reader);
    assert!(
        status.signal() == Some(9),
        "convert_child ended by itself with {status}: {err}\nlast output: {:?}",
        lines.iter().rev().take(5).collect::<Vec<_>>()
    );
    assert!(progressed, "convert_child made no progress: {err}");
    lines
}

fn crash_rounds(default_rounds: usize) {
    let seed = env_u64("CRASH_SEED").unwrap_or_else(rand::random);
    let rounds = env_u64("CRASH_ROUNDS").map_or(default_rounds, |n| n as usize);
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.db");
    let copy = dir.path().join("copy.db");
    let conn = open(&db);
    Layout::Compact.set(&conn).unwrap();
    exec(&conn, SETUP);
    let expected = crr_state(&conn, &TABLES);
    let n_changes = rows(&conn, "SELECT count(*) FROM crsql_changes");
    close(conn);
    std::fs::copy(&db, &copy).unwrap();
    eprintln!(
        "convert_crash: seed {seed}, {} changes, dir {}",
        match &n_changes[0][0] {
            Value::Integer(n) => *n,
            _ => 0,
        },
        dir.path().display()
    );

    let start = Instant::now();
    let mut layouts: BTreeMap<&str, Layout> =
        TABLES.iter().map(|t| (*t, Layout::Compact)).collect();
    let (mut done, mut interrupted, mut interrupted_converted) = (0, 0, 0);
    for round in 0..rounds {
        let ctx = format!("seed {seed}, round {round}");
        let mode = ["DELETE", "TRUNCATE", "PERSIST", "WAL"][rng.gen_range(0..4)];
        let conn = open(&db);
        assert_eq!(
            text(&conn, &format!("PRAGMA journal_mode = {mode}")).to_uppercase(),
            mode
        );
        close(conn);
        // After 0–4 progress lines, then up to 40 ms: mostly inside a
        // conversion (the child does nothing else), at any point of it.
        let after = rng.gen_range(0..5);
        let delay = Duration::from_micros(rng.gen_range(0..40_000));
        let lines = run_child(&db, after, delay);

        // What the child reported: finished conversions, and the one in flight.
        let mut in_flight: Option<(String, Layout)> = None;
        for line in &lines {
            let mut words = line.split(' ');
            let (Some(what), Some(t), Some(l)) = (words.next(), words.next(), words.next()) else {
                continue;
            };
            let l = if l == "compact" {
                Layout::Compact
            } else {
                Layout::Crsqlite
            };
            let t = TABLES.iter().find(|x| **x == t).expect("a table of ours");
            match what {
                "start" => in_flight = Some((t.to_string(), l)),
                "done" => {
                    layouts.insert(t, l);
                    in_flight = None;
                    done += 1;
                }
                _ => {}
            }
        }

        let conn = open(&db);
        assert_eq!(
            rows(&conn, "PRAGMA integrity_check"),
            vec![vec![Value::Text("ok".into())]],
            "{ctx}: integrity_check"
        );
        for t in TABLES {
            let now = Layout::of(&conn, t);
            match &in_flight {
                Some((f, to)) if f == t => {
                    interrupted += 1;
                    if now == *to {
                        interrupted_converted += 1;
                        layouts.insert(t, now);
                    } else {
                        assert_eq!(
                            now, layouts[t],
                            "{ctx}: {t}, interrupted, is neither untouched nor converted"
                        );
                    }
                }
                _ => assert_eq!(
                    now, layouts[t],
                    "{ctx}: {t} is not in the layout of its last conversion"
                ),
            }
        }
        assert_eq!(
            crr_state(&conn, &TABLES),
            expected,
            "{ctx}: the state changed"
        );
        close(conn);
    }

    // Still working: a later write is recorded as in the unconverted copy
    // (same site id, so identical changes).
    let (a, b) = (open(&db), open(&copy));
    for c in [&a, &b] {
        exec(c, &format!("BEGIN; {LATER} COMMIT;"));
    }
    assert_eq!(
        crr_state(&a, &TABLES),
        crr_state(&b, &TABLES),
        "seed {seed}: a write after the kills (left) and on the unconverted copy (right)"
    );
    close(a);
    close(b);
    eprintln!(
        "convert_crash: seed {seed}: {rounds} kills, {done} conversions finished, \
         {interrupted} interrupted ({interrupted_converted} of them committed before the kill), in {:?}",
        start.elapsed()
    );
    assert!(
        interrupted >= rounds / 2,
        "seed {seed}: only {interrupted} of {rounds} kills landed inside a conversion"
    );
}

#[test]
fn a_conversion_killed_at_random_moments_leaves_each_table_converted_or_untouched() {
    crash_rounds(25);
}

#[test]
#[ignore = "long; run by make soak"]
fn soak_a_conversion_killed_hundreds_of_times_leaves_each_table_converted_or_untouched() {
    crash_rounds(200);
}
