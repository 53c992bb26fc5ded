//! Shared by the kernel tests: building the real proxier for the test bed.

#![allow(dead_code)]

use std::sync::Arc;

use backend_iptables::{Config, IptablesProxier};
use proxier_core::{IpFamily, Proxier};
use proxier_netfilter::{ConntrackNetlink, IptablesCmd, LocalDetector, Variant};
use proxier_testbed::Topology;
use proxier_testbed::suite::Env;

/// The proxier for a scenario, with the given variant.
pub fn make(env: &Env, variant: Variant) -> IptablesProxier {
    let cfg = Config {
        family: env.family,
        local_detector: LocalDetector::ClusterCidr(vec![env.cluster_cidr]),
        node_ips: env.node_ips.clone(),
        node_port_addresses: env.node_port_addresses.clone(),
        ..Config::default()
    };
    IptablesProxier::new(
        cfg,
        Arc::new(IptablesCmd::new(env.family, variant)),
        Arc::new(ConntrackNetlink::new().unwrap()),
        Arc::new(proxier_netfilter::ProcSys),
    )
    .expect("config")
}

pub fn make_nft(env: &Env) -> Box<dyn Proxier> {
    Box::new(make(env, Variant::Nft))
}

pub fn make_legacy(env: &Env) -> Box<dyn Proxier> {
    Box::new(make(env, Variant::Legacy))
}

/// `ip[6]tables-<variant>-save` in the node namespace, of the
/// topology's family.
pub fn save(topo: &Topology, variant: Variant) -> String {
    let ip = match topo.plan.family {
        IpFamily::V4 => "iptables",
        IpFamily::V6 => "ip6tables",
    };
    topo.node_exec(&format!("{ip}-{}-save", variant.as_str()), &[])
        .expect("iptables-save")
}

pub fn leftovers_nft(topo: &Topology) -> Vec<String> {
    topo.kube_iptables_lines("nft")
}

pub fn leftovers_legacy(topo: &Topology) -> Vec<String> {
    topo.kube_iptables_lines("legacy")
}
