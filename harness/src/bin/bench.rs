//! Release-mode benchmark: plain SQLite table vs. the same table as a CRR.
//!
//! Run with `make bench` (or `cd harness && cargo run --release --bin bench --
//! [--rows N]`). Every database is a file in a temporary directory, in WAL
//! mode with `synchronous=NORMAL` and SQLite's default page cache. The plain
//! database is opened without the extension, so it is pure SQLite.
//!
//! Figures:
//! - insert N rows (one transaction, one prepared statement), plain vs CRR;
//! - `UPDATE t SET b = b + 1` (its own transaction), plain vs CRR;
//! - read every row of `crsql_changes` (all nine columns, copied out);
//! - merge them into a fresh replica (one transaction, one prepared
//!   `INSERT INTO crsql_changes`), then check that the replica's table equals
//!   the source's (the program aborts if it does not);
//! - the database file sizes after `PRAGMA wal_checkpoint(TRUNCATE)`.
//!
//! `--pragma NAME=VALUE` (repeatable) runs `PRAGMA NAME=VALUE` on every
//! connection (plain, crr and replica) right after opening it, e.g.
//! `--pragma temp_store=memory` to keep statement journals in memory.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params, Connection};

use crsql_stream_harness::sql::{Change, INSERT_CHANGE, SELECT_CHANGES};
use crsql_stream_harness::{ext_path, load};

const DEFAULT_ROWS: usize = 100_000;

/// Targets and cr-sqlite 0.16's figures for the same workload.
const TARGET_INSERT_RATIO: f64 = 3.0;
const TARGET_MERGE_RATE: f64 = 1_000_000.0;
const TARGET_SIZE_RATIO: f64 = 2.5;
const CRSQLITE_INSERT_RATIO: &str = "32x";
const CRSQLITE_MERGE_RATE: &str = "72,000/s";
const CRSQLITE_SIZE_RATIO: &str = "4.5x";

const CREATE: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c REAL)";
const INSERT: &str = "INSERT INTO t (id, a, b, c) VALUES (?1, ?2, ?3, ?4)";
const UPDATE: &str = "UPDATE t SET b = b + 1";
type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// A row of `t`.
struct Row {
    id: i64,
    a: String,
    b: i64,
    c: f64,
}

/// Deterministic data: xorshift64*, fixed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn make_rows(n: usize) -> Vec<Row> {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|i| {
            // "row-0000042-" (12 chars) + 8..=18 letters: 20..=30 chars.
            let mut a = format!("row-{i:07}-");
            let extra = 8 + (rng.next() % 11) as usize;
            for _ in 0..extra {
                a.push(LETTERS[(rng.next() % 26) as usize] as char);
            }
            Row {
                id: i as i64 + 1,
                a,
                b: (rng.next() % 1_000_000) as i64,
                c: (rng.next() % 1_000_000_000) as f64 / 1000.0,
            }
        })
        .collect()
}

const USAGE: &str =
    "usage: bench [--rows N] [--pragma NAME=VALUE]... [--stream-changes N] [--only crr|streams|compaction|lag]\n\
    (defaults: 100000 rows; a 1000000-change backlog for the streams)";

struct Options {
    rows: usize,
    pragmas: Vec<String>,
    stream_changes: usize,
    only: Option<String>,
}

fn parse_args() -> Result<Options, String> {
    let mut rows = DEFAULT_ROWS;
    let mut pragmas = Vec::new();
    let mut stream_changes = 1_000_000;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rows" => {
                let v = args.next().ok_or("--rows needs a value")?;
                rows = v
                    .replace('_', "")
                    .parse()
                    .map_err(|_| format!("--rows: not a number: {v}"))?;
                if rows == 0 {
                    return Err("--rows must be at least 1".into());
                }
            }
            "--pragma" => {
                let v = args.next().ok_or("--pragma needs NAME=VALUE")?;
                let ok = v.split_once('=').is_some_and(|(name, value)| {
                    !name.is_empty()
                        && !value.is_empty()
                        && v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_=.-".contains(c))
                });
                if !ok {
                    return Err(format!("--pragma: expected NAME=VALUE, got {v}"));
                }
                pragmas.push(v);
            }
            "--stream-changes" => {
                let v = args.next().ok_or("--stream-changes needs a value")?;
                stream_changes = v
                    .replace('_', "")
                    .parse()
                    .map_err(|_| format!("--stream-changes: not a number: {v}"))?;
                if stream_changes < 3000 {
                    return Err("--stream-changes must be at least 3000".into());
                }
            }
            "--only" => {
                let v = args
                    .next()
                    .ok_or("--only needs crr, streams, compaction or lag")?;
                if !["crr", "streams", "compaction", "lag"].contains(&v.as_str()) {
                    return Err(format!(
                        "--only: expected crr, streams, compaction or lag, got {v}"
                    ));
                }
                only = Some(v);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    Ok(Options {
        rows,
        pragmas,
        stream_changes,
        only,
    })
}

fn open_file(path: &Path, with_ext: bool, pragmas: &[String]) -> BoxResult<Connection> {
    let conn = Connection::open(path)?;
    if with_ext {
        load(&conn)?;
    }
    for p in pragmas {
        conn.execute_batch(&format!("PRAGMA {p}"))?;
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("could not switch {} to WAL (got {mode})", path.display()).into());
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL")?;
    Ok(conn)
}

/// Wall-clock time and, where Linux reports it, the CPU time of this thread
/// (user + system; it leaves out time spent waiting for a CPU, so it is less
/// sensitive to other load on the machine).
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Option<Duration>,
}

/// CPU time of the current thread, from `/proc/thread-self/schedstat`.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn timed<T>(f: impl FnOnce() -> BoxResult<T>) -> BoxResult<(T, Timing)> {
    let cpu0 = thread_cpu();
    let start = Instant::now();
    let v = f()?;
    let wall = start.elapsed();
    let cpu = match (cpu0, thread_cpu()) {
        (Some(a), Some(b)) => b.checked_sub(a),
        _ => None,
    };
    Ok((v, Timing { wall, cpu }))
}

fn insert_rows(conn: &mut Connection, rows: &[Row]) -> BoxResult<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(INSERT)?;
        for r in rows {
            stmt.execute(params![r.id, r.a, r.b, r.c])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn update_all(conn: &Connection) -> BoxResult<usize> {
    Ok(conn.execute(UPDATE, [])?)
}

fn read_changes(conn: &Connection) -> BoxResult<Vec<Change>> {
    let mut stmt = conn.prepare(SELECT_CHANGES)?;
    let out = stmt
        .query_map([], Change::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(out)
}

fn merge_changes(conn: &mut Connection, changes: &[Change]) -> BoxResult<()> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare(INSERT_CHANGE)?;
        for c in changes {
            c.insert(&mut stmt)?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn count(conn: &Connection, sql: &str) -> BoxResult<i64> {
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}

/// Compare `t` row by row (ordered by id) on two connections. Floats are
/// compared bit for bit.
fn tables_equal(a: &Connection, b: &Connection) -> BoxResult<Result<usize, String>> {
    let sql = "SELECT id, a, b, c FROM t ORDER BY id";
    let mut sa = a.prepare(sql)?;
    let mut sb = b.prepare(sql)?;
    let mut ra = sa.query([])?;
    let mut rb = sb.query([])?;
    let mut n = 0usize;
    loop {
        match (ra.next()?, rb.next()?) {
            (None, None) => return Ok(Ok(n)),
            (Some(x), None) => {
                let id: i64 = x.get(0)?;
                return Ok(Err(format!(
                    "replica is missing rows from id {id} on ({n} rows matched)"
                )));
            }
            (None, Some(y)) => {
                let id: i64 = y.get(0)?;
                return Ok(Err(format!(
                    "replica has an extra row with id {id} ({n} rows matched)"
                )));
            }
            (Some(x), Some(y)) => {
                let vx: [Value; 4] = [x.get(0)?, x.get(1)?, x.get(2)?, x.get(3)?];
                let vy: [Value; 4] = [y.get(0)?, y.get(1)?, y.get(2)?, y.get(3)?];
                let same = vx.iter().zip(&vy).all(|(p, q)| match (p, q) {
                    (Value::Real(f), Value::Real(g)) => f.to_bits() == g.to_bits(),
                    _ => p == q,
                });
                if !same {
                    return Ok(Err(format!("row differs: source {vx:?}, replica {vy:?}")));
                }
                n += 1;
            }
        }
    }
}

/// Checkpoint and truncate the WAL, then return the main file's size.
fn checkpointed_size(conn: &Connection, path: &Path) -> BoxResult<u64> {
    let (busy, _log, _done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if busy != 0 {
        return Err(format!("checkpoint of {} was blocked", path.display()).into());
    }
    let wal = path.with_extension("db-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    if wal_len != 0 {
        return Err(format!(
            "{} still holds {wal_len} bytes after the checkpoint",
            wal.display()
        )
        .into());
    }
    Ok(std::fs::metadata(path)?.len())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// 1234567 -> "1,234,567".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or("?"))
        .collect();
    groups.join(",")
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISS"
    }
}

struct Table {
    rows: Vec<[String; 7]>,
}

impl Table {
    fn new() -> Table {
        let head = [
            "figure",
            "plain",
            "crr",
            "crr/plain",
            "target",
            "cr-sqlite",
            "",
        ];
        Table {
            rows: vec![head.map(String::from)],
        }
    }

    fn row(&mut self, cells: [&str; 7]) {
        self.rows.push(cells.map(String::from));
    }

    fn render(&self) -> String {
        let mut width = [0usize; 7];
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (j, (c, w)) in r.iter().zip(width).enumerate() {
                if j == 0 {
                    let _ = write!(line, "{c:<w$}");
                } else {
                    let _ = write!(line, "  {c:>w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                let total = width.iter().sum::<usize>() + 2 * (width.len() - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        out
    }
}

fn run(opts: &Options) -> BoxResult<()> {
    let n = opts.rows;
    let dir = tempfile::tempdir()?;
    let plain_path = dir.path().join("plain.db");
    let crr_path = dir.path().join("crr.db");
    let replica_path = dir.path().join("replica.db");
    let rows = make_rows(n);

    println!("crsql_stream benchmark");
    println!("  {} rows x 3 columns: {CREATE}", grouped(n as u64));
    println!(
        "  SQLite {} (bundled), file databases, journal_mode=WAL, synchronous=NORMAL, default cache",
        rusqlite::version()
    );
    let ext = ext_path();
    println!(
        "  extension: {}",
        ext.canonicalize().unwrap_or(ext).display()
    );
    if !opts.pragmas.is_empty() {
        println!(
            "  extra pragmas on every connection: {}",
            opts.pragmas.join(", ")
        );
    }
    println!("  plain = the table without the extension; crr = crsql_as_crr('t') before inserting");
    println!();

    // Plain: pure SQLite, extension not loaded.
    let mut plain = open_file(&plain_path, false, &opts.pragmas)?;
    plain.execute_batch(CREATE)?;
    let ((), plain_insert) = timed(|| insert_rows(&mut plain, &rows))?;
    let (plain_updated, plain_update) = timed(|| update_all(&plain))?;

    // CRR source.
    let mut crr = open_file(&crr_path, true, &opts.pragmas)?;
    crr.execute_batch(CREATE)?;
    crr.query_row("SELECT crsql_as_crr('t')", [], |_| Ok(()))?;
    let ((), crr_insert) = timed(|| insert_rows(&mut crr, &rows))?;
    let (crr_updated, crr_update) = timed(|| update_all(&crr))?;
    if plain_updated != n || crr_updated != n {
        return Err(format!(
            "UPDATE touched {plain_updated} plain / {crr_updated} crr rows, expected {n}"
        )
        .into());
    }

    // Read every change.
    let (changes, read_time) = timed(|| read_changes(&crr))?;
    if changes.len() != 3 * n {
        eprintln!(
            "bench: note: crsql_changes returned {} rows; cr-sqlite 0.16 returns {} here (3 cells per row, no sentinels)",
            changes.len(),
            3 * n
        );
    }

    // Merge into a fresh replica.
    let mut replica = open_file(&replica_path, true, &opts.pragmas)?;
    replica.execute_batch(CREATE)?;
    replica.query_row("SELECT crsql_as_crr('t')", [], |_| Ok(()))?;
    let ((), merge_time) = timed(|| merge_changes(&mut replica, &changes))?;
    let matched = match tables_equal(&crr, &replica)? {
        Ok(m) => m,
        Err(why) => return Err(format!("replica differs from the source: {why}").into()),
    };
    if matched != n {
        return Err(format!("replica holds {matched} rows, expected {n}").into());
    }
    let replica_changes = count(&replica, "SELECT count(*) FROM crsql_changes")?;

    // Sizes.
    let plain_size = checkpointed_size(&plain, &plain_path)?;
    let crr_size = checkpointed_size(&crr, &crr_path)?;
    let replica_size = checkpointed_size(&replica, &replica_path)?;

    let insert_ratio = crr_insert.wall.as_secs_f64() / plain_insert.wall.as_secs_f64();
    let update_ratio = crr_update.wall.as_secs_f64() / plain_update.wall.as_secs_f64();
    let read_rate = changes.len() as f64 / read_time.wall.as_secs_f64();
    let merge_rate = changes.len() as f64 / merge_time.wall.as_secs_f64();
    let size_ratio = crr_size as f64 / plain_size as f64;

    let mut t = Table::new();
    t.row([
        "insert (1 tx)",
        &ms(plain_insert.wall),
        &ms(crr_insert.wall),
        &format!("{insert_ratio:.2}x"),
        &format!("<= {TARGET_INSERT_RATIO}x"),
        CRSQLITE_INSERT_RATIO,
        verdict(insert_ratio <= TARGET_INSERT_RATIO),
    ]);
    t.row([
        "update b = b + 1",
        &ms(plain_update.wall),
        &ms(crr_update.wall),
        &format!("{update_ratio:.2}x"),
        "-",
        "-",
        "",
    ]);
    t.row([
        "read crsql_changes",
        "-",
        &ms(read_time.wall),
        "-",
        "-",
        "-",
        "",
    ]);
    t.row([
        "  changes read",
        "-",
        &grouped(changes.len() as u64),
        "-",
        "-",
        "-",
        "",
    ]);
    t.row([
        "  read rate",
        "-",
        &format!("{}/s", grouped(read_rate as u64)),
        "-",
        "-",
        "-",
        "",
    ]);
    t.row([
        "merge into replica",
        "-",
        &ms(merge_time.wall),
        "-",
        "-",
        "-",
        "",
    ]);
    t.row([
        "  merge rate",
        "-",
        &format!("{}/s", grouped(merge_rate as u64)),
        "-",
        &format!(">= {}/s", grouped(TARGET_MERGE_RATE as u64)),
        CRSQLITE_MERGE_RATE,
        verdict(merge_rate >= TARGET_MERGE_RATE),
    ]);
    t.row([
        "file size",
        &mib(plain_size),
        &mib(crr_size),
        &format!("{size_ratio:.2}x"),
        &format!("<= {TARGET_SIZE_RATIO}x"),
        CRSQLITE_SIZE_RATIO,
        verdict(size_ratio <= TARGET_SIZE_RATIO),
    ]);
    print!("{}", t.render());
    println!();
    println!(
        "per row: insert {:.2} us plain, {:.2} us crr; update {:.2} us plain, {:.2} us crr",
        plain_insert.wall.as_secs_f64() * 1e6 / n as f64,
        crr_insert.wall.as_secs_f64() * 1e6 / n as f64,
        plain_update.wall.as_secs_f64() * 1e6 / n as f64,
        crr_update.wall.as_secs_f64() * 1e6 / n as f64,
    );
    let cpu_ms = |t: Timing| t.cpu.map_or_else(|| "n/a".to_string(), ms);
    let cpu_ratio = |a: Timing, b: Timing| match (a.cpu, b.cpu) {
        (Some(x), Some(y)) if !x.is_zero() => format!("{:.2}x", y.as_secs_f64() / x.as_secs_f64()),
        _ => "n/a".to_string(),
    };
    let cpu_rate = |t: Timing| match t.cpu {
        Some(c) if !c.is_zero() => format!(
            "{}/s",
            grouped((changes.len() as f64 / c.as_secs_f64()) as u64)
        ),
        _ => "n/a".to_string(),
    };
    println!("cpu time of this thread (excludes waiting for a CPU on a busy machine):");
    println!(
        "  insert {} plain, {} crr ({}); update {} plain, {} crr ({})",
        cpu_ms(plain_insert),
        cpu_ms(crr_insert),
        cpu_ratio(plain_insert, crr_insert),
        cpu_ms(plain_update),
        cpu_ms(crr_update),
        cpu_ratio(plain_update, crr_update),
    );
    println!(
        "  read {} ({}); merge {} ({})",
        cpu_ms(read_time),
        cpu_rate(read_time),
        cpu_ms(merge_time),
        cpu_rate(merge_time),
    );
    println!(
        "replica: table t equals the source ({} rows); {} change rows; file {}",
        grouped(matched as u64),
        grouped(replica_changes as u64),
        mib(replica_size)
    );
    println!(
        "file sizes are after PRAGMA wal_checkpoint(TRUNCATE), following the insert and the update"
    );

    drop(plain);
    crsql_stream_harness::close(crr);
    crsql_stream_harness::close(replica);
    Ok(())
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let result = (|| -> BoxResult<()> {
        let part = |name: &str| opts.only.is_none() || opts.only.as_deref() == Some(name);
        if part("crr") {
            run(&opts)?;
        }
        if part("streams") {
            streams::run(&opts)?;
        }
        if part("compaction") {
            compaction::run(&opts)?;
        }
        if part("lag") {
            lag::run(&opts)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The stream benchmark (issue: streams, item 9).
mod streams {
    use super::*;

    /// Changes per transaction in the backlog (333 rows x 3 columns).
    const ROWS_PER_TX: usize = 333;
    const MAX_CHANGES: usize = 1000;
    const TARGET_PACK_RATE: f64 = 2_000_000.0;
    const TARGET_APPLY_RATE: f64 = 1_000_000.0;
    const TARGET_MEMORY_MIB: f64 = 64.0;

    fn status_kib(field: &str) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = text.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Reset the peak-RSS counter (Linux: write 5 to clear_refs).
    fn reset_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    /// A CRR database with `rows` rows written `ROWS_PER_TX` per transaction.
    pub fn backlog(path: &Path, rows: usize, pragmas: &[String]) -> BoxResult<Connection> {
        let mut conn = open_file(path, true, pragmas)?;
        conn.execute_batch(CREATE)?;
        conn.query_row("SELECT crsql_as_crr('t')", [], |_| Ok(()))?;
        let data = make_rows(rows);
        for chunk in data.chunks(ROWS_PER_TX) {
            insert_rows(&mut conn, chunk)?;
        }
        Ok(conn)
    }

    /// Stream every package of a fresh outbound table; returns (packages,
    /// changes, bytes) and keeps the packages when `keep` is set.
    fn stream_all(
        conn: &Connection,
        name: &str,
        encoding: &str,
        keep: Option<&mut Vec<Vec<u8>>>,
    ) -> BoxResult<(u64, u64, u64)> {
        conn.execute_batch(&format!(
            "CREATE VIRTUAL TABLE {name} USING crsql_OutboundStream(max_changes = {MAX_CHANGES}, encoding = '{encoding}')"
        ))?;
        let mut stmt = conn.prepare(&format!("SELECT package, changes FROM {name}"))?;
        let mut rows = stmt.query([])?;
        let (mut packages, mut changes, mut bytes) = (0u64, 0u64, 0u64);
        let mut keep = keep;
        while let Some(row) = rows.next()? {
            let pkg = row.get_ref(0)?;
            let b = match pkg {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b,
                _ => return Err("a package that is neither BLOB nor TEXT".into()),
            };
            packages += 1;
            bytes += b.len() as u64;
            changes += row.get::<_, i64>(1)? as u64;
            if let Some(k) = keep.as_deref_mut() {
                k.push(b.to_vec());
            }
        }
        Ok((packages, changes, bytes))
    }

    pub fn median_micros(mut f: impl FnMut() -> BoxResult<()>) -> BoxResult<f64> {
        let mut v = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            f()?;
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Ok(v[v.len() / 2])
    }

    fn first_package_cost(conn: &Connection) -> BoxResult<f64> {
        conn.execute_batch(
            "CREATE VIRTUAL TABLE probe USING crsql_OutboundStream(max_changes = 1000)",
        )?;
        let mut stmt = conn.prepare("SELECT package FROM probe LIMIT 1")?;
        median_micros(|| {
            let _: Vec<u8> = stmt.query_row([], |r| r.get(0))?;
            Ok(())
        })
    }

    /// What sending one large transaction package by package costs.
    struct Split {
        packages: usize,
        changes: i64,
        /// Median `LIMIT 1` read inside the transaction.
        read_micros: f64,
        total: Duration,
        /// The last part, which applies the whole transaction.
        last_apply: Duration,
        /// Median `LIMIT 1` once everything is acknowledged (a poll).
        idle_micros: f64,
        /// File sizes of the sender and of the receiver, which staged the
        /// parts before applying them.
        src_bytes: u64,
        dst_bytes: u64,
    }

    /// One transaction of `rows` rows x 3 columns, sent the way the bindings
    /// send: `LIMIT 1` after `last_sent`, apply, acknowledge, repeat.
    fn split_transaction(dir: &Path, rows: usize, pragmas: &[String]) -> BoxResult<Split> {
        let mut src = open_file(&dir.join("split_src.db"), true, pragmas)?;
        src.execute_batch(CREATE)?;
        src.query_row("SELECT crsql_as_crr('t')", [], |_| Ok(()))?;
        insert_rows(&mut src, &make_rows(rows))?;
        let changes: i64 = count(&src, "SELECT count(*) FROM crsql_changes")?;
        src.execute_batch(&format!(
            "CREATE VIRTUAL TABLE split USING crsql_OutboundStream(max_changes = {MAX_CHANGES})"
        ))?;
        let dst = open_file(&dir.join("split_dst.db"), true, pragmas)?;
        dst.execute_batch(CREATE)?;
        dst.query_row("SELECT crsql_as_crr('t')", [], |_| Ok(()))?;
        dst.execute_batch("CREATE VIRTUAL TABLE from_split USING crsql_InboundStream()")?;
        let mut read = src.prepare("SELECT package, cursor FROM split LIMIT 1")?;
        let mut apply = dst.prepare("INSERT INTO from_split(package) VALUES (?1)")?;
        let mut ack = src.prepare("INSERT INTO split(last_sent) VALUES (?1)")?;
        let (mut reads, mut last_apply, mut packages) = (Vec::new(), Duration::ZERO, 0);
        let start = Instant::now();
        loop {
            let t = Instant::now();
            let mut rows = read.query([])?;
            let Some(row) = rows.next()? else { break };
            let (pkg, cursor): (Vec<u8>, String) = (row.get(0)?, row.get(1)?);
            drop(rows);
            reads.push(t.elapsed().as_secs_f64() * 1e6);
            let t = Instant::now();
            apply.execute([&pkg])?;
            last_apply = t.elapsed();
            ack.execute([&cursor])?;
            packages += 1;
        }
        let total = start.elapsed();
        let idle_micros = median_micros(|| {
            if read.query([])?.next()?.is_some() {
                return Err("a caught-up stream returned a package".into());
            }
            Ok(())
        })?;
        drop((read, apply, ack));
        if let Err(why) = tables_equal(&src, &dst)? {
            return Err(format!("split transaction: receiver differs: {why}").into());
        }
        reads.sort_by(|a, b| a.total_cmp(b));
        let src_bytes = checkpointed_size(&src, &dir.join("split_src.db"))?;
        let dst_bytes = checkpointed_size(&dst, &dir.join("split_dst.db"))?;
        crsql_stream_harness::close(dst);
        crsql_stream_harness::close(src);
        Ok(Split {
            src_bytes,
            dst_bytes,
            packages,
            changes,
            read_micros: reads.get(reads.len() / 2).copied().unwrap_or(0.0),
            total,
            last_apply,
            idle_micros,
        })
    }

    pub fn run(opts: &Options) -> BoxResult<()> {
        let rows = opts.stream_changes.div_ceil(3);
        let dir = tempfile::tempdir()?;
        println!();
        println!("crsql_stream stream benchmark");
        println!(
            "  backlog: {} rows x 3 columns in transactions of {ROWS_PER_TX} rows ({} changes each); packages of {MAX_CHANGES} changes",
            grouped(rows as u64),
            ROWS_PER_TX * 3
        );
        let (src, build) = timed(|| backlog(&dir.path().join("src.db"), rows, &opts.pragmas))?;
        let total: i64 = count(&src, "SELECT count(*) FROM crsql_changes")?;
        println!(
            "  built the backlog ({} changes) in {}",
            grouped(total as u64),
            ms(build.wall)
        );
        let raw: i64 = count(
            &src,
            "SELECT sum(length(\"table\") + length(pk) + length(cid) + length(site_id) + 5 * 8 + \
             CASE typeof(val) WHEN 'integer' THEN 8 WHEN 'real' THEN 8 WHEN 'null' THEN 0 \
             ELSE length(CAST(val AS BLOB)) END) FROM crsql_changes",
        )?;

        // 1. Produce every package, discarding them: speed and producer memory.
        let peak_ok = reset_peak();
        let rss0 = status_kib("VmRSS:").unwrap_or(0);
        let ((packages, changes, bin_bytes), pack) =
            timed(|| stream_all(&src, "out_bin", "binary", None))?;
        let hwm = status_kib("VmHWM:").unwrap_or(0);
        let growth_mib = hwm.saturating_sub(rss0) as f64 / 1024.0;
        if changes != total as u64 {
            return Err(
                format!("the stream carried {changes} changes, the backlog has {total}").into(),
            );
        }
        // 2. JSON size.
        let (_, _, json_bytes) = stream_all(&src, "out_json", "json", None)?;
        // 3. Keep binary packages and apply them at a fresh receiver.
        let mut kept = Vec::new();
        stream_all(&src, "out_keep", "binary", Some(&mut kept))?;
        let dst = open_file(&dir.path().join("dst.db"), true, &opts.pragmas)?;
        dst.execute_batch(CREATE)?;
        dst.query_row("SELECT crsql_as_crr('t')", [], |_| Ok(()))?;
        dst.execute_batch("CREATE VIRTUAL TABLE from_src USING crsql_InboundStream()")?;
        let ((), apply) = timed(|| {
            dst.execute_batch("BEGIN")?;
            {
                let mut stmt = dst.prepare("INSERT INTO from_src(package) VALUES (?1)")?;
                for p in &kept {
                    stmt.execute([p])?;
                }
            }
            dst.execute_batch("COMMIT")?;
            Ok(())
        })?;
        match tables_equal(&src, &dst)? {
            Ok(_) => {}
            Err(why) => {
                return Err(
                    format!("receiver differs from the sender after applying: {why}").into(),
                )
            }
        }
        // 4. LIMIT 1 on this backlog and on a small one.
        let big = first_package_cost(&src)?;
        let small_db = backlog(&dir.path().join("small.db"), 2 * ROWS_PER_TX, &opts.pragmas)?;
        let small = first_package_cost(&small_db)?;
        // 5. The whole backlog as ONE transaction, sent in parts.
        let split = split_transaction(dir.path(), rows, &opts.pragmas)?;

        let secs = |t: Timing| t.cpu.unwrap_or(t.wall).as_secs_f64();
        let pack_rate = changes as f64 / secs(pack);
        let apply_rate = changes as f64 / secs(apply);
        let per = |b: u64| b as f64 / changes as f64;
        println!();
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "figure", "measured", "target", ""
        );
        println!("{}", "-".repeat(84));
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "packages produced per second",
            grouped((packages as f64 / secs(pack)) as u64),
            "",
            ""
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "changes packed per second (binary)",
            grouped(pack_rate as u64),
            ">= 2,000,000",
            verdict(pack_rate >= TARGET_PACK_RATE)
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "changes applied per second at the receiver",
            grouped(apply_rate as u64),
            ">= 1,000,000",
            verdict(apply_rate >= TARGET_APPLY_RATE)
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "raw crsql_changes row, bytes per change",
            format!("{:.1}", per(raw as u64)),
            "",
            ""
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "binary package, bytes per change",
            format!("{:.1}", per(bin_bytes)),
            "<= raw / 2",
            verdict(per(bin_bytes) <= per(raw as u64) / 2.0)
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "JSON package, bytes per change",
            format!("{:.1}", per(json_bytes)),
            "",
            ""
        );
        let mem = if peak_ok {
            format!("{growth_mib:.1} MiB")
        } else {
            "n/a".to_string()
        };
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "producer peak memory growth (whole backlog)",
            mem,
            "< 64 MiB",
            verdict(peak_ok && growth_mib < TARGET_MEMORY_MIB)
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            format!("LIMIT 1 cost, {} changes backlog", grouped(total as u64)),
            format!("{big:.0} us"),
            "",
            ""
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "LIMIT 1 cost, 1,998 changes backlog",
            format!("{small:.0} us"),
            "about equal",
            ""
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            format!(
                "one {}-change transaction: LIMIT 1 read",
                grouped(split.changes as u64)
            ),
            format!("{:.0} us", split.read_micros),
            "~ LIMIT 1 above",
            ""
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            format!("  sent in {} parts (read+apply+ack), wall", split.packages),
            ms(split.total),
            "",
            ""
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "  the last part (applies all of it), wall",
            ms(split.last_apply),
            "",
            ""
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "  file: sender / receiver (staged the parts)",
            format!("{} / {}", mib(split.src_bytes), mib(split.dst_bytes)),
            "about equal",
            ""
        );
        println!(
            "{:<44} {:>16} {:>14} {:>6}",
            "  then LIMIT 1 on the caught-up stream",
            format!("{:.0} us", split.idle_micros),
            "",
            ""
        );
        println!(
            "({} packages; rates use this thread's CPU time where Linux reports it; wall: pack {}, apply {})",
            grouped(packages),
            ms(pack.wall),
            ms(apply.wall)
        );
        crsql_stream_harness::close(small_db);
        crsql_stream_harness::close(dst);
        crsql_stream_harness::close(src);
        Ok(())
    }
}

/// Metadata of deleted rows before and after `crsql_compact()` (issue:
/// peers and compaction): `--rows` rows inserted, 90% deleted, every peer
/// acknowledged, then compacted.
mod compaction {
    use super::*;

    /// Rows and bytes (dbstat) of the CRR's metadata tables.
    fn metadata(conn: &Connection) -> BoxResult<(i64, Option<i64>)> {
        let records = if count(
            conn,
            "SELECT count(*) FROM sqlite_master WHERE name = 'crsql_tombstones'",
        )? > 0
        {
            count(conn, "SELECT count(*) FROM crsql_tombstones")?
        } else {
            0
        };
        let rows = count(conn, "SELECT count(*) FROM t__crsql_clock")?
            + count(conn, "SELECT count(*) FROM t__crsql_pks")?
            + records;
        let bytes = conn
            .query_row(
                "SELECT sum(pgsize) FROM dbstat WHERE name LIKE 't\\_\\_crsql%' ESCAPE '\\' \
                 OR name LIKE 'sqlite_autoindex_t\\_\\_crsql%' ESCAPE '\\' OR name LIKE 'crsql_tombstones%'",
                [],
                |r| r.get(0),
            )
            .ok();
        Ok((rows, bytes))
    }

    pub fn run(opts: &Options) -> BoxResult<()> {
        let n = opts.rows;
        let deleted = n * 9 / 10;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("compact.db");
        let mut conn = open_file(&path, true, &opts.pragmas)?;
        conn.execute_batch(CREATE)?;
        conn.query_row("SELECT crsql_as_crr('t')", [], |_| Ok(()))?;
        insert_rows(&mut conn, &make_rows(n))?;
        conn.execute_batch(&format!(
            "CREATE VIRTUAL TABLE to_peer USING crsql_OutboundStream(peer = '0102030405060708090a0b0c0d0e0f10');
             DELETE FROM t WHERE rowid IN (SELECT rowid FROM t LIMIT {deleted});"
        ))?;
        // One more write, so the deletes are below the newest version; the
        // peer acknowledges everything.
        conn.execute_batch("UPDATE t SET rowid = rowid WHERE rowid = (SELECT max(rowid) FROM t)")?;
        let newest: String = conn.query_row(
            "SELECT max(cursor) FROM (SELECT cursor FROM to_peer)",
            [],
            |r| r.get(0),
        )?;
        conn.execute("INSERT INTO to_peer(last_sent) VALUES (?1)", [&newest])?;
        let (rows_before, bytes_before) = metadata(&conn)?;
        let file_before = {
            conn.execute_batch("VACUUM")?;
            checkpointed_size(&conn, &path)?
        };
        let (removed, t) = timed(|| count(&conn, "SELECT crsql_compact()"))?;
        let (rows_after, bytes_after) = metadata(&conn)?;
        conn.execute_batch("VACUUM")?;
        let file_after = checkpointed_size(&conn, &path)?;
        println!();
        println!(
            "compaction: {} rows inserted, {} deleted, every peer acknowledged; crsql_compact() removed {} clock and pks rows in {}",
            grouped(n as u64),
            grouped(deleted as u64),
            grouped(removed as u64),
            ms(t.wall)
        );
        let pct = |before: i64, after: i64| 100.0 * (before - after) as f64 / before.max(1) as f64;
        println!(
            "  metadata rows (clock + pks + compacted records): {} -> {} (-{:.1}%)",
            grouped(rows_before as u64),
            grouped(rows_after as u64),
            pct(rows_before, rows_after)
        );
        match (bytes_before, bytes_after) {
            (Some(b), Some(a)) => println!(
                "  metadata bytes (dbstat pages): {} -> {} (-{:.1}%)",
                mib(b as u64),
                mib(a as u64),
                pct(b, a)
            ),
            _ => println!("  metadata bytes: dbstat not available in this SQLite"),
        }
        println!(
            "  file after VACUUM: {} -> {}",
            mib(file_before),
            mib(file_after)
        );
        crsql_stream_harness::close(conn);
        Ok(())
    }
}

/// What `crsql_streams.lag_changes` costs (issue 10, item 6; DECISIONS D33).
mod lag {
    use super::streams::{backlog, median_micros};
    use super::*;

    const TARGET_MICROS: f64 = 5000.0;

    /// Median time of `SELECT lag_changes FROM crsql_streams WHERE name = ?`,
    /// and the value.
    fn lag_of(conn: &Connection, name: &str) -> BoxResult<(i64, f64, f64)> {
        let mut stmt = conn.prepare("SELECT lag_changes FROM crsql_streams WHERE name = ?1")?;
        let t = Instant::now();
        let lag: i64 = stmt.query_row([name], |r| r.get(0))?;
        let first = t.elapsed().as_secs_f64() * 1e6;
        let micros = median_micros(|| {
            let _: i64 = stmt.query_row([name], |r| r.get(0))?;
            Ok(())
        })?;
        Ok((lag, first, micros))
    }

    fn report(what: &str, (lag, first, micros): (i64, f64, f64), expected: i64) -> BoxResult<()> {
        if lag != expected {
            return Err(
                format!("{what}: lag_changes is {lag}, crsql_changes has {expected}").into(),
            );
        }
        println!(
            "  {what:<54} {:>9} changes  {:>8.3} ms (first {:>8.3} ms)  {}",
            grouped(lag as u64),
            micros / 1000.0,
            first / 1000.0,
            verdict(micros <= TARGET_MICROS)
        );
        Ok(())
    }

    pub fn run(opts: &Options) -> BoxResult<()> {
        let rows = opts.stream_changes.div_ceil(3);
        let dir = tempfile::tempdir()?;
        println!();
        println!(
            "lag_changes: SELECT lag_changes FROM crsql_streams, median of 21 (target <= {} ms)",
            TARGET_MICROS / 1000.0
        );
        let (conn, build) = timed(|| backlog(&dir.path().join("lag.db"), rows, &opts.pragmas))?;
        let total = count(&conn, "SELECT count(*) FROM crsql_changes")?;
        println!(
            "  backlog: {} changes in transactions of 999 changes, built in {}",
            grouped(total as u64),
            ms(build.wall)
        );
        conn.execute_batch(
            "CREATE VIRTUAL TABLE to_b USING crsql_OutboundStream();
             CREATE VIRTUAL TABLE to_c USING crsql_OutboundStream(exclude_sites = '0102030405060708090a0b0c0d0e0f10', tables = 't');",
        )?;
        report("nothing acknowledged", lag_of(&conn, "to_b")?, total)?;
        report(
            "nothing acknowledged, exclude_sites and tables",
            lag_of(&conn, "to_c")?,
            total,
        )?;
        let half = count(&conn, "SELECT crsql_db_version() / 2")?;
        conn.execute(
            "INSERT INTO to_b(last_sent) VALUES (?1)",
            [format!("[{half},998]")],
        )?;
        let rest = count(
            &conn,
            &format!("SELECT count(*) FROM crsql_changes WHERE db_version > {half}"),
        )?;
        report("half acknowledged", lag_of(&conn, "to_b")?, rest)?;
        // Rows rewritten move to a newer version; the counts follow.
        conn.execute_batch("UPDATE t SET b = b + 1 WHERE id % 10 = 0")?;
        let rest = count(
            &conn,
            &format!("SELECT count(*) FROM crsql_changes WHERE db_version > {half}"),
        )?;
        report(
            "half acknowledged, after updating 10% of the rows",
            lag_of(&conn, "to_b")?,
            rest,
        )?;
        crsql_stream_harness::close(conn);

        // One transaction of the whole backlog, acknowledged inside it: the
        // first figure reads that version's rows once (no index on seq);
        // the median is what the following polls and parts cost.
        let mut one = open_file(&dir.path().join("one.db"), true, &opts.pragmas)?;
        one.execute_batch(CREATE)?;
        one.query_row("SELECT crsql_as_crr('t')", [], |_| Ok(()))?;
        insert_rows(&mut one, &make_rows(rows))?;
        one.execute_batch(
            "CREATE VIRTUAL TABLE to_d USING crsql_OutboundStream(max_changes = 1000)",
        )?;
        let cursor: String = one.query_row("SELECT cursor FROM to_d LIMIT 1", [], |r| r.get(0))?;
        one.execute("INSERT INTO to_d(last_sent) VALUES (?1)", [&cursor])?;
        let total = count(&one, "SELECT count(*) FROM crsql_changes")?;
        report(
            "one transaction, acknowledged inside it (a part)",
            lag_of(&one, "to_d")?,
            total - 1000,
        )?;
        one.execute_batch("INSERT INTO t (id, a) VALUES (-1, 'next')")?;
        let total = count(&one, "SELECT count(*) FROM crsql_changes")?;
        report(
            "one transaction acknowledged inside it, after a write",
            lag_of(&one, "to_d")?,
            total - 1000,
        )?;
        crsql_stream_harness::close(one);
        Ok(())
    }
}
