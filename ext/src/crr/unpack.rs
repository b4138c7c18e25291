//! The eponymous table-valued function `crsql_unpack_columns(packed)` (§10).

use std::ffi::c_int;

use crsql_stream_core::pack::unpack_columns;
use crsql_stream_core::Value;
use rusqlite::types::ValueRef;
use rusqlite::vtab::{Context, IndexInfo, VTabConnection, VTabKind};
use rusqlite::Connection;

use crate::crr::values::{to_sql, type_name};
use crate::error::{Error, Result};
use crate::sqlite::vtab::{plan_argument, register as register_module, Table, TableCursor};

const COL_CELL: c_int = 0;
const COL_PACKAGE: c_int = 1;

pub struct UnpackTable;

pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    register_module::<UnpackTable>(conn, "crsql_unpack_columns", ())
}

impl Table for UnpackTable {
    type Aux = ();
    type Cursor = UnpackCursor;
    const NAME: &'static str = "crsql_unpack_columns";
    const KIND: VTabKind = VTabKind::EponymousOnly;

    fn connect(
        _db: &mut VTabConnection,
        _aux: Option<&()>,
        _create: bool,
        _schema: &str,
        _name: &str,
        _args: &[&str],
    ) -> Result<(String, Self)> {
        Ok((
            "CREATE TABLE x(cell ANY, package BLOB HIDDEN)".into(),
            UnpackTable,
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        plan_argument(info, COL_PACKAGE);
        Ok(())
    }

    fn open(&mut self) -> Result<UnpackCursor> {
        Ok(UnpackCursor {
            package: Vec::new(),
            cells: Vec::new(),
            pos: 0,
        })
    }
}

pub struct UnpackCursor {
    package: Vec<u8>,
    cells: Vec<Value>,
    pos: usize,
}

impl TableCursor for UnpackCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        args: &[ValueRef<'_>],
    ) -> Result<()> {
        self.pos = 0;
        if idx_num != 1 || args.is_empty() {
            return Err(Error::Msg(
                "crsql_unpack_columns: a packed BLOB argument is required, e.g. SELECT cell FROM crsql_unpack_columns(?)"
                    .into(),
            ));
        }
        self.package = match args[0] {
            ValueRef::Blob(b) => b.to_vec(),
            other => {
                return Err(Error::Msg(format!(
                    "crsql_unpack_columns: the package must be a BLOB, got {}",
                    type_name(other)
                )))
            }
        };
        self.cells = unpack_columns(&self.package).map_err(|source| Error::Pack {
            context: "crsql_unpack_columns".into(),
            source,
        })?;
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.pos += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.pos >= self.cells.len()
    }

    fn column(&self, ctx: &mut Context, col: c_int) -> Result<()> {
        match col {
            COL_CELL => ctx.set_result(&crate::crr::values::out(to_sql(
                self.cells[self.pos].as_ref(),
            )))?,
            _ => ctx.set_result(&self.package)?,
        }
        Ok(())
    }

    fn rowid(&self) -> Result<i64> {
        Ok(self.pos as i64)
    }
}
