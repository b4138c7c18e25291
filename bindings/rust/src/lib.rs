//! Rust binding for the `crsql_stream` SQLite extension (cr-sqlite
//! compatible CRRs plus stream virtual tables).
//!
//! ```no_run
//! use crsql_stream_rs::{self as crsql, Inbound, InboundOptions, Outbound, OutboundOptions};
//! use rusqlite::Connection;
//!
//! # fn main() -> rusqlite::Result<()> {
//! let a = Connection::open("a.db")?;
//! let b = Connection::open("b.db")?;
//! crsql::load(&a)?;
//! crsql::load(&b)?;
//! for db in [&a, &b] {
//!     db.execute_batch(
//!         "CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT);
//!          SELECT crsql_as_crr('todos');",
//!     )?;
//! }
//! let to_b = Outbound::create(&a, "to_b", &OutboundOptions::new().exclude_site(crsql::site_id(&b)?))?;
//! let from_a = Inbound::create(&b, "from_a", &InboundOptions::new().from(crsql::site_id(&a)?))?;
//! for package in to_b.packages() {
//!     from_a.apply(&package?.bytes)?; // any transport in between
//! }
//! to_b.ack(from_a.last_applied()?)?; // the receiver reports where it is
//! crsql::close(a)?;
//! crsql::close(b)?;
//! # Ok(())
//! # }
//! ```
//!
//! Every error is a [`rusqlite::Error`]; errors raised by the extension are
//! `rusqlite::Error::SqliteFailure(_, Some(message))` with its message.
#![deny(unsafe_code)]
// `load_from` needs one unsafe call (rusqlite's load_extension); that module
// opts back in, nothing else does.

mod cursor;
#[allow(unsafe_code)]
mod load;
mod stream;

#[cfg(feature = "hub")]
pub mod hub;

use rusqlite::Connection;

pub use cursor::{Cursor, ParseCursorError};
pub use load::{find_extension, load, load_from, ENV_VAR, LIBRARY_FILE};
pub use stream::{Encoding, Inbound, InboundOptions, Outbound, OutboundOptions, Package, Packages};

/// The rusqlite this crate is built on (`=0.38.0`), whose `Connection`
/// every function here takes. Use it through this path
/// (`crsql_stream_rs::rusqlite::Connection`), or depend on exactly
/// `rusqlite = "=0.38.0"` yourself: a build cannot hold two rusqlite versions
/// (each one's `libsqlite3-sys` declares `links = "sqlite3"`), so
/// `cargo add rusqlite` picking a newer one fails to resolve.
pub use rusqlite;

/// A site id: 16 bytes, `crsql_site_id()`.
pub type SiteId = [u8; 16];

/// This database's site id (`crsql_site_id()`).
pub fn site_id(conn: &Connection) -> rusqlite::Result<SiteId> {
    conn.query_row("SELECT crsql_site_id()", [], |r| r.get(0))
}

/// The database's current db_version (`crsql_db_version()`).
pub fn db_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT crsql_db_version()", [], |r| r.get(0))
}

/// The extension's version (`crsql_version()`).
pub fn version(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row("SELECT crsql_version()", [], |r| r.get(0))
}

/// Close a connection cleanly: `SELECT crsql_finalize()` (the extension
/// finalizes its cached statements), then `Connection::close`. Dropping the
/// connection also works (the extension finalizes when SQLite disconnects
/// it); this reports errors instead of ignoring them.
pub fn close(conn: Connection) -> rusqlite::Result<()> {
    conn.query_row("SELECT crsql_finalize()", [], |r| r.get::<_, String>(0))?;
    conn.close().map_err(|(_, e)| e)
}

/// Lower-case hex of a site id, as stream arguments and `crsql_streams`
/// write it.
pub fn hex(site: &SiteId) -> String {
    site.iter().map(|b| format!("{b:02x}")).collect()
}

/// Move every pending package of `from` into `to`, then acknowledge on
/// `from` what `to` applied. The streams may be on different connections
/// (typically two databases in one process). Returns the number of packages
/// moved. It first acknowledges what `to` already has (an ack may have been
/// lost), so nothing is sent twice. Stops at the first error; what was
/// applied stays applied and the next call resumes from there.
pub fn pump(from: &Outbound<'_>, to: &Inbound<'_>) -> rusqlite::Result<usize> {
    from.ack(to.last_applied()?)?;
    let mut moved = 0;
    let result = from.packages().try_for_each(|p| {
        to.apply(&p?.bytes)?;
        moved += 1;
        Ok(())
    });
    if moved > 0 {
        from.ack(to.last_applied()?)?;
    }
    result.map(|()| moved)
}

/// What [`sync`] moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Packages applied on `b`.
    pub a_to_b: usize,
    /// Packages applied on `a`.
    pub b_to_a: usize,
}

/// How many rounds [`sync`] runs at most before it reports that the two
/// databases do not settle (as the Python and Node `sync` default).
pub const MAX_SYNC_ROUNDS: usize = 10_000;

fn misuse(message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISUSE),
        Some(message),
    )
}

/// Sync two databases open in this process, both ways, until no package
/// moves (the Python binding's `sync`, with the same stream names), and
/// return how many packages moved each way.
///
/// On each side it creates, if missing, the outbound stream
/// `crsql_sync_to_<peer site id in hex>` (leaving out the peer's own changes)
/// and the inbound stream `crsql_sync_from_<peer site id in hex>` (pinned to
/// the peer), so later calls, also after a restart, send only what is new.
///
/// Fails with `SQLITE_MISUSE` if `a` and `b` are the same database (same
/// site id) or if packages still move after [`MAX_SYNC_ROUNDS`] rounds
/// (another writer keeps adding changes); what moved stays applied.
pub fn sync(a: &Connection, b: &Connection) -> rusqlite::Result<SyncStats> {
    sync_with_progress(a, b, |_, _| {})
}

/// Feeds a `progress(done, total)` callback from `lag_changes` of the
/// outbound streams: `total` is what was left at the start plus whatever was
/// written meanwhile, `done` what left the streams since; both only grow,
/// and `done == total` once every stream has caught up.
struct Progress<'s, F> {
    callback: F,
    outs: [&'s Outbound<'s>; 2],
    done: u64,
    total: u64,
}

impl<'s, F: FnMut(u64, u64)> Progress<'s, F> {
    fn start(mut callback: F, outs: [&'s Outbound<'s>; 2]) -> rusqlite::Result<Self> {
        let total = Self::left(&outs)?;
        callback(0, total);
        Ok(Progress {
            callback,
            outs,
            done: 0,
            total,
        })
    }

    fn left(outs: &[&Outbound<'_>; 2]) -> rusqlite::Result<u64> {
        Ok(outs[0].lag_changes()? + outs[1].lag_changes()?)
    }

    fn update(&mut self) -> rusqlite::Result<()> {
        let left = Self::left(&self.outs)?;
        if self.done + left > self.total {
            self.total = self.done + left;
        } else {
            self.done = self.total - left;
        }
        (self.callback)(self.done, self.total);
        Ok(())
    }
}

/// [`sync`], calling `progress(done, total)` before the first package and
/// after each direction of every round: `total` is the number of changes
/// the two outbound streams had left to send (their `lag_changes`) at the
/// start, plus any written meanwhile, and `done` how many of them have been
/// sent and acknowledged since. Both only grow; the last call has
/// `done == total`.
pub fn sync_with_progress(
    a: &Connection,
    b: &Connection,
    progress: impl FnMut(u64, u64),
) -> rusqlite::Result<SyncStats> {
    let (site_a, site_b) = (site_id(a)?, site_id(b)?);
    if site_a == site_b {
        return Err(misuse(format!(
            "crsql_stream: sync: both connections are the same database (site {})",
            hex(&site_a)
        )));
    }
    let out = |conn, peer: SiteId| {
        Outbound::open_or_create(
            conn,
            &format!("crsql_sync_to_{}", hex(&peer)),
            &OutboundOptions::new().exclude_site(peer),
        )
    };
    let inb = |conn, peer: SiteId| {
        Inbound::open_or_create(
            conn,
            &format!("crsql_sync_from_{}", hex(&peer)),
            &InboundOptions::new().from(peer),
        )
    };
    let (a_out, b_in) = (out(a, site_b)?, inb(b, site_a)?);
    let (b_out, a_in) = (out(b, site_a)?, inb(a, site_b)?);
    let mut stats = SyncStats::default();
    let mut meter = Progress::start(progress, [&a_out, &b_out])?;
    // Applying one side's packages can leave a heartbeat for the other (its
    // copy of the peer's changes, filtered out): a few rounds settle it.
    for _ in 0..MAX_SYNC_ROUNDS {
        let ab = pump(&a_out, &b_in)?;
        meter.update()?;
        let ba = pump(&b_out, &a_in)?;
        meter.update()?;
        if ab + ba == 0 {
            return Ok(stats);
        }
        stats.a_to_b += ab;
        stats.b_to_a += ba;
    }
    Err(misuse(format!(
        "crsql_stream: sync: still moving packages after {MAX_SYNC_ROUNDS} rounds"
    )))
}
