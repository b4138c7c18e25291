//! Fractional-index keys, as cr-sqlite 0.16 generates them
//! (`crsql_fract_key_between`). Peers compare these keys, so every key must
//! be byte-identical to cr-sqlite's for the same inputs.
//!
//! The scheme is the base-62 "fractional indexing" of D. Greenspan, as
//! cr-sqlite's `fractindex-core` crate implements it:
//!
//! ```text
//! key      := integer fraction
//! integer  := head digit{n}     head 'a'..'z': n = head - 'a' + 1 (0 and up)
//!                               head 'A'..'Z': n = 'Z' - head + 1 (below 0)
//! fraction := digit*            never ends in '0'
//! digit    := '0'..'9' | 'A'..'Z' | 'a'..'z'   (ASCII order = digit order)
//! ```
//!
//! Keys sort by plain byte comparison. `key_between(None, None)` is `a0`;
//! after a key comes the next integer (`a0` → `a1` → … → `az` → `b00`),
//! before it the previous one (`a0` → `Zz`); between two keys the shortest
//! midpoint of the fractions, rounding half up (`a0`, `a1` → `a0V`).
//!
//! Written from the algorithm, not from cr-sqlite's code. Deliberate
//! differences, all on inputs where cr-sqlite aborts the process or refuses
//! valid keys (docs/compat.md, DECISIONS D32): an empty key, a key that is
//! the same on both sides, a key whose integer part would cut a multi-byte
//! character, and keys of 256 bytes or more (cr-sqlite compares the key's
//! length truncated to a byte) are handled here: errors for the first three,
//! a key for the last.

/// The base-62 digits, in ascending order.
pub const DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The smallest integer part: no key may be equal to it (nothing sorts below).
pub const SMALLEST_INTEGER: &str = "A00000000000000000000000000";

/// The key of the first item of an empty list.
pub const INTEGER_ZERO: &str = "a0";

/// Why no key could be generated. The messages keep cr-sqlite's wording and
/// add the key involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FractError {
    #[error("key is empty")]
    Empty,
    #[error("key '{0}' is too small (nothing sorts before it)")]
    TooSmall(String),
    #[error("head is out of range in key '{0}' (a key starts with a letter A-Z or a-z)")]
    HeadOutOfRange(String),
    #[error("integer part of key '{0}' is too long for the key")]
    IntegerTooLong(String),
    #[error("fractional part should not end with 0 in key '{0}'")]
    TrailingZero(String),
    #[error("a must be before b, got '{a}' and '{b}'")]
    NotBefore { a: String, b: String },
    #[error("invalid digit in key '{0}' (digits are 0-9, A-Z, a-z)")]
    InvalidDigit(String),
    #[error("cannot increment anymore after '{0}'")]
    CannotIncrement(String),
    #[error("cannot decrement anymore before '{0}'")]
    CannotDecrement(String),
    #[error("key '{0}' splits a multi-byte character")]
    NotAscii(String),
}

type Result<T> = std::result::Result<T, FractError>;

/// A key strictly between `a` and `b` (`None` = open end).
pub fn key_between(a: Option<&str>, b: Option<&str>) -> Result<String> {
    if let Some(a) = a {
        validate_key(a)?;
    }
    if let Some(b) = b {
        validate_key(b)?;
    }
    let out = match (a, b) {
        (None, None) => INTEGER_ZERO.as_bytes().to_vec(),
        (Some(a), Some(b)) => {
            if a >= b {
                return Err(FractError::NotBefore {
                    a: a.into(),
                    b: b.into(),
                });
            }
            let (ia, fa) = split(a)?;
            let (ib, fb) = split(b)?;
            if ia == ib {
                concat(ia, &midpoint(a, fa, Some(fb))?)
            } else {
                match increment_integer(a, ia)? {
                    Some(i) if i.as_slice() < b.as_bytes() => i,
                    Some(_) => concat(ia, &midpoint(a, fa, None)?),
                    None => return Err(FractError::CannotIncrement(a.into())),
                }
            }
        }
        (None, Some(b)) => {
            let (ib, fb) = split(b)?;
            if ib == SMALLEST_INTEGER.as_bytes() {
                concat(ib, &midpoint(b, b"", Some(fb))?)
            } else if !fb.is_empty() {
                ib.to_vec()
            } else {
                decrement_integer(b, ib)?.ok_or_else(|| FractError::CannotDecrement(b.into()))?
            }
        }
        (Some(a), None) => {
            let (ia, fa) = split(a)?;
            match increment_integer(a, ia)? {
                Some(i) => i,
                None => concat(ia, &midpoint(a, fa, None)?),
            }
        }
    };
    let key = a.or(b).unwrap_or_default();
    String::from_utf8(out).map_err(|_| FractError::NotAscii(key.into()))
}

/// Check a key as cr-sqlite does before using it: not the smallest integer,
/// a head with a complete integer part, no fraction ending in `0`. The
/// digits themselves are only checked where they are used.
pub fn validate_key(key: &str) -> Result<()> {
    if key == SMALLEST_INTEGER {
        return Err(FractError::TooSmall(key.into()));
    }
    let (_, fraction) = split(key)?;
    if fraction.last() == Some(&b'0') {
        return Err(FractError::TrailingZero(key.into()));
    }
    Ok(())
}

/// Number of bytes of the integer part that starts with `head`.
fn integer_len(head: u8, key: &str) -> Result<usize> {
    match head {
        b'a'..=b'z' => Ok(usize::from(head - b'a') + 2),
        b'A'..=b'Z' => Ok(usize::from(b'Z' - head) + 2),
        _ => Err(FractError::HeadOutOfRange(key.into())),
    }
}

/// The integer part and the fraction of `key`.
fn split(key: &str) -> Result<(&[u8], &[u8])> {
    let bytes = key.as_bytes();
    let head = *bytes.first().ok_or(FractError::Empty)?;
    let n = integer_len(head, key)?;
    if n > bytes.len() {
        return Err(FractError::IntegerTooLong(key.into()));
    }
    if !key.is_char_boundary(n) {
        return Err(FractError::NotAscii(key.into()));
    }
    Ok(bytes.split_at(n))
}

fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    [a, b].concat()
}

fn digit_value(d: u8) -> Option<usize> {
    DIGITS.iter().position(|&x| x == d)
}

/// The shortest fraction strictly between fractions `a` and `b` (`None` =
/// 1.0). `key` names the input in errors.
fn midpoint(key: &str, a: &[u8], b: Option<&[u8]>) -> Result<Vec<u8>> {
    if let Some(b) = b {
        if a > b {
            return Err(FractError::NotBefore {
                a: String::from_utf8_lossy(a).into(),
                b: String::from_utf8_lossy(b).into(),
            });
        }
    }
    if a.last() == Some(&b'0') || b.and_then(<[u8]>::last) == Some(&b'0') {
        return Err(FractError::TrailingZero(key.into()));
    }
    if let Some(b) = b {
        // Common prefix, `a` padded with zeros. It ends inside `b`: `a < b`
        // and `b` does not end in '0'.
        let n = b
            .iter()
            .enumerate()
            .take_while(|&(i, &d)| a.get(i).copied().unwrap_or(b'0') == d)
            .count();
        if n == b.len() {
            return Err(FractError::NotBefore {
                a: String::from_utf8_lossy(a).into(),
                b: String::from_utf8_lossy(b).into(),
            });
        }
        if n > 0 {
            let rest = midpoint(key, a.get(n..).unwrap_or_default(), Some(&b[n..]))?;
            return Ok(concat(&b[..n], &rest));
        }
    }
    let digit_a = match a.first() {
        Some(&d) => digit_value(d).ok_or_else(|| FractError::InvalidDigit(key.into()))?,
        None => 0,
    };
    let digit_b = match b {
        Some(b) => digit_value(b[0]).ok_or_else(|| FractError::InvalidDigit(key.into()))?,
        None => DIGITS.len(),
    };
    if digit_b <= digit_a {
        return Err(FractError::NotBefore {
            a: String::from_utf8_lossy(a).into(),
            b: String::from_utf8_lossy(b.unwrap_or_default()).into(),
        });
    }
    if digit_b - digit_a > 1 {
        // Round half up, as cr-sqlite does.
        let mid = (digit_a + digit_b).div_ceil(2);
        return Ok(vec![DIGITS[mid]]);
    }
    match b {
        Some(b) if b.len() > 1 => Ok(vec![b[0]]),
        _ => {
            let rest = midpoint(key, a.get(1..).unwrap_or_default(), None)?;
            Ok(concat(&[DIGITS[digit_a]], &rest))
        }
    }
}

/// The next integer after `int` (an integer part of `key`); `None` after
/// the largest one.
fn increment_integer(key: &str, int: &[u8]) -> Result<Option<Vec<u8>>> {
    step_integer(key, int, 1)
}

/// The integer before `int`; `None` before the smallest one.
fn decrement_integer(key: &str, int: &[u8]) -> Result<Option<Vec<u8>>> {
    step_integer(key, int, -1)
}

/// Add `delta` (+1 or -1) to an integer part, carrying through the digits;
/// on overflow the head moves and the integer gets one digit more or less.
fn step_integer(key: &str, int: &[u8], delta: i8) -> Result<Option<Vec<u8>>> {
    let head = int[0];
    let mut digits = int[1..].to_vec();
    let last = DIGITS.len() - 1;
    let (wrap_from, wrap_to) = if delta > 0 { (last, 0) } else { (0, last) };
    let mut carry = true;
    for d in digits.iter_mut().rev() {
        let v = digit_value(*d).ok_or_else(|| FractError::InvalidDigit(key.into()))?;
        if v == wrap_from {
            *d = DIGITS[wrap_to];
        } else {
            *d = DIGITS[if delta > 0 { v + 1 } else { v - 1 }];
            carry = false;
            break;
        }
    }
    if !carry {
        return Ok(Some(concat(&[head], &digits)));
    }
    let out = match (delta > 0, head) {
        (true, b'Z') => INTEGER_ZERO.as_bytes().to_vec(),
        (true, b'z') | (false, b'A') => return Ok(None),
        (false, b'a') => vec![b'Z', DIGITS[last]],
        (true, _) => {
            // Positive integers grow a digit, negative ones lose one.
            let h = head + 1;
            if h > b'a' {
                digits.push(DIGITS[0]);
            } else {
                digits.pop();
            }
            concat(&[h], &digits)
        }
        (false, _) => {
            let h = head - 1;
            if h < b'Z' {
                digits.push(DIGITS[last]);
            } else {
                digits.pop();
            }
            concat(&[h], &digits)
        }
    };
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn between(a: Option<&str>, b: Option<&str>) -> Result<String> {
        key_between(a, b)
    }

    /// cr-sqlite 0.16's own vectors (core/rs/fractindex-core/src/fractindex.rs,
    /// `mod tests`), each checked against the algorithm by hand.
    #[test]
    fn cr_sqlite_reference_vectors_give_the_same_keys() {
        let z26 = "zzzzzzzzzzzzzzzzzzzzzzzzzz";
        let cases: &[(Option<&str>, Option<&str>, &str)] = &[
            (None, None, "a0"),
            (None, Some("a0"), "Zz"),
            (None, Some("Zz"), "Zy"),
            (Some("a0"), None, "a1"),
            (Some("a1"), None, "a2"),
            (Some("a0"), Some("a1"), "a0V"),
            (Some("a1"), Some("a2"), "a1V"),
            (Some("a0V"), Some("a1"), "a0l"),
            (Some("Zz"), Some("a0"), "ZzV"),
            (Some("Zz"), Some("a1"), "a0"),
            (None, Some("Y00"), "Xzzz"),
            (Some("bzz"), None, "c000"),
            (Some("a0"), Some("a0V"), "a0G"),
            (Some("a0"), Some("a0G"), "a08"),
            (Some("b125"), Some("b129"), "b127"),
            (Some("a0"), Some("a1V"), "a1"),
            (Some("Zz"), Some("a01"), "a0"),
            (None, Some("a0V"), "a0"),
            (None, Some("b999"), "b99"),
            (
                None,
                Some("A000000000000000000000000001"),
                "A000000000000000000000000000V",
            ),
        ];
        for &(a, b, want) in cases {
            assert_eq!(
                between(a, b).as_deref(),
                Ok(want),
                "key_between({a:?}, {b:?})"
            );
        }
        let zy = format!("{z26}y");
        let zz = format!("{z26}z");
        assert_eq!(between(Some(&zy), None), Ok(zz.clone()));
        assert_eq!(between(Some(&zz), None), Ok(format!("{zz}V")));
    }

    #[test]
    fn cr_sqlite_reference_errors_are_errors() {
        assert_eq!(
            between(None, Some(SMALLEST_INTEGER)),
            Err(FractError::TooSmall(SMALLEST_INTEGER.into()))
        );
        assert_eq!(
            between(Some("a00"), None),
            Err(FractError::TrailingZero("a00".into()))
        );
        assert_eq!(
            between(Some("a00"), Some("a1")),
            Err(FractError::TrailingZero("a00".into()))
        );
        assert_eq!(
            between(Some("0"), Some("1")),
            Err(FractError::HeadOutOfRange("0".into()))
        );
        assert!(matches!(
            between(Some("a1"), Some("a0")),
            Err(FractError::NotBefore { .. })
        ));
    }

    /// Inputs on which cr-sqlite panics (and, built with panic = abort,
    /// kills the host process): here they are errors.
    #[test]
    fn inputs_that_crash_cr_sqlite_are_errors() {
        assert_eq!(between(Some(""), None), Err(FractError::Empty));
        assert!(matches!(
            between(Some("a0"), Some("a0")),
            Err(FractError::NotBefore { .. })
        ));
        assert!(matches!(
            between(Some("a0V"), Some("a0V")),
            Err(FractError::NotBefore { .. })
        ));
        assert_eq!(
            between(Some("é"), None),
            Err(FractError::HeadOutOfRange("é".into()))
        );
        assert_eq!(
            between(Some("b1é"), None),
            Err(FractError::NotAscii("b1é".into()))
        );
        assert_eq!(
            between(Some("a!"), None),
            Err(FractError::InvalidDigit("a!".into()))
        );
        assert_eq!(
            between(Some("b1"), None),
            Err(FractError::IntegerTooLong("b1".into()))
        );
    }

    #[test]
    fn integers_roll_over_between_heads() {
        assert_eq!(between(Some("az"), None).as_deref(), Ok("b00"));
        assert_eq!(between(None, Some("b00")).as_deref(), Ok("az"));
        assert_eq!(between(None, Some("Z0")).as_deref(), Ok("Yzz"));
        assert_eq!(between(Some("Yzz"), None).as_deref(), Ok("Z0"));
        assert_eq!(between(Some("Zz"), None).as_deref(), Ok("a0"));
        let largest = format!("z{}", "z".repeat(26));
        assert_eq!(between(Some(&largest), None), Ok(format!("{largest}V")));
    }

    #[test]
    fn keys_of_256_bytes_and_more_are_accepted() {
        let long = format!("a0{}", "V".repeat(300));
        let next = between(Some(&long), None).unwrap();
        assert_eq!(next, "a1");
        let mid = between(Some(&long), Some("a1")).unwrap();
        assert!(long < mid && mid.as_str() < "a1", "{mid}");
    }

    /// The list a user builds by inserting at random places (and, through
    /// cr-sqlite's triggers, at the ends): every new key is valid and sorts
    /// strictly between its neighbours, so the list's order is the keys'.
    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn every_key_sorts_strictly_between_its_neighbours(
                places in proptest::collection::vec(any::<prop::sample::Index>(), 1..400)
            ) {
                let mut keys: Vec<String> = Vec::new();
                for place in places {
                    let at = place.index(keys.len() + 1);
                    let before = at.checked_sub(1).map(|i| keys[i].as_str());
                    let after = keys.get(at).map(String::as_str);
                    let key = key_between(before, after).unwrap();
                    prop_assert!(validate_key(&key).is_ok(), "{key}");
                    prop_assert!(before.is_none_or(|b| b < key.as_str()), "{before:?} < {key}");
                    prop_assert!(after.is_none_or(|a| key.as_str() < a), "{key} < {after:?}");
                    prop_assert!(key.bytes().all(|d| DIGITS.contains(&d)));
                    keys.insert(at, key);
                }
            }
        }
    }
}
