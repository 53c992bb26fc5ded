//! The behaviour suite on the userspace proxier in portal mode: iptables
//! (nft) portals redirect real traffic in namespaces to the proxy.

use std::sync::Arc;

use backend_iptables::{ConntrackCmd, IptablesCmd, Variant};
use backend_userspace::{Config, DataPath, Mode, Portal, UserspaceProxier};
use proxier_core::{IpFamily, Proxier};
use proxier_testbed::Topology;
use proxier_testbed::suite::{Backend, Env, Feature};

fn make(env: &Env) -> Box<dyn Proxier> {
    Box::new(UserspaceProxier::new(Config {
        family: IpFamily::V4,
        mode: Mode::Portal(Portal {
            iptables: Arc::new(IptablesCmd::new(IpFamily::V4, Variant::Nft)),
            conntrack: Arc::new(ConntrackCmd),
            node_port_addresses: env.node_port_addresses.clone(),
        }),
        data: DataPath::default(),
    }))
}

/// Portal rules in both tables, and the proxy's sockets, in the node
/// namespace.
fn leftovers(topo: &Topology) -> Vec<String> {
    let mut left: Vec<String> = topo
        .node_exec("iptables-nft-save", &[])
        .expect("iptables-save")
        .lines()
        .filter(|l| l.contains("KUBE-"))
        .map(str::to_owned)
        .collect();
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
    // A proxy opens its own connection to the endpoint: the client's
    // source address cannot be kept.
    unsupported: &[Feature::ExternalTrafficPolicyLocal],
    leftovers,
    verify: None,
};

proxier_testbed::behaviour_suite!(&BACKEND);
