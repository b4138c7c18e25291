//! Fractional indexing, as cr-sqlite 0.16 has it: `crsql_fract_key_between`,
//! `crsql_fract_as_ordered` (its triggers and the `<table>_fractindex`
//! view) and `crsql_fract_fix_conflict_return_old_key`, which the view's
//! triggers call when the row to insert after shares its key with others.
//!
//! The keys come from [`crsql_stream_core::fract`]. The SQL objects have
//! cr-sqlite's names and effects; where cr-sqlite's SQL breaks (quotes in
//! names, composite primary keys, WITHOUT ROWID tables, NULL collection
//! values, a primary key changed through the view) the SQL here is written so
//! that it does not (DECISIONS D32).

use crsql_stream_core::fract::key_between;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params_from_iter, Connection};

use crate::crr::in_savepoint;
use crate::crr::schema::{quote_ident, quote_str};
use crate::crr::values::type_name;
use crate::err;
use crate::error::Result;
use crate::functions::text_arg;
use crate::sqlite::function::Args;
use crate::state::Ext;

const KEY_BETWEEN: &str = "crsql_fract_key_between";
const AS_ORDERED: &str = "crsql_fract_as_ordered";
const FIX_CONFLICT: &str = "crsql_fract_fix_conflict_return_old_key";

/// `crsql_fract_key_between(a, b)`: a key strictly between `a` and `b`
/// (NULL = open end).
pub fn sql_key_between(_ext: &Ext, args: &Args<'_>) -> Result<Value> {
    let a = key_arg(args.get_raw(0), "a")?;
    let b = key_arg(args.get_raw(1), "b")?;
    let key = key_between(a, b).map_err(|e| err!("{KEY_BETWEEN}: {e}"))?;
    Ok(Value::Text(key))
}

fn key_arg<'a>(v: ValueRef<'a>, which: &str) -> Result<Option<&'a str>> {
    match v {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(Some)
            .map_err(|_| err!("{KEY_BETWEEN}: {which} is not valid UTF-8")),
        other => Err(err!(
            "{KEY_BETWEEN}: {which} must be a TEXT key or NULL, got {}",
            type_name(other)
        )),
    }
}

/// A table's columns in declaration order, with their position in the
/// primary key (0 = not in it).
fn columns(conn: &Connection, table: &str) -> Result<Vec<(String, i64)>> {
    let mut stmt = conn.prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let rows = stmt.query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// `"c" IS NEW."c" AND …` over `cols` (`1` when there are none): the rows of
/// the collection the NEW row is in.
fn same_collection(cols: &[String]) -> String {
    if cols.is_empty() {
        return "1".into();
    }
    cols.iter()
        .map(|c| format!("{q} IS NEW.{q}", q = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The names and SQL fragments one ordered table's objects are built from.
struct Ordered {
    table: String,
    order: String,
    t: String,
    o: String,
    /// Collection columns.
    coll: Vec<String>,
    /// Primary-key columns, in primary-key order.
    pks: Vec<String>,
    /// Every column but the order column, in declaration order.
    others: Vec<String>,
}

impl Ordered {
    fn load(conn: &Connection, table: &str, order: &str, coll: &[String]) -> Result<Ordered> {
        let cols = columns(conn, table)?;
        if cols.is_empty() {
            return Err(err!("{AS_ORDERED}: no such table: {table}"));
        }
        for c in coll.iter().map(String::as_str).chain([order]) {
            if !cols.iter().any(|(n, _)| n == c) {
                return Err(err!(
                    "{AS_ORDERED}: table {table} has no column {c:?} (all columns must be present in the base table)"
                ));
            }
        }
        let mut pk: Vec<(i64, String)> = cols
            .iter()
            .filter(|(_, k)| *k > 0)
            .map(|(n, k)| (*k, n.clone()))
            .collect();
        if pk.is_empty() {
            return Err(err!(
                "{AS_ORDERED}: table {table} has no PRIMARY KEY; the {table}_fractindex view names the row to insert after by its primary key"
            ));
        }
        pk.sort();
        if pk.iter().any(|(_, n)| n == order) {
            return Err(err!(
                "{AS_ORDERED}: the order column {order:?} is part of the primary key of {table}; order by a column of its own"
            ));
        }
        Ok(Ordered {
            table: table.into(),
            order: order.into(),
            t: quote_ident(table),
            o: quote_ident(order),
            coll: coll.to_vec(),
            pks: pk.into_iter().map(|(_, n)| n).collect(),
            others: cols
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| n != order)
                .collect(),
        })
    }

    fn name(&self, suffix: &str) -> String {
        quote_ident(&format!("{}{suffix}", self.table))
    }

    fn pend_name(&self) -> String {
        quote_ident(&format!("__crsql_{}_fractindex_pend_trig", self.table))
    }

    fn move_name(&self) -> String {
        quote_ident(&format!("__crsql_{}_fractindex_ezmove", self.table))
    }

    /// Set the NEW row's order to the first (-1) or last (1) key of its
    /// collection: the body of the insert and the move trigger.
    fn pend_update(&self) -> String {
        let (t, o) = (&self.t, &self.o);
        let others = format!(
            "FROM {t} WHERE {} AND {o} != -1 AND {o} != 1",
            same_collection(&self.coll)
        );
        format!(
            "UPDATE {t} SET {o} = CASE NEW.{o} \
             WHEN -1 THEN crsql_fract_key_between(NULL, (SELECT min({o}) {others})) \
             WHEN 1 THEN crsql_fract_key_between((SELECT max({o}) {others}), NULL) END \
             WHERE {};",
            self.pk_is("NEW.", "")
        )
    }

    /// `"id" IS <prefix>"<after>id" AND …` over the primary key.
    fn pk_is(&self, prefix: &str, name_prefix: &str) -> String {
        self.pks
            .iter()
            .map(|p| {
                format!(
                    "{} IS {prefix}{}",
                    quote_ident(p),
                    quote_ident(&format!("{name_prefix}{p}"))
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The order value of a row placed after the row the view's `after_<pk>`
    /// columns name: between it and the next key of the collection; -1
    /// (prepend) when there is no such row; when its key is shared, what
    /// `crsql_fract_fix_conflict_return_old_key` returns.
    fn after_value(&self) -> String {
        let (t, o) = (&self.t, &self.o);
        let list = same_collection(&self.coll);
        let after = format!(
            "(SELECT {o} FROM {t} WHERE {})",
            self.pk_is("NEW.", "after_")
        );
        let mut fix_args = vec![quote_str(&self.table), quote_str(&self.order)];
        fix_args.extend(self.coll.iter().map(|c| quote_str(c)));
        fix_args.push("-1".into());
        fix_args.extend(self.pks.iter().map(|p| quote_str(p)));
        fix_args.extend(
            self.pks
                .iter()
                .map(|p| format!("NEW.{}", quote_ident(&format!("after_{p}")))),
        );
        format!(
            "CASE (SELECT count(*) FROM {t} WHERE {list} AND {o} = {after}) \
             WHEN 1 THEN crsql_fract_key_between({after}, \
               (SELECT {o} FROM {t} WHERE {list} AND {o} > {after} ORDER BY {o} ASC LIMIT 1)) \
             WHEN 0 THEN -1 \
             ELSE crsql_fract_fix_conflict_return_old_key({}) END",
            fix_args.join(", ")
        )
    }

    /// Every statement `crsql_fract_as_ordered` runs, in order.
    fn script(&self) -> String {
        let (t, o) = (&self.t, &self.o);
        let view = self.name("_fractindex");
        let after_cols = self
            .pks
            .iter()
            .map(|p| format!("NULL AS {}", quote_ident(&format!("after_{p}"))))
            .collect::<Vec<_>>()
            .join(", ");
        let others = self.others.iter().map(|c| quote_ident(c));
        let names = others.clone().collect::<Vec<_>>().join(", ");
        let values = others
            .clone()
            .map(|c| format!("NEW.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sets = others
            .map(|c| format!("{c} = NEW.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let pend = self.pend_update();
        let after = self.after_value();
        format!(
            "DROP TRIGGER IF EXISTS {pend_name};\n\
             DROP TRIGGER IF EXISTS {move_name};\n\
             DROP VIEW IF EXISTS {view};\n\
             CREATE TRIGGER {pend_name} AFTER INSERT ON {t} \
             WHEN NEW.{o} = -1 OR NEW.{o} = 1 BEGIN {pend} END;\n\
             CREATE TRIGGER {move_name} AFTER UPDATE OF {o} ON {t} \
             WHEN NEW.{o} = -1 OR NEW.{o} = 1 BEGIN {pend} END;\n\
             CREATE VIEW {view} AS SELECT *, {after_cols} FROM {t};\n\
             CREATE TRIGGER {insert_trig} INSTEAD OF INSERT ON {view} BEGIN \
             INSERT INTO {t} ({names}, {o}) VALUES ({values}, {after}); END;\n\
             CREATE TRIGGER {update_trig} INSTEAD OF UPDATE ON {view} BEGIN \
             UPDATE {t} SET {sets}, {o} = {after} WHERE {old}; END;",
            pend_name = self.pend_name(),
            move_name = self.move_name(),
            insert_trig = self.name("_fractindex_insert_trig"),
            update_trig = self.name("_fractindex_update_trig"),
            old = self.pk_is("OLD.", ""),
        )
    }
}

/// `crsql_fract_as_ordered(table, order_column, collection_column...)`.
pub fn sql_as_ordered(ext: &Ext, args: &Args<'_>) -> Result<Value> {
    if args.len() < 2 {
        return Err(err!(
            "{AS_ORDERED}: expected (table, order_column, collection_column...), got {} argument{}",
            args.len(),
            if args.len() == 1 { "" } else { "s" }
        ));
    }
    let table = text_arg(args, 0, AS_ORDERED, "the table name")?;
    let order = text_arg(args, 1, AS_ORDERED, "the order column")?;
    let coll = (2..args.len())
        .map(|i| text_arg(args, i, AS_ORDERED, "a collection column").map(String::from))
        .collect::<Result<Vec<_>>>()?;
    let conn = ext.db.connection()?;
    in_savepoint(&conn, "crsql_fract_as_ordered", || {
        let ordered = Ordered::load(&conn, table, order, &coll)?;
        conn.execute_batch(&ordered.script())
            .map_err(|e| crate::error::Error::prefixed(&format!("{AS_ORDERED}: "), e))
    })?;
    Ok(Value::Null)
}

/// `crsql_fract_fix_conflict_return_old_key(table, order_column,
/// collection_column..., -1, pk_column..., pk_value...)`: the row named by
/// the primary key shares its key with other rows of its collection. Move it
/// just before that key and return a key between its new and its old one,
/// for the row to be placed after it.
pub fn sql_fix_conflict(ext: &Ext, args: &Args<'_>) -> Result<Value> {
    if args.len() < 4 {
        return Err(err!(
            "{FIX_CONFLICT}: expected (table, order_column, collection_column..., -1, pk_column..., pk_value...), got {} arguments",
            args.len()
        ));
    }
    let table = text_arg(args, 0, FIX_CONFLICT, "the table name")?;
    let order = text_arg(args, 1, FIX_CONFLICT, "the order column")?;
    // Collection columns run up to the first INTEGER argument (the -1).
    let sep = (2..args.len())
        .find(|&i| matches!(args.get_raw(i), ValueRef::Integer(_)))
        .ok_or_else(|| {
            err!("{FIX_CONFLICT}: the -1 that ends the collection columns is missing")
        })?;
    let coll = (2..sep)
        .map(|i| text_arg(args, i, FIX_CONFLICT, "a collection column"))
        .collect::<Result<Vec<_>>>()?;
    let rest = args.len() - sep - 1;
    if rest == 0 || rest % 2 != 0 {
        return Err(err!(
            "{FIX_CONFLICT}: expected as many primary-key values as primary-key columns after the -1, and at least one; got {rest} arguments"
        ));
    }
    let n = rest / 2;
    let pk_names = (sep + 1..sep + 1 + n)
        .map(|i| text_arg(args, i, FIX_CONFLICT, "a primary-key column"))
        .collect::<Result<Vec<_>>>()?;
    let pk_values: Vec<Value> = (sep + 1 + n..args.len())
        .map(|i| args.get_raw(i).into())
        .collect();
    let conn = ext.db.connection()?;
    fix_conflict(&conn, table, order, &coll, &pk_names, &pk_values).map_err(|e| match e {
        crate::error::Error::Sqlite(s) => {
            crate::error::Error::prefixed(&format!("{FIX_CONFLICT}: "), s)
        }
        other => other,
    })
}

fn fix_conflict(
    conn: &Connection,
    table: &str,
    order: &str,
    coll: &[&str],
    pk_names: &[&str],
    pk_values: &[Value],
) -> Result<Value> {
    let (t, o) = (quote_ident(table), quote_ident(order));
    let pk_is = pk_names
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{} IS ?{}", quote_ident(p), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ");
    let old: Value = conn
        .query_row(
            &format!("SELECT {o} FROM {t} WHERE {pk_is}"),
            params_from_iter(pk_values),
            |r| r.get(0),
        )
        .map_err(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => {
                err!("{FIX_CONFLICT}: {table} has no row with that primary key")
            }
            other => other.into(),
        })?;
    let text = |v: &Value| match v {
        Value::Text(s) => Ok(s.clone()),
        other => Err(err!(
            "{FIX_CONFLICT}: the {order} value of the row in {table} must be a TEXT key, got {}",
            type_name(ValueRef::from(other))
        )),
    };
    let old_key = text(&old)?;
    let same_list = if coll.is_empty() {
        String::new()
    } else {
        let on = coll
            .iter()
            .map(|c| format!("x.{q} IS y.{q}", q = quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let cols = coll
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        format!("JOIN (SELECT {cols} FROM {t} WHERE {pk_is}) AS y ON {on}")
    };
    let slot = pk_values.len() + 1;
    let sql = format!(
        "UPDATE {t} SET {o} = crsql_fract_key_between(\
           (SELECT x.{o} FROM {t} AS x {same_list} WHERE x.{o} < ?{slot} ORDER BY x.{o} DESC LIMIT 1), \
           ?{slot}) \
         WHERE {pk_is} RETURNING {o}"
    );
    let mut params = pk_values.to_vec();
    params.push(old.clone());
    let moved: Value = conn.query_row(&sql, params_from_iter(&params), |r| r.get(0))?;
    let key = key_between(Some(&text(&moved)?), Some(&old_key))
        .map_err(|e| err!("{FIX_CONFLICT}: {e}"))?;
    Ok(Value::Text(key))
}
