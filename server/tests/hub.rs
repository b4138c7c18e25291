//! The hub as a real process (the built binary) on 127.0.0.1, real files.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use crsql_stream_rs::rusqlite::Connection;
use crsql_sync::protocol::{hex, ErrorCode, Frame, Hello, Pos, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message;

const CLIENTS: usize = 20;

#[test]
fn twenty_clients_converge_through_cut_connections_and_a_killed_hub() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = Hub::start(dir.path(), 0, &[]);
    let port = hub.port;
    let url = hub.url("acme");
    let paths: Vec<_> = (0..CLIENTS)
        .map(|i| dir.path().join(format!("c{i}.db")))
        .collect();
    let conns: Vec<Connection> = paths.iter().map(|p| client_db(p)).collect();
    let mut syncs: Vec<_> = paths.iter().map(|p| sync_forever(p, &url)).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let mut written = BTreeSet::new();
    let mut n = 0u64;
    let (mut cuts, mut hub_kills) = (0, 0);
    let started = Instant::now();
    let run_for = Duration::from_secs(8);
    let mut next_chaos = Instant::now() + Duration::from_millis(200);
    let mut hub_killed_at: Option<Instant> = None;
    while started.elapsed() < run_for {
        let client = rng.gen_range(0..CLIENTS);
        n += 1;
        if let Some(k) = random_txn(&conns[client], client, n, &mut rng) {
            written.insert(k);
        }
        if Instant::now() >= next_chaos {
            next_chaos = Instant::now() + Duration::from_millis(rng.gen_range(100..400));
            // Cut a random client's connection: kill -9 its sync process
            // (mid-transaction, maybe) and start it again.
            let v = rng.gen_range(0..CLIENTS);
            let _ = syncs[v].kill();
            let _ = syncs[v].wait();
            syncs[v] = sync_forever(&paths[v], &url);
            cuts += 1;
        }
        if hub_killed_at.is_none() && started.elapsed() > run_for / 2 {
            hub.kill9();
            hub_kills += 1;
            hub_killed_at = Some(Instant::now());
        }
        if let Some(t) = hub_killed_at {
            if t.elapsed() > Duration::from_millis(300)
                && hub.child.try_wait().ok().flatten().is_some()
            {
                hub = Hub::start(dir.path(), port, &[]);
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        written.len() > 100,
        "only {} transactions committed",
        written.len()
    );
    // Live sync reached other clients while running: c0 has rows of others.
    let before: i64 = conns[0]
        .query_row("SELECT count(*) FROM log WHERE client != 0", [], |r| {
            r.get(0)
        })
        .unwrap();
    for mut s in syncs {
        let _ = s.kill();
        let _ = s.wait();
    }
    // Settle: every client pushes (round 1) and then pulls everything (round 2).
    for round in 0..2 {
        for p in &paths {
            let (code, _, err) = sync_once(p, &url, &[]);
            assert_eq!(code, Some(0), "round {round} {}: {err}", p.display());
        }
    }
    let hub_conn = crsql_sync::db::open(&hub.db_path("acme")).unwrap();
    let expected = state(&hub_conn);
    let logged: BTreeSet<String> = rows(&hub_conn, "SELECT id FROM log")
        .into_iter()
        .map(|s| {
            s.trim_start_matches("Text(\"")
                .trim_end_matches("\")")
                .to_string()
        })
        .collect();
    assert_eq!(logged, written, "the hub lost or invented transactions");
    for (i, c) in conns.iter().enumerate() {
        let got = state(c);
        assert!(got == expected, "client {i} differs from the hub");
    }
    let (code, log) = hub.stop();
    assert_eq!(code, Some(0), "hub exit after SIGTERM: {log}");
    assert!(log.contains("stopped"), "{log}");
    eprintln!(
        "{} transactions by {CLIENTS} clients, {cuts} cut connections, {hub_kills} hub SIGKILL; {before} foreign log rows on c0 before settling",
        written.len()
    );
    assert!(
        before > 0,
        "no change travelled while the clients were connected"
    );
}

#[test]
fn auth_refuses_wrong_tokens_read_only_pushes_and_non_member_sites() {
    let dir = tempfile::tempdir().unwrap();
    let writer = client_db(&dir.path().join("writer.db"));
    let outsider = client_db(&dir.path().join("outsider.db"));
    let reader = client_db(&dir.path().join("reader.db"));
    let rw = crsql_sync::auth::token_hash_hex(b"rw-token");
    let ro = crsql_sync::auth::token_hash_hex(b"ro-token");
    std::fs::write(
        dir.path().join("auth.toml"),
        format!(
            "[tenants.acme]\nwriters = [\"{}\"]\ntokens = [{{ sha256 = \"{rw}\" }}, {{ sha256 = \"{ro}\", read_only = true }}]\n",
            hex(&site(&writer))
        ),
    )
    .unwrap();
    let auth = dir.path().join("auth.toml").display().to_string();
    let hub = Hub::start(dir.path(), 0, &["--auth", &auth]);
    let url = hub.url("acme");
    for (c, who) in [
        (&writer, "writer"),
        (&outsider, "outsider"),
        (&reader, "reader"),
    ] {
        c.execute("INSERT INTO log VALUES (?1, 0, 0)", [who])
            .unwrap();
    }
    let hub_rows = || {
        let h = crsql_sync::db::open(&hub.db_path("acme")).unwrap();
        rows(&h, "SELECT id FROM log ORDER BY id")
    };

    let p = |n: &str| dir.path().join(n);
    let (code, _, err) = sync_once(&p("writer.db"), &url, &["--token", "wrong"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("unauthorized") && err.contains("wrong token"),
        "{err}"
    );
    let (code, _, err) = sync_once(&p("writer.db"), &url, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("unauthorized") && err.contains("needs a token"),
        "{err}"
    );
    let (code, _, err) = sync_once(&p("writer.db"), &hub.url("other"), &["--token", "rw-token"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("unauthorized") && err.contains("not in the hub's auth file"),
        "{err}"
    );

    // A read-only token: `sync` only pulls (its local change stays here);
    // a client that pushes anyway is refused.
    let (code, _, err) = sync_once(&p("reader.db"), &url, &["--token", "ro-token"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("read-only"), "{err}");
    let package: Vec<u8> = {
        reader
            .execute_batch("CREATE VIRTUAL TABLE t USING crsql_OutboundStream()")
            .unwrap();
        reader
            .query_row("SELECT package FROM t LIMIT 1", [], |r| r.get(0))
            .unwrap()
    };
    let (hash, reader_site) = (crsql_sync::db::schema_hash(&reader).unwrap(), site(&reader));
    let port = hub.port;
    let (code, message) = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut ws = raw(port, "acme").await;
            let mut h = Frame::decode(&hello(reader_site, hash)).unwrap();
            if let Frame::Hello(h) = &mut h {
                h.token = b"ro-token".to_vec();
            }
            ws.send(Message::Binary(h.encode().into())).await.unwrap();
            ws.send(Message::Binary(Frame::Package(package).encode().into()))
                .await
                .unwrap();
            refused(&mut ws).await
        });
    assert_eq!(code, ErrorCode::ReadOnly, "{message}");
    assert!(message.contains("not applied"), "{message}");

    let (code, _, err) = sync_once(&p("outsider.db"), &url, &["--token", "rw-token"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("unauthorized") && err.contains("is not a writer"),
        "{err}"
    );
    assert!(
        hub_rows().is_empty(),
        "a refused push was applied: {:?}",
        hub_rows()
    );

    let (code, _, err) = sync_once(&p("writer.db"), &url, &["--token", "rw-token"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(hub_rows(), vec!["Text(\"writer\")"]);
    // A read-only token still pulls.
    let fresh = client_db(&p("fresh.db"));
    let (code, _, err) = sync_once(&p("fresh.db"), &url, &["--token", "ro-token"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(rows(&fresh, "SELECT id FROM log"), vec!["Text(\"writer\")"]);
    let metrics = hub.http_get("/metrics");
    assert!(
        metrics.contains("crsql_sync_errors_total{code=\"read_only\"} 1"),
        "{metrics}"
    );
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn raw(port: u16, tenant: &str) -> Ws {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    cfg.max_message_size = Some(64 << 20);
    cfg.max_frame_size = Some(64 << 20);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://127.0.0.1:{port}/{tenant}"),
        tcp,
        Some(cfg),
    )
    .await
    .unwrap();
    ws
}

/// The error frame the hub answers with, and that it then closes.
async fn refused(ws: &mut Ws) -> (ErrorCode, String) {
    let mut error = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("hub answered")
        {
            Some(Ok(Message::Binary(b))) => match Frame::decode(&b).unwrap() {
                Frame::Error(e) => error = Some((e.code, e.message)),
                _ => continue,
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        }
    }
    error.expect("an error frame before the close")
}

fn hello(site: [u8; 16], schema_hash: [u8; 16]) -> Vec<u8> {
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        site,
        schema_hash,
        tenant: "acme".into(),
        token: vec![],
        positions: vec![],
    })
    .encode()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_close_that_connection_and_the_hub_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), 0, &["--max-frame", "65536"]);
    let port = hub.port;
    let url = hub.url("acme");
    let a_path = dir.path().join("a.db");
    let b_path = dir.path().join("b.db");
    let (a_site, hash, package) = {
        let a = client_db(&a_path);
        a.execute("INSERT INTO log VALUES ('a1', 1, 1)", [])
            .unwrap();
        let pkg: Vec<u8> = {
            a.execute_batch("CREATE VIRTUAL TABLE t USING crsql_OutboundStream()")
                .unwrap();
            a.query_row("SELECT package FROM t LIMIT 1", [], |r| r.get(0))
                .unwrap()
        };
        a.execute_batch("DROP TABLE t").unwrap();
        (site(&a), crsql_sync::db::schema_hash(&a).unwrap(), pkg)
    };
    drop(client_db(&b_path));
    // A well-behaved client stays connected through all of it.
    let mut good = raw(port, "acme").await;
    good.send(Message::Binary(hello([7; 16], hash).into()))
        .await
        .unwrap();
    let welcome = tokio::time::timeout(Duration::from_secs(10), good.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(
        Frame::decode(&welcome.into_data()).unwrap(),
        Frame::Welcome(_)
    ));

    let cases: Vec<(&str, Vec<Message>, ErrorCode, &str)> = vec![
        (
            "garbage first",
            vec![Message::Binary(vec![0xff, 1, 2].into())],
            ErrorCode::BadFrame,
            "unknown frame type 0xff",
        ),
        (
            "empty",
            vec![Message::Binary(vec![].into())],
            ErrorCode::BadFrame,
            "empty frame",
        ),
        (
            "text",
            vec![Message::Text("hello".into())],
            ErrorCode::BadFrame,
            "binary messages only",
        ),
        (
            "future version",
            vec![Message::Binary({
                let mut h = hello([8; 16], hash);
                h[5] = 0;
                h[6] = 99;
                h.into()
            })],
            ErrorCode::ProtocolVersion,
            "protocol version 99 is not supported",
        ),
        (
            "truncated hello",
            vec![Message::Binary(hello([8; 16], hash)[..20].to_vec().into())],
            ErrorCode::BadFrame,
            "truncated",
        ),
        (
            "ack before hello",
            vec![Message::Binary(Frame::Ack(Pos::new(1, 0)).encode().into())],
            ErrorCode::BadFrame,
            "expected a hello first",
        ),
        (
            "schema",
            vec![Message::Binary(hello([8; 16], [0; 16]).into())],
            ErrorCode::SchemaMismatch,
            "schema",
        ),
        (
            "garbage after hello",
            vec![
                Message::Binary(hello([9; 16], hash).into()),
                Message::Binary(vec![3].into()),
            ],
            ErrorCode::BadFrame,
            "no package bytes",
        ),
        (
            "corrupt package",
            vec![
                Message::Binary(hello([9; 16], hash).into()),
                Message::Binary({
                    let mut p = Frame::Package(package.clone()).encode();
                    let n = p.len();
                    p[n - 3] ^= 0x55;
                    p.into()
                }),
            ],
            ErrorCode::BadPackage,
            "package refused",
        ),
        (
            "foreign sender",
            vec![
                Message::Binary(hello([10; 16], hash).into()),
                Message::Binary(Frame::Package(package.clone()).encode().into()),
            ],
            ErrorCode::ForeignSender,
            "produced by site",
        ),
        (
            "oversized",
            vec![
                Message::Binary(hello([11; 16], hash).into()),
                Message::Binary(vec![3u8; 200_000].into()),
            ],
            ErrorCode::FrameTooLarge,
            "65536",
        ),
        (
            "ack beyond what was sent",
            vec![
                Message::Binary(hello([12; 16], hash).into()),
                Message::Binary(Frame::Ack(Pos::new(99, 0)).encode().into()),
            ],
            ErrorCode::BadFrame,
            "only packages up to",
        ),
    ];
    for (name, msgs, code, text) in cases {
        let mut ws = raw(port, "acme").await;
        for m in msgs {
            // The hub may close before the last one is written.
            let _ = ws.send(m).await;
        }
        let (got, message) = refused(&mut ws).await;
        assert_eq!(got, code, "{name}: {message}");
        assert!(message.contains(text), "{name}: {message}");
    }
    // Not a tenant name / not a WebSocket: HTTP errors, nothing opened.
    assert!(hub.http_get("/..%2Fetc").starts_with("HTTP/1.1 404"));
    assert!(hub.http_get("/acme").starts_with("HTTP/1.1 426"));
    assert!(hub.http_get("/healthz").contains("ok"));
    // The hub serves on: the real a pushes, b pulls, and the good raw
    // client received a's change live.
    let _ = a_site;
    let (code, _, err) = tokio::task::spawn_blocking({
        let (p, u) = (a_path.clone(), url.clone());
        move || sync_once(&p, &u, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Ok(Message::Binary(b))) = good.next().await {
                if let Ok(Frame::Package(p)) = Frame::decode(&b) {
                    let s = crsql_sync::protocol::inspect_package(&p).unwrap();
                    if s.changes > 0 {
                        return s;
                    }
                }
            }
        }
    })
    .await
    .expect("the good client got a's change");
    assert_eq!(got.sites, vec![a_site]);
    let (code, _, err) = tokio::task::spawn_blocking({
        let (p, u) = (b_path.clone(), url.clone());
        move || sync_once(&p, &u, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let b = crsql_sync::db::open(&b_path).unwrap();
    assert_eq!(rows(&b, "SELECT id FROM log"), vec!["Text(\"a1\")"]);
}

#[test]
fn tls_with_a_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let hub = Hub::start(
        dir.path(),
        0,
        &[
            "--tls-cert",
            cert_pem.to_str().unwrap(),
            "--tls-key",
            key_pem.to_str().unwrap(),
        ],
    );
    let url = format!("wss://localhost:{}/acme", hub.port);
    let a = client_db(&dir.path().join("a.db"));
    let b = client_db(&dir.path().join("b.db"));
    a.execute("INSERT INTO log VALUES ('over-tls', 1, 1)", [])
        .unwrap();
    let ca = ["--ca-cert", cert_pem.to_str().unwrap()];
    let (code, _, err) = sync_once(&dir.path().join("a.db"), &url, &ca);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = sync_once(&dir.path().join("b.db"), &url, &ca);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(rows(&b, "SELECT id FROM log"), vec!["Text(\"over-tls\")"]);
    // Without trusting the certificate: refused, with the reason.
    let (code, _, err) = sync_once(&dir.path().join("b.db"), &url, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("certificate") && err.contains("--ca-cert"),
        "{err}"
    );
    // Plain ws:// to a TLS hub does not get through either.
    let (code, _, err) = sync_once(
        &dir.path().join("b.db"),
        &hub.url("acme"),
        &["--timeout", "2"],
    );
    assert_ne!(code, Some(0), "{err}");
}

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_held_to_its_window_then_dropped_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(
        dir.path(),
        0,
        &["--max-frame", "65536", "--write-timeout", "2"],
    );
    let (port, pid, url) = (hub.port, hub.child.id(), hub.url("acme"));
    let (w_path, r_path) = (dir.path().join("w.db"), dir.path().join("r.db"));
    let hash = {
        let w = client_db(&w_path);
        // About 16 MB of changes, more than the loopback socket buffers
        // hold, in 400 transactions (a single huge transaction would be
        // split into parts, which the hub stages and merges in memory).
        for t in 0..400 {
            w.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
                 INSERT INTO items SELECT ?1 * 100 + i, 'w', i, printf('%.400c', 'x') FROM n",
                [t],
            )
            .unwrap();
        }
        crsql_sync::db::schema_hash(&w).unwrap()
    };
    drop(client_db(&r_path));
    // The slow client: says hello, then never reads.
    let mut slow = raw(port, "acme").await;
    slow.send(Message::Binary(hello([5; 16], hash).into()))
        .await
        .unwrap();
    let connected = || {
        hub.http_get("/metrics")
            .contains("crsql_sync_connected_clients{tenant=\"acme\"} 1")
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while !connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the slow client was admitted");
    let began = Instant::now();
    let (code, _, err) = tokio::task::spawn_blocking({
        let (p, u) = (w_path.clone(), url.clone());
        move || sync_once(&p, &u, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = tokio::task::spawn_blocking({
        let (p, u) = (r_path.clone(), url.clone());
        move || sync_once(&p, &u, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let r = crsql_sync::db::open(&r_path).unwrap();
    let n: i64 = r
        .query_row("SELECT count(*) FROM items", [], |x| x.get(0))
        .unwrap();
    assert_eq!(n, 40000);
    // Meanwhile the hub held at most a window of packages for the slow
    // client, and dropped it after --write-timeout.
    let rss = rss_mib(pid);
    assert!(
        rss < 150.0,
        "hub RSS {rss:.0} MiB with a client that does not read"
    );
    tokio::time::timeout(Duration::from_secs(20), async {
        while !hub
            .http_get("/metrics")
            .contains("crsql_sync_connected_clients{tenant=\"acme\"} 0")
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the hub dropped the client that stopped reading");
    let (code, message) = refused(&mut slow).await;
    assert_eq!(code, ErrorCode::Timeout, "{message}");
    assert!(message.contains("no acknowledgement"), "{message}");
    eprintln!(
        "slow client dropped {:.1} s after the push began; hub RSS {rss:.0} MiB",
        began.elapsed().as_secs_f64()
    );
}

/// `client_lag_changes` is, per connected client, what it has not
/// acknowledged: every change of the tenant for a client that reads and
/// never acknowledges, and the metric goes with the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_lag_changes_counts_what_a_client_has_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), 0, &[]);
    let w_path = dir.path().join("w.db");
    let hash = {
        let w = client_db(&w_path);
        w.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
             INSERT INTO items SELECT i, 'w', i, 'note' FROM n",
        )
        .unwrap();
        crsql_sync::db::schema_hash(&w).unwrap()
    };
    let (code, _, err) = tokio::task::spawn_blocking({
        let (p, u) = (w_path.clone(), hub.url("acme"));
        move || sync_once(&p, &u, &[])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let mut reader = raw(hub.port, "acme").await;
    reader
        .send(Message::Binary(hello([6; 16], hash).into()))
        .await
        .unwrap();
    let series = format!(
        "crsql_sync_client_lag_changes{{tenant=\"acme\",site=\"{}\"}}",
        "06".repeat(16)
    );
    let lag = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let lag = metric(&hub, &series);
            if lag > 0.0 {
                return lag;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the reader's lag shows");
    assert_eq!(lag, 150.0, "50 rows of 3 columns, none acknowledged");
    drop(reader);
    tokio::time::timeout(Duration::from_secs(10), async {
        while hub.http_get("/metrics").contains(&series) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the metric goes with the client");
}

/// A client away while the hub compacted past it (its peer entry expired)
/// is sent a snapshot (the hub's client streams use `resync = 'snapshot'`):
/// the delete whose tombstone the hub compacted reaches it, where a default
/// stream would refuse with `resync_required`.
#[test]
fn a_client_behind_the_hubs_compaction_resyncs_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(dir.path(), 0, &[]);
    let url = hub.url("acme");
    let (a_path, b_path) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let a = client_db(&a_path);
    let b = client_db(&b_path);
    a.execute_batch("INSERT INTO items VALUES (1, 'a', 1, 'x'), (2, 'a', 2, 'y')")
        .unwrap();
    for p in [&a_path, &b_path, &a_path] {
        let (code, _, err) = sync_once(p, &url, &[]);
        assert_eq!(code, Some(0), "{err}");
    }
    assert_eq!(rows(&b, "SELECT id FROM items ORDER BY id").len(), 2);
    // (Compaction keeps the newest version: the delete is followed by a write.)
    a.execute_batch("DELETE FROM items WHERE id = 1; INSERT INTO items VALUES (3, 'a', 3, 'z')")
        .unwrap();
    let (code, _, err) = sync_once(&a_path, &url, &[]);
    assert_eq!(code, Some(0), "{err}");
    // The operator compacts the tenant database with every peer expired.
    let tenant = crsql_sync::db::open(&dir.path().join("data").join("acme.db")).unwrap();
    tenant.busy_timeout(Duration::from_secs(10)).unwrap();
    let removed: i64 = tenant
        .query_row(
            "SELECT crsql_config_set('peer-expiry-seconds', 0), crsql_compact()",
            [],
            |r| r.get(1),
        )
        .unwrap();
    assert!(
        removed > 0,
        "the delete's tombstone was compacted: {:?} {:?}",
        rows(
            &tenant,
            "SELECT hex(site_id), last_acked, last_seen, expired FROM crsql_peers"
        ),
        rows(&tenant, "SELECT * FROM items__crsql_clock"),
    );
    drop(tenant);
    let (code, _, err) = sync_once(&b_path, &url, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        rows(&b, "SELECT id FROM items ORDER BY id"),
        rows(&a, "SELECT id FROM items ORDER BY id")
    );
}
