//! One service port's rules, section by section as kube-proxy's
//! `syncProxyRules` writes them: cluster IP, external IPs, load-balancer
//! IPs and their firewall, node ports, the `KUBE-EXT-`, `KUBE-SVC-` and
//! `KUBE-SVL-` chains, and a `KUBE-SEP-` chain per endpoint.

use std::fmt::Write as _;
use std::net::SocketAddr;

use proxier_core::{Endpoint, ServicePort, Snapshot};
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

impl Renderer<'_> {
    fn local_match(&self, out: &mut String, negate: bool) {
        self.cfg.local_match(out, negate)
    }

    pub(super) fn service(&mut self, svc: &ServicePort) -> Result<Fragment, RenderError> {
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
