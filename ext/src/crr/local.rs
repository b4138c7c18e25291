//! What the CRR triggers record for local writes (spec §6).

use rusqlite::params_from_iter;
use rusqlite::types::ValueRef;
use rusqlite::{params, OptionalExtension};

use crsql_stream_core::merge::{MAX_CLOCK, SENTINEL};
use crsql_stream_core::pack::pack_columns;

use crate::crr::counts::KeyCounts;
use crate::crr::schema::TableInfo;
use crate::crr::values::{compare, to_core};
use crate::err;
use crate::error::{Error, Result};
use crate::state::{Ext, Inner};

/// Find the local key of a primary-key tuple, creating it when missing.
/// Returns the key and whether it existed before. With `insert_first` the
/// insert is tried first (cheaper for new rows); it runs through the
/// connection's held statements (`crr::held`).
pub fn key_for(
    inner: &Inner,
    t: &TableInfo,
    pks: &[ValueRef<'_>],
    insert_first: bool,
) -> Result<(i64, bool)> {
    let lookup = || -> Result<Option<i64>> {
        Ok(inner
            .conn
            .prepare_cached(&t.sql.key_lookup)?
            .query_row(
                params_from_iter(pks.iter().map(|v| crate::crr::values::out(*v))),
                |r| r.get(0),
            )
            .optional()?)
    };
    if !insert_first {
        if let Some(k) = lookup()? {
            return Ok((k, true));
        }
    }
    inner
        .held
        .exec(inner.db(), &t.sql.key_insert, pks.iter().copied())?;
    let inserted = inner.conn.changes();
    if inserted == 1 {
        return Ok((inner.conn.last_insert_rowid(), false));
    }
    let k = lookup()?.ok_or_else(|| {
        err!(
            "crsql_stream: could not create a key for a row of {}",
            t.name
        )
    })?;
    Ok((k, true))
}

/// `crsql_internal_clock_limit(v)`: the error of a clock write that would
/// pass [`MAX_CLOCK`], called by the clock SQL only at the bound.
pub fn clock_limit(v: i64) -> Error {
    err!(
        "crsql_stream: this write would raise a clock stored at {v} beyond the largest value peers \
         accept ({MAX_CLOCK}); delete the row and insert it again to restart its clocks"
    )
}

/// Look up the CRR of a trigger helper call and check its argument count.
pub(crate) fn trigger_table(
    ext: &Ext,
    inner: &mut Inner,
    args: &[ValueRef<'_>],
    per_pk: usize,
    per_col: usize,
) -> Result<std::sync::Arc<TableInfo>> {
    let name = match args.first() {
        None => return Err(err!("expected at least 1 argument")),
        Some(ValueRef::Text(t)) => {
            std::str::from_utf8(t).map_err(|_| err!("table name is not valid UTF-8"))?
        }
        Some(_) => {
            return Err(err!(
                "expected the table name as TEXT in the first argument"
            ))
        }
    };
    inner.sync(&ext.tx)?;
    let Some(t) = inner.table(name) else {
        // crr::compact: a compact CRR whose metadata cannot be read says why.
        if crate::crr::schema::table_exists(&inner.conn, name)?
            && crate::crr::compact::is_compact(&inner.conn, name)?
        {
            crate::crr::schema::load_table(&inner.conn, name)?;
        }
        return Err(err!("table {name} not found"));
    };
    let expected = per_pk * t.pks.len() + per_col * t.cols.len();
    if args.len() - 1 != expected {
        return Err(err!("expected {} values, got {}", expected, args.len() - 1));
    }
    Ok(t)
}

/// `crsql_after_insert(tbl, pk...)` (§6.1).
pub fn after_insert(ext: &Ext, args: &[ValueRef<'_>]) -> Result<()> {
    let mut inner = ext.lock("crsql_after_insert")?;
    let t = trigger_table(ext, &mut inner, args, 1, 0)?;
    if t.compact.is_some() {
        // Called directly on a compact CRR: its own helper.
        drop(inner);
        return crate::crr::compact::local::after_insert(ext, args);
    }
    let v = inner.next_db_version(&ext.tx, None)?;
    let pks = &args[1..];
    let (key, mut existed) = key_for(&inner, &t, pks, true)?;
    let counted = KeyCounts::take(&inner, &ext.tx, &t, existed.then_some(key))?;
    if !existed {
        existed = revive_compacted(ext, &inner, &t, key, pks, v)?;
    }
    let conn = &inner.conn;
    if t.cols.is_empty() {
        conn.prepare_cached(&t.sql.sentinel_insert)?
            .execute(params![key, v, ext.tx.take_seq()])?;
    } else {
        if existed {
            // A seq is consumed even when there is no sentinel to bump (§6.1).
            conn.prepare_cached(&t.sql.sentinel_bump)?.execute(params![
                key,
                v,
                ext.tx.take_seq()
            ])?;
        }
        let first = ext.tx.take_seqs(t.cols.len() as i64);
        conn.prepare_cached(&t.sql.clock_insert_all)?
            .execute(params![key, v, first])?;
    }
    counted.settle(&inner, &t)
}

/// `crsql_after_update(tbl, newpk..., oldpk..., newcol..., oldcol...)` (§6.2).
///
/// Unlike cr-sqlite (§15 Q4), cells moved by a primary-key change are
/// re-stamped with this transaction's version, fresh seqs and the local site,
/// so peers that sync by version receive them.
pub fn after_update(ext: &Ext, args: &[ValueRef<'_>]) -> Result<()> {
    let mut inner = ext.lock("crsql_after_update")?;
    let t = trigger_table(ext, &mut inner, args, 2, 2)?;
    if t.compact.is_some() {
        // Called directly on a compact CRR: its own helper.
        drop(inner);
        return crate::crr::compact::local::after_update(ext, args);
    }
    let v = inner.next_db_version(&ext.tx, None)?;
    let (np, nc) = (t.pks.len(), t.cols.len());
    let new_pks = &args[1..1 + np];
    let old_pks = &args[1 + np..1 + 2 * np];
    let new_cols = &args[1 + 2 * np..1 + 2 * np + nc];
    let old_cols = &args[1 + 2 * np + nc..];
    let pk_changed = new_pks
        .iter()
        .zip(old_pks)
        .any(|(a, b)| compare(*a, *b).is_ne());
    let (new_key, new_existed) = key_for(&inner, &t, new_pks, false)?;
    // What leaves the counted versions (crr::counts): with the key
    // unchanged exactly the changed cells, subtracted at once; otherwise
    // both keys, read before and after.
    let (old_key, counted) = if pk_changed {
        let (old_key, _) = key_for(&inner, &t, old_pks, false)?;
        let counted_new = KeyCounts::take(&inner, &ext.tx, &t, new_existed.then_some(new_key))?;
        let counted_old = KeyCounts::take(&inner, &ext.tx, &t, Some(old_key))?;
        (old_key, Some((counted_new, counted_old)))
    } else {
        let changed: Vec<&str> = t
            .cols
            .iter()
            .zip(new_cols.iter().zip(old_cols))
            .filter(|(_, (n, o))| compare(**n, **o).is_ne())
            .map(|(c, _)| c.name.as_str())
            .collect();
        if !changed.is_empty() {
            KeyCounts::depart(&inner, &ext.tx, &t, new_key, Some(&changed))?;
        }
        (new_key, None)
    };
    if !new_existed {
        revive_compacted(ext, &inner, &t, new_key, new_pks, v)?;
    }
    let conn = &inner.conn;
    let mut wrote = false;
    if pk_changed {
        // The new key can only hold a live row here if `UPDATE OR REPLACE`
        // deleted it to make room, and with `recursive_triggers` off (SQLite's
        // default) that delete fired no trigger. Record it now, so the moved
        // row is a resurrection that wins on every peer (DECISIONS D17).
        if new_existed && row_is_live(&inner, &t, new_key)? {
            record_delete(ext, &inner, &t, new_key, v)?;
        }
        conn.prepare_cached(&t.sql.sentinel_delete)?
            .execute(params![old_key, v, ext.tx.take_seq()])?;
        let names: Vec<String> = conn
            .prepare_cached(&t.sql.cell_names)?
            .query_map([old_key], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for name in &names {
            conn.prepare_cached(&t.sql.clock_move_cell)?
                .execute(params![old_key, new_key, name, v, ext.tx.take_seq()])?;
            conn.prepare_cached(&t.sql.clock_delete_cell)?
                .execute(params![old_key, name])?;
        }
        conn.prepare_cached(&t.sql.sentinel_insert)?
            .execute(params![new_key, v, ext.tx.take_seq()])?;
        wrote = true;
        // Columns that had no clock to move still carry a value on the new
        // key: give them a clock, so peers that zeroed their own copy on the
        // resurrection receive it.
        for (i, col) in t.cols.iter().enumerate() {
            let changed = compare(new_cols[i], old_cols[i]).is_ne();
            if !changed && !names.iter().any(|n| n == &col.name) {
                conn.prepare_cached(&t.sql.clock_upsert_cell)?
                    .execute(params![new_key, col.name, v, ext.tx.take_seq()])?;
            }
        }
    }
    for (i, col) in t.cols.iter().enumerate() {
        if compare(new_cols[i], old_cols[i]).is_ne() {
            conn.prepare_cached(&t.sql.clock_upsert_cell)?
                .execute(params![new_key, col.name, v, ext.tx.take_seq()])?;
            wrote = true;
        }
    }
    if !wrote {
        // An update that changes nothing still uses up a version, as in
        // cr-sqlite; persist it so it is never handed out again (§15 Q16).
        inner.persist_version(v)?;
    }
    match counted {
        Some((counted_new, counted_old)) => {
            counted_new.settle(&inner, &t)?;
            counted_old.settle(&inner, &t)
        }
        None => Ok(()),
    }
}

/// `crsql_after_delete(tbl, oldpk...)` (§6.3).
pub fn after_delete(ext: &Ext, args: &[ValueRef<'_>]) -> Result<()> {
    let mut inner = ext.lock("crsql_after_delete")?;
    let t = trigger_table(ext, &mut inner, args, 1, 0)?;
    if t.compact.is_some() {
        // Called directly on a compact CRR: its own helper.
        drop(inner);
        return crate::crr::compact::local::after_delete(ext, args);
    }
    let v = inner.next_db_version(&ext.tx, None)?;
    let (key, _) = key_for(&inner, &t, &args[1..], false)?;
    // The sentinel moves and every cell goes (crr::counts).
    KeyCounts::depart(&inner, &ext.tx, &t, key, None)?;
    record_delete(ext, &inner, &t, key, v)
}

/// Give a key just created for `pks` the causal length of its compacted
/// delete, if it had one (DECISIONS D22): its sentinel comes back with that
/// (even) causal length, so that the insert now recording it makes it odd
/// and higher than every peer's tombstone. Returns whether it did.
pub fn revive_compacted(
    ext: &Ext,
    inner: &Inner,
    t: &TableInfo,
    key: i64,
    pks: &[ValueRef<'_>],
    v: i64,
) -> Result<bool> {
    if !inner.has_tombstones() {
        return Ok(false);
    }
    let packed = pack_columns(pks.iter().map(|v| to_core(*v))).map_err(|source| Error::Pack {
        context: format!("packing a primary key of {}", t.name),
        source,
    })?;
    let Some(cl) = crate::streams::compact::take_compacted(inner, &t.name, &packed)? else {
        return Ok(false);
    };
    inner
        .conn
        .prepare_cached(&t.sql.clock_write)?
        .execute(params![key, SENTINEL, cl, v, ext.tx.take_seq(), 0])?;
    Ok(true)
}

/// Whether the row of `key` is live in the clocks (odd causal length).
pub fn row_is_live(inner: &Inner, t: &TableInfo, key: i64) -> Result<bool> {
    let cl: i64 = inner
        .conn
        .prepare_cached(&t.sql.local_cl)?
        .query_row([key], |r| r.get(0))?;
    Ok(cl % 2 == 1)
}

/// The clocks of a local delete of the row of `key` at version `v`: the
/// sentinel's causal length becomes even and the cells' clocks go.
pub fn record_delete(ext: &Ext, inner: &Inner, t: &TableInfo, key: i64, v: i64) -> Result<()> {
    inner
        .conn
        .prepare_cached(&t.sql.sentinel_delete)?
        .execute(params![key, v, ext.tx.take_seq()])?;
    inner
        .conn
        .prepare_cached(&t.sql.clock_delete_cells)?
        .execute([key])?;
    Ok(())
}
