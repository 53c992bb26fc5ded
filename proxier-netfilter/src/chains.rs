//! kube-proxy's chain names, written once for every backend: the
//! iptables mode's fixed chains (`pkg/proxy/iptables/proxier.go`), the
//! IPVS mode's companion chains (`pkg/proxy/ipvs/proxier.go`) and the
//! userspace mode's portal chains (`pkg/proxy/userspace/proxier.go`).
//! Check by hand with `iptables-save | grep :KUBE-`.

/// nat: dispatch of service addresses; filter: REJECT/DROP for services
/// without endpoints (iptables), masquerade and accept rules by set (IPVS).
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// filter: REJECT/DROP for external IPs, LB IPs and node ports without
/// (local) endpoints (iptables).
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// nat: node-port dispatch; filter: health-check node ports (iptables).
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
/// nat: masquerades what [`KUBE_MARK_MASQ`] marked (every NAT mode).
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat: sets the masquerade mark (every NAT mode).
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// filter: drop invalid, accept marked and established forwarded traffic.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
/// filter: drops LB traffic outside `loadBalancerSourceRanges`.
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// filter: the kubelet's anti-martian rule for localhost node ports (IPv4).
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
/// mangle, nat, filter: the empty chain kube-proxy watches to notice that
/// another program flushed its rules.
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";

/// Prefixes of iptables mode's per-service chains (kube-proxy's
/// `isServiceChainName`).
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// Whether `chain` is one of iptables mode's per-service chains.
pub fn is_service_chain(chain: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| chain.starts_with(p))
}

/// nat and filter: node ports (IPVS).
pub const KUBE_NODE_PORT: &str = "KUBE-NODE-PORT";
/// nat: LB IPs (IPVS).
pub const KUBE_LOAD_BALANCER: &str = "KUBE-LOAD-BALANCER";
/// filter: `loadBalancerSourceRanges` by set (IPVS).
pub const KUBE_SOURCE_RANGES_FIREWALL: &str = "KUBE-SOURCE-RANGES-FIREWALL";
/// filter: refuses new connections to `kube-ipvs0` addresses that are
/// not service ports (IPVS).
pub const KUBE_IPVS_FILTER: &str = "KUBE-IPVS-FILTER";
/// filter: blocks node → LB traffic outside its source ranges (IPVS).
pub const KUBE_IPVS_OUT_FILTER: &str = "KUBE-IPVS-OUT-FILTER";

/// nat: cluster, external and LB IPs to the proxy (userspace, from
/// `PREROUTING`).
pub const KUBE_PORTALS_CONTAINER: &str = "KUBE-PORTALS-CONTAINER";
/// nat: the same from the node (userspace, `OUTPUT`).
pub const KUBE_PORTALS_HOST: &str = "KUBE-PORTALS-HOST";
/// nat: node ports (userspace, from `PREROUTING`).
pub const KUBE_NODEPORT_CONTAINER: &str = "KUBE-NODEPORT-CONTAINER";
/// nat: node ports from the node (userspace, `OUTPUT`).
pub const KUBE_NODEPORT_HOST: &str = "KUBE-NODEPORT-HOST";
/// filter: accepts redirected traffic to proxy ports (userspace, `INPUT`).
pub const KUBE_NODEPORT_NON_LOCAL: &str = "KUBE-NODEPORT-NON-LOCAL";
/// filter: refusals and source-range drops (userspace).
pub const KUBE_PORTALS_FILTER: &str = "KUBE-PORTALS-FILTER";

/// Every fixed chain name any mode of proxier writes, in any table.
pub const ALL_FIXED: [&str; 19] = [
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_MARK_MASQ,
    KUBE_FORWARD,
    KUBE_PROXY_FIREWALL,
    KUBE_FIREWALL,
    KUBE_PROXY_CANARY,
    KUBE_NODE_PORT,
    KUBE_LOAD_BALANCER,
    KUBE_SOURCE_RANGES_FIREWALL,
    KUBE_IPVS_FILTER,
    KUBE_IPVS_OUT_FILTER,
    KUBE_PORTALS_CONTAINER,
    KUBE_PORTALS_HOST,
    KUBE_NODEPORT_CONTAINER,
    KUBE_NODEPORT_HOST,
    KUBE_NODEPORT_NON_LOCAL,
];

/// Whether `chain` is written by some mode of proxier (a fixed chain of
/// any mode, or a per-service chain of iptables mode): what `--cleanup`
/// of every mode may flush.
pub fn is_any_mode_chain(chain: &str) -> bool {
    ALL_FIXED.contains(&chain) || chain == KUBE_PORTALS_FILTER || is_service_chain(chain)
}
