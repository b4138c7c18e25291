//! Newtypes for clocks, ids and stream positions.

use std::fmt;

/// A database's local version counter (spec §3.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DbVersion(pub i64);

/// Order of a change within its db_version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub i64);

/// Per-cell Lamport counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ColVersion(pub i64);

/// A row's causal length: odd = alive, even = deleted, 0 = unknown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CausalLength(pub i64);

impl CausalLength {
    pub fn is_alive(self) -> bool {
        self.0 % 2 == 1
    }
}

/// A 16-byte site id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteId(pub [u8; 16]);

impl SiteId {
    /// Parse 32 hex digits (either case; nothing else, no signs).
    pub fn from_hex(s: &str) -> Option<SiteId> {
        let s = s.trim();
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(SiteId(out))
    }

    pub fn from_slice(b: &[u8]) -> Option<SiteId> {
        <[u8; 16]>::try_from(b).ok().map(SiteId)
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteId({})", self.to_hex())
    }
}

/// A stream position `[db_version, seq]`, totally ordered. Serialized as a
/// two-element array.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(from = "(i64, i64)", into = "(i64, i64)")]
pub struct Position {
    pub db_version: i64,
    pub seq: i64,
}

/// Why a position text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {text:?}: expected a JSON array of two non-negative integers such as '[12,3]'")]
pub struct PositionError {
    pub text: String,
}

impl Position {
    pub const ZERO: Position = Position {
        db_version: 0,
        seq: 0,
    };

    pub fn new(db_version: i64, seq: i64) -> Position {
        Position { db_version, seq }
    }

    /// Parse the JSON text form, e.g. `[12,3]` (whitespace allowed).
    pub fn parse(text: &str) -> Result<Position, PositionError> {
        let err = || PositionError {
            text: text.chars().take(64).collect(),
        };
        let inner = text
            .trim()
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .ok_or_else(err)?;
        let mut parts = inner.split(',');
        let mut num = || -> Result<i64, PositionError> {
            let p = parts.next().ok_or_else(err)?.trim();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            p.parse::<i64>().map_err(|_| err())
        };
        let db_version = num()?;
        let seq = num()?;
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Position { db_version, seq })
    }
}

impl From<(i64, i64)> for Position {
    fn from((db_version, seq): (i64, i64)) -> Position {
        Position { db_version, seq }
    }
}

impl From<Position> for (i64, i64) {
    fn from(p: Position) -> (i64, i64) {
        (p.db_version, p.seq)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{},{}]", self.db_version, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_print_as_json_pairs() {
        assert_eq!(Position::parse("[12,3]").unwrap(), Position::new(12, 3));
        assert_eq!(Position::parse(" [ 0 , 0 ] ").unwrap(), Position::ZERO);
        assert_eq!(Position::new(12, 3).to_string(), "[12,3]");
        for bad in [
            "",
            "[1]",
            "[1,2,3]",
            "[-1,0]",
            "[a,1]",
            "12,3",
            "[1.5,2]",
            "[99999999999999999999,0]",
        ] {
            assert!(Position::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn positions_order_by_db_version_then_seq() {
        assert!(Position::new(1, 9) < Position::new(2, 0));
        assert!(Position::new(2, 0) < Position::new(2, 1));
    }

    #[test]
    fn site_ids_round_trip_through_hex() {
        let s = SiteId::from_hex("0A0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a").unwrap();
        assert_eq!(s.to_hex(), "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a");
        assert!(SiteId::from_hex("0a").is_none());
        assert!(SiteId::from_hex("zz0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a").is_none());
        assert!(SiteId::from_hex("+a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a").is_none());
    }
}
