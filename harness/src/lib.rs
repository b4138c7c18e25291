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

/// Load the extension into an open connection (and set the `crr-layout`
/// of [`test_layout`]).
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
    apply_test_layout(conn)
}

/// A CRR layout (docs/compact-layout.md): what `crsql_as_crr` creates after
/// `SELECT crsql_config_set('crr-layout', <name>)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// cr-sqlite 0.16's layout on disk, the extension's default.
    Crsqlite,
    /// The compact layout: one row clock per key.
    Compact,
}

impl Layout {
    pub const ALL: [Layout; 2] = [Layout::Crsqlite, Layout::Compact];

    /// The value of the `crr-layout` setting.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Crsqlite => "crsqlite",
            Layout::Compact => "compact",
        }
    }

    /// The other layout.
    pub fn other(self) -> Layout {
        match self {
            Layout::Crsqlite => Layout::Compact,
            Layout::Compact => Layout::Crsqlite,
        }
    }

    /// Make later `crsql_as_crr` calls on `conn` create this layout.
    pub fn set(self, conn: &Connection) -> rusqlite::Result<()> {
        conn.query_row(
            "SELECT crsql_config_set('crr-layout', ?1)",
            [self.name()],
            |_| Ok(()),
        )
    }

    /// The layout CRR `table` is stored in, checking that the tables of
    /// exactly one layout exist for it.
    pub fn of(conn: &Connection, table: &str) -> Layout {
        let has = |suffix: &str| sql::exists(conn, &format!("{table}{suffix}"));
        let crsqlite = has("__crsql_clock") && has("__crsql_pks");
        let compact = has("__crsql_rows") && has("__crsql_cells");
        match (crsqlite, compact) {
            (true, false) => Layout::Crsqlite,
            (false, true) => Layout::Compact,
            _ => panic!(
                "table {table}: tables of the cr-sqlite layout {crsqlite}, of the compact layout {compact}"
            ),
        }
    }

    /// `crsql_convert_layout(table, <this layout>)`.
    pub fn convert(self, conn: &Connection, table: &str) -> rusqlite::Result<()> {
        conn.query_row(
            "SELECT crsql_convert_layout(?1, ?2)",
            [table, self.name()],
            |_| Ok(()),
        )
    }
}

/// The layout the suites run on: `$CRSQL_TEST_LAYOUT` (`crsqlite`, the
/// default, or `compact`; `make harness-test-compact`). Every connection
/// the helpers open (`load`, `open`, `open_memory`) gets it as its
/// `crr-layout` setting, so every suite's `crsql_as_crr` creates that
/// layout without a change to the suite.
pub fn test_layout() -> Layout {
    match std::env::var("CRSQL_TEST_LAYOUT").as_deref() {
        Err(_) | Ok("") | Ok("crsqlite") => Layout::Crsqlite,
        Ok("compact") => Layout::Compact,
        Ok(other) => panic!("CRSQL_TEST_LAYOUT must be 'crsqlite' or 'compact', got {other:?}"),
    }
}

/// Whether the suites run on the compact layout: assertions about the
/// cr-sqlite layout's own tables (`t__crsql_clock`, `t__crsql_pks`) are
/// skipped then.
pub fn compact_layout() -> bool {
    test_layout() == Layout::Compact
}

/// `assert_eq!` of an assertion about the cr-sqlite layout's own tables
/// (`t__crsql_clock`, `t__crsql_pks`, trigger DDL): skipped when the
/// suites run on the compact layout, which has none of them. What those
/// tables record is what `crsql_changes` shows, which the tests assert
/// too and which tests/compact_layout.rs compares between the layouts.
#[macro_export]
macro_rules! assert_internal_eq {
    ($($arg:tt)*) => {
        if !$crate::compact_layout() {
            assert_eq!($($arg)*);
        }
    };
}

/// The table holding CRR `table`'s clocks in the layout of [`test_layout`]:
/// `<table>__crsql_clock`, or the compact layout's `<table>__crsql_rows`.
pub fn clock_table(table: &str) -> String {
    match test_layout() {
        Layout::Crsqlite => format!("{table}__crsql_clock"),
        Layout::Compact => format!("{table}__crsql_rows"),
    }
}

/// Apply [`test_layout`] to a connection that just loaded the extension.
/// Nothing is written for the default layout, on a read-only connection, or
/// when the database already has the setting (reopening a file writes
/// nothing).
fn apply_test_layout(conn: &Connection) -> rusqlite::Result<()> {
    let layout = test_layout();
    if layout == Layout::Crsqlite || conn.is_readonly(rusqlite::MAIN_DB)? {
        return Ok(());
    }
    let current: String =
        conn.query_row("SELECT crsql_config_get('crr-layout')", [], |r| r.get(0))?;
    if current != layout.name() {
        layout.set(conn)?;
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

/// SIGKILL a child process of a crash test, wait for it, and collect what
/// it printed: its exit status, the stdout lines `reader` gathered, and its
/// stderr.
pub fn kill_and_collect(
    child: &mut std::process::Child,
    reader: std::thread::JoinHandle<Vec<String>>,
) -> (std::process::ExitStatus, Vec<String>, String) {
    use std::io::Read;
    let _ = child.kill(); // SIGKILL
    let status = child.wait().expect("wait for the child");
    let lines = reader.join().expect("the child's stdout reader");
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut err).expect("the child's stderr");
    }
    (status, lines, err)
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
