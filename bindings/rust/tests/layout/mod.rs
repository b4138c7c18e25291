//! The CRR layout the binding suites run on, as the harness does
//! (DECISIONS D42): `$CRSQL_TEST_LAYOUT` is `crsqlite` (the default) or
//! `compact`. Every database the suites open through [`load`] gets it as
//! its `crr-layout` setting, so their `crsql_as_crr` calls create that
//! layout.

use crsql_stream_rs::rusqlite::Connection;

/// Load the extension, then set the suites' layout (nothing is written for
/// the default, or when the database already has the setting).
pub fn load(conn: &Connection) {
    crsql_stream_rs::load(conn).expect("load the extension");
    let layout = match std::env::var("CRSQL_TEST_LAYOUT").as_deref() {
        Err(_) | Ok("") | Ok("crsqlite") => return,
        Ok("compact") => "compact",
        Ok(other) => panic!("CRSQL_TEST_LAYOUT must be 'crsqlite' or 'compact', got {other:?}"),
    };
    let current: String = conn
        .query_row("SELECT crsql_config_get('crr-layout')", [], |r| r.get(0))
        .expect("read crr-layout");
    if current != layout {
        conn.query_row(
            "SELECT crsql_config_set('crr-layout', ?1)",
            [layout],
            |_| Ok(()),
        )
        .expect("set crr-layout");
    }
}
