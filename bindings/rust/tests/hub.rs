//! The `hub` feature against the real hub: dist/crsql-sync (`make hub`) as a
//! process on 127.0.0.1 with a temporary data directory and an auth file.
//! Two clients sync through it, a client that stays connected (spawned on
//! the runtime: the future is `Send`) reconnects after the hub is SIGKILLed
//! and restarted on the same port, and the protocol's error codes arrive as
//! `HubError::Code`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crsql_stream_rs::hub::{self, ErrorCode, HubError, Progress, SyncOptions};
use crsql_stream_rs::rusqlite::Connection;

mod layout;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0);\nSELECT crsql_as_crr('todos');\n";
const TOKEN: &str = "s3cret";
const WAIT: Duration = Duration::from_secs(30);

fn bin() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/crsql-sync");
    assert!(
        p.is_file(),
        "{} is missing: build it with `make hub`",
        p.display()
    );
    p
}

struct Hub {
    child: Child,
    port: u16,
}

impl Hub {
    fn start(dir: &Path, port: u16) -> Hub {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("hub.log"))
            .unwrap();
        let arg = |p: &str| dir.join(p).to_str().unwrap().to_string();
        let mut child = Command::new(bin())
            .args([
                "serve",
                "--data",
                &arg("data"),
                "--schema-dir",
                &arg("schema"),
            ])
            .args(["--auth", &arg("auth.toml")])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ws://")
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the hub did not start: {line:?}"));
        Hub { child, port }
    }
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/acme", self.port)
    }
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn setup() -> (tempfile::TempDir, Hub) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schema")).unwrap();
    std::fs::write(dir.path().join("schema/acme.sql"), SCHEMA).unwrap();
    let out = Command::new(bin())
        .args(["hash-token", TOKEN])
        .output()
        .unwrap();
    let digest = String::from_utf8(out.stdout).unwrap();
    std::fs::write(
        dir.path().join("auth.toml"),
        format!(
            "[tenants.acme]\ntokens = [{{ sha256 = \"{}\" }}]\n",
            digest.trim()
        ),
    )
    .unwrap();
    let hub = Hub::start(dir.path(), 0);
    (dir, hub)
}

fn open(dir: &Path, name: &str, schema: &str) -> Connection {
    let c = Connection::open(dir.join(name)).unwrap();
    layout::load(&c);
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch(schema).unwrap();
    c
}

fn rows(c: &Connection) -> Vec<(String, String)> {
    c.prepare("SELECT id, title FROM todos ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn opts() -> SyncOptions {
    SyncOptions::new().token(TOKEN).timeout(WAIT)
}

#[test]
fn two_clients_sync_through_the_hub_with_progress() {
    let (dir, hub) = setup();
    let rt = runtime();
    let mut a = open(dir.path(), "a.db", SCHEMA);
    let mut b = open(dir.path(), "b.db", SCHEMA);
    let tx = a.transaction().unwrap();
    for i in 0..50 {
        tx.execute(
            "INSERT INTO todos (id, title) VALUES (?1, ?2)",
            [format!("a{i:03}"), format!("from a {i}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    b.execute("INSERT INTO todos (id, title) VALUES ('b1', 'from b')", [])
        .unwrap();
    let calls: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let seen = calls.clone();
    let with_progress = opts().progress(move |p| seen.lock().unwrap().push(p));
    let pa = rt
        .block_on(hub::sync(&mut a, &hub.url(), &with_progress))
        .unwrap();
    // 50 rows of 2 columns: 100 changes.
    assert_eq!((pa.pushed, pa.pulled), (100, 0));
    let last = *calls.lock().unwrap().last().expect("progress was reported");
    assert_eq!((last.done(), last.total()), (100, 100));
    assert!(calls.lock().unwrap().iter().all(|p| p.done() <= p.total()));
    let pb = rt
        .block_on(hub::sync(&mut b, &hub.url(), &with_progress))
        .unwrap();
    assert_eq!((pb.pushed, pb.pulled, pb.total()), (2, 100, 102));
    rt.block_on(hub::sync(&mut a, &hub.url(), &opts())).unwrap();
    assert_eq!(rows(&a).len(), 51);
    assert_eq!(rows(&a), rows(&b));
    let again = rt.block_on(hub::sync(&mut a, &hub.url(), &opts())).unwrap();
    assert_eq!((again.pushed, again.pulled), (0, 0));
}

fn assert_send<T: Send>(_: &T) {}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_connected_client_resumes_after_the_hub_is_killed_and_restarted() {
    let (dir, mut hub) = setup();
    let rt = runtime();
    let mut a = open(dir.path(), "a.db", SCHEMA);
    let mut b = open(dir.path(), "b.db", SCHEMA);
    let watch = open(dir.path(), "b.db", "");
    let mut forever = opts();
    forever.once = false;
    forever.timeout = None;
    forever.max_backoff = Duration::from_millis(300);
    forever.poll = Duration::from_millis(20);
    let url = hub.url();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The client that stays connected, on a thread of its own; its future
    // is `Send` (it holds the connection exclusively), so it could as well
    // be spawned on a multi-threaded runtime.
    let task = std::thread::spawn(move || {
        let sync = hub::sync(&mut b, &url, &forever);
        assert_send(&sync);
        runtime().block_on(async {
            tokio::select! {
                r = sync => Some(r),
                _ = stopped => None,
            }
        })
    });
    a.execute("INSERT INTO todos (id, title) VALUES ('t1', 'before')", [])
        .unwrap();
    rt.block_on(hub::sync(&mut a, &hub.url(), &opts())).unwrap();
    wait_until("b got t1", || rows(&watch).len() == 1);
    let port = hub.port;
    hub.kill();
    a.execute(
        "INSERT INTO todos (id, title) VALUES ('t2', 'while down')",
        [],
    )
    .unwrap();
    watch
        .execute(
            "INSERT INTO todos (id, title) VALUES ('t3', 'from b while down')",
            [],
        )
        .unwrap();
    let hub = Hub::start(dir.path(), port);
    rt.block_on(hub::sync(&mut a, &hub.url(), &opts())).unwrap();
    wait_until("b got t2 after the restart", || rows(&watch).len() == 3);
    wait_until("a got t3 from b", || {
        rt.block_on(hub::sync(&mut a, &hub.url(), &opts())).unwrap();
        rows(&a).len() == 3
    });
    assert!(!task.is_finished(), "the connected client stopped");
    stop.send(()).unwrap();
    assert!(task.join().unwrap().is_none());
    assert_eq!(rows(&a), rows(&watch));
}

#[test]
fn error_codes_are_typed() {
    let (dir, mut hub) = setup();
    let rt = runtime();
    let mut a = open(dir.path(), "a.db", SCHEMA);
    let e = rt
        .block_on(hub::sync(&mut a, &hub.url(), &opts().token("wrong")))
        .unwrap_err();
    assert!(
        matches!(
            &e,
            HubError::Code {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{e:?}"
    );
    let mut other = open(
        dir.path(),
        "other.db",
        "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT); SELECT crsql_as_crr('todos');",
    );
    let e = rt
        .block_on(hub::sync(&mut other, &hub.url(), &opts()))
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::SchemaMismatch), "{e}");
    let gone = hub.url();
    hub.kill();
    let mut retries = opts().max_retries(2);
    retries.max_backoff = Duration::from_millis(50);
    let e = rt.block_on(hub::sync(&mut a, &gone, &retries)).unwrap_err();
    assert!(matches!(e, HubError::Connection(_)), "{e:?}");
    let mut short = opts().timeout(Duration::from_millis(300));
    short.max_backoff = Duration::from_millis(50);
    let e = rt.block_on(hub::sync(&mut a, &gone, &short)).unwrap_err();
    assert!(matches!(e, HubError::Timeout(_)), "{e:?}");
    let e = rt
        .block_on(hub::sync(&mut a, "wss://127.0.0.1:1/acme", &opts()))
        .unwrap_err();
    assert!(matches!(e, HubError::Config(_)), "{e:?}");
    let e = rt
        .block_on(hub::sync(&mut a, "ws://127.0.0.1:1/a/b", &opts()))
        .unwrap_err();
    assert!(matches!(e, HubError::Config(_)), "{e:?}");
}
