//! The SQL of a compact CRR: its change scan (two statements ordered by
//! `(c.db_version, c.seq)`, docs/compact-layout.md "The change scan"), its
//! row-clock statements, and, for every statement of the cr-sqlite layout
//! not built for it yet, one that fails naming the table and operation.

use crsql_stream_core::rowclock::{Member, Run, SENTINEL_SLOT};

use crate::crr::schema::{
    self, quote_ident, quote_str, Column, TableSql, CLOCK_ROWS, CLOCK_ROW_SIZES,
};

use super::{table_names, Compact};

/// The largest `?N` of a statement (its parameter count: the cr-sqlite
/// layout's statements use numbered parameters only).
fn param_count(sql: &str) -> usize {
    sql.split('?')
        .skip(1)
        .filter_map(|s| {
            let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<usize>().ok()
        })
        .max()
        .unwrap_or(0)
}

/// A statement taking the parameters of `like` that fails with the
/// compact layout's "not supported yet" error for `op`.
fn refusing(table: &str, op: &str, like: &str) -> String {
    let params: String = (1..=param_count(like)).map(|i| format!(", ?{i}")).collect();
    format!(
        "SELECT crsql_internal_compact_unsupported({}, {}{params})",
        quote_str(table),
        quote_str(op)
    )
}

/// `a.x = b.y AND …` over the primary-key columns, named `a_pks` in the
/// table aliased `a` and `b_pks` in `b` (the base table's names, or the
/// compact tables', `super::stored_pks`).
fn pk_eq(a: &str, a_pks: &[Column], b: &str, b_pks: &[Column]) -> String {
    a_pks
        .iter()
        .zip(b_pks)
        .map(|(x, y)| {
            format!(
                "{a}.{} = {b}.{}",
                quote_ident(&x.name),
                quote_ident(&y.name)
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `SELECT -1 AS i UNION ALL SELECT 0 …`: the sentinel's and the
/// columns' slots, in seq order within a run.
pub fn slot_list(columns: usize) -> String {
    std::iter::once(-1)
        .chain(0..columns as i64)
        .map(|i| format!("SELECT {i} AS i"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// The statements of compact CRR `name`.
pub fn build(name: &str, pks: &[Column], cols: &[Column]) -> (TableSql, Compact) {
    let base = quote_ident(name);
    let [rows, cells] = table_names(name).map(|n| quote_ident(&n));
    let npk = pks.len();
    // The compact tables' names of the primary-key columns.
    let spks = super::stored_pks(pks);
    let pk_list = schema::ident_list(&spks);
    let c_pks = spks
        .iter()
        .map(|c| format!("c.{}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");

    // The runs: one row per row clock, in index order; `crr::scan`
    // expands each into its clocks in slot order (which is seq order), so
    // the statement calls no function and joins no slot list.
    let b_cols: String = cols
        .iter()
        .map(|c| format!(", b.{}", quote_ident(&c.name)))
        .collect();
    let runs_select = format!(
        "SELECT c.vers, NULL, c.db_version, c.site_id, c.seq, c.cl, NULL, {c_pks}{b_cols} \
         FROM {rows} AS c LEFT JOIN {base} AS b ON {}",
        pk_eq("b", pks, "c", &spks)
    );

    // The cells: the cr-sqlite layout's shape.
    let cell_val = if cols.is_empty() {
        "NULL".to_string()
    } else {
        let whens: String = cols
            .iter()
            .map(|c| {
                format!(
                    " WHEN {} THEN b.{}",
                    quote_str(&c.name),
                    quote_ident(&c.name)
                )
            })
            .collect();
        format!("CASE c.col_name{whens} END")
    };
    let cells_select = format!(
        "SELECT c.col_name, c.col_version, c.db_version, c.site_id, c.seq, r.cl, {cell_val}, {c_pks} \
         FROM {cells} AS c CROSS JOIN {rows} AS r ON {} LEFT JOIN {base} AS b ON {}",
        pk_eq("r", &spks, "c", &spks),
        pk_eq("b", pks, "c", &spks)
    );

    // Everything but the base-table statements refuses until it is built.
    let mut sql = schema::build_sql(name, pks, cols);
    let merge = "merging changes";
    let other = "this operation (backfill, alter, compaction or a primary-key change)";
    for (field, op) in [
        (&mut sql.key_lookup, other),
        (&mut sql.key_insert, other),
        (&mut sql.local_cl, other),
        (&mut sql.row_clocks, merge),
        (&mut sql.row_cl, merge),
        (&mut sql.cell_row, merge),
        (&mut sql.cell_rows, merge),
        (&mut sql.cell_names, other),
        (&mut sql.clock_upsert_cell, other),
        (&mut sql.clock_insert_all, other),
        (&mut sql.sentinel_bump, other),
        (&mut sql.sentinel_insert, other),
        (&mut sql.sentinel_delete, other),
        (&mut sql.clock_delete_cells, other),
        (&mut sql.clock_move_cell, other),
        (&mut sql.clock_delete_cell, other),
        (&mut sql.clock_counted_rows, "lag counts of a merge"),
        (&mut sql.clock_write, merge),
        (&mut sql.tx_order, "reading a transaction through a memo"),
        (&mut sql.change_at, "reading a transaction through a memo"),
        (&mut sql.clock_tx_sorted, "reading changes by transaction"),
        (&mut sql.key_rows, "reading changes by transaction"),
        (&mut sql.clock_rows, "reading changes by transaction"),
    ] {
        *field = refusing(name, op, field);
    }
    // Both statements seek (db_version, seq) through an index: a split
    // transaction needs no memo (scan::TxMemo), so none is ever built.
    sql.tx_size = "SELECT 0 * ?1".to_string();
    sql.changes_select = runs_select;
    sql.extra_selects = vec![cells_select];

    let row_cols = format!("{pk_list}, cl, db_version, site_id, seq, vers");
    let row_values = schema::params(npk + 5, 1);
    // A run of every slot (the sentinel alone for a pk-only table) at
    // consecutive seqs: the slot form's INTEGER, whatever the seqs.
    let insert_vers = Run {
        db_version: 0,
        site: 0,
        members: if cols.is_empty() {
            vec![Member {
                slot: SENTINEL_SLOT,
                col_version: 1,
                seq: 0,
            }]
        } else {
            (0..cols.len() as i32)
                .map(|slot| Member {
                    slot,
                    col_version: 1,
                    seq: i64::from(slot),
                })
                .collect()
        },
    };
    let insert_vers = super::vers_value(&insert_vers);
    let upsert_row = format!(
        "INSERT INTO {rows} ({row_cols}) VALUES ({row_values}) ON CONFLICT ({pk_list}) DO UPDATE SET \
         cl = excluded.cl, db_version = excluded.db_version, site_id = excluded.site_id, \
         seq = excluded.seq, vers = excluded.vers"
    );
    let upsert_cell = format!(
        "INSERT OR REPLACE INTO {cells} ({pk_list}, col_name, col_version, db_version, site_id, seq) \
         VALUES ({})",
        schema::params(npk + 5, 1)
    );
    let load_select = "r.cl, r.db_version, r.site_id, r.seq, r.vers, \
         c.col_name, c.col_version, c.db_version, c.site_id, c.seq";
    let k_cols: String = (0..npk).map(|i| format!(", p{i}")).collect();
    let k_eq = |alias: &str| {
        spks.iter()
            .enumerate()
            .map(|(i, c)| format!("{alias}.{} = k.p{i}", quote_ident(&c.name)))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let load_many = format!(
        "WITH k(i{k_cols}) AS ({}) SELECT k.i, {load_select} \
         FROM k CROSS JOIN {rows} AS r ON {} LEFT JOIN {cells} AS c ON {}",
        many(" VALUES ()", npk + 1, super::ahead_keys(npk)),
        k_eq("r"),
        k_eq("c")
    );
    let compact = Compact {
        // The cells are looked for only under a row clock (a key with
        // cells always has one: it holds `cl`), each compared with the
        // bound values as a read of the cells table alone compares them.
        load_many,
        // (A CRR has a primary key; without one, a text: nothing known.)
        last_key: spks.first().map_or("SELECT ''".to_string(), |c| {
            let first = quote_ident(&c.name);
            format!("SELECT {first} FROM {rows} ORDER BY {first} DESC LIMIT 1")
        }),
        load: format!(
            "SELECT {load_select} FROM {rows} AS r LEFT JOIN {cells} AS c ON {} WHERE {}",
            schema::pk_where(&spks, "c.", 1),
            schema::pk_where(&spks, "r.", 1)
        ),
        insert_row: format!(
            "INSERT INTO {rows} ({row_cols}) VALUES ({row_values}) ON CONFLICT DO NOTHING"
        ),
        upsert_rows: many(&upsert_row, npk + 5, CLOCK_ROWS),
        insert_rows: ignoring(
            &format!("INSERT OR IGNORE INTO {rows} ({row_cols}) VALUES ({row_values})"),
            npk + 5,
        ),
        insert_cells: ignoring(
            &upsert_cell.replacen("INSERT OR REPLACE", "INSERT OR IGNORE", 1),
            npk + 5,
        ),
        upsert_row,
        update_vers: format!(
            "UPDATE {rows} SET cl = ?{}, vers = ?{} WHERE {}",
            npk + 1,
            npk + 2,
            schema::pk_where(&spks, "", 1)
        ),
        delete_row: format!(
            "DELETE FROM {rows} WHERE {}",
            schema::pk_where(&spks, "", 1)
        ),
        upsert_cells: many(&upsert_cell, npk + 5, CLOCK_ROWS),
        upsert_cell,
        delete_cell: format!(
            "DELETE FROM {cells} WHERE {} AND col_name = ?{}",
            schema::pk_where(&spks, "", 1),
            npk + 1
        ),
        insert_vers,
        fast: super::FastInserts::default(),
    };
    (sql, compact)
}

/// [`many`] of `one` for each size of [`CLOCK_ROW_SIZES`], largest first.
fn ignoring(one: &str, width: usize) -> Vec<String> {
    CLOCK_ROW_SIZES
        .iter()
        .map(|&rows| many(one, width, rows))
        .collect()
}

/// `one`, a single-row `INSERT … VALUES (?1, …, ?width) …`, writing `rows`
/// rows: the same statement with `rows` groups of anonymous parameters.
fn many(one: &str, width: usize, rows: usize) -> String {
    let (head, tail) = one.split_once(" VALUES (").unwrap_or((one, ""));
    let tail = tail.split_once(')').map_or("", |(_, t)| t);
    let group = format!("({})", vec!["?"; width].join(", "));
    format!("{head} VALUES {}{tail}", vec![group; rows].join(", "))
}

#[cfg(test)]
mod tests {
    use super::param_count;

    #[test]
    fn parameter_counts_are_the_largest_number() {
        assert_eq!(param_count("SELECT 1"), 0);
        assert_eq!(param_count("SELECT ?1, ?12, ?3"), 12);
        assert_eq!(param_count("x = ?2 AND y = ?1"), 2);
    }
}
