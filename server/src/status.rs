//! `crsql-sync status --db FILE`: streams, peers, positions and lag.

use std::fmt::Write;
use std::path::Path;

use crsql_stream_rs::rusqlite::types::Value;

use crate::db;

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => crate::protocol::hex(b),
    }
}

fn table(
    out: &mut String,
    conn: &crsql_stream_rs::rusqlite::Connection,
    title: &str,
    sql: &str,
) -> Result<(), String> {
    let mut stmt = conn.prepare(sql).map_err(|e| db::message(&e))?;
    let cols: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let n = cols.len();
    let mut rows = vec![cols];
    let mut q = stmt.query([]).map_err(|e| db::message(&e))?;
    while let Some(r) = q.next().map_err(|e| db::message(&e))? {
        rows.push(
            (0..n)
                .map(|i| cell(&r.get::<_, Value>(i).unwrap_or(Value::Null)))
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..n)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let _ = writeln!(out, "{title}:");
    if rows.len() == 1 {
        let _ = writeln!(out, "  (none)");
        return Ok(());
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "  {}", line.join("  ").trim_end());
    }
    Ok(())
}

/// The report `status` prints.
pub fn report(path: &Path) -> Result<String, String> {
    if !path.exists() {
        return Err(format!("no database at {}", path.display()));
    }
    let conn = db::open(path)
        .map_err(|e| format!("cannot open {}: {}", path.display(), db::message(&e)))?;
    let mut out = String::new();
    let site = db::site_id(&conn).map_err(|e| db::message(&e))?;
    let v = db::db_version(&conn).map_err(|e| db::message(&e))?;
    let _ = writeln!(out, "database: {}", path.display());
    let _ = writeln!(out, "site id:  {}", crate::protocol::hex(&site));
    let _ = writeln!(out, "db_version: {v}");
    table(
        &mut out,
        &conn,
        "streams",
        "SELECT name, direction, peer, last_sent, last_applied, lag_versions FROM crsql_streams",
    )?;
    table(
        &mut out,
        &conn,
        "peers",
        "SELECT hex(site_id) AS site_id, last_acked, last_applied, \
         datetime(last_seen, 'unixepoch') AS last_seen, expired FROM crsql_peers",
    )?;
    Ok(out)
}
