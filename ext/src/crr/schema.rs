//! CRR discovery, table metadata and the SQL text generated for each CRR.
//!
//! Every identifier goes through [`quote_ident`] and every string literal
//! through [`quote_str`], so hostile names cannot change the SQL (§15 Q10).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::{Connection, OptionalExtension};

use crate::err;
use crate::error::Result;

pub const CLOCK_SUFFIX: &str = "__crsql_clock";
pub const PKS_SUFFIX: &str = "__crsql_pks";
/// Longest table or column name the extension accepts (cr-sqlite's limit).
pub const MAX_NAME_LEN: usize = 2048;

/// `"name"` with embedded double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded single quotes doubled.
pub fn quote_str(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// One column of a CRR.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub notnull: bool,
    /// The declared default as SQL text, as `pragma_table_info` reports it.
    pub dflt: Option<String>,
    /// The declared type, as written (may be empty).
    pub decl_type: String,
}

impl Column {
    /// Whether values are stored as written, without a type affinity that
    /// converts them: no declared type, a BLOB type, or ANY (no conversion
    /// in a STRICT table; elsewhere NUMERIC, where treating it as untyped
    /// costs at most a clock more in the backfill).
    pub fn untyped(&self) -> bool {
        let t = self.decl_type.to_ascii_uppercase();
        t.is_empty()
            || t == "ANY"
            || (t.contains("BLOB")
                && !["INT", "CHAR", "CLOB", "TEXT"]
                    .iter()
                    .any(|a| t.contains(a)))
    }
}

/// The metadata of one CRR and the statements used on it.
#[derive(Debug)]
pub struct TableInfo {
    pub name: String,
    /// Primary-key columns in PRIMARY KEY order.
    pub pks: Vec<Column>,
    /// Other columns in declaration order.
    pub cols: Vec<Column>,
    pub sql: TableSql,
    /// Set for a CRR of the compact layout (`crr::compact`).
    pub compact: Option<crate::crr::compact::Compact>,
}

impl TableInfo {
    /// Index of a non-PK column by exact name.
    pub fn col_index(&self, name: &str) -> Option<usize> {
        self.cols.iter().position(|c| c.name == name)
    }

    /// `INSERT INTO t (pks, cols) VALUES (…) ON CONFLICT (pks) DO UPDATE SET
    /// col = ?, …` for the columns `cols` (indexes, ascending): the pk values
    /// bind first, then one value per column.
    pub fn upsert_sql(&self, cols: &[usize]) -> Arc<str> {
        self.base_write_sql(cols, 0, false)
    }

    /// [`Self::upsert_sql`] of the one column `col`, every column's built
    /// on first use: the row-by-row merge's usual write, whose SQL text
    /// finds its held statement (`crr::held`) once per row.
    pub fn upsert_one_sql(&self, col: usize) -> &str {
        let all = self.sql.upsert_one.get_or_init(|| {
            (0..self.cols.len())
                .map(|c| self.upsert_sql(&[c]))
                .collect()
        });
        &all[col]
    }

    /// [`Self::insert_sql`] as an upsert: `… ON CONFLICT (pks) DO UPDATE SET
    /// col = excluded.col, …` (only for tables without generated columns:
    /// SQLite 3.40 gives `excluded` the wrong affinity after one).
    pub fn upsert_many_sql(&self, cols: &[usize], rows: usize) -> Arc<str> {
        self.base_write_sql(cols, rows.max(1), true)
    }

    /// `INSERT INTO t (pks, cols) VALUES (…), …` for `rows` rows of the
    /// columns `cols`: per row the pk values, then one value per column.
    pub fn insert_sql(&self, cols: &[usize], rows: usize) -> Arc<str> {
        self.base_write_sql(cols, rows.max(1), false)
    }

    /// [`Self::upsert_sql`] (`rows` 0) or [`Self::insert_sql`], built once.
    fn base_write_sql(&self, cols: &[usize], rows: usize, upsert: bool) -> Arc<str> {
        let mut cache = self
            .sql
            .base_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = (cols.to_vec(), rows, upsert);
        if let Some(sql) = cache.get(&key) {
            return Arc::clone(sql);
        }
        let npk = self.pks.len();
        let pk_list = ident_list(&self.pks);
        let names: Vec<String> = cols
            .iter()
            .map(|&i| quote_ident(&self.cols[i].name))
            .collect();
        let into = format!(
            "INSERT INTO {} ({pk_list}, {}) VALUES",
            quote_ident(&self.name),
            names.join(", ")
        );
        let sql: Arc<str> = if rows == 0 {
            let sets = names
                .iter()
                .enumerate()
                // `= ?n`, not `= excluded.{q}`: SQLite 3.40 gives `excluded`
                // the wrong affinity after a generated column.
                .map(|(j, q)| format!("{q} = ?{}", npk + 1 + j))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "{into} ({}) ON CONFLICT ({pk_list}) DO UPDATE SET {sets}",
                params(npk + cols.len(), 1)
            )
        } else {
            let row = format!("({})", vec!["?"; npk + cols.len()].join(", "));
            let values = format!("{into} {}", vec![row; rows].join(", "));
            if upsert {
                let sets: Vec<String> = names
                    .iter()
                    .map(|q| format!("{q} = excluded.{q}"))
                    .collect();
                format!(
                    "{values} ON CONFLICT ({pk_list}) DO UPDATE SET {}",
                    sets.join(", ")
                )
            } else {
                values
            }
        }
        .into();
        cache.insert(key, Arc::clone(&sql));
        sql
    }
}

/// Clock rows one statement of [`TableSql::clock_write_many`] writes (six
/// values each, under SQLite's oldest limit of 999).
pub const CLOCK_ROWS: usize = 128;

/// The sizes of [`TableSql::clock_write_many`]'s statements, largest
/// first: fewer rows than the smallest are written one per statement.
pub const CLOCK_ROW_SIZES: [usize; 4] = [CLOCK_ROWS, 64, 32, 16];

/// A base-table write: the column indexes, the rows (0: an upsert of one
/// row), and whether a multi-row write is an upsert.
type BaseWrite = (Vec<usize>, usize, bool);

/// SQL text for every statement run against one CRR. Built once per schema
/// version and run through the connection's prepared-statement cache.
#[derive(Debug, Default)]
pub struct TableSql {
    pub key_lookup: String,
    pub key_insert: String,
    pub local_cl: String,
    /// The key of a primary key and every clock row of it (one row with a
    /// NULL `col_name` when it has none; no row without a key).
    pub row_clocks: String,
    /// The key of a primary key and the row's causal length (no row
    /// without a key).
    pub row_cl: String,
    /// One clock row: col_version, db_version, seq, site_id.
    pub cell_row: String,
    /// Every clock row of a key but the sentinel, with its name.
    pub cell_rows: String,
    pub cell_names: String,
    pub clock_upsert_cell: String,
    pub clock_insert_all: String,
    pub sentinel_bump: String,
    pub sentinel_insert: String,
    pub sentinel_delete: String,
    pub clock_delete_cells: String,
    pub clock_move_cell: String,
    pub clock_delete_cell: String,
    /// A key's clock rows at or below a version (`crr::counts`).
    pub clock_counted_rows: String,
    pub clock_write: String,
    /// [`TableSql::clock_write`] of several rows in one statement, one
    /// statement per size of [`CLOCK_ROW_SIZES`].
    pub clock_write_many: Vec<String>,
    pub base_delete: String,
    pub base_insert_pks: String,
    pub base_exists: String,
    pub base_value: Vec<String>,
    /// Base-table writes of a set of columns (indexes) and a number of rows
    /// (0: an upsert), built on first use ([`TableInfo::upsert_sql`],
    /// [`TableInfo::insert_sql`]).
    pub base_writes: Mutex<HashMap<BaseWrite, Arc<str>>>,
    /// [`TableInfo::upsert_one_sql`], by column.
    pub upsert_one: OnceLock<Vec<Arc<str>>>,
    pub changes_select: String,
    /// More statements of `changes_select`'s shape whose rows are changes
    /// too, each ordered by its own index (`crr::compact`: the cells).
    pub extra_selects: Vec<String>,
    /// A window of one transaction's clock rows in seq order, narrow (see
    /// `scan::TxMemo`).
    pub tx_order: String,
    /// How many clock rows carry one db_version (a range of the dbv index).
    pub tx_size: String,
    /// `changes_select` for one clock row, if it is still at `(db_version, seq)`.
    pub change_at: String,
    /// The keys of each version, `(db_version, key)` from the `db_version`
    /// index, for a WHERE on `c.db_version` (`scan::Cells` reads each key's
    /// clock rows through `clock_rows` and sorts by seq itself).
    pub clock_scan: String,
    /// One transaction's clock rows after a seq, sorted by SQLite (a
    /// transaction too large to sort in memory): `db_version, key,
    /// col_name, seq, col_version, site_id`, the causal length.
    pub clock_tx_sorted: String,
    /// What a change needs of its key, by key from `?1` on in key order:
    /// the key, the primary key's values, then every column of the base
    /// row (NULLs without one).
    pub key_rows: String,
    /// The clock rows of the keys `?1` through `?2` at version `?3`, and
    /// their sentinels, in primary-key order: `key, col_name, col_version,
    /// seq, site_id, db_version` (bounded above: without `?2`, SQLite would
    /// walk every other key's rows up to the next match, to the table's
    /// end after a transaction's last key).
    pub clock_rows: String,
}

/// Read one table's columns; None when the table does not exist.
pub fn read_columns(conn: &Connection, table: &str) -> Result<Option<(Vec<Column>, Vec<Column>)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, pk, \"notnull\", dflt_value, type FROM pragma_table_info(?1) ORDER BY cid",
    )?;
    let mut rows = stmt.query([table])?;
    let mut pks: Vec<(i64, Column)> = Vec::new();
    let mut cols = Vec::new();
    let mut any = false;
    while let Some(row) = rows.next()? {
        any = true;
        let col = Column {
            name: row.get(0)?,
            notnull: row.get::<_, i64>(2)? != 0,
            dflt: row.get(3)?,
            decl_type: row.get(4)?,
        };
        let pk: i64 = row.get(1)?;
        if pk > 0 {
            pks.push((pk, col));
        } else {
            cols.push(col);
        }
    }
    if !any {
        return Ok(None);
    }
    pks.sort_by_key(|(k, _)| *k);
    Ok(Some((pks.into_iter().map(|(_, c)| c).collect(), cols)))
}

/// The tables of the main and temp schemas, read in one pass each, so that
/// finding the CRRs costs O(tables) however many there are.
pub struct Catalog {
    /// Main-schema table names with their CREATE statements.
    main: HashMap<String, String>,
    /// Per ASCII-lower-cased name (SQLite matches table names without
    /// case): the CREATE statements of the temp and main tables of that name.
    by_lower: HashMap<String, String>,
}

pub fn read_catalog(conn: &Connection) -> Result<Catalog> {
    let mut cat = Catalog {
        main: HashMap::new(),
        by_lower: HashMap::new(),
    };
    for (master, is_main) in [("sqlite_temp_master", false), ("sqlite_master", true)] {
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT name, COALESCE(sql, '') FROM {master} WHERE type = 'table'"
        ))?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (name, sql): (String, String) = (r.get(0)?, r.get(1)?);
            let sig = cat.by_lower.entry(name.to_ascii_lowercase()).or_default();
            sig.push_str(&sql);
            sig.push('\0');
            if is_main {
                cat.main.insert(name, sql);
            }
        }
    }
    // crr::compact: a table's metadata also depends on its layout, which
    // crsql_convert_layout changes without touching the base table.
    let compact: Vec<String> = cat
        .main
        .keys()
        .filter_map(|n| n.strip_suffix(crate::crr::compact::ROWS_SUFFIX))
        .map(str::to_ascii_lowercase)
        .collect();
    for t in compact {
        cat.by_lower.entry(t).or_default().push_str("compact\0");
    }
    Ok(cat)
}

impl Catalog {
    /// Names of every CRR, ordered by name. A CRR is a table `T` with both
    /// `T__crsql_clock` and `T__crsql_pks` in main; names are matched
    /// exactly (not with LIKE, §15 Q12), and clock tables left behind by a
    /// dropped base table are skipped.
    pub fn crrs(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .main
            .keys()
            .filter_map(|n| n.strip_suffix(CLOCK_SUFFIX))
            .filter(|t| {
                self.by_lower.contains_key(&t.to_ascii_lowercase())
                    && self.main.contains_key(&format!("{t}{PKS_SUFFIX}"))
            })
            // crr::compact: `T__crsql_rows` and `T__crsql_cells`.
            .chain(
                self.main
                    .keys()
                    .filter_map(|n| n.strip_suffix(crate::crr::compact::ROWS_SUFFIX))
                    .filter(|t| {
                        self.by_lower.contains_key(&t.to_ascii_lowercase())
                            && self
                                .main
                                .contains_key(&format!("{t}{}", crate::crr::compact::CELLS_SUFFIX))
                    }),
            )
            .map(String::from)
            .collect();
        names.sort();
        names
    }

    /// Every main-schema table named `…__crsql_clock`, with its CREATE
    /// statement, ordered by name (whether it is a clock table of this
    /// layout is the caller's check).
    pub fn clock_tables(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self
            .main
            .iter()
            .filter(|(n, _)| n.ends_with(CLOCK_SUFFIX))
            .map(|(n, s)| (n.as_str(), s.as_str()))
            .collect();
        v.sort();
        v
    }

    /// Main-schema table names ending in `suffix` (`crr::compact`).
    pub fn tables_ending(&self, suffix: &str) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .main
            .keys()
            .filter(|n| n.ends_with(suffix))
            .map(String::as_str)
            .collect();
        v.sort();
        v
    }

    /// Whether the main schema has a table named exactly `name`.
    pub fn has_table(&self, name: &str) -> bool {
        self.main.contains_key(name)
    }

    /// What a table's metadata depends on: the CREATE statements of the
    /// tables of that name (any case, temp and main).
    pub fn signature(&self, name: &str) -> &str {
        self.by_lower
            .get(&name.to_ascii_lowercase())
            .map_or("", String::as_str)
    }
}

/// Whether a `…__crsql_clock` table has this layout's `db_version` column
/// (not a cr-sqlite 0.15 clock table, whose versions mean nothing here).
pub fn is_clock_table(conn: &Connection, name: &str) -> Result<bool> {
    // Exactly the columns of the layout: a user table that merely ends in
    // `__crsql_clock` and has a `db_version` column is not one.
    let cols: String = conn
        .prepare_cached(
            "SELECT group_concat(name, ',') FROM (SELECT name FROM pragma_table_info(?1) ORDER BY name)",
        )?
        .query_row([name], |r| r.get::<_, Option<String>>(0))?
        .unwrap_or_default();
    Ok(cols == "col_name,col_version,db_version,key,seq,site_id")
}

/// Whether a table named exactly `name` exists in the main schema.
pub fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .query_row([name], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Whether `table` is a CRR in cr-sqlite's sense: its insert trigger exists.
pub fn is_crr(conn: &Connection, table: &str) -> Result<bool> {
    let trig = format!("{table}__crsql_itrig");
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?1 \
             UNION ALL SELECT 1 FROM sqlite_temp_master WHERE type = 'trigger' AND name = ?1",
        )?
        .query_row([trig], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Load the metadata of CRR `name`.
pub fn load_table(conn: &Connection, name: &str) -> Result<TableInfo> {
    if crate::crr::compact::is_compact(conn, name)? {
        return crate::crr::compact::load_table(conn, name);
    }
    let (pks, cols) = read_columns(conn, name)?
        .ok_or_else(|| err!("crsql_stream: CRR {name} has a clock table but no base table"))?;
    if pks.is_empty() {
        return Err(err!(
            "crsql_stream: CRR {name} has no primary key columns; its clock table is unusable"
        ));
    }
    // A base table re-created with another primary key no longer matches
    // its pks table: not a CRR until crsql_as_crr says what to do.
    let mut key_cols: Vec<String> = conn
        .prepare_cached("SELECT name FROM pragma_table_info(?1) WHERE name != '__crsql_key'")?
        .query_map([format!("{name}{PKS_SUFFIX}")], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut pk_names: Vec<String> = pks.iter().map(|c| c.name.clone()).collect();
    key_cols.sort();
    pk_names.sort();
    if key_cols != pk_names {
        return Err(err!(
            "crsql_stream: the primary key of {name} does not match its pks table"
        ));
    }
    let sql = build_sql(name, &pks, &cols);
    Ok(TableInfo {
        name: name.to_string(),
        pks,
        cols,
        sql,
        compact: None,
    })
}

/// `"a", "b", …`: the columns' names, quoted.
pub fn ident_list(cols: &[Column]) -> String {
    cols.iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `p."a" = b."a" AND …`: the pks table (alias `p`) joined to the base
/// table (alias `b`) on the primary-key columns.
pub fn pk_join(pks: &[Column]) -> String {
    pks.iter()
        .map(|c| format!("p.{q} = b.{q}", q = quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

pub(crate) fn pk_where(pks: &[Column], alias: &str, first_param: usize) -> String {
    pks.iter()
        .enumerate()
        .map(|(i, c)| format!("{alias}{} = ?{}", quote_ident(&c.name), first_param + i))
        .collect::<Vec<_>>()
        .join(" AND ")
}

pub(crate) fn params(n: usize, first: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn build_sql(name: &str, pks: &[Column], cols: &[Column]) -> TableSql {
    let base = quote_ident(name);
    let clock = quote_ident(&format!("{name}{CLOCK_SUFFIX}"));
    let pkst = quote_ident(&format!("{name}{PKS_SUFFIX}"));
    let pk_list = ident_list(pks);
    let npk = pks.len();
    let clock_cols = "key, col_name, col_version, db_version, seq, site_id";
    // Clock increments stop at MAX_CLOCK with an error naming it, so that no
    // value a peer would refuse is ever stored (DECISIONS D20); the guard
    // costs nothing below the bound.
    let limit = crsql_stream_core::merge::MAX_CLOCK;
    let inc = format!(
        "CASE WHEN col_version < {limit} THEN col_version + 1 ELSE crsql_internal_clock_limit(col_version) END"
    );
    let bump_cl = format!(
        "CASE WHEN col_version < {limit} - 1 THEN \
         CASE col_version % 2 WHEN 0 THEN col_version + 1 ELSE col_version + 2 END \
         ELSE crsql_internal_clock_limit(col_version) END"
    );

    let clock_insert_all = if cols.is_empty() {
        String::new()
    } else {
        let rows = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("(?1, {}, 1, ?2, ?3 + {i}, 0)", quote_str(&c.name)))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "INSERT INTO {clock} ({clock_cols}) VALUES {rows} ON CONFLICT (key, col_name) DO UPDATE SET \
             col_version = {inc}, db_version = excluded.db_version, seq = excluded.seq, site_id = 0"
        )
    };

    let base_value = cols
        .iter()
        .map(|c| {
            format!(
                "SELECT {} FROM {base} WHERE {}",
                quote_ident(&c.name),
                pk_where(pks, "", 1)
            )
        })
        .collect();
    let val_expr = if cols.is_empty() {
        "NULL".to_string()
    } else {
        let whens = cols
            .iter()
            .map(|c| {
                format!(
                    "WHEN {} THEN b.{}",
                    quote_str(&c.name),
                    quote_ident(&c.name)
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        format!("CASE c.col_name {whens} END")
    };
    let p_cols = pks
        .iter()
        .map(|c| format!("p.{}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let join_base = pk_join(pks);
    let clock_scan = format!("SELECT DISTINCT c.db_version, c.key FROM {clock} AS c");
    let key_rows = format!(
        "SELECT p.__crsql_key, {} FROM {pkst} AS p LEFT JOIN {base} AS b ON {join_base} \
         WHERE p.__crsql_key >= ?1 ORDER BY p.__crsql_key",
        pks.iter()
            .map(|c| format!("p.{}", quote_ident(&c.name)))
            .chain(cols.iter().map(|c| format!("b.{}", quote_ident(&c.name))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let changes_select = format!(
        "SELECT c.col_name, c.col_version, c.db_version, c.site_id, c.seq, \
         COALESCE(s.col_version, 1), {val_expr}, {p_cols} \
         FROM {clock} AS c CROSS JOIN {pkst} AS p ON p.__crsql_key = c.key \
         LEFT JOIN {clock} AS s ON s.key = c.key AND s.col_name = '-1' \
         LEFT JOIN {base} AS b ON {join_base}"
    );

    TableSql {
        key_lookup: format!("SELECT __crsql_key FROM {pkst} WHERE {}", pk_where(pks, "", 1)),
        key_insert: format!(
            "INSERT INTO {pkst} ({pk_list}) VALUES ({}) ON CONFLICT DO NOTHING",
            params(npk, 1)
        ),
        local_cl: format!(
            "SELECT COALESCE((SELECT col_version FROM {clock} WHERE key = ?1 AND col_name = '-1'), \
             (SELECT 1 FROM {clock} WHERE key = ?1 LIMIT 1), 0)"
        ),
        row_clocks: format!(
            "SELECT p.__crsql_key, c.col_name, c.col_version, c.db_version, c.seq, c.site_id \
             FROM {pkst} AS p LEFT JOIN {clock} AS c ON c.key = p.__crsql_key WHERE {}",
            pk_where(pks, "p.", 1)
        ),
        row_cl: format!(
            "SELECT p.__crsql_key, COALESCE((SELECT col_version FROM {clock} WHERE key = p.__crsql_key AND col_name = '-1'), \
             (SELECT 1 FROM {clock} WHERE key = p.__crsql_key LIMIT 1), 0) FROM {pkst} AS p WHERE {}",
            pk_where(pks, "p.", 1)
        ),
        cell_row: format!(
            "SELECT col_version, db_version, seq, site_id FROM {clock} WHERE key = ?1 AND col_name = ?2"
        ),
        cell_rows: format!(
            "SELECT col_name, col_version, db_version, seq, site_id FROM {clock} WHERE key = ?1 AND col_name != '-1'"
        ),
        cell_names: format!(
            "SELECT col_name FROM {clock} WHERE key = ?1 AND col_name != '-1' ORDER BY col_name"
        ),
        clock_upsert_cell: format!(
            "INSERT INTO {clock} ({clock_cols}) VALUES (?1, ?2, 1, ?3, ?4, 0) ON CONFLICT (key, col_name) DO UPDATE SET \
             col_version = {inc}, db_version = excluded.db_version, seq = excluded.seq, site_id = 0"
        ),
        clock_insert_all,
        sentinel_bump: format!(
            "UPDATE {clock} SET col_version = {bump_cl}, db_version = ?2, seq = ?3, site_id = 0 \
             WHERE key = ?1 AND col_name = '-1'"
        ),
        sentinel_insert: format!(
            "INSERT INTO {clock} ({clock_cols}) VALUES (?1, '-1', 1, ?2, ?3, 0) ON CONFLICT (key, col_name) DO UPDATE SET \
             col_version = {bump_cl}, db_version = excluded.db_version, seq = excluded.seq, site_id = 0"
        ),
        sentinel_delete: format!(
            "INSERT INTO {clock} ({clock_cols}) VALUES (?1, '-1', 2, ?2, ?3, 0) ON CONFLICT (key, col_name) DO UPDATE SET \
             col_version = {inc}, db_version = excluded.db_version, seq = excluded.seq, site_id = 0"
        ),
        clock_delete_cells: format!("DELETE FROM {clock} WHERE key = ?1 AND col_name != '-1'"),
        clock_move_cell: format!(
            "INSERT OR REPLACE INTO {clock} ({clock_cols}) SELECT ?2, col_name, col_version, ?4, ?5, 0 \
             FROM {clock} WHERE key = ?1 AND col_name = ?3"
        ),
        clock_delete_cell: format!("DELETE FROM {clock} WHERE key = ?1 AND col_name = ?2"),
        clock_counted_rows: format!(
            "SELECT col_name, db_version, site_id FROM {clock} WHERE key = ?1 AND db_version <= ?2"
        ),
        clock_write_many: CLOCK_ROW_SIZES
            .iter()
            .map(|&n| {
                format!(
                    "INSERT OR REPLACE INTO {clock} ({clock_cols}) VALUES {}",
                    vec!["(?, ?, ?, ?, ?, ?)"; n].join(", ")
                )
            })
            .collect(),
        clock_write: format!(
            "INSERT OR REPLACE INTO {clock} ({clock_cols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ),
        base_delete: format!("DELETE FROM {base} WHERE {}", pk_where(pks, "", 1)),
        base_insert_pks: format!(
            "INSERT OR IGNORE INTO {base} ({pk_list}) VALUES ({})",
            params(npk, 1)
        ),
        base_exists: format!("SELECT 1 FROM {base} WHERE {}", pk_where(pks, "", 1)),
        base_value,
        base_writes: Mutex::default(),
        upsert_one: OnceLock::new(),
        tx_order: format!(
            "SELECT seq, key, col_name FROM {clock} WHERE db_version = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        ),
        tx_size: format!("SELECT count(*) FROM {clock} WHERE db_version = ?1"),
        change_at: format!(
            "{changes_select} WHERE c.key = ?1 AND c.col_name = ?2 AND c.db_version = ?3 AND c.seq = ?4"
        ),
        changes_select,
        extra_selects: Vec::new(),
        clock_tx_sorted: format!(
            "SELECT c.db_version, c.key, c.col_name, c.seq, c.col_version, c.site_id, \
             COALESCE((SELECT col_version FROM {clock} WHERE key = c.key AND col_name = '-1'), 1) \
             FROM {clock} AS c WHERE c.db_version = ?1 AND c.seq > ?2 ORDER BY c.seq"
        ),
        clock_rows: format!(
            "SELECT key, col_name, col_version, seq, site_id, db_version FROM {clock} \
             WHERE key >= ?1 AND key <= ?2 AND (db_version = ?3 OR col_name = '-1') \
             ORDER BY key, col_name"
        ),
        clock_scan,
        key_rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_strings_are_quoted_with_doubling() {
        assert_eq!(quote_ident("my \"tbl\""), "\"my \"\"tbl\"\"\"");
        assert_eq!(quote_str("it's"), "'it''s'");
    }
}
