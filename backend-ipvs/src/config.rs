//! The IPVS proxier's settings (`--ipvs-*`, the masquerade settings, the
//! node's addresses), checked before anything reaches the kernel.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::IpNet;
use proxier_core::IpFamily;
use proxier_netfilter::{ConfigError, Masquerade};

use ipvs_netlink::Timeouts;

/// The dummy interface kube-proxy binds service addresses to.
pub const DUMMY: &str = "kube-ipvs0";

/// The IPVS proxier's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The family this proxier serves.
    pub family: IpFamily,
    /// `--ipvs-scheduler` (`rr`, `wrr`, `lc`, `wlc`, `lblc`, `lblcr`,
    /// `sh`, `dh`, `sed`, `nq`, `mh`).
    pub scheduler: String,
    /// `--ipvs-strict-arp`: `arp_ignore=1`, `arp_announce=2`.
    pub strict_arp: bool,
    /// The node's addresses; empty: every address of every interface but
    /// `kube-ipvs0`, read at each full sync.
    pub node_ips: Vec<IpAddr>,
    /// `--nodeport-addresses` (empty: every node address).
    pub node_port_addresses: Vec<IpNet>,
    /// `--service-node-port-range`: a virtual server on a node address
    /// with a port in it is taken to be ours (adopted or removed).
    pub node_port_range: RangeInclusive<u16>,
    /// `--ipvs-exclude-cidrs`: virtual servers there are never touched.
    pub exclude_cidrs: Vec<IpNet>,
    /// `--ipvs-tcp-timeout`, `--ipvs-tcpfin-timeout`,
    /// `--ipvs-udp-timeout` (0: leave the kernel's).
    pub timeouts: Timeouts,
    /// The masquerade mark, `--masquerade-all` and the local-traffic
    /// detector (the same settings the iptables backend takes).
    pub rules: Masquerade,
    /// How long a removed TCP real server may keep draining at weight 0.
    pub graceful_termination_cap: Duration,
    /// The dummy interface (`kube-ipvs0`).
    pub dummy: String,
    /// The packet-mark bits of the firewall-mark virtual servers that send
    /// traffic from pods and from the node to an `externalTrafficPolicy:
    /// Local` service's external addresses to every endpoint, as iptables
    /// mode does (a contiguous run of bits, apart from the masquerade bit;
    /// default `0x1fff`: 8,191 such service ports, below kube-proxy's
    /// masquerade and drop bits and outside Calico's `0xffff0000`). A firewall-mark
    /// virtual server outside it is never touched. 0 turns it off:
    /// kube-proxy's IPVS semantics (local endpoints only, from inside too).
    pub external_local_mark_mask: u32,
}

impl Config {
    /// Defaults for `family`.
    pub fn new(family: IpFamily) -> Config {
        Config {
            family,
            scheduler: "rr".into(),
            strict_arp: false,
            node_ips: Vec::new(),
            node_port_addresses: Vec::new(),
            node_port_range: 30000..=32767,
            exclude_cidrs: Vec::new(),
            timeouts: Timeouts::default(),
            rules: Masquerade::new(family),
            graceful_termination_cap: Duration::from_secs(15 * 60),
            dummy: DUMMY.into(),
            external_local_mark_mask: 0x1fff,
        }
    }

    /// Checks what reaches the kernel and the command lines; the error
    /// names the field, the value and why (the shared
    /// [`ConfigError`](proxier_netfilter::ConfigError)).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.scheduler;
        if s.is_empty() || s.len() > 15 || !s.bytes().all(|b| b.is_ascii_lowercase()) {
            return Err(ConfigError::new(
                "scheduler",
                s,
                "not a scheduler name (1 to 15 lowercase letters, as --ipvs-scheduler takes)",
            ));
        }
        let d = &self.dummy;
        if d.is_empty()
            || d.len() > 15
            || !d
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(ConfigError::new(
                "dummy",
                d,
                "not an interface name (1 to 15 of [A-Za-z0-9-_.])",
            ));
        }
        if self.rules.family != self.family {
            return Err(ConfigError::new(
                "rules.family",
                self.rules.family.as_str(),
                "differs from family",
            ));
        }
        self.rules.validate()?;
        proxier_netfilter::check_family(
            "node_port_addresses",
            self.family,
            &self.node_port_addresses,
        )?;
        if let Some(ip) = self.node_ips.iter().find(|ip| !self.family.matches(ip)) {
            return Err(ConfigError::new("node_ips", ip, "wrong IP family"));
        }
        let m = self.external_local_mark_mask;
        let run = m.checked_shr(m.trailing_zeros()).unwrap_or(0);
        let contiguous = run & run.wrapping_add(1) == 0;
        if !contiguous || m & self.rules.mark() != 0 {
            return Err(ConfigError::new(
                "external_local_mark_mask",
                format!("{m:#x}"),
                "not a contiguous run of mark bits apart from the masquerade bit",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn a_bad_setting_is_named_by_field_and_value() {
        let field = |c: Config| c.validate().unwrap_err().field;
        let mut c = Config::new(IpFamily::V4);
        c.scheduler = "rr; reboot".into();
        assert_eq!(field(c), "scheduler");
        let mut c = Config::new(IpFamily::V4);
        c.dummy = "kube ipvs0".into();
        let e = c.validate().unwrap_err();
        assert_eq!((e.field, e.value.as_str()), ("dummy", "kube ipvs0"));
        let mut c = Config::new(IpFamily::V4);
        c.node_ips = vec!["fd00::1".parse().unwrap()];
        assert_eq!(field(c), "node_ips");
        let mut c = Config::new(IpFamily::V4);
        c.node_port_addresses = vec!["fd00::/64".parse().unwrap()];
        assert_eq!(field(c), "node_port_addresses");
        let mut c = Config::new(IpFamily::V6);
        c.rules = Masquerade::new(IpFamily::V4);
        assert_eq!(field(c), "rules.family");
        let mut c = Config::new(IpFamily::V4);
        c.external_local_mark_mask = 0xffff_4000;
        assert_eq!(field(c), "external_local_mark_mask");
        let mut c = Config::new(IpFamily::V4);
        c.external_local_mark_mask = 0x0f0f_0000;
        assert_eq!(field(c), "external_local_mark_mask");
        let mut c = Config::new(IpFamily::V4);
        c.external_local_mark_mask = 0x8000_0000;
        c.validate().unwrap();
        c.external_local_mark_mask = 0;
        c.validate().unwrap();
        Config::new(IpFamily::V6).validate().unwrap();
    }
}
