//! The extension's error type, and its one mapping to SQLite result codes.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crsql_stream_core::PackError;
use rusqlite::ffi;

/// Everything that can go wrong inside the extension. Messages name the
/// object and the values involved, so a user can act on them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A message shown to the user as is (cr-sqlite compatible texts included).
    #[error("{0}")]
    Msg(String),
    /// Same, but reported with SQLITE_MISUSE.
    #[error("{0}")]
    Misuse(String),
    #[error("{context}: {source}")]
    Pack { context: String, source: PackError },
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An SQLite error with `prefix` before its message, keeping its result
    /// code (SQLITE_BUSY, SQLITE_FULL, … stay recognisable to the caller).
    pub fn prefixed(prefix: &str, e: rusqlite::Error) -> Error {
        match e {
            rusqlite::Error::SqliteFailure(f, m) => {
                let m = m.unwrap_or_else(|| f.to_string());
                Error::Sqlite(rusqlite::Error::SqliteFailure(
                    f,
                    Some(format!("{prefix}{m}")),
                ))
            }
            other => Error::Msg(format!("{prefix}{other}")),
        }
    }

    /// The SQLite result code this error is reported with.
    pub fn code(&self) -> i32 {
        match self {
            Error::Misuse(_) => ffi::SQLITE_MISUSE,
            Error::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => f.extended_code,
            _ => ffi::SQLITE_ERROR,
        }
    }
}

/// Build an [`Error::Msg`] from format arguments.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => { $crate::error::Error::Msg(format!($($arg)*)) };
}

impl From<Error> for rusqlite::Error {
    fn from(e: Error) -> rusqlite::Error {
        let code = e.code();
        let msg = match e {
            Error::Sqlite(rusqlite::Error::SqliteFailure(_, Some(m))) => m,
            other => other.to_string(),
        };
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(msg))
    }
}

/// Run `f`, turning a panic into an SQL error that names `what`. Every entry
/// point from SQLite goes through this: nothing unwinds into C.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> rusqlite::Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(Into::into),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Error::Msg(format!("{what}: internal error ({detail})")).into())
        }
    }
}

/// The message of an SQLite error without rusqlite's decoration.
pub fn message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
        other => other.to_string(),
    }
}
