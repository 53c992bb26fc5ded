//! The rendered table, without a kernel: kube-proxy's names (its test
//! vectors), and a consistency check of a whole transaction for a mixed
//! workload: every jump, goto and map element names a chain the
//! transaction makes, every chain it makes is used, and no service chain
//! is made twice.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use backend_nftables::{Config, Op, endpoint_base, render_full, service_base};
use backend_nftables::{Expr, Verdict};
use proxier_core::{
    ChangeTracker, IpFamily, NamespacedName, Protocol, ServicePortName, ServiceType,
    SessionAffinity, TrafficPolicy,
};
use proxier_netfilter::LocalDetector;
use proxier_testbed::{ep, service, slice};

fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
    ServicePortName {
        service: NamespacedName::new(ns, name),
        port: port.into(),
        protocol: Protocol::Tcp,
    }
}

/// kube-proxy's own names (`pkg/proxy/nftables/proxier_test.go`).
#[test]
fn names_match_kube_proxy() {
    assert_eq!(
        format!("service-{}", service_base(&spn("ns1", "svc1", "p80"))),
        "service-ULMVA6XW-ns1/svc1/tcp/p80"
    );
    assert_eq!(
        format!("external-{}", service_base(&spn("ns2", "svc2", "p80"))),
        "external-42NFTM6N-ns2/svc2/tcp/p80"
    );
    let ep: SocketAddr = "10.180.0.1:80".parse().unwrap();
    assert_eq!(
        format!("endpoint-{}", endpoint_base(&spn("ns1", "svc1", "p80"), ep)),
        "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    );
    let ep: SocketAddr = "10.180.0.3:80".parse().unwrap();
    assert_eq!(
        format!("affinity-{}", endpoint_base(&spn("ns5", "svc5", "p80"), ep)),
        "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"
    );
}

fn targets(exprs: &[Expr]) -> Vec<String> {
    exprs
        .iter()
        .filter_map(|e| match e {
            Expr::Verdict(v) => v.chain().map(String::from),
            _ => None,
        })
        .collect()
}

#[test]
fn every_reference_resolves_and_every_chain_is_used() {
    let ports = [("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)];
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for i in 0..30 {
        let name = format!("s{i}");
        let mut s = service("ns", &name, &format!("10.96.0.{}", i + 1), &ports);
        match i % 6 {
            1 => {
                s.service_type = ServiceType::NodePort;
                s.ports[0].node_port = 30000 + i as u16;
            }
            2 => {
                s.service_type = ServiceType::LoadBalancer;
                s.ports[0].node_port = 31000 + i as u16;
                s.load_balancer_ips = vec![format!("198.51.100.{}", i + 1).parse().unwrap()];
                s.load_balancer_source_ranges = vec!["203.0.113.0/24".into()];
                s.external_traffic_policy = TrafficPolicy::Local;
            }
            3 => {
                s.session_affinity = SessionAffinity::ClientIp {
                    timeout_seconds: 60,
                }
            }
            4 => s.internal_traffic_policy = TrafficPolicy::Local,
            5 => s.external_ips = vec![format!("192.0.2.{}", i + 1).parse().unwrap()],
            _ => {}
        }
        t.update_service(&s).unwrap();
        let eps = if i % 7 == 6 {
            vec![]
        } else {
            (1..=3)
                .map(|k| {
                    ep(
                        format!("10.0.{i}.{k}").parse().unwrap(),
                        if k == 1 { "node-1" } else { "node-2" },
                    )
                })
                .collect()
        };
        t.update_endpoint_slice(&slice("ns", &name, &ports, eps))
            .unwrap();
    }
    let snap = t.apply().0;
    let mut cfg = Config::new(IpFamily::V4);
    cfg.masquerade.local_detector =
        LocalDetector::ClusterCidr(vec!["10.0.0.0/16".parse().unwrap()]);
    let (tx, fragments, errors) = render_full(&cfg, &snap);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(fragments.len(), 30);
    let mut made = Vec::new();
    let mut referenced = BTreeSet::new();
    let mut base = BTreeSet::new();
    for op in &tx.ops {
        match op {
            Op::AddChain(c) => {
                made.push(c.name.clone());
                if c.base.is_some() {
                    base.insert(c.name.clone());
                }
            }
            Op::AddRule(r) => {
                for t in targets(&r.exprs) {
                    // The kernel looks a target up when the rule is added.
                    assert!(
                        made.contains(&t),
                        "{} jumps to {t} before it is made",
                        r.chain
                    );
                    referenced.insert(t);
                }
            }
            Op::AddElements { elements, .. } => {
                for e in elements {
                    if let Some(Verdict::Goto(c) | Verdict::Jump(c)) = &e.verdict {
                        assert!(made.contains(c), "an element names {c} before it is made");
                        referenced.insert(c.clone());
                    }
                }
            }
            _ => {}
        }
    }
    let made_set: BTreeSet<String> = made.iter().cloned().collect();
    assert_eq!(made_set.len(), made.len(), "a chain made twice");
    let dangling: Vec<_> = referenced.difference(&made_set).collect();
    assert!(
        dangling.is_empty(),
        "references to chains not made: {dangling:?}"
    );
    let unused: Vec<_> = made_set
        .iter()
        .filter(|c| !base.contains(*c) && !referenced.contains(*c))
        .collect();
    assert!(unused.is_empty(), "chains nothing uses: {unused:?}");
    // The features show up: affinity sets, firewall chains, local chains.
    for prefix in ["firewall-", "local-", "external-", "endpoint-", "service-"] {
        assert!(
            made.iter().any(|c| c.starts_with(prefix)),
            "no {prefix} chain"
        );
    }
    assert!(
        tx.ops
            .iter()
            .any(|op| matches!(op, Op::AddSet(s) if s.name.starts_with("affinity-")))
    );
}
