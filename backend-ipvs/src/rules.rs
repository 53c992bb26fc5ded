//! The iptables rules beside IPVS (kube-proxy's `writeIptablesRules`):
//! masquerade, node ports, source-range firewall, hairpin and the VIP
//! access filter, all driven by the ipsets. Pure: the proxier writes the
//! result through `proxier_netfilter::write_owned`, the restore code every
//! netfilter backend shares.
//!
//! Check by hand with `iptables-save -t nat | grep KUBE-`.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use proxier_core::IpFamily;
use proxier_netfilter::Masquerade;
use proxier_netfilter::chains::{
    KUBE_FORWARD, KUBE_IPVS_FILTER, KUBE_IPVS_OUT_FILTER, KUBE_LOAD_BALANCER, KUBE_MARK_MASQ,
    KUBE_NODE_PORT, KUBE_POSTROUTING, KUBE_PROXY_FIREWALL, KUBE_SERVICES,
    KUBE_SOURCE_RANGES_FIREWALL,
};
use proxier_netfilter::{Jump, Position, TableRules};

use crate::sets::Set;

/// Chains this backend owns, per table.
pub const NAT_CHAINS: [&str; 5] = [
    KUBE_SERVICES,
    KUBE_POSTROUTING,
    KUBE_NODE_PORT,
    KUBE_LOAD_BALANCER,
    KUBE_MARK_MASQ,
];

/// Filter chains this backend owns.
pub const FILTER_CHAINS: [&str; 6] = [
    KUBE_FORWARD,
    KUBE_NODE_PORT,
    KUBE_PROXY_FIREWALL,
    KUBE_SOURCE_RANGES_FIREWALL,
    KUBE_IPVS_FILTER,
    KUBE_IPVS_OUT_FILTER,
];

/// Ours, not kube-proxy's (its IPVS mode has neither behaviour): marks
/// traffic from pods and from the node to the external destinations of
/// `externalTrafficPolicy: Local` services with the firewall mark of
/// their virtual server for traffic from inside (`ipset`'s `--map-mark`,
/// only allowed in `mangle`).
pub const KUBE_EXTERNAL_LOCAL: &str = "KUBE-EXTERNAL-LOCAL";
/// Ours: drops new flows to `internalTrafficPolicy: Local` services that
/// have endpoints, none of them on this node, before IPVS sees them
/// (`mangle`, so that the node's own connections are dropped before IPVS's
/// `LOCAL_OUT` hook answers them).
pub const KUBE_NO_LOCAL_ENDPOINTS: &str = "KUBE-NO-LOCAL-ENDPOINTS";

/// Mangle chains this backend owns.
pub const MANGLE_CHAINS: [&str; 2] = [KUBE_EXTERNAL_LOCAL, KUBE_NO_LOCAL_ENDPOINTS];

/// The tables this backend writes, in the order it writes them.
pub const TABLES: [&str; 3] = ["nat", "filter", "mangle"];

/// Whether `chain` in `table` is ours.
pub fn owns(table: &str, chain: &str) -> bool {
    match table {
        "nat" => NAT_CHAINS.contains(&chain),
        "filter" => FILTER_CHAINS.contains(&chain),
        "mangle" => MANGLE_CHAINS.contains(&chain),
        _ => false,
    }
}

/// The rules of each table this backend writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// `nat`.
    pub nat: TableRules,
    /// `filter`.
    pub filter: TableRules,
    /// `mangle`.
    pub mangle: TableRules,
}

impl Tables {
    /// The rules of `table` (one of [`TABLES`]).
    pub fn get(&self, table: &str) -> &TableRules {
        match table {
            "nat" => &self.nat,
            "filter" => &self.filter,
            _ => &self.mangle,
        }
    }
}

/// `ipsetWithIptablesChain`: set, table, from, to, match, protocol.
const SET_RULES: [(Set, &str, &str, &str, &str, &str); 12] = [
    (
        Set::LoopBack,
        "nat",
        KUBE_POSTROUTING,
        "MASQUERADE",
        "dst,dst,src",
        "",
    ),
    (
        Set::LoadBalancer,
        "nat",
        KUBE_SERVICES,
        KUBE_LOAD_BALANCER,
        "dst,dst",
        "",
    ),
    (
        Set::LoadBalancerLocal,
        "nat",
        KUBE_LOAD_BALANCER,
        "RETURN",
        "dst,dst",
        "",
    ),
    (
        Set::NodePortLocalTcp,
        "nat",
        KUBE_NODE_PORT,
        "RETURN",
        "dst",
        "tcp",
    ),
    (
        Set::NodePortTcp,
        "nat",
        KUBE_NODE_PORT,
        KUBE_MARK_MASQ,
        "dst",
        "tcp",
    ),
    (
        Set::NodePortLocalUdp,
        "nat",
        KUBE_NODE_PORT,
        "RETURN",
        "dst",
        "udp",
    ),
    (
        Set::NodePortUdp,
        "nat",
        KUBE_NODE_PORT,
        KUBE_MARK_MASQ,
        "dst",
        "udp",
    ),
    (
        Set::NodePortLocalSctp,
        "nat",
        KUBE_NODE_PORT,
        "RETURN",
        "dst,dst",
        "sctp",
    ),
    (
        Set::NodePortSctp,
        "nat",
        KUBE_NODE_PORT,
        KUBE_MARK_MASQ,
        "dst,dst",
        "sctp",
    ),
    (
        Set::LoadBalancerFw,
        "filter",
        KUBE_PROXY_FIREWALL,
        KUBE_SOURCE_RANGES_FIREWALL,
        "dst,dst",
        "",
    ),
    (
        Set::LoadBalancerSourceCidr,
        "filter",
        KUBE_SOURCE_RANGES_FIREWALL,
        "RETURN",
        "dst,dst,src",
        "",
    ),
    (
        Set::LoadBalancerSourceIp,
        "filter",
        KUBE_SOURCE_RANGES_FIREWALL,
        "RETURN",
        "dst,dst,src",
        "",
    ),
];

/// The nat, filter and mangle rules for the sets in `non_empty`, plus the
/// per-LB `KUBE-IPVS-OUT-FILTER` rules; `mark_mask` holds the firewall
/// marks of the virtual servers for traffic from inside.
pub fn render(
    cfg: &Masquerade,
    non_empty: &BTreeSet<Set>,
    out_filter: &[&str],
    mark_mask: u32,
) -> Tables {
    let fam = cfg.family;
    let name = |s: Set| s.name(fam);
    let mut nat: Vec<(&str, String)> = NAT_CHAINS.iter().map(|c| (*c, String::new())).collect();
    let mut filter: Vec<(&str, String)> =
        FILTER_CHAINS.iter().map(|c| (*c, String::new())).collect();
    let body = |t: &mut Vec<(&str, String)>, chain: &str| -> usize {
        t.iter()
            .position(|(c, _)| *c == chain)
            .expect("known chain")
    };
    let lo = match fam {
        IpFamily::V4 => "127.0.0.0/8",
        IpFamily::V6 => "::1/128",
    };
    let i = body(&mut nat, KUBE_SERVICES);
    let _ = writeln!(nat[i].1, "-A KUBE-SERVICES -s {lo} -j RETURN");
    for (set, table, from, to, m, p) in SET_RULES {
        if !non_empty.contains(&set) {
            continue;
        }
        let t = if table == "nat" {
            &mut nat
        } else {
            &mut filter
        };
        let i = body(t, from);
        let proto = if p.is_empty() {
            String::new()
        } else {
            format!(" -p {p}")
        };
        let _ = writeln!(
            t[i].1,
            "-A {from}{proto} -m comment --comment \"{}\" -m set --match-set {} {m} -j {to}",
            set.comment(),
            name(set)
        );
    }
    let svc = body(&mut nat, KUBE_SERVICES);
    let set_match = |s: Set| {
        format!(
            "-A KUBE-SERVICES -m comment --comment \"{}\" -m set --match-set {}",
            s.comment(),
            name(s)
        )
    };
    if non_empty.contains(&Set::ClusterIp) {
        let head = set_match(Set::ClusterIp);
        let line = if cfg.masquerade_all {
            format!("{head} dst,dst -j KUBE-MARK-MASQ")
        } else if cfg.local_detector.is_implemented() {
            let mut not_local = String::new();
            cfg.local_match(&mut not_local, true);
            format!("{head} dst,dst{not_local} -j KUBE-MARK-MASQ")
        } else {
            format!("{head} src,dst -j KUBE-MARK-MASQ")
        };
        let _ = writeln!(nat[svc].1, "{line}");
    }
    let external = |nat: &mut Vec<(&str, String)>, head: &str| {
        let _ = writeln!(
            nat[svc].1,
            "{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"
        );
        let _ = writeln!(nat[svc].1, "{head} -m addrtype --dst-type LOCAL -j ACCEPT");
    };
    if non_empty.contains(&Set::ExternalIp) {
        let head = format!("{} dst,dst", set_match(Set::ExternalIp));
        let _ = writeln!(nat[svc].1, "{head} -j KUBE-MARK-MASQ");
        external(&mut nat, &head);
    }
    if non_empty.contains(&Set::ExternalIpLocal) {
        let head = format!("{} dst,dst", set_match(Set::ExternalIpLocal));
        external(&mut nat, &head);
    }
    let _ = writeln!(
        nat[svc].1,
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT"
    );
    let lb = body(&mut nat, KUBE_LOAD_BALANCER);
    nat[lb]
        .1
        .push_str("-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ\n");
    let srf = body(&mut filter, KUBE_SOURCE_RANGES_FIREWALL);
    filter[srf]
        .1
        .push_str("-A KUBE-SOURCE-RANGES-FIREWALL -j DROP\n");
    let of = body(&mut filter, KUBE_IPVS_OUT_FILTER);
    for r in out_filter {
        let _ = writeln!(filter[of].1, "{r}");
    }
    // acceptIPVSTraffic: last in KUBE-SERVICES.
    for s in [Set::ClusterIp, Set::LoadBalancer] {
        if non_empty.contains(&s) {
            let _ = writeln!(
                nat[svc].1,
                "-A KUBE-SERVICES -m set --match-set {} dst,dst -j ACCEPT",
                name(s)
            );
        }
    }
    let fwd = body(&mut filter, KUBE_FORWARD);
    filter[fwd].1 = cfg.forward_rules();
    let np = body(&mut filter, KUBE_NODE_PORT);
    let _ = writeln!(
        filter[np].1,
        "-A KUBE-NODE-PORT -m comment --comment \"{}\" -m set --match-set {} dst -j ACCEPT",
        Set::HealthCheckNodePort.comment(),
        name(Set::HealthCheckNodePort)
    );
    let vf = body(&mut filter, KUBE_IPVS_FILTER);
    for (s, m) in [
        (Set::LoadBalancer, "dst,dst"),
        (Set::ClusterIp, "dst,dst"),
        (Set::ExternalIp, "dst,dst"),
        (Set::ExternalIpLocal, "dst,dst"),
        (Set::HealthCheckNodePort, "dst"),
    ] {
        let _ = writeln!(
            filter[vf].1,
            "-A KUBE-IPVS-FILTER -m set --match-set {} {m} -j RETURN",
            name(s)
        );
    }
    let _ = writeln!(
        filter[vf].1,
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set {} dst -j REJECT",
        name(Set::IpvsIps)
    );
    let pr = body(&mut nat, KUBE_POSTROUTING);
    if non_empty.contains(&Set::ExternalLocalMark) {
        // The node's own connections to an external destination leave
        // with a source the endpoint cannot answer (the LB IP itself, on
        // `kube-ipvs0`): masquerade them, as iptables mode's "masquerade
        // LOCAL traffic for … LB IP". The masquerade bit cannot be used:
        // IPVS looks its firewall-mark services up by the whole mark.
        let _ = write!(
            nat[pr].1,
            "-A KUBE-POSTROUTING -m comment --comment \"kubernetes node traffic to externalTrafficPolicy=Local services\" -m mark ! --mark 0x0/{mark_mask:#x} -m addrtype --src-type LOCAL -j MASQUERADE"
        );
        if cfg.random_fully {
            nat[pr].1.push_str(" --random-fully");
        }
        nat[pr].1.push('\n');
    }
    nat[pr].1.push_str(&cfg.postrouting_rules());
    let mm = body(&mut nat, KUBE_MARK_MASQ);
    nat[mm].1 = cfg.mark_masq_rules();

    let jump = |from: &'static str, comment: &str, to: &str| Jump {
        from,
        rule: format!("-m comment --comment \"{comment}\" -j {to}"),
        position: Position::First,
    };
    let mut mangle = String::new();
    if non_empty.contains(&Set::ExternalLocalMark) {
        let _ = writeln!(
            mangle,
            "-A {KUBE_EXTERNAL_LOCAL} -m comment --comment \"{}\" -j SET --map-set {} dst,dst --map-mark",
            Set::ExternalLocalMark.comment(),
            name(Set::ExternalLocalMark)
        );
    }
    let mut no_local = String::new();
    if non_empty.contains(&Set::NoLocalEndpoints) {
        let _ = writeln!(
            no_local,
            "-A {KUBE_NO_LOCAL_ENDPOINTS} -m comment --comment \"{}\" -m conntrack --ctstate NEW -m set --match-set {} dst,dst -j DROP",
            Set::NoLocalEndpoints.comment(),
            name(Set::NoLocalEndpoints)
        );
    }
    let mut mangle_jumps = Vec::new();
    if cfg.local_detector.is_implemented() {
        let mut from_pod = String::new();
        cfg.local_match(&mut from_pod, false);
        mangle_jumps.push(Jump {
            from: "PREROUTING",
            rule: format!(
                "-m comment --comment \"kubernetes pod traffic to externalTrafficPolicy=Local services\"{from_pod} -j {KUBE_EXTERNAL_LOCAL}"
            ),
            position: Position::First,
        });
    }
    mangle_jumps.push(Jump {
        from: "OUTPUT",
        rule: format!(
            "-m comment --comment \"kubernetes node traffic to externalTrafficPolicy=Local services\" -m addrtype --src-type LOCAL -j {KUBE_EXTERNAL_LOCAL}"
        ),
        position: Position::First,
    });
    for from in ["PREROUTING", "OUTPUT"] {
        mangle_jumps.push(jump(
            from,
            "kubernetes services without local endpoints",
            KUBE_NO_LOCAL_ENDPOINTS,
        ));
    }
    let mangle_rules = TableRules {
        chains: vec![
            (KUBE_EXTERNAL_LOCAL.to_string(), mangle),
            (KUBE_NO_LOCAL_ENDPOINTS.to_string(), no_local),
        ],
        jumps: mangle_jumps,
    };
    let nat_rules = TableRules {
        chains: nat.into_iter().map(|(c, b)| (c.to_string(), b)).collect(),
        jumps: vec![
            jump("OUTPUT", "kubernetes service portals", KUBE_SERVICES),
            jump("PREROUTING", "kubernetes service portals", KUBE_SERVICES),
            jump(
                "POSTROUTING",
                "kubernetes postrouting rules",
                KUBE_POSTROUTING,
            ),
        ],
    };
    let filter_rules = TableRules {
        chains: filter
            .into_iter()
            .map(|(c, b)| (c.to_string(), b))
            .collect(),
        jumps: vec![
            jump("FORWARD", "kubernetes forwarding rules", KUBE_FORWARD),
            jump("INPUT", "kubernetes health check rules", KUBE_NODE_PORT),
            jump("INPUT", "kube-proxy firewall rules", KUBE_PROXY_FIREWALL),
            jump("FORWARD", "kube-proxy firewall rules", KUBE_PROXY_FIREWALL),
            jump("INPUT", "kubernetes ipvs access filter", KUBE_IPVS_FILTER),
            jump(
                "OUTPUT",
                "kubernetes ipvs access filter",
                KUBE_IPVS_OUT_FILTER,
            ),
        ],
    };
    Tables {
        nat: nat_rules,
        filter: filter_rules,
        mangle: mangle_rules,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-proxy's TestNodePortIPv4 (UDP variant): KUBE-NODE-PORT holds
    /// the MARK-MASQ rule of KUBE-NODE-PORT-UDP; KUBE-SERVICES the
    /// loopback return, the cluster IP masquerade, the node-port jump and
    /// the accept.
    #[test]
    fn node_port_udp_rules_match_kube_proxy() {
        let cfg = Masquerade::default();
        let sets = BTreeSet::from([Set::ClusterIp, Set::NodePortUdp, Set::IpvsIps]);
        let Tables { nat, filter, .. } = render(&cfg, &sets, &[], 0xffff0000);
        let chain = |t: &TableRules, c: &str| -> Vec<String> {
            t.chains
                .iter()
                .find(|(n, _)| n == c)
                .map(|(_, b)| b.lines().map(str::to_string).collect())
                .unwrap()
        };
        assert_eq!(
            chain(&nat, KUBE_NODE_PORT),
            vec![
                "-A KUBE-NODE-PORT -p udp -m comment --comment \"Kubernetes nodeport UDP port for masquerade purpose\" -m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ"
            ]
        );
        assert_eq!(
            chain(&nat, KUBE_SERVICES),
            vec![
                "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN",
                "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ",
                "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
                "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
            ]
        );
        assert_eq!(
            chain(&filter, KUBE_NODE_PORT),
            vec![
                "-A KUBE-NODE-PORT -m comment --comment \"Kubernetes health check node port\" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT"
            ]
        );
        assert!(
            chain(&filter, KUBE_IPVS_FILTER)
                .last()
                .unwrap()
                .ends_with("--ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT")
        );
        assert_eq!(nat.jumps.len(), 3);
        assert_eq!(filter.jumps.len(), 6);
        assert!(owns("nat", KUBE_NODE_PORT) && !owns("nat", "KUBE-SVC-X"));
    }
}
