//! Both families in one process: kube-proxy's meta-proxier (a proxier per
//! IP family behind one, `pkg/proxy/metaproxier`). The runner keeps one
//! tracker per family and hands each family's snapshot to this proxier,
//! which passes it to that family's backend; cleanup cleans every one.

use async_trait::async_trait;

use crate::model::IpFamily;
use crate::proxier::{FamilySync, Proxier, ProxierError, SyncRequest, SyncStats};

/// A backend per IP family behind one [`Proxier`].
pub struct MetaProxier {
    name: String,
    families: Vec<(IpFamily, Box<dyn Proxier>)>,
}

impl std::fmt::Debug for MetaProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaProxier")
            .field("name", &self.name)
            .finish()
    }
}

impl MetaProxier {
    /// One backend per family; a family given twice keeps the first.
    pub fn new(families: Vec<(IpFamily, Box<dyn Proxier>)>) -> MetaProxier {
        let mut seen = Vec::new();
        let families: Vec<_> = families
            .into_iter()
            .filter(|(f, _)| {
                let new = !seen.contains(f);
                seen.push(*f);
                new
            })
            .collect();
        let name = families
            .iter()
            .map(|(_, p)| p.name())
            .collect::<Vec<_>>()
            .join("+");
        MetaProxier { name, families }
    }

    /// The families, in order (the first is the primary).
    pub fn families(&self) -> Vec<IpFamily> {
        self.families.iter().map(|(f, _)| *f).collect()
    }
}

#[async_trait]
impl Proxier for MetaProxier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        let family = req.snapshot.family;
        match self.families.iter_mut().find(|(f, _)| *f == family) {
            Some((_, p)) => p.sync(req).await,
            None => Err(ProxierError::new(
                self.name.clone(),
                format!("no {} backend", family.as_str()),
            )),
        }
    }

    /// Every family's request through its own backend, all at once (each
    /// backend still sees one sync at a time): kube-proxy's metaproxier
    /// runs the IPv4 and IPv6 sync loops side by side. The families'
    /// backends write disjoint kernel objects (`ip`/`ip6` tables,
    /// `iptables-restore`/`ip6tables-restore`, inet/inet6 sets), so a
    /// dual-stack round costs about the slower family, not the sum, where
    /// the work is in programs or on another core; the kernel itself
    /// still takes one nf_tables transaction of a namespace at a time.
    async fn sync_families(&mut self, reqs: &[SyncRequest]) -> Vec<FamilySync> {
        let name = self.name.clone();
        let families = self.families();
        let mut pending: Vec<Option<_>> = Vec::new();
        let mut backends: Vec<Option<&mut Box<dyn Proxier>>> =
            self.families.iter_mut().map(|(_, p)| Some(p)).collect();
        for req in reqs {
            let at = families.iter().position(|f| *f == req.snapshot.family);
            pending.push(at.and_then(|i| backends[i].take()).map(|p| {
                Box::pin(async move {
                    let t0 = tokio::time::Instant::now();
                    let result = p.sync(req).await;
                    FamilySync {
                        result,
                        took: t0.elapsed(),
                    }
                })
            }));
        }
        let running = futures::future::join_all(pending.iter_mut().flatten()).await;
        let mut running = running.into_iter();
        pending
            .iter()
            .zip(reqs)
            .map(|(p, req)| match p {
                Some(_) => running.next().expect("one result per future"),
                None => FamilySync {
                    result: Err(ProxierError::new(
                        name.clone(),
                        format!(
                            "no {} backend, or two requests for it in one round",
                            req.snapshot.family.as_str()
                        ),
                    )),
                    took: std::time::Duration::ZERO,
                },
            })
            .collect()
    }

    /// Cleans every family's backend, even when one fails; returns the
    /// first failure.
    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        let mut first = None;
        for (_, p) in &mut self.families {
            if let Err(e) = p.cleanup().await
                && first.is_none()
            {
                first = Some(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxier::FakeProxier;
    use crate::tracker::{ChangeSet, ChangeTracker};
    use std::time::Duration;

    fn req(f: IpFamily) -> SyncRequest {
        SyncRequest {
            snapshot: ChangeTracker::new(f, "node-1").snapshot().clone(),
            changes: ChangeSet::default(),
            full: true,
            verify: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_families_sync_at_once_each_timed_alone() {
        let f4 = FakeProxier {
            delay: Duration::from_secs(3),
            ..FakeProxier::new()
        };
        let f6 = FakeProxier {
            log: f4.log.clone(),
            delay: Duration::from_secs(5),
        };
        let mut meta = MetaProxier::new(vec![
            (IpFamily::V4, Box::new(f4.clone()) as Box<dyn Proxier>),
            (IpFamily::V6, Box::new(f6)),
        ]);
        let t0 = tokio::time::Instant::now();
        // In the order asked, whatever the backends' order.
        let out = meta
            .sync_families(&[req(IpFamily::V6), req(IpFamily::V4)])
            .await;
        assert_eq!(t0.elapsed(), Duration::from_secs(5), "the slower family");
        assert_eq!(f4.log.lock().unwrap().max_running, 2);
        let took: Vec<Duration> = out.iter().map(|s| s.took).collect();
        assert_eq!(took, [Duration::from_secs(5), Duration::from_secs(3)]);
        assert!(out.iter().all(|s| s.result.is_ok()));
        let families: Vec<IpFamily> = f4
            .log
            .lock()
            .unwrap()
            .syncs
            .iter()
            .map(|r| r.snapshot.family)
            .collect();
        assert_eq!(
            families,
            [IpFamily::V4, IpFamily::V6],
            "finished in time order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_family_without_a_backend_fails_alone() {
        let f4 = FakeProxier::new();
        let mut meta = MetaProxier::new(vec![(
            IpFamily::V4,
            Box::new(f4.clone()) as Box<dyn Proxier>,
        )]);
        let out = meta
            .sync_families(&[req(IpFamily::V6), req(IpFamily::V4), req(IpFamily::V4)])
            .await;
        let err = |i: usize| out[i].result.as_ref().unwrap_err().to_string();
        assert!(err(0).contains("no IPv6 backend"), "{}", err(0));
        assert!(out[1].result.is_ok());
        assert!(err(2).contains("two requests"), "{}", err(2));
        assert_eq!(f4.log.lock().unwrap().syncs.len(), 1);
    }
}
