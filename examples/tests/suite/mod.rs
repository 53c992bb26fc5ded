//! What the behaviour suites share: every backend is built by the
//! binaries' factory (`examples::modes::Factory`) from kube-proxy's flags
//! for the scenario's node, so the suite runs each mode as `proxier
//! --proxy-mode MODE` would; and what each mode leaves behind.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use backend_ipvs::{Op, Set, Settings, contribution, external_destinations, wants_mark};
use examples::modes::{Factory, Node};
use proxier_core::IpFamily;
use proxier_core::{Proxier, Snapshot};
use proxier_netfilter::Variant;
use proxier_testbed::Topology;
use proxier_testbed::suite::Env;

/// The backend of `mode` for a scenario: `proxier --proxy-mode MODE
/// --cluster-cidr … --nodeport-addresses … --hostname-override …
/// --iptables-variant …`, on the scenario's node addresses.
pub fn make(mode: &str, variant: Variant, env: &Env) -> Box<dyn Proxier> {
    let cidr = env.cluster_cidr.to_string();
    let npa = env
        .node_port_addresses
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut flags = vec![
        "--proxy-mode",
        mode,
        "--cluster-cidr",
        &cidr,
        "--hostname-override",
        &env.node_name,
        "--iptables-variant",
        variant.as_str(),
    ];
    if !npa.is_empty() {
        flags.extend(["--nodeport-addresses", &npa]);
    }
    let (factory, settings) = Factory::from_flags(&flags).expect("flags");
    let node = Node {
        ips: env.node_ips.clone(),
        variant,
    };
    factory
        .build_on(&settings.for_family(env.family), &node)
        .expect("backend")
}

/// iptables mode's leftovers: `KUBE-` lines of `iptables-<variant>-save`.
pub fn iptables_leftovers(topo: &Topology, variant: Variant) -> Vec<String> {
    topo.kube_iptables_lines(variant.as_str())
}

/// nftables mode's leftovers: the `kube-proxy` tables.
pub fn nftables_leftovers(topo: &Topology) -> Vec<String> {
    topo.node_exec("nft", &["list", "tables"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("kube-proxy"))
        .map(str::to_owned)
        .collect()
}

/// The userspace portal's leftovers: portal rules in both tables, and
/// the proxy's sockets, in the node namespace.
pub fn userspace_leftovers(topo: &Topology) -> Vec<String> {
    let mut left = topo.kube_iptables_lines("nft");
    left.extend(
        topo.node_exec("ss", &["-Hltun"])
            .expect("ss")
            .lines()
            .map(|l| format!("socket: {l}")),
    );
    left
}

/// Virtual servers, `kube-ipvs0`, our sets and rules in the node
/// namespace.
pub fn ipvs_leftovers(topo: &Topology) -> Vec<String> {
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

/// The suite's IPVS binary writes through iptables-nft.
fn iptables_save(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "iptables-nft-save",
        IpFamily::V6 => "ip6tables-nft-save",
    }
}

/// `ipvsadm -Sn` after every sync holds exactly the virtual and real
/// servers the snapshot asks for, plus real servers draining at weight 0
/// (graceful termination); each eTP: Local service with external
/// destinations has its firewall-mark virtual server, its mark on every
/// destination in `KUBE-EXTERNAL-LOCAL-MARK` and the `--map-mark` rule in
/// `iptables-save -t mangle`.
pub fn ipvs_verify(env: &Env, topo: &Topology, snap: &Snapshot) -> Result<(), String> {
    let npa = &env.node_port_addresses;
    // The binary reads the node's addresses at each full sync, as
    // kube-proxy does: every address but `kube-ipvs0`'s (`ip -o addr`).
    let node_ips: Vec<IpAddr> = topo
        .node_exec("ip", &["-o", "addr", "show"])
        .map_err(|e| e.to_string())?
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                [_, dev, "inet" | "inet6", addr, ..] if *dev != "kube-ipvs0" => {
                    addr.split('/').next()?.parse().ok()
                }
                _ => None,
            }
        })
        .filter(|ip| env.family.matches(ip))
        .collect();
    let settings = Settings {
        family: env.family,
        scheduler: "rr".into(),
        node_port_ips: node_ips
            .iter()
            .copied()
            .filter(|ip| {
                if npa.is_empty() {
                    !ip.is_loopback()
                        && !matches!(ip, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80)
                } else {
                    npa.iter().any(|n| n.contains(ip))
                }
            })
            .collect(),
        node_ips,
        mark_mask: backend_ipvs::Config::new(env.family).external_local_mark_mask,
    };
    // The firewall marks the proxier handed out, as `KUBE-EXTERNAL-LOCAL-MARK`
    // holds them (`ipset save`: `add SET ip,proto:port skbmark 0xM/0xMASK`).
    let mark_set = Set::ExternalLocalMark.name(env.family);
    let saved = topo
        .node_exec("ipset", &["save"])
        .map_err(|e| e.to_string())?;
    let marks: BTreeMap<String, u32> = saved
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["add", set, elem, "skbmark", m] if *set == mark_set => {
                    let m = m.split('/').next()?.strip_prefix("0x")?;
                    Some((elem.to_string(), u32::from_str_radix(m, 16).ok()?))
                }
                _ => None,
            }
        })
        .collect();
    let mangle = topo
        .node_exec(iptables_save(env.family), &["-t", "mangle"])
        .map_err(|e| e.to_string())?;
    let mut want = BTreeSet::new();
    for svc in snap.services.values() {
        let mark = if wants_mark(svc, &settings) {
            let dsts = external_destinations(svc, &settings);
            let found: BTreeSet<u32> = dsts.iter().filter_map(|d| marks.get(d).copied()).collect();
            if found.len() != 1 || dsts.iter().any(|d| !marks.contains_key(d)) {
                return Err(format!(
                    "{}: {mark_set} must map each of {dsts:?} to one mark, has {found:?}",
                    svc.name
                ));
            }
            if !mangle.contains(&format!("-j SET --map-set {mark_set} dst,dst --map-mark")) {
                return Err(format!(
                    "iptables-save -t mangle lacks the --map-mark rule:\n{mangle}"
                ));
            }
            found.into_iter().next()
        } else {
            None
        };
        for (s, dests) in contribution(svc, snap, &settings, mark).services {
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
