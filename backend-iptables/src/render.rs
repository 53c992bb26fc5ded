//! Rendering: a [`Snapshot`] becomes kube-proxy's rules, in memory, with no
//! I/O. Every service port renders to a [`Fragment`] (its rules in the
//! fixed chains, and its own chains); a [`Ruleset`] is the fragments plus
//! the fixed chains assembled from them. Partial syncs re-render only the
//! services that changed and reuse the other fragments.
//!
//! The text is `iptables-restore` input, rule for rule what kube-proxy
//! v1.31 writes (`iptables-save -t nat` shows the same lines).

use std::fmt::Write as _;
use std::sync::Arc;

use imbl::OrdMap;
use proxier_core::{IpFamily, NamespacedName, ServicePort, ServicePortName, Snapshot};

use crate::names::{self};

mod config;
mod service;
mod text;

pub use config::Config;
use service::Renderer;
use text::Probabilities;
pub use text::probability;

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

/// Whether `snap` is in kube-proxy's large-cluster mode under `cfg`.
pub(crate) fn is_large_cluster(cfg: &Config, snap: &Snapshot) -> bool {
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
pub(crate) fn jump_rules(cfg: &Config) -> Vec<(&'static str, &'static str, &'static str)> {
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
