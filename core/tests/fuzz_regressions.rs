//! Saved fuzz crashers and hand-made hostile inputs must be rejected cleanly:
//! an `Err`, no panic, no huge allocation, and quickly.
//!
//! Every file in `tests/fuzz-crashers/` (named `<target>-<what-it-broke>.bin`,
//! the raw input the fuzzer reported) goes through all the entry points the
//! fuzz targets use: `Package::decode` on the raw bytes (must be an error),
//! the bytes as a binary body behind a valid header and checksum, the bytes as
//! a JSON body behind a valid checksum, and `unpack_columns`. Whatever one of
//! those accepts must be a sound package (or values) that re-encodes stably.
//! The folder may be empty; the hand-made inputs below always run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crsql_stream_core::package::{crc64, Encoding, Header, Package, FORMAT_VERSION, MAGIC};
use crsql_stream_core::{pack_columns, unpack_columns};

/// Generous: every input here takes microseconds to milliseconds.
const QUICK: Duration = Duration::from_secs(2);

fn wrap_binary(body: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(FORMAT_VERSION);
    out.extend_from_slice(body);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn wrap_json(body: &[u8]) -> Vec<u8> {
    let mut out = b"{\"body\":".to_vec();
    out.extend_from_slice(body);
    out.extend_from_slice(format!(",\"crc\":\"{:016x}\"}}", crc64(body)).as_bytes());
    out
}

/// Decode without panicking; an accepted package must re-encode stably.
fn decode_soundly<'a>(what: &str, bytes: &'a [u8]) -> Result<Package<'a>, String> {
    let start = Instant::now();
    let result = catch_unwind(AssertUnwindSafe(|| Package::decode(bytes)))
        .map_err(|_| format!("{what}: Package::decode panicked"))?;
    assert!(
        start.elapsed() < QUICK,
        "{what}: decoding took {:?}",
        start.elapsed()
    );
    let header = catch_unwind(AssertUnwindSafe(|| Package::header(bytes)))
        .map_err(|_| format!("{what}: Package::header panicked"))?;
    let pkg = result.map_err(|e| e.to_string())?;
    let h = header.unwrap_or_else(|e| panic!("{what}: decodes, but its header does not: {e}"));
    assert_eq!(
        h,
        Header::from(pkg.clone()),
        "{what}: the header reads other fields than the decode"
    );
    for enc in [Encoding::Binary, Encoding::Json] {
        let again = pkg.encode(enc).unwrap();
        let back = Package::decode(&again).unwrap();
        assert_eq!(
            back.encode(enc).unwrap(),
            again,
            "{what}: unstable {enc:?} re-encoding"
        );
    }
    Ok(pkg)
}

/// `data` must be refused by `Package::decode`, without a panic, quickly.
fn assert_rejected(what: &str, data: &[u8]) {
    if let Ok(pkg) = decode_soundly(what, data) {
        panic!("{what}: accepted as {pkg:?}");
    }
}

fn crasher_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-crashers");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_saved_fuzz_crasher_is_rejected_cleanly() {
    for path in crasher_files() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&path).unwrap();
        assert_rejected(&format!("{name} (raw)"), &data);
        let _ = decode_soundly(&format!("{name} (binary body)"), &wrap_binary(&data));
        let _ = decode_soundly(&format!("{name} (JSON body)"), &wrap_json(&data));
        let unpacked = catch_unwind(|| unpack_columns(&data))
            .unwrap_or_else(|_| panic!("{name}: unpack_columns panicked"));
        if let Ok(values) = unpacked {
            let packed = pack_columns(values.iter().map(|v| v.as_ref())).unwrap();
            assert_eq!(
                unpack_columns(&packed).unwrap().len(),
                values.len(),
                "{name}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Hand-made hostile inputs

/// Varint of `v` (postcard's unsigned LEB128).
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A body up to and including `part` (None): two 16-byte ids, empty stream
/// name, positions [0,0] and [1,0].
fn header_fields() -> Vec<u8> {
    let mut b = vec![16];
    b.extend([0x11; 16]);
    b.push(16);
    b.extend([0x22; 16]);
    b.extend([0, 0, 0, 2, 0, 0]);
    b
}

#[test]
fn huge_declared_lengths_are_rejected_quickly_without_allocating_them() {
    let huge = [u64::MAX, 1 << 62, u64::from(u32::MAX), 1 << 40, 1_000_000];
    for &n in &huge {
        // The sender's byte length.
        let mut body = varint(n);
        body.extend([0x11; 16]);
        assert_rejected(&format!("sender of {n} bytes"), &wrap_binary(&body));

        // The stream name's length.
        let mut body = header_fields()[..34].to_vec();
        body.extend(varint(n));
        body.extend(b"to_b");
        assert_rejected(&format!("stream name of {n} bytes"), &wrap_binary(&body));

        // The number of tables, of columns, of sites, of changes.
        let mut body = header_fields();
        body.extend(varint(n));
        body.extend([1, b't', 0, 0]);
        assert_rejected(&format!("{n} tables"), &wrap_binary(&body));

        let mut body = header_fields();
        body.extend([1, 1, b't', 0]);
        body.extend(varint(n));
        body.extend([1, b'c']);
        assert_rejected(&format!("{n} columns"), &wrap_binary(&body));

        let mut body = header_fields();
        body.extend([0]);
        body.extend(varint(n));
        assert_rejected(&format!("{n} sites"), &wrap_binary(&body));

        let mut body = header_fields();
        body.extend([0, 0]);
        body.extend(varint(n));
        body.extend([0; 12]);
        assert_rejected(&format!("{n} changes"), &wrap_binary(&body));

        // A blob value's length inside a change.
        let mut body = header_fields();
        body.extend([1, 1, b't', 0, 0, 1, 1, 0x11, 1]);
        body.extend([0, 0, 0, 4]);
        body.extend(varint(n));
        body.extend([0; 8]);
        assert_rejected(&format!("blob of {n} bytes"), &wrap_binary(&body));
    }
    // 100 000 tables declared, the first declaring 2^40 columns, then 4 kB
    // of empty column names: every list reserves at most a small constant.
    let mut body = header_fields();
    body.extend(varint(100_000));
    body.extend([0, 0]);
    body.extend(varint(1 << 40));
    body.extend([0; 4096]);
    assert_rejected("a table declaring 2^40 columns", &wrap_binary(&body));
}

#[test]
fn malformed_varints_are_rejected() {
    let cases: [(&str, Vec<u8>); 4] = [
        ("varint longer than 10 bytes", vec![0x80; 11]),
        ("varint whose last byte overflows 64 bits", {
            let mut v = vec![0xff; 9];
            v.push(0x02);
            v
        }),
        ("u32 varint over 2^32", vec![0xff, 0xff, 0xff, 0xff, 0x1f]),
        ("varint cut by the end of the body", vec![0x80, 0x80]),
    ];
    for (what, v) in &cases {
        let mut body = v.clone();
        body.extend([0x11; 16]);
        assert_rejected(&format!("{what} as the sender length"), &wrap_binary(&body));
    }
    // As a change's table index, in an otherwise valid one-change body.
    let with_table = |table: &[u8]| {
        let mut body = header_fields();
        body.extend([1, 1, b't', 0, 0, 1, 1, 0x11, 1]);
        body.extend(table);
        body.extend([0, 0, 0, 2, 2, 0, 2, 0]);
        wrap_binary(&body)
    };
    assert!(decode_soundly("table index 0", &with_table(&[0])).is_ok());
    for (what, v) in &cases[..3] {
        assert_rejected(&format!("{what} as a table index"), &with_table(v));
    }
    let mut cut = header_fields();
    cut.extend([1, 1, b't', 0, 0, 1, 1, 0x11, 1, 0x80, 0x80]);
    assert_rejected("table index cut by the end of the body", &wrap_binary(&cut));
}

#[test]
fn invalid_tags_bools_and_text_are_rejected() {
    let change_prefix = || {
        let mut body = header_fields();
        body.extend([1, 1, b't', 0, 1, 1, b'c', 1, 1, 0x11, 1, 0, 0, 1]);
        body
    };
    let mut body = change_prefix();
    body.extend([5, 2, 2, 0, 2, 0]);
    assert_rejected("value tag 5", &wrap_binary(&body));

    let mut body = change_prefix();
    body.extend([3, 2, 0xff, 0xfe, 2, 2, 0, 2, 0]);
    assert_rejected("text that is not UTF-8", &wrap_binary(&body));

    let mut body = header_fields();
    body.pop();
    body.extend([2]);
    assert_rejected("option tag 2 for part", &wrap_binary(&body));

    let mut body = header_fields();
    body.pop();
    body.extend([1, 2, 7, 0, 0, 0]);
    assert_rejected("bool byte 7 in part", &wrap_binary(&body));

    let mut body = change_prefix();
    body.extend([0, 2, 2, 0, 2, 0]);
    assert!(decode_soundly("the hand-made body", &wrap_binary(&body)).is_ok());
    body.push(0xaa);
    assert_rejected("a byte after the body", &wrap_binary(&body));
}

#[test]
fn deeply_nested_json_is_rejected_quickly() {
    for depth in [200, 10_000, 1_000_000] {
        let open = "[".repeat(depth);
        let close = "]".repeat(depth);
        for body in [
            format!("{open}{close}"),
            format!("{{\"sender\":{open}{close}}}"),
            format!("{{\"tables\":{open}"),
            format!("{{\"tables\":[{{\"columns\":{open}{close}}}]}}"),
            format!("{{\"unknown\":{open}{close}}}"),
            format!("{{\"unknown\":{}", "{\"a\":".repeat(depth)),
            format!(
                "{{\"changes\":[{{\"val\":{}1{}}}]}}",
                "{\"Real\":".repeat(depth),
                "}".repeat(depth)
            ),
        ] {
            let what = format!("depth {depth}: {}…", &body[..body.len().min(24)]);
            assert_rejected(&what, &wrap_json(body.as_bytes()));
        }
    }
}

#[test]
fn hostile_json_numbers_and_strings_are_rejected() {
    let valid = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/package/small.json"),
    )
    .unwrap();
    let body = &valid[8..valid.len() - 26];
    let swaps = [
        ("\"cid\":1", "\"cid\":4294967296"),
        ("\"cid\":1", "\"cid\":1.0"),
        ("\"cid\":1", "\"cid\":-1"),
        ("\"seq\":1", "\"seq\":99999999999999999999999999"),
        ("\"seq\":1", "\"seq\":1e400"),
        (
            "\"schema_hash\":17875450662190334584",
            "\"schema_hash\":18446744073709551616",
        ),
        ("\"pk\":\"010907\"", "\"pk\":\"01090\""),
        ("\"pk\":\"010907\"", "\"pk\":\"01090G\""),
        ("\"pk\":\"010907\"", "\"pk\":\"01090A\""),
        ("\"pk\":\"010907\"", "\"pk\":[1,9,7]"),
        ("\"val\":\"Null\"", "\"val\":null"),
        ("\"val\":\"Null\"", "\"val\":{\"Integer\":2.0}"),
        ("\"val\":\"Null\"", "\"val\":{\"Real\":2.0}"),
        ("\"val\":\"Null\"", "\"val\":{\"Real\":\"two\"}"),
        ("\"val\":\"Null\"", "\"val\":{\"Date\":\"2024\"}"),
        ("\"val\":\"Null\"", "\"val\":{\"Text\":\"\\ud800\"}"),
        (
            "\"stream\":\"to_b\"",
            "\"stream\":\"to_b\",\"stream\":\"x\"",
        ),
        // Unknown keys are refused, at the top and inside a change
        // (docs/package-format.md).
        ("\"stream\":\"to_b\"", "\"stream\":\"to_b\",\"extra\":0"),
        ("\"val\":\"Null\"", "\"val\":\"Null\",\"note\":\"x\""),
        ("\"since\":[3,1]", "\"since\":[3,1,0]"),
        ("\"since\":[3,1]", "\"since\":[-3,1]"),
    ];
    for (from, to) in swaps {
        assert!(body.contains(from), "{from}");
        let hostile = body.replacen(from, to, 1);
        assert_rejected(&format!("JSON with {to}"), &wrap_json(hostile.as_bytes()));
    }
    // The untouched body is accepted, so the rejections above are the swaps'.
    assert!(decode_soundly("small.json body", &wrap_json(body.as_bytes())).is_ok());
}

#[test]
fn a_correct_checksum_in_uppercase_or_with_a_sign_is_rejected() {
    let valid = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/package/small.json"),
    )
    .unwrap();
    let body = &valid[8..valid.len() - 26];
    // `u64::from_str_radix` reads "A" as "a" and "+123" as "0123"; the format
    // allows only lowercase digits. Find a body whose CRC has a leading zero
    // digit (one in 16 does), so "+" plus the other 15 digits is the same value.
    let body = (0..1000)
        .map(|i| body.replacen("\"to_b\"", &format!("\"to_b{i}\""), 1))
        .find(|b| crc64(b.as_bytes()) >> 60 == 0)
        .unwrap();
    let json = String::from_utf8(wrap_json(body.as_bytes())).unwrap();
    assert!(decode_soundly("renamed small.json", json.as_bytes()).is_ok());
    let (head, tail) = json.split_at(json.len() - 18);
    let digits = &tail[..16];
    assert!(digits.starts_with('0') && digits.bytes().any(|b| b.is_ascii_lowercase()));
    let upper = format!("{head}{}\"}}", digits.to_uppercase());
    assert_rejected("uppercase CRC digits", upper.as_bytes());
    let plus = format!("{head}+{}\"}}", &digits[1..]);
    assert_rejected("CRC digits with a sign", plus.as_bytes());
    // Every single-bit flip of every CRC digit.
    for i in json.len() - 18..json.len() - 2 {
        for bit in 0..8 {
            let mut b = json.clone().into_bytes();
            b[i] ^= 1 << bit;
            assert_rejected(&format!("CRC digit {i} bit {bit} flipped"), &b);
        }
    }
}
