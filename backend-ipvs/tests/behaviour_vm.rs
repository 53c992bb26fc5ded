//! The behaviour suite on the IPVS proxier, inside the test VM (a real
//! IPVS kernel): real TCP and UDP traffic between namespaces, with
//! `kube-ipvs0`, the ipsets and the companion iptables rules (nft); after
//! every sync `ipvsadm -Sn` is compared with the desired state.

use std::collections::BTreeSet;

use backend_ipvs::{Config, IpvsProxier, Kernel, Op, Settings, contribution};
use proxier_core::{Proxier, Snapshot};
use proxier_netfilter::{IptablesCmd, Variant};
use proxier_testbed::Topology;
use proxier_testbed::suite::{Backend, Env};

fn make(env: &Env) -> Box<dyn Proxier> {
    let kernel = Kernel::real_with(IptablesCmd::new(env.family, Variant::Nft)).expect("kernel");
    let mut cfg = Config::new(env.family);
    cfg.node_ips = env.node_ips.clone();
    cfg.node_port_addresses = env.node_port_addresses.clone();
    cfg.rules.local_detector =
        proxier_netfilter::LocalDetector::ClusterCidr(vec![env.cluster_cidr]);
    Box::new(IpvsProxier::new(cfg, kernel).expect("config"))
}

/// Virtual servers, `kube-ipvs0`, our sets and rules in the node
/// namespace.
pub fn leftovers(topo: &Topology) -> Vec<String> {
    let mut left: Vec<String> = topo
        .node_exec("ipvsadm", &["-Sn"])
        .expect("ipvsadm")
        .lines()
        .map(|l| format!("ipvs: {l}"))
        .collect();
    left.extend(topo.kube_iptables_lines("nft"));
    left.extend(
        topo.node_exec("ipset", &["list", "-n"])
            .expect("ipset")
            .lines()
            .filter(|l| l.starts_with("KUBE-"))
            .map(|l| format!("ipset: {l}")),
    );
    let link = topo
        .node_exec("ip", &["-o", "link", "show", "kube-ipvs0"])
        .unwrap_or_default();
    if !link.trim().is_empty() {
        left.push("link kube-ipvs0".into());
    }
    left
}

/// `ipvsadm -Sn` after every sync holds exactly the virtual and real
/// servers the snapshot asks for, plus real servers draining at weight 0
/// (graceful termination).
fn verify(env: &Env, topo: &Topology, snap: &Snapshot) -> Result<(), String> {
    let npa = &env.node_port_addresses;
    let settings = Settings {
        family: env.family,
        scheduler: "rr".into(),
        node_port_ips: env
            .node_ips
            .iter()
            .copied()
            .filter(|ip| npa.is_empty() || npa.iter().any(|n| n.contains(ip)))
            .collect(),
        node_ips: env.node_ips.clone(),
    };
    let mut want = BTreeSet::new();
    for svc in snap.services.values() {
        for (s, dests) in contribution(svc, snap, &settings).services {
            want.insert(Op::AddService(s.clone()).to_string());
            for d in dests {
                want.insert(Op::AddDest(s.clone(), d).to_string());
            }
        }
    }
    let have: BTreeSet<String> = topo
        .node_exec("ipvsadm", &["-Sn"])
        .map_err(|e| e.to_string())?
        .lines()
        .map(|l| {
            format!(
                "ipvsadm {}",
                l.split_whitespace().collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    let missing: Vec<&String> = want.difference(&have).collect();
    let extra: Vec<&String> = have
        .difference(&want)
        .filter(|l| !(l.starts_with("ipvsadm -a") && l.ends_with(" -w 0")))
        .collect();
    if missing.is_empty() && extra.is_empty() {
        Ok(())
    } else {
        Err(format!("ipvsadm -Sn lacks {missing:#?} and has {extra:#?}"))
    }
}

static BACKEND: Backend = Backend {
    name: "ipvs",
    make,
    unsupported: &[],
    no_ipv6: None,
    leftovers,
    verify: Some(verify),
};

proxier_testbed::behaviour_suite!(@vm &BACKEND);
