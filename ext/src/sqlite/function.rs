//! Scalar SQL functions registered with `sqlite3_create_function_v2`
//! directly, so that an error keeps SQLite's result code: rusqlite reports a
//! function's error code first and its message second, and
//! `sqlite3_result_error` resets the code to SQLITE_ERROR, so SQLITE_BUSY or
//! SQLITE_FULL met inside `crsql_begin_alter` reached the caller as
//! SQLITE_ERROR.

use std::ffi::{c_int, c_void, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use rusqlite::ffi;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

/// The arguments of one call of an SQL function.
pub struct Args<'a> {
    values: &'a [*mut ffi::sqlite3_value],
}

impl<'a> Args<'a> {
    /// The number of arguments.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Argument `i`, borrowed from SQLite (NULL past the last one).
    pub fn get_raw(&self, i: usize) -> ValueRef<'a> {
        let Some(&v) = self.values.get(i) else {
            return ValueRef::Null;
        };
        // SAFETY: `v` is an argument SQLite passed to this call; it and the
        // bytes it points to stay valid until the call returns, which `'a`
        // (the call's slice of arguments) does not outlive. Text and blob
        // pointers are read before their length, as SQLite requires, and a
        // NULL pointer (empty value) becomes an empty slice.
        unsafe {
            match ffi::sqlite3_value_type(v) {
                ffi::SQLITE_INTEGER => ValueRef::Integer(ffi::sqlite3_value_int64(v)),
                ffi::SQLITE_FLOAT => ValueRef::Real(ffi::sqlite3_value_double(v)),
                ffi::SQLITE_TEXT => {
                    let p = ffi::sqlite3_value_text(v);
                    let n = ffi::sqlite3_value_bytes(v) as usize;
                    ValueRef::Text(if p.is_null() {
                        &[]
                    } else {
                        std::slice::from_raw_parts(p, n)
                    })
                }
                ffi::SQLITE_BLOB => {
                    let p = ffi::sqlite3_value_blob(v) as *const u8;
                    let n = ffi::sqlite3_value_bytes(v) as usize;
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

/// A function's body: arguments in, a value or an error out.
pub type ScalarFn = Box<dyn Fn(&Args<'_>) -> rusqlite::Result<Value> + Send + 'static>;

/// Register `f` as the SQL function `name` on `conn`.
pub fn create_scalar_function(
    conn: &Connection,
    name: &str,
    n_arg: i32,
    flags: FunctionFlags,
    f: ScalarFn,
) -> rusqlite::Result<()> {
    let c_name = CString::new(name).map_err(|_| {
        rusqlite::Error::SqliteFailure(
            ffi::Error::new(ffi::SQLITE_MISUSE),
            Some(format!("function name {name:?} holds a NUL byte")),
        )
    })?;
    let boxed: *mut ScalarFn = Box::into_raw(Box::new(f));
    // SAFETY: the handle is a live connection; `boxed` is a valid pointer
    // that SQLite hands back to `call` and frees through `destroy` (also
    // when registration fails, as sqlite3_create_function_v2 promises).
    let rc = unsafe {
        ffi::sqlite3_create_function_v2(
            conn.handle(),
            c_name.as_ptr(),
            n_arg,
            flags.bits(),
            boxed as *mut c_void,
            Some(call),
            None,
            None,
            Some(destroy),
        )
    };
    registered(rc, "function", name)
}

/// The result of registering `what` `name` (a function, a module): an
/// error with SQLite's code unless `rc` is `SQLITE_OK`.
pub(crate) fn registered(rc: c_int, what: &str, name: &str) -> rusqlite::Result<()> {
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(rc),
            Some(format!("could not register {what} {name}")),
        ))
    }
}

unsafe extern "C" fn destroy(p: *mut c_void) {
    // SAFETY: `p` is the box made in `create_scalar_function`, freed once.
    drop(unsafe { Box::from_raw(p as *mut ScalarFn) });
}

unsafe extern "C" fn call(
    ctx: *mut ffi::sqlite3_context,
    argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    // SAFETY: SQLite passes the user data registered with this function and
    // `argc` valid argument pointers; both outlive this call.
    let (f, values) = unsafe {
        let f = &*(ffi::sqlite3_user_data(ctx) as *const ScalarFn);
        let values = if argc <= 0 || argv.is_null() {
            &[][..]
        } else {
            std::slice::from_raw_parts(argv as *const *mut ffi::sqlite3_value, argc as usize)
        };
        (f, values)
    };
    let result = catch_unwind(AssertUnwindSafe(|| f(&Args { values })));
    // SAFETY: `ctx` is this call's context; results are copied by SQLite
    // (SQLITE_TRANSIENT) before these values go.
    unsafe {
        match result {
            Ok(Ok(v)) => set_result(ctx, &v),
            Ok(Err(e)) => {
                let (code, msg) = match &e {
                    rusqlite::Error::SqliteFailure(f, m) => {
                        (f.extended_code, m.clone().unwrap_or_else(|| f.to_string()))
                    }
                    other => (ffi::SQLITE_ERROR, other.to_string()),
                };
                report(ctx, code, &msg);
            }
            Err(_) => report(
                ctx,
                ffi::SQLITE_ERROR,
                "crsql_stream: internal error in an SQL function",
            ),
        }
    }
}

/// The message first, then the code: `sqlite3_result_error` resets the code.
unsafe fn report(ctx: *mut ffi::sqlite3_context, code: c_int, msg: &str) {
    let bytes = msg.as_bytes();
    // SAFETY: `ctx` is live; the message is copied (length given, no NUL needed).
    unsafe {
        ffi::sqlite3_result_error(ctx, bytes.as_ptr() as *const _, bytes.len() as c_int);
        ffi::sqlite3_result_error_code(ctx, code);
    }
}

unsafe fn set_result(ctx: *mut ffi::sqlite3_context, v: &Value) {
    // SAFETY: `ctx` is live; text and blobs are copied by SQLite
    // (SQLITE_TRANSIENT), so the borrowed bytes may go after the call.
    unsafe {
        match v {
            Value::Null => ffi::sqlite3_result_null(ctx),
            Value::Integer(i) => ffi::sqlite3_result_int64(ctx, *i),
            Value::Real(r) => ffi::sqlite3_result_double(ctx, *r),
            Value::Text(t) => ffi::sqlite3_result_text64(
                ctx,
                t.as_ptr() as *const _,
                t.len() as u64,
                ffi::SQLITE_TRANSIENT(),
                ffi::SQLITE_UTF8 as u8,
            ),
            Value::Blob(b) => ffi::sqlite3_result_blob64(
                ctx,
                b.as_ptr() as *const c_void,
                b.len() as u64,
                ffi::SQLITE_TRANSIENT(),
            ),
        }
    }
}
