//! Conversions between rusqlite's and the core's borrowed values.

use crsql_stream_core::ValueRef as CoreRef;
use rusqlite::types::ValueRef as SqlRef;

pub fn to_core(v: SqlRef<'_>) -> CoreRef<'_> {
    match v {
        SqlRef::Null => CoreRef::Null,
        SqlRef::Integer(i) => CoreRef::Integer(i),
        SqlRef::Real(r) => CoreRef::Real(r),
        SqlRef::Text(t) => CoreRef::Text(t),
        SqlRef::Blob(b) => CoreRef::Blob(b),
    }
}

pub fn to_sql(v: CoreRef<'_>) -> SqlRef<'_> {
    match v {
        CoreRef::Null => SqlRef::Null,
        CoreRef::Integer(i) => SqlRef::Integer(i),
        CoreRef::Real(r) => SqlRef::Real(r),
        CoreRef::Text(t) => SqlRef::Text(t),
        CoreRef::Blob(b) => SqlRef::Blob(b),
    }
}

/// cr-sqlite's value order on SQLite values (§8.5).
pub fn compare(a: SqlRef<'_>, b: SqlRef<'_>) -> std::cmp::Ordering {
    crsql_stream_core::compare_values(to_core(a), to_core(b))
}

/// The SQLite type name of a value, for error messages.
pub fn type_name(v: SqlRef<'_>) -> &'static str {
    match v {
        SqlRef::Null => "NULL",
        SqlRef::Integer(_) => "INTEGER",
        SqlRef::Real(_) => "REAL",
        SqlRef::Text(_) => "TEXT",
        SqlRef::Blob(_) => "BLOB",
    }
}

/// A short SQL-literal-like rendering of a value, for error messages.
pub fn display(v: SqlRef<'_>) -> String {
    match v {
        SqlRef::Null => "NULL".into(),
        SqlRef::Integer(i) => i.to_string(),
        SqlRef::Real(r) => format!("{r:?}"),
        SqlRef::Text(t) => {
            let s = String::from_utf8_lossy(t);
            let short: String = s.chars().take(40).collect();
            format!("'{}'", short.replace('\'', "''"))
        }
        SqlRef::Blob(b) => {
            let hex: String = b.iter().take(20).map(|x| format!("{x:02X}")).collect();
            format!("X'{hex}'")
        }
    }
}

/// A borrowed value as a bindable parameter / function result.
pub fn out(v: SqlRef<'_>) -> rusqlite::types::ToSqlOutput<'_> {
    rusqlite::types::ToSqlOutput::Borrowed(v)
}
