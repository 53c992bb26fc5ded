//! Golden tests: whole rendered rulesets for representative services,
//! compared line for line with kube-proxy's own test output (reference
//! §3.7) and with a stored file, and checked for consistency (every jump
//! target exists, every per-service chain is used).
//!
//! `UPDATE_GOLDEN=1 cargo test -p backend-iptables --test golden`
//! rewrites the stored files after a deliberate change.

use std::collections::BTreeSet;
use std::net::IpAddr;

use backend_iptables::{Config, Ruleset, is_service_chain};
use proxier_core::{
    ChangeTracker, IpFamily, Protocol, Service, ServiceType, SessionAffinity, Snapshot,
    TrafficPolicy,
};
use proxier_netfilter::LocalDetector;
use proxier_testbed::{ep, service, slice};

const TCP: Protocol = Protocol::Tcp;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn lb(mut s: Service, np: u16, lb_ip: &str) -> Service {
    s.service_type = ServiceType::LoadBalancer;
    s.ports[0].node_port = np;
    s.load_balancer_ips = vec![ip(lb_ip)];
    s
}

/// kube-proxy's `TestOverallIPTablesRules` services.
fn overall() -> Snapshot {
    let host = "test-node";
    let mut t = ChangeTracker::new(IpFamily::V4, host);
    let p80 = [("p80", 80, TCP)];
    t.update_service(&service("ns1", "svc1", "172.30.0.41", &p80))
        .unwrap();
    t.update_endpoint_slice(&slice(
        "ns1",
        "svc1",
        &p80,
        vec![ep(ip("10.180.0.1"), "other")],
    ))
    .unwrap();

    let mut s2 = lb(service("ns2", "svc2", "172.30.0.42", &p80), 3001, "1.2.3.4");
    s2.external_ips = vec![ip("192.168.99.22")];
    s2.external_traffic_policy = TrafficPolicy::Local;
    s2.health_check_node_port = 30000;
    t.update_service(&s2).unwrap();
    t.update_endpoint_slice(&slice(
        "ns2",
        "svc2",
        &p80,
        vec![ep(ip("10.180.0.2"), "other")],
    ))
    .unwrap();

    let mut s3 = service("ns3", "svc3", "172.30.0.43", &p80);
    s3.service_type = ServiceType::NodePort;
    s3.ports[0].node_port = 3003;
    t.update_service(&s3).unwrap();
    t.update_endpoint_slice(&slice(
        "ns3",
        "svc3",
        &p80,
        vec![ep(ip("10.180.0.3"), "other")],
    ))
    .unwrap();

    let mut s4 = service("ns4", "svc4", "172.30.0.44", &p80);
    s4.external_ips = vec![ip("192.168.99.33")];
    t.update_service(&s4).unwrap();
    t.update_endpoint_slice(&slice(
        "ns4",
        "svc4",
        &p80,
        vec![ep(ip("10.180.0.4"), host), ep(ip("10.180.0.5"), host)],
    ))
    .unwrap();

    let mut s5 = lb(service("ns5", "svc5", "172.30.0.45", &p80), 3002, "5.6.7.8");
    s5.load_balancer_source_ranges = vec!["203.0.113.0/25".into()];
    s5.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    t.update_service(&s5).unwrap();
    t.update_endpoint_slice(&slice(
        "ns5",
        "svc5",
        &p80,
        vec![ep(ip("10.180.0.3"), "other")],
    ))
    .unwrap();

    t.update_service(&service("ns6", "svc6", "172.30.0.46", &p80))
        .unwrap();
    t.apply().0
}

fn kube_proxy_test_config() -> Config {
    Config {
        local_detector: LocalDetector::ClusterCidr(vec!["10.0.0.0/8".parse().unwrap()]),
        node_ips: vec![ip("192.168.0.2")],
        // kube-proxy's test also writes an nfacct-counted 127.0.0.0/8 rule;
        // this backend does not use nfacct, so compare without it.
        localhost_node_ports: false,
        ..Config::default()
    }
}

/// Every jump target exists; every per-service chain is jumped to.
fn check_consistency(text: &str) {
    for table in text.split("COMMIT\n").filter(|t| !t.trim().is_empty()) {
        let declared: BTreeSet<&str> = table
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let mut used = BTreeSet::new();
        for l in table.lines().filter(|l| l.starts_with("-A ")) {
            let words: Vec<&str> = l.split_whitespace().collect();
            assert!(declared.contains(words[1]), "rule in undeclared chain: {l}");
            if let Some(i) = words.iter().position(|w| *w == "-j") {
                let t = words[i + 1];
                if t.starts_with("KUBE-") {
                    assert!(declared.contains(t), "jump to undeclared chain: {l}");
                    used.insert(t);
                }
            }
        }
        for c in &declared {
            if is_service_chain(c) {
                assert!(used.contains(c), "chain {c} is declared but never used");
            }
        }
    }
}

fn golden(name: &str, text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() || !path.exists() {
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, want, "rendered rules differ from {}", path.display());
}

/// Sorted like kube-proxy's tests sort iptables-save output: chain lines,
/// then rules, per table.
fn sorted(text: &str) -> String {
    let mut out = String::new();
    for table in text.split("COMMIT\n").filter(|t| !t.trim().is_empty()) {
        let mut lines: Vec<&str> = table.lines().collect();
        let head = lines.remove(0);
        lines.sort();
        out.push_str(head);
        out.push('\n');
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[test]
fn overall_matches_kube_proxy() {
    let r = Ruleset::render(&kube_proxy_test_config(), &overall());
    assert!(r.errors.is_empty());
    let text = r.to_restore_input();
    check_consistency(&text);
    // Key lines of kube-proxy's TestOverallIPTablesRules, verbatim.
    let want = [
        r#"-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT"#,
        r#"-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT"#,
        r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP"#,
        r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP"#,
        r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP"#,
        r#"-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP"#,
        r#"-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT"#,
        r#"-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C"#,
        r#"-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"#,
        r#"-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"#,
        r#"-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT"#,
        r#"-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ"#,
        r#"-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK"#,
        r#"-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C"#,
        r#"-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL""#,
        r#"-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ"#,
        r#"-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80"#,
        r#"-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"#,
        r#"-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC"#,
        r#"-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ"#,
        r#"-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap -j KUBE-SEP-I77PXRDZVX7PMWMN"#,
        r#"-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN"#,
        r#"-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"#,
        r#"-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN"#,
        r#"-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"#,
    ];
    let lines: BTreeSet<&str> = text.lines().collect();
    for w in want {
        assert!(
            lines.contains(w),
            "missing kube-proxy line:\n{w}\n--- rendered ---\n{}",
            sorted(&text)
        );
    }
    // Upstream writes no SVL chain for svc2 (its only endpoint is remote),
    // and no NodePort rules for svc4.
    assert!(!text.contains("KUBE-SVL-GNZBNJ2PO5MGZ6GT"));
    assert!(!text.contains("KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVL"));
    // The nodeports tail is the last rule of nat KUBE-SERVICES.
    let last = text
        .lines()
        .rfind(|l| l.starts_with("-A KUBE-SERVICES "))
        .unwrap();
    assert!(last.contains("NOTE: this must be the last rule"), "{last}");
    golden("overall.rules", &sorted(&text));
}

#[test]
fn dual_stack_ipv6_rules() {
    let mut t = ChangeTracker::new(IpFamily::V6, "node-1");
    let p = [("dns", 53, Protocol::Udp)];
    let mut s = service("kube-system", "dns", "fd00::10", &p);
    s.service_type = ServiceType::NodePort;
    s.ports[0].node_port = 30053;
    t.update_service(&s).unwrap();
    t.update_endpoint_slice(&slice(
        "kube-system",
        "dns",
        &p,
        vec![ep(ip("fd00:1::2"), "node-1"), ep(ip("fd00:1::3"), "node-2")],
    ))
    .unwrap();
    let cfg = Config {
        family: IpFamily::V6,
        local_detector: LocalDetector::ClusterCidr(vec!["fd00:1::/64".parse().unwrap()]),
        ..Config::default()
    };
    let text = Ruleset::render(&cfg, &t.apply().0).to_restore_input();
    check_consistency(&text);
    assert!(
        text.contains("-m udp -p udp -d fd00::10 --dport 53 ! -s fd00:1::/64 -j KUBE-MARK-MASQ"),
        "{text}"
    );
    assert!(
        text.contains("-j DNAT --to-destination [fd00:1::2]:53"),
        "{text}"
    );
    assert!(
        text.contains("-m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"),
        "{text}"
    );
    // No IPv4-only localhost rules in IPv6.
    assert!(
        !text.contains("KUBE-FIREWALL") && !text.contains("127.0.0.0/8"),
        "{text}"
    );
    golden("ipv6.rules", &sorted(&text));
}

#[test]
fn probabilities_are_kube_proxys() {
    use backend_iptables::probability;
    assert_eq!(probability(1), "1.0000000000");
    assert_eq!(probability(2), "0.5000000000");
    assert_eq!(probability(10), "0.1000000000");
    assert_eq!(probability(1000), "0.0010000000");
    assert_eq!(probability(100000), "0.0000100000");
    assert_eq!(probability(100001), "0.0000099999");
    let v: Vec<f64> = (2..=100000)
        .rev()
        .map(|n| probability(n).parse().unwrap())
        .collect();
    assert!(v.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn large_clusters_drop_endpoint_comments() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let p = [("http", 80, TCP)];
    for i in 0..101 {
        t.update_service(&service(
            "big",
            &format!("s{i}"),
            &format!("10.96.1.{}", i + 1),
            &p,
        ))
        .unwrap();
        let eps = (0..10)
            .map(|k| ep(ip(&format!("10.1.{i}.{}", k + 1)), "node-2"))
            .collect();
        t.update_endpoint_slice(&slice("big", &format!("s{i}"), &p, eps))
            .unwrap();
    }
    let snap = t.apply().0;
    let r = Ruleset::render(&kube_proxy_test_config(), &snap);
    assert!(r.large_cluster);
    let text = r.to_restore_input();
    check_consistency(&text);
    assert!(
        !text.contains(" -> 10.1."),
        "per-endpoint comments must be dropped"
    );
    assert!(
        text.contains("\"big/s0:http cluster IP\""),
        "service comments stay"
    );
}

#[test]
fn masquerade_all_and_interface_detection() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let p = [("http", 80, TCP)];
    t.update_service(&service("ns", "a", "10.96.0.1", &p))
        .unwrap();
    t.update_endpoint_slice(&slice("ns", "a", &p, vec![ep(ip("10.1.0.1"), "node-2")]))
        .unwrap();
    let snap = t.apply().0;
    let all = Config {
        masquerade_all: true,
        masquerade_bit: 5,
        ..Config::default()
    };
    let text = Ruleset::render(&all, &snap).to_restore_input();
    check_consistency(&text);
    assert!(
        text.contains("-A KUBE-SVC-")
            && text.contains("-m tcp -p tcp -d 10.96.0.1 --dport 80 -j KUBE-MARK-MASQ"),
        "masquerade-all marks every cluster IP packet: {text}"
    );
    assert!(
        text.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x20"),
        "bit 5 is 0x20: {text}"
    );
    let iface = Config {
        local_detector: LocalDetector::InterfacePrefix("veth".into()),
        ..Config::default()
    };
    let text = Ruleset::render(&iface, &snap).to_restore_input();
    assert!(
        text.contains("--dport 80 ! -i veth+ -j KUBE-MARK-MASQ"),
        "{text}"
    );
    let none = Ruleset::render(&Config::default(), &snap).to_restore_input();
    assert!(
        !none.contains("cluster IP\" -m tcp -p tcp -d 10.96.0.1 --dport 80 -j KUBE-MARK-MASQ"),
        "no detector, no masquerade-all: no internal masquerade"
    );
}
