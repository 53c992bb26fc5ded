//! The masquerade configuration every NAT mode shares (the mark, masquerade
//! all, local-traffic detection, `--random-fully`, the INVALID drop) and
//! the chains built from it alone: `KUBE-MARK-MASQ`, `KUBE-POSTROUTING`,
//! `KUBE-FORWARD`, as kube-proxy's iptables and IPVS modes write them.

use std::fmt::Write as _;

use ipnet::IpNet;
use proxier_core::IpFamily;

use crate::chains::{KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_POSTROUTING};
use crate::escape::safe_interface_name;
use crate::local::LocalDetector;

/// How traffic is marked for masquerade and which traffic is local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// The family of every rule (`iptables` or `ip6tables`).
    pub family: IpFamily,
    /// `--iptables-masquerade-bit` (0..=31, default 14 ⇒ mark `0x4000`).
    pub masquerade_bit: u8,
    /// `--masquerade-all`: masquerade all cluster IP traffic.
    pub masquerade_all: bool,
    /// `--detect-local-mode` and its CIDRs or prefix.
    pub local_detector: LocalDetector,
    /// Append `--random-fully` to MASQUERADE.
    pub random_fully: bool,
    /// `net.netfilter.nf_conntrack_tcp_be_liberal` is set: omit the
    /// INVALID drop rule (read through [`crate::Sysctl`]).
    pub tcp_be_liberal: bool,
}

impl Default for Masquerade {
    fn default() -> Self {
        Masquerade {
            family: IpFamily::V4,
            masquerade_bit: 14,
            masquerade_all: false,
            local_detector: LocalDetector::None,
            random_fully: false,
            tcp_be_liberal: false,
        }
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {field}: {reason} (got {value:?})")]
pub struct ConfigError {
    /// The flag or field.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// Why it was refused.
    pub reason: &'static str,
}

impl ConfigError {
    /// A refusal of `value` for `field`.
    pub fn new(field: &'static str, value: impl ToString, reason: &'static str) -> ConfigError {
        ConfigError {
            field,
            value: value.to_string(),
            reason,
        }
    }
}

/// The CIDRs of `nets` that are of `family`: kube-proxy's
/// `NewNodePortAddresses`, which takes `--nodeport-addresses` of both
/// families and gives each family's proxier its own (none of the family
/// means every address of it).
pub fn of_family(family: IpFamily, nets: &[IpNet]) -> Vec<IpNet> {
    nets.iter()
        .copied()
        .filter(|n| family.matches(&n.addr()))
        .collect()
}

/// Checks that every CIDR of `nets` is of `family`.
pub fn check_family(
    field: &'static str,
    family: IpFamily,
    nets: &[IpNet],
) -> Result<(), ConfigError> {
    match nets.iter().find(|n| !family.matches(&n.addr())) {
        Some(n) => Err(ConfigError::new(field, n, "wrong IP family")),
        None => Ok(()),
    }
}

impl Masquerade {
    /// Defaults for `family`.
    pub fn new(family: IpFamily) -> Masquerade {
        Masquerade {
            family,
            ..Masquerade::default()
        }
    }

    /// Checks every value that reaches a rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.masquerade_bit > 31 {
            return Err(ConfigError::new(
                "masquerade_bit",
                self.masquerade_bit,
                "must be 0..=31",
            ));
        }
        match &self.local_detector {
            LocalDetector::ClusterCidr(cidrs) => check_family("cluster_cidr", self.family, cidrs),
            // `PREFIX+` must fit an interface name.
            LocalDetector::InterfacePrefix(p) if !safe_interface_name(p) || p.len() >= 15 => Err(
                ConfigError::new("interface_prefix", p, "not an interface name prefix"),
            ),
            _ => Ok(()),
        }
    }

    /// The masquerade mark, `1 << masquerade_bit`.
    pub fn mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }

    /// The local-traffic match, negated with `!` for "not from a pod"
    /// (see [`LocalDetector::iptables_match`]).
    pub fn local_match(&self, out: &mut String, negate: bool) {
        self.local_detector.iptables_match(out, negate);
    }

    /// `KUBE-FORWARD`: drop invalid (unless `tcp_be_liberal`), accept
    /// marked traffic and established flows.
    pub fn forward_rules(&self) -> String {
        let mark = self.mark();
        let mut fwd = String::new();
        if !self.tcp_be_liberal {
            let _ = writeln!(
                fwd,
                "-A {KUBE_FORWARD} -m conntrack --ctstate INVALID -j DROP"
            );
        }
        let _ = writeln!(
            fwd,
            "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {mark:#x}/{mark:#x} -j ACCEPT"
        );
        let _ = writeln!(
            fwd,
            "-A {KUBE_FORWARD} -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        );
        fwd
    }

    /// `KUBE-POSTROUTING`: masquerade what `KUBE-MARK-MASQ` marked, and
    /// clear the mark so it does not leak.
    pub fn postrouting_rules(&self) -> String {
        let mark = self.mark();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "-A {KUBE_POSTROUTING} -m mark ! --mark {mark:#x}/{mark:#x} -j RETURN"
        );
        let _ = writeln!(out, "-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark:#x}");
        let _ = write!(
            out,
            "-A {KUBE_POSTROUTING} -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE"
        );
        if self.random_fully {
            out.push_str(" --random-fully");
        }
        out.push('\n');
        out
    }

    /// `KUBE-MARK-MASQ`: set the masquerade mark.
    pub fn mark_masq_rules(&self) -> String {
        format!("-A {KUBE_MARK_MASQ} -j MARK --or-mark {:#x}\n", self.mark())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_fixed_chains() {
        let m = Masquerade::default();
        assert_eq!(
            m.mark_masq_rules(),
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n"
        );
        assert_eq!(
            m.postrouting_rules().lines().next(),
            Some("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN")
        );
        assert!(
            m.forward_rules()
                .starts_with("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n")
        );
        let liberal = Masquerade {
            tcp_be_liberal: true,
            random_fully: true,
            ..m
        };
        assert!(!liberal.forward_rules().contains("INVALID"));
        assert!(
            liberal
                .postrouting_rules()
                .ends_with("-j MASQUERADE --random-fully\n")
        );
    }

    #[test]
    fn refuses_what_cannot_reach_a_rule() {
        let bad_bit = Masquerade {
            masquerade_bit: 32,
            ..Masquerade::default()
        };
        assert_eq!(bad_bit.validate().unwrap_err().field, "masquerade_bit");
        let v6 = Masquerade {
            local_detector: LocalDetector::ClusterCidr(vec!["fd00::/64".parse().unwrap()]),
            ..Masquerade::default()
        };
        assert_eq!(v6.validate().unwrap_err().field, "cluster_cidr");
        let iface = Masquerade {
            local_detector: LocalDetector::InterfacePrefix("veth -j ACCEPT".into()),
            ..Masquerade::default()
        };
        assert_eq!(iface.validate().unwrap_err().field, "interface_prefix");
    }
}
