//! Every `unsafe` block of the extension lives in this module.
//!
//! It holds the entry points SQLite calls when loading the library, a
//! non-owning `Connection` for a raw handle, the commit/rollback hooks, and a
//! small owned prepared statement that virtual-table cursors keep between
//! `xNext` calls. Each block says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Arc;

use rusqlite::ffi;
use rusqlite::types::ValueRef;
use rusqlite::vtab::VTabConnection;
use rusqlite::Connection;

use crate::state::TxCounters;

pub mod function;
pub mod vtab;

/// Entry point derived by SQLite from the file name `libcrsql_stream.so`.
///
/// Only with the `loadable` feature (the `.so`); a statically linked build
/// calls [`crate::register`] instead.
///
/// # Safety
/// Called by SQLite's extension loader with a valid connection and API table.
#[cfg(feature = "loadable")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlite3_crsqlstream_init(
    db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: arguments come straight from SQLite's loader; extension_init2
    // checks p_api and only registers functions and modules.
    unsafe { Connection::extension_init2(db, pz_err_msg, p_api, crate::init) }
}

/// Generic entry point, for loaders given an explicit `sqlite3_extension_init`.
///
/// # Safety
/// Called by SQLite's extension loader with a valid connection and API table.
#[cfg(feature = "loadable")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlite3_extension_init(
    db: *mut ffi::sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut ffi::sqlite3_api_routines,
) -> c_int {
    // SAFETY: as above.
    unsafe { Connection::extension_init2(db, pz_err_msg, p_api, crate::init) }
}

/// A raw connection handle that we only use on the connection's own thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DbHandle(*mut ffi::sqlite3);

// SAFETY: the handle is only dereferenced by SQLite, on the thread that calls
// into the extension through that connection; SQLite serialises access.
unsafe impl Send for DbHandle {}
// SAFETY: as above.
unsafe impl Sync for DbHandle {}

impl DbHandle {
    pub fn of(conn: &Connection) -> DbHandle {
        // SAFETY: we only read the pointer; it stays valid while the
        // connection is open, which outlives every user of the handle.
        DbHandle(unsafe { conn.handle() })
    }

    pub fn of_vtab(db: &mut VTabConnection) -> DbHandle {
        // SAFETY: as above; the vtab connection is the one that owns the table.
        DbHandle(unsafe { db.handle() })
    }

    /// A non-owning `Connection` over the handle (dropping it does not close).
    pub fn connection(&self) -> rusqlite::Result<Connection> {
        // SAFETY: the handle is a live connection; `from_handle` marks the
        // result as not owned, so drop never calls sqlite3_close.
        unsafe { Connection::from_handle(self.0) }
    }

    pub fn as_key(&self) -> usize {
        self.0 as usize
    }

    /// True when `main` has an open write transaction (`sqlite3_txn_state`,
    /// SQLite 3.34; the extension requires 3.35).
    pub fn writing(&self) -> bool {
        // SAFETY: live handle, NUL-terminated schema name; only reads state.
        unsafe { ffi::sqlite3_txn_state(self.0, c"main".as_ptr()) == ffi::SQLITE_TXN_WRITE }
    }

    /// `sqlite3_total_changes`: rows changed by the INSERT, UPDATE and
    /// DELETE statements (trigger steps and nested statements included) the
    /// connection completed. It wraps at 2^31: compare with wrapping
    /// arithmetic.
    pub fn total_changes(&self) -> i32 {
        // SAFETY: live handle; only reads a counter.
        unsafe { ffi::sqlite3_total_changes(self.0) }
    }

    /// `sqlite3_changes`: rows inserted, updated or deleted by the INSERT,
    /// UPDATE or DELETE statement that completed last (its triggers' rows
    /// not counted; skipped `OR IGNORE` rows neither).
    pub fn changes(&self) -> i32 {
        // SAFETY: live handle; only reads a counter.
        unsafe { ffi::sqlite3_changes(self.0) }
    }

    /// True when the connection is in autocommit mode (no open transaction).
    pub fn autocommit(&self) -> bool {
        // SAFETY: live handle; sqlite3_get_autocommit only reads a flag.
        unsafe { ffi::sqlite3_get_autocommit(self.0) != 0 }
    }

    /// Install commit and rollback hooks that reset the per-transaction
    /// counters. The `Arc` is leaked into the hook argument and reclaimed by
    /// [`DbHandle::remove_tx_hooks`].
    pub fn install_tx_hooks(&self, counters: &Arc<TxCounters>) {
        let arg = Arc::into_raw(Arc::clone(counters)) as *mut c_void;
        // SAFETY: the callbacks only touch atomics inside `TxCounters`, which
        // stays alive until remove_tx_hooks takes the Arc back.
        unsafe {
            let prev = ffi::sqlite3_commit_hook(self.0, Some(on_commit), arg);
            let prev_rb = ffi::sqlite3_rollback_hook(self.0, Some(on_rollback), arg);
            // A re-installation replaces our own earlier argument: release it.
            if !prev.is_null() && prev == prev_rb {
                release_if_ours(prev, counters);
            }
        }
    }

    /// Remove our hooks (if they are still installed) and free their argument.
    pub fn remove_tx_hooks(&self, counters: &Arc<TxCounters>) {
        // SAFETY: live handle (called from the state's drop, which SQLite runs
        // while the connection still exists).
        unsafe {
            let prev = ffi::sqlite3_commit_hook(self.0, None, std::ptr::null_mut());
            let prev_rb = ffi::sqlite3_rollback_hook(self.0, None, std::ptr::null_mut());
            if !prev.is_null() {
                release_if_ours(prev, counters);
            }
            if !prev_rb.is_null() && prev_rb != prev {
                release_if_ours(prev_rb, counters);
            }
        }
    }
}

/// Drop the Arc reference leaked into a hook argument, if it is ours.
///
/// # Safety
/// `arg` must be a hook argument read back from SQLite.
unsafe fn release_if_ours(arg: *mut c_void, counters: &Arc<TxCounters>) {
    if std::ptr::eq(arg as *const TxCounters, Arc::as_ptr(counters)) {
        // SAFETY: the pointer came from Arc::into_raw in install_tx_hooks.
        drop(unsafe { Arc::from_raw(arg as *const TxCounters) });
    }
}

extern "C" fn on_commit(arg: *mut c_void) -> c_int {
    // SAFETY: arg is the Arc<TxCounters> leaked in install_tx_hooks; it lives
    // until the hook is removed. end_transaction only stores atomics.
    let counters = unsafe { &*(arg as *const TxCounters) };
    counters.end_transaction();
    0
}

extern "C" fn on_rollback(arg: *mut c_void) {
    // SAFETY: as in on_commit.
    let counters = unsafe { &*(arg as *const TxCounters) };
    counters.end_transaction();
}

/// The SQLite library version number of the host, e.g. 3040001.
pub fn libversion_number() -> i32 {
    // SAFETY: a pure function of the loaded library.
    unsafe { ffi::sqlite3_libversion_number() }
}

/// An owned prepared statement, finalized on drop. Cursors keep one between
/// `xNext` calls, which a borrowed rusqlite `Statement` cannot do.
pub struct RawStmt {
    db: DbHandle,
    stmt: *mut ffi::sqlite3_stmt,
}

// SAFETY: used only on the owning connection's thread (see DbHandle).
unsafe impl Send for RawStmt {}

/// `slot`'s statement, prepared from `sql()` on first use (a statement held
/// from one use to the next, out of the connection's statement cache).
pub fn prepared<S: AsRef<str>>(
    db: DbHandle,
    slot: &mut Option<RawStmt>,
    sql: impl FnOnce() -> S,
) -> rusqlite::Result<&mut RawStmt> {
    Ok(match slot {
        Some(stmt) => stmt,
        None => slot.insert(RawStmt::prepare(db, sql().as_ref())?),
    })
}

/// An owned copy of a column value, so rows outlive the next `step`.
pub use rusqlite::types::Value as OwnedValue;

impl RawStmt {
    pub fn prepare(db: DbHandle, sql: &str) -> rusqlite::Result<RawStmt> {
        let c_sql = CString::new(sql).map_err(|_| {
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_MISUSE),
                Some("SQL text contains a NUL byte".into()),
            )
        })?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: live handle, NUL-terminated SQL, out-pointer to a local.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(db.0, c_sql.as_ptr(), -1, &mut stmt, std::ptr::null_mut())
        };
        if rc != ffi::SQLITE_OK {
            return Err(db_error(db, rc));
        }
        Ok(RawStmt { db, stmt })
    }

    pub fn bind(&mut self, idx: usize, value: ValueRef<'_>) -> rusqlite::Result<()> {
        let i = idx as c_int;
        // SAFETY: live statement; text and blob are copied (SQLITE_TRANSIENT).
        let rc = unsafe {
            match value {
                ValueRef::Null => ffi::sqlite3_bind_null(self.stmt, i),
                ValueRef::Integer(v) => ffi::sqlite3_bind_int64(self.stmt, i, v),
                ValueRef::Real(v) => ffi::sqlite3_bind_double(self.stmt, i, v),
                ValueRef::Text(t) => ffi::sqlite3_bind_text(
                    self.stmt,
                    i,
                    t.as_ptr() as *const c_char,
                    t.len() as c_int,
                    ffi::SQLITE_TRANSIENT(),
                ),
                ValueRef::Blob(b) => ffi::sqlite3_bind_blob(
                    self.stmt,
                    i,
                    b.as_ptr() as *const c_void,
                    b.len() as c_int,
                    ffi::SQLITE_TRANSIENT(),
                ),
            }
        };
        if rc != ffi::SQLITE_OK {
            return Err(db_error(self.db, rc));
        }
        Ok(())
    }

    /// Rewind to run again (bindings are kept).
    pub fn reset(&mut self) {
        // SAFETY: live statement. The error code repeats the last step's,
        // which was already reported.
        unsafe {
            ffi::sqlite3_reset(self.stmt);
        }
    }

    /// Advance; true when a row is available.
    pub fn step(&mut self) -> rusqlite::Result<bool> {
        // SAFETY: live statement.
        match unsafe { ffi::sqlite3_step(self.stmt) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(db_error(self.db, rc)),
        }
    }

    pub fn column_i64(&self, col: usize) -> i64 {
        // SAFETY: live statement positioned on a row.
        unsafe { ffi::sqlite3_column_int64(self.stmt, col as c_int) }
    }

    /// A column known to hold TEXT (a STRICT TEXT column), as bytes, valid
    /// until the next step/reset: two calls into SQLite instead of
    /// [`RawStmt::column`]'s three (each takes the connection's mutex).
    pub fn column_text(&self, col: usize) -> &[u8] {
        let c = col as c_int;
        // SAFETY: live statement on a row; the pointer is valid for the
        // byte count SQLite reports until the next step.
        unsafe {
            let p = ffi::sqlite3_column_text(self.stmt, c);
            if p.is_null() {
                return &[];
            }
            std::slice::from_raw_parts(p, ffi::sqlite3_column_bytes(self.stmt, c) as usize)
        }
    }

    /// The column as a borrowed value, valid until the next step/reset.
    pub fn column(&self, col: usize) -> ValueRef<'_> {
        let c = col as c_int;
        // SAFETY: live statement on a row; pointers returned by SQLite are
        // valid for the byte counts it reports until the next step.
        unsafe {
            match ffi::sqlite3_column_type(self.stmt, c) {
                ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_column_int64(self.stmt, c)),
                ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_column_double(self.stmt, c)),
                ffi::SQLITE_TEXT => {
                    let p = ffi::sqlite3_column_text(self.stmt, c);
                    let n = ffi::sqlite3_column_bytes(self.stmt, c) as usize;
                    ValueRef::Text(if p.is_null() {
                        &[]
                    } else {
                        std::slice::from_raw_parts(p, n)
                    })
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_column_blob(self.stmt, c) as *const u8;
                    let n = ffi::sqlite3_column_bytes(self.stmt, c) as usize;
                    ValueRef::Blob(if p.is_null() {
                        &[]
                    } else {
                        std::slice::from_raw_parts(p, n)
                    })
                }
                _ => ValueRef::Null,
            }
        }
    }
}

impl Drop for RawStmt {
    fn drop(&mut self) {
        // SAFETY: we own the statement; finalize exactly once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt);
        }
    }
}

fn db_error(db: DbHandle, rc: c_int) -> rusqlite::Error {
    // SAFETY: live handle; errmsg returns a NUL-terminated string owned by SQLite
    // that we copy at once.
    let msg = unsafe {
        let p = ffi::sqlite3_errmsg(db.0);
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    rusqlite::Error::SqliteFailure(ffi::Error::new(rc), Some(msg))
}
