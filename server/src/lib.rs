//! crsql-sync: a sync hub for crsql_stream databases (`serve`), its client
//! (`sync`) and a status tool (`status`). See docs/server.md and
//! docs/protocol.md.

pub mod auth;
pub mod client;
pub mod db;
pub mod hub;
pub mod metrics;
pub mod status;
pub mod tls;

pub use crsql_sync_protocol as protocol;
