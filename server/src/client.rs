//! `crsql-sync sync`: sync one SQLite file with a hub.
//!
//! The client itself is the Rust binding's (`crsql_stream_rs::hub`, the
//! same code an application embeds); this adds what the command line needs:
//! TLS (rustls, with `--ca-cert`), a progress bar on stdout and exit codes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crsql_stream_rs::hub::{self, ConnectFuture, HubError, HubIo, HubUrl, Progress};

use crate::db;
use crate::protocol::ErrorCode;

/// Settings of `crsql-sync sync`.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    pub db: PathBuf,
    /// One hub, or several hubs of one cluster (`serve --nats`): the client
    /// moves to the next one when a connection fails.
    pub urls: Vec<String>,
    pub token: Option<String>,
    pub once: bool,
    pub ca_cert: Option<PathBuf>,
    /// Packages pushed and not yet acknowledged.
    pub window: usize,
    /// How often to look for local commits (of other connections).
    pub poll: Duration,
    /// Give up after this long (`--once`); `None`: never.
    pub timeout: Option<Duration>,
    /// Draw progress on stdout.
    pub progress: bool,
    pub max_frame: usize,
}

/// Why a sync stopped.
#[derive(Debug)]
pub enum SyncError {
    /// The hub refused with a code that retrying cannot fix.
    Refused(ErrorCode, String),
    /// Anything else (the database, the time limit, …).
    Failed(String),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Refused(c, m) => write!(f, "hub refused: {c}: {m}"),
            SyncError::Failed(m) => f.write_str(m),
        }
    }
}

impl From<HubError> for SyncError {
    fn from(e: HubError) -> SyncError {
        match e {
            HubError::Code { code, message } if code.is_fatal() => {
                SyncError::Refused(code, message)
            }
            other => SyncError::Failed(other.to_string()),
        }
    }
}

/// Sync until caught up (`once`) or for ever, reconnecting with backoff;
/// with several URLs, each reconnection goes to the next hub.
pub async fn sync(opts: SyncOptions) -> Result<(), SyncError> {
    let Some((url, failover)) = opts.urls.split_first() else {
        return Err(SyncError::Failed("no hub URL (--url)".into()));
    };
    let mut tls = false;
    for u in &opts.urls {
        tls |= u
            .parse::<HubUrl>()
            .map_err(|e| SyncError::Failed(e.to_string()))?
            .tls;
    }
    let mut conn = db::open(&opts.db).map_err(|e| {
        SyncError::Failed(format!(
            "cannot open {}: {}",
            opts.db.display(),
            db::message(&e)
        ))
    })?;
    // This connection's own writes (applied packages and their positions,
    // acknowledgements) need no fsync each in WAL mode: after a power loss
    // a package and its position vanish together and are fetched again,
    // and a lost acknowledgement is sent again. Per connection only; the
    // file's other users keep their setting.
    let wal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap_or_default();
    if wal.eq_ignore_ascii_case("wal") {
        let _ = conn.execute_batch("PRAGMA synchronous = NORMAL");
    }
    let mut hub_opts = hub::SyncOptions {
        token: opts.token.clone(),
        once: opts.once,
        window: opts.window,
        poll: opts.poll,
        timeout: opts.timeout,
        max_frame: opts.max_frame,
        failover: failover.to_vec(),
        ..hub::SyncOptions::default()
    };
    if tls {
        let cfg = crate::tls::client_config(opts.ca_cert.as_deref()).map_err(SyncError::Failed)?;
        hub_opts.connector = Some(Arc::new(move |host: &str, port: u16| {
            tls_connect(cfg.clone(), host.to_string(), port)
        }));
    }
    let bar = Arc::new(Mutex::new(false));
    if opts.progress {
        let drawn = bar.clone();
        hub_opts.progress = Some(Arc::new(move |p: Progress| {
            draw(&p);
            if let Ok(mut d) = drawn.lock() {
                *d = true;
            }
        }));
    }
    let r = hub::sync(&mut conn, url, &hub_opts).await;
    if bar.lock().is_ok_and(|d| *d) {
        println!();
    }
    r.map(drop).map_err(SyncError::from)
}

fn tls_connect(cfg: Arc<rustls::ClientConfig>, host: String, port: u16) -> ConnectFuture {
    Box::pin(async move {
        let tcp = hub::connect_tcp(&host, port).await?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| HubError::Config(format!("bad TLS server name {host:?}: {e}")))?;
        let s = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                let m = format!("TLS handshake with {host}:{port} failed: {e}");
                if e.to_string().contains("certificate") {
                    HubError::Config(m + " (a self-signed hub needs --ca-cert)")
                } else {
                    HubError::Connection(m)
                }
            })?;
        Ok(Box::new(s) as Box<dyn HubIo>)
    })
}

/// The progress line: `push [####……] 3/10  pull [……] 0/4 changes`.
fn draw(p: &Progress) {
    let bar = |done: u64, total: u64| {
        let total = total.max(done);
        let w = 20usize;
        let fill = (done * w as u64).checked_div(total).unwrap_or(w as u64) as usize;
        format!(
            "[{}{}] {done}/{total}",
            "#".repeat(fill),
            ".".repeat(w - fill)
        )
    };
    let mut out = std::io::stdout();
    let _ = write!(
        out,
        "\rpush {}  pull {} changes ",
        bar(p.pushed, p.push_total),
        bar(p.pulled, p.pull_total)
    );
    let _ = out.flush();
}

/// `crsql-sync sync`'s progress default: only when stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}
