//! The compact layout's statements run once per row (the row read, the
//! row-clock and cell upserts, the insert helper's new row clock), held
//! per connection out of rusqlite's statement cache (DECISIONS D??,
//! "Compact merges: one row read, held statements"). A lookup and return
//! in that cache hashes the SQL text twice and moves the statement in and
//! out of its LRU list: a tenth of a compact package apply, more of the
//! row-by-row merge, spent on two or three statements per row.
//!
//! A statement is found by its SQL text, taken out
//! while it runs and put back reset: a statement that runs while another
//! runs (a user trigger on a compact table, say) is prepared on its own
//! instead of sharing one that is half-stepped. `Ext::finalize_statements`
//! empties it with the connection's cache (`crsql_finalize`, close).

use std::cell::RefCell;

use crate::error::Result;
use crate::sqlite::{DbHandle, RawStmt};

/// Statements held at most; past that the least recently put back goes
/// (up to seven per table, the row read ahead and the multi-row upserts
/// included: nine compact tables merged in turn keep theirs).
const HELD: usize = 64;

/// The held statements of one connection (`Inner::compact_held`).
#[derive(Default)]
pub struct Held {
    /// Most recently used last.
    stmts: RefCell<Vec<(String, RawStmt)>>,
}

impl Held {
    /// Run `f` on the statement of `sql` (prepared on first use), then
    /// reset it (bindings are rebound by every use).
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
