//! [`NftablesProxier`]: kube-proxy's nftables mode as a [`Proxier`].
//!
//! - **Full sync** (the first, after a failure, on the runner's full
//!   period, when the node changed): the table is rebuilt in one atomic
//!   transaction that deletes the old one in the same batch.
//! - **Partial sync**: only the services the change set names are
//!   rendered again, and compared with what was written for them: new
//!   chains are added, chains whose rules changed are flushed and
//!   refilled, map and set elements are added and deleted one by one, and
//!   nothing else is sent (no listing of the table). A sync with no change
//!   sends nothing.
//! - **Stale chains** are flushed in the sync that stops using them and
//!   deleted in a later sync at least a second afterwards: before 6.2 the
//!   kernel notices only a moment later that a deleted map element no
//!   longer references its chain (kube-proxy waits the same way).
//! - A failed transaction changes nothing; the next sync is full.
//! - Stale UDP and SCTP flows are deleted over netlink after each sync
//!   (the shared reconciler, DNATed flows only: these rules DNAT).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use proxier_core::{
    ErrorChain, IpFamily, NamespacedName, Proxier, ProxierError, SyncRequest, SyncStats,
};
use proxier_netfilter::{Conntrack, StaleFlows, clean_stale};

use crate::kept::{Kept, digest};
use crate::kernel::{NfTables, NftError};
use crate::layout::{
    self, Config, Fragment, TABLE, delete_elements, nft_family, render_service, write_elements,
    write_rules,
};
use crate::nl::msg::{Batch, Chain, Encoder, Op, OpSink, Transaction};

/// Services from which a full sync renders on two threads.
const PARALLEL_FROM: usize = 500;

/// How long a stale chain waits before it is deleted.
pub const STALE_CHAIN_DELAY: Duration = Duration::from_secs(1);

/// What the last successful sync wrote.
#[derive(Debug, Default)]
struct Written {
    /// Per service, what was written (compact: chain digests, not rules).
    fragments: HashMap<NamespacedName, Kept>,
    /// Chains no longer used, since when.
    stale: BTreeMap<String, Instant>,
    objects: usize,
    /// Rules per chain that no service owns (the base and helper chains),
    /// counted from the full sync's operations; with each service's
    /// [`Kept`] rule counts, what a verifying sync compares the kernel
    /// with.
    fixed: BTreeMap<String, usize>,
    /// The generation at the last check that found nothing (`None` after
    /// a write).
    verified_gen: Option<u32>,
}

impl Written {
    /// Every chain written, with the rules the kernel should hold in it:
    /// the fixed chains, each service's chains, and stale chains (flushed,
    /// so empty).
    fn expected(&self) -> Vec<(&str, usize)> {
        let mut out: Vec<(&str, usize)> =
            self.fixed.iter().map(|(c, n)| (c.as_str(), *n)).collect();
        for k in self.fragments.values() {
            out.extend(k.chains.iter().map(|c| (c.name.as_str(), c.rules)));
        }
        out.extend(self.stale.keys().map(|c| (c.as_str(), 0)));
        out
    }
}

/// The fixed part of a full sync: its chains' rules counted, every
/// operation encoded.
struct Tallied<'a> {
    enc: Encoder,
    fixed: &'a mut BTreeMap<String, usize>,
}

impl OpSink for Tallied<'_> {
    fn add(&mut self, op: Op) {
        match &op {
            Op::AddChain(c) => {
                self.fixed.entry(c.name.clone()).or_insert(0);
            }
            Op::AddRule(r) => *self.fixed.entry(r.chain.clone()).or_insert(0) += 1,
            _ => {}
        }
        self.enc.push(&op);
    }
}

/// kube-proxy's nftables mode.
#[derive(Debug)]
pub struct NftablesProxier {
    cfg: Config,
    nft: Arc<dyn NfTables>,
    ct: Arc<dyn Conntrack>,
    name: String,
    written: Option<Written>,
    last_ops: usize,
    steps: Vec<(&'static str, Duration)>,
}

impl NftablesProxier {
    /// A proxier writing through `nft` and cleaning conntrack through
    /// `ct`. Fails if the configuration has a value that cannot reach a
    /// rule.
    pub fn new(
        mut cfg: Config,
        nft: Arc<dyn NfTables>,
        ct: Arc<dyn Conntrack>,
    ) -> Result<NftablesProxier, proxier_netfilter::ConfigError> {
        cfg.masquerade.validate()?;
        let fam = cfg.masquerade.family;
        // Both flags may mix families; each family's proxier takes its own.
        cfg.node_port_addresses = proxier_netfilter::of_family(fam, &cfg.node_port_addresses);
        cfg.service_cidrs = proxier_netfilter::of_family(fam, &cfg.service_cidrs);
        let name = match fam {
            IpFamily::V4 => "nftables".to_string(),
            IpFamily::V6 => "nftables-ipv6".to_string(),
        };
        Ok(NftablesProxier {
            cfg,
            nft,
            ct,
            name,
            written: None,
            last_ops: 0,
            steps: Vec::new(),
        })
    }

    /// The layout configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Operations in the last transaction sent (0: nothing was sent).
    pub fn last_operations(&self) -> usize {
        self.last_ops
    }

    /// How long each step of the last sync took, in order: `verify` (the
    /// dump of a verifying sync), `render` (rendering and encoding the
    /// transaction), `kernel` (the kernel applying it, acknowledgement
    /// included), `conntrack`: where a sync's time goes.
    pub fn last_steps(&self) -> &[(&'static str, Duration)] {
        &self.steps
    }

    /// Chains flushed and waiting to be deleted.
    pub fn stale_chains(&self) -> usize {
        self.written.as_ref().map_or(0, |w| w.stale.len())
    }

    fn tx(&self) -> Transaction {
        Transaction::new(nft_family(self.cfg.masquerade.family), TABLE)
    }

    /// What another program changed in the table since the last sync (a
    /// flushed or deleted chain, a deleted rule, `nft flush ruleset`), if
    /// anything: nothing is read when the namespace's generation is the
    /// one the last check saw; otherwise one rule dump per chain written,
    /// counted. Map and set elements are not counted. Check by
    /// hand with `nft list table ip kube-proxy`.
    async fn drift(&self, w: &mut Written) -> Result<Option<String>, NftError> {
        let generation = self.nft.generation().await?;
        if w.verified_gen == Some(generation) {
            return Ok(None);
        }
        let fam = nft_family(self.cfg.masquerade.family);
        let expected = w.expected();
        let chains: Vec<&str> = expected.iter().map(|(c, _)| *c).collect();
        let have = self.nft.rule_counts(fam, TABLE, &chains).await?;
        if have.is_empty() && expected.iter().any(|(_, n)| *n > 0) {
            return Ok(Some(format!(
                "table {} {TABLE} is gone or empty",
                fam.as_str()
            )));
        }
        for (chain, want) in &expected {
            let n = have.get(*chain).copied().unwrap_or(0);
            if n != *want {
                return Ok(Some(format!(
                    "chain {chain} of table {} {TABLE} holds {n} rules, {want} written",
                    fam.as_str()
                )));
            }
        }
        w.verified_gen = Some(generation);
        Ok(None)
    }

    async fn clear_conntrack(&self, req: &SyncRequest) {
        let stale = StaleFlows::from_changes(req)
            .reconcile(&req.snapshot, &self.cfg.node_ips)
            .dnat_only();
        if let Err(e) = clean_stale(&*self.ct, &stale).await {
            tracing::warn!(backend = %self.name, error = %ErrorChain(&e), "conntrack cleanup failed");
        }
    }

    /// The full sync, encoded as it is rendered: the rules go straight
    /// into the batch (moved, not copied) and only their digests are
    /// kept; the operations are never held together. From
    /// [`PARALLEL_FROM`] services on, a second thread renders and encodes
    /// the second half of the services into a continuation of the batch
    /// (the order of operations is the same as on one thread).
    fn full(&self, req: &SyncRequest) -> (Batch, Written) {
        let snap = &req.snapshot;
        let cfg = &self.cfg;
        let fam = nft_family(cfg.masquerade.family);
        // About the operations this sync makes (4 per endpoint: its chain,
        // two rules, its numgen rule; 5 per service port): what the
        // batch's chunks are sized from.
        let endpoints: usize = snap.endpoints.values().map(|e| e.len()).sum();
        let estimate = 64 + snap.services.len() * 5 + endpoints * 4;
        let mut w = Written::default();
        let mut out = Tallied {
            enc: Encoder::new(fam, TABLE, 0, estimate),
            fixed: &mut w.fixed,
        };
        let first_id = layout::fixed_into(cfg, &mut out);
        let mut enc = out.enc;
        let names = layout::service_names(snap);
        let two = names.len() >= PARALLEL_FROM
            && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
        let (head, tail) = names.split_at(if two { names.len() / 2 } else { names.len() });
        let render = |names: &[&NamespacedName], enc: &mut Encoder, first_id: u32| {
            let mut kept = Vec::with_capacity(names.len());
            let mut objects = 0;
            let (elements, errors) = layout::services_into(
                cfg,
                snap,
                names,
                enc,
                |nn, f| {
                    objects += f.objects();
                    kept.push((nn.clone(), Kept::of(f)));
                },
                first_id,
            );
            (kept, objects, elements, errors)
        };
        let (mine, theirs) = std::thread::scope(|s| {
            let other = (!tail.is_empty()).then(|| {
                s.spawn(|| {
                    let mut e = Encoder::continuation(fam, TABLE, estimate / 2);
                    // Set ids of their own (ids only tell sets apart).
                    let r = render(tail, &mut e, first_id + (1 << 30));
                    (e, r)
                })
            });
            let mine = render(head, &mut enc, first_id);
            (mine, other.map(|h| h.join().expect("the render thread")))
        });
        let (mut kept, mut objects, mut elements, mut errors) = mine;
        if let Some((e, (k, o, el, er))) = theirs {
            enc.absorb(e);
            kept.extend(k);
            objects += o;
            elements.extend(el);
            errors.extend(er);
        }
        layout::write_elements(&mut enc, elements.iter().map(|(k, v)| (k, v)));
        let batch = enc.finish();
        for e in &errors {
            tracing::error!(backend = %self.name, error = %e, "service skipped");
        }
        w.fragments = kept.into_iter().collect();
        w.objects = objects;
        (batch, w)
    }

    /// The operation `index` of the full sync of `req` (rendered again:
    /// rendering is deterministic), as `nft` would say it.
    fn full_op(&self, req: &SyncRequest, index: usize) -> Option<String> {
        let mut tx = self.tx();
        layout::full_into(&self.cfg, &req.snapshot, &mut tx, |_, _| {});
        tx.ops.get(index).map(|o| o.to_string())
    }

    /// The partial transaction for the services `req` names; `w` becomes
    /// the state after it (see the module docs for the order of
    /// operations).
    fn partial(&self, req: &SyncRequest, w: &mut Written, now: Instant) -> Transaction {
        let mut errors = Vec::new();
        let mut add = Vec::new();
        let mut refill = self.tx();
        let (mut del_keys, mut add_elems) = (Vec::new(), Vec::new());
        let mut flush_stale = Vec::new();
        let mut del_sets = Vec::new();
        let mut ids = 0u32;
        let mut id = || {
            ids += 1;
            ids
        };
        let (empty, nothing) = (Fragment::default(), Kept::default());
        for nn in &req.changes.updated_services {
            let new = render_service(&self.cfg, &req.snapshot, nn, &mut errors);
            let old_owned = w.fragments.remove(nn);
            let old = old_owned.as_ref().unwrap_or(&nothing);
            let new_ref = new.as_ref().unwrap_or(&empty);
            for (c, bodies) in &new_ref.chains {
                match old.chain(c) {
                    None => {
                        add.push(Op::AddChain(Chain {
                            name: c.clone(),
                            base: None,
                            comment: None,
                        }));
                        if w.stale.remove(c).is_some() {
                            refill.push(Op::FlushChain(c.clone()));
                        }
                        write_rules(&mut refill, c, bodies);
                    }
                    Some(o) if o.digest != digest(bodies) => {
                        refill.push(Op::FlushChain(c.clone()));
                        write_rules(&mut refill, c, bodies);
                    }
                    Some(_) => {}
                }
            }
            for c in &old.chains {
                if !new_ref.chains.iter().any(|(n, _)| *n == c.name) {
                    flush_stale.push(Op::FlushChain(c.name.clone()));
                    w.stale.insert(c.name.clone(), now);
                }
            }
            for s in &new_ref.sets {
                if !old.sets.iter().any(|o| o.name == s.name) {
                    let mut s = s.clone();
                    s.id = id();
                    add.push(Op::AddSet(s));
                }
            }
            for s in &old.sets {
                if !new_ref.sets.iter().any(|n| n.name == s.name) {
                    del_sets.push(Op::DeleteSet(s.name.clone()));
                }
            }
            for (k, v) in &old.elements {
                if new_ref.elements.get(k) != Some(v) {
                    del_keys.push(k.clone());
                }
            }
            for (k, v) in &new_ref.elements {
                if old.element(k) != Some(v) {
                    add_elems.push((k.clone(), v.clone()));
                }
            }
            w.objects = w.objects + new_ref.objects() - old.objects();
            if let Some(f) = &new {
                w.fragments.insert(nn.clone(), Kept::of(f));
            }
        }
        for e in &errors {
            tracing::error!(backend = %self.name, error = %e, "service skipped");
        }
        let mut tx = self.tx();
        tx.ops.extend(add);
        tx.ops.extend(refill.ops);
        delete_elements(&mut tx, del_keys.iter());
        write_elements(&mut tx, add_elems.iter().map(|(k, v)| (k, v)));
        tx.ops.extend(flush_stale);
        tx.ops.extend(del_sets);
        self.delete_stale(&mut tx, w, now);
        tx
    }

    /// Deletes chains stale for at least [`STALE_CHAIN_DELAY`] (they were
    /// flushed, and nothing points at them since an earlier transaction).
    fn delete_stale(&self, tx: &mut Transaction, w: &mut Written, now: Instant) {
        let old: Vec<String> = w
            .stale
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= STALE_CHAIN_DELAY)
            .map(|(c, _)| c.clone())
            .collect();
        for c in old {
            w.stale.remove(&c);
            tx.push(Op::DeleteChain(c));
        }
    }
}

#[async_trait]
impl Proxier for NftablesProxier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        if req.snapshot.family != self.cfg.masquerade.family {
            return Err(ProxierError::new(
                self.name.clone(),
                format!(
                    "snapshot is {}, this proxier is {}",
                    req.snapshot.family.as_str(),
                    self.cfg.masquerade.family.as_str()
                ),
            ));
        }
        let now = Instant::now();
        self.steps.clear();
        let mut full = req.full || req.changes.node_changed || self.written.is_none();
        let mut repaired = None;
        if req.verify
            && !full
            && let Some(w) = self.written.as_mut()
        {
            let mut w = std::mem::take(w);
            let found = self.drift(&mut w).await;
            self.steps.push(("verify", now.elapsed()));
            self.written = Some(w);
            match found {
                Ok(None) => {}
                Ok(Some(what)) => {
                    full = true;
                    repaired = Some(what);
                }
                Err(e) => {
                    self.written = None;
                    return Err(ProxierError::with_source(
                        self.name.clone(),
                        "reading the table to verify it",
                        e,
                    ));
                }
            }
        }
        // The state is taken while the sync runs: on success it is what
        // the kernel holds; on failure it is dropped and the next sync is
        // full.
        let (result, sent, mut next) = match self.written.take() {
            Some(mut w) if !full => {
                let t = Instant::now();
                let tx = self.partial(req, &mut w, now);
                self.steps.push(("render", t.elapsed()));
                let t = Instant::now();
                let r = self.nft.apply(&tx).await;
                self.steps.push(("kernel", t.elapsed()));
                (r, tx.ops.len(), w)
            }
            _ => {
                let t = Instant::now();
                let (mut batch, w) = self.full(req);
                self.steps.push(("render", t.elapsed()));
                let t = Instant::now();
                let r = self.nft.apply_batch(&mut batch).await;
                self.steps.push(("kernel", t.elapsed()));
                let ops = batch.ops;
                drop(batch);
                let r = r.map_err(|e| e.naming(|i| self.full_op(req, i)));
                (r, ops, w)
            }
        };
        self.last_ops = sent;
        if let Err(e) = result {
            // Nothing of the transaction was applied; only a full sync is
            // safe from here.
            self.written = None;
            return Err(ProxierError::with_source(
                self.name.clone(),
                if full {
                    "nf_tables transaction (full sync)"
                } else {
                    "nf_tables transaction (partial sync)"
                },
                e,
            )
            .refused(proxier_core::Refused::NftablesTransaction));
        }
        if sent > 0 {
            next.verified_gen = None;
        }
        let objects = next.objects;
        self.written = Some(next);
        let t = Instant::now();
        self.clear_conntrack(req).await;
        self.steps.push(("conntrack", t.elapsed()));
        Ok(SyncStats {
            objects,
            written: sent,
            full,
            repaired,
            iptables_rules: Vec::new(),
            not_programmed: Vec::new(),
            incomplete: None,
        })
    }

    /// `nft delete table ip kube-proxy`: everything this backend owns,
    /// and nothing else.
    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        let mut tx = self.tx();
        tx.push(Op::AddTable { comment: None });
        tx.push(Op::DeleteTable);
        self.nft
            .apply(&tx)
            .await
            .map_err(|e| ProxierError::with_source(self.name.clone(), "delete table", e))?;
        self.written = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proxier_core::{ChangeTracker, ErrorChain, Protocol};
    use proxier_netfilter::FakeConntrack;
    use proxier_testbed::{ep, service, slice};

    use super::*;
    use crate::fake::FakeNfTables;

    fn request(services: usize) -> SyncRequest {
        let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
        let ports = [("http", 80, Protocol::Tcp)];
        for i in 0..services {
            let name = format!("s{i}");
            let vip = format!("10.96.{}.{}", (i + 1) / 256, (i + 1) % 256);
            t.update_service(&service("ns", &name, &vip, &ports))
                .unwrap();
            let eps: Vec<_> = (1..=3)
                .map(|k| {
                    let ip: IpAddr = format!("10.{}.{}.{k}", i / 256, i % 256).parse().unwrap();
                    ep(ip, "node-2")
                })
                .collect();
            t.update_endpoint_slice(&slice("ns", &name, &ports, eps))
                .unwrap();
        }
        let (snapshot, changes) = t.apply();
        SyncRequest {
            snapshot,
            changes,
            full: true,
            verify: false,
        }
    }

    /// A streamed full sync refused by the kernel names the operation as
    /// `nft` would say it (rendered again from its index), keeps nothing,
    /// and the next sync is full and converges; on one thread (4
    /// services) and on two (600: the refused rule is in the second
    /// thread's half).
    #[tokio::test]
    async fn a_refused_streamed_full_sync_names_its_operation() {
        for n in [4, 600] {
            refused_full_sync_named(n).await;
        }
    }

    async fn refused_full_sync_named(n: usize) {
        let req = request(n);
        let (tx, _, _) = layout::full(&Config::new(IpFamily::V4), &req.snapshot);
        let (index, want) = tx
            .ops
            .iter()
            .enumerate()
            .rfind(|(_, op)| matches!(op, Op::AddRule(r) if r.chain.starts_with("endpoint-")))
            .map(|(i, op)| (i, op.to_string()))
            .unwrap();
        let nft = Arc::new(FakeNfTables::default());
        *nft.refuse_next.lock().unwrap() = Some((index, libc::ENOENT));
        let mut p = NftablesProxier::new(
            Config::new(IpFamily::V4),
            nft.clone(),
            Arc::new(FakeConntrack::default()),
        )
        .unwrap();
        let err = ErrorChain(&p.sync(&req).await.unwrap_err()).to_string();
        assert!(err.contains(&want) && err.contains("full sync"), "{err}");
        assert_eq!(p.stale_chains(), 0);
        assert!(nft.applied.lock().unwrap().is_empty());
        let mut again = req.clone();
        again.full = false;
        let s = p.sync(&again).await.unwrap();
        assert!(s.full, "the sync after a refusal is full");
        assert_eq!(*nft.applied.lock().unwrap(), vec![tx.ops.len()]);
        assert_eq!(s.written, tx.ops.len());
        let steps: Vec<&str> = p.last_steps().iter().map(|s| s.0).collect();
        assert_eq!(steps, ["render", "kernel", "conntrack"]);
        again.verify = true;
        p.sync(&again).await.unwrap();
        let steps: Vec<&str> = p.last_steps().iter().map(|s| s.0).collect();
        assert_eq!(steps, ["verify", "render", "kernel", "conntrack"]);
    }
}
