//! Reading change rows in position order without materialising them.
//!
//! Each CRR contributes one statement ordered by `(db_version, seq)` through
//! its `db_version` index; a binary heap merges the per-table scans. Memory is
//! one row per table; `LIMIT n` touches O(n) rows per table.

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
use crate::sqlite::{DbHandle, RawStmt};
use crate::state::Inner;

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

    /// Read the window after `start` and keep it (unless empty), dropping
    /// the least recently used one if the store is full.
    fn build(
        &mut self,
        db: DbHandle,
        table: &Arc<TableInfo>,
        db_version: i64,
        start: i64,
        window: usize,
    ) -> Result<Arc<TxMemo>> {
        let memo = Arc::new(TxMemo::read(db, table, db_version, start, window)?);
        // An empty window (the start was the end of the transaction) serves
        // nobody else: it does not push a useful one out.
        if !memo.rows.is_empty() {
            if self.memos.len() >= MEMOS_KEPT {
                self.memos.pop_front();
            }
            self.memos.push_back(Arc::clone(&memo));
        }
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
        match &self.memo {
            Some(m) => &m.lookup,
            None => &self.stmt,
        }
    }
}

/// A merged, position-ordered scan over several CRRs.
pub struct Scanner {
    scans: Vec<Scan>,
    heap: BinaryHeap<Reverse<(i64, i64, usize)>>,
}

/// The current row of a [`Scanner`].
pub struct RowView<'a> {
    pub table: &'a Arc<TableInfo>,
    stmt: &'a RawStmt,
    /// The row is a compacted delete: its key is stored packed.
    record: bool,
    /// The row is a clock of a compact table's run.
    run: Option<&'a RunClocks>,
}

impl RowView<'_> {
    pub fn cid(&self) -> ValueRef<'_> {
        match self.run.map(RunClocks::column) {
            None => self.stmt.column(S_CID),
            Some(None) => ValueRef::Text(b"-1"),
            Some(Some(i)) => ValueRef::Text(self.table.cols[i].name.as_bytes()),
        }
    }
    pub fn val(&self) -> ValueRef<'_> {
        match self.run.map(RunClocks::column) {
            None => self.stmt.column(S_VAL),
            Some(None) => ValueRef::Null,
            Some(Some(i)) => self.stmt.column(S_PK0 + self.table.pks.len() + i),
        }
    }
    pub fn col_version(&self) -> i64 {
        match self.run {
            None => self.stmt.column_i64(S_COL_VERSION),
            Some(r) => match r.column() {
                None => self.cl(),
                Some(_) => r.member().col_version,
            },
        }
    }
    pub fn db_version(&self) -> i64 {
        self.stmt.column_i64(S_DB_VERSION)
    }
    pub fn site_ordinal(&self) -> i64 {
        self.stmt.column_i64(S_SITE)
    }
    pub fn seq(&self) -> i64 {
        let last = self.stmt.column_i64(S_SEQ);
        self.run.map_or(last, RunClocks::seq)
    }
    pub fn cl(&self) -> i64 {
        self.stmt.column_i64(S_CL)
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
        let n = self.table.pks.len();
        pack_columns((S_PK0..S_PK0 + n).map(|i| to_core(self.stmt.column(i)))).map_err(|source| {
            Error::Pack {
                context: format!(
                    "crsql_stream: cannot pack the primary key of a row of {}",
                    self.table.name
                ),
                source,
            }
        })
    }
}

impl Scanner {
    /// Open one scan per table with `where_sql` (may be empty, else starts
    /// with " WHERE ") and its parameters, and position on the first row.
    pub fn open(
        db: DbHandle,
        tables: &[Arc<TableInfo>],
        where_sql: &str,
        binds: &[ValueRef<'_>],
    ) -> Result<Scanner> {
        let mut s = Scanner::with_capacity(tables.len());
        for t in tables {
            for (k, select) in selects(t).enumerate() {
                let stmt = Scanner::prepare(db, select, where_sql, binds)?;
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
            let stmt = Scanner::prepare(db, &t.sql.changes_select, where_sql, &binds)?;
            let mut scan = Scan::of_select(t, 0, memo, stmt);
            scan.after = Some((dv, start.seq));
            s.scans.push(scan);
            for (k, select) in t.sql.extra_selects.iter().enumerate() {
                let stmt = Scanner::prepare(db, select, AFTER_START, &binds)?;
                let mut scan = Scan::of_select(t, k + 1, None, stmt);
                scan.after = Some((dv, start.seq));
                s.scans.push(scan);
            }
        }
        s.start()?;
        Ok(s)
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
        }
    }

    fn prepare(
        db: DbHandle,
        select: &str,
        where_sql: &str,
        binds: &[ValueRef<'_>],
    ) -> Result<RawStmt> {
        let sql = format!("{select}{where_sql} ORDER BY c.db_version, c.seq");
        let mut stmt = RawStmt::prepare(db, &sql)?;
        for (i, b) in binds.iter().enumerate() {
            stmt.bind(i + 1, *b)?;
        }
        Ok(stmt)
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
        while let Some(pos) = s.next_position()? {
            if s.after.is_some_and(|a| pos <= a) {
                continue;
            }
            // Never silently out of order (a compact table's runs are
            // ordered by an argument, docs/compact-layout.md).
            if pos < s.last {
                return Err(err!(
                    "crsql_stream: the changes of {} came out of position order ({:?} after {:?})",
                    s.table.name,
                    pos,
                    s.last
                ));
            }
            s.last = pos;
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
