//! `make bench-hub`: one hub (the built `crsql-sync serve`) on 127.0.0.1.
//!
//! 1. ingest: N client databases each with a backlog of small transactions,
//!    N `crsql-sync sync --once` processes at once; changes/s into the hub.
//! 2. live: N `crsql-sync sync` processes connected; transactions committed
//!    on clients 1..N at a fixed rate; client 0 watches for them: end-to-end
//!    latency (commit on A → applied on B) p50/p99, and the rate the hub took.
//! 3. idle: a fresh hub, 1,000 WebSocket connections that said hello and
//!    were caught up; the hub's RSS.
//! 4. cluster: the ingest of phase 1 into one hub with `--nats`, then into
//!    three hubs over one `nats-server -js` (clients spread over them):
//!    changes/s until every hub holds every change (needs `nats-server`).
//!
//! `bench-hub --help` lists the knobs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crsql_stream_rs::rusqlite::{params, Connection};
use crsql_sync::db;
use crsql_sync::protocol::{Frame, Hello, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY NOT NULL, a INTEGER, b TEXT, t INTEGER);
SELECT crsql_as_crr('items');
";

struct Args {
    clients: usize,
    txns: usize,
    rows: usize,
    rate: f64,
    seconds: f64,
    idle: usize,
    /// Phases to run (`--phases ingest,live,idle,cluster`; default all).
    phases: Vec<String>,
}

impl Args {
    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

/// One phase of the benchmark.
type Phase = fn(&Path, &Args);

const PHASES: [&str; 4] = ["ingest", "live", "idle", "cluster"];

fn args() -> Args {
    let mut a = Args {
        clients: 20,
        txns: 300,
        rows: 10,
        rate: 100.0,
        seconds: 10.0,
        idle: 1000,
        phases: PHASES.iter().map(|p| p.to_string()).collect(),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = || v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--clients" => a.clients = val().parse().expect("--clients N"),
            "--txns" => a.txns = val().parse().expect("--txns N"),
            "--rows" => a.rows = val().parse().expect("--rows N"),
            "--rate" => a.rate = val().parse().expect("--rate TXN_PER_S"),
            "--seconds" => a.seconds = val().parse().expect("--seconds S"),
            "--idle" => a.idle = val().parse().expect("--idle N"),
            "--phases" => {
                a.phases = val().split(',').map(|p| p.trim().to_string()).collect();
                if let Some(p) = a.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    println!(
                        "--phases: unknown phase {p:?} (expected some of {})",
                        PHASES.join(",")
                    );
                    std::process::exit(2);
                }
            }
            _ => {
                println!(
                    "bench-hub [--clients 20] [--txns 300 per client, ingest] [--rows 10 per txn] \
                     [--rate 100 txn/s, live] [--seconds 10, live] [--idle 1000 connections] \
                     [--phases ingest,live,idle,cluster]"
                );
                std::process::exit(if v[i] == "--help" { 0 } else { 2 });
            }
        }
        i += 2;
    }
    a.clients = a.clients.max(2);
    a
}

fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.with_file_name("crsql-sync")
}

struct Hub {
    child: Child,
    port: u16,
}

impl Hub {
    fn start(dir: &Path) -> Hub {
        Hub::start_with(dir, &[])
    }
    fn start_with(dir: &Path, extra: &[String]) -> Hub {
        std::fs::create_dir_all(dir.join("schema")).unwrap();
        std::fs::write(dir.join("schema/bench.sql"), SCHEMA).unwrap();
        let mut child = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.join("data"))
            .arg("--schema-dir")
            .arg(dir.join("schema"))
            .args(extra)
            .env("CRSQL_SYNC_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start crsql-sync serve (build it first: make)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .expect("port");
        Hub { child, port }
    }
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/bench", self.port)
    }
    fn metric(&self, name: &str) -> f64 {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return 0.0;
        };
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `crsql-sync sync` process for `db` with `extra` flags (`--once`, …).
fn sync_process(db: &Path, url: &str, extra: &[&str]) -> Child {
    Command::new(bin())
        .arg("sync")
        .args(extra)
        .args(["--progress", "never", "--db"])
        .arg(db)
        .args(["--url", url])
        .env("CRSQL_SYNC_LOG", "error")
        .spawn()
        .expect("start crsql-sync sync")
}

/// Watches the rows of `items` in a hub's tenant database, cheaply (the
/// benchmark shares the cores it measures): one connection, kept, and
/// `max(rowid)`, which is the row count while rows are only inserted.
struct Rows {
    path: PathBuf,
    conn: Option<Connection>,
}

impl Rows {
    fn new(dir: &Path) -> Rows {
        Rows {
            path: dir.join("data/bench.db"),
            conn: None,
        }
    }
    /// Rows so far (0 before the database exists).
    fn count(&mut self) -> i64 {
        if self.conn.is_none() && self.path.exists() {
            self.conn = db::open(&self.path).ok();
        }
        self.conn
            .as_ref()
            .and_then(|c| {
                c.query_row("SELECT coalesce(max(rowid), 0) FROM items", [], |r| {
                    r.get(0)
                })
                .ok()
            })
            .unwrap_or(0)
    }
}

/// Client databases with `txns` transactions of `rows` inserts each.
fn backlog(dir: &Path, a: &Args) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = (0..a.clients)
        .map(|i| dir.join(format!("c{i}.db")))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        let c = client(p);
        for t in 0..a.txns {
            let tx = c.unchecked_transaction().unwrap();
            for r in 0..a.rows {
                tx.execute(
                    "INSERT INTO items VALUES (?1, ?2, 'x', 0)",
                    params![format!("{i}-{t}-{r}"), r as i64],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
    }
    paths
}

/// Phase 4: ingest into `n` hubs over one nats-server: changes/s until the
/// hubs accepted every client's pushes (as in phase 1), and until every hub
/// holds every row.
fn cluster(root: &Path, a: &Args, n: usize) -> Option<(f64, f64)> {
    let dir = root.join(format!("cluster{n}"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let mut nats = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("js"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let up = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(20),
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let extra = ["--nats".to_string(), format!("nats://127.0.0.1:{port}")];
    let dirs: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("hub{i}"))).collect();
    let hubs: Vec<Hub> = dirs.iter().map(|d| Hub::start_with(d, &extra)).collect();
    let paths = backlog(&dir, a);
    let want = (a.clients * a.txns * a.rows) as i64;
    let began = Instant::now();
    let procs: Vec<Child> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| sync_process(p, &hubs[i % n].url(), &["--once"]))
        .collect();
    let changes = (want * 3) as f64;
    let mut accepted = None;
    let mut rows: Vec<Rows> = dirs.iter().map(|d| Rows::new(d)).collect();
    while rows.iter_mut().any(|r| r.count() < want) {
        assert!(
            began.elapsed() < Duration::from_secs(600),
            "the cluster did not ingest everything in 600 s"
        );
        if accepted.is_none()
            && hubs
                .iter()
                .map(|h| h.metric("crsql_sync_changes_in_total"))
                .sum::<f64>()
                >= changes
        {
            accepted = Some(began.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = began.elapsed().as_secs_f64();
    let accepted = accepted.unwrap_or(secs);
    for r in &rows {
        let n: i64 = r.conn.as_ref().map_or(0, |c| {
            c.query_row("SELECT count(*) FROM items", [], |r| r.get(0))
                .unwrap()
        });
        assert_eq!(n, want, "a hub holds {n} rows, not {want}");
    }
    for mut p in procs {
        let _ = p.wait();
    }
    drop(hubs);
    let _ = nats.kill();
    let _ = nats.wait();
    Some((changes / accepted, changes / secs))
}

fn client(path: &Path) -> Connection {
    let c = db::open(path).unwrap();
    c.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .unwrap();
    c.execute_batch(SCHEMA).unwrap();
    c
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Phase 1.
fn ingest(root: &Path, a: &Args) {
    // 1. ingest
    let dir = root.join("ingest");
    let hub = Hub::start(&dir);
    let paths = backlog(&dir, a);
    let began = Instant::now();
    let procs: Vec<Child> = paths
        .iter()
        .map(|p| sync_process(p, &hub.url(), &["--once"]))
        .collect();
    // Every insert is 3 column changes.
    let expected = (a.clients * a.txns * a.rows * 3) as f64;
    let mut ingested = None;
    while ingested.is_none() {
        if hub.metric("crsql_sync_changes_in_total") >= expected {
            ingested = Some(began.elapsed().as_secs_f64());
        } else if began.elapsed() > Duration::from_secs(300) {
            panic!("the hub did not ingest {expected} changes in 300 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for mut p in procs {
        assert!(p.wait().unwrap().success(), "a sync failed");
    }
    let secs = ingested.unwrap_or(f64::NAN);
    let all = began.elapsed().as_secs_f64();
    let changes = hub.metric("crsql_sync_changes_in_total");
    let packages = hub.metric("crsql_sync_packages_in_total");
    let out = hub.metric("crsql_sync_changes_out_total");
    println!(
        "ingest: {} clients x {} txns x {} rows pushed at once: {changes:.0} changes in {packages:.0} packages applied by the hub in {secs:.2} s = {:.0} changes/s in; \
         every client had all {out:.0} changes sent back out after {all:.2} s ({:.0} changes/s out)",
        a.clients,
        a.txns,
        a.rows,
        changes / secs,
        out / all
    );
    drop(hub);
}

/// Phase 2.
fn live(root: &Path, a: &Args) {
    // 2. live
    let dir = root.join("live");
    let hub = Hub::start(&dir);
    let paths: Vec<PathBuf> = (0..a.clients)
        .map(|i| dir.join(format!("c{i}.db")))
        .collect();
    let conns: Vec<Connection> = paths.iter().map(|p| client(p)).collect();
    let mut syncs: Vec<Child> = paths
        .iter()
        .map(|p| sync_process(p, &hub.url(), &["--poll-ms", "5"]))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let p = paths[0].clone();
        std::thread::spawn(move || {
            let c = db::open(&p).unwrap();
            let mut lat = Vec::new();
            let mut seen = 0i64;
            let mut last_dv = -1i64;
            while !stop.load(Ordering::Relaxed) {
                let dv: i64 = c
                    .query_row("PRAGMA data_version", [], |r| r.get(0))
                    .unwrap();
                if dv != last_dv {
                    last_dv = dv;
                    let now = now_us();
                    let mut st = c
                        .prepare_cached(
                            "SELECT rowid, t FROM items WHERE rowid > ?1 AND a = -1 ORDER BY rowid",
                        )
                        .unwrap();
                    let got: Vec<(i64, i64)> = st
                        .query_map([seen], |r| Ok((r.get(0)?, r.get(1)?)))
                        .unwrap()
                        .collect::<Result<_, _>>()
                        .unwrap();
                    for (rowid, t) in got {
                        seen = seen.max(rowid);
                        lat.push((now - t) as f64 / 1000.0);
                    }
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            lat
        })
    };
    let changes0 = hub.metric("crsql_sync_changes_in_total");
    let began = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let mut n = 0usize;
    while began.elapsed().as_secs_f64() < a.seconds {
        let i = 1 + n % (a.clients - 1);
        let c = &conns[i];
        let tx = c.unchecked_transaction().unwrap();
        for r in 0..a.rows {
            tx.execute(
                "INSERT INTO items VALUES (?1, ?2, 'x', ?3)",
                params![
                    format!("l{i}-{n}-{r}"),
                    if r == 0 { -1 } else { r as i64 },
                    now_us()
                ],
            )
            .unwrap();
        }
        // The timestamp is taken just before the commit.
        tx.execute(
            "UPDATE items SET t = ?1 WHERE id = ?2",
            params![now_us(), format!("l{i}-{n}-0")],
        )
        .unwrap();
        tx.commit().unwrap();
        n += 1;
        let next = began + interval.mul_f64(n as f64);
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let wrote = began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let mut lat = watcher.join().unwrap();
    let changes = hub.metric("crsql_sync_changes_in_total") - changes0;
    let p50 = pct(&mut lat, 0.5);
    let p99 = pct(&mut lat, 0.99);
    println!(
        "live: {n} txns of {} rows from {} clients at {:.0} txn/s ({:.0} changes/s into the hub); end-to-end commit on A -> applied on B: p50 {p50:.1} ms, p99 {p99:.1} ms ({} of {n} seen on B)",
        a.rows,
        a.clients - 1,
        n as f64 / wrote,
        changes / wrote,
        lat.len()
    );
    for s in &mut syncs {
        let _ = s.kill();
        let _ = s.wait();
    }
    drop(hub);
}

/// Phase 3.
fn idle(root: &Path, a: &Args) {
    // 3. idle connections
    let dir = root.join("idle");
    let hub = Hub::start(&dir);
    let hash = {
        let c = client(&dir.join("probe.db"));
        db::schema_hash(&c).unwrap()
    };
    let rss0 = hub.rss_kib();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = hub.port;
    let began = Instant::now();
    let held = rt.block_on(async move {
        let mut held = Vec::new();
        for i in 0..a.idle {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let (mut ws, _) =
                tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/bench"), tcp)
                    .await
                    .unwrap();
            let mut site = [0u8; 16];
            site[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            site[8..].copy_from_slice(&(now_us() as u64).to_be_bytes());
            let hello = Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                site,
                schema_hash: hash,
                tenant: "bench".into(),
                token: vec![],
                positions: vec![],
            });
            ws.send(tokio_tungstenite::tungstenite::Message::Binary(
                hello.encode().into(),
            ))
            .await
            .unwrap();
            loop {
                let m = ws.next().await.unwrap().unwrap();
                if let Ok(Frame::CaughtUp(_)) = Frame::decode(&m.into_data()) {
                    break;
                }
            }
            held.push(ws);
        }
        held
    });
    let connect_secs = began.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let rss = hub.rss_kib();
    println!(
        "idle: {} connections said hello and were caught up in {connect_secs:.1} s; hub RSS {:.1} MiB (empty hub {:.1} MiB), {:.1} KiB per connection; connected_clients = {}",
        held.len(),
        rss as f64 / 1024.0,
        rss0 as f64 / 1024.0,
        (rss.saturating_sub(rss0)) as f64 / held.len().max(1) as f64,
        hub.metric("crsql_sync_connected_clients")
    );
    drop(held);
}

/// Phase 4.
fn cluster_phase(root: &Path, a: &Args) {
    // 4. cluster
    match (cluster(root, a, 1), cluster(root, a, 3)) {
        (Some(one), Some(three)) => println!(
            "cluster: the ingest of phase 1 with --nats, clients spread over the hubs: accepted from the clients (changes_in of all hubs, as phase 1): one hub {:.0} changes/s, three hubs {:.0} changes/s ({:.2}x); until every hub holds every change: one hub {:.0} changes/s, three hubs {:.0} changes/s ({:.2}x)",
            one.0,
            three.0,
            three.0 / one.0,
            one.1,
            three.1,
            three.1 / one.1
        ),
        _ => println!("cluster: skipped (no nats-server: apt-get install nats-server)"),
    }
}

fn main() {
    let a = args();
    let root = tempfile::tempdir().unwrap();
    println!(
        "bench-hub: {} clients, loopback, {} cores",
        a.clients,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let phases: [(&str, Phase); 4] = [
        ("ingest", ingest),
        ("live", live),
        ("idle", idle),
        ("cluster", cluster_phase),
    ];
    for (name, run) in phases {
        if a.runs(name) {
            run(root.path(), &a);
        }
    }
}
