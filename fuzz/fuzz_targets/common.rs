//! Shared by the package targets: what must hold for any package the decoder
//! accepts.

use crsql_stream_core::package::{Encoding, Header, Package};

/// Whatever `bytes` are: `Package::header` reads them without a panic, and
/// of a package `Package::decode` accepts it reads the same fields, which
/// [`check_accepted`] then checks.
pub fn check_bytes(bytes: &[u8]) {
    let header = Package::header(bytes);
    if let Ok(pkg) = Package::decode(bytes) {
        let h = header.expect("the header of an accepted package reads");
        assert_eq!(
            h,
            Header::from(pkg.clone()),
            "the header reads other fields than the decode"
        );
        check_accepted(&pkg);
    }
}

/// A decoded package is fully usable and re-encodes canonically: encoding it
/// and decoding again gives a package with the very same encoding.
pub fn check_accepted(pkg: &Package) {
    for c in &pkg.changes {
        // Validation promised these lookups are in range.
        let _ = pkg.cid_of(c);
        let _ = &pkg.sites[c.site as usize];
    }
    for enc in [Encoding::Binary, Encoding::Json] {
        let bytes = pkg.encode(enc).expect("a decoded package encodes");
        let again = Package::decode(&bytes).expect("a re-encoded package decodes");
        assert_eq!(
            again.encode(enc).expect("encodes twice"),
            bytes,
            "{enc:?} encoding is not stable"
        );
    }
}
