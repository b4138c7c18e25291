//! Merging one change row into the database: `INSERT INTO crsql_changes` (§8).
//!
//! Every input is validated before the first write, so a bad change is an
//! error that names the problem and changes nothing. Unlike cr-sqlite, a
//! merged change takes a fresh local seq (§15 Q17), so `(db_version, seq)`
//! positions stay unique, and deletes and sentinels store the change's `cl`
//! (§15 Q13).

use std::sync::atomic::Ordering::Relaxed;

use crsql_stream_core::merge::{cell_wins, decide_row, RowDecision, MAX_CLOCK, SENTINEL};
use crsql_stream_core::pack::unpack_columns_ref;
use rusqlite::types::ValueRef;
use rusqlite::{params, params_from_iter, OptionalExtension};

use crate::crr::local::key_for;
use crate::crr::schema::{TableInfo, MAX_NAME_LEN};
use crate::crr::values::{compare, to_sql, type_name};
use crate::err;
use crate::error::{Error, Result};
use crate::state::{Ext, Inner};

/// One change row, as the nine columns of `crsql_changes`.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    pub table: &'a str,
    pub pk: &'a [u8],
    pub cid: &'a str,
    pub val: ValueRef<'a>,
    pub col_version: i64,
    pub db_version: i64,
    pub site_id: &'a [u8],
    pub cl: i64,
    pub seq: i64,
}

fn text_arg<'a>(v: ValueRef<'a>, what: &str, too_long: &str) -> Result<&'a str> {
    let bytes = match v {
        ValueRef::Text(t) => t,
        ValueRef::Null => return Err(err!("crsql_changes: {what} must not be NULL")),
        other => {
            return Err(err!(
                "crsql_changes: {what} must be TEXT, got {}",
                type_name(other)
            ))
        }
    };
    if bytes.len() > MAX_NAME_LEN {
        return Err(err!("{too_long}"));
    }
    std::str::from_utf8(bytes).map_err(|_| err!("crsql_changes: {what} is not valid UTF-8"))
}

fn int_arg(v: ValueRef<'_>, what: &str) -> Result<i64> {
    match v {
        ValueRef::Integer(i) => Ok(i),
        ValueRef::Null => Ok(0),
        other => Err(err!(
            "crsql_changes: {what} must be an INTEGER, got {}",
            type_name(other)
        )),
    }
}

impl<'a> Change<'a> {
    /// Read the nine INSERT values in `crsql_changes` column order.
    pub fn from_values(v: &[ValueRef<'a>]) -> Result<Change<'a>> {
        if v.len() != 9 {
            return Err(err!("crsql_changes: expected 9 values, got {}", v.len()));
        }
        let table = text_arg(v[0], "table", "crsql - table name exceeded max length")?;
        let pk = match v[1] {
            ValueRef::Blob(b) => b,
            ValueRef::Null => {
                return Err(err!("crsql_changes: pk must not be NULL (table {table})"))
            }
            other => {
                return Err(err!(
                    "crsql_changes: pk must be a packed BLOB, got {} (table {table})",
                    type_name(other)
                ))
            }
        };
        let cid = text_arg(v[2], "cid", "crsql - column name exceeded max length")?;
        let site_id = match v[6] {
            ValueRef::Blob(b) if b.len() > 16 => {
                return Err(err!("crsql - site id exceeded max length"))
            }
            ValueRef::Blob(b) => b,
            ValueRef::Null => &[],
            other => {
                return Err(err!(
                    "crsql_changes: site_id must be a BLOB, got {}",
                    type_name(other)
                ))
            }
        };
        Ok(Change {
            table,
            pk,
            cid,
            val: v[3],
            col_version: int_arg(v[4], "col_version")?,
            db_version: int_arg(v[5], "db_version")?,
            site_id,
            cl: int_arg(v[7], "cl")?,
            seq: int_arg(v[8], "seq")?,
        })
    }
}

/// What a run of merges in one call (one package) may remember between
/// changes: the last row touched and the site ordinals resolved. Never kept
/// across calls, so nothing can go stale.
#[derive(Default)]
pub struct MergeCache {
    sites: std::collections::HashMap<Vec<u8>, i64>,
    row: Option<RowMemo>,
}

struct RowMemo {
    table: String,
    pk: Vec<u8>,
    key: i64,
    cl: i64,
    /// The row had no clocks when this batch first met it: it has none
    /// below the counted version either (`crr::counts`).
    fresh: bool,
}

/// Merge one change. Returns the number of "impacted" operations (§7.7).
pub fn merge_change(
    ext: &Ext,
    inner: &mut Inner,
    c: &Change<'_>,
    cache: &mut MergeCache,
) -> Result<i64> {
    inner.sync(&ext.tx)?;
    let t = inner.table(c.table).ok_or_else(|| {
        err!(
            "crsql - could not find the schema information for table {}",
            c.table
        )
    })?;
    let pks = unpack_columns_ref(c.pk).map_err(|source| Error::Pack {
        context: format!("crsql_changes: invalid pk for table {}", c.table),
        source,
    })?;
    if pks.len() != t.pks.len() {
        return Err(err!(
            "crsql_changes: pk for table {} has {} values, the table has {} primary key columns",
            c.table,
            pks.len(),
            t.pks.len()
        ));
    }
    let pks: Vec<ValueRef<'_>> = pks.into_iter().map(to_sql).collect();
    if pks.iter().any(|v| matches!(v, ValueRef::Null)) {
        return Err(err!(
            "crsql_changes: pk for table {} holds a NULL value; primary key values of a CRR are never NULL",
            c.table
        ));
    }
    let is_sentinel = c.cid == SENTINEL;
    let col = if is_sentinel {
        None
    } else {
        Some(t.col_index(c.cid).ok_or_else(|| {
            let kind = if t.pks.iter().any(|p| p.name == c.cid) {
                "is a primary key column, which is not a valid cid"
            } else {
                "is not a column"
            };
            err!("crsql_changes: {} {kind} of table {}", c.cid, c.table)
        })?)
    };
    if c.cl < 1 {
        return Err(err!(
            "crsql_changes: cl must be a causal length of at least 1, got {} (table {}, cid {})",
            c.cl,
            c.table,
            c.cid
        ));
    }
    for (what, v) in [
        ("col_version", c.col_version),
        ("db_version", c.db_version),
        ("cl", c.cl),
        ("seq", c.seq),
    ] {
        if v > MAX_CLOCK {
            return Err(err!(
                "crsql_changes: {what} {v} is beyond the largest clock value {MAX_CLOCK} (table {}, cid {}); \
                 refused so that later local writes cannot overflow",
                c.table,
                c.cid
            ));
        }
    }

    let memo = cache
        .row
        .take()
        .filter(|m| m.table == c.table && m.pk == c.pk);
    let (existing_key, local_cl, fresh) = match memo {
        Some(m) => (Some(m.key), m.cl, m.fresh),
        None => {
            let existing_key: Option<i64> = inner
                .conn
                .prepare_cached(&t.sql.key_lookup)?
                .query_row(
                    params_from_iter(pks.iter().map(|v| crate::crr::values::out(*v))),
                    |r| r.get(0),
                )
                .optional()?;
            let local_cl = match existing_key {
                Some(k) => inner
                    .conn
                    .prepare_cached(&t.sql.local_cl)?
                    .query_row([k], |r| r.get::<_, i64>(0))?,
                // A compacted delete still counts (DECISIONS D22).
                None => crate::streams::compact::compacted_cl(inner, c.table, c.pk)?.unwrap_or(0),
            };
            (existing_key, local_cl, existing_key.is_none())
        }
    };
    let counted =
        crate::crr::counts::KeyCounts::take(inner, &ext.tx, &t, existing_key.filter(|_| !fresh))?;
    let mut m = Merger {
        ext,
        inner,
        t: &t,
        c,
        pks: &pks,
        sites: &mut cache.sites,
    };
    let decision = decide_row(local_cl, is_sentinel, c.cl);
    let (impacted, key, cl_after) = apply_decision(&mut m, decision, existing_key, local_cl, col)?;
    counted.settle(inner, &t)?;
    if let Some(key) = key {
        cache.row = Some(RowMemo {
            table: c.table.to_string(),
            pk: c.pk.to_vec(),
            key,
            cl: cl_after,
            fresh,
        });
    }
    Ok(impacted)
}

/// Perform a row decision. Returns (impacted, the row's key if known, the
/// row's causal length afterwards).
fn apply_decision(
    m: &mut Merger<'_, '_>,
    decision: RowDecision,
    existing_key: Option<i64>,
    local_cl: i64,
    col: Option<usize>,
) -> Result<(i64, Option<i64>, i64)> {
    let (t, c) = (m.t, m.c);
    match decision {
        RowDecision::Ignore => Ok((0, existing_key, local_cl)),
        // User constraints can only fail in the base-table write, so it goes
        // first: a refused change leaves no key, clock or version behind,
        // even where SQLite has no statement journal to undo a partial merge.
        RowDecision::Delete { cl } => {
            m.base_write(&t.sql.base_delete, None)?;
            let key = m.key(existing_key)?;
            m.write_clock(key, SENTINEL, cl)?;
            m.inner
                .conn
                .prepare_cached(&t.sql.clock_delete_cells)?
                .execute([key])?;
            Ok((1, Some(key), cl))
        }
        RowDecision::Sentinel { cl } => {
            m.base_write(&t.sql.base_insert_pks, None)?;
            let key = m.key(existing_key)?;
            m.write_sentinel(key, cl)?;
            Ok((1, Some(key), cl))
        }
        RowDecision::Cell {
            sentinel_cl,
            unconditional,
        } => {
            let col = col.unwrap_or_default();
            if !unconditional {
                // Equal causal lengths: the row and its key exist.
                let key = m.key(existing_key)?;
                if !m.cell_wins(key, col)? {
                    return Ok((0, Some(key), local_cl));
                }
            }
            m.base_write(&t.sql.base_upsert[col], Some(c.val))?;
            let key = m.key(existing_key)?;
            let mut impacted = 1;
            let mut cl_after = local_cl.max(1);
            if let Some(cl) = sentinel_cl {
                m.write_sentinel(key, cl)?;
                impacted += 1;
                cl_after = cl;
            }
            m.write_clock(key, c.cid, c.col_version)?;
            Ok((impacted, Some(key), cl_after))
        }
    }
}

struct Merger<'m, 'c> {
    ext: &'m Ext,
    inner: &'m mut Inner,
    t: &'m TableInfo,
    c: &'m Change<'c>,
    pks: &'m [ValueRef<'c>],
    sites: &'m mut std::collections::HashMap<Vec<u8>, i64>,
}

impl Merger<'_, '_> {
    fn key(&self, existing: Option<i64>) -> Result<i64> {
        match existing {
            Some(k) => Ok(k),
            None => {
                let key = key_for(self.inner, self.t, self.pks, true)?.0;
                // The row has clocks again: its compacted record goes.
                crate::streams::compact::take_compacted(self.inner, self.c.table, self.c.pk)?;
                Ok(key)
            }
        }
    }

    /// Run a base-table statement (bound to the pk values, then `extra`)
    /// with the sync bit set, so the CRR triggers skip it.
    fn base_write(&self, sql: &str, extra: Option<ValueRef<'_>>) -> Result<()> {
        let prev = self.ext.sync_bit.swap(1, Relaxed);
        let r = (|| -> Result<()> {
            let mut stmt = self.inner.conn.prepare_cached(sql)?;
            let vals = self.pks.iter().copied().chain(extra);
            stmt.execute(params_from_iter(vals.map(crate::crr::values::out)))?;
            Ok(())
        })();
        self.ext.sync_bit.store(prev, Relaxed);
        r
    }

    /// `INSERT OR REPLACE` the clock of `cid` with the change's site, a local
    /// version no lower than the change's, and a fresh local seq.
    fn write_clock(&mut self, key: i64, cid: &str, col_version: i64) -> Result<()> {
        let v = self
            .inner
            .next_db_version(&self.ext.tx, Some(self.c.db_version))?;
        let ordinal = match self.sites.get(self.c.site_id) {
            Some(o) => *o,
            None => {
                let o = self.inner.site_ordinal(self.c.site_id, true)?.unwrap_or(0);
                self.sites.insert(self.c.site_id.to_vec(), o);
                o
            }
        };
        self.inner
            .conn
            .prepare_cached(&self.t.sql.clock_write)?
            .execute(params![
                key,
                cid,
                col_version,
                v,
                self.ext.tx.take_seq(),
                ordinal
            ])?;
        Ok(())
    }

    /// The clock side of creating or resurrecting a row (the base row is
    /// already written): zero the clocks of surviving cells, then store the
    /// sentinel (§8.1).
    fn write_sentinel(&mut self, key: i64, cl: i64) -> Result<()> {
        let v = self
            .inner
            .next_db_version(&self.ext.tx, Some(self.c.db_version))?;
        let names: Vec<String> = self
            .inner
            .conn
            .prepare_cached(&self.t.sql.cell_names)?
            .query_map([key], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for name in &names {
            self.inner
                .conn
                .prepare_cached(&self.t.sql.clock_zero_cell)?
                .execute(params![key, name, v, self.ext.tx.take_seq()])?;
        }
        self.write_clock(key, SENTINEL, cl)
    }

    /// Per-cell resolution at equal causal length (§8.2).
    fn cell_wins(&self, key: i64, col: usize) -> Result<bool> {
        let conn = &self.inner.conn;
        let local: Option<(i64, i64)> = conn
            .prepare_cached(&self.t.sql.cell_clock)?
            .query_row(params![key, self.c.cid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let Some((local_version, local_ordinal)) = local else {
            return Ok(true);
        };
        if self.c.col_version != local_version {
            return Ok(self.c.col_version > local_version);
        }
        let mut stmt = conn.prepare_cached(&self.t.sql.base_value[col])?;
        let mut rows = stmt.query(params_from_iter(
            self.pks.iter().map(|v| crate::crr::values::out(*v)),
        ))?;
        let row = rows
            .next()?
            .ok_or_else(|| err!("could not find row to merge with for tbl {}", self.t.name))?;
        let local_value = row.get_ref(0)?;
        let mev = self.ext.merge_equal_values.load(Relaxed);
        let site_cmp = || -> Result<std::cmp::Ordering> {
            let local_site = self
                .inner
                .site_of_ordinal(local_ordinal)?
                .ok_or_else(|| {
                    err!(
                        "could not find site_id for previous change, cr-sqlite clock table might be corrupt for tbl {}",
                        self.t.name
                    )
                })?;
            Ok(self.c.site_id.cmp(local_site.as_slice()))
        };
        let value_cmp = compare(self.c.val, local_value);
        let site_order = if value_cmp.is_eq() && mev {
            Some(site_cmp()?)
        } else {
            None
        };
        Ok(cell_wins(
            Some(local_version),
            self.c.col_version,
            || value_cmp,
            || site_order.unwrap_or(std::cmp::Ordering::Equal),
            mev,
        ))
    }
}
