use std::net::{IpAddr, SocketAddr};

use proptest::prelude::*;

use super::*;
use crate::input::{PortSpec, ServiceType, SliceEndpoint, SlicePort};
use crate::model::ServicePortName;

fn svc(name: &str, ip: &str, ports: &[(&str, u16, Protocol)]) -> Service {
    Service {
        namespace: "ns".into(),
        name: name.into(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![ip.parse().unwrap()],
        ports: ports
            .iter()
            .map(|(n, p, proto)| PortSpec {
                name: n.to_string(),
                protocol: Some(*proto),
                port: *p,
                node_port: 0,
            })
            .collect(),
        ..Default::default()
    }
}

fn slice(
    name: &str,
    svc: &str,
    port: (&str, u16, Protocol),
    eps: &[(&str, bool, Option<&str>)],
) -> EndpointSlice {
    EndpointSlice {
        namespace: "ns".into(),
        name: name.into(),
        service_name: svc.into(),
        address_type: IpFamily::V4,
        ports: vec![SlicePort {
            name: port.0.into(),
            port: Some(port.1),
            protocol: Some(port.2),
        }],
        endpoints: eps
            .iter()
            .map(|(ip, ready, node)| SliceEndpoint {
                addresses: vec![ip.parse().unwrap()],
                ready: Some(*ready),
                node_name: node.map(str::to_string),
                ..Default::default()
            })
            .collect(),
        trigger_time: None,
    }
}

fn key(name: &str, port: &str, proto: Protocol) -> ServicePortName {
    ServicePortName::new("ns", name, port, proto)
}

fn addrs(s: &Snapshot, k: &ServicePortName) -> Vec<String> {
    s.endpoints_of(k)
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

#[test]
fn add_update_delete_service() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    assert!(
        t.update_service(&svc("a", "10.96.0.1", &[("http", 80, Protocol::Tcp)]))
            .unwrap()
    );
    let (s, c) = t.apply();
    assert_eq!(s.services.len(), 1);
    assert!(c.updated_services.contains(&NamespacedName::new("ns", "a")));

    // Update: a port is added and one changes protocol.
    t.update_service(&svc(
        "a",
        "10.96.0.1",
        &[("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)],
    ))
    .unwrap();
    let (s, _) = t.apply();
    assert_eq!(s.services.len(), 2);

    // Removing the UDP port reports its cluster IP as stale.
    t.update_service(&svc("a", "10.96.0.1", &[("http", 80, Protocol::Tcp)]))
        .unwrap();
    let (s, c) = t.apply();
    assert_eq!(s.services.len(), 1);
    assert_eq!(
        c.deleted_udp_cluster_ips.iter().collect::<Vec<_>>(),
        vec![&"10.96.0.1".parse::<IpAddr>().unwrap()]
    );

    assert!(t.delete_service("ns", "a"));
    let (s, c) = t.apply();
    assert!(s.services.is_empty());
    assert_eq!(c.updated_services.len(), 1);
}

#[test]
fn changes_that_cancel_out_vanish() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let a = svc("a", "10.96.0.1", &[("", 80, Protocol::Tcp)]);
    // Add then delete before a sync: nothing pending.
    t.update_service(&a).unwrap();
    t.delete_service("ns", "a");
    assert!(!t.has_pending());
    let (_, c) = t.apply();
    assert!(c.is_empty());

    // Update then revert: nothing pending.
    t.update_service(&a).unwrap();
    t.apply();
    let mut b = a.clone();
    b.ports[0].port = 81;
    t.update_service(&b).unwrap();
    assert!(t.has_pending());
    t.update_service(&a).unwrap();
    assert!(!t.has_pending());

    // Same for slices.
    let s1 = slice(
        "a-1",
        "a",
        ("", 8080, Protocol::Tcp),
        &[("10.0.0.1", true, None)],
    );
    t.update_endpoint_slice(&s1).unwrap();
    t.delete_endpoint_slice("ns", "a-1");
    assert!(!t.has_pending());
    t.update_endpoint_slice(&s1).unwrap();
    t.apply();
    let mut s2 = s1.clone();
    s2.endpoints[0].ready = Some(false);
    assert!(t.update_endpoint_slice(&s2).unwrap());
    assert!(t.update_endpoint_slice(&s1).unwrap());
    assert!(!t.has_pending());
    // Re-sending the applied object changes nothing.
    assert!(!t.update_endpoint_slice(&s1).unwrap());
}

#[test]
fn slices_merge_dedup_and_order() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let p = ("p", 8080, Protocol::Tcp);
    t.update_endpoint_slice(&slice(
        "a-1",
        "a",
        p,
        &[
            ("10.0.0.10", true, None),
            ("10.0.0.2", true, Some("node-1")),
        ],
    ))
    .unwrap();
    t.update_endpoint_slice(&slice(
        "a-2",
        "a",
        p,
        &[("10.0.0.3", true, None), ("10.0.0.2", false, None)],
    ))
    .unwrap();
    let (s, c) = t.apply();
    let k = key("a", "p", Protocol::Tcp);
    // Sorted as text (kube-proxy's order), deduplicated; the later slice's
    // (non-terminating) copy of 10.0.0.2 wins.
    assert_eq!(
        addrs(&s, &k),
        vec!["10.0.0.10:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
    );
    let dup = &s.endpoints_of(&k)[1];
    assert!(!dup.is_ready());
    assert!(!dup.is_local());
    assert_eq!(c.local_endpoints_changed.len(), 0);

    // A terminating duplicate does not replace the earlier one.
    let mut s3 = slice("a-3", "a", p, &[("10.0.0.3", false, None)]);
    s3.endpoints[0].terminating = Some(true);
    t.update_endpoint_slice(&s3).unwrap();
    let (s, _) = t.apply();
    assert!(s.endpoints_of(&k)[2].is_ready());

    // Removing one slice keeps the others.
    t.delete_endpoint_slice("ns", "a-1");
    let (s, _) = t.apply();
    assert_eq!(addrs(&s, &k), vec!["10.0.0.2:8080", "10.0.0.3:8080"]);
}

#[test]
fn local_ready_counts_and_udp_staleness() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let p = ("dns", 53, Protocol::Udp);
    t.update_endpoint_slice(&slice(
        "a-1",
        "a",
        p,
        &[
            ("10.0.0.1", true, Some("node-1")),
            ("10.0.0.2", true, Some("node-2")),
        ],
    ))
    .unwrap();
    let (s, c) = t.apply();
    let nn = NamespacedName::new("ns", "a");
    assert_eq!(c.local_endpoints_changed.get(&nn), Some(&1));
    assert_eq!(s.local_ready_endpoints(&nn), 1);
    assert_eq!(
        c.newly_active_udp_services,
        vec![key("a", "dns", Protocol::Udp)]
    );

    t.update_endpoint_slice(&slice("a-1", "a", p, &[("10.0.0.2", true, Some("node-2"))]))
        .unwrap();
    let (s, c) = t.apply();
    assert_eq!(c.local_endpoints_changed.get(&nn), Some(&0));
    assert_eq!(s.local_ready_endpoints(&nn), 0);
    assert_eq!(
        c.deleted_udp_endpoints,
        vec![StaleEndpoint {
            service: key("a", "dns", Protocol::Udp),
            endpoint: "10.0.0.1:53".parse().unwrap()
        }]
    );
    assert!(c.newly_active_udp_services.is_empty());
}

#[test]
fn other_family_and_slice_moving_between_services() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let mut v6 = slice("a-1", "a", ("", 80, Protocol::Tcp), &[]);
    v6.address_type = IpFamily::V6;
    v6.endpoints.push(SliceEndpoint {
        addresses: vec!["fd00::1".parse().unwrap()],
        ..Default::default()
    });
    assert!(!t.update_endpoint_slice(&v6).unwrap());
    // A dual-stack service yields only the v4 cluster IP here.
    let mut d = svc("a", "10.96.0.1", &[("", 80, Protocol::Tcp)]);
    d.cluster_ips.push("fd00::1".parse().unwrap());
    t.update_service(&d).unwrap();
    let (s, _) = t.apply();
    assert_eq!(
        s.services.values().next().unwrap().cluster_ip.to_string(),
        "10.96.0.1"
    );
    // An IPv6-only service yields nothing for the v4 tracker.
    let mut only6 = svc("b", "fd00::2", &[("", 80, Protocol::Tcp)]);
    only6.cluster_ips = vec!["fd00::2".parse().unwrap()];
    t.update_service(&only6).unwrap();
    let (s, _) = t.apply();
    assert_eq!(s.services.len(), 1);

    let p = ("", 80, Protocol::Tcp);
    t.update_endpoint_slice(&slice("x", "a", p, &[("10.0.0.1", true, None)]))
        .unwrap();
    t.apply();
    t.update_endpoint_slice(&slice("x", "b", p, &[("10.0.0.1", true, None)]))
        .unwrap();
    let (s, c) = t.apply();
    assert!(s.endpoints_of(&key("a", "", Protocol::Tcp)).is_empty());
    assert_eq!(s.endpoints_of(&key("b", "", Protocol::Tcp)).len(), 1);
    assert_eq!(c.updated_services.len(), 2);
}

#[test]
fn node_changes() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let mut n = Node {
        name: "node-1".into(),
        ..Default::default()
    };
    n.labels
        .insert(crate::input::LABEL_TOPOLOGY_ZONE.into(), "zone-a".into());
    assert!(t.update_node(&n).unwrap());
    let (s, c) = t.apply();
    assert!(c.node_changed);
    assert_eq!(s.node.zone.as_deref(), Some("zone-a"));
    assert!(!t.update_node(&n).unwrap());
    let other = Node {
        name: "node-2".into(),
        ..Default::default()
    };
    assert!(!t.update_node(&other).unwrap());
}

#[test]
fn invalid_update_keeps_last_good_version() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let good = svc("a", "10.96.0.1", &[("", 80, Protocol::Tcp)]);
    t.update_service(&good).unwrap();
    t.update_service(&svc("b", "10.96.0.2", &[("", 80, Protocol::Tcp)]))
        .unwrap();
    t.apply();
    let mut bad = good.clone();
    bad.ports[0].port = 0;
    let err = t.update_service(&bad).unwrap_err();
    assert_eq!(err.object, "ns/a");
    assert_eq!(err.field, "spec.ports[0].port");
    assert!(!t.has_pending());
    let (s, _) = t.apply();
    assert_eq!(s.services.len(), 2);
}

#[test]
fn repeated_slice_ports_are_refused_few_or_many() {
    for n in [3usize, 40] {
        let mut s = slice(
            "sl",
            "a",
            ("p0", 1000, Protocol::Tcp),
            &[("10.0.0.1", true, None)],
        );
        s.ports = (0..n)
            .map(|i| SlicePort {
                name: format!("p{i}"),
                port: Some(1000 + i as u16),
                protocol: Some(Protocol::Tcp),
            })
            .collect();
        let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
        assert!(t.update_endpoint_slice(&s).is_ok());
        // The same name with another protocol is another port.
        s.ports[n - 1].name = "p1".into();
        s.ports[n - 1].protocol = Some(Protocol::Udp);
        assert!(t.update_endpoint_slice(&s).is_ok());
        s.ports[n - 1].protocol = Some(Protocol::Tcp);
        let err = t.update_endpoint_slice(&s).unwrap_err();
        assert_eq!(err.field, format!("ports[{}].name", n - 1), "{err}");
    }
}

// --- property: any event sequence ends in the state of the final objects ---

#[derive(Debug, Clone)]
enum Ev {
    Svc(u8, u8),
    DelSvc(u8),
    Slice(u8, u8, u8),
    DelSlice(u8),
    Apply,
}

fn gen_svc(i: u8, v: u8) -> Service {
    let proto = if v.is_multiple_of(2) {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let mut s = svc(
        &format!("s{i}"),
        &format!("10.96.0.{}", i + 1),
        &[("p", 80 + (v % 3) as u16, proto)],
    );
    if v.is_multiple_of(5) {
        s.ports.push(PortSpec {
            name: "q".into(),
            protocol: Some(Protocol::Udp),
            port: 53,
            node_port: 0,
        });
    }
    s
}

fn gen_slice(j: u8, owner: u8, v: u8) -> EndpointSlice {
    let eps: Vec<(String, bool, Option<&str>)> = (0..(v % 4))
        .map(|k| {
            (
                format!("10.0.{j}.{}", k + 1),
                !(v as u32 + k as u32).is_multiple_of(3),
                if k % 2 == 0 { Some("node-1") } else { None },
            )
        })
        .collect();
    let eps: Vec<(&str, bool, Option<&str>)> =
        eps.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
    let proto = if v.is_multiple_of(2) {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    slice(
        &format!("sl{j}"),
        &format!("s{}", owner % 3),
        ("p", 8080, proto),
        &eps,
    )
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (0u8..3, any::<u8>()).prop_map(|(i, v)| Ev::Svc(i, v)),
        (0u8..3).prop_map(Ev::DelSvc),
        (0u8..4, any::<u8>(), any::<u8>()).prop_map(|(j, o, v)| Ev::Slice(j, o, v)),
        (0u8..4).prop_map(Ev::DelSlice),
        Just(Ev::Apply),
    ]
}

proptest! {
    #[test]
    fn any_sequence_ends_in_the_final_state(events in proptest::collection::vec(ev(), 0..60)) {
        let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
        let mut svcs: BTreeMap<u8, Service> = BTreeMap::new();
        let mut slices: BTreeMap<u8, EndpointSlice> = BTreeMap::new();
        for e in events {
            match e {
                Ev::Svc(i, v) => { let s = gen_svc(i, v); t.update_service(&s).unwrap(); svcs.insert(i, s); }
                Ev::DelSvc(i) => { t.delete_service("ns", &format!("s{i}")); svcs.remove(&i); }
                Ev::Slice(j, o, v) => { let s = gen_slice(j, o, v); t.update_endpoint_slice(&s).unwrap(); slices.insert(j, s); }
                Ev::DelSlice(j) => { t.delete_endpoint_slice("ns", &format!("sl{j}")); slices.remove(&j); }
                Ev::Apply => { t.apply(); }
            }
        }
        let (got, _) = t.apply();
        let mut fresh = ChangeTracker::new(IpFamily::V4, "node-1");
        for s in svcs.values() { fresh.update_service(s).unwrap(); }
        for s in slices.values() { fresh.update_endpoint_slice(s).unwrap(); }
        let (want, _) = fresh.apply();
        prop_assert_eq!(&got.services, &want.services);
        // Compare endpoint lists with their conditions.
        let g: Vec<(ServicePortName, Vec<String>)> = got.endpoints.iter().map(|(k, v)| (k.clone(), v.iter().map(|e| format!("{e:?}")).collect())).collect();
        let w: Vec<(ServicePortName, Vec<String>)> = want.endpoints.iter().map(|(k, v)| (k.clone(), v.iter().map(|e| format!("{e:?}")).collect())).collect();
        prop_assert_eq!(g, w);
        for nn in svcs.values().map(|s| NamespacedName::new("ns", s.name.as_str())) {
            prop_assert_eq!(got.local_ready_endpoints(&nn), want.local_ready_endpoints(&nn));
        }
        prop_assert!(!t.has_pending());
    }
}

#[test]
fn ports_of_finds_exactly_one_services_ports() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for (name, ip) in [("a", "10.96.0.1"), ("b", "10.96.0.2"), ("c", "10.96.0.3")] {
        t.update_service(&svc(
            name,
            ip,
            &[
                ("dns", 53, Protocol::Udp),
                ("http", 80, Protocol::Tcp),
                ("sctp", 99, Protocol::Sctp),
            ],
        ))
        .unwrap();
    }
    let (s, _) = t.apply();
    let nn = NamespacedName::new("ns", "b");
    let got: Vec<String> = s.ports_of(&nn).map(|p| p.name.to_string()).collect();
    assert_eq!(got, vec!["ns/b:dns", "ns/b:http", "ns/b:sctp"]);
    assert_eq!(s.ports_of(&NamespacedName::new("ns", "zz")).count(), 0);
}

fn octet() -> impl Strategy<Value = u8> {
    // Short, long and prefix-sharing texts: 1 / 10 / 100, 2 / 25 / 255.
    prop_oneof![0u8..=12, 20u8..=30, 95u8..=130, 245u8..=255, any::<u8>()]
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        1u16..=100,
        790u16..=810,
        7990u16..=8100,
        65500u16..=65535,
        any::<u16>()
    ]
}

fn v4() -> impl Strategy<Value = std::net::SocketAddrV4> {
    ((octet(), octet(), octet(), octet()), port())
        .prop_map(|((a, b, c, d), p)| std::net::SocketAddrV4::new([a, b, c, d].into(), p))
}

proptest! {
    #[test]
    fn the_ipv4_key_orders_as_the_text(a in v4(), b in v4()) {
        prop_assert_eq!(
            v4_text_order(*a.ip(), decimal_text_order(a.port().into(), 5, 11, 0))
                .cmp(&v4_text_order(*b.ip(), decimal_text_order(b.port().into(), 5, 11, 0))),
            a.to_string().cmp(&b.to_string()),
            "{} vs {}", a, b
        );
    }

    #[test]
    fn endpoint_lists_are_in_text_order(
        v4s in proptest::collection::vec(v4(), 0..30),
        v6s in proptest::collection::vec((any::<[u16; 8]>(), port()), 0..30),
    ) {
        let lists: [Vec<SocketAddr>; 2] = [
            v4s.into_iter().map(SocketAddr::V4).collect(),
            v6s.into_iter()
                .map(|(s, p)| SocketAddr::new(std::net::Ipv6Addr::from(s).into(), p))
                .collect(),
        ];
        for addrs in lists {
            let eps: Vec<SliceEp> = addrs
                .iter()
                .map(|a| SliceEp {
                    ip: a.ip(),
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: None,
                    zone: None,
                    hints: None,
                })
                .collect();
            let raws: Vec<(&SliceEp, u16)> = eps.iter().zip(&addrs).map(|(e, a)| (e, a.port())).collect();
            let got: Vec<String> = ordered_endpoints(&raws, "node-1").iter().map(|e| e.addr.to_string()).collect();
            let mut want: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            want.sort();
            want.dedup();
            prop_assert_eq!(got, want);
        }
    }
}

#[test]
fn decimal_text_order_examples() {
    // "1" < "10" < "100" < "11" < "2" < "25" < "255" < "3" < "9" < "99".
    let texts = [1, 10, 100, 11, 2, 25, 255, 3, 9, 99];
    let codes: Vec<u64> = texts
        .iter()
        .map(|n| decimal_text_order(*n, 3, 11, 0))
        .collect();
    assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
    // "0" is the digit 0 (coded 1), then four missing digits.
    assert_eq!(decimal_text_order(0, 5, 11, 0), 11u64.pow(4));
    assert_eq!(
        decimal_text_order(65535, 5, 11, 0),
        7 * 11u64.pow(4) + 6 * 1331 + 6 * 121 + 4 * 11 + 6
    );
}

#[test]
fn interned_names_do_not_outlive_their_objects() {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for i in 0..5000 {
        let mut s = svc("a", "10.96.0.1", &[("", 80, Protocol::Tcp)]);
        s.namespace = format!("ns-{i}");
        t.update_service(&s).unwrap();
        t.apply();
        t.delete_service(&s.namespace, "a");
        // Deleting what was never seen interns nothing.
        t.delete_service(&format!("never-{i}"), "a");
        t.delete_endpoint_slice(&format!("never-{i}"), "a");
        t.apply();
    }
    assert!(t.interned.len() <= 1100, "{} names kept", t.interned.len());
    // Names still in use stay shared.
    let kept = svc("a", "10.96.0.1", &[("", 80, Protocol::Tcp)]);
    t.update_service(&kept).unwrap();
    t.apply();
    assert!(t.interned.contains("ns"));
}

/// The last octet is followed by `:`, which sorts after the digits:
/// `1.2.3.245:1` comes before `1.2.3.24:1` in text order (a proptest found
/// the key had it the other way).
#[test]
fn last_octet_sorts_before_a_longer_one_it_prefixes() {
    let p = decimal_text_order(1, 5, 11, 0);
    let a = v4_text_order("1.2.3.245".parse().unwrap(), p);
    let b = v4_text_order("1.2.3.24".parse().unwrap(), p);
    assert!(a < b, "1.2.3.245:1 < 1.2.3.24:1 as text");
    assert!("1.2.3.245:1" < "1.2.3.24:1");
    // Inner octets are followed by `.`, which sorts before the digits.
    let c = v4_text_order("1.2.24.9".parse().unwrap(), p);
    let d = v4_text_order("1.2.245.9".parse().unwrap(), p);
    assert!(c < d && "1.2.24.9:1" < "1.2.245.9:1");
}
