//! Prometheus metrics with kube-proxy's names (`pkg/proxy/metrics`), all
//! under the `kubeproxy_` prefix. Backends add their own through
//! [`Metrics::register`].

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
/// The counter type of every metric here: a backend that counts events
/// of its own data path (the userspace proxy's full UDP flow tables)
/// holds one and registers it with [`Metrics::register`].
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `code` label of the health counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// HTTP status code.
    pub code: String,
}

/// The `table` label of the iptables rule gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    /// `nat`, `filter`.
    pub table: String,
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

/// The `traffic_policy` label of `sync_proxy_rules_no_local_endpoints_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// `internal` or `external`.
    pub traffic_policy: String,
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

/// The `ip_family` label kube-proxy (v1.33, kubernetes #129173) puts on
/// the metrics each family's proxier records: `IPv4` or `IPv6`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    /// `IPv4` or `IPv6`.
    pub ip_family: String,
}

impl FamilyLabel {
    /// The label of `family`.
    pub fn of(family: crate::IpFamily) -> FamilyLabel {
        FamilyLabel {
            ip_family: family.as_str().to_string(),
        }
    }
}

/// A histogram per family, kube-proxy's sync buckets.
pub type FamilyHistogram = Family<FamilyLabel, Histogram, fn() -> Histogram>;

/// Every metric the core maintains.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    /// `kubeproxy_sync_proxy_rules_duration_seconds{ip_family}`.
    pub sync_duration: FamilyHistogram,
    /// `kubeproxy_sync_full_proxy_rules_duration_seconds{ip_family}`.
    pub sync_full_duration: FamilyHistogram,
    /// `kubeproxy_sync_partial_proxy_rules_duration_seconds{ip_family}`.
    pub sync_partial_duration: FamilyHistogram,
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family}`
    /// (that family's last success).
    pub last_timestamp: Family<FamilyLabel, Gauge<f64, AtomicU64>>,
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`.
    pub last_queued_timestamp: Gauge<f64, AtomicU64>,
    /// `kubeproxy_sync_proxy_rules_service_changes_total`.
    pub service_changes_total: Counter,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_total`.
    pub endpoint_changes_total: Counter,
    /// `kubeproxy_sync_proxy_rules_service_changes_pending`.
    pub service_changes_pending: Gauge,
    /// `kubeproxy_sync_proxy_rules_endpoint_changes_pending`.
    pub endpoint_changes_pending: Gauge,
    /// `kubeproxy_sync_proxy_rules_failures_total` (any backend).
    pub sync_failures_total: Counter,
    /// `kubeproxy_sync_proxy_rules_repairs_total`: verifying syncs that
    /// found the kernel changed behind the backend's back (a flushed
    /// chain, a deleted jump, a firewall reload) and repaired it. Our own;
    /// kube-proxy only forces a full sync when its canary chain goes.
    pub repairs_total: Counter,
    /// `kubeproxy_sync_proxy_rules_iptables_restore_failures_total`: an
    /// `iptables-restore` the kernel or the tool refused (iptables, IPVS
    /// and userspace portal modes).
    pub iptables_restore_failures_total: Family<FamilyLabel, Counter>,
    /// `kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total`:
    /// of those, the ones of a partial sync.
    pub iptables_partial_restore_failures_total: Family<FamilyLabel, Counter>,
    /// `kubeproxy_sync_proxy_rules_nftables_sync_failures_total`: an
    /// nf_tables transaction the kernel refused.
    pub nftables_sync_failures_total: Family<FamilyLabel, Counter>,
    /// `kubeproxy_sync_proxy_rules_iptables_total{table,ip_family}`:
    /// iptables rules the backend owns after its last sync.
    pub iptables_rules_total: Family<TableLabel, Gauge>,
    /// `kubeproxy_sync_proxy_rules_iptables_last{table,ip_family}`: rules
    /// its last sync wrote.
    pub iptables_rules_last: Family<TableLabel, Gauge>,
    /// `kubeproxy_sync_proxy_rules_service_ports_not_programmed`: service
    /// ports the last sync of every family could not program (a node port
    /// another program holds, in userspace direct mode). Our own; kube-proxy
    /// only logs them.
    pub not_programmed: Gauge,
    /// `kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy,ip_family}`:
    /// service ports with a Local policy and no local endpoint.
    pub no_local_endpoints: Family<PolicyLabel, Gauge>,
    /// `kubeproxy_network_programming_duration_seconds{ip_family}`: from
    /// an EndpointSlice change (its `last-change-trigger-time` annotation)
    /// to the end of the sync that programmed it, kube-proxy's buckets.
    pub network_programming_duration: FamilyHistogram,
    /// `kubeproxy_proxy_healthz_total{code}`.
    pub healthz_total: Family<CodeLabel, Counter>,
    /// `kubeproxy_proxy_livez_total{code}`.
    pub livez_total: Family<CodeLabel, Counter>,
}

/// kube-proxy's: 0.25 s steps to 0.5 s, 1 s steps to 59 s, 5 s steps to
/// 115 s, 30 s steps to 300 s.
fn network_programming_buckets() -> Vec<f64> {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    b.dedup();
    b
}

fn hist() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn programming_hist() -> Histogram {
    Histogram::new(network_programming_buckets())
}

/// Seconds since the epoch, for timestamp gauges.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every core metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kubeproxy");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            sync_duration: Family::new_with_constructor(hist),
            sync_full_duration: Family::new_with_constructor(hist),
            sync_partial_duration: Family::new_with_constructor(hist),
            last_timestamp: Family::default(),
            last_queued_timestamp: Gauge::default(),
            service_changes_total: Counter::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            endpoint_changes_pending: Gauge::default(),
            sync_failures_total: Counter::default(),
            repairs_total: Counter::default(),
            iptables_restore_failures_total: Family::default(),
            iptables_partial_restore_failures_total: Family::default(),
            nftables_sync_failures_total: Family::default(),
            iptables_rules_total: Family::default(),
            iptables_rules_last: Family::default(),
            no_local_endpoints: Family::default(),
            not_programmed: Gauge::default(),
            network_programming_duration: Family::new_with_constructor(programming_hist),
            healthz_total: Family::default(),
            livez_total: Family::default(),
        };
        let r = &mut registry;
        r.register(
            "sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            m.sync_duration.clone(),
        );
        r.register(
            "sync_full_proxy_rules_duration_seconds",
            "Full SyncProxyRules latency in seconds",
            m.sync_full_duration.clone(),
        );
        r.register(
            "sync_partial_proxy_rules_duration_seconds",
            "Partial SyncProxyRules latency in seconds",
            m.sync_partial_duration.clone(),
        );
        r.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_timestamp.clone(),
        );
        r.register(
            "sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        r.register(
            "sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes_total.clone(),
        );
        r.register(
            "sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            m.endpoint_changes_total.clone(),
        );
        r.register(
            "sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            m.service_changes_pending.clone(),
        );
        r.register(
            "sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            m.endpoint_changes_pending.clone(),
        );
        r.register(
            "sync_proxy_rules_failures",
            "Cumulative failed syncs of proxy rules",
            m.sync_failures_total.clone(),
        );
        r.register(
            "sync_proxy_rules_repairs",
            "Cumulative syncs that found rules changed outside the proxier and repaired them (proxier's own; kube-proxy has none)",
            m.repairs_total.clone(),
        );
        r.register(
            "sync_proxy_rules_service_ports_not_programmed",
            "Service ports the last sync could not program and retries (proxier's own; kube-proxy only logs them)",
            m.not_programmed.clone(),
        );
        r.register(
            "sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            m.iptables_restore_failures_total.clone(),
        );
        r.register(
            "sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            m.iptables_partial_restore_failures_total.clone(),
        );
        r.register(
            "sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            m.nftables_sync_failures_total.clone(),
        );
        r.register(
            "sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by kube-proxy",
            m.iptables_rules_total.clone(),
        );
        r.register(
            "sync_proxy_rules_iptables_last",
            "Number of iptables rules written by kube-proxy in last sync",
            m.iptables_rules_last.clone(),
        );
        r.register(
            "sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        r.register(
            "network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming_duration.clone(),
        );
        r.register(
            "proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.healthz_total.clone(),
        );
        r.register(
            "proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.livez_total.clone(),
        );
        *m.registry.lock().unwrap() = registry;
        m
    }

    /// Registers more metrics (a backend's own), under the same prefix.
    pub fn register(&self, f: impl FnOnce(&mut Registry)) {
        f(&mut self.registry.lock().unwrap());
    }

    /// Records one family's sync duration.
    pub fn observe_sync(&self, family: crate::IpFamily, full: bool, d: Duration) {
        let s = d.as_secs_f64();
        let l = FamilyLabel::of(family);
        self.sync_duration.get_or_create(&l).observe(s);
        if full {
            self.sync_full_duration.get_or_create(&l).observe(s);
        } else {
            self.sync_partial_duration.get_or_create(&l).observe(s);
        }
    }

    /// The text exposition format (what `/metrics` serves).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
            .expect("writing to a String cannot fail");
        out
    }
}
