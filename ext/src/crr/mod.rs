//! Turning tables into CRRs and back, schema alteration, backfill and the
//! per-database bootstrap (spec §2, §5, §11, §14).
//!
//! Each entry point runs inside its own named savepoint and, on failure,
//! rolls back to it and releases it: the caller's transaction is never
//! discarded (§15 Q9).

pub mod automigrate;
pub mod changes;
pub mod clset;
pub mod compact;
pub mod counts;
pub mod fract;
pub mod held;
pub mod local;
pub mod merge;
pub mod scan;
pub mod schema;
pub mod unpack;
pub mod values;

use rusqlite::{params, Connection, OptionalExtension};

use crsql_stream_core::merge::SENTINEL;

use crate::crr::local::{key_for, record_delete, revive_compacted};
use crate::err;
use crate::error::{Error, Result};
use crate::state::{Ext, Inner};
use schema::{quote_ident, quote_str, CLOCK_SUFFIX, MAX_NAME_LEN, PKS_SUFFIX};

/// `crsqlite_version` this layout corresponds to (cr-sqlite 0.16.3).
pub const CRSQLITE_LAYOUT_VERSION: i64 = 160300;

/// Run `f` inside `SAVEPOINT name`; on error roll back to it and release it.
pub fn in_savepoint<T>(conn: &Connection, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let outermost = conn.is_autocommit();
    conn.execute_batch(&format!("SAVEPOINT {name}"))?;
    match f() {
        Ok(v) => match conn.execute_batch(&format!("RELEASE {name}")) {
            Ok(()) => Ok(v),
            // A RELEASE that had to commit (SQLITE_BUSY, …) leaves the
            // transaction open: undo it, so no later write lands in it.
            Err(e) => {
                let undo = if outermost {
                    "ROLLBACK".to_string()
                } else {
                    format!("ROLLBACK TO {name}; RELEASE {name}")
                };
                let _ = conn.execute_batch(&undo);
                Err(e.into())
            }
        },
        Err(e) => {
            let _ = conn.execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"));
            Err(e)
        }
    }
}

fn count(conn: &Connection, sql: &str, arg: &str) -> Result<i64> {
    Ok(conn.prepare_cached(sql)?.query_row([arg], |r| r.get(0))?)
}

pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(err!("{what}: the table name must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(err!(
            "{what}: table name of {} bytes exceeds the maximum of {MAX_NAME_LEN}",
            name.len()
        ));
    }
    Ok(())
}

/// The preconditions of §5.2, in order, with cr-sqlite's messages.
fn check_compatible(conn: &Connection, t: &str) -> Result<()> {
    let checks: [(&str, String); 6] = [
        (
            "SELECT count(*) FROM pragma_index_list(?1) WHERE origin != 'pk' AND \"unique\" = 1",
            format!("Table {t} has unique indices besidesthe primary key. This is not allowed for CRRs"),
        ),
        (
            "SELECT count(*) = 0 FROM pragma_table_info(?1) WHERE pk > 0 AND \"notnull\" > 0",
            format!("Table {t} has no primary key or primary key is nullable. CRRs must have a non nullable primary key"),
        ),
        (
            "SELECT count(*) FROM pragma_table_info(?1) WHERE pk > 0 AND \"notnull\" = 0",
            format!("Table {t} has composite primary key part of which is nullable. CRRs must have a non nullable primary key"),
        ),
        (
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1 AND sql LIKE '%autoincrement%'",
            format!("{t} has auto-increment primary keys. This is likely a mistake as two concurrent nodes will assign unrelated rows the same primary key. Either use a primary key that represents the identity of your row or use a database friendly UUID such as UUIDv7"),
        ),
        (
            "SELECT count(*) FROM pragma_foreign_key_list(?1)",
            format!("Table {t} has checked foreign key constraints. CRRs may have foreign keys but must not have checked foreign key constraints as they can be violated by row level security or replication."),
        ),
        (
            "SELECT count(*) FROM pragma_table_xinfo(?1) WHERE \"notnull\" = 1 AND pk = 0 AND dflt_value IS NULL AND hidden = 0",
            format!("Table {t} has a NOT NULL column without a DEFAULT VALUE. This is not allowed as it prevents forwards and backwards compatibility between schema versions. Make the column nullable or assign a default value to it."),
        ),
    ];
    for (sql, msg) in checks {
        if count(conn, sql, t)? > 0 {
            return Err(Error::Msg(msg));
        }
    }
    check_column_names(conn, t)
}

/// Column names the clock layout cannot carry (DECISIONS D18): `-1` is the
/// sentinel's `cid`, `__crsql_key` is the key column of the pks table, and
/// a name longer than a package can carry would leave the stream stuck.
fn check_column_names(conn: &Connection, t: &str) -> Result<()> {
    let Some((pks, cols)) = schema::read_columns(conn, t)? else {
        return Ok(());
    };
    for c in pks.iter().chain(&cols) {
        if c.name.len() > MAX_NAME_LEN {
            return Err(err!(
                "Table {t} has a column name of {} bytes; CRR column names may have at most {MAX_NAME_LEN} bytes. Rename the column.",
                c.name.len()
            ));
        }
    }
    if cols.iter().any(|c| c.name == SENTINEL) {
        return Err(err!(
            "Table {t} has a column named \"{SENTINEL}\", which CRRs reserve for the row's sentinel clock. Rename the column."
        ));
    }
    if pks
        .iter()
        .any(|c| c.name.eq_ignore_ascii_case("__crsql_key"))
    {
        return Err(err!(
            "Table {t} has a primary key column named \"__crsql_key\", which CRRs reserve for their key table. Rename the column."
        ));
    }
    Ok(())
}

/// The DDL of the clock and pks tables and indexes, byte-for-byte as
/// cr-sqlite 0.16 writes it (identifiers quoted).
pub(crate) fn create_tables_sql(t: &str, pks: &[schema::Column]) -> String {
    let clock = quote_ident(&format!("{t}{CLOCK_SUFFIX}"));
    let dbv_idx = quote_ident(&format!("{t}__crsql_clock_dbv_idx"));
    let pkst = quote_ident(&format!("{t}{PKS_SUFFIX}"));
    let pks_idx = quote_ident(&format!("{t}__crsql_pks_pks"));
    let pk_list = pks
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "CREATE TABLE IF NOT EXISTS {clock} (
      key INTEGER NOT NULL,
      col_name TEXT NOT NULL,
      col_version INTEGER NOT NULL,
      db_version INTEGER NOT NULL,
      site_id INTEGER NOT NULL DEFAULT 0,
      seq INTEGER NOT NULL,
      PRIMARY KEY (key, col_name)
    ) WITHOUT ROWID, STRICT;
CREATE INDEX IF NOT EXISTS {dbv_idx} ON {clock} (\"db_version\");
CREATE TABLE IF NOT EXISTS {pkst} (__crsql_key INTEGER PRIMARY KEY, {pk_list});
CREATE UNIQUE INDEX IF NOT EXISTS {pks_idx} ON {pkst} ({pk_list});"
    )
}

pub(crate) fn drop_triggers_sql(t: &str, pks: &[schema::Column]) -> String {
    let mut sql = String::new();
    for suffix in ["__crsql_itrig", "__crsql_utrig", "__crsql_dtrig"] {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {};\n",
            quote_ident(&format!("{t}{suffix}"))
        ));
    }
    // 0.15 layout: one update trigger per primary-key column.
    for pk in pks {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS {};\n",
            quote_ident(&format!("{t}_{}__crsql_utrig", pk.name))
        ));
    }
    sql
}

pub(crate) fn create_triggers_sql(
    t: &str,
    pks: &[schema::Column],
    cols: &[schema::Column],
) -> String {
    triggers_sql(t, pks, cols, "crsql_after")
}

/// The three triggers of a CRR, calling `{helper}_insert`, `_update` and
/// `_delete` (`crr::compact` has its own helpers).
pub(crate) fn triggers_sql(
    t: &str,
    pks: &[schema::Column],
    cols: &[schema::Column],
    helper: &str,
) -> String {
    triggers_sql_when(t, pks, cols, helper, " WHEN crsql_internal_sync_bit() = 0")
}

/// [`triggers_sql`] with the triggers' `WHEN` clause (`crr::compact`'s
/// helpers test the sync bit themselves: one function call per row fewer).
pub(crate) fn triggers_sql_when(
    t: &str,
    pks: &[schema::Column],
    cols: &[schema::Column],
    helper: &str,
    when: &str,
) -> String {
    let tq = quote_ident(t);
    let ts = quote_str(t);
    let list = |prefix: &str, cs: &[schema::Column]| {
        cs.iter()
            .map(|c| format!("{prefix}.{}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let new_pks = list("NEW", pks);
    let old_pks = list("OLD", pks);
    let mut upd_args = vec![new_pks.clone(), old_pks.clone()];
    if !cols.is_empty() {
        upd_args.push(list("NEW", cols));
        upd_args.push(list("OLD", cols));
    }
    let upd_args = upd_args.join(", ");
    let itrig = quote_ident(&format!("{t}__crsql_itrig"));
    let utrig = quote_ident(&format!("{t}__crsql_utrig"));
    let dtrig = quote_ident(&format!("{t}__crsql_dtrig"));
    format!(
        "CREATE TRIGGER {itrig}
      AFTER INSERT ON {tq}{when}
      BEGIN
        VALUES ({helper}_insert({ts}, {new_pks}));
      END;
CREATE TRIGGER {utrig}
      AFTER UPDATE ON {tq}{when}
      BEGIN
        VALUES ({helper}_update({ts}, {upd_args}));
      END;
CREATE TRIGGER {dtrig}
    AFTER DELETE ON {tq}{when}
    BEGIN
      VALUES ({helper}_delete({ts}, {old_pks}));
    END;"
    )
}

/// What happened to the rows while no trigger recorded their writes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Untracked {
    /// Nothing (a new CRR): rows without clocks get them.
    Nothing,
    /// A `crsql_begin_alter` window: rows may have been inserted, deleted or
    /// changed (the values before are in the window's snapshot).
    AlterWindow,
    /// The base table was dropped and created again: every row the clocks
    /// know was deleted, and the rows there now are new.
    Recreated,
}

/// Create clock/pks tables and triggers for `t`, then backfill (§5.1, §5.3).
pub(crate) fn create_crr(
    ext: &Ext,
    inner: &mut Inner,
    t: &str,
    untracked: Untracked,
) -> Result<()> {
    let (pks, cols) = schema::read_columns(&inner.conn, t)?
        .ok_or_else(|| err!("crsql_as_crr: no such table: {t}"))?;
    let conn = &inner.conn;
    conn.execute_batch(&create_tables_sql(t, &pks))?;
    conn.execute_batch(&drop_triggers_sql(t, &pks))?;
    conn.execute_batch(&create_triggers_sql(t, &pks, &cols))?;
    ext.invalidate_schema(inner);
    inner.refresh_tables(&ext.tx, true)?;
    backfill(ext, inner, t, untracked)?;
    counts::recount(inner, t)?;
    // Changes that waited for this table or its new columns apply now.
    crate::streams::pending::apply_pending(ext, inner, t)
}

/// Give clocks to rows and cells that have none (§5.3), and record what
/// happened while writes were `untracked` (DECISIONS D19): deleted rows get
/// tombstones, rows back under a dead key are resurrected, changed cells are
/// re-stamped. All of it shares one new version (also at
/// `crsql_commit_alter`, unlike cr-sqlite, §15 Q22) and consecutive seqs.
fn backfill(ext: &Ext, inner: &mut Inner, name: &str, untracked: Untracked) -> Result<()> {
    let t = inner
        .table(name)
        .ok_or_else(|| err!("crsql_stream: {name} is not a CRR after creating its clock tables"))?;
    let base = quote_ident(name);
    let pkst = quote_ident(&format!("{name}{PKS_SUFFIX}"));
    let clock = quote_ident(&format!("{name}{CLOCK_SUFFIX}"));
    let pk_cols = schema::ident_list(&t.pks);
    let insert_sql = format!(
        "INSERT OR IGNORE INTO {clock} (key, col_name, col_version, db_version, seq, site_id) \
         VALUES (?1, ?2, 1, ?3, ?4, 0)"
    );
    let insert_clock = |inner: &mut Inner, key: i64, col: &str, v: i64| -> Result<()> {
        inner
            .conn
            .prepare_cached(&insert_sql)?
            .execute(params![key, col, v, ext.tx.take_seq()])?;
        Ok(())
    };
    let mut version: Option<i64> = None;
    let mut version_of = |inner: &mut Inner| -> Result<i64> {
        if let Some(v) = version {
            return Ok(v);
        }
        let v = inner.next_db_version(&ext.tx, None)?;
        version = Some(v);
        Ok(v)
    };

    // The causal length of key `p.__crsql_key` (0: no clock at all).
    let cl_of = format!(
        "COALESCE((SELECT col_version FROM {clock} WHERE key = p.__crsql_key AND col_name = '-1'), \
         (SELECT 1 FROM {clock} WHERE key = p.__crsql_key LIMIT 1), 0)"
    );
    let join = schema::pk_join(&t.pks);
    let keys = |inner: &Inner, sql: &str| -> Result<Vec<i64>> {
        Ok(inner
            .conn
            .prepare(sql)?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    };

    // 0. Live rows that are gone (or, after a re-creation, all of them) are
    //    deleted, with tombstones peers will see.
    let gone = match untracked {
        Untracked::Nothing => None,
        Untracked::AlterWindow => Some(format!(
            "SELECT p.__crsql_key FROM {pkst} AS p WHERE {cl_of} % 2 = 1 \
             AND NOT EXISTS (SELECT 1 FROM {base} AS b WHERE {join}) ORDER BY p.__crsql_key"
        )),
        Untracked::Recreated => Some(format!(
            "SELECT p.__crsql_key FROM {pkst} AS p WHERE {cl_of} % 2 = 1 ORDER BY p.__crsql_key"
        )),
    };
    if let Some(sql) = gone {
        for key in keys(inner, &sql)? {
            let v = version_of(inner)?;
            record_delete(ext, inner, &t, key, v)?;
        }
        // Only now the clocks of dropped columns go: a row whose only
        // clocks were there was still live above, and got its tombstone.
        prune_dropped_columns(ext, inner, name)?;
        // 0b. Rows present under a deleted key are inserted again: an odd
        //     causal length and clocks for every cell. (A key with no clock
        //     left at all is clocked as a new row in step 1b.)
        let dead = format!(
            "SELECT p.__crsql_key FROM {base} AS b JOIN {pkst} AS p ON {join} \
             WHERE {cl_of} % 2 = 0 AND {cl_of} > 0 ORDER BY p.__crsql_key"
        );
        for key in keys(inner, &dead)? {
            let v = version_of(inner)?;
            let conn = &inner.conn;
            conn.prepare_cached(&t.sql.sentinel_insert)?
                .execute(params![key, v, ext.tx.take_seq()])?;
            for col in &t.cols {
                conn.prepare_cached(&t.sql.clock_upsert_cell)?
                    .execute(params![key, col.name, v, ext.tx.take_seq()])?;
            }
        }
    }
    if untracked == Untracked::AlterWindow {
        // 0c. Cells whose value changed during the window.
        for key_col in changed_cells(inner, &t)? {
            let v = version_of(inner)?;
            inner
                .conn
                .prepare_cached(&t.sql.clock_upsert_cell)?
                .execute(params![key_col.0, key_col.1, v, ext.tx.take_seq()])?;
        }
    }

    // 1. Rows without a key, or (1b) whose key has no clock left.
    let new_rows: Vec<Vec<rusqlite::types::Value>> = {
        let mut stmt = inner.conn.prepare(&format!(
            "SELECT {pk_cols} FROM {base} EXCEPT SELECT {pk_cols} FROM {pkst} AS p WHERE {cl_of} > 0"
        ))?;
        let n = t.pks.len();
        let rows = stmt
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows
    };
    for pks in &new_rows {
        let v = version_of(inner)?;
        let refs: Vec<_> = pks.iter().map(rusqlite::types::ValueRef::from).collect();
        let (key, existed) = key_for(inner, &t, &refs, true)?;
        if !existed && revive_compacted(ext, inner, &t, key, &refs, v)? {
            // Back under a compacted deleted key: a resurrection.
            inner
                .conn
                .prepare_cached(&t.sql.sentinel_insert)?
                .execute(params![key, v, ext.tx.take_seq()])?;
        }
        let names: Vec<&str> = if t.cols.is_empty() {
            vec!["-1"]
        } else {
            t.cols.iter().map(|c| c.name.as_str()).collect()
        };
        for n in names {
            insert_clock(inner, key, n, v)?;
        }
    }

    // 2. Known rows with a cell that has no clock and a non-default value
    //    (another value, another type, or the other zero: SQL holds 0,
    //    0.0 and -0.0 equal, but a peer filling in the default would not
    //    hold this value).
    for col in &t.cols {
        let dflt = col.dflt.clone().unwrap_or_else(|| "NULL".to_string());
        let c = format!("b.{}", quote_ident(&col.name));
        let from = format!(
            "FROM {base} AS b JOIN {pkst} AS p ON {join} \
             WHERE NOT EXISTS (SELECT 1 FROM {clock} WHERE key = p.__crsql_key AND col_name = ?1)"
        );
        // Without a type affinity the default is stored as written, so its
        // type counts too; with one, both are converted alike.
        let other_type = if col.untyped() {
            format!(" OR typeof({c}) != typeof(({dflt}))")
        } else {
            String::new()
        };
        let mut keys: Vec<i64> = inner
            .conn
            .prepare(&format!(
                "SELECT p.__crsql_key {from} \
                 AND ({c} IS NOT ({dflt}){other_type}) ORDER BY p.__crsql_key"
            ))?
            .query_map([&col.name], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let zeros: Vec<(i64, f64, f64)> = inner
            .conn
            .prepare(&format!(
                "SELECT p.__crsql_key, {c}, ({dflt}) {from} AND typeof({c}) = 'real' \
                 AND typeof(({dflt})) = 'real' AND {c} = 0 AND ({dflt}) = 0 ORDER BY p.__crsql_key"
            ))?
            .query_map([&col.name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        keys.extend(
            zeros
                .into_iter()
                .filter(|(_, v, d)| v.to_bits() != d.to_bits())
                .map(|(k, _, _)| k),
        );
        for key in keys {
            let v = version_of(inner)?;
            insert_clock(inner, key, &col.name, v)?;
        }
    }
    Ok(())
}

/// The TEMP table holding a CRR's values as they were at
/// `crsql_begin_alter`: column `k` is the row's key, column `v:<name>` the
/// value of column `<name>` (the prefix keeps any column name apart from `k`).
fn snapshot_name(table: &str) -> String {
    format!("{table}__crsql_alter")
}

fn snapshot_exists(conn: &Connection, table: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sqlite_temp_master WHERE type = 'table' AND name = ?1")?
        .query_row([snapshot_name(table)], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Keep the values of `table`'s rows before an alter window, so that
/// `crsql_commit_alter` can tell which cells the window changed. A window
/// opened again before its commit keeps the first snapshot.
fn take_snapshot(conn: &Connection, table: &str) -> Result<()> {
    let (pks, cols) = schema::read_columns(conn, table)?
        .ok_or_else(|| err!("crsql_begin_alter: no such table: {table}"))?;
    let join = schema::pk_join(&pks);
    let values: String = cols
        .iter()
        .map(|c| {
            format!(
                ", b.{} AS {}",
                quote_ident(&c.name),
                quote_ident(&format!("v:{}", c.name))
            )
        })
        .collect();
    let snap = quote_ident(&snapshot_name(table));
    conn.execute_batch(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {snap} AS SELECT p.__crsql_key AS k{values} \
         FROM main.{} AS b JOIN main.{} AS p ON {join};
         CREATE INDEX IF NOT EXISTS temp.{} ON {snap} (k);",
        quote_ident(table),
        quote_ident(&format!("{table}{PKS_SUFFIX}")),
        quote_ident(&format!("{table}__crsql_alter_k")),
    ))?;
    Ok(())
}

fn drop_snapshot(conn: &Connection, table: &str) -> Result<()> {
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS temp.{}",
        quote_ident(&snapshot_name(table))
    ))?;
    Ok(())
}

/// `(key, column)` of every cell of a row that was there before the alter
/// window and still is, whose value (or its type) differs from the snapshot.
fn changed_cells(inner: &Inner, t: &schema::TableInfo) -> Result<Vec<(i64, String)>> {
    let conn = &inner.conn;
    if !snapshot_exists(conn, &t.name)? {
        return Ok(Vec::new());
    }
    let snap_name = snapshot_name(&t.name);
    let before: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info(?1, 'temp')")?
        .query_map([&snap_name], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let join = schema::pk_join(&t.pks);
    let snap = quote_ident(&snap_name);
    let base = quote_ident(&t.name);
    let pkst = quote_ident(&format!("{}{PKS_SUFFIX}", t.name));
    let mut out = Vec::new();
    for col in &t.cols {
        let old_name = format!("v:{}", col.name);
        if !before.contains(&old_name) {
            continue;
        }
        let (now, old) = (
            format!("b.{}", quote_ident(&col.name)),
            format!("s.{}", quote_ident(&old_name)),
        );
        let from = format!(
            "FROM temp.{snap} AS s JOIN main.{pkst} AS p ON p.__crsql_key = s.k \
             JOIN main.{base} AS b ON {join}"
        );
        let keys: Vec<i64> = conn
            .prepare(&format!(
                "SELECT s.k {from} \
                 WHERE {now} IS NOT {old} COLLATE BINARY OR typeof({now}) != typeof({old}) ORDER BY s.k"
            ))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        out.extend(keys.into_iter().map(|k| (k, col.name.clone())));
        // SQL holds 0.0 and -0.0 equal, but they are different values (and
        // a peer keeps the one it was sent): compare their bits.
        let zeros: Vec<(i64, f64, f64)> = conn
            .prepare(&format!(
                "SELECT s.k, {now}, {old} {from} WHERE typeof({now}) = 'real' AND typeof({old}) = 'real' \
                 AND {now} = 0 AND {old} = 0 ORDER BY s.k"
            ))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        out.extend(
            zeros
                .into_iter()
                .filter(|(_, a, b)| a.to_bits() != b.to_bits())
                .map(|(k, _, _)| (k, col.name.clone())),
        );
    }
    Ok(out)
}

/// Clock tables left by a CRR whose base table was dropped without
/// `crsql_as_table`: usable again only with the same primary key columns.
/// `layout` names the tables left: those of the cr-sqlite layout
/// (`t__crsql_clock`, `t__crsql_pks`) or the compact layout's.
fn check_leftover_clocks(conn: &Connection, table: &str, compact: bool) -> Result<()> {
    let (pks, _) = schema::read_columns(conn, table)?
        .ok_or_else(|| err!("crsql_as_crr: no such table: {table}"))?;
    let pkst = format!("{table}{PKS_SUFFIX}");
    let (key_table, key_cols, tables) = if compact {
        let [rows, cells] = compact::table_names(table);
        let drop = format!("{} and {}", quote_ident(&rows), quote_ident(&cells));
        (rows, "pk > 0", drop)
    } else {
        let clock = quote_ident(&format!("{table}{CLOCK_SUFFIX}"));
        let drop = format!("{clock} and {}", quote_ident(&pkst));
        (pkst, "name != '__crsql_key'", drop)
    };
    let mut old: Vec<String> = conn
        .prepare(&format!(
            "SELECT name FROM pragma_table_info(?1) WHERE {key_cols}"
        ))?
        .query_map([&key_table], |r| r.get(0))?
        .map(|n| n.map(|n: String| compact::original_name(&n)))
        .collect::<rusqlite::Result<_>>()?;
    let mut now: Vec<String> = pks.into_iter().map(|c| c.name).collect();
    old.sort();
    now.sort();
    if old != now {
        return Err(err!(
            "crsql_as_crr: {table} was dropped while it was a CRR and its clock tables remain, with primary key ({}) \
             where {table} now has ({}). To tell peers the old rows are gone, create {table} with the old primary key \
             and call crsql_as_crr again; if no peer ever synced it, drop {tables} first.",
            old.join(", "),
            now.join(", "),
        ));
    }
    Ok(())
}

/// Remove the clocks of columns `table` no longer has (the sentinel stays),
/// keeping the newest position where it was.
fn prune_dropped_columns(ext: &Ext, inner: &mut Inner, table: &str) -> Result<()> {
    inner.persist_newest(&ext.tx)?;
    inner.conn.execute(
        &format!(
            "DELETE FROM {} WHERE col_name != '-1' AND col_name NOT IN \
             (SELECT name FROM pragma_table_info(?1) WHERE pk = 0)",
            quote_ident(&format!("{table}{CLOCK_SUFFIX}"))
        ),
        [table],
    )?;
    Ok(())
}

/// How an entry point makes its work all-or-nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Atomic {
    /// In its own savepoint (the SQL functions).
    Savepoint,
    /// Through the statement that runs it: SQLite refuses to open a
    /// savepoint while a writing statement runs, as `CREATE VIRTUAL TABLE`
    /// and `DROP TABLE` of a `clset` table do; their statement journal undoes
    /// the work when they fail.
    Statement,
}

fn atomically<T>(
    conn: &Connection,
    name: &str,
    how: Atomic,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    match how {
        Atomic::Savepoint => in_savepoint(conn, name, f),
        Atomic::Statement => f(),
    }
}

/// `crsql_as_crr([schema,] table)`.
pub fn as_crr(ext: &Ext, table: &str) -> Result<()> {
    as_crr_in(ext, table, Atomic::Savepoint)
}

/// [`as_crr`], made atomic as `how` says.
pub fn as_crr_in(ext: &Ext, table: &str, how: Atomic) -> Result<()> {
    check_name("crsql_as_crr", table)?;
    let mut inner = ext.lock("crsql_as_crr")?;
    let conn = ext.db.connection()?;
    // No alter window can be open outside a transaction (it is a savepoint).
    let autocommit = conn.is_autocommit();
    atomically(&conn, "crsql_as_crr", how, || {
        check_compatible(&inner.conn, table)?;
        if schema::is_crr(&inner.conn, table)? {
            return Ok(());
        }
        if !schema::table_exists(&inner.conn, &format!("{table}{CLOCK_SUFFIX}"))? {
            // crr::compact: a compact CRR whose base table was dropped and
            // created again is re-created as the cr-sqlite layout's is
            // (below), on its clocks rewritten in that layout, and
            // converted back.
            if compact::leftover(&inner.conn, table)? {
                check_leftover_clocks(&inner.conn, table, true)?;
                compact::convert::leftover_to_crsqlite(&inner, table)?;
                create_crr(ext, &mut inner, table, Untracked::Recreated)?;
                return compact::convert::to_compact(ext, &mut inner, table);
            }
            // crr::compact: the layout `crr-layout` asks for.
            if compact::wanted(&inner.conn, table)? {
                crate::streams::compact::drop_table(&inner, table)?;
                return compact::create(ext, &mut inner, table);
            }
            // New clocks: no compacted record of an earlier life applies.
            crate::streams::compact::drop_table(&inner, table)?;
            return create_crr(ext, &mut inner, table, Untracked::Nothing);
        }
        if snapshot_exists(&inner.conn, table)? {
            if !autocommit {
                return Err(err!(
                    "crsql_as_crr: {table} is inside a crsql_begin_alter window; finish it with crsql_commit_alter('{table}')"
                ));
            }
            // A window ended by a plain COMMIT: record what it did, as
            // crsql_commit_alter would have.
            create_crr(ext, &mut inner, table, Untracked::AlterWindow)?;
            drop_snapshot(&inner.conn, table)?;
            return compact::convert::end_alter(ext, &mut inner, table);
        }
        // The base table was dropped and created again (DECISIONS D19).
        check_leftover_clocks(&inner.conn, table, false)?;
        create_crr(ext, &mut inner, table, Untracked::Recreated)
    })
}

/// `crsql_as_table(table)`: drop the CRR machinery, keep the data.
pub fn as_table(ext: &Ext, table: &str) -> Result<()> {
    as_table_in(ext, table, Atomic::Savepoint)
}

/// [`as_table`], made atomic as `how` says.
pub fn as_table_in(ext: &Ext, table: &str, how: Atomic) -> Result<()> {
    check_name("crsql_as_table", table)?;
    let mut inner = ext.lock("crsql_as_table")?;
    let conn = ext.db.connection()?;
    atomically(&conn, "crsql_as_table", how, || {
        let pks = schema::read_columns(&inner.conn, table)?
            .map(|(p, _)| p)
            .unwrap_or_default();
        // Keep db_version and the newest position from moving backwards
        // once the clocks are gone.
        inner.persist_newest(&ext.tx)?;
        let mut sql = drop_triggers_sql(table, &pks);
        sql.push_str(&format!(
            "DROP TABLE IF EXISTS {};\nDROP TABLE IF EXISTS {};",
            quote_ident(&format!("{table}{CLOCK_SUFFIX}")),
            quote_ident(&format!("{table}{PKS_SUFFIX}"))
        ));
        sql.push_str(&compact::drop_sql(&inner.conn, table)?);
        inner.conn.execute_batch(&sql)?;
        crate::streams::compact::drop_table(&inner, table)?;
        counts::drop_table(&inner, table)?;
        ext.invalidate_schema(&mut inner);
        Ok(())
    })
}

/// `crsql_begin_alter([schema,] table)`: open `SAVEPOINT alter_crr` and drop
/// the CRR's triggers so that the alteration is not tracked.
pub fn begin_alter(ext: &Ext, table: &str) -> Result<()> {
    check_name("crsql_begin_alter", table)?;
    let mut inner = ext.lock("crsql_begin_alter")?;
    if !schema::is_crr(&inner.conn, table)? {
        return Err(err!("crsql_begin_alter: {table} is not a CRR"));
    }
    let pks = schema::read_columns(&inner.conn, table)?
        .map(|(p, _)| p)
        .unwrap_or_default();
    inner.conn.execute_batch("SAVEPOINT alter_crr")?;
    // crr::compact: altered in the cr-sqlite layout, converted back at the end.
    let work = compact::convert::begin_alter(ext, &mut inner, table);
    let work = work
        .and_then(|()| take_snapshot(&inner.conn, table))
        .and_then(|()| {
            inner
                .conn
                .execute_batch(&drop_triggers_sql(table, &pks))
                .map_err(Into::into)
        });
    if let Err(e) = work {
        let _ = inner
            .conn
            .execute_batch("ROLLBACK TO alter_crr; RELEASE alter_crr");
        return Err(e);
    }
    ext.invalidate_schema(&mut inner);
    Ok(())
}

/// `crsql_commit_alter([schema,] table)`: compact, re-create the CRR,
/// backfill, and release `alter_crr` (§11.2). On failure everything it did is
/// undone and the `alter_crr` savepoint stays open.
pub fn commit_alter(ext: &Ext, table: &str) -> Result<()> {
    check_name("crsql_commit_alter", table)?;
    let mut inner = ext.lock("crsql_commit_alter")?;
    let conn = ext.db.connection()?;
    conn.execute_batch("SAVEPOINT crsql_commit_alter")?;
    let work = (|| -> Result<()> {
        // crr::compact: a compact table still in its layout had no window.
        if compact::is_compact(&inner.conn, table)? {
            return Err(err!(
                "crsql_commit_alter: no crsql_begin_alter('{table}') is open on this connection"
            ));
        }
        let cur = inner.db_version(&ext.tx)?;
        let (pks, _) = schema::read_columns(&inner.conn, table)?
            .ok_or_else(|| err!("crsql_commit_alter: no such table: {table}"))?;
        let clock = quote_ident(&format!("{table}{CLOCK_SUFFIX}"));
        let pkst = quote_ident(&format!("{table}{PKS_SUFFIX}"));
        let idx_cols: Vec<String> = inner
            .conn
            .prepare("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?
            .query_map([format!("{table}__crsql_pks_pks")], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut now: Vec<String> = pks.iter().map(|c| c.name.clone()).collect();
        let mut before = idx_cols.clone();
        now.sort();
        before.sort();
        if now != before {
            // A new primary key is a new identity for every row: the clocks
            // start over, and the snapshot's keys mean nothing any more.
            inner.persist_newest(&ext.tx)?;
            inner.conn.execute_batch(&format!(
                "DROP TABLE IF EXISTS {clock}; DROP TABLE IF EXISTS {pkst};"
            ))?;
            drop_snapshot(&inner.conn, table)?;
            crate::streams::compact::drop_table(&inner, table)?;
        }
        if cur > 0 {
            inner.persist_version(cur)?;
        }
        // The altered table must still meet the CRR preconditions (§5.2).
        check_compatible(&inner.conn, table)?;
        create_crr(ext, &mut inner, table, Untracked::AlterWindow)?;
        drop_snapshot(&inner.conn, table)?;
        compact::convert::end_alter(ext, &mut inner, table)?;
        conn.execute_batch("RELEASE alter_crr").map_err(|e| {
            if crate::error::message(&e).contains("no such savepoint") {
                err!(
                    "crsql_commit_alter: no crsql_begin_alter('{table}') is open on this connection ({e}); \
                     if a COMMIT ended the window, crsql_as_crr('{table}') records what it did"
                )
            } else {
                Error::Sqlite(e)
            }
        })
    })();
    let Err(e) = work else {
        return Ok(());
    };
    // The commit's own savepoint goes; `alter_crr` stays open, so the
    // schema can be fixed and the commit retried.
    let _ = conn.execute_batch("ROLLBACK TO crsql_commit_alter; RELEASE crsql_commit_alter");
    ext.invalidate_schema(&mut inner);
    let Error::Sqlite(sqlite_error) = e else {
        return Err(e);
    };
    if !snapshot_exists(&conn, table).unwrap_or(false) {
        // The window's snapshot is gone with it: SQLite rolled the
        // transaction back (disk full, I/O error at the commit). End what
        // is left of it, so that no retry can report success for an
        // alteration that is not there.
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return Err(Error::prefixed(
            &format!(
                "crsql_commit_alter: SQLite rolled back the alteration of {table}; \
                 run crsql_begin_alter('{table}') and the alteration again: "
            ),
            sqlite_error,
        ));
    }
    Err(Error::prefixed(
        &format!(
            "crsql_commit_alter: the alteration of {table} is still open; \
             fix the cause and call crsql_commit_alter('{table}') again: "
        ),
        sqlite_error,
    ))
}

/// Create the global tables and read or create the site id (§1, §2.1, §3.1,
/// §14). Returns the site id and the stored `merge-equal-values` setting.
///
/// Several connections may load the extension on the same new file at
/// once (a hub opening a new tenant from two tasks): checking for the
/// tables and creating them is then one `BEGIN IMMEDIATE` transaction, so
/// the second connection finds what the first created instead of creating
/// a second local site id. A database that already has its local site id
/// takes no write lock (a read-only connection loads as before).
pub fn bootstrap(conn: &Connection) -> Result<([u8; 16], bool)> {
    let has_local_site =
        schema::table_exists(conn, "crsql_site_id")? && stored_site_id(conn)?.is_some();
    if has_local_site || !conn.is_autocommit() {
        return create_globals(conn);
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let globals = create_globals(conn)?;
    tx.commit()?;
    Ok(globals)
}

/// The local site id `crsql_site_id` holds (ordinal 0), if any.
pub fn stored_site_id(conn: &Connection) -> Result<Option<Vec<u8>>> {
    Ok(conn
        .prepare_cached("SELECT site_id FROM crsql_site_id WHERE ordinal = 0")?
        .query_row([], |r| r.get(0))
        .optional()?)
}

/// [`bootstrap`]'s checks and writes, in the caller's transaction.
fn create_globals(conn: &Connection) -> Result<([u8; 16], bool)> {
    let exists = |name: &str| schema::table_exists(conn, name);
    if !exists("crsql_tracked_peers")? {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS crsql_tracked_peers (\"site_id\" BLOB NOT NULL, \"version\" INTEGER NOT NULL, \
             \"seq\" INTEGER DEFAULT 0, \"tag\" INTEGER, \"event\" INTEGER, PRIMARY KEY (\"site_id\", \"tag\", \"event\")) STRICT;",
        )?;
    }
    if exists("crsql_master")? {
        let recorded: i64 = conn
            .query_row(
                "SELECT value FROM crsql_master WHERE key = 'crsqlite_version' AND typeof(value) = 'integer'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        if recorded < 150000 {
            return Err(err!(
                "Opening a db created with cr-sqlite version {recorded} is not supported. Upcoming release 0.15.0 is a breaking change."
            ));
        }
        let old_clocks: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master AS m WHERE m.type = 'table' \
             AND substr(m.name, -13) = '__crsql_clock' \
             AND EXISTS (SELECT 1 FROM pragma_table_info(m.name) WHERE name = '__crsql_col_version')",
            [],
            |r| r.get(0),
        )?;
        if recorded < 160000 && (exists("__crsql_siteid")? || old_clocks > 0) {
            return Err(err!(
                "crsql_stream: this database uses the cr-sqlite 0.15 layout (crsqlite_version {recorded}: __crsql_siteid or __crsql_-prefixed clock columns), \
                 which cannot be read; export the data and re-create the CRRs"
            ));
        }
        if recorded < CRSQLITE_LAYOUT_VERSION {
            conn.execute(
                "INSERT OR REPLACE INTO crsql_master (key, value) VALUES ('crsqlite_version', ?1)",
                [CRSQLITE_LAYOUT_VERSION],
            )?;
        }
    } else {
        conn.execute_batch("CREATE TABLE IF NOT EXISTS \"crsql_master\" (\"key\" TEXT PRIMARY KEY, \"value\" ANY);")?;
        conn.execute(
            "INSERT OR REPLACE INTO crsql_master (key, value) VALUES ('crsqlite_version', ?1)",
            [CRSQLITE_LAYOUT_VERSION],
        )?;
    }
    if !exists("crsql_site_id")? {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS \"crsql_site_id\" (site_id BLOB NOT NULL, ordinal INTEGER PRIMARY KEY);
             CREATE UNIQUE INDEX IF NOT EXISTS crsql_site_id_site_id ON \"crsql_site_id\" (site_id);",
        )?;
    }
    let site = match stored_site_id(conn)? {
        Some(b) => <[u8; 16]>::try_from(b.as_slice()).map_err(|_| {
            err!(
                "crsql_stream: crsql_site_id holds a local site id of {} bytes; it must be 16",
                b.len()
            )
        })?,
        None => {
            let id = random_site_id(conn)?;
            conn.execute(
                "INSERT INTO crsql_site_id (site_id, ordinal) VALUES (?1, 0)",
                [id.as_slice()],
            )?;
            id
        }
    };
    let mev: Option<rusqlite::types::Value> = conn
        .query_row(
            "SELECT value FROM crsql_master WHERE key = 'config.merge-equal-values'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let mev = match mev {
        None | Some(rusqlite::types::Value::Null) => false,
        Some(rusqlite::types::Value::Integer(i)) => i != 0,
        Some(other) => {
            return Err(err!(
                "crsql_stream: crsql_master holds a non-integer config.merge-equal-values ({other:?}); \
                 set it to 0 or 1 with UPDATE crsql_master SET value = 0 WHERE key = 'config.merge-equal-values'"
            ))
        }
    };
    Ok((site, mev))
}

/// A fresh random site id: SQLite's `randomblob(16)` with the bits of a
/// UUID v4.
fn random_site_id(conn: &Connection) -> Result<[u8; 16]> {
    let bytes: Vec<u8> = conn.query_row("SELECT randomblob(16)", [], |r| r.get(0))?;
    let mut id = <[u8; 16]>::try_from(bytes.as_slice())
        .map_err(|_| err!("randomblob(16) returned a wrong size"))?;
    id[6] = (id[6] & 0x0F) | 0x40;
    id[8] = (id[8] & 0x3F) | 0x80;
    Ok(id)
}

/// The site ids this database had before (`crsql_new_site_id`), oldest first.
pub fn former_site_ids(conn: &Connection) -> Result<Vec<[u8; 16]>> {
    let blob: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT value FROM crsql_master WHERE key = 'former_site_ids' AND typeof(value) = 'blob'",
        )?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(blob
        .unwrap_or_default()
        .chunks_exact(16)
        .filter_map(|c| <[u8; 16]>::try_from(c).ok())
        .collect())
}

/// `crsql_new_site_id()`: give this database a fresh site id, for a restored
/// backup or a file copied to several devices (docs/operations.md). Changes
/// written so far keep the old id (it becomes an ordinary site of
/// `crsql_site_id`); later writes carry the new one. Positions do not move.
pub fn new_site_id(ext: &Ext) -> Result<[u8; 16]> {
    let mut inner = ext.lock("crsql_new_site_id")?;
    let conn = ext.db.connection()?;
    // Outside any transaction, so that it commits at once: a rollback could
    // not take back the id this connection would already be using.
    if !conn.is_autocommit() {
        return Err(err!(
            "crsql_new_site_id: call it outside a transaction (it commits at once)"
        ));
    }
    inner.db_version(&ext.tx)?;
    let old = inner.site_id();
    let new = in_savepoint(&conn, "crsql_new_site_id", || {
        let new = random_site_id(&inner.conn)?;
        inner.conn.execute(
            "UPDATE crsql_site_id SET site_id = ?1 WHERE ordinal = 0",
            [new.as_slice()],
        )?;
        let ordinal: i64 = inner.conn.query_row(
            "INSERT INTO crsql_site_id (site_id) VALUES (?1) RETURNING ordinal",
            [old.as_slice()],
            |r| r.get(0),
        )?;
        // Appended here: `||` in SQL would turn the blob into text.
        let mut former = former_site_ids(&inner.conn)?;
        former.push(old);
        inner.conn.execute(
            "INSERT OR REPLACE INTO crsql_master (key, value) VALUES ('former_site_ids', ?1)",
            [former.concat()],
        )?;
        counts::move_local_site(&inner, ordinal)?;
        for clock in inner.clock_tables() {
            inner.conn.execute(
                &format!(
                    "UPDATE {} SET site_id = ?1 WHERE site_id = 0",
                    quote_ident(clock)
                ),
                [ordinal],
            )?;
        }
        Ok(new)
    })?;
    inner.set_site_id(new);
    Ok(new)
}
