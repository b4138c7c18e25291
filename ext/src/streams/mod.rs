//! Inbound and outbound stream virtual tables (the contract is
//! `docs/streams.md`), their stored state, and the package helpers.
//!
//! State lives in two ordinary tables created on first use, so positions are
//! written in the caller's transaction and survive crashes:
//! `crsql_stream_state` (one row per stream) and `crsql_stream_staging`
//! (parts of a split transaction waiting for their last part).

pub mod batch;
pub mod compact;
pub mod inbound;
pub mod inspect;
pub mod observe;
pub mod outbound;
pub mod peers;
pub mod pending;

use crsql_stream_core::{Position, SiteId};
use rusqlite::{params, Connection, OptionalExtension};

use crate::err;
use crate::error::Result;

/// The rows of a read-only listing table (`crsql_streams`, `crsql_peers`),
/// computed at `xFilter` and served one at a time.
#[derive(Default)]
pub struct Listing {
    rows: Vec<Vec<rusqlite::types::Value>>,
    pos: usize,
}

impl Listing {
    /// Serve `rows` from the first.
    pub fn reset(&mut self, rows: Vec<Vec<rusqlite::types::Value>>) {
        self.rows = rows;
        self.pos = 0;
    }

    pub fn next(&mut self) {
        self.pos += 1;
    }

    pub fn eof(&self) -> bool {
        self.pos >= self.rows.len()
    }

    /// Column `col` of the current row (NULL past the end).
    pub fn column(&self, col: std::ffi::c_int) -> rusqlite::types::Value {
        self.rows
            .get(self.pos)
            .and_then(|r| r.get(col as usize))
            .cloned()
            .unwrap_or(rusqlite::types::Value::Null)
    }

    pub fn rowid(&self) -> i64 {
        self.pos as i64
    }
}

/// The `next`, `eof`, `column` and `rowid` of a cursor (a `TableCursor`
/// impl) that serves a [`Listing`] held in its field `rows`.
macro_rules! listing_cursor {
    () => {
        fn next(&mut self) -> $crate::error::Result<()> {
            self.rows.next();
            Ok(())
        }

        fn eof(&self) -> bool {
            self.rows.eof()
        }

        fn column(
            &self,
            ctx: &mut rusqlite::vtab::Context,
            col: std::ffi::c_int,
        ) -> $crate::error::Result<()> {
            Ok(ctx.set_result(&self.rows.column(col))?)
        }

        fn rowid(&self) -> $crate::error::Result<i64> {
            Ok(self.rows.rowid())
        }
    };
}
pub(crate) use listing_cursor;

pub const OUTBOUND: &str = "crsql_OutboundStream";
pub const INBOUND: &str = "crsql_InboundStream";

const STATE_DDL: &str = "CREATE TABLE IF NOT EXISTS crsql_stream_state (
  name TEXT PRIMARY KEY NOT NULL,
  direction TEXT NOT NULL,
  stream_id BLOB,
  peer BLOB,
  db_version INTEGER NOT NULL DEFAULT 0,
  seq INTEGER NOT NULL DEFAULT 0,
  last_seen INTEGER,
  forgotten INTEGER NOT NULL DEFAULT 0,
  resync INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE TABLE IF NOT EXISTS crsql_stream_staging (
  name TEXT NOT NULL,
  part INTEGER NOT NULL,
  package BLOB NOT NULL,
  PRIMARY KEY (name, part)
) STRICT;";

/// One row of `crsql_stream_state`.
#[derive(Debug, Clone)]
pub struct StreamState {
    pub direction: String,
    pub stream_id: Option<Vec<u8>>,
    pub peer: Option<Vec<u8>>,
    /// `last_sent` of an outbound stream, `last_applied` of an inbound one.
    pub position: Position,
    /// Left behind by a compaction while its peer was expired.
    pub resync: bool,
}

pub fn ensure_state_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(STATE_DDL)?;
    conn.execute_batch(pending::PENDING_DDL)?;
    Ok(())
}

/// Columns added to `crsql_stream_state` after its first layout, with their
/// definitions: added when the extension is loaded on an older database.
const STATE_COLUMNS: [(&str, &str); 3] = [
    ("last_seen", "INTEGER"),
    ("forgotten", "INTEGER NOT NULL DEFAULT 0"),
    ("resync", "INTEGER NOT NULL DEFAULT 0"),
];

/// Bring an existing `crsql_stream_state` to the current layout (at load).
pub fn migrate_state(conn: &Connection) -> Result<()> {
    if !state_tables_exist(conn)? {
        return Ok(());
    }
    for (col, def) in STATE_COLUMNS {
        let has: bool = conn.query_row(
            "SELECT count(*) FROM pragma_table_info('crsql_stream_state') WHERE name = ?1",
            [col],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has {
            conn.execute_batch(&format!(
                "ALTER TABLE crsql_stream_state ADD COLUMN {col} {def}"
            ))?;
            if col == "last_seen" {
                // Streams from before `last_seen` count as seen now, not
                // as expired.
                conn.execute(
                    &format!("UPDATE crsql_stream_state SET last_seen = {NOW}"),
                    [],
                )?;
            }
        }
    }
    Ok(())
}

pub fn state_tables_exist(conn: &Connection) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'crsql_stream_state'",
        )?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some())
}

pub fn load_state(conn: &Connection, name: &str) -> Result<Option<StreamState>> {
    if !state_tables_exist(conn)? {
        return Ok(None);
    }
    Ok(conn
        .prepare_cached("SELECT direction, stream_id, peer, db_version, seq, resync FROM crsql_stream_state WHERE name = ?1")?
        .query_row([name], |r| {
            Ok(StreamState {
                direction: r.get(0)?,
                stream_id: r.get(1)?,
                peer: r.get(2)?,
                position: Position::new(r.get(3)?, r.get(4)?),
                resync: r.get::<_, i64>(5)? != 0,
            })
        })
        .optional()?)
}

/// The state of stream `name`. When there is none, a state row left behind
/// by `ALTER TABLE ... RENAME` (a row of the same direction whose table no
/// longer exists) is taken over, if there is exactly one.
pub fn find_state(conn: &Connection, name: &str, direction: &str) -> Result<Option<StreamState>> {
    if let Some(s) = load_state(conn, name)? {
        return Ok(Some(s));
    }
    if !state_tables_exist(conn)? {
        return Ok(None);
    }
    let orphans: Vec<String> = conn
        .prepare_cached(
            "SELECT name FROM crsql_stream_state WHERE direction = ?1 \
             AND name NOT IN (SELECT name FROM sqlite_master WHERE type = 'table')",
        )?
        .query_map([direction], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if let [old] = orphans.as_slice() {
        let moved = conn
            .execute(
                "UPDATE crsql_stream_state SET name = ?2 WHERE name = ?1",
                params![old, name],
            )
            .and_then(|_| {
                conn.execute(
                    "UPDATE crsql_stream_staging SET name = ?2 WHERE name = ?1",
                    params![old, name],
                )
            });
        if moved.is_ok() {
            return load_state(conn, name);
        }
    }
    Ok(None)
}

pub fn insert_state(
    conn: &Connection,
    name: &str,
    direction: &str,
    stream_id: Option<&[u8]>,
    peer: Option<&[u8]>,
    pos: Position,
) -> Result<()> {
    ensure_state_tables(conn)?;
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO crsql_stream_state (name, direction, stream_id, peer, db_version, seq, last_seen) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, {NOW})"
        ),
        params![name, direction, stream_id, peer, pos.db_version, pos.seq],
    )?;
    conn.execute("DELETE FROM crsql_stream_staging WHERE name = ?1", [name])?;
    Ok(())
}

pub fn delete_state(conn: &Connection, name: &str) -> Result<()> {
    if state_tables_exist(conn)? {
        conn.execute("DELETE FROM crsql_stream_state WHERE name = ?1", [name])?;
        conn.execute("DELETE FROM crsql_stream_staging WHERE name = ?1", [name])?;
    }
    Ok(())
}

/// Store a stream's position, and note that its peer was seen.
pub fn set_position(conn: &Connection, name: &str, pos: Position) -> Result<()> {
    conn.prepare_cached("UPDATE crsql_stream_state SET db_version = ?2, seq = ?3 WHERE name = ?1")?
        .execute(params![name, pos.db_version, pos.seq])?;
    touch(conn, name)
}

/// Unix time in seconds, from SQLite's clock (works on SQLite 3.35).
pub const NOW: &str = "CAST(strftime('%s', 'now') AS INTEGER)";

/// Note that stream `name`'s peer was seen now (an acknowledgement or an
/// applied package): it is no longer expired or forgotten, and
/// cr-sqlite's `crsql_tracked_peers` gets the stream's position (tag 0,
/// event 0 for what we received, 1 for what the peer acknowledged).
pub fn touch(conn: &Connection, name: &str) -> Result<()> {
    conn.prepare_cached(&format!(
        "UPDATE crsql_stream_state SET last_seen = {NOW}, forgotten = 0 WHERE name = ?1"
    ))?
    .execute([name])?;
    conn.prepare_cached(
        "INSERT INTO crsql_tracked_peers (site_id, version, seq, tag, event) \
         SELECT peer, db_version, seq, 0, CASE direction WHEN 'outbound' THEN 1 ELSE 0 END \
         FROM crsql_stream_state WHERE name = ?1 AND peer IS NOT NULL \
         ON CONFLICT (site_id, tag, event) DO UPDATE SET version = excluded.version, seq = excluded.seq",
    )?
    .execute([name])?;
    Ok(())
}

/// The `key = value` arguments of CREATE VIRTUAL TABLE, values dequoted;
/// an argument given twice is refused (which one should win is a guess).
pub fn parse_args(module: &str, table: &str, args: &[&str]) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(args.len());
    for arg in args {
        let (k, v) = parse_arg(module, table, arg)?;
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(err!(
                "{module} {table}: argument {k} is given more than once; give it once"
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

/// One `key = value` argument of CREATE VIRTUAL TABLE, value dequoted.
fn parse_arg(module: &str, table: &str, arg: &str) -> Result<(String, String)> {
    let (k, v) = arg.split_once('=').ok_or_else(|| {
        err!("{module} {table}: argument {arg:?} is not of the form name = value")
    })?;
    let v = v.trim();
    let dequoted = if v.len() >= 2
        && ((v.starts_with('\'') && v.ends_with('\'')) || (v.starts_with('"') && v.ends_with('"')))
    {
        let q = &v[..1];
        v[1..v.len() - 1].replace(&format!("{q}{q}"), q)
    } else {
        v.to_string()
    };
    Ok((k.trim().to_ascii_lowercase(), dequoted))
}

/// A position argument.
pub fn parse_position(module: &str, table: &str, what: &str, text: &str) -> Result<Position> {
    Position::parse(text).map_err(|e| err!("{module} {table}: {what}: {e}"))
}

/// A comma-separated list of hex site ids.
pub fn parse_sites(module: &str, table: &str, what: &str, text: &str) -> Result<Vec<SiteId>> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            SiteId::from_hex(s).ok_or_else(|| {
                err!("{module} {table}: {what}: {s:?} is not a site id (32 hex digits)")
            })
        })
        .collect()
}

/// A comma-separated list of table names. A name may be double-quoted (with
/// `""` for a quote inside), so names with commas or outer spaces can be
/// listed: `tables = 'a, " lead", "x,y"'`. At least one name is required.
pub fn parse_tables(module: &str, table: &str, text: &str) -> Result<Vec<String>> {
    let bad = |why: &str| err!("{module} {table}: tables: {why} in {text:?}");
    let mut names = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut name = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next() {
                    None => return Err(bad("unterminated quoted name")),
                    Some('"') if chars.next_if_eq(&'"').is_some() => name.push('"'),
                    Some('"') => break,
                    Some(c) => name.push(c),
                }
            }
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
            if !matches!(chars.peek(), None | Some(',')) {
                return Err(bad("text after a quoted name"));
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                name.push(c);
            }
            name.truncate(name.trim_end().len());
        }
        if !name.is_empty() {
            names.push(name);
        }
        if chars.next().is_none() {
            break;
        }
    }
    if names.is_empty() {
        return Err(err!("{module} {table}: tables must name at least one CRR"));
    }
    Ok(names)
}

/// A bounded positive integer argument.
pub fn parse_count(module: &str, table: &str, what: &str, text: &str, max: i64) -> Result<i64> {
    match text.trim().parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(err!(
            "{module} {table}: {what} must be an integer from 1 to {max}, got {text:?}"
        )),
    }
}

/// A position argument given to INSERT or WHERE (TEXT like `'[12,3]'`).
pub fn position_value(
    module: &str,
    table: &str,
    what: &str,
    v: rusqlite::types::ValueRef<'_>,
) -> Result<Position> {
    match v {
        rusqlite::types::ValueRef::Text(t) => {
            let s = std::str::from_utf8(t)
                .map_err(|_| err!("{module} {table}: {what} is not valid UTF-8"))?;
            parse_position(module, table, what, s)
        }
        other => Err(err!(
            "{module} {table}: {what} must be a position such as '[12,3]', got {}",
            crate::crr::values::type_name(other)
        )),
    }
}

/// Stream tables keep their state in the main database, so they must live there.
pub fn require_main(module: &str, schema: &str, table: &str) -> Result<()> {
    if schema != "main" {
        return Err(err!(
            "{module} {table}: stream tables must be created in the main database, not in {schema:?}"
        ));
    }
    Ok(())
}

/// Names a stream table must not take: the extension's eponymous tables
/// (a table of that name in `main` would hide them) and its own tables.
const RESERVED_NAMES: &[&str] = &[
    "crsql_changes",
    "crsql_streams",
    "crsql_package_changes",
    "crsql_internal_merge",
    "crsql_unpack_columns",
    "crsql_stream_state",
    "crsql_stream_staging",
    "crsql_master",
    "crsql_site_id",
    "crsql_tracked_peers",
    "crsql_tombstones",
    "crsql_peers",
    "crsql_pending_changes",
    "crsql_pending_schema",
    "crsql_change_counts",
    "crsql_change_counter",
    OUTBOUND,
    INBOUND,
];

/// Refuse, at CREATE, a stream name that is reserved by the extension (as
/// SQLite compares names: ASCII letters without case).
pub fn check_new_name(module: &str, table: &str) -> Result<()> {
    let lower = table.to_ascii_lowercase();
    let reserved = RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(table))
        || lower.ends_with("__crsql_clock")
        || lower.ends_with("__crsql_pks");
    if reserved {
        return Err(err!(
            "{module} {table}: the name is reserved by crsql_stream (its own tables and \
             crsql_changes, crsql_streams, …, and <table>__crsql_clock/_pks); choose another"
        ));
    }
    Ok(())
}

/// The extension state handed to a stream module.
pub fn ext_of(
    module: &str,
    aux: Option<&std::sync::Arc<crate::state::Ext>>,
) -> Result<std::sync::Arc<crate::state::Ext>> {
    aux.cloned()
        .ok_or_else(|| err!("{module}: missing extension state"))
}

/// At CREATE time: every table named in `tables = ...` must be a CRR.
pub fn check_crrs(
    ext: &crate::state::Ext,
    inner: &mut crate::state::Inner,
    module: &str,
    table: &str,
    tables: Option<&Vec<String>>,
) -> Result<()> {
    if let Some(tables) = tables {
        inner.refresh_tables(&ext.tx, true)?;
        for t in tables {
            if inner.table(t).is_none() {
                return Err(err!("{module} {table}: tables: {t} is not a CRR"));
            }
        }
    }
    Ok(())
}
