//! The partial sync: only the service ports the change set names (their
//! virtual servers, with one `GET_DEST` each for fresh connection counts,
//! their addresses and their set entries), so its cost does not grow
//! with the number of services.

use std::collections::BTreeSet;
use std::time::Instant;

use proxier_core::{ProxierError, ServicePortName, SyncRequest};

use crate::desired::{VsKey, contribution, key_of, wants_mark};
use crate::sets::{self, Set};
use ipvs_netlink::Op;

use super::*;

impl IpvsProxier {
    pub(super) async fn partial_sync(
        &mut self,
        req: &SyncRequest,
        errors: &mut Failures,
    ) -> Result<(), ProxierError> {
        let snap = &req.snapshot;
        let settings = self.settings.clone().expect("after a full sync");
        let names: BTreeSet<ServicePortName> = req
            .changes
            .updated_services
            .iter()
            .flat_map(|nn| {
                // Keys sort by service first: a range, not a scan.
                let first = ServicePortName {
                    service: nn.clone(),
                    port: Arc::from(""),
                    protocol: proxier_core::Protocol::Tcp,
                };
                let old = self
                    .contribs
                    .range(first..)
                    .take_while(move |(n, _)| &n.service == nn)
                    .map(|(n, _)| n.clone())
                    .collect::<Vec<_>>();
                old.into_iter()
                    .chain(snap.ports_of(nn).map(|s| s.name.clone()))
            })
            .collect();
        self.binds_before.clear();
        let mut ops = Vec::new();
        let now = Instant::now();
        let mut removed_entries: BTreeSet<(Set, String)> = BTreeSet::new();
        let mut added_entries: BTreeSet<(Set, String)> = BTreeSet::new();
        for name in &names {
            let old = self.contribs.remove(name).unwrap_or_default();
            self.drop_contribution(name, &old);
            let new = match snap.services.get(name) {
                Some(svc) => {
                    let mark = if wants_mark(svc, &settings) {
                        self.marks.assign(name, None)
                    } else {
                        self.marks.release(name);
                        None
                    };
                    Some(contribution(svc, snap, &settings, mark))
                }
                None => {
                    self.marks.release(name);
                    None
                }
            };
            if let Some(c) = &new {
                self.add_contribution(name, c, errors);
            }
            let new_e: BTreeSet<&(Set, String)> =
                new.iter().flat_map(|c| c.entries.iter()).collect();
            let old_e: BTreeSet<&(Set, String)> = old.entries.iter().collect();
            removed_entries.extend(old_e.difference(&new_e).map(|e| (*e).clone()));
            added_entries.extend(new_e.difference(&old_e).map(|e| (*e).clone()));
            let new_keys: BTreeSet<VsKey> = new
                .iter()
                .flat_map(|c| c.services.iter().map(|(s, _)| key_of(s)))
                .collect();
            for (s, _) in &old.services {
                let key = key_of(s);
                if !new_keys.contains(&key) && !self.owner.contains_key(&key) {
                    self.graceful.retain(|(k, _), _| *k != key);
                    if self.kernel.contains_key(&key) {
                        ops.push(Op::DelService(s.clone()));
                    }
                }
            }
            if let Some(c) = &new {
                for want in &c.services {
                    let key = key_of(&want.0);
                    if self.owner.get(&key) != Some(name) {
                        continue;
                    }
                    let have = match self.kernel.get(&key) {
                        None => None,
                        Some((s, _)) => {
                            // Fresh connection counts for graceful termination.
                            let d = self
                                .k
                                .ipvs
                                .dests(s)
                                .await
                                .map_err(|e| perr(&format!("{name}: ipvsadm -Ln"), e))?;
                            Some((s.clone(), d))
                        }
                    };
                    self.reconcile_vs(want, have.as_ref().map(|(s, d)| (s, &d[..])), now, &mut ops);
                }
                self.contribs.insert(name.clone(), c.clone());
            }
        }
        // Real servers still draining elsewhere.
        let draining: BTreeSet<VsKey> = self
            .graceful
            .keys()
            .map(|(k, _)| *k)
            .filter(|k| self.owner.get(k).is_none_or(|n| !names.contains(n)))
            .collect();
        for key in draining {
            if let Some((s, _)) = self.kernel.get(&key).cloned() {
                let d = self
                    .k
                    .ipvs
                    .dests(&s)
                    .await
                    .map_err(|e| perr("ipvsadm -Ln", e))?;
                let name = self.owner.get(&key).cloned();
                let want = name
                    .and_then(|n| self.contribs.get(&n))
                    .and_then(|c| c.services.iter().find(|(w, _)| key_of(w) == key))
                    .cloned();
                if let Some(want) = want {
                    self.reconcile_vs(&want, Some((&s, &d)), now, &mut ops);
                }
            }
        }
        self.run_ops(&ops, errors).await?;
        // Addresses whose wantedness changed.
        let mut add = Vec::new();
        let mut del = Vec::new();
        for (ip, before) in std::mem::take(&mut self.binds_before) {
            match (before, self.binds.contains_key(&ip)) {
                (false, true) => add.push(ip),
                (true, false) => del.push(ip),
                _ => {}
            }
        }
        add.sort();
        del.sort();
        self.bind(&add, &del, errors).await;
        // ipset entries: what changed among the touched ones.
        let mut changes: Vec<(Set, String, bool)> = Vec::new();
        for e in removed_entries {
            // Still wanted by another service port: stays.
            if !self.entries.contains_key(&e) {
                changes.push((e.0, e.1, false));
            }
        }
        for e in added_entries {
            changes.push((e.0, e.1, true));
        }
        for ip in &add {
            changes.push((Set::IpvsIps, ip.to_string(), true));
        }
        for ip in &del {
            changes.push((Set::IpvsIps, ip.to_string(), false));
        }
        if !changes.is_empty() {
            // `-exist` makes adding a present entry and deleting an absent
            // one harmless.
            let input = sets::delta(&changes, self.cfg.family);
            self.k
                .ipset
                .restore(&input)
                .await
                .map_err(|e| perr("writing the ipsets", e))?;
        }
        self.report.ipset_changes = changes.len();
        self.write_rules(false).await
    }
}
