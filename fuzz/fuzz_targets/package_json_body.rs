//! The input is the body of a JSON package. It is wrapped as
//! `{"body":<input>,"crc":"<crc of input>"}`, so every input passes the
//! checksum and reaches serde_json and `Package::validate`.
#![no_main]

use crsql_stream_core::package::crc64;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|body: &[u8]| {
    let mut bytes = Vec::with_capacity(body.len() + 34);
    bytes.extend_from_slice(b"{\"body\":");
    bytes.extend_from_slice(body);
    bytes.extend_from_slice(format!(",\"crc\":\"{:016x}\"}}", crc64(body)).as_bytes());
    common::check_bytes(&bytes);
});
