//! Merging changes into the database (§8): `INSERT INTO crsql_changes`
//! (one change per call) and the inbound stream's packages (many).
//!
//! Every input is validated before the first write, so a bad change is an
//! error that names the problem and changes nothing. Unlike cr-sqlite, a
//! merged change takes a fresh local seq (§15 Q17), so `(db_version, seq)`
//! positions stay unique, and deletes and sentinels store the change's `cl`
//! (§15 Q13).
//!
//! A [`Merger`] decides in memory and writes per row (DECISIONS D35): the
//! consecutive changes of one row (same table, same packed primary key) are
//! decided one after the other against the row's state, read once, taking
//! the versions, seqs and site ordinals a one-by-one merge would take, in
//! the same order. Their writes wait until the next row (or the end): the
//! base row in one statement, then the key, new site ordinals and the clock
//! rows (a single-row statement each). A tie that needs the stored value of
//! a cell first writes what waits, so it reads what the one-by-one merge
//! reads. In a package merge ([`Merger::in_one_statement`]) the inserts of
//! new rows wait longer and go several rows per statement.

// crr::compact: the merger's row read and write for compact CRRs.
mod compact;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crsql_stream_core::merge::{cell_wins, decide_row, RowDecision, MAX_CLOCK, SENTINEL};
use crsql_stream_core::pack::unpack_columns_ref;
use rusqlite::types::ValueRef;
use rusqlite::{params, params_from_iter, OptionalExtension};

use crate::crr::counts::KeyCounts;
use crate::crr::local::key_for;
use crate::crr::schema::{TableInfo, CLOCK_ROWS, CLOCK_ROW_SIZES, MAX_NAME_LEN};
use crate::crr::values::{compare, out, to_sql, type_name};
use crate::err;
use crate::error::{Error, Result};
use crate::sqlite::RawStmt;
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

/// A change checked against its table: the primary-key values, and the
/// column index (None for the sentinel).
struct Checked<'a> {
    pks: Vec<ValueRef<'a>>,
    col: Option<usize>,
}

fn check<'a>(t: &TableInfo, c: &Change<'a>) -> Result<Checked<'a>> {
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
    let col = if c.cid == SENTINEL {
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
    Ok(Checked { pks, col })
}

/// Merge one change (`INSERT INTO crsql_changes`). Returns the number of
/// "impacted" operations (§7.7); the caller adds them to
/// `crsql_rows_impacted`. Every write is done when it returns; what it
/// read and wrote of the row stays in [`Inner::row_memo`] for the next
/// call, if nothing else changes the database in between ([`RowMemo`]).
pub fn merge_change(ext: &Ext, inner: &mut Inner, c: &Change<'_>) -> Result<i64> {
    let mut memo = std::mem::take(&mut inner.row_memo);
    memo.check(ext);
    let (impacted, memo) = {
        let mut m = Merger::new(ext, inner)?;
        m.memo = Some(memo);
        m.push(c)?;
        m.finish_keeping()?
    };
    inner.row_memo = memo;
    Ok(impacted)
}

/// What `INSERT INTO crsql_changes` keeps from one call to the next
/// (DECISIONS D50): the clocks of the last row it merged, as its writes
/// left them in the database, and the ordinals of the sites it met. A
/// row's cells usually arrive one after the other, each change its own
/// call: the next change of the row is then decided without reading it
/// again, and a change that loses costs no statement at all.
///
/// It is only used while nothing else can have changed what it holds,
/// checked at every call (`RowMemo::check`), and dropped otherwise:
/// - at the end of the transaction (`TxCounters::epoch`, moved by the
///   commit and rollback hooks), so it never sees another connection's
///   writes or a rolled back one;
/// - after `ROLLBACK TO` or a statement rollback
///   (`TxCounters::rollbacks`, moved by `crsql_changes`' xRollbackTo,
///   which SQLite calls for a table written in the transaction);
/// - after a call of any of the extension's SQL functions but a few that
///   write nothing (`TxCounters::calls`: the CRR triggers' helpers, so
///   every tracked write to a CRR, and the extension's own DDL);
/// - after any other row change by any statement
///   (`sqlite3_total_changes`, which counts the rows of every INSERT,
///   UPDATE and DELETE, trigger steps and nested statements included):
///   between two calls it may only grow by the count of the statements
///   that called `crsql_changes` and ended (one row per call), or not at
///   all (the same statement);
/// - after an error (the call does not put it back).
#[derive(Default)]
pub struct RowMemo {
    /// When it was taken; None when it is empty.
    guard: Option<Guard>,
    /// Ordinals of `crsql_site_id`.
    sites: HashMap<Vec<u8>, i64>,
    /// The last row merged.
    row: Option<MemoRow>,
}

/// [`RowMemo`]'s record of the state it was taken in.
#[derive(Clone, Copy, Debug)]
struct Guard {
    epoch: i64,
    calls: i64,
    rollbacks: i64,
    /// `sqlite3_total_changes` after the last call's writes.
    total: i32,
    /// The calls whose statements' own counts (one per call, added when
    /// the statement ends) `total` does not hold yet.
    unseen: i32,
}

/// Sites a [`RowMemo`] keeps at most (a new one past that empties it).
const MEMO_SITES: usize = 4096;

impl Guard {
    fn now(ext: &Ext, unseen: i32) -> Guard {
        Guard {
            epoch: ext.tx.epoch.load(Relaxed),
            calls: ext.tx.calls.load(Relaxed),
            rollbacks: ext.tx.rollbacks.load(Relaxed),
            total: ext.db.total_changes(),
            unseen,
        }
    }
}

impl RowMemo {
    /// Empty it unless nothing but the statements that called
    /// `crsql_changes` changed the database since it was taken.
    fn check(&mut self, ext: &Ext) {
        let Some(g) = self.guard.as_mut() else {
            return;
        };
        let now = Guard::now(ext, 0);
        let grown = now.total.wrapping_sub(g.total);
        let same = g.epoch == now.epoch
            && g.calls == now.calls
            && g.rollbacks == now.rollbacks
            && (grown == 0 || grown == g.unseen);
        if !same {
            *self = RowMemo::default();
        } else if grown != 0 {
            // The statements of the calls so far ended, counted.
            g.unseen = 0;
            g.total = now.total;
        }
    }
}

/// [`RowMemo::row`]: a [`Row`] with nothing waiting, owned.
struct MemoRow {
    t: Arc<TableInfo>,
    pk: Vec<u8>,
    key: Option<i64>,
    cl: i64,
    cells: Vec<Slot>,
    others: Option<Vec<(String, Clock)>>,
    sentinel: Option<Clock>,
    compact: Option<crsql_stream_core::rowclock::Stored>,
}

/// The site of a clock row: an ordinal of `crsql_site_id`, or a site that
/// has none yet (an index into [`Row::new_sites`]; it gets one when the
/// row is written, in the order a one-by-one merge would give them).
#[derive(Clone, Copy, Debug)]
enum Site {
    Ordinal(i64),
    New(usize),
}

/// One clock row as it is, or will be once written.
#[derive(Clone, Copy, Debug)]
struct Clock {
    col_version: i64,
    db_version: i64,
    seq: i64,
    site: Site,
    /// Changed in memory, not written yet.
    dirty: bool,
}

impl Clock {
    /// A stored clock row: col_version, db_version, seq and site_id from
    /// column `first` of `r` on.
    fn read(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Clock> {
        Ok(Clock {
            col_version: r.get(first)?,
            db_version: r.get(first + 1)?,
            seq: r.get(first + 2)?,
            site: Site::Ordinal(r.get(first + 3)?),
            dirty: false,
        })
    }

    /// [`Clock::read`] from a held statement's current row.
    fn read_raw(stmt: &RawStmt, first: usize) -> Clock {
        Clock {
            col_version: stmt.column_i64(first),
            db_version: stmt.column_i64(first + 1),
            seq: stmt.column_i64(first + 2),
            site: Site::Ordinal(stmt.column_i64(first + 3)),
            dirty: false,
        }
    }
}

/// What is known of the clock row of one column.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// Not read yet.
    Unknown,
    Absent,
    Present(Clock),
}

/// The row whose changes are being decided, and the writes that wait.
struct Row<'a> {
    t: Arc<TableInfo>,
    pk: &'a [u8],
    pks: Vec<ValueRef<'a>>,
    key: Option<i64>,
    /// The causal length (§8.1) after the changes decided so far.
    cl: i64,
    /// The clock of each column, by column index.
    cells: Vec<Slot>,
    /// Clock rows under names that are not columns (None: not read yet).
    others: Option<Vec<(String, Clock)>>,
    /// The sentinel clock, once a change here wrote it.
    sentinel: Option<Clock>,
    /// Something waits to be written.
    dirty: bool,
    /// The base row is deleted first,
    base_delete: bool,
    /// then (or only) inserted, with `values`.
    base_insert: bool,
    /// The values written since the last delete, by column index.
    values: Vec<Option<ValueRef<'a>>>,
    /// Every clock row but the sentinel is deleted before the clock writes.
    drop_cells: bool,
    /// Winning sites without an ordinal yet, in the order they won.
    new_sites: Vec<&'a [u8]>,
    /// Impacted operations (§7.7) of the waiting writes.
    impacted: i64,
    /// The transaction's pending version and next seq before the first
    /// waiting write: restored when the base-table write is refused, so
    /// that (as one by one) a refused change takes no version or seq.
    undo: (i64, i64),
    /// crr::compact: the row's clocks as stored (a compact CRR's row).
    compact: Option<crsql_stream_core::rowclock::Stored>,
    /// crr::compact: the clocks each waiting change wrote, in order, so
    /// that the row is stored as merging its changes one by one stores it
    /// ([`compact::Log`]).
    log: compact::Log,
}

impl Row<'_> {
    /// The base-table write is an insert or an upsert (not deleted here)
    /// with at least one value: `Some(false)` for a row new to the clocks
    /// (no key), `Some(true)` for a row they know.
    fn base_write(&self) -> Option<bool> {
        (!self.base_delete && self.base_insert && self.values.iter().any(Option::is_some))
            .then_some(self.key.is_some())
    }

    /// Every clock row of the row (sentinel excluded) is known.
    fn all_known(&self) -> bool {
        self.others.is_some() && !self.cells.iter().any(|s| matches!(s, Slot::Unknown))
    }

    /// The columns whose clock row is not known have none.
    fn absent_unknown(&mut self) {
        for s in &mut self.cells {
            if matches!(s, Slot::Unknown) {
                *s = Slot::Absent;
            }
        }
    }

    /// No clock row at all (a new key, or a delete dropped them).
    fn clear_cells(&mut self) {
        self.cells.fill(Slot::Absent);
        self.others = Some(Vec::new());
    }
}

/// Tables with up to this many columns have every clock row of a row read
/// with its key, in one query; wider ones read the clocks they need.
const EAGER_COLUMNS: usize = 64;

/// Merges changes: decides in memory, writes per row (see the module docs).
/// [`Merger::finish`] writes what waits; dropping a merger without it
/// loses the waiting writes (fine after an error: the caller's statement
/// is rolled back).
pub struct Merger<'i, 'a> {
    ext: &'i Ext,
    inner: &'i Inner,
    /// The committed db_version + 1, as `next_db_version` computes it.
    next_committed: i64,
    /// The version this transaction writes at (-1: none yet).
    pending: i64,
    local_site: [u8; 16],
    merge_equal_values: bool,
    /// Ordinals of the sites seen (only for this merger's lifetime).
    sites: HashMap<&'a [u8], i64>,
    row: Option<Row<'a>>,
    impacted: i64,
    /// Set by [`Merger::in_one_statement`].
    one_statement: bool,
    /// Inserts of new rows that wait to be written together.
    inserts: Option<Inserts<'a>>,
    /// Clock rows of rows done with that wait to be written together
    /// ([`Merger::in_one_statement`]). Never holds the current row's.
    clocks: Option<Clocks<'a>>,
    /// crr::compact: the same for compact CRRs.
    compact_clocks: Option<compact::Pending<'a>>,
    /// crr::compact: the stored clocks of a package's keys, read ahead.
    ahead: compact::Ahead<'a>,
    /// Per table: whether it has no generated column (its upserts may
    /// wait in [`Merger::inserts`]).
    plain: HashMap<String, bool>,
    /// The row-by-row merge's memo ([`merge_change`]).
    memo: Option<RowMemo>,
}

/// [`Merger::load`]'s read of a narrow table's key, causal length and
/// clock rows (`row_clocks`: a key and one clock row each, or a key and no
/// clock), through the held statement ([`crate::crr::held`]).
fn load_clocks(inner: &Inner, row: &mut Row<'_>) -> Result<()> {
    let t = Arc::clone(&row.t);
    inner.held.run(inner.db(), &t.sql.row_clocks, |stmt| {
        for (i, v) in row.pks.iter().enumerate() {
            stmt.bind(i + 1, *v)?;
        }
        let (mut sentinel_cl, mut any, mut others) = (None, false, Vec::new());
        while stmt.step()? {
            row.key = Some(stmt.column_i64(0));
            let ValueRef::Text(name) = stmt.column(1) else {
                continue;
            };
            any = true;
            let clock = Clock::read_raw(stmt, 2);
            let name = String::from_utf8_lossy(name);
            if name == SENTINEL {
                sentinel_cl = Some(clock.col_version);
            } else if let Some(i) = row.t.col_index(&name) {
                row.cells[i] = Slot::Present(clock);
            } else {
                others.push((name.into_owned(), clock));
            }
        }
        if row.key.is_some() {
            row.absent_unknown();
            row.others = Some(others);
        }
        row.cl = sentinel_cl.unwrap_or(i64::from(any));
        Ok(())
    })
}

/// Clock rows of one table, of rows the merger is done with and whose
/// counted clocks (`crr::counts`) they do not move, written
/// [`CLOCK_ROWS`] at a time by one statement: like [`Inserts`], once per
/// statement instead of once per row for SQLite's journal of a nested
/// statement.
struct Clocks<'a> {
    t: Arc<TableInfo>,
    /// key, clock name, col_version, db_version, seq, site.
    rows: Vec<(i64, ClockName, i64, i64, i64, i64)>,
    /// The primary keys of the rows they are of.
    pks: HashSet<&'a [u8]>,
}

/// The name of a clock row waiting in [`Clocks`].
enum ClockName {
    Sentinel,
    Column(usize),
    Other(String),
}

/// Base-table inserts of new rows (no key yet, not deleted here) of one
/// table and set of columns, written by one statement
/// ([`Merger::in_one_statement`]).
struct Inserts<'a> {
    t: Arc<TableInfo>,
    cols: Vec<usize>,
    /// Per row: the pk values, then one value per column.
    values: Vec<ValueRef<'a>>,
    rows: usize,
    /// Upserts of rows the clocks know (else inserts of new rows).
    upsert: bool,
}

/// Most rows one insert statement of [`Inserts`] writes (and at most 999
/// values, SQLite's oldest default limit).
const INSERT_ROWS: usize = 128;

impl<'i, 'a> Merger<'i, 'a> {
    pub fn new(ext: &'i Ext, inner: &'i mut Inner) -> Result<Merger<'i, 'a>> {
        inner.sync(&ext.tx)?;
        // Merged clock rows carry other sites: the COMMIT counts in full.
        ext.tx.local_only.store(false, Relaxed);
        let pending = ext.tx.pending();
        let committed = if pending < 0 {
            inner.db_version(&ext.tx)?
        } else {
            ext.tx.db_version.load(Relaxed).max(0)
        };
        let inner: &'i Inner = inner;
        Ok(Merger {
            ext,
            inner,
            next_committed: committed.saturating_add(1),
            pending,
            local_site: inner.site_id(),
            merge_equal_values: ext.merge_equal_values.load(Relaxed),
            sites: HashMap::new(),
            row: None,
            impacted: 0,
            one_statement: false,
            inserts: None,
            clocks: None,
            compact_clocks: None,
            ahead: compact::Ahead::default(),
            plain: HashMap::new(),
            memo: None,
        })
    }

    /// The merges run inside one statement that SQLite journals (a package
    /// merge), so that a refused write undoes all of them: the inserts of
    /// new rows may then wait and be written several rows at a time, after
    /// their keys and clocks. (An insert into a table with triggers is a
    /// statement SQLite journals on its own, copying the pages it touches:
    /// once per statement instead of once per row.)
    pub fn in_one_statement(mut self) -> Self {
        self.one_statement = true;
        self
    }

    /// crr::compact: read the stored clocks of `keys` (table, packed pk;
    /// a package's, in order) ahead, several keys per statement.
    pub fn read_ahead(
        &mut self,
        keys: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<()> {
        compact::read_ahead(self.inner, &mut self.ahead, keys)
    }

    /// The state the merger reads and writes through.
    pub fn inner(&self) -> &'i Inner {
        self.inner
    }

    /// Decide one change. Its writes may wait (until a change of another
    /// row, a tie, or [`Merger::finish`]).
    pub fn push(&mut self, c: &Change<'a>) -> Result<()> {
        let same_row = matches!(&self.row, Some(r) if r.t.name == c.table && r.pk == c.pk);
        if !same_row {
            self.flush()?;
        }
        let t = match &self.row {
            Some(r) if r.t.name == c.table => Arc::clone(&r.t),
            _ => self.inner.table(c.table).ok_or_else(|| {
                err!(
                    "crsql - could not find the schema information for table {}",
                    c.table
                )
            })?,
        };
        let Checked { pks, col } = check(&t, c)?;
        if !same_row {
            self.row = None;
            if self
                .clocks
                .as_ref()
                .is_some_and(|b| b.t.name == c.table && b.pks.contains(c.pk))
            {
                self.flush_clocks()?;
            }
            if self
                .compact_clocks
                .as_ref()
                .is_some_and(|b| b.holds(c.table, &pks))
            {
                self.flush_clocks()?;
            }
            self.row = Some(self.load(t, c.pk, pks)?);
        }
        let first_seq = self.ext.tx.seq.load(Relaxed);
        self.decide(c, col)?;
        if let Some(row) = self.row.as_mut().filter(|r| r.t.compact.is_some()) {
            row.log.record(first_seq, row.sentinel.as_ref(), &row.cells);
        }
        Ok(())
    }

    /// Write what waits. Returns the impacted operations (§7.7) of every
    /// change this merger merged.
    pub fn finish(mut self) -> Result<i64> {
        self.flush()?;
        self.flush_inserts()?;
        self.flush_clocks()?;
        Ok(self.impacted)
    }

    /// Write what waits and keep the row: returns the impacted operations
    /// and the memo for the next call ([`merge_change`]).
    fn finish_keeping(mut self) -> Result<(i64, RowMemo)> {
        self.flush_now()?;
        self.flush_inserts()?;
        self.flush_clocks()?;
        let mut memo = self.memo.take().unwrap_or_default();
        if memo.sites.len() + self.sites.len() > MEMO_SITES {
            memo.sites.clear();
        }
        for (site, o) in self.sites.drain() {
            memo.sites.entry(site.to_vec()).or_insert(o);
        }
        memo.row = self.row.take().map(|r| MemoRow {
            pk: r.pk.to_vec(),
            key: r.key,
            cl: r.cl,
            cells: r.cells,
            others: r.others,
            sentinel: r.sentinel,
            compact: r.compact,
            t: r.t,
        });
        let unseen = memo.guard.map_or(0, |g| g.unseen);
        memo.guard = Some(Guard::now(self.ext, unseen.saturating_add(1)));
        Ok((self.impacted, memo))
    }

    /// Read a row's key, causal length and (narrow tables) clock rows.
    fn load(&mut self, t: Arc<TableInfo>, pk: &'a [u8], pks: Vec<ValueRef<'a>>) -> Result<Row<'a>> {
        let n = t.cols.len();
        let kept = self
            .memo
            .as_mut()
            .and_then(|m| m.row.take())
            .filter(|r| Arc::ptr_eq(&r.t, &t) && r.pk == pk);
        let mut row = Row {
            pk,
            key: None,
            cl: 0,
            cells: Vec::new(),
            others: None,
            sentinel: None,
            dirty: false,
            base_delete: false,
            base_insert: false,
            values: vec![None; n],
            drop_cells: false,
            new_sites: Vec::new(),
            impacted: 0,
            undo: (-1, 0),
            compact: None,
            log: compact::Log::default(),
            pks,
            t,
        };
        if let Some(kept) = kept {
            // The memo's row: as the previous call left it in the database.
            row.key = kept.key;
            row.cl = kept.cl;
            row.cells = kept.cells;
            row.others = kept.others;
            row.sentinel = kept.sentinel;
            row.compact = kept.compact;
            return Ok(row);
        }
        row.cells = vec![Slot::Unknown; n];
        let conn = &self.inner.conn;
        let binds = || params_from_iter(row.pks.iter().map(|v| out(*v)));
        if row.t.compact.is_some() {
            // crr::compact: every clock of the row in one read.
            compact::load(self.inner, &mut self.ahead, &mut row)?;
        } else if n <= EAGER_COLUMNS {
            load_clocks(self.inner, &mut row)?;
        } else if let Some((key, cl)) = conn
            .prepare_cached(&row.t.sql.row_cl)?
            .query_row(binds(), |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
        {
            row.key = Some(key);
            row.cl = cl;
        }
        if row.key.is_none() {
            row.clear_cells();
            // A compacted delete still counts (DECISIONS D22).
            row.cl =
                crate::streams::compact::compacted_cl(self.inner, &row.t.name, pk)?.unwrap_or(0);
        }
        Ok(row)
    }

    fn row(&mut self) -> &mut Row<'a> {
        self.row
            .as_mut()
            .expect("a merger decides changes of a loaded row")
    }

    /// Decide change `c` of the current row and record its writes.
    fn decide(&mut self, c: &Change<'a>, col: Option<usize>) -> Result<()> {
        let decision = decide_row(self.row().cl, col.is_none(), c.cl);
        match decision {
            RowDecision::Ignore => {}
            RowDecision::Delete { cl } => {
                self.begin_write();
                let row = self.row();
                row.base_delete = true;
                row.base_insert = false;
                row.values.fill(None);
                let sentinel = self.clock(c, cl)?;
                let row = self.row();
                row.sentinel = Some(sentinel);
                row.clear_cells();
                row.drop_cells = true;
                row.log.clear_cells();
                row.cl = cl;
                row.impacted += 1;
            }
            RowDecision::Sentinel { cl } => {
                self.begin_write();
                self.row().base_insert = true;
                self.write_sentinel(c, cl)?;
                let row = self.row();
                row.cl = cl;
                row.impacted += 1;
            }
            RowDecision::Cell {
                sentinel_cl,
                unconditional,
            } => {
                let col = col.unwrap_or_default();
                if !unconditional && !self.cell_wins(c, col)? {
                    return Ok(());
                }
                self.begin_write();
                let row = self.row();
                row.base_insert = true;
                row.values[col] = Some(c.val);
                row.impacted += 1;
                match sentinel_cl {
                    Some(cl) => {
                        self.write_sentinel(c, cl)?;
                        let row = self.row();
                        row.cl = cl;
                        row.impacted += 1;
                    }
                    None => {
                        let row = self.row();
                        row.cl = row.cl.max(1);
                    }
                }
                let clock = self.clock(c, c.col_version)?;
                self.row().cells[col] = Slot::Present(clock);
            }
        }
        Ok(())
    }

    /// The first waiting write of the row: remember the counters to restore.
    fn begin_write(&mut self) {
        let undo = (self.pending, self.ext.tx.seq.load(Relaxed));
        let row = self.row();
        if !row.dirty {
            row.dirty = true;
            row.undo = undo;
        }
    }

    /// The version for the next clock write (`Inner::next_db_version`,
    /// with the change's version as the floor).
    fn next_version(&mut self, floor: i64) -> Result<i64> {
        let v = self.next_committed.max(self.pending).max(floor);
        if v > MAX_CLOCK {
            return Err(err!(
                "crsql_stream: db_version {v} is beyond the largest version this extension hands out \
                 ({MAX_CLOCK}); refused so that versions never wrap"
            ));
        }
        if self.pending < 0 {
            // The transaction's changes are counted at its COMMIT.
            crate::crr::counts::count_at_commit(self.inner)?;
        }
        self.pending = v;
        self.ext.tx.pending.store(v, Relaxed);
        Ok(v)
    }

    /// A winning clock of change `c` with `col_version`: the change's site,
    /// a local version no lower than the change's, a fresh local seq.
    fn clock(&mut self, c: &Change<'a>, col_version: i64) -> Result<Clock> {
        let db_version = self.next_version(c.db_version)?;
        let seq = self.ext.tx.take_seq();
        let site = self.site(c.site_id)?;
        Ok(Clock {
            col_version,
            db_version,
            seq,
            site,
            dirty: true,
        })
    }

    fn site(&mut self, site: &'a [u8]) -> Result<Site> {
        if site.is_empty() || site == self.local_site {
            return Ok(Site::Ordinal(0));
        }
        if let Some(&o) = self.sites.get(site) {
            return Ok(Site::Ordinal(o));
        }
        if let Some(&o) = self.memo.as_ref().and_then(|m| m.sites.get(site)) {
            return Ok(Site::Ordinal(o));
        }
        if let Some(i) = self.row().new_sites.iter().position(|s| *s == site) {
            return Ok(Site::New(i));
        }
        if let Some(o) = self.inner.site_ordinal(site, false)? {
            self.sites.insert(site, o);
            return Ok(Site::Ordinal(o));
        }
        let row = self.row();
        row.new_sites.push(site);
        Ok(Site::New(row.new_sites.len() - 1))
    }

    /// Read every clock row of the row that is not known yet.
    fn know_all(&mut self) -> Result<()> {
        let row = self.row.as_mut().expect("a loaded row");
        if row.all_known() {
            return Ok(());
        }
        let Some(key) = row.key else {
            row.clear_cells();
            return Ok(());
        };
        let mut others = Vec::new();
        let mut stmt = self.inner.conn.prepare_cached(&row.t.sql.cell_rows)?;
        let mut rows = stmt.query([key])?;
        while let Some(r) = rows.next()? {
            let name: String = r.get(0)?;
            let clock = Clock::read(r, 1)?;
            match row.t.col_index(&name) {
                Some(i) => {
                    if matches!(row.cells[i], Slot::Unknown) {
                        row.cells[i] = Slot::Present(clock);
                    }
                }
                None => others.push((name, clock)),
            }
        }
        row.absent_unknown();
        if row.others.is_none() {
            row.others = Some(others);
        }
        Ok(())
    }

    /// The clock side of creating or resurrecting a row (§8.1): the clocks
    /// of surviving cells drop to col_version 0, in name order, then the
    /// sentinel takes `cl`.
    fn write_sentinel(&mut self, c: &Change<'a>, cl: i64) -> Result<()> {
        let v = self.next_version(c.db_version)?;
        self.know_all()?;
        let tx = &self.ext.tx;
        let row = self.row.as_mut().expect("a loaded row");
        let mut zero: Vec<(&str, &mut Clock)> = Vec::new();
        for (i, s) in row.cells.iter_mut().enumerate() {
            if let Slot::Present(clock) = s {
                zero.push((row.t.cols[i].name.as_str(), clock));
            }
        }
        for (name, clock) in row.others.iter_mut().flatten() {
            zero.push((name.as_str(), clock));
        }
        zero.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (_, clock) in zero {
            clock.col_version = 0;
            clock.db_version = v;
            clock.seq = tx.take_seq();
            clock.dirty = true;
        }
        let sentinel = self.clock(c, cl)?;
        self.row().sentinel = Some(sentinel);
        Ok(())
    }

    /// Per-cell resolution at equal causal length (§8.2).
    fn cell_wins(&mut self, c: &Change<'a>, col: usize) -> Result<bool> {
        let row = self.row.as_mut().expect("a loaded row");
        if matches!(row.cells[col], Slot::Unknown) {
            let key = row.key.unwrap_or(-1);
            let found = self
                .inner
                .conn
                .prepare_cached(&row.t.sql.cell_row)?
                .query_row(params![key, c.cid], |r| Clock::read(r, 0))
                .optional()?;
            row.cells[col] = found.map_or(Slot::Absent, Slot::Present);
        }
        let Slot::Present(local) = row.cells[col] else {
            return Ok(true);
        };
        if c.col_version != local.col_version {
            return Ok(c.col_version > local.col_version);
        }
        // A tie: read the stored value, as it is once the waiting writes
        // are done (affinity applied).
        self.flush_now()?;
        self.flush_inserts()?;
        let row = self.row.as_ref().expect("a loaded row");
        let local_site = match row.cells[col] {
            Slot::Present(Clock {
                site: Site::Ordinal(o),
                ..
            }) => o,
            _ => 0,
        };
        let mut stmt = self.inner.conn.prepare_cached(&row.t.sql.base_value[col])?;
        let mut rows = stmt.query(params_from_iter(row.pks.iter().map(|v| out(*v))))?;
        let found = rows
            .next()?
            .ok_or_else(|| err!("could not find row to merge with for tbl {}", row.t.name))?;
        let local_value = found.get_ref(0)?;
        let mev = self.merge_equal_values;
        let value_cmp = compare(c.val, local_value);
        let site_order = if value_cmp.is_eq() && mev {
            let local_site = self.inner.site_of_ordinal(local_site)?.ok_or_else(|| {
                err!(
                    "could not find site_id for previous change, cr-sqlite clock table might be corrupt for tbl {}",
                    row.t.name
                )
            })?;
            Some(c.site_id.cmp(local_site.as_slice()))
        } else {
            None
        };
        Ok(cell_wins(
            Some(local.col_version),
            c.col_version,
            || value_cmp,
            || site_order.unwrap_or(std::cmp::Ordering::Equal),
            mev,
        ))
    }

    /// Write what the current row's changes wait for: the base row (with
    /// the sync bit set, so the CRR triggers skip it) first, so that a
    /// refused write leaves no key, clock or version behind; then the key,
    /// new site ordinals and the clock rows.
    fn flush(&mut self) -> Result<()> {
        self.flush_row(true)
    }

    /// [`Merger::flush`] of a row the merger goes on with (its clock rows
    /// are written now, so that reads of them see them).
    fn flush_now(&mut self) -> Result<()> {
        self.flush_row(false)
    }

    /// Write the current row's waiting writes; with `done` (the merger
    /// moves to another row, or finishes), its clock rows may wait in
    /// [`Merger::clocks`].
    fn flush_row(&mut self, done: bool) -> Result<()> {
        if !self.row.as_ref().is_some_and(|r| r.dirty) {
            return Ok(());
        }
        let later = match self.row.as_ref().and_then(Row::base_write) {
            Some(upsert) if self.one_statement => !upsert || self.plain_columns()?,
            _ => false,
        };
        if later {
            self.insert_later()?;
        } else {
            // Base-table writes stay in order.
            self.flush_inserts()?;
        }
        let Some(row) = self.row.as_mut() else {
            return Ok(());
        };
        let later = if self.one_statement && done {
            Some((&mut self.clocks, &mut self.compact_clocks))
        } else {
            None
        };
        let r = write_row(self.ext, self.inner, &mut self.sites, row, later);
        match r {
            Ok(()) => {
                self.impacted += row.impacted;
                row.impacted = 0;
                Ok(())
            }
            Err((e, base_refused)) => {
                if base_refused {
                    let (pending, seq) = row.undo;
                    self.pending = pending;
                    self.ext.tx.pending.store(pending, Relaxed);
                    self.ext.tx.seq.store(seq, Relaxed);
                }
                self.row = None;
                Err(e)
            }
        }
    }
}

impl<'a> Merger<'_, 'a> {
    /// Whether the current row's table has no generated column: its
    /// upserts can then be written several rows per statement
    /// ([`TableInfo::upsert_many_sql`]).
    fn plain_columns(&mut self) -> Result<bool> {
        let name = &self.row.as_ref().expect("a loaded row").t.name;
        if let Some(&plain) = self.plain.get(name) {
            return Ok(plain);
        }
        let generated: i64 = self
            .inner
            .conn
            .prepare_cached("SELECT count(*) FROM pragma_table_xinfo(?1) WHERE hidden IN (2, 3)")?
            .query_row([name], |r| r.get(0))?;
        self.plain.insert(name.clone(), generated == 0);
        Ok(generated == 0)
    }

    /// Move the current row's base-table write to [`Merger::inserts`].
    fn insert_later(&mut self) -> Result<()> {
        let row = self.row.as_ref().expect("a loaded row");
        let cols: Vec<usize> = (0..row.values.len())
            .filter(|&i| row.values[i].is_some())
            .collect();
        let upsert = row.key.is_some();
        let fits = matches!(&self.inserts,
            Some(b) if Arc::ptr_eq(&b.t, &row.t) && b.cols == cols && b.upsert == upsert);
        if !fits {
            self.flush_inserts()?;
        }
        let row = self.row.as_mut().expect("a loaded row");
        let batch = self.inserts.get_or_insert_with(|| Inserts {
            t: Arc::clone(&row.t),
            cols: cols.clone(),
            values: Vec::new(),
            rows: 0,
            upsert,
        });
        batch.values.extend(row.pks.iter().copied());
        batch
            .values
            .extend(cols.iter().filter_map(|&i| row.values[i]));
        batch.rows += 1;
        let width = row.pks.len() + cols.len();
        row.base_insert = false;
        row.values.fill(None);
        if batch.rows >= INSERT_ROWS.min(999 / width).max(1) {
            self.flush_inserts()?;
        }
        Ok(())
    }

    /// Write the inserts that wait, with the sync bit set. A row that is
    /// there already (or that a constraint refuses) makes the statement
    /// undo itself; the rows are then written one by one as upserts, as
    /// merging them one by one does (and fail as that does).
    fn flush_clocks(&mut self) -> Result<()> {
        if let Some(p) = self.compact_clocks.take() {
            p.write(self.inner)?;
        }
        write_clock_rows(self.inner, self.clocks.take())
    }

    fn flush_inserts(&mut self) -> Result<()> {
        let Some(batch) = self.inserts.take() else {
            return Ok(());
        };
        let conn = &self.inner.conn;
        let prev = self.ext.sync_bit.swap(1, Relaxed);
        let r = (|| -> Result<()> {
            let all = batch.values.iter().map(|v| out(*v));
            let sql = if batch.upsert {
                batch.t.upsert_many_sql(&batch.cols, batch.rows)
            } else {
                batch.t.insert_sql(&batch.cols, batch.rows)
            };
            match conn.prepare_cached(&sql)?.execute(params_from_iter(all)) {
                Ok(_) => return Ok(()),
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if matches!(
                        f.code,
                        rusqlite::ErrorCode::ConstraintViolation
                            | rusqlite::ErrorCode::TypeMismatch
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            let mut upsert = conn.prepare_cached(&batch.t.upsert_sql(&batch.cols))?;
            let width = batch.values.len() / batch.rows.max(1);
            for row in batch.values.chunks(width.max(1)) {
                upsert.execute(params_from_iter(row.iter().map(|v| out(*v))))?;
            }
            Ok(())
        })();
        self.ext.sync_bit.store(prev, Relaxed);
        r
    }
}

/// A waiting clock row's six values, as `clock_write` binds them.
fn clock_values<'v>(
    t: &'v TableInfo,
    (key, n, cv, dbv, seq, site): &'v (i64, ClockName, i64, i64, i64, i64),
) -> [ValueRef<'v>; 6] {
    let name = match n {
        ClockName::Sentinel => SENTINEL,
        ClockName::Column(i) => t.cols[*i].name.as_str(),
        ClockName::Other(s) => s.as_str(),
    };
    [
        ValueRef::Integer(*key),
        ValueRef::Text(name.as_bytes()),
        ValueRef::Integer(*cv),
        ValueRef::Integer(*dbv),
        ValueRef::Integer(*seq),
        ValueRef::Integer(*site),
    ]
}

/// Write `batch`'s clock rows: [`CLOCK_ROWS`] at a time by one statement,
/// what is left by statements of the smaller [`CLOCK_ROW_SIZES`], the last
/// few one by one through the held statement (a multi-row statement copies
/// the pages it touches to the statement journal: it pays from about ten
/// rows on).
fn write_clock_rows(inner: &Inner, batch: Option<Clocks<'_>>) -> Result<()> {
    let Some(batch) = batch else {
        return Ok(());
    };
    let t = &batch.t;
    let conn = &inner.conn;
    let mut rest = &batch.rows[..];
    for (&size, sql) in CLOCK_ROW_SIZES.iter().zip(&t.sql.clock_write_many) {
        if rest.len() < size {
            continue;
        }
        let mut stmt = conn.prepare_cached(sql)?;
        while rest.len() >= size {
            let (chunk, more) = rest.split_at(size);
            rest = more;
            let values = chunk.iter().flat_map(|r| clock_values(t, r));
            stmt.execute(params_from_iter(values.map(out)))?;
        }
    }
    for r in rest {
        inner
            .held
            .exec(inner.db(), &t.sql.clock_write, clock_values(t, r))?;
    }
    Ok(())
}

/// Where the clock rows of a row the merger is done with may wait: per
/// layout.
type Later<'m, 'a> = (
    &'m mut Option<Clocks<'a>>,
    &'m mut Option<compact::Pending<'a>>,
);

/// [`Merger::flush`] of `row`; the error says whether the base-table write
/// refused it (nothing else was written then).
/// With `later`, clock rows that move nothing counted wait there.
fn write_row<'a>(
    ext: &Ext,
    inner: &Inner,
    sites: &mut HashMap<&'a [u8], i64>,
    row: &mut Row<'a>,
    later: Option<Later<'_, 'a>>,
) -> std::result::Result<(), (Error, bool)> {
    write_base(ext, inner, row).map_err(|e| (e, true))?;
    let (later, compact_later) = later.unzip();
    if row.t.compact.is_some() {
        // crr::compact: the row clock and cells, departures included.
        return compact::write_clocks(ext, inner, sites, row, compact_later)
            .map_err(|e| (e, false));
    }
    // What the clock writes move away from the counted versions
    // (`crr::counts`): a row new to the clocks has nothing there.
    let clocks = || -> Result<()> {
        let counted = KeyCounts::take(inner, &ext.tx, &row.t, row.key)?;
        // Settling reads the rows written: those may not wait.
        let later = later.filter(|_| counted.is_empty());
        write_clocks(inner, sites, row, later)?;
        counted.settle(inner, &row.t)
    };
    clocks().map_err(|e| (e, false))
}

fn write_base(ext: &Ext, inner: &Inner, row: &mut Row<'_>) -> Result<()> {
    let prev = ext.sync_bit.swap(1, Relaxed);
    let r = (|| -> Result<()> {
        let conn = &inner.conn;
        let pks = || row.pks.iter().map(|v| out(*v));
        if row.base_delete {
            conn.prepare_cached(&row.t.sql.base_delete)?
                .execute(params_from_iter(pks()))?;
        }
        if row.base_insert {
            let cols: Vec<usize> = (0..row.values.len())
                .filter(|&i| row.values[i].is_some())
                .collect();
            if cols.is_empty() {
                conn.prepare_cached(&row.t.sql.base_insert_pks)?
                    .execute(params_from_iter(pks()))?;
            } else if let &[col] = cols.as_slice() {
                // One column: the row-by-row merge's usual write.
                let values = row.pks.iter().copied().chain(row.values[col]);
                let sql = row.t.upsert_one_sql(col);
                inner.held.exec(inner.db(), sql, values)?;
            } else {
                let vals = cols.iter().filter_map(|&i| row.values[i].map(out));
                conn.prepare_cached(&row.t.upsert_sql(&cols))?
                    .execute(params_from_iter(pks().chain(vals)))?;
            }
        }
        Ok(())
    })();
    ext.sync_bit.store(prev, Relaxed);
    r?;
    row.base_delete = false;
    row.base_insert = false;
    row.values.fill(None);
    Ok(())
}

fn write_clocks<'a>(
    inner: &Inner,
    sites: &mut HashMap<&'a [u8], i64>,
    row: &mut Row<'a>,
    later: Option<&mut Option<Clocks<'a>>>,
) -> Result<()> {
    let key = match row.key {
        Some(k) => k,
        None => {
            let k = key_for(inner, &row.t, &row.pks, true)?.0;
            // The row has clocks again: its compacted record goes.
            crate::streams::compact::take_compacted(inner, &row.t.name, row.pk)?;
            row.key = Some(k);
            k
        }
    };
    let mut ordinals = Vec::with_capacity(row.new_sites.len());
    for site in row.new_sites.drain(..) {
        let o = inner.site_ordinal(site, true)?.unwrap_or(0);
        sites.insert(site, o);
        ordinals.push(o);
    }
    let conn = &inner.conn;
    if row.drop_cells {
        conn.prepare_cached(&row.t.sql.clock_delete_cells)?
            .execute([key])?;
        row.drop_cells = false;
    }
    let t = Arc::clone(&row.t);
    let mut writes: Vec<(ClockName, &mut Clock)> = Vec::new();
    if let Some(s) = row.sentinel.as_mut() {
        writes.push((ClockName::Sentinel, s));
    }
    for (i, s) in row.cells.iter_mut().enumerate() {
        if let Slot::Present(clock) = s {
            writes.push((ClockName::Column(i), clock));
        }
    }
    for (name, clock) in row.others.iter_mut().flatten() {
        writes.push((ClockName::Other(name.clone()), clock));
    }
    let mut rows = Vec::new();
    for (name, clock) in writes.into_iter().filter(|(_, c)| c.dirty) {
        let site = match clock.site {
            Site::Ordinal(o) => o,
            Site::New(i) => ordinals.get(i).copied().unwrap_or(0),
        };
        rows.push((
            key,
            name,
            clock.col_version,
            clock.db_version,
            clock.seq,
            site,
        ));
        clock.site = Site::Ordinal(site);
        clock.dirty = false;
    }
    match later {
        Some(slot) => {
            if slot.as_ref().is_some_and(|b| !Arc::ptr_eq(&b.t, &t)) {
                write_clock_rows(inner, slot.take())?;
            }
            let batch = slot.get_or_insert_with(|| Clocks {
                t: Arc::clone(&t),
                rows: Vec::new(),
                pks: HashSet::new(),
            });
            batch.rows.extend(rows);
            batch.pks.insert(row.pk);
            if batch.rows.len() >= CLOCK_ROWS {
                write_clock_rows(inner, slot.take())?;
            }
        }
        // One single-row statement per clock row: a multi-row INSERT is a
        // statement SQLite journals on its own inside the merge statement
        // (copying every page it touches), a single-row one is not.
        None => write_clock_rows(
            inner,
            Some(Clocks {
                t,
                rows,
                pks: HashSet::new(),
            }),
        )?,
    }
    row.dirty = false;
    Ok(())
}
