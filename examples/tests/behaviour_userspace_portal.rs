//! The behaviour suite on the userspace proxier in portal mode: iptables
//! (nft) portals redirect real traffic in namespaces to the proxy.

mod suite;

use proxier_core::Proxier;
use proxier_netfilter::Variant;
use proxier_testbed::suite::{Backend, Env};
use std::time::Duration;

use proxier_core::{IpFamily, Protocol};
use proxier_testbed::suite::{Ctx, Feature};
use proxier_testbed::tcp_line;
use proxier_testbed::{Topology, Where};
use proxier_testbed::{ep, service, slice};

fn make(env: &Env) -> Box<dyn Proxier> {
    suite::make("userspace", Variant::Nft, env)
}

static BACKEND: Backend = Backend {
    name: "userspace (portal)",
    make,
    unsupported: &[(
        Feature::ExternalTrafficPolicyLocal,
        "a proxy opens its own connection to the endpoint: the client's source address cannot be kept",
    )],
    no_ipv6: None,
    leftovers: suite::userspace_leftovers,
    verify: None,
};

proxier_testbed::behaviour_suite!(&BACKEND);
/// The packets of `chain`'s jump from `builtin` (filter table) since the
/// counters were zeroed: `iptables -L <builtin> -v -x -n`.
fn jumped(topo: &Topology, builtin: &str, chain: &str) -> u64 {
    let listing = topo
        .node_exec("iptables-nft", &["-L", builtin, "-v", "-x", "-n"])
        .expect("iptables -L");
    listing
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(chain))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no jump to {chain} in {builtin}:\n{listing}"))
}

/// The filter chains hold a rule per service port; the bytes a proxy
/// relays must not walk them. Only a connection's first packets jump in.
#[test]
fn relayed_packets_skip_the_per_service_filter_chains() {
    let mut ctx = Ctx::new(&BACKEND, IpFamily::V4, vec![]);
    ctx.serve(&[Where::Local(0)], 8080);
    let ip = ctx.topo.ip_of(Where::Local(0));
    let node = ctx.topo.node_name_of(Where::Local(0)).to_string();
    let http = [("http", 80, Protocol::Tcp)];
    let target = [("http", 8080, Protocol::Tcp)];
    let names: Vec<String> = (1..=40).map(|i| format!("s{i}")).collect();
    let svcs: Vec<_> = names
        .iter()
        .enumerate()
        .map(|(i, n)| service("default", n, &format!("10.96.7.{}", i + 1), &http))
        .collect();
    let slices: Vec<_> = names
        .iter()
        .map(|n| slice("default", n, &target, vec![ep(ip, &node)]))
        .collect();
    ctx.apply(&svcs, &slices);
    for builtin in ["INPUT", "OUTPUT"] {
        ctx.topo
            .node_exec("iptables-nft", &["-Z", builtin])
            .expect("iptables -Z");
    }
    let vip = "10.96.7.40:80".parse().unwrap();
    let mut conn = ctx
        .topo
        .tcp_open(Where::ClientPod, vip, Duration::from_secs(2))
        .expect("connect through the portal");
    for i in 0..300 {
        let o = tcp_line(&mut conn, &format!("line {i}"));
        assert_eq!(o.server().map(|s| s.ip()), Some(ip), "exchange {i}: {o:?}");
    }
    // 300 exchanges are 1,200+ packets through INPUT and OUTPUT; the
    // connections' first packets are a handful. The client's SYN jumps
    // into NON-LOCAL (and is accepted there), the proxy's SYN to the pod
    // into OUTPUT's PORTALS-FILTER; nothing new reaches INPUT's.
    for (builtin, chain, least) in [
        ("INPUT", "KUBE-NODEPORT-NON-LOCAL", 1),
        ("INPUT", "KUBE-PORTALS-FILTER", 0),
        ("OUTPUT", "KUBE-PORTALS-FILTER", 1),
    ] {
        let n = jumped(&ctx.topo, builtin, chain);
        assert!(
            (least..=8).contains(&n),
            "{builtin} → {chain}: {n} packets jumped in for two connections"
        );
    }
}
