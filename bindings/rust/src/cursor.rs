//! Stream positions.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// A position `[db_version, seq]` in the database that produces a stream.
///
/// Positions are totally ordered (db_version first, then seq) and travel as
/// JSON text: `Cursor::new(12, 3).to_string() == "[12,3]"`, and
/// `"[12,3]".parse::<Cursor>()` reads it back. `Cursor::ZERO` (`[0,0]`) is
/// "before everything". It binds to and reads from SQL as that text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor {
    pub db_version: i64,
    pub seq: i64,
}

impl Cursor {
    /// `[0,0]`: before every change.
    pub const ZERO: Cursor = Cursor {
        db_version: 0,
        seq: 0,
    };

    pub const fn new(db_version: i64, seq: i64) -> Cursor {
        Cursor { db_version, seq }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{},{}]", self.db_version, self.seq)
    }
}

/// Why a text is not a cursor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseCursorError {
    text: String,
}

impl fmt::Display for ParseCursorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid position {:?}: expected a JSON array of two non-negative integers such as '[12,3]'",
            self.text
        )
    }
}

impl std::error::Error for ParseCursorError {}

impl FromStr for Cursor {
    type Err = ParseCursorError;

    /// The JSON text form, e.g. `[12,3]`; whitespace is allowed. The same
    /// parser as the extension's (`crsql-stream-core`).
    fn from_str(text: &str) -> Result<Cursor, ParseCursorError> {
        crsql_stream_core::ids::Position::parse(text)
            .map(|p| Cursor::new(p.db_version, p.seq))
            .map_err(|e| ParseCursorError { text: e.text })
    }
}

impl From<(i64, i64)> for Cursor {
    fn from((db_version, seq): (i64, i64)) -> Cursor {
        Cursor { db_version, seq }
    }
}

impl ToSql for Cursor {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_string()))
    }
}

impl FromSql for Cursor {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Cursor> {
        value
            .as_str()?
            .parse()
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_print_and_parse_as_json_pairs() {
        assert_eq!(Cursor::new(12, 3).to_string(), "[12,3]");
        assert_eq!("[12,3]".parse(), Ok(Cursor::new(12, 3)));
        assert_eq!(" [ 0 , 0 ] ".parse(), Ok(Cursor::ZERO));
        for bad in ["", "[]", "[1]", "[1,2,3]", "[-1,0]", "[a,0]", "1,2", "[1,2"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cursors_order_by_db_version_then_seq() {
        assert!(Cursor::new(1, 9) < Cursor::new(2, 0));
        assert!(Cursor::new(2, 0) < Cursor::new(2, 1));
        assert!(Cursor::ZERO < Cursor::new(0, 1));
    }
}
