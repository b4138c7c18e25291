//! What the compact layout's triggers record for local writes: the same
//! clocks, at the same positions, as `crr::local` writes in the cr-sqlite
//! layout (spec §6), kept as a `core::rowclock::Stored`. One helper call
//! per row reads the row clock once and writes it once.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use rusqlite::params_from_iter;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};

use crsql_stream_core::merge::MAX_CLOCK;
use crsql_stream_core::pack::pack_columns;
use crsql_stream_core::rowclock::{Clock, RowClocks, Run, Stored, SENTINEL_SLOT};

use super::Compact;
use crate::crr::local::{clock_limit, trigger_table};
use crate::crr::schema::TableInfo;
use crate::crr::values::{compare, out, to_core};
use crate::err;
use crate::error::{Error, Result};
use crate::sqlite::RawStmt;
use crate::state::{Ext, Inner};

/// The parameters of a statement on a key: the pk values, then `vals`.
fn key_params<'b>(pks: &'b [ValueRef<'_>], vals: &'b [Value]) -> Vec<ToSqlOutput<'b>> {
    pks.iter()
        .map(|v| out(*v))
        .chain(vals.iter().map(|v| out(ValueRef::from(v))))
        .collect()
}

fn compact_of(t: &TableInfo) -> Result<&Compact> {
    t.compact.as_ref().ok_or_else(|| {
        err!(
            "crsql_stream: {} is not a CRR of the compact layout",
            t.name
        )
    })
}

/// A cell's col_version after a local write (`TableSql`'s `inc`).
fn inc(v: i64) -> Result<i64> {
    if v < MAX_CLOCK {
        Ok(v + 1)
    } else {
        Err(clock_limit(v))
    }
}

/// The causal length after a local insert over a known sentinel
/// (`TableSql`'s `bump_cl`: the next odd number).
fn bump_cl(v: i64) -> Result<i64> {
    if v < MAX_CLOCK - 1 {
        Ok(if v % 2 == 0 { v + 1 } else { v + 2 })
    } else {
        Err(clock_limit(v))
    }
}

fn local_clock(col_version: i64, db_version: i64, seq: i64) -> Clock {
    Clock {
        col_version,
        db_version,
        site: 0,
        seq,
    }
}

/// The slot of a clock named `name` in `crsql_changes` and in the cells
/// table (the inverse of [`slot_name`]), or None for a column `t` lacks.
pub(crate) fn name_slot(t: &TableInfo, name: &str) -> Option<i32> {
    if name == "-1" {
        return Some(SENTINEL_SLOT);
    }
    t.col_index(name).map(|i| i as i32)
}

/// The name a slot has in `crsql_changes` and in the cells table.
pub(crate) fn slot_name(t: &TableInfo, slot: i32) -> Result<&str> {
    if slot == SENTINEL_SLOT {
        return Ok("-1");
    }
    usize::try_from(slot)
        .ok()
        .and_then(|i| t.cols.get(i))
        .map(|c| c.name.as_str())
        .ok_or_else(|| {
            err!(
                "crsql_stream: a clock of {} has no column at slot {slot}",
                t.name
            )
        })
}

/// A clock from columns col_version, db_version, site_id, seq of `r`, from
/// column `first` on.
pub(super) fn clock_at(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Clock> {
    Ok(Clock {
        col_version: r.get(first)?,
        db_version: r.get(first + 1)?,
        site: r.get(first + 2)?,
        seq: r.get(first + 3)?,
    })
}

/// Read the row clock and the cells of a key: one statement
/// (`Compact::load`), held out of the statement cache
/// (`crr::held`).
pub(crate) fn load(
    inner: &Inner,
    t: &TableInfo,
    c: &Compact,
    pks: &[ValueRef<'_>],
) -> Result<Stored> {
    inner.held.run(inner.db(), &c.load, |stmt| {
        for (i, v) in pks.iter().enumerate() {
            stmt.bind(i + 1, *v)?;
        }
        let mut out = Stored::default();
        let mut first = true;
        while stmt.step()? {
            read_row(stmt, 0, t, &mut out, first)?;
            first = false;
        }
        Ok(out)
    })
}

/// Add one result row of `Compact::load`'s columns (from column `at` on)
/// to `out`: the row clock from the `first` row of a key, a cell from
/// each row that has one.
pub(crate) fn read_row(
    stmt: &RawStmt,
    at: usize,
    t: &TableInfo,
    out: &mut Stored,
    first: bool,
) -> Result<()> {
    if first {
        out.cl = stmt.column_i64(at);
        let run = (
            stmt.column(at + 1),
            stmt.column(at + 2),
            stmt.column(at + 3),
        );
        if let (ValueRef::Integer(db_version), ValueRef::Integer(site), ValueRef::Integer(seq)) =
            run
        {
            let mut members = Vec::new();
            if super::read_vers(stmt.column(at + 4), seq, &mut members, Some(&t.name))? {
                out.run = Some(Run {
                    db_version,
                    site,
                    members,
                });
            }
        }
    }
    let ValueRef::Text(name) = stmt.column(at + 5) else {
        return Ok(());
    };
    let slot = std::str::from_utf8(name)
        .ok()
        .and_then(|name| name_slot(t, name))
        .ok_or_else(|| {
            err!(
                "crsql_stream: a clock of {} names no column: {}",
                t.name,
                String::from_utf8_lossy(name)
            )
        })?;
    let clock = Clock {
        col_version: stmt.column_i64(at + 6),
        db_version: stmt.column_i64(at + 7),
        site: stmt.column_i64(at + 8),
        seq: stmt.column_i64(at + 9),
    };
    out.cells.insert(slot, clock);
    Ok(())
}

/// Write what changed from `before` to `after`, and subtract from the lag
/// counts the clocks that left a counted version (D33): the old versions
/// are in `before`, so this needs no read.
pub(crate) fn save(
    ext: &Ext,
    inner: &Inner,
    t: &TableInfo,
    c: &Compact,
    pks: &[ValueRef<'_>],
    before: &Stored,
    after: &Stored,
) -> Result<()> {
    c.fast.other(ext.tx.epoch.load(Relaxed));
    let conn = &inner.conn;
    if after.is_empty() {
        if !before.is_empty() {
            conn.prepare_cached(&c.delete_row)?
                .execute(params_from_iter(key_params(pks, &[])))?;
        }
    } else if before.is_empty() || before.cl != after.cl || before.run != after.run {
        let run = after.run.as_ref();
        let vers = run.map_or(Value::Null, super::vers_value);
        if !before.is_empty() && same_position(&before.run, &after.run) {
            // The run stayed in place (an UPDATE of a column of a run only
            // changes `vers`): an UPDATE of `cl` and `vers`, not the upsert,
            // whose SET rewrites the `(db_version, seq)` index entry.
            let vals = [ValueRef::Integer(after.cl), ValueRef::from(&vers)];
            run_on_key(inner, &c.update_vers, pks, vals)?;
        } else {
            let int = |f: fn(&Run) -> i64| run.map_or(ValueRef::Null, |r| ValueRef::Integer(f(r)));
            let vals = [
                ValueRef::Integer(after.cl),
                int(|r| r.db_version),
                int(|r| r.site),
                int(Run::seq),
                ValueRef::from(&vers),
            ];
            run_on_key(inner, &c.upsert_row, pks, vals)?;
        }
    }
    for (slot, clock) in &after.cells {
        if before.cells.get(slot) != Some(clock) {
            let vals = [
                ValueRef::Text(slot_name(t, *slot)?.as_bytes()),
                ValueRef::Integer(clock.col_version),
                ValueRef::Integer(clock.db_version),
                ValueRef::Integer(clock.site),
                ValueRef::Integer(clock.seq),
            ];
            run_on_key(inner, &c.upsert_cell, pks, vals)?;
        }
    }
    for slot in before.cells.keys() {
        if !after.cells.contains_key(slot) {
            let name = [Value::Text(slot_name(t, *slot)?.to_string())];
            conn.prepare_cached(&c.delete_cell)?
                .execute(params_from_iter(key_params(pks, &name)))?;
        }
    }
    depart(ext, inner, t, before, after)
}

/// Whether two runs sit at the same position: version, site and last seq
/// (the row clock's indexed `db_version` and `seq`, and `site_id`).
fn same_position(a: &Option<Run>, b: &Option<Run>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a.db_version, a.site, a.seq()) == (b.db_version, b.site, b.seq()),
        _ => false,
    }
}

/// Run the held statement `sql` on a key: the pk values, then `vals`.
fn run_on_key<const N: usize>(
    inner: &Inner,
    sql: &str,
    pks: &[ValueRef<'_>],
    vals: [ValueRef<'_>; N],
) -> Result<()> {
    let values = pks.iter().chain(&vals).copied();
    inner.held.exec(inner.db(), sql, values)
}

/// Subtract the clocks of `before` that `after` no longer has at the same
/// position, where they were counted (`crr::counts`).
pub(crate) fn depart(
    ext: &Ext,
    inner: &Inner,
    t: &TableInfo,
    before: &Stored,
    after: &Stored,
) -> Result<()> {
    if !inner.has_counts() || before.is_empty() {
        return Ok(());
    }
    let through = crate::crr::counts::through_in_tx(inner, &ext.tx)?;
    // Nothing of `before` counted (the common case of a merge into rows
    // written since the last COMMIT's count): nothing departs.
    let run = before.run.as_ref().map(|r| r.db_version);
    let oldest = run
        .into_iter()
        .chain(before.cells.values().map(|c| c.db_version))
        .min();
    if oldest.is_none_or(|v| v > through) {
        return Ok(());
    }
    let now = after.expand();
    let mut deltas: HashMap<(i64, i64), i64> = HashMap::new();
    for (slot, clock) in before.expand() {
        if clock.db_version <= through && now.get(&slot) != Some(&clock) {
            *deltas.entry((clock.db_version, clock.site)).or_insert(0) -= 1;
        }
    }
    crate::crr::counts::apply(inner, &t.name, &deltas)
}

/// A key with no clock whose delete was compacted takes its causal length
/// back (DECISIONS D22; `crr::local::revive_compacted`).
fn revive(
    ext: &Ext,
    inner: &Inner,
    t: &TableInfo,
    pks: &[ValueRef<'_>],
    v: i64,
    s: &mut Stored,
) -> Result<()> {
    if !s.is_empty() || !inner.has_tombstones() {
        return Ok(());
    }
    let packed = pack_columns(pks.iter().map(|v| to_core(*v))).map_err(|source| Error::Pack {
        context: format!("packing a primary key of {}", t.name),
        source,
    })?;
    if let Some(cl) = crate::streams::compact::take_compacted(inner, &t.name, &packed)? {
        s.write(&[(SENTINEL_SLOT, local_clock(cl, v, ext.tx.take_seq()))]);
    }
    Ok(())
}

/// A cell's col_version after a local write of it, from the row's state.
fn next_cv(state: &RowClocks, slot: i32) -> Result<i64> {
    match state.get(&slot) {
        Some(old) => inc(old.col_version),
        None => Ok(1),
    }
}

/// The helpers: name, values per primary-key column, per other column.
const INSERT: (&str, usize, usize) = ("crsql_compact_after_insert", 1, 0);
const UPDATE: (&str, usize, usize) = ("crsql_compact_after_update", 2, 2);
const DELETE: (&str, usize, usize) = ("crsql_compact_after_delete", 1, 0);

/// Run a trigger helper: under the lock, with the CRR, its compact
/// statements and the version of this write. Nothing while the sync bit is
/// set (the extension's own writes to base tables): the compact triggers
/// have no `WHEN crsql_internal_sync_bit() = 0`, the helper tests it, so a
/// row costs one function call.
fn helper(
    ext: &Ext,
    args: &[ValueRef<'_>],
    (what, per_pk, per_col): (&str, usize, usize),
    f: impl FnOnce(&mut Inner, &TableInfo, &Compact, i64) -> Result<()>,
) -> Result<()> {
    if ext.sync_bit.load(Relaxed) != 0 {
        return Ok(());
    }
    let mut inner = ext.lock(what)?;
    let t = trigger_table(ext, &mut inner, args, per_pk, per_col)?;
    let c = compact_of(&t)?;
    let v = inner.next_db_version(&ext.tx, None)?;
    f(&mut inner, &t, c, v)
}

/// `crsql_compact_after_insert(tbl, pk...)`: `crr::local::after_insert`.
pub fn after_insert(ext: &Ext, args: &[ValueRef<'_>]) -> Result<()> {
    helper(ext, args, INSERT, |inner, t, c, v| {
        let pks = &args[1..];
        let n = t.cols.len() as i64;
        // A new row (the common case): one statement. Its seqs are taken
        // only if the row clock was written.
        if !inner.has_tombstones() {
            let first = ext.tx.seq.load(Relaxed);
            // Bound one by one: no parameter vector, no copy of the blob.
            let vals = [
                ValueRef::Integer(1),
                ValueRef::Integer(v),
                ValueRef::Integer(0),
                ValueRef::Integer(first + n.max(1) - 1),
                ValueRef::from(&c.insert_vers),
            ];
            let total = inner.db().total_changes();
            run_on_key(inner, &c.insert_row, pks, vals)?;
            if inner.db().total_changes() != total {
                c.fast.insert(ext.tx.epoch.load(Relaxed), n.max(1));
                ext.tx.take_seqs(n.max(1));
                return Ok(());
            }
        }
        let before = load(inner, t, c, pks)?;
        let mut s = before.clone();
        revive(ext, inner, t, pks, v, &mut s)?;
        let existed = !s.is_empty();
        let sentinel = s.expand().contains_key(&SENTINEL_SLOT);
        let mut writes = Vec::new();
        if n == 0 {
            let cl = if sentinel { bump_cl(s.cl)? } else { 1 };
            writes.push((SENTINEL_SLOT, local_clock(cl, v, ext.tx.take_seq())));
        } else {
            if existed {
                // A seq is consumed even with no sentinel to bump (§6.1).
                let seq = ext.tx.take_seq();
                if sentinel {
                    writes.push((SENTINEL_SLOT, local_clock(bump_cl(s.cl)?, v, seq)));
                }
            }
            let first = ext.tx.take_seqs(n);
            let state = s.expand();
            for i in 0..n as i32 {
                let cv = next_cv(&state, i)?;
                writes.push((i, local_clock(cv, v, first + i64::from(i))));
            }
        }
        s.write(&writes);
        save(ext, inner, t, c, pks, &before, &s)
    })
}

/// `crsql_compact_after_update(tbl, newpk..., oldpk..., newcol...,
/// oldcol...)`: `crr::local::after_update` without primary-key changes.
pub fn after_update(ext: &Ext, args: &[ValueRef<'_>]) -> Result<()> {
    helper(ext, args, UPDATE, |inner, t, c, v| {
        let (np, nc) = (t.pks.len(), t.cols.len());
        let new_pks = &args[1..1 + np];
        let old_pks = &args[1 + np..1 + 2 * np];
        let new_cols = &args[1 + 2 * np..1 + 2 * np + nc];
        let old_cols = &args[1 + 2 * np + nc..];
        if new_pks
            .iter()
            .zip(old_pks)
            .any(|(a, b)| compare(*a, *b).is_ne())
        {
            let changed: Vec<bool> = (0..nc)
                .map(|i| compare(new_cols[i], old_cols[i]).is_ne())
                .collect();
            let keys = Keys {
                old: old_pks,
                new: new_pks,
            };
            return move_row(ext, inner, t, c, v, keys, &changed);
        }
        let before = load(inner, t, c, new_pks)?;
        let mut s = before.clone();
        revive(ext, inner, t, new_pks, v, &mut s)?;
        let state = s.expand();
        let mut writes = Vec::new();
        for i in 0..nc {
            if compare(new_cols[i], old_cols[i]).is_ne() {
                let cv = next_cv(&state, i as i32)?;
                writes.push((i as i32, local_clock(cv, v, ext.tx.take_seq())));
            }
        }
        if writes.is_empty() && s == before {
            // An update that changes nothing still uses up a version (§15 Q16).
            return inner.persist_version(v);
        }
        s.write(&writes);
        save(ext, inner, t, c, new_pks, &before, &s)
    })
}

/// `crsql_compact_after_delete(tbl, oldpk...)`: `crr::local::after_delete`.
pub fn after_delete(ext: &Ext, args: &[ValueRef<'_>]) -> Result<()> {
    helper(ext, args, DELETE, |inner, t, c, v| {
        let pks = &args[1..];
        let before = load(inner, t, c, pks)?;
        let mut s = before.clone();
        let cl = match s.expand().get(&SENTINEL_SLOT) {
            Some(_) => inc(s.cl)?,
            None => 2,
        };
        s.clear_cells();
        s.write(&[(SENTINEL_SLOT, local_clock(cl, v, ext.tx.take_seq()))]);
        save(ext, inner, t, c, pks, &before, &s)
    })
}

/// The primary key of a row before and after an UPDATE.
struct Keys<'p, 'v> {
    old: &'p [ValueRef<'v>],
    new: &'p [ValueRef<'v>],
}

/// Clocks written one after the other, each seeing the ones before (a
/// later write of a slot replaces an earlier one, as a clock row is
/// overwritten); [`Pending::into_writes`] gives the last of each slot.
struct Pending {
    state: RowClocks,
    writes: Vec<(i32, Clock)>,
}

impl Pending {
    fn new(s: &Stored) -> Pending {
        Pending {
            state: s.expand(),
            writes: Vec::new(),
        }
    }

    fn put(&mut self, slot: i32, clock: Clock) {
        self.state.insert(slot, clock);
        self.writes.push((slot, clock));
    }

    fn into_writes(self) -> Vec<(i32, Clock)> {
        let mut last: std::collections::BTreeMap<i32, Clock> = std::collections::BTreeMap::new();
        for (slot, clock) in self.writes {
            last.insert(slot, clock);
        }
        last.into_iter().collect()
    }
}

/// An UPDATE of the primary key (`crr::local::after_update`, §6.2 and
/// DECISIONS D13): the old key is deleted; its cells move to the new key at
/// this version, fresh seqs and the local site, in column-name order; the
/// new key is created or resurrected; every other column gets a clock there.
/// The same clocks at the same positions as the cr-sqlite layout writes.
fn move_row(
    ext: &Ext,
    inner: &mut Inner,
    t: &TableInfo,
    c: &Compact,
    v: i64,
    keys: Keys<'_, '_>,
    changed: &[bool],
) -> Result<()> {
    let new_before = load(inner, t, c, keys.new)?;
    let old_before = load(inner, t, c, keys.old)?;
    let mut n = new_before.clone();
    let mut o = old_before.clone();
    let new_existed = !n.is_empty();
    if !new_existed {
        revive(ext, inner, t, keys.new, v, &mut n)?;
    }
    let take = |cv: i64| local_clock(cv, v, ext.tx.take_seq());
    // `UPDATE OR REPLACE` may have deleted a live row at the new key
    // without a trigger: recorded now (DECISIONS D17).
    if new_existed && n.cl % 2 == 1 {
        let cl = match n.expand().get(&SENTINEL_SLOT) {
            Some(_) => inc(n.cl)?,
            None => 2,
        };
        n.clear_cells();
        n.write(&[(SENTINEL_SLOT, take(cl))]);
    }
    let old_state = o.expand();
    let cl = match old_state.get(&SENTINEL_SLOT) {
        Some(_) => inc(o.cl)?,
        None => 2,
    };
    o.clear_cells();
    o.write(&[(SENTINEL_SLOT, take(cl))]);
    let mut moved: Vec<(&str, i32, i64)> = old_state
        .iter()
        .filter(|(slot, _)| **slot != SENTINEL_SLOT)
        .map(|(slot, clock)| Ok((slot_name(t, *slot)?, *slot, clock.col_version)))
        .collect::<Result<_>>()?;
    moved.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut p = Pending::new(&n);
    for (_, slot, cv) in &moved {
        p.put(*slot, take(*cv));
    }
    let cl = match p.state.get(&SENTINEL_SLOT) {
        Some(_) => bump_cl(n.cl)?,
        None => 1,
    };
    p.put(SENTINEL_SLOT, take(cl));
    for (i, was_changed) in changed.iter().enumerate() {
        let slot = i as i32;
        if !was_changed && !moved.iter().any(|m| m.1 == slot) {
            let cv = next_cv(&p.state, slot)?;
            p.put(slot, take(cv));
        }
    }
    for (i, was_changed) in changed.iter().enumerate() {
        if *was_changed {
            let slot = i as i32;
            let cv = next_cv(&p.state, slot)?;
            p.put(slot, take(cv));
        }
    }
    n.write(&p.into_writes());
    save(ext, inner, t, c, keys.old, &old_before, &o)?;
    save(ext, inner, t, c, keys.new, &new_before, &n)
}
