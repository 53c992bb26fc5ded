//! Rendering: a [`Snapshot`] becomes kube-proxy's rules, in memory, with no
//! I/O. Every service port renders to a [`Fragment`] (its rules in the
//! fixed chains, and its own chains); a [`Ruleset`] is the fragments plus
//! the fixed chains assembled from them. Partial syncs re-render only the
//! services that changed and reuse the other fragments.
//!
//! The text is `iptables-restore` input, rule for rule what kube-proxy
//! v1.31 writes (`iptables-save -t nat` shows the same lines).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use imbl::OrdMap;
use ipnet::IpNet;
use proxier_core::{Endpoint, IpFamily, NamespacedName, ServicePort, ServicePortName, Snapshot};

use proxier_netfilter::{
    ConfigError, LocalDetector, Masquerade, check_family, safe_service_port_name,
};

use crate::names::{self, ServiceChains};

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

    fn localhost_node_ports(&self) -> bool {
        self.localhost_node_ports && self.family == IpFamily::V4
    }

    fn node_ports_match_all(&self) -> bool {
        self.node_port_addresses.is_empty()
            || self.node_port_addresses.iter().any(|n| n.prefix_len() == 0)
    }
}

/// Rules one service port contributes, and its own chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// Lines for nat `KUBE-SERVICES`.
    pub nat_services: String,
    /// Lines for nat `KUBE-NODEPORTS`.
    pub nat_nodeports: String,
    /// Lines for filter `KUBE-SERVICES`.
    pub filter_services: String,
    /// Lines for filter `KUBE-EXTERNAL-SERVICES`.
    pub filter_external: String,
    /// Lines for filter `KUBE-NODEPORTS`.
    pub filter_nodeports: String,
    /// Lines for filter `KUBE-PROXY-FIREWALL`.
    pub filter_firewall: String,
    /// Names of the service's nat chains (`KUBE-SVC-`, `KUBE-SVL-`,
    /// `KUBE-EXT-`, `KUBE-FW-`, `KUBE-SEP-`), concatenated.
    names: String,
    /// Their rule lines, concatenated.
    bodies: String,
    /// End of each chain's name and body in `names` and `bodies`.
    ends: Vec<(u32, u32)>,
    /// Rules in filter and in nat, and in the service's own chains.
    rules: (u32, u32, u32),
}

impl Fragment {
    /// The service's nat chains: name and rule lines, in write order.
    pub fn chains(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = (0usize, 0usize);
        self.ends.iter().map(move |&(n, b)| {
            let (n, b) = (n as usize, b as usize);
            let item = (&self.names[start.0..n], &self.bodies[start.1..b]);
            start = (n, b);
            item
        })
    }

    /// Rules this service contributes to filter and nat.
    pub fn rule_counts(&self) -> (usize, usize) {
        (self.rules.0 as usize, self.rules.1 as usize)
    }

    /// Same rules in the fixed chains.
    fn fixed_eq(&self, other: &Fragment) -> bool {
        self.nat_services == other.nat_services
            && self.nat_nodeports == other.nat_nodeports
            && self.filter_services == other.filter_services
            && self.filter_external == other.filter_external
            && self.filter_nodeports == other.filter_nodeports
            && self.filter_firewall == other.filter_firewall
    }

    fn push_chain(&mut self, name: &str, body: &str) {
        self.names.push_str(name);
        self.bodies.push_str(body);
        self.ends
            .push((self.names.len() as u32, self.bodies.len() as u32));
    }

    fn count(&mut self) {
        let lines = |s: &str| s.bytes().filter(|&b| b == b'\n').count() as u32;
        let own = lines(&self.bodies);
        self.rules = (
            lines(&self.filter_services)
                + lines(&self.filter_external)
                + lines(&self.filter_nodeports)
                + lines(&self.filter_firewall),
            lines(&self.nat_services) + lines(&self.nat_nodeports) + own,
            own,
        );
    }
}

/// A service that could not be rendered (its name would not be safe in a
/// rule). It is left out; the others are rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service port {service:?}: {reason}; not rendered")]
pub struct RenderError {
    /// The service port, as text.
    pub service: String,
    /// Why.
    pub reason: &'static str,
}

/// Fixed chains of one table: name and rule lines, in declaration order.
pub type FixedChains = Vec<(&'static str, String)>;

/// The whole desired state: every fragment, and the fixed chains'
/// bodies assembled from them.
#[derive(Debug, Clone, Default)]
pub struct Ruleset {
    /// Per service port.
    pub services: OrdMap<ServicePortName, Arc<Fragment>>,
    /// Body of each filter fixed chain, in declaration order.
    pub filter: FixedChains,
    /// Body of each nat fixed chain, in declaration order.
    pub nat: FixedChains,
    /// Whether per-endpoint comments were dropped (more endpoints than
    /// the large-cluster threshold).
    pub large_cluster: bool,
    /// Services that were refused.
    pub errors: Vec<RenderError>,
    counts: (usize, usize),
    fixed_counts: (usize, usize),
}

fn check_name(name: &ServicePortName) -> Result<String, RenderError> {
    if safe_service_port_name(name) {
        Ok(name.to_string())
    } else {
        Err(RenderError {
            service: name.to_string(),
            reason: "name is not a DNS label and cannot go into an iptables comment",
        })
    }
}

/// `computeProbability`: `1/n` with ten decimals.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

struct Probabilities(Vec<String>);

impl Probabilities {
    fn get(&mut self, n: usize) -> &str {
        while self.0.len() <= n {
            let k = self.0.len();
            self.0.push(if k == 0 {
                String::new()
            } else {
                probability(k)
            });
        }
        &self.0[n]
    }
}

/// Writes ` -m comment --comment TEXT`, quoting when there is a space
/// (as kube-proxy writes it). `text` is made only of safe names and
/// fixed words.
fn comment(out: &mut String, text: &str) {
    out.push_str(" -m comment --comment ");
    if text.contains(' ') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(text);
    }
}

/// ` -m comment --comment "A B C"` from parts (no allocation).
fn comment_parts(out: &mut String, parts: &[&str]) {
    out.push_str(" -m comment --comment ");
    let quote = parts.iter().any(|p| p.contains(' '));
    if quote {
        out.push('"');
    }
    for p in parts {
        out.push_str(p);
    }
    if quote {
        out.push('"');
    }
}

/// ` -m P -p P -d IP --dport PORT`
fn match_dst(out: &mut String, proto: &str, ip: IpAddr, port: u16) {
    out.push_str(" -m ");
    out.push_str(proto);
    out.push_str(" -p ");
    out.push_str(proto);
    out.push_str(" -d ");
    push_ip(out, ip);
    out.push_str(" --dport ");
    push_u32(out, u32::from(port));
}

/// `-A CHAIN -m comment --comment "…" -m P -p P -d IP --dport PORT -j TARGET`:
/// the shape of every rule that matches a service address.
fn dst_rule(
    out: &mut String,
    chain: &str,
    comment: &[&str],
    proto: &str,
    ip: IpAddr,
    port: u16,
    target: &str,
) {
    out.push_str("-A ");
    out.push_str(chain);
    comment_parts(out, comment);
    match_dst(out, proto, ip, port);
    jump(out, target);
}

/// Decimal digits without the formatting machinery (a tenth of the
/// render time went to `Display` for addresses).
fn push_u32(out: &mut String, mut n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(b as char);
    }
}

/// An address as `Display` writes it; IPv4 by hand.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            push_u32(out, u32::from(o[0]));
            for b in &o[1..] {
                out.push('.');
                push_u32(out, u32::from(*b));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// `ip:port`, or `[ip6]:port`, as `SocketAddr`'s `Display`.
fn push_socket(out: &mut String, addr: SocketAddr) {
    if addr.is_ipv6() {
        out.push('[');
        push_ip(out, addr.ip());
        out.push(']');
    } else {
        push_ip(out, addr.ip());
    }
    out.push(':');
    push_u32(out, u32::from(addr.port()));
}

fn jump(out: &mut String, target: &str) {
    out.push_str(" -j ");
    out.push_str(target);
    out.push('\n');
}

struct Renderer<'a> {
    cfg: &'a Config,
    snap: &'a Snapshot,
    large: bool,
    probs: Probabilities,
}

impl Renderer<'_> {
    fn local_match(&self, out: &mut String, negate: bool) {
        self.cfg.local_match(out, negate)
    }

    fn service(&mut self, svc: &ServicePort) -> Result<Fragment, RenderError> {
        let n = check_name(&svc.name)?;
        let p = svc.protocol().lower();
        let ch = ServiceChains::of(&svc.name);
        let cat = self.snap.categorize(svc);
        let has_endpoints = cat.has_any;
        let cluster = cat.cluster();
        let local = cat.local();
        let uses_cluster_chain = !cluster.is_empty() && svc.uses_cluster_endpoints();
        let uses_local_chain = !local.is_empty() && svc.uses_local_endpoints();

        let (internal_chain, has_internal) = if svc.internal_policy_local {
            (&ch.svl, has_endpoints && !local.is_empty())
        } else {
            (&ch.svc, has_endpoints)
        };
        let (external_policy_chain, has_external) = if svc.external_policy_local {
            (&ch.svl, has_endpoints && !local.is_empty())
        } else {
            (&ch.svc, has_endpoints)
        };
        let uses_ext_chain = has_endpoints && svc.externally_accessible();
        let uses_fw_chain = has_endpoints
            && !svc.load_balancer_ips.is_empty()
            && !svc.load_balancer_source_ranges.is_empty();
        let lb_chain = if uses_fw_chain { &ch.fw } else { &ch.ext };

        // The filter verdict for traffic that has nowhere to go (the same
        // for internal and external traffic, as in kube-proxy).
        let (verdict_target, verdict) = if !has_endpoints {
            ("REJECT", " has no endpoints")
        } else {
            ("DROP", " has no local endpoints")
        };
        let verdict_comment = [n.as_str(), verdict];

        let k = cat.all_reachable.len();
        let mut f = Fragment {
            nat_services: String::with_capacity(160),
            names: String::with_capacity(26 * (k + 4)),
            bodies: String::with_capacity(400 + 330 * k),
            ends: Vec::with_capacity(k + 4),
            ..Fragment::default()
        };

        // 1. Cluster IP.
        if has_internal {
            dst_rule(
                &mut f.nat_services,
                "KUBE-SERVICES",
                &[&n, " cluster IP"],
                p,
                svc.cluster_ip,
                svc.port,
                internal_chain,
            );
        } else {
            dst_rule(
                &mut f.filter_services,
                "KUBE-SERVICES",
                &verdict_comment,
                p,
                svc.cluster_ip,
                svc.port,
                verdict_target,
            );
        }

        // 2. External IPs.
        for ip in &svc.external_ips {
            if has_endpoints {
                dst_rule(
                    &mut f.nat_services,
                    "KUBE-SERVICES",
                    &[&n, " external IP"],
                    p,
                    *ip,
                    svc.port,
                    &ch.ext,
                );
            }
            if !has_external {
                dst_rule(
                    &mut f.filter_external,
                    "KUBE-EXTERNAL-SERVICES",
                    &verdict_comment,
                    p,
                    *ip,
                    svc.port,
                    verdict_target,
                );
            }
        }

        // 3. Load-balancer IPs.
        for ip in &svc.load_balancer_ips {
            if has_endpoints {
                dst_rule(
                    &mut f.nat_services,
                    "KUBE-SERVICES",
                    &[&n, " loadbalancer IP"],
                    p,
                    *ip,
                    svc.port,
                    lb_chain,
                );
            }
            if uses_fw_chain {
                dst_rule(
                    &mut f.filter_firewall,
                    "KUBE-PROXY-FIREWALL",
                    &[&n, " traffic not accepted by ", &ch.fw],
                    p,
                    *ip,
                    svc.port,
                    "DROP",
                );
            }
            if !has_external {
                dst_rule(
                    &mut f.filter_external,
                    "KUBE-EXTERNAL-SERVICES",
                    &verdict_comment,
                    p,
                    *ip,
                    svc.port,
                    verdict_target,
                );
            }
        }

        // 4. Node port.
        if svc.node_port != 0 {
            if has_endpoints {
                let o = &mut f.nat_nodeports;
                o.push_str("-A KUBE-NODEPORTS");
                comment(o, &n);
                let _ = write!(o, " -m {p} -p {p} --dport {}", svc.node_port);
                jump(o, &ch.ext);
            }
            if !has_external {
                let o = &mut f.filter_external;
                o.push_str("-A KUBE-EXTERNAL-SERVICES");
                comment_parts(o, &verdict_comment);
                let _ = write!(
                    o,
                    " -m addrtype --dst-type LOCAL -m {p} -p {p} --dport {}",
                    svc.node_port
                );
                jump(o, verdict_target);
            }
        }

        // 5. Health-check node port.
        if svc.health_check_node_port != 0 {
            let o = &mut f.filter_nodeports;
            o.push_str("-A KUBE-NODEPORTS");
            comment_parts(o, &[&n, " health check node port"]);
            let _ = write!(o, " -m tcp -p tcp --dport {}", svc.health_check_node_port);
            jump(o, "ACCEPT");
        }

        // 7. Internal masquerade, at the head of the internal chain.
        let mut masq = String::new();
        if has_internal
            && (self.cfg.masquerade_all || self.cfg.local_detector != LocalDetector::None)
        {
            let _ = write!(masq, "-A {internal_chain}");
            comment_parts(&mut masq, &[&n, " cluster IP"]);
            match_dst(&mut masq, p, svc.cluster_ip, svc.port);
            if !self.cfg.masquerade_all {
                self.local_match(&mut masq, true);
            }
            jump(&mut masq, names::KUBE_MARK_MASQ);
        }

        // 8. External traffic chain.
        if uses_ext_chain {
            let mut o = String::new();
            let ext = &ch.ext;
            if !svc.external_policy_local {
                let _ = write!(o, "-A {ext}");
                comment_parts(
                    &mut o,
                    &["masquerade traffic for ", &n, " external destinations"],
                );
                jump(&mut o, names::KUBE_MARK_MASQ);
            } else {
                if self.cfg.local_detector != LocalDetector::None {
                    let _ = write!(o, "-A {ext}");
                    comment_parts(&mut o, &["pod traffic for ", &n, " external destinations"]);
                    self.local_match(&mut o, false);
                    jump(&mut o, &ch.svc);
                }
                let _ = write!(o, "-A {ext}");
                comment_parts(
                    &mut o,
                    &[
                        "masquerade LOCAL traffic for ",
                        &n,
                        " external destinations",
                    ],
                );
                o.push_str(" -m addrtype --src-type LOCAL");
                jump(&mut o, names::KUBE_MARK_MASQ);
                let _ = write!(o, "-A {ext}");
                comment_parts(
                    &mut o,
                    &["route LOCAL traffic for ", &n, " external destinations"],
                );
                o.push_str(" -m addrtype --src-type LOCAL");
                jump(&mut o, &ch.svc);
            }
            if has_external {
                let _ = write!(o, "-A {ext}");
                jump(&mut o, external_policy_chain);
            }
            f.push_chain(ext, &o);
        }

        // 9. Firewall chain.
        if uses_fw_chain {
            let mut o = String::new();
            let mut allow_from_node = false;
            for src in &svc.load_balancer_source_ranges {
                let _ = write!(o, "-A {}", ch.fw);
                comment_parts(&mut o, &[&n, " loadbalancer IP"]);
                let _ = write!(o, " -s {src}");
                jump(&mut o, &ch.ext);
                allow_from_node |= self.cfg.node_ips.iter().any(|ip| src.contains(ip));
            }
            if allow_from_node {
                for ip in &svc.load_balancer_ips {
                    let _ = write!(o, "-A {}", ch.fw);
                    comment_parts(&mut o, &[&n, " loadbalancer IP"]);
                    let _ = write!(o, " -s {ip}");
                    jump(&mut o, &ch.ext);
                }
            }
            let _ = write!(o, "-A {}", ch.fw);
            comment_parts(
                &mut o,
                &[
                    "other traffic to ",
                    &n,
                    " will be dropped by KUBE-PROXY-FIREWALL",
                ],
            );
            o.push('\n');
            f.push_chain(&ch.fw, &o);
        }

        // 10. Policy chains, then 11. one chain per endpoint. Each
        // endpoint's chain name and text are made once.
        let key = {
            let mut k = String::with_capacity(n.len() + 4);
            k.push_str(&n);
            k.push_str(p);
            k
        };
        let mut seps = Seps {
            buf: String::with_capacity(56 * k),
            at: Vec::with_capacity(k),
        };
        for ep in &cat.all_reachable {
            let start = seps.buf.len();
            push_socket(&mut seps.buf, ep.addr);
            let mid = seps.buf.len();
            let hash = names::hash16_parts(&key, &seps.buf[start..mid]);
            seps.buf.push_str("KUBE-SEP-");
            seps.buf.extend(hash.iter().map(|&b| b as char));
            seps.at
                .push((ep.addr, start as u32, mid as u32, seps.buf.len() as u32));
        }
        if uses_cluster_chain {
            let mut o = if *internal_chain == ch.svc {
                std::mem::take(&mut masq)
            } else {
                String::new()
            };
            self.endpoint_rules(&mut o, &n, svc, &ch.svc, cluster, &seps);
            f.push_chain(&ch.svc, &o);
        }
        if uses_local_chain {
            let mut o = if *internal_chain == ch.svl {
                std::mem::take(&mut masq)
            } else {
                String::new()
            };
            self.endpoint_rules(&mut o, &n, svc, &ch.svl, local, &seps);
            f.push_chain(&ch.svl, &o);
        }
        for ep in &cat.all_reachable {
            let (sep, text) = sep_of(&seps, ep);
            // Written straight into the fragment (most of the bytes).
            let o = &mut f.bodies;
            o.push_str("-A ");
            o.push_str(sep);
            if !self.large {
                comment(o, &n);
            }
            o.push_str(" -s ");
            push_ip(o, ep.ip());
            jump(o, names::KUBE_MARK_MASQ);
            o.push_str("-A ");
            o.push_str(sep);
            if !self.large {
                comment(o, &n);
            }
            if svc.sticky_seconds().is_some() {
                o.push_str(" -m recent --name ");
                o.push_str(sep);
                o.push_str(" --set");
            }
            o.push_str(" -m ");
            o.push_str(p);
            o.push_str(" -p ");
            o.push_str(p);
            o.push_str(" -j DNAT --to-destination ");
            o.push_str(text);
            o.push('\n');
            f.names.push_str(sep);
            f.ends.push((f.names.len() as u32, f.bodies.len() as u32));
        }
        f.count();
        Ok(f)
    }

    fn endpoint_rules(
        &mut self,
        o: &mut String,
        n: &str,
        svc: &ServicePort,
        chain: &str,
        eps: &[&Endpoint],
        seps: &Seps,
    ) {
        if let Some(secs) = svc.sticky_seconds() {
            for ep in eps {
                let (sep, text) = sep_of(seps, ep);
                o.push_str("-A ");
                o.push_str(chain);
                if !self.large {
                    comment_parts(o, &[n, " -> ", text]);
                }
                let _ = write!(
                    o,
                    " -m recent --name {sep} --rcheck --seconds {secs} --reap"
                );
                jump(o, sep);
            }
        }
        let count = eps.len();
        for (i, ep) in eps.iter().enumerate() {
            let (sep, text) = sep_of(seps, ep);
            o.push_str("-A ");
            o.push_str(chain);
            if !self.large {
                comment_parts(o, &[n, " -> ", text]);
            }
            if i + 1 < count {
                o.push_str(" -m statistic --mode random --probability ");
                o.push_str(self.probs.get(count - i));
            }
            jump(o, sep);
        }
    }
}

/// Each reachable endpoint: address, `KUBE-SEP-` chain, `ip:port` text.
/// (One buffer for the whole service: two allocations, not two per
/// endpoint.)
struct Seps {
    buf: String,
    /// Address, then where its text starts, its chain name starts, ends.
    at: Vec<(SocketAddr, u32, u32, u32)>,
}

fn sep_of<'s>(seps: &'s Seps, ep: &Endpoint) -> (&'s str, &'s str) {
    let &(_, a, b, c) = seps
        .at
        .iter()
        .find(|(addr, ..)| *addr == ep.addr)
        .expect("policy endpoints are reachable endpoints");
    (
        &seps.buf[b as usize..c as usize],
        &seps.buf[a as usize..b as usize],
    )
}

/// Renders one service port (for tests and tools).
pub fn render_service(
    cfg: &Config,
    snap: &Snapshot,
    svc: &ServicePort,
    large_cluster: bool,
) -> Result<Fragment, RenderError> {
    Renderer {
        cfg,
        snap,
        large: large_cluster,
        probs: Probabilities(Vec::new()),
    }
    .service(svc)
}

/// Whether `snap` is in kube-proxy's large-cluster mode under `cfg`.
pub fn is_large_cluster(cfg: &Config, snap: &Snapshot) -> bool {
    snap.endpoint_count() > cfg.large_cluster_threshold
}

impl Ruleset {
    /// Renders everything from scratch.
    pub fn render(cfg: &Config, snap: &Snapshot) -> Ruleset {
        Self::render_from(cfg, snap, None)
    }

    /// Renders `snap`, reusing the fragments of `prev` for every service
    /// not in `changed` (a partial sync). The caller must render from
    /// scratch when the node, the config or the large-cluster mode changed.
    pub fn render_changed(
        cfg: &Config,
        snap: &Snapshot,
        prev: &Ruleset,
        changed: &std::collections::BTreeSet<NamespacedName>,
    ) -> Ruleset {
        Self::render_from(cfg, snap, Some((prev, changed)))
    }

    fn render_from(
        cfg: &Config,
        snap: &Snapshot,
        prev: Option<(&Ruleset, &std::collections::BTreeSet<NamespacedName>)>,
    ) -> Ruleset {
        let large = is_large_cluster(cfg, snap);
        let mut r = Renderer {
            cfg,
            snap,
            large,
            probs: Probabilities(Vec::new()),
        };
        let mut errors = Vec::new();
        let mut render_one = |svc: &ServicePort, errors: &mut Vec<RenderError>| match r.service(svc)
        {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        let services = match prev {
            None => {
                // Services render independently: split them over the
                // machine's cores.
                let all: Vec<&Arc<ServicePort>> = snap.services.values().collect();
                let threads = std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(8);
                let chunk = all.len().div_ceil(threads).max(256);
                let parts: Vec<Vec<Result<Fragment, RenderError>>> = std::thread::scope(|scope| {
                    let handles: Vec<_> = all
                        .chunks(chunk)
                        .map(|part| {
                            scope.spawn(move || {
                                let mut r = Renderer {
                                    cfg,
                                    snap,
                                    large,
                                    probs: Probabilities(Vec::new()),
                                };
                                part.iter().map(|svc| r.service(svc)).collect::<Vec<_>>()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("render thread"))
                        .collect()
                });
                let mut m = OrdMap::new();
                for (svc, f) in all.iter().zip(parts.into_iter().flatten()) {
                    match f {
                        Ok(f) => {
                            m.insert(svc.name.clone(), Arc::new(f));
                        }
                        Err(e) => errors.push(e),
                    }
                }
                m
            }
            Some((prev, changed)) => {
                let mut m = prev.services.clone();
                let mut fixed_same = true;
                for nn in changed {
                    let first = ServicePortName {
                        service: nn.clone(),
                        port: Arc::from(""),
                        protocol: proxier_core::Protocol::Tcp,
                    };
                    let stale: Vec<ServicePortName> = m
                        .range(first..)
                        .take_while(|(k, _)| &k.service == nn)
                        .map(|(k, _)| k.clone())
                        .collect();
                    let mut old: Vec<Arc<Fragment>> = Vec::new();
                    for k in stale {
                        old.extend(m.remove(&k));
                    }
                    let mut now: Vec<Arc<Fragment>> = Vec::new();
                    for svc in snap.ports_of(nn) {
                        if let Some(f) = render_one(svc, &mut errors) {
                            m.insert(svc.name.clone(), f.clone());
                            now.push(f);
                        }
                    }
                    // Same ports, same rules in the fixed chains (an
                    // endpoint change, usually): the fixed chains are
                    // reused instead of reassembled from every service.
                    fixed_same &=
                        old.len() == now.len() && old.iter().zip(&now).all(|(a, b)| a.fixed_eq(b));
                }
                if fixed_same && !changed.is_empty() {
                    let own: usize = m.values().map(|f| f.rules.2 as usize).sum();
                    return Ruleset {
                        services: m,
                        filter: prev.filter.clone(),
                        nat: prev.nat.clone(),
                        large_cluster: large,
                        errors,
                        counts: (prev.fixed_counts.0, prev.fixed_counts.1 + own),
                        fixed_counts: prev.fixed_counts,
                    };
                }
                m
            }
        };
        let (filter, nat) = assemble(cfg, &services);
        let lines = |v: &FixedChains| -> usize {
            v.iter()
                .map(|(_, b)| b.bytes().filter(|&c| c == b'\n').count())
                .sum()
        };
        let own: usize = services.values().map(|f| f.rules.2 as usize).sum();
        let fixed_counts = (lines(&filter), lines(&nat));
        let counts = (fixed_counts.0, fixed_counts.1 + own);
        Ruleset {
            services,
            filter,
            nat,
            large_cluster: large,
            errors,
            counts,
            fixed_counts,
        }
    }

    /// Every nat chain this ruleset declares (fixed and per service).
    pub fn nat_chains(&self) -> impl Iterator<Item = &str> {
        self.nat.iter().map(|(c, _)| *c).chain(
            self.services
                .values()
                .flat_map(|f| f.chains().map(|(c, _)| c)),
        )
    }

    /// Number of rules in each table (filter, nat).
    pub fn rule_counts(&self) -> (usize, usize) {
        self.counts
    }

    /// The whole ruleset as `iptables-restore` input (both tables, every
    /// chain declared): what a full sync from nothing would write, and
    /// what the golden tests compare.
    pub fn to_restore_input(&self) -> String {
        let mut out = String::from("*filter\n");
        for (c, _) in &self.filter {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for (_, b) in &self.filter {
            out.push_str(b);
        }
        out.push_str("COMMIT\n*nat\n");
        for c in self.nat_chains() {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for (_, b) in &self.nat {
            out.push_str(b);
        }
        for f in self.services.values() {
            for (_, b) in f.chains() {
                out.push_str(b);
            }
        }
        out.push_str("COMMIT\n");
        out
    }
}

/// Builds the fixed chains' bodies from the fragments.
fn assemble(
    cfg: &Config,
    services: &OrdMap<ServicePortName, Arc<Fragment>>,
) -> (FixedChains, FixedChains) {
    let cat = |pick: fn(&Fragment) -> &String| -> String {
        let mut s = String::with_capacity(services.values().map(|f| pick(f).len()).sum());
        for f in services.values() {
            s.push_str(pick(f));
        }
        s
    };

    let mut filter = vec![
        (names::KUBE_SERVICES, cat(|f| &f.filter_services)),
        (names::KUBE_EXTERNAL_SERVICES, cat(|f| &f.filter_external)),
        (names::KUBE_FORWARD, String::new()),
        (names::KUBE_NODEPORTS, cat(|f| &f.filter_nodeports)),
        (names::KUBE_PROXY_FIREWALL, cat(|f| &f.filter_firewall)),
    ];
    let masq = cfg.masquerade();
    filter[2].1 = masq.forward_rules();
    if cfg.localhost_node_ports() {
        filter.push((
            names::KUBE_FIREWALL,
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n".into(),
        ));
    }

    let mut nat_services = cat(|f| &f.nat_services);
    let tail = "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\"";
    if cfg.node_ports_match_all() {
        nat_services.push_str(tail);
        nat_services.push_str(" -m addrtype --dst-type LOCAL");
        match cfg.family {
            IpFamily::V6 => nat_services.push_str(" ! -d ::1/128"),
            IpFamily::V4 if !cfg.localhost_node_ports() => {
                nat_services.push_str(" ! -d 127.0.0.0/8")
            }
            IpFamily::V4 => {}
        }
        nat_services.push_str(" -j KUBE-NODEPORTS\n");
    } else {
        for ip in cfg
            .node_ips
            .iter()
            .filter(|ip| cfg.node_port_addresses.iter().any(|n| n.contains(*ip)))
            .filter(|ip| !ip.is_loopback() || cfg.localhost_node_ports())
        {
            let _ = writeln!(nat_services, "{tail} -d {ip} -j KUBE-NODEPORTS");
        }
    }
    let nat = vec![
        (names::KUBE_SERVICES, nat_services),
        (names::KUBE_NODEPORTS, cat(|f| &f.nat_nodeports)),
        (names::KUBE_POSTROUTING, masq.postrouting_rules()),
        (names::KUBE_MARK_MASQ, masq.mark_masq_rules()),
    ];
    (filter, nat)
}

/// The jump rules from the built-in chains into this backend's chains
/// (kube-proxy's `iptablesJumpChains`): table, chain, rule arguments.
pub fn jump_rules(cfg: &Config) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut v = vec![
        (
            "filter",
            "INPUT",
            "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        ),
        (
            "filter",
            "FORWARD",
            "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
        ),
        (
            "filter",
            "INPUT",
            "-m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS",
        ),
        (
            "filter",
            "FORWARD",
            "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        ),
        (
            "filter",
            "OUTPUT",
            "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        ),
        (
            "filter",
            "FORWARD",
            "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
        ),
        (
            "filter",
            "INPUT",
            "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        ),
        (
            "filter",
            "OUTPUT",
            "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        ),
        (
            "filter",
            "FORWARD",
            "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
        ),
        (
            "nat",
            "OUTPUT",
            "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        ),
        (
            "nat",
            "PREROUTING",
            "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        ),
        (
            "nat",
            "POSTROUTING",
            "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
        ),
    ];
    if cfg.localhost_node_ports() {
        // kube-proxy's `iptablesKubeletJumpChains` (no comment).
        v.push(("filter", "INPUT", "-j KUBE-FIREWALL"));
        v.push(("filter", "OUTPUT", "-j KUBE-FIREWALL"));
    }
    v
}
