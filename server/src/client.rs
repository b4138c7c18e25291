//! `crsql-sync sync`: sync one SQLite file with a hub.
//!
//! The database gets two streams per hub (named by the hub's site id):
//! `crsql_hub_to_<hub>` (outbound, `local_only = 1`: only this site's own
//! changes go up) and `crsql_hub_from_<hub>` (inbound). Their positions are
//! stored in the database, so a restarted sync resumes where it was.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crsql_stream_rs::rusqlite::{self, Connection, OptionalExtension};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::db;
use crate::protocol::{hex, ErrorCode, Frame, Hello, Pos, PROTOCOL_VERSION, WELCOME_READ_ONLY};

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

/// What ended one connection.
enum End {
    /// `--once` and caught up both ways.
    Done,
    /// Retry after a pause (connection lost, hub restarting, …).
    Retry(String),
    Fatal(SyncError),
}

fn sql(e: rusqlite::Error) -> End {
    End::Fatal(SyncError::Failed(format!("database: {}", db::message(&e))))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// `ws://host:port/tenant` or `wss://…`: (tls, host, port, tenant).
pub fn parse_url(url: &str) -> Result<(bool, String, u16, String), String> {
    let bad = |why: &str| {
        format!("bad hub URL {url:?}: {why} (expected ws://HOST:PORT/<tenant> or wss://…)")
    };
    let (tls, rest) = if let Some(r) = url.strip_prefix("ws://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (true, r)
    } else {
        return Err(bad("the scheme must be ws or wss"));
    };
    let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no tenant path"))?;
    let tenant = path.trim_end_matches('/');
    if !crate::protocol::valid_tenant(tenant) {
        return Err(bad(
            "the path must be one tenant name (1-64 of A-Z a-z 0-9 _ -)",
        ));
    }
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, p) = r.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h.to_string(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| bad("bad port"))?,
        None => {
            if tls {
                443
            } else {
                80
            }
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok((tls, host, port, tenant.to_string()))
}

/// Sync until caught up (`once`) or for ever, reconnecting with backoff;
/// with several URLs, each reconnection goes to the next hub.
pub async fn sync(opts: SyncOptions) -> Result<(), SyncError> {
    let mut hubs = Vec::new();
    for url in &opts.urls {
        let (tls, host, port, tenant) = parse_url(url).map_err(SyncError::Failed)?;
        let tls_cfg = if tls {
            Some(crate::tls::client_config(opts.ca_cert.as_deref()).map_err(SyncError::Failed)?)
        } else {
            None
        };
        hubs.push((host, port, tenant, tls_cfg));
    }
    let Some(tenant) = hubs.first().map(|h| h.2.clone()) else {
        return Err(SyncError::Failed("no hub URL (--url)".into()));
    };
    if let Some(h) = hubs.iter().find(|h| h.2 != tenant) {
        return Err(SyncError::Failed(format!(
            "every --url must name the same tenant: {tenant:?} and {:?}",
            h.2
        )));
    }
    let conn = db::open(&opts.db).map_err(|e| {
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
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let mut backoff = Duration::from_millis(100);
    let mut next = 0usize;
    loop {
        let (host, port, _, tls_cfg) = &hubs[next % hubs.len()];
        next += 1;
        let attempt = async {
            match connect(host, *port, tls_cfg.clone()).await {
                Ok(io) => session(&opts, &conn, host, *port, &tenant, io).await,
                Err(e) => e,
            }
        };
        let end = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), attempt).await {
                Ok(end) => end,
                Err(_) => {
                    return Err(SyncError::Failed(format!(
                        "not caught up after {:?} (--timeout)",
                        opts.timeout.unwrap_or_default()
                    )))
                }
            },
            None => attempt.await,
        };
        match end {
            End::Done => return Ok(()),
            End::Fatal(e) => return Err(e),
            End::Retry(why) => {
                tracing::warn!("{host}:{port}: {why}; reconnecting in {backoff:?}");
                let sleep = tokio::time::sleep(jitter(backoff));
                match deadline {
                    Some(d) if Instant::now() + backoff > d => {
                        return Err(SyncError::Failed(format!(
                            "not caught up before --timeout; last error: {why}"
                        )))
                    }
                    _ => sleep.await,
                }
                // Several hubs: the backoff grows once every hub was tried.
                if next % hubs.len() == 0 {
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

fn jitter(d: Duration) -> Duration {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d + d.mul_f64((n % 1000) as f64 / 2000.0)
}

async fn connect(
    host: &str,
    port: u16,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
) -> Result<Box<dyn Io>, End> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| End::Retry(format!("connecting to {host}:{port} timed out")))?
    .map_err(|e| End::Retry(format!("cannot connect to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    match tls {
        None => Ok(Box::new(tcp)),
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                End::Fatal(SyncError::Failed(format!(
                    "bad TLS server name {host:?}: {e}"
                )))
            })?;
            let s = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    let m = format!("TLS handshake with {host}:{port} failed: {e}");
                    if e.to_string().contains("certificate") {
                        End::Fatal(SyncError::Failed(
                            m + " (a self-signed hub needs --ca-cert)",
                        ))
                    } else {
                        End::Retry(m)
                    }
                })?;
            Ok(Box::new(s))
        }
    }
}

struct Progress {
    on: bool,
    pushed: u64,
    push_total: u64,
    pulled: u64,
    pull_total: u64,
    last: Option<Instant>,
}

impl Progress {
    fn draw(&mut self, force: bool) {
        if !self.on {
            return;
        }
        if !force
            && self
                .last
                .is_some_and(|l| l.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
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
            bar(self.pushed, self.push_total),
            bar(self.pulled, self.pull_total)
        );
        let _ = out.flush();
    }
}

async fn session(
    opts: &SyncOptions,
    conn: &Connection,
    host: &str,
    port: u16,
    tenant: &str,
    io: Box<dyn Io>,
) -> End {
    let mut request = match format!("ws://localhost/{tenant}").into_client_request() {
        Ok(r) => r,
        Err(e) => return End::Fatal(SyncError::Failed(e.to_string())),
    };
    // The Host header names the hub as given.
    if let Ok(v) = format!("{host}:{port}").parse() {
        request.headers_mut().insert("host", v);
    }
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(opts.max_frame);
    cfg.max_frame_size = Some(opts.max_frame);
    let ws = match tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::client_async_with_config(request, io, Some(cfg)),
    )
    .await
    {
        Err(_) => return End::Retry("WebSocket handshake timed out".into()),
        Ok(Err(e)) => return End::Retry(format!("WebSocket handshake failed: {e}")),
        Ok(Ok((ws, _))) => ws,
    };
    let (mut sink, mut stream) = ws.split();
    // Writes go through an unbounded queue so reading never waits on
    // writing; it stays small: at most `window` packages, and one ack per
    // package the hub sent (the hub sends at most its window ahead).
    let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let end = run_session(opts, conn, tenant, &out, &mut stream).await;
    if let End::Fatal(SyncError::Failed(m)) = &end {
        let _ = out.send(Message::Binary(
            Frame::error(ErrorCode::Internal, m.clone()).encode().into(),
        ));
    }
    let _ = out.send(Message::Close(None));
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    end
}

type WsStream = futures_util::stream::SplitStream<tokio_tungstenite::WebSocketStream<Box<dyn Io>>>;

async fn next_frame(stream: &mut WsStream) -> Result<Frame, End> {
    loop {
        match stream.next().await {
            None => return Err(End::Retry("the hub closed the connection".into())),
            Some(Err(e)) => return Err(End::Retry(format!("connection lost: {e}"))),
            Some(Ok(Message::Binary(b))) => {
                return match Frame::decode(&b) {
                    Ok(Frame::Error(e)) => Err(if e.code.is_fatal() {
                        End::Fatal(SyncError::Refused(e.code, e.message))
                    } else {
                        End::Retry(format!("hub error {}: {}", e.code, e.message))
                    }),
                    Ok(f) => Ok(f),
                    Err(e) => Err(End::Retry(format!("bad frame from the hub: {e}"))),
                }
            }
            Some(Ok(Message::Close(_))) => {
                return Err(End::Retry("the hub closed the connection".into()))
            }
            Some(Ok(_)) => continue,
        }
    }
}

async fn run_session(
    opts: &SyncOptions,
    conn: &Connection,
    tenant: &str,
    out: &mpsc::UnboundedSender<Message>,
    stream: &mut WsStream,
) -> End {
    let send = |f: Frame| {
        out.send(Message::Binary(f.encode().into()))
            .map_err(|_| End::Retry("writer gone".into()))
    };
    let site = match db::site_id(conn) {
        Ok(s) => s,
        Err(e) => return sql(e),
    };
    let (schema_hash, positions) = match (db::schema_hash(conn), db::client_positions(conn)) {
        (Ok(h), Ok(p)) => (h, p),
        (Err(e), _) | (_, Err(e)) => return sql(e),
    };
    if let Err(e) = send(Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        site,
        schema_hash,
        tenant: tenant.to_string(),
        token: opts.token.clone().unwrap_or_default().into_bytes(),
        positions,
    })) {
        return e;
    }
    let welcome = match tokio::time::timeout(Duration::from_secs(30), next_frame(stream)).await {
        Err(_) => return End::Retry("no welcome from the hub within 30 s".into()),
        Ok(Err(e)) => return e,
        Ok(Ok(Frame::Welcome(w))) => w,
        Ok(Ok(other)) => return End::Retry(format!("expected a welcome, got {other:?}")),
    };
    let read_only = welcome.flags & WELCOME_READ_ONLY != 0;
    let hub = welcome.hub_site;
    let (out_name, in_name) = (db::client_out(&hub), db::client_in(&hub));
    let h = hex(&hub);
    let package_bytes = (welcome.max_frame as usize)
        .min(opts.max_frame)
        .saturating_sub(64)
        .max(1024);
    let setup = || -> rusqlite::Result<Pos> {
        if !db::stream_exists(conn, &out_name)? {
            conn.execute_batch(&format!(
                "CREATE VIRTUAL TABLE {} USING crsql_OutboundStream(local_only = 1, peer = '{h}', max_bytes = {package_bytes})",
                db::ident(&out_name)
            ))?;
        }
        if !db::stream_exists(conn, &in_name)? {
            conn.execute_batch(&format!(
                "CREATE VIRTUAL TABLE {} USING crsql_InboundStream(from = '{h}')",
                db::ident(&in_name)
            ))?;
        }
        db::last_sent(conn, &out_name)
    };
    let last_sent = match setup() {
        Ok(p) => p,
        Err(e) => return sql(e),
    };
    let newest = match db::db_version(conn) {
        Ok(v) => v,
        Err(e) => return sql(e),
    };
    if welcome.applied.db_version > newest {
        return End::Fatal(SyncError::Failed(format!(
            "the hub applied this site's changes up to {}, but this database's newest version is {newest}: it was restored from a backup or copied; give it a new site id with SELECT crsql_new_site_id() (docs/operations.md)",
            welcome.applied
        )));
    }
    if welcome.applied < last_sent {
        tracing::warn!(
            "the hub has this site's changes only up to {} (acknowledged: {last_sent}): sending again from there",
            welcome.applied
        );
        let r = conn
            .prepare(&format!(
                "INSERT INTO {}(rewind) VALUES (?1)",
                db::ident(&out_name)
            ))
            .and_then(|mut s| s.execute([welcome.applied.to_string()]));
        if let Err(e) = r {
            return sql(e);
        }
    }
    tracing::info!(hub = %h, read_only, applied = %welcome.applied, "connected");
    let mut progress = Progress {
        on: opts.progress,
        pushed: 0,
        push_total: 0,
        pulled: 0,
        pull_total: welcome.backlog,
        last: None,
    };
    if read_only {
        let pending: i64 = conn
            .query_row(
                "SELECT count(*) FROM crsql_changes WHERE db_version > ?1 AND site_id IS crsql_site_id()",
                [welcome.applied.db_version],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if pending > 0 {
            tracing::warn!(
                "the token is read-only: pulling only; {pending} local changes are not pushed"
            );
        }
    }
    if progress.on && !read_only {
        progress.push_total = conn
            .query_row(
                "SELECT count(*) FROM crsql_changes WHERE db_version > ?1 AND site_id IS crsql_site_id()",
                [welcome.applied.db_version],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0)
            .max(0) as u64;
    }
    let read_sql = format!(
        "SELECT package, cursor, changes FROM {} WHERE cursor > ?1 LIMIT 1",
        db::ident(&out_name)
    );
    let ack_sql = format!(
        "INSERT INTO {}(last_sent) VALUES (?1)",
        db::ident(&out_name)
    );
    let apply_sql = format!("INSERT INTO {}(package) VALUES (?1)", db::ident(&in_name));
    let window = opts.window.max(1);
    let mut push_cursor = welcome.applied;
    let mut inflight: VecDeque<(Pos, u64)> = VecDeque::new();
    let mut push_exhausted = read_only;
    let mut caught_up = false;
    let data_version = || conn.query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0));
    let mut seen_version = data_version().unwrap_or(0);
    let mut tick = tokio::time::interval(opts.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while !push_exhausted && inflight.len() < window {
            let next = conn.prepare_cached(&read_sql).and_then(|mut s| {
                s.query_row([push_cursor.to_string()], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .optional()
            });
            match next {
                Err(e) => {
                    let m = db::message(&e);
                    if m.contains("resync required") {
                        return End::Fatal(SyncError::Refused(ErrorCode::ResyncRequired, m));
                    }
                    return sql(e);
                }
                Ok(None) => push_exhausted = true,
                Ok(Some((bytes, cursor, changes))) => {
                    let cursor = match db::pos_of(Some(cursor)) {
                        Ok(c) => c,
                        Err(e) => return sql(e),
                    };
                    if let Err(e) = send(Frame::Package(bytes)) {
                        return e;
                    }
                    push_cursor = cursor;
                    inflight.push_back((cursor, changes.max(0) as u64));
                }
            }
        }
        progress.draw(false);
        if opts.once && push_exhausted && inflight.is_empty() && caught_up {
            progress.draw(true);
            if progress.on {
                println!();
            }
            return End::Done;
        }
        let frame = tokio::select! {
            f = next_frame(stream) => match f {
                Ok(f) => f,
                Err(e) => return e,
            },
            _ = tick.tick() => {
                if let Ok(v) = data_version() {
                    if v != seen_version {
                        seen_version = v;
                        push_exhausted = read_only;
                    }
                }
                continue;
            }
        };
        match frame {
            Frame::Package(bytes) => {
                caught_up = false;
                let n = if progress.on {
                    crate::protocol::inspect_package(&bytes).map_or(0, |s| s.changes as u64)
                } else {
                    0
                };
                let applied = conn
                    .prepare_cached(&apply_sql)
                    .and_then(|mut s| s.execute([&bytes]))
                    .and_then(|_| db::last_applied(conn, &in_name));
                match applied {
                    Ok(pos) => {
                        if let Err(e) = send(Frame::Ack(pos)) {
                            return e;
                        }
                        progress.pulled += n;
                    }
                    Err(e) => {
                        let m = db::message(&e);
                        let code = if m.contains("schema mismatch") || m.contains("not a CRR here")
                        {
                            ErrorCode::SchemaMismatch
                        } else if m.contains(": gap: ") {
                            ErrorCode::Gap
                        } else {
                            ErrorCode::BadPackage
                        };
                        let _ = send(Frame::error(code.clone(), m.clone()));
                        if code == ErrorCode::SchemaMismatch {
                            return End::Fatal(SyncError::Refused(code, m));
                        }
                        return End::Retry(format!("applying a package from the hub: {m}"));
                    }
                }
            }
            Frame::Ack(pos) => {
                if let Err(e) = conn
                    .prepare_cached(&ack_sql)
                    .and_then(|mut s| s.execute([pos.to_string()]))
                {
                    return sql(e);
                }
                while inflight.front().is_some_and(|(c, _)| *c <= pos) {
                    if let Some((_, n)) = inflight.pop_front() {
                        progress.pushed += n;
                    }
                }
                if inflight.is_empty() {
                    caught_up = false;
                }
            }
            Frame::CaughtUp(_) => caught_up = inflight.is_empty(),
            other => return End::Retry(format!("unexpected frame from the hub: {other:?}")),
        }
    }
}

/// `crsql-sync sync`'s progress default: only when stdout is a terminal.
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}
