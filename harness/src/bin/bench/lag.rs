//! What `crsql_streams.lag_changes` costs (issue 10, item 6; DECISIONS D33).

use std::time::Instant;

use rusqlite::Connection;

use super::common::*;
use super::streams::{backlog, median_micros};
use super::Options;

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
        return Err(format!("{what}: lag_changes is {lag}, crsql_changes has {expected}").into());
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
    let mut one = open_crr(&dir.path().join("one.db"), &opts.pragmas)?;
    insert_rows(&mut one, &make_rows(rows))?;
    one.execute_batch("CREATE VIRTUAL TABLE to_d USING crsql_OutboundStream(max_changes = 1000)")?;
    let cursor: String = one.query_row("SELECT cursor FROM to_d LIMIT 1", [], |r| r.get(0))?;
    one.execute("INSERT INTO to_d(last_sent) VALUES (?1)", [&cursor])?;
    // The stream acknowledged its first part: all but 1,000 changes left.
    let one_part_sent = |what: &str| -> BoxResult<()> {
        let total = count(&one, "SELECT count(*) FROM crsql_changes")?;
        report(what, lag_of(&one, "to_d")?, total - 1000)
    };
    one_part_sent("one transaction, acknowledged inside it (a part)")?;
    one.execute_batch("INSERT INTO t (id, a) VALUES (-1, 'next')")?;
    one_part_sent("one transaction acknowledged inside it, after a write")?;
    crsql_stream_harness::close(one);
    Ok(())
}
