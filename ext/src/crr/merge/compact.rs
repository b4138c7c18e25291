//! The merger on a compact CRR (`crr::compact`, docs/compact-layout.md):
//! the row is read as one `Stored` (row clock and cells), so every clock is
//! known at once, and written back through `Stored::write`, which stores
//! the clocks one flush wins together as a run when they are consecutive
//! (a remote insert is). Decisions, versions, seqs and site ordinals are
//! the merger's, unchanged.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::types::ValueRef;

use crsql_stream_core::pack::unpack_columns_ref;
use crsql_stream_core::rowclock::{self, SENTINEL_SLOT};

use super::{Clock, Row, Site, Slot};
use crate::crr::compact::local;
use crate::crr::schema::{TableInfo, CLOCK_ROWS, CLOCK_ROW_SIZES};
use crate::crr::values::to_sql;
use crate::err;
use crate::error::Result;
use crate::state::{Ext, Inner};

/// The clocks each change of the row wrote since its last write, in the
/// order they were decided. The row is stored by replaying them, one
/// `Stored::write` per change (after `clear_cells` for a delete), so the
/// stored form (which clocks form the run, which go to the cells table) is
/// exactly the one merging the changes one by one gives: only the final
/// clocks, written together, would not form the run a one-by-one merge
/// forms when they are not consecutive (a row whose columns arrive at two
/// versions), and would leave every clock in the cells table.
#[derive(Default)]
pub(super) struct Log {
    /// Every change's clocks, one after the other.
    writes: Vec<(i32, Clock)>,
    /// Per change: where its clocks end in `writes`, and whether it
    /// cleared the row's cells first (a delete).
    changes: Vec<(usize, bool)>,
    /// The change being decided cleared the cells.
    clear: bool,
}

impl Log {
    /// The change being decided deletes the row: its cells go first.
    pub(super) fn clear_cells(&mut self) {
        self.clear = true;
    }

    /// Record the clocks the change just decided wrote: those written at a
    /// seq from `first_seq` on (seqs only grow in a transaction).
    pub(super) fn record(&mut self, first_seq: i64, sentinel: Option<&Clock>, cells: &[Slot]) {
        let start = self.writes.len();
        let fresh = |c: &Clock| c.dirty && c.seq >= first_seq;
        if let Some(s) = sentinel.filter(|s| fresh(s)) {
            self.writes.push((SENTINEL_SLOT, *s));
        }
        for (i, s) in cells.iter().enumerate() {
            if let Slot::Present(c) = s {
                if fresh(c) {
                    self.writes.push((i as i32, *c));
                }
            }
        }
        if self.writes.len() > start || self.clear {
            self.changes.push((self.writes.len(), self.clear));
        }
        self.clear = false;
    }
}

/// The stored clocks of a package's keys, read before its changes are
/// merged, [`ahead_keys`] keys per statement (`Compact::load_many`)
/// instead of one statement per key: each is used by the first load of
/// its key and dropped, so a key met again later is read again (after
/// what waits for it is written). Only keys whose values are one row
/// clock's alone ([`key`]: no numeric-looking text, no real) are read
/// ahead: no write to another key can change them in between.
#[derive(Default)]
pub(super) struct Ahead<'a> {
    /// By table (the address of its metadata, held in `tables`) and key
    /// as the compact tables compare it ([`Key`], not the packed bytes: an
    /// integer packed in more bytes than it needs is the same key).
    rows: foldhash::HashMap<usize, foldhash::HashMap<Vec<Key<'a>>, rowclock::Stored>>,
    tables: Vec<Arc<TableInfo>>,
}

/// [`Ahead`]'s name of a table.
fn table_id(t: &Arc<TableInfo>) -> usize {
    Arc::as_ptr(t) as usize
}

/// Read ahead the stored clocks of the compact tables' keys among `keys`
/// (table, packed pk), in their order. Keys that cannot be read so (an
/// unknown table, a malformed pk) are left to the merge, which reports
/// them.
pub(super) fn read_ahead<'a>(
    inner: &Inner,
    ahead: &mut Ahead<'a>,
    keys: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<()> {
    let keys = keys.into_iter();
    let hint = keys.size_hint().0;
    let mut batch: Vec<(Vec<Key<'a>>, Vec<ValueRef<'a>>)> = Vec::new();
    // The table of the keys so far: its name, and if it is compact, its
    // metadata and row clocks' last key.
    let mut table: Option<(&'a str, Option<Compacted>)> = None;
    for (name, pk) in keys {
        if table.as_ref().is_none_or(|(n, _)| *n != name) {
            if let Some((_, Some((t, _)))) = &table {
                read_batch(inner, ahead, t, &mut batch)?;
            }
            let t = inner.table(name).filter(|t| t.compact.is_some());
            let t = match t {
                Some(t) => {
                    if !ahead.tables.iter().any(|held| Arc::ptr_eq(held, &t)) {
                        ahead.tables.push(Arc::clone(&t));
                    }
                    let last = last_key(inner, &t)?;
                    Some((t, last))
                }
                None => None,
            };
            table = Some((name, t));
        }
        let Some((_, Some((t, last)))) = &table else {
            continue;
        };
        let Ok(values) = unpack_columns_ref(pk) else {
            continue;
        };
        let values: Vec<ValueRef<'a>> = values.into_iter().map(to_sql).collect();
        if values.len() != t.pks.len() {
            continue;
        }
        let Some(k) = key(&values) else {
            continue;
        };
        let rows = ahead.rows.entry(table_id(t)).or_insert_with(|| {
            // Sized for the keys to come (at most one per change).
            foldhash::HashMap::with_capacity_and_hasher(hint.min(1024), Default::default())
        });
        let std::collections::hash_map::Entry::Vacant(entry) = rows.entry(k) else {
            continue;
        };
        if last.excludes(&values) {
            // No row clock can hold it: read as absent, with no statement.
            entry.insert(rowclock::Stored::default());
            continue;
        }
        let k = entry.key().clone();
        entry.insert(rowclock::Stored::default());
        batch.push((k, values));
        if batch.len() == crate::crr::compact::ahead_keys(t.pks.len()) {
            read_batch(inner, ahead, t, &mut batch)?;
        }
    }
    if let Some((_, Some((t, _)))) = &table {
        read_batch(inner, ahead, t, &mut batch)?;
    }
    Ok(())
}

/// A compact CRR whose keys are read ahead, and its [`Last`].
type Compacted = (Arc<TableInfo>, Last);

/// What the row-clock table of a compact CRR held when its keys were read
/// ahead: by the largest value of its first primary-key column, which
/// keys it cannot hold (read as absent without a statement).
enum Last {
    /// No row clock at all: no key is there.
    Empty,
    /// The largest first pk value is this integer: every stored first
    /// value is a number no larger (or NULL: never), so a key whose first
    /// value is a larger integer is not there.
    Int(i64),
    /// Anything else (a real, a text, a blob): nothing is excluded.
    Unknown,
}

impl Last {
    fn excludes(&self, pks: &[ValueRef<'_>]) -> bool {
        match (self, pks.first()) {
            (Last::Empty, _) => true,
            (Last::Int(m), Some(ValueRef::Integer(k))) => k > m,
            _ => false,
        }
    }
}

/// [`Last`] of `t`'s row-clock table now (`Compact::last_key`: one seek to
/// the end of its primary-key order).
fn last_key(inner: &Inner, t: &TableInfo) -> Result<Last> {
    let Some(c) = t.compact.as_ref() else {
        return Ok(Last::Unknown);
    };
    inner.held.run(inner.db(), &c.last_key, |stmt| {
        Ok(if !stmt.step()? {
            Last::Empty
        } else if let ValueRef::Integer(m) = stmt.column(0) {
            Last::Int(m)
        } else {
            Last::Unknown
        })
    })
}

/// Read the keys of `batch` (of table `t`) into `ahead`, and empty it. A
/// short batch is padded with its first key under a place no key has.
fn read_batch<'a>(
    inner: &Inner,
    ahead: &mut Ahead<'a>,
    t: &Arc<TableInfo>,
    batch: &mut Vec<(Vec<Key<'a>>, Vec<ValueRef<'a>>)>,
) -> Result<()> {
    let id = table_id(t);
    let (Some(c), Some((_, pad))) = (t.compact.as_ref(), batch.first()) else {
        return Ok(());
    };
    let n = crate::crr::compact::ahead_keys(t.pks.len());
    inner.held.run(inner.db(), &c.load_many, |stmt| {
        let mut param = 1;
        for i in 0..n {
            let (place, values) = match batch.get(i) {
                Some((_, values)) => (i, values),
                None => (n, pad),
            };
            stmt.bind(param, ValueRef::Integer(place as i64))?;
            for v in values {
                stmt.bind(param + 1, *v)?;
                param += 1;
            }
            param += 1;
        }
        let mut last = None;
        while stmt.step()? {
            let place = stmt.column_i64(0);
            let Some((k, _)) = usize::try_from(place).ok().and_then(|i| batch.get(i)) else {
                continue;
            };
            let Some(stored) = ahead.rows.get_mut(&id).and_then(|rows| rows.get_mut(k)) else {
                continue;
            };
            local::read_row(stmt, 1, t, stored, last != Some(place))?;
            last = Some(place);
        }
        Ok(())
    })?;
    batch.clear();
    Ok(())
}

/// Fill a freshly loaded `row` of a compact CRR from its stored clocks
/// (read ahead, or now). A row with no clock is left without a key (the
/// caller then looks for a compacted delete, as for the cr-sqlite layout).
pub(super) fn load<'a>(inner: &Inner, ahead: &mut Ahead<'a>, row: &mut Row<'a>) -> Result<()> {
    let t = std::sync::Arc::clone(&row.t);
    let c = t
        .compact
        .as_ref()
        .ok_or_else(|| err!("crsql_stream: {} is not a compact CRR", t.name))?;
    let id = table_id(&t);
    let read = match key(&row.pks) {
        Some(k) => ahead.rows.get_mut(&id).and_then(|rows| rows.remove(&k)),
        None => {
            // A real or numeric-looking text key can be the row clock of
            // a key read ahead (2.0 and 2; '2' and 2 in a rowid-alias
            // rows table): what this change writes would make that entry
            // stale, so the table's entries go and their keys are read
            // when they come.
            ahead.rows.remove(&id);
            None
        }
    };
    let stored = match read {
        Some(stored) => stored,
        None => local::load(inner, &t, c, &row.pks)?,
    };
    if stored.is_empty() {
        return Ok(());
    }
    row.cells.fill(Slot::Absent);
    for (slot, c) in stored.clocks() {
        if let Some(s) = usize::try_from(slot)
            .ok()
            .and_then(|i| row.cells.get_mut(i))
        {
            *s = Slot::Present(Clock {
                col_version: c.col_version,
                db_version: c.db_version,
                seq: c.seq,
                site: Site::Ordinal(c.site),
                dirty: false,
            });
        }
    }
    row.others = Some(Vec::new());
    row.key = Some(0);
    row.cl = stored.cl;
    row.compact = Some(stored);
    Ok(())
}

/// Row-clock and cells-table upserts of rows the merger is done with, of
/// one compact CRR, written [`CLOCK_ROWS`] rows per statement (the
/// compact counterpart of the merger's `Clocks`: SQLite journals a nested
/// statement once per statement, not once per row). Deletes are not
/// batched: they are written at once, and never concern a waiting key (a
/// row whose key waits here writes these first when it is loaded again).
pub(super) struct Pending<'a> {
    pub(super) t: Arc<TableInfo>,
    /// Row clocks: the pks, cl, db_version, site_id, seq, vers of each;
    /// of keys read absent (`fresh`, written by `INSERT OR IGNORE` first),
    /// and of the others.
    rows: Waits<'a>,
    /// Cells: the pks, col_name, col_version, db_version, site_id, seq.
    cells: Waits<'a>,
    /// The primary keys of the rows they are of ([`Key`]).
    pks: foldhash::HashSet<Vec<Key<'a>>>,
}

/// A primary-key value as the compact tables compare it, for the values
/// that cannot equal a value of another kind there: an integer, a blob, a
/// text that no affinity turns into a number. (A text `'2'` is the key 2
/// of a rowid-alias row-clock table, and a real 2.0 equals the integer 2:
/// two packed keys that are one row clock. Rows with such keys never wait,
/// and loading one writes what waits first.)
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) enum Key<'a> {
    Int(i64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

/// The [`Key`]s of a row's primary-key values; None if one has none.
pub(super) fn key<'a>(pks: &[ValueRef<'a>]) -> Option<Vec<Key<'a>>> {
    pks.iter()
        .map(|v| match *v {
            ValueRef::Integer(i) => Some(Key::Int(i)),
            ValueRef::Blob(b) => Some(Key::Blob(b)),
            ValueRef::Text(t) => {
                let numeric =
                    std::str::from_utf8(t).map_or(true, |s| s.trim().parse::<f64>().is_ok());
                (!numeric).then_some(Key::Text(t))
            }
            ValueRef::Real(_) | ValueRef::Null => None,
        })
        .collect()
}

impl<'a> Pending<'a> {
    /// Whether loading the row of `pks` must write what waits first.
    pub(super) fn holds(&self, t: &str, pks: &[ValueRef<'a>]) -> bool {
        self.t.name == t
            && match key(pks) {
                Some(k) => self.pks.contains(&k),
                None => !self.pks.is_empty(),
            }
    }
}

/// Waiting upserts of one compact table of [`Pending`]: of keys the
/// merger read absent, and of keys it found.
#[derive(Default)]
struct Waits<'a> {
    fresh: Vec<Bind<'a>>,
    known: Vec<Bind<'a>>,
}

impl<'a> Waits<'a> {
    fn of(&mut self, fresh: bool) -> &mut Vec<Bind<'a>> {
        if fresh {
            &mut self.fresh
        } else {
            &mut self.known
        }
    }

    fn len(&self) -> usize {
        self.fresh.len().max(self.known.len())
    }
}

/// One value bound to a waiting write: the package's own (primary-key
/// values, borrowed), or one computed for the write.
pub(super) enum Bind<'a> {
    Ref(ValueRef<'a>),
    Int(i64),
    Null,
    /// A cell's name: its slot (`local::slot_name`, checked when it
    /// was put here).
    Slot(i32),
    Owned(rusqlite::types::Value),
}

impl Bind<'_> {
    fn value<'v>(&'v self, t: &'v TableInfo) -> ValueRef<'v> {
        match self {
            Bind::Ref(v) => *v,
            Bind::Int(i) => ValueRef::Integer(*i),
            Bind::Null => ValueRef::Null,
            Bind::Owned(v) => ValueRef::from(v),
            Bind::Slot(s) => {
                local::slot_name(t, *s).map_or(ValueRef::Null, |n| ValueRef::Text(n.as_bytes()))
            }
        }
    }
}

impl Pending<'_> {
    /// Write what waits: [`CLOCK_ROWS`] rows per statement, the rest one
    /// by one, through statements held out of the cache
    /// (`crr::held`).
    pub(super) fn write(self, inner: &Inner) -> Result<()> {
        let c = self
            .t
            .compact
            .as_ref()
            .ok_or_else(|| err!("crsql_stream: {} is not a compact CRR", self.t.name))?;
        let t = &self.t;
        let width = t.pks.len() + 5;
        for (waits, one, many, ignoring) in [
            (&self.rows, &c.upsert_row, &c.upsert_rows, &c.insert_rows),
            (
                &self.cells,
                &c.upsert_cell,
                &c.upsert_cells,
                &c.insert_cells,
            ),
        ] {
            // New keys: no statement journal. A statement that skipped a
            // row (its key was there after all) is written again by the
            // single-row upserts.
            let mut rest = &waits.fresh[..];
            for (&size, insert) in CLOCK_ROW_SIZES.iter().zip(ignoring) {
                while rest.len() >= size * width {
                    let (chunk, more) = rest.split_at(size * width);
                    rest = more;
                    run_rows(inner, t, insert, chunk.len(), chunk)?;
                    if inner.db().changes() != size as i32 {
                        run_rows(inner, t, one, width, chunk)?;
                    }
                }
            }
            run_rows(inner, t, one, width, rest)?;
            let mut chunks = waits.known.chunks_exact(width * CLOCK_ROWS);
            for chunk in chunks.by_ref() {
                run_rows(inner, t, many, chunk.len(), chunk)?;
            }
            run_rows(inner, t, one, width, chunks.remainder())?;
        }
        Ok(())
    }
}

/// Run the held statement `sql` once per `width` values of `values`.
fn run_rows(
    inner: &Inner,
    t: &TableInfo,
    sql: &str,
    width: usize,
    values: &[Bind<'_>],
) -> Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    inner.held.run(inner.db(), sql, |stmt| {
        for row in values.chunks_exact(width) {
            for (i, v) in row.iter().enumerate() {
                stmt.bind(i + 1, v.value(t))?;
            }
            while stmt.step()? {}
            stmt.reset();
        }
        Ok(())
    })
}

/// Write the row clock and cells `after` holds that `before` did not (the
/// upserts wait in `later`), the deletes at once, and the departures.
fn save<'a>(
    ext: &Ext,
    inner: &Inner,
    row: &Row<'a>,
    before: &rowclock::Stored,
    after: &rowclock::Stored,
    later: &mut Option<Pending<'a>>,
) -> Result<()> {
    let t = &row.t;
    let k = key(&row.pks);
    if k.is_none() || after.is_empty() || before.cells.keys().any(|s| !after.cells.contains_key(s))
    {
        // Deletes, and keys that could alias another: at once, as a
        // one-by-one write does them.
        let c = t
            .compact
            .as_ref()
            .ok_or_else(|| err!("crsql_stream: {} is not a compact CRR", t.name))?;
        return local::save(ext, inner, t, c, &row.pks, before, after);
    }
    if later.as_ref().is_some_and(|p| !Arc::ptr_eq(&p.t, t)) {
        if let Some(p) = later.take() {
            p.write(inner)?;
        }
    }
    let p = later.get_or_insert_with(|| Pending {
        t: Arc::clone(t),
        rows: Waits::default(),
        cells: Waits::default(),
        pks: foldhash::HashSet::default(),
    });
    let pks = row.pks.iter().map(|v| Bind::Ref(*v));
    // Read absent (or written by nobody since): no row clock.
    let fresh = before.is_empty();
    if fresh || before.cl != after.cl || before.run != after.run {
        let run = after.run.as_ref();
        let int = |f: fn(&rowclock::Run) -> i64| run.map_or(Bind::Null, |r| Bind::Int(f(r)));
        let rows = p.rows.of(fresh);
        rows.extend(pks.clone());
        rows.extend([
            Bind::Int(after.cl),
            int(|r| r.db_version),
            int(|r| r.site),
            int(rowclock::Run::seq),
            // The stored form of the row-by-row merge: an INTEGER bitmap
            // or a BLOB (`core::rowclock::Vers`).
            run.map_or(Bind::Null, |r| {
                Bind::Owned(crate::crr::compact::vers_value(r))
            }),
        ]);
    }
    for (slot, clock) in after
        .cells
        .iter()
        .filter(|(s, c)| before.cells.get(s) != Some(c))
    {
        local::slot_name(t, *slot)?;
        // A cell the row did not have (every cell of a key is read with it).
        let cells = p.cells.of(!before.cells.contains_key(slot));
        cells.extend(pks.clone());
        cells.extend([
            Bind::Slot(*slot),
            Bind::Int(clock.col_version),
            Bind::Int(clock.db_version),
            Bind::Int(clock.site),
            Bind::Int(clock.seq),
        ]);
    }
    p.pks.extend(k);
    let full = p.rows.len().max(p.cells.len()) >= (t.pks.len() + 5) * CLOCK_ROWS;
    local::depart(ext, inner, t, before, after)?;
    if full {
        if let Some(p) = later.take() {
            p.write(inner)?;
        }
    }
    Ok(())
}

/// Write the clocks the row's changes won (after its base-table write).
/// With `later` (the merger is done with the row), the row-clock and cell
/// upserts may wait there ([`Pending`]).
pub(super) fn write_clocks<'a>(
    ext: &Ext,
    inner: &Inner,
    sites: &mut HashMap<&'a [u8], i64>,
    row: &mut Row<'a>,
    later: Option<&mut Option<Pending<'a>>>,
) -> Result<()> {
    let t = std::sync::Arc::clone(&row.t);
    let c = t
        .compact
        .as_ref()
        .ok_or_else(|| err!("crsql_stream: {} is not a compact CRR", t.name))?;
    if row.key.is_none() {
        // The row has clocks again: its compacted record goes.
        crate::streams::compact::take_compacted(inner, &t.name, row.pk)?;
        row.key = Some(0);
    }
    let mut ordinals = Vec::with_capacity(row.new_sites.len());
    for site in row.new_sites.drain(..) {
        let o = inner.site_ordinal(site, true)?.unwrap_or(0);
        sites.insert(site, o);
        ordinals.push(o);
    }
    let written = |slot: i32, clock: &mut Clock| {
        let site = match clock.site {
            Site::Ordinal(o) => o,
            Site::New(i) => ordinals.get(i).copied().unwrap_or(0),
        };
        clock.site = Site::Ordinal(site);
        clock.dirty = false;
        (
            slot,
            rowclock::Clock {
                col_version: clock.col_version,
                db_version: clock.db_version,
                site,
                seq: clock.seq,
            },
        )
    };
    let mut writes = Vec::new();
    if let Some(s) = row.sentinel.as_mut().filter(|s| s.dirty) {
        writes.push(written(SENTINEL_SLOT, s));
    }
    for (i, s) in row.cells.iter_mut().enumerate() {
        if let Slot::Present(clock) = s {
            if clock.dirty {
                writes.push(written(i as i32, clock));
            }
        }
    }
    let before = row.compact.take().unwrap_or_default();
    let mut after = before.clone();
    let log = std::mem::take(&mut row.log);
    if log.changes.is_empty() {
        if row.drop_cells {
            after.clear_cells();
        }
        after.write(&writes);
    } else {
        // Replay the changes one by one (`Log`).
        let mut start = 0;
        for &(end, clear) in &log.changes {
            if clear {
                after.clear_cells();
            }
            writes.clear();
            writes.extend(log.writes[start..end].iter().map(|(slot, c)| {
                let mut c = *c;
                written(*slot, &mut c)
            }));
            after.write(&writes);
            start = end;
        }
    }
    row.drop_cells = false;
    match later {
        Some(later) => save(ext, inner, row, &before, &after, later)?,
        None => local::save(ext, inner, &t, c, &row.pks, &before, &after)?,
    }
    row.compact = Some(after);
    row.dirty = false;
    Ok(())
}
