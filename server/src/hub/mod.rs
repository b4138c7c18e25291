//! `crsql-sync serve`: the hub.

mod conn;
pub mod nats;
pub mod tenant;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Mutex, Notify};

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::protocol::{valid_tenant, ErrorCode};
use tenant::{Refusal, Tenant, TenantConfig};

/// The hub's settings (`crsql-sync serve`).
pub struct Config {
    pub data_dir: PathBuf,
    pub schema_dir: Option<PathBuf>,
    pub listen: SocketAddr,
    pub auth: Option<Auth>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Largest frame accepted from a client.
    pub max_frame: usize,
    /// Packages sent to one client and not yet acknowledged.
    pub window: usize,
    /// How long a frame may take to be written to a client.
    pub write_timeout: Duration,
    /// How long shutdown waits for connections to close.
    pub shutdown_grace: Duration,
    /// Scale-out over NATS JetStream.
    pub nats: Option<nats::NatsConfig>,
}

pub(crate) struct Hub {
    pub cfg: Config,
    pub metrics: Metrics,
    nats: Option<Arc<nats::Nats>>,
    tenants: Mutex<HashMap<String, Arc<Tenant>>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
    pub shutdown: watch::Receiver<bool>,
    live: AtomicUsize,
    idle: Notify,
}

/// Counts a live WebSocket connection until dropped.
pub(crate) struct LiveGuard(Arc<Hub>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Hub {
    pub(crate) fn live_guard(self: &Arc<Hub>) -> LiveGuard {
        self.live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(self.clone())
    }

    /// The tenant, opened (and created from its schema file) on first use.
    pub(crate) async fn tenant(self: &Arc<Self>, name: &str) -> Result<Arc<Tenant>, Refusal> {
        let mut map = self.tenants.lock().await;
        if let Some(t) = map.get(name) {
            return Ok(t.clone());
        }
        if *self.shutdown.borrow() {
            return Err(Refusal::new(
                ErrorCode::ShuttingDown,
                "the hub is shutting down",
            ));
        }
        let cfg = TenantConfig {
            data_dir: self.cfg.data_dir.clone(),
            schema_dir: self.cfg.schema_dir.clone(),
            package_bytes: self.package_bytes(),
            nats_package_bytes: self.nats.as_ref().map(|n| n.package_bytes),
        };
        let n = name.to_string();
        let (t, thread) = tokio::task::spawn_blocking(move || Tenant::open(&n, &cfg))
            .await
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.to_string()))??;
        tracing::info!(tenant = name, site = %crate::protocol::hex(&t.site), "tenant opened");
        self.threads.lock().expect("threads").push(thread);
        let t = Arc::new(t);
        if let Some(n) = &self.nats {
            nats::attach(self, n, &t).await?;
        }
        map.insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// `max_bytes` of the outbound streams: a package plus its type byte
    /// fits in a frame.
    pub(crate) fn package_bytes(&self) -> usize {
        self.cfg.max_frame.saturating_sub(64).max(1024)
    }
}

/// Run the hub until `stop` resolves (SIGTERM or ctrl-c in the binary),
/// then close every connection (an error `shutting_down` first), finish
/// the queued database work and close the tenant databases.
pub async fn serve(
    cfg: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", cfg.data_dir.display()))?;
    if cfg.auth.is_none() {
        tracing::warn!(
            "no --auth file: every tenant is open to anyone who can connect (development mode)"
        );
    }
    let nats = match &cfg.nats {
        None => None,
        Some(n) => {
            let link = nats::Nats::connect(n, cfg.max_frame).await?;
            tracing::info!(url = %n.url, max_age = ?n.max_age, "NATS JetStream connected");
            Some(Arc::new(link))
        }
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let scheme = if cfg.tls.is_some() { "wss" } else { "ws" };
    tracing::info!("listening on {scheme}://{local}/<tenant>");
    // For scripts and tests that listen on port 0.
    println!("listening on {scheme}://{local}");
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let tls = cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let hub = Arc::new(Hub {
        cfg,
        metrics: Metrics::new(),
        nats,
        tenants: Mutex::new(HashMap::new()),
        threads: std::sync::Mutex::new(Vec::new()),
        shutdown: shutdown_rx.clone(),
        live: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    if hub.nats.is_some() {
        // A hub of a cluster follows every tenant it has, not only those
        // its clients use.
        // One that cannot be opened now (busy, a disk error) is tried
        // again, backing off to every 30 s, until it opens or the hub
        // stops: no client may ever come to open it.
        let hub = hub.clone();
        tokio::spawn(async move {
            let mut pending = known_tenants(&hub.cfg);
            let mut wait = Duration::from_secs(1);
            let mut stop = hub.shutdown.clone();
            loop {
                let mut failed = Vec::new();
                for name in pending {
                    if let Err(e) = hub.tenant(&name).await {
                        tracing::warn!(tenant = %name, "cannot open the tenant (trying again in {wait:?}): {}", e.message);
                        failed.push(name);
                    }
                }
                if failed.is_empty() {
                    break;
                }
                pending = failed;
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped(&mut stop) => break,
                }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/{tenant}", get(upgrade))
        .with_state(hub.clone());

    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let mut sd = shutdown_rx.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let mut app = app.clone();
                async move {
                    use tower_service::Service;
                    app.call(req).await
                }
            });
            // A peer that does not finish its request headers in 10 s is
            // dropped (slow-loris); upgraded connections are not affected.
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let res = match tls {
                None => {
                    let c = http
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades();
                    tokio::pin!(c);
                    tokio::select! {
                        r = &mut c => r,
                        _ = stopped(&mut sd) => { c.as_mut().graceful_shutdown(); c.await }
                    }
                }
                Some(acc) => {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acc.accept(tcp))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let c = http
                        .serve_connection(TokioIo::new(tls), svc)
                        .with_upgrades();
                    tokio::pin!(c);
                    tokio::select! {
                        r = &mut c => r,
                        _ = stopped(&mut sd) => { c.as_mut().graceful_shutdown(); c.await }
                    }
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, "HTTP connection: {e}");
            }
        });
    }

    tracing::info!("shutting down: closing connections");
    drop(listener);
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + hub.cfg.shutdown_grace;
    loop {
        let idle = hub.idle.notified();
        if hub.live.load(Ordering::SeqCst) == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, idle).await.is_err() {
            tracing::warn!(
                "{} connections still open after the grace period",
                hub.live.load(Ordering::SeqCst)
            );
            break;
        }
    }
    hub.tenants.lock().await.clear();
    let threads = std::mem::take(&mut *hub.threads.lock().expect("threads"));
    drop(app);
    let join = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    if tokio::time::timeout(hub.cfg.shutdown_grace, join)
        .await
        .is_err()
    {
        tracing::warn!("tenant databases still busy after the grace period");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Tenants of the data directory (`<tenant>.db`) and the schema directory
/// (`<tenant>.sql`).
fn known_tenants(cfg: &Config) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    let dirs = [
        (Some(&cfg.data_dir), "db"),
        (cfg.schema_dir.as_ref(), "sql"),
    ];
    for (dir, ext) in dirs {
        let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) == Some(ext) {
                if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                    if valid_tenant(stem) {
                        out.insert(stem.to_string());
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Resolves once the shutdown flag is set.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        hub.metrics.render(),
    )
        .into_response()
}

async fn upgrade(
    State(hub): State<Arc<Hub>>,
    Path(tenant): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !valid_tenant(&tenant) {
        return (
            StatusCode::NOT_FOUND,
            format!("not a tenant name: {tenant:?} (1-64 of A-Z a-z 0-9 _ -, not starting with _ or -)\n"),
        )
            .into_response();
    }
    let Ok(ws) = ws else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "this is a crsql-sync hub: connect with a WebSocket client (crsql-sync sync --url ws://HOST:PORT/<tenant>)\n",
        )
            .into_response();
    };
    let max = hub.cfg.max_frame;
    let guard = hub.live_guard();
    // Small I/O buffers: an idle connection then costs a few KiB; a large
    // frame grows them while it is read.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(16 << 10)
        .write_buffer_size(16 << 10)
        .on_upgrade(move |socket| conn::run(hub, tenant, socket, guard))
}
