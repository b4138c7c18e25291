//! Raw bytes into `Package::decode`: never a panic, never a huge allocation.
#![no_main]

use crsql_stream_core::package::Package;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(pkg) = Package::decode(data) {
        common::check_accepted(&pkg);
    }
});
