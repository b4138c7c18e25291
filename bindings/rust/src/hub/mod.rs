//! A client of the `crsql-sync` hub (feature `hub`): sync a database with a
//! hub over the wire protocol of docs/protocol.md, async on tokio.
//!
//! ```no_run
//! # async fn f() -> Result<(), crsql_stream_rs::hub::HubError> {
//! use crsql_stream_rs::hub::{self, SyncOptions};
//! let mut conn = crsql_stream_rs::rusqlite::Connection::open("a.db").unwrap();
//! crsql_stream_rs::load(&conn).unwrap();
//! let done = hub::sync(&mut conn, "ws://127.0.0.1:8080/acme",
//!     &SyncOptions::new().token("s3cret").progress(|p| println!("{}/{}", p.done(), p.total()))).await?;
//! println!("pushed {} and pulled {} changes", done.pushed, done.pulled);
//! # Ok(()) }
//! ```
//!
//! The database gets two streams per hub (named by the hub's site id):
//! `crsql_hub_to_<hub>` (outbound, `local_only = 1`: only this site's own
//! changes go up) and `crsql_hub_from_<hub>` (inbound). Their positions are
//! stored in the database, so every sync resumes where the last one stopped,
//! and a lost connection is resumed the same way: reconnect, hello, go on.
//! This is the client `crsql-sync sync` runs.

pub mod db;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rusqlite::{Connection, OptionalExtension};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// The wire protocol (frames, error codes, positions): the
/// `crsql-sync-protocol` crate of the hub.
pub use crsql_sync_protocol as protocol;
pub use protocol::ErrorCode;
use protocol::{hex, Frame, Hello, Pos, PROTOCOL_VERSION, WELCOME_READ_ONLY};

/// A byte stream to the hub: a TCP connection, or a TLS stream over one.
pub trait HubIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> HubIo for T {}

/// What a [`Connector`] returns.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Box<dyn HubIo>, HubError>> + Send>>;

/// Opens the byte stream to `(host, port)` for a `wss://` URL (TLS is the
/// application's choice of library; `crsql-sync` uses rustls). A
/// [`HubError::Connection`] is retried, any other error ends the sync.
pub type Connector = Arc<dyn Fn(&str, u16) -> ConnectFuture + Send + Sync>;

/// Progress of one connection, in changes (a package's change count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Local changes pushed and acknowledged by the hub.
    pub pushed: u64,
    /// Local changes the hub lacked when the connection started (counted
    /// only when a progress callback is set).
    pub push_total: u64,
    /// Changes pulled from the hub and applied.
    pub pulled: u64,
    /// About how many changes the hub held for this client at the hello.
    pub pull_total: u64,
}

impl Progress {
    /// Changes moved either way.
    pub fn done(&self) -> u64 {
        self.pushed + self.pulled
    }
    /// What was expected either way (never below [`done`](Self::done)).
    pub fn total(&self) -> u64 {
        (self.push_total + self.pull_total).max(self.done())
    }
}

/// A progress callback.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// Settings of [`sync`]. `SyncOptions::new()` gives the defaults of
/// `crsql-sync sync --once`.
#[derive(Clone)]
pub struct SyncOptions {
    /// The token of the hub's auth file (none: an empty token).
    pub token: Option<String>,
    /// Stop once everything is pushed and pulled (`true`), or stay connected
    /// for ever, pushing local commits and applying what arrives.
    pub once: bool,
    /// Packages pushed and not yet acknowledged (default 8).
    pub window: usize,
    /// How often to look for local commits (of any connection; 50 ms).
    pub poll: Duration,
    /// Give up after this long ([`HubError::Timeout`]); `None`: never.
    pub timeout: Option<Duration>,
    /// Give up after this many failed connections in a row, with the last
    /// error; `None`: never (the default).
    pub max_retries: Option<u32>,
    /// Longest pause between reconnections (the backoff doubles from
    /// 100 ms up to this; default 10 s).
    pub max_backoff: Duration,
    /// Largest frame accepted from the hub (default 64 MiB).
    pub max_frame: usize,
    /// Called with the progress after each step, at most every 100 ms and
    /// once at the end.
    pub progress: Option<ProgressFn>,
    /// How to open `wss://` connections; without one, `wss://` is a
    /// [`HubError::Config`].
    pub connector: Option<Connector>,
    /// Other hubs of the same cluster (`crsql-sync serve --nats`), for the
    /// same tenant: each reconnection goes to the next hub in turn, the
    /// `url` of [`sync`] first. Positions are the same whichever hub
    /// serves, so failing over loses and repeats nothing.
    pub failover: Vec<String>,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            token: None,
            once: true,
            window: 8,
            poll: Duration::from_millis(50),
            timeout: None,
            max_retries: None,
            max_backoff: Duration::from_secs(10),
            max_frame: 64 << 20,
            progress: None,
            connector: None,
            failover: Vec::new(),
        }
    }
}

impl fmt::Debug for SyncOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncOptions")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("once", &self.once)
            .field("window", &self.window)
            .field("poll", &self.poll)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("max_backoff", &self.max_backoff)
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl SyncOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    pub fn once(mut self, once: bool) -> Self {
        self.once = once;
        self
    }
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = Some(n);
        self
    }
    pub fn progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }
    pub fn connector(mut self, c: Connector) -> Self {
        self.connector = Some(c);
        self
    }
}

/// Why a sync stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HubError {
    /// An error code of the protocol (docs/protocol.md), sent by the hub or
    /// raised by this client (e.g. `schema_mismatch` applying a package).
    /// Codes that retrying cannot fix ([`ErrorCode::is_fatal`]) end the sync
    /// at once; the others only when retries or time run out.
    Code { code: ErrorCode, message: String },
    /// No connection, or it was lost (when retries or time run out).
    Connection(String),
    /// Not caught up within [`SyncOptions::timeout`]; the last error.
    Timeout(String),
    /// The local database failed (the extension's message).
    Database(String),
    /// A bad URL or setting.
    Config(String),
}

impl HubError {
    /// The protocol's error code, if this is one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            HubError::Code { code, .. } => Some(code),
            _ => None,
        }
    }
    fn retryable(&self) -> bool {
        match self {
            HubError::Code { code, .. } => !code.is_fatal(),
            HubError::Connection(_) => true,
            _ => false,
        }
    }
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubError::Code { code, message } => write!(f, "hub error {code}: {message}"),
            HubError::Connection(m)
            | HubError::Timeout(m)
            | HubError::Database(m)
            | HubError::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HubError {}

fn sql(e: rusqlite::Error) -> HubError {
    HubError::Database(format!("database: {}", db::message(&e)))
}

fn code(code: ErrorCode, message: impl Into<String>) -> HubError {
    HubError::Code {
        code,
        message: message.into(),
    }
}

/// A parsed hub URL: `ws://HOST:PORT/<tenant>` or `wss://…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub tenant: String,
}

impl std::str::FromStr for HubUrl {
    type Err = HubError;
    fn from_str(url: &str) -> Result<HubUrl, HubError> {
        let bad = |why: &str| {
            HubError::Config(format!(
                "bad hub URL {url:?}: {why} (expected ws://HOST:PORT/<tenant> or wss://…)"
            ))
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
        if !protocol::valid_tenant(tenant) {
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
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(HubUrl {
            tls,
            host,
            port,
            tenant: tenant.to_string(),
        })
    }
}

/// What ended one connection.
enum End {
    /// `once` and caught up both ways.
    Done(Progress),
    /// Retry after a pause (connection lost, hub restarting, …), unless the
    /// error is not retryable.
    Failed(HubError),
}

impl From<HubError> for End {
    fn from(e: HubError) -> End {
        End::Failed(e)
    }
}

/// Sync `conn` with the hub at `url` (`ws://HOST:PORT/<tenant>` or, with a
/// [`Connector`], `wss://…`): push this site's changes and pull everyone
/// else's until caught up ([`SyncOptions::once`]) or for ever, reconnecting
/// with backoff (100 ms doubling to [`SyncOptions::max_backoff`], with
/// jitter). Returns the progress of the last connection.
///
/// The future holds `conn` exclusively (so it is `Send` and may be spawned);
/// other connections to the same file may write meanwhile: their commits
/// are pushed within [`SyncOptions::poll`].
pub async fn sync(
    conn: &mut Connection,
    url: &str,
    opts: &SyncOptions,
) -> Result<Progress, HubError> {
    let mut hubs = Vec::with_capacity(1 + opts.failover.len());
    for u in std::iter::once(url).chain(opts.failover.iter().map(String::as_str)) {
        let u: HubUrl = u.parse()?;
        if u.tls && opts.connector.is_none() {
            return Err(HubError::Config(format!(
                "wss://{}:{}/{}: this client has no TLS connector (SyncOptions::connector)",
                u.host, u.port, u.tenant
            )));
        }
        if let Some(first) = hubs.first().filter(|f: &&HubUrl| f.tenant != u.tenant) {
            return Err(HubError::Config(format!(
                "every hub URL must name the same tenant: {:?} and {:?}",
                first.tenant, u.tenant
            )));
        }
        hubs.push(u);
    }
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    let mut turn = 0usize;
    loop {
        let url = &hubs[turn % hubs.len()];
        turn += 1;
        let attempt = async {
            let io = match (&opts.connector, url.tls) {
                (Some(c), true) => c(&url.host, url.port).await?,
                _ => Box::new(connect_tcp(&url.host, url.port).await?) as Box<dyn HubIo>,
            };
            Ok::<_, HubError>(session(opts, conn, url, io).await)
        };
        let end = match deadline {
            Some(d) => match tokio::time::timeout_at(d.into(), attempt).await {
                Ok(end) => end,
                Err(_) => {
                    return Err(HubError::Timeout(format!(
                        "not caught up after {:?} (timeout)",
                        opts.timeout.unwrap_or_default()
                    )))
                }
            },
            None => attempt.await,
        };
        let why = match end {
            Ok(End::Done(p)) => return Ok(p),
            Ok(End::Failed(e)) | Err(e) => e,
        };
        failures += 1;
        if !why.retryable() || opts.max_retries.is_some_and(|n| failures > n) {
            return Err(why);
        }
        tracing::warn!(
            "{}:{}: {why}; reconnecting in {backoff:?}",
            url.host,
            url.port
        );
        if deadline.is_some_and(|d| Instant::now() + backoff > d) {
            return Err(HubError::Timeout(format!(
                "not caught up before the timeout; last error: {why}"
            )));
        }
        tokio::time::sleep(jitter(backoff)).await;
        // Several hubs: the backoff grows once every hub was tried.
        if turn % hubs.len() == 0 {
            backoff = (backoff * 2).min(opts.max_backoff.max(Duration::from_millis(1)));
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

/// A TCP connection to `(host, port)` (no delay), within 10 s.
pub async fn connect_tcp(host: &str, port: u16) -> Result<tokio::net::TcpStream, HubError> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .map_err(|_| HubError::Connection(format!("connecting to {host}:{port} timed out")))?
    .map_err(|e| HubError::Connection(format!("cannot connect to {host}:{port}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Reports progress at most every 100 ms (and when forced).
struct Reporter<'a> {
    f: Option<&'a ProgressFn>,
    p: Progress,
    last: Option<Instant>,
}

impl Reporter<'_> {
    fn report(&mut self, force: bool) {
        let Some(f) = self.f else { return };
        if !force
            && self
                .last
                .is_some_and(|l| l.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(Instant::now());
        f(self.p);
    }
}

async fn session(
    opts: &SyncOptions,
    conn: &mut Connection,
    url: &HubUrl,
    io: impl HubIo + 'static,
) -> End {
    let mut request = match format!("ws://localhost/{}", url.tenant).into_client_request() {
        Ok(r) => r,
        Err(e) => return HubError::Config(e.to_string()).into(),
    };
    // The Host header names the hub as given.
    if let Ok(v) = format!("{}:{}", url.host, url.port).parse() {
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
        Err(_) => return HubError::Connection("WebSocket handshake timed out".into()).into(),
        Ok(Err(e)) => {
            return HubError::Connection(format!("WebSocket handshake failed: {e}")).into()
        }
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
    let end = run_session(opts, conn, &url.tenant, &out, &mut stream).await;
    if let End::Failed(HubError::Database(m)) = &end {
        let _ = out.send(Message::Binary(
            Frame::error(ErrorCode::Internal, m.clone()).encode().into(),
        ));
    }
    let _ = out.send(Message::Close(None));
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    end
}

async fn next_frame<S>(stream: &mut S) -> Result<Frame, HubError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) => {
                return Err(HubError::Connection("the hub closed the connection".into()))
            }
            Some(Err(e)) => return Err(HubError::Connection(format!("connection lost: {e}"))),
            Some(Ok(Message::Binary(b))) => {
                return match Frame::decode(&b) {
                    Ok(Frame::Error(e)) => Err(code(e.code, e.message)),
                    Ok(f) => Ok(f),
                    Err(e) => Err(HubError::Connection(format!("bad frame from the hub: {e}"))),
                }
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// The local side of one session: the streams towards one hub and the SQL
/// run on them. Its methods take `&self` for one statement at a time, so
/// no borrow of the connection lives across an `.await`.
struct Local<'c> {
    conn: &'c mut Connection,
    out_name: String,
    in_name: String,
}

impl Local<'_> {
    /// The next package of the outbound stream after `after`.
    fn next_package(&self, after: Pos) -> Result<Option<(Vec<u8>, Pos, u64)>, HubError> {
        let read_sql = format!(
            "SELECT package, cursor, changes FROM {} WHERE cursor > ?1 LIMIT 1",
            db::ident(&self.out_name)
        );
        let next = self.conn.prepare_cached(&read_sql).and_then(|mut s| {
            s.query_row([after.to_string()], |r| {
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
                    return Err(code(ErrorCode::ResyncRequired, m));
                }
                Err(sql(e))
            }
            Ok(None) => Ok(None),
            Ok(Some((bytes, cursor, changes))) => {
                let cursor = db::pos_of(Some(cursor)).map_err(sql)?;
                Ok(Some((bytes, cursor, changes.max(0) as u64)))
            }
        }
    }

    /// Apply a package of the hub; the new `last_applied`, or the error
    /// code to send back.
    fn apply(&self, bytes: &[u8]) -> Result<Pos, (ErrorCode, String)> {
        let apply_sql = format!(
            "INSERT INTO {}(package) VALUES (?1)",
            db::ident(&self.in_name)
        );
        self.conn
            .prepare_cached(&apply_sql)
            .and_then(|mut s| s.execute([bytes]))
            .and_then(|_| db::last_applied(self.conn, &self.in_name))
            .map_err(|e| {
                let m = db::message(&e);
                let code = if m.contains("schema mismatch") || m.contains("not a CRR here") {
                    ErrorCode::SchemaMismatch
                } else if m.contains(": gap: ") {
                    ErrorCode::Gap
                } else {
                    ErrorCode::BadPackage
                };
                (code, m)
            })
    }

    fn ack(&self, pos: Pos) -> Result<(), HubError> {
        let ack_sql = format!(
            "INSERT INTO {}(last_sent) VALUES (?1)",
            db::ident(&self.out_name)
        );
        self.conn
            .prepare_cached(&ack_sql)
            .and_then(|mut s| s.execute([pos.to_string()]))
            .map(drop)
            .map_err(sql)
    }

    fn data_version(&self) -> rusqlite::Result<i64> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
    }

    /// This site's own changes after `db_version`.
    fn pending(&self, db_version: i64) -> u64 {
        self.conn
            .query_row(
                "SELECT count(*) FROM crsql_changes WHERE db_version > ?1 AND site_id IS crsql_site_id()",
                [db_version],
                |r| r.get::<_, i64>(0),
            )
            .unwrap_or(0)
            .max(0) as u64
    }
}

/// The hello of this database.
fn hello(conn: &Connection, tenant: &str, token: &Option<String>) -> rusqlite::Result<Frame> {
    Ok(Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        site: crate::site_id(conn)?,
        schema_hash: db::schema_hash(conn)?,
        tenant: tenant.to_string(),
        token: token.clone().unwrap_or_default().into_bytes(),
        positions: db::client_positions(conn)?,
    }))
}

/// Create the two streams towards `hub` if missing; `last_sent` of the
/// outbound one.
fn setup(conn: &Connection, hub: &protocol::Site, package_bytes: usize) -> rusqlite::Result<Pos> {
    let (out_name, in_name, h) = (db::client_out(hub), db::client_in(hub), hex(hub));
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
}

async fn run_session<S>(
    opts: &SyncOptions,
    conn: &mut Connection,
    tenant: &str,
    out: &mpsc::UnboundedSender<Message>,
    stream: &mut S,
) -> End
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let send = |f: Frame| {
        out.send(Message::Binary(f.encode().into()))
            .map_err(|_| HubError::Connection("writer gone".into()))
    };
    let first = hello(conn, tenant, &opts.token).map_err(sql);
    if let Err(e) = first.and_then(send) {
        return e.into();
    }
    let welcome = match tokio::time::timeout(Duration::from_secs(30), next_frame(stream)).await {
        Err(_) => return HubError::Connection("no welcome from the hub within 30 s".into()).into(),
        Ok(Err(e)) => return e.into(),
        Ok(Ok(Frame::Welcome(w))) => w,
        Ok(Ok(other)) => {
            return HubError::Connection(format!("expected a welcome, got {other:?}")).into()
        }
    };
    let read_only = welcome.flags & WELCOME_READ_ONLY != 0;
    let hub = welcome.hub_site;
    let package_bytes = (welcome.max_frame as usize)
        .min(opts.max_frame)
        .saturating_sub(64)
        .max(1024);
    let last_sent = match setup(conn, &hub, package_bytes) {
        Ok(p) => p,
        Err(e) => return sql(e).into(),
    };
    let local = Local {
        conn,
        out_name: db::client_out(&hub),
        in_name: db::client_in(&hub),
    };
    let newest = match crate::db_version(local.conn) {
        Ok(v) => v,
        Err(e) => return sql(e).into(),
    };
    if welcome.applied.db_version > newest {
        return HubError::Database(format!(
            "the hub applied this site's changes up to {}, but this database's newest version is {newest}: it was restored from a backup or copied; give it a new site id with SELECT crsql_new_site_id() (docs/operations.md)",
            welcome.applied
        ))
        .into();
    }
    if welcome.applied < last_sent {
        tracing::warn!(
            "the hub has this site's changes only up to {} (acknowledged: {last_sent}): sending again from there",
            welcome.applied
        );
        let r = local
            .conn
            .prepare(&format!(
                "INSERT INTO {}(rewind) VALUES (?1)",
                db::ident(&local.out_name)
            ))
            .and_then(|mut s| s.execute([welcome.applied.to_string()]));
        if let Err(e) = r {
            return sql(e).into();
        }
    }
    tracing::info!(hub = %hex(&hub), read_only, applied = %welcome.applied, "connected");
    let mut progress = Reporter {
        f: opts.progress.as_ref(),
        p: Progress {
            pull_total: welcome.backlog,
            ..Progress::default()
        },
        last: None,
    };
    if read_only {
        let pending = local.pending(welcome.applied.db_version);
        if pending > 0 {
            tracing::warn!(
                "the token is read-only: pulling only; {pending} local changes are not pushed"
            );
        }
    } else if progress.f.is_some() {
        progress.p.push_total = local.pending(welcome.applied.db_version);
    }
    let window = opts.window.max(1);
    let mut push_cursor = welcome.applied;
    let mut inflight: VecDeque<(Pos, u64)> = VecDeque::new();
    let mut push_exhausted = read_only;
    let mut caught_up = false;
    let mut seen_version = local.data_version().unwrap_or(0);
    let mut tick = tokio::time::interval(opts.poll.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while !push_exhausted && inflight.len() < window {
            match local.next_package(push_cursor) {
                Err(e) => return e.into(),
                Ok(None) => push_exhausted = true,
                Ok(Some((bytes, cursor, changes))) => {
                    if let Err(e) = send(Frame::Package(bytes)) {
                        return e.into();
                    }
                    push_cursor = cursor;
                    inflight.push_back((cursor, changes));
                }
            }
        }
        progress.report(false);
        if opts.once && push_exhausted && inflight.is_empty() && caught_up {
            progress.report(true);
            return End::Done(progress.p);
        }
        let frame = tokio::select! {
            f = next_frame(stream) => match f {
                Ok(f) => f,
                Err(e) => return e.into(),
            },
            _ = tick.tick() => {
                if let Ok(v) = local.data_version() {
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
                let n = protocol::inspect_package(&bytes).map_or(0, |s| s.changes as u64);
                match local.apply(&bytes) {
                    Ok(pos) => {
                        if let Err(e) = send(Frame::Ack(pos)) {
                            return e.into();
                        }
                        progress.p.pulled += n;
                    }
                    Err((c, m)) => {
                        let _ = send(Frame::error(c.clone(), m.clone()));
                        return code(c, format!("applying a package from the hub: {m}")).into();
                    }
                }
            }
            Frame::Ack(pos) => {
                if let Err(e) = local.ack(pos) {
                    return e.into();
                }
                while inflight.front().is_some_and(|(c, _)| *c <= pos) {
                    if let Some((_, n)) = inflight.pop_front() {
                        progress.p.pushed += n;
                    }
                }
                if inflight.is_empty() {
                    caught_up = false;
                }
            }
            Frame::CaughtUp(_) => caught_up = inflight.is_empty(),
            other => {
                return HubError::Connection(format!("unexpected frame from the hub: {other:?}"))
                    .into()
            }
        }
    }
}
