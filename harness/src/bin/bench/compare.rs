//! Plain SQLite against each CRR layout (issue 12, item 4): one table per
//! row count.
//!
//! For each column (the plain table, then `t` as a CRR in each layout), a
//! fresh database file:
//! - insert the rows (one transaction, one prepared statement);
//! - `UPDATE t SET b = b + 1` (its own transaction);
//! - the file size after `PRAGMA wal_checkpoint(TRUNCATE)`;
//!
//! and for a CRR:
//! - read every row of `crsql_changes` (all nine columns, copied out);
//! - merge them into a fresh replica through `crsql_changes` (one
//!   transaction, one prepared `INSERT INTO crsql_changes` per change),
//!   read from the source `CHUNK` changes at a time through a second
//!   connection (only the inserts are timed);
//! - pack them with an outbound stream on the source and apply each package
//!   to an inbound stream on another fresh replica (one transaction), one
//!   package at a time: the pack rate is the time spent reading packages,
//!   the apply rate the time spent inserting them;
//! - check that both replicas' `t` and `crsql_changes` row count equal the
//!   source's (the program aborts if they do not).
//!
//! Nothing holds all the rows or all the changes: memory stays bounded at
//! any row count, and the peak RSS growth of each phase is printed.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection};

use crsql_stream_harness::sql::{Change, INSERT_CHANGE, SELECT_CHANGES};

use super::common::*;
use super::Options;

/// The layouts `--layouts` accepts, and its default.
pub const LAYOUTS: &[&str] = &["crsqlite", "compact"];

/// The targets for a layout (100k rows x 3 columns).
struct Targets {
    insert_ratio: f64,
    merge_rate: f64,
    pack_rate: f64,
    file_ratio: f64,
    file_label: &'static str,
}

/// The cr-sqlite layout's file ratio "as today": our bench's figure when
/// issue 12 was filed, rounded up.
const TODAY_FILE_RATIO: f64 = 4.6;

fn targets(layout: &str) -> Targets {
    if layout == "compact" {
        Targets {
            insert_ratio: 3.0,
            merge_rate: 1_000_000.0,
            pack_rate: 2_000_000.0,
            file_ratio: 2.5,
            file_label: "<= 2.5x",
        }
    } else {
        Targets {
            insert_ratio: 8.0,
            merge_rate: 400_000.0,
            pack_rate: 2_000_000.0,
            file_ratio: TODAY_FILE_RATIO,
            file_label: "as today, <= 4.6x",
        }
    }
}

/// What one database (plain, or a CRR in one layout) measured.
struct Column {
    insert: Timing,
    update: Timing,
    file: u64,
    /// Peak RSS growth of each phase, KiB.
    memory: Vec<(&'static str, Option<u64>)>,
    crr: Option<Crr>,
}

/// What only a CRR measures.
struct Crr {
    changes: u64,
    read: Timing,
    merge: Timing,
    pack: Timing,
    apply: Timing,
    packages: u64,
    merged_file: u64,
    applied_file: u64,
}

/// Run `f` as a phase: record its peak RSS growth under `name`.
fn phase<T>(
    memory: &mut Vec<(&'static str, Option<u64>)>,
    name: &'static str,
    f: impl FnOnce() -> BoxResult<T>,
) -> BoxResult<T> {
    let (v, growth) = peak_growth(f)?;
    memory.push((name, growth));
    Ok(v)
}

/// Insert rows `1..=n` in one transaction with one prepared statement,
/// generating them `CHUNK` at a time outside the timed part.
fn insert_all(conn: &Connection, n: usize) -> BoxResult<Timing> {
    let mut total = Timing::ZERO;
    let mark = Mark::now();
    conn.execute_batch("BEGIN")?;
    let mut stmt = conn.prepare(INSERT)?;
    total += mark.elapsed();
    for chunk in RowChunks::new(n) {
        let mark = Mark::now();
        for r in &chunk {
            stmt.execute(params![r.id, r.a, r.b, r.c])?;
        }
        total += mark.elapsed();
    }
    drop(stmt);
    let (_, commit) = timed(|| Ok(conn.execute_batch("COMMIT")?))?;
    total += commit;
    Ok(total)
}

/// Read every change, copying each out (and dropping it).
fn read_all(conn: &Connection) -> BoxResult<(u64, Timing)> {
    timed(|| {
        let mut stmt = conn.prepare(SELECT_CHANGES)?;
        let mut rows = stmt.query([])?;
        let mut n = 0u64;
        while let Some(r) = rows.next()? {
            std::hint::black_box(Change::from_row(r)?);
            n += 1;
        }
        Ok(n)
    })
}

/// Merge every change of `src` into `dst` through `crsql_changes`, in one
/// transaction, `CHUNK` changes read at a time; only the writes are timed.
fn merge_via_changes(src: &Connection, dst: &Connection) -> BoxResult<(u64, Timing)> {
    let (_, mut total) = timed(|| Ok(dst.execute_batch("BEGIN")?))?;
    let mut read = src.prepare(SELECT_CHANGES)?;
    let mut rows = read.query([])?;
    let mut insert = dst.prepare(INSERT_CHANGE)?;
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut n = 0u64;
    loop {
        chunk.clear();
        while chunk.len() < CHUNK {
            match rows.next()? {
                Some(r) => chunk.push(Change::from_row(r)?),
                None => break,
            }
        }
        if chunk.is_empty() {
            break;
        }
        n += chunk.len() as u64;
        let mark = Mark::now();
        for c in &chunk {
            c.insert(&mut insert)?;
        }
        total += mark.elapsed();
    }
    drop(insert);
    let (_, commit) = timed(|| Ok(dst.execute_batch("COMMIT")?))?;
    total += commit;
    Ok((n, total))
}

/// What packing and applying every change through the streams measured.
struct Streamed {
    packages: u64,
    changes: u64,
    pack: Timing,
    apply: Timing,
}

/// An outbound stream on `src` (default limits, binary encoding), each
/// package applied to an inbound stream on `dst` as soon as it is read,
/// all in one transaction at `dst`.
fn pack_and_apply(src: &Connection, dst: &Connection) -> BoxResult<Streamed> {
    src.execute_batch("CREATE VIRTUAL TABLE bench_out USING crsql_OutboundStream()")?;
    dst.execute_batch("CREATE VIRTUAL TABLE bench_in USING crsql_InboundStream()")?;
    let (mut pack, mut apply) = (Timing::ZERO, Timing::ZERO);
    let (_, begin) = timed(|| Ok(dst.execute_batch("BEGIN")?))?;
    apply += begin;
    let mut read = src.prepare("SELECT package, changes FROM bench_out")?;
    let mut rows = read.query([])?;
    let mut insert = dst.prepare("INSERT INTO bench_in(package) VALUES (?1)")?;
    let (mut packages, mut changes) = (0u64, 0u64);
    loop {
        let mark = Mark::now();
        let row = rows.next()?;
        pack += mark.elapsed();
        let Some(row) = row else { break };
        let ValueRef::Blob(package) = row.get_ref(0)? else {
            return Err("the outbound stream returned a package that is not a BLOB".into());
        };
        let mark = Mark::now();
        insert.execute([package])?;
        apply += mark.elapsed();
        packages += 1;
        changes += row.get::<_, i64>(1)? as u64;
    }
    drop(insert);
    let (_, commit) = timed(|| Ok(dst.execute_batch("COMMIT")?))?;
    apply += commit;
    Ok(Streamed {
        packages,
        changes,
        pack,
        apply,
    })
}

/// Abort unless `replica` holds the same `t` and as many changes as `src`.
fn check_replica(src: &Connection, replica: &Connection, how: &str) -> BoxResult<()> {
    if let Err(why) = tables_equal(src, replica)? {
        return Err(format!("the replica merged {how} differs from the source: {why}").into());
    }
    let (a, b) = (
        count(src, "SELECT count(*) FROM crsql_changes")?,
        count(replica, "SELECT count(*) FROM crsql_changes")?,
    );
    if a != b {
        return Err(format!(
            "the replica merged {how} has {b} rows in crsql_changes, the source {a}"
        )
        .into());
    }
    Ok(())
}

/// A fresh replica in `layout` (which the source could use).
fn replica(path: &Path, pragmas: &[String], layout: &str) -> BoxResult<Connection> {
    open_crr_in(path, pragmas, layout)?
        .map_err(|e| format!("a replica in the {layout} layout: {e}").into())
}

/// The CRR phases after the insert and the update.
fn crr_phases(
    dir: &Path,
    src: &Connection,
    layout: &str,
    pragmas: &[String],
    memory: &mut Vec<(&'static str, Option<u64>)>,
) -> BoxResult<Crr> {
    let (changes, read) = phase(memory, "read crsql_changes", || read_all(src))?;
    let merged_path = dir.join(format!("{layout}-merged.db"));
    let merged = replica(&merged_path, pragmas, layout)?;
    let (n, merge) = phase(memory, "merge via crsql_changes", || {
        merge_via_changes(src, &merged)
    })?;
    if n != changes {
        return Err(format!("merged {n} changes, read {changes}").into());
    }
    let applied_path = dir.join(format!("{layout}-applied.db"));
    let applied = replica(&applied_path, pragmas, layout)?;
    let s = phase(memory, "pack + apply via the streams", || {
        pack_and_apply(src, &applied)
    })?;
    if s.changes != changes {
        return Err(format!("the streams carried {} changes, read {changes}", s.changes).into());
    }
    phase(memory, "check the replicas", || {
        check_replica(src, &merged, "via crsql_changes")?;
        check_replica(src, &applied, "via the streams")
    })?;
    let merged_file = checkpointed_size(&merged, &merged_path)?;
    let applied_file = checkpointed_size(&applied, &applied_path)?;
    crsql_stream_harness::close(merged);
    crsql_stream_harness::close(applied);
    for p in [merged_path, applied_path] {
        remove_db(&p);
    }
    Ok(Crr {
        changes,
        read,
        merge,
        pack: s.pack,
        apply: s.apply,
        packages: s.packages,
        merged_file,
        applied_file,
    })
}

/// Delete a database file and its WAL files (space matters at 1M rows).
fn remove_db(path: &Path) {
    for ext in ["db", "db-wal", "db-shm"] {
        let _ = std::fs::remove_file(path.with_extension(ext));
    }
}

/// Measure one column: `layout` is `None` for the plain table (the
/// extension not loaded). `Ok(Err(message))` if the extension has no such
/// layout.
fn measure(
    dir: &Path,
    n: usize,
    layout: Option<&str>,
    pragmas: &[String],
) -> BoxResult<Result<Column, String>> {
    let path = dir.join(format!("{}.db", layout.unwrap_or("plain")));
    let conn = match layout {
        None => {
            let c = open_file(&path, false, pragmas)?;
            c.execute_batch(CREATE)?;
            c
        }
        Some(l) => match open_crr_in(&path, pragmas, l)? {
            Ok(c) => c,
            Err(why) => {
                remove_db(&path);
                return Ok(Err(why));
            }
        },
    };
    let mut memory = Vec::new();
    let insert = phase(&mut memory, "insert", || insert_all(&conn, n))?;
    let update = phase(&mut memory, "update", || {
        let (updated, t) = timed(|| Ok(conn.execute(UPDATE, [])?))?;
        if updated != n {
            return Err(format!("UPDATE touched {updated} rows, expected {n}").into());
        }
        Ok(t)
    })?;
    let file = checkpointed_size(&conn, &path)?;
    let crr = match layout {
        None => None,
        Some(l) => Some(crr_phases(dir, &conn, l, pragmas, &mut memory)?),
    };
    if crr.is_some() {
        crsql_stream_harness::close(conn);
    } else {
        drop(conn);
    }
    remove_db(&path);
    Ok(Ok(Column {
        insert,
        update,
        file,
        memory,
        crr,
    }))
}

fn rate(changes: u64, t: Timing, time: fn(Timing) -> std::time::Duration) -> f64 {
    changes as f64 / time(t).as_secs_f64().max(1e-9)
}

fn ratio(x: f64, plain: f64) -> String {
    format!("{:.2}x", x / plain.max(1e-12))
}

/// The comparison table, in CPU time (`targets`, with the targets
/// and verdicts) or in wall-clock time.
fn table(
    plain: &Column,
    layouts: &[(&str, Result<Column, String>)],
    time: fn(Timing) -> std::time::Duration,
    with_targets: bool,
) -> Table {
    let mut head = vec!["figure".to_string(), "plain".to_string()];
    for (name, col) in layouts {
        head.push(name.to_string());
        if col.is_ok() {
            head.push("/plain".into());
            if with_targets {
                head.push("target".into());
                head.push(String::new());
            }
        }
    }
    let mut t = Table::new(head);
    let secs = |x: Timing| time(x).as_secs_f64();
    let dur = |x: Timing| ms(time(x));
    // Each figure: its name, the plain cell, and per layout its cells.
    type Cells = Vec<String>;
    let figures: Vec<(&str, String, Box<dyn Fn(&str, &Column) -> Cells>)> = vec![
        (
            "insert (1 tx)",
            dur(plain.insert),
            Box::new(|l, c| {
                let r = secs(c.insert) / secs(plain.insert).max(1e-12);
                let tg = targets(l);
                vec![
                    dur(c.insert),
                    ratio(secs(c.insert), secs(plain.insert)),
                    format!("<= {}x", tg.insert_ratio),
                    verdict(r <= tg.insert_ratio).into(),
                ]
            }),
        ),
        (
            "update b = b + 1",
            dur(plain.update),
            Box::new(|_, c| {
                vec![
                    dur(c.update),
                    ratio(secs(c.update), secs(plain.update)),
                    "-".into(),
                    String::new(),
                ]
            }),
        ),
        (
            "changes",
            "-".into(),
            Box::new(|_, c| {
                let n = c.crr.as_ref().map_or(0, |x| x.changes);
                vec![grouped(n), "-".into(), "-".into(), String::new()]
            }),
        ),
        (
            "read crsql_changes, changes/s",
            "-".into(),
            Box::new(|_, c| {
                let x = c.crr.as_ref().expect("a CRR column");
                vec![
                    grouped(rate(x.changes, x.read, time) as u64),
                    "-".into(),
                    "-".into(),
                    String::new(),
                ]
            }),
        ),
        (
            "merge via crsql_changes, changes/s",
            "-".into(),
            Box::new(|l, c| {
                let x = c.crr.as_ref().expect("a CRR column");
                let r = rate(x.changes, x.merge, time);
                let tg = targets(l).merge_rate;
                vec![
                    grouped(r as u64),
                    "-".into(),
                    format!(">= {}", grouped(tg as u64)),
                    verdict(r >= tg).into(),
                ]
            }),
        ),
        (
            "apply via inbound stream, changes/s",
            "-".into(),
            Box::new(|l, c| {
                let x = c.crr.as_ref().expect("a CRR column");
                let r = rate(x.changes, x.apply, time);
                let tg = targets(l).merge_rate;
                vec![
                    grouped(r as u64),
                    "-".into(),
                    format!(">= {}", grouped(tg as u64)),
                    verdict(r >= tg).into(),
                ]
            }),
        ),
        (
            "pack (outbound stream), changes/s",
            "-".into(),
            Box::new(|l, c| {
                let x = c.crr.as_ref().expect("a CRR column");
                let r = rate(x.changes, x.pack, time);
                let tg = targets(l).pack_rate;
                vec![
                    grouped(r as u64),
                    "-".into(),
                    format!(">= {}", grouped(tg as u64)),
                    verdict(r >= tg).into(),
                ]
            }),
        ),
        (
            "file",
            mib(plain.file),
            Box::new(|l, c| {
                let r = c.file as f64 / plain.file as f64;
                let tg = targets(l);
                vec![
                    mib(c.file),
                    ratio(c.file as f64, plain.file as f64),
                    tg.file_label.into(),
                    verdict(r <= tg.file_ratio).into(),
                ]
            }),
        ),
        (
            "file, replica via crsql_changes",
            "-".into(),
            Box::new(|_, c| {
                let x = c.crr.as_ref().expect("a CRR column");
                let f = x.merged_file;
                vec![
                    mib(f),
                    ratio(f as f64, plain.file as f64),
                    "-".into(),
                    String::new(),
                ]
            }),
        ),
        (
            "file, replica via the streams",
            "-".into(),
            Box::new(|_, c| {
                let x = c.crr.as_ref().expect("a CRR column");
                let f = x.applied_file;
                vec![
                    mib(f),
                    ratio(f as f64, plain.file as f64),
                    "-".into(),
                    String::new(),
                ]
            }),
        ),
    ];
    for (i, (name, plain_cell, cells)) in figures.iter().enumerate() {
        let mut row = vec![name.to_string(), plain_cell.clone()];
        for (l, col) in layouts {
            match col {
                Ok(c) => {
                    let mut cs = cells(l, c);
                    if !with_targets {
                        cs.truncate(2);
                    }
                    row.extend(cs);
                }
                Err(why) if i == 0 => row.push(format!("n/a ({why})")),
                Err(_) => row.push("n/a".into()),
            }
        }
        t.row(row);
    }
    t
}

/// Peak RSS growth of each phase, per column.
fn memory_table(plain: &Column, layouts: &[(&str, Result<Column, String>)]) -> Table {
    let mut head = vec!["peak RSS growth".to_string(), "plain".to_string()];
    head.extend(layouts.iter().map(|(l, _)| l.to_string()));
    let mut t = Table::new(head);
    let kib = |c: &Column, phase: &str| {
        c.memory
            .iter()
            .find(|(p, _)| *p == phase)
            .map_or("-".to_string(), |(_, g)| {
                g.map_or("n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
            })
    };
    let phases = layouts
        .iter()
        .find_map(|(_, c)| c.as_ref().ok())
        .unwrap_or(plain)
        .memory
        .iter()
        .map(|(p, _)| *p);
    for p in phases {
        let mut row = vec![p.to_string(), kib(plain, p)];
        row.extend(layouts.iter().map(|(_, c)| match c {
            Ok(c) => kib(c, p),
            Err(_) => "n/a".into(),
        }));
        t.row(row);
    }
    t
}

pub fn run(opts: &Options) -> BoxResult<()> {
    println!("crsql_stream benchmark: plain SQLite vs each CRR layout");
    println!("  table: {CREATE}");
    println!(
        "  SQLite {} (bundled), file databases, journal_mode=WAL, synchronous=NORMAL, default cache",
        rusqlite::version()
    );
    let ext = crsql_stream_harness::ext_path();
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
    println!(
        "  plain = the table without the extension; a layout = crsql_as_crr('t') after crsql_config_set('crr-layout', <layout>), before inserting"
    );
    for &n in &opts.rows {
        let dir = tempfile::tempdir()?;
        let (plain, wall) = timed(|| Ok(measure(dir.path(), n, None, &opts.pragmas)??))?;
        let mut took = wall.wall;
        let mut layouts = Vec::new();
        for l in &opts.layouts {
            let (col, wall) = timed(|| measure(dir.path(), n, Some(l), &opts.pragmas))?;
            took += wall.wall;
            layouts.push((l.as_str(), col));
        }
        println!();
        println!(
            "{} rows x 3 columns (this table took {:.0} s to measure)",
            grouped(n as u64),
            took.as_secs_f64()
        );
        println!("this thread's CPU time (excludes waiting for a CPU on a busy machine); issue 12's targets:");
        print!("{}", table(&plain, &layouts, Timing::cpu_or_wall, true).render());
        println!("wall-clock time:");
        print!("{}", table(&plain, &layouts, |t| t.wall, false).render());
        print!("{}", memory_table(&plain, &layouts).render());
        for (l, col) in &layouts {
            match col {
                Ok(c) => {
                    let x = c.crr.as_ref().expect("a CRR column");
                    println!(
                        "{l}: both replicas equal the source (t and the crsql_changes count); {} packages; per row: insert {:.2} us (plain {:.2} us)",
                        grouped(x.packages),
                        c.insert.cpu_or_wall().as_secs_f64() * 1e6 / n as f64,
                        plain.insert.cpu_or_wall().as_secs_f64() * 1e6 / n as f64,
                    );
                    if x.changes != 3 * n as u64 {
                        println!(
                            "{l}: note: crsql_changes returned {} rows; cr-sqlite 0.16 returns {} here (3 cells per row, no sentinels)",
                            grouped(x.changes),
                            grouped(3 * n as u64)
                        );
                    }
                }
                Err(why) => println!(
                    "{l}: n/a: crsql_config_set('crr-layout', '{l}') failed: {why}"
                ),
            }
        }
    }
    println!();
    println!("file sizes are after PRAGMA wal_checkpoint(TRUNCATE), following the insert and the update (replicas: the merge)");
    println!("cr-sqlite 0.16 itself, 100k rows (issue 12): insert 34x plain, merge 122,000 changes/s, file 4.5x");
    Ok(())
}
