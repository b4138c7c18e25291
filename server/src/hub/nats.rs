//! Scale-out over NATS JetStream (`serve --nats`, docs/server.md).
//!
//! Per tenant, one JetStream stream `CRSQL_<tenant>` on subjects
//! `crsql.<tenant>.<hub site>`. Each hub's tenant database has:
//!
//! - `crsql_nats_out`: an outbound stream of the whole database. The
//!   publisher reads its packages, publishes them on the hub's subject
//!   (`Nats-Msg-Id` = site and position range), and advances `last_sent`
//!   only after JetStream's publish ack: what a client pushed is in the
//!   database (acknowledged to the client after the commit) and reaches
//!   JetStream at least once, duplicates being dropped by JetStream or
//!   applied as no-ops.
//! - `crsql_nats_in_<hub site>`: one inbound stream per other hub, fed by
//!   a durable pull consumer (`hub_<site>`) in stream order; the last
//!   JetStream sequence applied is in `crsql_nats_state`, committed with
//!   the packages. The hub's own messages are skipped.
//! - A sequence that jumps (JetStream dropped messages older than
//!   `--nats-max-age` before this hub applied them) is never skipped: the
//!   hub takes a snapshot from a peer hub over NATS request/reply (the
//!   peer's `crsql_resync_to_<site>` stream, `resync = 'snapshot'`) into
//!   `crsql_resync_from_<peer>`, takes over the peer's positions, and goes
//!   on after the peer's sequence.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use async_nats::HeaderMap;
use crsql_stream_rs::rusqlite::{self, Connection, OptionalExtension};
use futures_util::{FutureExt, StreamExt};

use super::tenant::{read_packages, refusal, OutPackage, Refusal, Tenant};
use super::Hub;
use crate::db;
use crate::metrics;
use crate::protocol::{hex, parse_site, ErrorCode, Pos, Site};

/// `serve --nats URL --nats-max-age D`.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    pub url: String,
    pub max_age: Duration,
}

/// The hub's NATS connection.
pub(crate) struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    max_age: Duration,
    /// Largest package published (below the server's max_payload).
    pub(crate) package_bytes: usize,
}

const OUT: &str = "crsql_nats_out";
/// The first `exclude_sites` entry of `crsql_nats_out`: no database has
/// this site id, and with two entries or more the stream names no peer
/// (an outbound stream with exactly one excluded site takes it as its
/// peer in `crsql_peers`).
const NO_SITE: &str = "00000000000000000000000000000000";
/// A hub whose own clients pushed nothing for this long still publishes
/// the empty package that moves its stream past what it merged.
const HEARTBEAT: Duration = Duration::from_secs(1);
const IN_PREFIX: &str = "crsql_nats_in_";
const H_SITE: &str = "Crsql-Site";
const H_AFTER: &str = "Crsql-After";
const H_PEER: &str = "Crsql-Peer";
const H_CURSOR: &str = "Crsql-Cursor";
const H_DONE: &str = "Crsql-Done";
const H_SEQ: &str = "Crsql-Seq";
const H_IN: &str = "Crsql-In";
const H_ERROR: &str = "Crsql-Error";

fn nats_in(site: &Site) -> String {
    format!("{IN_PREFIX}{}", hex(site))
}
fn resync_to(site: &Site) -> String {
    format!("crsql_resync_to_{}", hex(site))
}
fn resync_from(site: &Site) -> String {
    format!("crsql_resync_from_{}", hex(site))
}
fn stream_name(tenant: &str) -> String {
    format!("CRSQL_{tenant}")
}
fn resync_subject(tenant: &str, target: &str) -> String {
    format!("crsql_resync.{tenant}.{target}")
}

impl Nats {
    /// Connect (at start: a hub with --nats does not run without it; later
    /// disconnections are retried by the client library).
    pub(crate) async fn connect(cfg: &NatsConfig, max_frame: usize) -> Result<Nats, String> {
        if cfg.max_age < Duration::from_secs(1) {
            return Err("--nats-max-age must be at least 1s".into());
        }
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            async_nats::ConnectOptions::new()
                .name("crsql-sync hub")
                .connect(&cfg.url),
        )
        .await
        .map_err(|_| format!("cannot connect to NATS at {}: timed out", cfg.url))?
        .map_err(|e| format!("cannot connect to NATS at {}: {e}", cfg.url))?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client.clone());

        Ok(Nats {
            client,
            js,
            max_age: cfg.max_age,
            package_bytes: max_payload
                .saturating_sub(8 << 10)
                .min(max_frame.saturating_sub(64))
                .max(1024),
        })
    }

    /// The tenant's JetStream stream, created (or its max age updated).
    async fn stream(&self, tenant: &str) -> Result<jetstream::stream::Stream, String> {
        let config = jetstream::stream::Config {
            name: stream_name(tenant),
            subjects: vec![format!("crsql.{tenant}.*")],
            max_age: self.max_age,
            storage: jetstream::stream::StorageType::File,
            duplicate_window: self.max_age.min(Duration::from_secs(120)),
            ..Default::default()
        };
        match self.js.get_stream(&config.name).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| e.to_string())?;
                if info.config.max_age != config.max_age {
                    self.js
                        .update_stream(config.clone())
                        .await
                        .map_err(|e| format!("updating stream {}: {e}", config.name))?;
                    return self
                        .js
                        .get_stream(&config.name)
                        .await
                        .map_err(|e| e.to_string());
                }
                Ok(s)
            }
            Err(_) => match self.js.create_stream(config.clone()).await {
                Ok(s) => Ok(s),
                // Another hub created it meanwhile.
                Err(e) => self
                    .js
                    .get_stream(&config.name)
                    .await
                    .map_err(|_| format!("creating stream {}: {e}", config.name)),
            },
        }
    }
}

/// One tenant's link to JetStream.
struct Link {
    hub: Arc<Hub>,
    nats: Arc<Nats>,
    tenant: Arc<Tenant>,
    labels: metrics::Labels,
    /// A gap was found and the snapshot from a peer is not complete: this
    /// hub serves no snapshots meanwhile.
    resyncing: AtomicBool,
}

/// Set the tenant up for NATS and start its publisher, its consumer and its
/// snapshot server.
pub(crate) async fn attach(
    hub: &Arc<Hub>,
    nats: &Arc<Nats>,
    tenant: &Arc<Tenant>,
) -> Result<(), Refusal> {
    let max = nats.package_bytes;
    tenant
        .run(true, move |c| setup(c, max).map_err(|e| refusal(&e)))
        .await?;
    let link = Arc::new(Link {
        hub: hub.clone(),
        nats: nats.clone(),
        tenant: tenant.clone(),
        labels: metrics::tenant(&tenant.name),
        resyncing: AtomicBool::new(false),
    });
    tokio::spawn(link.clone().retrying("publisher", Link::publish));
    tokio::spawn(link.clone().retrying("consumer", Link::consume));
    tokio::spawn(link.retrying("snapshot server", Link::serve_snapshots));
    Ok(())
}

/// What ends a task's round: the hub stopping, an error to retry on, or
/// a resync done (start again at once).
enum Stop {
    Shutdown,
    Retry(String),
    Again,
}

impl From<String> for Stop {
    fn from(s: String) -> Stop {
        Stop::Retry(s)
    }
}
impl From<Refusal> for Stop {
    fn from(r: Refusal) -> Stop {
        Stop::Retry(format!("{}: {}", r.code, r.message))
    }
}

fn err(e: impl std::fmt::Display) -> Stop {
    Stop::Retry(e.to_string())
}

impl Link {
    /// Run `round` until the hub stops; after an error, log it and start
    /// again a second later.
    async fn retrying<F, Fut>(self: Arc<Self>, what: &'static str, round: F)
    where
        F: Fn(Arc<Self>) -> Fut,
        Fut: std::future::Future<Output = Stop>,
    {
        let mut shutdown = self.hub.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let stop = tokio::select! {
                s = round(self.clone()) => s,
                _ = super::stopped(&mut shutdown) => Stop::Shutdown,
            };
            match stop {
                Stop::Shutdown => return,
                Stop::Again => continue,
                Stop::Retry(e) => {
                    tracing::warn!(tenant = %self.tenant.name, "NATS {what}: {e}; again in 1 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = super::stopped(&mut shutdown) => return,
                    }
                }
            }
        }
    }

    /// Publish `crsql_nats_out` for ever (a round ends on an error). It
    /// leaves out what other hubs published, so the read after a client's
    /// push publishes up to the last package with changes; the empty
    /// package that moves the stream past merged changes only (a
    /// heartbeat) waits for the next push, or HEARTBEAT.
    async fn publish(self: Arc<Self>) -> Stop {
        let t = &self.tenant;
        let subject = format!("crsql.{}.{}", t.name, hex(&t.site));
        let site = hex(&t.site);
        let mut pushed = t.pushed.clone();
        // Whether this read may end with a heartbeat.
        let mut beat = true;
        loop {
            pushed.borrow_and_update();
            // From `last_sent`, which is where the last publish ended, or,
            // after create_out re-created the stream, where it starts.
            let read = t
                .run(false, move |c| {
                    let r = || {
                        let id = out_stream_id(c)?;
                        let after = db::last_sent(c, OUT)?;
                        Ok((id, after, read_packages(c, OUT, after, 64, 8 << 20)?))
                    };
                    r().map_err(|e: rusqlite::Error| refusal(&e))
                })
                .await;
            let (id, after, pulled) = match read {
                Ok(r) => r,
                Err(e) => return e.into(),
            };
            let mut packages = pulled.packages;
            if !beat {
                let keep = packages
                    .iter()
                    .rposition(|p| p.changes > 0)
                    .map_or(0, |i| i + 1);
                if keep == 0 && !pulled.exhausted {
                    // Only empty packages, and more after them: publish
                    // them now rather than wait for a heartbeat.
                    beat = true;
                    continue;
                }
                packages.truncate(keep);
            }
            tracing::debug!(tenant = %t.name, packages = packages.len(), %after, "read {OUT}");
            if !packages.is_empty() {
                if let Err(e) = self.publish_packages(&subject, &site, id, packages).await {
                    return e;
                }
                if !pulled.exhausted {
                    continue;
                }
            }
            beat = tokio::select! {
                r = pushed.changed() => {
                    if r.is_err() {
                        return Stop::Shutdown;
                    }
                    false
                }
                _ = tokio::time::sleep(HEARTBEAT) => true,
            };
        }
    }

    /// Publish `packages` (in order) of the stream whose id is `id`, wait
    /// for JetStream's acks, then move `last_sent` to the cursor published
    /// up to, unless the stream was re-created meanwhile (the new one
    /// starts at a transaction's beginning, which a receiver following it
    /// needs: it is not moved past that).
    async fn publish_packages(
        &self,
        subject: &str,
        site: &str,
        id: Vec<u8>,
        packages: Vec<OutPackage>,
    ) -> Result<(), Stop> {
        let t = &self.tenant;
        let m = &self.hub.metrics;
        let mut acks = Vec::with_capacity(packages.len());
        let mut changes = 0;
        let mut after = Pos::ZERO;
        for p in packages {
            let mut h = HeaderMap::new();
            h.insert(
                "Nats-Msg-Id",
                format!("{site}:{}-{}", p.since, p.cursor).as_str(),
            );
            match self
                .nats
                .js
                .publish_with_headers(subject.to_string(), h, p.bytes.into())
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => return Err(err(format!("publishing: {e}"))),
            }
            changes += p.changes;
            after = p.cursor;
        }
        let n = acks.len() as u64;
        tracing::debug!(tenant = %t.name, packages = n, upto = %after, "published to JetStream");
        for ack in acks {
            if let Err(e) = ack.await {
                return Err(err(format!("JetStream did not acknowledge a publish: {e}")));
            }
        }
        t.run(true, move |c| {
            let ack = || {
                if out_stream_id(c)? == id {
                    c.prepare_cached(&format!("INSERT INTO {OUT}(last_sent) VALUES (?1)"))?
                        .execute([after.to_string()])?;
                }
                Ok(())
            };
            ack().map_err(|e: rusqlite::Error| refusal(&e))
        })
        .await?;
        m.nats_published.get_or_create(&self.labels).inc_by(n);
        m.nats_published_changes
            .get_or_create(&self.labels)
            .inc_by(changes);
        Ok(())
    }

    /// Apply the other hubs' packages in stream order (a round ends on an
    /// error, or after a resync, to start again from the new position).
    async fn consume(self: Arc<Self>) -> Stop {
        let t = &self.tenant;
        let m = &self.hub.metrics;
        let mut seq = match t
            .run(false, |c| applied_seq(c).map_err(|e| refusal(&e)))
            .await
        {
            Ok(s) => s,
            Err(e) => return e.into(),
        };
        let stream = match self.nats.stream(&t.name).await {
            Ok(s) => s,
            Err(e) => return Stop::Retry(e),
        };
        let info = match stream.get_info().await {
            Ok(i) => i,
            Err(e) => return err(e),
        };
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        if last < seq {
            // The JetStream stream was deleted and created again: read the
            // new one from its start (what was applied is a no-op again).
            tracing::warn!(tenant = %t.name, "JetStream stream {} ends at {last}, but this hub applied it up to {seq}: it was re-created; reading it from the start", info.config.name);
            if let Err(e) = t
                .run(true, |c| set_seq(c, 0).map_err(|e| refusal(&e)))
                .await
            {
                return e.into();
            }
            return Stop::Retry("stream re-created".into());
        }
        if first > seq + 1 {
            return self.resync(seq, first).await;
        }
        let durable = format!("hub_{}", hex(&t.site));
        let _ = stream.delete_consumer(&durable).await;
        let consumer = match stream
            .create_consumer(pull::Config {
                durable_name: Some(durable),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: seq + 1,
                },
                ack_policy: AckPolicy::All,
                ack_wait: Duration::from_secs(60),
                ..Default::default()
            })
            .await
        {
            Ok(c) => c,
            Err(e) => return err(format!("creating the consumer: {e}")),
        };
        let mut msgs = match consumer.messages().await {
            Ok(s) => s,
            Err(e) => return err(e),
        };
        loop {
            let first = match msgs.next().await {
                None => return Stop::Retry("the consumer ended".into()),
                Some(Err(e)) => return err(format!("consumer: {e}")),
                Some(Ok(m)) => m,
            };
            let mut batch = vec![first];
            while batch.len() < 256 {
                match msgs.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    _ => break,
                }
            }
            let mut items: Vec<Consumed> = Vec::new();
            let mut gap = None;
            let mut last_msg = None;
            let mut pending = 0;
            for msg in batch {
                let s = match msg.info() {
                    Ok(i) => {
                        pending = i.pending;
                        i.stream_sequence
                    }
                    Err(e) => return err(e),
                };
                if s <= seq {
                    last_msg = Some(msg);
                    continue;
                }
                if s > seq + 1 {
                    gap = Some(s);
                    break;
                }
                seq = s;
                let sender = msg.subject.as_str().rsplit('.').next().and_then(parse_site);
                let item = match sender {
                    Some(site) if site == t.site => None,
                    Some(site) => Some((site, msg.payload.to_vec())),
                    None => {
                        tracing::warn!(tenant = %t.name, subject = %msg.subject, "a message on a subject that names no site: ignored");
                        None
                    }
                };
                items.push((s, item));
                last_msg = Some(msg);
            }
            let n = items.iter().filter(|i| i.1.is_some()).count() as u64;
            tracing::debug!(tenant = %t.name, messages = items.len(), packages = n, seq, ?gap, "consumed from JetStream");
            let own = t.site;
            let max = self.nats.package_bytes;
            let (done, failed) = match t.run(true, move |c| apply(c, &own, items, max)).await {
                Ok(r) => r,
                Err(e) => return e.into(),
            };
            m.nats_lag.get_or_create(&self.labels).set(pending as i64);
            if let Some(e) = failed {
                if e.code == ErrorCode::Gap {
                    return self.resync(done, done + 1).await;
                }
                return Stop::Retry(format!(
                    "applying JetStream message {} refused: {}: {} (retrying; the hubs' schemas must be the same)",
                    done + 1,
                    e.code,
                    e.message
                ));
            }
            m.nats_applied.get_or_create(&self.labels).inc_by(n);
            if let Some(msg) = last_msg {
                // AckPolicy::All: acknowledges every earlier message too.
                let _ = msg.ack().await;
            }
            if let Some(s) = gap {
                return self.resync(seq, s).await;
            }
        }
    }

    /// JetStream no longer has the messages after `seq` (the next one it
    /// has is `next`): take a snapshot from a peer hub.
    async fn resync(&self, seq: u64, next: u64) -> Stop {
        let t = &self.tenant;
        let m = &self.hub.metrics;
        self.resyncing.store(true, Ordering::SeqCst);
        m.nats_resync_needed.get_or_create(&self.labels).set(1);
        tracing::warn!(
            tenant = %t.name,
            "JetStream no longer holds messages {}..{} that this hub did not apply (older than --nats-max-age): taking a snapshot from a peer hub",
            seq + 1,
            next.saturating_sub(1).max(seq + 1)
        );
        let me = hex(&t.site);
        let mut target = "any".to_string();
        let mut after = Pos::ZERO;
        let mut peer: Option<Site> = None;
        let mut pages = 0u64;
        loop {
            let mut h = HeaderMap::new();
            h.insert(H_SITE, me.as_str());
            h.insert(H_AFTER, after.to_string().as_str());
            let reply = match tokio::time::timeout(
                Duration::from_secs(30),
                self.nats.client.request_with_headers(
                    resync_subject(&t.name, &target),
                    h,
                    Default::default(),
                ),
            )
            .await
            {
                Err(_) => return Stop::Retry("no snapshot page from a peer hub within 30 s".into()),
                Ok(Err(e)) => {
                    return Stop::Retry(format!(
                        "no peer hub serves a snapshot of tenant {:?} ({e}); this hub keeps its state and waits",
                        t.name
                    ))
                }
                Ok(Ok(r)) => r,
            };
            let hd = reply.headers.unwrap_or_default();
            let get = |k: &str| hd.get(k).map(|v| v.as_str().to_string());
            if let Some(e) = get(H_ERROR) {
                return Stop::Retry(format!("the peer hub refused the snapshot: {e}"));
            }
            let Some(p) = get(H_PEER).as_deref().and_then(parse_site) else {
                return Stop::Retry("a snapshot page without the peer's site".into());
            };
            let cursor: Pos = match get(H_CURSOR).map(|c| c.parse()) {
                Some(Ok(c)) => c,
                _ => return Stop::Retry("a snapshot page without its cursor".into()),
            };
            match peer {
                None => {
                    peer = Some(p);
                    target = hex(&p);
                    if let Err(e) = t
                        .run(true, move |c| {
                            let name = resync_from(&p);
                            drop_stream(c, &name)
                                .and_then(|_| {
                                    c.execute_batch(&format!(
                                    "CREATE VIRTUAL TABLE {name} USING crsql_InboundStream(from = '{}')",
                                    hex(&p)
                                ))
                                })
                                .map_err(|e| refusal(&e))
                        })
                        .await
                    {
                        return e.into();
                    }
                }
                Some(q) if q != p => return Stop::Retry("the snapshot's peer changed".into()),
                Some(_) => {}
            }
            if get(H_DONE).is_some() {
                let Some(peer_seq) = get(H_SEQ).and_then(|s| s.parse::<u64>().ok()) else {
                    return Stop::Retry("the last snapshot page has no sequence".into());
                };
                let positions = parse_positions(&get(H_IN).unwrap_or_default());
                // The peer must have applied everything JetStream dropped.
                match self.nats.stream(&t.name).await {
                    Ok(s) => match s.get_info().await {
                        Ok(i) if i.state.first_sequence > peer_seq + 1 => {
                            return Stop::Retry(format!(
                                "the peer hub applied the stream only up to {peer_seq}, and JetStream starts at {}: trying again",
                                i.state.first_sequence
                            ))
                        }
                        Ok(_) => {}
                        Err(e) => return err(e),
                    },
                    Err(e) => return Stop::Retry(e),
                }
                let own = t.site;
                if let Err(e) = t
                    .run(true, move |c| {
                        finish_resync(c, &own, &p, cursor, &positions, peer_seq)
                            .map_err(|e| refusal(&e))
                    })
                    .await
                {
                    return e.into();
                }
                self.resyncing.store(false, Ordering::SeqCst);
                m.nats_resync_needed.get_or_create(&self.labels).set(0);
                m.nats_resyncs.get_or_create(&self.labels).inc();
                tracing::info!(tenant = %t.name, peer = %hex(&p), pages, seq = peer_seq, "snapshot from a peer hub applied");
                return Stop::Again;
            }
            let name = resync_from(&p);
            let pkg = reply.payload.to_vec();
            let max = self.nats.package_bytes;
            if let Err(e) = t
                .run(true, move |c| {
                    let apply = || {
                        let before = newest_site(c)?;
                        c.prepare_cached(&format!("INSERT INTO {name}(package) VALUES (?1)"))?
                            .execute([pkg])?;
                        exclude_new_sites(c, before, max)
                    };
                    apply().map_err(|e| refusal(&e))
                })
                .await
            {
                return e.into();
            }
            after = cursor;
            pages += 1;
        }
    }

    /// Answer other hubs' snapshot requests, one page at a time.
    async fn serve_snapshots(self: Arc<Self>) -> Stop {
        let t = &self.tenant;
        let me = hex(&t.site);
        let client = &self.nats.client;
        let any = match client.subscribe(resync_subject(&t.name, "any")).await {
            Ok(s) => s,
            Err(e) => return err(e),
        };
        let mine = match client.subscribe(resync_subject(&t.name, &me)).await {
            Ok(s) => s,
            Err(e) => return err(e),
        };
        let mut all = futures_util::stream::select(any, mine);
        while let Some(req) = all.next().await {
            let Some(reply_to) = req.reply.clone() else {
                continue;
            };
            let hd = req.headers.clone().unwrap_or_default();
            let Some(requester) = hd.get(H_SITE).and_then(|v| parse_site(v.as_str())) else {
                continue;
            };
            let direct = req.subject.as_str().ends_with(&me);
            if requester == t.site || (!direct && self.resyncing.load(Ordering::SeqCst)) {
                continue;
            }
            let mut h = HeaderMap::new();
            h.insert(H_PEER, me.as_str());
            let after: Option<Pos> = hd.get(H_AFTER).and_then(|v| v.as_str().parse().ok());
            let page = match after {
                None => Err("no Crsql-After".to_string()),
                Some(_) if self.resyncing.load(Ordering::SeqCst) => {
                    Err("this hub is resyncing itself".to_string())
                }
                Some(after) => {
                    let max = self.nats.package_bytes;
                    t.run(false, move |c| {
                        snapshot_page(c, &requester, after, max).map_err(|e| refusal(&e))
                    })
                    .await
                    .map_err(|r| r.message)
                }
            };
            let payload = match page {
                Err(e) => {
                    h.insert(H_ERROR, e.as_str());
                    Vec::new()
                }
                Ok(Page::Package(p, cursor)) => {
                    h.insert(H_CURSOR, cursor.to_string().as_str());
                    p
                }
                Ok(Page::Done { seq, positions }) => {
                    h.insert(H_CURSOR, after.unwrap_or(Pos::ZERO).to_string().as_str());
                    h.insert(H_DONE, "1");
                    h.insert(H_SEQ, seq.to_string().as_str());
                    let ins: Vec<String> = positions
                        .iter()
                        .map(|(s, p)| format!("{}={p}", hex(s)))
                        .collect();
                    h.insert(H_IN, ins.join(";").as_str());
                    Vec::new()
                }
            };
            if let Err(e) = client
                .publish_with_headers(reply_to, h, payload.into())
                .await
            {
                return err(e);
            }
        }
        Stop::Retry("the snapshot subscription ended".into())
    }
}

/// The tenant database's NATS tables and `crsql_nats_out`.
fn setup(c: &Connection, max: usize) -> rusqlite::Result<()> {
    let new = !c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'crsql_nats_sites')",
        [],
        |r| r.get::<_, bool>(0),
    )?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS crsql_nats_state(id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL); \
         INSERT OR IGNORE INTO crsql_nats_state VALUES (1, 0); \
         CREATE TABLE IF NOT EXISTS crsql_nats_sites(site BLOB PRIMARY KEY, pushed INTEGER NOT NULL) WITHOUT ROWID;",
    )?;
    // A database of an older hub: its stream had no filter.
    if new || !db::stream_exists(c, OUT)? {
        create_out(c, max)?;
    }
    Ok(())
}

/// (Re-)create `crsql_nats_out` where it is (at `last_sent`), leaving out
/// the changes of the sites that reached this hub only from other hubs
/// (`crsql_nats_sites.pushed = 0`): those hubs published them.
fn create_out(c: &Connection, max: usize) -> rusqlite::Result<()> {
    // Before the transaction of `last_sent`: the receivers drop the parts
    // of a split transaction they staged from the old stream when they
    // follow the new one, so it starts again at a transaction's first
    // part (what they had is merged again as a no-op).
    let since = if db::stream_exists(c, OUT)? {
        before_transaction(db::last_sent(c, OUT)?, true)
    } else {
        Pos::ZERO
    };
    let mut exclude = vec![NO_SITE.to_string()];
    exclude.extend(
        c.prepare("SELECT site FROM crsql_nats_sites WHERE pushed = 0 ORDER BY site")?
            .query_map([], |r| r.get::<_, Vec<u8>>(0))?
            .map(|s| s.map(|s| hex(&s)))
            .collect::<Result<Vec<_>, _>>()?,
    );
    drop_stream(c, OUT)?;
    c.execute_batch(&format!(
        "CREATE VIRTUAL TABLE {OUT} USING crsql_OutboundStream(max_bytes = {max}, since = '{since}', exclude_sites = '{}')",
        exclude.join(",")
    ))
}

/// The stream id of `crsql_nats_out` (new at each create_out).
fn out_stream_id(c: &Connection) -> rusqlite::Result<Vec<u8>> {
    c.prepare_cached("SELECT stream_id FROM crsql_stream_state WHERE name = ?1")?
        .query_row([OUT], |r| r.get(0))
}

/// The sites whose changes clients pushed to this hub.
pub(crate) fn pushed_sites(c: &Connection) -> rusqlite::Result<HashSet<Site>> {
    c.prepare("SELECT site FROM crsql_nats_sites WHERE pushed = 1")?
        .query_map([], |r| r.get::<_, Vec<u8>>(0))?
        .filter_map(|s| s.map(|s| Site::try_from(s.as_slice()).ok()).transpose())
        .collect()
}

/// In the transaction that applies a client's push: the origin sites
/// `sites` (not yet marked) are pushed here, so this hub publishes their
/// changes from now on, including a failed-over client's changes that its
/// former hub accepted and never published. A site that was left out
/// (seen only from other hubs) is put back into `crsql_nats_out`.
pub(crate) fn mark_pushed(c: &Connection, sites: &[Site], max: usize) -> rusqlite::Result<()> {
    let mut was_excluded = false;
    for s in sites {
        was_excluded |= c
            .prepare_cached("SELECT pushed = 0 FROM crsql_nats_sites WHERE site = ?1")?
            .query_row([&s[..]], |r| r.get::<_, bool>(0))
            .optional()?
            .unwrap_or(false);
        c.prepare_cached("INSERT OR REPLACE INTO crsql_nats_sites(site, pushed) VALUES (?1, 1)")?
            .execute([&s[..]])?;
    }
    if was_excluded {
        create_out(c, max)?;
    }
    Ok(())
}

/// The highest ordinal of `crsql_site_id` (sites known to the database).
fn newest_site(c: &Connection) -> rusqlite::Result<i64> {
    c.prepare_cached("SELECT coalesce(max(ordinal), 0) FROM crsql_site_id")?
        .query_row([], |r| r.get(0))
}

/// After merging packages of other hubs (JetStream or a snapshot) in the
/// open transaction: the sites they brought that the database did not know
/// (ordinal above `before`) reached this hub only from other hubs, so
/// `crsql_nats_out` leaves them out (unless a client pushes them here
/// later, see `mark_pushed`).
fn exclude_new_sites(c: &Connection, before: i64, max: usize) -> rusqlite::Result<()> {
    let added = c
        .prepare_cached(
            "INSERT OR IGNORE INTO crsql_nats_sites(site, pushed) \
             SELECT site_id, 0 FROM crsql_site_id WHERE ordinal > ?1",
        )?
        .execute([before])?;
    if added > 0 {
        create_out(c, max)?;
    }
    Ok(())
}

/// A consumed message: its sequence, and its sender and package (None:
/// this hub's own, or unreadable: only the sequence moves).
type Consumed = (u64, Option<(Site, Vec<u8>)>);

fn applied_seq(c: &Connection) -> rusqlite::Result<u64> {
    c.query_row("SELECT seq FROM crsql_nats_state WHERE id = 1", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|s| s.max(0) as u64)
}

fn set_seq(c: &Connection, seq: u64) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE crsql_nats_state SET seq = ?1 WHERE id = 1")?
        .execute([seq as i64])
        .map(|_| ())
}

/// Apply consumed messages in order (None: the hub's own, skipped). Stops
/// at the first one refused; returns the sequence applied up to (stored)
/// and the refusal.
fn apply(
    c: &Connection,
    own: &Site,
    items: Vec<Consumed>,
    max: usize,
) -> Result<(u64, Option<Refusal>), Refusal> {
    let mut done = applied_seq(c).map_err(|e| refusal(&e))?;
    let before = newest_site(c).map_err(|e| refusal(&e))?;
    let mut failed = None;
    for (seq, item) in items {
        if let Some((sender, package)) = item {
            debug_assert!(&sender != own);
            let name = nats_in(&sender);
            let insert = || {
                c.prepare_cached(&format!("INSERT INTO {name}(package) VALUES (?1)"))?
                    .execute([&package])
            };
            let r = (|| {
                if !db::stream_exists(c, &name)? {
                    c.execute_batch(&format!(
                        "CREATE VIRTUAL TABLE {name} USING crsql_InboundStream(from = '{}')",
                        hex(&sender)
                    ))?;
                }
                match insert() {
                    // The sender re-created its crsql_nats_out (its filter
                    // changed, create_out): follow the new stream from
                    // where this one is, as far as it is complete.
                    Err(e) if db::message(&e).contains("wrong stream") => {
                        let pos = complete_position(c, &name)?;
                        drop_stream(c, &name)?;
                        c.execute_batch(&format!(
                            "CREATE VIRTUAL TABLE {name} USING crsql_InboundStream(from = '{}', since = '{pos}')",
                            hex(&sender)
                        ))?;
                        insert()
                    }
                    r => r,
                }
            })();
            if let Err(e) = r {
                failed = Some(refusal(&e));
                break;
            }
        }
        done = seq;
    }
    exclude_new_sites(c, before, max).map_err(|e| refusal(&e))?;
    set_seq(c, done).map_err(|e| refusal(&e))?;
    Ok((done, failed))
}

fn drop_stream(c: &Connection, name: &str) -> rusqlite::Result<()> {
    if db::stream_exists(c, name)? {
        c.execute_batch(&format!("DROP TABLE {}", db::ident(name)))?;
    }
    Ok(())
}

enum Page {
    Package(Vec<u8>, Pos),
    /// Nothing after the requested position: this hub's sequence and how
    /// far it applied each hub's packages (all of it in its database).
    Done {
        seq: u64,
        positions: Vec<(Site, Pos)>,
    },
}

/// One page of the snapshot for `requester`: a package of
/// `crsql_resync_to_<requester>` (created at the first page, `resync =
/// 'snapshot'`, so compacted deletes come too), or the end.
fn snapshot_page(
    c: &Connection,
    requester: &Site,
    after: Pos,
    max_bytes: usize,
) -> rusqlite::Result<Page> {
    let name = resync_to(requester);
    if after == Pos::ZERO {
        drop_stream(c, &name)?;
        c.execute_batch(&format!(
            "CREATE VIRTUAL TABLE {name} USING crsql_OutboundStream(resync = 'snapshot', max_bytes = {max_bytes})"
        ))?;
    }
    let pulled = read_packages(c, &name, after, 1, max_bytes)?;
    if let Some(p) = pulled.packages.into_iter().next() {
        return Ok(Page::Package(p.bytes, p.cursor));
    }
    let seq = applied_seq(c)?;
    let rows: Vec<String> = c
        .prepare(
            "SELECT name FROM crsql_streams WHERE direction = 'inbound' \
             AND name LIKE 'crsql\\_nats\\_in\\_%' ESCAPE '\\'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut positions = Vec::new();
    for n in rows {
        let Some(site) = parse_site(&n[IN_PREFIX.len()..]) else {
            continue;
        };
        positions.push((site, complete_position(c, &n)?));
    }
    drop_stream(c, &name)?;
    Ok(Page::Done { seq, positions })
}

/// How far inbound stream `name` holds its sender's changes: its
/// `last_applied`, or, while parts of a split transaction are staged (not
/// in the database yet), the position before that transaction.
fn complete_position(c: &Connection, name: &str) -> rusqlite::Result<Pos> {
    let pos = db::last_applied(c, name)?;
    let staged: bool = c
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM crsql_stream_staging WHERE name = ?1)")?
        .query_row([name], |r| r.get(0))?;
    Ok(before_transaction(pos, staged))
}

/// `pos`, or with `back`, the position just before its transaction.
fn before_transaction(pos: Pos, back: bool) -> Pos {
    if back && pos.db_version > 0 {
        Pos {
            db_version: pos.db_version - 1,
            seq: i64::MAX,
        }
    } else {
        pos
    }
}

fn parse_positions(s: &str) -> Vec<(Site, Pos)> {
    s.split(';')
        .filter_map(|e| {
            let (site, pos) = e.split_once('=')?;
            Some((parse_site(site)?, pos.parse().ok()?))
        })
        .collect()
}

/// Move an inbound stream from `from` up to `pos` (re-create it there), if
/// it is behind: the snapshot brought everything up to `pos`.
fn raise(c: &Connection, from: &Site, pos: Pos) -> rusqlite::Result<()> {
    let name = nats_in(from);
    if db::stream_exists(c, &name)? {
        if db::last_applied(c, &name)? >= pos {
            return Ok(());
        }
        drop_stream(c, &name)?;
    }
    c.execute_batch(&format!(
        "CREATE VIRTUAL TABLE {name} USING crsql_InboundStream(from = '{}', since = '{pos}')",
        hex(from)
    ))
}

/// The snapshot of `peer` is applied, up to `cursor` of the peer's
/// database: take over its positions and its JetStream sequence.
fn finish_resync(
    c: &Connection,
    own: &Site,
    peer: &Site,
    cursor: Pos,
    positions: &[(Site, Pos)],
    seq: u64,
) -> rusqlite::Result<()> {
    raise(c, peer, cursor)?;
    for (site, pos) in positions {
        if site != own && site != peer {
            raise(c, site, *pos)?;
        }
    }
    drop_stream(c, &resync_from(peer))?;
    set_seq(c, seq)
}
