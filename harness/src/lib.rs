//! Shared helpers for the integration tests and the benchmark: open real
//! SQLite connections (rusqlite's bundled SQLite) with the built extension.

pub mod sql;
pub mod tables;

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// Path of the built extension: `$CRSQL_STREAM_EXT`, else `../dist/libcrsql_stream.so`.
pub fn ext_path() -> PathBuf {
    if let Ok(p) = std::env::var("CRSQL_STREAM_EXT") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/libcrsql_stream.so")
}

/// Load the extension into an open connection.
pub fn load(conn: &Connection) -> rusqlite::Result<()> {
    let path = ext_path();
    assert!(
        path.exists(),
        "build the extension first (make build): {}",
        path.display()
    );
    // SAFETY: loading our own extension, built from this repository.
    unsafe {
        let _guard = rusqlite::LoadExtensionGuard::new(conn)?;
        conn.load_extension(&path, None::<&str>)?;
    }
    // `CRSQL_TEST_LAYOUT=compact` runs a suite on the compact CRR layout
    // (docs/compact-layout.md): the CRRs it creates take that layout.
    if let Ok(layout) = std::env::var("CRSQL_TEST_LAYOUT") {
        conn.query_row(
            "SELECT crsql_config_set('crr-layout', ?1)",
            [layout],
            |_| Ok(()),
        )?;
    }
    Ok(())
}

/// Open (or create) a database file with the extension loaded.
pub fn open(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open database");
    load(&conn).expect("load extension");
    conn
}

/// An in-memory database with the extension loaded.
pub fn open_memory() -> Connection {
    let conn = Connection::open_in_memory().expect("open in-memory database");
    load(&conn).expect("load extension");
    conn
}

/// Close cleanly: finalize the extension's statements, then close.
pub fn close(conn: Connection) {
    let _: String = conn
        .query_row("SELECT crsql_finalize()", [], |r| r.get(0))
        .expect("crsql_finalize");
    conn.close().map_err(|(_, e)| e).expect("close");
}

/// The number of cases of a property test: `$PROPTEST_CASES`, else `default`.
pub fn prop_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
