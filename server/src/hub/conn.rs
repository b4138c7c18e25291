//! One client connection: hello, then pushes applied and acknowledged, and
//! the tenant's other changes sent as they commit, at most `window`
//! packages ahead of the client's acknowledgements.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use super::tenant::{Refusal, Tenant};
use super::{Hub, LiveGuard};
use crate::auth::Grant;
use crate::metrics;
use crate::protocol::{
    hex, inspect_package, ErrorCode, Frame, Hello, Pos, Site, Welcome, PROTOCOL_VERSION,
    WELCOME_READ_ONLY,
};

/// How long a client has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);

/// Acknowledgements are written to the tenant database at most this often
/// per connection (and when the connection ends): they only move
/// `last_sent` (lag, peers, the compaction horizon); where to resume comes
/// from the client's hello.
const ACK_EVERY: Duration = Duration::from_millis(200);

/// How often a connection reads its client's `lag_changes` for the
/// `client_lag_changes` metric.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Frames queued for the writer task: at most `window` packages plus one
/// ack per push being processed and a few control frames.
const OUT_QUEUE: usize = 64;

pub(super) async fn run(hub: Arc<Hub>, tenant: String, socket: WebSocket, guard: LiveGuard) {
    let (sink, mut stream) = socket.split();
    let (out, out_rx) = mpsc::channel::<Message>(OUT_QUEUE);
    let writer = tokio::spawn(writer(sink, out_rx, hub.cfg.write_timeout));
    let mut c = Conn {
        hub: hub.clone(),
        tenant_name: tenant,
        out,
        site: [0; 16],
        tenant: None,
        labels: None,
        unwritten_ack: None,
    };
    let result = c.session(&mut stream).await;
    if let (Some(t), Some(pos)) = (&c.tenant, c.unwritten_ack.take()) {
        let _ = t.ack(c.site, pos).await;
    }
    if let Err(r) = result {
        hub.metrics
            .errors
            .get_or_create(&vec![("code".into(), r.code.as_str().to_string())])
            .inc();
        tracing::info!(tenant = %c.tenant_name, site = %hex(&c.site), code = %r.code, "closing connection: {}", r.message);
        let _ = c
            .out
            .send(Message::Binary(
                Frame::error(r.code, r.message).encode().into(),
            ))
            .await;
    }
    if let Some(labels) = &c.labels {
        hub.metrics
            .clients
            .get_or_create(&metrics::tenant(&c.tenant_name))
            .dec();
        hub.metrics.client_lag.remove(labels);
        hub.metrics.client_lag_changes.remove(labels);
    }
    let _ = c.out.send(Message::Close(None)).await;
    drop(c);
    // The writer ends once it sent the close frame (or the client is gone).
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    drop(guard);
}

/// Write queued frames; a frame the client does not take within
/// `timeout` ends the connection (a client that stopped reading).
async fn writer(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    timeout: Duration,
) {
    while let Some(m) = rx.recv().await {
        let close = matches!(m, Message::Close(_));
        match tokio::time::timeout(timeout, sink.send(m)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::info!("a client did not read for {timeout:?}: dropping it");
                break;
            }
        }
        if close {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
}

struct Conn {
    hub: Arc<Hub>,
    tenant_name: String,
    out: mpsc::Sender<Message>,
    site: Site,
    tenant: Option<Arc<Tenant>>,
    labels: Option<metrics::Labels>,
    /// An acknowledgement received but not yet written (ACK_EVERY).
    unwritten_ack: Option<Pos>,
}

type Stream = futures_util::stream::SplitStream<WebSocket>;

/// What the next frame from the client is, or why there is none.
enum Incoming {
    Frame(Frame),
    Closed,
}

impl Conn {
    async fn send(&self, f: Frame) -> Result<(), Refusal> {
        self.out
            .send(Message::Binary(f.encode().into()))
            .await
            .map_err(|_| Refusal::new(ErrorCode::Internal, "the client is gone"))
    }

    async fn next(&self, stream: &mut Stream) -> Result<Incoming, Refusal> {
        loop {
            let Some(msg) = stream.next().await else {
                return Ok(Incoming::Closed);
            };
            let msg = msg.map_err(|e| {
                let text = e.to_string();
                if text.contains("too long")
                    || text.contains("size")
                    || text.contains("Space limit")
                {
                    Refusal::new(
                        ErrorCode::FrameTooLarge,
                        format!(
                            "frame larger than this hub's limit of {} bytes (--max-frame): {text}",
                            self.hub.cfg.max_frame
                        ),
                    )
                } else {
                    Refusal::new(ErrorCode::BadFrame, format!("WebSocket error: {text}"))
                }
            })?;
            return match msg {
                Message::Binary(b) => Frame::decode(&b)
                    .map(Incoming::Frame)
                    .map_err(|e| Refusal::new(e.code(), e.to_string())),
                Message::Text(_) => Err(Refusal::new(
                    ErrorCode::BadFrame,
                    "text message: the protocol uses binary messages only",
                )),
                Message::Close(_) => Ok(Incoming::Closed),
                Message::Ping(_) | Message::Pong(_) => continue,
            };
        }
    }

    async fn session(&mut self, stream: &mut Stream) -> Result<(), Refusal> {
        let mut shutdown = self.hub.shutdown.clone();
        let hello = tokio::select! {
            r = tokio::time::timeout(HELLO_TIMEOUT, self.next(stream)) => match r {
                Err(_) => return Err(Refusal::new(ErrorCode::BadFrame, "no hello within 15 s")),
                Ok(r) => match r? {
                    Incoming::Closed => return Ok(()),
                    Incoming::Frame(Frame::Hello(h)) => h,
                    Incoming::Frame(other) => return Err(Refusal::new(
                        ErrorCode::BadFrame,
                        format!("expected a hello first, got {}", frame_name(&other)),
                    )),
                },
            },
            _ = super::stopped(&mut shutdown) => return Err(Refusal::new(ErrorCode::ShuttingDown, "the hub is shutting down")),
        };
        self.site = hello.site;
        let Grant { read_only, writers } = self.admit(&hello)?;
        let tenant = self.hub.tenant(&self.tenant_name).await?;
        self.tenant = Some(tenant.clone());
        if hello.schema_hash != tenant.schema_hash {
            return Err(Refusal::new(
                ErrorCode::SchemaMismatch,
                format!(
                    "the client's CRR schema (hash {}) differs from tenant {:?}'s (hash {}): bring the client's tables to the tenant's schema",
                    hex(&hello.schema_hash),
                    self.tenant_name,
                    hex(&tenant.schema_hash)
                ),
            ));
        }
        if hello.site == tenant.site {
            return Err(Refusal::new(
                ErrorCode::ForeignSender,
                "the client has the hub's own site id (a copy of the tenant database?): give it a new one with SELECT crsql_new_site_id()",
            ));
        }
        let client_pos = hello
            .positions
            .iter()
            .find(|(s, _)| *s == tenant.site)
            .map(|(_, p)| *p)
            .unwrap_or(Pos::ZERO);
        let ok = tenant.hello(hello.site, client_pos).await?;
        self.send(Frame::Welcome(Welcome {
            version: PROTOCOL_VERSION,
            hub_site: ok.hub_site,
            schema_hash: ok.schema_hash,
            flags: if read_only { WELCOME_READ_ONLY } else { 0 },
            max_frame: self.hub.cfg.max_frame.min(u32::MAX as usize) as u32,
            applied: ok.applied,
            backlog: ok.backlog,
        }))
        .await?;
        let site_hex = hex(&hello.site);
        tracing::info!(tenant = %self.tenant_name, site = %site_hex, start = %ok.start, read_only, "client connected");
        let m = &self.hub.metrics;
        m.clients
            .get_or_create(&metrics::tenant(&self.tenant_name))
            .inc();
        let labels = metrics::client(&self.tenant_name, &site_hex);
        self.labels = Some(labels.clone());
        let tlabels = metrics::tenant(&self.tenant_name);

        let window = self.hub.cfg.window.max(1);
        let budget = self.hub.package_bytes() * 2;
        let mut version = tenant.version.clone();
        let mut hub_version = *version.borrow_and_update();
        let mut sent = ok.start;
        let mut acked = ok.start;
        let mut inflight: VecDeque<Pos> = VecDeque::new();
        let mut exhausted = false;
        let mut caught_up_sent = false;
        // When the client's lag_changes was last read: at most once a
        // second, not at every pull (a pull follows every tenant commit).
        let mut lag_read: Option<Instant> = None;
        let mut ack_written = Instant::now();
        // Since when the oldest package in flight waits for an ack.
        let mut waiting_since = Instant::now();
        let ack_timeout = self.hub.cfg.write_timeout;
        loop {
            if !exhausted && inflight.len() < window {
                let with_lag = lag_read.is_none_or(|t| t.elapsed() >= LAG_EVERY);
                let pulled = tenant
                    .pull(hello.site, sent, window - inflight.len(), budget, with_lag)
                    .await?;
                for p in pulled.packages {
                    m.packages_out.get_or_create(&tlabels).inc();
                    m.changes_out.get_or_create(&tlabels).inc_by(p.changes);
                    sent = p.cursor;
                    if inflight.is_empty() {
                        waiting_since = Instant::now();
                    }
                    inflight.push_back(p.cursor);
                    self.send(Frame::Package(p.bytes)).await?;
                    caught_up_sent = false;
                }
                exhausted = pulled.exhausted;
                if let Some(lag) = pulled.lag_changes {
                    m.client_lag_changes.get_or_create(&labels).set(lag);
                    lag_read = Some(Instant::now());
                }
            }
            if exhausted && inflight.is_empty() {
                // Everything sent is acknowledged and nothing is left.
                m.client_lag_changes.get_or_create(&labels).set(0);
            }
            if exhausted && !caught_up_sent {
                self.send(Frame::CaughtUp(sent)).await?;
                caught_up_sent = true;
            }
            m.client_lag
                .get_or_create(&labels)
                .set((hub_version - acked.db_version).max(0));
            let flush_at = tokio::time::Instant::from_std(ack_written + ACK_EVERY);
            let incoming = tokio::select! {
                r = self.next(stream) => r?,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(waiting_since + ack_timeout)), if !inflight.is_empty() => {
                    return Err(Refusal::new(
                        ErrorCode::Timeout,
                        format!(
                            "no acknowledgement for {} s with {} packages in flight (--write-timeout)",
                            ack_timeout.as_secs(),
                            inflight.len()
                        ),
                    ));
                }
                _ = tokio::time::sleep_until(flush_at), if self.unwritten_ack.is_some() => {
                    if let Some(pos) = self.unwritten_ack.take() {
                        tenant.ack(hello.site, pos).await?;
                    }
                    ack_written = Instant::now();
                    continue;
                }
                r = version.changed() => {
                    if r.is_err() {
                        return Err(Refusal::new(ErrorCode::ShuttingDown, "the tenant is closing"));
                    }
                    hub_version = *version.borrow_and_update();
                    exhausted = false;
                    continue;
                }
                _ = super::stopped(&mut shutdown) => {
                    return Err(Refusal::new(ErrorCode::ShuttingDown, "the hub is shutting down"));
                }
            };
            let frame = match incoming {
                Incoming::Closed => return Ok(()),
                Incoming::Frame(f) => f,
            };
            match frame {
                Frame::Package(bytes) => {
                    if read_only {
                        return Err(Refusal::new(
                            ErrorCode::ReadOnly,
                            "this token may only pull: the package was not applied",
                        ));
                    }
                    let began = Instant::now();
                    let summary = inspect_package(&bytes).map_err(|e| {
                        Refusal::new(ErrorCode::BadPackage, format!("package refused: {e}"))
                    })?;
                    if summary.sender != hello.site {
                        return Err(Refusal::new(
                            ErrorCode::ForeignSender,
                            format!(
                                "the package was produced by site {}, but this connection is site {}: a client pushes only its own packages",
                                hex(&summary.sender),
                                hex(&hello.site)
                            ),
                        ));
                    }
                    if let Some(w) = &writers {
                        if !w.contains(&hello.site) {
                            return Err(Refusal::new(
                                ErrorCode::Unauthorized,
                                format!(
                                    "site {} is not a writer of tenant {:?}: the package was not applied",
                                    hex(&hello.site),
                                    self.tenant_name
                                ),
                            ));
                        }
                        if let Some(s) = summary.sites.iter().find(|s| !w.contains(*s)) {
                            return Err(Refusal::new(
                                ErrorCode::Unauthorized,
                                format!(
                                    "the package holds changes of site {}, which is not a writer of tenant {:?}: nothing was applied",
                                    hex(s),
                                    self.tenant_name
                                ),
                            ));
                        }
                    }
                    let changes = summary.changes as u64;
                    let applied = tenant.apply(hello.site, bytes, summary.sites).await?;
                    m.apply_seconds.observe(began.elapsed().as_secs_f64());
                    m.packages_in.get_or_create(&tlabels).inc();
                    m.changes_in.get_or_create(&tlabels).inc_by(changes);
                    self.send(Frame::Ack(applied)).await?;
                    // A fresh caught_up after this ack: the client's --once
                    // waits for one.
                    exhausted = false;
                    caught_up_sent = false;
                }
                Frame::Ack(pos) => {
                    if pos > sent {
                        return Err(Refusal::new(
                            ErrorCode::BadFrame,
                            format!("ack of {pos}, but only packages up to {sent} were sent"),
                        ));
                    }
                    acked = acked.max(pos);
                    if ack_written.elapsed() >= ACK_EVERY {
                        self.unwritten_ack = None;
                        tenant.ack(hello.site, acked).await?;
                        ack_written = Instant::now();
                    } else {
                        self.unwritten_ack = Some(acked);
                    }
                    while inflight.front().is_some_and(|c| *c <= pos) {
                        inflight.pop_front();
                        waiting_since = Instant::now();
                    }
                }
                Frame::Error(e) => {
                    tracing::info!(tenant = %self.tenant_name, site = %site_hex, code = %e.code, "client reported an error: {}", e.message);
                    return Ok(());
                }
                other => {
                    return Err(Refusal::new(
                        ErrorCode::BadFrame,
                        format!("unexpected {} frame from a client", frame_name(&other)),
                    ))
                }
            }
        }
    }

    /// Tenant and token checks of a hello (the decoder checked the
    /// version): what the token may do.
    fn admit(&self, hello: &Hello) -> Result<Grant, Refusal> {
        if hello.tenant != self.tenant_name {
            return Err(Refusal::new(
                ErrorCode::BadTenant,
                format!(
                    "the hello names tenant {:?} but the URL path names {:?}",
                    hello.tenant, self.tenant_name
                ),
            ));
        }
        match &self.hub.cfg.auth {
            None => Ok(Grant {
                read_only: false,
                writers: None,
            }),
            Some(a) => a
                .check(&self.tenant_name, &hello.token)
                .map_err(|m| Refusal::new(ErrorCode::Unauthorized, m)),
        }
    }
}

fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Hello(_) => "hello",
        Frame::Welcome(_) => "welcome",
        Frame::Package(_) => "package",
        Frame::Ack(_) => "ack",
        Frame::CaughtUp(_) => "caught_up",
        Frame::Error(_) => "error",
    }
}
