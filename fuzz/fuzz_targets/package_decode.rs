//! Raw bytes into `Package::decode` and `Package::header`: never a panic,
//! never a huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check_bytes(data);
});
