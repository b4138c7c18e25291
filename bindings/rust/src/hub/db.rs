//! What a hub client (and the hub itself) reads from and computes on a
//! database: the schema hash of a hello, stream names and positions.

use rusqlite::{Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use super::protocol::{hex, parse_site, Pos, Site};

/// The schema hash of a hello and a welcome: SHA-256 over every CRR, in
/// name order, of `name NUL pk1 US pk2 … NUL col1 US col2 … LF` (primary-key
/// columns in key order, the others in table order), cut to 16 bytes. Two
/// databases with the same hash can exchange packages of every CRR.
pub fn schema_hash(conn: &Connection) -> rusqlite::Result<[u8; 16]> {
    let mut h = Sha256::new();
    for (table, pks, cols) in crr_schemas(conn)? {
        h.update(table.as_bytes());
        h.update([0]);
        h.update(pks.join("\x1f").as_bytes());
        h.update([0]);
        h.update(cols.join("\x1f").as_bytes());
        h.update([b'\n']);
    }
    let d = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    Ok(out)
}

/// A CRR: name, primary-key columns (key order), other columns.
pub type CrrSchema = (String, Vec<String>, Vec<String>);

/// Every CRR with its primary-key columns (key order) and other columns.
pub fn crr_schemas(conn: &Connection) -> rusqlite::Result<Vec<CrrSchema>> {
    let mut tables: Vec<String> = conn
        .prepare(
            // Both layouts: cr-sqlite's `T__crsql_clock`, compact's `T__crsql_rows`.
            "SELECT substr(name, 1, length(name) - 13) FROM sqlite_master \
             WHERE type = 'table' AND name LIKE '%\\_\\_crsql\\_clock' ESCAPE '\\' \
             UNION SELECT substr(name, 1, length(name) - 12) FROM sqlite_master \
             WHERE type = 'table' AND name LIKE '%\\_\\_crsql\\_rows' ESCAPE '\\' ORDER BY 1",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    tables.retain(|t| {
        conn.query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [t],
            |_| Ok(()),
        )
        .optional()
        .ok()
        .flatten()
        .is_some()
    });
    let mut out = Vec::new();
    for t in tables {
        let mut cols: Vec<(String, i64)> = conn
            .prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?
            .query_map([&t], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut pks: Vec<(String, i64)> = cols.iter().filter(|c| c.1 > 0).cloned().collect();
        pks.sort_by_key(|c| c.1);
        cols.retain(|c| c.1 == 0);
        out.push((
            t,
            pks.into_iter().map(|c| c.0).collect(),
            cols.into_iter().map(|c| c.0).collect(),
        ));
    }
    Ok(out)
}

/// A quoted identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Read a position column (the extension's `[v,s]` text).
pub fn pos_of(text: Option<String>) -> rusqlite::Result<Pos> {
    match text {
        None => Ok(Pos::ZERO),
        Some(t) => t.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        }),
    }
}

/// Client side: the outbound stream towards a hub.
pub fn client_out(hub: &Site) -> String {
    format!("crsql_hub_to_{}", hex(hub))
}
/// Client side: the prefix of the inbound streams from hubs.
pub const CLIENT_IN_PREFIX: &str = "crsql_hub_from_";
/// Client side: the inbound stream from a hub.
pub fn client_in(hub: &Site) -> String {
    format!("{CLIENT_IN_PREFIX}{}", hex(hub))
}

/// Client side: every hub this database follows, with how far it applied
/// that hub's packages (what a hello carries).
pub fn client_positions(conn: &Connection) -> rusqlite::Result<Vec<(Site, Pos)>> {
    let rows: Vec<(String, Option<String>)> = conn
        .prepare(
            "SELECT name, last_applied FROM crsql_streams WHERE direction = 'inbound' \
             AND name LIKE 'crsql\\_hub\\_from\\_%' ESCAPE '\\' ORDER BY name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (name, pos) in rows {
        if let Some(site) = parse_site(&name[CLIENT_IN_PREFIX.len()..]) {
            out.push((site, pos_of(pos)?));
        }
    }
    Ok(out)
}

/// Whether a stream of that name exists.
pub fn stream_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM crsql_streams WHERE name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()?
        .is_some())
}

/// `last_sent` of an outbound stream.
pub fn last_sent(conn: &Connection, name: &str) -> rusqlite::Result<Pos> {
    let t: Option<String> = conn
        .prepare_cached("SELECT last_sent FROM crsql_streams WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?;
    pos_of(t)
}

/// `last_applied` of an inbound stream.
pub fn last_applied(conn: &Connection, name: &str) -> rusqlite::Result<Pos> {
    let t: Option<String> = conn
        .prepare_cached("SELECT last_applied FROM crsql_streams WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?;
    pos_of(t)
}

/// The message of an SQLite error (the extension's text), else its Display.
pub fn message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
        other => other.to_string(),
    }
}
