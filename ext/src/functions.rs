//! The SQL functions. Each is a thin adapter: read arguments, call plain
//! Rust, return a value. Registration is flat, in [`register`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crsql_stream_core::pack::pack_columns;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

use crate::crr::values::{to_core, type_name};
use crate::crr::{self, compact, fract, local};
use crate::err;
use crate::error::{guard, Error, Result};
use crate::sqlite::function::{create_scalar_function, Args};
use crate::state::Ext;

type SqlFn = fn(&Ext, &Args<'_>) -> Result<Value>;

const D: FunctionFlags = FunctionFlags::SQLITE_DETERMINISTIC;
const I: FunctionFlags = FunctionFlags::SQLITE_INNOCUOUS;
const DO: FunctionFlags = FunctionFlags::SQLITE_DIRECTONLY;
const NONE: FunctionFlags = FunctionFlags::empty();

/// Every SQL function of the extension: name, arity (-1 = variadic), flags,
/// implementation.
const FUNCTIONS: &[(&str, i32, FunctionFlags, SqlFn)] = &[
    ("crsql_as_crr", -1, D, as_crr),
    ("crsql_as_table", 1, NONE, as_table),
    ("crsql_begin_alter", -1, DO, begin_alter),
    ("crsql_commit_alter", -1, DO, commit_alter),
    ("crsql_automigrate", -1, DO, automigrate),
    ("crsql_db_version", 0, I, db_version),
    ("crsql_next_db_version", -1, I, next_db_version),
    ("crsql_site_id", 0, I.union(D), site_id),
    ("crsql_new_site_id", 0, DO, new_site_id),
    ("crsql_forget_peer", 1, DO, forget_peer),
    ("crsql_compact", 0, DO, compact),
    ("crsql_internal_clock_limit", 1, I, clock_limit),
    ("crsql_sha", 0, I.union(D), sha),
    ("crsql_version", 0, I.union(D), version),
    ("crsql_finalize", -1, DO, finalize),
    ("crsql_rows_impacted", 0, I, rows_impacted),
    ("crsql_config_set", 2, NONE, config_set),
    ("crsql_config_get", 1, I.union(D), config_get),
    ("crsql_pack_columns", -1, NONE, pack),
    ("crsql_internal_sync_bit", -1, I, sync_bit),
    ("crsql_get_seq", 0, I.union(D), get_seq),
    ("crsql_increment_and_get_seq", 0, I, increment_and_get_seq),
    ("crsql_after_insert", -1, I, after_insert),
    ("crsql_after_update", -1, I, after_update),
    ("crsql_after_delete", -1, I, after_delete),
    // crr::compact
    ("crsql_convert_layout", 2, DO, convert_layout),
    ("crsql_compact_after_insert", -1, I, compact_after_insert),
    ("crsql_compact_after_update", -1, I, compact_after_update),
    ("crsql_compact_after_delete", -1, I, compact_after_delete),
    (
        "crsql_internal_run_version",
        2,
        I.union(D),
        compact::sql_run_version,
    ),
    (
        "crsql_internal_run_seq",
        3,
        I.union(D),
        compact::sql_run_seq,
    ),
    (
        "crsql_internal_run_count",
        1,
        I.union(D),
        compact::sql_run_count,
    ),
    (
        "crsql_internal_compact_unsupported",
        -1,
        I,
        compact::sql_unsupported,
    ),
    ("crsql_package_info", 1, I.union(D), package_info),
    (
        "crsql_fract_key_between",
        2,
        I.union(D),
        fract::sql_key_between,
    ),
    ("crsql_fract_as_ordered", -1, DO, fract::sql_as_ordered),
    (
        "crsql_fract_fix_conflict_return_old_key",
        -1,
        I,
        fract::sql_fix_conflict,
    ),
];

/// Names of all registered functions (for the surface test and docs).
pub fn names() -> impl Iterator<Item = &'static str> {
    FUNCTIONS.iter().map(|f| f.0)
}

pub fn register(conn: &Connection, ext: &Arc<Ext>) -> rusqlite::Result<()> {
    for &(name, n_arg, flags, f) in FUNCTIONS {
        let ext = Arc::clone(ext);
        // Every call that may write moves `TxCounters::calls`, which drops
        // the row-by-row merge's memo (`crr::merge::RowMemo`).
        let writes = !READ_ONLY.contains(&name);
        create_scalar_function(
            conn,
            name,
            n_arg,
            flags | FunctionFlags::SQLITE_UTF8,
            Box::new(move |args| {
                if writes {
                    ext.tx.calls.fetch_add(1, Relaxed);
                }
                guard(name, || f(&ext, args))
            }),
        )?;
    }
    Ok(())
}

/// Functions that write no table (nor the sync bit's effect on clocks):
/// their calls leave the row-by-row merge's memo alone, so that
/// `INSERT INTO crsql_changes VALUES ('t', crsql_pack_columns(1), …)` and
/// the CRR triggers' `WHEN crsql_internal_sync_bit() = 0` keep it.
const READ_ONLY: &[&str] = &[
    "crsql_pack_columns",
    "crsql_internal_sync_bit",
    "crsql_site_id",
    "crsql_db_version",
    "crsql_sha",
    "crsql_version",
    "crsql_rows_impacted",
    "crsql_get_seq",
    "crsql_config_get",
    "crsql_package_info",
];

fn args<'a>(ctx: &'a Args<'_>) -> Vec<ValueRef<'a>> {
    (0..ctx.len()).map(|i| ctx.get_raw(i)).collect()
}

/// `f` on the arguments, copied to the stack when there are few: the
/// trigger helpers run once per row written.
fn with_args<R>(ctx: &Args<'_>, f: impl FnOnce(&[ValueRef<'_>]) -> R) -> R {
    const ON_STACK: usize = 16;
    let n = ctx.len();
    if n > ON_STACK {
        return f(&args(ctx));
    }
    let mut buf = [ValueRef::Null; ON_STACK];
    for (i, slot) in buf.iter_mut().enumerate().take(n) {
        *slot = ctx.get_raw(i);
    }
    f(&buf[..n])
}

pub(crate) fn text_arg<'a>(ctx: &'a Args<'_>, i: usize, func: &str, what: &str) -> Result<&'a str> {
    match ctx.get_raw(i) {
        ValueRef::Text(t) => {
            std::str::from_utf8(t).map_err(|_| err!("{func}: {what} is not valid UTF-8"))
        }
        other => Err(err!(
            "{func}: {what} must be TEXT, got {}",
            type_name(other)
        )),
    }
}

/// The table argument of `f([schema,] table)`; the schema is ignored.
fn table_arg<'a>(ctx: &'a Args<'_>, func: &str) -> Result<&'a str> {
    match ctx.len() {
        1 | 2 => text_arg(ctx, ctx.len() - 1, func, "the table name"),
        _ if func == "crsql_as_crr" => Err(err!(
            "Wrong number of args provided to crsql_as_crr. Provide the schema name and table name or just the table name."
        )),
        n => Err(err!("{func}: expected (table) or (schema, table), got {n} arguments")),
    }
}

fn as_crr(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    crr::as_crr(ext, table_arg(ctx, "crsql_as_crr")?)?;
    Ok(Value::Text("OK".into()))
}

fn as_table(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    crr::as_table(ext, text_arg(ctx, 0, "crsql_as_table", "the table name")?)?;
    Ok(Value::Null)
}

fn begin_alter(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    crr::begin_alter(ext, table_arg(ctx, "crsql_begin_alter")?)?;
    Ok(Value::Text("OK".into()))
}

fn commit_alter(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    crr::commit_alter(ext, table_arg(ctx, "crsql_commit_alter")?)?;
    Ok(Value::Null)
}

fn automigrate(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    const F: &str = "crsql_automigrate";
    if ctx.is_empty() {
        return Err(err!("Had no args. Expected a schema to migrate to"));
    }
    if ctx.len() > 2 {
        return Err(err!(
            "{F}: expected (schema_sql) or (schema_sql, cleanup_sql), got {} arguments",
            ctx.len()
        ));
    }
    let schema = text_arg(ctx, 0, F, "the schema")?;
    let cleanup = match ctx.get_raw(1) {
        ValueRef::Null => None,
        _ => Some(text_arg(ctx, 1, F, "the cleanup SQL")?),
    };
    crr::automigrate::automigrate(ext, schema, cleanup)?;
    Ok(Value::Text("migration complete".into()))
}

fn db_version(ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    let mut inner = ext.lock("crsql_db_version")?;
    Ok(Value::Integer(inner.db_version(&ext.tx)?))
}

fn next_db_version(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let floor = match ctx.len() {
        0 => None,
        1 => match ctx.get_raw(0) {
            ValueRef::Integer(i) => Some(i),
            ValueRef::Null => None,
            other => {
                return Err(err!(
                    "crsql_next_db_version: the floor must be an INTEGER, got {}",
                    type_name(other)
                ))
            }
        },
        n => {
            return Err(err!(
                "crsql_next_db_version: expected 0 or 1 arguments, got {n}"
            ))
        }
    };
    let mut inner = ext.lock("crsql_next_db_version")?;
    let v = inner.next_db_version(&ext.tx, floor)?;
    // A version handed out to SQL must never be handed out again (§15 Q16).
    inner.persist_version(v)?;
    Ok(Value::Integer(v))
}

fn site_id(ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    // Notice another connection's crsql_new_site_id(); inside a merge (a
    // user trigger) the state is busy and the id cannot have changed.
    if let Ok(mut inner) = ext.lock("crsql_site_id") {
        let _ = inner.db_version(&ext.tx);
    }
    Ok(Value::Blob(ext.site_id().to_vec()))
}

fn new_site_id(ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    Ok(Value::Blob(crr::new_site_id(ext)?.to_vec()))
}

/// A site id argument: 16 bytes, or 32 hex digits.
fn site_arg(ctx: &Args<'_>, i: usize, func: &str) -> Result<Vec<u8>> {
    match ctx.get_raw(i) {
        ValueRef::Blob(b) if b.len() == 16 => Ok(b.to_vec()),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .ok()
            .and_then(crsql_stream_core::SiteId::from_hex)
            .map(|s| s.0.to_vec())
            .ok_or_else(|| err!("{func}: the site id must be 16 bytes or 32 hex digits")),
        other => Err(err!(
            "{func}: the site id must be 16 bytes or 32 hex digits, got {}",
            type_name(other)
        )),
    }
}

fn forget_peer(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let site = site_arg(ctx, 0, "crsql_forget_peer")?;
    Ok(Value::Integer(crate::streams::peers::forget(ext, &site)?))
}

fn clock_limit(_ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let v = match ctx.get_raw(0) {
        ValueRef::Integer(i) => i,
        _ => crsql_stream_core::merge::MAX_CLOCK,
    };
    Err(local::clock_limit(v))
}

fn compact(ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    Ok(Value::Integer(crate::streams::compact::compact(ext)?))
}

fn sha(_ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    Ok(Value::Text(env!("CRSQL_STREAM_GIT_SHA").into()))
}

fn version(_ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    Ok(Value::Text(env!("CARGO_PKG_VERSION").into()))
}

fn finalize(ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    let mut inner = ext.lock("crsql_finalize")?;
    ext.finalize_statements(&mut inner);
    Ok(Value::Text("finalized".into()))
}

fn rows_impacted(ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    Ok(Value::Integer(ext.rows_impacted.load(Relaxed)))
}

const MERGE_EQUAL_VALUES: &str = "merge-equal-values";
use crate::streams::peers::PEER_EXPIRY;

fn setting_name<'a>(ctx: &'a Args<'_>, func: &str) -> Result<&'a str> {
    let name = text_arg(ctx, 0, func, "the setting name")?;
    if name != MERGE_EQUAL_VALUES && name != PEER_EXPIRY && name != compact::SETTING {
        return Err(err!("Unknown setting name"));
    }
    Ok(name)
}

fn config_set(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let name = setting_name(ctx, "crsql_config_set")?;
    if name == compact::SETTING {
        return compact::config_set(ext, ctx.get_raw(1));
    }
    let v = match (name, ctx.get_raw(1)) {
        (MERGE_EQUAL_VALUES, ValueRef::Integer(i @ (0 | 1))) => i,
        (PEER_EXPIRY, ValueRef::Integer(i)) if i >= 0 => i,
        (_, other) => {
            let want = if name == PEER_EXPIRY {
                "an INTEGER number of seconds, 0 or more"
            } else {
                "the INTEGER 0 or 1"
            };
            return Err(err!(
                "crsql_config_set: {name} must be {want}, got {} {}",
                type_name(other),
                crate::crr::values::display(other)
            ));
        }
    };
    let inner = ext.lock("crsql_config_set")?;
    inner.conn.execute(
        "INSERT OR REPLACE INTO crsql_master (key, value) VALUES (?1, ?2)",
        rusqlite::params![format!("config.{name}"), v],
    )?;
    if name == MERGE_EQUAL_VALUES {
        ext.merge_equal_values.store(v != 0, Relaxed);
    }
    Ok(Value::Integer(v))
}

fn config_get(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let name = setting_name(ctx, "crsql_config_get")?;
    if name == compact::SETTING {
        return compact::config_get(ext);
    }
    if name == PEER_EXPIRY {
        let inner = ext.lock("crsql_config_get")?;
        return Ok(Value::Integer(crate::streams::peers::expiry_seconds(
            &inner.conn,
        )?));
    }
    Ok(Value::Integer(ext.merge_equal_values.load(Relaxed) as i64))
}

fn pack(_ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let a = args(ctx);
    let packed = pack_columns(a.iter().map(|v| to_core(*v))).map_err(|source| Error::Pack {
        context: "crsql_pack_columns".into(),
        source,
    })?;
    Ok(Value::Blob(packed))
}

fn sync_bit(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    match ctx.len() {
        0 => Ok(Value::Integer(ext.sync_bit.load(Relaxed))),
        1 => {
            let n = match ctx.get_raw(0) {
                ValueRef::Integer(i) => i,
                other => {
                    return Err(err!(
                        "crsql_internal_sync_bit: expected an INTEGER, got {}",
                        type_name(other)
                    ))
                }
            };
            ext.sync_bit.store(n, Relaxed);
            Ok(Value::Integer(n))
        }
        n => Err(err!(
            "crsql_internal_sync_bit: expected 0 or 1 arguments, got {n}"
        )),
    }
}

fn get_seq(ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    Ok(Value::Integer(ext.tx.seq.load(Relaxed)))
}

fn increment_and_get_seq(ext: &Ext, _ctx: &Args<'_>) -> Result<Value> {
    Ok(Value::Integer(ext.tx.take_seq()))
}

/// A CRR trigger's helper `f` on the call's arguments; the trigger
/// ignores the result.
fn trigger_helper(
    ext: &Ext,
    ctx: &Args<'_>,
    f: fn(&Ext, &[ValueRef<'_>]) -> Result<()>,
) -> Result<Value> {
    with_args(ctx, |a| f(ext, a))?;
    Ok(Value::Integer(0))
}

fn after_insert(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    trigger_helper(ext, ctx, local::after_insert)
}

fn after_update(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    trigger_helper(ext, ctx, local::after_update)
}

fn convert_layout(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    const F: &str = "crsql_convert_layout";
    compact::convert::convert_layout(
        ext,
        text_arg(ctx, 0, F, "the table name")?,
        text_arg(ctx, 1, F, "the layout")?,
    )?;
    Ok(Value::Text("OK".into()))
}

/// [`trigger_helper`] of a compact CRR (whose triggers have no `WHEN` on
/// the sync bit): nothing while the sync bit is set (the extension's own
/// write, a merge: the helper would record nothing), so a merged row's
/// arguments are not even read.
fn compact_helper(
    ext: &Ext,
    ctx: &Args<'_>,
    f: fn(&Ext, &[ValueRef<'_>]) -> Result<()>,
) -> Result<Value> {
    if ext.sync_bit.load(Relaxed) != 0 {
        return Ok(Value::Integer(0));
    }
    trigger_helper(ext, ctx, f)
}

fn compact_after_insert(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    compact_helper(ext, ctx, compact::local::after_insert)
}

fn compact_after_update(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    compact_helper(ext, ctx, compact::local::after_update)
}

fn compact_after_delete(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    compact_helper(ext, ctx, compact::local::after_delete)
}

fn after_delete(ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    trigger_helper(ext, ctx, local::after_delete)
}

fn package_info(_ext: &Ext, ctx: &Args<'_>) -> Result<Value> {
    let raw = ctx.get_raw(0);
    let pkg = crate::streams::inspect::decode_arg("crsql_package_info", raw)?;
    let len = match raw {
        ValueRef::Blob(b) | ValueRef::Text(b) => b.len(),
        _ => 0,
    };
    Ok(Value::Text(crate::streams::inspect::package_info(
        &pkg, len,
    )))
}
