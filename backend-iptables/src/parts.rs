//! Programming a large cluster in parts.
//!
//! `iptables-nft-restore` finds a chain by walking one of 512 hash
//! buckets, so its time grows with the square of the chains in a restore
//! (measured here, kube-proxy's layout, one restore into an empty
//! namespace: 10,000 services × 10 endpoints, 110,004 nat chains, 21 s;
//! 20,000 × 10, 94 s; 50,000 × 10 did not finish in 600 s);
//! `iptables-legacy-restore` also grows faster than the table. A first
//! sync of such a cluster written in one go serves nothing until it ends.
//!
//! Instead, when the first full sync would declare more than the part
//! size (in nat chains) and the kernel does not already hold a ruleset of
//! that size (a restart keeps serving the old rules during a long restore,
//! so it writes in one go), the proxier writes a growing prefix of the
//! services: first one part, then four times as many chains, and so on,
//! each a complete full sync of the services admitted so far (changes
//! included), each serving as soon as it commits. The order is
//! `kube-system` first (cluster DNS), then the services with the fewest
//! endpoints (the most services served soonest), then by name. Each part reports [`SyncStats::incomplete`] and the
//! runner syncs again at once.
//!
//! [`SyncStats::incomplete`]: proxier_core::SyncStats::incomplete

use std::collections::BTreeSet;

use proxier_core::{NamespacedName, Snapshot};

/// How much larger each part is than the one before.
pub const GROWTH: usize = 4;

/// The services admitted so far.
#[derive(Debug, Default)]
pub(crate) struct Parts {
    admitted: BTreeSet<NamespacedName>,
    /// The chain count the last part aimed at (0: none written yet).
    target: usize,
}

/// Where a service comes in the order of admission: `kube-system` first
/// (cluster DNS), then the services that need the fewest chains (the
/// most services served soonest), then by name.
fn rank(nn: &NamespacedName, chains: usize) -> (bool, usize, &NamespacedName) {
    let ns: &str = &nn.namespace;
    (ns != "kube-system", chains, nn)
}

/// Every service of the snapshot with the nat chains it needs, about: a
/// `KUBE-SVC-` chain per port and a `KUBE-SEP-` chain per endpoint.
fn services(snap: &Snapshot) -> Vec<(&NamespacedName, usize)> {
    let mut out: Vec<(&NamespacedName, usize)> = Vec::new();
    for (name, _) in snap.services.iter() {
        let chains = 1 + snap.endpoints_of(name).len();
        match out.last_mut() {
            Some((nn, n)) if *nn == &name.service => *n += chains,
            _ => out.push((&name.service, chains)),
        }
    }
    out
}

/// The nat chains a full sync of `snap` declares, about.
pub(crate) fn chains(snap: &Snapshot) -> usize {
    services(snap).iter().map(|(_, n)| n).sum()
}

impl Parts {
    /// Admits the next part of `snap`: services in order until the
    /// admitted ones need `first` chains (the first part) or `GROWTH`
    /// times the last target. Returns the snapshot to write and, if
    /// services are left out, what is still to come.
    pub(crate) fn next(&mut self, snap: &Snapshot, first: usize) -> (Snapshot, Option<String>) {
        self.target = if self.target == 0 {
            first
        } else {
            self.target.saturating_mul(GROWTH)
        };
        let mut all = services(snap);
        all.sort_by(|a, b| rank(a.0, a.1).cmp(&rank(b.0, b.1)));
        let mut have: usize = all
            .iter()
            .filter(|(nn, _)| self.admitted.contains(*nn))
            .map(|(_, n)| n)
            .sum();
        for (nn, n) in &all {
            if have >= self.target {
                break;
            }
            if self.admitted.insert((*nn).clone()) {
                have += n;
            }
        }
        let written = all
            .iter()
            .filter(|(nn, _)| self.admitted.contains(*nn))
            .count();
        let part = snap.retain_services(|nn| self.admitted.contains(nn));
        if written == all.len() {
            return (part, None);
        }
        let total: usize = all.iter().map(|(_, n)| n).sum();
        (
            part,
            Some(format!(
                "{written} of {} services ({have} of {total} nat chains) written",
                all.len()
            )),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxier_core::{ChangeTracker, IpFamily, Protocol};
    use proxier_testbed::{ep, service, slice};

    fn snap() -> Snapshot {
        let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
        let mut n = 0u32;
        for ns in ["zeta", "default", "kube-system", "alpha"] {
            for i in 0..5u32 {
                n += 1;
                let name = format!("s{i}");
                t.update_service(&service(
                    ns,
                    &name,
                    &format!("10.96.{}.{}", n / 200, n % 200 + 1),
                    &[("http", 80, Protocol::Tcp)],
                ))
                .unwrap();
                // Three endpoints (four chains), one in `alpha` (two).
                let k = if ns == "alpha" { 1 } else { 3 };
                let eps = (1..=k)
                    .map(|e| ep(format!("10.1.{n}.{e}").parse().unwrap(), "node-1"))
                    .collect();
                t.update_endpoint_slice(&slice(ns, &name, &[("http", 8080, Protocol::Tcp)], eps))
                    .unwrap();
            }
        }
        t.apply().0
    }

    #[test]
    fn parts_grow_fourfold_kube_system_first_until_everything_is_in() {
        let s = snap();
        assert_eq!(chains(&s), 70);
        let mut p = Parts::default();
        // 8 chains: two services, both from kube-system.
        let (part, more) = p.next(&s, 8);
        let names: BTreeSet<String> = part
            .services
            .keys()
            .map(|k| k.service.to_string())
            .collect();
        assert_eq!(
            names,
            ["kube-system/s0", "kube-system/s1"]
                .map(String::from)
                .into()
        );
        assert_eq!(
            more.as_deref(),
            Some("2 of 20 services (8 of 70 nat chains) written")
        );
        // 32 chains: the rest of kube-system (20 in all), then the small
        // services of alpha (10), then one of default (4 chains, ahead of
        // zeta's by name): 34 ≥ 32.
        let (part, more) = p.next(&s, 8);
        let count = |ns: &str| {
            part.services
                .keys()
                .filter(|k| &*k.service.namespace == ns)
                .count()
        };
        assert_eq!(
            [
                count("kube-system"),
                count("alpha"),
                count("default"),
                count("zeta")
            ],
            [5, 5, 1, 0]
        );
        assert!(more.is_some());
        // 128 ≥ 70: everything, and nothing more to come.
        let (part, more) = p.next(&s, 8);
        assert_eq!(part.services.len(), 20);
        assert_eq!(more, None);
    }
}
