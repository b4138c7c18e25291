//! SQLite values as plain Rust types, and cr-sqlite's value order (spec §8.5).

use std::cmp::Ordering;

/// An owned SQLite value. Text is valid UTF-8 (decoders check it).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A borrowed SQLite value. Text is kept as raw bytes, as SQLite hands it out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    Null,
    Integer(i64),
    Real(f64),
    Text(&'a [u8]),
    Blob(&'a [u8]),
}

impl Value {
    /// Borrow this value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Integer(i) => ValueRef::Integer(*i),
            Value::Real(r) => ValueRef::Real(*r),
            Value::Text(s) => ValueRef::Text(s.as_bytes()),
            Value::Blob(b) => ValueRef::Blob(b),
        }
    }
}

impl ValueRef<'_> {
    /// SQLite's fundamental type code: 1 INTEGER, 2 REAL, 3 TEXT, 4 BLOB, 5 NULL.
    pub fn type_code(&self) -> u8 {
        match self {
            ValueRef::Integer(_) => 1,
            ValueRef::Real(_) => 2,
            ValueRef::Text(_) => 3,
            ValueRef::Blob(_) => 4,
            ValueRef::Null => 5,
        }
    }

    /// Copy into an owned value; text that is not UTF-8 is replaced lossily.
    pub fn to_owned_value(&self) -> Value {
        match *self {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(i) => Value::Integer(i),
            ValueRef::Real(r) => Value::Real(r),
            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
        }
    }
}

/// cr-sqlite's value comparison (spec §8.5), used for merge tie-breaks and
/// for "did this column change" in update triggers.
///
/// Different storage classes order by class alone:
/// NULL < BLOB < TEXT < REAL < INTEGER. Within a class: integers and reals
/// numerically (NaN equals everything, as cr-sqlite uses only `<` and `>`;
/// -0.0 sorts below 0.0, where cr-sqlite sees them equal), text and blobs
/// bytewise.
pub fn compare_values(left: ValueRef<'_>, right: ValueRef<'_>) -> Ordering {
    let (lc, rc) = (left.type_code(), right.type_code());
    if lc != rc {
        // A smaller type code ranks higher.
        return rc.cmp(&lc);
    }
    match (left, right) {
        (ValueRef::Integer(a), ValueRef::Integer(b)) => a.cmp(&b),
        (ValueRef::Real(a), ValueRef::Real(b)) => match a.partial_cmp(&b) {
            // Numerically equal reals differ only as 0.0 and -0.0, which a
            // column without REAL affinity stores apart: order them by sign,
            // so that writing one over the other is a change and a tie
            // between them breaks the same way on every replica.
            Some(Ordering::Equal) => a.total_cmp(&b),
            Some(order) => order,
            None => Ordering::Equal,
        },
        (ValueRef::Text(a), ValueRef::Text(b)) | (ValueRef::Blob(a), ValueRef::Blob(b)) => a.cmp(b),
        _ => Ordering::Equal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_class_order_ignores_numeric_value() {
        // integer 3 beats real 5.5; real 2.5 beats text 'a'; text beats blob; blob beats null
        assert_eq!(
            compare_values(ValueRef::Integer(3), ValueRef::Real(5.5)),
            Ordering::Greater
        );
        assert_eq!(
            compare_values(ValueRef::Real(2.5), ValueRef::Text(b"a")),
            Ordering::Greater
        );
        assert_eq!(
            compare_values(ValueRef::Text(b""), ValueRef::Blob(b"zz")),
            Ordering::Greater
        );
        assert_eq!(
            compare_values(ValueRef::Null, ValueRef::Blob(b"")),
            Ordering::Less
        );
    }

    #[test]
    fn same_class_compares_by_value_and_bytes() {
        assert_eq!(
            compare_values(ValueRef::Text(b"B"), ValueRef::Text(b"b")),
            Ordering::Less
        );
        assert_eq!(
            compare_values(ValueRef::Text(b"b"), ValueRef::Text(b"ba")),
            Ordering::Less
        );
        assert_eq!(
            compare_values(ValueRef::Integer(-1), ValueRef::Integer(0)),
            Ordering::Less
        );
        // -0.0 and 0.0 are apart (a write of one over the other is a change).
        assert_eq!(
            compare_values(ValueRef::Real(-0.0), ValueRef::Real(0.0)),
            Ordering::Less
        );
        assert_eq!(
            compare_values(ValueRef::Real(0.0), ValueRef::Real(-0.0)),
            Ordering::Greater
        );
        assert_eq!(
            compare_values(ValueRef::Real(-0.0), ValueRef::Real(-0.0)),
            Ordering::Equal
        );
        assert_eq!(
            compare_values(ValueRef::Real(f64::NAN), ValueRef::Real(1.0)),
            Ordering::Equal
        );
        assert_eq!(
            compare_values(ValueRef::Null, ValueRef::Null),
            Ordering::Equal
        );
    }
}
