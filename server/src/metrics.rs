//! Prometheus metrics of the hub (`GET /metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    pub clients: Family<Labels, Gauge>,
    pub packages_in: Family<Labels, Counter>,
    pub changes_in: Family<Labels, Counter>,
    pub packages_out: Family<Labels, Counter>,
    pub changes_out: Family<Labels, Counter>,
    pub apply_seconds: Histogram,
    pub client_lag: Family<Labels, Gauge>,
    pub client_lag_changes: Family<Labels, Gauge>,
    pub errors: Family<Labels, Counter>,
    pub nats_published: Family<Labels, Counter>,
    pub nats_published_changes: Family<Labels, Counter>,
    pub nats_applied: Family<Labels, Counter>,
    pub nats_lag: Family<Labels, Gauge>,
    pub nats_resyncs: Family<Labels, Counter>,
    pub nats_resync_needed: Family<Labels, Gauge>,
}

pub fn tenant(t: &str) -> Labels {
    vec![("tenant".into(), t.into())]
}

pub fn client(t: &str, site: &str) -> Labels {
    vec![("tenant".into(), t.into()), ("site".into(), site.into())]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("crsql_sync");
        let clients = Family::<Labels, Gauge>::default();
        let packages_in = Family::<Labels, Counter>::default();
        let changes_in = Family::<Labels, Counter>::default();
        let packages_out = Family::<Labels, Counter>::default();
        let changes_out = Family::<Labels, Counter>::default();
        let client_lag = Family::<Labels, Gauge>::default();
        let client_lag_changes = Family::<Labels, Gauge>::default();
        let errors = Family::<Labels, Counter>::default();
        // 100 µs .. ~3.3 s
        let apply_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
        );
        registry.register(
            "connected_clients",
            "Connected clients (after the hello)",
            clients.clone(),
        );
        registry.register(
            "packages_in",
            "Packages received from clients and applied",
            packages_in.clone(),
        );
        registry.register(
            "changes_in",
            "Changes in the packages received and applied",
            changes_in.clone(),
        );
        registry.register(
            "packages_out",
            "Packages sent to clients",
            packages_out.clone(),
        );
        registry.register(
            "changes_out",
            "Changes in the packages sent to clients",
            changes_out.clone(),
        );
        registry.register(
            "apply_seconds",
            "Time from receiving a package to its commit in the tenant database",
            apply_seconds.clone(),
        );
        registry.register(
            "client_lag_versions",
            "Per connected client: tenant db_version minus the db_version the client acknowledged",
            client_lag.clone(),
        );
        registry.register(
            "client_lag_changes",
            "Per connected client: changes of the tenant the client has not acknowledged yet (lag_changes of its outbound stream)",
            client_lag_changes.clone(),
        );
        registry.register("errors", "Error frames sent, by code", errors.clone());
        let nats_published = Family::<Labels, Counter>::default();
        let nats_published_changes = Family::<Labels, Counter>::default();
        let nats_applied = Family::<Labels, Counter>::default();
        let nats_lag = Family::<Labels, Gauge>::default();
        let nats_resyncs = Family::<Labels, Counter>::default();
        let nats_resync_needed = Family::<Labels, Gauge>::default();
        registry.register(
            "nats_published_packages",
            "Packages of this hub published to JetStream (acknowledged by it)",
            nats_published.clone(),
        );
        registry.register(
            "nats_published_changes",
            "Changes in the packages published to JetStream",
            nats_published_changes.clone(),
        );
        registry.register(
            "nats_applied_packages",
            "Other hubs' packages consumed from JetStream and applied",
            nats_applied.clone(),
        );
        registry.register(
            "nats_lag_messages",
            "JetStream messages of the tenant not yet delivered to this hub",
            nats_lag.clone(),
        );
        registry.register(
            "nats_resyncs",
            "Snapshots taken from a peer hub after JetStream dropped messages this hub had not applied",
            nats_resyncs.clone(),
        );
        registry.register(
            "nats_resync_needed",
            "1 while this hub waits for or takes a snapshot from a peer hub",
            nats_resync_needed.clone(),
        );
        Metrics {
            registry,
            clients,
            packages_in,
            changes_in,
            packages_out,
            changes_out,
            apply_seconds,
            client_lag,
            client_lag_changes,
            errors,
            nats_published,
            nats_published_changes,
            nats_applied,
            nats_lag,
            nats_resyncs,
            nats_resync_needed,
        }
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = encode(&mut s, &self.registry);
        s
    }
}
