//! One virtual server's real servers against what they should be, with
//! kube-proxy's graceful termination: a removed TCP real server goes to
//! weight 0 and is deleted once it has no connections or after
//! [`Config::graceful_termination_cap`]; UDP and SCTP ones go at once.
//! Then the operations, sent and their failures collected.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use proxier_core::ProxierError;

use crate::desired::key_of;
use ipvs_netlink::Op;
use ipvs_netlink::{Dest, Service};

use super::*;

impl IpvsProxier {
    /// The operations that turn `have` into `want` for one virtual
    /// server, with graceful termination of removed TCP real servers.
    pub(super) fn reconcile_vs(
        &mut self,
        want: &(Service, Vec<Dest>),
        have: Option<(&Service, &[Dest])>,
        now: Instant,
        ops: &mut Vec<Op>,
    ) {
        let (svc, dests) = want;
        let key = key_of(svc);
        let Some((hs, hd)) = have else {
            ops.push(Op::AddService(svc.clone()));
            ops.extend(dests.iter().map(|d| Op::AddDest(svc.clone(), d.clone())));
            return;
        };
        if !same_service(svc, hs) {
            ops.push(Op::UpdateService(svc.clone()));
        }
        let have: BTreeMap<DestKey, &Dest> = hd.iter().map(|d| ((d.addr, d.port), d)).collect();
        let wanted: BTreeSet<DestKey> = dests.iter().map(|d| (d.addr, d.port)).collect();
        for d in dests {
            let dk = (d.addr, d.port);
            match have.get(&dk) {
                None => ops.push(Op::AddDest(svc.clone(), d.clone())),
                Some(h) => {
                    let was_draining = self.graceful.remove(&(key, dk)).is_some();
                    // Back from draining, or reset on the first sync after
                    // a start (kube-proxy's initialSync).
                    if h.weight != d.weight
                        && (was_draining || !self.first_sync_done || h.weight == 0)
                    {
                        ops.push(Op::UpdateDest(svc.clone(), d.clone()));
                    }
                }
            }
        }
        let graceful_proto = svc.protocol == 6;
        for (dk, h) in have.iter().filter(|(k, _)| !wanted.contains(k)) {
            let conns = h.active_conns + h.inact_conns;
            let since = *self.graceful.entry((key, *dk)).or_insert(now);
            if !graceful_proto
                || conns == 0
                || now.duration_since(since) >= self.cfg.graceful_termination_cap
            {
                self.graceful.remove(&(key, *dk));
                ops.push(Op::DelDest(svc.clone(), (*h).clone()));
            } else if h.weight != 0 {
                let mut q = (*h).clone();
                q.weight = 0;
                ops.push(Op::UpdateDest(svc.clone(), q));
            }
        }
    }

    /// Runs `ops`; failed ones become errors naming the service port that
    /// wanted the virtual server. Updates the cache of kernel state.
    pub(super) async fn run_ops(
        &mut self,
        ops: &[Op],
        errors: &mut Failures,
    ) -> Result<(), ProxierError> {
        self.report.ipvs_writes += ops.len();
        if ops.is_empty() {
            return Ok(());
        }
        let results = self
            .k
            .ipvs
            .apply(ops)
            .await
            .map_err(|e| perr("IPVS batch", e))?;
        let mut refused = BTreeSet::new();
        for (op, r) in ops.iter().zip(results) {
            let (svc, dest) = match op {
                Op::AddService(s) | Op::UpdateService(s) | Op::DelService(s) => (s, None),
                Op::AddDest(s, d) | Op::UpdateDest(s, d) | Op::DelDest(s, d) => (s, Some(d)),
            };
            let key = key_of(svc);
            if let Err(e) = r {
                // Its real servers failed because it did: one error.
                if dest.is_some() && refused.contains(&key) {
                    continue;
                }
                errors.push(Failure::Ipvs {
                    who: self.owner.get(&key).cloned(),
                    source: e,
                });
                if matches!(op, Op::AddService(_)) {
                    self.kernel.remove(&key);
                    refused.insert(key);
                }
                continue;
            }
            match (op, dest) {
                (Op::AddService(s) | Op::UpdateService(s), _) => {
                    let e = self
                        .kernel
                        .entry(key)
                        .or_insert_with(|| (s.clone(), BTreeMap::new()));
                    e.0 = s.clone();
                }
                (Op::DelService(_), _) => {
                    if let Some((_, d)) = self.kernel.remove(&key) {
                        self.real_servers -= d.len();
                    }
                }
                (Op::DelDest(..), Some(d)) => {
                    if let Some(e) = self.kernel.get_mut(&key)
                        && e.1.remove(&(d.addr, d.port)).is_some()
                    {
                        self.real_servers -= 1;
                    }
                }
                (_, Some(d)) => {
                    if let Some(e) = self.kernel.get_mut(&key)
                        && e.1.insert((d.addr, d.port), d.clone()).is_none()
                    {
                        self.real_servers += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
