//! The single seam a backend implements.

#[cfg(any(test, feature = "testing"))]
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::model::ServicePortName;
use crate::tracker::{ChangeSet, Snapshot};

/// What one sync is asked to do.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The desired state.
    pub snapshot: Snapshot,
    /// What changed since the last successful sync. When `full` is set the
    /// backend must not rely on it except for conntrack hygiene.
    pub changes: ChangeSet,
    /// Rewrite everything (first sync, after a failure, on the full-sync
    /// period, after the node changed).
    pub full: bool,
    /// Look, cheaply, at whether the kernel still holds what this backend
    /// last wrote (another program may have flushed a chain, deleted a
    /// jump or wiped the tables), and repair it with a full sync if not.
    /// The runner asks at least once per `sync_period`; a full sync
    /// rewrites everything anyway and need not look.
    pub verify: bool,
}

/// What a sync did, for logs and benches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Objects the backend owns after the sync (rules, virtual servers,
    /// listeners: whatever the backend counts).
    pub objects: usize,
    /// Objects written (or kernel operations issued) by this sync.
    pub written: usize,
    /// Whether the backend actually ran a full sync.
    pub full: bool,
    /// What a verifying sync found changed behind the backend's back and
    /// repaired (`chain KUBE-SERVICES of table nat holds 0 rules, 12
    /// written`), if anything. The runner logs it and counts it in
    /// `kubeproxy_sync_proxy_rules_repairs_total`.
    pub repaired: Option<String>,
    /// iptables rules per table (`nat`, `filter`): owned after the sync,
    /// and written by it (`kubeproxy_sync_proxy_rules_iptables_total` and
    /// `…_last`); empty for a backend without iptables rules.
    pub iptables_rules: Vec<(&'static str, usize, usize)>,
    /// Service ports this sync could not program, each with why (`binding
    /// 127.0.0.1:30091/TCP: Address already in use`). The sync still
    /// succeeded for everything else: the node stays healthy, as
    /// kube-proxy's does for a service it could not program. The runner
    /// logs them, shows their number in
    /// `kubeproxy_sync_proxy_rules_service_ports_not_programmed` and asks
    /// again with backoff (a sync with no changes); the backend retries
    /// them on every sync until they succeed.
    pub not_programmed: Vec<(ServicePortName, String)>,
    /// What a backend that programs a large cluster in parts has still to
    /// write (`20,000 of 50,000 services written`), if anything. What is
    /// written serves; the runner logs it and syncs again as soon as the
    /// minimum sync interval allows, until this is `None`.
    pub incomplete: Option<String>,
}

/// Which atomic kernel update a failed sync could not make (kube-proxy
/// counts them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// An `iptables-restore` (`…_iptables_restore_failures_total`).
    IptablesRestore,
    /// An nf_tables transaction (`…_nftables_sync_failures_total`).
    NftablesTransaction,
}

/// A failed sync or cleanup. The runner retries with backoff, then in full.
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {message}")]
pub struct ProxierError {
    /// The backend's name.
    pub backend: String,
    /// What failed, where.
    pub message: String,
    /// The atomic update that was refused, if that is what failed.
    pub refused: Option<Refused>,
    /// The cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProxierError {
    /// An error without a cause.
    pub fn new(backend: impl Into<String>, message: impl Into<String>) -> Self {
        ProxierError {
            backend: backend.into(),
            message: message.into(),
            refused: None,
            source: None,
        }
    }

    /// An error with a cause.
    pub fn with_source(
        backend: impl Into<String>,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ProxierError {
            backend: backend.into(),
            message: message.into(),
            refused: None,
            source: Some(Box::new(source)),
        }
    }

    /// Marks the error as a refused atomic update.
    pub fn refused(mut self, what: Refused) -> Self {
        self.refused = Some(what);
        self
    }
}

/// Displays an error with every cause after it, `a: b: c`: what a log
/// line or an exit message carries, so that the OS or netlink cause is
/// never dropped on the way.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

/// A backend: programs the node so that service addresses reach their
/// endpoints. Object safe: `Box<dyn Proxier>` works.
#[async_trait]
pub trait Proxier: Send {
    /// A short name (`iptables`, `ipvs`, `userspace`).
    fn name(&self) -> &str;

    /// Makes the node match `req.snapshot`. Called by one task at a time.
    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError>;

    /// Syncs one request per IP family (the runner's round on a
    /// dual-stack node): each result with the time its sync took, in the
    /// order of `reqs`. By default one after the other;
    /// [`MetaProxier`](crate::MetaProxier) runs its families' backends at
    /// once, as kube-proxy's metaproxier runs each family's sync loop in
    /// a goroutine of its own.
    async fn sync_families(&mut self, reqs: &[SyncRequest]) -> Vec<FamilySync> {
        let mut out = Vec::with_capacity(reqs.len());
        for req in reqs {
            let t0 = tokio::time::Instant::now();
            let result = self.sync(req).await;
            out.push(FamilySync {
                result,
                took: t0.elapsed(),
            });
        }
        out
    }

    /// Removes everything this backend created, and nothing else.
    async fn cleanup(&mut self) -> Result<(), ProxierError>;
}

/// One family's part of [`Proxier::sync_families`].
#[derive(Debug)]
pub struct FamilySync {
    /// The family's sync.
    pub result: Result<SyncStats, ProxierError>,
    /// How long it took, from its own start to its own end.
    pub took: std::time::Duration,
}

#[async_trait]
impl<P: Proxier + ?Sized> Proxier for Box<P> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        (**self).sync(req).await
    }
    async fn sync_families(&mut self, reqs: &[SyncRequest]) -> Vec<FamilySync> {
        (**self).sync_families(reqs).await
    }
    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        (**self).cleanup().await
    }
}

/// What the fake saw.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Default)]
pub struct FakeLog {
    /// Every sync request, in order.
    pub syncs: Vec<SyncRequest>,
    /// Number of cleanups.
    pub cleanups: usize,
    /// Fail the next N syncs.
    pub fail_next: usize,
    /// Syncs running at once right now (to prove the runner never overlaps).
    pub running: usize,
    /// The most that ever ran at once.
    pub max_running: usize,
    /// What the next verifying sync "finds" changed in the kernel (and
    /// reports as repaired, running full).
    pub drift: Option<String>,
    /// What a told-to-fail sync says the kernel refused.
    pub refused: Option<Refused>,
    /// Service ports every sync reports as not programmed (until cleared).
    pub not_programmed: Vec<(ServicePortName, String)>,
    /// The next N successful syncs report that parts are still to come.
    pub parts_left: usize,
}

/// A backend for tests: records requests, can be told to fail, and can
/// take a while (in tokio time) to sync. Feature `testing`.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Default)]
pub struct FakeProxier {
    /// Shared log.
    pub log: Arc<Mutex<FakeLog>>,
    /// How long each sync takes.
    pub delay: std::time::Duration,
}

#[cfg(any(test, feature = "testing"))]
impl FakeProxier {
    /// A fake that syncs instantly.
    pub fn new() -> Self {
        Self::default()
    }
}

#[cfg(any(test, feature = "testing"))]
#[async_trait]
impl Proxier for FakeProxier {
    fn name(&self) -> &str {
        "fake"
    }

    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        {
            let mut l = self.log.lock().unwrap();
            l.running += 1;
            l.max_running = l.max_running.max(l.running);
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let mut l = self.log.lock().unwrap();
        l.running -= 1;
        l.syncs.push(req.clone());
        if l.fail_next > 0 {
            l.fail_next -= 1;
            let e = ProxierError::new("fake", "told to fail");
            return Err(match l.refused {
                Some(r) => e.refused(r),
                None => e,
            });
        }
        let repaired = if req.verify { l.drift.take() } else { None };
        Ok(SyncStats {
            objects: req.snapshot.services.len(),
            written: req.changes.updated_services.len(),
            full: req.full || repaired.is_some(),
            repaired,
            iptables_rules: Vec::new(),
            not_programmed: l.not_programmed.clone(),
            incomplete: if l.parts_left > 0 {
                l.parts_left -= 1;
                Some(format!("{} parts to come", l.parts_left + 1))
            } else {
                None
            },
        })
    }

    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        self.log.lock().unwrap().cleanups += 1;
        Ok(())
    }
}

#[cfg(test)]
mod error_chain_tests {
    use super::*;

    #[test]
    fn every_cause_is_printed() {
        let os = std::io::Error::from_raw_os_error(libc_ebusy());
        let e = ProxierError::with_source("iptables-nft", "restoring table nat", os);
        let text = ErrorChain(&e).to_string();
        assert!(
            text.starts_with("iptables-nft: restoring table nat: "),
            "{text}"
        );
        assert!(text.contains("busy"), "{text}");
        assert_eq!(ErrorChain(&ProxierError::new("x", "y")).to_string(), "x: y");
    }

    fn libc_ebusy() -> i32 {
        16
    }
}
