//! Debug and interop helpers: `crsql_package_info(pkg)` (the header as
//! JSON) and the table-valued `crsql_package_changes(pkg)` (the changes as
//! rows shaped like `crsql_changes`).

use std::ffi::c_int;

use crsql_stream_core::package::{
    to_hex, Package, PackageKind, FORMAT_VERSION, FORMAT_VERSION_KIND,
};
use rusqlite::types::ValueRef;
use rusqlite::vtab::{Context, IndexInfo, VTabConnection, VTabKind};

use crate::crr::values::{out, to_sql, type_name};
use crate::err;
use crate::error::Result;
use crate::sqlite::vtab::{plan_argument, Table, TableCursor};

const CHANGES: &str = "crsql_package_changes";
/// The hidden `package` argument column of crsql_package_changes.
const COL_PACKAGE: std::ffi::c_int = 9;

/// Decode a package given as a BLOB (binary) or TEXT (JSON).
pub fn decode_arg<'a>(func: &str, v: ValueRef<'a>) -> Result<Package<'a>> {
    let bytes = match v {
        ValueRef::Blob(b) | ValueRef::Text(b) => b,
        other => {
            return Err(err!(
                "{func}: expected a package (BLOB or JSON TEXT), got {}",
                type_name(other)
            ))
        }
    };
    Package::decode(bytes).map_err(|e| err!("{func}: {e}"))
}

/// The header of a package as JSON text.
pub fn package_info(pkg: &Package, len: usize) -> String {
    let tables: Vec<serde_json::Value> = pkg
        .tables
        .iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "schema_hash": format!("{:016x}", t.schema_hash),
                "columns": t.columns,
            })
        })
        .collect();
    serde_json::json!({
        "format": match pkg.kind {
            PackageKind::Changes => FORMAT_VERSION,
            _ => FORMAT_VERSION_KIND,
        },
        "kind": pkg.kind.name(),
        "bytes": len,
        "sender": to_hex(&pkg.sender.0),
        "stream_id": to_hex(&pkg.stream_id.0),
        "stream": pkg.stream,
        "since": [pkg.since.db_version, pkg.since.seq],
        "cursor": [pkg.cursor.db_version, pkg.cursor.seq],
        "part": pkg.part.map(|p| serde_json::json!({"db_version": p.db_version, "last": p.last})),
        "changes": pkg.changes.len(),
        "tables": tables,
        "sites": pkg.sites.iter().map(|s| to_hex(&s.0)).collect::<Vec<_>>(),
    })
    .to_string()
}

pub struct PackageChangesTable;

impl Table for PackageChangesTable {
    type Aux = ();
    type Cursor = PackageChangesCursor;
    const NAME: &'static str = CHANGES;
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
            "CREATE TABLE x([table] TEXT, [pk] BLOB, [cid] TEXT, [val] ANY, [col_version] INTEGER, \
             [db_version] INTEGER, [site_id] BLOB, [cl] INTEGER, [seq] INTEGER, package BLOB HIDDEN)"
                .into(),
            PackageChangesTable,
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        plan_argument(info, COL_PACKAGE);
        Ok(())
    }

    fn open(&mut self) -> Result<PackageChangesCursor> {
        Ok(PackageChangesCursor { pkg: None, pos: 0 })
    }
}

pub struct PackageChangesCursor {
    pkg: Option<Package<'static>>,
    pos: usize,
}

impl TableCursor for PackageChangesCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        args: &[ValueRef<'_>],
    ) -> Result<()> {
        self.pos = 0;
        if idx_num != 1 || args.is_empty() {
            return Err(err!(
                "{CHANGES}: a package argument is required, e.g. SELECT * FROM {CHANGES}(?)"
            ));
        }
        self.pkg = Some(decode_arg(CHANGES, args[0])?.into_owned());
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.pos += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.pkg
            .as_ref()
            .is_none_or(|p| self.pos >= p.changes.len())
    }

    fn column(&self, ctx: &mut Context, col: c_int) -> Result<()> {
        let Some(pkg) = &self.pkg else {
            return Ok(ctx.set_result(&rusqlite::types::Null)?);
        };
        let c = &pkg.changes[self.pos];
        match col {
            0 => ctx.set_result(&pkg.tables[c.table as usize].name)?,
            1 => ctx.set_result(&c.pk.0)?,
            2 => ctx.set_result(&pkg.cid_of(c))?,
            3 => ctx.set_result(&out(to_sql(c.val.as_ref())))?,
            4 => ctx.set_result(&c.col_version)?,
            5 => ctx.set_result(&c.db_version)?,
            6 => ctx.set_result(&pkg.sites[c.site as usize].0)?,
            7 => ctx.set_result(&c.cl)?,
            8 => ctx.set_result(&c.seq)?,
            _ => ctx.set_result(&rusqlite::types::Null)?,
        }
        Ok(())
    }

    fn rowid(&self) -> Result<i64> {
        Ok(self.pos as i64)
    }
}
