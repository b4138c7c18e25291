//! Changes this database cannot apply yet: peers on another schema version.
//!
//! A package may carry changes to a column, or a whole CRR, this database
//! does not have (the sender migrated first). Rather than refusing the
//! package, those changes wait in `crsql_pending_changes` and the rest of
//! the package applies as usual; positions advance, so nothing is sent
//! again. When the table gains the column (`crsql_commit_alter`) or becomes
//! a CRR (`crsql_as_crr`), the waiting changes are merged then, by the
//! ordinary merge rules. Only a real conflict refuses a package: a table
//! whose primary key differs, or a column that is part of the primary key
//! on one side only (docs/schema-evolution.md, DECISIONS D27).

use crsql_stream_core::package::{schema_hash, TableEntry};
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params, OptionalExtension};

use crate::crr::merge::{Change, Merger};
use crate::err;
use crate::error::Result;
use crate::state::{Ext, Inner};

pub const PENDING_DDL: &str = "CREATE TABLE IF NOT EXISTS crsql_pending_changes (
  id INTEGER PRIMARY KEY,
  \"table\" TEXT NOT NULL,
  pk BLOB NOT NULL,
  cid TEXT NOT NULL,
  val ANY,
  col_version INTEGER NOT NULL,
  db_version INTEGER NOT NULL,
  site_id BLOB,
  cl INTEGER NOT NULL,
  seq INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS crsql_pending_changes_table ON crsql_pending_changes (\"table\", cid);
CREATE VIEW IF NOT EXISTS crsql_pending_schema AS
  SELECT \"table\", CASE cid WHEN '-1' THEN NULL ELSE cid END AS \"column\",
         count(*) AS changes,
         CASE WHEN cid = '-1' OR NOT EXISTS (SELECT 1 FROM sqlite_master AS m
                WHERE m.type = 'table' AND m.name IN (p.\"table\" || '__crsql_clock', p.\"table\" || '__crsql_rows'))
              THEN 'the table is not a CRR here'
              ELSE 'the table has no such column here' END AS reason
  FROM crsql_pending_changes AS p GROUP BY \"table\", cid;";

/// Which changes of a package this database can apply now: the tables it
/// has, and for a table whose package columns it does not all have, the
/// columns (and sentinel) it has. The other changes wait.
#[derive(Debug)]
pub struct Known {
    /// Per table, None when every change of it applies.
    tables: Vec<(String, Option<Vec<String>>)>,
}

impl Known {
    /// Whether a change of `table` to column `cid` applies now.
    pub fn admits(&self, table: &str, cid: &str) -> bool {
        self.tables.iter().any(|(name, cols)| {
            name == table && cols.as_ref().is_none_or(|c| c.iter().any(|x| x == cid))
        })
    }
}

/// What of a package with `tables` this database can apply now, or None
/// when it can apply all of it. Refuses a package whose tables conflict
/// with ours (primary key).
pub fn known_filter(
    ext: &Ext,
    inner: &mut Inner,
    stream: &str,
    tables: &[TableEntry],
) -> Result<Option<Known>> {
    // The schema as it is now, even after a DDL earlier in this
    // transaction (`sync` checks it once per transaction).
    inner.refresh_tables(&ext.tx, true)?;
    let mut tables_here: Vec<(&str, bool)> = Vec::new();
    let mut any_unknown = false;
    for t in tables {
        let Some(local) = inner.table(&t.name) else {
            any_unknown = true;
            continue;
        };
        let pks: Vec<&str> = local.pks.iter().map(|c| c.name.as_str()).collect();
        if let Some(c) = t.columns.iter().find(|c| pks.contains(&c.as_str())) {
            return Err(err!(
                "{stream}: table {}: column {c} is part of the primary key here but not at the sender; \
                 peers must agree on a table's primary key",
                t.name
            ));
        }
        let cols: Vec<&str> = t.columns.iter().map(String::as_str).collect();
        if schema_hash(&t.name, &pks, &cols) != t.schema_hash {
            return Err(err!(
                "{stream}: table {}: the sender's primary key differs from ours ({}) \
                 (the sender's other columns: {}); peers must agree on a table's primary key",
                t.name,
                pks.join(","),
                t.columns.join(",")
            ));
        }
        // A package may name a table twice (parts of a transaction from
        // before and after a schema change): one entry per table.
        let missing = t.columns.iter().any(|c| local.col_index(c).is_none());
        match tables_here.iter_mut().find(|(name, _)| *name == t.name) {
            Some(entry) => entry.1 |= missing,
            None => tables_here.push((&t.name, missing)),
        }
    }
    let mut known = Vec::new();
    for (name, missing) in tables_here {
        match inner.table(name) {
            Some(local) if missing => {
                any_unknown = true;
                let ours = std::iter::once("-1")
                    .chain(local.cols.iter().map(|c| c.name.as_str()))
                    .map(String::from)
                    .collect();
                known.push((name.to_string(), Some(ours)));
            }
            _ => known.push((name.to_string(), None)),
        }
    }
    Ok(any_unknown.then_some(Known { tables: known }))
}

/// Keeps the changes a package merge cannot apply yet.
pub const STASH: &str = "INSERT INTO crsql_pending_changes \
     (\"table\", pk, cid, val, col_version, db_version, site_id, cl, seq) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

/// Merge the waiting changes of `table` it can take now (its CRR exists,
/// the column too), in arrival order, and forget them.
pub fn apply_pending(ext: &Ext, inner: &mut Inner, table: &str) -> Result<()> {
    let exists = inner
        .conn
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'crsql_pending_changes'",
        )?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists {
        return Ok(());
    }
    let Some(t) = inner.table(table) else {
        return Ok(());
    };
    let rows: Vec<(i64, Vec<Value>)> = inner
        .conn
        .prepare_cached(
            "SELECT id, \"table\", pk, cid, val, col_version, db_version, site_id, cl, seq \
             FROM crsql_pending_changes WHERE \"table\" = ?1 ORDER BY id",
        )?
        .query_map([table], |r| {
            Ok((
                r.get(0)?,
                (1..10).map(|i| r.get(i)).collect::<rusqlite::Result<_>>()?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut merged = Vec::new();
    let refs: Vec<(i64, Vec<ValueRef<'_>>)> = rows
        .iter()
        .filter(|(_, values)| match &values[2] {
            Value::Text(cid) => cid == "-1" || t.col_index(cid).is_some(),
            _ => false,
        })
        .map(|(id, values)| (*id, values.iter().map(ValueRef::from).collect()))
        .collect();
    let context = |e| {
        err!("applying the changes to {table} that waited for this schema (crsql_pending_changes): {e}")
    };
    let mut merger = Merger::new(ext, inner)?;
    for (id, values) in &refs {
        let change = Change::from_values(values)?;
        merger.push(&change).map_err(context)?;
        merged.push(*id);
    }
    merger.finish().map_err(context)?;
    let mut forget = inner
        .conn
        .prepare_cached("DELETE FROM crsql_pending_changes WHERE id = ?1")?;
    for id in merged {
        forget.execute(params![id])?;
    }
    Ok(())
}
