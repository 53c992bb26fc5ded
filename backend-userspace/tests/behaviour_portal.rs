//! The behaviour suite on the userspace proxier in portal mode: iptables
//! (nft) portals redirect real traffic in namespaces to the proxy.

use std::sync::Arc;
use std::time::Duration;

use backend_userspace::{Config, DataPath, Mode, Portal, UserspaceProxier};
use proxier_core::{IpFamily, Protocol, Proxier};
use proxier_netfilter::{ConntrackNetlink, IptablesCmd, Variant};
use proxier_testbed::objects::{ep, service, slice};
use proxier_testbed::suite::{Backend, Ctx, Env, Feature};
use proxier_testbed::traffic::tcp_line;
use proxier_testbed::{Topology, Where};

fn make(env: &Env) -> Box<dyn Proxier> {
    Box::new(UserspaceProxier::new(Config {
        family: env.family,
        mode: Mode::Portal(Portal {
            iptables: Arc::new(IptablesCmd::new(env.family, Variant::Nft)),
            conntrack: Arc::new(ConntrackNetlink::new().unwrap()),
            node_port_addresses: env.node_port_addresses.clone(),
        }),
        data: DataPath::default(),
    }))
}

/// Portal rules in both tables, and the proxy's sockets, in the node
/// namespace.
fn leftovers(topo: &Topology) -> Vec<String> {
    let mut left = topo.kube_iptables_lines("nft");
    left.extend(
        topo.node_exec("ss", &["-Hltun"])
            .expect("ss")
            .lines()
            .map(|l| format!("socket: {l}")),
    );
    left
}

static BACKEND: Backend = Backend {
    name: "userspace (portal)",
    make,
    unsupported: &[(
        Feature::ExternalTrafficPolicyLocal,
        "a proxy opens its own connection to the endpoint: the client's source address cannot be kept",
    )],
    no_ipv6: None,
    leftovers,
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
