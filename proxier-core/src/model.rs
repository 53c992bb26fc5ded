//! The model every backend reads: service ports and endpoints, keyed by
//! [`ServicePortName`], as kube-proxy's `pkg/proxy/types.go`,
//! `serviceport.go` and `endpoint.go` define them.
//!
//! Values here are already validated and filtered to one IP family: a
//! backend can put any of them into a rule without checking again.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// An IP family. kube-proxy runs one proxier per family; so does this crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Whether `ip` belongs to this family.
    pub fn matches(self, ip: &IpAddr) -> bool {
        IpFamily::of(ip) == self
    }

    /// The name Kubernetes uses (`IPv4`, `IPv6`).
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    /// The unspecified address of the family (`0.0.0.0`, `::`).
    pub fn unspecified(self) -> IpAddr {
        match self {
            IpFamily::V4 => IpAddr::from([0, 0, 0, 0]),
            IpFamily::V6 => IpAddr::from([0u16; 8]),
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An L4 protocol a service port can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Upper case, as Kubernetes writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// Lower case, as iptables and ipset write it (`-p tcp`).
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name` of a Service. Ordered by namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamespacedName {
    /// The namespace (a DNS-1123 label).
    pub namespace: Arc<str>,
    /// The service name (a DNS-1035 label).
    pub name: Arc<str>,
}

impl NamespacedName {
    /// Builds a name. Callers outside this crate get validated names from
    /// the conversion functions; this constructor does not validate.
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl Ord for NamespacedName {
    fn cmp(&self, other: &Self) -> Ordering {
        // The tracker shares one `Arc` per namespace: most comparisons then
        // skip the namespace's text.
        fn text(a: &Arc<str>, b: &Arc<str>) -> Ordering {
            if Arc::ptr_eq(a, b) {
                Ordering::Equal
            } else {
                a.cmp(b)
            }
        }
        text(&self.namespace, &other.namespace).then_with(|| text(&self.name, &other.name))
    }
}

impl PartialOrd for NamespacedName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The key of everything: one port of one service, with its protocol.
///
/// Displays as kube-proxy's `ServicePortName.String()`: `ns/name:port`
/// (`ns/name` when the port is unnamed); the protocol is part of the key
/// but not of the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    /// The service.
    pub service: NamespacedName,
    /// The port's name (empty for the single unnamed port).
    pub port: Arc<str>,
    /// The protocol.
    pub protocol: Protocol,
}

impl ServicePortName {
    /// Builds a key (not validated; see [`NamespacedName::new`]).
    pub fn new(
        namespace: impl Into<Arc<str>>,
        name: impl Into<Arc<str>>,
        port: impl Into<Arc<str>>,
        protocol: Protocol,
    ) -> Self {
        ServicePortName {
            service: NamespacedName::new(namespace, name),
            port: port.into(),
            protocol,
        }
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port)
        }
    }
}

/// External or internal traffic policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// Session affinity of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SessionAffinity {
    /// None: every connection is balanced on its own.
    #[default]
    None,
    /// ClientIP: the same client IP reaches the same endpoint for
    /// `timeout_seconds` after its last packet (1..=86400, default 10800).
    ClientIp {
        /// Stickiness timeout in seconds.
        timeout_seconds: u32,
    },
}

/// Kubernetes' default ClientIP affinity timeout (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10800;
/// The largest ClientIP affinity timeout the API accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECONDS: u32 = 86400;

/// One port of a service, for one IP family: every field kube-proxy's
/// `BaseServicePortInfo` carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// The key.
    pub name: ServicePortName,
    /// The cluster IP of this family.
    pub cluster_ip: IpAddr,
    /// The service port.
    pub port: u16,
    /// The node port, 0 when none.
    pub node_port: u16,
    /// External IPs of this family.
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of this family (VIP mode only).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `loadBalancerSourceRanges` of this family, parsed after trimming.
    pub load_balancer_source_ranges: Vec<IpNet>,
    /// Session affinity.
    pub session_affinity: SessionAffinity,
    /// `externalTrafficPolicy: Local` on an externally reachable service.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// The health-check node port (LoadBalancer with eTP Local), 0 when none.
    pub health_check_node_port: u16,
    /// `service.kubernetes.io/topology-mode` (or the deprecated
    /// `topology-aware-hints`) annotation, if any.
    pub hints_annotation: Option<Arc<str>>,
    /// `spec.trafficDistribution`, if any.
    pub traffic_distribution: Option<Arc<str>>,
}

impl ServicePort {
    /// `IP:port/PROTO`, as kube-proxy's `ServicePort.String()`.
    pub fn frontend(&self) -> String {
        format!(
            "{}/{}",
            SocketAddr::new(self.cluster_ip, self.port),
            self.name.protocol
        )
    }

    /// The protocol.
    pub fn protocol(&self) -> Protocol {
        self.name.protocol
    }

    /// Reachable from outside the cluster: a node port, LB IPs or external IPs.
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.load_balancer_ips.is_empty() || !self.external_ips.is_empty()
    }

    /// Whether any traffic uses the cluster-wide endpoint set (kube-proxy's
    /// `UsesClusterEndpoints`: external traffic with eTP Local still needs
    /// it to short-circuit pod and node traffic).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }

    /// Whether any traffic uses the node-local endpoint set.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }

    /// The ClientIP affinity timeout, if affinity is on.
    pub fn sticky_seconds(&self) -> Option<u32> {
        match self.session_affinity {
            SessionAffinity::None => None,
            SessionAffinity::ClientIp { timeout_seconds } => Some(timeout_seconds),
        }
    }
}

/// Topology hints of an endpoint (`hints.forZones`, `hints.forNodes`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Hints {
    /// Zones this endpoint should serve.
    pub zones: Vec<Arc<str>>,
    /// Nodes this endpoint should serve.
    pub nodes: Vec<Arc<str>>,
}

const READY: u8 = 1;
const SERVING: u8 = 2;
const TERMINATING: u8 = 4;
const LOCAL: u8 = 8;

/// One endpoint of one service port, as kube-proxy's `BaseEndpointInfo`.
///
/// Kept small (about 80 bytes): the snapshot holds one per endpoint.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address and target port.
    pub addr: SocketAddr,
    flags: u8,
    /// The node hosting it (`nodeName`), if known.
    pub node_name: Option<Arc<str>>,
    /// The endpoint's zone, if known.
    pub zone: Option<Arc<str>>,
    /// Topology hints, if any.
    pub hints: Option<Arc<Hints>>,
}

impl Endpoint {
    /// An endpoint with the given conditions.
    pub fn new(
        addr: SocketAddr,
        ready: bool,
        serving: bool,
        terminating: bool,
        local: bool,
    ) -> Self {
        let mut flags = 0;
        if ready {
            flags |= READY;
        }
        if serving {
            flags |= SERVING;
        }
        if terminating {
            flags |= TERMINATING;
        }
        if local {
            flags |= LOCAL;
        }
        Endpoint {
            addr,
            flags,
            node_name: None,
            zone: None,
            hints: None,
        }
    }

    /// A ready, serving endpoint (local or not).
    pub fn ready(addr: SocketAddr, local: bool) -> Self {
        Endpoint::new(addr, true, true, false, local)
    }

    /// The address.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    /// The target port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `conditions.ready` (nil counts as true).
    pub fn is_ready(&self) -> bool {
        self.flags & READY != 0
    }

    /// `conditions.serving` (nil counts as true).
    pub fn is_serving(&self) -> bool {
        self.flags & SERVING != 0
    }

    /// `conditions.terminating` (nil counts as false).
    pub fn is_terminating(&self) -> bool {
        self.flags & TERMINATING != 0
    }

    /// On this node.
    pub fn is_local(&self) -> bool {
        self.flags & LOCAL != 0
    }

    /// Zone hints (empty when none).
    pub fn zone_hints(&self) -> &[Arc<str>] {
        self.hints.as_deref().map(|h| &h.zones[..]).unwrap_or(&[])
    }

    /// Node hints (empty when none).
    pub fn node_hints(&self) -> &[Arc<str>] {
        self.hints.as_deref().map(|h| &h.nodes[..]).unwrap_or(&[])
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        for (bit, name) in [
            (READY, " ready"),
            (SERVING, " serving"),
            (TERMINATING, " terminating"),
            (LOCAL, " local"),
        ] {
            if self.flags & bit != 0 {
                f.write_str(name)?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)
    }
}
