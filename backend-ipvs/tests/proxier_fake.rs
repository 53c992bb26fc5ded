//! The proxier's logic against the in-memory seams: kube-proxy's
//! TestNodePortIPv4 expectations; one virtual server the kernel refuses
//! is reported with its service's name while every other service lands;
//! a one-endpoint change costs the same at 10 and at 1,000 services, with
//! or without the firewall-mark virtual servers of eTP: Local services;
//! those marks are kept, moved and adopted after a restart.

use std::sync::Arc;

use backend_ipvs::Dest;
use backend_ipvs::{Config, IpvsProxier, Kernel, Op};
use backend_ipvs::{FakeIpset, FakeIpvs, FakeLinks};
use proxier_core::{
    ChangeTracker, IpFamily, Protocol, Proxier, ServiceType, SyncRequest, TrafficPolicy,
};
use proxier_netfilter::Variant;
use proxier_netfilter::{FakeConntrack, FakeIptables, FakeSysctl};
use proxier_testbed::{ep, service, slice};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

struct Bed {
    p: IpvsProxier,
    ipvs: FakeIpvs,
    ipset: FakeIpset,
    links: FakeLinks,
    iptables: Arc<FakeIptables>,
    tracker: ChangeTracker,
    synced: bool,
}

fn bed() -> Bed {
    bed_over(
        FakeIpvs::default(),
        FakeIpset::default(),
        FakeLinks::default(),
        Arc::new(FakeIptables::new(Variant::Nft)),
    )
}

/// A proxier over existing fake state (a restart).
fn bed_over(
    ipvs: FakeIpvs,
    ipset: FakeIpset,
    links: FakeLinks,
    iptables: Arc<FakeIptables>,
) -> Bed {
    let kernel = Kernel {
        ipvs: Box::new(ipvs.clone()),
        links: Arc::new(links.clone()),
        ipset: Arc::new(ipset.clone()),
        iptables: iptables.clone(),
        conntrack: Arc::new(FakeConntrack::default()),
        sysctl: Arc::new(FakeSysctl::default()),
    };
    let mut cfg = Config::new(IpFamily::V4);
    cfg.node_ips = vec!["100.101.102.103".parse().unwrap()];
    Bed {
        p: IpvsProxier::new(cfg, kernel).unwrap(),
        ipvs,
        ipset,
        links,
        iptables,
        tracker: ChangeTracker::new(IpFamily::V4, "node-1"),
        synced: false,
    }
}

impl Bed {
    async fn sync(&mut self) -> Result<proxier_core::SyncStats, proxier_core::ProxierError> {
        let (snapshot, changes) = self.tracker.apply();
        let req = SyncRequest {
            snapshot,
            changes,
            full: !self.synced,
            verify: false,
        };
        self.synced = true;
        self.p.sync(&req).await
    }

    fn vs(&self) -> Vec<String> {
        self.ipvs
            .0
            .lock()
            .unwrap()
            .services
            .values()
            .flat_map(|(s, ds)| {
                std::iter::once(Op::AddService(s.clone()).to_string()).chain(
                    ds.values()
                        .map(|d: &Dest| Op::AddDest(s.clone(), d.clone()).to_string()),
                )
            })
            .collect()
    }

    fn set(&self, name: &str) -> Vec<String> {
        self.ipset
            .sets
            .lock()
            .unwrap()
            .get(name)
            .map(|(_, e)| e.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// kube-proxy's TestNodePortIPv4, "1 service with node port, has 2
/// endpoints" (UDP variant for the sets).
#[tokio::test]
async fn node_port_like_kube_proxy() {
    let mut b = bed();
    let mut s = service("ns1", "svc1", "10.20.30.41", &[("p80", 80, UDP)]);
    s.service_type = ServiceType::NodePort;
    s.ports[0].node_port = 3001;
    let sl = slice(
        "ns1",
        "svc1",
        &[("p80", 80, UDP)],
        vec![ep("10.180.0.1".parse().unwrap(), "node-2")],
    );
    b.tracker.update_service(&s).unwrap();
    b.tracker.update_endpoint_slice(&sl).unwrap();
    b.sync().await.unwrap();
    let mut vs = b.vs();
    vs.sort();
    assert_eq!(
        vs,
        vec![
            "ipvsadm -A -u 10.20.30.41:80 -s rr",
            "ipvsadm -A -u 100.101.102.103:3001 -s rr",
            "ipvsadm -a -u 10.20.30.41:80 -r 10.180.0.1:80 -m -w 1",
            "ipvsadm -a -u 100.101.102.103:3001 -r 10.180.0.1:80 -m -w 1",
        ]
    );
    assert_eq!(b.set("KUBE-NODE-PORT-UDP"), vec!["3001"]);
    assert_eq!(b.set("KUBE-CLUSTER-IP"), vec!["10.20.30.41,udp:80"]);
    assert_eq!(b.set("KUBE-IPVS-IPS"), vec!["10.20.30.41"]);
    let bound: Vec<String> = b.links.links.lock().unwrap()["kube-ipvs0"]
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(bound, vec!["10.20.30.41"], "node IPs are never bound");
}

#[tokio::test]
async fn a_refused_virtual_server_is_named_and_the_rest_lands() {
    let mut b = bed();
    for i in 0..5u8 {
        let name = format!("svc{i}");
        let cip = format!("10.96.0.{}", 10 + i);
        b.tracker
            .update_service(&service("default", &name, &cip, &[("http", 80, TCP)]))
            .unwrap();
        b.tracker
            .update_endpoint_slice(&slice(
                "default",
                &name,
                &[("http", 8080, TCP)],
                vec![ep(format!("10.0.1.{}", 10 + i).parse().unwrap(), "node-1")],
            ))
            .unwrap();
    }
    b.ipvs
        .0
        .lock()
        .unwrap()
        .fail
        .insert((6, "10.96.0.12".parse().unwrap(), 80, 0));
    let err = b.sync().await.unwrap_err();
    // Typed: the failure names the service port and keeps the kernel's
    // refusal; the log line (ErrorChain) prints both.
    let failures = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<backend_ipvs::Failures>())
        .expect("the failures are the source");
    assert!(matches!(
        &failures.0[..],
        [backend_ipvs::Failure::Ipvs { who: Some(n), .. }] if n.to_string() == "default/svc2:http"
    ));
    let e = proxier_core::ErrorChain(&err).to_string();
    assert!(
        e.contains(
            "default/svc2:http: ipvsadm -A -t 10.96.0.12:80 -s rr: No such file or directory"
        ),
        "{e}"
    );
    assert_eq!(e.matches("default/").count(), 1, "only svc2 failed: {e}");
    let vs = b.vs();
    for i in [0u8, 1, 3, 4] {
        assert!(
            vs.contains(&format!("ipvsadm -A -t 10.96.0.{}:80 -s rr", 10 + i)),
            "{vs:?}"
        );
    }
    // Its set entries and address are still in place, so when the kernel
    // accepts it on the retry (a full sync) nothing else moves.
    assert_eq!(b.set("KUBE-CLUSTER-IP").len(), 5);
    b.ipvs.0.lock().unwrap().fail.clear();
    b.ipvs.0.lock().unwrap().log.clear();
    b.synced = false;
    b.sync().await.unwrap();
    let log = b.ipvs.0.lock().unwrap().log.clone();
    assert_eq!(log.len(), 2, "the service and its real server: {log:?}");
}

async fn one_endpoint_change_ops(n: usize, etp_local: bool) -> (usize, u64) {
    let mut b = bed();
    for i in 0..n {
        let name = format!("svc{i}");
        let cip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let mut s = service("default", &name, &cip, &[("http", 80, TCP)]);
        if etp_local {
            // A LoadBalancer with a node port: three virtual servers and
            // the firewall-mark one.
            s.service_type = ServiceType::LoadBalancer;
            s.ports[0].node_port = 30000 + i as u16;
            s.load_balancer_ips = vec![
                format!("192.0.{}.{}", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap(),
            ];
            s.external_traffic_policy = TrafficPolicy::Local;
            s.health_check_node_port = 40000 + i as u16;
        }
        b.tracker.update_service(&s).unwrap();
        let eps = (0..10)
            .map(|j| {
                ep(
                    format!("10.1.{}.{}", i % 250, j + 1).parse().unwrap(),
                    "node-2",
                )
            })
            .collect();
        b.tracker
            .update_endpoint_slice(&slice("default", &name, &[("http", 8080, TCP)], eps))
            .unwrap();
    }
    b.sync().await.unwrap();
    let eps = (0..11)
        .map(|j| ep(format!("10.1.0.{}", j + 1).parse().unwrap(), "node-2"))
        .collect();
    b.tracker
        .update_endpoint_slice(&slice("default", "svc0", &[("http", 8080, TCP)], eps))
        .unwrap();
    let before = b.ipvs.0.lock().unwrap().sent;
    b.sync().await.unwrap();
    let r = b.p.last_report().clone();
    assert!(!r.full);
    if etp_local {
        assert_eq!(r.virtual_servers, 4 * n, "{r:?}");
    }
    (r.ipvs_writes, b.ipvs.0.lock().unwrap().sent - before)
}

#[tokio::test]
async fn a_one_endpoint_change_is_constant_work() {
    let small = one_endpoint_change_ops(10, false).await;
    let large = one_endpoint_change_ops(1000, false).await;
    assert_eq!(small, (1, 2), "one GET_DEST and one NEW_DEST");
    assert_eq!(small, large);
    // eTP Local: the endpoint is remote, so only the cluster IP's and the
    // firewall-mark virtual server's real servers change (two GET_DEST
    // and two NEW_DEST), whatever the number of services.
    let small = one_endpoint_change_ops(10, true).await;
    let large = one_endpoint_change_ops(1000, true).await;
    assert_eq!(small, (2, 4 + 2), "{small:?}");
    assert_eq!(small, large);
}

/// An eTP: Local LoadBalancer: its LB IP and node port list the local
/// endpoint only; one firewall-mark virtual server lists both, its mark
/// on each external destination in `KUBE-EXTERNAL-LOCAL-MARK`, with the
/// mangle rule that applies it. The mark is kept across syncs, given
/// back when the policy changes, and adopted after a restart with zero
/// writes.
#[tokio::test]
async fn etp_local_gets_a_firewall_mark_virtual_server() {
    let mut b = bed();
    let mut s = service("ns", "lb", "10.96.0.10", &[("p", 80, TCP)]);
    s.service_type = ServiceType::LoadBalancer;
    s.ports[0].node_port = 30080;
    s.load_balancer_ips = vec!["192.0.2.10".parse().unwrap()];
    s.external_traffic_policy = TrafficPolicy::Local;
    s.health_check_node_port = 30180;
    let sl = slice(
        "ns",
        "lb",
        &[("p", 8080, TCP)],
        vec![
            ep("10.1.0.1".parse().unwrap(), "node-1"),
            ep("10.1.0.2".parse().unwrap(), "node-2"),
        ],
    );
    b.tracker.update_service(&s).unwrap();
    b.tracker.update_endpoint_slice(&sl).unwrap();
    // Another eTP Local service first takes mark 1.
    let mut other = s.clone();
    other.name = "a-first".into();
    other.cluster_ips = vec!["10.96.0.9".parse().unwrap()];
    other.load_balancer_ips = vec!["192.0.2.9".parse().unwrap()];
    other.ports[0].node_port = 30079;
    b.tracker.update_service(&other).unwrap();
    b.sync().await.unwrap();
    let vs = b.vs();
    let has = |l: &str| vs.iter().any(|v| v == l);
    assert!(has("ipvsadm -A -f 2 -s rr"), "{vs:#?}");
    assert!(has("ipvsadm -a -f 2 -r 10.1.0.1:8080 -m -w 1"));
    assert!(has("ipvsadm -a -f 2 -r 10.1.0.2:8080 -m -w 1"));
    assert!(has("ipvsadm -a -t 192.0.2.10:80 -r 10.1.0.1:8080 -m -w 1"));
    assert!(!has("ipvsadm -a -t 192.0.2.10:80 -r 10.1.0.2:8080 -m -w 1"));
    assert!(!has(
        "ipvsadm -a -t 100.101.102.103:30080 -r 10.1.0.2:8080 -m -w 1"
    ));
    assert!(has("ipvsadm -A -f 1 -s rr"), "a-first has no endpoints");
    assert_eq!(
        b.set("KUBE-EXTERNAL-LOCAL-MARK"),
        vec![
            "100.101.102.103,tcp:30079 skbmark 0x1/0x1fff",
            "100.101.102.103,tcp:30080 skbmark 0x2/0x1fff",
            "192.0.2.10,tcp:80 skbmark 0x2/0x1fff",
            "192.0.2.9,tcp:80 skbmark 0x1/0x1fff",
        ]
    );
    let mangle = b.iptables.rules("mangle", "KUBE-EXTERNAL-LOCAL");
    assert_eq!(mangle.len(), 1, "{mangle:?}");
    assert!(mangle[0].ends_with("-j SET --map-set KUBE-EXTERNAL-LOCAL-MARK dst,dst --map-mark"));
    let post = b.iptables.rules("nat", "KUBE-POSTROUTING");
    assert!(
        post.iter().any(|r| r
            .contains("-m mark ! --mark 0x0/0x1fff -m addrtype --src-type LOCAL -j MASQUERADE")),
        "{post:?}"
    );
    // A restart adopts the marks: nothing is written.
    let mut again = bed_over(
        b.ipvs.clone(),
        b.ipset.clone(),
        b.links.clone(),
        b.iptables.clone(),
    );
    again.tracker.update_service(&other).unwrap();
    again.tracker.update_service(&s).unwrap();
    again.tracker.update_endpoint_slice(&sl).unwrap();
    again.sync().await.unwrap();
    let r = again.p.last_report().clone();
    assert_eq!((r.ipvs_writes, r.ipset_changes), (0, 0), "{r:?}");
    // The first service leaves eTP Local: its firewall-mark virtual
    // server and entries go; the other keeps its mark.
    other.external_traffic_policy = TrafficPolicy::Cluster;
    again.tracker.update_service(&other).unwrap();
    again.sync().await.unwrap();
    assert!(!again.p.last_report().full);
    let vs = again.vs();
    assert!(!vs.iter().any(|v| v.contains("-f 1")), "{vs:#?}");
    assert!(vs.iter().any(|v| v == "ipvsadm -A -f 2 -s rr"));
    assert_eq!(again.set("KUBE-EXTERNAL-LOCAL-MARK").len(), 2);
    // A new one reuses the free mark.
    let mut third = s.clone();
    third.name = "third".into();
    third.cluster_ips = vec!["10.96.0.11".parse().unwrap()];
    third.load_balancer_ips = vec!["192.0.2.11".parse().unwrap()];
    third.ports[0].node_port = 30081;
    again.tracker.update_service(&third).unwrap();
    again.sync().await.unwrap();
    assert!(again.vs().iter().any(|v| v == "ipvsadm -A -f 1 -s rr"));
    // Cleanup removes the firewall-mark virtual servers too, and the
    // mangle chains.
    again.p.cleanup().await.unwrap();
    assert!(again.vs().is_empty(), "{:#?}", again.vs());
    assert!(
        again
            .iptables
            .rules("mangle", "KUBE-EXTERNAL-LOCAL")
            .is_empty()
    );
}

/// iTP: Local with endpoints on other nodes only: the cluster IP goes to
/// `KUBE-NO-LOCAL-ENDPOINTS` (new flows dropped in mangle); with no
/// endpoint at all it leaves (refused by the empty virtual server).
#[tokio::test]
async fn itp_local_without_local_endpoints_is_dropped() {
    let mut b = bed();
    let mut s = service("ns", "itp", "10.96.0.20", &[("p", 80, TCP)]);
    s.internal_traffic_policy = TrafficPolicy::Local;
    b.tracker.update_service(&s).unwrap();
    b.tracker
        .update_endpoint_slice(&slice(
            "ns",
            "itp",
            &[("p", 8080, TCP)],
            vec![ep("10.1.0.2".parse().unwrap(), "node-2")],
        ))
        .unwrap();
    b.sync().await.unwrap();
    assert_eq!(b.set("KUBE-NO-LOCAL-ENDPOINTS"), vec!["10.96.0.20,tcp:80"]);
    let drop = b.iptables.rules("mangle", "KUBE-NO-LOCAL-ENDPOINTS");
    assert_eq!(drop.len(), 1);
    assert!(drop[0].ends_with(
        "-m conntrack --ctstate NEW -m set --match-set KUBE-NO-LOCAL-ENDPOINTS dst,dst -j DROP"
    ));
    // A local endpoint appears: the entry goes.
    b.tracker
        .update_endpoint_slice(&slice(
            "ns",
            "itp",
            &[("p", 8080, TCP)],
            vec![
                ep("10.1.0.1".parse().unwrap(), "node-1"),
                ep("10.1.0.2".parse().unwrap(), "node-2"),
            ],
        ))
        .unwrap();
    b.sync().await.unwrap();
    assert!(b.set("KUBE-NO-LOCAL-ENDPOINTS").is_empty());
    // No endpoint anywhere: refused, not dropped.
    b.tracker
        .update_endpoint_slice(&slice("ns", "itp", &[("p", 8080, TCP)], vec![]))
        .unwrap();
    b.sync().await.unwrap();
    assert!(b.set("KUBE-NO-LOCAL-ENDPOINTS").is_empty());
}

/// A partial sync binds and unbinds exactly the addresses whose services
/// came and went, and keeps a shared one while another port uses it.
#[tokio::test]
async fn partial_syncs_move_addresses_and_entries() {
    let mut b = bed();
    let two = service(
        "default",
        "two",
        "10.96.0.50",
        &[("a", 80, TCP), ("b", 81, TCP)],
    );
    b.tracker.update_service(&two).unwrap();
    b.tracker
        .update_service(&service("default", "one", "10.96.0.51", &[("a", 80, TCP)]))
        .unwrap();
    b.sync().await.unwrap();
    let bound = |b: &Bed| -> Vec<String> {
        b.links.links.lock().unwrap()["kube-ipvs0"]
            .iter()
            .map(|ip| ip.to_string())
            .collect()
    };
    assert_eq!(bound(&b), vec!["10.96.0.50", "10.96.0.51"]);
    // Port b goes: the address stays (port a still uses it).
    let mut only_a = two.clone();
    only_a.ports.truncate(1);
    b.tracker.update_service(&only_a).unwrap();
    b.sync().await.unwrap();
    assert!(!b.p.last_report().full);
    assert_eq!(bound(&b), vec!["10.96.0.50", "10.96.0.51"]);
    assert_eq!(
        b.set("KUBE-CLUSTER-IP"),
        vec!["10.96.0.50,tcp:80", "10.96.0.51,tcp:80"]
    );
    // Service one goes: its address and entries go.
    b.tracker.delete_service("default", "one");
    b.sync().await.unwrap();
    assert_eq!(bound(&b), vec!["10.96.0.50"]);
    assert_eq!(b.set("KUBE-IPVS-IPS"), vec!["10.96.0.50"]);
    assert_eq!(b.set("KUBE-CLUSTER-IP"), vec!["10.96.0.50,tcp:80"]);
    assert_eq!(b.p.last_report().address_changes, 1);
    // And comes back.
    b.tracker
        .update_service(&service("default", "one", "10.96.0.51", &[("a", 80, TCP)]))
        .unwrap();
    b.sync().await.unwrap();
    assert_eq!(bound(&b), vec!["10.96.0.50", "10.96.0.51"]);
    assert_eq!(b.set("KUBE-IPVS-IPS"), vec!["10.96.0.50", "10.96.0.51"]);
    assert_eq!(b.vs().len(), 2);
}

/// The sysctls kube-proxy sets, strict ARP only when asked, and the
/// connection timeouts only when given (`ipvsadm --set`).
#[tokio::test]
async fn sysctls_strict_arp_and_timeouts() {
    for strict in [false, true] {
        let ipvs = FakeIpvs::default();
        let sysctl = Arc::new(FakeSysctl::with(&[(
            "kernel/osrelease",
            "5.4.0-100-generic",
        )]));
        let kernel = Kernel {
            ipvs: Box::new(ipvs.clone()),
            links: Arc::new(FakeLinks::default()),
            ipset: Arc::new(FakeIpset::default()),
            iptables: Arc::new(FakeIptables::new(Variant::Nft)),
            conntrack: Arc::new(FakeConntrack::default()),
            sysctl: sysctl.clone(),
        };
        let mut cfg = Config::new(IpFamily::V4);
        cfg.node_ips = vec!["192.168.0.1".parse().unwrap()];
        cfg.strict_arp = strict;
        if strict {
            cfg.timeouts = backend_ipvs::Timeouts {
                tcp: 900,
                tcp_fin: 120,
                udp: 60,
            };
        }
        let mut p = IpvsProxier::new(cfg, kernel).unwrap();
        let t = ChangeTracker::new(IpFamily::V4, "node-1");
        let req = SyncRequest {
            snapshot: t.snapshot().clone(),
            changes: Default::default(),
            full: true,
            verify: false,
        };
        p.sync(&req).await.unwrap();
        let s = sysctl.values.lock().unwrap().clone();
        for (k, v) in [
            ("net/ipv4/vs/conntrack", "1"),
            ("net/ipv4/vs/expire_nodest_conn", "1"),
            ("net/ipv4/vs/expire_quiescent_template", "1"),
            ("net/ipv4/ip_forward", "1"),
            // A 5.4 kernel: conn_reuse_mode=0 (kubernetes #93297).
            ("net/ipv4/vs/conn_reuse_mode", "0"),
        ] {
            assert_eq!(s.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(
            s.contains_key("net/ipv4/conf/all/arp_ignore"),
            strict,
            "strict ARP only when asked"
        );
        if strict {
            assert_eq!(s["net/ipv4/conf/all/arp_announce"], "2");
        }
        let t = ipvs.0.lock().unwrap().timeouts;
        assert_eq!(t.is_some(), strict, "timeouts only when given");
    }
}

/// A verifying sync reconciles like a full one and says what it had to
/// write again: nothing while the kernel is as written, the virtual
/// servers after `ipvsadm -C`, the address after `ip addr flush dev
/// kube-ipvs0`, the set entries after `ipset flush`.
#[tokio::test]
async fn a_verifying_sync_repairs_what_others_removed() {
    let mut b = bed();
    let s = service("ns1", "svc1", "10.20.30.41", &[("p80", 80, TCP)]);
    let sl = slice(
        "ns1",
        "svc1",
        &[("p80", 80, TCP)],
        vec![ep("10.180.0.1".parse().unwrap(), "node-2")],
    );
    b.tracker.update_service(&s).unwrap();
    b.tracker.update_endpoint_slice(&sl).unwrap();
    b.sync().await.unwrap();
    let (vs, cip) = (b.vs(), b.set("KUBE-CLUSTER-IP"));
    let verify = |b: &mut Bed| {
        let (snapshot, changes) = b.tracker.apply();
        SyncRequest {
            snapshot,
            changes,
            full: false,
            verify: true,
        }
    };
    let req = verify(&mut b);
    let st = b.p.sync(&req).await.unwrap();
    assert_eq!(st.repaired, None, "nothing was changed");
    assert_eq!(st.written, 0);

    b.ipvs.0.lock().unwrap().services.clear();
    let req = verify(&mut b);
    let st = b.p.sync(&req).await.unwrap();
    let found = st.repaired.expect("ipvsadm -C not seen");
    assert!(found.starts_with("2 IPVS writes"), "{found}");
    assert_eq!(b.vs(), vs);

    b.links
        .links
        .lock()
        .unwrap()
        .get_mut("kube-ipvs0")
        .unwrap()
        .clear();
    b.ipset
        .sets
        .lock()
        .unwrap()
        .get_mut("KUBE-CLUSTER-IP")
        .unwrap()
        .1
        .clear();
    let req = verify(&mut b);
    let found =
        b.p.sync(&req)
            .await
            .unwrap()
            .repaired
            .expect("flushes not seen");
    assert!(
        found.contains("1 kube-ipvs0 address changes, 1 ipset entry changes"),
        "{found}"
    );
    assert_eq!(b.set("KUBE-CLUSTER-IP"), cip);
    let req = verify(&mut b);
    assert_eq!(b.p.sync(&req).await.unwrap().repaired, None);
}
