//! What one service port asks of the kernel in IPVS mode: its virtual
//! servers with their real servers, the addresses `kube-ipvs0` must hold,
//! its ipset entries, and its `KUBE-IPVS-OUT-FILTER` rules. Pure: the
//! proxier keeps one [`Contribution`] per service port and applies the
//! difference when a service changes.

use std::net::IpAddr;

use ipnet::IpNet;
use proxier_core::{Endpoint, IpFamily, Protocol, ServicePort, Snapshot};

use crate::sets::Set;
use ipvs_netlink::ip_vs::IP_VS_SVC_F_PERSISTENT;
use ipvs_netlink::{Dest, Service};

/// `IP_VS_SVC_F_SCHED1`, which kube-proxy sets for `mh`
/// (`FlagSourceHash`).
pub const IP_VS_SVC_F_SCHED1: u32 = 0x0008;

/// What every contribution depends on besides the service.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The proxier's family.
    pub family: IpFamily,
    /// `--ipvs-scheduler`.
    pub scheduler: String,
    /// Addresses that get a virtual server per node port.
    pub node_port_ips: Vec<IpAddr>,
    /// The node's addresses (source ranges that contain one let the node
    /// reach the LB IP).
    pub node_ips: Vec<IpAddr>,
    /// The bits of the packet mark that select an
    /// `externalTrafficPolicy: Local` service port's firewall-mark virtual
    /// server ([`Config::external_local_mark_mask`](crate::Config)).
    pub mark_mask: u32,
}

/// The identity of a virtual server: `(protocol, address, port, fwmark)`
/// (a firewall-mark one has protocol 0, the unspecified address and port
/// 0, as the kernel reports it).
pub type VsKey = (u16, IpAddr, u16, u32);

/// The key of a codec service. A firewall-mark service is known by its
/// mark alone (the kernel reports neither protocol nor port for it; ours
/// carry their service port's protocol, for graceful termination).
pub fn key_of(s: &Service) -> VsKey {
    if s.fwmark != 0 {
        (0, s.addr, 0, s.fwmark)
    } else {
        (s.protocol, s.addr, s.port, s.fwmark)
    }
}

/// Whether `svc` gets a firewall-mark virtual server for traffic from
/// inside the node to its external destinations: `externalTrafficPolicy:
/// Local` with an external IP, a load-balancer IP or a node port, unless
/// the mark mask is 0 (kube-proxy's IPVS semantics). Pods
/// and the node then reach every endpoint the internal policy allows, as
/// iptables mode's `KUBE-EXT-` chain sends them ("pod traffic for …
/// external destinations", "masquerade LOCAL traffic for … LB IP"), while
/// traffic from outside keeps to the local endpoints with its source.
pub fn wants_mark(svc: &ServicePort, s: &Settings) -> bool {
    s.mark_mask != 0
        && svc.external_policy_local
        && (!svc.external_ips.is_empty()
            || !svc.load_balancer_ips.is_empty()
            || (svc.node_port != 0 && !s.node_port_ips.is_empty()))
}

/// A service port's share of the kernel state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contribution {
    /// Virtual servers, each with the real servers it should have.
    pub services: Vec<(Service, Vec<Dest>)>,
    /// Addresses bound to `kube-ipvs0`.
    pub binds: Vec<IpAddr>,
    /// ipset entries.
    pub entries: Vec<(Set, String)>,
    /// `KUBE-IPVS-OUT-FILTER` rules (`-A` lines, no newline).
    pub out_filter: Vec<String>,
}

/// The external destinations of `svc` (external IPs, LB IPs, node
/// address × node port) as `ipset save` prints them (`ip,proto:port`).
pub fn external_destinations(svc: &ServicePort, s: &Settings) -> Vec<String> {
    let p = svc.protocol();
    let mut out: Vec<String> = svc
        .external_ips
        .iter()
        .chain(&svc.load_balancer_ips)
        .map(|ip| ip_port(*ip, p, svc.port))
        .collect();
    if svc.node_port != 0 {
        out.extend(
            s.node_port_ips
                .iter()
                .map(|ip| ip_port(*ip, p, svc.node_port)),
        );
    }
    out
}

/// The IP protocol number.
pub fn ipproto(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn unspecified(family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpFamily::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

fn full_mask(family: IpFamily) -> u32 {
    match family {
        IpFamily::V4 => u32::MAX,
        IpFamily::V6 => 128,
    }
}

/// `ip,proto:port` as `ipset save` prints it.
fn ip_port(ip: IpAddr, p: Protocol, port: u16) -> String {
    format!("{ip},{}:{port}", p.lower())
}

/// A network as `ipset save` prints it: host bits cleared, no prefix when
/// it is a single address.
fn net(n: &IpNet) -> String {
    let n = n.trunc();
    if n.prefix_len() == n.max_prefix_len() {
        n.addr().to_string()
    } else {
        n.to_string()
    }
}

/// The contribution of `svc` under `snap`; `mark` is the firewall mark of
/// its virtual server for traffic from inside (given when [`wants_mark`]).
pub fn contribution(
    svc: &ServicePort,
    snap: &Snapshot,
    s: &Settings,
    mark: Option<u32>,
) -> Contribution {
    let mut c = Contribution::default();
    let proto = svc.protocol();
    let pn = ipproto(proto);
    let cat = snap.categorize(svc);
    let dests = |eps: &[&Endpoint]| -> Vec<Dest> {
        eps.iter()
            .map(|e| Dest::masq(e.addr.ip(), e.addr.port(), 1))
            .collect()
    };
    let internal = dests(if svc.internal_policy_local {
        cat.local()
    } else {
        cat.cluster()
    });
    let external = dests(if svc.external_policy_local {
        cat.local()
    } else {
        cat.cluster()
    });
    let vs = |addr: IpAddr, port: u16| {
        let mut flags = 0;
        let mut timeout = 0;
        if let Some(t) = svc.sticky_seconds() {
            flags |= IP_VS_SVC_F_PERSISTENT;
            timeout = t;
        }
        if s.scheduler == "mh" {
            flags |= IP_VS_SVC_F_SCHED1;
        }
        Service {
            addr,
            protocol: pn,
            port,
            fwmark: 0,
            scheduler: s.scheduler.clone(),
            flags,
            timeout,
            netmask: full_mask(s.family),
            stats: None,
        }
    };
    let port = svc.port;
    // Cluster IP.
    c.services
        .push((vs(svc.cluster_ip, port), internal.clone()));
    c.binds.push(svc.cluster_ip);
    c.entries
        .push((Set::ClusterIp, ip_port(svc.cluster_ip, proto, port)));
    // iTP Local with endpoints elsewhere only: dropped, as iptables mode's
    // "has no local endpoints" (a virtual server without real servers
    // would be answered with a reset).
    if svc.internal_policy_local && cat.has_any && cat.local().is_empty() {
        c.entries
            .push((Set::NoLocalEndpoints, ip_port(svc.cluster_ip, proto, port)));
    }
    // Traffic from inside to the external destinations of an eTP Local
    // service: one firewall-mark virtual server with the internal
    // policy's endpoints, selected by the mark that `KUBE-EXTERNAL-LOCAL-MARK`
    // maps each destination to.
    let marked = |c: &mut Contribution, ip: IpAddr, p: u16| {
        if let Some(m) = mark {
            c.entries.push((
                Set::ExternalLocalMark,
                format!(
                    "{} skbmark {m:#x}/{:#x}",
                    ip_port(ip, proto, p),
                    s.mark_mask
                ),
            ));
        }
    };
    if let Some(m) = mark {
        let mut fw = vs(unspecified(s.family), 0);
        fw.fwmark = m;
        c.services.push((fw, internal));
    }
    // External IPs.
    for ip in &svc.external_ips {
        c.services.push((vs(*ip, port), external.clone()));
        if !s.node_ips.contains(ip) {
            c.binds.push(*ip);
        }
        let set = if svc.external_policy_local {
            Set::ExternalIpLocal
        } else {
            Set::ExternalIp
        };
        c.entries.push((set, ip_port(*ip, proto, port)));
        marked(&mut c, *ip, port);
    }
    // Load-balancer IPs.
    for ip in &svc.load_balancer_ips {
        c.services.push((vs(*ip, port), external.clone()));
        if !s.node_ips.contains(ip) {
            c.binds.push(*ip);
        }
        let e = ip_port(*ip, proto, port);
        marked(&mut c, *ip, port);
        c.entries.push((Set::LoadBalancer, e.clone()));
        if svc.external_policy_local {
            c.entries.push((Set::LoadBalancerLocal, e.clone()));
        }
        if !svc.load_balancer_source_ranges.is_empty() {
            c.entries.push((Set::LoadBalancerFw, e.clone()));
            let mut from_node = false;
            for r in &svc.load_balancer_source_ranges {
                c.entries
                    .push((Set::LoadBalancerSourceCidr, format!("{e},{}", net(r))));
                from_node |= s.node_ips.iter().any(|n| r.contains(n));
            }
            if from_node {
                c.entries
                    .push((Set::LoadBalancerSourceIp, format!("{e},{ip}")));
            } else {
                c.out_filter.push(format!(
                    "-A KUBE-IPVS-OUT-FILTER -s {ip} -m ipvs --vaddr {ip} --vproto {} --vport {port} -j DROP",
                    proto.lower()
                ));
            }
        }
    }
    // Node ports.
    if svc.node_port != 0 {
        let np = svc.node_port;
        for ip in &s.node_port_ips {
            c.services.push((vs(*ip, np), external.clone()));
            marked(&mut c, *ip, np);
        }
        let local = svc.external_policy_local;
        match proto {
            Protocol::Tcp | Protocol::Udp => {
                let (all, loc) = if proto == Protocol::Tcp {
                    (Set::NodePortTcp, Set::NodePortLocalTcp)
                } else {
                    (Set::NodePortUdp, Set::NodePortLocalUdp)
                };
                c.entries.push((all, np.to_string()));
                if local {
                    c.entries.push((loc, np.to_string()));
                }
            }
            Protocol::Sctp => {
                for ip in &s.node_port_ips {
                    let e = ip_port(*ip, proto, np);
                    c.entries.push((Set::NodePortSctp, e.clone()));
                    if local {
                        c.entries.push((Set::NodePortLocalSctp, e));
                    }
                }
            }
        }
    }
    if svc.health_check_node_port != 0 {
        c.entries.push((
            Set::HealthCheckNodePort,
            svc.health_check_node_port.to_string(),
        ));
    }
    // Hairpin: local endpoints reaching themselves.
    for e in snap.endpoints_of(&svc.name).iter().filter(|e| e.is_local()) {
        let ip = e.addr.ip();
        c.entries.push((
            Set::LoopBack,
            format!("{},{ip}", ip_port(ip, proto, e.addr.port())),
        ));
    }
    c
}
