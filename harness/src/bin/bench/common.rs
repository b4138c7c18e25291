//! What every part of the benchmark shares: the table and its data, opening
//! databases, timing, memory readings, checks and formatting.

use std::fmt::Write as _;
use std::ops::AddAssign;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::types::Value;
use rusqlite::{params, Connection};

pub type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

pub const CREATE: &str =
    "CREATE TABLE t (id INTEGER PRIMARY KEY NOT NULL, a TEXT, b INTEGER, c REAL)";
pub const INSERT: &str = "INSERT INTO t (id, a, b, c) VALUES (?1, ?2, ?3, ?4)";
pub const UPDATE: &str = "UPDATE t SET b = b + 1";
/// The column [`UPDATE`] sets.
pub const UPDATED: &str = "b";

/// Rows generated (and changes copied) at a time where a phase streams
/// its data, so that memory stays bounded whatever the row count.
pub const CHUNK: usize = 10_000;

/// A row of `t`.
pub struct Row {
    pub id: i64,
    pub a: String,
    pub b: i64,
    pub c: f64,
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

/// The rows `1..=n` of `t`, `CHUNK` at a time; always the same data for the
/// same `n` (a prefix of a larger `n`'s).
pub struct RowChunks {
    rng: Rng,
    next: usize,
    n: usize,
}

impl RowChunks {
    pub fn new(n: usize) -> RowChunks {
        RowChunks {
            rng: Rng(0x9E37_79B9_7F4A_7C15),
            next: 0,
            n,
        }
    }

    fn row(&mut self, i: usize) -> Row {
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
        // "row-0000042-" (12 chars) + 8..=18 letters: 20..=30 chars.
        let mut a = format!("row-{i:07}-");
        let extra = 8 + (self.rng.next() % 11) as usize;
        for _ in 0..extra {
            a.push(LETTERS[(self.rng.next() % 26) as usize] as char);
        }
        Row {
            id: i as i64 + 1,
            a,
            b: (self.rng.next() % 1_000_000) as i64,
            c: (self.rng.next() % 1_000_000_000) as f64 / 1000.0,
        }
    }
}

impl Iterator for RowChunks {
    type Item = Vec<Row>;

    fn next(&mut self) -> Option<Vec<Row>> {
        let end = self.n.min(self.next + CHUNK);
        if self.next == end {
            return None;
        }
        let chunk = (self.next..end).map(|i| self.row(i)).collect();
        self.next = end;
        Some(chunk)
    }
}

pub fn make_rows(n: usize) -> Vec<Row> {
    RowChunks::new(n).flatten().collect()
}

pub fn open_file(path: &Path, with_ext: bool, pragmas: &[String]) -> BoxResult<Connection> {
    let conn = Connection::open(path)?;
    if with_ext {
        crsql_stream_harness::load(&conn)?;
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

/// The CRR layout every database gets unless told otherwise.
pub const DEFAULT_LAYOUT: &str = "crsqlite";

/// A new database file holding `t` as a CRR in `layout`: the layout is
/// selected with `crsql_config_set('crr-layout', layout)` before
/// `crsql_as_crr` (not for the default layout). `Ok(Err(message))` when
/// the extension refuses the setting, i.e. does not have that layout (yet).
pub fn open_crr_in(
    path: &Path,
    pragmas: &[String],
    layout: &str,
) -> BoxResult<Result<Connection, String>> {
    let conn = open_file(path, true, pragmas)?;
    if layout != DEFAULT_LAYOUT {
        let set = conn.query_row(
            "SELECT crsql_config_set('crr-layout', ?1)",
            [layout],
            |_| Ok(()),
        );
        if let Err(e) = set {
            return Ok(Err(crsql_stream_harness::sql::message(&e)));
        }
    }
    conn.execute_batch(CREATE)?;
    conn.query_row("SELECT crsql_as_crr('t')", [], |_| Ok(()))?;
    Ok(Ok(conn))
}

/// A new database file holding `t` as a CRR in the default layout.
pub fn open_crr(path: &Path, pragmas: &[String]) -> BoxResult<Connection> {
    Ok(open_crr_in(path, pragmas, DEFAULT_LAYOUT)??)
}

/// Wall-clock time and, where Linux reports it, the CPU time of this thread
/// (user + system; it leaves out time spent waiting for a CPU, so it is less
/// sensitive to other load on the machine).
#[derive(Clone, Copy)]
pub struct Timing {
    pub wall: Duration,
    pub cpu: Option<Duration>,
}

impl Timing {
    /// Nothing yet, to add timings to.
    pub const ZERO: Timing = Timing {
        wall: Duration::ZERO,
        cpu: Some(Duration::ZERO),
    };

    /// CPU time where Linux reports it, else wall-clock time.
    pub fn cpu_or_wall(self) -> Duration {
        self.cpu.unwrap_or(self.wall)
    }
}

impl AddAssign for Timing {
    fn add_assign(&mut self, o: Timing) {
        self.wall += o.wall;
        self.cpu = self.cpu.zip(o.cpu).map(|(a, b)| a + b);
    }
}

/// CPU time of the current thread: `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`,
/// exact to the nanosecond (`/proc/thread-self/schedstat` only moves at
/// the scheduler's tick, 4 ms here, too coarse for the short intervals the
/// comparison adds up).
fn thread_cpu() -> Option<Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(Duration::new(
        u64::try_from(t.tv_sec).ok()?,
        u32::try_from(t.tv_nsec).ok()?,
    ))
}

/// A point in time, wall and CPU, to measure what follows.
pub struct Mark {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Mark {
    pub fn now() -> Mark {
        let cpu = thread_cpu();
        Mark {
            wall: Instant::now(),
            cpu,
        }
    }

    pub fn elapsed(&self) -> Timing {
        let wall = self.wall.elapsed();
        let cpu = match (self.cpu, thread_cpu()) {
            (Some(a), Some(b)) => b.checked_sub(a),
            _ => None,
        };
        Timing { wall, cpu }
    }
}

pub fn timed<T>(f: impl FnOnce() -> BoxResult<T>) -> BoxResult<(T, Timing)> {
    let mark = Mark::now();
    let v = f()?;
    Ok((v, mark.elapsed()))
}

/// The value of a `/proc/self/status` field in KiB (`VmRSS:`, `VmHWM:`).
pub fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Reset the peak-RSS counter (Linux: write 5 to clear_refs).
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// How far this process's peak RSS rose above its RSS at the start of `f`,
/// in KiB (`None` where Linux does not let us reset the peak).
pub fn peak_growth<T>(f: impl FnOnce() -> BoxResult<T>) -> BoxResult<(T, Option<u64>)> {
    let ok = reset_peak();
    let rss0 = status_kib("VmRSS:");
    let v = f()?;
    let growth = match (ok, rss0, status_kib("VmHWM:")) {
        (true, Some(r), Some(h)) => Some(h.saturating_sub(r)),
        _ => None,
    };
    Ok((v, growth))
}

/// Insert `rows` in one transaction with one prepared statement.
pub fn insert_rows(conn: &mut Connection, rows: &[Row]) -> BoxResult<()> {
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

pub fn count(conn: &Connection, sql: &str) -> BoxResult<i64> {
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}

/// Compare `t` row by row (ordered by id) on two connections. Floats are
/// compared bit for bit.
pub fn tables_equal(a: &Connection, b: &Connection) -> BoxResult<Result<usize, String>> {
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
pub fn checkpointed_size(conn: &Connection, path: &Path) -> BoxResult<u64> {
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

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// 1234567 -> "1,234,567".
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or("?"))
        .collect();
    groups.join(",")
}

pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "MISS"
    }
}

/// A text table: the first column left-aligned, the others right-aligned,
/// a rule under the header.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(head: Vec<String>) -> Table {
        Table { rows: vec![head] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut width = vec![0usize; columns];
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (j, (c, &w)) in r.iter().zip(&width).enumerate() {
                if j == 0 {
                    let _ = write!(line, "{c:<w$}");
                } else {
                    let _ = write!(line, "  {c:>w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if i == 0 {
                let total = width.iter().sum::<usize>() + 2 * (columns.max(1) - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        out
    }
}
