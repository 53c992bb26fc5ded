//! kube-proxy's nftables layout (`pkg/proxy/nftables/proxier.go`,
//! `setupNFTables` and `syncProxyRules`), rendered from a [`Snapshot`] as
//! one [`Transaction`], with no I/O. `nft list table ip kube-proxy` on a
//! node shows the names, maps, chains and comments kube-proxy writes.
//!
//! Where the text differs from kube-proxy's: a firewall chain is
//! `ip saddr CIDR return` per source range then `drop` (kube-proxy:
//! `ip saddr != { CIDR, … } drop`), and the unallocated-ClusterIP rule is
//! one `ip daddr CIDR drop` per service CIDR (kube-proxy: one anonymous
//! set); the verdicts are the same.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use proxier_core::{IpFamily, NamespacedName, Protocol, ServicePort, ServicePortName, Snapshot};
use proxier_netfilter::{LocalDetector, Masquerade, hash_base32, safe_service_port_name};

use crate::nl::build;
use crate::nl::expr::{
    CmpOp, Expr, FIB_F_DADDR, FIB_F_SADDR, FIB_RESULT_ADDRTYPE, META_IIFNAME, NAT_RANDOM_FULLY,
    REG_1, RTN_LOCAL, Verdict,
};
use crate::nl::msg::{
    BaseHook, Chain, Element, Family, Hook, KeyType, Op, OpSink, Rule, SET_EVAL, Set, Transaction,
};

/// The table, in `ip` and `ip6`.
pub const TABLE: &str = "kube-proxy";

/// What the layout needs to know about the node and the flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The mark, `--masquerade-all`, `--detect-local-mode` and the family.
    pub masquerade: Masquerade,
    /// `--nodeport-addresses`; empty: every local address (`fib daddr type
    /// local`).
    pub node_port_addresses: Vec<IpNet>,
    /// The node's addresses (node ports restricted by CIDR, the
    /// source-range hairpin).
    pub node_ips: Vec<IpAddr>,
    /// `--service-cluster-ip-range`: traffic to an unallocated cluster IP
    /// in it is dropped (`cluster-ips-check`).
    pub service_cidrs: Vec<IpNet>,
}

impl Config {
    /// Defaults for `family`.
    pub fn new(family: IpFamily) -> Config {
        Config {
            masquerade: Masquerade::new(family),
            node_port_addresses: Vec::new(),
            node_ips: Vec::new(),
            service_cidrs: Vec::new(),
        }
    }

    fn family(&self) -> IpFamily {
        self.masquerade.family
    }

    fn match_all(&self) -> bool {
        self.node_port_addresses.is_empty()
            || self.node_port_addresses.iter().any(|n| n.prefix_len() == 0)
    }
}

/// The nf_tables family of an IP family.
pub fn nft_family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => Family::Ip,
        IpFamily::V6 => Family::Ip6,
    }
}

const NAME_MAX: usize = 256 - 16;

/// kube-proxy's `hashAndTruncate`: 8 base32 characters of SHA-256, a
/// dash, and the name itself.
pub fn hash_and_truncate(name: &str) -> String {
    let h = hash_base32(&[name.as_bytes()]);
    let mut s = String::with_capacity(9 + name.len());
    s.extend(h[..8].iter().map(|&b| b as char));
    s.push('-');
    s.push_str(name);
    if s.len() > NAME_MAX {
        s.truncate(NAME_MAX - 3);
        s.push_str("...");
    }
    s
}

/// `HASH-ns/svc/proto/port`, the base of a service port's chain names.
pub fn service_base(name: &ServicePortName) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        name.service.namespace,
        name.service.name,
        name.protocol.lower(),
        name.port
    ))
}

/// `HASH-ns/svc/proto/port__ip/port` (IPv6 colons as dots), the base of an
/// endpoint's chain and affinity set.
pub fn endpoint_base(name: &ServicePortName, ep: SocketAddr) -> String {
    let ip = ep.ip().to_string().replace(':', ".");
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{}/{}",
        name.service.namespace,
        name.service.name,
        name.protocol.lower(),
        name.port,
        ip,
        ep.port()
    ))
}

/// A service port that could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{service}: {reason}; skipped")]
pub struct RenderError {
    /// The service port.
    pub service: String,
    /// Why.
    pub reason: &'static str,
}

/// One rule of a service's chain: expressions, or the random choice of an
/// endpoint chain (see [`numgen_rules`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Body {
    /// A rule, with its comment.
    Rule(Vec<Expr>, Option<String>),
    /// One of the endpoint chains, each with probability 1/N.
    Numgen(Vec<String>),
}

/// The key of a map or set element: the container and the key's bytes.
pub type ElementKey = (&'static str, Vec<u8>);

/// An element's value: its verdict (maps) and comment.
pub type ElementValue = (Option<Verdict>, Option<String>);

/// What one service (all its ports) puts in the table: its chains with
/// their rules, its affinity sets, and its elements of the shared maps
/// and sets. A partial sync compares these, service by service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fragment {
    /// Chains in creation order (endpoint chains first) with their rules.
    pub chains: Vec<(String, Vec<Body>)>,
    /// Affinity sets (ids are given when written).
    pub sets: Vec<Set>,
    /// Elements: container and key → verdict and comment.
    pub elements: BTreeMap<ElementKey, ElementValue>,
}

impl Fragment {
    /// Rules and elements it holds.
    pub fn objects(&self) -> usize {
        self.chains.iter().map(|(_, b)| b.len()).sum::<usize>() + self.elements.len()
    }

    fn vip(
        &mut self,
        map: &'static str,
        ip: IpAddr,
        svc: &ServicePort,
        v: Verdict,
        c: Option<String>,
    ) {
        let key = build::addr_proto_port_key(ip, proto_num(svc.protocol()), svc.port);
        self.elements.insert((map, key), (Some(v), c));
    }

    fn nodeport(&mut self, map: &'static str, svc: &ServicePort, v: Verdict, c: Option<String>) {
        let key = build::proto_port_key(proto_num(svc.protocol()), svc.node_port);
        self.elements.insert((map, key), (Some(v), c));
    }

    fn chain(&mut self, chain: &str) {
        if !self.chains.iter().any(|(c, _)| c == chain) {
            self.chains.push((chain.to_string(), Vec::new()));
        }
    }

    fn rule(&mut self, chain: &str, exprs: Vec<Expr>, comment: Option<&str>) {
        self.chain(chain);
        let body = Body::Rule(exprs, comment.map(String::from));
        if let Some((_, b)) = self.chains.iter_mut().find(|(c, _)| c == chain) {
            b.push(body);
        }
    }
}

/// The endpoint choice of a service chain over `targets`: one rule per
/// endpoint, `numgen random mod (N - i) 0 goto endpoint-i`, the last one
/// unconditional: each endpoint is chosen with probability 1/N, as
/// kube-proxy's `numgen random mod N vmap { … }` does. The vmap needs an
/// anonymous set per service, and the kernel finds every set by walking
/// the table's list of sets, so 10,000 services took minutes to load
/// (measured with `examples/scale_probe.rs`); these rules need no set.
pub fn numgen_rules(targets: &[String]) -> Vec<Vec<Expr>> {
    let n = targets.len();
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i + 1 == n {
                vec![build::goto(t)]
            } else {
                let mut e = build::numgen_is_zero((n - i) as u32);
                e.push(build::goto(t));
                e
            }
        })
        .collect()
}

/// Writes a chain's rules (the chain must exist).
pub fn write_rules<S: OpSink>(tx: &mut S, chain: &str, bodies: &[Body]) {
    for b in bodies {
        match b {
            Body::Rule(exprs, comment) => add_rule(tx, chain, exprs.clone(), comment.clone()),
            Body::Numgen(targets) => {
                for e in numgen_rules(targets) {
                    add_rule(tx, chain, e, None);
                }
            }
        }
    }
}

/// [`write_rules`], moving the rules instead of copying them.
pub fn write_rules_owned<S: OpSink>(tx: &mut S, chain: &str, bodies: Vec<Body>) {
    for b in bodies {
        match b {
            Body::Rule(exprs, comment) => add_rule(tx, chain, exprs, comment),
            Body::Numgen(targets) => {
                for e in numgen_rules(&targets) {
                    add_rule(tx, chain, e, None);
                }
            }
        }
    }
}

fn add_rule<S: OpSink>(tx: &mut S, chain: &str, exprs: Vec<Expr>, comment: Option<String>) {
    tx.add(Op::AddRule(Rule {
        chain: chain.into(),
        exprs,
        comment,
    }));
}

/// Adds elements, one message run per container.
pub fn write_elements<'a, S: OpSink>(
    tx: &mut S,
    elements: impl IntoIterator<Item = (&'a ElementKey, &'a ElementValue)>,
) {
    let mut by: BTreeMap<&'static str, Vec<Element>> = BTreeMap::new();
    for ((set, key), (verdict, comment)) in elements {
        by.entry(set).or_default().push(Element {
            key: key.clone(),
            verdict: verdict.clone(),
            comment: comment.clone(),
        });
    }
    for (set, elements) in by {
        tx.add(Op::AddElements {
            set: set.into(),
            set_id: None,
            elements,
        });
    }
}

/// Deletes elements by key, one message run per container.
pub fn delete_elements<'a, S: OpSink>(tx: &mut S, keys: impl IntoIterator<Item = &'a ElementKey>) {
    let mut by: BTreeMap<&'static str, Vec<Vec<u8>>> = BTreeMap::new();
    for (set, key) in keys {
        by.entry(set).or_default().push(key.clone());
    }
    for (set, keys) in by {
        tx.add(Op::DeleteElements {
            set: set.into(),
            keys,
        });
    }
}

/// Renders one service (every port of `nn` in `snap`); `None` when it has
/// no port (deleted). Ports whose names cannot go into a chain name are
/// left out and reported.
pub fn render_service(
    cfg: &Config,
    snap: &Snapshot,
    nn: &NamespacedName,
    errors: &mut Vec<RenderError>,
) -> Option<Fragment> {
    let mut f = Fragment::default();
    let mut any = false;
    for svc in snap.ports_of(nn) {
        any = true;
        if !safe_service_port_name(&svc.name) {
            errors.push(RenderError {
                service: svc.name.to_string(),
                reason: "name is not a DNS label and cannot go into a chain name",
            });
            continue;
        }
        service(cfg, snap, svc, &mut f);
    }
    any.then_some(f)
}

fn proto_num(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn key_addr(f: IpFamily) -> KeyType {
    match f {
        IpFamily::V4 => KeyType::Ipv4Addr,
        IpFamily::V6 => KeyType::Ipv6Addr,
    }
}

fn map(name: &str, key: Vec<KeyType>, comment: &str, id: u32) -> Op {
    Op::AddSet(Set {
        name: name.into(),
        key,
        verdict_map: true,
        flags: 0,
        timeout_ms: None,
        comment: Some(comment.into()),
        id,
    })
}

fn chain(name: &str) -> Chain {
    Chain {
        name: name.into(),
        base: None,
        comment: None,
    }
}

fn rule(chain: &str, exprs: Vec<Expr>) -> Op {
    Op::AddRule(Rule {
        chain: chain.into(),
        exprs,
        comment: None,
    })
}

fn rule_c(chain: &str, exprs: Vec<Expr>, comment: &str) -> Op {
    Op::AddRule(Rule {
        chain: chain.into(),
        exprs,
        comment: Some(comment.into()),
    })
}

fn with(mut e: Vec<Expr>, last: Expr) -> Vec<Expr> {
    e.push(last);
    e
}

fn net_match(net: &IpNet, dst: bool, op: CmpOp) -> Vec<Expr> {
    build::addr_in(net.network(), net.prefix_len(), dst, op)
}

/// The local-traffic match in nft (kube-proxy's `IfLocalNFT` and
/// `IfNotLocalNFT`): one match per CIDR for "not local" (all must hold),
/// one rule each for "local".
fn local_matches(d: &LocalDetector, negate: bool) -> Vec<Vec<Expr>> {
    match d {
        LocalDetector::None => Vec::new(),
        LocalDetector::ClusterCidr(cidrs) => {
            let op = if negate { CmpOp::Neq } else { CmpOp::Eq };
            if negate {
                vec![cidrs.iter().flat_map(|c| net_match(c, false, op)).collect()]
            } else {
                cidrs.iter().map(|c| net_match(c, false, op)).collect()
            }
        }
        LocalDetector::InterfacePrefix(p) => vec![vec![
            Expr::Meta {
                key: META_IIFNAME,
                dreg: REG_1,
            },
            Expr::Cmp {
                sreg: REG_1,
                op: if negate { CmpOp::Neq } else { CmpOp::Eq },
                data: p.as_bytes().to_vec(),
            },
        ]],
    }
}

fn fib_local(saddr: bool) -> Vec<Expr> {
    vec![
        Expr::Fib {
            dreg: REG_1,
            result: FIB_RESULT_ADDRTYPE,
            flags: if saddr { FIB_F_SADDR } else { FIB_F_DADDR },
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        },
    ]
}

fn proto_port_vmap(map: &str) -> Vec<Expr> {
    build::proto_port_vmap(map)
}

/// The table's fragments by service, as [`full`] renders them.
pub type Fragments = Vec<(NamespacedName, Fragment)>;

/// The whole table as one transaction: what a full sync writes after
/// deleting the old table in the same batch, so that nothing of ours
/// survives that is not wanted and nothing foreign is touched.
pub fn full(cfg: &Config, snap: &Snapshot) -> (Transaction, Fragments, Vec<RenderError>) {
    let mut tx = Transaction::new(nft_family(cfg.family()), TABLE);
    let mut fragments = Vec::new();
    let errors = full_into(cfg, snap, &mut tx, |nn, f| {
        fragments.push((nn.clone(), f.clone()))
    });
    (tx, fragments, errors)
}

/// [`full`], streamed: each operation goes to `tx` as it is made, and
/// `keep` sees each service's [`Fragment`] before its rules are moved
/// into `tx` (per service: its chains and sets, then its rules; the map
/// and set elements last, when every chain they name exists). Nothing
/// of the table is held here beyond one service and the elements.
pub fn full_into<S: OpSink>(
    cfg: &Config,
    snap: &Snapshot,
    tx: &mut S,
    keep: impl FnMut(&NamespacedName, &Fragment),
) -> Vec<RenderError> {
    let first_id = fixed_into(cfg, tx);
    let names = service_names(snap);
    let (elements, errors) = services_into(cfg, snap, &names, tx, keep, first_id);
    write_elements(tx, elements.iter().map(|(k, v)| (k, v)));
    errors
}

/// Each service of `snap` once, in order.
pub fn service_names(snap: &Snapshot) -> Vec<&NamespacedName> {
    let mut names: Vec<&NamespacedName> = Vec::new();
    for name in snap.services.keys() {
        if names.last() != Some(&&name.service) {
            names.push(&name.service);
        }
    }
    names
}

/// The part of the table no service owns: the table replaced, the base
/// and helper chains with their rules, the shared sets and maps. Returns
/// the next free set id.
pub fn fixed_into<S: OpSink>(cfg: &Config, tx: &mut S) -> u32 {
    let fam = cfg.family();
    let v6 = fam == IpFamily::V6;
    let addr = key_addr(fam);
    let mut ids = 0u32;
    let mut id = || {
        ids += 1;
        ids
    };
    // Replace the table: add (so the delete cannot fail), delete, add.
    tx.add(Op::AddTable { comment: None });
    tx.add(Op::DeleteTable);
    tx.add(Op::AddTable {
        comment: Some("rules for kube-proxy".into()),
    });
    // kube-proxy's base chains since v1.34 (kubernetes #132456): the
    // firewall is checked before DNAT (`dstnat - 10`); the endpoint and
    // cluster-IP checks after it (`filter`), so that pod and node traffic
    // an external chain short-circuits to the cluster endpoints is not
    // dropped for having no local endpoint (kubernetes #131765).
    let bases: [(&str, &'static str, Hook, i32); 8] = [
        (
            "filter-prerouting-pre-dnat",
            "filter",
            Hook::Prerouting,
            -110,
        ),
        ("filter-output-pre-dnat", "filter", Hook::Output, -110),
        ("filter-forward", "filter", Hook::Forward, 0),
        ("filter-input", "filter", Hook::Input, 0),
        ("filter-output", "filter", Hook::Output, 0),
        ("nat-prerouting", "nat", Hook::Prerouting, -100),
        ("nat-output", "nat", Hook::Output, -100),
        ("nat-postrouting", "nat", Hook::Postrouting, 100),
    ];
    for (name, kind, hook, priority) in bases {
        tx.add(Op::AddChain(Chain {
            name: name.into(),
            base: Some(BaseHook {
                kind,
                hook,
                priority,
            }),
            comment: None,
        }));
    }
    for c in [
        "nodeport-endpoints-check",
        "service-endpoints-check",
        "firewall-check",
        "services",
        "masquerading",
        "cluster-ips-check",
        "mark-for-masquerade",
    ] {
        tx.add(Op::AddChain(chain(c)));
    }
    tx.add(Op::AddChain(Chain {
        name: "reject-chain".into(),
        base: None,
        comment: Some("helper for @no-endpoint-services / @no-endpoint-nodeports".into()),
    }));
    let new = build::ct_new();
    for (to, from, ct) in [
        ("firewall-check", "filter-prerouting-pre-dnat", true),
        ("firewall-check", "filter-output-pre-dnat", true),
        ("service-endpoints-check", "filter-forward", true),
        ("cluster-ips-check", "filter-forward", true),
        ("nodeport-endpoints-check", "filter-input", true),
        ("service-endpoints-check", "filter-input", true),
        ("service-endpoints-check", "filter-output", true),
        ("cluster-ips-check", "filter-output", true),
        ("services", "nat-output", false),
        ("services", "nat-prerouting", false),
        ("masquerading", "nat-postrouting", false),
    ] {
        let e = if ct { new.clone() } else { Vec::new() };
        tx.add(rule(from, with(e, build::jump(to))));
    }
    let mark = cfg.masquerade.mark();
    tx.add(rule("mark-for-masquerade", build::mark_or(mark)));
    tx.add(rule(
        "masquerading",
        with(build::mark_and_zero(mark), Expr::Verdict(Verdict::Return)),
    ));
    tx.add(rule("masquerading", build::mark_xor(mark)));
    tx.add(rule(
        "masquerading",
        vec![Expr::Masq {
            flags: NAT_RANDOM_FULLY,
        }],
    ));
    let set = |name: &str, comment: &str, id: u32| {
        Op::AddSet(Set {
            name: name.into(),
            key: vec![addr],
            verdict_map: false,
            flags: 0,
            timeout_ms: None,
            comment: Some(comment.into()),
            id,
        })
    };
    tx.add(set("cluster-ips", "Active ClusterIPs", id()));
    let reject_code = if v6 { 4 } else { 3 };
    tx.add(rule_c(
        "cluster-ips-check",
        vec![
            build::daddr_load(v6),
            Expr::Lookup {
                sreg: REG_1,
                set: "cluster-ips".into(),
                set_id: None,
                dreg: None,
                invert: false,
            },
            Expr::Reject {
                icmp_code: reject_code,
            },
        ],
        "Reject traffic to invalid ports of ClusterIPs",
    ));
    for cidr in cfg.service_cidrs.iter().filter(|c| fam.matches(&c.addr())) {
        tx.add(rule_c(
            "cluster-ips-check",
            with(
                net_match(cidr, true, CmpOp::Eq),
                Expr::Verdict(Verdict::Drop),
            ),
            "Drop traffic to unallocated ClusterIPs",
        ));
    }
    let no_localhost: IpNet = if v6 {
        "::1/128".parse().expect("net")
    } else {
        "127.0.0.0/8".parse().expect("net")
    };
    let match_all = cfg.match_all();
    if !match_all {
        tx.add(set(
            "nodeport-ips",
            "IPs that accept NodePort traffic",
            id(),
        ));
        let ips: Vec<Element> = cfg
            .node_ips
            .iter()
            .filter(|ip| fam.matches(ip) && !ip.is_loopback())
            .filter(|ip| cfg.node_port_addresses.iter().any(|n| n.contains(*ip)))
            .map(|ip| Element {
                key: build::addr_key(*ip),
                verdict: None,
                comment: None,
            })
            .collect();
        if !ips.is_empty() {
            tx.add(Op::AddElements {
                set: "nodeport-ips".into(),
                set_id: None,
                elements: ips,
            });
        }
    }
    let vip_key = vec![addr, KeyType::InetProto, KeyType::InetService];
    let np_key = vec![KeyType::InetProto, KeyType::InetService];
    tx.add(map(
        "no-endpoint-services",
        vip_key.clone(),
        "vmap to drop or reject packets to services with no endpoints",
        id(),
    ));
    tx.add(map(
        "no-endpoint-nodeports",
        np_key.clone(),
        "vmap to drop or reject packets to service nodeports with no endpoints",
        id(),
    ));
    tx.add(rule(
        "reject-chain",
        vec![Expr::Reject {
            icmp_code: reject_code,
        }],
    ));
    tx.add(rule(
        "service-endpoints-check",
        build::daddr_proto_port_vmap(v6, "no-endpoint-services"),
    ));
    let nodeport_dest = |e: &mut Vec<Expr>| {
        if match_all {
            e.extend(net_match(&no_localhost, true, CmpOp::Neq));
        } else {
            e.push(build::daddr_load(v6));
            e.push(Expr::Lookup {
                sreg: REG_1,
                set: "nodeport-ips".into(),
                set_id: None,
                dreg: None,
                invert: false,
            });
        }
    };
    let mut e = Vec::new();
    nodeport_dest(&mut e);
    e.extend(proto_port_vmap("no-endpoint-nodeports"));
    tx.add(rule("nodeport-endpoints-check", e));
    tx.add(map(
        "firewall-ips",
        vip_key.clone(),
        "destinations that are subject to LoadBalancerSourceRanges",
        id(),
    ));
    tx.add(rule(
        "firewall-check",
        build::daddr_proto_port_vmap(v6, "firewall-ips"),
    ));
    tx.add(map(
        "service-ips",
        vip_key,
        "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        id(),
    ));
    tx.add(map("service-nodeports", np_key, "NodePort traffic", id()));
    tx.add(rule(
        "services",
        build::daddr_proto_port_vmap(v6, "service-ips"),
    ));
    let mut e = Vec::new();
    if match_all {
        e.extend(fib_local(false));
    }
    nodeport_dest(&mut e);
    e.extend(proto_port_vmap("service-nodeports"));
    tx.add(rule("services", e));

    ids + 1
}

/// The services `names`, each as [`full_into`] writes it: its chains and
/// sets (set ids from `first_id` on), then its rules, moved out of its
/// [`Fragment`] after `keep` has seen it. Returns their map and set
/// elements (to be written once every chain exists) and what could not be
/// rendered.
pub fn services_into<S: OpSink>(
    cfg: &Config,
    snap: &Snapshot,
    names: &[&NamespacedName],
    tx: &mut S,
    mut keep: impl FnMut(&NamespacedName, &Fragment),
    first_id: u32,
) -> (Vec<(ElementKey, ElementValue)>, Vec<RenderError>) {
    let mut next_id = first_id;
    let mut id = || {
        next_id += 1;
        next_id - 1
    };
    let mut errors = Vec::new();
    let mut elements: Vec<(ElementKey, ElementValue)> = Vec::new();
    for name in names {
        let Some(f) = render_service(cfg, snap, name, &mut errors) else {
            continue;
        };
        keep(name, &f);
        for (c, _) in &f.chains {
            tx.add(Op::AddChain(chain(c)));
        }
        for set in f.sets {
            let mut set = set;
            set.id = id();
            tx.add(Op::AddSet(set));
        }
        for (c, bodies) in f.chains {
            write_rules_owned(tx, &c, bodies);
        }
        elements.extend(f.elements);
    }
    (elements, errors)
}

/// One service port: its map elements and its chains, into `f`.
fn service(cfg: &Config, snap: &Snapshot, svc: &ServicePort, f: &mut Fragment) {
    let fam = cfg.family();
    let v6 = fam == IpFamily::V6;
    let name = &svc.name;
    let label = name.to_string();
    let proto = proto_num(svc.protocol());
    let base = service_base(name);
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    let firewall_chain = format!("firewall-{base}");
    let cat = snap.categorize(svc);
    let has_endpoints = cat.has_any;
    let (cluster, local) = (cat.cluster(), cat.local());
    let uses_cluster = !cluster.is_empty() && svc.uses_cluster_endpoints();
    let uses_local = !local.is_empty() && svc.uses_local_endpoints();
    let (internal_chain, has_internal) = if svc.internal_policy_local {
        (&local_chain, has_endpoints && !local.is_empty())
    } else {
        (&cluster_chain, has_endpoints)
    };
    let (external_policy, has_external) = if svc.external_policy_local {
        (&local_chain, has_endpoints && !local.is_empty())
    } else {
        (&cluster_chain, has_endpoints)
    };
    let uses_external = has_endpoints && svc.externally_accessible();
    let reject = Verdict::Goto("reject-chain".into());
    let (internal_verdict, external_verdict) = if !has_endpoints {
        (reject.clone(), reject)
    } else {
        (Verdict::Drop, Verdict::Drop)
    };
    let affinity = svc.sticky_seconds();
    let endpoint_names: Vec<(SocketAddr, String)> = cat
        .all_reachable
        .iter()
        .map(|e| (e.addr, endpoint_base(name, e.addr)))
        .collect();

    // Map and set elements.
    f.elements.insert(
        ("cluster-ips", build::addr_key(svc.cluster_ip)),
        (None, None),
    );
    if has_internal {
        let v = Verdict::Goto(internal_chain.clone());
        f.vip("service-ips", svc.cluster_ip, svc, v, None);
    } else {
        let c = Some(label.clone());
        f.vip(
            "no-endpoint-services",
            svc.cluster_ip,
            svc,
            internal_verdict,
            c,
        );
    }
    for ip in svc.external_ips.iter().filter(|ip| fam.matches(ip)) {
        if has_endpoints {
            let v = Verdict::Goto(external_chain.clone());
            f.vip("service-ips", *ip, svc, v, None);
        }
        if !has_external {
            let c = Some(label.clone());
            f.vip(
                "no-endpoint-services",
                *ip,
                svc,
                external_verdict.clone(),
                c,
            );
        }
    }
    let ranges: Vec<&IpNet> = svc
        .load_balancer_source_ranges
        .iter()
        .filter(|n| fam.matches(&n.addr()))
        .collect();
    let lb_ips: Vec<IpAddr> = svc
        .load_balancer_ips
        .iter()
        .copied()
        .filter(|ip| fam.matches(ip))
        .collect();
    let uses_fw = !lb_ips.is_empty() && !ranges.is_empty();
    for ip in &lb_ips {
        if has_endpoints {
            let v = Verdict::Goto(external_chain.clone());
            f.vip("service-ips", *ip, svc, v, None);
        }
        if uses_fw {
            let v = Verdict::Goto(firewall_chain.clone());
            f.vip("firewall-ips", *ip, svc, v, None);
        }
        if !has_external {
            let c = Some(label.clone());
            f.vip(
                "no-endpoint-services",
                *ip,
                svc,
                external_verdict.clone(),
                c,
            );
        }
    }
    if svc.node_port != 0 {
        if has_endpoints {
            let v = Verdict::Goto(external_chain.clone());
            f.nodeport("service-nodeports", svc, v, None);
        }
        if !has_external {
            let c = Some(label.clone());
            f.nodeport("no-endpoint-nodeports", svc, external_verdict.clone(), c);
        }
    }

    // Chains: the endpoint chains first (the service chains go to them).
    for (_, ep) in &endpoint_names {
        f.chain(&format!("endpoint-{ep}"));
        if let Some(secs) = affinity {
            f.sets.push(Set {
                name: format!("affinity-{ep}"),
                key: vec![key_addr(fam)],
                verdict_map: false,
                flags: SET_EVAL,
                timeout_ms: Some(u64::from(secs) * 1000),
                comment: None,
                id: 0,
            });
        }
    }
    for (uses, c) in [
        (uses_cluster, &cluster_chain),
        (uses_local, &local_chain),
        (uses_external, &external_chain),
        (uses_fw, &firewall_chain),
    ] {
        if uses {
            f.chain(c);
        }
    }

    // Internal traffic: masquerade what does not come from a pod.
    if has_internal {
        // `ip daddr CIP`, without the port: the service chain is reached
        // for the cluster IP only through `service-ips`, which matched
        // protocol and port (kube-proxy's rule since v1.34).
        let e = build::addr_eq(svc.cluster_ip, true, CmpOp::Eq);
        if cfg.masquerade.masquerade_all {
            f.rule(
                internal_chain,
                with(e, build::jump("mark-for-masquerade")),
                None,
            );
        } else if cfg.masquerade.local_detector.is_implemented() {
            for m in local_matches(&cfg.masquerade.local_detector, true) {
                let mut e = e.clone();
                e.extend(m);
                f.rule(
                    internal_chain,
                    with(e, build::jump("mark-for-masquerade")),
                    None,
                );
            }
        }
    }
    // External traffic.
    if uses_external {
        if !svc.external_policy_local {
            f.rule(
                &external_chain,
                vec![build::jump("mark-for-masquerade")],
                None,
            );
        } else {
            for m in local_matches(&cfg.masquerade.local_detector, false) {
                let e = with(m, build::goto(&cluster_chain));
                f.rule(&external_chain, e, Some("short-circuit pod traffic"));
            }
            let e = with(fib_local(true), build::jump("mark-for-masquerade"));
            f.rule(&external_chain, e, Some("masquerade local traffic"));
            let e = with(fib_local(true), build::goto(&cluster_chain));
            f.rule(&external_chain, e, Some("short-circuit local traffic"));
        }
        if has_external {
            f.rule(&external_chain, vec![build::goto(external_policy)], None);
        }
    }
    if uses_fw {
        let mut sources: Vec<IpNet> = ranges.iter().map(|n| **n).collect();
        let allow_from_node = ranges
            .iter()
            .any(|n| cfg.node_ips.iter().any(|ip| n.contains(ip)));
        if allow_from_node {
            sources.extend(lb_ips.iter().map(|ip| IpNet::from(*ip)));
        }
        if let [only] = sources.as_slice() {
            // kube-proxy's `ip saddr != { CIDR } drop`, which nft lists
            // as `ip saddr != CIDR drop`: one comparison, no set.
            let e = with(
                net_match(only, false, CmpOp::Neq),
                Expr::Verdict(Verdict::Drop),
            );
            f.rule(&firewall_chain, e, None);
        } else {
            // Several sources: a `return` each, then `drop` (kube-proxy
            // writes one anonymous set; the verdict is the same).
            for s in &sources {
                let e = with(
                    net_match(s, false, CmpOp::Eq),
                    Expr::Verdict(Verdict::Return),
                );
                f.rule(&firewall_chain, e, None);
            }
            f.rule(&firewall_chain, vec![Expr::Verdict(Verdict::Drop)], None);
        }
    }
    let endpoint_chain = |addr: SocketAddr| {
        endpoint_names
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, b)| b.clone())
            .expect("reachable endpoint")
    };
    let to_endpoints = |f: &mut Fragment, chain: &str, eps: &[&proxier_core::Endpoint]| {
        if affinity.is_some() {
            for ep in eps {
                let b = endpoint_chain(ep.addr);
                let e = vec![
                    build::saddr_load(v6),
                    Expr::Lookup {
                        sreg: REG_1,
                        set: format!("affinity-{b}"),
                        set_id: None,
                        dreg: None,
                        invert: false,
                    },
                    build::goto(&format!("endpoint-{b}")),
                ];
                f.rule(chain, e, None);
            }
        }
        let targets = eps
            .iter()
            .map(|ep| format!("endpoint-{}", endpoint_chain(ep.addr)))
            .collect();
        f.chain(chain);
        if let Some((_, b)) = f.chains.iter_mut().find(|(c, _)| c == chain) {
            b.push(Body::Numgen(targets));
        }
    };
    if uses_cluster {
        to_endpoints(f, &cluster_chain, cluster);
    }
    if uses_local {
        to_endpoints(f, &local_chain, local);
    }
    for (addr, b) in &endpoint_names {
        let c = format!("endpoint-{b}");
        let e = with(
            build::addr_eq(addr.ip(), false, CmpOp::Eq),
            build::jump("mark-for-masquerade"),
        );
        f.rule(&c, e, None);
        if affinity.is_some() {
            let e = vec![
                build::saddr_load(v6),
                Expr::DynsetUpdate {
                    sreg: REG_1,
                    set: format!("affinity-{b}"),
                },
            ];
            f.rule(&c, e, None);
        }
        f.rule(&c, build::dnat(proto, addr.ip(), addr.port()), None);
    }
}
