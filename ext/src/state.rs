//! Per-connection state: identity, clocks and the cached table metadata.
//!
//! Counters that the commit/rollback hooks reset are atomics in
//! [`TxCounters`], so the hooks never need a lock. Everything else sits behind
//! one mutex, taken with `try_lock` so that a re-entrant call (a user trigger
//! calling back into the extension during a merge) is an error, not a
//! deadlock.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use crsql_stream_core::merge::MAX_CLOCK;
use crsql_stream_core::Position;
use rusqlite::{Connection, OptionalExtension};

use crate::crr::schema::{self, quote_ident, TableInfo, CLOCK_SUFFIX};
use crate::err;
use crate::error::Result;
use crate::sqlite::DbHandle;

/// Per-transaction counters, reset by the commit and rollback hooks.
#[derive(Debug)]
pub struct TxCounters {
    db: DbHandle,
    /// The version this transaction writes at; -1 when none was taken yet.
    pub pending: AtomicI64,
    /// Next seq to hand out in this transaction.
    pub seq: AtomicI64,
    /// Cached committed db_version; -1 means "read it from disk".
    pub db_version: AtomicI64,
    /// Whether the table metadata was checked against the schema in this tx.
    pub schema_checked: AtomicBool,
    /// Whether the extension changed the schema in this transaction (its own
    /// DDL: `crsql_as_crr`, the first `crsql_compact`, …). A `ROLLBACK TO`
    /// can undo that DDL and fires no hook, so until the transaction ends
    /// the schema is re-checked at every use instead of once.
    pub own_ddl: AtomicBool,
    /// `crr::counts`' `U` as read in this transaction (it moves only at a
    /// COMMIT); -1 when not read yet.
    pub counted_through: AtomicI64,
    /// `U` before this transaction's first COMMIT attempt counted it (a
    /// COMMIT can fail, SQLITE_BUSY, and the transaction go on); -1 before.
    pub sync_base: AtomicI64,
    /// Whether every clock row this transaction wrote is the local site's
    /// (no merge, no site move): its COMMIT may then count them from the
    /// `db_version` index alone (`crr::counts`). Cleared conservatively.
    pub local_only: AtomicBool,
    /// Which transaction this is: bumped at its end, so per-table records
    /// of one transaction (`crr::compact::FastInserts`) know when they are
    /// stale.
    pub epoch: AtomicI64,
    /// Calls into the extension that may write (every SQL function but a
    /// few that only read, the extension's own DDL): the row-by-row
    /// merge's memo (`crr::merge::RowMemo`) is dropped when it moved.
    pub calls: AtomicI64,
    /// `ROLLBACK TO` (and statement rollbacks) seen by `crsql_changes`
    /// (its xRollbackTo): the row-by-row merge's memo is dropped when it
    /// moved.
    pub rollbacks: AtomicI64,
}

impl TxCounters {
    fn new(db: DbHandle) -> TxCounters {
        TxCounters {
            db,
            pending: AtomicI64::new(-1),
            seq: AtomicI64::new(0),
            db_version: AtomicI64::new(-1),
            schema_checked: AtomicBool::new(false),
            own_ddl: AtomicBool::new(false),
            counted_through: AtomicI64::new(-1),
            sync_base: AtomicI64::new(-1),
            local_only: AtomicBool::new(true),
            epoch: AtomicI64::new(0),
            calls: AtomicI64::new(0),
            rollbacks: AtomicI64::new(0),
        }
    }

    /// Called from the commit and rollback hooks. The committed db_version
    /// is re-read from disk afterwards, so a version whose writes were rolled
    /// back to a savepoint is never reported.
    pub fn end_transaction(&self) {
        self.pending.store(-1, Relaxed);
        self.seq.store(0, Relaxed);
        self.db_version.store(-1, Relaxed);
        self.schema_checked.store(false, Relaxed);
        self.own_ddl.store(false, Relaxed);
        self.counted_through.store(-1, Relaxed);
        self.sync_base.store(-1, Relaxed);
        self.local_only.store(true, Relaxed);
        self.epoch.fetch_add(1, Relaxed);
    }

    /// The version this transaction writes at, or -1 when it has not
    /// written CRR changes. A version taken while no write transaction was
    /// open (a statement that then failed before SQLite began writing, e.g.
    /// refused by `PRAGMA query_only`) ends with no commit or rollback hook:
    /// it is recognised here and forgotten, so it can neither be reused by a
    /// later transaction nor make the connection look like it is writing.
    pub fn pending(&self) -> i64 {
        let p = self.pending.load(Relaxed);
        if p >= 0 && !self.db.writing() {
            self.end_transaction();
            return -1;
        }
        p
    }

    /// Take the next seq of this transaction.
    pub fn take_seq(&self) -> i64 {
        self.seq.fetch_add(1, Relaxed)
    }

    /// Take `n` consecutive seqs and return the first.
    pub fn take_seqs(&self, n: i64) -> i64 {
        self.seq.fetch_add(n, Relaxed)
    }
}

/// Everything the extension keeps for one connection.
pub struct Ext {
    pub db: DbHandle,
    pub tx: Arc<TxCounters>,
    pub sync_bit: AtomicI64,
    /// This database's site id (also held by [`Inner`], which re-reads it
    /// when another connection commits, e.g. `crsql_new_site_id()`).
    site: Arc<Mutex<[u8; 16]>>,
    pub merge_equal_values: AtomicBool,
    pub rows_impacted: AtomicI64,
    /// `last_retrieved` of each outbound stream (per connection, not durable).
    retrieved: Mutex<HashMap<String, Position>>,
    /// Set while the inbound stream merges a package
    /// (`crate::streams::batch`).
    merge_batch: Mutex<Option<crate::streams::batch::MergeBatch>>,
    /// Seq order of the large transactions outbound streams are reading.
    pub memos: Mutex<crate::crr::scan::MemoStore>,
    /// Seqs of versions streams are acknowledged inside of (`lag_changes`).
    pub seqs: Mutex<crate::crr::counts::SeqCache>,
    inner: Mutex<Inner>,
}

/// The part of the state used under the lock.
pub struct Inner {
    /// A non-owning connection whose statement cache holds our statements.
    pub conn: Connection,
    /// The site id, shared with [`Ext`].
    site: Arc<Mutex<[u8; 16]>>,
    schema_version: i64,
    tables: Vec<Arc<TableInfo>>,
    /// foldhash: looked up by every trigger helper call (a collision
    /// costs time, never a result).
    by_name: foldhash::HashMap<String, usize>,
    data_version: i64,
    /// Loaded CRR metadata by name, with the signature it was loaded at.
    table_cache: HashMap<String, (String, Arc<TableInfo>)>,
    /// Whether each `…__crsql_clock` table is one of this layout, by name,
    /// with the CREATE statement it was checked at.
    clock_cache: HashMap<String, (String, bool)>,
    /// Clock tables of this layout (of CRRs, and left by dropped ones).
    clocks: Vec<String>,
    /// Whether `crsql_tombstones` exists (a compaction ran).
    tombstones: bool,
    /// Whether `crsql_change_counts` exists (`crr::counts`).
    counts: bool,
    /// Statements whose largest result is the committed db_version.
    version_sql: Vec<String>,
    /// What `INSERT INTO crsql_changes` keeps from one call to the next
    /// (`crr::merge::RowMemo`, DECISIONS D50).
    pub row_memo: crate::crr::merge::RowMemo,
    /// The statements run once per row or change, held out of the
    /// statement cache (`crr::held`).
    pub held: crate::crr::held::Held,
    /// Statements whose largest result is the newest seq at version `?1`.
    newest_seq_sql: Vec<String>,
    /// `(db_version, max seq at it)` of the last [`Inner::newest_position`]:
    /// a committed version's rows can leave it but never join it, and while
    /// it is the newest none leave (a rewrite makes a newer version).
    newest: Option<(i64, i64)>,
}

/// Terms of a compound SELECT per statement: SQLite refuses more than 500
/// (`SQLITE_MAX_COMPOUND_SELECT`), and a database may have thousands of CRRs.
const TERMS_PER_STATEMENT: usize = 200;

/// Statements that, together, give the largest `v` of the `terms` (each a
/// `SELECT … AS v`): one `max` over a `UNION ALL` per chunk of terms.
fn max_of(terms: &[String]) -> Vec<String> {
    terms
        .chunks(TERMS_PER_STATEMENT)
        .map(|chunk| format!("SELECT max(v) FROM ({})", chunk.join(" UNION ALL ")))
        .collect()
}

fn registry() -> &'static Mutex<HashMap<usize, Weak<Ext>>> {
    static R: OnceLock<Mutex<HashMap<usize, Weak<Ext>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

impl Ext {
    /// The state already registered on this connection, if the extension was
    /// loaded on it before (loading is idempotent).
    pub fn existing(db: DbHandle) -> Option<Arc<Ext>> {
        let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        reg.get(&db.as_key()).and_then(Weak::upgrade)
    }

    pub fn new(db: DbHandle, site_id: [u8; 16], merge_equal_values: bool) -> Result<Arc<Ext>> {
        let conn = db.connection()?;
        let site = Arc::new(Mutex::new(site_id));
        conn.set_prepared_statement_cache_capacity(512);
        let ext = Arc::new(Ext {
            db,
            tx: Arc::new(TxCounters::new(db)),
            sync_bit: AtomicI64::new(0),
            site: Arc::clone(&site),
            merge_equal_values: AtomicBool::new(merge_equal_values),
            rows_impacted: AtomicI64::new(0),
            retrieved: Mutex::new(HashMap::new()),
            memos: Mutex::new(Default::default()),
            seqs: Mutex::new(Default::default()),
            merge_batch: Mutex::new(None),
            inner: Mutex::new(Inner {
                conn,
                site,
                schema_version: -1,
                tables: Vec::new(),
                by_name: Default::default(),
                data_version: -1,
                newest: None,
                table_cache: HashMap::new(),
                clocks: Vec::new(),
                tombstones: false,
                counts: false,
                clock_cache: HashMap::new(),
                version_sql: Vec::new(),
                row_memo: Default::default(),
                held: Default::default(),
                newest_seq_sql: Vec::new(),
            }),
        });
        db.install_tx_hooks(&ext.tx);
        registry()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(db.as_key(), Arc::downgrade(&ext));
        Ok(ext)
    }

    /// This database's site id.
    pub fn site_id(&self) -> [u8; 16] {
        *self.site.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the state lock, or fail with a message naming `what`.
    pub fn lock(&self, what: &str) -> Result<MutexGuard<'_, Inner>> {
        match self.inner.try_lock() {
            Ok(g) => Ok(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(err!(
                "{what}: re-entrant call: another crsql_stream operation is running on this connection \
                 (for example a user trigger fired by a merge); call it outside that operation"
            )),
        }
    }

    /// Record that an outbound stream returned a package up to `cursor`.
    pub fn note_retrieved(&self, stream: &str, cursor: Position) {
        let mut m = self.retrieved.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(stream.to_string()).or_insert(cursor);
        if cursor > *e {
            *e = cursor;
        }
    }

    pub fn retrieved(&self, stream: &str) -> Option<Position> {
        self.retrieved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
            .copied()
    }

    pub fn forget_retrieved(&self, stream: &str) {
        self.retrieved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stream);
    }

    pub fn begin_merge_batch(&self, batch: crate::streams::batch::MergeBatch) {
        *self.merge_batch.lock().unwrap_or_else(|e| e.into_inner()) = Some(batch);
    }

    pub fn end_merge_batch(&self) {
        *self.merge_batch.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The package merge in progress, if any; refused when re-entered.
    pub fn merge_batch(&self) -> Result<MutexGuard<'_, Option<crate::streams::batch::MergeBatch>>> {
        match self.merge_batch.try_lock() {
            Ok(g) => Ok(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(err!(
                "crsql_internal_merge: re-entrant call during a package merge (for example from a user trigger)"
            )),
        }
    }

    /// Forget cached metadata (after our own DDL).
    pub fn invalidate_schema(&self, inner: &mut Inner) {
        self.tx.schema_checked.store(false, Relaxed);
        inner.note_own_ddl(&self.tx);
    }

    /// Drop every cached prepared statement (`crsql_finalize`, and when the
    /// connection closes, before SQLite checks for unfinalized statements).
    pub fn finalize_statements(&self, inner: &mut Inner) {
        inner.row_memo = Default::default();
        inner.held = Default::default();
        inner.conn.flush_prepared_statement_cache();
    }
}

impl Drop for Ext {
    fn drop(&mut self) {
        self.db.remove_tx_hooks(&self.tx);
        let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = reg.get(&self.db.as_key()) {
            if w.strong_count() == 0 {
                reg.remove(&self.db.as_key());
            }
        }
        // The registry is a static of this library: when the last
        // connection goes SQLite may unload the library, and an emptied map
        // would leak its table (valgrind: 84 bytes per load).
        if reg.is_empty() {
            *reg = HashMap::new();
        }
    }
}

impl Inner {
    /// Reload CRR metadata when the schema changed (checked at most once per
    /// transaction unless `force`, or the extension's own DDL ran in it).
    pub fn refresh_tables(&mut self, tx: &TxCounters, force: bool) -> Result<()> {
        if !force
            && tx.schema_checked.load(Relaxed)
            && !tx.own_ddl.load(Relaxed)
            && self.schema_version >= 0
        {
            return Ok(());
        }
        let sv: i64 = self
            .conn
            .prepare_cached("PRAGMA schema_version")?
            .query_row([], |r| r.get(0))?;
        tx.schema_checked.store(true, Relaxed);
        if sv == self.schema_version {
            return Ok(());
        }
        // Metadata is reloaded only for tables whose CREATE statement changed,
        // so a schema change costs O(tables), not O(tables) statements.
        let cat = schema::read_catalog(&self.conn)?;
        let mut old = std::mem::take(&mut self.table_cache);
        let mut tables = Vec::new();
        let mut by_name = foldhash::HashMap::default();
        for name in cat.crrs() {
            let sig = cat.signature(&name);
            let t = match old.remove(&name) {
                Some((s, t)) if s == sig => Some(t),
                // A CRR whose metadata cannot be read (e.g. no primary key
                // any more) is skipped here and reported when it is used.
                _ => schema::load_table(&self.conn, &name).ok().map(Arc::new),
            };
            if let Some(t) = t {
                self.table_cache
                    .insert(name.clone(), (sig.to_string(), Arc::clone(&t)));
                by_name.insert(name, tables.len());
                tables.push(t);
            }
        }
        let mut old = std::mem::take(&mut self.clock_cache);
        let mut clocks = Vec::new();
        for (name, sql) in cat.clock_tables() {
            let valid = match old.remove(name) {
                Some((s, v)) if s == sql => v,
                _ => schema::is_clock_table(&self.conn, name)?,
            };
            self.clock_cache
                .insert(name.to_string(), (sql.to_string(), valid));
            if valid {
                clocks.push(name.to_string());
            }
        }
        // crr::compact: the two clock tables of compact CRRs (dropped ones too).
        clocks.extend(crate::crr::compact::clock_tables(&self.conn, &cat)?);
        let mut parts: Vec<String> = clocks
            .iter()
            .map(|clock| format!("SELECT max(db_version) AS v FROM {}", quote_ident(clock)))
            .collect();
        parts.push(
            "SELECT value AS v FROM crsql_master WHERE key = 'pre_compact_dbversion' AND typeof(value) = 'integer'"
                .to_string(),
        );
        self.version_sql = max_of(&parts);
        self.newest_seq_sql = max_of(
            &clocks
                .iter()
                .map(|clock| {
                    format!(
                        "SELECT max(seq) AS v FROM {} WHERE db_version = ?1",
                        quote_ident(clock)
                    )
                })
                .collect::<Vec<_>>(),
        );
        // The newest position stays valid while the set of clock tables
        // does (creating a stream or any table changes the schema): a new
        // CRR is backfilled at a new version, and clocks an alteration
        // removes at the newest version leave it recorded (persist_newest).
        if clocks != self.clocks {
            self.newest = None;
        }
        self.clocks = clocks;
        self.tombstones = cat.has_table(crate::streams::compact::TOMBSTONES);
        self.counts = cat.has_table(crate::crr::counts::TABLE);
        self.tables = tables;
        self.by_name = by_name;
        self.schema_version = sv;
        Ok(())
    }

    /// `crsql_tombstones` was just created on this connection (the flag is
    /// otherwise refreshed with the schema). The schema is re-checked at
    /// every use until the transaction ends: a `ROLLBACK TO` may drop it.
    pub fn note_tombstones(&mut self, tx: &TxCounters) {
        self.tombstones = true;
        self.note_own_ddl(tx);
    }

    /// After the extension's own DDL: the cached schema version is forgotten
    /// (the next check reloads from the catalog whatever the version reads,
    /// since a `ROLLBACK TO` can bring back the one cached) and checked at
    /// every use until the transaction ends.
    fn note_own_ddl(&mut self, tx: &TxCounters) {
        self.schema_version = -1;
        tx.calls.fetch_add(1, Relaxed);
        tx.own_ddl.store(true, Relaxed);
    }

    /// The connection's handle.
    pub fn db(&self) -> DbHandle {
        DbHandle::of(&self.conn)
    }

    /// Whether `crsql_change_counts` exists.
    pub fn has_counts(&self) -> bool {
        self.counts
    }

    /// `crsql_change_counts` was just created on this connection (see
    /// [`Inner::note_tombstones`]).
    pub fn note_counts(&mut self, tx: &TxCounters) {
        self.counts = true;
        self.note_own_ddl(tx);
    }

    /// Whether compacted tombstones may exist (`crsql_tombstones` exists).
    pub fn has_tombstones(&self) -> bool {
        self.tombstones
    }

    /// Every clock table of this layout, including those of dropped CRRs.
    pub fn clock_tables(&self) -> &[String] {
        &self.clocks
    }

    pub fn tables(&self) -> &[Arc<TableInfo>] {
        &self.tables
    }

    /// The CRR named exactly `name` (case-sensitive), if any.
    pub fn table(&self, name: &str) -> Option<Arc<TableInfo>> {
        self.by_name.get(name).map(|&i| Arc::clone(&self.tables[i]))
    }

    /// The committed db_version (§3.3), from cache or disk. Also notices
    /// commits by other connections (`PRAGMA data_version`), after which the
    /// table metadata and the version are read again.
    pub fn db_version(&mut self, tx: &TxCounters) -> Result<i64> {
        let dv: i64 = self
            .conn
            .prepare_cached("PRAGMA data_version")?
            .query_row([], |r| r.get(0))?;
        if dv != self.data_version {
            self.data_version = dv;
            self.reload_site_id()?;
            tx.schema_checked.store(false, Relaxed);
            tx.counted_through.store(-1, Relaxed);
            if tx.pending() < 0 {
                tx.db_version.store(-1, Relaxed);
            }
        }
        self.refresh_tables(tx, false)?;
        let cached = tx.db_version.load(Relaxed);
        if cached >= 0 {
            return Ok(cached);
        }
        let mut v = 0;
        for sql in &self.version_sql {
            let m: Option<i64> = self.conn.prepare_cached(sql)?.query_row([], |r| r.get(0))?;
            v = v.max(m.unwrap_or(0));
        }
        tx.db_version.store(v, Relaxed);
        Ok(v)
    }

    /// The position of the newest committed change: `[db_version, max seq at
    /// that version]` (`seq` 0 when no clock row carries the version).
    pub fn newest_position(&mut self, tx: &TxCounters) -> Result<Position> {
        self.newest_after_scan(tx, None)
    }

    /// [`Inner::newest_position`] when it is known without reading a clock
    /// table (`v`: the committed version, [`Inner::db_version`]).
    pub fn cached_newest(&self, v: i64) -> Option<Position> {
        self.newest
            .filter(|&(dv, _)| dv == v)
            .map(|(_, seq)| Position::new(v, seq))
    }

    /// Whether `tables` are every CRR with a clock table, all of the
    /// cr-sqlite layout: a scan of them reads every clock row.
    /// (A table listed twice counts once: every clock table must be one of
    /// `tables`'.)
    pub fn has_every_clock(&self, tables: &[Arc<TableInfo>]) -> bool {
        if tables.iter().any(|t| t.compact.is_some()) {
            return false;
        }
        let listed: HashSet<String> = tables
            .iter()
            .map(|t| format!("{}{CLOCK_SUFFIX}", t.name))
            .collect();
        self.clocks.iter().all(|c| listed.contains(c))
            && listed.iter().all(|c| self.clocks.contains(c))
    }

    /// [`Inner::newest_position`] for a scan through committed version `v`
    /// (`scanned`; the current version may have moved on since, when this
    /// connection wrote meanwhile), given the largest seq of every clock
    /// row at `v` (`i64::MIN` for none) when the scan read them all
    /// (`Scanner::max_seq_at`, DECISIONS D57): then no clock table is read.
    pub fn newest_after_scan(
        &mut self,
        tx: &TxCounters,
        scanned: Option<(i64, Option<i64>)>,
    ) -> Result<Position> {
        let current = self.db_version(tx)?;
        let (v, seen) = scanned.unwrap_or((current, None));
        if let Some((dv, seq)) = self.newest {
            if dv == v {
                return Ok(Position::new(v, seq));
            }
        }
        let mut seq = 0;
        match seen {
            Some(s) => seq = seq.max(s),
            None => {
                for sql in &self.newest_seq_sql {
                    let s: Option<i64> = self
                        .conn
                        .prepare_cached(sql)?
                        .query_row([v], |r| r.get(0))?;
                    seq = seq.max(s.unwrap_or(0));
                }
            }
        }
        // Clocks removed at the newest version (a column dropped by an
        // alteration) leave the position they had reached recorded.
        let kept: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT value FROM crsql_master WHERE key = 'newest_position' AND typeof(value) = 'text'",
            )?
            .query_row([], |r| r.get(0))
            .optional()?;
        if let Some(p) = kept.and_then(|t| Position::parse(&t).ok()) {
            if p.db_version == v {
                seq = seq.max(p.seq);
            }
        }
        // Inside this connection's write transaction, cells of version v may
        // have moved to the pending version: that view may not outlive a
        // rollback, so only a committed view is kept.
        if tx.pending() < 0 && v == current {
            self.newest = Some((v, seq));
        }
        Ok(Position::new(v, seq))
    }

    /// Bring cached metadata up to date before an operation: at the start of
    /// a transaction also notice other connections' commits.
    pub fn sync(&mut self, tx: &TxCounters) -> Result<()> {
        if tx.pending() < 0 {
            self.db_version(tx)?;
            Ok(())
        } else {
            self.refresh_tables(tx, false)
        }
    }

    /// The version for the next write in this transaction (§3.3 `next`).
    pub fn next_db_version(&mut self, tx: &TxCounters, floor: Option<i64>) -> Result<i64> {
        let pending = tx.pending();
        let committed = if pending < 0 {
            self.db_version(tx)?
        } else {
            tx.db_version.load(Relaxed).max(0)
        };
        let mut v = committed.saturating_add(1).max(pending);
        if let Some(f) = floor {
            v = v.max(f);
        }
        if v > MAX_CLOCK {
            return Err(err!(
                "crsql_stream: db_version {v} is beyond the largest version this extension hands out \
                 ({MAX_CLOCK}); refused so that versions never wrap"
            ));
        }
        if pending < 0 {
            // The transaction's changes are counted at its COMMIT.
            crate::crr::counts::count_at_commit(self)?;
        }
        tx.pending.store(v, Relaxed);
        Ok(v)
    }

    /// Record the newest position before clocks are removed, so that it
    /// does not move back (peers may have acknowledged it).
    pub fn persist_newest(&mut self, tx: &TxCounters) -> Result<()> {
        let p = self.newest_position(tx)?;
        self.persist_version(p.db_version)?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO crsql_master (key, value) VALUES ('newest_position', ?1)",
            )?
            .execute([p.to_string()])?;
        Ok(())
    }

    /// Record `v` in `crsql_master.pre_compact_dbversion` (only ever raised),
    /// so a version handed out without any clock row survives a reopen.
    pub fn persist_version(&mut self, v: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO crsql_master (key, value) VALUES ('pre_compact_dbversion', ?1) \
                 ON CONFLICT (key) DO UPDATE SET value = max(COALESCE(value, 0), excluded.value)",
            )?
            .execute([v])?;
        Ok(())
    }

    /// This database's site id.
    pub fn site_id(&self) -> [u8; 16] {
        *self.site.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set the site id this connection uses (after `crsql_new_site_id`).
    pub fn set_site_id(&self, id: [u8; 16]) {
        *self.site.lock().unwrap_or_else(|e| e.into_inner()) = id;
    }

    /// Read the site id again (another connection may have given the
    /// database a new one).
    fn reload_site_id(&self) -> Result<()> {
        let stored = crate::crr::stored_site_id(&self.conn)?;
        if let Some(id) = stored.and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok()) {
            self.set_site_id(id);
        }
        Ok(())
    }

    /// The ordinal of a site id in `crsql_site_id`, inserting it when
    /// `create` is set. The local site is 0.
    pub fn site_ordinal(&self, site: &[u8], create: bool) -> Result<Option<i64>> {
        if site.is_empty() || site == self.site_id() {
            return Ok(Some(0));
        }
        let found: Option<i64> = self
            .conn
            .prepare_cached("SELECT ordinal FROM crsql_site_id WHERE site_id = ?1")?
            .query_row([site], |r| r.get(0))
            .optional()?;
        if found.is_some() || !create {
            return Ok(found);
        }
        let ord: i64 = self
            .conn
            .prepare_cached("INSERT INTO crsql_site_id (site_id) VALUES (?1) RETURNING ordinal")?
            .query_row([site], |r| r.get(0))?;
        Ok(Some(ord))
    }

    /// The site id bytes of an ordinal (0 is the local site).
    pub fn site_of_ordinal(&self, ordinal: i64) -> Result<Option<Vec<u8>>> {
        if ordinal == 0 {
            return Ok(Some(self.site_id().to_vec()));
        }
        Ok(self
            .conn
            .prepare_cached("SELECT site_id FROM crsql_site_id WHERE ordinal = ?1")?
            .query_row([ordinal], |r| r.get(0))
            .optional()?)
    }
}
