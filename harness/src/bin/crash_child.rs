//! Child process of `tests/stream_crash.rs`, killed with SIGKILL at random
//! moments.
//!
//! `crash_child <dir> <seed> <iterations>` opens `<dir>/sender.db` and
//! `<dir>/receiver.db` (prepared by the test: the same CRRs on both, the
//! outbound stream `to_r` on the sender, the inbound stream `from_s` and a
//! receiver-only CRR `notes` on the receiver) and loops:
//!
//! - local write transactions on the sender, sometimes acknowledging the
//!   receiver's `last_applied` in the same transaction;
//! - local writes on the receiver (`notes`);
//! - transport rounds: read up to a few packages after `last_sent`, drop some
//!   (the next one is then refused as a gap), apply the others (sometimes in
//!   one transaction together with a `notes` row naming the package's cursor),
//!   then acknowledge the receiver's `last_applied`.
//!
//! Before applying a package it appends it to `<dir>/packages.log` (one
//! `write`: a flag byte, 1 when applied together with a note, a
//! little-endian u32 length, the package), so the test can replay exactly
//! the packages the receiver may have applied. Progress goes to stdout, one
//! line per event. Any error other than a gap aborts with exit code 2.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::types::Value;
use rusqlite::{params, Connection};

use crsql_stream_harness::open;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: crash_child <dir> <seed> <iterations>");
        std::process::exit(64);
    }
    let dir = Path::new(&args[1]);
    let seed: u64 = args[2].parse().expect("seed");
    let iterations: u64 = args[3].parse().expect("iterations");
    let mut rng = StdRng::seed_from_u64(seed);

    let s = open(&dir.join("sender.db"));
    let r = open(&dir.join("receiver.db"));
    for conn in [&s, &r] {
        let mode = ["DELETE", "TRUNCATE", "PERSIST", "WAL"][rng.gen_range(0..4)];
        let _: String = conn
            .query_row(&format!("PRAGMA journal_mode = {mode}"), [], |row| {
                row.get(0)
            })
            .expect("journal_mode");
        let sync = ["OFF", "NORMAL", "FULL"][rng.gen_range(0..3)];
        conn.execute_batch(&format!("PRAGMA synchronous = {sync}"))
            .expect("synchronous");
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("packages.log"))
        .expect("open packages.log");
    println!("ready");

    for _ in 0..iterations {
        let roll = rng.gen_range(0..100);
        if roll < 35 {
            sender_write(&s, &r, &mut rng);
        } else if roll < 40 {
            compact(&s, &r, &mut rng);
        } else if roll < 45 {
            r.execute(
                "INSERT INTO notes (cursor, note) VALUES (NULL, ?1)",
                [format!("local {}", rng.gen::<u32>())],
            )
            .unwrap_or_else(|e| fail(&format!("receiver local write: {e}")));
            println!("note");
        } else {
            transport(&s, &r, &mut log, &mut rng);
        }
    }
    println!("done");
}

/// `crsql_compact()` on the sender (half the time with every peer expired,
/// so that the receiver's stream falls behind the horizon) or on the
/// receiver.
fn compact(s: &Connection, r: &Connection, rng: &mut StdRng) {
    let (conn, side) = if rng.gen_bool(0.7) {
        (s, "s")
    } else {
        (r, "r")
    };
    let expire = side == "s" && rng.gen_bool(0.5);
    if expire {
        conn.execute_batch("SELECT crsql_config_set('peer-expiry-seconds', 0)")
            .unwrap_or_else(|e| fail(&format!("peer-expiry-seconds: {e}")));
    }
    let n: i64 = conn
        .query_row("SELECT crsql_compact()", [], |row| row.get(0))
        .unwrap_or_else(|e| fail(&format!("crsql_compact on {side}: {e}")));
    if expire {
        conn.execute_batch("SELECT crsql_config_set('peer-expiry-seconds', 2592000)")
            .unwrap_or_else(|e| fail(&format!("peer-expiry-seconds: {e}")));
    }
    println!("compacted {side} {n}");
}

fn fail(msg: &str) -> ! {
    eprintln!("crash_child: {msg}");
    std::process::exit(2);
}

fn last_applied(r: &Connection) -> String {
    r.query_row("SELECT last_applied FROM from_s", [], |row| row.get(0))
        .unwrap_or_else(|e| fail(&format!("reading last_applied: {e}")))
}

fn ack(s: &Connection, pos: &str) {
    s.execute("INSERT INTO to_r(last_sent) VALUES (?1)", [pos])
        .unwrap_or_else(|e| fail(&format!("acknowledging {pos}: {e}")));
}

fn value(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..6) {
        0 => Value::Null,
        1 => Value::Integer(rng.gen_range(-3..1000)),
        2 => Value::Integer(rng.gen()),
        3 => Value::Real(rng.gen_range(-100..100) as f64 / 4.0 + 0.125),
        4 => {
            let n = rng.gen_range(0..60);
            Value::Text((0..n).map(|_| rng.gen_range('a'..='e')).collect())
        }
        _ => {
            let n = rng.gen_range(0..200);
            Value::Blob((0..n).map(|_| rng.gen()).collect())
        }
    }
}

/// One sender transaction of 1–15 statements.
fn sender_write(s: &Connection, r: &Connection, rng: &mut StdRng) {
    s.execute_batch("BEGIN")
        .unwrap_or_else(|e| fail(&format!("BEGIN: {e}")));
    for _ in 0..rng.gen_range(1..=15) {
        let id = rng.gen_range(0..40i64);
        let res = match rng.gen_range(0..10) {
            0..=2 => s.execute(
                "INSERT INTO items (id, a, b, c, d) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (id) DO UPDATE SET a = excluded.a, b = excluded.b, c = excluded.c, d = excluded.d",
                params![id, value(rng), value(rng), value(rng), value(rng)],
            ),
            3 => s.execute(
                "UPDATE items SET b = ?2 WHERE id = ?1",
                params![id, value(rng)],
            ),
            4 => s.execute("DELETE FROM items WHERE id = ?1", [id]),
            5 => s.execute(
                "UPDATE OR IGNORE items SET id = ?2 WHERE id = ?1",
                params![id, rng.gen_range(0..40i64)],
            ),
            6 => s.execute(
                "INSERT OR REPLACE INTO pairs (x, y, v) VALUES (?1, ?2, ?3)",
                params![id % 5, ["", "a", "b"][rng.gen_range(0..3)], value(rng)],
            ),
            7 => s.execute("DELETE FROM pairs WHERE x = ?1", [id % 5]),
            8 => {
                let k = match rng.gen_range(0..3) {
                    0 => Value::Integer(id),
                    1 => Value::Text(format!("k{id}")),
                    _ => Value::Blob(vec![id as u8]),
                };
                s.execute(
                    "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                    params![k, value(rng)],
                )
            }
            _ => s.execute("DELETE FROM kv WHERE k = ?1 OR k = ?2", params![id, format!("k{id}")]),
        };
        res.unwrap_or_else(|e| fail(&format!("sender write: {e}")));
    }
    if rng.gen_bool(0.3) {
        // The acknowledgement rides in the sender's own transaction.
        ack(s, &last_applied(r));
    }
    s.execute_batch("COMMIT")
        .unwrap_or_else(|e| fail(&format!("COMMIT: {e}")));
    let v: i64 = s
        .query_row("SELECT crsql_db_version()", [], |row| row.get(0))
        .unwrap();
    println!("wrote {v}");
}

/// Read up to a few packages after `last_sent`, apply them, acknowledge.
fn transport(s: &Connection, r: &Connection, log: &mut std::fs::File, rng: &mut StdRng) {
    let limit = rng.gen_range(1..=4);
    let pkgs: Vec<(Vec<u8>, String)> = {
        let mut stmt = s
            .prepare_cached("SELECT package, cursor FROM to_r LIMIT ?1")
            .unwrap();
        let rows = stmt
            .query_map([limit], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap_or_else(|e| fail(&format!("reading packages: {e}")))
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap_or_else(|e| fail(&format!("reading packages: {e}")));
        rows
    };
    for (pkg, cursor) in pkgs {
        if rng.gen_bool(0.1) {
            println!("dropped {cursor}");
            continue;
        }
        let with_note = rng.gen_bool(0.3);
        let mut record = Vec::with_capacity(pkg.len() + 5);
        record.push(u8::from(with_note));
        record.extend_from_slice(&(pkg.len() as u32).to_le_bytes());
        record.extend_from_slice(&pkg);
        log.write_all(&record)
            .unwrap_or_else(|e| fail(&format!("writing packages.log: {e}")));
        if with_note {
            r.execute_batch("BEGIN").unwrap();
        }
        match r.execute("INSERT INTO from_s(package) VALUES (?1)", [&pkg]) {
            Ok(_) => {
                if with_note {
                    r.execute(
                        "INSERT INTO notes (cursor, note) VALUES (?1, 'with package')",
                        [&cursor],
                    )
                    .unwrap_or_else(|e| fail(&format!("note: {e}")));
                    r.execute_batch("COMMIT")
                        .unwrap_or_else(|e| fail(&format!("COMMIT: {e}")));
                }
                println!("applied {cursor}");
            }
            Err(e) if e.to_string().contains("gap") => {
                if with_note {
                    r.execute_batch("ROLLBACK").unwrap();
                }
                println!("gap at {cursor}");
                // Rewind: resume at the receiver's position.
                ack(s, &last_applied(r));
                return;
            }
            Err(e) => fail(&format!("applying the package ending at {cursor}: {e}")),
        }
    }
    if rng.gen_bool(0.8) {
        let pos = last_applied(r);
        ack(s, &pos);
        println!("acked {pos}");
    }
}
