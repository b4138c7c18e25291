//! Helpers of the hub tests: the built `crsql-sync` binary as a real
//! process on 127.0.0.1, client databases as real files.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crsql_stream_rs::rusqlite::{params, Connection};
use crsql_sync::db;
use crsql_sync::protocol::Site;
use rand::Rng;

pub const BIN: &str = env!("CARGO_BIN_EXE_crsql-sync");

pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY NOT NULL, owner TEXT, val INTEGER, note TEXT);
SELECT crsql_as_crr('items');
CREATE TABLE IF NOT EXISTS log (id TEXT PRIMARY KEY NOT NULL, client INTEGER, n INTEGER);
SELECT crsql_as_crr('log');
";

/// A hub process.
pub struct Hub {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub args: Vec<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Hub {
    /// Start `crsql-sync serve` on 127.0.0.1 (`port` 0: any free port) with
    /// the data and schema directories under `dir`.
    pub fn start(dir: &Path, port: u16, extra: &[&str]) -> Hub {
        std::fs::create_dir_all(dir.join("schema")).unwrap();
        std::fs::write(dir.join("schema").join("acme.sql"), SCHEMA).unwrap();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--data".into(),
            dir.join("data").display().to_string(),
            "--schema-dir".into(),
            dir.join("schema").display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(BIN)
            .args(&args)
            .env(
                "CRSQL_SYNC_LOG",
                std::env::var("HUB_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the hub");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("hub stdout");
        let port: u16 = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("hub did not say where it listens: {line:?}"));
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Hub {
            child,
            port,
            dir: dir.to_path_buf(),
            args,
            stderr: Some(stderr),
        }
    }

    pub fn url(&self, tenant: &str) -> String {
        format!("ws://127.0.0.1:{}/{tenant}", self.port)
    }

    pub fn db_path(&self, tenant: &str) -> PathBuf {
        self.dir.join("data").join(format!("{tenant}.db"))
    }

    /// SIGKILL, and the log so far.
    pub fn kill9(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// SIGTERM, wait (bounded), and the log.
    pub fn stop(&mut self) -> (Option<i32>, String) {
        sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, log)
    }

    pub fn http_get(&self, path: &str) -> String {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM to a child process of this test (by its pid).
pub fn sigterm(pid: u32) {
    // SAFETY: kill(2) on the pid of a child we started and have not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// A client database with the tenant's schema.
pub fn client_db(path: &Path) -> Connection {
    let c = db::open(path).unwrap();
    c.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
    c.execute_batch(SCHEMA).unwrap();
    c
}

pub fn site(c: &Connection) -> Site {
    db::site_id(c).unwrap()
}

/// Run `crsql-sync sync --once`; (exit code, stdout, stderr).
pub fn sync_once(db: &Path, url: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let timeout: &[&str] = if extra.contains(&"--timeout") {
        &[]
    } else {
        &["--timeout", "60"]
    };
    let out = Command::new(BIN)
        .args(["sync", "--once", "--progress", "never"])
        .args(timeout)
        .arg("--db")
        .arg(db)
        .args(["--url", url])
        .args(extra)
        .env("CRSQL_SYNC_LOG", "warn")
        .output()
        .expect("run crsql-sync sync");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Start a persistent `crsql-sync sync`.
pub fn sync_forever(db: &Path, url: &str) -> Child {
    Command::new(BIN)
        .args(["sync", "--progress", "never", "--poll-ms", "20", "--db"])
        .arg(db)
        .args(["--url", url])
        .env("CRSQL_SYNC_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start crsql-sync sync")
}

/// The rows of a table, as text, in key order.
pub fn rows(c: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = c.prepare(sql).unwrap();
    let n = stmt.column_count();
    let mut q = stmt.query([]).unwrap();
    let mut out = Vec::new();
    while let Some(r) = q.next().unwrap() {
        let mut line = Vec::new();
        for i in 0..n {
            let v: crsql_stream_rs::rusqlite::types::Value = r.get(i).unwrap();
            line.push(format!("{v:?}"));
        }
        out.push(line.join("|"));
    }
    out
}

/// Wait (bounded) until `f` holds.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The seed of the randomized tests (HUB_SEED, else fixed).
pub fn seed() -> u64 {
    std::env::var("HUB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261207)
}

/// One random transaction on a client: inserts, conflicting updates of
/// shared rows, deletes, primary-key changes, and one append-only log row
/// (returned when committed: it must end up everywhere).
pub fn random_txn(c: &Connection, client: usize, n: u64, rng: &mut impl Rng) -> Option<String> {
    let tx = c.unchecked_transaction().ok()?;
    for _ in 0..rng.gen_range(1..4) {
        let id: i64 = rng.gen_range(0..40);
        let r = match rng.gen_range(0..10) {
            0..=3 => tx.execute(
                "INSERT INTO items VALUES (?1, ?2, ?3, 'new') ON CONFLICT(id) DO UPDATE SET val = excluded.val, owner = excluded.owner",
                params![id, format!("c{client}"), rng.gen_range(0..1000)],
            ),
            4..=6 => tx.execute(
                "UPDATE items SET val = ?2, note = ?3 WHERE id = ?1",
                params![id, rng.gen_range(0..1000), format!("n{client}-{n}")],
            ),
            7 | 8 => tx.execute("DELETE FROM items WHERE id = ?1", [id]),
            _ => tx.execute(
                "UPDATE OR IGNORE items SET id = ?2 WHERE id = ?1",
                params![id, rng.gen_range(0..40)],
            ),
        };
        if r.is_err() {
            return None;
        }
    }
    let key = format!("{client}-{n}");
    tx.execute(
        "INSERT INTO log VALUES (?1, ?2, ?3)",
        params![key, client as i64, n as i64],
    )
    .ok()?;
    tx.commit().ok()?;
    Some(key)
}

/// What must be identical everywhere: the data, and each cell's clock
/// (column version and causal length; the site of equal-valued ties may
/// differ).
pub fn state(c: &Connection) -> Vec<String> {
    let mut s = rows(c, "SELECT * FROM items ORDER BY id");
    s.extend(rows(c, "SELECT * FROM log ORDER BY id"));
    s.extend(rows(
        c,
        "SELECT \"table\", hex(pk), cid, val, col_version, cl FROM crsql_changes ORDER BY 1, 2, 3",
    ));
    s
}

/// A real `nats-server` with JetStream on 127.0.0.1 and a store directory.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
}

impl NatsServer {
    /// Start one (the port is picked free). `nats-server` must be installed
    /// (Debian's package; `.ci/run` installs it).
    pub fn start(store: &Path) -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = NatsServer {
            child: None,
            port,
            store: store.to_path_buf(),
        };
        n.spawn();
        n
    }

    /// Start it (again, after `stop`) on the same port and store.
    pub fn spawn(&mut self) {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server ({e}): install it (apt-get install nats-server); the cluster tests need a real one")
            });
        self.child = Some(child);
        eventually("nats-server to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Wait (bounded) until the JetStream stream `stream` holds no message:
    /// every one older than its max age was dropped. `nats-server` drops
    /// them on a timer, which a loaded machine may run late, so a test that
    /// needs them gone waits for it rather than for a fixed time.
    pub fn wait_dropped(&self, stream: &str, timeout: Duration) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = async_nats::connect(self.url()).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let deadline = Instant::now() + timeout;
            loop {
                let mut s = js.get_stream(stream).await.unwrap();
                let held = s.info().await.unwrap().state.messages;
                if held == 0 {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "JetStream stream {stream} still holds {held} messages after {timeout:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// SIGTERM, wait, and start again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigterm(c.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A metric's value on a hub (`name{labels}`), 0 when absent.
pub fn metric(hub: &Hub, series: &str) -> f64 {
    hub.http_get("/metrics")
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Child processes, killed when dropped (also when a test fails).
pub struct Killed(pub Vec<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
