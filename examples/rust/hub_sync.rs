//! Sync a SQLite file with a crsql-sync hub (docs/server.md), in Rust: the
//! binding's `hub` feature (async, tokio).
//!
//! ```sh
//! crsql-sync serve --data hub/data --schema-dir hub/schema --listen 127.0.0.1:8080 &
//! cd bindings/rust && cargo run --release --features hub --example hub_sync -- \
//!     --db a.db --url ws://127.0.0.1:8080/acme --insert t1='buy milk'
//! ```
//!
//! The database gets the `todos` table of the hub's schema file; each run
//! pushes its own changes, pulls everyone else's, prints the table and exits.
//! Exit code 2 on a refusal of the hub (wrong token, other schema, …), 1 on
//! other errors.

use std::process::ExitCode;
use std::time::Duration;

use crsql_stream_rs::hub::{self, HubError, SyncOptions};
use crsql_stream_rs::rusqlite::Connection;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0);
SELECT crsql_as_crr('todos');
";

/// Open the database, create the table, insert `ID=TITLE` items.
fn open(path: &str, inserts: &[String]) -> Result<Connection, Box<dyn std::error::Error>> {
    let conn = Connection::open(path)?;
    crsql_stream_rs::load(&conn)?;
    conn.execute_batch(SCHEMA)?;
    for item in inserts {
        let (id, title) = item.split_once('=').unwrap_or((item, ""));
        conn.execute(
            "INSERT OR REPLACE INTO todos (id, title) VALUES (?1, ?2)",
            [id, title],
        )?;
    }
    Ok(conn)
}

fn run(db: &str, url: &str, token: Option<String>, inserts: &[String]) -> Result<(), HubError> {
    let local = |e: Box<dyn std::error::Error>| HubError::Database(e.to_string());
    let mut conn = open(db, inserts).map_err(local)?;
    let mut opts = SyncOptions::new()
        .timeout(Duration::from_secs(30))
        .progress(|p| eprint!("\r{}/{} changes", p.done(), p.total()));
    opts.token = token;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HubError::Config(e.to_string()))?;
    let moved = rt.block_on(hub::sync(&mut conn, url, &opts))?;
    eprintln!("\npushed {}, pulled {} changes", moved.pushed, moved.pulled);
    let rows = conn
        .prepare("SELECT id, title FROM todos ORDER BY id")
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| local(e.into()))?;
    for (id, title) in rows {
        println!("{id}\t{}", title.unwrap_or_default());
    }
    Ok(())
}

fn main() -> ExitCode {
    let (mut db, mut url, mut token, mut inserts) = (None, None, None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--db", Some(v)) => db = Some(v),
            ("--url", Some(v)) => url = Some(v),
            ("--token", Some(v)) => token = Some(v),
            ("--insert", Some(v)) => inserts.push(v),
            _ => db = None,
        }
    }
    let (Some(db), Some(url)) = (db, url) else {
        eprintln!("usage: hub_sync --db FILE --url ws://HOST:PORT/<tenant> [--token T] [--insert ID=TITLE]");
        return ExitCode::from(1);
    };
    match run(&db, &url, token, &inserts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nhub_sync: {e}");
            // A refusal that retrying cannot fix: 2, as `crsql-sync sync`.
            let refused = e.code().is_some_and(|c| c.is_fatal());
            ExitCode::from(if refused { 2 } else { 1 })
        }
    }
}
