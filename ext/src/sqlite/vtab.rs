//! Safe virtual-table traits and the one generic shim that implements
//! rusqlite's `unsafe` vtab traits for them. The shim also catches every
//! panic, which rusqlite's vtab trampolines do not.

use std::ffi::c_int;
use std::marker::PhantomData;

use rusqlite::types::ValueRef;
use rusqlite::vtab::{
    sqlite3_vtab, sqlite3_vtab_cursor, update_module_with_tx, Context, CreateVTab, Filters,
    IndexInfo, Inserts, TransactionVTab, UpdateVTab, Updates, VTab, VTabConnection, VTabCursor,
    VTabKind,
};
use rusqlite::Connection;

use crate::error::{guard, Error, Result};

/// A virtual table written in safe Rust.
pub trait Table: Sized + 'static {
    type Aux: Send + Sync + 'static;
    type Cursor: TableCursor;
    /// Module name, used in error messages.
    const NAME: &'static str;
    const KIND: VTabKind;

    /// Connect (and, for non-eponymous tables, create). Returns the CREATE
    /// TABLE statement that declares the columns.
    fn connect(
        db: &mut VTabConnection,
        aux: Option<&Self::Aux>,
        create: bool,
        schema: &str,
        table_name: &str,
        args: &[&str],
    ) -> Result<(String, Self)>;
    fn best_index(&self, info: &mut IndexInfo) -> Result<()>;
    fn open(&mut self) -> Result<Self::Cursor>;
    /// DROP TABLE of a non-eponymous table.
    fn destroy(&self) -> Result<()> {
        Ok(())
    }
    /// INSERT; `args[0]` is the first declared column.
    fn insert(&mut self, _args: &[ValueRef<'_>]) -> Result<i64> {
        Err(Error::Misuse(format!(
            "{}: INSERT is not supported",
            Self::NAME
        )))
    }
    fn delete(&mut self) -> Result<()> {
        Err(Error::Misuse(format!(
            "{}: DELETE is not supported",
            Self::NAME
        )))
    }
    fn update(&mut self) -> Result<()> {
        Err(Error::Misuse(format!(
            "{}: UPDATE is not supported",
            Self::NAME
        )))
    }
    fn begin(&mut self) -> Result<()> {
        Ok(())
    }
    /// xSync: the first phase of COMMIT of a transaction that wrote to this
    /// table; may still write (SQLite's FTS flushes its buffers here).
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
    fn commit(&mut self) -> Result<()> {
        Ok(())
    }
    fn rollback(&mut self) -> Result<()> {
        Ok(())
    }
    /// xRollbackTo: `ROLLBACK TO` a savepoint, or a statement rolled back,
    /// in a transaction that wrote to this table (only for tables
    /// registered with [`register_with_savepoints`]).
    fn rollback_to(&mut self) -> Result<()> {
        Ok(())
    }
    /// Called from xDisconnect (also when the connection closes).
    fn disconnect(&mut self) {}
}

/// A cursor over a [`Table`].
pub trait TableCursor: Sized + 'static {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &[ValueRef<'_>],
    ) -> Result<()>;
    fn next(&mut self) -> Result<()>;
    fn eof(&self) -> bool;
    fn column(&self, ctx: &mut Context, col: c_int) -> Result<()>;
    fn rowid(&self) -> Result<i64>;
}

/// `sqlite3_vtab` header followed by the safe table.
#[repr(C)]
pub struct VTabShim<T: Table> {
    base: sqlite3_vtab,
    table: T,
}

/// `sqlite3_vtab_cursor` header followed by the safe cursor.
#[repr(C)]
pub struct CursorShim<T: Table> {
    base: sqlite3_vtab_cursor,
    cursor: T::Cursor,
    _t: PhantomData<T>,
}

fn utf8<'a>(what: &str, b: &'a [u8]) -> Result<&'a str> {
    std::str::from_utf8(b).map_err(|_| Error::Msg(format!("{what} is not valid UTF-8")))
}

fn connect_shim<T: Table>(
    db: &mut VTabConnection,
    aux: Option<&T::Aux>,
    create: bool,
    args: &[&[u8]],
) -> rusqlite::Result<(String, VTabShim<T>)> {
    guard(T::NAME, || {
        let schema = utf8("schema name", args.get(1).copied().unwrap_or_default())?;
        let name = utf8("table name", args.get(2).copied().unwrap_or_default())?;
        // args[0..3] are module, database and table names.
        let user_args = args
            .iter()
            .skip(3)
            .map(|a| utf8("argument", a))
            .collect::<Result<Vec<_>>>()?;
        let (decl, table) = T::connect(db, aux, create, schema, name, &user_args)?;
        Ok((
            decl,
            VTabShim {
                base: sqlite3_vtab::default(),
                table,
            },
        ))
    })
}

// SAFETY: VTabShim is #[repr(C)] with sqlite3_vtab as its first field, as
// rusqlite requires.
unsafe impl<'vtab, T: Table> VTab<'vtab> for VTabShim<T> {
    type Aux = T::Aux;
    type Cursor = CursorShim<T>;

    fn connect(
        db: &mut VTabConnection,
        aux: Option<&Self::Aux>,
        args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        connect_shim(db, aux, false, args)
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<()> {
        guard(T::NAME, || self.table.best_index(info))
    }

    fn open(&'vtab mut self) -> rusqlite::Result<Self::Cursor> {
        let cursor = guard(T::NAME, || self.table.open())?;
        Ok(CursorShim {
            base: sqlite3_vtab_cursor::default(),
            cursor,
            _t: PhantomData,
        })
    }
}

impl<T: Table> Drop for VTabShim<T> {
    fn drop(&mut self) {
        let table = &mut self.table;
        let _ = guard(T::NAME, || {
            table.disconnect();
            Ok(())
        });
    }
}

impl<'vtab, T: Table> CreateVTab<'vtab> for VTabShim<T> {
    const KIND: VTabKind = T::KIND;

    fn create(
        db: &mut VTabConnection,
        aux: Option<&Self::Aux>,
        args: &[&[u8]],
    ) -> rusqlite::Result<(String, Self)> {
        connect_shim(db, aux, true, args)
    }

    fn destroy(&self) -> rusqlite::Result<()> {
        guard(T::NAME, || self.table.destroy())
    }
}

impl<'vtab, T: Table> UpdateVTab<'vtab> for VTabShim<T> {
    fn delete(&mut self, _arg: ValueRef<'_>) -> rusqlite::Result<()> {
        guard(T::NAME, || self.table.delete())
    }

    fn insert(&mut self, args: &Inserts<'_>) -> rusqlite::Result<i64> {
        guard(T::NAME, || {
            let values: Vec<ValueRef<'_>> = args.iter().skip(2).collect();
            self.table.insert(&values)
        })
    }

    fn update(&mut self, _args: &Updates<'_>) -> rusqlite::Result<()> {
        guard(T::NAME, || self.table.update())
    }
}

impl<'vtab, T: Table> TransactionVTab<'vtab> for VTabShim<T> {
    fn begin(&mut self) -> rusqlite::Result<()> {
        guard(T::NAME, || self.table.begin())
    }
    fn sync(&mut self) -> rusqlite::Result<()> {
        guard(T::NAME, || self.table.sync())
    }
    fn commit(&mut self) -> rusqlite::Result<()> {
        guard(T::NAME, || self.table.commit())
    }
    fn rollback(&mut self) -> rusqlite::Result<()> {
        guard(T::NAME, || self.table.rollback())
    }
}

// SAFETY: CursorShim is #[repr(C)] with sqlite3_vtab_cursor first.
unsafe impl<T: Table> VTabCursor for CursorShim<T> {
    fn filter(
        &mut self,
        idx_num: c_int,
        idx_str: Option<&str>,
        args: &Filters<'_>,
    ) -> rusqlite::Result<()> {
        guard(T::NAME, || {
            let values: Vec<ValueRef<'_>> = args.iter().collect();
            self.cursor.filter(idx_num, idx_str, &values)
        })
    }
    fn next(&mut self) -> rusqlite::Result<()> {
        guard(T::NAME, || self.cursor.next())
    }
    fn eof(&self) -> bool {
        guard(T::NAME, || Ok(self.cursor.eof())).unwrap_or(true)
    }
    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        guard(T::NAME, || self.cursor.column(ctx, i))
    }
    fn rowid(&self) -> rusqlite::Result<i64> {
        guard(T::NAME, || self.cursor.rowid())
    }
}

/// Register `T` as module `name` on `conn`, with writes and transactions.
pub fn register<T: Table>(conn: &Connection, name: &str, aux: T::Aux) -> rusqlite::Result<()> {
    conn.create_module(name, update_module_with_tx::<VTabShim<T>>(), Some(aux))
}

/// [`register`], and SQLite calls [`Table::rollback_to`] at every
/// `ROLLBACK TO` and statement rollback of a transaction that wrote to the
/// table: the module is rusqlite's with `iVersion` 2, an `xRollbackTo` and
/// no-op `xSavepoint` / `xRelease` (rusqlite's modules are version 1,
/// without savepoint methods).
pub fn register_with_savepoints<T: Table>(
    conn: &Connection,
    name: &str,
    aux: T::Aux,
) -> rusqlite::Result<()> {
    use rusqlite::ffi;
    use std::ffi::{c_void, CString};
    let theirs = update_module_with_tx::<VTabShim<T>>();
    // rusqlite's `Module` is the `sqlite3_module` and a zero-sized marker;
    // with equal sizes the module sits at offset 0.
    if std::mem::size_of_val(theirs) != std::mem::size_of::<ffi::sqlite3_module>() {
        return Err(rusqlite::Error::ModuleError(
            "rusqlite's virtual-table module has an unexpected layout".into(),
        ));
    }
    // SAFETY: `theirs` is a `'static` module whose only non-zero-sized
    // field is the `sqlite3_module` (sizes checked above), so it starts at
    // offset 0; we copy it (a struct of plain function pointers).
    let mut module: ffi::sqlite3_module =
        unsafe { std::ptr::read(theirs as *const _ as *const ffi::sqlite3_module) };
    module.iVersion = 2;
    // SQLite records a table's savepoint level (and so calls its
    // xRollbackTo for that savepoint) only when it has an xSavepoint.
    module.xSavepoint = Some(savepoint_noop);
    module.xRelease = Some(savepoint_noop);
    module.xRollbackTo = Some(rollback_to_shim::<T>);
    let c_name = CString::new(name).map_err(|_| {
        rusqlite::Error::ModuleError(format!("module name {name:?} holds a NUL byte"))
    })?;
    // The module lives with the aux, freed together when SQLite drops the
    // module (after the last table of it is disconnected).
    let both: *mut WithModule<T::Aux> = Box::into_raw(Box::new(WithModule { aux, module }));
    // SAFETY: live connection; `both` stays valid until SQLite calls
    // `free_with_module` (also when registration fails). Its `aux` is at
    // offset 0 (#[repr(C)]), so the client data is the `*const T::Aux`
    // rusqlite's xConnect reads; the module pointer is into the same box.
    let rc = unsafe {
        ffi::sqlite3_create_module_v2(
            conn.handle(),
            c_name.as_ptr(),
            &(*both).module,
            both as *mut c_void,
            Some(free_with_module::<T>),
        )
    };
    super::function::registered(rc, "module", name)
}

/// [`register_with_savepoints`]' client data: the table's aux first (what
/// rusqlite's xConnect reads), then the module that points at it.
#[repr(C)]
struct WithModule<A> {
    aux: A,
    module: rusqlite::ffi::sqlite3_module,
}

unsafe extern "C" fn free_with_module<T: Table>(p: *mut std::ffi::c_void) {
    // SAFETY: `p` is the box made in `register_with_savepoints`, freed once,
    // when SQLite no longer uses the module.
    drop(unsafe { Box::from_raw(p as *mut WithModule<T::Aux>) });
}

/// xSavepoint and xRelease: nothing to do, but their presence makes SQLite
/// call xRollbackTo for every savepoint, also those opened before the
/// table's first write in the transaction.
unsafe extern "C" fn savepoint_noop(_vtab: *mut sqlite3_vtab, _savepoint: c_int) -> c_int {
    rusqlite::ffi::SQLITE_OK
}

unsafe extern "C" fn rollback_to_shim<T: Table>(
    vtab: *mut sqlite3_vtab,
    _savepoint: c_int,
) -> c_int {
    // SAFETY: SQLite passes the table rusqlite's xConnect made, a
    // `VTabShim<T>` (#[repr(C)], `sqlite3_vtab` first), alive until
    // xDisconnect; SQLite calls its methods one at a time.
    let shim = unsafe { &mut *(vtab as *mut VTabShim<T>) };
    match guard(T::NAME, || shim.table.rollback_to()) {
        Ok(()) => rusqlite::ffi::SQLITE_OK,
        Err(_) => rusqlite::ffi::SQLITE_ERROR,
    }
}

/// Plan a table-valued function call: pass the equality constraint on the
/// hidden argument column `col` as the first filter argument (idx_num 1), or
/// make the plan very expensive when there is none (idx_num 0).
pub fn plan_argument(info: &mut IndexInfo, col: c_int) {
    plan_equality(info, col, 1e12, true);
}

/// Plan a lookup by the equality constraint on `col`, passed as the first
/// filter argument (idx_num 1, cheap), or a scan costing `scan_cost` when
/// there is none (idx_num 0). With `omit` SQLite trusts the lookup; without
/// it SQLite checks the constraint again (a lookup under another collation
/// than the constraint's may return more rows).
pub fn plan_equality(info: &mut IndexInfo, col: c_int, scan_cost: f64, omit: bool) {
    let found = info.constraints().position(|c| {
        c.is_usable()
            && c.column() == col
            && c.operator() == rusqlite::vtab::IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ
    });
    match found {
        Some(i) => {
            let mut u = info.constraint_usage(i);
            u.set_argv_index(1);
            u.set_omit(omit);
            info.set_idx_num(1);
            info.set_estimated_cost(1.0);
        }
        None => {
            info.set_idx_num(0);
            info.set_estimated_cost(scan_cost);
        }
    }
}

/// The associated items and `connect` of an eponymous-only table whose
/// only state is the extension's (`struct T { ext: Arc<Ext> }`), declared
/// with the columns of `$schema`: one line in the `impl Table` instead of
/// the same fifteen in every such table.
macro_rules! ext_eponymous {
    ($name:expr, $cursor:ty, $schema:expr) => {
        type Aux = std::sync::Arc<$crate::state::Ext>;
        type Cursor = $cursor;
        const NAME: &'static str = $name;
        const KIND: rusqlite::vtab::VTabKind = rusqlite::vtab::VTabKind::EponymousOnly;

        fn connect(
            _db: &mut rusqlite::vtab::VTabConnection,
            aux: Option<&std::sync::Arc<$crate::state::Ext>>,
            _create: bool,
            _schema: &str,
            _name: &str,
            _args: &[&str],
        ) -> $crate::error::Result<(String, Self)> {
            let ext = $crate::streams::ext_of($name, aux)?;
            Ok(($schema.into(), Self { ext }))
        }
    };
}
pub(crate) use ext_eponymous;

/// The cursor of a table that has no rows to read (written to only).
pub struct NoRows;

impl TableCursor for NoRows {
    fn filter(&mut self, _: c_int, _: Option<&str>, _: &[ValueRef<'_>]) -> Result<()> {
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        Ok(())
    }

    fn eof(&self) -> bool {
        true
    }

    fn column(&self, ctx: &mut Context, _: c_int) -> Result<()> {
        Ok(ctx.set_result(&rusqlite::types::Null)?)
    }

    fn rowid(&self) -> Result<i64> {
        Ok(0)
    }
}
