//! The eponymous `crsql_streams` table: every stream of the database, with
//! its positions and how far behind it is.

use std::ffi::c_int;
use std::sync::Arc;

use crsql_stream_core::package::{to_hex, Package};
use crsql_stream_core::Position;
use rusqlite::types::{Value, ValueRef};
use rusqlite::vtab::IndexInfo;
use rusqlite::OptionalExtension;

use crate::crr::counts::{changes_after, Filter};
use crate::err;
use crate::error::Result;
use crate::sqlite::vtab::{Table, TableCursor};
use crate::state::{Ext, Inner};
use crate::streams::outbound::OutboundConfig;

const NAME: &str = "crsql_streams";

/// The table's columns.
const SCHEMA: &str = "CREATE TABLE x(name TEXT COLLATE NOCASE, direction TEXT, peer TEXT, last_sent TEXT, last_retrieved TEXT, \
     last_applied TEXT, lag_versions INTEGER, lag_changes INTEGER)";

pub struct StreamsTable {
    ext: Arc<Ext>,
}

impl Table for StreamsTable {
    crate::sqlite::vtab::ext_eponymous!(NAME, StreamsCursor, SCHEMA);

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        // `WHERE name = …` reads one stream: a hub with many streams reads
        // one client's lag without computing everyone's.
        crate::sqlite::vtab::plan_equality(info, 0, 100.0, false);
        Ok(())
    }

    fn open(&mut self) -> Result<StreamsCursor> {
        Ok(StreamsCursor {
            ext: Arc::clone(&self.ext),
            rows: Default::default(),
        })
    }
}

pub struct StreamsCursor {
    ext: Arc<Ext>,
    rows: super::Listing,
}

fn text(p: Position) -> Value {
    Value::Text(p.to_string())
}

/// `lag_changes` of outbound stream `name` at position `pos`: the changes
/// after it that the stream's filters let through (NULL when its
/// definition cannot be read).
fn outbound_lag(inner: &mut Inner, ext: &Ext, name: &str, pos: Position) -> Result<Value> {
    let sql: Option<String> = inner
        .conn
        .prepare_cached("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?;
    let Some(args) = sql.as_deref().and_then(module_args) else {
        return Ok(Value::Null);
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let Ok(cfg) = OutboundConfig::parse(name, &args) else {
        return Ok(Value::Null);
    };
    let filter = Filter::of_stream(inner, &cfg)?;
    Ok(Value::Integer(changes_after(ext, inner, &filter, pos)?))
}

/// `lag_changes` of inbound stream `name`: the changes it received and has
/// not applied yet, those of the staged parts of a split transaction (0
/// between transactions). Read from the parts' headers, not their changes.
fn staged_changes(inner: &Inner, name: &str) -> Result<i64> {
    let mut stmt = inner
        .conn
        .prepare_cached("SELECT package FROM crsql_stream_staging WHERE name = ?1")?;
    let mut rows = stmt.query([name])?;
    let mut n = 0usize;
    while let Some(r) = rows.next()? {
        let bytes = match r.get_ref(0)? {
            ValueRef::Blob(b) | ValueRef::Text(b) => b,
            _ => continue,
        };
        let more = Package::change_count(bytes).map_err(|e| {
            err!("inbound stream {name}: a staged part does not decode ({e}); drop and re-create the stream")
        })?;
        // A count read from a header, not from the changes: saturate
        // rather than wrap on a part that claims more than it holds.
        n = n.saturating_add(more);
    }
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

/// The module arguments of a `CREATE VIRTUAL TABLE … USING m(a, b, …)`
/// statement, split as SQLite splits them: at commas outside quotes and
/// parentheses.
fn module_args(sql: &str) -> Option<Vec<String>> {
    let open = sql.find('(')?;
    let body = &sql[open + 1..];
    let (mut args, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0usize, None);
    for c in body.chars() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '[') => quote = Some(']'),
            (None, '(') => depth += 1,
            (None, ')') if depth == 0 => {
                args.push(std::mem::take(&mut cur));
                break;
            }
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                args.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    args.retain(|a: &String| !a.trim().is_empty());
    Some(args.into_iter().map(|a| a.trim().to_string()).collect())
}

impl TableCursor for StreamsCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        args: &[ValueRef<'_>],
    ) -> Result<()> {
        // (SQLite checks `name = …` again, under the constraint's collation.)
        // Another type than text: every stream, SQLite compares.
        let only: Option<String> = match (idx_num, args.first()) {
            (1, Some(ValueRef::Text(t))) => Some(String::from_utf8_lossy(t).into_owned()),
            _ => None,
        };
        let mut rows = Vec::new();
        let mut inner = self.ext.lock(NAME)?;
        if !super::state_tables_exist(&inner.conn)? {
            return Ok(());
        }
        let db_version = inner.db_version(&self.ext.tx)?;
        let raw: Vec<(String, super::StreamState)> = inner
            .conn
            .prepare_cached(
                "SELECT name, direction, stream_id, peer, db_version, seq FROM crsql_stream_state \
                 WHERE ?1 IS NULL OR name = ?1 COLLATE NOCASE ORDER BY name",
            )?
            .query_map([&only], |r| {
                Ok((
                    r.get(0)?,
                    super::StreamState {
                        direction: r.get(1)?,
                        stream_id: r.get(2)?,
                        peer: r.get(3)?,
                        position: Position::new(r.get(4)?, r.get(5)?),
                        resync: false,
                    },
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        for (name, state) in raw {
            let (direction, pos, dbv) =
                (state.direction, state.position, state.position.db_version);
            let peer = state
                .peer
                .map(|p| Value::Text(to_hex(&p)))
                .unwrap_or(Value::Null);
            let row = if direction == "outbound" {
                let retrieved = self.ext.retrieved(&name).map(text).unwrap_or(Value::Null);
                let lag = outbound_lag(&mut inner, &self.ext, &name, pos)?;
                [
                    Value::Text(name),
                    Value::Text(direction),
                    peer,
                    text(pos),
                    retrieved,
                    Value::Null,
                    Value::Integer((db_version - dbv).max(0)),
                    lag,
                ]
            } else {
                let lag = staged_changes(&inner, &name)?;
                [
                    Value::Text(name),
                    Value::Text(direction),
                    peer,
                    Value::Null,
                    Value::Null,
                    text(pos),
                    Value::Null,
                    Value::Integer(lag),
                ]
            };
            rows.push(row.to_vec());
        }
        self.rows.reset(rows);
        Ok(())
    }

    super::listing_cursor!();
}
