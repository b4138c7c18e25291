//! Change counts per version, so that how many changes a stream has left
//! (`crsql_streams.lag_changes`) is exact and cheap (DECISIONS D33).
//!
//! `crsql_change_counts` holds, for every clock row at or below a version
//! `U` (`crsql_master.change_counts_through`), how many rows each
//! `(db_version, table, site ordinal)` has (`lvl = 0`, with the largest seq
//! seen there) and how many each bucket of 1,024 versions has (`lvl = 1`).
//! Rows above `U` (the *tail*, normally the last transaction) are counted
//! from the clock tables when needed. So the changes after a position cost
//! O(buckets + one bucket + tail), never a walk over the backlog.
//!
//! The counts are kept exact without any work in the triggers:
//! - **Arrivals** are counted once per transaction, at its COMMIT: the
//!   first write of a transaction inserts a row into the internal eponymous
//!   table `crsql_change_counter` ([`count_at_commit`]), which stores
//!   nothing but makes SQLite call its xSync in the first phase of the
//!   commit, still inside the transaction; there [`catch_up`] counts the
//!   rows of the versions written since `U` (the transaction's own) and
//!   moves `U` to the newest version. A transaction that wrote only local
//!   rows (no merge: [`TxCounters::local_only`]) is counted from the
//!   `db_version` index alone, without reading the clock rows (their site is
//!   the local one, their seqs below the transaction's counter), unless a
//!   row above `U` is at another version. No later write can add rows to those
//!   versions (every write takes a version above the committed one), so a
//!   count taken then is final, up to departures. Should that not happen
//!   (another implementation wrote), the next COMMIT catches up the same
//!   way, and until then readers count the tail from the clock tables. A
//!   COMMIT that fails after counting (SQLITE_BUSY) is counted again by the
//!   retry (`from_base`).
//! - **Departures**: a row at or below `U` that a write rewrites (it moves to
//!   the new version) or deletes is subtracted where the extension itself
//!   writes clocks: per row (not per column), [`KeyCounts`] reads the
//!   row's clock rows at or below `U` before the write, and subtracts the
//!   cells the write moves (an update, a delete) or the difference with a
//!   second read after it (other writes). New rows cost nothing here.
//!   `U` moves only at a COMMIT (and at load), never between the two reads,
//!   and a row above `U` needs nothing: it is counted when `U` passes it.
//! - Bulk paths recount: compaction subtracts what it removes, a CRR made,
//!   altered or re-created is recounted ([`recount`]), `crsql_as_table`
//!   drops its counts, `crsql_new_site_id` moves the local ordinal's.
//!
//! Everything is written in the caller's transaction and statement, so a
//! rollback (of a transaction, a savepoint or a failed statement) takes
//! the counts back with the clocks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crsql_stream_core::Position;
use rusqlite::types::ValueRef;
use rusqlite::vtab::IndexInfo;
use rusqlite::{params, Connection, OptionalExtension};

use crate::crr::schema::{quote_ident, TableInfo, CLOCK_SUFFIX};
use crate::error::Result;
use crate::sqlite::vtab::Table;
use crate::state::{Ext, Inner, TxCounters};

/// The table of counts.
pub const TABLE: &str = "crsql_change_counts";

const DDL: &str = "CREATE TABLE IF NOT EXISTS crsql_change_counts (
  lvl INTEGER NOT NULL,
  v INTEGER NOT NULL,
  tbl TEXT NOT NULL,
  site INTEGER NOT NULL,
  n INTEGER NOT NULL,
  maxseq INTEGER NOT NULL,
  PRIMARY KEY (lvl, v, tbl, site)
) WITHOUT ROWID, STRICT;";

/// `crsql_master` key of `U`, the version through which rows are counted.
const THROUGH: &str = "change_counts_through";

/// A bucket holds `1 << BUCKET_BITS` versions.
const BUCKET_BITS: i64 = 10;

fn clock_of(table: &str) -> String {
    quote_ident(&format!("{table}{CLOCK_SUFFIX}"))
}

/// What the counts read a table's clocks from: its clock table, or for a
/// compact CRR (`crr::compact`) a subquery with one row per clock.
fn clock_source(conn: &Connection, table: &str) -> Result<String> {
    Ok(crate::crr::compact::clock_source(conn, table)?.unwrap_or_else(|| clock_of(table)))
}

/// Add `n` (?5) to the count of `(lvl, v, tbl, site)` (?1–?4), keeping the
/// largest seq (?6). A literal, so that a write costs no formatting.
const ADD_COUNT: &str = "INSERT INTO crsql_change_counts (lvl, v, tbl, site, n, maxseq) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (lvl, v, tbl, site) DO UPDATE SET \
     n = n + excluded.n, maxseq = max(maxseq, excluded.maxseq)";

/// `(db_version, site) -> (rows, largest seq)` of some clock rows.
pub(crate) type Tally = HashMap<(i64, i64), (i64, i64)>;

/// Add `n` clock rows at `(v, site)` whose largest seq is `seq` to `out`.
pub(crate) fn tally_add(out: &mut Tally, v: i64, site: i64, n: i64, seq: i64) {
    let e = out.entry((v, site)).or_insert((0, seq));
    e.0 += n;
    e.1 = e.1.max(seq);
}

/// Tally the clock rows of `table` above version `lo`.
fn tally(conn: &Connection, table: &str, lo: i64) -> Result<Tally> {
    if let Some(t) = crate::crr::compact::tally(conn, table, lo)? {
        return Ok(t);
    }
    // Grouped here, not by a `GROUP BY db_version, site_id`, whose sorter
    // cost twice the read (DECISIONS D47). The rows come through the
    // db_version index (one table lookup each), or, when they are more
    // than a quarter of the table (a fresh replica's first apply), from a
    // scan of the table, which costs a quarter of the lookups per row.
    let clock = clock_of(table);
    let count = |sql: String, args: &[i64]| -> Result<i64> {
        Ok(conn
            .prepare_cached(&sql)?
            .query_row(rusqlite::params_from_iter(args), |r| r.get(0))?)
    };
    let above = count(
        format!("SELECT count(*) FROM {clock} WHERE db_version > ?1"),
        &[lo],
    )?;
    let mut out = Tally::new();
    if above == 0 {
        return Ok(out);
    }
    // Whether the table has fewer than 4 x `above` rows, counted no
    // further than that (a large table costs no more than the rows above).
    let bound = above.saturating_mul(4);
    let some = count(
        format!("SELECT count(*) FROM (SELECT 1 FROM {clock} LIMIT ?1)"),
        &[bound],
    )?;
    let by = if some < bound { "+" } else { "" };
    let sql = format!("SELECT db_version, site_id, seq FROM {clock} WHERE {by}db_version > ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([lo])?;
    while let Some(r) = rows.next()? {
        let (v, site, seq): (i64, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        tally_add(&mut out, v, site, 1, seq);
    }
    Ok(out)
}

/// What a transaction that wrote only local clock rows, all at `version`,
/// knows of them: the site (0) and a bound on their seqs (`maxseq` only
/// prunes, so a bound above the largest is safe).
#[derive(Clone, Copy)]
pub struct LocalTx {
    pub version: i64,
    pub maxseq: i64,
    /// For a compact CRR (`crr::compact::FastInserts`): the row clocks and
    /// clocks this transaction inserted, when that is all it wrote there.
    pub compact: Option<(i64, i64)>,
}

/// [`tally`] for a [`LocalTx`]: counted from the `db_version` index alone
/// (no table lookups, no sorter). None when a row above `lo` is at another
/// version than the transaction's (rows nobody counted yet): the caller
/// then tallies in full.
fn tally_local(conn: &Connection, table: &str, lo: i64, local: LocalTx) -> Result<Option<Tally>> {
    if let Some(inserted) = local.compact {
        return crate::crr::compact::tally_fast(
            conn,
            table,
            lo,
            local.version,
            inserted,
            local.maxseq,
        );
    }
    let sql = format!(
        "SELECT db_version, count(*) FROM {} WHERE db_version > ?1 GROUP BY db_version",
        clock_of(table)
    );
    let mut out = Tally::new();
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query([lo])?;
    while let Some(r) = rows.next()? {
        let v: i64 = r.get(0)?;
        if v != local.version {
            return Ok(None);
        }
        out.insert((v, 0), (r.get(1)?, local.maxseq));
    }
    Ok(Some(out))
}

/// Add a tally of `table` to both levels.
fn add_tally(conn: &Connection, table: &str, tally: &Tally) -> Result<()> {
    let mut stmt = conn.prepare_cached(ADD_COUNT)?;
    let mut buckets: HashMap<(i64, i64), i64> = HashMap::new();
    for (&(v, site), &(n, maxseq)) in tally {
        stmt.execute(params![0, v, table, site, n, maxseq])?;
        *buckets.entry((v >> BUCKET_BITS, site)).or_insert(0) += n;
    }
    for ((bucket, site), n) in buckets {
        stmt.execute(params![1, bucket, table, site, n, 0])?;
    }
    Ok(())
}

fn read_through(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT value FROM crsql_master WHERE key = ?1 AND typeof(value) = 'integer'",
        )?
        .query_row([THROUGH], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0))
}

/// `U`: the version through which clock rows are in the counts (0 when
/// there are no counts yet).
pub fn counted_through(inner: &Inner) -> Result<i64> {
    if !inner.has_counts() {
        return Ok(0);
    }
    read_through(&inner.conn)
}

/// Count every clock row of `tables` above `U` and move `U` to the newest
/// of them. Everything is read before anything is written, so a failed
/// read changes nothing.
/// Each table comes with what a local-only transaction knows of its rows
/// ([`tally_local`]), where that applies.
fn catch_up_tables(conn: &Connection, tables: &[(String, Option<LocalTx>)]) -> Result<()> {
    let through = read_through(conn)?;
    let mut tallies = Vec::with_capacity(tables.len());
    for (t, local) in tables {
        let fast = match local {
            Some(l) => tally_local(conn, t, through, *l)?,
            None => None,
        };
        tallies.push(match fast {
            Some(f) => f,
            None => tally(conn, t, through)?,
        });
    }
    let mut newest = through;
    for ((t, _), tally) in tables.iter().zip(&tallies) {
        if tally.is_empty() {
            continue;
        }
        add_tally(conn, t, tally)?;
        newest = newest.max(tally.keys().map(|k| k.0).max().unwrap_or(0));
    }
    if newest > through {
        conn.prepare_cached("INSERT OR REPLACE INTO crsql_master (key, value) VALUES (?1, ?2)")?
            .execute(params![THROUGH, newest])?;
    }
    Ok(())
}

/// Count what was written since `U` (every CRR) and move `U` past it;
/// creates the table on first use (which counts every existing row: the
/// migration of an older database).
pub fn catch_up(inner: &mut Inner, tx: &TxCounters, local: Option<LocalTx>) -> Result<()> {
    if !inner.has_counts() {
        // A fresh table counts everything, whatever `U` was left behind.
        inner.conn.execute_batch(DDL)?;
        inner.note_counts(tx);
        inner
            .conn
            .execute("DELETE FROM crsql_master WHERE key = ?1", [THROUGH])?;
    }
    // crr::compact: a compact table has no clock table for the index
    // count; what its new-row inserts wrote, if that is all, is counted
    // from its row clocks' index.
    let epoch = tx.epoch.load(Relaxed);
    let tables: Vec<(String, Option<LocalTx>)> = inner
        .tables()
        .iter()
        .map(|t| {
            let local = match &t.compact {
                None => local,
                Some(c) => local.and_then(|l| {
                    c.fast.only(epoch).map(|f| LocalTx {
                        compact: Some(f),
                        ..l
                    })
                }),
            };
            (t.name.clone(), local)
        })
        .collect();
    catch_up_tables(&inner.conn, &tables)
}

/// Count `table` again from its clock table (after a bulk rewrite).
pub fn recount(inner: &Inner, table: &str) -> Result<()> {
    let through = counted_through(inner)?;
    drop_table(inner, table)?;
    if inner.table(table).is_some() {
        let mut all = tally(&inner.conn, table, i64::MIN)?;
        all.retain(|k, _| k.0 <= through);
        add_tally(&inner.conn, table, &all)?;
    }
    Ok(())
}

/// The internal table whose xSync counts a transaction's changes at COMMIT.
pub const COUNTER: &str = "crsql_change_counter";

/// Enlist [`CounterTable`] in the current transaction (at its first write).
pub fn count_at_commit(inner: &Inner) -> Result<()> {
    inner
        .conn
        .prepare_cached("INSERT INTO crsql_change_counter VALUES (NULL)")?
        .execute([])?;
    Ok(())
}

/// `crsql_change_counter`: stores nothing; an INSERT enlists it in the
/// transaction, and its xSync, in the first phase of COMMIT, counts what
/// the transaction wrote.
pub struct CounterTable {
    ext: Arc<Ext>,
}

impl Table for CounterTable {
    crate::sqlite::vtab::ext_eponymous!(
        COUNTER,
        crate::sqlite::vtab::NoRows,
        "CREATE TABLE x(enlist ANY)"
    );

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        info.set_estimated_cost(1.0);
        Ok(())
    }

    fn open(&mut self) -> Result<crate::sqlite::vtab::NoRows> {
        Ok(crate::sqlite::vtab::NoRows)
    }

    fn insert(&mut self, _args: &[ValueRef<'_>]) -> Result<i64> {
        Ok(0)
    }

    fn sync(&mut self) -> Result<()> {
        // Every row on disk now is this transaction's view at its commit:
        // rows it rolled back to a savepoint are gone, so U never passes
        // what is committed.
        if let Ok(mut inner) = self.ext.lock(COUNTER) {
            if inner.has_counts() {
                from_base(&inner.conn, &self.ext.tx)?;
            }
            let tx = &self.ext.tx;
            let version = tx.pending();
            let local = (version >= 0 && tx.local_only.load(Relaxed)).then(|| LocalTx {
                version,
                maxseq: tx.seq.load(Relaxed) - 1,
                compact: None,
            });
            return catch_up(&mut inner, tx, local);
        }
        // A COMMIT from inside one of our own functions (the RELEASE of
        // its savepoint in autocommit mode, e.g. crsql_commit_alter): the
        // state is in use up the stack, so count through a second handle,
        // over every clock table of this layout's name.
        let conn = self.ext.db.connection()?;
        if !crate::crr::schema::table_exists(&conn, TABLE)? {
            return Ok(());
        }
        let names: Vec<String> = conn
            .prepare(
                "SELECT substr(c.name, 1, length(c.name) - 13) FROM sqlite_master AS c \
                 JOIN sqlite_master AS b ON b.type = 'table' AND b.name = substr(c.name, 1, length(c.name) - 13) \
                 WHERE c.type = 'table' AND c.name LIKE '%\\_\\_crsql\\_clock' ESCAPE '\\'",
            )?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        from_base(&conn, &self.ext.tx)?;
        let tables: Vec<(String, Option<LocalTx>)> = names.into_iter().map(|n| (n, None)).collect();
        catch_up_tables(&conn, &tables)
    }
}

/// Before a COMMIT counts the transaction: if an earlier COMMIT of this same
/// transaction already did and then failed (SQLITE_BUSY keeps the
/// transaction open, and it may write on), take back everything counted
/// above the `U` it started from, so that the count is made again from the
/// rows as they are now.
fn from_base(conn: &Connection, tx: &TxCounters) -> Result<()> {
    let base = tx.sync_base.load(Relaxed);
    if base < 0 {
        tx.sync_base.store(read_through(conn)?, Relaxed);
        return Ok(());
    }
    let above: Vec<(i64, String, i64, i64)> = conn
        .prepare_cached("SELECT v, tbl, site, n FROM crsql_change_counts WHERE lvl = 0 AND v > ?1")?
        .query_map([base], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut bucket = conn.prepare_cached(
        "UPDATE crsql_change_counts SET n = n - ?4 WHERE lvl = 1 AND v = ?1 AND tbl = ?2 AND site = ?3",
    )?;
    for (v, tbl, site, n) in &above {
        bucket.execute(params![v >> BUCKET_BITS, tbl, site, n])?;
    }
    conn.prepare_cached("DELETE FROM crsql_change_counts WHERE lvl = 0 AND v > ?1")?
        .execute([base])?;
    conn.prepare_cached("INSERT OR REPLACE INTO crsql_master (key, value) VALUES (?1, ?2)")?
        .execute(params![THROUGH, base])?;
    Ok(())
}

/// At load: a database without counts (new, or written by a version from
/// before them) gets them now, every existing row counted, in one savepoint.
/// On a read-only database this cannot run; readers then count from the
/// clock tables (exact, slower) until a write creates them.
pub fn migrate(ext: &crate::state::Ext) -> Result<()> {
    let mut inner = ext.lock("crsql_stream: load")?;
    inner.db_version(&ext.tx)?;
    if inner.has_counts() {
        return Ok(());
    }
    let conn = ext.db.connection()?;
    crate::crr::in_savepoint(&conn, "crsql_change_counts", || {
        catch_up(&mut inner, &ext.tx, None)
    })
}

/// Apply `(db_version, site) -> delta` to both levels, one single-row
/// upsert each: a multi-row VALUES needs a statement journal, and such a
/// statement re-prepared after a schema change inside a user's statement
/// aborts the user's transaction (`abort due to ROLLBACK`; the
/// hostile-schema regression test in divergences.rs caught it; see D20).
pub(crate) fn apply(inner: &Inner, table: &str, deltas: &HashMap<(i64, i64), i64>) -> Result<()> {
    // Held out of the statement cache (`crr::held`): an UPDATE of a
    // counted row runs this twice per row.
    for (&(v, site), &n) in deltas {
        if n != 0 {
            for (lvl, at) in [(0, v), (1, v >> BUCKET_BITS)] {
                let values = [
                    ValueRef::Integer(lvl),
                    ValueRef::Integer(at),
                    ValueRef::Text(table.as_bytes()),
                    ValueRef::Integer(site),
                    ValueRef::Integer(n),
                    ValueRef::Integer(0),
                ];
                inner.held.exec(inner.db(), ADD_COUNT, values)?;
            }
        }
    }
    Ok(())
}

/// `U` inside a write: it moves only at a COMMIT (and at load), so it is
/// read once per transaction.
pub(crate) fn through_in_tx(inner: &Inner, tx: &TxCounters) -> Result<i64> {
    let cached = tx.counted_through.load(Relaxed);
    if cached >= 0 {
        return Ok(cached);
    }
    let through = counted_through(inner)?;
    tx.counted_through.store(through, Relaxed);
    Ok(through)
}

/// The clock rows of one key at or below `U`: `(col_name, db_version,
/// site)` (a handful of rows: no GROUP BY, whose sorter costs more than
/// the read).
fn key_rows(
    inner: &Inner,
    t: &TableInfo,
    key: i64,
    through: i64,
) -> Result<Vec<(String, i64, i64)>> {
    let mut stmt = inner.conn.prepare_cached(&t.sql.clock_counted_rows)?;
    let rows = stmt
        .query_map(params![key, through], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Per `(db_version, site)`: how many of `rows`, negated when `sign` is -1.
fn tally_rows<'a>(
    rows: impl Iterator<Item = &'a (String, i64, i64)>,
    sign: i64,
    into: &mut HashMap<(i64, i64), i64>,
) {
    for (_, v, site) in rows {
        *into.entry((*v, *site)).or_insert(0) += sign;
    }
}

/// The counted clock rows of one key before a write, to subtract what the
/// write moves away or deletes ([`KeyCounts::settle`]).
pub struct KeyCounts {
    key: i64,
    through: i64,
    before: Vec<(String, i64, i64)>,
}

impl KeyCounts {
    /// Read the counted rows of `key` (None: a key without clocks).
    pub fn take(
        inner: &Inner,
        tx: &TxCounters,
        t: &TableInfo,
        key: Option<i64>,
    ) -> Result<KeyCounts> {
        let (key, through) = match key {
            Some(key) if inner.has_counts() => (key, through_in_tx(inner, tx)?),
            _ => (0, 0),
        };
        let before = if through > 0 {
            key_rows(inner, t, key, through)?
        } else {
            Vec::new()
        };
        Ok(KeyCounts {
            key,
            through,
            before,
        })
    }

    /// Whether the key had no counted clock row: the write moves nothing
    /// counted, and [`KeyCounts::settle`] has nothing to do.
    pub fn is_empty(&self) -> bool {
        self.before.is_empty()
    }

    /// Before a write that certainly moves or deletes the counted cells of
    /// `key` named in `cols` (every cell when None): subtract them now, with
    /// one read (cheaper than one INSERT … SELECT, measured).
    pub fn depart(
        inner: &Inner,
        tx: &TxCounters,
        t: &TableInfo,
        key: i64,
        cols: Option<&[&str]>,
    ) -> Result<()> {
        let k = KeyCounts::take(inner, tx, t, Some(key))?;
        let mut deltas = HashMap::new();
        let leaving = k
            .before
            .iter()
            .filter(|(name, _, _)| cols.is_none_or(|c| c.contains(&name.as_str())));
        tally_rows(leaving, -1, &mut deltas);
        apply(inner, &t.name, &deltas)
    }

    /// After the write: record what left the counted versions. Writes land
    /// above `U`, so only departures are possible there.
    pub fn settle(self, inner: &Inner, t: &TableInfo) -> Result<()> {
        if self.before.is_empty() {
            return Ok(());
        }
        let after = key_rows(inner, t, self.key, self.through)?;
        let mut deltas = HashMap::new();
        tally_rows(self.before.iter(), -1, &mut deltas);
        tally_rows(after.iter(), 1, &mut deltas);
        apply(inner, &t.name, &deltas)
    }
}

/// Subtract the clock rows of `table` that `filter` (a condition on the
/// clock table, bound to `params`) selects, before they are deleted.
pub fn subtract_where(
    inner: &Inner,
    table: &str,
    filter: &str,
    bind: &[&dyn rusqlite::ToSql],
) -> Result<()> {
    let through = counted_through(inner)?;
    let sql = format!(
        "SELECT db_version, site_id, count(*) FROM {} WHERE db_version <= {through} AND ({filter}) \
         GROUP BY db_version, site_id",
        clock_of(table)
    );
    let mut deltas = HashMap::new();
    {
        let mut stmt = inner.conn.prepare(&sql)?;
        let mut rows = stmt.query(bind)?;
        while let Some(r) = rows.next()? {
            deltas.insert((r.get(0)?, r.get(1)?), -r.get::<_, i64>(2)?);
        }
    }
    apply(inner, table, &deltas)
}

/// Forget the counts of a table whose clocks are dropped.
pub fn drop_table(inner: &Inner, table: &str) -> Result<()> {
    if inner.has_counts() {
        let sql = "DELETE FROM crsql_change_counts WHERE tbl = ?1";
        inner.conn.execute(sql, [table])?;
    }
    Ok(())
}

/// The local site's rows now belong to ordinal `to` (`crsql_new_site_id`).
pub fn move_local_site(inner: &Inner, to: i64) -> Result<()> {
    if inner.has_counts() {
        inner.conn.execute(
            "UPDATE crsql_change_counts SET site = ?1 WHERE site = 0",
            [to],
        )?;
    }
    Ok(())
}

/// Which changes a stream carries.
pub struct Filter {
    /// Table names (None: every CRR).
    pub tables: Option<HashSet<String>>,
    /// Site ordinals left out.
    pub excluded: HashSet<i64>,
    /// Only these site ordinals (`local_only`), if set.
    pub only: Option<HashSet<i64>>,
}

impl Filter {
    /// The filter of an outbound stream created with `cfg`.
    pub fn of_stream(
        inner: &Inner,
        cfg: &crate::streams::outbound::OutboundConfig,
    ) -> Result<Filter> {
        let mut excluded = HashSet::new();
        for site in &cfg.exclude_sites {
            excluded.extend(inner.site_ordinal(site, false)?);
        }
        let only = if cfg.local_only {
            // This database's former site ids (crsql_new_site_id) are local too.
            let mut local = HashSet::from([0]);
            for site in crate::crr::former_site_ids(&inner.conn)? {
                local.extend(inner.site_ordinal(&site, false)?);
            }
            Some(local)
        } else {
            None
        };
        Ok(Filter {
            tables: cfg.tables.as_ref().map(|t| t.iter().cloned().collect()),
            excluded,
            only,
        })
    }

    fn table(&self, name: &str) -> bool {
        self.tables.as_ref().is_none_or(|t| t.contains(name))
    }

    fn site(&self, site: i64) -> bool {
        !self.excluded.contains(&site) && self.only.as_ref().is_none_or(|o| o.contains(&site))
    }
}

/// The number of committed changes after `since` that `filter` lets
/// through: what `crsql_changes` (and so the stream) has after it.
pub fn changes_after(
    ext: &Ext,
    inner: &mut Inner,
    filter: &Filter,
    since: Position,
) -> Result<i64> {
    let newest = inner.newest_position(&ext.tx)?;
    if since >= newest {
        return Ok(0);
    }
    let committed = newest.db_version;
    let through = counted_through(inner)?.min(committed);
    let tables: Vec<String> = inner
        .tables()
        .iter()
        .filter(|t| filter.table(&t.name))
        .map(|t| t.name.clone())
        .collect();
    let (x, s) = (since.db_version, since.seq);
    let mut total = 0i64;
    let mut add = |tbl: &str, site: i64, n: i64| {
        if filter.table(tbl) && filter.site(site) {
            total += n;
        }
    };
    if inner.has_counts() && x < through {
        // Versions (x, through]: the rest of x's bucket and the start of
        // through's one version by version, the buckets between whole.
        // (Bounded by `through`: inside a transaction whose COMMIT failed
        // the counts already hold its own, uncommitted versions.)
        let (bx, bt) = (x >> BUCKET_BITS, through >> BUCKET_BITS);
        let (lo_end, hi_start) = if bx == bt {
            (through + 1, through + 1)
        } else {
            ((bx + 1) << BUCKET_BITS, bt << BUCKET_BITS)
        };
        let mut stmt = inner.conn.prepare_cached(
            "SELECT tbl, site, sum(n) FROM crsql_change_counts WHERE lvl = 0 AND v > ?1 AND v < ?2 GROUP BY tbl, site \
             UNION ALL \
             SELECT tbl, site, sum(n) FROM crsql_change_counts WHERE lvl = 1 AND v > ?3 AND v < ?4 GROUP BY tbl, site \
             UNION ALL \
             SELECT tbl, site, sum(n) FROM crsql_change_counts WHERE lvl = 0 AND v >= ?5 AND v <= ?6 GROUP BY tbl, site",
        )?;
        let mut rows = stmt.query(params![x, lo_end, bx, bt, hi_start, through])?;
        while let Some(r) = rows.next()? {
            add(&r.get::<_, String>(0)?, r.get(1)?, r.get(2)?);
        }
    }
    // Version x itself, after seq s: only where its rows may reach past s.
    if x >= 1 {
        // (Above U, the tail below reads it.)
        let reaching: Vec<String> = if x <= through && inner.has_counts() {
            inner
                .conn
                .prepare_cached(
                    "SELECT DISTINCT tbl FROM crsql_change_counts WHERE lvl = 0 AND v = ?1 AND maxseq > ?2 AND n > 0",
                )?
                .query_map(params![x, s], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        } else {
            Vec::new()
        };
        let mut seqs = ext.seqs.lock().unwrap_or_else(|e| e.into_inner());
        for tbl in tables.iter().filter(|t| reaching.contains(t)) {
            for (site, n) in seqs.after(inner, tbl, x, s)? {
                add(tbl, site, n);
            }
        }
    }
    // The tail above U, straight from the clock tables.
    let lo = through.max(x - 1);
    for tbl in &tables {
        let sql = format!(
            "SELECT site_id, count(*) FROM {} WHERE db_version > ?1 AND db_version <= ?2 \
             AND (db_version > ?3 OR seq > ?4) GROUP BY site_id",
            clock_source(&inner.conn, tbl)?
        );
        let mut stmt = inner.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![lo, committed, x, s])?;
        while let Some(r) = rows.next()? {
            add(tbl, r.get(0)?, r.get(1)?);
        }
    }
    Ok(total)
}

/// Versions whose seqs a connection keeps ([`SeqCache`])...
const SEQ_CACHE_ENTRIES: usize = 4;
/// ...if they have at most this many rows (8 bytes each: 32 MiB).
const SEQ_CACHE_MAX_ROWS: usize = 1 << 22;

/// The seqs of one version of one table, per site, in order.
struct Seqs {
    table: String,
    v: i64,
    by_site: HashMap<i64, Vec<i64>>,
}

/// Per connection: the seqs of the versions that streams were lately
/// acknowledged inside of (a transaction sent in parts). The layout has no
/// index on seq, so "the rows of version x after seq s" reads every row of
/// x; kept here, the next part's figure is a binary search. A committed
/// version only ever loses rows, so an entry is still right exactly when
/// its per-site totals equal the counts (exact for versions at or below
/// `U`); otherwise it is read again.
#[derive(Default)]
pub struct SeqCache {
    entries: std::collections::VecDeque<Seqs>,
}

impl SeqCache {
    /// Per site: the rows of `table` at version `x` (at or below `U`, so
    /// that an entry can be checked against the counts) with seq above `s`.
    fn after(&mut self, inner: &Inner, table: &str, x: i64, s: i64) -> Result<Vec<(i64, i64)>> {
        let totals: HashMap<i64, i64> = inner
                .conn
                .prepare_cached(
                    "SELECT site, n FROM crsql_change_counts WHERE lvl = 0 AND v = ?1 AND tbl = ?2 AND n > 0",
                )?
                .query_map(params![x, table], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
        let fresh = |e: &Seqs| {
            e.table == table
                && e.v == x
                && e.by_site.len() == totals.len()
                && e.by_site
                    .iter()
                    .all(|(site, q)| totals.get(site) == Some(&(q.len() as i64)))
        };
        let found = match self.entries.iter().position(fresh) {
            Some(i) => self.entries.remove(i),
            None => None,
        };
        let entry = match found {
            Some(e) => e,
            None => {
                let sql = format!(
                    "SELECT site_id, seq FROM {} WHERE db_version = ?1",
                    clock_source(&inner.conn, table)?
                );
                let mut by_site: HashMap<i64, Vec<i64>> = HashMap::new();
                let mut stmt = inner.conn.prepare_cached(&sql)?;
                let mut rows = stmt.query([x])?;
                while let Some(r) = rows.next()? {
                    by_site.entry(r.get(0)?).or_default().push(r.get(1)?);
                }
                for q in by_site.values_mut() {
                    q.sort_unstable();
                }
                Seqs {
                    table: table.to_string(),
                    v: x,
                    by_site,
                }
            }
        };
        let out = entry
            .by_site
            .iter()
            .map(|(site, q)| (*site, (q.len() - q.partition_point(|&seq| seq <= s)) as i64))
            .collect();
        let rows: usize = entry.by_site.values().map(Vec::len).sum();
        if rows <= SEQ_CACHE_MAX_ROWS {
            self.entries.push_front(entry);
            self.entries.truncate(SEQ_CACHE_ENTRIES);
        }
        Ok(out)
    }
}
