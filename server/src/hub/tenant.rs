//! One tenant: its database, owned by one dedicated thread that does all of
//! the tenant's SQLite work, fed by a bounded channel. Consecutive writes
//! (applied packages, acknowledgements) queued together share one
//! transaction; reads of outbound streams run between them, outside it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crsql_stream_rs::rusqlite::{self, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot, watch};

use crate::db;
use crate::protocol::{hex, ErrorCode, Pos, Site};

/// Why the tenant refused a command: a code for the client, and a message.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// Map an error of the extension to a protocol code, by its message.
pub(crate) fn refusal(e: &rusqlite::Error) -> Refusal {
    let m = db::message(e);
    let code = if m.contains("resync required") {
        ErrorCode::ResyncRequired
    } else if m.contains(": gap: ") {
        ErrorCode::Gap
    } else if m.contains("schema mismatch") || m.contains("which is not a CRR here") {
        ErrorCode::SchemaMismatch
    } else if m.contains("wrong sender")
        || m.contains("wrong stream")
        || m.contains("produced by this database itself")
    {
        ErrorCode::ForeignSender
    } else if m.contains("checksum")
        || m.contains("truncated")
        || m.contains("magic")
        || m.contains("malformed")
        || m.contains("unsupported")
    {
        ErrorCode::BadPackage
    } else {
        ErrorCode::Internal
    };
    Refusal { code, message: m }
}

pub struct HelloOk {
    pub hub_site: Site,
    pub schema_hash: [u8; 16],
    /// How far the hub applied this client's packages.
    pub applied: Pos,
    /// Where the hub starts sending (the client's reported position).
    pub start: Pos,
    pub backlog: u64,
}

pub struct OutPackage {
    pub bytes: Vec<u8>,
    pub since: Pos,
    pub cursor: Pos,
    pub changes: u64,
}

pub enum Cmd {
    Hello {
        site: Site,
        client_pos: Pos,
        reply: oneshot::Sender<Result<HelloOk, Refusal>>,
    },
    Apply {
        site: Site,
        package: Vec<u8>,
        /// The package's origin sites (with `--nats`, they become sites
        /// this hub publishes).
        origins: Vec<Site>,
        reply: oneshot::Sender<Result<Pos, Refusal>>,
    },
    Ack {
        site: Site,
        pos: Pos,
        reply: oneshot::Sender<Result<(), Refusal>>,
    },
    Pull {
        site: Site,
        after: Pos,
        max_packages: usize,
        max_bytes: usize,
        /// Also read the stream's `lag_changes` (costs a lookup).
        with_lag: bool,
        reply: oneshot::Sender<Result<Pulled, Refusal>>,
    },
    /// Any other work on the database (the NATS link's): `write` jobs run
    /// inside the batch's transaction and learn after the commit whether it
    /// held; reads run outside.
    Job { write: bool, job: Job },
}

/// A job: runs on the tenant's thread, returns what to do once the
/// transaction is over (given the commit's error, if any).
/// It is given the error instead of the connection when the batch's
/// transaction could not begin.
pub type Job = Box<dyn FnOnce(Result<&Connection, Refusal>) -> Finish + Send>;
pub type Finish = Box<dyn FnOnce(Option<&Refusal>) + Send>;

impl Cmd {
    fn is_write(&self) -> bool {
        matches!(
            self,
            Cmd::Apply { .. } | Cmd::Ack { .. } | Cmd::Job { write: true, .. }
        )
    }
}

/// A handle on an open tenant.
pub struct Tenant {
    pub name: String,
    pub site: Site,
    pub schema_hash: [u8; 16],
    tx: mpsc::Sender<Cmd>,
    /// The tenant database's `crsql_db_version()` after each commit:
    /// connections wait on it to send new changes at once.
    pub version: watch::Receiver<i64>,
    /// Bumped after each commit that applied a client's push: the NATS
    /// publisher waits on it (what the hub merged from other hubs is not
    /// its to publish).
    pub pushed: watch::Receiver<u64>,
}

/// What a pull returns: packages, and whether the stream ran out (rather
/// than the count or byte budget).
pub struct Pulled {
    pub packages: Vec<OutPackage>,
    pub exhausted: bool,
    /// The stream's `lag_changes` before these packages are acknowledged
    /// (read for a client's stream, when asked for).
    pub lag_changes: Option<i64>,
}

/// How the tenant database is configured.
pub struct TenantConfig {
    pub data_dir: PathBuf,
    pub schema_dir: Option<PathBuf>,
    /// `max_bytes` of the outbound streams (below the frame limit).
    pub package_bytes: usize,
    /// With `--nats`: `max_bytes` of `crsql_nats_out`, whose filter follows
    /// the origin sites of clients' pushes (hub/nats.rs).
    pub nats_package_bytes: Option<usize>,
}

impl Tenant {
    /// Open (or create) the tenant's database on a new thread. Blocks: call
    /// from `spawn_blocking`. The thread ends once every handle is dropped
    /// and the queued commands are done; join it to know the database is
    /// closed.
    pub fn open(
        name: &str,
        cfg: &TenantConfig,
    ) -> Result<(Tenant, std::thread::JoinHandle<()>), Refusal> {
        let path = cfg.data_dir.join(format!("{name}.db"));
        let schema = cfg
            .schema_dir
            .as_ref()
            .map(|d| d.join(format!("{name}.sql")))
            .filter(|p| p.is_file());
        if !path.exists() && schema.is_none() {
            return Err(Refusal::new(
                ErrorCode::UnknownTenant,
                format!(
                    "no tenant {name:?} on this hub: no {name}.db in the data directory and no {name}.sql in the schema directory"
                ),
            ));
        }
        let conn = open_tenant_db(&path, schema.as_deref()).map_err(|e| {
            Refusal::new(
                ErrorCode::Internal,
                format!("cannot open tenant {name:?}: {e}"),
            )
        })?;
        let site = db::site_id(&conn).map_err(|e| refusal(&e))?;
        let schema_hash = db::schema_hash(&conn).map_err(|e| refusal(&e))?;
        let v = db::db_version(&conn).map_err(|e| refusal(&e))?;
        let (vtx, vrx) = watch::channel(v);
        let (ptx, prx) = watch::channel(0);
        let (tx, rx) = mpsc::channel(1024);
        let package_bytes = cfg.package_bytes;
        let nats = cfg
            .nats_package_bytes
            .map(|max| Publishing { max, known: None });
        let tname = name.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("tenant-{name}"))
            .spawn(move || {
                Worker {
                    conn,
                    version: vtx,
                    pushed: ptx,
                    package_bytes,
                    nats,
                    name: tname,
                }
                .run(rx)
            })
            .map_err(|e| {
                Refusal::new(ErrorCode::Internal, format!("cannot start a thread: {e}"))
            })?;
        Ok((
            Tenant {
                name: name.to_string(),
                site,
                schema_hash,
                tx,
                version: vrx,
                pushed: prx,
            },
            thread,
        ))
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Cmd,
    ) -> Result<T, Refusal> {
        let (reply, rx) = oneshot::channel();
        let gone = || Refusal::new(ErrorCode::ShuttingDown, "the tenant is closing");
        self.tx.send(make(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    pub async fn hello(&self, site: Site, client_pos: Pos) -> Result<HelloOk, Refusal> {
        self.call(|reply| Cmd::Hello {
            site,
            client_pos,
            reply,
        })
        .await
    }

    /// Apply a client's push; `origins` are the origin sites of its
    /// changes.
    pub async fn apply(
        &self,
        site: Site,
        package: Vec<u8>,
        origins: Vec<Site>,
    ) -> Result<Pos, Refusal> {
        self.call(|reply| Cmd::Apply {
            site,
            package,
            origins,
            reply,
        })
        .await
    }

    pub async fn ack(&self, site: Site, pos: Pos) -> Result<(), Refusal> {
        self.call(|reply| Cmd::Ack { site, pos, reply }).await
    }

    /// Run `f` on the tenant's thread, in a write transaction (`write`,
    /// batched with other writes; the result comes after the commit) or
    /// outside one.
    pub async fn run<T: Send + 'static>(
        &self,
        write: bool,
        f: impl FnOnce(&Connection) -> Result<T, Refusal> + Send + 'static,
    ) -> Result<T, Refusal> {
        self.call(move |reply| Cmd::Job {
            write,
            job: Box::new(move |conn| {
                let r = conn.and_then(f);
                Box::new(move |commit| {
                    let _ = reply.send(match commit {
                        Some(e) => Err(e.clone()),
                        None => r,
                    });
                })
            }),
        })
        .await
    }

    pub async fn pull(
        &self,
        site: Site,
        after: Pos,
        max_packages: usize,
        max_bytes: usize,
        with_lag: bool,
    ) -> Result<Pulled, Refusal> {
        self.call(|reply| Cmd::Pull {
            site,
            after,
            max_packages,
            max_bytes,
            with_lag,
            reply,
        })
        .await
    }
}

/// Open the tenant database: WAL, the extension, and the schema file run
/// (at creation, and again at every open: it must be idempotent).
fn open_tenant_db(path: &Path, schema: Option<&Path>) -> Result<Connection, String> {
    let conn = db::open(path).map_err(|e| db::message(&e))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY;",
    )
    .map_err(|e| db::message(&e))?;
    if let Some(schema) = schema {
        let sql = std::fs::read_to_string(schema)
            .map_err(|e| format!("cannot read {}: {e}", schema.display()))?;
        conn.execute_batch(&format!("BEGIN IMMEDIATE;\n{sql}\n;COMMIT;"))
            .map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                format!("schema file {}: {}", schema.display(), db::message(&e))
            })?;
    }
    Ok(conn)
}

struct Worker {
    conn: Connection,
    version: watch::Sender<i64>,
    pushed: watch::Sender<u64>,
    package_bytes: usize,
    /// With `--nats`.
    nats: Option<Publishing>,
    name: String,
}

/// With `--nats`: the origin sites whose changes this hub publishes.
struct Publishing {
    /// `max_bytes` of `crsql_nats_out`.
    max: usize,
    /// The sites `crsql_nats_sites` marks as pushed here (loaded at the
    /// first push; dropped when a transaction fails).
    known: Option<HashSet<Site>>,
}

impl Publishing {
    /// In the open transaction, before a push is applied: its origin sites
    /// are published by this hub from now on.
    fn pushed(&mut self, conn: &Connection, origins: &[Site]) -> rusqlite::Result<()> {
        let known = match &mut self.known {
            Some(k) => k,
            None => self.known.insert(super::nats::pushed_sites(conn)?),
        };
        let new: Vec<Site> = origins
            .iter()
            .filter(|s| !known.contains(*s))
            .copied()
            .collect();
        if !new.is_empty() {
            super::nats::mark_pushed(conn, &new, self.max)?;
            known.extend(new);
        }
        Ok(())
    }
}

enum Reply {
    Apply(oneshot::Sender<Result<Pos, Refusal>>, Result<Pos, Refusal>),
    Ack(oneshot::Sender<Result<(), Refusal>>, Result<(), Refusal>),
    Job(Finish),
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut batch: Vec<Cmd> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let mut cmds = std::mem::take(&mut batch).into_iter().peekable();
            while let Some(cmd) = cmds.next() {
                if cmd.is_write() {
                    let mut writes = vec![cmd];
                    while cmds.peek().is_some_and(Cmd::is_write) {
                        writes.extend(cmds.next());
                    }
                    self.writes(writes);
                } else {
                    self.read(cmd);
                }
            }
        }
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        tracing::info!(tenant = %self.name, "tenant database closed");
    }

    /// Apply and acknowledge in one transaction; reply after the commit.
    fn writes(&mut self, cmds: Vec<Cmd>) {
        let began = Instant::now();
        let mut replies = Vec::with_capacity(cmds.len());
        let mut pushes = false;
        let txn = self.conn.execute_batch("BEGIN IMMEDIATE");
        for cmd in cmds {
            match cmd {
                Cmd::Apply {
                    site,
                    package,
                    origins,
                    reply,
                } => {
                    let r = match &txn {
                        Err(e) => Err(refusal(e)),
                        Ok(()) => self.apply(&site, &package, &origins),
                    };
                    pushes |= r.is_ok();
                    replies.push(Reply::Apply(reply, r));
                }
                Cmd::Ack { site, pos, reply } => {
                    let r = match &txn {
                        Err(e) => Err(refusal(e)),
                        Ok(()) => self.ack(&site, pos),
                    };
                    replies.push(Reply::Ack(reply, r));
                }
                Cmd::Job { job, .. } => {
                    let finish = match &txn {
                        Err(e) => job(Err(refusal(e))),
                        Ok(()) => job(Ok(&self.conn)),
                    };
                    replies.push(Reply::Job(finish));
                }
                _ => unreachable!("only writes are batched"),
            }
        }
        let commit = if txn.is_ok() {
            self.conn.execute_batch("COMMIT").map_err(|e| {
                let _ = self.conn.execute_batch("ROLLBACK");
                refusal(&e)
            })
        } else {
            Ok(())
        };
        if commit.is_err() {
            if let Some(n) = &mut self.nats {
                n.known = None;
            }
        } else if pushes {
            self.pushed.send_modify(|n| *n += 1);
        }
        for r in replies {
            match r {
                Reply::Apply(tx, res) => {
                    let _ = tx.send(match &commit {
                        Ok(()) => res,
                        Err(e) => Err(e.clone()),
                    });
                }
                Reply::Ack(tx, res) => {
                    let _ = tx.send(match &commit {
                        Ok(()) => res,
                        Err(e) => Err(e.clone()),
                    });
                }
                Reply::Job(finish) => finish(commit.as_ref().err()),
            }
        }
        if let Ok(v) = db::db_version(&self.conn) {
            self.version.send_if_modified(|old| {
                if *old != v {
                    *old = v;
                    true
                } else {
                    false
                }
            });
        }
        tracing::trace!(tenant = %self.name, elapsed = ?began.elapsed(), "write batch");
    }

    fn apply(&mut self, site: &Site, package: &[u8], origins: &[Site]) -> Result<Pos, Refusal> {
        let name = db::hub_in(site);
        let sql = format!("INSERT INTO {}(package) VALUES (?1)", db::ident(&name));
        let conn = &self.conn;
        let nats = &mut self.nats;
        let mut run = || -> rusqlite::Result<Pos> {
            if let Some(n) = nats {
                n.pushed(conn, origins)?;
            }
            conn.prepare_cached(&sql)?.execute([package])?;
            db::last_applied(conn, &name)
        };
        run().map_err(|e| refusal(&e))
    }

    fn ack(&self, site: &Site, pos: Pos) -> Result<(), Refusal> {
        let sql = format!(
            "INSERT INTO {}(last_sent) VALUES (?1)",
            db::ident(&db::hub_out(site))
        );
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute([pos.to_string()]))
            .map(|_| ())
            .map_err(|e| {
                let mut r = refusal(&e);
                if r.code == ErrorCode::Internal {
                    r.code = ErrorCode::BadFrame;
                }
                r
            })
    }

    fn read(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Hello {
                site,
                client_pos,
                reply,
            } => {
                let _ = reply.send(self.hello(&site, client_pos));
            }
            Cmd::Pull {
                site,
                after,
                max_packages,
                max_bytes,
                with_lag,
                reply,
            } => {
                let _ = reply.send(self.pull(&site, after, max_packages, max_bytes, with_lag));
            }
            Cmd::Job { job, .. } => job(Ok(&self.conn))(None),
            _ => unreachable!("writes are batched"),
        }
    }

    fn hello(&mut self, site: &Site, client_pos: Pos) -> Result<HelloOk, Refusal> {
        let (inb, out) = (db::hub_in(site), db::hub_out(site));
        let h = hex(site);
        let conn = &self.conn;
        let run = || -> rusqlite::Result<Result<HelloOk, Refusal>> {
            let newest = db::db_version(conn)?;
            if client_pos.db_version > newest {
                return Ok(Err(Refusal::new(
                    ErrorCode::ResyncRequired,
                    format!(
                        "the client applied this hub's changes up to {client_pos}, but the hub's newest version is {newest}: the hub database was restored or replaced; the client needs a resync"
                    ),
                )));
            }
            if !db::stream_exists(conn, &inb)? {
                conn.execute_batch(&format!(
                    "CREATE VIRTUAL TABLE {} USING crsql_InboundStream(from = '{h}')",
                    db::ident(&inb)
                ))?;
            }
            if !db::stream_exists(conn, &out)? {
                conn.execute_batch(&format!(
                    "CREATE VIRTUAL TABLE {} USING crsql_OutboundStream(exclude_sites = '{h}', resync = 'snapshot', max_bytes = {})",
                    db::ident(&out),
                    self.package_bytes
                ))?;
            }
            let sent = db::last_sent(conn, &out)?;
            if client_pos < sent {
                // The client has less than it acknowledged (restored from a
                // backup, or the acknowledgement outran its commit): send
                // again from where it is.
                conn.prepare_cached(&format!(
                    "INSERT INTO {}(rewind) VALUES (?1)",
                    db::ident(&out)
                ))?
                .execute([client_pos.to_string()])?;
            }
            let applied = db::last_applied(conn, &inb)?;
            let backlog: i64 = conn
                .prepare_cached("SELECT count(*) FROM crsql_changes WHERE db_version > ?1")?
                .query_row([client_pos.db_version], |r| r.get(0))?;
            Ok(Ok(HelloOk {
                hub_site: db::site_id(conn)?,
                schema_hash: db::schema_hash(conn)?,
                applied,
                start: client_pos,
                backlog: backlog.max(0) as u64,
            }))
        };
        run().unwrap_or_else(|e| Err(refusal(&e)))
    }

    fn pull(
        &mut self,
        site: &Site,
        after: Pos,
        max_packages: usize,
        max_bytes: usize,
        with_lag: bool,
    ) -> Result<Pulled, Refusal> {
        let stream = db::hub_out(site);
        let run = || -> rusqlite::Result<Pulled> {
            let mut pulled = read_packages(&self.conn, &stream, after, max_packages, max_bytes)?;
            if !with_lag {
                return Ok(pulled);
            }
            pulled.lag_changes = self
                .conn
                .prepare_cached("SELECT lag_changes FROM crsql_streams WHERE name = ?1")?
                .query_row([&stream], |r| r.get(0))
                .optional()?
                .flatten();
            Ok(pulled)
        };
        run().map_err(|e| refusal(&e))
    }
}

/// Up to `max_packages` packages (and about `max_bytes`) of an outbound
/// stream after `after`.
pub(crate) fn read_packages(
    conn: &Connection,
    stream: &str,
    after: Pos,
    max_packages: usize,
    max_bytes: usize,
) -> rusqlite::Result<Pulled> {
    let sql = format!(
        "SELECT package, since, cursor, changes FROM {} WHERE cursor > ?1 LIMIT ?2",
        db::ident(stream)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(rusqlite::params![after.to_string(), max_packages as i64])?;
    let mut got = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let p: Vec<u8> = row.get(0)?;
        let since = db::pos_of(Some(row.get(1)?))?;
        let cursor = db::pos_of(Some(row.get(2)?))?;
        let changes: i64 = row.get(3)?;
        bytes += p.len();
        got.push(OutPackage {
            bytes: p,
            since,
            cursor,
            changes: changes.max(0) as u64,
        });
        if bytes >= max_bytes {
            return Ok(Pulled {
                packages: got,
                exhausted: false,
                lag_changes: None,
            });
        }
    }
    let exhausted = got.len() < max_packages;
    Ok(Pulled {
        packages: got,
        exhausted,
        lag_changes: None,
    })
}
