//! Compaction of deleted rows' metadata (`crsql_compact`), the horizon it
//! stops at, the small records that keep a compacted delete in force, and
//! the "resync required" state of streams left behind (DECISIONS D22).
//!
//! A deleted row keeps a sentinel clock row (its even causal length) and a
//! `__crsql_pks` row: four b-tree entries with their indexes. Below the
//! horizon (every active peer has acknowledged it), compaction replaces them
//! with one entry of `crsql_tombstones (tbl, pk, cl)`: the packed primary key
//! and the causal length. That record is all the merge rules need of a
//! deleted row: a late change concurrent with the delete (a lower causal
//! length) is still ignored, and a later insert of the same key, here or by
//! a peer, still resurrects it with a higher one. Nothing is lost; what
//! goes is the position of the delete, which only a peer that has not
//! received it would need, and such a peer is told to resync.

use crsql_stream_core::Position;
use rusqlite::{params, Connection, OptionalExtension};

use crate::crr::in_savepoint;
use crate::crr::schema::{quote_ident, CLOCK_SUFFIX, PKS_SUFFIX};
use crate::err;
use crate::error::{Error, Result};
use crate::state::{Ext, Inner};

/// The table of compacted tombstones.
pub const TOMBSTONES: &str = "crsql_tombstones";

/// One record per compacted delete: the row's packed key and causal length
/// (what the merge rules need), and the delete's position and origin (what
/// a stream catching up from below the horizon sends, `resync = 'snapshot'`).
const TOMBSTONES_DDL: &str = "CREATE TABLE IF NOT EXISTS crsql_tombstones (
  tbl TEXT NOT NULL,
  pk BLOB NOT NULL,
  cl INTEGER NOT NULL,
  db_version INTEGER NOT NULL,
  seq INTEGER NOT NULL,
  site_id INTEGER NOT NULL,
  PRIMARY KEY (tbl, pk)
) WITHOUT ROWID, STRICT;
CREATE INDEX IF NOT EXISTS crsql_tombstones_position ON crsql_tombstones (db_version, seq);";

/// `crsql_master` key of the highest horizon metadata was removed at.
const COMPACTED_THROUGH: &str = "compacted_through";

/// `f` run on `crsql_tombstones` when the connection knows the table, else
/// `none`. The flag is read with the schema, at most once per transaction:
/// a table created in a savepoint rolled back since is taken for none when
/// `f` fails on it (checked on the error path only).
fn with_tombstones<T>(inner: &Inner, none: T, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !inner.has_tombstones() {
        return Ok(none);
    }
    match f() {
        Err(_) if !crate::crr::schema::table_exists(&inner.conn, TOMBSTONES)? => Ok(none),
        other => other,
    }
}

/// The causal length of the compacted delete of row `pk` (packed) of CRR
/// `tbl`, removing the record: the caller gives the row clocks again.
pub fn take_compacted(inner: &Inner, tbl: &str, pk: &[u8]) -> Result<Option<i64>> {
    record_cl(
        inner,
        "DELETE FROM crsql_tombstones WHERE tbl = ?1 AND pk = ?2 RETURNING cl",
        tbl,
        pk,
    )
}

/// The causal length of the compacted delete of row `pk`, if any.
pub fn compacted_cl(inner: &Inner, tbl: &str, pk: &[u8]) -> Result<Option<i64>> {
    record_cl(
        inner,
        "SELECT cl FROM crsql_tombstones WHERE tbl = ?1 AND pk = ?2",
        tbl,
        pk,
    )
}

/// The `cl` statement `sql` returns for the record of row `pk` of `tbl`.
fn record_cl(inner: &Inner, sql: &str, tbl: &str, pk: &[u8]) -> Result<Option<i64>> {
    with_tombstones(inner, None, || {
        Ok(inner
            .conn
            .prepare_cached(sql)?
            .query_row(params![tbl, pk], |r| r.get(0))
            .optional()?)
    })
}

/// Forget the compacted tombstones of a CRR that stops being one.
pub fn drop_table(inner: &Inner, tbl: &str) -> Result<()> {
    with_tombstones(inner, (), || {
        inner
            .conn
            .prepare_cached("DELETE FROM crsql_tombstones WHERE tbl = ?1")?
            .execute([tbl])?;
        Ok(())
    })
}

/// Where compaction may go, and who is left behind.
pub struct Horizon {
    /// The lowest position an active peer acknowledged; `None` when no
    /// active peer receives from us.
    pub position: Option<Position>,
    /// Outbound streams of expired peers, with their positions.
    expired: Vec<(String, Position)>,
}

/// The lowest acknowledgement over every outbound stream of the active (not
/// expired) peers: streams with other filters (tables, local_only, …) may
/// not have carried a delete. A peer that only sends to us holds nothing
/// back: a late change of its own still meets the compacted record.
pub fn horizon(conn: &Connection) -> Result<Horizon> {
    let expiry = super::peers::expiry_seconds(conn)?;
    let (groups, now) = super::peers::groups(conn)?;
    let mut horizon = Horizon {
        position: None,
        expired: Vec::new(),
    };
    for g in &groups {
        if g.expired(now, expiry) {
            horizon.expired.extend(
                g.streams
                    .iter()
                    .filter(|m| m.outbound)
                    .map(|m| (m.name.clone(), m.position)),
            );
        } else if let Some(lowest) = g.positions(true).min() {
            horizon.position = Some(horizon.position.map_or(lowest, |h| h.min(lowest)));
        }
    }
    Ok(horizon)
}

/// The highest horizon metadata was removed at, if any.
pub fn compacted_through(conn: &Connection) -> Result<Option<Position>> {
    let v: Option<String> = conn
        .prepare_cached("SELECT value FROM crsql_master WHERE key = ?1")?
        .query_row([COMPACTED_THROUGH], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|t| Position::parse(&t).ok()))
}

/// Whether a stream starting after `start` would miss compacted deletes.
/// Starting from the very beginning is not behind when the peer `is_fresh`
/// (a new stream: a peer that starts from nothing has none of the deleted
/// rows); a peer moved back there (a rewind) is.
pub fn is_behind(conn: &Connection, start: Position, is_fresh: bool) -> Result<bool> {
    if start == Position::ZERO && is_fresh {
        return Ok(false);
    }
    Ok(compacted_through(conn)?.is_some_and(|h| start < h))
}

/// Refuse to send from `start` if that is behind a compaction
/// ([`is_behind`], [`resync_required`]).
pub fn refuse_behind(
    module: &str,
    name: &str,
    conn: &Connection,
    start: Position,
    is_fresh: bool,
) -> Result<()> {
    if is_behind(conn, start, is_fresh)? {
        return Err(resync_required(module, name, conn)?);
    }
    Ok(())
}

/// The error of an outbound stream left behind a compaction.
pub fn resync_required(module: &str, name: &str, conn: &Connection) -> Result<Error> {
    let h = compacted_through(conn)?.unwrap_or(Position::ZERO);
    Ok(err!(
        "{module} {name}: resync required: this database compacted the metadata of rows deleted \
         up to the horizon {h} (crsql_compact), which this stream's peer has not been sent, so those \
         deletes can no longer be sent; re-seed the peer from a copy of this database \
         (docs/operations.md, \"Compaction\")"
    ))
}

/// `crsql_compact()`: replace the tombstones (sentinel clock rows of
/// deleted rows and their pks rows) at or below the horizon, and below the
/// newest version, by compacted records; in the caller's transaction.
/// Returns the number of clock and pks rows removed.
pub fn compact(ext: &Ext) -> Result<i64> {
    let mut inner = ext.lock("crsql_compact")?;
    let conn = ext.db.connection()?;
    let newest = inner.newest_position(&ext.tx)?;
    in_savepoint(&conn, "crsql_compact", || {
        let h = horizon(&inner.conn)?;
        let limit = h.position.unwrap_or(newest);
        // Removing rows must not lower crsql_db_version().
        let db_version = inner.db_version(&ext.tx)?;
        inner.persist_version(db_version)?;
        inner.conn.execute_batch(TOMBSTONES_DDL)?;
        inner.note_tombstones();
        let mut removed = 0;
        for t in inner.tables().to_vec() {
            if t.compact.is_some() {
                // crr::compact: its row clocks of deletes become records.
                removed +=
                    crate::crr::compact::compact_table(ext, &inner, &t, limit, newest.db_version)?;
                continue;
            }
            let clock = quote_ident(&format!("{}{CLOCK_SUFFIX}", t.name));
            let pkst = quote_ident(&format!("{}{PKS_SUFFIX}", t.name));
            let pk_cols = t
                .pks
                .iter()
                .map(|c| format!("p.{}", quote_ident(&c.name)))
                .collect::<Vec<_>>()
                .join(", ");
            // The newest version stays, so the newest position cannot move.
            let dead = format!(
                "SELECT key FROM {clock} WHERE col_name = '-1' AND col_version % 2 = 0 \
                 AND db_version < ?3 AND (db_version < ?1 OR (db_version = ?1 AND seq <= ?2))"
            );
            let bounds = params![limit.db_version, limit.seq, newest.db_version];
            inner.conn.execute(
                &format!(
                    "INSERT OR REPLACE INTO crsql_tombstones (tbl, pk, cl, db_version, seq, site_id) \
                     SELECT ?4, crsql_pack_columns({pk_cols}), c.col_version, c.db_version, c.seq, c.site_id \
                     FROM {clock} AS c JOIN {pkst} AS p ON p.__crsql_key = c.key \
                     WHERE c.col_name = '-1' AND c.key IN ({dead})"
                ),
                params![limit.db_version, limit.seq, newest.db_version, t.name],
            )?;
            removed += inner.conn.execute(
                &format!("DELETE FROM {pkst} WHERE __crsql_key IN ({dead})"),
                bounds,
            )? as i64;
            crate::crr::counts::subtract_where(
                &inner,
                &t.name,
                &format!("key IN ({dead})"),
                bounds,
            )?;
            removed += inner.conn.execute(
                &format!("DELETE FROM {clock} WHERE key IN ({dead})"),
                bounds,
            )? as i64;
        }
        if removed > 0 {
            let through = compacted_through(&inner.conn)?.max(Some(limit));
            inner.conn.execute(
                "INSERT OR REPLACE INTO crsql_master (key, value) VALUES (?1, ?2)",
                params![COMPACTED_THROUGH, through.map(|p| p.to_string())],
            )?;
            // An expired peer's stream that had not been sent past the
            // horizon can no longer be served from changes.
            for (name, _) in h.expired.iter().filter(|(_, pos)| *pos < limit) {
                inner.conn.execute(
                    "UPDATE crsql_stream_state SET resync = 1 WHERE name = ?1",
                    [name],
                )?;
            }
        }
        Ok(removed)
    })
}
