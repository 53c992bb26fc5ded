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
//!   informers.

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
    tracker: Mutex<ChangeTracker>,
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

    /// Adds or updates a Service (see [`ChangeTracker::update_service`]).
    pub fn update_service(&self, svc: &Service) -> Result<(), ValidationError> {
        let c = self.shared.tracker.lock().unwrap().update_service(svc)?;
        self.changed(c);
        Ok(())
    }

    /// Removes a Service.
    pub fn delete_service(&self, namespace: &str, name: &str) {
        let c = self
            .shared
            .tracker
            .lock()
            .unwrap()
            .delete_service(namespace, name);
        self.changed(c);
    }

    /// Adds or updates an EndpointSlice.
    pub fn update_endpoint_slice(&self, slice: &EndpointSlice) -> Result<(), ValidationError> {
        let c = self
            .shared
            .tracker
            .lock()
            .unwrap()
            .update_endpoint_slice(slice)?;
        self.changed(c);
        Ok(())
    }

    /// Removes an EndpointSlice.
    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) {
        let c = self
            .shared
            .tracker
            .lock()
            .unwrap()
            .delete_endpoint_slice(namespace, name);
        self.changed(c);
    }

    /// Records this node's object.
    pub fn update_node(&self, node: &Node) -> Result<(), ValidationError> {
        let mut t = self.shared.tracker.lock().unwrap();
        let c = t.update_node(node)?;
        if node.name == t.node_name() {
            self.shared.health.set_node_eligible(node.eligible());
        }
        drop(t);
        self.changed(c);
        Ok(())
    }

    /// Records that this node's object was deleted.
    pub fn delete_node(&self) {
        let c = self.shared.tracker.lock().unwrap().delete_node();
        self.shared.health.set_node_eligible(false);
        self.changed(c);
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

    /// Runs `f` on the tracker (for sources that batch events).
    pub fn with_tracker<R>(&self, f: impl FnOnce(&mut ChangeTracker) -> R) -> R {
        let mut t = self.shared.tracker.lock().unwrap();
        let pending_before = t.has_pending();
        let r = f(&mut t);
        let pending_after = t.has_pending();
        drop(t);
        if pending_after || pending_before {
            self.queue();
        }
        r
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

/// Drives a [`Proxier`] from a [`ChangeTracker`].
pub struct Runner {
    shared: Arc<Shared>,
    proxier: Box<dyn Proxier>,
    config: RunnerConfig,
    service_health: Option<Arc<ServiceHealthServer>>,
    last_counters: TrackerCounters,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("proxier", &self.proxier.name())
            .field("config", &self.config)
            .finish()
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
        let shared = Arc::new(Shared {
            tracker: Mutex::new(tracker),
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
                last_counters: TrackerCounters::default(),
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
    /// caller may `cleanup` it). `on_sync` sees every outcome (for tests
    /// and `--once`).
    pub async fn run_with(
        mut self,
        shutdown: impl Future<Output = ()>,
        mut on_sync: impl FnMut(&SyncOutcome) -> bool,
    ) -> Box<dyn Proxier> {
        tokio::pin!(shutdown);
        self.shared.health.updated();
        let cfg = self.config.clone();
        let mut need_full = true;
        let mut last_full: Option<Instant> = None;
        let mut last_end: Option<Instant> = None;
        let mut next_periodic = Instant::now() + cfg.sync_period;
        let mut retry_at: Option<Instant> = None;
        let mut failures = 0u32;
        let mut carry = ChangeSet::default();
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
            if !timed && !requested && !self.shared.tracker.lock().unwrap().has_pending() {
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
            let start = Instant::now();
            let (snapshot, changes) = {
                let mut t = self.shared.tracker.lock().unwrap();
                let r = t.apply();
                Self::update_tracker_metrics(&self.shared.metrics, &mut self.last_counters, &t);
                r
            };
            carry.merge(changes);
            let changes = std::mem::take(&mut carry);
            let full = need_full
                || self.shared.force_full.swap(false, Ordering::SeqCst)
                || changes.node_changed
                || last_full.is_none_or(|t| start.duration_since(t) >= cfg.full_sync_period);
            let req = SyncRequest {
                snapshot,
                changes,
                full,
            };
            let result = self.proxier.sync(&req).await;
            let end = Instant::now();
            self.shared.metrics.observe_sync(full, end - start);
            let ok = result.is_ok();
            match result {
                Ok(stats) => {
                    tracing::debug!(backend = self.proxier.name(), full, objects = stats.objects, written = stats.written, elapsed = ?(end - start), "synced");
                    need_full = false;
                    failures = 0;
                    retry_at = None;
                    if full {
                        last_full = Some(start);
                    }
                    self.shared.health.updated();
                    self.shared
                        .metrics
                        .last_timestamp
                        .set(unix_seconds(SystemTime::now()));
                    if let Some(hc) = &self.service_health {
                        hc.sync_services(&req.snapshot.health_check_node_ports())
                            .await;
                        hc.sync_endpoints(&|nn| req.snapshot.local_ready_endpoints(nn));
                    }
                }
                Err(e) => {
                    failures += 1;
                    let delay = self.backoff(failures);
                    tracing::warn!(backend = self.proxier.name(), error = %crate::ErrorChain(&e), retry_in = ?delay, "sync failed; will retry with a full sync");
                    self.shared.metrics.sync_failures_total.inc();
                    need_full = true;
                    carry = req.changes;
                    retry_at = Some(end + delay);
                }
            }
            last_end = Some(end);
            next_periodic = end + cfg.sync_period;
            if !on_sync(&SyncOutcome { full, ok }) {
                break;
            }
        }
        self.proxier
    }

    /// Runs until `shutdown` completes, then returns the backend.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Box<dyn Proxier> {
        self.run_with(shutdown, |_| true).await
    }
}

#[cfg(test)]
mod tests;
