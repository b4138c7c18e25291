//! The eponymous `crsql_changes` virtual table (spec §7).
//!
//! SELECT reads each CRR in `(db_version, seq)` order and merges the
//! per-table scans (`crr::scan`): a cr-sqlite layout CRR one transaction at
//! a time, sorted by seq in memory (or in runs on disk), as an outbound
//! stream reads it, with the pushed-down `db_version` constraints on its
//! index scan and the `site_id` ones applied per row; a compact CRR through
//! its statements. `val` comes from the base table read in key order, not
//! a point query per row.
//! INSERT merges a change (§8, see `merge.rs`).

use std::ffi::c_int;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use rusqlite::types::ValueRef;
use rusqlite::vtab::{Context, IndexConstraintOp, IndexInfo};
use rusqlite::Connection;

use crate::crr::merge::{merge_change, Change};
use crate::crr::scan::{Scanner, SiteFilter, SiteMap};
use crate::crr::values::out;
use crate::error::{Error, Result};
use crate::sqlite::vtab::{register_with_savepoints, Table, TableCursor};
use crate::sqlite::DbHandle;
use crate::state::Ext;

pub const COL_TABLE: c_int = 0;
pub const COL_PK: c_int = 1;
pub const COL_CID: c_int = 2;
pub const COL_VAL: c_int = 3;
pub const COL_COL_VERSION: c_int = 4;
pub const COL_DB_VERSION: c_int = 5;
pub const COL_SITE_ID: c_int = 6;
pub const COL_CL: c_int = 7;
pub const COL_SEQ: c_int = 8;

/// The columns of `crsql_changes`, as cr-sqlite declares them.
const SCHEMA: &str =
    "CREATE TABLE x([table] TEXT NOT NULL, [pk] BLOB NOT NULL, [cid] TEXT NOT NULL, [val] ANY, \
     [col_version] INTEGER NOT NULL, [db_version] INTEGER NOT NULL, [site_id] BLOB NOT NULL, \
     [cl] INTEGER NOT NULL, [seq] INTEGER NOT NULL)";

pub struct ChangesTable {
    ext: Arc<Ext>,
}

pub fn register(conn: &Connection, ext: &Arc<Ext>) -> rusqlite::Result<()> {
    // xRollbackTo drops the row-by-row merge's memo (`merge::RowMemo`).
    register_with_savepoints::<ChangesTable>(conn, "crsql_changes", Arc::clone(ext))
}

/// One pushed-down constraint: which column and operator (see best_index).
#[derive(Clone, Copy)]
enum Pushed {
    DbVersion(&'static str),
    SiteEq,
    SiteNe,
}

impl Pushed {
    fn code(self) -> &'static str {
        match self {
            Pushed::DbVersion("=") => "d=",
            Pushed::DbVersion(">") => "d>",
            Pushed::DbVersion(">=") => "d>=",
            Pushed::DbVersion("<") => "d<",
            Pushed::DbVersion(_) => "d<=",
            Pushed::SiteEq => "s=",
            Pushed::SiteNe => "s!",
        }
    }

    fn from_code(code: &str) -> Option<Pushed> {
        Some(match code {
            "d=" => Pushed::DbVersion("="),
            "d>" => Pushed::DbVersion(">"),
            "d>=" => Pushed::DbVersion(">="),
            "d<" => Pushed::DbVersion("<"),
            "d<=" => Pushed::DbVersion("<="),
            "s=" => Pushed::SiteEq,
            "s!" => Pushed::SiteNe,
            _ => return None,
        })
    }
}

impl Table for ChangesTable {
    crate::sqlite::vtab::ext_eponymous!("crsql_changes", ChangesCursor, SCHEMA);

    fn best_index(&self, info: &mut IndexInfo) -> Result<()> {
        let mut codes = Vec::new();
        let mut idx_num = 0;
        let mut argv = 0;
        let mut usable = Vec::new();
        for (i, c) in info.constraints().enumerate() {
            if !c.is_usable() {
                continue;
            }
            let pushed = match (c.column(), c.operator()) {
                (COL_DB_VERSION, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ) => {
                    Pushed::DbVersion("=")
                }
                (COL_DB_VERSION, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GT) => {
                    Pushed::DbVersion(">")
                }
                (COL_DB_VERSION, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_GE) => {
                    Pushed::DbVersion(">=")
                }
                (COL_DB_VERSION, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LT) => {
                    Pushed::DbVersion("<")
                }
                (COL_DB_VERSION, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_LE) => {
                    Pushed::DbVersion("<=")
                }
                (COL_SITE_ID, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ)
                | (COL_SITE_ID, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_IS) => Pushed::SiteEq,
                (COL_SITE_ID, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_NE)
                | (COL_SITE_ID, IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_ISNOT) => Pushed::SiteNe,
                _ => continue,
            };
            idx_num |= match pushed {
                Pushed::DbVersion(_) => 2,
                _ => 4,
            };
            codes.push(pushed.code());
            usable.push(i);
        }
        for i in usable {
            argv += 1;
            let mut u = info.constraint_usage(i);
            u.set_argv_index(argv);
            // SQLite re-checks every constraint: our filters only narrow the
            // scan and never need to be exact.
            u.set_omit(false);
        }
        let orders: Vec<(c_int, bool)> = info
            .order_bys()
            .map(|o| (o.column(), o.is_order_by_desc()))
            .collect();
        let consumed = matches!(
            orders.as_slice(),
            [] | [(COL_DB_VERSION, false)] | [(COL_DB_VERSION, false), (COL_SEQ, false)]
        );
        info.set_order_by_consumed(consumed);
        info.set_idx_num(idx_num);
        info.set_idx_str(&codes.join(","));
        let cost = match idx_num {
            6 => 1.0,
            2 => 10.0,
            4 => 1e6,
            _ => 1e9,
        };
        info.set_estimated_cost(cost);
        Ok(())
    }

    fn open(&mut self) -> Result<ChangesCursor> {
        Ok(ChangesCursor {
            ext: Arc::clone(&self.ext),
            scanner: Scanner::empty(),
            sites: None,
            rowid: 0,
        })
    }

    fn insert(&mut self, args: &[ValueRef<'_>]) -> Result<i64> {
        let change = Change::from_values(args)?;
        let mut inner = self.ext.lock("crsql_changes")?;
        let n = merge_change(&self.ext, &mut inner, &change)?;
        self.ext.rows_impacted.fetch_add(n, Relaxed);
        Ok(0)
    }

    fn delete(&mut self) -> Result<()> {
        Err(Error::Misuse(
            "Only INSERT and SELECT statements are allowed against the crsql changes table".into(),
        ))
    }

    fn update(&mut self) -> Result<()> {
        self.delete()
    }

    fn commit(&mut self) -> Result<()> {
        self.ext.rows_impacted.store(0, Relaxed);
        Ok(())
    }

    fn rollback(&mut self) -> Result<()> {
        // cr-sqlite keeps the stale count after a rollback (§15 Q5); we reset.
        self.ext.rows_impacted.store(0, Relaxed);
        Ok(())
    }

    fn rollback_to(&mut self) -> Result<()> {
        // What the row-by-row merge keeps may have been undone.
        self.ext.tx.rollbacks.fetch_add(1, Relaxed);
        Ok(())
    }

    fn disconnect(&mut self) {
        // Runs when the connection closes, before SQLite checks for
        // unfinalized statements: drop our cached ones so close succeeds.
        if let Ok(mut inner) = self.ext.lock("crsql_changes") {
            self.ext.finalize_statements(&mut inner);
        }
    }
}

pub struct ChangesCursor {
    ext: Arc<Ext>,
    scanner: Scanner,
    sites: Option<SiteMap>,
    rowid: i64,
}

impl TableCursor for ChangesCursor {
    fn filter(
        &mut self,
        _idx_num: c_int,
        idx_str: Option<&str>,
        args: &[ValueRef<'_>],
    ) -> Result<()> {
        self.scanner = Scanner::empty();
        self.rowid = 0;
        let (tables, sites) = {
            let mut inner = self.ext.lock("crsql_changes")?;
            inner.sync(&self.ext.tx)?;
            // A scan also sees this transaction's own DDL (an alter window).
            inner.refresh_tables(&self.ext.tx, true)?;
            (inner.tables().to_vec(), SiteMap::load(&inner)?)
        };
        // Translate the pushed-down constraints into conditions.
        let mut versions = Vec::new();
        let mut binds: Vec<ValueRef<'_>> = Vec::new();
        let mut filter = SiteFilter::default();
        let codes = idx_str.unwrap_or("").split(',').filter(|s| !s.is_empty());
        for (code, arg) in codes.zip(args.iter()) {
            let site = match arg {
                ValueRef::Blob(b) => sites.ordinal(b),
                _ => None,
            };
            match Pushed::from_code(code) {
                Some(Pushed::DbVersion(op)) => {
                    binds.push(*arg);
                    versions.push(format!("c.db_version {op} ?{}", binds.len()));
                }
                Some(Pushed::SiteEq) => match site {
                    Some(ord) => filter.eq.push(ord),
                    None => return Ok(()), // unknown site or NULL: no rows
                },
                Some(Pushed::SiteNe) => filter.ne.extend(site),
                None => {}
            }
        }
        let versions = versions.join(" AND ");
        self.scanner = Scanner::open(self.ext.db, &tables, &versions, &binds, &filter)?;
        self.sites = Some(sites);
        Ok(())
    }

    fn next(&mut self) -> Result<()> {
        self.scanner.advance()?;
        self.rowid += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.scanner.is_done()
    }

    fn column(&self, ctx: &mut Context, col: c_int) -> Result<()> {
        let (Some(row), Some(sites)) = (self.scanner.peek(), self.sites.as_ref()) else {
            return Ok(ctx.set_result(&rusqlite::types::Null)?);
        };
        match col {
            COL_TABLE => ctx.set_result(&row.table.name)?,
            COL_PK => ctx.set_result(&row.pk()?)?,
            COL_CID => ctx.set_result(&out(row.cid()))?,
            COL_VAL => ctx.set_result(&out(row.val()))?,
            COL_COL_VERSION => ctx.set_result(&row.col_version())?,
            COL_DB_VERSION => ctx.set_result(&row.db_version())?,
            COL_SITE_ID => ctx.set_result(&sites.site(row.site_ordinal(), &row.table.name)?)?,
            COL_CL => ctx.set_result(&row.cl())?,
            COL_SEQ => ctx.set_result(&row.seq())?,
            _ => ctx.set_result(&rusqlite::types::Null)?,
        }
        Ok(())
    }

    fn rowid(&self) -> Result<i64> {
        Ok(self.rowid)
    }
}

/// Make SQLite connect the eponymous table now, so that its xDisconnect runs
/// when the connection closes (and finalizes our cached statements).
pub fn connect_now(db: DbHandle) -> Result<()> {
    let conn = db.connection()?;
    conn.prepare("SELECT 1 FROM crsql_changes LIMIT 0")?;
    Ok(())
}
