//! The stream benchmark (issue: streams, item 9).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::common::*;
use super::Options;

/// Changes per transaction in the backlog (333 rows x 3 columns).
const ROWS_PER_TX: usize = 333;
pub const MAX_CHANGES: usize = 1000;
const TARGET_PACK_RATE: f64 = 2_000_000.0;
const TARGET_APPLY_RATE: f64 = 1_000_000.0;
const TARGET_MEMORY_MIB: f64 = 64.0;

/// A CRR database with `rows` rows written `ROWS_PER_TX` per transaction.
pub fn backlog(path: &Path, rows: usize, pragmas: &[String]) -> BoxResult<Connection> {
    let mut conn = open_crr(path, pragmas)?;
    let data = make_rows(rows);
    for chunk in data.chunks(ROWS_PER_TX) {
        insert_rows(&mut conn, chunk)?;
    }
    Ok(conn)
}

/// Stream every package of a fresh outbound table; returns (packages,
/// changes, bytes) and keeps the packages when `keep` is set.
pub fn stream_all(
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
    let mut src = open_crr(&dir.join("split_src.db"), pragmas)?;
    insert_rows(&mut src, &make_rows(rows))?;
    let changes: i64 = count(&src, "SELECT count(*) FROM crsql_changes")?;
    src.execute_batch(&format!(
        "CREATE VIRTUAL TABLE split USING crsql_OutboundStream(max_changes = {MAX_CHANGES})"
    ))?;
    let dst = open_crr(&dir.join("split_dst.db"), pragmas)?;
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
    let dst = open_crr(&dir.path().join("dst.db"), &opts.pragmas)?;
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
            return Err(format!("receiver differs from the sender after applying: {why}").into())
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
