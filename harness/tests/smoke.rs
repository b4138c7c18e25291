use crsql_stream_harness::open_memory;

#[test]
fn extension_loads_and_reports_a_site_id() {
    let conn = open_memory();
    let site: Vec<u8> = conn
        .query_row("SELECT crsql_site_id()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(site.len(), 16);
    assert_eq!(site[6] & 0xF0, 0x40, "UUID v4 version nibble");
}

/// Connections that load the extension at the same moment on a new file
/// all succeed and agree on its site id: creating the global tables and
/// the local site id is one write transaction, not a check then a write
/// another connection can slip between (a hub opening a new tenant from
/// two tasks failed with "UNIQUE constraint failed: crsql_site_id.ordinal").
#[test]
fn connections_loading_at_once_on_a_new_file_agree_on_the_site_id() {
    use std::sync::{Arc, Barrier};
    const THREADS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    for round in 0..40 {
        let path = dir.path().join(format!("new{round}.db"));
        let start = Arc::new(Barrier::new(THREADS));
        let sites: Vec<Result<Vec<u8>, String>> = (0..THREADS)
            .map(|_| {
                let (path, start) = (path.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    let conn = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
                    conn.busy_timeout(std::time::Duration::from_secs(10))
                        .map_err(|e| e.to_string())?;
                    start.wait();
                    crsql_stream_harness::load(&conn).map_err(|e| e.to_string())?;
                    conn.query_row("SELECT crsql_site_id()", [], |r| r.get(0))
                        .map_err(|e| e.to_string())
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("loader thread"))
            .collect();
        let first = sites[0]
            .clone()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        for s in &sites {
            assert_eq!(
                s.as_ref().unwrap_or_else(|e| panic!("round {round}: {e}")),
                &first,
                "round {round}: every connection reports the one site id"
            );
        }
    }
}
