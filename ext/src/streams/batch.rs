//! `crsql_internal_merge`: how the inbound stream merges a package
//! (DECISIONS D10, D35).
//!
//! The inbound stream runs `INSERT INTO crsql_internal_merge(package)
//! SELECT …` (one row per package: the decoded package it hands over, or
//! each staged part). An `INSERT … SELECT` into a virtual table is a nested
//! statement that SQLite journals, so a refused change rolls back every
//! change of the statement, even inside the caller's transaction. Each row
//! is merged by one [`Merger`]: no per-change virtual-table round trip, one
//! decode. Changes for tables or columns this database does not have yet
//! wait in `crsql_pending_changes` (the stream's [`Known`] filter).
//! Outside an inbound stream's apply the table refuses every write.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crsql_stream_core::package::Package;
use rusqlite::types::ValueRef;
use rusqlite::vtab::IndexInfo;
use rusqlite::{params_from_iter, Connection};

use super::pending::{Known, STASH};
use crate::crr::merge::{Change, Merger};
use crate::crr::values::{out, to_sql};
use crate::err;
use crate::error::Result;
use crate::sqlite::vtab::{register as register_module, Table};
use crate::state::{Ext, Inner};

pub const MODULE: &str = "crsql_internal_merge";

/// What the inbound stream hands to the rows it inserts: the filter of the
/// changes that apply now, the package of a row whose `package` is NULL,
/// and the encoded packages a row names by index (an integer `package`:
/// staged parts read into memory, decoded one at a time).
#[derive(Default)]
pub struct MergeBatch {
    pub known: Option<Known>,
    pub package: Option<Package<'static>>,
    pub parts: Arc<[Vec<u8>]>,
}

pub fn register(conn: &Connection, ext: &Arc<Ext>) -> rusqlite::Result<()> {
    register_module::<MergeTable>(conn, MODULE, Arc::clone(ext))
}

/// Merge the changes of `pkg` that `known` admits (all without it); keep
/// the others in `crsql_pending_changes`, in package order. Returns the
/// impacted operations (§7.7).
pub fn merge_package(
    ext: &Ext,
    inner: &mut Inner,
    pkg: &Package,
    known: Option<&Known>,
) -> Result<i64> {
    let mut merger = Merger::new(ext, inner)?.in_one_statement();
    let keys = pkg.changes.iter().map(|c| {
        let table = pkg
            .tables
            .get(c.table as usize)
            .map_or("", |t| t.name.as_str());
        (table, &c.pk.0[..])
    });
    merger.read_ahead(keys)?;
    let conn = &merger.inner().conn;
    let mut stash = None;
    for c in &pkg.changes {
        let table = pkg.tables[c.table as usize].name.as_str();
        let cid = pkg.cid_of(c);
        // As the value would come out of SQLite (which has no NaN).
        let val = match to_sql(c.val.as_ref()) {
            ValueRef::Real(r) if r.is_nan() => ValueRef::Null,
            v => v,
        };
        let values = [
            ValueRef::Text(table.as_bytes()),
            ValueRef::Blob(&c.pk.0),
            ValueRef::Text(cid.as_bytes()),
            val,
            ValueRef::Integer(c.col_version),
            ValueRef::Integer(c.db_version),
            ValueRef::Blob(&pkg.sites[c.site as usize].0),
            ValueRef::Integer(c.cl),
            ValueRef::Integer(c.seq),
        ];
        if known.is_some_and(|k| !k.admits(table, cid)) {
            let stmt = match &mut stash {
                Some(s) => s,
                None => stash.insert(conn.prepare_cached(STASH)?),
            };
            stmt.execute(params_from_iter(values.iter().map(|v| out(*v))))?;
            continue;
        }
        merger.push(&Change::from_values(&values)?)?;
    }
    drop(stash);
    merger.finish()
}

pub struct MergeTable {
    ext: Arc<Ext>,
}

impl Table for MergeTable {
    crate::sqlite::vtab::ext_eponymous!(
        MODULE,
        crate::sqlite::vtab::NoRows,
        "CREATE TABLE x(package BLOB)"
    );

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        info.set_estimated_cost(1.0);
        Ok(())
    }

    fn open(&mut self) -> Result<crate::sqlite::vtab::NoRows> {
        Ok(crate::sqlite::vtab::NoRows)
    }

    fn insert(&mut self, args: &[ValueRef<'_>]) -> Result<i64> {
        let slot = self.ext.merge_batch()?;
        let Some(batch) = slot.as_ref() else {
            return Err(err!(
                "{MODULE}: only crsql_InboundStream writes here; apply a package with \
                 INSERT INTO <inbound stream>(package) VALUES (?)"
            ));
        };
        let decoded;
        let pkg = match args.first().copied().unwrap_or(ValueRef::Null) {
            ValueRef::Null => batch
                .package
                .as_ref()
                .ok_or_else(|| err!("{MODULE}: no package to merge"))?,
            ValueRef::Integer(i) => {
                let bytes = usize::try_from(i)
                    .ok()
                    .and_then(|i| batch.parts.get(i))
                    .ok_or_else(|| err!("{MODULE}: no handed-over package #{i}"))?;
                decoded =
                    super::inspect::decode_arg("crsql_package_changes", ValueRef::Blob(bytes))?;
                &decoded
            }
            v => {
                decoded = super::inspect::decode_arg("crsql_package_changes", v)?;
                &decoded
            }
        };
        let mut inner = self.ext.lock(MODULE)?;
        let n = merge_package(&self.ext, &mut inner, pkg, batch.known.as_ref())?;
        self.ext.rows_impacted.fetch_add(n, Relaxed);
        Ok(0)
    }

    fn commit(&mut self) -> Result<()> {
        self.ext.rows_impacted.store(0, Relaxed);
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        self.ext.rows_impacted.store(0, Relaxed);
        Ok(())
    }
}
