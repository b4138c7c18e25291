//! The statements the extension runs once per row or change, held per
//! connection out of rusqlite's statement cache (DECISIONS D53, "One
//! statement holder for every merge"): every merge's row-clock read, key
//! insert, one-column upsert and clock write, the compact layout's row
//! read, row-clock and cell upserts and its insert helper's new row clock.
//! A lookup and return in that cache hashes the SQL text twice and moves
//! the statement in and out of its LRU list: a tenth of a package apply,
//! more of the row-by-row merge, spent on two or three statements per row.
//!
//! A statement is found by its SQL text, taken out while it runs and put
//! back reset: a statement that runs while another runs (a user trigger
//! merging during a merge, say) is prepared on its own instead of sharing
//! one that is half-stepped. `Ext::finalize_statements` empties it with
//! the connection's cache (`crsql_finalize`, close).

use std::cell::RefCell;

use rusqlite::types::ValueRef;

use crate::error::Result;
use crate::sqlite::{DbHandle, RawStmt};

/// Statements held at most; past that the least recently put back goes.
/// A narrow table merged keeps up to four plus one upsert per column
/// merged alone, a compact one up to sixteen (its `INSERT OR IGNORE`s of
/// four sizes for rows and cells, DECISIONS D56): 128 keeps those of
/// eight to a dozen tables merged in turn.
const HELD: usize = 128;

/// The held statements of one connection (`Inner::held`).
#[derive(Default)]
pub struct Held {
    /// Most recently used last.
    stmts: RefCell<Vec<(String, RawStmt)>>,
}

impl Held {
    /// Run `f` on the statement of `sql` (prepared on first use), then
    /// reset it, also after an error (bindings are rebound by every use).
    pub fn run<R>(
        &self,
        db: DbHandle,
        sql: &str,
        f: impl FnOnce(&mut RawStmt) -> Result<R>,
    ) -> Result<R> {
        let (key, mut stmt) = match self.take(sql) {
            Some(held) => held,
            None => (sql.to_string(), RawStmt::prepare(db, sql)?),
        };
        let r = f(&mut stmt);
        stmt.reset();
        self.put(key, stmt);
        r
    }

    /// Run the statement of `sql` to its end with `values` bound.
    pub fn exec<'v>(
        &self,
        db: DbHandle,
        sql: &str,
        values: impl IntoIterator<Item = ValueRef<'v>>,
    ) -> Result<()> {
        self.run(db, sql, |stmt| {
            for (i, v) in values.into_iter().enumerate() {
                stmt.bind(i + 1, v)?;
            }
            while stmt.step()? {}
            Ok(())
        })
    }

    fn take(&self, sql: &str) -> Option<(String, RawStmt)> {
        let mut stmts = self.stmts.borrow_mut();
        // Newest first: a row's statements are used in turn.
        let i = stmts.iter().rposition(|(s, _)| s == sql)?;
        Some(stmts.remove(i))
    }

    fn put(&self, sql: String, stmt: RawStmt) {
        let mut stmts = self.stmts.borrow_mut();
        if stmts.len() >= HELD {
            stmts.remove(0);
        }
        stmts.push((sql, stmt));
    }
}
