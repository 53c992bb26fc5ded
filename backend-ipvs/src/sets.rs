//! kube-proxy's ipsets for IPVS mode (`pkg/proxy/ipvs/ipset.go`): their
//! names, types and comments, and the `ipset restore` input that turns
//! what the kernel holds into what is wanted. No I/O.
//!
//! Check by hand with `ipset list KUBE-CLUSTER-IP`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use proxier_core::IpFamily;

/// One of kube-proxy's sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Set {
    /// `KUBE-LOOP-BACK`: local endpoints, for hairpin masquerade.
    LoopBack,
    /// `KUBE-CLUSTER-IP`: every cluster IP and port.
    ClusterIp,
    /// `KUBE-EXTERNAL-IP`: external IPs (eTP Cluster).
    ExternalIp,
    /// `KUBE-EXTERNAL-IP-LOCAL`: external IPs (eTP Local).
    ExternalIpLocal,
    /// `KUBE-LOAD-BALANCER`: every LB IP and port.
    LoadBalancer,
    /// `KUBE-LOAD-BALANCER-LOCAL`: LB IPs with eTP Local.
    LoadBalancerLocal,
    /// `KUBE-LOAD-BALANCER-FW`: LB IPs with source ranges.
    LoadBalancerFw,
    /// `KUBE-LOAD-BALANCER-SOURCE-IP`: LB IP with the node's own address
    /// when a range contains it.
    LoadBalancerSourceIp,
    /// `KUBE-LOAD-BALANCER-SOURCE-CIDR`: LB IP with each source range.
    LoadBalancerSourceCidr,
    /// `KUBE-NODE-PORT-TCP`.
    NodePortTcp,
    /// `KUBE-NODE-PORT-LOCAL-TCP`.
    NodePortLocalTcp,
    /// `KUBE-NODE-PORT-UDP`.
    NodePortUdp,
    /// `KUBE-NODE-PORT-LOCAL-UDP`.
    NodePortLocalUdp,
    /// `KUBE-NODE-PORT-SCTP-HASH`.
    NodePortSctp,
    /// `KUBE-NODE-PORT-LOCAL-SCTP-HASH`.
    NodePortLocalSctp,
    /// `KUBE-HEALTH-CHECK-NODE-PORT`.
    HealthCheckNodePort,
    /// `KUBE-IPVS-IPS`: every address bound to `kube-ipvs0`.
    IpvsIps,
    /// `KUBE-EXTERNAL-LOCAL-MARK` (ours, not kube-proxy's): each external
    /// destination (external IP, LB IP, node address × node port) of an
    /// `externalTrafficPolicy: Local` service with the firewall mark of
    /// its virtual server for traffic from inside (`skbinfo`).
    ExternalLocalMark,
    /// `KUBE-NO-LOCAL-ENDPOINTS` (ours): cluster IP and port of each
    /// `internalTrafficPolicy: Local` service with endpoints, none of them
    /// local; new flows to them are dropped.
    NoLocalEndpoints,
}

impl Set {
    /// Every set, in kube-proxy's order.
    pub const ALL: [Set; 19] = [
        Set::LoopBack,
        Set::ClusterIp,
        Set::ExternalIp,
        Set::ExternalIpLocal,
        Set::LoadBalancer,
        Set::LoadBalancerLocal,
        Set::LoadBalancerFw,
        Set::LoadBalancerSourceIp,
        Set::LoadBalancerSourceCidr,
        Set::NodePortTcp,
        Set::NodePortLocalTcp,
        Set::NodePortUdp,
        Set::NodePortLocalUdp,
        Set::NodePortSctp,
        Set::NodePortLocalSctp,
        Set::HealthCheckNodePort,
        Set::IpvsIps,
        Set::ExternalLocalMark,
        Set::NoLocalEndpoints,
    ];

    /// The IPv4 name.
    pub fn base_name(self) -> &'static str {
        match self {
            Set::LoopBack => "KUBE-LOOP-BACK",
            Set::ClusterIp => "KUBE-CLUSTER-IP",
            Set::ExternalIp => "KUBE-EXTERNAL-IP",
            Set::ExternalIpLocal => "KUBE-EXTERNAL-IP-LOCAL",
            Set::LoadBalancer => "KUBE-LOAD-BALANCER",
            Set::LoadBalancerLocal => "KUBE-LOAD-BALANCER-LOCAL",
            Set::LoadBalancerFw => "KUBE-LOAD-BALANCER-FW",
            Set::LoadBalancerSourceIp => "KUBE-LOAD-BALANCER-SOURCE-IP",
            Set::LoadBalancerSourceCidr => "KUBE-LOAD-BALANCER-SOURCE-CIDR",
            Set::NodePortTcp => "KUBE-NODE-PORT-TCP",
            Set::NodePortLocalTcp => "KUBE-NODE-PORT-LOCAL-TCP",
            Set::NodePortUdp => "KUBE-NODE-PORT-UDP",
            Set::NodePortLocalUdp => "KUBE-NODE-PORT-LOCAL-UDP",
            Set::NodePortSctp => "KUBE-NODE-PORT-SCTP-HASH",
            Set::NodePortLocalSctp => "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
            Set::HealthCheckNodePort => "KUBE-HEALTH-CHECK-NODE-PORT",
            Set::IpvsIps => "KUBE-IPVS-IPS",
            Set::ExternalLocalMark => "KUBE-EXTERNAL-LOCAL-MARK",
            Set::NoLocalEndpoints => "KUBE-NO-LOCAL-ENDPOINTS",
        }
    }

    /// The name in `family`: IPv6 sets are `KUBE-6-...`, cut to 31
    /// characters (ipset's limit), as kube-proxy names them.
    pub fn name(self, family: IpFamily) -> String {
        match family {
            IpFamily::V4 => self.base_name().to_string(),
            IpFamily::V6 => {
                let mut n = self.base_name().replacen("KUBE-", "KUBE-6-", 1);
                n.truncate(31);
                n
            }
        }
    }

    /// The set type (`hash:ip,port`, `bitmap:port`, ...).
    pub fn kind(self) -> &'static str {
        match self {
            Set::LoopBack | Set::LoadBalancerSourceIp => "hash:ip,port,ip",
            Set::LoadBalancerSourceCidr => "hash:ip,port,net",
            Set::NodePortTcp
            | Set::NodePortLocalTcp
            | Set::NodePortUdp
            | Set::NodePortLocalUdp
            | Set::HealthCheckNodePort => "bitmap:port",
            Set::IpvsIps => "hash:ip",
            _ => "hash:ip,port",
        }
    }

    /// kube-proxy's comment for the set (used in the iptables rules that
    /// match it).
    pub fn comment(self) -> &'static str {
        match self {
            Set::LoopBack => {
                "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"
            }
            Set::ClusterIp => "Kubernetes service cluster ip + port for masquerade purpose",
            Set::ExternalIp => {
                "Kubernetes service external ip + port for masquerade and filter purpose"
            }
            Set::ExternalIpLocal => {
                "Kubernetes service external ip + port with externalTrafficPolicy=local"
            }
            Set::LoadBalancer => "Kubernetes service lb portal",
            Set::LoadBalancerLocal => {
                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"
            }
            Set::LoadBalancerFw => {
                "Kubernetes service load balancer ip + port for load balancer with sourceRange"
            }
            Set::LoadBalancerSourceIp => {
                "Kubernetes service load balancer ip + port + source IP for packet filter purpose"
            }
            Set::LoadBalancerSourceCidr => {
                "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"
            }
            Set::NodePortTcp => "Kubernetes nodeport TCP port for masquerade purpose",
            Set::NodePortLocalTcp => {
                "Kubernetes nodeport TCP port with externalTrafficPolicy=local"
            }
            Set::NodePortUdp => "Kubernetes nodeport UDP port for masquerade purpose",
            Set::NodePortLocalUdp => {
                "Kubernetes nodeport UDP port with externalTrafficPolicy=local"
            }
            Set::NodePortSctp => {
                "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"
            }
            Set::NodePortLocalSctp => {
                "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"
            }
            Set::HealthCheckNodePort => "Kubernetes health check node port",
            Set::IpvsIps => "Addresses on the ipvs interface",
            Set::ExternalLocalMark => {
                "Kubernetes traffic from inside to external destinations of externalTrafficPolicy=Local services"
            }
            Set::NoLocalEndpoints => {
                "Kubernetes service cluster ip + port with internalTrafficPolicy=Local and no local endpoints"
            }
        }
    }

    /// The `create` line.
    pub fn create_line(self, family: IpFamily) -> String {
        let name = self.name(family);
        if self.kind() == "bitmap:port" {
            format!("create {name} bitmap:port range 0-65535")
        } else {
            let fam = match family {
                IpFamily::V4 => "inet",
                IpFamily::V6 => "inet6",
            };
            let skbinfo = if self == Set::ExternalLocalMark {
                " skbinfo"
            } else {
                ""
            };
            format!(
                "create {name} {} family {fam} hashsize 1024 maxelem 65536{skbinfo}",
                self.kind()
            )
        }
    }
}

/// Which set a name belongs to, in `family`.
pub fn set_of(name: &str, family: IpFamily) -> Option<Set> {
    Set::ALL.into_iter().find(|s| s.name(family) == name)
}

/// Wanted entries per set, in `ipset save`'s spelling.
pub type Entries = BTreeMap<Set, BTreeSet<String>>;

/// What `ipset save` shows of our sets: the ones that exist, with their
/// entries.
pub fn parse_save(out: &str, family: IpFamily) -> Entries {
    let mut got = Entries::new();
    for line in out.lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next().and_then(|n| set_of(n, family))) {
            (Some("create"), Some(s)) => {
                got.entry(s).or_default();
            }
            (Some("add"), Some(s)) => {
                // The element and its extensions (`skbmark 0x10000/0xffff0000`).
                let e = w.collect::<Vec<_>>().join(" ");
                if !e.is_empty() {
                    got.entry(s).or_default().insert(e);
                }
            }
            _ => {}
        }
    }
    got
}

/// The `ipset restore` input that makes `have` into `want` (every set in
/// [`Set::ALL`] exists afterwards, possibly empty); empty when nothing
/// changes. Also returns the number of entries changed.
pub fn diff(have: &Entries, want: &Entries, family: IpFamily) -> (String, usize) {
    let mut out = String::new();
    let mut changed = 0;
    let empty = BTreeSet::new();
    for s in Set::ALL {
        let name = s.name(family);
        let w = want.get(&s).unwrap_or(&empty);
        let h = match have.get(&s) {
            Some(h) => h,
            None => {
                let _ = writeln!(out, "{}", s.create_line(family));
                &empty
            }
        };
        for e in h.difference(w) {
            let _ = writeln!(out, "del {name} {}", element(e));
            changed += 1;
        }
        for e in w.difference(h) {
            let _ = writeln!(out, "add {name} {e}");
            changed += 1;
        }
    }
    (out, changed)
}

/// The `ipset restore` input that applies entry changes to sets that
/// exist: `(set, entry, add?)`.
pub fn delta(changes: &[(Set, String, bool)], family: IpFamily) -> String {
    let mut out = String::new();
    for (s, e, add) in changes {
        if *add {
            let _ = writeln!(out, "add {} {e}", s.name(family));
        } else {
            let _ = writeln!(out, "del {} {}", s.name(family), element(e));
        }
    }
    out
}

/// The element of an entry without its extensions: `ipset del` takes no
/// `skbmark`.
fn element(e: &str) -> &str {
    e.split(' ').next().unwrap_or(e)
}

/// `ipset destroy` lines for every set that exists.
pub fn destroy(have: &Entries, family: IpFamily) -> String {
    let mut out = String::new();
    for s in have.keys() {
        let _ = writeln!(out, "destroy {}", s.name(family));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kube_proxy() {
        assert_eq!(Set::ClusterIp.name(IpFamily::V4), "KUBE-CLUSTER-IP");
        assert_eq!(Set::ClusterIp.name(IpFamily::V6), "KUBE-6-CLUSTER-IP");
        // 31 characters at most.
        assert_eq!(
            Set::LoadBalancerSourceCidr.name(IpFamily::V6),
            "KUBE-6-LOAD-BALANCER-SOURCE-CID"
        );
        for s in Set::ALL {
            assert!(s.name(IpFamily::V6).len() <= 31);
            assert_eq!(set_of(&s.name(IpFamily::V6), IpFamily::V6), Some(s));
        }
        assert_eq!(
            Set::NodePortTcp.create_line(IpFamily::V4),
            "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535"
        );
    }

    #[test]
    fn diff_creates_missing_sets_and_moves_entries() {
        let save = "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\n\
                    add KUBE-CLUSTER-IP 10.96.0.10,tcp:80\n\
                    add KUBE-CLUSTER-IP 10.96.0.11,udp:53\n\
                    create FOREIGN hash:ip family inet\nadd FOREIGN 1.2.3.4\n";
        let have = parse_save(save, IpFamily::V4);
        assert_eq!(have.len(), 1, "only our sets are read");
        let mut want = Entries::new();
        want.entry(Set::ClusterIp)
            .or_default()
            .insert("10.96.0.10,tcp:80".into());
        want.entry(Set::ClusterIp)
            .or_default()
            .insert("10.96.0.12,tcp:443".into());
        let (input, n) = diff(&have, &want, IpFamily::V4);
        assert_eq!(n, 2);
        assert!(input.contains("del KUBE-CLUSTER-IP 10.96.0.11,udp:53\n"));
        assert!(input.contains("add KUBE-CLUSTER-IP 10.96.0.12,tcp:443\n"));
        assert!(!input.contains("create KUBE-CLUSTER-IP"));
        assert!(input.contains("create KUBE-LOOP-BACK hash:ip,port,ip family inet"));
        assert!(!input.contains("FOREIGN"));
        // Applying the diff's effect leaves nothing to do.
        let mut after = want.clone();
        for s in Set::ALL {
            after.entry(s).or_default();
        }
        assert_eq!(diff(&after, &want, IpFamily::V4), (String::new(), 0));
    }
}
