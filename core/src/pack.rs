//! cr-sqlite's packed-column format (spec §9): the bytes of `crsql_changes.pk`
//! and of `crsql_pack_columns`.
//!
//! ```text
//! packed := count:u8 value{count}
//! value  := tag:u8 payload        tag = (N << 3) | type
//! type   := 1 INTEGER | 2 REAL | 3 TEXT | 4 BLOB | 5 NULL
//! ```
//!
//! INTEGER: N = 0..=8 payload bytes, big-endian; non-negative values use the
//! fewest bytes, negative ones always 8. Decoding zero-extends.
//! REAL: tag 0x02, 8 bytes IEEE-754 big-endian. TEXT/BLOB: N = 0..=4 length
//! bytes (big-endian), then the bytes. NULL: tag 0x05.
//!
//! The encoder is canonical. The decoder never panics: every malformed input
//! is a [`PackError`] that says what is wrong and where.

use crate::value::{Value, ValueRef};

/// Most values one packed blob can hold (the count is one byte).
pub const MAX_PACKED_VALUES: usize = 255;

/// Why a packed blob could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackError {
    #[error("packed value is empty (expected at least the count byte)")]
    Empty,
    #[error("packed value truncated at byte {offset}: need {need} more bytes, have {have}")]
    Truncated {
        offset: usize,
        need: usize,
        have: usize,
    },
    #[error("packed value has an invalid type tag 0x{tag:02x} at byte {offset}")]
    BadType { tag: u8, offset: usize },
    #[error("packed value has an invalid width {width} in tag 0x{tag:02x} at byte {offset}")]
    BadWidth { tag: u8, width: u8, offset: usize },
    #[error("packed text at byte {offset} is not valid UTF-8")]
    BadUtf8 { offset: usize },
    #[error("cannot pack {count} values: at most 255 fit in one packed blob")]
    TooManyValues { count: usize },
    #[error("cannot pack a text or blob of {len} bytes: at most 4294967295 fit")]
    TooLong { len: usize },
}

const T_INTEGER: u8 = 1;
const T_REAL: u8 = 2;
const T_TEXT: u8 = 3;
const T_BLOB: u8 = 4;
const T_NULL: u8 = 5;

/// Smallest number of bytes that holds `v` as an unsigned big-endian number.
fn width_of(v: u64) -> u8 {
    (8 - (v.leading_zeros() / 8)) as u8
}

fn push_be(out: &mut Vec<u8>, v: u64, width: u8) {
    let bytes = v.to_be_bytes();
    out.extend_from_slice(&bytes[8 - width as usize..]);
}

fn push_bytes(out: &mut Vec<u8>, ty: u8, bytes: &[u8]) -> Result<(), PackError> {
    let len = u32::try_from(bytes.len()).map_err(|_| PackError::TooLong { len: bytes.len() })?;
    let width = width_of(u64::from(len));
    out.push((width << 3) | ty);
    push_be(out, u64::from(len), width);
    out.extend_from_slice(bytes);
    Ok(())
}

/// Append one value's encoding to `out`.
pub fn pack_value(out: &mut Vec<u8>, value: ValueRef<'_>) -> Result<(), PackError> {
    match value {
        ValueRef::Integer(i) => {
            let width = if i < 0 { 8 } else { width_of(i as u64) };
            out.push((width << 3) | T_INTEGER);
            push_be(out, i as u64, width);
        }
        ValueRef::Real(r) => {
            out.push(T_REAL);
            out.extend_from_slice(&r.to_bits().to_be_bytes());
        }
        ValueRef::Text(t) => push_bytes(out, T_TEXT, t)?,
        ValueRef::Blob(b) => push_bytes(out, T_BLOB, b)?,
        ValueRef::Null => out.push(T_NULL),
    }
    Ok(())
}

/// Pack values in order (cr-sqlite's `crsql_pack_columns`).
pub fn pack_columns<'a, I>(values: I) -> Result<Vec<u8>, PackError>
where
    I: IntoIterator<Item = ValueRef<'a>>,
    I::IntoIter: ExactSizeIterator,
{
    let iter = values.into_iter();
    let count = iter.len();
    if count > MAX_PACKED_VALUES {
        return Err(PackError::TooManyValues { count });
    }
    let mut out = Vec::with_capacity(1 + count * 9);
    out.push(count as u8);
    for v in iter {
        pack_value(&mut out, v)?;
    }
    Ok(out)
}

/// A bounds-checked reader over untrusted bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PackError> {
        let have = self.buf.len() - self.pos;
        if n > have {
            return Err(PackError::Truncated {
                offset: self.pos,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn be(&mut self, width: usize) -> Result<u64, PackError> {
        Ok(self
            .take(width)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
}

/// Decode a packed blob into borrowed values. Bytes after the declared number
/// of values are ignored, as in cr-sqlite.
pub fn unpack_columns_ref(buf: &[u8]) -> Result<Vec<ValueRef<'_>>, PackError> {
    let mut r = Reader { buf, pos: 0 };
    let count = *r
        .take(1)
        .map_err(|_| PackError::Empty)?
        .first()
        .unwrap_or(&0) as usize;
    // Each value takes at least one byte: never reserve more than the input holds.
    let mut out = Vec::with_capacity(count.min(buf.len()));
    for _ in 0..count {
        let offset = r.pos;
        let tag = r.take(1)?[0];
        let ty = tag & 0x07;
        let width = tag >> 3;
        let bad_width = || PackError::BadWidth { tag, width, offset };
        let value = match ty {
            T_INTEGER => {
                if width > 8 {
                    return Err(bad_width());
                }
                ValueRef::Integer(r.be(width as usize)? as i64)
            }
            T_REAL => {
                if width != 0 {
                    return Err(bad_width());
                }
                ValueRef::Real(f64::from_bits(r.be(8)?))
            }
            T_TEXT | T_BLOB => {
                if width > 4 {
                    return Err(bad_width());
                }
                let len = r.be(width as usize)? as usize;
                let bytes = r.take(len)?;
                if ty == T_TEXT {
                    if std::str::from_utf8(bytes).is_err() {
                        return Err(PackError::BadUtf8 { offset });
                    }
                    ValueRef::Text(bytes)
                } else {
                    ValueRef::Blob(bytes)
                }
            }
            T_NULL => {
                if width != 0 {
                    return Err(bad_width());
                }
                ValueRef::Null
            }
            _ => return Err(PackError::BadType { tag, offset }),
        };
        out.push(value);
    }
    Ok(out)
}

/// Decode a packed blob into owned values.
pub fn unpack_columns(buf: &[u8]) -> Result<Vec<Value>, PackError> {
    Ok(unpack_columns_ref(buf)?
        .into_iter()
        .map(|v| v.to_owned_value())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02X}")).collect()
    }

    fn pack1(v: ValueRef<'_>) -> String {
        hex(&pack_columns([v]).unwrap())
    }

    #[test]
    fn worked_examples_from_the_spec_pack_exactly() {
        assert_eq!(pack1(ValueRef::Integer(1)), "010901");
        assert_eq!(pack1(ValueRef::Integer(0)), "0101");
        assert_eq!(pack1(ValueRef::Integer(200)), "0109C8");
        assert_eq!(pack1(ValueRef::Integer(256)), "01110100");
        assert_eq!(pack1(ValueRef::Integer(65536)), "0119010000");
        assert_eq!(pack1(ValueRef::Integer(2147483648)), "012180000000");
        assert_eq!(pack1(ValueRef::Integer(-1)), "0141FFFFFFFFFFFFFFFF");
        assert_eq!(
            pack1(ValueRef::Integer(-2147483648)),
            "0141FFFFFFFF80000000"
        );
        assert_eq!(pack1(ValueRef::Text(b"one")), "010B036F6E65");
        assert_eq!(pack1(ValueRef::Text(b"")), "0103");
        assert_eq!(
            pack1(ValueRef::Text("héllo".as_bytes())),
            "010B0668C3A96C6C6F"
        );
        assert_eq!(pack1(ValueRef::Blob(&[1, 2])), "010C020102");
        assert_eq!(pack1(ValueRef::Blob(&[])), "0104");
        assert_eq!(pack1(ValueRef::Null), "0105");
        assert_eq!(pack1(ValueRef::Real(1.5)), "01023FF8000000000000");
        assert_eq!(pack1(ValueRef::Real(-0.0)), "01028000000000000000");
        let a300 = vec![b'a'; 300];
        assert!(pack1(ValueRef::Text(&a300)).starts_with("0113012C6161"));
        assert_eq!(
            hex(&pack_columns([ValueRef::Integer(1), ValueRef::Text(b"a")]).unwrap()),
            "0209010B0161"
        );
        assert_eq!(
            hex(&pack_columns(std::iter::empty::<ValueRef>().collect::<Vec<_>>()).unwrap()),
            "00"
        );
    }

    #[test]
    fn integers_decode_zero_extended() {
        assert_eq!(
            unpack_columns(&[1, 0x09, 0x80]).unwrap(),
            vec![Value::Integer(128)]
        );
        assert_eq!(
            unpack_columns(&[1, 0x21, 0x80, 0, 0, 0]).unwrap(),
            vec![Value::Integer(2147483648)]
        );
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        assert_eq!(unpack_columns(&[]), Err(PackError::Empty));
        assert!(matches!(
            unpack_columns(&[1]),
            Err(PackError::Truncated { .. })
        ));
        assert!(matches!(
            unpack_columns(&[1, 0x49]),
            Err(PackError::BadWidth { .. })
        ));
        assert!(matches!(
            unpack_columns(&[1, 0x00]),
            Err(PackError::BadType { .. })
        ));
        assert!(matches!(
            unpack_columns(&[1, 0x06]),
            Err(PackError::BadType { .. })
        ));
        assert!(matches!(
            unpack_columns(&[1, 0x0B, 2, 0xff, 0xfe]),
            Err(PackError::BadUtf8 { .. })
        ));
        assert!(matches!(
            unpack_columns(&[1, 0x2B, 1, 1, 1, 1, 1]),
            Err(PackError::BadWidth { .. })
        ));
        assert!(matches!(
            unpack_columns(&[1, 0x23, 0xff, 0xff, 0xff, 0xff]),
            Err(PackError::Truncated { .. })
        ));
    }

    #[test]
    fn trailing_bytes_after_the_declared_values_are_ignored() {
        assert_eq!(
            unpack_columns(&[1, 0x05, 0xAA, 0xBB]).unwrap(),
            vec![Value::Null]
        );
    }

    #[test]
    fn more_than_255_values_is_an_error() {
        let vals = vec![ValueRef::Null; 256];
        assert_eq!(
            pack_columns(vals),
            Err(PackError::TooManyValues { count: 256 })
        );
    }
}
