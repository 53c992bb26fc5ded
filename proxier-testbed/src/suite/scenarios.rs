//! The behaviour suite's scenarios, one function per [`Feature`]: each
//! sets up its Services and EndpointSlices through [`Ctx`], sends real
//! TCP or UDP traffic through the topology and asserts what kube-proxy's
//! iptables mode would do.

use super::*;

/// [`Feature::ClusterIpTcp`] and [`Feature::ClusterIpUdp`].
pub(super) fn cluster_ip(ctx: &mut Ctx, feature: Feature) {
    let cip = ctx.at(CIP);
    let proto = if feature == Feature::ClusterIpTcp {
        TCP
    } else {
        UDP
    };
    let port = if proto == TCP { PORT } else { 53 };
    ctx.serve(&ALL_EPS, TARGET);
    let s = web(ctx, "web", CIP);
    let sl = web_slice("web", ctx, &ALL_EPS);
    ctx.apply(&[s], &[sl]);
    let out = ctx.replies(Where::ClientPod, proto, None, sa(cip, port), 40);
    let servers = Ctx::servers(&out);
    let all: BTreeSet<IpAddr> = ALL_EPS.iter().map(|w| ctx.ip_of(*w)).collect();
    assert!(servers.is_subset(&all), "{servers:?}");
    assert!(
        servers.len() >= 3,
        "40 requests should spread over 4 endpoints: {servers:?}"
    );
    for o in &out {
        assert_eq!(o.server().map(|s| s.port()), Some(TARGET));
    }
    // From the node itself (OUTPUT path) too.
    ctx.replies(Where::Node, proto, None, sa(cip, port), 5);
}

/// [`Feature::MultiPort`].
pub(super) fn multi_port(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    ctx.serve(&[Where::Local(0)], TARGET);
    ctx.serve(&[Where::Local(0)], 9090);
    let mut s = service(
        "default",
        "multi",
        CIP.0,
        &[("http", 80, TCP), ("alt", 81, TCP), ("dns", 53, UDP)],
    );
    s.cluster_ips = ctx.both(CIP);
    let e = ep(ctx.ip_of(Where::Local(0)), "node-1");
    let sl = slice(
        "default",
        "multi",
        &[
            ("http", TARGET, TCP),
            ("alt", 9090, TCP),
            ("dns", TARGET, UDP),
        ],
        vec![e],
    );
    ctx.apply(&[s], &[sl]);
    let a = ctx.replies(Where::ClientPod, TCP, None, sa(cip, 80), 3);
    let b = ctx.replies(Where::ClientPod, TCP, None, sa(cip, 81), 3);
    let c = ctx.replies(Where::ClientPod, UDP, None, sa(cip, 53), 3);
    assert!(
        a.iter()
            .all(|o| o.server().map(|s| s.port()) == Some(TARGET))
    );
    assert!(b.iter().all(|o| o.server().map(|s| s.port()) == Some(9090)));
    assert!(
        c.iter()
            .all(|o| o.server().map(|s| s.port()) == Some(TARGET))
    );
    // A port the service does not have is not proxied.
    let other = ctx.topo.tcp(Where::ClientPod, None, sa(cip, 82), SHORT);
    assert!(other.server().is_none(), "{other:?}");
}

/// [`Feature::NoEndpointsRejected`].
pub(super) fn no_endpoints_rejected(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    ctx.apply(&[web(ctx, "empty", CIP)], &[]);
    let t0 = std::time::Instant::now();
    let o = ctx.topo.tcp(
        Where::ClientPod,
        None,
        sa(cip, PORT),
        Duration::from_secs(3),
    );
    assert_eq!(o, Outcome::Refused, "TCP to a service without endpoints");
    // Linux's TCP over IPv6 takes the first ICMPv6 port-unreachable
    // for a SYN as a soft error and gives up on the retransmitted
    // SYN's, one second later (over IPv4 the first one ends the
    // connect). kube-proxy rejects with ICMPv6 too; still a refusal,
    // never the timeout of a dropped SYN.
    let quick = match ctx.family() {
        IpFamily::V4 => Duration::from_secs(1),
        IpFamily::V6 => Duration::from_millis(2500),
    };
    assert!(
        t0.elapsed() < quick,
        "refused quickly, not timed out ({:?})",
        t0.elapsed()
    );
    let o = ctx
        .topo
        .udp(Where::ClientPod, None, sa(cip, 53), Duration::from_secs(3));
    assert_eq!(o, Outcome::Refused, "UDP to a service without endpoints");
}

/// [`Feature::NodePort`] and [`Feature::NodePortAddresses`].
pub(super) fn node_ports(ctx: &mut Ctx, feature: Feature) {
    let node_ip = ctx.topo.node_ip();
    let node_ip2 = ctx.topo.node_ip2();
    ctx.serve(&ALL_EPS, TARGET);
    let s = node_port(web(ctx, "np", CIP), 30080);
    let sl = web_slice("np", ctx, &ALL_EPS);
    ctx.apply(&[s], &[sl]);
    ctx.replies(Where::Ext, TCP, None, sa(node_ip, 30080), 5);
    ctx.replies(Where::Ext, UDP, None, sa(node_ip, 30080), 5);
    let second = ctx.topo.tcp(Where::Ext, None, sa(node_ip2, 30080), SHORT);
    if feature == Feature::NodePort {
        assert!(
            second.server().is_some(),
            "node port on the second node address: {second:?}"
        );
        ctx.replies(Where::ClientPod, TCP, None, sa(node_ip, 30080), 3);
    } else {
        assert!(
            second.server().is_none(),
            "--nodeport-addresses excludes {node_ip2}: {second:?}"
        );
    }
}

/// [`Feature::ExternalIps`].
pub(super) fn external_ips(ctx: &mut Ctx) {
    ctx.serve(&ALL_EPS, TARGET);
    let mut s = web(ctx, "ext", CIP);
    s.external_ips = ctx.both(EXT_IP);
    let sl = web_slice("ext", ctx, &ALL_EPS);
    ctx.apply(&[s], &[sl]);
    let eip = ctx.at(EXT_IP);
    ctx.replies(Where::Ext, TCP, None, sa(eip, PORT), 5);
    ctx.replies(Where::ClientPod, TCP, None, sa(eip, PORT), 3);
    let other = ctx.topo.tcp(Where::Ext, None, sa(eip, 81), SHORT);
    assert!(other.server().is_none(), "{other:?}");
}

/// [`Feature::LoadBalancerSourceRanges`].
pub(super) fn load_balancer_source_ranges(ctx: &mut Ctx) {
    ctx.serve(&ALL_EPS, TARGET);
    let mut s = node_port(web(ctx, "lb", CIP), 30081);
    s.service_type = ServiceType::LoadBalancer;
    s.load_balancer_ips = ctx.both(LB_IP);
    // One range per family (the API's own spacing kept): each
    // family's proxier takes its own.
    s.load_balancer_source_ranges = vec![" 192.168.50.2/32 ".into(), "fd00:50::2/128".into()];
    let sl = web_slice("lb", ctx, &ALL_EPS);
    ctx.apply(&[s], &[sl]);
    let vip = sa(ctx.at(LB_IP), PORT);
    let allowed = ctx.topo.ext_ip(0);
    let blocked = ctx.topo.ext_ip(1);
    ctx.replies(Where::Ext, TCP, Some(allowed), vip, 5);
    let o = ctx.topo.tcp(Where::Ext, Some(blocked), vip, SHORT);
    assert!(
        o.server().is_none(),
        "a client outside the source ranges got through: {o:?}"
    );
}

/// [`Feature::SessionAffinity`].
pub(super) fn session_affinity(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    ctx.serve(&ALL_EPS, TARGET);
    let mut s = web(ctx, "sticky", CIP);
    s.external_ips = ctx.both(EXT_IP2);
    let eip = ctx.at(EXT_IP2);
    s.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 600,
    };
    let sl = web_slice("sticky", ctx, &ALL_EPS);
    ctx.apply(&[s], &[sl]);
    let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 20);
    assert_eq!(
        Ctx::servers(&out).len(),
        1,
        "one client, one endpoint: {out:?}"
    );
    let mut chosen = BTreeSet::new();
    for i in 0..8 {
        let src = ctx.topo.ext_ip(i);
        let out = ctx.replies(Where::Ext, TCP, Some(src), sa(eip, PORT), 6);
        let s = Ctx::servers(&out);
        assert_eq!(s.len(), 1, "client {src} sticks to one endpoint: {s:?}");
        chosen.extend(s);
    }
    assert!(
        chosen.len() >= 2,
        "8 clients all on one of 4 endpoints: {chosen:?}"
    );
}

/// [`Feature::ExternalTrafficPolicyLocal`].
pub(super) fn external_traffic_policy_local(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    let node_ip = ctx.topo.node_ip();
    ctx.serve(&ALL_EPS, TARGET);
    let mut s = node_port(web(ctx, "etp", CIP), 30082);
    s.external_traffic_policy = TrafficPolicy::Local;
    let sl = web_slice("etp", ctx, &[Where::Local(0), Where::Remote(0)]);
    ctx.apply(&[s.clone()], &[sl]);
    let src = ctx.topo.ext_ip(2);
    let out = ctx.replies(Where::Ext, TCP, Some(src), sa(node_ip, 30082), 12);
    assert_eq!(
        Ctx::servers(&out),
        BTreeSet::from([ctx.ip_of(Where::Local(0))]),
        "external traffic reaches local endpoints only"
    );
    assert!(
        out.iter().all(|o| o.peer().map(|p| p.ip()) == Some(src)),
        "client source preserved: {out:?}"
    );
    // Pods still reach every endpoint through the cluster IP.
    let pod = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 20);
    assert!(
        Ctx::servers(&pod).contains(&ctx.ip_of(Where::Remote(0))),
        "{pod:?}"
    );
    // No local endpoint: external traffic is dropped.
    let sl = web_slice("etp", ctx, &[Where::Remote(0)]);
    ctx.apply(&[], &[sl]);
    let o = ctx
        .topo
        .tcp(Where::Ext, Some(src), sa(node_ip, 30082), SHORT);
    assert!(
        o.server().is_none(),
        "no local endpoint must not answer: {o:?}"
    );
}

/// [`Feature::InternalTrafficPolicyLocal`].
pub(super) fn internal_traffic_policy_local(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    ctx.serve(&ALL_EPS, TARGET);
    let mut s = web(ctx, "itp", CIP);
    s.internal_traffic_policy = TrafficPolicy::Local;
    let sl = web_slice(
        "itp",
        ctx,
        &[Where::Local(1), Where::Remote(0), Where::Remote(1)],
    );
    ctx.apply(&[s], &[sl]);
    let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 12);
    assert_eq!(
        Ctx::servers(&out),
        BTreeSet::from([ctx.ip_of(Where::Local(1))])
    );
    let sl = web_slice("itp", ctx, &[Where::Remote(0)]);
    ctx.apply(&[], &[sl]);
    let o = ctx.topo.tcp(Where::ClientPod, None, sa(cip, PORT), SHORT);
    assert!(
        o.server().is_none(),
        "no local endpoint must not answer: {o:?}"
    );
}

/// [`Feature::ExternalLocalFromInside`]: iptables mode's `KUBE-EXT-`
/// chain sends pod traffic ("pod traffic for … external destinations")
/// and the node's own ("route LOCAL traffic") to the cluster-wide chain,
/// so from inside the cluster every endpoint answers on the external
/// addresses of an eTP: Local service, whether this node has a local
/// endpoint or not. (From outside, the local endpoints only: see
/// [`external_traffic_policy_local`].)
pub(super) fn external_local_from_inside(ctx: &mut Ctx) {
    ctx.serve(&ALL_EPS, TARGET);
    let node_ip = ctx.topo.node_ip();
    let mut s = node_port(web(ctx, "etpin", CIP2), 30085);
    s.service_type = ServiceType::LoadBalancer;
    s.external_traffic_policy = TrafficPolicy::Local;
    s.health_check_node_port = 30185;
    s.external_ips = ctx.both(EXT_IP);
    s.load_balancer_ips = ctx.both(LB_IP);
    let remote = ctx.ip_of(Where::Remote(0));
    let local = ctx.ip_of(Where::Local(0));
    let tcp_dsts = [
        ("node port", sa(node_ip, 30085)),
        ("external IP", sa(ctx.at(EXT_IP), PORT)),
        ("LoadBalancer IP", sa(ctx.at(LB_IP), PORT)),
    ];
    for (eps, case) in [
        (
            &[Where::Local(0), Where::Remote(0)][..],
            "with a local endpoint",
        ),
        (&[Where::Remote(0)][..], "without a local endpoint"),
    ] {
        let sl = web_slice("etpin", ctx, eps);
        ctx.apply(std::slice::from_ref(&s), &[sl]);
        for from in [Where::ClientPod, Where::Node] {
            for (what, dst) in tcp_dsts {
                let out = ctx.replies(from, TCP, None, dst, 16);
                let servers = Ctx::servers(&out);
                assert!(
                    servers.contains(&remote),
                    "{case}: {from:?} → {what} {dst} must reach the remote endpoint too: {out:?}"
                );
                if eps.contains(&Where::Local(0)) {
                    assert!(
                        servers.contains(&local),
                        "{case}: {from:?} → {what}: {out:?}"
                    );
                }
            }
            // UDP through the external IP.
            let out = ctx.replies(from, UDP, None, sa(ctx.at(EXT_IP), 53), 16);
            assert!(
                Ctx::servers(&out).contains(&remote),
                "{case}: {from:?} → external IP over UDP: {out:?}"
            );
        }
    }
}

/// Whether `o` is a drop: no answer, or, from the node itself, the
/// `EPERM` a local socket gets when its packet is dropped in `OUTPUT`.
fn dropped(from: Where, o: &Outcome) -> bool {
    match o {
        Outcome::Timeout => true,
        Outcome::Error(e) => from == Where::Node && e.contains("os error 1)"),
        _ => false,
    }
}

/// [`Feature::InternalLocalDrops`]: kube-proxy's iptables and nftables
/// modes drop ("has no local endpoints") traffic to an iTP: Local
/// service with no endpoint on this node, from pods and from the node,
/// over TCP and UDP; a service with no endpoint anywhere is refused.
pub(super) fn internal_local_drops(ctx: &mut Ctx) {
    ctx.serve(&ALL_EPS, TARGET);
    let cip = ctx.at(CIP2);
    let mut s = web(ctx, "itpdrop", CIP2);
    s.internal_traffic_policy = TrafficPolicy::Local;
    let sl = web_slice("itpdrop", ctx, &[Where::Remote(0), Where::Remote(1)]);
    ctx.apply(&[s], &[sl]);
    // Long enough for a refusal to show: over IPv6, TCP takes an ICMPv6
    // port-unreachable only for the retransmitted SYN, a second later.
    let tcp_wait = Duration::from_millis(2500);
    for from in [Where::ClientPod, Where::Node] {
        let o = ctx.topo.tcp(from, None, sa(cip, PORT), tcp_wait);
        assert!(
            dropped(from, &o),
            "{from:?} → {cip}:{PORT} (TCP): no local endpoint must drop, not answer or refuse: {o:?}"
        );
        let o = ctx.topo.requests(from, UDP, None, sa(cip, 53), 1, T);
        assert!(
            o.iter().all(|o| dropped(from, o)),
            "{from:?} → {cip}:53 (UDP): no local endpoint must drop, not answer or refuse: {o:?}"
        );
    }
    // No endpoint anywhere: refused, as without the policy. (An empty
    // slice names its family itself: it has no address to tell.)
    let mut sl = web_slice("itpdrop", ctx, &[]);
    sl.address_type = ctx.family();
    ctx.apply(&[], &[sl]);
    for from in [Where::ClientPod, Where::Node] {
        let o = ctx.topo.tcp(from, None, sa(cip, PORT), tcp_wait);
        assert!(
            matches!(o, Outcome::Refused),
            "{from:?} → {cip}:{PORT}: no endpoint at all must refuse: {o:?}"
        );
    }
}

/// [`Feature::TerminatingFallback`].
pub(super) fn terminating_fallback(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    ctx.serve(&ALL_EPS, TARGET);
    let s = web(ctx, "term", CIP);
    let (a, b) = (ctx.ip_of(Where::Local(0)), ctx.ip_of(Where::Local(1)));
    let sl = slice(
        "default",
        "term",
        &[("http", TARGET, TCP), ("dns", TARGET, UDP)],
        vec![
            terminating(a, "node-1", true),
            terminating(b, "node-1", false),
        ],
    );
    ctx.apply(&[s], &[sl]);
    let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 10);
    assert_eq!(
        Ctx::servers(&out),
        BTreeSet::from([a]),
        "only the serving terminating endpoint"
    );
}

/// [`Feature::Hairpin`].
pub(super) fn hairpin(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    ctx.serve(&[Where::Local(0)], TARGET);
    let s = web(ctx, "hair", CIP);
    let sl = web_slice("hair", ctx, &[Where::Local(0)]);
    ctx.apply(&[s], &[sl]);
    let me = ctx.ip_of(Where::Local(0));
    let out = ctx.replies(Where::Local(0), TCP, None, sa(cip, PORT), 3);
    assert!(out.iter().all(|o| o.server().map(|s| s.ip()) == Some(me)));
    ctx.replies(Where::Local(0), UDP, None, sa(cip, 53), 3);
}

/// [`Feature::MasqueradeExternal`].
pub(super) fn masquerade_external(ctx: &mut Ctx) {
    let node_ip = ctx.topo.node_ip();
    let node_ip2 = ctx.topo.node_ip2();
    ctx.serve(&ALL_EPS, TARGET);
    let s = node_port(web(ctx, "masq", CIP), 30083);
    let sl = web_slice("masq", ctx, &[Where::Remote(0)]);
    ctx.apply(&[s], &[sl]);
    let src = ctx.topo.ext_ip(0);
    let out = ctx.replies(Where::Ext, TCP, Some(src), sa(node_ip, 30083), 3);
    for o in &out {
        let peer = o.peer().expect("peer").ip();
        assert_ne!(peer, src, "external source must be masqueraded");
        assert_eq!(peer, node_ip2, "masqueraded to the node's address: {o:?}");
    }
}

/// [`Feature::EndpointChurn`].
pub(super) fn endpoint_churn(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    ctx.serve(&ALL_EPS, TARGET);
    let s = web(ctx, "churn", CIP);
    let sl = web_slice("churn", ctx, &[Where::Local(0)]);
    ctx.apply(&[s], &[sl]);
    let a = ctx.ip_of(Where::Local(0));
    let b = ctx.ip_of(Where::Local(1));
    let flow = ctx
        .topo
        .udp_open(Where::ClientPod, sa(cip, 53), T)
        .expect("udp socket");
    let first = udp_exchange(&flow, "1").expect("udp");
    assert_eq!(first.server().map(|s| s.ip()), Some(a), "{first:?}");
    let mut conn = ctx
        .topo
        .tcp_open(Where::ClientPod, sa(cip, PORT), T)
        .expect("tcp");
    // One exchange first: a proxy picks the endpoint when it
    // handles the connection, which may be after `connect` returns.
    let o = crate::traffic::tcp_line(&mut conn, "hello");
    assert_eq!(o.server().map(|s| s.ip()), Some(a), "{o:?}");
    let sl = web_slice("churn", ctx, &[Where::Local(1)]);
    ctx.apply(&[], &[sl]);
    let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 5);
    assert_eq!(
        Ctx::servers(&out),
        BTreeSet::from([b]),
        "new connections follow the endpoints"
    );
    // The same UDP 5-tuple moves to the new endpoint once the stale
    // conntrack entry is gone.
    let again = udp_exchange(&flow, "2").expect("udp");
    assert_eq!(
        again.server().map(|s| s.ip()),
        Some(b),
        "UDP flow after its endpoint went away: {again:?}"
    );
    // The open TCP connection to the removed (still running)
    // endpoint keeps working.
    let o = crate::traffic::tcp_line(&mut conn, "still there");
    assert_eq!(o.server().map(|s| s.ip()), Some(a), "{o:?}");
    // Adding an endpoint back spreads new connections again.
    let sl = web_slice("churn", ctx, &[Where::Local(0), Where::Local(1)]);
    ctx.apply(&[], &[sl]);
    let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 30);
    assert_eq!(Ctx::servers(&out), BTreeSet::from([a, b]));
}

/// [`Feature::ServiceDeleted`].
pub(super) fn service_deleted(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    ctx.serve(&ALL_EPS, TARGET);
    let s = web(ctx, "gone", CIP);
    let sl = web_slice("gone", ctx, &ALL_EPS);
    ctx.apply(&[s], &[sl]);
    ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 3);
    ctx.delete("default", "gone");
    let o = ctx.topo.tcp(Where::ClientPod, None, sa(cip, PORT), SHORT);
    assert!(o.server().is_none(), "deleted service still answers: {o:?}");
}

/// [`Feature::Cleanup`].
pub(super) fn cleanup(ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    ctx.serve(&ALL_EPS, TARGET);
    let mut s = node_port(web(ctx, "clean", CIP), 30084);
    s.service_type = ServiceType::LoadBalancer;
    s.load_balancer_ips = ctx.both(LB_IP2);
    s.load_balancer_source_ranges = NPA.iter().map(|n| n.to_string()).collect();
    s.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 60,
    };
    let sl = web_slice("clean", ctx, &ALL_EPS);
    let empty = web(ctx, "empty", CIP2);
    ctx.apply(&[s, empty], &[sl]);
    ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 3);
    assert!(
        !(ctx.backend.leftovers)(&ctx.topo).is_empty(),
        "the backend installed something"
    );
    ctx.cleanup();
    let left = (ctx.backend.leftovers)(&ctx.topo);
    assert!(left.is_empty(), "left after cleanup: {left:#?}");
    let o = ctx.topo.tcp(Where::ClientPod, None, sa(cip, PORT), SHORT);
    assert!(
        o.server().is_none(),
        "cleaned-up service still answers: {o:?}"
    );
}
