//! `crsql_convert_layout(table, 'compact' | 'crsqlite')`: rewrite a CRR's
//! clocks in the other layout, in one savepoint, keeping every clock at its
//! position (docs/compact-layout.md, "convert"). The base table is not
//! touched, so `crsql_changes`, positions and lag counts are the same
//! before and after. Memory is one row's clocks at a time.

use rusqlite::params;
use rusqlite::types::{Value, ValueRef};

use crsql_stream_core::rowclock::{RowClocks, Stored};

use super::{local, sql, table_names, tables_sql, triggers_sql, unsupported};
use crate::crr::schema::{self, quote_ident, TableInfo, CLOCK_SUFFIX, PKS_SUFFIX};
use crate::crr::values::out;
use crate::crr::{check_name, in_savepoint};
use crate::err;
use crate::error::Result;
use crate::state::{Ext, Inner};

/// `crsql_convert_layout(table, layout)`.
pub fn convert_layout(ext: &Ext, table: &str, layout: &str) -> Result<()> {
    const F: &str = "crsql_convert_layout";
    check_name(F, table)?;
    let to_compact_layout = match layout {
        "compact" => true,
        "crsqlite" => false,
        other => {
            return Err(err!(
                "{F}: the layout must be 'compact' or 'crsqlite', got '{other}'"
            ))
        }
    };
    let mut inner = ext.lock(F)?;
    let conn = ext.db.connection()?;
    in_savepoint(&conn, F, || {
        inner.sync(&ext.tx)?;
        if !schema::is_crr(&inner.conn, table)? {
            return Err(err!(
                "{F}: {table} is not a CRR (or is inside a crsql_begin_alter window)"
            ));
        }
        match (to_compact_layout, super::is_compact(&inner.conn, table)?) {
            (true, false) => to_compact(ext, &mut inner, table),
            (false, true) => to_crsqlite(ext, &mut inner, table),
            _ => Ok(()),
        }
    })
}

/// A CRR's metadata as read from its base table, with no statements: what
/// writing one layout's rows needs while the other layout is in place.
fn bare_table(inner: &Inner, table: &str) -> Result<TableInfo> {
    let (pks, cols) = schema::read_columns(&inner.conn, table)?
        .ok_or_else(|| err!("crsql_convert_layout: no such table: {table}"))?;
    Ok(TableInfo {
        name: table.to_string(),
        sql: schema::TableSql::default(),
        pks,
        cols,
        compact: None,
    })
}

/// Replace the cr-sqlite layout's clock and pks tables of `table` by the
/// compact tables, row by row.
pub fn to_compact(ext: &Ext, inner: &mut Inner, table: &str) -> Result<()> {
    let t = bare_table(inner, table)?;
    let (_, c) = sql::build(table, &t.pks, &t.cols);
    inner
        .conn
        .execute_batch(&tables_sql(&inner.conn, table, &t.pks, &t.cols)?)?;
    let clock = quote_ident(&format!("{table}{CLOCK_SUFFIX}"));
    let pkst = quote_ident(&format!("{table}{PKS_SUFFIX}"));
    let p_cols: String = t
        .pks
        .iter()
        .map(|c| format!(", p.{}", quote_ident(&c.name)))
        .collect();
    let mut stmt = inner.conn.prepare(&format!(
        "SELECT c.key, c.col_name, c.col_version, c.db_version, c.site_id, c.seq{p_cols} \
         FROM {clock} AS c JOIN {pkst} AS p ON p.__crsql_key = c.key ORDER BY c.key"
    ))?;
    let mut rows = stmt.query([])?;
    let mut row: Option<(i64, Vec<Value>, RowClocks)> = None;
    let flush = |row: &Option<(i64, Vec<Value>, RowClocks)>| -> Result<()> {
        if let Some((_, pks, clocks)) = row {
            let pks: Vec<ValueRef<'_>> = pks.iter().map(ValueRef::from).collect();
            let stored = Stored::from_clocks(clocks);
            local::save(ext, inner, &t, &c, &pks, &Stored::default(), &stored)?;
        }
        Ok(())
    };
    while let Some(r) = rows.next()? {
        let key: i64 = r.get(0)?;
        if row.as_ref().is_none_or(|(k, _, _)| *k != key) {
            flush(&row)?;
            let pks = (0..t.pks.len())
                .map(|i| r.get::<_, Value>(6 + i))
                .collect::<rusqlite::Result<_>>()?;
            row = Some((key, pks, RowClocks::new()));
        }
        let name: String = r.get(1)?;
        let slot = local::name_slot(&t, &name).ok_or_else(|| {
            err!("crsql_convert_layout: {table} has clocks of a column it no longer has: {name}")
        })?;
        if let Some((_, _, clocks)) = &mut row {
            clocks.insert(slot, local::clock_at(r, 2)?);
        }
    }
    flush(&row)?;
    drop(rows);
    drop(stmt);
    let mut ddl = crate::crr::drop_triggers_sql(table, &t.pks);
    ddl.push_str(&format!(
        "DROP TABLE {clock};\nDROP TABLE {pkst};\n{}",
        triggers_sql(table, &t.pks, &t.cols)
    ));
    inner.conn.execute_batch(&ddl)?;
    ext.invalidate_schema(inner);
    inner.refresh_tables(&ext.tx, true)
}

/// Replace the compact tables of `table` by the cr-sqlite layout's clock
/// and pks tables, row by row.
pub fn to_crsqlite(ext: &Ext, inner: &mut Inner, table: &str) -> Result<()> {
    let t = inner.table(table).ok_or_else(|| {
        unsupported(
            table,
            "crsql_convert_layout of a table whose metadata cannot be read",
        )
    })?;
    let c = t
        .compact
        .as_ref()
        .ok_or_else(|| err!("crsql_convert_layout: {table} is not in the compact layout"))?;
    write_crsqlite(inner, &t, c)?;
    let mut ddl = crate::crr::drop_triggers_sql(table, &t.pks);
    ddl.push_str(&crate::crr::create_triggers_sql(table, &t.pks, &t.cols));
    inner.conn.execute_batch(&ddl)?;
    ext.invalidate_schema(inner);
    inner.refresh_tables(&ext.tx, true)
}

/// Write every clock of compact CRR `t` (statements `c`) into new clock and
/// pks tables of the cr-sqlite layout, and drop its compact tables. The
/// triggers are the caller's.
fn write_crsqlite(inner: &Inner, t: &TableInfo, c: &super::Compact) -> Result<()> {
    let table = t.name.as_str();
    let cr = schema::build_sql(table, &t.pks, &t.cols);
    inner
        .conn
        .execute_batch(&crate::crr::create_tables_sql(table, &t.pks))?;
    let [rows_table, _] = table_names(table).map(|n| quote_ident(&n));
    let mut stmt = inner.conn.prepare(&format!(
        "SELECT {} FROM {rows_table}",
        schema::ident_list(&super::stored_pks(&t.pks))
    ))?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let pks: Vec<Value> = (0..t.pks.len())
            .map(|i| r.get::<_, Value>(i))
            .collect::<rusqlite::Result<_>>()?;
        let pks: Vec<ValueRef<'_>> = pks.iter().map(ValueRef::from).collect();
        let stored = local::load(inner, t, c, &pks)?;
        inner
            .conn
            .prepare_cached(&cr.key_insert)?
            .execute(rusqlite::params_from_iter(pks.iter().map(|v| out(*v))))?;
        let key = inner.conn.last_insert_rowid();
        for (slot, clock) in stored.expand() {
            let name = local::slot_name(t, slot)?;
            inner
                .conn
                .prepare_cached(&cr.clock_write)?
                .execute(params![
                    key,
                    name,
                    clock.col_version,
                    clock.db_version,
                    clock.seq,
                    clock.site
                ])?;
        }
    }
    drop(rows);
    drop(stmt);
    inner
        .conn
        .execute_batch(&super::drop_sql(&inner.conn, table)?)?;
    Ok(())
}

/// The compact tables a CRR left when its base table was dropped (as
/// `crsql_as_crr` finds them once a table of that name exists again),
/// rewritten in the cr-sqlite layout, so that the cr-sqlite layout's
/// re-creation (DECISIONS D19: the old rows' tombstones, resurrections)
/// runs on them unchanged; the caller converts the result back. The old
/// table's metadata comes from its compact tables: the primary key from the
/// rows table, the columns from its slots.
pub fn leftover_to_crsqlite(inner: &Inner, table: &str) -> Result<()> {
    let conn = &inner.conn;
    let [rows, _] = table_names(table);
    let pks: Vec<schema::Column> = conn
        .prepare("SELECT name, type FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")?
        .query_map([&rows], |r| {
            Ok(schema::Column {
                name: super::original_name(&r.get::<_, String>(0)?),
                notnull: true,
                dflt: None,
                decl_type: r.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let cols: Vec<schema::Column> = conn
        .prepare(
            "SELECT col_name FROM crsql_compact_slots WHERE tbl = ?1 AND slot >= 0 ORDER BY slot",
        )?
        .query_map([table], |r| {
            Ok(schema::Column {
                name: r.get(0)?,
                notnull: false,
                dflt: None,
                decl_type: String::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let (sql, c) = sql::build(table, &pks, &cols);
    let t = TableInfo {
        name: table.to_string(),
        pks,
        cols,
        sql,
        compact: None,
    };
    write_crsqlite(inner, &t, &c)
}

/// `crsql_master` key marking a compact CRR altered in the cr-sqlite layout.
fn alter_key(table: &str) -> String {
    format!("compact.altering.{table}")
}

/// `crsql_begin_alter` of a compact CRR: the alteration (snapshot, backfill,
/// automigrate) runs on the cr-sqlite layout, and [`end_alter`] converts
/// back. Both conversions keep every position, so the alteration records
/// exactly what it records on a table of the cr-sqlite layout.
pub fn begin_alter(ext: &Ext, inner: &mut Inner, table: &str) -> Result<()> {
    if !super::is_compact(&inner.conn, table)? {
        return Ok(());
    }
    inner.sync(&ext.tx)?;
    to_crsqlite(ext, inner, table)?;
    inner.conn.execute(
        "INSERT OR REPLACE INTO crsql_master (key, value) VALUES (?1, 1)",
        [alter_key(table)],
    )?;
    Ok(())
}

/// The end of an alteration that [`begin_alter`] converted: back to the
/// compact layout.
pub fn end_alter(ext: &Ext, inner: &mut Inner, table: &str) -> Result<()> {
    let marked = inner.conn.execute(
        "DELETE FROM crsql_master WHERE key = ?1",
        [alter_key(table)],
    )?;
    if marked == 0 {
        return Ok(());
    }
    to_compact(ext, inner, table)
}
