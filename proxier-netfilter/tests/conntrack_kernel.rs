//! Conntrack over netlink against the host kernel, in a network namespace
//! each test creates: real UDP packets through a DNAT rule make the flows,
//! the reconciler finds the stale ones, and the same 5-tuple then reaches
//! the new endpoint. Check by hand with `ip netns exec NS conntrack -L`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use proxier_core::{
    ChangeTracker, IpFamily, PortSpec, Protocol, Service, ServiceType, SyncRequest,
};
use proxier_core::{EndpointSlice, SliceEndpoint, SlicePort};
use proxier_netfilter::{Conntrack, ConntrackNetlink, Flow, FlowTuple, StaleFlows, clean_stale};
use proxier_netfilter::{IPPROTO_TCP as TCP, IPPROTO_UDP as UDP};
use proxier_testbed::{Netns, NsRuntime};

const VIP: &str = "10.96.0.10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sh(ns: &Netns, cmd: &str) {
    let out = ns.exec("sh", &["-c", cmd]).expect(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A UDP server on `addr` answering each datagram with its own address.
fn serve(ns: &Netns, addr: SocketAddr) {
    let sock = ns.enter(move || UdpSocket::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(addr.to_string().as_bytes(), from);
        }
    });
}

/// Sends one datagram from `client` and returns who answered.
fn ask(client: &UdpSocket) -> Option<String> {
    client.send(b"?").ok()?;
    let mut buf = [0u8; 64];
    let n = client.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn dnat_to(ns: &Netns, ep: &str) {
    sh(ns, "iptables -t nat -F OUTPUT");
    sh(
        ns,
        &format!(
            "iptables -t nat -A OUTPUT -d {VIP} -p udp --dport 53 -j DNAT --to-destination {ep}"
        ),
    );
}

/// A snapshot holding one UDP service `VIP:53` with `eps` (port 5353).
fn request(eps: &[&str]) -> SyncRequest {
    // Endpoints on loopback inside the namespace: local testing.
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1").with_loopback_endpoints(true);
    t.update_service(&Service {
        namespace: "ns".into(),
        name: "dns".into(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![ip(VIP)],
        ports: vec![PortSpec {
            name: "dns".into(),
            protocol: Some(Protocol::Udp),
            port: 53,
            node_port: 0,
        }],
        ..Service::default()
    })
    .unwrap();
    t.update_endpoint_slice(&EndpointSlice {
        namespace: "ns".into(),
        name: "dns-1".into(),
        service_name: "dns".into(),
        address_type: IpFamily::V4,
        ports: vec![SlicePort {
            name: "dns".into(),
            protocol: Some(Protocol::Udp),
            port: Some(5353),
        }],
        endpoints: eps
            .iter()
            .map(|a| SliceEndpoint {
                addresses: vec![ip(a)],
                node_name: Some("node-1".into()),
                ..SliceEndpoint::default()
            })
            .collect(),
        trigger_time: None,
    })
    .unwrap();
    let (snapshot, changes) = t.apply();
    SyncRequest {
        snapshot,
        changes,
        full: true,
        verify: false,
    }
}

/// The reconciler alone (a fresh tracker's change set would also name the
/// service as newly active, which deletes every flow to it).
fn reconciler(req: &SyncRequest) -> StaleFlows {
    StaleFlows::none(IpFamily::V4).reconcile(&req.snapshot, &[])
}

fn flow(proto: u8, src: (&str, u16), dst: (&str, u16), reply_src: (&str, u16)) -> Flow {
    Flow {
        protocol: proto,
        orig: FlowTuple {
            src: ip(src.0),
            dst: ip(dst.0),
            src_port: src.1,
            dst_port: dst.1,
        },
        reply: FlowTuple {
            src: ip(reply_src.0),
            dst: ip(src.0),
            src_port: reply_src.1,
            dst_port: src.1,
        },
        zone: 0,
        id: None,
        dnat: false,
    }
}

async fn flows_to(ct: &ConntrackNetlink, family: IpFamily, dst: IpAddr) -> Vec<Flow> {
    ct.dump(family, Default::default(), &move |f: &Flow| {
        f.orig.dst == dst
    })
    .await
    .unwrap()
    .0
}

/// A UDP client keeps one 5-tuple while its endpoint is replaced: the
/// stale flow pins it to the old endpoint until the cleanup deletes it;
/// then the same 5-tuple reaches the new one. A TCP flow and a UDP flow
/// to another address survive.
#[test]
fn udp_flow_follows_its_endpoint_after_cleanup() {
    let ns = Netns::new("ct-churn").unwrap();
    sh(
        &ns,
        "ip addr add 127.0.0.2/8 dev lo; ip addr add 127.0.0.3/8 dev lo",
    );
    sh(&ns, &format!("ip addr add {VIP}/32 dev lo"));
    serve(&ns, "127.0.0.2:5353".parse().unwrap());
    serve(&ns, "127.0.0.3:5353".parse().unwrap());
    dnat_to(&ns, "127.0.0.2:5353");
    let client = ns
        .enter(|| {
            let c = UdpSocket::bind("127.0.0.1:40053")?;
            c.connect((VIP, 53))?;
            c.set_read_timeout(Some(Duration::from_secs(2)))?;
            Ok::<_, std::io::Error>(c)
        })
        .unwrap()
        .unwrap();
    assert_eq!(ask(&client).as_deref(), Some("127.0.0.2:5353"));
    // The endpoint moves; the conntrack entry still pins the 5-tuple.
    dnat_to(&ns, "127.0.0.3:5353");
    assert_eq!(
        ask(&client).as_deref(),
        Some("127.0.0.2:5353"),
        "pinned by conntrack"
    );

    let rt = NsRuntime::start(&ns).unwrap();
    let report = rt.block_on(async {
        let ct = ConntrackNetlink::new().unwrap();
        let unrelated = flow(
            UDP,
            ("127.0.0.1", 1111),
            ("192.0.2.7", 53),
            ("192.0.2.7", 53),
        );
        let tcp = flow(TCP, ("127.0.0.1", 2222), (VIP, 53), ("127.0.0.2", 5353));
        assert_eq!(ct.create(&[unrelated], 120).await.unwrap(), 1);
        // TCP needs a state to be created; a UDP-only table is enough
        // for the rest of this test when the kernel refuses it.
        let tcp_made = ct.create(&[tcp], 120).await.is_ok();
        let before = flows_to(&ct, IpFamily::V4, ip(VIP)).await;
        assert!(
            before
                .iter()
                .any(|f| f.protocol == UDP && f.reply.src == ip("127.0.0.2")),
            "{before:?}"
        );
        let req = request(&["127.0.0.3"]);
        // The real DNAT set IPS_DST_NAT: the kernel-filtered pass of the
        // iptables and nftables backends sees it.
        let (dnated, _) = ct
            .dump(
                IpFamily::V4,
                proxier_netfilter::DumpFilter {
                    protocol: Some(UDP),
                    dnat_only: true,
                },
                &|f: &Flow| f.orig.dst == ip(VIP),
            )
            .await
            .unwrap();
        assert_eq!(dnated.len(), 1, "{dnated:?}");
        assert!(dnated[0].dnat && dnated[0].reply.src == ip("127.0.0.2"));
        let stale = reconciler(&req).dnat_only();
        let report = clean_stale(&ct, &stale).await.unwrap();
        let after = flows_to(&ct, IpFamily::V4, ip(VIP)).await;
        assert!(
            !after
                .iter()
                .any(|f| f.protocol == UDP && f.reply.src == ip("127.0.0.2")),
            "stale flow still there: {after:?}"
        );
        assert_eq!(
            after.iter().any(|f| f.protocol == TCP),
            tcp_made,
            "TCP untouched"
        );
        assert_eq!(
            flows_to(&ct, IpFamily::V4, ip("192.0.2.7")).await.len(),
            1,
            "unrelated flow untouched"
        );
        report
    });
    assert_eq!(report.deleted, 1, "{report:?}");
    // The kernel dumped only the DNATed UDP flow: the unrelated UDP flow
    // and the TCP flow never left it (CTA_FILTER and CTA_STATUS, 6.18).
    assert_eq!(report.seen, 1, "{report:?}");
    assert_eq!(
        ask(&client).as_deref(),
        Some("127.0.0.3:5353"),
        "same 5-tuple, new endpoint"
    );
}

/// A service whose endpoints all go away loses its flows (kubernetes
/// #139628: kube-proxy skipped it and a sender stayed blackholed); a flow
/// made behind the proxier's back (no event) to a non-serving endpoint is
/// found; flows of a serving endpoint stay. IPv4 and IPv6, and a flow in a
/// conntrack zone.
#[test]
fn reconciler_deletes_flows_no_event_named_in_both_families() {
    let ns = Netns::new("ct-recon").unwrap();
    let rt = NsRuntime::start(&ns).unwrap();
    rt.block_on(async {
        let ct = Arc::new(ConntrackNetlink::new().unwrap());
        // No endpoints at all: every flow to the service goes.
        let orphan = flow(UDP, ("10.1.0.1", 5000), (VIP, 53), ("10.2.0.9", 5353));
        let served = flow(UDP, ("10.1.0.2", 5000), (VIP, 53), ("127.0.0.3", 5353));
        let mut zoned = flow(UDP, ("10.1.0.3", 5000), (VIP, 53), ("10.2.0.8", 5353));
        zoned.zone = 7;
        ct.create(&[orphan, served, zoned], 120).await.unwrap();
        let req = request(&[]);
        let stale = reconciler(&req);
        let r = clean_stale(&*ct, &stale).await.unwrap();
        assert_eq!(r.deleted, 3, "no serving endpoint: all three go ({r:?})");
        assert!(flows_to(&ct, IpFamily::V4, ip(VIP)).await.is_empty());

        // With an endpoint: only the flow not answered by it goes.
        ct.create(&[orphan, served], 120).await.unwrap();
        let req = request(&["127.0.0.3"]);
        let stale = reconciler(&req);
        clean_stale(&*ct, &stale).await.unwrap();
        let left = flows_to(&ct, IpFamily::V4, ip(VIP)).await;
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].reply.src, ip("127.0.0.3"));

        // IPv6: dump, filter and delete by tuple.
        let v6 = flow(
            UDP,
            ("fd00::1", 5000),
            ("fd00:96::10", 53),
            ("fd00:1::9", 5353),
        );
        let v6_other = flow(
            UDP,
            ("fd00::1", 5001),
            ("fd00:96::11", 53),
            ("fd00:96::11", 53),
        );
        ct.create(&[v6, v6_other], 120).await.unwrap();
        let stale = StaleFlows::filters(
            IpFamily::V6,
            [proxier_netfilter::ConntrackFilter {
                orig_dst: Some(ip("fd00:96::10")),
                ..Default::default()
            }],
        );
        let r = clean_stale(&*ct, &stale).await.unwrap();
        assert_eq!((r.stale, r.deleted), (1, 1), "{r:?}");
        let (v6_left, _) = ct
            .dump(IpFamily::V6, Default::default(), &|_: &Flow| true)
            .await
            .unwrap();
        assert_eq!(v6_left.len(), 1);
        assert_eq!(v6_left[0].orig.dst, ip("fd00:96::11"));
        // A v4 dump holds no v6 flow.
        let (all_v4, _) = ct
            .dump(IpFamily::V4, Default::default(), &|_: &Flow| true)
            .await
            .unwrap();
        assert!(all_v4.iter().all(|f| f.orig.dst.is_ipv4()));
    });
}

/// A delete the kernel refuses is reported with the flow it concerned.
#[test]
fn refused_request_names_the_flow() {
    let ns = Netns::new("ct-refuse").unwrap();
    let rt = NsRuntime::start(&ns).unwrap();
    let e = rt.block_on(async {
        let ct = ConntrackNetlink::new().unwrap();
        // A flow the kernel cannot create: port 0 on both sides of a
        // tuple of mixed families is refused (EINVAL).
        let mut bad = flow(UDP, ("10.1.0.1", 5000), (VIP, 53), ("10.2.0.9", 5353));
        bad.reply.dst = ip("fd00::1");
        ct.create(&[bad], 10).await.unwrap_err()
    });
    let text = proxier_core::ErrorChain(&e).to_string();
    assert!(
        text.contains("conntrack -I") && text.contains(VIP),
        "{text}"
    );
}
