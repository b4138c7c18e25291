//! Opening databases with the extension compiled in, and what the hub and
//! the client compute from them.

use std::path::Path;
use std::time::Duration;

use crsql_stream_rs::rusqlite::{self, Connection};

use crate::protocol::{hex, Site};

// The client-side helpers (schema hash, stream names and positions) live in
// the Rust binding's hub client, which `crsql-sync sync` runs; the hub uses
// the same ones.
pub use crsql_stream_rs::hub::db::*;
pub use crsql_stream_rs::{db_version, site_id};

/// Open a database and register the extension on it.
pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Before loading: on a new file, loading creates the extension's tables
    // in a write transaction that waits for another connection creating
    // them at the same moment.
    conn.busy_timeout(Duration::from_secs(30))?;
    crsql_stream_rs::load(&conn)?;
    Ok(conn)
}

/// Hub side: the inbound stream of a client's pushes.
pub fn hub_in(site: &Site) -> String {
    format!("crsql_hub_in_{}", hex(site))
}
/// Hub side: the outbound stream towards a client.
pub fn hub_out(site: &Site) -> String {
    format!("crsql_hub_out_{}", hex(site))
}
