//! crsql_stream: a SQLite loadable extension that makes tables conflict-free
//! replicated relations, compatible with cr-sqlite 0.16.
//!
//! All `unsafe` code is in [`sqlite`]; the rest of the crate denies it.
#![deny(unsafe_code)]

pub mod crr;
pub mod error;
pub mod functions;
pub mod sqlite;
pub mod state;
pub mod streams;

use std::sync::Arc;

use rusqlite::Connection;

use crate::error::{guard, Error};
use crate::sqlite::DbHandle;
use crate::state::Ext;

/// Oldest SQLite we run on needs RETURNING (3.35); we test down to 3.40.
const MIN_SQLITE: i32 = 3_035_000;

/// Names of the virtual-table modules the extension registers.
pub const MODULES: &[&str] = &[
    "crsql_changes",
    "crsql_unpack_columns",
    "crsql_OutboundStream",
    "crsql_InboundStream",
    "crsql_streams",
    "crsql_package_changes",
    "crsql_change_counter",
    "crsql_internal_merge",
    "clset",
];

/// Entry-point callback for the loadable extension (`sqlite3_crsqlstream_init`):
/// [`register`] on the loader's connection. `false`: not a persistent load.
pub fn init(conn: Connection) -> rusqlite::Result<bool> {
    register(&conn)?;
    Ok(false)
}

/// Register every function and module of the extension on a connection.
///
/// This is what loading the `.so` does; an application that compiles the
/// extension in (the crate without its default `loadable` feature, as
/// bindings/rust's `static` feature does) calls it on each connection it
/// opens. Idempotent: a second call on the same connection does nothing.
/// Panics are caught and returned as errors.
pub fn register(conn: &Connection) -> rusqlite::Result<()> {
    guard("crsql_stream: load", || {
        let v = sqlite::libversion_number();
        if v < MIN_SQLITE {
            return Err(Error::Msg(format!(
                "crsql_stream needs SQLite 3.35.0 or newer; this process runs SQLite {}.{}.{}",
                v / 1_000_000,
                v / 1000 % 1000,
                v % 1000
            )));
        }
        let db = DbHandle::of(conn);
        if Ext::existing(db).is_some() {
            return Ok(());
        }
        let (site_id, merge_equal_values) = crr::bootstrap(conn)?;
        // A database whose stream state predates a column gets it now. On a
        // read-only database this cannot run, and nothing there writes state.
        let _ = streams::migrate_state(conn);
        let ext = Ext::new(db, site_id, merge_equal_values)?;
        functions::register(conn, &ext)?;
        crr::changes::register(conn, &ext)?;
        crr::unpack::register(conn)?;
        crr::clset::register(conn, &ext)?;
        sqlite::vtab::register::<streams::outbound::OutboundTable>(
            conn,
            streams::OUTBOUND,
            Arc::clone(&ext),
        )?;
        sqlite::vtab::register::<streams::inbound::InboundTable>(
            conn,
            streams::INBOUND,
            Arc::clone(&ext),
        )?;
        sqlite::vtab::register::<streams::observe::StreamsTable>(
            conn,
            "crsql_streams",
            Arc::clone(&ext),
        )?;
        sqlite::vtab::register::<streams::peers::PeersTable>(
            conn,
            "crsql_peers",
            Arc::clone(&ext),
        )?;
        sqlite::vtab::register::<crr::counts::CounterTable>(
            conn,
            crr::counts::COUNTER,
            Arc::clone(&ext),
        )?;
        sqlite::vtab::register::<streams::inspect::PackageChangesTable>(
            conn,
            "crsql_package_changes",
            (),
        )?;
        streams::batch::register(conn, &ext)?;
        crr::changes::connect_now(db)?;
        // Likewise the change counts behind `lag_changes` (crr::counts),
        // once the functions are registered: counting a compact CRR calls
        // `crsql_internal_run_count`.
        let _ = crr::counts::migrate(&ext);
        Ok(())
    })
}
