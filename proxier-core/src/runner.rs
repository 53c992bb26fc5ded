//! The sync runner: kube-proxy's `BoundedFrequencyRunner` (the newer
//! `pkg/proxy/runner` shape) wired to a tracker and a backend.
//!
//! - bursts coalesce: at most one sync is queued, and at least
//!   `min_sync_period` passes between the end of one sync and the start of
//!   the next;
//! - a sync runs at least every `sync_period`, and a full one every
//!   `full_sync_period`;
//! - a failed sync is retried with exponential backoff, and the retry is a
//!   full sync; its change set is carried over, not lost;
//! - one task runs every sync, so two never overlap;
//! - nothing syncs until the sources say they have listed everything
//!   ([`RunnerHandle::set_initialized`]), as kube-proxy waits for its
//!   informers;
//! - on a dual-stack node ([`Runner::dual_stack`]) one tracker per family
//!   is fed by the same handle, and every round syncs each family in turn
//!   through one proxier (a [`MetaProxier`](crate::MetaProxier)); each
//!   family fails, retries and goes full on its own, and `/healthz` is
//!   healthy only while every family syncs.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::health::{ProxyHealth, ServiceHealthServer};
use crate::input::{EndpointSlice, Node, Service};
use crate::metrics::{Metrics, unix_seconds};
use crate::proxier::{Proxier, SyncRequest};
use crate::tracker::{ChangeSet, ChangeTracker, TrackerCounters};
use crate::validate::ValidationError;

/// Timing of the runner (kube-proxy's `--min-sync-period`, `--sync-period`).
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Least time between the end of one sync and the start of the next.
    pub min_sync_period: Duration,
    /// A sync runs at least this often.
    pub sync_period: Duration,
    /// A full sync runs at least this often.
    pub full_sync_period: Duration,
    /// First retry delay after a failure; doubles up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            full_sync_period: Duration::from_secs(3600),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// One per family; the first is the primary.
    trackers: Mutex<Vec<ChangeTracker>>,
    notify: Notify,
    initialized: AtomicBool,
    sync_requested: AtomicBool,
    force_full: AtomicBool,
    health: Arc<ProxyHealth>,
    metrics: Arc<Metrics>,
}

/// Feeds events to a running [`Runner`]. Cheap to clone; every method
/// queues a sync when something changed.
#[derive(Debug, Clone)]
pub struct RunnerHandle {
    shared: Arc<Shared>,
}

impl RunnerHandle {
    fn queue(&self) {
        self.shared.health.queued_update();
        self.shared
            .metrics
            .last_queued_timestamp
            .set(unix_seconds(SystemTime::now()));
        self.shared.notify.notify_one();
    }

    fn changed(&self, changed: bool) {
        if changed {
            self.queue();
        }
    }

    /// Runs `f` on every family's tracker: whether any changed, and the
    /// first error (every tracker sees the object; validation does not
    /// depend on the family, so a bad object is refused by all).
    fn each(
        &self,
        mut f: impl FnMut(&mut ChangeTracker) -> Result<bool, ValidationError>,
    ) -> Result<(), ValidationError> {
        let mut changed = false;
        let mut first = None;
        for t in self.shared.trackers.lock().unwrap().iter_mut() {
            match f(t) {
                Ok(c) => changed |= c,
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        self.changed(changed);
        first.map_or(Ok(()), Err)
    }

    /// Adds or updates a Service (see [`ChangeTracker::update_service`]).
    pub fn update_service(&self, svc: &Service) -> Result<(), ValidationError> {
        self.each(|t| t.update_service(svc))
    }

    /// Removes a Service.
    pub fn delete_service(&self, namespace: &str, name: &str) {
        let _ = self.each(|t| Ok(t.delete_service(namespace, name)));
    }

    /// Adds or updates an EndpointSlice.
    pub fn update_endpoint_slice(&self, slice: &EndpointSlice) -> Result<(), ValidationError> {
        self.each(|t| t.update_endpoint_slice(slice))
    }

    /// Removes an EndpointSlice.
    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) {
        let _ = self.each(|t| Ok(t.delete_endpoint_slice(namespace, name)));
    }

    /// Records this node's object.
    pub fn update_node(&self, node: &Node) -> Result<(), ValidationError> {
        let mine = self
            .shared
            .trackers
            .lock()
            .unwrap()
            .first()
            .is_some_and(|t| t.node_name() == node.name);
        let r = self.each(|t| t.update_node(node));
        if r.is_ok() && mine {
            self.shared.health.set_node_eligible(node.eligible());
        }
        r
    }

    /// Records that this node's object was deleted.
    pub fn delete_node(&self) {
        let _ = self.each(|t| Ok(t.delete_node()));
        self.shared.health.set_node_eligible(false);
    }

    /// The sources have listed everything: syncing may start.
    pub fn set_initialized(&self) {
        if !self.shared.initialized.swap(true, Ordering::SeqCst) {
            self.shared.sync_requested.store(true, Ordering::SeqCst);
            self.queue();
        }
    }

    /// Asks for a sync as soon as the minimum interval allows.
    pub fn sync_now(&self) {
        self.shared.sync_requested.store(true, Ordering::SeqCst);
        self.queue();
    }

    /// Asks for a full sync as soon as the minimum interval allows.
    pub fn request_full_sync(&self) {
        self.shared.force_full.store(true, Ordering::SeqCst);
        self.sync_now();
    }

    /// The health state `/healthz` reads.
    pub fn health(&self) -> Arc<ProxyHealth> {
        self.shared.health.clone()
    }

    /// The metrics `/metrics` serves.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Runs `f` on the primary family's tracker (to read its snapshot,
    /// or for a source that batches events on a single-family runner;
    /// [`RunnerHandle::for_each_tracker`] reaches every family).
    pub fn with_tracker<R>(&self, f: impl FnOnce(&mut ChangeTracker) -> R) -> R {
        let mut ts = self.shared.trackers.lock().unwrap();
        let t = ts.first_mut().expect("a runner has a tracker");
        let pending_before = t.has_pending();
        let r = f(t);
        let pending_after = t.has_pending();
        drop(ts);
        if pending_after || pending_before {
            self.queue();
        }
        r
    }

    /// Runs `f` on every family's tracker, primary first.
    pub fn for_each_tracker(&self, mut f: impl FnMut(&mut ChangeTracker)) {
        let mut ts = self.shared.trackers.lock().unwrap();
        let mut pending = false;
        for t in ts.iter_mut() {
            pending |= t.has_pending();
            f(t);
            pending |= t.has_pending();
        }
        drop(ts);
        if pending {
            self.queue();
        }
    }
}

/// Outcome of one sync, as the runner saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Full or partial.
    pub full: bool,
    /// Succeeded.
    pub ok: bool,
}

/// What the runner keeps per family.
#[derive(Debug, Default)]
struct Lane {
    need_full: bool,
    last_full: Option<Instant>,
    /// When this family's kernel state was last verified (or fully
    /// rewritten).
    last_verified: Option<Instant>,
    failures: u32,
    carry: ChangeSet,
    last_counters: TrackerCounters,
    last_snapshot: Option<crate::tracker::Snapshot>,
    /// What the last successful sync could not program (logged when it
    /// changes), and how many syncs in a row reported something.
    not_programmed: Vec<(crate::ServicePortName, String)>,
    port_retries: u32,
    /// The backend is programming a large cluster in parts.
    incomplete: bool,
}

/// Drives a [`Proxier`] from a [`ChangeTracker`] (one per family on a
/// dual-stack node).
pub struct Runner {
    shared: Arc<Shared>,
    proxier: Box<dyn Proxier>,
    config: RunnerConfig,
    service_health: Option<Arc<ServiceHealthServer>>,
    lanes: Vec<Lane>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("proxier", &self.proxier.name())
            .field("config", &self.config)
            .finish()
    }
}

/// Tests of sources drive a fake backend with a real runner (here, so
/// the backend trait's module does not depend on the runner's).
#[cfg(any(test, feature = "testing"))]
impl crate::proxier::FakeProxier {
    /// Spawns a [`Runner`](crate::Runner) driving a clone of this fake on
    /// the current tokio runtime, with a short minimum interval (tests of
    /// sources use this).
    pub fn spawn_runner(
        &self,
        family: crate::IpFamily,
        node: &str,
        min_sync_period: std::time::Duration,
    ) -> (
        crate::RunnerHandle,
        tokio::task::JoinHandle<Box<dyn Proxier>>,
    ) {
        let cfg = crate::RunnerConfig {
            min_sync_period,
            ..Default::default()
        };
        let (runner, handle) = crate::Runner::new(
            crate::ChangeTracker::new(family, node),
            Box::new(self.clone()),
            cfg,
        );
        (handle, tokio::spawn(runner.run(std::future::pending())))
    }
}

impl Runner {
    /// A runner and the handle that feeds it. Health times out after
    /// 2 × `sync_period`, as kube-proxy's does.
    pub fn new(
        tracker: ChangeTracker,
        proxier: Box<dyn Proxier>,
        config: RunnerConfig,
    ) -> (Runner, RunnerHandle) {
        Self::dual_stack(vec![tracker], proxier, config)
    }

    /// A runner for several families (kube-proxy's dual-stack mode): one
    /// tracker per family, the primary first, all fed by the handle; each
    /// round syncs every family's snapshot through `proxier` (a
    /// [`MetaProxier`](crate::MetaProxier) holding a backend per family).
    pub fn dual_stack(
        trackers: Vec<ChangeTracker>,
        proxier: Box<dyn Proxier>,
        config: RunnerConfig,
    ) -> (Runner, RunnerHandle) {
        assert!(!trackers.is_empty(), "a runner needs a tracker");
        let lanes = trackers
            .iter()
            .map(|_| Lane {
                need_full: true,
                ..Lane::default()
            })
            .collect();
        let shared = Arc::new(Shared {
            trackers: Mutex::new(trackers),
            notify: Notify::new(),
            initialized: AtomicBool::new(false),
            sync_requested: AtomicBool::new(false),
            force_full: AtomicBool::new(false),
            health: Arc::new(ProxyHealth::new(config.sync_period * 2)),
            metrics: Arc::new(Metrics::new()),
        });
        let handle = RunnerHandle {
            shared: shared.clone(),
        };
        (
            Runner {
                shared,
                proxier,
                config,
                service_health: None,
                lanes,
            },
            handle,
        )
    }

    /// Serves health-check node ports after each successful sync.
    pub fn with_service_health(mut self, server: Arc<ServiceHealthServer>) -> Self {
        self.service_health = Some(server);
        self
    }

    fn backoff(&self, failures: u32) -> Duration {
        let f = 1u32 << failures.saturating_sub(1).min(16);
        (self.config.retry_initial * f).min(self.config.retry_max)
    }

    fn update_tracker_metrics(m: &Metrics, last: &mut TrackerCounters, t: &ChangeTracker) {
        let c = t.counters();
        m.service_changes_total
            .inc_by(c.service_changes_total - last.service_changes_total);
        m.endpoint_changes_total
            .inc_by(c.endpoint_changes_total - last.endpoint_changes_total);
        m.service_changes_pending
            .set(t.pending_service_changes() as i64);
        m.endpoint_changes_pending
            .set(t.pending_endpoint_changes() as i64);
        *last = c;
    }

    /// Runs until `shutdown` completes, then returns the backend (so the
    /// caller may `cleanup` it). `on_sync` sees every round's outcome
    /// (full if any family's sync was, ok if every one succeeded; for
    /// tests and `--once`); returning `false` stops the runner.
    pub async fn run_with(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut on_sync: impl FnMut(&SyncOutcome) -> bool,
    ) -> Box<dyn Proxier> {
        tokio::pin!(shutdown);
        self.shared.health.updated();
        let cfg = self.config.clone();
        let mut last_end: Option<Instant> = None;
        let mut next_periodic = Instant::now() + cfg.sync_period;
        let mut retry_at: Option<Instant> = None;
        loop {
            let deadline = retry_at.map_or(next_periodic, |r| r.min(next_periodic));
            let timed = tokio::select! {
                _ = &mut shutdown => break,
                _ = self.shared.notify.notified() => false,
                _ = sleep_until(deadline) => true,
            };
            if !self.shared.initialized.load(Ordering::SeqCst) {
                next_periodic = Instant::now() + cfg.sync_period;
                continue;
            }
            let requested = self.shared.sync_requested.swap(false, Ordering::SeqCst);
            let pending = self
                .shared
                .trackers
                .lock()
                .unwrap()
                .iter()
                .any(ChangeTracker::has_pending);
            if !timed && !requested && !pending {
                continue; // a stale permit: what it announced was already synced
            }
            if let Some(end) = last_end {
                let earliest = end + cfg.min_sync_period;
                if Instant::now() < earliest {
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = sleep_until(earliest) => {}
                    }
                }
            }
            let force_full = self.shared.force_full.swap(false, Ordering::SeqCst);
            let mut round = SyncOutcome {
                full: false,
                ok: true,
            };
            let mut longest_backoff = None;
            let mut again: Option<Duration> = None;
            // Every family at once (a MetaProxier runs its backends side
            // by side, as kube-proxy's metaproxier runs a sync loop per
            // family); iptables-nft's occasional "Could not fetch rule
            // set generation id" when two run at once on kernel 6.1 is
            // retried by the restore seam.
            let start = Instant::now();
            let reqs: Vec<SyncRequest> = (0..self.lanes.len())
                .map(|i| self.prepare_lane(i, force_full, start))
                .collect();
            let results = self.proxier.sync_families(&reqs).await;
            assert_eq!(results.len(), reqs.len(), "one result per family");
            for (i, (req, done)) in reqs.into_iter().zip(results).enumerate() {
                let end = start + done.took;
                let (full, ok) = self.finish_lane(i, req, done.result, start, end);
                round.full |= full;
                round.ok &= ok;
                if !ok {
                    let d = self.backoff(self.lanes[i].failures);
                    longest_backoff = Some(longest_backoff.map_or(d, |l: Duration| l.max(d)));
                } else if self.lanes[i].incomplete {
                    again = Some(Duration::ZERO);
                } else if self.lanes[i].port_retries > 0 {
                    let d = self.backoff(self.lanes[i].port_retries);
                    again = Some(again.map_or(d, |l: Duration| l.min(d)));
                }
            }
            let end = Instant::now();
            match longest_backoff {
                None => {
                    // The next part of a large cluster at once; service
                    // ports a backend could not program with backoff
                    // (a sync with no changes, either way).
                    retry_at = again.map(|d| end + d);
                    self.shared.health.updated();
                    self.count_no_local_endpoints();
                    if let Some(hc) = self.service_health.clone() {
                        let snaps: Vec<crate::tracker::Snapshot> = self
                            .lanes
                            .iter()
                            .filter_map(|l| l.last_snapshot.clone())
                            .collect();
                        serve_health_checks(&hc, &snaps).await;
                    }
                }
                Some(delay) => retry_at = Some(end + delay),
            }
            last_end = Some(end);
            next_periodic = end + cfg.sync_period;
            if !on_sync(&round) {
                break;
            }
        }
        self.proxier
    }

    /// `sync_proxy_rules_no_local_endpoints_total`: service ports with a
    /// Local policy and no local endpoint, over every family's last synced
    /// snapshot (kube-proxy counts them per traffic policy).
    fn count_no_local_endpoints(&self) {
        let m = &self.shared.metrics;
        for snap in self.lanes.iter().filter_map(|l| l.last_snapshot.as_ref()) {
            let (mut internal, mut external) = (0i64, 0i64);
            for svc in snap.services.values() {
                if !(svc.internal_policy_local || svc.external_policy_local) {
                    continue;
                }
                if snap.categorize(svc).local().is_empty() {
                    internal += i64::from(svc.internal_policy_local);
                    external += i64::from(svc.external_policy_local);
                }
            }
            for (policy, n) in [("internal", internal), ("external", external)] {
                m.no_local_endpoints
                    .get_or_create(&crate::metrics::PolicyLabel {
                        traffic_policy: policy.into(),
                        ip_family: snap.family.as_str().into(),
                    })
                    .set(n);
            }
        }
    }

    /// One family's request: its tracker's snapshot and change set (with
    /// what a failed sync carried over), full when it must be.
    fn prepare_lane(&mut self, i: usize, force_full: bool, start: Instant) -> SyncRequest {
        let (snapshot, changes) = {
            let mut ts = self.shared.trackers.lock().unwrap();
            let t = &mut ts[i];
            let r = t.apply();
            Self::update_tracker_metrics(&self.shared.metrics, &mut self.lanes[i].last_counters, t);
            r
        };
        let full_sync_period = self.config.full_sync_period;
        let lane = &mut self.lanes[i];
        lane.carry.merge(changes);
        let changes = std::mem::take(&mut lane.carry);
        let full = lane.need_full
            || force_full
            || changes.node_changed
            || lane
                .last_full
                .is_none_or(|t| start.duration_since(t) >= full_sync_period);
        // Once per sync period the backend looks at whether the kernel
        // still holds what it wrote (kube-proxy's canary chains, done by
        // every backend in its own way).
        let verify = !full
            && lane
                .last_verified
                .is_none_or(|t| start.duration_since(t) >= self.config.sync_period);
        SyncRequest {
            snapshot,
            changes,
            full,
            verify,
        }
    }

    /// Records one family's result. Returns (full, ok).
    fn finish_lane(
        &mut self,
        i: usize,
        req: SyncRequest,
        result: Result<crate::proxier::SyncStats, crate::proxier::ProxierError>,
        start: Instant,
        end: Instant,
    ) -> (bool, bool) {
        let full = req.full;
        let fam = req.snapshot.family;
        let fam_label = crate::metrics::FamilyLabel::of(fam);
        self.shared.metrics.observe_sync(fam, full, end - start);
        let name = self.proxier.name().to_string();
        let family = fam.as_str();
        let lane = &mut self.lanes[i];
        match result {
            Ok(stats) => {
                tracing::debug!(backend = %name, family, full, objects = stats.objects, written = stats.written, elapsed = ?(end - start), "synced");
                lane.need_full = false;
                lane.failures = 0;
                if full {
                    lane.last_full = Some(start);
                }
                if full || req.verify {
                    lane.last_verified = Some(start);
                }
                let now = SystemTime::now();
                self.shared
                    .metrics
                    .last_timestamp
                    .get_or_create(&fam_label)
                    .set(unix_seconds(now));
                for t in &req.changes.trigger_times {
                    if let Ok(d) = now.duration_since(*t) {
                        self.shared
                            .metrics
                            .network_programming_duration
                            .get_or_create(&fam_label)
                            .observe(d.as_secs_f64());
                    }
                }
                for (table, total, last) in &stats.iptables_rules {
                    let l = crate::metrics::TableLabel {
                        table: (*table).to_string(),
                        ip_family: family.to_string(),
                    };
                    let m = &self.shared.metrics;
                    m.iptables_rules_total.get_or_create(&l).set(*total as i64);
                    m.iptables_rules_last.get_or_create(&l).set(*last as i64);
                }
                if stats.not_programmed.is_empty() {
                    if !lane.not_programmed.is_empty() {
                        tracing::info!(backend = %name, family, "every service port is programmed again");
                    }
                    lane.port_retries = 0;
                } else {
                    if stats.not_programmed != lane.not_programmed {
                        for (port, why) in &stats.not_programmed {
                            tracing::warn!(backend = %name, family, service = %crate::validate::escape(&port.to_string()), error = %crate::validate::escape(why), "service port not programmed (every other port is); will retry");
                        }
                    }
                    lane.port_retries = lane.port_retries.saturating_add(1);
                }
                lane.not_programmed = stats.not_programmed;
                match &stats.incomplete {
                    Some(what) => {
                        tracing::info!(backend = %name, family, progress = %crate::validate::escape(what), "large cluster: programmed in parts, what is written serves; the next part follows")
                    }
                    None if lane.incomplete => {
                        tracing::info!(backend = %name, family, "every part is written")
                    }
                    None => {}
                }
                lane.incomplete = stats.incomplete.is_some();
                let not_programmed: usize = self.lanes.iter().map(|l| l.not_programmed.len()).sum();
                self.shared
                    .metrics
                    .not_programmed
                    .set(not_programmed as i64);
                let lane = &mut self.lanes[i];
                if let Some(what) = &stats.repaired {
                    tracing::warn!(backend = %name, family, found = %crate::validate::escape(what), "rules were changed outside the proxier; repaired with a full sync");
                    self.shared.metrics.repairs_total.inc();
                }
                lane.last_snapshot = Some(req.snapshot);
                (full, true)
            }
            Err(e) => {
                lane.failures += 1;
                let failures = lane.failures;
                lane.need_full = true;
                lane.carry = req.changes;
                let delay = self.backoff(failures);
                tracing::warn!(backend = %name, family, error = %crate::ErrorChain(&e), retry_in = ?delay, "sync failed; will retry with a full sync");
                let m = &self.shared.metrics;
                m.sync_failures_total.inc();
                match e.refused {
                    Some(crate::proxier::Refused::IptablesRestore) => {
                        m.iptables_restore_failures_total
                            .get_or_create(&fam_label)
                            .inc();
                        if !full {
                            m.iptables_partial_restore_failures_total
                                .get_or_create(&fam_label)
                                .inc();
                        }
                    }
                    Some(crate::proxier::Refused::NftablesTransaction) => {
                        m.nftables_sync_failures_total
                            .get_or_create(&fam_label)
                            .inc();
                    }
                    None => {}
                }
                (full, false)
            }
        }
    }

    /// Runs until `shutdown` completes, then returns the backend.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Box<dyn Proxier> {
        self.run_with(shutdown, |_| true).await
    }
}

/// Health-check node ports of every family's last synced snapshot (a
/// port serves while any family has a local endpoint behind it).
async fn serve_health_checks(hc: &ServiceHealthServer, snaps: &[crate::tracker::Snapshot]) {
    let mut ports = std::collections::BTreeMap::new();
    for s in snaps {
        ports.extend(s.health_check_node_ports());
    }
    hc.sync_services(&ports).await;
    hc.sync_endpoints(&|nn| {
        snaps
            .iter()
            .map(|s| s.local_ready_endpoints(nn))
            .max()
            .unwrap_or(0)
    });
}

#[cfg(test)]
mod tests;
