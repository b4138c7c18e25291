//! `crsql_automigrate(schema_sql [, cleanup_sql])` (spec §11.4): bring the
//! tables to a target schema.
//!
//! As in cr-sqlite: the schema runs on a private `:memory:` database, the
//! tables there are compared with ours (internal tables skipped), tables
//! missing from the target are dropped, columns dropped and added (inside
//! `crsql_begin_alter` / `crsql_commit_alter` for a CRR), stale indexes
//! dropped, and then the full schema runs here, so that it creates new
//! tables and indexes and makes CRRs. Unlike cr-sqlite:
//!
//! * an index whose columns (or anything else in its definition) changed is
//!   dropped and re-created (cr-sqlite never detects it, §15 Q18);
//! * a change `ALTER TABLE` cannot make (a primary key, a column's type
//!   affinity, NOT NULL, DEFAULT, a generated column) is refused with a
//!   message naming the table and column, instead of being skipped or
//!   failing with a bare MISUSE;
//! * `crsql_as_crr` and `crsql_fract_as_ordered` are no-ops on the private
//!   database rather than stripped line by line (a line that also held a
//!   CREATE TABLE made cr-sqlite drop that table);
//! * internal tables are matched exactly (cr-sqlite's LIKE patterns treat
//!   `_` as a wildcard), virtual tables (the streams) and their shadow
//!   tables are left alone, and a dropped CRR loses its clock tables too;
//! * everything runs in one savepoint: an error leaves nothing half-applied
//!   and the caller's transaction open (§15 Q9).

use std::collections::HashMap;

use rusqlite::functions::FunctionFlags;
use rusqlite::types::Value;
use rusqlite::Connection;

use crate::crr::schema::{self, quote_ident};
use crate::crr::{self as crr, Atomic};
use crate::err;
use crate::error::{Error, Result};
use crate::state::Ext;

const FUNC: &str = "crsql_automigrate";

/// One column as `pragma_table_xinfo` reports it.
#[derive(Debug, Clone, PartialEq)]
struct Col {
    name: String,
    decl: String,
    notnull: bool,
    dflt: Option<String>,
    /// Position in the primary key (0: not in it).
    pk: i64,
    /// 0 ordinary, 2 or 3 generated.
    hidden: i64,
}

/// The tables and indexes a migration compares, keyed by lower-cased name
/// (SQLite's names are case-insensitive).
struct Side {
    /// Table name as spelled → its columns.
    tables: HashMap<String, (String, Vec<Col>)>,
    /// Index name → (name as spelled, table, CREATE statement).
    indexes: HashMap<String, (String, String, String)>,
}

/// Tables of the extension and of SQLite, by name (exactly, not with LIKE).
fn internal(name: &str) -> bool {
    let l = name.to_ascii_lowercase();
    l.starts_with("sqlite_") || l.starts_with("crsql_") || l.contains("__crsql_")
}

fn read_side(conn: &Connection) -> Result<Side> {
    let objects: Vec<(String, String, String, String)> = conn
        .prepare(
            "SELECT type, name, tbl_name, COALESCE(sql, '') FROM main.sqlite_master \
             WHERE type IN ('table', 'index') ORDER BY name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // Virtual tables (the streams, FTS, …) cannot be altered, and their
    // shadow tables (`<vtab>_<suffix>`) belong to them.
    let vtabs: Vec<String> = objects
        .iter()
        .filter(|(ty, _, _, sql)| {
            ty == "table"
                && sql
                    .get(..20)
                    .is_some_and(|s| s.eq_ignore_ascii_case("CREATE VIRTUAL TABLE"))
        })
        .map(|(_, name, _, _)| format!("{}_", name.to_ascii_lowercase()))
        .collect();
    let ours = |name: &str| {
        let l = name.to_ascii_lowercase();
        !internal(name)
            && !vtabs
                .iter()
                .any(|v| l.starts_with(v) || *v == format!("{l}_"))
    };
    let mut side = Side {
        tables: HashMap::new(),
        indexes: HashMap::new(),
    };
    for (ty, name, tbl, sql) in objects {
        if !ours(&tbl) {
            continue;
        }
        if ty == "table" {
            let cols = columns(conn, &name)?;
            side.tables.insert(name.to_ascii_lowercase(), (name, cols));
        } else if !sql.is_empty() && !internal(&name) {
            // (Indexes without SQL are a UNIQUE or PRIMARY KEY constraint's,
            // part of the table's definition.)
            side.indexes
                .insert(name.to_ascii_lowercase(), (name, tbl, sql));
        }
    }
    Ok(side)
}

fn columns(conn: &Connection, table: &str) -> Result<Vec<Col>> {
    Ok(conn
        .prepare(
            "SELECT name, type, \"notnull\", dflt_value, pk, hidden \
             FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
        )?
        .query_map([table], |r| {
            Ok(Col {
                name: r.get(0)?,
                decl: r.get(1)?,
                notnull: r.get::<_, i64>(2)? != 0,
                dflt: r.get(3)?,
                pk: r.get(4)?,
                hidden: r.get(5)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// SQLite's column affinity of a declared type (the rules of "Determination
/// of Column Affinity").
pub fn affinity(decl: &str) -> &'static str {
    let t = decl.to_ascii_uppercase();
    if t.contains("INT") {
        "INTEGER"
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|a| t.contains(a)) {
        "TEXT"
    } else if t.is_empty() || t.contains("BLOB") {
        "BLOB"
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|a| t.contains(a)) {
        "REAL"
    } else {
        "NUMERIC"
    }
}

/// The primary-key column names of `cols`, in key order, lower-cased.
fn pk_names(cols: &[Col]) -> Vec<String> {
    let mut pks: Vec<&Col> = cols.iter().filter(|c| c.pk > 0).collect();
    pks.sort_by_key(|c| c.pk);
    pks.iter().map(|c| c.name.to_ascii_lowercase()).collect()
}

/// What one table needs: columns to drop and to add. Refuses what `ALTER
/// TABLE` cannot do, naming the table and column.
fn table_plan(t: &str, here: &[Col], target: &[Col]) -> Result<(Vec<Col>, Vec<Col>)> {
    let find = |cols: &[Col], name: &str| {
        cols.iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .cloned()
    };
    let cannot = |what: String| {
        err!(
            "{FUNC}: table {t}: {what}; ALTER TABLE cannot do that, so neither can {FUNC}. \
             Create a new table with the new definition and copy the rows, or keep the old definition in the schema"
        )
    };
    for c in target.iter().filter(|c| c.pk > 0) {
        if find(here, &c.name).is_none() {
            return Err(Error::Misuse(format!(
                "{FUNC}: table {t}: cannot add primary key column {}; a table's primary key cannot change \
                 (peers identify rows by it). Create a new table, or add it as an ordinary column",
                c.name
            )));
        }
    }
    let (pk_here, pk_there) = (pk_names(here), pk_names(target));
    if pk_here != pk_there {
        return Err(cannot(format!(
            "the primary key would change from ({}) to ({})",
            pk_here.join(", "),
            pk_there.join(", ")
        )));
    }
    let mut drop = Vec::new();
    let mut add = Vec::new();
    for c in here {
        let Some(want) = find(target, &c.name) else {
            if c.hidden != 0 {
                return Err(cannot(format!(
                    "generated column {} would be dropped",
                    c.name
                )));
            }
            drop.push(c.clone());
            continue;
        };
        let col = &c.name;
        if (c.hidden != 0) != (want.hidden != 0) {
            return Err(cannot(format!(
                "column {col} would change between generated and stored"
            )));
        }
        if affinity(&c.decl) != affinity(&want.decl) {
            return Err(cannot(format!(
                "column {col} would change type from {} ({} affinity) to {} ({} affinity)",
                shown(&c.decl),
                affinity(&c.decl),
                shown(&want.decl),
                affinity(&want.decl)
            )));
        }
        if c.notnull != want.notnull {
            return Err(cannot(format!(
                "column {col} would {} NOT NULL",
                if want.notnull {
                    "become"
                } else {
                    "no longer be"
                }
            )));
        }
        if c.dflt != want.dflt {
            return Err(cannot(format!(
                "column {col} would change its DEFAULT from {} to {}",
                c.dflt.as_deref().unwrap_or("none"),
                want.dflt.as_deref().unwrap_or("none")
            )));
        }
    }
    for c in target {
        if find(here, &c.name).is_none() {
            if c.hidden != 0 {
                return Err(cannot(format!(
                    "generated column {} would be added",
                    c.name
                )));
            }
            add.push(c.clone());
        }
    }
    Ok((drop, add))
}

fn shown(decl: &str) -> &str {
    if decl.is_empty() {
        "no type"
    } else {
        decl
    }
}

/// The private database the schema runs on first. `crsql_as_crr` and
/// `crsql_fract_as_ordered` do nothing there: the comparison is of plain
/// tables.
fn target_db(schema_sql: &str) -> Result<Connection> {
    let mem = Connection::open_in_memory().map_err(|e| {
        Error::prefixed(
            &format!("{FUNC}: could not open the temporary migration db: "),
            e,
        )
    })?;
    for name in ["crsql_as_crr", "crsql_fract_as_ordered"] {
        mem.create_scalar_function(name, -1, FunctionFlags::SQLITE_UTF8, |_| Ok(Value::Null))?;
    }
    mem.execute_batch(schema_sql).map_err(|e| {
        Error::prefixed(
            &format!("{FUNC}: the schema fails on an empty database, so nothing was changed: "),
            e,
        )
    })?;
    Ok(mem)
}

/// `crsql_automigrate(schema_sql [, cleanup_sql])`.
pub fn automigrate(ext: &Ext, schema_sql: &str, cleanup_sql: Option<&str>) -> Result<()> {
    let mem = target_db(schema_sql)?;
    let conn = ext.db.connection()?;
    let result = crr::in_savepoint(&conn, "automigrate_tables", || {
        let here = read_side(&conn)?;
        let target = read_side(&mem)?;
        let before = crr_signatures(&conn)?;

        // Plans first: a refusal changes nothing.
        let mut plans = Vec::new();
        let mut names: Vec<&String> = here.tables.keys().collect();
        names.sort();
        for key in names {
            let (t, cols) = &here.tables[key];
            if let Some((_, want)) = target.tables.get(key) {
                let (drop, add) = table_plan(t, cols, want)?;
                plans.push((t.clone(), drop, add));
            }
        }

        // Indexes that are gone or whose definition changed (columns
        // included: §15 Q18), before any column they use is dropped. The
        // schema creates the new definitions.
        let mut stale: Vec<&(String, String, String)> = here
            .indexes
            .iter()
            .filter(|(key, (_, _, sql))| target.indexes.get(*key).is_none_or(|(_, _, s)| s != sql))
            .map(|(_, v)| v)
            .collect();
        stale.sort();
        for (name, tbl, _) in stale {
            conn.execute_batch(&format!("DROP INDEX {}", quote_ident(name)))
                .map_err(|e| {
                    Error::prefixed(&format!("{FUNC}: table {tbl}: dropping index {name}: "), e)
                })?;
        }

        // Tables the schema no longer has.
        let mut gone: Vec<&String> = here
            .tables
            .iter()
            .filter(|(key, _)| !target.tables.contains_key(*key))
            .map(|(_, (t, _))| t)
            .collect();
        gone.sort();
        for t in gone {
            if schema::is_crr(&conn, t)? {
                crr::as_table_in(ext, t, Atomic::Savepoint)?;
            }
            conn.execute_batch(&format!("DROP TABLE {}", quote_ident(t)))
                .map_err(|e| Error::prefixed(&format!("{FUNC}: dropping table {t}: "), e))?;
        }

        for (t, drop, add) in plans {
            if drop.is_empty() && add.is_empty() {
                continue;
            }
            alter_table(ext, &conn, &t, &drop, &add)?;
        }

        if let Some(cleanup) = cleanup_sql {
            mem.execute_batch(cleanup).map_err(|e| {
                Error::prefixed(
                    &format!("{FUNC}: the cleanup SQL failed, so nothing was changed: "),
                    e,
                )
            })?;
        }

        // The whole schema, `crsql_as_crr` included: new tables, indexes,
        // CRRs (whose changes waiting in crsql_pending_changes apply then).
        conn.execute_batch(schema_sql).map_err(|e| {
            let hint = if crate::error::message(&e).contains("already exists") {
                " (the schema runs on every migration: write CREATE … IF NOT EXISTS)"
            } else {
                ""
            };
            Error::prefixed(
                &format!("{FUNC}: running the schema on this database failed{hint}, so nothing was changed: "),
                e,
            )
        })?;

        // A CRR the schema gave a new index (or other change) must still
        // meet the CRR preconditions (a UNIQUE index, for one).
        let after = crr_signatures(&conn)?;
        for (t, sig) in &after {
            if before.get(t) != Some(sig) {
                crr::check_compatible(&conn, t).map_err(|e| err!("{FUNC}: {e}"))?;
            }
        }
        Ok(())
    });
    // Done or rolled back, the schema is not what the metadata was read at.
    let mut inner = ext.lock(FUNC)?;
    ext.invalidate_schema(&mut inner);
    result
}

/// Per CRR, the CREATE statements of the table and its indexes.
fn crr_signatures(conn: &Connection) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for t in schema::read_catalog(conn)?.crrs() {
        let sig: String = conn
            .prepare_cached(
                "SELECT group_concat(sql, char(10)) FROM (SELECT COALESCE(sql, name) AS sql \
                 FROM main.sqlite_master WHERE tbl_name = ?1 AND type IN ('table', 'index') ORDER BY name)",
            )?
            .query_row([&t], |r| r.get::<_, Option<String>>(0))?
            .unwrap_or_default();
        out.insert(t, sig);
    }
    Ok(out)
}

/// Drop and add columns of `t`, inside an alter window when it is a CRR.
fn alter_table(ext: &Ext, conn: &Connection, t: &str, drop: &[Col], add: &[Col]) -> Result<()> {
    let is_crr = schema::is_crr(conn, t)?;
    if is_crr {
        crr::begin_alter(ext, t)?;
    }
    let tq = quote_ident(t);
    // The fractional-index view names the table's columns; the schema's
    // crsql_fract_as_ordered creates it again.
    conn.execute_batch(&format!(
        "DROP VIEW IF EXISTS {}",
        quote_ident(&format!("{t}_fractindex"))
    ))?;
    for c in drop {
        conn.execute_batch(&format!(
            "ALTER TABLE {tq} DROP COLUMN {}",
            quote_ident(&c.name)
        ))
        .map_err(|e| {
            Error::prefixed(
                &format!("{FUNC}: table {t}: dropping column {}: ", c.name),
                e,
            )
        })?;
    }
    for c in add {
        let mut def = format!("{} {}", quote_ident(&c.name), c.decl);
        if c.notnull {
            def.push_str(" NOT NULL");
        }
        if let Some(d) = &c.dflt {
            def.push_str(&format!(" DEFAULT {d}"));
        }
        conn.execute_batch(&format!("ALTER TABLE {tq} ADD COLUMN {def}"))
            .map_err(|e| {
                Error::prefixed(&format!("{FUNC}: table {t}: adding column {}: ", c.name), e)
            })?;
    }
    if is_crr {
        crr::commit_alter(ext, t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_follows_sqlites_rules() {
        assert_eq!(affinity("INT"), "INTEGER");
        assert_eq!(affinity("BIGINT"), "INTEGER");
        assert_eq!(affinity("VARCHAR(10)"), "TEXT");
        assert_eq!(affinity(""), "BLOB");
        assert_eq!(affinity("DOUBLE PRECISION"), "REAL");
        assert_eq!(affinity("DECIMAL(10,5)"), "NUMERIC");
        // "POINT" contains "INT".
        assert_eq!(affinity("FLOATING POINT"), "INTEGER");
    }

    #[test]
    fn internal_names_are_matched_exactly() {
        assert!(internal("crsql_changes"));
        assert!(internal("t__crsql_clock"));
        assert!(internal("sqlite_stat1"));
        // cr-sqlite's `%__crsql_%` LIKE would skip these.
        assert!(!internal("mycrsql_x"));
        assert!(!internal("ab_crsqlx"));
    }
}
