//! The full sync: read the kernel once, issue only what makes it match
//! the snapshot, and remove what is owned but no longer wanted (a restart
//! adopts the previous run's objects this way).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use proxier_core::ProxierError;

use crate::desired::{VsKey, contribution, external_destinations, key_of, wants_mark};
use crate::marks::parse_entry;
use crate::sets::{self, Set};
use ipvs_netlink::Op;
use ipvs_netlink::{Dest, Service};

use super::*;

impl IpvsProxier {
    pub(super) async fn full_sync(
        &mut self,
        snap: &Snapshot,
        errors: &mut Failures,
    ) -> Result<(), ProxierError> {
        let settings = self.settings().await?;
        self.contribs.clear();
        self.owner.clear();
        self.binds.clear();
        self.entries.clear();
        self.set_sizes.clear();
        self.out_filter.clear();
        let mut t = Instant::now();
        // The ipsets first: the marks a previous run handed out are read
        // back from `KUBE-EXTERNAL-LOCAL-MARK`, so that a restart keeps them.
        let saved = self
            .k
            .ipset
            .save()
            .await
            .map_err(|e| perr("reading the ipsets", e))?;
        t = self.report.step("ipset save", t);
        let have_sets = sets::parse_save(&saved, self.cfg.family);
        let kernel_marks: HashMap<&str, u32> = have_sets
            .get(&Set::ExternalLocalMark)
            .into_iter()
            .flatten()
            .filter_map(|e| parse_entry(e))
            .collect();
        self.set_marks = kernel_marks.values().copied().collect();
        self.marks.retain(|n| {
            snap.services
                .get(n)
                .is_some_and(|s| wants_mark(s, &settings))
        });
        let mut contribs = BTreeMap::new();
        for (name, svc) in &snap.services {
            let mark = if wants_mark(svc, &settings) {
                let hint = external_destinations(svc, &settings)
                    .iter()
                    .find_map(|d| kernel_marks.get(d.as_str()).copied());
                let m = self.marks.assign(name, hint);
                if m.is_none() {
                    warn!(
                        service = %name,
                        mask = format!("{:#x}", self.marks.mask()),
                        "every firewall mark is taken: traffic from inside to its external addresses keeps to the local endpoints"
                    );
                }
                m
            } else {
                None
            };
            let c = contribution(svc, snap, &settings, mark);
            self.add_contribution(name, &c, errors);
            contribs.insert(name.clone(), c);
        }
        t = self.report.step("contributions", t);
        // One read of the kernel.
        let dump = self
            .k
            .ipvs
            .dump(self.cfg.family)
            .await
            .map_err(|e| perr("ipvsadm -Ln", e))?;
        let bound: BTreeSet<IpAddr> = self
            .k
            .links
            .addresses(&self.cfg.dummy)
            .await
            .map_err(|e| perr("reading the dummy interface's addresses", e))?
            .into_iter()
            .filter(|ip| self.cfg.family.matches(ip))
            .collect();
        let have: HashMap<VsKey, (Service, Vec<Dest>)> = dump
            .into_iter()
            .map(|(s, d)| (key_of(&s), (s, d)))
            .collect();
        t = self.report.step("ipvs dump", t);
        let now = Instant::now();
        let mut ops = Vec::new();
        let mut wanted_keys = BTreeSet::new();
        for (name, c) in &contribs {
            for want in &c.services {
                let key = key_of(&want.0);
                if self.owner.get(&key) != Some(name) || !wanted_keys.insert(key) {
                    continue;
                }
                let h = have.get(&key).map(|(s, d)| (s, &d[..]));
                self.reconcile_vs(want, h, now, &mut ops);
            }
        }
        for (key, (s, _)) in &have {
            if !wanted_keys.contains(key) && self.owned_vs(s, &bound, &settings.node_ips) {
                ops.push(Op::DelService(s.clone()));
            }
        }
        self.graceful.retain(|(k, _), _| wanted_keys.contains(k));
        // The cache becomes what the kernel holds of ours.
        self.kernel = have
            .into_iter()
            .filter(|(k, _)| wanted_keys.contains(k) || self.kernel.contains_key(k))
            .map(|(k, (s, d))| {
                (
                    k,
                    (s, d.into_iter().map(|d| ((d.addr, d.port), d)).collect()),
                )
            })
            .collect();
        self.run_ops(&ops, errors).await?;
        t = self.report.step("ipvs writes", t);
        self.kernel.retain(|k, _| wanted_keys.contains(k));
        self.real_servers = self.kernel.values().map(|(_, d)| d.len()).sum();
        self.binds_before.clear();
        // Addresses.
        let want_binds: BTreeSet<IpAddr> = self.binds.keys().copied().collect();
        let add: Vec<IpAddr> = want_binds.difference(&bound).copied().collect();
        let del: Vec<IpAddr> = bound.difference(&want_binds).copied().collect();
        self.bind(&add, &del, errors).await;
        t = self.report.step("addresses", t);
        // ipsets: one restore.
        let (input, n) = sets::diff(&have_sets, &self.wanted_entries(), self.cfg.family);
        if !input.is_empty() {
            self.k
                .ipset
                .restore(&input)
                .await
                .map_err(|e| perr("writing the ipsets", e))?;
        }
        self.report.ipset_changes = n;
        t = self.report.step("ipset restore", t);
        self.contribs = contribs;
        self.settings = Some(settings);
        // Rewritten when they differ from what this instance last wrote
        // (always on its first sync) or were removed behind its back: a
        // no-op full sync reads them and writes nothing.
        let r = self.write_rules(true).await;
        self.report.step("iptables", t);
        r
    }
}
