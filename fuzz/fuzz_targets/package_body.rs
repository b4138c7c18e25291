//! The input is a postcard body. It is wrapped in the `CRSP` magic, format
//! version 1 and a correct CRC-64/XZ, so every input passes the checksum and
//! reaches the body decoder and `Package::validate`.
#![no_main]

use crsql_stream_core::package::{crc64, FORMAT_VERSION, MAGIC};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|body: &[u8]| {
    let mut bytes = Vec::with_capacity(body.len() + 13);
    bytes.extend_from_slice(&MAGIC);
    bytes.push(FORMAT_VERSION);
    bytes.extend_from_slice(body);
    let crc = crc64(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    common::check_bytes(&bytes);
});
