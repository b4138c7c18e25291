//! SQLite's floors under a layout's figures (issue 12): what SQLite alone,
//! without the extension, costs for the same writes.
//!
//! - **Insert floor** ([`insert_floor`]): a fresh database opened without
//!   the extension holding `t` and the layout's `t__crsql_*` tables and
//!   indexes, their `CREATE` statements read from the `sqlite_master` of
//!   the CRR database the comparison made (the extension's triggers left
//!   out: they call its functions), plus a pure-SQL `AFTER INSERT` trigger
//!   writing per row what the extension's insert writes, with constant or
//!   simple values: the cr-sqlite layout's `t__crsql_pks` row and one
//!   `t__crsql_clock` row per non-key column, the compact layout's one
//!   `t__crsql_rows` row. The rows are inserted exactly as the CRR's
//!   ([`insert_all`]), and afterwards every one of those tables must hold
//!   as many rows as in the CRR database after its insert, or the bench
//!   aborts: the floor does the same writes, not fewer.
//! - **Apply floor** ([`apply_floor`]): the stream replica's end state (`t`
//!   and the `t__crsql_*` tables with their indexes, schema from its
//!   `sqlite_master`, no triggers; not the extension's bookkeeping: site
//!   ids, peers, change counts, stream positions, staging) copied into a
//!   fresh database without the extension by `INSERT INTO main.x SELECT *
//!   FROM src.x WHERE true` from the replica attached as `src`, one
//!   transaction. `WHERE true` keeps SQLite's transfer optimization
//!   (copying the stored records and index entries as they are) out: every
//!   row is encoded and inserted, with its index entries, as an apply must.
//!   The copy must hold the replica's rows: as many per table, and each
//!   of them (`EXCEPT`).
//! - **Replay floor** ([`replay_floor`]): the same end state reached the
//!   way the stream delivers it, the insert's transaction and then the
//!   update's, in one transaction like the apply, from values staged in
//!   `TEMP` tables beforehand, untimed (an apply has them in memory). The
//!   source's update superseded the updated column's insert-time value
//!   and clock, so the stream's insert transaction carries the other
//!   columns only, and the updated column arrives with the update: `t`
//!   without the updated column and every clock row but the updated
//!   column's, by `INSERT … SELECT`; then the update's: first a read, per
//!   updated row, of what a merge decides its change against (the key or
//!   row clock, and the clocks of the updated column and of the causal
//!   length: one join), then the updated column set by one `UPDATE` pass
//!   over `t` (each row's value searched by key, the row rewritten) and
//!   its clock rows inserted. The insert's keys, past the last stored key,
//!   need no read (the compact layout's merge reads none). An apply does
//!   at least that: the insert's transaction must be in place (visible)
//!   when its last part's statement returns, before the update arrives,
//!   and a change cannot be decided without the clocks it is decided
//!   against. Rows checked as above.
//! - **Pack floor** ([`pack_floor`]): the fields of every change (key,
//!   column, value, clock; in the compact layout a row clock's run with
//!   its columns' values), read from the source by plain SQL in position
//!   order through the same indexes and handed out through the API, no
//!   encoding. The cr-sqlite layout's index orders by version only; the
//!   floor leaves out the sort by seq within a version and the causal
//!   length, which a pack needs: a floor may do less than a pack must,
//!   never more.

use std::path::Path;

use crsql_stream_harness::tables::quote;
use rusqlite::Connection;

use super::common::*;
use super::compare::{insert_all, remove_db};

/// `t` and a layout's own tables (`t__crsql_*`) with their indexes, as the
/// extension created them.
pub struct Schema {
    /// The `CREATE` statements, tables first, each kind in creation order.
    sql: Vec<String>,
    /// The tables' names, `t` first.
    tables: Vec<String>,
}

/// Rows per table of a [`Schema`], in its order.
pub type Counts = Vec<(String, i64)>;

/// Read `t`'s and the `t__crsql_*` tables' schema from `conn`'s
/// `sqlite_master`: tables and indexes (automatic indexes come with their
/// tables), no triggers.
pub fn schema(conn: &Connection) -> BoxResult<Schema> {
    let mut stmt = conn.prepare(
        "SELECT type, name, sql FROM sqlite_master \
         WHERE type IN ('table', 'index') AND sql IS NOT NULL \
           AND (tbl_name = 't' OR tbl_name GLOB 't__crsql_*') \
         ORDER BY type = 'index', rowid",
    )?;
    let mut rows = stmt.query([])?;
    let (mut sql, mut tables) = (Vec::new(), Vec::new());
    while let Some(r) = rows.next()? {
        if r.get_ref(0)?.as_str()? == "table" {
            tables.push(r.get(1)?);
        }
        sql.push(r.get(2)?);
    }
    if tables.len() < 2 || tables[0] != "t" {
        return Err(format!("expected t and its t__crsql_* tables, found {tables:?}").into());
    }
    Ok(Schema { sql, tables })
}

/// How many rows each of `schema`'s tables holds in `conn`.
pub fn counts(conn: &Connection, schema: &Schema) -> BoxResult<Counts> {
    schema
        .tables
        .iter()
        .map(|t| {
            Ok((
                t.clone(),
                count(conn, &format!("SELECT count(*) FROM {}", quote(t)))?,
            ))
        })
        .collect()
}

/// A fresh database at `path` without the extension, holding `schema`.
fn floor_db(path: &Path, schema: &Schema, pragmas: &[String]) -> BoxResult<Connection> {
    let conn = open_file(path, false, pragmas)?;
    conn.execute_batch(&schema.sql.join(";\n"))?;
    Ok(conn)
}

/// Abort unless the floor database holds as many rows per table as the
/// CRR database.
fn check_counts(what: &str, crr: &Counts, floor: &Counts) -> BoxResult<()> {
    if crr == floor {
        return Ok(());
    }
    let show = |c: &Counts| {
        c.iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "{what}: the SQLite floor database holds {}, the CRR database {}: the floor does not do the same writes",
        show(floor),
        show(crr)
    )
    .into())
}

/// The columns of `table` in `conn`: name, and position in the primary key
/// (0: not in it).
fn columns(conn: &Connection, table: &str) -> BoxResult<Vec<(String, i64)>> {
    let mut stmt = conn.prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let columns = stmt
        .query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(columns)
}

/// The primary-key columns among `cols` ([`columns`]), quoted.
fn pk_names(cols: &[(String, i64)]) -> BoxResult<Vec<String>> {
    let pks: Vec<String> = cols
        .iter()
        .filter(|(_, pk)| *pk > 0)
        .map(|(c, _)| quote(c))
        .collect();
    if pks.is_empty() {
        return Err("t has no primary key".into());
    }
    Ok(pks)
}

/// The condition joining the rows of `left` and `right` with the same
/// primary key (`left.id = right.id AND …`), whose columns are among
/// `cols` ([`columns`]).
fn pk_join(cols: &[(String, i64)], left: &str, right: &str) -> BoxResult<String> {
    let on: Vec<String> = pk_names(cols)?
        .iter()
        .map(|c| format!("{left}.{c} = {right}.{c}"))
        .collect();
    Ok(on.join(" AND "))
}

/// The pure-SQL `AFTER INSERT` trigger writing, per row of `t`, the rows
/// the extension's insert writes in `layout`.
fn insert_trigger(conn: &Connection, layout: &str) -> BoxResult<String> {
    let columns = columns(conn, "t")?;
    let Some((pk, _)) = columns.iter().find(|(_, k)| *k == 1) else {
        return Err("t has no primary key".into());
    };
    let pk = format!("NEW.{}", quote(pk));
    let cells: Vec<&str> = columns
        .iter()
        .filter(|(_, k)| *k == 0)
        .map(|(c, _)| c.as_str())
        .collect();
    let n = cells.len();
    let body = if layout == "compact" {
        // (key, cl, db_version, site_id, seq of the run's last clock, vers):
        // vers in its slot form, bit 1 + i for slot i (docs/compact-layout.md).
        let vers = ((1u64 << n) - 1) << 1;
        format!(
            "INSERT INTO t__crsql_rows VALUES ({pk}, 1, 1, 0, {pk} * {n} + {}, {vers});",
            n - 1
        )
    } else {
        // The key just given to the pks row; one clock per non-key column
        // (key, col_name, col_version, db_version, site_id, seq).
        let clocks: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    "(last_insert_rowid(), '{}', 1, 1, 0, {pk} * {n} + {i})",
                    c.replace('\'', "''")
                )
            })
            .collect();
        format!(
            "INSERT INTO t__crsql_pks VALUES (NULL, {pk});\n  INSERT INTO t__crsql_clock VALUES {};",
            clocks.join(", ")
        )
    };
    Ok(format!(
        "CREATE TRIGGER floor_itrig AFTER INSERT ON t BEGIN\n  {body}\nEND"
    ))
}

/// The insert floor of `layout`: rows `1..=n` inserted like the CRR's into
/// a database holding `schema` and the pure-SQL trigger; `crr` is what the
/// CRR database held after its insert.
pub fn insert_floor(
    dir: &Path,
    n: usize,
    layout: &str,
    schema: &Schema,
    crr: &Counts,
    pragmas: &[String],
) -> BoxResult<Timing> {
    let path = dir.join(format!("{layout}-insert-floor.db"));
    let conn = floor_db(&path, schema, pragmas)?;
    conn.execute_batch(&insert_trigger(&conn, layout)?)?;
    let time = insert_all(&conn, n)?;
    check_counts(
        &format!("{layout} insert floor"),
        crr,
        &counts(&conn, schema)?,
    )?;
    drop(conn);
    remove_db(&path);
    Ok(time)
}

/// The apply floor of `layout`: `replica`'s (at `replica_path`) end state
/// copied by plain SQL into a fresh database, one transaction.
pub fn apply_floor(
    dir: &Path,
    layout: &str,
    replica: &Connection,
    replica_path: &Path,
    pragmas: &[String],
) -> BoxResult<Timing> {
    let floor = Floor::new(dir, layout, "apply", replica, replica_path, pragmas)?;
    let copy: String = floor
        .schema
        .tables
        .iter()
        .map(|t| {
            let t = quote(t);
            format!("INSERT INTO main.{t} SELECT * FROM src.{t} WHERE true;\n")
        })
        .collect();
    floor.run(&copy)
}

/// The replay floor of `layout`: `replica`'s end state reached by plain
/// SQL as the insert's transaction and then the update's, which set
/// `updated`; one transaction. What each transaction delivers is staged
/// in TEMP tables first, untimed (an apply has it in memory, decoded).
pub fn replay_floor(
    dir: &Path,
    layout: &str,
    replica: &Connection,
    replica_path: &Path,
    pragmas: &[String],
    updated: &str,
) -> BoxResult<Timing> {
    let floor = Floor::new(dir, layout, "replay", replica, replica_path, pragmas)?;
    let cols = columns(replica, "t")?;
    if !cols.iter().any(|(c, pk)| c == updated && *pk == 0) {
        return Err(format!("t has no column {updated} outside its primary key").into());
    }
    let without: Vec<String> = cols
        .iter()
        .map(|(c, _)| {
            if c == updated {
                "NULL".into()
            } else {
                quote(c)
            }
        })
        .collect();
    let pks = pk_names(&cols)?.join(", ");
    let (u, name) = (quote(updated), updated.replace('\'', "''"));
    // Staged, untimed: the insert's rows of t (without the updated column:
    // the source's update superseded its insert-time value and clock), the
    // update's values keyed like t (`d_u`, searched by key), and each
    // clock table's rows of either transaction (the tables with a row per
    // column split by `col_name`; keys and row clocks come whole with the
    // insert).
    let mut stage = format!(
        "CREATE TEMP TABLE d_t AS SELECT {} FROM src.t;\n\
         CREATE TEMP TABLE d_u AS SELECT * FROM src.t WHERE false;\n\
         CREATE UNIQUE INDEX temp.d_u_key ON d_u ({pks});\n\
         INSERT INTO d_u SELECT * FROM src.t;\n",
        without.join(", ")
    );
    let mut first = "INSERT INTO main.t SELECT * FROM temp.d_t;\n".to_string();
    // Before deciding the update's changes, a merge reads what they are
    // decided against: each updated row's key or row clock, and its
    // clocks of the updated column and of the row's causal length (the
    // insert's keys, past the last stored key, need no read). An
    // aggregate, so that `execute_batch`, which steps a statement once,
    // reads every row.
    let mut second = if floor.schema.tables.iter().any(|t| t == "t__crsql_rows") {
        format!(
            "SELECT count(*), max(length(r.vers)), max(c.col_version) FROM temp.d_u AS s \
             JOIN main.t__crsql_rows AS r ON {} \
             LEFT JOIN main.t__crsql_cells AS c ON {} AND c.col_name IN ('-1', '{name}');\n",
            pk_join(&cols, "r", "s")?,
            // `+`: the cells' key columns have no affinity, so SQLite
            // searches their primary key only for a value without one.
            pk_join(&cols, "c", "+s")?
        )
    } else {
        format!(
            "SELECT count(*), max(c.col_version) FROM temp.d_u AS s \
             JOIN main.t__crsql_pks AS k ON {} \
             LEFT JOIN main.t__crsql_clock AS c ON c.key = k.__crsql_key AND c.col_name IN ('-1', '{name}');\n",
            pk_join(&cols, "k", "s")?
        )
    };
    // One pass over t: each row found, its value searched in `d_u`, the
    // row rewritten.
    second += &format!(
        "UPDATE main.t SET {u} = (SELECT s.{u} FROM temp.d_u AS s WHERE {}) WHERE true;\n",
        pk_join(&cols, "s", "t")?
    );
    for (i, t) in floor.schema.tables[1..].iter().enumerate() {
        let q = quote(t);
        if columns(replica, t)?.iter().any(|(c, _)| c == "col_name") {
            stage += &format!(
                "CREATE TEMP TABLE d1_{i} AS SELECT * FROM src.{q} WHERE col_name IS NOT '{name}';\n\
                 CREATE TEMP TABLE d2_{i} AS SELECT * FROM src.{q} WHERE col_name = '{name}';\n"
            );
            second += &format!("INSERT INTO main.{q} SELECT * FROM temp.d2_{i};\n");
        } else {
            stage += &format!("CREATE TEMP TABLE d1_{i} AS SELECT * FROM src.{q};\n");
        }
        first += &format!("INSERT INTO main.{q} SELECT * FROM temp.d1_{i};\n");
    }
    floor.conn.execute_batch(&stage)?;
    floor.run(&(first + &second))
}

/// A fresh database without the extension holding a replica's schema,
/// with the replica attached as `src`, for a floor that writes the
/// replica's end state.
struct Floor {
    what: String,
    schema: Schema,
    crr: Counts,
    path: std::path::PathBuf,
    conn: Connection,
}

impl Floor {
    fn new(
        dir: &Path,
        layout: &str,
        kind: &str,
        replica: &Connection,
        replica_path: &Path,
        pragmas: &[String],
    ) -> BoxResult<Floor> {
        let schema = schema(replica)?;
        let crr = counts(replica, &schema)?;
        let path = dir.join(format!("{layout}-{kind}-floor.db"));
        let conn = floor_db(&path, &schema, pragmas)?;
        let src = replica_path
            .to_str()
            .ok_or("the replica's path is not UTF-8")?;
        conn.execute("ATTACH ?1 AS src", [src])?;
        Ok(Floor {
            what: format!("{layout} {kind} floor"),
            schema,
            crr,
            path,
            conn,
        })
    }

    /// Time `sql` in one transaction, then check that every table holds
    /// the replica's rows (as many, and each of them) and remove the
    /// database.
    fn run(self, sql: &str) -> BoxResult<Timing> {
        let conn = &self.conn;
        let (_, time) = timed(|| Ok(conn.execute_batch(&format!("BEGIN;\n{sql}COMMIT;"))?))?;
        check_counts(&self.what, &self.crr, &counts(conn, &self.schema)?)?;
        for t in &self.schema.tables {
            let t = quote(t);
            let missing = count(
                conn,
                &format!(
                    "SELECT count(*) FROM (SELECT * FROM src.{t} EXCEPT SELECT * FROM main.{t})"
                ),
            )?;
            if missing != 0 {
                return Err(format!(
                    "{}: {missing} rows of the replica's {t} differ in the floor database: the floor does not do the same writes",
                    self.what
                )
                .into());
            }
        }
        conn.execute_batch("DETACH src")?;
        drop(self.conn);
        remove_db(&self.path);
        Ok(time)
    }
}

/// The pack floor of the CRR database `src`: every clock row of `t`,
/// with the fields of its change (key, column, value, clock) and nothing
/// else, read in position order; how many rows it read, and the time.
/// `updated` is the column the source's update set: in the compact
/// layout its clocks are cells, the others a row clock's run.
pub fn pack_floor(src: &Connection, updated: &str) -> BoxResult<(u64, Timing)> {
    let schema = schema(src)?;
    let cols = columns(src, "t")?;
    let pks = pk_names(&cols)?;
    let key = |alias: &str| -> String {
        pks.iter()
            .map(|c| format!("{alias}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let others: Vec<&str> = cols
        .iter()
        .filter(|(_, pk)| *pk == 0)
        .map(|(c, _)| c.as_str())
        .collect();
    // The value of a clock row's column.
    let value = format!(
        "CASE c.col_name{} END",
        others
            .iter()
            .map(|c| format!(" WHEN '{}' THEN t.{}", c.replace('\'', "''"), quote(c)))
            .collect::<String>()
    );
    let clock = "c.col_version, c.db_version, c.site_id, c.seq";
    // In the order of the clock table's db_version index: `(db_version,
    // seq)` in the compact layout; `db_version` alone in the cr-sqlite
    // layout, whose rows of one version a pack must also sort by seq (left
    // out: a floor may do less than a pack must, never more; on the
    // bench's data that order is the seq order anyway).
    let mut reads = Vec::new();
    for table in &schema.tables[1..] {
        match table.as_str() {
            "t__crsql_rows" => {
                let run: Vec<String> = others
                    .iter()
                    .filter(|c| **c != updated)
                    .map(|c| format!("t.{}", quote(c)))
                    .collect();
                reads.push(format!(
                    "SELECT {}, c.cl, c.db_version, c.site_id, c.seq, c.vers, {} \
                     FROM t__crsql_rows AS c JOIN t ON {} ORDER BY c.db_version, c.seq",
                    key("c"),
                    run.join(", "),
                    pk_join(&cols, "t", "c")?
                ));
            }
            "t__crsql_cells" => reads.push(format!(
                "SELECT {}, c.col_name, {value}, {clock}, r.cl \
                 FROM t__crsql_cells AS c JOIN t__crsql_rows AS r ON {} JOIN t ON {} \
                 ORDER BY c.db_version, c.seq",
                key("c"),
                pk_join(&cols, "r", "c")?,
                pk_join(&cols, "t", "c")?
            )),
            "t__crsql_clock" => reads.push(format!(
                "SELECT {}, c.col_name, {value}, {clock} \
                 FROM t__crsql_clock AS c JOIN t__crsql_pks AS k ON k.__crsql_key = c.key \
                 JOIN t ON {} ORDER BY c.db_version",
                key("k"),
                pk_join(&cols, "t", "k")?
            )),
            "t__crsql_pks" => {}
            other => return Err(format!("the pack floor does not know table {other}").into()),
        }
    }
    if reads.is_empty() {
        return Err("the pack floor found no clock table of t".into());
    }
    let mut rows = 0u64;
    let (_, time) = timed(|| {
        for sql in &reads {
            let mut stmt = src.prepare(sql)?;
            let width = stmt.column_count();
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                for i in 0..width {
                    std::hint::black_box(r.get_ref(i)?);
                }
                rows += 1;
            }
        }
        Ok(())
    })?;
    Ok((rows, time))
}
