//! Hubs scaled out over a real `nats-server -js` on 127.0.0.1: real hub
//! processes, real client processes, real files (docs/server.md,
//! "Scale-out over NATS JetStream").

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use crsql_stream_rs::rusqlite::Connection;
use rand::SeedableRng;

const HUBS: usize = 3;
const CLIENTS: usize = 6;

fn nats_hub(dir: &std::path::Path, port: u16, nats: &NatsServer, max_age: &str) -> Hub {
    Hub::start(
        dir,
        port,
        &["--nats", &nats.url(), "--nats-max-age", max_age],
    )
}

fn log_keys(c: &Connection) -> BTreeSet<String> {
    c.prepare("SELECT id FROM log")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The log rows of a hub's tenant database (none before it exists).
fn hub_keys(h: &Hub) -> BTreeSet<String> {
    match crsql_sync::db::open(&h.db_path("acme")) {
        Ok(c) if c.prepare("SELECT 1 FROM log").is_ok() => log_keys(&c),
        _ => BTreeSet::new(),
    }
}

/// Wait (bounded) until `f` holds; on time out, fail with the hubs' logs.
fn wait(hubs: &mut [Hub], what: &str, timeout: Duration, mut f: impl FnMut(&[Hub]) -> bool) {
    let deadline = Instant::now() + timeout;
    while !f(hubs) {
        if Instant::now() > deadline {
            // Only running hubs (a killed one's pid may be reused).
            let logs: Vec<String> = hubs
                .iter_mut()
                .filter_map(|h| matches!(h.child.try_wait(), Ok(None)).then(|| h.stop().1))
                .collect();
            panic!(
                "timed out waiting for {what}; hub logs:\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Hub `i` gets to hold `want` through exactly one snapshot from a peer.
fn resynced(hubs: &mut [Hub], i: usize, want: &BTreeSet<String>) {
    wait(
        hubs,
        &format!("hub {i} to hold every change after its resync"),
        Duration::from_secs(60),
        |h| hub_keys(&h[i]) == *want,
    );
    assert_eq!(
        metric(&hubs[i], "crsql_sync_nats_resyncs_total{tenant=\"acme\"}"),
        1.0,
        "hub {i} took one snapshot"
    );
}

/// `crsql-sync sync --once`, which must succeed.
fn sync(db: &std::path::Path, url: &str) {
    let (code, out, err) = sync_once(db, url, &[]);
    assert_eq!(code, Some(0), "sync --once with {url}: {out}{err}");
}

/// Every hub database and every client database holds `want` log rows,
/// and all clients have the same state.
fn converged(hubs: &[Hub], clients: &[Connection], want: &BTreeSet<String>) -> bool {
    if hubs.iter().any(|h| hub_keys(h) != *want) {
        return false;
    }
    clients.iter().all(|c| log_keys(c) == *want)
        && clients.windows(2).all(|w| state(&w[0]) == state(&w[1]))
}

#[test]
fn three_hubs_converge_through_a_killed_hub_failing_over_clients_and_a_restarted_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("js"));
    let mut hubs: Vec<Hub> = (0..HUBS)
        .map(|i| nats_hub(&dir.path().join(format!("hub{i}")), 0, &nats, "1h"))
        .collect();
    let ports: Vec<u16> = hubs.iter().map(|h| h.port).collect();
    let url = |i: usize| format!("ws://127.0.0.1:{}/acme", ports[i % HUBS]);
    let dbs: Vec<_> = (0..CLIENTS)
        .map(|i| dir.path().join(format!("c{i}.db")))
        .collect();
    let clients: Vec<Connection> = dbs.iter().map(|p| client_db(p)).collect();
    // Client i is at hub i % 3 and fails over to the next one.
    let syncs = Killed(
        (0..CLIENTS)
            .map(|i| sync_forever(&dbs[i], &format!("{},{}", url(i), url(i + 1))))
            .collect(),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed());
    let mut want = BTreeSet::new();
    let rounds = 120;
    let (mut hub_killed, mut nats_restarted) = (false, false);
    for n in 0..rounds {
        for (i, c) in clients.iter().enumerate() {
            if let Some(k) = random_txn(c, i, n, &mut rng) {
                want.insert(k);
            }
        }
        if n == rounds / 4 {
            // Hub 1 dies mid-stream: clients 1 and 4 move to hub 2.
            hubs[1].kill9();
            hub_killed = true;
        }
        if n == rounds / 2 {
            // While hub 1 is down, every client has everything: clients 1
            // and 4 get the others' changes through hub 2 only.
            wait(
                &mut hubs,
                "the clients of the dead hub 1 to converge through hub 2",
                Duration::from_secs(120),
                |h| {
                    clients.iter().all(|c| log_keys(c) == want)
                        && hub_keys(&h[0]) == want
                        && hub_keys(&h[2]) == want
                },
            );
            hubs[1] = nats_hub(&dir.path().join("hub1"), ports[1], &nats, "1h");
        }
        if n == 3 * rounds / 4 {
            nats.restart();
            nats_restarted = true;
        }
        std::thread::sleep(Duration::from_millis(15));
    }
    assert!(hub_killed && nats_restarted);
    let started = Instant::now();
    wait(
        &mut hubs,
        "every hub and client to hold every transaction",
        Duration::from_secs(120),
        |hubs| converged(hubs, &clients, &want),
    );
    let settle = started.elapsed();
    drop(syncs);
    let mut applied = Vec::new();
    for h in &hubs {
        applied.push(metric(
            h,
            "crsql_sync_nats_applied_packages_total{tenant=\"acme\"}",
        ));
        assert!(
            metric(
                h,
                "crsql_sync_nats_published_packages_total{tenant=\"acme\"}"
            ) > 0.0,
            "every hub published"
        );
    }
    assert!(applied.iter().all(|a| *a > 0.0), "applied: {applied:?}");
    // Everything every hub holds is the same too.
    let hub_states: Vec<_> = hubs
        .iter()
        .map(|h| {
            let c = crsql_sync::db::open(&h.db_path("acme")).unwrap();
            let mut s = rows(&c, "SELECT * FROM items ORDER BY id");
            s.extend(rows(&c, "SELECT * FROM log ORDER BY id"));
            s
        })
        .collect();
    assert!(hub_states.windows(2).all(|w| w[0] == w[1]));
    eprintln!(
        "{} transactions by {CLIENTS} clients over {HUBS} hubs, one hub SIGKILLed, nats-server restarted; converged {settle:?} after the last write; packages applied from JetStream per hub: {applied:?}",
        want.len()
    );
}

/// Insert `n` log rows (and a few deletes of items) on a client.
fn write(c: &Connection, client: usize, from: u64, n: u64) -> BTreeSet<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed() + from);
    (from..from + n)
        .filter_map(|k| random_txn(c, client, k, &mut rng))
        .collect()
}

#[test]
fn a_hub_away_longer_than_the_retention_and_a_hub_joining_later_resync_from_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("js"));
    let age = "2s";
    let mut hubs = vec![
        nats_hub(&dir.path().join("hub0"), 0, &nats, age),
        nats_hub(&dir.path().join("hub1"), 0, &nats, age),
    ];
    let (pa, pb, pc) = (
        dir.path().join("a.db"),
        dir.path().join("b.db"),
        dir.path().join("c.db"),
    );
    let (a, b, c) = (client_db(&pa), client_db(&pb), client_db(&pc));
    let mut want = write(&a, 0, 0, 30);
    sync(&pa, &hubs[0].url("acme"));
    wait(
        &mut hubs,
        "hub 1 to have a's rows",
        Duration::from_secs(30),
        |h| hub_keys(&h[1]) == want,
    );

    // Hub 1 goes away; a writes more on hub 0; JetStream drops it all
    // (2 s) before hub 1 is back.
    let port1 = hubs[1].port;
    let (code, _) = hubs[1].stop();
    assert_eq!(code, Some(0));
    want.extend(write(&a, 0, 30, 30));
    sync(&pa, &hubs[0].url("acme"));
    std::thread::sleep(Duration::from_secs(4));
    nats.wait_dropped("CRSQL_acme", Duration::from_secs(60));
    hubs[1] = nats_hub(&dir.path().join("hub1"), port1, &nats, age);
    resynced(&mut hubs, 1, &want);
    sync(&pb, &hubs[1].url("acme"));
    assert_eq!(
        log_keys(&b),
        want,
        "b, at hub 1, has what a pushed to hub 0 while hub 1 was away"
    );

    // A third hub joins after the retention window: it starts empty and
    // takes its snapshot from a peer.
    std::thread::sleep(Duration::from_secs(3));
    nats.wait_dropped("CRSQL_acme", Duration::from_secs(60));
    hubs.push(nats_hub(&dir.path().join("hub2"), 0, &nats, age));
    resynced(&mut hubs, 2, &want);
    sync(&pc, &hubs[2].url("acme"));
    assert_eq!(log_keys(&c), want, "c, at the new hub 2, has everything");

    // After the resyncs, the hubs go on exchanging through JetStream both
    // ways: c writes at hub 2, b at hub 1, a at hub 0.
    want.extend(write(&c, 2, 100, 10));
    want.extend(write(&b, 1, 200, 10));
    want.extend(write(&a, 0, 300, 10));
    let urls = [
        hubs[0].url("acme"),
        hubs[1].url("acme"),
        hubs[2].url("acme"),
    ];
    let paths = [&pa, &pb, &pc];
    wait(
        &mut hubs,
        "a, b and c to converge through three hubs",
        Duration::from_secs(90),
        |_| {
            for (p, u) in paths.iter().zip(&urls) {
                sync(p, u);
            }
            // The data, and every cell's clock; not the existence
            // records of rows at causal length 1, which the snapshot path
            // does not carry everywhere (docs/server.md, limits).
            let data = |x: &Connection| {
                let mut s = rows(x, "SELECT * FROM items ORDER BY id");
                s.extend(rows(
                    x,
                    "SELECT \"table\", hex(pk), cid, val, col_version, cl FROM crsql_changes WHERE cid != '-1' ORDER BY 1, 2, 3",
                ));
                s
            };
            [&a, &b, &c].iter().all(|x| log_keys(x) == want)
                && data(&a) == data(&b)
                && data(&b) == data(&c)
        },
    );
    for h in &hubs {
        assert_eq!(
            metric(h, "crsql_sync_nats_resync_needed{tenant=\"acme\"}"),
            0.0
        );
    }
}

/// `n` transactions of one new log row each on a client.
fn log_rows(c: &Connection, client: usize, from: u64, n: u64) -> BTreeSet<String> {
    (from..from + n)
        .map(|k| {
            let key = format!("{client}-{k}");
            c.execute(
                "INSERT INTO log VALUES (?1, ?2, ?3)",
                crsql_stream_rs::rusqlite::params![key, client as i64, k as i64],
            )
            .unwrap();
            key
        })
        .collect()
}

/// A hub's `name{tenant="acme"}` metric.
fn acme(h: &Hub, name: &str) -> f64 {
    metric(h, &format!("{name}{{tenant=\"acme\"}}"))
}

#[test]
fn each_hub_publishes_only_its_own_clients_pushes_and_a_failed_over_clients_changes_are_published_by_its_new_hub(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut nats = NatsServer::start(&dir.path().join("js"));
    let mut hubs: Vec<Hub> = (0..3)
        .map(|i| nats_hub(&dir.path().join(format!("hub{i}")), 0, &nats, "1h"))
        .collect();
    let (pa, pb) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let (a, b) = (client_db(&pa), client_db(&pb));

    // a pushes to hub 0, b to hub 1, nobody to hub 2: 20 transactions of
    // one new row each, so that every change pushed is a change published.
    let mut want = log_rows(&a, 0, 0, 20);
    want.extend(log_rows(&b, 1, 100, 20));
    sync(&pa, &hubs[0].url("acme"));
    sync(&pb, &hubs[1].url("acme"));
    wait(
        &mut hubs,
        "every hub to hold a's and b's rows, and hub 2 to publish its first (empty) package",
        Duration::from_secs(60),
        |h| {
            h.iter().all(|h| hub_keys(h) == want)
                && acme(&h[2], "crsql_sync_nats_published_packages_total") > 0.0
        },
    );
    // Each hub published what its own clients pushed, not what it merged
    // from the others (before, every hub published every change). When the
    // other client's site first arrived, a hub's stream was re-created one
    // transaction back: that transaction may go out twice.
    let published: Vec<f64> = hubs
        .iter()
        .map(|h| acme(h, "crsql_sync_nats_published_changes_total"))
        .collect();
    let pushed: Vec<f64> = hubs
        .iter()
        .map(|h| acme(h, "crsql_sync_changes_in_total"))
        .collect();
    assert!(
        pushed[0] > 0.0 && pushed[0] == pushed[1] && pushed[2] == 0.0,
        "pushed: {pushed:?}"
    );
    let one_txn = pushed[0] / 20.0;
    for i in 0..3 {
        assert!(
            published[i] <= pushed[i] + one_txn,
            "hub {i} published {} changes, its clients pushed {} (published {published:?}, pushed {pushed:?})",
            published[i],
            pushed[i]
        );
    }

    // Hub 0 accepts a's next changes but cannot publish them (JetStream is
    // down), then dies for good. a fails over to hub 1, where its site
    // reached only through JetStream so far: hub 1 must publish what a
    // pushes now, or hub 2 never gets it.
    nats.stop();
    let later = log_rows(&a, 0, 200, 10);
    sync(&pa, &hubs[0].url("acme"));
    hubs[0].kill9();
    nats.spawn();
    want.extend(later);
    sync(&pa, &hubs[1].url("acme"));
    wait(
        &mut hubs[1..],
        "hub 2 to get, through hub 1, what a pushed to the dead hub 0",
        Duration::from_secs(60),
        |h| h.iter().all(|h| hub_keys(h) == want),
    );
    sync(&pb, &hubs[2].url("acme"));
    assert_eq!(log_keys(&b), want, "b, now at hub 2, has every change of a");
}

/// A hub of a cluster follows every tenant it has without waiting for a
/// client: one it cannot open at start (here a file that is not a
/// database, later removed) is tried again until it opens.
#[test]
fn a_tenant_that_cannot_be_opened_at_start_is_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&dir.path().join("js"));
    let hub_dir = dir.path().join("hub0");
    let db = hub_dir.join("data").join("acme.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(
        &db,
        b"this is not a SQLite database, it is 64 bytes of text to be sure.",
    )
    .unwrap();
    let mut hub = nats_hub(&hub_dir, 0, &nats, "1h");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::remove_file(&db).unwrap();
    // No client comes: only the hub's own retry creates the tenant's
    // database from its schema file.
    eventually(
        "the hub to create the tenant",
        Duration::from_secs(20),
        || {
            db.exists()
                && crsql_sync::db::open(&db)
                    .map(|c| c.prepare("SELECT 1 FROM log").is_ok())
                    .unwrap_or(false)
        },
    );
    let (code, log) = hub.stop();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("cannot open the tenant (trying again"),
        "{log}"
    );
    assert!(log.contains("tenant opened"), "{log}");
}
