//! What the renderer needs to know about the node and the flags
//! (kube-proxy's iptables flags, checked).

use std::net::IpAddr;

use ipnet::IpNet;
use proxier_core::IpFamily;
use proxier_netfilter::{ConfigError, LocalDetector, Masquerade, check_family};

/// What the renderer needs to know about the node and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The family of every rule (`iptables` or `ip6tables`).
    pub family: IpFamily,
    /// `--masquerade-bit` (0..=31, default 14 ⇒ mark `0x4000`).
    pub masquerade_bit: u8,
    /// `--masquerade-all`: masquerade all cluster IP traffic.
    pub masquerade_all: bool,
    /// `--detect-local-mode` and its CIDRs or prefix.
    pub local_detector: LocalDetector,
    /// `--nodeport-addresses`; empty means every local address.
    pub node_port_addresses: Vec<IpNet>,
    /// This node's addresses (node ports restricted by CIDR, and the
    /// source-range hairpin of kube-proxy's `KUBE-FW-` chains).
    pub node_ips: Vec<IpAddr>,
    /// `--iptables-localhost-nodeports` (IPv4 only; needs
    /// `net.ipv4.conf.all.route_localnet=1`, which the proxier sets).
    pub localhost_node_ports: bool,
    /// Append `--random-fully` to MASQUERADE.
    pub random_fully: bool,
    /// `nf_conntrack_tcp_be_liberal` is set: omit the INVALID drop rule.
    pub tcp_be_liberal: bool,
    /// Above this many endpoints, per-endpoint comments are dropped
    /// (kube-proxy's `largeClusterEndpointsThreshold`, 1,000).
    pub large_cluster_threshold: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            family: IpFamily::V4,
            masquerade_bit: 14,
            masquerade_all: false,
            local_detector: LocalDetector::None,
            node_port_addresses: Vec::new(),
            node_ips: Vec::new(),
            localhost_node_ports: true,
            random_fully: false,
            tcp_be_liberal: false,
            large_cluster_threshold: 1000,
        }
    }
}

impl Config {
    /// Checks every value that reaches a rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.masquerade().validate()?;
        check_family(
            "node_port_addresses",
            self.family,
            &self.node_port_addresses,
        )
    }

    /// Keeps the `node_port_addresses` of this family (the flag may mix
    /// families; each family's proxier takes its own, as kube-proxy's do).
    pub fn own_family(mut self) -> Config {
        self.node_port_addresses =
            proxier_netfilter::of_family(self.family, &self.node_port_addresses);
        self
    }

    /// The masquerade settings, as the shared netfilter pieces take them.
    pub fn masquerade(&self) -> Masquerade {
        Masquerade {
            family: self.family,
            masquerade_bit: self.masquerade_bit,
            masquerade_all: self.masquerade_all,
            local_detector: self.local_detector.clone(),
            random_fully: self.random_fully,
            tcp_be_liberal: self.tcp_be_liberal,
        }
    }

    /// The masquerade mark, `1 << masquerade_bit`.
    pub fn mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }

    /// The local-traffic match, negated with `!` for "not from a pod".
    pub fn local_match(&self, out: &mut String, negate: bool) {
        self.local_detector.iptables_match(out, negate);
    }

    pub(super) fn localhost_node_ports(&self) -> bool {
        self.localhost_node_ports && self.family == IpFamily::V4
    }

    pub(super) fn node_ports_match_all(&self) -> bool {
        self.node_port_addresses.is_empty()
            || self.node_port_addresses.iter().any(|n| n.prefix_len() == 0)
    }
}
