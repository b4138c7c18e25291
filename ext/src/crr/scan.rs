//! Reading change rows in position order without materialising them.
//!
//! Each CRR contributes one statement ordered by `(db_version, seq)` through
//! its `db_version` index (an outbound stream reads a cr-sqlite layout CRR
//! through `Cells`, one transaction at a time, sorted in Rust); a binary
//! heap merges the per-table scans. Memory is one row per table (or one
//! bounded transaction); `LIMIT n` touches O(n) rows per table.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use crsql_stream_core::pack::pack_columns;
use crsql_stream_core::rowclock::{Member, SENTINEL_SLOT};
use crsql_stream_core::Position;
use rusqlite::types::ValueRef;

use crate::crr::schema::TableInfo;
use crate::crr::values::to_core;
use crate::err;
use crate::error::{Error, Result};
use crate::sqlite::{prepared, DbHandle, OwnedValue, RawStmt};
use crate::state::Inner;

mod spill;
use spill::Spill;

/// Columns of a per-table scan (see `TableSql::changes_select`).
const S_CID: usize = 0;
const S_COL_VERSION: usize = 1;
const S_DB_VERSION: usize = 2;
const S_SITE: usize = 3;
const S_SEQ: usize = 4;
const S_CL: usize = 5;
const S_VAL: usize = 6;
const S_PK0: usize = 7;
/// Records scan (compacted deletes): the packed key is column `S_PK0`, the
/// table name this one.
const S_TBL: usize = 8;
/// Runs scan of a compact CRR (`compact::sql`): one row per row clock, its
/// `vers` here, `S_SEQ` the run's last seq, the base row's columns after
/// the primary key's (`S_CID`, `S_COL_VERSION` and `S_VAL` unused).
const S_RUN_VERS: usize = 0;

/// The clocks of the current row of a compact CRR's runs scan, read one by
/// one in seq order, as the run holds them (docs/compact-layout.md, "The
/// change scan"): expanding the run here costs no SQL function call and no
/// join with a slot list.
#[derive(Default)]
struct RunClocks {
    /// The row's clocks in seq order (a buffer reused from row to row).
    members: Vec<Member>,
    /// The current clock's index; None before the row's first.
    at: Option<usize>,
}

impl RunClocks {
    /// Read a row's `vers` whose last clock is at `last` (NULL: a row
    /// clock without a run, no clock).
    fn load(&mut self, vers: ValueRef<'_>, last: i64, table: &str) -> Result<()> {
        self.at = None;
        crate::crr::compact::read_vers(vers, last, &mut self.members, Some(table))?;
        Ok(())
    }

    /// Move to the run's next clock among the sentinel and the table's
    /// `cols` column slots; false past its last.
    fn advance(&mut self, cols: usize) -> bool {
        let mut next = self.at.map_or(0, |i| i + 1);
        while let Some(m) = self.members.get(next) {
            if usize::try_from(m.slot).map_or(true, |i| i < cols) {
                self.at = Some(next);
                return true;
            }
            next += 1;
        }
        false
    }

    /// The current clock.
    fn member(&self) -> Member {
        self.at
            .and_then(|i| self.members.get(i))
            .copied()
            .unwrap_or(Member {
                slot: SENTINEL_SLOT,
                col_version: 0,
                seq: 0,
            })
    }

    /// The current clock's seq.
    fn seq(&self) -> i64 {
        self.member().seq
    }

    /// The current column slot's index (None for the sentinel).
    fn column(&self) -> Option<usize> {
        usize::try_from(self.member().slot).ok()
    }
}

/// Site ids by ordinal (0 is the local site), loaded once per scan.
pub struct SiteMap {
    local: [u8; 16],
    by_ordinal: HashMap<i64, Vec<u8>>,
}

impl SiteMap {
    pub fn load(inner: &Inner) -> Result<SiteMap> {
        let local = inner.site_id();
        let by_ordinal = inner
            .conn
            .prepare_cached("SELECT ordinal, site_id FROM crsql_site_id WHERE ordinal != 0")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(SiteMap { local, by_ordinal })
    }

    /// The site id of an ordinal, or an error naming the table that uses it.
    pub fn site(&self, ordinal: i64, table: &str) -> Result<&[u8]> {
        if ordinal == 0 {
            return Ok(&self.local);
        }
        self.by_ordinal
            .get(&ordinal)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                err!("crsql_stream: clock row of {table} refers to unknown site ordinal {ordinal}")
            })
    }

    /// Number of known sites (the local one included).
    pub fn count(&self) -> usize {
        self.by_ordinal.len() + 1
    }

    /// The ordinal of a site id, if known.
    pub fn ordinal(&self, site: &[u8]) -> Option<i64> {
        if site == self.local {
            return Some(0);
        }
        self.by_ordinal
            .iter()
            .find(|(_, s)| s.as_slice() == site)
            .map(|(o, _)| *o)
    }
}

/// A window of one committed transaction (one db_version) of one CRR, in
/// seq order, narrow: `(seq, key, index into names)`. SQLite has no index
/// with `seq` (the cr-sqlite layout indexes `db_version` only), so reading
/// from the middle of a transaction sorts the whole transaction; a split
/// transaction sent package by package would cost O(transaction) per
/// package. With a memo, each part costs O(part): its rows are re-read by
/// primary key. A window holds at most `window` rows (24 bytes each), so
/// a huge transaction costs one sort per window, not per part.
///
/// A committed db_version never gains clock rows (every write takes a
/// version above the committed one), so a memo can only hold rows that have
/// since moved on (rewritten or deleted); each is re-read with
/// `TableSql::change_at`, which finds nothing unless the row is still at
/// `(db_version, seq)`.
pub struct TxMemo {
    table: Arc<TableInfo>,
    db_version: i64,
    /// The window holds the rows with seq above this one...
    after: i64,
    /// ...up to the end of the transaction, or only up to its last row.
    complete: bool,
    names: Vec<String>,
    rows: Vec<(i64, i64, u32)>,
}

impl TxMemo {
    /// Read the window of `table`'s rows at `db_version` after seq `after`.
    fn read(
        db: DbHandle,
        table: &Arc<TableInfo>,
        db_version: i64,
        after: i64,
        window: usize,
    ) -> Result<TxMemo> {
        let mut stmt = RawStmt::prepare(db, &table.sql.tx_order)?;
        stmt.bind(1, ValueRef::Integer(db_version))?;
        stmt.bind(2, ValueRef::Integer(after))?;
        stmt.bind(3, ValueRef::Integer(window as i64))?;
        let mut names: Vec<String> = Vec::new();
        let mut rows = Vec::new();
        while stmt.step()? {
            let name = match stmt.column(2) {
                ValueRef::Text(t) => t,
                _ => {
                    return Err(err!(
                        "crsql_stream: clock row of {} has a non-text col_name",
                        table.name
                    ))
                }
            };
            let idx = match names.iter().position(|n| n.as_bytes() == name) {
                Some(i) => i,
                None => {
                    names.push(String::from_utf8_lossy(name).into_owned());
                    names.len() - 1
                }
            };
            rows.push((stmt.column_i64(0), stmt.column_i64(1), idx as u32));
        }
        Ok(TxMemo {
            table: Arc::clone(table),
            db_version,
            after,
            complete: rows.len() < window,
            names,
            rows,
        })
    }

    /// Whether this window holds the rows just after seq `start`.
    fn covers(&self, table: &Arc<TableInfo>, db_version: i64, start: i64) -> bool {
        self.db_version == db_version
            && Arc::ptr_eq(&self.table, table)
            && self.after <= start
            && (self.complete || self.rows.last().is_some_and(|r| r.0 > start))
    }
}

/// The memos of one connection: the most recently used few windows.
#[derive(Default)]
pub struct MemoStore {
    memos: VecDeque<Arc<TxMemo>>,
}

/// Windows kept per connection: several streams of one connection (a hub
/// serving several peers) may be inside the same or different large
/// transactions at once.
const MEMOS_KEPT: usize = 4;

impl MemoStore {
    /// A kept window of `table` at `db_version` that holds the rows after
    /// seq `start` (it becomes the most recently used). `table` must be the
    /// current metadata: a schema change gives new `TableInfo`s, so old
    /// memos are never matched again.
    fn find(&mut self, table: &Arc<TableInfo>, db_version: i64, start: i64) -> Option<Arc<TxMemo>> {
        let i = self
            .memos
            .iter()
            .position(|m| m.covers(table, db_version, start))?;
        let memo = self.memos.remove(i)?;
        self.memos.push_back(Arc::clone(&memo));
        Some(memo)
    }

    /// Read the window after `start` and keep it, dropping the least
    /// recently used one if the store is full.
    fn build(
        &mut self,
        db: DbHandle,
        table: &Arc<TableInfo>,
        db_version: i64,
        start: i64,
        window: usize,
    ) -> Result<Arc<TxMemo>> {
        let memo = Arc::new(TxMemo::read(db, table, db_version, start, window)?);
        // An empty window (the start was the end of the transaction) is
        // kept too: a stream whose last_sent is the end of a large
        // transaction reads it again at every read until newer changes are
        // acknowledged, and finding it empty sorts the whole transaction.
        if self.memos.len() >= MEMOS_KEPT {
            self.memos.pop_front();
        }
        self.memos.push_back(Arc::clone(&memo));
        Ok(memo)
    }
}

/// Reading a transaction through memo windows from a position: one
/// `change_at` lookup per row; past the end of an incomplete window the
/// next window is read (and not kept: the next part finds or builds its own).
struct MemoRead {
    db: DbHandle,
    memo: Arc<TxMemo>,
    next: usize,
    window: usize,
    lookup: RawStmt,
}

/// A clock row of the cr-sqlite layout, read narrow by [`Cells`].
#[derive(Clone, Copy)]
struct Cell {
    seq: i64,
    key: i64,
    col_version: i64,
    site: i64,
    /// The causal length: the sentinel's col_version, 1 without one.
    cl: i64,
    /// The column's index in `TableInfo::cols`, [`SENTINEL_CELL`], or a
    /// name the table does not have: `-2 - i` for `Cells::unknown[i]`.
    col: i32,
    /// The row's place in the index order, which breaks ties of seq as
    /// SQLite's (stable) sorter did: a database written by cr-sqlite may
    /// hold two clock rows at one position.
    order: u32,
}

const SENTINEL_CELL: i32 = -1;

/// Rows of one transaction sorted in memory at most (48 bytes each:
/// 12 MiB); a larger transaction is sorted in runs of this size written to
/// a temporary file ([`Spill`]), or by SQLite if that file fails.
const CELLS_SORTED_IN_MEMORY: usize = 1 << 18;

/// A key's row of `TableSql::key_rows` is at most this far ahead: step to
/// it rather than seek (keys are the pks table's rowids, dense in practice);
/// keys this close share one [`ClockRows::read_keys`].
const KEY_STEPS: i64 = 16;

/// The changes of a CRR of the cr-sqlite layout, one transaction at a time
/// (docs/streams.md, "Reading in position order"): `Scan::stmt` reads the
/// distinct keys of each version from the `db_version` index alone;
/// [`ClockRows`] the clock rows at that version (and the causal lengths)
/// of each run of close keys, through the clock table's primary key; a
/// transaction's rows are sorted by seq here (SQLite's sorter took a third
/// of packing), in runs merged from a temporary file past `max_rows`
/// ([`Spill`]), or by SQLite if that file fails. What a change needs of its
/// key (primary key, values) is read once per key by [`KeyRows`], whose
/// cursor moves forward through the pks table in key order.
struct Cells {
    db: DbHandle,
    table: Arc<TableInfo>,
    /// The versions read: conditions on `c` (may be empty) over the
    /// parameters `?1`, `?2`, … (a transaction sorted by SQLite restarts
    /// the scan after it under them).
    versions: (String, Vec<OwnedValue>),
    /// The sites read.
    sites: SiteFilter,
    /// The scan's start: rows of its transaction at or below its seq are
    /// not read.
    start: Position,
    max_rows: usize,
    /// The current transaction and its rows, sorted; `next` the next one.
    db_version: i64,
    rows: Vec<Cell>,
    next: usize,
    /// The current transaction merged from sorted runs instead of `rows`.
    spill: Option<Spill>,
    /// The current transaction read sorted by SQLite instead (no
    /// temporary file could be written).
    sorted: Option<RawStmt>,
    /// `Scan::stmt`'s current row is the next transaction's first, unread.
    ahead: bool,
    /// `Scan::stmt` is at its end.
    done: bool,
    /// The last transaction read: its version and the largest seq of all
    /// its clock rows in this table (before the start's seq and the site
    /// filter), or None when SQLite sorted it (`sort_in_sqlite`).
    read: Option<(i64, Option<i64>)>,
    unknown: Vec<Vec<u8>>,
    /// The current change.
    cell: Cell,
    clocks: ClockRows,
    keys: KeyRows,
}

/// A statement `… WHERE key >= ?1 ORDER BY key …`, read forward through a
/// table in key order: [`KeyCursor::move_to`] steps when the key asked for
/// is at most [`KEY_STEPS`] ahead and seeks otherwise.
#[derive(Default)]
struct KeyCursor {
    stmt: Option<RawStmt>,
    /// The key of the current row (None: not on a row).
    at: Option<i64>,
}

impl KeyCursor {
    /// Move to the first row whose key is `key` or more (`sql` prepares
    /// the statement on first use); true if it is `key`'s.
    fn move_to(&mut self, db: DbHandle, sql: &str, key: i64) -> Result<bool> {
        let stmt = prepared(db, &mut self.stmt, || sql)?;
        match self.at {
            // Already there (read past the previous key).
            Some(at) if at == key => {}
            // A little ahead: step to it.
            Some(at) if at < key && key - at <= KEY_STEPS => {
                while self.at.is_some_and(|k| k < key) {
                    self.at = next_key(stmt)?;
                }
            }
            _ => {
                stmt.reset();
                stmt.bind(1, ValueRef::Integer(key))?;
                self.at = next_key(stmt)?;
            }
        }
        Ok(self.at == Some(key))
    }
}

/// Step `stmt`; the key of the row it reaches (column 0), None at its end.
fn next_key(stmt: &mut RawStmt) -> Result<Option<i64>> {
    Ok(if stmt.step()? {
        Some(stmt.column_i64(0))
    } else {
        None
    })
}

/// `TableSql::clock_rows`: the clock rows of a run of keys of one version
/// (and their sentinels), read in key order through the primary key.
#[derive(Default)]
struct ClockRows {
    stmt: Option<RawStmt>,
}

/// A run of keys read by one [`ClockRows::read_keys`] holds at most this
/// many keys, each at most [`KEY_STEPS`] after the one before: SQLite
/// walks every row of the run's key range, so sparse keys are read one by
/// one.
const KEYS_PER_RUN: usize = 256;

impl ClockRows {
    /// Append the clock rows at `db_version` with a seq above `min_seq` of
    /// the keys from `lo` through `hi` to `rows`, in key and col_name order
    /// (the index's), each with its key's causal length. Returns the largest
    /// seq of every clock row of the keys at `db_version`, whatever the
    /// filters (`i64::MIN` without any).
    #[allow(clippy::too_many_arguments)]
    fn read_keys(
        &mut self,
        db: DbHandle,
        table: &TableInfo,
        db_version: i64,
        (lo, hi): (i64, i64),
        (min_seq, sites): (i64, &SiteFilter),
        rows: &mut Vec<Cell>,
        unknown: &mut Vec<Vec<u8>>,
    ) -> Result<i64> {
        let stmt = prepared(db, &mut self.stmt, || &table.sql.clock_rows)?;
        stmt.reset();
        for (i, v) in [lo, hi, db_version].into_iter().enumerate() {
            stmt.bind(i + 1, ValueRef::Integer(v))?;
        }
        // The current key, its first row in `rows` and its causal length.
        let (mut key, mut first, mut cl) = (None, rows.len(), 1);
        let mut top = i64::MIN;
        while stmt.step()? {
            let k = stmt.column_i64(0);
            if key != Some(k) {
                for c in &mut rows[first..] {
                    c.cl = cl;
                }
                (key, first, cl) = (Some(k), rows.len(), 1);
            }
            // Rows of other versions are sentinels (the statement's filter).
            if stmt.column_i64(5) != db_version {
                cl = stmt.column_i64(2);
                continue;
            }
            let name = stmt.column_text(1);
            if name == b"-1" {
                cl = stmt.column_i64(2);
            }
            let seq = stmt.column_i64(3);
            top = top.max(seq);
            let site = stmt.column_i64(4);
            if seq > min_seq && sites.admits(site) {
                rows.push(Cell {
                    seq,
                    key: k,
                    col_version: stmt.column_i64(2),
                    site,
                    cl: 1,
                    col: col_of(table, unknown, name),
                    order: rows.len() as u32,
                });
            }
        }
        for c in &mut rows[first..] {
            c.cl = cl;
        }
        stmt.reset();
        Ok(top)
    }
}

/// The sites whose changes `Cells` reads (by ordinal): every one of
/// `eq` and none of `ne` (`crsql_changes`' pushed-down `site_id`
/// constraints; both empty for a stream, whose site filter is its own).
#[derive(Default, Clone)]
pub struct SiteFilter {
    pub eq: Vec<i64>,
    pub ne: Vec<i64>,
}

impl SiteFilter {
    fn admits(&self, site: i64) -> bool {
        self.eq.iter().all(|&o| o == site) && !self.ne.contains(&site)
    }

    /// The filter as conditions on `c` (for a statement of `changes_select`'s shape).
    fn conditions(&self) -> impl Iterator<Item = String> + '_ {
        let eq = self.eq.iter().map(|o| format!("c.site_id = {o}"));
        eq.chain(self.ne.iter().map(|o| format!("c.site_id != {o}")))
    }
}

/// The column of a clock row's col_name: its index in `table.cols`,
/// [`SENTINEL_CELL`], or `-2 - i` for the name `unknown[i]` (added if new).
fn col_of(table: &TableInfo, unknown: &mut Vec<Vec<u8>>, name: &[u8]) -> i32 {
    if name == b"-1" {
        return SENTINEL_CELL;
    }
    if let Some(i) = table.cols.iter().position(|c| c.name.as_bytes() == name) {
        return i as i32;
    }
    let i = match unknown.iter().position(|n| n.as_slice() == name) {
        Some(i) => i,
        None => {
            unknown.push(name.to_vec());
            unknown.len() - 1
        }
    };
    -2 - i as i32
}

/// `TableSql::key_rows`, positioned on one key's row.
#[derive(Default)]
struct KeyRows {
    cursor: KeyCursor,
    /// The packed primary key of key `packed.0` (packed once per key).
    packed: Option<(i64, Vec<u8>)>,
}

impl KeyRows {
    /// Move to `key`'s row and pack its primary key; false if the pks
    /// table has none (the change is not read, as the changes statement's
    /// inner join leaves it out).
    fn seek(&mut self, db: DbHandle, table: &TableInfo, key: i64) -> Result<bool> {
        if self.packed.as_ref().is_some_and(|p| p.0 == key) && self.cursor.at == Some(key) {
            return Ok(true);
        }
        if !self.cursor.move_to(db, &table.sql.key_rows, key)? {
            return Ok(false);
        }
        let stmt = self
            .cursor
            .stmt
            .as_ref()
            .ok_or_else(|| err!("crsql_stream: key rows not prepared"))?;
        let pk = pack_key(stmt, K_PK0, table)?;
        self.packed = Some((key, pk));
        Ok(true)
    }
}

impl Cells {
    fn new(
        db: DbHandle,
        table: &Arc<TableInfo>,
        start: Position,
        versions: (String, Vec<OwnedValue>),
        sites: SiteFilter,
        max_rows: usize,
    ) -> Cells {
        Cells {
            db,
            table: Arc::clone(table),
            versions,
            sites,
            start,
            max_rows: max_rows.max(1),
            db_version: 0,
            rows: Vec::new(),
            next: 0,
            spill: None,
            sorted: None,
            ahead: false,
            done: false,
            read: None,
            unknown: Vec::new(),
            cell: Cell {
                seq: 0,
                key: 0,
                col_version: 0,
                site: 0,
                cl: 1,
                col: SENTINEL_CELL,
                order: 0,
            },
            clocks: ClockRows::default(),
            keys: KeyRows::default(),
        }
    }

    /// The row `TableSql::clock_tx_sorted` is on.
    fn read_sorted(&mut self, stmt: &RawStmt) -> Cell {
        Cell {
            key: stmt.column_i64(1),
            seq: stmt.column_i64(3),
            col_version: stmt.column_i64(4),
            site: stmt.column_i64(5),
            cl: stmt.column_i64(6),
            col: col_of(&self.table, &mut self.unknown, stmt.column_text(2)),
            order: 0,
        }
    }

    /// The next change in position order whose key has a row in the pks
    /// table, with `keys` on that row; None at the end.
    fn next(&mut self, main: &mut RawStmt) -> Result<Option<(i64, i64)>> {
        loop {
            let cell = if let Some(mut sorted) = self.sorted.take() {
                if !sorted.step()? {
                    continue;
                }
                let cell = self.read_sorted(&sorted);
                self.sorted = Some(sorted);
                if !self.sites.admits(cell.site) {
                    continue;
                }
                cell
            } else if let Some(spill) = &mut self.spill {
                match spill.pop().map_err(|e| self.spill_error(e))? {
                    Some(cell) => cell,
                    None => {
                        self.spill = None;
                        continue;
                    }
                }
            } else if let Some(&cell) = self.rows.get(self.next) {
                self.next += 1;
                cell
            } else if self.fill(main)? {
                continue;
            } else {
                return Ok(None);
            };
            if self.keys.seek(self.db, &self.table, cell.key)? {
                self.cell = cell;
                return Ok(Some((self.db_version, cell.seq)));
            }
        }
    }

    /// Read the next transaction; false at the end.
    fn fill(&mut self, main: &mut RawStmt) -> Result<bool> {
        self.rows.clear();
        self.next = 0;
        if !self.ahead && (self.done || !main.step()?) {
            self.done = true;
            return Ok(false);
        }
        self.ahead = false;
        let dv = main.column_i64(0);
        self.db_version = dv;
        self.read = Some((dv, None));
        let mut top = i64::MIN;
        let min_seq = if dv == self.start.db_version {
            self.start.seq
        } else {
            i64::MIN
        };
        loop {
            // A run of keys: the main scan's current one and the next ones
            // of the version, each at most KEY_STEPS after the one before.
            let (lo, mut hi, mut n) = (main.column_i64(1), main.column_i64(1), 1);
            let more = loop {
                if !main.step()? {
                    self.done = true;
                    break false;
                }
                if main.column_i64(0) != dv {
                    self.ahead = true;
                    break false;
                }
                let key = main.column_i64(1);
                if key - hi > KEY_STEPS || n == KEYS_PER_RUN {
                    break true;
                }
                (hi, n) = (key, n + 1);
            };
            let (table, rows, unknown) = (&self.table, &mut self.rows, &mut self.unknown);
            top = top.max(self.clocks.read_keys(
                self.db,
                table,
                dv,
                (lo, hi),
                (min_seq, &self.sites),
                rows,
                unknown,
            )?);
            if !more {
                break;
            }
            // The first run is written past `max_rows` (a stream's
            // window), later ones past the in-memory cap: a transaction of
            // n rows leaves at most n / cap + 1 runs to merge, each with a
            // read buffer, whatever the window (a window of 1,024 rows
            // would otherwise keep every run whole in memory).
            let run_rows = if self.spill.is_some() {
                self.max_rows.max(CELLS_SORTED_IN_MEMORY)
            } else {
                self.max_rows
            };
            if self.rows.len() >= run_rows && !self.write_run() {
                return self.sort_in_sqlite(main);
            }
        }
        if let Some(spill) = &mut self.spill {
            let rows = std::mem::take(&mut self.rows);
            spill.finish(rows).map_err(|e| self.spill_error(e))?;
        } else {
            self.rows.sort_unstable_by_key(|c| (c.seq, c.order));
        }
        self.read = Some((dv, Some(top)));
        Ok(true)
    }

    /// Write the rows read so far as a sorted run (nothing of the
    /// transaction has been returned yet); false if the temporary file
    /// cannot be written (the transaction is then sorted by SQLite).
    fn write_run(&mut self) -> bool {
        let spill = match self.spill.take() {
            Some(s) => Ok(s),
            None => Spill::new(),
        };
        match spill.and_then(|mut s| s.write_run(&mut self.rows).map(|()| s)) {
            Ok(s) => {
                self.spill = Some(s);
                true
            }
            Err(_) => false,
        }
    }

    /// An error reading back the runs of a transaction.
    fn spill_error(&self, e: std::io::Error) -> Error {
        err!(
            "crsql_stream: cannot read back the temporary file sorting version {} of {}: {e} \
             (a transaction of more than {} rows is sorted there; check the space in the \
             temporary directory, TMPDIR)",
            self.db_version,
            self.table.name,
            self.max_rows
        )
    }

    /// The current transaction is too large to sort here: read it sorted
    /// by SQLite, and the scan again from the next version.
    fn sort_in_sqlite(&mut self, main: &mut RawStmt) -> Result<bool> {
        // Give the buffer back (it may have grown past the cap by one key's
        // rows, to twice its size).
        self.rows = Vec::new();
        let dv = self.db_version;
        let after = if dv == self.start.db_version {
            self.start.seq
        } else {
            i64::MIN
        };
        self.sorted = Some(bind_all(
            RawStmt::prepare(self.db, &self.table.sql.clock_tx_sorted)?,
            &[ValueRef::Integer(dv), ValueRef::Integer(after)],
        )?);
        let (conditions, binds) = &self.versions;
        let mut binds: Vec<ValueRef<'_>> = binds.iter().map(ValueRef::from).collect();
        binds.push(ValueRef::Integer(dv));
        let after = format!("c.db_version > ?{}", binds.len());
        let where_sql = if conditions.is_empty() {
            format!(" WHERE {after}")
        } else {
            format!(" WHERE {conditions} AND {after}")
        };
        *main = prepare_scan(
            self.db,
            &self.table.sql.clock_scan,
            &where_sql,
            CELLS_ORDER,
            &binds,
        )?;
        self.ahead = false;
        self.done = false;
        Ok(true)
    }
}

/// `TableSql::clock_scan`'s order: the index's (which groups versions).
const CELLS_ORDER: &str = "c.db_version, c.key";

/// `conditions` joined by AND as a WHERE clause (empty without any).
fn where_clause(conditions: &[String]) -> String {
    if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    }
}

/// `select` with `where_sql` (on `c`, may be empty) and `ORDER BY order`,
/// `binds` bound as ?1, ?2, …
fn prepare_scan(
    db: DbHandle,
    select: &str,
    where_sql: &str,
    order: &str,
    binds: &[ValueRef<'_>],
) -> Result<RawStmt> {
    let sql = format!("{select}{where_sql} ORDER BY {order}");
    bind_all(RawStmt::prepare(db, &sql)?, binds)
}

/// Bind `binds` as ?1, ?2, …
fn bind_all(mut stmt: RawStmt, binds: &[ValueRef<'_>]) -> Result<RawStmt> {
    for (i, b) in binds.iter().enumerate() {
        stmt.bind(i + 1, *b)?;
    }
    Ok(stmt)
}

struct Scan {
    /// The table of the current row.
    table: Arc<TableInfo>,
    /// Rows of the first transaction from a memo; `stmt` continues after it.
    memo: Option<MemoRead>,
    stmt: RawStmt,
    /// Set for the scan of compacted deletes (`crsql_tombstones`), whose
    /// rows belong to several tables: the tables read, by name.
    records: Option<HashMap<String, Arc<TableInfo>>>,
    /// Rows of `stmt` at or before this position are skipped (a compact
    /// table's run straddling a stream's start, `crr::compact`).
    after: Option<(i64, i64)>,
    /// The position of `stmt`'s last row: positions must increase.
    last: (i64, i64),
    /// Set for a compact table's runs scan: the current row's clocks.
    run: Option<RunClocks>,
    /// Set for a cr-sqlite layout table read by transaction: `stmt` reads
    /// its clock rows narrow.
    cells: Option<Box<Cells>>,
}

impl Scan {
    fn new(table: &Arc<TableInfo>, memo: Option<MemoRead>, stmt: RawStmt) -> Scan {
        Scan {
            table: Arc::clone(table),
            memo,
            stmt,
            records: None,
            after: None,
            last: (i64::MIN, i64::MIN),
            run: None,
            cells: None,
        }
    }

    /// A scan of `t`'s `k`-th statement ([`selects`]): a compact table's
    /// first one reads its runs.
    fn of_select(t: &Arc<TableInfo>, k: usize, memo: Option<MemoRead>, stmt: RawStmt) -> Scan {
        let mut scan = Scan::new(t, memo, stmt);
        if k == 0 && t.compact.is_some() {
            scan.run = Some(RunClocks::default());
        }
        scan
    }

    /// Never silently out of order (a compact table's runs are ordered by
    /// an argument, docs/compact-layout.md; [`Cells`] sorts in Rust).
    fn check_order(&mut self, pos: (i64, i64)) -> Result<()> {
        if pos < self.last {
            return Err(err!(
                "crsql_stream: the changes of {} came out of position order ({:?} after {:?})",
                self.table.name,
                pos,
                self.last
            ));
        }
        self.last = pos;
        Ok(())
    }

    /// The position of the next clock of `stmt`, None at its end.
    fn next_position(&mut self) -> Result<Option<(i64, i64)>> {
        let Some(run) = &mut self.run else {
            if !self.stmt.step()? {
                return Ok(None);
            }
            return Ok(Some((
                self.stmt.column_i64(S_DB_VERSION),
                self.stmt.column_i64(S_SEQ),
            )));
        };
        while !run.advance(self.table.cols.len()) {
            if !self.stmt.step()? {
                return Ok(None);
            }
            let last = self.stmt.column_i64(S_SEQ);
            run.load(self.stmt.column(S_RUN_VERS), last, &self.table.name)?;
        }
        Ok(Some((self.stmt.column_i64(S_DB_VERSION), run.seq())))
    }
}

/// A scan's condition for the changes after `[?1, ?2]` through version ?3.
const AFTER_START: &str =
    " WHERE c.db_version >= ?1 AND (c.db_version > ?1 OR c.seq > ?2) AND c.db_version <= ?3";

/// The statements of a table's changes: `changes_select`, then
/// `extra_selects` (`crr::compact`).
fn selects(t: &TableInfo) -> impl Iterator<Item = &String> {
    std::iter::once(&t.sql.changes_select).chain(&t.sql.extra_selects)
}

impl Scan {
    /// The statement the current row comes from.
    fn current(&self) -> &RawStmt {
        match (&self.memo, &self.cells) {
            (Some(m), _) => &m.lookup,
            (None, Some(c)) => c.keys.cursor.stmt.as_ref().unwrap_or(&self.stmt),
            (None, None) => &self.stmt,
        }
    }
}

/// A merged, position-ordered scan over several CRRs.
pub struct Scanner {
    scans: Vec<Scan>,
    heap: BinaryHeap<Reverse<(i64, i64, usize)>>,
    /// The last version read by [`Scanner::open_after`] (`committed`).
    through: Option<i64>,
}

/// The current row of a [`Scanner`].
pub struct RowView<'a> {
    pub table: &'a Arc<TableInfo>,
    stmt: &'a RawStmt,
    /// The row is a compacted delete: its key is stored packed.
    record: bool,
    /// The row is a clock of a compact table's run.
    run: Option<&'a RunClocks>,
    /// The row is a change read by [`Cells`]: `stmt` is its key's row.
    cells: Option<&'a Cells>,
}

/// The first primary-key column of `TableSql::key_rows`.
const K_PK0: usize = 1;

impl RowView<'_> {
    pub fn cid(&self) -> ValueRef<'_> {
        if let Some(c) = self.cells {
            return match c.cell.col {
                SENTINEL_CELL => ValueRef::Text(b"-1"),
                i if i >= 0 => ValueRef::Text(self.table.cols[i as usize].name.as_bytes()),
                i => ValueRef::Text(&c.unknown[(-2 - i) as usize]),
            };
        }
        match self.run.map(RunClocks::column) {
            None => self.stmt.column(S_CID),
            Some(None) => ValueRef::Text(b"-1"),
            Some(Some(i)) => ValueRef::Text(self.table.cols[i].name.as_bytes()),
        }
    }
    /// The change's column as a package numbers it (0 the sentinel, 1 + the
    /// column's index) when the scan knows it without reading the name.
    pub fn cid_index(&self) -> Option<u32> {
        match (self.cells, self.run.map(RunClocks::column)) {
            (Some(c), _) if c.cell.col >= SENTINEL_CELL => Some((c.cell.col + 1) as u32),
            (None, Some(None)) => Some(0),
            (None, Some(Some(i))) => Some(i as u32 + 1),
            _ => None,
        }
    }
    pub fn val(&self) -> ValueRef<'_> {
        if let Some(c) = self.cells {
            return match usize::try_from(c.cell.col) {
                Ok(i) => self.stmt.column(K_PK0 + self.table.pks.len() + i),
                Err(_) => ValueRef::Null,
            };
        }
        match self.run.map(RunClocks::column) {
            None => self.stmt.column(S_VAL),
            Some(None) => ValueRef::Null,
            Some(Some(i)) => self.stmt.column(S_PK0 + self.table.pks.len() + i),
        }
    }
    pub fn col_version(&self) -> i64 {
        if let Some(c) = self.cells {
            return c.cell.col_version;
        }
        match self.run {
            None => self.stmt.column_i64(S_COL_VERSION),
            Some(r) => match r.column() {
                None => self.cl(),
                Some(_) => r.member().col_version,
            },
        }
    }
    pub fn db_version(&self) -> i64 {
        match self.cells {
            Some(c) => c.db_version,
            None => self.stmt.column_i64(S_DB_VERSION),
        }
    }
    pub fn site_ordinal(&self) -> i64 {
        match self.cells {
            Some(c) => c.cell.site,
            None => self.stmt.column_i64(S_SITE),
        }
    }
    pub fn seq(&self) -> i64 {
        if let Some(c) = self.cells {
            return c.cell.seq;
        }
        let last = self.stmt.column_i64(S_SEQ);
        self.run.map_or(last, RunClocks::seq)
    }
    pub fn cl(&self) -> i64 {
        match self.cells {
            Some(c) => c.cell.cl,
            None => self.stmt.column_i64(S_CL),
        }
    }
    pub fn position(&self) -> Position {
        Position::new(self.db_version(), self.seq())
    }
    /// The primary key in cr-sqlite's packed format.
    pub fn pk(&self) -> Result<Vec<u8>> {
        if self.record {
            return match self.stmt.column(S_PK0) {
                ValueRef::Blob(b) => Ok(b.to_vec()),
                _ => Err(err!(
                    "crsql_stream: a crsql_tombstones record of {} has no packed key",
                    self.table.name
                )),
            };
        }
        match self.cells.and_then(|c| c.keys.packed.as_ref()) {
            Some((_, pk)) => Ok(pk.clone()),
            None => pack_key(self.stmt, S_PK0, self.table),
        }
    }
}

/// The primary key of `table` from the columns of `stmt` from `first` on,
/// in cr-sqlite's packed format.
fn pack_key(stmt: &RawStmt, first: usize, table: &TableInfo) -> Result<Vec<u8>> {
    let n = table.pks.len();
    pack_columns((first..first + n).map(|i| to_core(stmt.column(i)))).map_err(|source| {
        Error::Pack {
            context: format!(
                "crsql_stream: cannot pack the primary key of a row of {}",
                table.name
            ),
            source,
        }
    })
}

impl Scanner {
    /// Open one scan per table for `crsql_changes`: the changes whose
    /// db_version meets `versions` (conditions on `c`, may be empty, over
    /// `binds` as ?1, ?2, …) and whose site `sites` admits, and position on
    /// the first row. A cr-sqlite layout CRR is read by transaction
    /// (`Cells`), the others by their statements.
    pub fn open(
        db: DbHandle,
        tables: &[Arc<TableInfo>],
        versions: &str,
        binds: &[ValueRef<'_>],
        sites: &SiteFilter,
    ) -> Result<Scanner> {
        let mut conditions: Vec<String> = Vec::new();
        if !versions.is_empty() {
            conditions.push(versions.to_string());
        }
        let version_where = where_clause(&conditions);
        conditions.extend(sites.conditions());
        let all_where = where_clause(&conditions);
        let mut s = Scanner::with_capacity(tables.len());
        for t in tables {
            for (k, select) in selects(t).enumerate() {
                if k == 0 && t.compact.is_none() {
                    let stmt =
                        prepare_scan(db, &t.sql.clock_scan, &version_where, CELLS_ORDER, binds)?;
                    let mut scan = Scan::new(t, None, stmt);
                    let owned = (
                        versions.to_string(),
                        binds.iter().map(|b| OwnedValue::from(*b)).collect(),
                    );
                    let start = Position::new(i64::MIN, i64::MIN);
                    let cells =
                        Cells::new(db, t, start, owned, sites.clone(), CELLS_SORTED_IN_MEMORY);
                    scan.cells = Some(Box::new(cells));
                    s.scans.push(scan);
                    continue;
                }
                let stmt = Scanner::prepare(db, select, &all_where, binds)?;
                s.scans.push(Scan::of_select(t, k, None, stmt));
            }
        }
        s.start()?;
        Ok(s)
    }

    /// The committed changes after `start`, up to db_version `committed`, in
    /// position order. Where `start`'s transaction has more than
    /// `memo_above` rows in a table, the rest of it is read through
    /// [`TxMemo`] windows of at most `window` rows.
    pub fn open_after(
        db: DbHandle,
        tables: &[Arc<TableInfo>],
        start: Position,
        committed: i64,
        memo_above: usize,
        window: usize,
        memos: &mut MemoStore,
    ) -> Result<Scanner> {
        let dv = start.db_version;
        let mut s = Scanner::with_capacity(tables.len());
        for t in tables {
            let memo = match memos.find(t, dv, start.seq) {
                Some(m) => Some(m),
                None if dv > 0 && dv <= committed => {
                    let mut count = RawStmt::prepare(db, &t.sql.tx_size)?;
                    count.bind(1, ValueRef::Integer(dv))?;
                    count.step()?;
                    if count.column_i64(0) > memo_above as i64 {
                        Some(memos.build(db, t, dv, start.seq, window)?)
                    } else {
                        None
                    }
                }
                None => None,
            };
            let memo = match memo {
                Some(memo) => Some(MemoRead {
                    db,
                    next: memo.rows.partition_point(|r| r.0 <= start.seq),
                    memo,
                    window,
                    lookup: RawStmt::prepare(db, &t.sql.change_at)?,
                }),
                None => None,
            };
            let binds = [
                ValueRef::Integer(dv),
                ValueRef::Integer(start.seq),
                ValueRef::Integer(committed),
            ];
            // After a memo, the scan starts at the next version: its index
            // range must not include the memo's version at all.
            let where_sql = if memo.is_some() {
                " WHERE c.db_version > ?1 AND c.db_version <= ?3"
            } else {
                AFTER_START
            };
            let mut scan = if t.compact.is_none() {
                // The start's seq is applied by `Cells`: the index has none.
                let where_sql = if memo.is_some() {
                    where_sql
                } else {
                    " WHERE c.db_version >= ?1 AND c.db_version <= ?3"
                };
                let stmt = prepare_scan(db, &t.sql.clock_scan, where_sql, CELLS_ORDER, &binds)?;
                let mut scan = Scan::new(t, memo, stmt);
                let max_rows = window.min(CELLS_SORTED_IN_MEMORY);
                let versions = (
                    "c.db_version <= ?1".to_string(),
                    vec![OwnedValue::Integer(committed)],
                );
                let cells = Cells::new(db, t, start, versions, SiteFilter::default(), max_rows);
                scan.cells = Some(Box::new(cells));
                scan
            } else {
                let stmt = Scanner::prepare(db, &t.sql.changes_select, where_sql, &binds)?;
                Scan::of_select(t, 0, memo, stmt)
            };
            scan.after = Some((dv, start.seq));
            s.scans.push(scan);
            for (k, select) in t.sql.extra_selects.iter().enumerate() {
                let stmt = Scanner::prepare(db, select, AFTER_START, &binds)?;
                let mut scan = Scan::of_select(t, k + 1, None, stmt);
                scan.after = Some((dv, start.seq));
                s.scans.push(scan);
            }
        }
        s.through = Some(committed);
        s.start()?;
        Ok(s)
    }

    /// The largest seq of the clock rows at version `v` in the tables read
    /// (`i64::MIN` when none is there), once this scanner has read them
    /// all: it was opened by [`Scanner::open_after`] through `v`, after a
    /// start before `v`, is at its end, and read every table by
    /// transaction (`Cells`: the cr-sqlite layout, no compacted records),
    /// not sorted by SQLite at `v`. None otherwise. Rows the scan does not
    /// return (of keys without a pks row, of sites filtered out, at or
    /// before the start) count too.
    pub fn max_seq_at(&self, v: i64) -> Option<i64> {
        if self.through != Some(v) || !self.heap.is_empty() {
            return None;
        }
        let mut top = i64::MIN;
        for s in &self.scans {
            let c = s.cells.as_deref().filter(|_| s.records.is_none())?;
            if c.start.db_version >= v {
                return None;
            }
            match c.read {
                Some((dv, Some(m))) if dv == v => top = top.max(m),
                Some((dv, _)) if dv == v => return None,
                // The scan ended before `v`: no row there.
                _ => {}
            }
        }
        Some(top)
    }

    /// Also read the compacted deletes (`crsql_tombstones` records) of
    /// `tables` at positions in `(after, through]`, each at the position of
    /// its delete, as the sentinel change the delete was.
    pub fn add_records(
        &mut self,
        db: DbHandle,
        tables: &[Arc<TableInfo>],
        after: Position,
        through: Position,
    ) -> Result<()> {
        let Some(first) = tables.first() else {
            return Ok(());
        };
        let sql = "SELECT '-1', r.cl, r.db_version, r.site_id, r.seq, r.cl, NULL, r.pk, r.tbl \
                   FROM crsql_tombstones AS r \
                   WHERE (r.db_version > ?1 OR (r.db_version = ?1 AND r.seq > ?2)) \
                   AND (r.db_version < ?3 OR (r.db_version = ?3 AND r.seq <= ?4)) \
                   ORDER BY r.db_version, r.seq";
        let mut stmt = RawStmt::prepare(db, sql)?;
        for (i, v) in [after.db_version, after.seq, through.db_version, through.seq]
            .into_iter()
            .enumerate()
        {
            stmt.bind(i + 1, ValueRef::Integer(v))?;
        }
        let mut scan = Scan::new(first, None, stmt);
        scan.records = Some(
            tables
                .iter()
                .map(|t| (t.name.clone(), Arc::clone(t)))
                .collect(),
        );
        self.scans.push(scan);
        self.step(self.scans.len() - 1)
    }

    fn with_capacity(n: usize) -> Scanner {
        Scanner {
            scans: Vec::with_capacity(n),
            heap: BinaryHeap::with_capacity(n),
            through: None,
        }
    }

    fn prepare(
        db: DbHandle,
        select: &str,
        where_sql: &str,
        binds: &[ValueRef<'_>],
    ) -> Result<RawStmt> {
        prepare_scan(db, select, where_sql, "c.db_version, c.seq", binds)
    }

    /// Position every scan on its first row.
    fn start(&mut self) -> Result<()> {
        for i in 0..self.scans.len() {
            self.step(i)?;
        }
        Ok(())
    }

    /// An empty scanner (no rows).
    pub fn empty() -> Scanner {
        Scanner {
            scans: Vec::new(),
            heap: BinaryHeap::new(),
            through: None,
        }
    }

    fn step(&mut self, i: usize) -> Result<()> {
        let s = &mut self.scans[i];
        while let Some(m) = &mut s.memo {
            let Some(&(seq, key, name)) = m.memo.rows.get(m.next) else {
                match m.memo.rows.last() {
                    Some(&(last, _, _)) if !m.memo.complete => {
                        let next = TxMemo::read(m.db, &s.table, m.memo.db_version, last, m.window)?;
                        m.memo = Arc::new(next);
                        m.next = 0;
                        continue;
                    }
                    _ => {
                        s.memo = None;
                        break;
                    }
                }
            };
            m.next += 1;
            let lookup = &mut m.lookup;
            lookup.reset();
            lookup.bind(1, ValueRef::Integer(key))?;
            lookup.bind(2, ValueRef::Text(m.memo.names[name as usize].as_bytes()))?;
            lookup.bind(3, ValueRef::Integer(m.memo.db_version))?;
            lookup.bind(4, ValueRef::Integer(seq))?;
            if lookup.step()? {
                self.heap.push(Reverse((m.memo.db_version, seq, i)));
                return Ok(());
            }
        }
        while let Some(by_name) = &s.records {
            if !s.stmt.step()? {
                return Ok(());
            }
            // Records of tables this scan does not read are skipped.
            let tbl = match s.stmt.column(S_TBL) {
                ValueRef::Text(t) => std::str::from_utf8(t).unwrap_or_default(),
                _ => "",
            };
            if let Some(t) = by_name.get(tbl) {
                s.table = Arc::clone(t);
                self.heap.push(Reverse((
                    s.stmt.column_i64(S_DB_VERSION),
                    s.stmt.column_i64(S_SEQ),
                    i,
                )));
                return Ok(());
            }
        }
        if let Some(cells) = &mut s.cells {
            if let Some(pos) = cells.next(&mut s.stmt)? {
                s.check_order(pos)?;
                self.heap.push(Reverse((pos.0, pos.1, i)));
            }
            return Ok(());
        }
        while let Some(pos) = s.next_position()? {
            if s.after.is_some_and(|a| pos <= a) {
                continue;
            }
            s.check_order(pos)?;
            self.heap.push(Reverse((pos.0, pos.1, i)));
            return Ok(());
        }
        Ok(())
    }

    pub fn peek(&self) -> Option<RowView<'_>> {
        self.heap.peek().map(|Reverse((_, _, i))| {
            let s = &self.scans[*i];
            RowView {
                table: &s.table,
                stmt: s.current(),
                record: s.records.is_some(),
                run: s.run.as_ref().filter(|_| s.memo.is_none()),
                cells: s.cells.as_deref().filter(|_| s.memo.is_none()),
            }
        })
    }

    /// Position of the current row without borrowing it.
    pub fn peek_position(&self) -> Option<Position> {
        self.heap
            .peek()
            .map(|Reverse((d, s, _))| Position::new(*d, *s))
    }

    pub fn advance(&mut self) -> Result<()> {
        if let Some(Reverse((_, _, i))) = self.heap.pop() {
            self.step(i)?;
        }
        Ok(())
    }

    pub fn is_done(&self) -> bool {
        self.heap.is_empty()
    }
}
