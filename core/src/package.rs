//! The stream package: what an outbound stream produces and an inbound stream
//! applies. The format is specified in `docs/package-format.md`; this module
//! is its only implementation.
//!
//! Binary: `"CRSP"`, format version (1 byte), the postcard encoding of
//! [`Package`], then a CRC-64/XZ of every preceding byte (8 bytes, little
//! endian). JSON: `{"body":<Package as JSON>,"crc":"<16 hex digits>"}` where
//! the CRC covers the exact bytes of `<Package as JSON>`.
//!
//! Decoding never panics, never pre-allocates more than a small constant from
//! a length read off the input, and validates every cross-reference, so the
//! apply side can trust a decoded package's shape.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ids::Position;
use crate::value::{Value, ValueRef};

mod strict_json;

/// First bytes of a binary package.
pub const MAGIC: [u8; 4] = *b"CRSP";
/// Format version of ordinary packages (readable by every build).
pub const FORMAT_VERSION: u8 = 1;
/// Format version of packages that carry a [`PackageKind`] byte after the
/// version: `"CRSP"`, 2, kind, body, CRC. Ordinary packages are still written
/// as version 1, so older builds keep reading them.
pub const FORMAT_VERSION_KIND: u8 = 2;
const JSON_PREFIX: &str = "{\"body\":";
const JSON_SUFFIX_LEN: usize = ",\"crc\":\"0123456789abcdef\"}".len();
/// Most elements any decoded list pre-allocates room for.
const MAX_PREALLOC: usize = 1024;

/// Wire encodings of a package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Json,
}

/// A set of changes from one stream, covering positions `(since, cursor]`.
///
/// A decoded binary package borrows its byte strings, text and blobs from
/// the bytes it was decoded from (`'a`); [`Package::into_owned`] copies
/// them out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// JSON: a key this version does not know is an error, not silently dropped.
#[serde(deny_unknown_fields)]
pub struct Package<'a> {
    /// Site id of the database that produced the package.
    #[serde(borrow)]
    pub sender: Bytes<'a>,
    /// Random id of the producing stream (two streams never share one).
    #[serde(borrow)]
    pub stream_id: Bytes<'a>,
    /// Name of the producing outbound table.
    pub stream: String,
    /// The package starts after this position (exclusive).
    pub since: Position,
    /// Position of the last change covered (inclusive).
    pub cursor: Position,
    /// Set when one transaction (db_version) is split over several packages.
    pub part: Option<Part>,
    /// Table dictionary.
    #[serde(deserialize_with = "bounded_vec")]
    pub tables: Vec<TableEntry>,
    /// Site-id dictionary (origin sites of the changes).
    #[serde(borrow, deserialize_with = "bounded_vec")]
    pub sites: Vec<Bytes<'a>>,
    #[serde(borrow, deserialize_with = "bounded_vec")]
    pub changes: Vec<PkgChange<'a>>,
    /// What the package is. Not part of the body: binary packages carry it
    /// in the header (format version 2), JSON packages as a `"kind"` key of
    /// the body, both only when it is not [`PackageKind::Changes`].
    #[serde(skip)]
    pub kind: PackageKind,
}

/// A [`Package`] without its changes ([`Package::header`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Header<'a> {
    pub kind: PackageKind,
    pub sender: Bytes<'a>,
    pub stream_id: Bytes<'a>,
    pub stream: String,
    pub since: Position,
    pub cursor: Position,
    pub part: Option<Part>,
    pub tables: Vec<TableEntry>,
    pub sites: Vec<Bytes<'a>>,
    /// How many changes the package holds.
    pub changes: usize,
}

impl<'a> From<Package<'a>> for Header<'a> {
    /// The package's header: its fields but the changes, and their count.
    fn from(p: Package<'a>) -> Self {
        Header {
            kind: p.kind,
            sender: p.sender,
            stream_id: p.stream_id,
            stream: p.stream,
            since: p.since,
            cursor: p.cursor,
            part: p.part,
            tables: p.tables,
            sites: p.sites,
            changes: p.changes.len(),
        }
    }
}

/// What a package is. The receiver applies both kinds the same way (a
/// merge); the kind tells people and tools why a package is there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PackageKind {
    /// Changes in position order.
    #[default]
    Changes,
    /// Changes of a stream catching up from below its database's
    /// compaction horizon: they include compacted deletes.
    Snapshot,
}

impl PackageKind {
    /// The kind's name, as `crsql_package_info` and JSON packages show it.
    pub fn name(self) -> &'static str {
        match self {
            PackageKind::Changes => "changes",
            PackageKind::Snapshot => "snapshot",
        }
    }

    fn byte(self) -> u8 {
        match self {
            PackageKind::Changes => 0,
            PackageKind::Snapshot => 1,
        }
    }

    fn from_byte(b: u8) -> Result<PackageKind, PackageError> {
        match b {
            0 => Ok(PackageKind::Changes),
            1 => Ok(PackageKind::Snapshot),
            _ => Err(PackageError::Malformed(format!("unknown package kind {b}"))),
        }
    }

    fn from_name(name: &str) -> Result<PackageKind, PackageError> {
        match name {
            "changes" => Ok(PackageKind::Changes),
            "snapshot" => Ok(PackageKind::Snapshot),
            _ => Err(PackageError::Malformed(format!(
                "unknown package kind {name:?} (expected \"changes\" or \"snapshot\")"
            ))),
        }
    }
}

/// Marks one part of a split transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
// JSON: a key this version does not know is an error, not silently dropped.
#[serde(deny_unknown_fields)]
pub struct Part {
    /// db_version being split.
    pub db_version: i64,
    /// True on the part that completes the transaction.
    pub last: bool,
}

/// A table of the package, with the schema hash of the sender and the
/// column-name dictionary used by `PkgChange::cid`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// JSON: a key this version does not know is an error, not silently dropped.
#[serde(deny_unknown_fields)]
pub struct TableEntry {
    pub name: String,
    pub schema_hash: u64,
    #[serde(deserialize_with = "bounded_vec")]
    pub columns: Vec<String>,
}

/// One change: the nine fields of a `crsql_changes` row, with the table,
/// column and site dictionary-encoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// JSON: a key this version does not know is an error, not silently dropped.
#[serde(deny_unknown_fields)]
pub struct PkgChange<'a> {
    /// Index into `Package::tables`.
    pub table: u32,
    /// Packed primary key (cr-sqlite's format).
    #[serde(borrow)]
    pub pk: Bytes<'a>,
    /// 0 for the sentinel `'-1'`, else 1 + index into the table's `columns`.
    pub cid: u32,
    #[serde(borrow)]
    pub val: WireValue<'a>,
    pub col_version: i64,
    pub db_version: i64,
    /// Index into `Package::sites`.
    pub site: u32,
    pub cl: i64,
    pub seq: i64,
}

/// Bytes: a postcard byte string, or lowercase hex in JSON. Decoded from
/// postcard, they borrow from the package's bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes<'a>(pub Cow<'a, [u8]>);

impl fmt::Debug for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({})", to_hex(&self.0))
    }
}

impl From<Vec<u8>> for Bytes<'static> {
    fn from(v: Vec<u8>) -> Self {
        Bytes(Cow::Owned(v))
    }
}

impl<'a> From<&'a [u8]> for Bytes<'a> {
    fn from(v: &'a [u8]) -> Self {
        Bytes(Cow::Borrowed(v))
    }
}

impl Bytes<'_> {
    /// A copy that borrows nothing.
    pub fn into_owned(self) -> Bytes<'static> {
        Bytes(Cow::Owned(self.0.into_owned()))
    }
}

/// A value on the wire. In JSON a REAL is a string (so 2.0 stays a REAL and
/// infinities survive), integers are exact JSON integers, blobs are hex.
/// Decoded from postcard, text and blobs borrow from the package's bytes
/// (`Borrowed`, text checked UTF-8); else the value is `Owned`. Both
/// compare by [`WireValue::as_ref`].
#[derive(Clone, Debug)]
pub enum WireValue<'a> {
    Owned(Value),
    Borrowed(ValueRef<'a>),
}

impl From<Value> for WireValue<'static> {
    fn from(v: Value) -> Self {
        WireValue::Owned(v)
    }
}

impl PartialEq for WireValue<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_ref() == other.as_ref()
    }
}

/// Why a package could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error("package truncated: need at least {need} bytes, have {have}")]
    TooShort { need: usize, have: usize },
    #[error("not a crsql_stream package (bad magic bytes)")]
    BadMagic,
    #[error("package format version {0} is not supported (this build reads versions 1 and 2)")]
    UnsupportedVersion(u8),
    #[error(
        "corrupted package: checksum mismatch (stored {stored:016x}, computed {computed:016x})"
    )]
    Checksum { stored: u64, computed: u64 },
    #[error("malformed package: {0}")]
    Malformed(String),
}

pub fn to_hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Parse lowercase hex as [`to_hex`] writes it. Uppercase digits and signs
/// (which `from_str_radix` would take) are refused, so every byte string has
/// exactly one text form and a flipped case bit is not a silent no-op.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if s.len() % 2 != 0 {
        return None;
    }
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some((digit(p[0])? << 4) | digit(p[1])?))
        .collect()
}

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&to_hex(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Bytes<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes or a hex string")
            }
            fn visit_borrowed_bytes<E: de::Error>(self, v: &'de [u8]) -> Result<Bytes<'a>, E> {
                Ok(Bytes(Cow::Borrowed(v)))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bytes<'a>, E> {
                Ok(Bytes(Cow::Owned(v.to_vec())))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Bytes<'a>, E> {
                from_hex(v)
                    .map(Bytes::from)
                    .ok_or_else(|| E::custom("invalid hex string"))
            }
        }
        let v = V(std::marker::PhantomData);
        if d.is_human_readable() {
            d.deserialize_str(v)
        } else {
            d.deserialize_bytes(v)
        }
    }
}

/// Wire form of a value (an externally tagged enum).
#[derive(Serialize, Deserialize)]
enum WireRepr<'a> {
    Null,
    Integer(i64),
    Real(RealRepr),
    Text(#[serde(borrow)] Cow<'a, str>),
    Blob(#[serde(borrow)] Bytes<'a>),
}

/// f64 as itself in postcard, as its shortest round-trip text in JSON.
struct RealRepr(f64);

impl Serialize for RealRepr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format!("{:?}", self.0))
        } else {
            s.serialize_f64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for RealRepr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse::<f64>()
                .map(RealRepr)
                .map_err(|_| de::Error::custom("invalid REAL text"))
        } else {
            f64::deserialize(d).map(RealRepr)
        }
    }
}

impl Serialize for WireValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let repr = match self.as_ref() {
            ValueRef::Null => WireRepr::Null,
            ValueRef::Integer(i) => WireRepr::Integer(i),
            ValueRef::Real(r) => WireRepr::Real(RealRepr(r)),
            ValueRef::Text(t) => WireRepr::Text(Cow::Borrowed(match self {
                WireValue::Owned(Value::Text(t)) => t.as_str(),
                _ => std::str::from_utf8(t).map_err(|_| ser::Error::custom("text is not UTF-8"))?,
            })),
            ValueRef::Blob(b) => WireRepr::Blob(Bytes(Cow::Borrowed(b))),
        };
        repr.serialize(s)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for WireValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match WireRepr::deserialize(d)? {
            WireRepr::Null => WireValue::Owned(Value::Null),
            WireRepr::Integer(i) => WireValue::Owned(Value::Integer(i)),
            WireRepr::Real(r) => WireValue::Owned(Value::Real(r.0)),
            WireRepr::Text(Cow::Borrowed(t)) => WireValue::Borrowed(ValueRef::Text(t.as_bytes())),
            WireRepr::Text(Cow::Owned(t)) => WireValue::Owned(Value::Text(t)),
            WireRepr::Blob(Bytes(Cow::Borrowed(b))) => WireValue::Borrowed(ValueRef::Blob(b)),
            WireRepr::Blob(Bytes(Cow::Owned(b))) => WireValue::Owned(Value::Blob(b)),
        })
    }
}

impl WireValue<'_> {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            WireValue::Owned(v) => v.as_ref(),
            WireValue::Borrowed(v) => *v,
        }
    }

    /// A copy that borrows nothing.
    pub fn into_owned(self) -> WireValue<'static> {
        match self {
            WireValue::Owned(v) => WireValue::Owned(v),
            WireValue::Borrowed(v) => WireValue::Owned(v.to_owned_value()),
        }
    }
}

/// Deserialize a Vec without trusting the declared length for allocation.
fn bounded_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOC));
            while let Some(x) = seq.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V(std::marker::PhantomData))
}

/// CRC-64/XZ (ECMA-182 polynomial, reflected), table-driven: eight bytes
/// per step through eight tables ("slicing-by-8"), the same value as one
/// byte per step through the first table (`crc64_bytewise`, in the tests), ~5x faster
/// (every package is checked when it arrives and again when it merges).
pub fn crc64(data: &[u8]) -> u64 {
    let t = &CRC64_TABLES;
    let mut crc = !0u64;
    let mut words = data.chunks_exact(8);
    for w in words.by_ref() {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = crc ^ u64::from_le_bytes(b);
        crc = t[7][(x & 0xff) as usize]
            ^ t[6][((x >> 8) & 0xff) as usize]
            ^ t[5][((x >> 16) & 0xff) as usize]
            ^ t[4][((x >> 24) & 0xff) as usize]
            ^ t[3][((x >> 32) & 0xff) as usize]
            ^ t[2][((x >> 40) & 0xff) as usize]
            ^ t[1][((x >> 48) & 0xff) as usize]
            ^ t[0][(x >> 56) as usize];
    }
    for b in words.remainder() {
        crc = t[0][((crc ^ u64::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// [`crc64`] one byte per step: the reference the fast one is tested
/// against.
#[cfg(test)]
fn crc64_bytewise(data: &[u8]) -> u64 {
    let mut crc = !0u64;
    for b in data {
        crc = CRC64_TABLES[0][((crc ^ u64::from(*b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// `CRC64_TABLES[0]` is the byte-at-a-time table; `[k][i]` is the CRC of
/// byte `i` followed by `k` zero bytes.
static CRC64_TABLES: [[u64; 256]; 8] = crc64_tables();

const fn crc64_tables() -> [[u64; 256]; 8] {
    let mut t = [[0u64; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u64;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xC96C_5795_D787_0F42
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = t[0][(prev & 0xff) as usize] ^ (prev >> 8);
            i += 1;
        }
        k += 1;
    }
    t
}

/// A stable 64-bit hash of a table's shape: name, primary-key columns in
/// order, then the other columns in order (FNV-1a over a canonical string).
pub fn schema_hash(table: &str, pks: &[&str], cols: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(table.as_bytes());
    feed(&[0, 1]);
    for p in pks {
        feed(p.as_bytes());
        feed(&[0]);
    }
    feed(&[0, 2]);
    for c in cols {
        feed(c.as_bytes());
        feed(&[0]);
    }
    h
}

impl<'a> Package<'a> {
    /// A copy that borrows nothing.
    pub fn into_owned(self) -> Package<'static> {
        Package {
            sender: self.sender.into_owned(),
            stream_id: self.stream_id.into_owned(),
            stream: self.stream,
            since: self.since,
            cursor: self.cursor,
            part: self.part,
            tables: self.tables,
            sites: self.sites.into_iter().map(Bytes::into_owned).collect(),
            changes: self
                .changes
                .into_iter()
                .map(|c| PkgChange {
                    pk: c.pk.into_owned(),
                    val: c.val.into_owned(),
                    ..c
                })
                .collect(),
            kind: self.kind,
        }
    }

    /// Encode in the given encoding.
    pub fn encode(&self, enc: Encoding) -> Result<Vec<u8>, PackageError> {
        match enc {
            Encoding::Binary => {
                let mut out = Vec::with_capacity(64 + self.changes.len() * 32);
                out.extend_from_slice(&MAGIC);
                if self.kind == PackageKind::Changes {
                    out.push(FORMAT_VERSION);
                } else {
                    out.push(FORMAT_VERSION_KIND);
                    out.push(self.kind.byte());
                }
                let out = postcard::to_extend(self, out)
                    .map_err(|e| PackageError::Malformed(format!("cannot encode: {e}")))?;
                let mut out = out;
                let crc = crc64(&out);
                out.extend_from_slice(&crc.to_le_bytes());
                Ok(out)
            }
            Encoding::Json => {
                let cannot =
                    |e: serde_json::Error| PackageError::Malformed(format!("cannot encode: {e}"));
                let body = if self.kind == PackageKind::Changes {
                    serde_json::to_string(self).map_err(cannot)?
                } else {
                    let mut v = serde_json::to_value(self).map_err(cannot)?;
                    if let serde_json::Value::Object(m) = &mut v {
                        m.insert("kind".into(), self.kind.name().into());
                    }
                    serde_json::to_string(&v).map_err(cannot)?
                };
                let crc = crc64(body.as_bytes());
                Ok(format!("{JSON_PREFIX}{body},\"crc\":\"{crc:016x}\"}}").into_bytes())
            }
        }
    }

    /// Which encoding `bytes` look like (by their first byte).
    pub fn sniff(bytes: &[u8]) -> Encoding {
        if bytes.first() == Some(&b'{') {
            Encoding::Json
        } else {
            Encoding::Binary
        }
    }

    /// Decode and validate a package in either encoding.
    pub fn decode(bytes: &'a [u8]) -> Result<Package<'a>, PackageError> {
        let pkg = match Package::sniff(bytes) {
            Encoding::Binary => Package::decode_binary(bytes)?,
            Encoding::Json => Package::decode_json(bytes)?,
        };
        pkg.validate()?;
        Ok(pkg)
    }

    /// How many changes the package holds, without decoding them (see
    /// [`Package::header`]).
    pub fn change_count(bytes: &[u8]) -> Result<usize, PackageError> {
        Ok(Package::header(bytes)?.changes)
    }

    /// The fields before the changes, and how many changes follow, without
    /// decoding the changes: a binary package is read up to the length of
    /// its change list (the fields before it are small), a JSON one is
    /// decoded whole. The checksum is checked; nothing is validated.
    pub fn header(bytes: &'a [u8]) -> Result<Header<'a>, PackageError> {
        /// The body's fields before `changes`, in order (postcard writes a
        /// tuple and a struct the same way).
        type Head<'a> = (
            Bytes<'a>,
            Bytes<'a>,
            String,
            Position,
            Position,
            Option<Part>,
            Vec<TableEntry>,
            Vec<Bytes<'a>>,
        );
        if Package::sniff(bytes) == Encoding::Json {
            return Ok(Package::decode_json(bytes)?.into());
        }
        let malformed = |e: postcard::Error| PackageError::Malformed(e.to_string());
        let (kind, body) = Package::binary_body(bytes)?;
        let (head, rest) = postcard::take_from_bytes::<Head>(body).map_err(malformed)?;
        let (sender, stream_id, stream, since, cursor, part, tables, sites) = head;
        // A sequence's length is a varint, as a u64 is.
        let (n, _) = postcard::take_from_bytes::<u64>(rest).map_err(malformed)?;
        let changes = usize::try_from(n)
            .map_err(|_| PackageError::Malformed("change count out of range".into()))?;
        Ok(Header {
            kind,
            sender,
            stream_id,
            stream,
            since,
            cursor,
            part,
            tables,
            sites,
            changes,
        })
    }

    /// The kind and postcard body of a binary package, after checking its
    /// length, magic, checksum and format version.
    fn binary_body(bytes: &[u8]) -> Result<(PackageKind, &[u8]), PackageError> {
        let min = MAGIC.len() + 1 + 8;
        if bytes.len() < min {
            return Err(PackageError::TooShort {
                need: min,
                have: bytes.len(),
            });
        }
        if bytes[..4] != MAGIC {
            return Err(PackageError::BadMagic);
        }
        let (content, crc_bytes) = bytes.split_at(bytes.len() - 8);
        let mut stored = [0u8; 8];
        stored.copy_from_slice(crc_bytes);
        let stored = u64::from_le_bytes(stored);
        let computed = crc64(content);
        if stored != computed {
            return Err(PackageError::Checksum { stored, computed });
        }
        let (kind, body) = match content[4] {
            FORMAT_VERSION => (PackageKind::Changes, &content[5..]),
            FORMAT_VERSION_KIND => match content.get(5) {
                Some(b) => (PackageKind::from_byte(*b)?, &content[6..]),
                None => return Err(PackageError::Malformed("package kind missing".into())),
            },
            v => return Err(PackageError::UnsupportedVersion(v)),
        };
        Ok((kind, body))
    }

    fn decode_binary(bytes: &'a [u8]) -> Result<Package<'a>, PackageError> {
        let (kind, body) = Package::binary_body(bytes)?;
        let (mut pkg, rest) = postcard::take_from_bytes::<Package>(body)
            .map_err(|e| PackageError::Malformed(e.to_string()))?;
        pkg.kind = kind;
        if !rest.is_empty() {
            return Err(PackageError::Malformed(format!(
                "{} unexpected bytes after the body",
                rest.len()
            )));
        }
        Ok(pkg)
    }

    fn decode_json(bytes: &'a [u8]) -> Result<Package<'a>, PackageError> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| PackageError::Malformed("JSON package is not valid UTF-8".into()))?;
        let min = JSON_PREFIX.len() + JSON_SUFFIX_LEN;
        if text.len() < min {
            return Err(PackageError::TooShort {
                need: min,
                have: text.len(),
            });
        }
        if !text.starts_with(JSON_PREFIX) {
            return Err(PackageError::BadMagic);
        }
        let split = text.len() - JSON_SUFFIX_LEN;
        let corrupted = || {
            PackageError::Malformed(
                "JSON package is truncated or has extra bytes: it must end with ,\"crc\":\"<16 hex digits>\"}".into(),
            )
        };
        if !text.is_char_boundary(split) {
            return Err(corrupted());
        }
        let body = &text[JSON_PREFIX.len()..split];
        let suffix = &text[split..];
        let hex = suffix
            .strip_prefix(",\"crc\":\"")
            .and_then(|s| s.strip_suffix("\"}"))
            .ok_or_else(corrupted)?;
        let stored = from_hex(hex)
            .map(|b| b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x)))
            .ok_or_else(|| PackageError::Malformed("invalid checksum digits".into()))?;
        let computed = crc64(body.as_bytes());
        if stored != computed {
            return Err(PackageError::Checksum { stored, computed });
        }
        let malformed = |e: serde_json::Error| PackageError::Malformed(e.to_string());
        if !body.contains("\"kind\"") {
            return serde_json::from_str(body).map_err(malformed);
        }
        // Only packages of another kind carry the key: take it out, then
        // read the rest as any other body (unknown keys are still refused).
        // Read strictly: serde_json's `Value` keeps the last of duplicate
        // keys, where the derived reader above refuses them.
        let mut v = strict_json::parse(body).map_err(malformed)?;
        let kind = match v.as_object_mut().and_then(|m| m.remove("kind")) {
            Some(serde_json::Value::String(k)) => PackageKind::from_name(&k)?,
            Some(other) => {
                return Err(PackageError::Malformed(format!(
                    "package kind must be a string, got {other}"
                )))
            }
            None => PackageKind::Changes,
        };
        let mut pkg = Package::deserialize(v).map_err(malformed)?;
        pkg.kind = kind;
        Ok(pkg)
    }

    /// Check every cross-reference and ordering rule of the format.
    pub fn validate(&self) -> Result<(), PackageError> {
        let bad = |m: String| Err(PackageError::Malformed(m));
        if self.sender.0.len() != 16 {
            return bad(format!(
                "sender site id has {} bytes, expected 16",
                self.sender.0.len()
            ));
        }
        if self.stream_id.0.len() != 16 {
            return bad(format!(
                "stream id has {} bytes, expected 16",
                self.stream_id.0.len()
            ));
        }
        let nonneg = |p: Position| p.db_version >= 0 && p.seq >= 0;
        if !nonneg(self.since) || !nonneg(self.cursor) || self.cursor < self.since {
            return bad(format!(
                "positions out of order: since {} cursor {}",
                self.since, self.cursor
            ));
        }
        if let Some(part) = self.part {
            if part.db_version != self.cursor.db_version {
                return bad(format!(
                    "part of db_version {} but cursor is {}",
                    part.db_version, self.cursor
                ));
            }
        }
        for s in &self.sites {
            if s.0.is_empty() || s.0.len() > 16 {
                return bad(format!("site id of {} bytes", s.0.len()));
            }
        }
        let mut prev = self.since;
        for (i, c) in self.changes.iter().enumerate() {
            let Some(t) = self.tables.get(c.table as usize) else {
                return bad(format!(
                    "change {i} names table #{} of {}",
                    c.table,
                    self.tables.len()
                ));
            };
            if c.cid as usize > t.columns.len() {
                return bad(format!(
                    "change {i} names column #{} of table {}",
                    c.cid, t.name
                ));
            }
            if c.site as usize >= self.sites.len() {
                return bad(format!(
                    "change {i} names site #{} of {}",
                    c.site,
                    self.sites.len()
                ));
            }
            let pos = Position::new(c.db_version, c.seq);
            if pos <= prev || pos > self.cursor {
                return bad(format!(
                    "change {i} at {pos} is outside ({}, {}] or out of order",
                    self.since, self.cursor
                ));
            }
            prev = pos;
        }
        Ok(())
    }

    /// Name of the column of change `c` (`"-1"` for the sentinel).
    pub fn cid_of(&self, c: &PkgChange) -> &str {
        match c.cid {
            0 => "-1",
            n => self.tables[c.table as usize].columns[n as usize - 1].as_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Package<'static> {
        Package {
            sender: Bytes::from(vec![0xa; 16]),
            stream_id: Bytes::from(vec![0x5; 16]),
            stream: "to_b".into(),
            since: Position::new(3, 1),
            cursor: Position::new(5, 2),
            part: None,
            tables: vec![TableEntry {
                name: "todos".into(),
                schema_hash: schema_hash("todos", &["id"], &["title", "score"]),
                columns: vec!["title".into(), "score".into()],
            }],
            sites: vec![Bytes::from(vec![0xb; 16])],
            changes: vec![
                PkgChange {
                    table: 0,
                    pk: Bytes::from(vec![1, 9, 1]),
                    cid: 1,
                    val: WireValue::Owned(Value::Text("héllo".into())),
                    col_version: 1,
                    db_version: 4,
                    site: 0,
                    cl: 1,
                    seq: 0,
                },
                PkgChange {
                    table: 0,
                    pk: Bytes::from(vec![1, 9, 1]),
                    cid: 2,
                    val: WireValue::Owned(Value::Real(2.0)),
                    col_version: i64::MAX,
                    db_version: 5,
                    site: 0,
                    cl: 1,
                    seq: 2,
                },
            ],
            kind: PackageKind::Changes,
        }
    }

    #[test]
    fn header_and_change_count_read_without_the_changes() {
        let mut many = sample();
        many.part = Some(Part {
            db_version: 5,
            last: false,
        });
        many.kind = PackageKind::Snapshot;
        // Past one byte of varint, so a length read from the wrong place shows.
        many.changes = (0..300).map(|_| sample().changes[0].clone()).collect();
        for pkg in [sample(), many] {
            for enc in [Encoding::Binary, Encoding::Json] {
                let bytes = pkg.encode(enc).unwrap();
                assert_eq!(Package::change_count(&bytes).unwrap(), pkg.changes.len());
                let h = Package::header(&bytes).unwrap();
                assert_eq!(h, Header::from(pkg.clone()), "{enc:?}");
            }
        }
        let mut bad = sample().encode(Encoding::Binary).unwrap();
        bad[10] ^= 1;
        assert!(matches!(
            Package::change_count(&bad),
            Err(PackageError::Checksum { .. })
        ));
    }

    #[test]
    fn packages_round_trip_in_both_encodings() {
        let p = sample();
        for enc in [Encoding::Binary, Encoding::Json] {
            let bytes = p.encode(enc).unwrap();
            assert_eq!(Package::sniff(&bytes), enc);
            assert_eq!(Package::decode(&bytes).unwrap(), p);
        }
    }

    #[test]
    fn json_keeps_reals_as_reals_and_integers_exact() {
        let text = String::from_utf8(sample().encode(Encoding::Json).unwrap()).unwrap();
        assert!(text.contains("{\"Real\":\"2.0\"}"), "{text}");
        assert!(text.contains("9223372036854775807"), "{text}");
    }

    /// `pkg` in JSON with the `"key":value` pair `pair` (found once in
    /// its text) given twice, the checksum recomputed: a well-formed
    /// package but for the duplicate key.
    fn json_with_pair_twice(pkg: &Package, pair: &str) -> Vec<u8> {
        let text = String::from_utf8(pkg.encode(Encoding::Json).unwrap()).unwrap();
        let body = &text[JSON_PREFIX.len()..text.len() - JSON_SUFFIX_LEN];
        assert_eq!(body.matches(pair).count(), 1, "{pair} in {body}");
        let body = body.replacen(pair, &format!("{pair},{pair}"), 1);
        let crc = crc64(body.as_bytes());
        format!("{JSON_PREFIX}{body},\"crc\":\"{crc:016x}\"}}").into_bytes()
    }

    #[test]
    fn a_duplicate_json_key_is_refused_whatever_the_kind() {
        let mut snapshot = sample();
        snapshot.kind = PackageKind::Snapshot;
        for pkg in [sample(), snapshot] {
            // A key of the body, and one of a change.
            for pair in ["\"stream\":\"to_b\"", "\"cid\":1"] {
                let bytes = json_with_pair_twice(&pkg, pair);
                let e = Package::decode(&bytes).unwrap_err().to_string();
                assert!(e.contains("duplicate"), "{:?} {pair}: {e}", pkg.kind);
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        for enc in [Encoding::Binary, Encoding::Json] {
            let bytes = sample().encode(enc).unwrap();
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x01;
                assert!(Package::decode(&b).is_err(), "{enc:?} byte {i}");
            }
            assert!(Package::decode(&bytes[..bytes.len() - 1]).is_err());
            let mut extra = bytes.clone();
            extra.push(0);
            assert!(Package::decode(&extra).is_err());
        }
    }

    #[test]
    fn crc64_matches_the_xz_check_value() {
        assert_eq!(crc64(b"123456789"), 0x995D_C9BB_DF19_39FA);
        assert_eq!(crc64_bytewise(b"123456789"), 0x995D_C9BB_DF19_39FA);
    }

    #[test]
    fn crc64_by_eight_bytes_equals_crc64_by_byte() {
        // Every length and alignment of the word loop and its remainder.
        let data: Vec<u8> = (0u32..1100)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..9 {
            for end in (start..data.len()).step_by(7).chain([data.len()]) {
                let s = &data[start..end];
                assert_eq!(crc64(s), crc64_bytewise(s), "bytes {start}..{end}");
            }
        }
    }

    #[test]
    fn schema_hash_depends_on_names_and_key_order() {
        let a = schema_hash("t", &["a", "b"], &["c"]);
        assert_ne!(a, schema_hash("t", &["b", "a"], &["c"]));
        assert_ne!(a, schema_hash("t", &["a"], &["b", "c"]));
        assert_ne!(a, schema_hash("u", &["a", "b"], &["c"]));
        assert_eq!(a, schema_hash("t", &["a", "b"], &["c"]));
    }

    #[test]
    fn cross_references_are_validated() {
        let mut p = sample();
        p.changes[0].table = 7;
        assert!(p.validate().is_err());
        let mut p = sample();
        p.changes[1].cid = 3;
        assert!(p.validate().is_err());
        let mut p = sample();
        p.changes[1].db_version = 4;
        p.changes[1].seq = 0;
        assert!(p.validate().is_err(), "duplicate position");
        let mut p = sample();
        p.changes[1].db_version = 6;
        assert!(p.validate().is_err(), "beyond the cursor");
        let mut p = sample();
        p.cursor = Position::new(1, 0);
        assert!(p.validate().is_err());
    }
}
