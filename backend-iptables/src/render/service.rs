//! One service port's rules, section by section as kube-proxy's
//! `syncProxyRules` writes them: cluster IP, external IPs, load-balancer
//! IPs and their firewall, node ports, the `KUBE-EXT-`, `KUBE-SVC-` and
//! `KUBE-SVL-` chains, and a `KUBE-SEP-` chain per endpoint.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use proxier_core::{Categorized, Endpoint, ServicePort, Snapshot};
use proxier_netfilter::LocalDetector;

use crate::names::{self, ServiceChains};

use super::text::*;
use super::{Config, Fragment, RenderError};

pub(super) struct Renderer<'a> {
    pub(super) cfg: &'a Config,
    pub(super) snap: &'a Snapshot,
    pub(super) large: bool,
    pub(super) probs: Probabilities,
}

/// What kube-proxy decides about one service port before it writes a
/// rule (`syncProxyRules`' locals): its chains, which of them it uses,
/// and the verdict for traffic with nowhere to go.
struct Port<'s> {
    svc: &'s ServicePort,
    /// `ns/name:port`, checked.
    n: String,
    /// `tcp`, `udp`, `sctp`.
    p: &'static str,
    ch: ServiceChains,
    cat: Categorized<'s>,
    has_endpoints: bool,
    /// Internal traffic has an endpoint under its policy.
    has_internal: bool,
    /// External traffic has an endpoint under its policy.
    has_external: bool,
    uses_ext_chain: bool,
    uses_fw_chain: bool,
    /// `REJECT` (no endpoints) or `DROP` (no local endpoints).
    verdict_target: &'static str,
    verdict: &'static str,
}

impl<'s> Port<'s> {
    fn new(snap: &'s Snapshot, svc: &'s ServicePort) -> Result<Port<'s>, RenderError> {
        let n = check_name(&svc.name)?;
        let cat = snap.categorize(svc);
        let has_endpoints = cat.has_any;
        let has_local = has_endpoints && !cat.local().is_empty();
        let has_internal = if svc.internal_policy_local {
            has_local
        } else {
            has_endpoints
        };
        let has_external = if svc.external_policy_local {
            has_local
        } else {
            has_endpoints
        };
        // The filter verdict for traffic that has nowhere to go (the same
        // for internal and external traffic, as in kube-proxy).
        let (verdict_target, verdict) = if !has_endpoints {
            ("REJECT", " has no endpoints")
        } else {
            ("DROP", " has no local endpoints")
        };
        Ok(Port {
            n,
            p: svc.protocol().lower(),
            ch: ServiceChains::of(&svc.name),
            has_endpoints,
            has_internal,
            has_external,
            uses_ext_chain: has_endpoints && svc.externally_accessible(),
            uses_fw_chain: has_endpoints
                && !svc.load_balancer_ips.is_empty()
                && !svc.load_balancer_source_ranges.is_empty(),
            verdict_target,
            verdict,
            cat,
            svc,
        })
    }

    /// `KUBE-SVL-` for iTP Local, else `KUBE-SVC-`.
    fn internal_chain(&self) -> &str {
        if self.svc.internal_policy_local {
            &self.ch.svl
        } else {
            &self.ch.svc
        }
    }

    /// `KUBE-SVL-` for eTP Local, else `KUBE-SVC-`.
    fn external_policy_chain(&self) -> &str {
        if self.svc.external_policy_local {
            &self.ch.svl
        } else {
            &self.ch.svc
        }
    }

    /// Where load-balancer traffic goes first: the firewall, if any.
    fn lb_chain(&self) -> &str {
        if self.uses_fw_chain {
            &self.ch.fw
        } else {
            &self.ch.ext
        }
    }

    fn verdict_comment(&self) -> [&str; 2] {
        [self.n.as_str(), self.verdict]
    }
}

impl Renderer<'_> {
    fn local_match(&self, out: &mut String, negate: bool) {
        self.cfg.local_match(out, negate)
    }

    /// Every rule and chain of one service port, in kube-proxy's order.
    pub(super) fn service(&mut self, svc: &ServicePort) -> Result<Fragment, RenderError> {
        let snap = self.snap;
        let port = Port::new(snap, svc)?;
        let k = port.cat.all_reachable.len();
        let mut f = Fragment {
            nat_services: String::with_capacity(160),
            names: String::with_capacity(26 * (k + 4)),
            bodies: String::with_capacity(400 + 330 * k),
            ends: Vec::with_capacity(k + 4),
            ..Fragment::default()
        };
        Self::cluster_ip(&port, &mut f);
        Self::external_ips(&port, &mut f);
        Self::load_balancer_ips(&port, &mut f);
        Self::node_port(&port, &mut f);
        Self::health_check_node_port(&port, &mut f);
        let mut masq = self.internal_masquerade(&port);
        self.external_chain(&port, &mut f);
        self.firewall_chain(&port, &mut f);
        let seps = Seps::of(&port);
        self.policy_chains(&port, &mut f, &mut masq, &seps);
        self.endpoint_chains(&port, &mut f, &seps);
        f.count();
        Ok(f)
    }

    /// Section 1: The cluster IP: to the internal policy's chain, or the filter
    /// verdict.
    fn cluster_ip(port: &Port<'_>, f: &mut Fragment) {
        let (svc, n, p) = (port.svc, &port.n, port.p);
        if port.has_internal {
            dst_rule(
                &mut f.nat_services,
                "KUBE-SERVICES",
                &[n, " cluster IP"],
                p,
                svc.cluster_ip,
                svc.port,
                port.internal_chain(),
            );
        } else {
            dst_rule(
                &mut f.filter_services,
                "KUBE-SERVICES",
                &port.verdict_comment(),
                p,
                svc.cluster_ip,
                svc.port,
                port.verdict_target,
            );
        }
    }

    /// Section 2: External IPs: to `KUBE-EXT-`, and the verdict when external
    /// traffic has nowhere to go.
    fn external_ips(port: &Port<'_>, f: &mut Fragment) {
        for ip in &port.svc.external_ips {
            Self::external_address(port, f, *ip, " external IP", &port.ch.ext);
        }
    }

    /// Section 3: Load-balancer IPs: to the firewall or `KUBE-EXT-`, the
    /// firewall's drop, and the verdict.
    fn load_balancer_ips(port: &Port<'_>, f: &mut Fragment) {
        let (svc, n, p) = (port.svc, &port.n, port.p);
        for ip in &svc.load_balancer_ips {
            Self::external_address(port, f, *ip, " loadbalancer IP", port.lb_chain());
            if port.uses_fw_chain {
                dst_rule(
                    &mut f.filter_firewall,
                    "KUBE-PROXY-FIREWALL",
                    &[n, " traffic not accepted by ", &port.ch.fw],
                    p,
                    *ip,
                    svc.port,
                    "DROP",
                );
            }
        }
    }

    /// One external address (`what`: its comment): nat `KUBE-SERVICES`
    /// to `target` when there are endpoints, and filter
    /// `KUBE-EXTERNAL-SERVICES`' verdict when external traffic has
    /// nowhere to go. The nat rule is written first, as kube-proxy does.
    fn external_address(port: &Port<'_>, f: &mut Fragment, ip: IpAddr, what: &str, target: &str) {
        let (svc, n, p) = (port.svc, &port.n, port.p);
        if port.has_endpoints {
            dst_rule(
                &mut f.nat_services,
                "KUBE-SERVICES",
                &[n, what],
                p,
                ip,
                svc.port,
                target,
            );
        }
        if !port.has_external {
            dst_rule(
                &mut f.filter_external,
                "KUBE-EXTERNAL-SERVICES",
                &port.verdict_comment(),
                p,
                ip,
                svc.port,
                port.verdict_target,
            );
        }
    }

    /// Section 4: The node port: `KUBE-NODEPORTS` to `KUBE-EXT-`, and the verdict
    /// on local destinations.
    fn node_port(port: &Port<'_>, f: &mut Fragment) {
        let (svc, n, p) = (port.svc, &port.n, port.p);
        if svc.node_port == 0 {
            return;
        }
        if port.has_endpoints {
            let o = &mut f.nat_nodeports;
            o.push_str("-A KUBE-NODEPORTS");
            comment(o, n);
            let _ = write!(o, " -m {p} -p {p} --dport {}", svc.node_port);
            jump(o, &port.ch.ext);
        }
        if !port.has_external {
            let o = &mut f.filter_external;
            o.push_str("-A KUBE-EXTERNAL-SERVICES");
            comment_parts(o, &port.verdict_comment());
            let _ = write!(
                o,
                " -m addrtype --dst-type LOCAL -m {p} -p {p} --dport {}",
                svc.node_port
            );
            jump(o, port.verdict_target);
        }
    }

    /// Section 5: The health-check node port is accepted.
    fn health_check_node_port(port: &Port<'_>, f: &mut Fragment) {
        let svc = port.svc;
        if svc.health_check_node_port == 0 {
            return;
        }
        let o = &mut f.filter_nodeports;
        o.push_str("-A KUBE-NODEPORTS");
        comment_parts(o, &[&port.n, " health check node port"]);
        let _ = write!(o, " -m tcp -p tcp --dport {}", svc.health_check_node_port);
        jump(o, "ACCEPT");
    }

    /// Section 7: The internal masquerade rule, for the head of the internal
    /// chain (non-local sources to the cluster IP are marked).
    fn internal_masquerade(&self, port: &Port<'_>) -> String {
        let mut masq = String::new();
        if port.has_internal
            && (self.cfg.masquerade_all || self.cfg.local_detector != LocalDetector::None)
        {
            let _ = write!(masq, "-A {}", port.internal_chain());
            comment_parts(&mut masq, &[&port.n, " cluster IP"]);
            match_dst(&mut masq, port.p, port.svc.cluster_ip, port.svc.port);
            if !self.cfg.masquerade_all {
                self.local_match(&mut masq, true);
            }
            jump(&mut masq, names::KUBE_MARK_MASQ);
        }
        masq
    }

    /// Section 8: `KUBE-EXT-`: masquerade (Cluster policy), or for eTP Local pod
    /// and node traffic to the cluster chain, the rest to `KUBE-SVL-`.
    fn external_chain(&self, port: &Port<'_>, f: &mut Fragment) {
        if !port.uses_ext_chain {
            return;
        }
        let n = &port.n;
        let mut o = String::new();
        let ext = &port.ch.ext;
        if !port.svc.external_policy_local {
            let _ = write!(o, "-A {ext}");
            comment_parts(
                &mut o,
                &["masquerade traffic for ", n, " external destinations"],
            );
            jump(&mut o, names::KUBE_MARK_MASQ);
        } else {
            if self.cfg.local_detector != LocalDetector::None {
                let _ = write!(o, "-A {ext}");
                comment_parts(&mut o, &["pod traffic for ", n, " external destinations"]);
                self.local_match(&mut o, false);
                jump(&mut o, &port.ch.svc);
            }
            let _ = write!(o, "-A {ext}");
            comment_parts(
                &mut o,
                &["masquerade LOCAL traffic for ", n, " external destinations"],
            );
            o.push_str(" -m addrtype --src-type LOCAL");
            jump(&mut o, names::KUBE_MARK_MASQ);
            let _ = write!(o, "-A {ext}");
            comment_parts(
                &mut o,
                &["route LOCAL traffic for ", n, " external destinations"],
            );
            o.push_str(" -m addrtype --src-type LOCAL");
            jump(&mut o, &port.ch.svc);
        }
        if port.has_external {
            let _ = write!(o, "-A {ext}");
            jump(&mut o, port.external_policy_chain());
        }
        f.push_chain(ext, &o);
    }

    /// Section 9: `KUBE-FW-`: the source ranges (and the node's own addresses
    /// when a range holds one) to `KUBE-EXT-`; the rest falls through to
    /// `KUBE-PROXY-FIREWALL`'s drop.
    fn firewall_chain(&self, port: &Port<'_>, f: &mut Fragment) {
        if !port.uses_fw_chain {
            return;
        }
        let (svc, n, ch) = (port.svc, &port.n, &port.ch);
        let mut o = String::new();
        let mut allow_from_node = false;
        for src in &svc.load_balancer_source_ranges {
            let _ = write!(o, "-A {}", ch.fw);
            comment_parts(&mut o, &[n, " loadbalancer IP"]);
            let _ = write!(o, " -s {src}");
            jump(&mut o, &ch.ext);
            allow_from_node |= self.cfg.node_ips.iter().any(|ip| src.contains(ip));
        }
        if allow_from_node {
            for ip in &svc.load_balancer_ips {
                let _ = write!(o, "-A {}", ch.fw);
                comment_parts(&mut o, &[n, " loadbalancer IP"]);
                let _ = write!(o, " -s {ip}");
                jump(&mut o, &ch.ext);
            }
        }
        let _ = write!(o, "-A {}", ch.fw);
        comment_parts(
            &mut o,
            &[
                "other traffic to ",
                n,
                " will be dropped by KUBE-PROXY-FIREWALL",
            ],
        );
        o.push('\n');
        f.push_chain(&ch.fw, &o);
    }

    /// Section 10: `KUBE-SVC-` and `KUBE-SVL-`: affinity, then random choice
    /// among the policy's endpoints; the internal chain starts with the
    /// masquerade rule.
    fn policy_chains(&mut self, port: &Port<'_>, f: &mut Fragment, masq: &mut String, seps: &Seps) {
        let ch = &port.ch;
        let internal_is = |chain: &str| port.internal_chain() == chain;
        if !port.cat.cluster().is_empty() && port.svc.uses_cluster_endpoints() {
            let mut o = if internal_is(&ch.svc) {
                std::mem::take(masq)
            } else {
                String::new()
            };
            self.endpoint_rules(&mut o, &port.n, port.svc, &ch.svc, port.cat.cluster(), seps);
            f.push_chain(&ch.svc, &o);
        }
        if !port.cat.local().is_empty() && port.svc.uses_local_endpoints() {
            let mut o = if internal_is(&ch.svl) {
                std::mem::take(masq)
            } else {
                String::new()
            };
            self.endpoint_rules(&mut o, &port.n, port.svc, &ch.svl, port.cat.local(), seps);
            f.push_chain(&ch.svl, &o);
        }
    }

    /// Section 11: One `KUBE-SEP-` chain per reachable endpoint: hairpin
    /// masquerade, then DNAT (with `recent --set` for affinity). Written
    /// straight into the fragment: most of the ruleset's bytes.
    fn endpoint_chains(&self, port: &Port<'_>, f: &mut Fragment, seps: &Seps) {
        let (n, p) = (&port.n, port.p);
        for ep in &port.cat.all_reachable {
            let (sep, text) = sep_of(seps, ep);
            let o = &mut f.bodies;
            o.push_str("-A ");
            o.push_str(sep);
            if !self.large {
                comment(o, n);
            }
            o.push_str(" -s ");
            push_ip(o, ep.ip());
            jump(o, names::KUBE_MARK_MASQ);
            o.push_str("-A ");
            o.push_str(sep);
            if !self.large {
                comment(o, n);
            }
            if port.svc.sticky_seconds().is_some() {
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

impl Seps {
    /// The chain name and text of every reachable endpoint, each made
    /// once.
    fn of(port: &Port<'_>) -> Seps {
        let (n, p) = (&port.n, port.p);
        let k = port.cat.all_reachable.len();
        let mut key = String::with_capacity(n.len() + 4);
        key.push_str(n);
        key.push_str(p);
        let mut seps = Seps {
            buf: String::with_capacity(56 * k),
            at: Vec::with_capacity(k),
        };
        for ep in &port.cat.all_reachable {
            let start = seps.buf.len();
            push_socket(&mut seps.buf, ep.addr);
            let mid = seps.buf.len();
            let hash = names::hash16_parts(&key, &seps.buf[start..mid]);
            seps.buf.push_str("KUBE-SEP-");
            seps.buf.extend(hash.iter().map(|&b| b as char));
            seps.at
                .push((ep.addr, start as u32, mid as u32, seps.buf.len() as u32));
        }
        seps
    }
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
