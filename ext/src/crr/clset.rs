//! The `clset` module, as cr-sqlite 0.16 has it: `CREATE VIRTUAL TABLE
//! foo_schema USING clset(<column definitions>)` creates the table `foo`
//! with those definitions and makes it a CRR, in one statement; `DROP TABLE
//! foo_schema` drops `foo` and its CRR tables. The virtual table itself has
//! two hidden columns (`alteration`, `schema`) and no rows.

use std::sync::Arc;

use rusqlite::vtab::{IndexInfo, VTabConnection, VTabKind};
use rusqlite::Connection;

use crate::crr::schema::quote_ident;
use crate::crr::{as_crr_in, as_table_in, Atomic};
use crate::err;
use crate::error::{Error, Result};
use crate::sqlite::vtab::{register as register_module, NoRows, Table};
use crate::state::Ext;

pub const CLSET: &str = "clset";
const SUFFIX: &str = "_schema";

pub fn register(conn: &Connection, ext: &Arc<Ext>) -> rusqlite::Result<()> {
    register_module::<ClSetTable>(conn, CLSET, Arc::clone(ext))
}

pub struct ClSetTable {
    ext: Arc<Ext>,
    /// The data table, `foo` for `foo_schema`.
    base: String,
}

impl Table for ClSetTable {
    type Aux = Arc<Ext>;
    type Cursor = NoRows;
    const NAME: &'static str = CLSET;
    const KIND: VTabKind = VTabKind::Default;

    fn connect(
        _db: &mut VTabConnection,
        aux: Option<&Arc<Ext>>,
        create: bool,
        schema: &str,
        name: &str,
        args: &[&str],
    ) -> Result<(String, Self)> {
        let ext = crate::streams::ext_of(CLSET, aux)?;
        let base = match name.strip_suffix(SUFFIX) {
            Some("") => {
                return Err(err!(
                    "{CLSET} {name}: the name of the data table (before _schema) must not be empty"
                ))
            }
            Some(b) => b.to_string(),
            None => {
                return Err(err!(
                    "{name} MUST end with _schema. E.g., {name}_schema. Two tables will be created: {name}_schema for managing the CRDT schemas and {name} for storing the data."
                ))
            }
        };
        if create {
            if schema != "main" {
                return Err(err!(
                    "{CLSET} {name}: create it in the main database, not in {schema:?} (CRRs live in main)"
                ));
            }
            if args.is_empty() {
                return Err(err!(
                    "{CLSET} {name}: give the columns of {base}, e.g. CREATE VIRTUAL TABLE {name} USING clset(id PRIMARY KEY NOT NULL, title)"
                ));
            }
            // No savepoint can open here (see Atomic::Statement).
            let conn = ext.db.connection()?;
            conn.execute_batch(&format!(
                "CREATE TABLE {} ({})",
                quote_ident(&base),
                args.join(",")
            ))
            .map_err(|e| Error::prefixed(&format!("{CLSET} {name}: "), e))?;
            as_crr_in(&ext, &base, Atomic::Statement)?;
        }
        Ok((
            "CREATE TABLE x(alteration TEXT HIDDEN, schema TEXT HIDDEN)".into(),
            ClSetTable { ext, base },
        ))
    }

    fn best_index(&self, _info: &mut IndexInfo) -> Result<()> {
        Ok(())
    }

    fn open(&mut self) -> Result<NoRows> {
        Ok(NoRows)
    }

    fn destroy(&self) -> Result<()> {
        as_table_in(&self.ext, &self.base, Atomic::Statement)?;
        let conn = self.ext.db.connection()?;
        conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", quote_ident(&self.base)))?;
        Ok(())
    }
}
