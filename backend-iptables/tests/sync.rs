//! Sync logic against the in-memory iptables (no root needed): what a
//! full, partial and no-op sync write, failure and retry, foreign rules,
//! cleanup, and refusing unsafe input.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use backend_iptables::{Config, IptablesProxier, is_owned_chain};
use proxier_core::{ChangeTracker, IpFamily, Protocol, Proxier, SyncRequest};
use proxier_netfilter::{FakeConntrack, FakeIptables, FakeSysctl};
use proxier_netfilter::{Flow, FlowTuple, LocalDetector, Variant};
use proxier_netfilter::{IPPROTO_TCP as TCP, IPPROTO_UDP as UDP};
use proxier_testbed::{ep, service, slice};

const P: [(&str, u16, Protocol); 2] = [("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A flow from a client to `to`, answered by `by` (`conntrack -L`).
fn flow(proto: u8, to: &str, by: &str) -> Flow {
    let (to, by): (std::net::SocketAddr, std::net::SocketAddr) =
        (to.parse().unwrap(), by.parse().unwrap());
    Flow {
        protocol: proto,
        orig: FlowTuple {
            src: ip("10.0.9.9"),
            dst: to.ip(),
            src_port: 40000,
            dst_port: to.port(),
        },
        reply: FlowTuple {
            src: by.ip(),
            dst: ip("10.0.9.9"),
            src_port: by.port(),
            dst_port: 40000,
        },
        zone: 0,
        id: Some(7),
        // A DNAT rule answered it from elsewhere.
        dnat: to.ip() != by.ip(),
    }
}

struct Rig {
    tracker: ChangeTracker,
    ipt: Arc<FakeIptables>,
    ct: Arc<FakeConntrack>,
    proxier: IptablesProxier,
    first: bool,
}

impl Rig {
    fn new(variant: Variant) -> Rig {
        let ipt = Arc::new(FakeIptables::new(variant));
        let ct = Arc::new(FakeConntrack::default());
        let cfg = Config {
            local_detector: LocalDetector::ClusterCidr(vec!["10.0.0.0/16".parse().unwrap()]),
            localhost_node_ports: false,
            ..Config::default()
        };
        // Every verification reads the tables (the spacing that keeps
        // checks under 5% of a core is tested on its own).
        let proxier = IptablesProxier::new(
            cfg,
            ipt.clone(),
            ct.clone(),
            Arc::new(FakeSysctl::default()),
        )
        .unwrap()
        .with_check_spacing(0);
        Rig {
            tracker: ChangeTracker::new(IpFamily::V4, "node-1"),
            ipt,
            ct,
            proxier,
            first: true,
        }
    }

    fn add(&mut self, name: &str, cip: &str, eps: &[&str]) {
        self.tracker
            .update_service(&service("ns", name, cip, &P))
            .unwrap();
        let e = eps.iter().map(|a| ep(ip(a), "node-2")).collect();
        self.tracker
            .update_endpoint_slice(&slice("ns", name, &P, e))
            .unwrap();
    }

    async fn sync(&mut self) -> Result<proxier_netfilter::ExecError, proxier_core::SyncStats> {
        let (snapshot, changes) = self.tracker.apply();
        let req = SyncRequest {
            snapshot,
            changes,
            full: self.first,
            verify: false,
        };
        self.first = false;
        match self.proxier.sync(&req).await {
            Ok(s) => Err(s),
            Err(e) => Ok(proxier_netfilter::ExecError {
                command: e.message.clone(),
                status: None,
                detail: format!("{e:?}"),
            }),
        }
    }

    /// A periodic sync with no change that verifies the kernel.
    async fn verify(&mut self) -> proxier_core::SyncStats {
        let (snapshot, changes) = self.tracker.apply();
        let req = SyncRequest {
            snapshot,
            changes,
            full: false,
            verify: true,
        };
        self.proxier.sync(&req).await.expect("verifying sync")
    }

    /// A new proxier over the same fakes, changed by `f`; its first sync
    /// is full.
    fn rebuild(&mut self, f: impl FnOnce(IptablesProxier) -> IptablesProxier) {
        self.proxier = f(IptablesProxier::new(
            self.proxier.config().clone(),
            self.ipt.clone(),
            self.ct.clone(),
            Arc::new(FakeSysctl::default()),
        )
        .unwrap());
        self.first = true;
    }

    fn restores(&self) -> Vec<(String, String, bool)> {
        self.ipt.state.lock().unwrap().restores.clone()
    }

    fn chains(&self, table: &str) -> BTreeSet<String> {
        self.ipt.table(table).keys().cloned().collect()
    }
}

#[tokio::test]
async fn full_partial_and_noop_syncs() {
    let mut r = Rig::new(Variant::Nft);
    for i in 0..5 {
        let eps: Vec<String> = (1..=3).map(|k| format!("10.0.{i}.{k}")).collect();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        r.add(&format!("s{i}"), &format!("10.96.0.{}", i + 1), &eps);
    }
    let stats = r.sync().await.unwrap_err();
    assert!(stats.full);
    assert_eq!(r.restores().len(), 2, "one restore per table");
    let nat = r.ipt.table("nat");
    FakeIptables::check(&nat).unwrap();
    // 5 services × 2 ports × (SVC + 3 SEP) + 4 fixed + 4 built-ins.
    assert_eq!(nat.len(), 5 * 2 * 4 + 4 + 4, "{:?}", nat.keys());
    assert!(
        nat["PREROUTING"]
            .1
            .iter()
            .any(|r| r.ends_with("-j KUBE-SERVICES"))
    );

    // No change: no command at all.
    let stats = r.sync().await.unwrap_err();
    assert_eq!(stats.written, 0);
    assert_eq!(r.restores().len(), 2);

    // One endpoint replaced in one service: only that service's chains.
    let stale_udp = flow(UDP, "10.96.0.3:53", "10.0.2.3:53");
    let live_udp = flow(UDP, "10.96.0.3:53", "10.0.2.1:53");
    let tcp = flow(TCP, "10.96.0.3:80", "10.0.2.3:80");
    *r.ct.flows.lock().unwrap() = vec![stale_udp, live_udp, tcp];
    r.add("s2", "10.96.0.3", &["10.0.2.1", "10.0.2.2", "10.0.2.9"]);
    let before = r.chains("nat");
    let stats = r.sync().await.unwrap_err();
    assert!(!stats.full);
    let restores = r.restores();
    assert_eq!(restores.len(), 3, "filter unchanged, nat only");
    let (table, payload, noflush) = &restores[2];
    assert_eq!(table, "nat");
    assert!(noflush);
    let declared: Vec<&str> = payload
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .collect();
    // Two ports: each SVC chain rewritten, one new SEP each, one removed SEP each.
    assert_eq!(declared.len(), 2 + 2 + 2, "{payload}");
    assert!(
        !payload.contains(":KUBE-SERVICES"),
        "KUBE-SERVICES did not change: {payload}"
    );
    assert_eq!(payload.matches("\n-X KUBE-SEP-").count(), 2, "{payload}");
    let after = r.chains("nat");
    assert_eq!(before.difference(&after).count(), 2);
    assert_eq!(after.difference(&before).count(), 2);
    FakeIptables::check(&r.ipt.table("nat")).unwrap();
    // What the partial render holds is exactly a render from scratch.
    let partial = r.proxier.ruleset().unwrap();
    let fresh = backend_iptables::Ruleset::render(r.proxier.config(), r.tracker.snapshot());
    assert_eq!(partial.to_restore_input(), fresh.to_restore_input());
    assert_eq!(partial.rule_counts(), fresh.rule_counts());
    // The removed UDP endpoint's flow is deleted; the flow to a serving
    // endpoint and the TCP flow stay.
    assert_eq!(*r.ct.deleted.lock().unwrap(), vec![stale_udp]);
    assert_eq!(*r.ct.flows.lock().unwrap(), vec![live_udp, tcp]);

    // A new service: its chains plus KUBE-SERVICES.
    r.add("s9", "10.96.0.99", &["10.0.9.1"]);
    let to_s9 = flow(UDP, "10.96.0.99:53", "10.0.9.1:53");
    r.sync().await.unwrap_err();
    let (_, payload, _) = r.restores().last().cloned().unwrap();
    assert!(payload.contains(":KUBE-SERVICES - [0:0]"));
    assert!(payload.contains("10.96.0.99"));
    let fresh = backend_iptables::Ruleset::render(r.proxier.config(), r.tracker.snapshot());
    assert_eq!(
        r.proxier.ruleset().unwrap().to_restore_input(),
        fresh.to_restore_input()
    );
    assert_eq!(
        r.proxier.ruleset().unwrap().rule_counts(),
        fresh.rule_counts()
    );
    let declared = payload.lines().filter(|l| l.starts_with(':')).count();
    assert_eq!(
        declared,
        1 + 2 + 2,
        "KUBE-SERVICES and the new service's chains only: {payload}"
    );

    // A deleted service: its chains are removed.
    r.ct.flows.lock().unwrap().push(to_s9);
    r.tracker.delete_service("ns", "s9");
    r.tracker.delete_endpoint_slice("ns", "s9-1");
    r.sync().await.unwrap_err();
    let nat = r.ipt.table("nat");
    FakeIptables::check(&nat).unwrap();
    assert!(
        !nat["KUBE-SERVICES"]
            .1
            .iter()
            .any(|l| l.contains("10.96.0.99"))
    );
    assert_eq!(nat.len(), 5 * 2 * 4 + 4 + 4);
    // Its flows go with it (a deleted UDP cluster IP).
    assert!(r.ct.deleted.lock().unwrap().contains(&to_s9));
    assert_eq!(*r.ct.flows.lock().unwrap(), vec![live_udp, tcp]);
}

/// The reconciler: a flow made behind the proxier's back (no event in the
/// change set) to an address that is no serving endpoint is found on the
/// next sync, even one that writes no rule; a service that loses every
/// endpoint loses its flows (kubernetes #139628); flows to other
/// addresses stay. A conntrack socket that fails does not fail the sync.
#[tokio::test]
async fn drift_is_found_by_a_verifying_sync_and_repaired() {
    for variant in [Variant::Nft, Variant::Legacy] {
        let mut r = Rig::new(variant);
        r.add("a", "10.96.0.1", &["10.0.1.1", "10.0.1.2"]);
        r.add("b", "10.96.0.2", &["10.0.2.1"]);
        r.sync().await.unwrap_err();
        let good_nat = r.ipt.table("nat");
        let good_filter = r.ipt.table("filter");
        let restores = r.restores().len();
        // Nothing changed: nothing is written and nothing is repaired.
        let s = r.verify().await;
        assert_eq!((s.repaired.as_deref(), s.full), (None, false));
        assert_eq!(
            r.restores().len(),
            restores,
            "{variant:?}: wrote on a no-op"
        );

        let sep = r
            .chains("nat")
            .into_iter()
            .find(|c| c.starts_with("KUBE-SEP-"))
            .unwrap();
        type Tamper = Box<dyn Fn(&mut proxier_netfilter::FakeTable)>;
        let cases: Vec<(&str, &str, &str, Tamper)> = vec![
            (
                "nat",
                "flush KUBE-SERVICES",
                "chain KUBE-SERVICES of table nat holds 0 rules",
                Box::new(|t| t.get_mut("KUBE-SERVICES").unwrap().1.clear()),
            ),
            ("nat", "flush one KUBE-SEP-", "holds 0 rules", {
                let sep = sep.clone();
                Box::new(move |t| t.get_mut(&sep).unwrap().1.clear())
            }),
            (
                "nat",
                "delete the OUTPUT jump",
                "OUTPUT of table nat holds 0 jumps to KUBE-SERVICES",
                Box::new(|t| {
                    t.get_mut("OUTPUT")
                        .unwrap()
                        .1
                        .retain(|r| !r.contains("KUBE-SERVICES"))
                }),
            ),
            (
                "filter",
                "flush KUBE-FORWARD",
                "chain KUBE-FORWARD of table filter",
                Box::new(|t| t.get_mut("KUBE-FORWARD").unwrap().1.clear()),
            ),
            (
                "nat",
                "firewalld-style wipe",
                "of table nat",
                Box::new(|t| {
                    // iptables -t nat -F; iptables -t nat -X
                    t.values_mut().for_each(|(_, r)| r.clear());
                    t.retain(|_, (policy, _)| policy.is_some());
                }),
            ),
        ];
        for (table, what, expect, tamper) in cases {
            r.ipt.tamper(table, |t| tamper(t));
            let s = r.verify().await;
            let found = s
                .repaired
                .unwrap_or_else(|| panic!("{variant:?}: {what} not seen"));
            assert!(found.contains(expect), "{variant:?}: {what}: {found}");
            assert!(s.full, "{variant:?}: {what}: repaired without a full sync");
            assert_eq!(
                r.ipt.table("nat"),
                good_nat,
                "{variant:?}: {what}: nat not repaired"
            );
            assert_eq!(
                r.ipt.table("filter"),
                good_filter,
                "{variant:?}: {what}: filter not repaired"
            );
            // And the next verification finds nothing more.
            assert_eq!(r.verify().await.repaired, None, "{variant:?}: {what}");
        }
    }
}

/// A check that read the tables is followed by none for (spacing − 1)
/// times its duration: with a huge spacing the next check does not read
/// the tables, and the damage waits; with none it is seen.
#[tokio::test]
async fn checks_are_spaced_by_their_own_cost() {
    let mut r = Rig::new(Variant::Nft);
    r.rebuild(|p| p.with_check_spacing(1_000_000_000));
    r.add("a", "10.96.0.1", &["10.0.1.1"]);
    r.sync().await.unwrap_err();
    assert_eq!(r.verify().await.repaired, None);
    r.ipt
        .tamper("nat", |t| t.get_mut("KUBE-SERVICES").unwrap().1.clear());
    assert_eq!(
        r.verify().await.repaired,
        None,
        "checked again within a billion times the last check's cost"
    );
}

#[tokio::test]
async fn reconciler_finds_flows_no_event_named() {
    let mut r = Rig::new(Variant::Nft);
    r.add("a", "10.96.0.1", &["10.0.1.1", "10.0.1.2"]);
    r.add("b", "10.96.0.2", &["10.0.2.1"]);
    r.sync().await.unwrap_err();
    let ghost = flow(UDP, "10.96.0.1:53", "10.0.1.77:53");
    let live = flow(UDP, "10.96.0.1:53", "10.0.1.2:53");
    let other = flow(UDP, "192.0.2.1:53", "192.0.2.1:53");
    let to_b = flow(UDP, "10.96.0.2:53", "10.0.2.1:53");
    *r.ct.flows.lock().unwrap() = vec![ghost, live, other, to_b];
    let stats = r.sync().await.unwrap_err();
    assert_eq!(stats.written, 0, "no rule changed");
    assert_eq!(*r.ct.deleted.lock().unwrap(), vec![ghost]);

    // b loses its only endpoint: the service stays, its flow goes.
    r.tracker
        .update_endpoint_slice(&slice("ns", "b", &P, vec![]))
        .unwrap();
    r.sync().await.unwrap_err();
    assert_eq!(*r.ct.flows.lock().unwrap(), vec![live, other]);

    // A conntrack failure is logged; the rules still land.
    *r.ct.fail_with.lock().unwrap() = Some(libc::EPERM);
    r.add("c", "10.96.0.3", &["10.0.3.1"]);
    let stats = r.sync().await.unwrap_err();
    assert!(stats.written > 0);
}

#[tokio::test]
async fn failed_restore_changes_nothing_then_full_sync_converges() {
    let mut r = Rig::new(Variant::Legacy);
    r.add("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]);
    r.sync().await.unwrap_err();
    let before = r.ipt.table("nat");

    r.add("a", "10.96.0.1", &["10.0.0.1"]);
    r.ipt.state.lock().unwrap().fail_next = 1;
    let err = r.sync().await.expect("sync must fail");
    assert!(err.detail.contains("xtables lock"), "{err:?}");
    assert_eq!(
        r.ipt.table("nat"),
        before,
        "a failed restore changes nothing"
    );

    // Nothing new pending, but the proxier knows it must resync in full.
    let stats = r.sync().await.unwrap_err();
    assert!(stats.full, "the sync after a failure is full");
    let nat = r.ipt.table("nat");
    FakeIptables::check(&nat).unwrap();
    let seps = nat.keys().filter(|c| c.starts_with("KUBE-SEP-")).count();
    assert_eq!(seps, 2, "one endpoint per port left: {:?}", nat.keys());
}

#[tokio::test]
async fn foreign_rules_survive_sync_partial_flush_mode_and_cleanup() {
    for variant in [Variant::Legacy, Variant::Nft] {
        let mut r = Rig::new(variant);
        let foreign = "*nat\n:DOCKER - [0:0]\n-A DOCKER -j RETURN\n-A PREROUTING -j DOCKER\n-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE\nCOMMIT\n";
        use proxier_netfilter::Iptables;
        r.ipt.restore("nat", foreign, true).await.unwrap();
        r.ipt
            .restore(
                "filter",
                "*filter\n:MINE - [0:0]\n-A INPUT -j MINE\n-A MINE -s 1.2.3.4 -j DROP\nCOMMIT\n",
                true,
            )
            .await
            .unwrap();
        let theirs = |r: &Rig| -> Vec<(String, String)> {
            let mut v = Vec::new();
            for t in ["nat", "filter"] {
                for (c, (_, rules)) in r.ipt.table(t) {
                    if !is_owned_chain(t, &c) {
                        for rule in rules.iter().filter(|x| !x.contains("-j KUBE-")) {
                            v.push((c.clone(), rule.clone()));
                        }
                    }
                }
            }
            v
        };
        let want = theirs(&r);
        assert_eq!(want.len(), 5);
        r.add("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]);
        r.sync().await.unwrap_err();
        assert_eq!(theirs(&r), want, "{variant}: after a full sync");
        r.add("a", "10.96.0.1", &["10.0.0.1"]);
        r.sync().await.unwrap_err();
        assert_eq!(theirs(&r), want, "{variant}: after a partial sync");

        // Force the flush-mode path (nft at scale) with a zero threshold.
        let cfg = r.proxier.config().clone();
        let mut p = IptablesProxier::new(
            cfg,
            r.ipt.clone(),
            r.ct.clone(),
            Arc::new(FakeSysctl::default()),
        )
        .unwrap()
        .with_flush_threshold(0);
        let (snapshot, changes) = r.tracker.apply();
        p.sync(&SyncRequest {
            snapshot,
            changes,
            full: true,
            verify: false,
        })
        .await
        .unwrap();
        assert_eq!(theirs(&r), want, "{variant}: after a flush-mode full sync");
        FakeIptables::check(&r.ipt.table("nat")).unwrap();
        let prerouting = &r.ipt.table("nat")["PREROUTING"].1;
        assert_eq!(
            prerouting
                .iter()
                .filter(|x| x.ends_with("-j KUBE-SERVICES"))
                .count(),
            1,
            "{prerouting:?}"
        );

        r.proxier.cleanup().await.unwrap();
        assert_eq!(theirs(&r), want, "{variant}: after cleanup");
        for t in ["nat", "filter"] {
            let left: Vec<String> = r
                .ipt
                .table(t)
                .keys()
                .filter(|c| c.starts_with("KUBE-"))
                .cloned()
                .collect();
            assert!(left.is_empty(), "{variant} {t}: {left:?}");
            let jumps: Vec<String> = r
                .ipt
                .table(t)
                .values()
                .flat_map(|(_, rs)| rs.iter().filter(|x| x.contains("KUBE-")).cloned())
                .collect();
            assert!(jumps.is_empty(), "{variant} {t}: {jumps:?}");
        }
    }
}

#[tokio::test]
async fn unsafe_names_are_refused_and_the_rest_renders() {
    use backend_iptables::Ruleset;
    use proxier_core::{ServicePort, ServicePortName, SessionAffinity};
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    t.update_service(&service("ns", "ok", "10.96.0.1", &P))
        .unwrap();
    let (mut snap, _) = t.apply();
    // Only code that bypasses validation can build such a name; the
    // renderer still refuses it.
    for bad in ["x\" -j ACCEPT", "x\n-A INPUT -j ACCEPT", "--flag"] {
        let name = ServicePortName::new("ns", bad, "p", Protocol::Tcp);
        let svc = ServicePort {
            name: name.clone(),
            cluster_ip: ip("10.96.0.2"),
            port: 80,
            node_port: 0,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity: SessionAffinity::None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: 0,
            hints_annotation: None,
            traffic_distribution: None,
        };
        snap.services.insert(name, Arc::new(svc));
    }
    let r = Ruleset::render(&Config::default(), &snap);
    assert_eq!(r.errors.len(), 3, "{:?}", r.errors);
    let text = r.to_restore_input();
    assert!(text.contains("ns/ok:http"));
    assert!(!text.contains("10.96.0.2"), "{text}");
    assert!(!text.contains("-j ACCEPT\"") && !text.contains("--flag"));
}

#[test]
fn config_values_are_checked() {
    let bad = Config {
        masquerade_bit: 40,
        ..Config::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("masquerade_bit")
    );
    let bad = Config {
        local_detector: LocalDetector::InterfacePrefix("veth -j ACCEPT".into()),
        ..Config::default()
    };
    assert!(bad.validate().is_err());
    let bad = Config {
        node_port_addresses: vec!["fd00::/64".parse().unwrap()],
        ..Config::default()
    };
    assert!(
        bad.validate()
            .unwrap_err()
            .to_string()
            .contains("wrong IP family")
    );
}

/// The restore inputs are kept only when asked (at 50,000 × 10 they are
/// 2.1 million lines), and then they are what was restored.
#[tokio::test]
async fn restore_inputs_are_kept_only_when_asked() {
    let mut r = Rig::new(Variant::Nft);
    r.add("a", "10.96.0.1", &["10.0.1.1"]);
    r.sync().await.unwrap_err();
    assert!(r.proxier.last_payloads().is_empty());
    let mut r = Rig::new(Variant::Nft);
    r.rebuild(IptablesProxier::with_kept_payloads);
    r.add("a", "10.96.0.1", &["10.0.1.1"]);
    r.sync().await.unwrap_err();
    let kept: Vec<(String, String, bool)> = r
        .proxier
        .last_payloads()
        .iter()
        .map(|(t, p, n)| (t.to_string(), p.clone(), *n))
        .collect();
    assert_eq!(kept, r.restores());
}
