//! Portal rules: the iptables rules that send service traffic to the
//! proxy's own ports (kube-proxy's userspace `iptables` portals, §6.5 of
//! the reference), rendered here and written through
//! `proxier_netfilter::write_owned`. Check by hand with
//! `iptables-save -t nat | grep -e PORTALS -e NODEPORT`.
//!
//! | chain | table, hooked from | what |
//! |---|---|---|
//! | `KUBE-PORTALS-CONTAINER` | nat `PREROUTING` (first) | cluster, external and LB IPs from pods and outside: `REDIRECT --to-ports P` |
//! | `KUBE-PORTALS-HOST` | nat `OUTPUT` (first) | the same from the node itself |
//! | `KUBE-NODEPORT-CONTAINER` | nat `PREROUTING` (last, `--dst-type LOCAL`) | node ports |
//! | `KUBE-NODEPORT-HOST` | nat `OUTPUT` (last, `--dst-type LOCAL`) | node ports from the node |
//! | `KUBE-NODEPORT-NON-LOCAL` | filter `INPUT` (first, new connections) | accept redirected traffic to the proxy ports |
//! | `KUBE-PORTALS-FILTER` | filter `INPUT`, `FORWARD`, `OUTPUT` (first, new connections) | `REJECT` for ports without endpoints, `DROP` outside `loadBalancerSourceRanges` |
//!
//! The filter chains hold a rule per service port and every packet the
//! node receives or sends passes through `INPUT` or `OUTPUT`: their jumps
//! match `--ctstate NEW` only, so the bytes a proxy relays do not walk them
//! (with 10,000 services they cut relayed throughput by a third). As in
//! kube-proxy, which accepted `--state NEW` only, later packets are left to
//! the node's own `ESTABLISHED` rule.
//!
//! The original DNATed host traffic to the node IP; `REDIRECT` in
//! `OUTPUT` (to the loopback address) needs no node IP and works for
//! `localhost` node ports too. The original let a port without endpoints
//! accept and close; here it is refused, as in iptables mode.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use proxier_core::{Protocol, ServicePort};
use proxier_netfilter::safe_service_port_name;
use proxier_netfilter::{Jump, Position, TableRules};

pub use proxier_netfilter::chains::{
    KUBE_NODEPORT_CONTAINER as NODEPORT_CONTAINER, KUBE_NODEPORT_HOST as NODEPORT_HOST,
    KUBE_NODEPORT_NON_LOCAL as NODEPORT_NON_LOCAL, KUBE_PORTALS_CONTAINER as PORTALS_CONTAINER,
    KUBE_PORTALS_FILTER as PORTALS_FILTER, KUBE_PORTALS_HOST as PORTALS_HOST,
};

/// Whether a chain is one of the portal chains (what cleanup removes).
pub fn is_portal_chain(c: &str) -> bool {
    [
        PORTALS_CONTAINER,
        PORTALS_HOST,
        NODEPORT_CONTAINER,
        NODEPORT_HOST,
        NODEPORT_NON_LOCAL,
        PORTALS_FILTER,
    ]
    .contains(&c)
}

/// One service port as the portals see it.
#[derive(Debug, Clone)]
pub struct PortalPort<'a> {
    /// The service port.
    pub svc: &'a ServicePort,
    /// The proxy's port for it.
    pub proxy_port: u16,
    /// Whether it has endpoints (else its addresses are refused).
    pub has_endpoints: bool,
    /// Without endpoints because none is on this node under
    /// `internalTrafficPolicy: Local`: its addresses drop instead
    /// (iptables mode's "has no local endpoints").
    pub no_local_endpoints: bool,
}

/// A service port whose name cannot go into a rule comment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{service}: name is not a DNS label and cannot go into an iptables comment; skipped")]
pub struct UnsafeName {
    /// The service port.
    pub service: String,
}

/// The rules for every port, with `--nodeport-addresses` (empty: every
/// local address). Ports with unsafe names are left out and reported.
pub fn render(
    ports: &[PortalPort<'_>],
    node_port_cidrs: &[IpNet],
) -> (TableRules, TableRules, Vec<UnsafeName>) {
    let (mut pc, mut ph, mut nc, mut nh, mut nl, mut pf) = Default::default();
    let mut errors = Vec::new();
    for p in ports {
        let n = &p.svc.name;
        if !safe_service_port_name(n) {
            errors.push(UnsafeName {
                service: n.to_string(),
            });
            continue;
        }
        port_rules(
            p,
            node_port_cidrs,
            [&mut pc, &mut ph, &mut nc, &mut nh, &mut nl, &mut pf],
        );
    }
    let chain = |name: &str, body: String| (name.to_string(), body);
    let nat = TableRules {
        chains: vec![
            chain(PORTALS_CONTAINER, pc),
            chain(PORTALS_HOST, ph),
            chain(NODEPORT_CONTAINER, nc),
            chain(NODEPORT_HOST, nh),
        ],
        jumps: vec![
            jump(
                "PREROUTING",
                "",
                "handle ClusterIPs; NOTE: this must be before the NodePort rules",
                PORTALS_CONTAINER,
                Position::First,
            ),
            jump(
                "OUTPUT",
                "",
                "handle ClusterIPs; NOTE: this must be before the NodePort rules",
                PORTALS_HOST,
                Position::First,
            ),
            jump(
                "PREROUTING",
                "-m addrtype --dst-type LOCAL ",
                "handle service NodePorts; NOTE: this must be the last rule in the chain",
                NODEPORT_CONTAINER,
                Position::Last,
            ),
            jump(
                "OUTPUT",
                "-m addrtype --dst-type LOCAL ",
                "handle service NodePorts; NOTE: this must be the last rule in the chain",
                NODEPORT_HOST,
                Position::Last,
            ),
        ],
    };
    let filter = TableRules {
        chains: vec![chain(NODEPORT_NON_LOCAL, nl), chain(PORTALS_FILTER, pf)],
        jumps: vec![
            jump(
                "INPUT",
                NEW_ONLY,
                "Ensure that non-local NodePort traffic can flow",
                NODEPORT_NON_LOCAL,
                Position::First,
            ),
            jump(
                "INPUT",
                NEW_ONLY,
                "userspace proxy refusals and source ranges",
                PORTALS_FILTER,
                Position::First,
            ),
            jump(
                "FORWARD",
                NEW_ONLY,
                "userspace proxy refusals and source ranges",
                PORTALS_FILTER,
                Position::First,
            ),
            jump(
                "OUTPUT",
                NEW_ONLY,
                "userspace proxy refusals and source ranges",
                PORTALS_FILTER,
                Position::First,
            ),
        ],
    };
    (nat, filter, errors)
}

/// What the filter jumps match: a connection's first packets.
const NEW_ONLY: &str = "-m conntrack --ctstate NEW ";

fn jump(from: &'static str, pre: &str, comment: &str, to: &str, position: Position) -> Jump {
    Jump {
        from,
        rule: format!("{pre}-m comment --comment \"{comment}\" -j {to}"),
        position,
    }
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// `-A CHAIN [-s SRC] [-d IP/32] -p P -m comment --comment NAME -m P --dport N`
fn head(
    out: &mut String,
    chain: &str,
    src: Option<&IpNet>,
    dst: Option<IpAddr>,
    proto: Protocol,
    name: &str,
    port: u16,
) {
    let _ = write!(out, "-A {chain}");
    if let Some(s) = src {
        let _ = write!(out, " -s {s}");
    }
    if let Some(d) = dst {
        let _ = write!(out, " -d {d}/{}", host_prefix(d));
    }
    let p = proto.lower();
    let _ = write!(
        out,
        " -p {p} -m comment --comment {name} -m {p} --dport {port}"
    );
}

fn port_rules(p: &PortalPort<'_>, np_cidrs: &[IpNet], [pc, ph, nc, nh, nl, pf]: [&mut String; 6]) {
    let svc = p.svc;
    let name = svc.name.to_string();
    let proto = svc.protocol();
    if proto == Protocol::Sctp {
        return; // Not proxied in user space (as the original).
    }
    let redirect = format!(" -j REDIRECT --to-ports {}\n", p.proxy_port);
    let no_endpoints = if p.no_local_endpoints {
        " -j DROP\n"
    } else {
        " -j REJECT\n"
    };
    // Service addresses: the cluster IP, external IPs, LB IPs (the LB IPs
    // only from the allowed ranges, when there are ranges).
    let mut addrs: Vec<(IpAddr, bool)> = vec![(svc.cluster_ip, false)];
    addrs.extend(svc.external_ips.iter().map(|ip| (*ip, false)));
    addrs.extend(svc.load_balancer_ips.iter().map(|ip| (*ip, true)));
    for (ip, is_lb) in addrs {
        if !p.has_endpoints {
            head(pf, PORTALS_FILTER, None, Some(ip), proto, &name, svc.port);
            pf.push_str(no_endpoints);
            continue;
        }
        let ranges: Vec<Option<&IpNet>> = if is_lb && !svc.load_balancer_source_ranges.is_empty() {
            svc.load_balancer_source_ranges.iter().map(Some).collect()
        } else {
            vec![None]
        };
        for src in &ranges {
            for (out, chain) in [(&mut *pc, PORTALS_CONTAINER), (&mut *ph, PORTALS_HOST)] {
                head(out, chain, *src, Some(ip), proto, &name, svc.port);
                out.push_str(&redirect);
            }
        }
        if ranges != [None] {
            // What the ranges did not redirect is dropped, not routed on.
            head(pf, PORTALS_FILTER, None, Some(ip), proto, &name, svc.port);
            pf.push_str(" -j DROP\n");
        }
    }
    if svc.node_port != 0 {
        let dsts: Vec<Option<&IpNet>> = if np_cidrs.is_empty() {
            vec![None]
        } else {
            np_cidrs.iter().map(Some).collect()
        };
        for d in dsts {
            let mut rule = String::new();
            if let Some(cidr) = d {
                let _ = write!(rule, " -d {cidr}");
            }
            let p_ = proto.lower();
            let _ = write!(
                rule,
                " -p {p_} -m comment --comment {name} -m {p_} --dport {}",
                svc.node_port
            );
            if p.has_endpoints {
                let _ = writeln!(nc, "-A {NODEPORT_CONTAINER}{rule}{}", redirect.trim_end());
                let _ = writeln!(nh, "-A {NODEPORT_HOST}{rule}{}", redirect.trim_end());
            } else {
                let _ = write!(
                    pf,
                    "-A {PORTALS_FILTER} -m addrtype --dst-type LOCAL{rule}{no_endpoints}"
                );
            }
        }
    }
    if p.has_endpoints {
        let p_ = proto.lower();
        let _ = writeln!(
            nl,
            "-A {NODEPORT_NON_LOCAL} -p {p_} -m comment --comment {name} -m {p_} --dport {} -m conntrack --ctstate DNAT -j ACCEPT",
            p.proxy_port
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxier_core::{ServicePortName, SessionAffinity};

    fn svc(name: &str, proto: Protocol) -> ServicePort {
        ServicePort {
            name: ServicePortName::new("ns", name, "p", proto),
            cluster_ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            node_port: 0,
            external_ips: vec![],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
            session_affinity: SessionAffinity::None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: 0,
            hints_annotation: None,
            traffic_distribution: None,
        }
    }

    fn lines(t: &TableRules) -> Vec<String> {
        t.chains
            .iter()
            .flat_map(|(_, b)| b.lines().map(str::to_owned))
            .collect()
    }

    #[test]
    fn cluster_ip_and_node_port() {
        let mut s = svc("web", Protocol::Tcp);
        s.node_port = 30080;
        let (nat, filter, errs) = render(
            &[PortalPort {
                svc: &s,
                proxy_port: 40000,
                has_endpoints: true,
                no_local_endpoints: false,
            }],
            &[],
        );
        assert!(errs.is_empty());
        assert_eq!(
            lines(&nat),
            vec![
                "-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp -m comment --comment ns/web:p -m tcp --dport 80 -j REDIRECT --to-ports 40000",
                "-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp -m comment --comment ns/web:p -m tcp --dport 80 -j REDIRECT --to-ports 40000",
                "-A KUBE-NODEPORT-CONTAINER -p tcp -m comment --comment ns/web:p -m tcp --dport 30080 -j REDIRECT --to-ports 40000",
                "-A KUBE-NODEPORT-HOST -p tcp -m comment --comment ns/web:p -m tcp --dport 30080 -j REDIRECT --to-ports 40000",
            ]
        );
        assert_eq!(
            lines(&filter),
            vec![
                "-A KUBE-NODEPORT-NON-LOCAL -p tcp -m comment --comment ns/web:p -m tcp --dport 40000 -m conntrack --ctstate DNAT -j ACCEPT"
            ]
        );
        assert_eq!(nat.jumps.len(), 4);
        assert!(
            nat.jumps
                .iter()
                .all(|j| is_portal_chain(proxier_netfilter::rule_target(&j.rule).unwrap()))
        );
    }

    #[test]
    fn no_endpoints_are_refused_and_ranges_limit_lb_ips() {
        let mut empty = svc("empty", Protocol::Udp);
        empty.node_port = 30053;
        let mut lb = svc("lb", Protocol::Tcp);
        lb.load_balancer_ips = vec!["198.51.100.1".parse().unwrap()];
        lb.load_balancer_source_ranges = vec!["192.168.0.0/24".parse().unwrap()];
        let (nat, filter, _) = render(
            &[
                PortalPort {
                    svc: &empty,
                    proxy_port: 1,
                    has_endpoints: false,
                    no_local_endpoints: false,
                },
                PortalPort {
                    svc: &lb,
                    proxy_port: 2,
                    has_endpoints: true,
                    no_local_endpoints: false,
                },
            ],
            &["192.168.50.0/24".parse().unwrap()],
        );
        let f = lines(&filter);
        assert!(f.contains(&"-A KUBE-PORTALS-FILTER -d 10.96.0.10/32 -p udp -m comment --comment ns/empty:p -m udp --dport 80 -j REJECT".to_string()), "{f:#?}");
        assert!(f.contains(&"-A KUBE-PORTALS-FILTER -m addrtype --dst-type LOCAL -d 192.168.50.0/24 -p udp -m comment --comment ns/empty:p -m udp --dport 30053 -j REJECT".to_string()), "{f:#?}");
        assert!(f.contains(&"-A KUBE-PORTALS-FILTER -d 198.51.100.1/32 -p tcp -m comment --comment ns/lb:p -m tcp --dport 80 -j DROP".to_string()), "{f:#?}");
        let n = lines(&nat);
        assert!(n.contains(&"-A KUBE-PORTALS-CONTAINER -s 192.168.0.0/24 -d 198.51.100.1/32 -p tcp -m comment --comment ns/lb:p -m tcp --dport 80 -j REDIRECT --to-ports 2".to_string()), "{n:#?}");
        assert!(!n.iter().any(|l| l.contains("ns/empty")), "{n:#?}");
    }

    #[test]
    fn no_local_endpoint_drops() {
        let mut itp = svc("itp", Protocol::Tcp);
        itp.internal_policy_local = true;
        itp.node_port = 30090;
        let (_, filter, _) = render(
            &[PortalPort {
                svc: &itp,
                proxy_port: 1,
                has_endpoints: false,
                no_local_endpoints: true,
            }],
            &[],
        );
        let f = lines(&filter);
        assert_eq!(
            f,
            vec![
                "-A KUBE-PORTALS-FILTER -d 10.96.0.10/32 -p tcp -m comment --comment ns/itp:p -m tcp --dport 80 -j DROP",
                "-A KUBE-PORTALS-FILTER -m addrtype --dst-type LOCAL -p tcp -m comment --comment ns/itp:p -m tcp --dport 30090 -j DROP",
            ]
        );
    }

    #[test]
    fn unsafe_names_are_skipped() {
        let mut bad = svc("web", Protocol::Tcp);
        bad.name.port = "p --dport 1 -j ACCEPT".into();
        let good = svc("ok", Protocol::Tcp);
        let (nat, _, errs) = render(
            &[
                PortalPort {
                    svc: &bad,
                    proxy_port: 1,
                    has_endpoints: true,
                    no_local_endpoints: false,
                },
                PortalPort {
                    svc: &good,
                    proxy_port: 2,
                    has_endpoints: true,
                    no_local_endpoints: false,
                },
            ],
            &[],
        );
        assert_eq!(errs.len(), 1);
        let n = lines(&nat);
        assert_eq!(n.len(), 2);
        assert!(n.iter().all(|l| l.contains("ns/ok:p")));
    }
}
