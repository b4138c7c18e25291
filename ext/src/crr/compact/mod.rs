//! The compact CRR layout (docs/compact-layout.md, DECISIONS D41): per CRR
//! a row-clock table keyed by the primary key holding one *run* of clocks
//! (`core::rowclock`), and a cells table for the clocks outside it.
//!
//! This is a first slice: creation, local writes and the change scan.
//! Every other operation on a compact table fails with [`unsupported`]'s
//! error, which names the table and the operation, until it is built. The
//! rest of the extension reaches this module only through small dispatch
//! points marked `crr::compact` in `schema.rs`, `scan.rs`, `state.rs`,
//! `counts.rs`, `crr/mod.rs`, `streams/compact.rs` and `functions.rs`.

pub mod convert;
pub mod local;
pub mod sql;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicI64};

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, OptionalExtension};

use crsql_stream_core::rowclock::{Member, Run, Stored, Vers, VersRef, SENTINEL_SLOT};

use crate::crr::schema::{self, quote_ident, quote_str, Column, TableInfo};
use crate::err;
use crate::error::{Error, Result};
use crate::sqlite::function::Args;
use crate::state::{Ext, Inner};

pub const ROWS_SUFFIX: &str = "__crsql_rows";
pub const CELLS_SUFFIX: &str = "__crsql_cells";
/// The `crsql_config_set` setting that picks the layout of new CRRs.
pub const SETTING: &str = "crr-layout";
const SETTING_KEY: &str = "config.crr-layout";

/// Column names the compact tables use beside the primary key's.
pub const RESERVED: [&str; 7] = [
    "cl",
    "db_version",
    "site_id",
    "seq",
    "vers",
    "col_name",
    "col_version",
];

/// The prefix a primary-key column's name takes in the compact tables when
/// it would clash with [`RESERVED`] (see [`stored_name`]).
pub const PK_PREFIX: &str = "__crsql_pk_";

/// The name primary-key column `name` has in the compact tables: its own,
/// unless that is one of [`RESERVED`] or begins with [`PK_PREFIX`] (in any
/// case, as SQLite compares names), then [`PK_PREFIX`] followed by it. No
/// two names map to one (prefixed names begin with the prefix, kept ones do
/// not), and no stored name is a [`RESERVED`] one; tables whose pk names
/// clash with nothing keep the names they always had on disk.
pub fn stored_name(name: &str) -> String {
    let prefixed = name
        .get(..PK_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(PK_PREFIX));
    if prefixed || RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r)) {
        format!("{PK_PREFIX}{name}")
    } else {
        name.to_string()
    }
}

/// The name of a primary-key column whose name in the compact tables is
/// `stored` (the inverse of [`stored_name`]).
pub fn original_name(stored: &str) -> String {
    stored
        .get(..PK_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(PK_PREFIX))
        .map_or(stored, |_| &stored[PK_PREFIX.len()..])
        .to_string()
}

/// The primary-key columns as the compact tables name them ([`stored_name`]).
pub fn stored_pks(pks: &[Column]) -> Vec<Column> {
    pks.iter()
        .map(|c| Column {
            name: stored_name(&c.name),
            ..c.clone()
        })
        .collect()
}

/// The stable slot of every column of a compact CRR: a slot is a column's
/// index in a run (docs/compact-layout.md, "Alter").
const SLOTS_DDL: &str = "CREATE TABLE IF NOT EXISTS crsql_compact_slots (
  tbl TEXT NOT NULL,
  slot INTEGER NOT NULL,
  col_name TEXT NOT NULL,
  dropped INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (tbl, slot)
) WITHOUT ROWID, STRICT;";

/// The error of an operation the compact layout does not support yet.
pub fn unsupported(table: &str, op: &str) -> Error {
    err!(
        "crsql_stream: table {table} uses the compact CRR layout, which does not support {op} yet; \
         convert it to the default layout first: SELECT crsql_convert_layout('{table}', 'crsqlite')"
    )
}

/// What the rest of the extension needs of a compact CRR.
#[derive(Debug)]
pub struct Compact {
    /// `SELECT cl, db_version, site_id, seq, vers` of a key's row clock,
    /// then `col_name, col_version, db_version, site_id, seq` of each of
    /// its cells (NULL when it has none): one row per cell, or one (pk
    /// binds first).
    pub load: String,
    /// `load` of [`ahead_keys`] keys at once: `k.i` (the key's place in
    /// the parameters, each key `i, pk…`), then `load`'s columns, for the
    /// keys that have a row clock, in the order of the keys.
    pub load_many: String,
    /// The largest value of the first primary-key column in the row-clock
    /// table, in `ORDER BY` order (no row: the table is empty).
    pub last_key: String,
    /// Insert a row clock unless the key has one: pks, cl, db_version,
    /// site_id, seq, vers.
    pub insert_row: String,
    /// The same, replacing the key's row clock.
    pub upsert_row: String,
    /// pks, cl, vers: a row clock whose run kept its position (version,
    /// site, last seq), written without touching its `(db_version, seq)`
    /// index entry.
    pub update_vers: String,
    pub delete_row: String,
    /// pks, col_name, col_version, db_version, site_id, seq.
    pub upsert_cell: String,
    /// `upsert_row` and `upsert_cell` of `schema::CLOCK_ROWS` rows (the
    /// merger's waiting writes, `crr::merge::compact::Pending`).
    pub upsert_rows: String,
    pub upsert_cells: String,
    /// `upsert_row` and `upsert_cell` as `INSERT OR IGNORE` of each size
    /// of `schema::CLOCK_ROW_SIZES`, for keys read absent: SQLite opens no
    /// statement journal for them (nothing in them may abort), and when
    /// one skips a row (the key was there after all) the merger writes its
    /// rows again with the single-row upserts.
    pub insert_rows: Vec<String>,
    pub insert_cells: Vec<String>,
    /// pks, col_name.
    pub delete_cell: String,
    /// The `vers` of a run of every column at col_version 1 (an insert).
    pub insert_vers: Value,
    /// What this transaction's new-row inserts wrote (`crr::counts`).
    pub fast: FastInserts,
}

/// Keys one statement of `Compact::load_many` reads (its parameters stay
/// under SQLite's oldest limit of 999).
pub fn ahead_keys(pk_columns: usize) -> usize {
    (999 / (pk_columns + 1)).clamp(1, 64)
}

/// What one transaction wrote to a compact CRR through the insert helper's
/// new-row path (one new row clock holding one run each), unless it also
/// wrote it any other way: then its COMMIT counts those clocks without
/// reading them ([`tally_fast`]). Kept per connection in the table's
/// metadata, for the transaction numbered `epoch` (`TxCounters::epoch`).
#[derive(Debug)]
pub struct FastInserts {
    epoch: AtomicI64,
    rows: AtomicI64,
    clocks: AtomicI64,
    other: AtomicBool,
}

impl Default for FastInserts {
    fn default() -> FastInserts {
        FastInserts {
            epoch: AtomicI64::new(-1),
            rows: AtomicI64::new(0),
            clocks: AtomicI64::new(0),
            other: AtomicBool::new(false),
        }
    }
}

impl FastInserts {
    /// Start over if the record is of an earlier transaction.
    fn at(&self, epoch: i64) -> &FastInserts {
        if self.epoch.load(Relaxed) != epoch {
            self.epoch.store(epoch, Relaxed);
            self.rows.store(0, Relaxed);
            self.clocks.store(0, Relaxed);
            self.other.store(false, Relaxed);
        }
        self
    }

    /// A new row clock holding `clocks` clocks was inserted.
    pub fn insert(&self, epoch: i64, clocks: i64) {
        let me = self.at(epoch);
        me.rows.fetch_add(1, Relaxed);
        me.clocks.fetch_add(clocks, Relaxed);
    }

    /// The table was written some other way.
    pub fn other(&self, epoch: i64) {
        self.at(epoch).other.store(true, Relaxed);
    }

    /// `(row clocks, clocks)` inserted in transaction `epoch`, if that is
    /// all it wrote to the table.
    pub fn only(&self, epoch: i64) -> Option<(i64, i64)> {
        (self.epoch.load(Relaxed) == epoch && !self.other.load(Relaxed))
            .then(|| (self.rows.load(Relaxed), self.clocks.load(Relaxed)))
    }
}

/// The names of a compact CRR's two tables.
pub fn table_names(table: &str) -> [String; 2] {
    [
        format!("{table}{ROWS_SUFFIX}"),
        format!("{table}{CELLS_SUFFIX}"),
    ]
}

/// The layout new CRRs get: whether `crr-layout` is `'compact'`.
fn compact_wanted(conn: &Connection) -> Result<bool> {
    let v: Option<String> = conn
        .prepare_cached("SELECT value FROM crsql_master WHERE key = ?1 AND typeof(value) = 'text'")?
        .query_row([SETTING_KEY], |r| r.get(0))
        .optional()?;
    Ok(v.as_deref() == Some("compact"))
}

/// `crsql_config_set('crr-layout', 'compact' | 'crsqlite')`.
pub fn config_set(ext: &Ext, value: ValueRef<'_>) -> Result<Value> {
    let v = match value {
        ValueRef::Text(b"compact") => "compact",
        ValueRef::Text(b"crsqlite") => "crsqlite",
        other => {
            return Err(err!(
                "crsql_config_set: crr-layout must be 'compact' or 'crsqlite', got {}",
                crate::crr::values::display(other)
            ))
        }
    };
    let inner = ext.lock("crsql_config_set")?;
    inner.conn.execute(
        "INSERT OR REPLACE INTO crsql_master (key, value) VALUES (?1, ?2)",
        rusqlite::params![SETTING_KEY, v],
    )?;
    Ok(Value::Text(v.into()))
}

/// `crsql_config_get('crr-layout')`.
pub fn config_get(ext: &Ext) -> Result<Value> {
    let inner = ext.lock("crsql_config_get")?;
    let compact = compact_wanted(&inner.conn)?;
    Ok(Value::Text(
        if compact { "compact" } else { "crsqlite" }.into(),
    ))
}

/// Whether `crsql_as_crr(table)` (with no clock tables of the cr-sqlite
/// layout) must go here: the setting asks for it, or compact tables of an
/// earlier life of the table remain.
pub fn wanted(conn: &Connection, table: &str) -> Result<bool> {
    Ok(compact_wanted(conn)? || is_compact(conn, table)?)
}

/// Whether `table` is (or was, if its base table is gone) a compact CRR:
/// its sentinel slot is in `crsql_compact_slots` (a user table that merely
/// ends in `__crsql_rows` is not one).
pub fn is_compact(conn: &Connection, table: &str) -> Result<bool> {
    if !schema::table_exists(conn, "crsql_compact_slots")? {
        return Ok(false);
    }
    Ok(conn
        .prepare_cached("SELECT 1 FROM crsql_compact_slots WHERE tbl = ?1 AND slot = -1")?
        .exists([table])?)
}

/// Whether `table` left the tables of a compact CRR when its base table
/// was dropped (`crsql_as_crr` re-creates it from them, DECISIONS D19).
pub fn leftover(conn: &Connection, table: &str) -> Result<bool> {
    let [rows, cells] = table_names(table);
    Ok(schema::table_exists(conn, &rows)?
        && schema::table_exists(conn, &cells)?
        && is_compact(conn, table)?)
}

/// Whether the primary key is a rowid alias: one `INTEGER PRIMARY KEY`
/// column of a rowid table (such a table has no index for its key).
fn rowid_alias(conn: &Connection, table: &str, pks: &[Column]) -> Result<bool> {
    if pks.len() != 1 || !pks[0].decl_type.eq_ignore_ascii_case("INTEGER") {
        return Ok(false);
    }
    let pk_indexes: i64 = conn
        .prepare_cached("SELECT count(*) FROM pragma_index_list(?1) WHERE origin = 'pk'")?
        .query_row([table], |r| r.get(0))?;
    Ok(pk_indexes == 0)
}

/// The DDL of a compact CRR's two tables and its slot map (no triggers).
fn tables_sql(conn: &Connection, table: &str, pks: &[Column], cols: &[Column]) -> Result<String> {
    let [rows, cells] = table_names(table).map(|n| quote_ident(&n));
    let pk_list = schema::ident_list(&stored_pks(pks));
    let rows_ddl = if rowid_alias(conn, table, pks)? {
        format!(
            "CREATE TABLE {rows} ({pk_list} INTEGER PRIMARY KEY, cl INTEGER NOT NULL, db_version INTEGER, \
             site_id INTEGER, seq INTEGER, vers BLOB)"
        )
    } else {
        format!(
            "CREATE TABLE {rows} ({pk_list}, cl INTEGER NOT NULL, db_version INTEGER, site_id INTEGER, \
             seq INTEGER, vers BLOB, PRIMARY KEY ({pk_list})) WITHOUT ROWID"
        )
    };
    let idx = |suffix: &str| quote_ident(&format!("{table}{suffix}_dbv"));
    let mut ddl = format!(
        "{rows_ddl};
CREATE INDEX {} ON {rows} (db_version, seq);
CREATE TABLE {cells} ({pk_list}, col_name TEXT NOT NULL, col_version INTEGER NOT NULL, \
 db_version INTEGER NOT NULL, site_id INTEGER NOT NULL, seq INTEGER NOT NULL, \
 PRIMARY KEY ({pk_list}, col_name)) WITHOUT ROWID;
CREATE INDEX {} ON {cells} (db_version, seq);
{SLOTS_DDL}
DELETE FROM crsql_compact_slots WHERE tbl = {t};
INSERT INTO crsql_compact_slots (tbl, slot, col_name) VALUES ({t}, -1, '-1');\n",
        idx(ROWS_SUFFIX),
        idx(CELLS_SUFFIX),
        t = quote_str(table),
    );
    for (slot, c) in cols.iter().enumerate() {
        ddl.push_str(&format!(
            "INSERT INTO crsql_compact_slots (tbl, slot, col_name) VALUES ({}, {slot}, {});\n",
            quote_str(table),
            quote_str(&c.name)
        ));
    }
    Ok(ddl)
}

/// The compact layout's triggers.
fn triggers_sql(table: &str, pks: &[Column], cols: &[Column]) -> String {
    crate::crr::triggers_sql_when(table, pks, cols, "crsql_compact_after", "")
}

/// `crsql_as_crr(table)` in the compact layout: the two tables, the slot
/// map and the triggers. A table with rows is made a CRR in the cr-sqlite
/// layout first (its backfill) and then converted, keeping every position.
pub fn create(ext: &Ext, inner: &mut Inner, table: &str) -> Result<()> {
    let conn = &inner.conn;
    let (pks, cols) = schema::read_columns(conn, table)?
        .ok_or_else(|| err!("crsql_as_crr: no such table: {table}"))?;
    // Another letter case of a CRR's name: SQLite matches table names
    // without case, so the compact tables exist already; refused as the
    // cr-sqlite layout refuses it.
    let [rows, _] = table_names(table);
    if conn
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1 COLLATE NOCASE",
        )?
        .exists([&rows])?
    {
        return Err(err!(
            "crsql_stream: {table} is not a CRR after creating its clock tables: a CRR of that name \
             in another letter case has them; call crsql_as_crr with the name as it was created"
        ));
    }
    let has_rows = conn
        .prepare(&format!("SELECT 1 FROM {} LIMIT 1", quote_ident(table)))?
        .exists([])?;
    if has_rows {
        crate::crr::create_crr(ext, inner, table, crate::crr::Untracked::Nothing)?;
        return convert::to_compact(ext, inner, table);
    }
    let mut ddl = tables_sql(conn, table, &pks, &cols)?;
    ddl.push_str(&triggers_sql(table, &pks, &cols));
    conn.execute_batch(&ddl)?;
    ext.invalidate_schema(inner);
    inner.refresh_tables(&ext.tx, true)?;
    crate::crr::counts::recount(inner, table)?;
    // Changes that waited for this table: merging is not built, so this
    // fails (with the table named) if there are any.
    crate::streams::pending::apply_pending(ext, inner, table)
}

/// Load a compact CRR's metadata.
pub fn load_table(conn: &Connection, name: &str) -> Result<TableInfo> {
    let (pks, cols) = schema::read_columns(conn, name)?
        .ok_or_else(|| err!("crsql_stream: CRR {name} has a row clock table but no base table"))?;
    if pks.is_empty() {
        return Err(err!(
            "crsql_stream: CRR {name} has no primary key columns; its clock tables are unusable"
        ));
    }
    let slots: Vec<String> = conn
        .prepare_cached(
            "SELECT col_name FROM crsql_compact_slots WHERE tbl = ?1 AND slot >= 0 AND dropped = 0 ORDER BY slot",
        )?
        .query_map([name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    // A bare `ALTER TABLE … ADD COLUMN` (no crsql_begin_alter) appends a
    // column: it is simply the next slot, registered at the next
    // alteration or conversion ([`slot_count`] counts it meanwhile). The
    // triggers keep the arity they were created with, so, as in the
    // cr-sqlite layout, inserts and merges work and updates fail until
    // crsql_begin_alter/crsql_commit_alter re-creates them.
    let appended_only =
        slots.len() <= cols.len() && slots.iter().zip(&cols).all(|(s, c)| *s == c.name);
    if !appended_only {
        let now: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        return Err(err!(
            "crsql_stream: the columns of compact CRR {name} ({}) no longer match its clocks' ({}): \
             a column was renamed or dropped without crsql_begin_alter/crsql_commit_alter; undo that \
             ALTER TABLE, then alter {name} between crsql_begin_alter('{name}') and crsql_commit_alter('{name}')",
            now.join(", "),
            slots.join(", ")
        ));
    }
    let (sql, compact) = sql::build(name, &pks, &cols);
    Ok(TableInfo {
        name: name.to_string(),
        pks,
        cols,
        sql,
        compact: Some(compact),
    })
}

/// SQL dropping a CRR's compact tables (`crsql_as_table`); empty when it
/// has none.
pub fn drop_sql(conn: &Connection, table: &str) -> Result<String> {
    if !is_compact(conn, table)? {
        return Ok(String::new());
    }
    let [rows, cells] = table_names(table).map(|n| quote_ident(&n));
    Ok(format!(
        "DROP TABLE IF EXISTS {rows};\nDROP TABLE IF EXISTS {cells};\n\
         DELETE FROM crsql_compact_slots WHERE tbl = {};",
        quote_str(table)
    ))
}

/// The clock tables of every compact CRR, and of compact CRRs whose base
/// table was dropped: each has `db_version`, `seq` and `site_id` columns
/// and an index on the first two (`state.rs`: the database's version, the
/// newest position, `crsql_new_site_id`).
pub fn clock_tables(conn: &Connection, cat: &schema::Catalog) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for rows in cat.tables_ending(ROWS_SUFFIX) {
        let stem = rows.strip_suffix(ROWS_SUFFIX).unwrap_or(rows);
        let [rows, cells] = table_names(stem);
        if cat.has_table(&cells) && is_compact(conn, stem)? {
            out.push(rows);
            out.push(cells);
        }
    }
    Ok(out)
}

/// How many column slots the runs of compact CRR `table` may span: its
/// registered slots, and the columns a bare `ADD COLUMN` appended since
/// (the base table's non-pk columns, when it exists).
fn slot_count(conn: &Connection, table: &str) -> Result<usize> {
    let registered: i64 = conn
        .prepare_cached("SELECT count(*) FROM crsql_compact_slots WHERE tbl = ?1 AND slot >= 0")?
        .query_row([table], |r| r.get(0))?;
    let now = schema::read_columns(conn, table)?.map_or(0, |(_, cols)| cols.len());
    Ok(now.max(usize::try_from(registered).unwrap_or(0)))
}

/// For a compact CRR, a subquery with one row per clock (`site_id`,
/// `db_version`, `seq`, `col_name`), read through the two
/// `(db_version, seq)` indexes (`crr::counts`); None for a table of the
/// cr-sqlite layout.
pub fn clock_source(conn: &Connection, table: &str) -> Result<Option<String>> {
    if !is_compact(conn, table)? {
        return Ok(None);
    }
    let slots = slot_count(conn, table)?;
    let [rows, cells] = table_names(table).map(|n| quote_ident(&n));
    Ok(Some(format!(
        "(SELECT c.site_id AS site_id, c.db_version AS db_version, \
         crsql_internal_run_seq(c.vers, c.seq, o.i) AS seq, o.i AS col_name \
         FROM {rows} AS c CROSS JOIN ({}) AS o ON crsql_internal_run_version(c.vers, o.i) IS NOT NULL \
         UNION ALL SELECT site_id, db_version, seq, col_name FROM {cells})",
        sql::slot_list(slots)
    )))
}

/// The tally of a compact CRR's clocks above version `lo` per
/// `(db_version, site_id)`: how many, and the largest seq (`crr::counts`,
/// at every COMMIT). One row per row clock (a run's `seq` is its last
/// clock's), read in the order of the `(db_version, seq)` indexes and
/// summed here: no sorter (a GROUP BY over the site sorts every row) and
/// no SQL function call per row. None for a table of the cr-sqlite layout.
pub fn tally(conn: &Connection, table: &str, lo: i64) -> Result<Option<crate::crr::counts::Tally>> {
    if !is_compact(conn, table)? {
        return Ok(None);
    }
    let [rows, cells] = table_names(table).map(|n| quote_ident(&n));
    let mut out = crate::crr::counts::Tally::new();
    for from in [
        format!("SELECT db_version, site_id, seq, vers FROM {rows} WHERE db_version > ?1"),
        format!("SELECT db_version, site_id, seq, NULL FROM {cells} WHERE db_version > ?1"),
    ] {
        let mut stmt = conn.prepare_cached(&from)?;
        let mut q = stmt.query([lo])?;
        while let Some(r) = q.next()? {
            let n = match r.get_ref(3)? {
                ValueRef::Null => 1,
                vers => run_count(vers, Some(table))?,
            };
            crate::crr::counts::tally_add(&mut out, r.get(0)?, r.get(1)?, n, r.get(2)?);
        }
    }
    Ok(Some(out))
}

/// The tally of a transaction that wrote only local clocks at `version`
/// and, to this table, only `rows` new row clocks holding `clocks` clocks
/// ([`FastInserts`]): from the row clocks' `(db_version, seq)` index alone
/// (no row read), if the rows above `lo` are exactly those: as many, all at
/// `version`, and no cell above `lo`. The rows above `lo` at `version` can
/// only be this transaction's, each written by one recorded insert (a key
/// inserted twice takes the other path), and a rollback only removes rows:
/// the same number means the same rows. None otherwise (the caller then
/// tallies in full). `maxseq` bounds the seqs (it only prunes).
pub fn tally_fast(
    conn: &Connection,
    table: &str,
    lo: i64,
    version: i64,
    (rows, clocks): (i64, i64),
    maxseq: i64,
) -> Result<Option<crate::crr::counts::Tally>> {
    let [rows_t, cells] = table_names(table).map(|n| quote_ident(&n));
    let (n, min, max): (i64, Option<i64>, Option<i64>) = conn
        .prepare_cached(&format!(
            "SELECT count(*), min(db_version), max(db_version) FROM {rows_t} WHERE db_version > ?1"
        ))?
        .query_row([lo], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let cells_above = conn
        .prepare_cached(&format!(
            "SELECT 1 FROM {cells} WHERE db_version > ?1 LIMIT 1"
        ))?
        .exists([lo])?;
    if n != rows || cells_above || (n > 0 && (min != Some(version) || max != Some(version))) {
        return Ok(None);
    }
    let mut out = crate::crr::counts::Tally::new();
    if n > 0 {
        out.insert((version, 0), (clocks, maxseq));
    }
    Ok(Some(out))
}

/// `crsql_internal_run_count(vers)`: how many clocks the run holds.
pub fn sql_run_count(_: &Ext, ctx: &Args<'_>) -> Result<Value> {
    Ok(Value::Integer(run_count(ctx.get_raw(0), None)?))
}

/// How many clocks a row clock's `vers` holds (NULL: none).
fn run_count(v: ValueRef<'_>, table: Option<&str>) -> Result<i64> {
    match vers_ref(v, table)? {
        None => Ok(0),
        Some(v) => Run::count(v)
            .map(|n| n as i64)
            .map_err(|e| vers_error(e, table)),
    }
}

/// A `vers` value as `core::rowclock` reads it (NULL: no run).
fn vers_ref<'a>(v: ValueRef<'a>, table: Option<&str>) -> Result<Option<VersRef<'a>>> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Integer(bits) => Ok(Some(VersRef::Bits(bits))),
        ValueRef::Blob(b) => Ok(Some(VersRef::Blob(b))),
        _ => Err(err!(
            "crsql_stream: {}a row clock's vers is neither an INTEGER nor a BLOB",
            of_table(table)
        )),
    }
}

fn of_table(table: Option<&str>) -> String {
    table.map_or(String::new(), |t| format!("a row clock of {t}: "))
}

fn vers_error(e: crsql_stream_core::rowclock::RunError, table: Option<&str>) -> Error {
    err!("crsql_stream: {}{e}", of_table(table))
}

/// Read a row clock's `vers` (NULL: no run; an INTEGER or a BLOB,
/// `core::rowclock::Vers`) whose last clock is at seq `last`: its clocks in
/// seq order into `out` (cleared first). False for NULL; errors name
/// `table`.
pub fn read_vers(
    v: ValueRef<'_>,
    last: i64,
    out: &mut Vec<Member>,
    table: Option<&str>,
) -> Result<bool> {
    out.clear();
    let Some(v) = vers_ref(v, table)? else {
        return Ok(false);
    };
    Run::decode(v, last, out).map_err(|e| vers_error(e, table))?;
    Ok(true)
}

/// The `vers` column's value of a run (`core::rowclock::Vers`).
pub fn vers_value(run: &Run) -> Value {
    match run.vers() {
        Vers::Bits(b) => Value::Integer(b),
        Vers::Blob(b) => Value::Blob(b),
    }
}

/// The slot argument `i` of a run function.
fn slot_arg(ctx: &Args<'_>, i: usize, f: &str) -> Result<i32> {
    match ctx.get_raw(i) {
        ValueRef::Integer(s) => i32::try_from(s).map_err(|_| err!("{f}: slot {s} is out of range")),
        _ => Err(err!("{f}: the slot must be an INTEGER")),
    }
}

/// The member of `slot` in the run of `vers` whose last clock is at `last`.
fn run_member(vers: ValueRef<'_>, last: i64, slot: i32) -> Result<Option<Member>> {
    let mut members = Vec::new();
    read_vers(vers, last, &mut members, None)?;
    Ok(members.into_iter().find(|m| m.slot == slot))
}

/// `crsql_internal_run_version(vers, slot)`: the col_version of `slot` in
/// the run (1 for a sentinel in it), or NULL.
pub fn sql_run_version(_: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let slot = slot_arg(ctx, 1, "crsql_internal_run_version")?;
    Ok(run_member(ctx.get_raw(0), 0, slot)?.map_or(Value::Null, |m| Value::Integer(m.col_version)))
}

/// `crsql_internal_run_seq(vers, seq, slot)`: the seq of `slot` in the run
/// of a row clock whose `seq` column is `seq`, or NULL.
pub fn sql_run_seq(_: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let last = match ctx.get_raw(1) {
        ValueRef::Integer(s) => s,
        _ => return Ok(Value::Null),
    };
    let slot = slot_arg(ctx, 2, "crsql_internal_run_seq")?;
    Ok(run_member(ctx.get_raw(0), last, slot)?.map_or(Value::Null, |m| Value::Integer(m.seq)))
}

/// `crsql_internal_compact_unsupported(table, operation, ...)`: the error
/// of a statement of the cr-sqlite layout run on a compact table.
pub fn sql_unsupported(_: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let text = |i: usize| match ctx.get_raw(i) {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        _ => String::new(),
    };
    Err(unsupported(&text(0), &text(1)))
}

/// `crsql_compact` on a compact CRR (DECISIONS D22): every row clock that
/// holds only the sentinel of a delete at or below `limit` and below
/// version `below` becomes a `crsql_tombstones` record, and goes (with its
/// lag counts). Returns the row-clock and cells rows removed.
pub fn compact_table(
    ext: &Ext,
    inner: &Inner,
    t: &TableInfo,
    limit: crsql_stream_core::Position,
    below: i64,
) -> Result<i64> {
    let c = t
        .compact
        .as_ref()
        .ok_or_else(|| err!("crsql_compact: {} is not a compact CRR", t.name))?;
    let [rows, _] = table_names(&t.name).map(|n| quote_ident(&n));
    let dead: Vec<Vec<Value>> = {
        let mut stmt = inner.conn.prepare(&format!(
            "SELECT {} FROM {rows} WHERE cl % 2 = 0",
            schema::ident_list(&stored_pks(&t.pks))
        ))?;
        let n = t.pks.len();
        let found = stmt
            .query_map([], |r| (0..n).map(|i| r.get(i)).collect())?
            .collect::<rusqlite::Result<_>>()?;
        found
    };
    let mut removed = 0;
    for pks in &dead {
        let pks: Vec<ValueRef<'_>> = pks.iter().map(ValueRef::from).collect();
        let before = local::load(inner, t, c, &pks)?;
        let clocks = before.expand();
        let Some(s) = clocks.get(&SENTINEL_SLOT).filter(|_| clocks.len() == 1) else {
            continue;
        };
        let at = crsql_stream_core::Position::new(s.db_version, s.seq);
        if s.db_version >= below || at > limit {
            continue;
        }
        let packed = crsql_stream_core::pack::pack_columns(
            pks.iter().map(|v| crate::crr::values::to_core(*v)),
        )
        .map_err(|source| Error::Pack {
            context: format!("packing a primary key of {}", t.name),
            source,
        })?;
        inner
            .conn
            .prepare_cached(
                "INSERT OR REPLACE INTO crsql_tombstones (tbl, pk, cl, db_version, seq, site_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(rusqlite::params![
                t.name,
                packed,
                s.col_version,
                s.db_version,
                s.seq,
                s.site
            ])?;
        removed += 1 + before.cells.len() as i64;
        local::save(ext, inner, t, c, &pks, &before, &Stored::default())?;
    }
    Ok(removed)
}
