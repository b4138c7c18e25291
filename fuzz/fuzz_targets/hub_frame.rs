//! Raw bytes into the crsql-sync hub's frame decoder (server/protocol), as
//! they arrive from a client's WebSocket message: never a panic; a frame
//! that decodes re-encodes to the same bytes; a package frame goes through
//! the hub's package inspection too.
#![no_main]

use crsql_sync_protocol::{inspect_package, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Frame::decode(data) {
        Ok(frame) => {
            let again = frame.encode();
            // Error codes and messages of unknown codes are kept as is, so
            // every decoded frame encodes back to its bytes, except an error
            // message that was not UTF-8 (decoded lossily).
            if !matches!(&frame, Frame::Error(_)) {
                assert_eq!(again, data, "re-encoding changed the frame");
            }
            assert_eq!(Frame::decode(&again).as_ref(), Ok(&frame));
            if let Frame::Package(p) = &frame {
                let _ = inspect_package(p);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
