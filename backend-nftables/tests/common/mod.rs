//! Shared by the behaviour suites (host kernel and the 6.1 VM): the
//! proxier for a scenario and what it leaves behind.

use std::sync::Arc;

use backend_nftables::{Config, NfTablesNetlink, NftablesProxier};
use proxier_core::Proxier;
use proxier_netfilter::{ConntrackNetlink, LocalDetector};
use proxier_testbed::Topology;
use proxier_testbed::suite::Env;

/// The proxier for a scenario.
pub fn make(env: &Env) -> Box<dyn Proxier> {
    let mut cfg = Config::new(env.family);
    cfg.masquerade.local_detector = LocalDetector::ClusterCidr(vec![env.cluster_cidr]);
    cfg.node_ips = env.node_ips.clone();
    cfg.node_port_addresses = env.node_port_addresses.clone();
    Box::new(
        NftablesProxier::new(
            cfg,
            Arc::new(NfTablesNetlink::new().unwrap()),
            Arc::new(ConntrackNetlink::new().unwrap()),
        )
        .unwrap(),
    )
}

/// What is left of ours: the `kube-proxy` tables.
pub fn leftovers(topo: &Topology) -> Vec<String> {
    topo.node_exec("nft", &["list", "tables"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("kube-proxy"))
        .map(str::to_owned)
        .collect()
}
