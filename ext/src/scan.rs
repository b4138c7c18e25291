//! Reading change rows in position order without materialising them.
//!
//! Each CRR contributes one statement ordered by `(db_version, seq)` through
//! its `db_version` index; a binary heap merges the per-table scans. Memory is
//! one row per table; `LIMIT n` touches O(n) rows per table.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use crsql_stream_core::pack::pack_columns;
use crsql_stream_core::Position;
use rusqlite::types::ValueRef;

use crate::err;
use crate::error::{Error, Result};
use crate::schema::TableInfo;
use crate::sqlite::{DbHandle, RawStmt};
use crate::state::Inner;
use crate::values::to_core;

/// Columns of a per-table scan (see `TableSql::changes_select`).
const S_CID: usize = 0;
const S_COL_VERSION: usize = 1;
const S_DB_VERSION: usize = 2;
const S_SITE: usize = 3;
const S_SEQ: usize = 4;
const S_CL: usize = 5;
const S_VAL: usize = 6;
const S_PK0: usize = 7;

/// Site ids by ordinal (0 is the local site), loaded once per scan.
pub struct SiteMap {
    local: [u8; 16],
    by_ordinal: HashMap<i64, Vec<u8>>,
}

impl SiteMap {
    pub fn load(inner: &Inner, local: [u8; 16]) -> Result<SiteMap> {
        let by_ordinal = inner
            .conn
            .prepare_cached("SELECT ordinal, site_id FROM crsql_site_id WHERE ordinal != 0")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(SiteMap { local, by_ordinal })
    }

    /// The site id of an ordinal, or an error naming the table that uses it.
    pub fn site(&self, ordinal: i64, table: &str) -> Result<&[u8]> {
        if ordinal == 0 {
            return Ok(&self.local);
        }
        self.by_ordinal
            .get(&ordinal)
            .map(Vec::as_slice)
            .ok_or_else(|| {
                err!("crsql_stream: clock row of {table} refers to unknown site ordinal {ordinal}")
            })
    }

    /// Number of known sites (the local one included).
    pub fn count(&self) -> usize {
        self.by_ordinal.len() + 1
    }

    /// The ordinal of a site id, if known.
    pub fn ordinal(&self, site: &[u8]) -> Option<i64> {
        if site == self.local {
            return Some(0);
        }
        self.by_ordinal
            .iter()
            .find(|(_, s)| s.as_slice() == site)
            .map(|(o, _)| *o)
    }
}

struct Scan {
    table: Arc<TableInfo>,
    stmt: RawStmt,
}

/// A merged, position-ordered scan over several CRRs.
pub struct Scanner {
    scans: Vec<Scan>,
    heap: BinaryHeap<Reverse<(i64, i64, usize)>>,
}

/// The current row of a [`Scanner`].
pub struct RowView<'a> {
    pub table: &'a Arc<TableInfo>,
    stmt: &'a RawStmt,
}

impl RowView<'_> {
    pub fn cid(&self) -> ValueRef<'_> {
        self.stmt.column(S_CID)
    }
    pub fn val(&self) -> ValueRef<'_> {
        self.stmt.column(S_VAL)
    }
    pub fn col_version(&self) -> i64 {
        self.stmt.column_i64(S_COL_VERSION)
    }
    pub fn db_version(&self) -> i64 {
        self.stmt.column_i64(S_DB_VERSION)
    }
    pub fn site_ordinal(&self) -> i64 {
        self.stmt.column_i64(S_SITE)
    }
    pub fn seq(&self) -> i64 {
        self.stmt.column_i64(S_SEQ)
    }
    pub fn cl(&self) -> i64 {
        self.stmt.column_i64(S_CL)
    }
    pub fn position(&self) -> Position {
        Position::new(self.db_version(), self.seq())
    }
    /// The primary key in cr-sqlite's packed format.
    pub fn pk(&self) -> Result<Vec<u8>> {
        let n = self.table.pks.len();
        pack_columns((S_PK0..S_PK0 + n).map(|i| to_core(self.stmt.column(i)))).map_err(|source| {
            Error::Pack {
                context: format!(
                    "crsql_stream: cannot pack the primary key of a row of {}",
                    self.table.name
                ),
                source,
            }
        })
    }
}

impl Scanner {
    /// Open one scan per table with `where_sql` (may be empty, else starts
    /// with " WHERE ") and its parameters, and position on the first row.
    pub fn open(
        db: DbHandle,
        tables: &[Arc<TableInfo>],
        where_sql: &str,
        binds: &[ValueRef<'_>],
    ) -> Result<Scanner> {
        let mut s = Scanner {
            scans: Vec::with_capacity(tables.len()),
            heap: BinaryHeap::with_capacity(tables.len()),
        };
        for t in tables {
            let sql = format!(
                "{}{where_sql} ORDER BY c.db_version, c.seq",
                t.sql.changes_select
            );
            let mut stmt = RawStmt::prepare(db, &sql)?;
            for (i, b) in binds.iter().enumerate() {
                stmt.bind(i + 1, *b)?;
            }
            s.scans.push(Scan {
                table: Arc::clone(t),
                stmt,
            });
        }
        for i in 0..s.scans.len() {
            s.step(i)?;
        }
        Ok(s)
    }

    /// An empty scanner (no rows).
    pub fn empty() -> Scanner {
        Scanner {
            scans: Vec::new(),
            heap: BinaryHeap::new(),
        }
    }

    fn step(&mut self, i: usize) -> Result<()> {
        let s = &mut self.scans[i];
        if s.stmt.step()? {
            self.heap.push(Reverse((
                s.stmt.column_i64(S_DB_VERSION),
                s.stmt.column_i64(S_SEQ),
                i,
            )));
        }
        Ok(())
    }

    pub fn peek(&self) -> Option<RowView<'_>> {
        self.heap.peek().map(|Reverse((_, _, i))| {
            let s = &self.scans[*i];
            RowView {
                table: &s.table,
                stmt: &s.stmt,
            }
        })
    }

    /// Position of the current row without borrowing it.
    pub fn peek_position(&self) -> Option<Position> {
        self.heap
            .peek()
            .map(|Reverse((d, s, _))| Position::new(*d, *s))
    }

    pub fn advance(&mut self) -> Result<()> {
        if let Some(Reverse((_, _, i))) = self.heap.pop() {
            self.step(i)?;
        }
        Ok(())
    }

    pub fn is_done(&self) -> bool {
        self.heap.is_empty()
    }
}
