//! Raw bytes into `unpack_columns`: never a panic; whatever decodes packs
//! again and unpacks to the same values (reals compared by bits).
#![no_main]

use crsql_stream_core::pack::unpack_columns_ref;
use crsql_stream_core::{pack_columns, Value};
use libfuzzer_sys::fuzz_target;

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Real(x), Value::Real(y)) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(values) = unpack_columns_ref(data) else {
        return;
    };
    let packed = pack_columns(values.iter().copied()).expect("decoded values pack");
    let again = unpack_columns_ref(&packed).expect("packed values unpack");
    assert_eq!(again.len(), values.len());
    for (a, b) in values.iter().zip(&again) {
        assert!(
            same(&a.to_owned_value(), &b.to_owned_value()),
            "{a:?} came back as {b:?}"
        );
    }
    // The canonical form is a fixed point.
    assert_eq!(pack_columns(again.iter().copied()).unwrap(), packed);
});
