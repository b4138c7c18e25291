//! Pure-Rust core of crsql_stream.
//!
//! Nothing here touches SQLite: the packed-column codec (cr-sqlite's `pk`
//! format), the value order used for merge tie-breaks, the merge decision
//! rules on plain types, and stream positions. Everything can be
//! property-tested and fuzzed without a database.
#![forbid(unsafe_code)]

pub mod fract;
pub mod ids;
pub mod merge;
pub mod pack;
pub mod package;
pub mod rowclock;
pub mod value;

pub use ids::{CausalLength, ColVersion, DbVersion, Position, PositionError, Seq, SiteId};
pub use pack::{pack_columns, unpack_columns, PackError};
pub use value::{compare_values, Value, ValueRef};
