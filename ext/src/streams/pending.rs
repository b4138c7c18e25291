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
use rusqlite::{params, Connection, OptionalExtension};

use crate::crr::merge::{merge_change, Change, MergeCache};
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
                WHERE m.type = 'table' AND m.name = p.\"table\" || '__crsql_clock')
              THEN 'the table is not a CRR here'
              ELSE 'the table has no such column here' END AS reason
  FROM crsql_pending_changes AS p GROUP BY \"table\", cid;";

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The SQL condition (over `c."table"`, `c.cid`) that selects the changes
/// of a package with `tables` this database can apply now, or None when it
/// can apply all of them. Refuses a package whose tables conflict with ours
/// (primary key).
pub fn known_filter(
    ext: &Ext,
    inner: &mut Inner,
    stream: &str,
    tables: &[TableEntry],
) -> Result<Option<String>> {
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
        // before and after a schema change): one term per table.
        let missing = t.columns.iter().any(|c| local.col_index(c).is_none());
        match tables_here.iter_mut().find(|(name, _)| *name == t.name) {
            Some(entry) => entry.1 |= missing,
            None => tables_here.push((&t.name, missing)),
        }
    }
    let mut known = Vec::new();
    for (name, missing) in tables_here {
        let table = format!("c.\"table\" = {}", literal(name));
        match inner.table(name) {
            Some(local) if missing => {
                any_unknown = true;
                let ours: Vec<String> = std::iter::once("-1")
                    .chain(local.cols.iter().map(|c| c.name.as_str()))
                    .map(literal)
                    .collect();
                known.push(format!("({table} AND c.cid IN ({}))", ours.join(", ")));
            }
            _ => known.push(format!("({table})")),
        }
    }
    Ok(any_unknown.then(|| {
        if known.is_empty() {
            "0".to_string()
        } else {
            known.join(" OR ")
        }
    }))
}

/// Keep the changes `from` selects (a `FROM … WHERE …` clause naming them
/// `c`, with `?1`). Returns the highest id before them, for [`unstash`].
pub fn stash(conn: &Connection, from: &str, arg: &dyn rusqlite::ToSql) -> Result<i64> {
    conn.execute_batch(PENDING_DDL)?;
    let before: i64 = conn
        .prepare_cached("SELECT COALESCE(max(id), 0) FROM crsql_pending_changes")?
        .query_row([], |r| r.get(0))?;
    conn.execute(
        &format!(
            "INSERT INTO crsql_pending_changes \
             (\"table\", pk, cid, val, col_version, db_version, site_id, cl, seq) \
             SELECT c.\"table\", c.pk, c.cid, c.val, c.col_version, c.db_version, c.site_id, c.cl, c.seq \
             FROM {from}"
        ),
        [arg],
    )?;
    Ok(before)
}

/// Take back what [`stash`] kept after `before` (the merge that followed
/// was refused).
pub fn unstash(conn: &Connection, before: i64) -> Result<()> {
    conn.prepare_cached("DELETE FROM crsql_pending_changes WHERE id > ?1")?
        .execute([before])?;
    Ok(())
}

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
    let mut cache = MergeCache::default();
    let mut merged = Vec::new();
    for (id, values) in &rows {
        let cid = match &values[2] {
            Value::Text(c) => c.as_str(),
            _ => continue,
        };
        if cid != "-1" && t.col_index(cid).is_none() {
            continue;
        }
        let refs: Vec<ValueRef<'_>> = values.iter().map(ValueRef::from).collect();
        let change = Change::from_values(&refs)?;
        merge_change(ext, inner, &change, &mut cache).map_err(|e| {
            err!("applying the changes to {table} that waited for this schema (crsql_pending_changes): {e}")
        })?;
        merged.push(*id);
    }
    let mut forget = inner
        .conn
        .prepare_cached("DELETE FROM crsql_pending_changes WHERE id = ?1")?;
    for id in merged {
        forget.execute(params![id])?;
    }
    Ok(())
}
