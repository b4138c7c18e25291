//! Metadata of deleted rows before and after `crsql_compact()` (issue:
//! peers and compaction): the first `--rows` count of rows inserted, 90%
//! deleted, every peer acknowledged, then compacted.

use rusqlite::Connection;

use super::common::*;
use super::Options;

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
    let n = opts.rows[0];
    let deleted = n * 9 / 10;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("compact.db");
    let mut conn = open_crr(&path, &opts.pragmas)?;
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
