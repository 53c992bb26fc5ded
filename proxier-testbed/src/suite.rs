//! The behaviour suite: one set of scenarios, written once, that every
//! backend runs through the [`Proxier`] trait on a real [`Topology`] with
//! real TCP and UDP traffic.
//!
//! A backend test file expands [`behaviour_suite!`](crate::behaviour_suite)
//! with a [`Backend`]: one `#[test]` per [`Feature`] and IP family
//! (`ipv4::cluster_ip_tcp`, `ipv6::cluster_ip_tcp`). Every scenario runs
//! over IPv4 and over IPv6 on a dual-stack topology; its services are
//! dual-stack (`clusterIPs`, external and LoadBalancer IPs and source
//! ranges of both families) and its EndpointSlice is of the family under
//! test, so the tracker's choice of family is exercised too. A feature the
//! backend declares unsupported (in one family or both) is not run; it is
//! recorded as such, with the reason. Every run
//! writes its result to `target/proxier-features/`, and
//! `cargo run -p proxier-testbed --bin feature-table` turns those into the
//! README's feature table.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use proxier_core::{
    ChangeTracker, EndpointSlice, IpFamily, Protocol, Proxier, Service, ServiceType,
    SessionAffinity, SyncRequest, SyncStats, TrafficPolicy,
};

use crate::objects::{ep, service, slice, terminating};
use crate::topology::{Plan, Topology, Where};
use crate::traffic::{Outcome, udp_exchange};

/// One row of the feature table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// ClusterIP over TCP, targetPort ≠ port, spread over endpoints.
    ClusterIpTcp,
    /// ClusterIP over UDP.
    ClusterIpUdp,
    /// Several ports and protocols on one service.
    MultiPort,
    /// A service without endpoints refuses (REJECT), it does not time out.
    NoEndpointsRejected,
    /// NodePort on every node address.
    NodePort,
    /// NodePort restricted by `--nodeport-addresses`.
    NodePortAddresses,
    /// `externalIPs`.
    ExternalIps,
    /// LoadBalancer ingress IPs with `loadBalancerSourceRanges`.
    LoadBalancerSourceRanges,
    /// ClientIP session affinity.
    SessionAffinity,
    /// `externalTrafficPolicy: Local`.
    ExternalTrafficPolicyLocal,
    /// `internalTrafficPolicy: Local`.
    InternalTrafficPolicyLocal,
    /// Fallback to serving-but-terminating endpoints.
    TerminatingFallback,
    /// An endpoint reaching its own service.
    Hairpin,
    /// External traffic to remote endpoints is masqueraded.
    MasqueradeExternal,
    /// Endpoints change under traffic: new TCP connections follow, UDP
    /// flows move off a removed endpoint (conntrack cleanup).
    EndpointChurn,
    /// A deleted service stops answering.
    ServiceDeleted,
    /// `cleanup` leaves no trace.
    Cleanup,
}

impl Feature {
    /// Every feature, in table order.
    pub const ALL: [Feature; 17] = [
        Feature::ClusterIpTcp,
        Feature::ClusterIpUdp,
        Feature::MultiPort,
        Feature::NoEndpointsRejected,
        Feature::NodePort,
        Feature::NodePortAddresses,
        Feature::ExternalIps,
        Feature::LoadBalancerSourceRanges,
        Feature::SessionAffinity,
        Feature::ExternalTrafficPolicyLocal,
        Feature::InternalTrafficPolicyLocal,
        Feature::TerminatingFallback,
        Feature::Hairpin,
        Feature::MasqueradeExternal,
        Feature::EndpointChurn,
        Feature::ServiceDeleted,
        Feature::Cleanup,
    ];

    /// The row label.
    pub fn label(self) -> &'static str {
        match self {
            Feature::ClusterIpTcp => "ClusterIP, TCP (targetPort ≠ port)",
            Feature::ClusterIpUdp => "ClusterIP, UDP",
            Feature::MultiPort => "several ports and protocols per service",
            Feature::NoEndpointsRejected => "no endpoints → refused, not a timeout",
            Feature::NodePort => "NodePort (every node address)",
            Feature::NodePortAddresses => "NodePort restricted by --nodeport-addresses",
            Feature::ExternalIps => "externalIPs",
            Feature::LoadBalancerSourceRanges => "LoadBalancer IP + loadBalancerSourceRanges",
            Feature::SessionAffinity => "sessionAffinity: ClientIP",
            Feature::ExternalTrafficPolicyLocal => "externalTrafficPolicy: Local (source kept)",
            Feature::InternalTrafficPolicyLocal => "internalTrafficPolicy: Local",
            Feature::TerminatingFallback => "terminating-endpoint fallback",
            Feature::Hairpin => "hairpin (endpoint → own service)",
            Feature::MasqueradeExternal => "masquerade of external traffic",
            Feature::EndpointChurn => "endpoint churn (TCP follows, UDP conntrack cleared)",
            Feature::ServiceDeleted => "deleted service stops answering",
            Feature::Cleanup => "cleanup leaves no trace",
        }
    }

    /// A stable identifier (file names, test names).
    pub fn id(self) -> String {
        format!("{self:?}")
    }
}

/// What a scenario tells the backend's constructor.
#[derive(Debug, Clone)]
pub struct Env {
    /// The node's name.
    pub node_name: String,
    /// The node's addresses.
    pub node_ips: Vec<IpAddr>,
    /// The cluster (pod) CIDR.
    pub cluster_cidr: IpNet,
    /// `--nodeport-addresses` (empty: all). May hold both families, as
    /// the flag may.
    pub node_port_addresses: Vec<IpNet>,
    /// The family under test.
    pub family: IpFamily,
}

/// A check of the kernel against the snapshot just synced.
pub type Verify = fn(&Env, &Topology, &proxier_core::Snapshot) -> Result<(), String>;

/// A backend under test.
pub struct Backend {
    /// Its name in the table (`iptables (nft)`).
    pub name: &'static str,
    /// Builds the proxier; called on the node namespace's runtime.
    pub make: fn(&Env) -> Box<dyn Proxier>,
    /// Features it does not support, in either family, and why.
    pub unsupported: &'static [(Feature, &'static str)],
    /// `None` if the backend runs IPv6; otherwise why not (every
    /// scenario is then recorded unsupported over IPv6, with this reason).
    pub no_ipv6: Option<&'static str>,
    /// What the backend left in the node namespace (rules, listeners):
    /// empty after `cleanup`.
    pub leftovers: fn(&Topology) -> Vec<String>,
    /// Checked after every sync: the kernel agrees with the snapshot
    /// (e.g. `ipvsadm -Sn` against the desired virtual servers).
    pub verify: Option<Verify>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend").field("name", &self.name).finish()
    }
}

const T: Duration = Duration::from_millis(1500);
const SHORT: Duration = Duration::from_millis(400);
/// An address of each family: (IPv4, IPv6).
type Pair = (&'static str, &'static str);
const CIP: Pair = ("10.96.0.10", "fd00:96::10");
const CIP2: Pair = ("10.96.0.11", "fd00:96::11");
const EXT_IP: Pair = ("203.0.113.10", "2001:db8:113::10");
const EXT_IP2: Pair = ("203.0.113.11", "2001:db8:113::11");
const LB_IP: Pair = ("198.51.100.10", "2001:db8:100::10");
const LB_IP2: Pair = ("198.51.100.12", "2001:db8:100::12");
/// `--nodeport-addresses` of the NodePortAddresses scenario (both
/// families: the backend takes its own).
const NPA: [&str; 2] = ["192.168.50.0/24", "fd00:50::/64"];
const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const PORT: u16 = 80;
const TARGET: u16 = 8080;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A running scenario: the topology, the tracker and the proxier.
pub struct Ctx {
    /// The namespaces.
    pub topo: Topology,
    env: Env,
    tracker: ChangeTracker,
    proxier: Option<Box<dyn Proxier>>,
    synced: bool,
    backend: &'static Backend,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("backend", &self.backend.name)
            .finish()
    }
}

impl Ctx {
    /// Builds the (dual-stack) topology and the proxier for `family`.
    pub fn new(
        backend: &'static Backend,
        family: IpFamily,
        node_port_addresses: Vec<IpNet>,
    ) -> Ctx {
        let mut topo = Topology::build(Plan {
            ext_clients: 8,
            family,
            ..Plan::default()
        })
        .expect("topology");
        let env = Env {
            node_name: topo.plan.node_name.clone(),
            node_ips: vec![topo.node_ip(), topo.node_ip2()],
            cluster_cidr: topo.cluster_cidr(),
            node_port_addresses,
            family,
        };
        let make = backend.make;
        let e = env.clone();
        let proxier = topo.node_rt().block_on(async move { make(&e) });
        let tracker = ChangeTracker::new(family, &topo.plan.node_name);
        Ctx {
            topo,
            env,
            tracker,
            proxier: Some(proxier),
            synced: false,
            backend,
        }
    }

    /// Starts identity servers (TCP and UDP on `TARGET`) at `wheres`.
    pub fn serve(&mut self, wheres: &[Where], port: u16) {
        for w in wheres {
            self.topo.serve(*w, port, TCP).expect("tcp server");
            self.topo.serve(*w, port, UDP).expect("udp server");
        }
    }

    /// Feeds objects to the tracker and syncs.
    pub fn apply(&mut self, services: &[Service], slices: &[EndpointSlice]) -> SyncStats {
        for s in services {
            self.tracker.update_service(s).expect("valid service");
        }
        for s in slices {
            self.tracker.update_endpoint_slice(s).expect("valid slice");
        }
        self.sync()
    }

    /// Deletes a service and its slice, and syncs.
    pub fn delete(&mut self, ns: &str, name: &str) -> SyncStats {
        self.tracker.delete_service(ns, name);
        self.tracker.delete_endpoint_slice(ns, &format!("{name}-1"));
        self.sync()
    }

    /// One sync of what the tracker holds (full the first time).
    pub fn sync(&mut self) -> SyncStats {
        let (snapshot, changes) = self.tracker.apply();
        let snap = snapshot.clone();
        let req = SyncRequest {
            snapshot,
            changes,
            full: !self.synced,
            verify: false,
        };
        let mut p = self.proxier.take().expect("proxier");
        let (p, r) = self.topo.node_rt().block_on(async move {
            let r = p.sync(&req).await;
            (p, r)
        });
        self.proxier = Some(p);
        self.synced = true;
        let stats = r.unwrap_or_else(|e| panic!("{} sync failed: {e:#?}", self.backend.name));
        if let Some(verify) = self.backend.verify
            && let Err(e) = verify(&self.env, &self.topo, &snap)
        {
            panic!(
                "{}: the kernel disagrees with the snapshot: {e}",
                self.backend.name
            );
        }
        stats
    }

    /// Runs the backend's cleanup.
    pub fn cleanup(&mut self) {
        let mut p = self.proxier.take().expect("proxier");
        let (p, r) = self.topo.node_rt().block_on(async move {
            let r = p.cleanup().await;
            (p, r)
        });
        self.proxier = Some(p);
        r.unwrap_or_else(|e| panic!("{} cleanup failed: {e}", self.backend.name));
    }

    /// `n` requests; panics unless every one got a reply.
    pub fn replies(
        &self,
        from: Where,
        proto: Protocol,
        src: Option<IpAddr>,
        dst: SocketAddr,
        n: usize,
    ) -> Vec<Outcome> {
        let out = self.topo.requests(from, proto, src, dst, n, T);
        for o in &out {
            assert!(
                matches!(o, Outcome::Reply { .. }),
                "{from:?} → {dst} {proto}: {o:?} (all: {out:?})"
            );
        }
        out
    }

    /// The servers that answered.
    pub fn servers(out: &[Outcome]) -> BTreeSet<IpAddr> {
        out.iter()
            .filter_map(|o| o.server())
            .map(|s| s.ip())
            .collect()
    }

    fn ip_of(&self, w: Where) -> IpAddr {
        self.topo.ip_of(w)
    }

    /// The family under test.
    pub fn family(&self) -> IpFamily {
        self.env.family
    }

    /// The address of `pair` in the family under test.
    fn at(&self, pair: Pair) -> IpAddr {
        ip(if self.family() == IpFamily::V6 {
            pair.1
        } else {
            pair.0
        })
    }

    /// Both addresses of `pair`, the family under test's first (a
    /// dual-stack service whose primary family is the one under test).
    fn both(&self, pair: Pair) -> Vec<IpAddr> {
        let mine = self.at(pair);
        let other = if mine == ip(pair.0) { pair.1 } else { pair.0 };
        vec![mine, ip(other)]
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // Leave nothing in the node namespace even when a scenario failed
        // (the namespace goes anyway; this also exercises cleanup).
        if let Some(mut p) = self.proxier.take()
            && !std::thread::panicking()
        {
            let _ = self
                .topo
                .node_rt()
                .block_on(async move { p.cleanup().await });
        }
    }
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A dual-stack service (`RequireDualStack`: a cluster IP of each family)
/// with an HTTP (TCP) and a DNS (UDP) port.
fn web(ctx: &Ctx, name: &str, cip: Pair) -> Service {
    let mut s = service(
        "default",
        name,
        cip.0,
        &[("http", PORT, TCP), ("dns", 53, UDP)],
    );
    s.cluster_ips = ctx.both(cip);
    s
}

fn web_slice(name: &str, ctx: &Ctx, eps: &[Where]) -> EndpointSlice {
    let endpoints = eps
        .iter()
        .map(|w| ep(ctx.ip_of(*w), ctx.topo.node_name_of(*w)))
        .collect();
    slice(
        "default",
        name,
        &[("http", TARGET, TCP), ("dns", TARGET, UDP)],
        endpoints,
    )
}

const ALL_EPS: [Where; 4] = [
    Where::Local(0),
    Where::Local(1),
    Where::Remote(0),
    Where::Remote(1),
];

fn node_port(mut s: Service, np: u16) -> Service {
    s.service_type = ServiceType::NodePort;
    s.ports[0].node_port = np;
    s.ports[1].node_port = np;
    s
}

const FEATURE_LINE: &str = "PROXIER-FEATURE";

/// Runs every feature of `backend` inside the test VM, in one boot: the
/// whole body of the test `test_name`. On the host it boots the VM, runs
/// this same test there, and writes the results the VM reported into
/// `target/proxier-features/`; inside the VM it runs each scenario (a
/// failing one does not stop the others) and fails unless all passed.
pub fn run_in_vm(test_name: &str, backend: &'static Backend) {
    if crate::vm::in_vm() {
        let mut failed = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            for f in Feature::ALL {
                eprintln!("--- {} ({}): {}", backend.name, family.as_str(), f.label());
                if std::panic::catch_unwind(|| run(f, family, backend)).is_err() {
                    failed.push(format!("{}/{}", family.as_str(), f.id()));
                }
            }
        }
        assert!(
            failed.is_empty(),
            "{}: failed in the VM: {failed:?}",
            backend.name
        );
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let r = crate::vm::run(
        &exe,
        &["--exact", test_name, "--test-threads", "1", "--nocapture"],
        &[],
        std::time::Duration::from_secs(1800),
    )
    .expect("could not start the VM");
    // Each scenario reports "fail" before it starts and its verdict after:
    // the last line per feature and family wins.
    let mut seen = BTreeSet::new();
    for line in r.output.lines() {
        if let Some(rest) = line.split(FEATURE_LINE).nth(1) {
            let rest = rest.trim_start().trim_end_matches(['\r', '\n']);
            let mut f = rest.split('\t');
            if let (Some(b), Some(id), Some(_), Some(fam)) =
                (f.next(), f.next(), f.next(), f.next())
            {
                let _ = std::fs::write(result_file(b, fam, id), format!("{rest}\n"));
                seen.insert((fam.to_string(), id.to_string()));
            }
        }
    }
    assert!(
        r.passed() && r.output.contains("1 passed"),
        "{}: the behaviour suite failed in the VM (status {:?}, {:?}):\n{}",
        backend.name,
        r.status,
        r.elapsed,
        r.output
    );
    assert_eq!(
        seen.len(),
        2 * Feature::ALL.len(),
        "features reported from the VM, over both families"
    );
}

/// Where the results go (`target/proxier-features/`).
fn result_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/proxier-features");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// The result file of one backend, family and feature.
fn result_file(backend: &str, family: &str, feature: &str) -> std::path::PathBuf {
    result_dir().join(format!(
        "{}.{family}.{feature}",
        backend.replace([' ', '(', ')'], "_")
    ))
}

/// Runs one feature's scenario against `backend` over `family`; records
/// the result (`backend\tfeature\tverdict\tfamily`, and the reason of an
/// unsupported one).
pub fn run(feature: Feature, family: IpFamily, backend: &'static Backend) {
    let file = result_file(backend.name, family.as_str(), &feature.id());
    let record = |verdict: &str, why: &str| {
        let line = format!(
            "{}\t{}\t{verdict}\t{}\t{why}",
            backend.name,
            feature.id(),
            family.as_str()
        );
        if crate::vm::in_vm() {
            // The host side of `behaviour_suite!(@vm ...)` writes it.
            println!("{FEATURE_LINE} {line}");
        }
        let _ = std::fs::write(&file, format!("{line}\n"));
    };
    let why = match (family, backend.no_ipv6) {
        (IpFamily::V6, Some(why)) => Some(why),
        _ => backend
            .unsupported
            .iter()
            .find(|(f, _)| *f == feature)
            .map(|(_, why)| *why),
    };
    if let Some(why) = why {
        record("unsupported", why);
        eprintln!(
            "{} ({}): {} is unsupported ({why}); not run",
            backend.name,
            family.as_str(),
            feature.label()
        );
        return;
    }
    record("fail", "");
    let npa = if feature == Feature::NodePortAddresses {
        NPA.iter().map(|n| n.parse().expect("cidr")).collect()
    } else {
        Vec::new()
    };
    let mut ctx = Ctx::new(backend, family, npa);
    scenario(feature, &mut ctx);
    record("pass", "");
}

fn scenario(feature: Feature, ctx: &mut Ctx) {
    let cip = ctx.at(CIP);
    let node_ip = ctx.topo.node_ip();
    let node_ip2 = ctx.topo.node_ip2();
    match feature {
        Feature::ClusterIpTcp | Feature::ClusterIpUdp => {
            let proto = if feature == Feature::ClusterIpTcp {
                TCP
            } else {
                UDP
            };
            let port = if proto == TCP { PORT } else { 53 };
            ctx.serve(&ALL_EPS, TARGET);
            let s = web(ctx, "web", CIP);
            let sl = web_slice("web", ctx, &ALL_EPS);
            ctx.apply(&[s], &[sl]);
            let out = ctx.replies(Where::ClientPod, proto, None, sa(cip, port), 40);
            let servers = Ctx::servers(&out);
            let all: BTreeSet<IpAddr> = ALL_EPS.iter().map(|w| ctx.ip_of(*w)).collect();
            assert!(servers.is_subset(&all), "{servers:?}");
            assert!(
                servers.len() >= 3,
                "40 requests should spread over 4 endpoints: {servers:?}"
            );
            for o in &out {
                assert_eq!(o.server().map(|s| s.port()), Some(TARGET));
            }
            // From the node itself (OUTPUT path) too.
            ctx.replies(Where::Node, proto, None, sa(cip, port), 5);
        }
        Feature::MultiPort => {
            ctx.serve(&[Where::Local(0)], TARGET);
            ctx.serve(&[Where::Local(0)], 9090);
            let mut s = service(
                "default",
                "multi",
                CIP.0,
                &[("http", 80, TCP), ("alt", 81, TCP), ("dns", 53, UDP)],
            );
            s.cluster_ips = ctx.both(CIP);
            let e = ep(ctx.ip_of(Where::Local(0)), "node-1");
            let sl = slice(
                "default",
                "multi",
                &[
                    ("http", TARGET, TCP),
                    ("alt", 9090, TCP),
                    ("dns", TARGET, UDP),
                ],
                vec![e],
            );
            ctx.apply(&[s], &[sl]);
            let a = ctx.replies(Where::ClientPod, TCP, None, sa(cip, 80), 3);
            let b = ctx.replies(Where::ClientPod, TCP, None, sa(cip, 81), 3);
            let c = ctx.replies(Where::ClientPod, UDP, None, sa(cip, 53), 3);
            assert!(
                a.iter()
                    .all(|o| o.server().map(|s| s.port()) == Some(TARGET))
            );
            assert!(b.iter().all(|o| o.server().map(|s| s.port()) == Some(9090)));
            assert!(
                c.iter()
                    .all(|o| o.server().map(|s| s.port()) == Some(TARGET))
            );
            // A port the service does not have is not proxied.
            let other = ctx.topo.tcp(Where::ClientPod, None, sa(cip, 82), SHORT);
            assert!(other.server().is_none(), "{other:?}");
        }
        Feature::NoEndpointsRejected => {
            ctx.apply(&[web(ctx, "empty", CIP)], &[]);
            let t0 = std::time::Instant::now();
            let o = ctx.topo.tcp(
                Where::ClientPod,
                None,
                sa(cip, PORT),
                Duration::from_secs(3),
            );
            assert_eq!(o, Outcome::Refused, "TCP to a service without endpoints");
            // Linux's TCP over IPv6 takes the first ICMPv6 port-unreachable
            // for a SYN as a soft error and gives up on the retransmitted
            // SYN's, one second later (over IPv4 the first one ends the
            // connect). kube-proxy rejects with ICMPv6 too; still a refusal,
            // never the timeout of a dropped SYN.
            let quick = match ctx.family() {
                IpFamily::V4 => Duration::from_secs(1),
                IpFamily::V6 => Duration::from_millis(2500),
            };
            assert!(
                t0.elapsed() < quick,
                "refused quickly, not timed out ({:?})",
                t0.elapsed()
            );
            let o = ctx
                .topo
                .udp(Where::ClientPod, None, sa(cip, 53), Duration::from_secs(3));
            assert_eq!(o, Outcome::Refused, "UDP to a service without endpoints");
        }
        Feature::NodePort | Feature::NodePortAddresses => {
            ctx.serve(&ALL_EPS, TARGET);
            let s = node_port(web(ctx, "np", CIP), 30080);
            let sl = web_slice("np", ctx, &ALL_EPS);
            ctx.apply(&[s], &[sl]);
            ctx.replies(Where::Ext, TCP, None, sa(node_ip, 30080), 5);
            ctx.replies(Where::Ext, UDP, None, sa(node_ip, 30080), 5);
            let second = ctx.topo.tcp(Where::Ext, None, sa(node_ip2, 30080), SHORT);
            if feature == Feature::NodePort {
                assert!(
                    second.server().is_some(),
                    "node port on the second node address: {second:?}"
                );
                ctx.replies(Where::ClientPod, TCP, None, sa(node_ip, 30080), 3);
            } else {
                assert!(
                    second.server().is_none(),
                    "--nodeport-addresses excludes {node_ip2}: {second:?}"
                );
            }
        }
        Feature::ExternalIps => {
            ctx.serve(&ALL_EPS, TARGET);
            let mut s = web(ctx, "ext", CIP);
            s.external_ips = ctx.both(EXT_IP);
            let sl = web_slice("ext", ctx, &ALL_EPS);
            ctx.apply(&[s], &[sl]);
            let eip = ctx.at(EXT_IP);
            ctx.replies(Where::Ext, TCP, None, sa(eip, PORT), 5);
            ctx.replies(Where::ClientPod, TCP, None, sa(eip, PORT), 3);
            let other = ctx.topo.tcp(Where::Ext, None, sa(eip, 81), SHORT);
            assert!(other.server().is_none(), "{other:?}");
        }
        Feature::LoadBalancerSourceRanges => {
            ctx.serve(&ALL_EPS, TARGET);
            let mut s = node_port(web(ctx, "lb", CIP), 30081);
            s.service_type = ServiceType::LoadBalancer;
            s.load_balancer_ips = ctx.both(LB_IP);
            // One range per family (the API's own spacing kept): each
            // family's proxier takes its own.
            s.load_balancer_source_ranges =
                vec![" 192.168.50.2/32 ".into(), "fd00:50::2/128".into()];
            let sl = web_slice("lb", ctx, &ALL_EPS);
            ctx.apply(&[s], &[sl]);
            let vip = sa(ctx.at(LB_IP), PORT);
            let allowed = ctx.topo.ext_ip(0);
            let blocked = ctx.topo.ext_ip(1);
            ctx.replies(Where::Ext, TCP, Some(allowed), vip, 5);
            let o = ctx.topo.tcp(Where::Ext, Some(blocked), vip, SHORT);
            assert!(
                o.server().is_none(),
                "a client outside the source ranges got through: {o:?}"
            );
        }
        Feature::SessionAffinity => {
            ctx.serve(&ALL_EPS, TARGET);
            let mut s = web(ctx, "sticky", CIP);
            s.external_ips = ctx.both(EXT_IP2);
            let eip = ctx.at(EXT_IP2);
            s.session_affinity = SessionAffinity::ClientIp {
                timeout_seconds: 600,
            };
            let sl = web_slice("sticky", ctx, &ALL_EPS);
            ctx.apply(&[s], &[sl]);
            let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 20);
            assert_eq!(
                Ctx::servers(&out).len(),
                1,
                "one client, one endpoint: {out:?}"
            );
            let mut chosen = BTreeSet::new();
            for i in 0..8 {
                let src = ctx.topo.ext_ip(i);
                let out = ctx.replies(Where::Ext, TCP, Some(src), sa(eip, PORT), 6);
                let s = Ctx::servers(&out);
                assert_eq!(s.len(), 1, "client {src} sticks to one endpoint: {s:?}");
                chosen.extend(s);
            }
            assert!(
                chosen.len() >= 2,
                "8 clients all on one of 4 endpoints: {chosen:?}"
            );
        }
        Feature::ExternalTrafficPolicyLocal => {
            ctx.serve(&ALL_EPS, TARGET);
            let mut s = node_port(web(ctx, "etp", CIP), 30082);
            s.external_traffic_policy = TrafficPolicy::Local;
            let sl = web_slice("etp", ctx, &[Where::Local(0), Where::Remote(0)]);
            ctx.apply(&[s.clone()], &[sl]);
            let src = ctx.topo.ext_ip(2);
            let out = ctx.replies(Where::Ext, TCP, Some(src), sa(node_ip, 30082), 12);
            assert_eq!(
                Ctx::servers(&out),
                BTreeSet::from([ctx.ip_of(Where::Local(0))]),
                "external traffic reaches local endpoints only"
            );
            assert!(
                out.iter().all(|o| o.peer().map(|p| p.ip()) == Some(src)),
                "client source preserved: {out:?}"
            );
            // Pods still reach every endpoint through the cluster IP.
            let pod = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 20);
            assert!(
                Ctx::servers(&pod).contains(&ctx.ip_of(Where::Remote(0))),
                "{pod:?}"
            );
            // No local endpoint: external traffic is dropped.
            let sl = web_slice("etp", ctx, &[Where::Remote(0)]);
            ctx.apply(&[], &[sl]);
            let o = ctx
                .topo
                .tcp(Where::Ext, Some(src), sa(node_ip, 30082), SHORT);
            assert!(
                o.server().is_none(),
                "no local endpoint must not answer: {o:?}"
            );
        }
        Feature::InternalTrafficPolicyLocal => {
            ctx.serve(&ALL_EPS, TARGET);
            let mut s = web(ctx, "itp", CIP);
            s.internal_traffic_policy = TrafficPolicy::Local;
            let sl = web_slice(
                "itp",
                ctx,
                &[Where::Local(1), Where::Remote(0), Where::Remote(1)],
            );
            ctx.apply(&[s], &[sl]);
            let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 12);
            assert_eq!(
                Ctx::servers(&out),
                BTreeSet::from([ctx.ip_of(Where::Local(1))])
            );
            let sl = web_slice("itp", ctx, &[Where::Remote(0)]);
            ctx.apply(&[], &[sl]);
            let o = ctx.topo.tcp(Where::ClientPod, None, sa(cip, PORT), SHORT);
            assert!(
                o.server().is_none(),
                "no local endpoint must not answer: {o:?}"
            );
        }
        Feature::TerminatingFallback => {
            ctx.serve(&ALL_EPS, TARGET);
            let s = web(ctx, "term", CIP);
            let (a, b) = (ctx.ip_of(Where::Local(0)), ctx.ip_of(Where::Local(1)));
            let sl = slice(
                "default",
                "term",
                &[("http", TARGET, TCP), ("dns", TARGET, UDP)],
                vec![
                    terminating(a, "node-1", true),
                    terminating(b, "node-1", false),
                ],
            );
            ctx.apply(&[s], &[sl]);
            let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 10);
            assert_eq!(
                Ctx::servers(&out),
                BTreeSet::from([a]),
                "only the serving terminating endpoint"
            );
        }
        Feature::Hairpin => {
            ctx.serve(&[Where::Local(0)], TARGET);
            let s = web(ctx, "hair", CIP);
            let sl = web_slice("hair", ctx, &[Where::Local(0)]);
            ctx.apply(&[s], &[sl]);
            let me = ctx.ip_of(Where::Local(0));
            let out = ctx.replies(Where::Local(0), TCP, None, sa(cip, PORT), 3);
            assert!(out.iter().all(|o| o.server().map(|s| s.ip()) == Some(me)));
            ctx.replies(Where::Local(0), UDP, None, sa(cip, 53), 3);
        }
        Feature::MasqueradeExternal => {
            ctx.serve(&ALL_EPS, TARGET);
            let s = node_port(web(ctx, "masq", CIP), 30083);
            let sl = web_slice("masq", ctx, &[Where::Remote(0)]);
            ctx.apply(&[s], &[sl]);
            let src = ctx.topo.ext_ip(0);
            let out = ctx.replies(Where::Ext, TCP, Some(src), sa(node_ip, 30083), 3);
            for o in &out {
                let peer = o.peer().expect("peer").ip();
                assert_ne!(peer, src, "external source must be masqueraded");
                assert_eq!(peer, node_ip2, "masqueraded to the node's address: {o:?}");
            }
        }
        Feature::EndpointChurn => {
            ctx.serve(&ALL_EPS, TARGET);
            let s = web(ctx, "churn", CIP);
            let sl = web_slice("churn", ctx, &[Where::Local(0)]);
            ctx.apply(&[s], &[sl]);
            let a = ctx.ip_of(Where::Local(0));
            let b = ctx.ip_of(Where::Local(1));
            let flow = ctx
                .topo
                .udp_open(Where::ClientPod, sa(cip, 53), T)
                .expect("udp socket");
            let first = udp_exchange(&flow, "1").expect("udp");
            assert_eq!(first.server().map(|s| s.ip()), Some(a), "{first:?}");
            let mut conn = ctx
                .topo
                .tcp_open(Where::ClientPod, sa(cip, PORT), T)
                .expect("tcp");
            // One exchange first: a proxy picks the endpoint when it
            // handles the connection, which may be after `connect` returns.
            let o = crate::traffic::tcp_line(&mut conn, "hello");
            assert_eq!(o.server().map(|s| s.ip()), Some(a), "{o:?}");
            let sl = web_slice("churn", ctx, &[Where::Local(1)]);
            ctx.apply(&[], &[sl]);
            let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 5);
            assert_eq!(
                Ctx::servers(&out),
                BTreeSet::from([b]),
                "new connections follow the endpoints"
            );
            // The same UDP 5-tuple moves to the new endpoint once the stale
            // conntrack entry is gone.
            let again = udp_exchange(&flow, "2").expect("udp");
            assert_eq!(
                again.server().map(|s| s.ip()),
                Some(b),
                "UDP flow after its endpoint went away: {again:?}"
            );
            // The open TCP connection to the removed (still running)
            // endpoint keeps working.
            let o = crate::traffic::tcp_line(&mut conn, "still there");
            assert_eq!(o.server().map(|s| s.ip()), Some(a), "{o:?}");
            // Adding an endpoint back spreads new connections again.
            let sl = web_slice("churn", ctx, &[Where::Local(0), Where::Local(1)]);
            ctx.apply(&[], &[sl]);
            let out = ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 30);
            assert_eq!(Ctx::servers(&out), BTreeSet::from([a, b]));
        }
        Feature::ServiceDeleted => {
            ctx.serve(&ALL_EPS, TARGET);
            let s = web(ctx, "gone", CIP);
            let sl = web_slice("gone", ctx, &ALL_EPS);
            ctx.apply(&[s], &[sl]);
            ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 3);
            ctx.delete("default", "gone");
            let o = ctx.topo.tcp(Where::ClientPod, None, sa(cip, PORT), SHORT);
            assert!(o.server().is_none(), "deleted service still answers: {o:?}");
        }
        Feature::Cleanup => {
            ctx.serve(&ALL_EPS, TARGET);
            let mut s = node_port(web(ctx, "clean", CIP), 30084);
            s.service_type = ServiceType::LoadBalancer;
            s.load_balancer_ips = ctx.both(LB_IP2);
            s.load_balancer_source_ranges = NPA.iter().map(|n| n.to_string()).collect();
            s.session_affinity = SessionAffinity::ClientIp {
                timeout_seconds: 60,
            };
            let sl = web_slice("clean", ctx, &ALL_EPS);
            let empty = web(ctx, "empty", CIP2);
            ctx.apply(&[s, empty], &[sl]);
            ctx.replies(Where::ClientPod, TCP, None, sa(cip, PORT), 3);
            assert!(
                !(ctx.backend.leftovers)(&ctx.topo).is_empty(),
                "the backend installed something"
            );
            ctx.cleanup();
            let left = (ctx.backend.leftovers)(&ctx.topo);
            assert!(left.is_empty(), "left after cleanup: {left:#?}");
            let o = ctx.topo.tcp(Where::ClientPod, None, sa(cip, PORT), SHORT);
            assert!(
                o.server().is_none(),
                "cleaned-up service still answers: {o:?}"
            );
        }
    }
}

/// Expands to one `#[test]` per feature and family for a backend
/// (`ipv4::hairpin`, `ipv6::hairpin`):
/// `behaviour_suite!(&BACKEND);` inside a test file, where `BACKEND` is a
/// `static` [`Backend`]. `behaviour_suite!(@vm &BACKEND);` instead makes one
/// test, `behaviour_suite_in_vm`, that runs every scenario inside the test
/// VM (one boot).
#[macro_export]
macro_rules! behaviour_suite {
    ($backend:expr) => {
        $crate::behaviour_suite!(@tests $backend;
            cluster_ip_tcp ClusterIpTcp, cluster_ip_udp ClusterIpUdp, multi_port MultiPort,
            no_endpoints_rejected NoEndpointsRejected, node_port NodePort,
            node_port_addresses NodePortAddresses, external_ips ExternalIps,
            load_balancer_source_ranges LoadBalancerSourceRanges, session_affinity SessionAffinity,
            external_traffic_policy_local ExternalTrafficPolicyLocal,
            internal_traffic_policy_local InternalTrafficPolicyLocal,
            terminating_fallback TerminatingFallback, hairpin Hairpin,
            masquerade_external MasqueradeExternal, endpoint_churn EndpointChurn,
            service_deleted ServiceDeleted, cleanup Cleanup);
    };
    (@vm $backend:expr) => {
        /// Boots the VM once and runs every scenario there.
        #[test]
        fn behaviour_suite_in_vm() {
            $crate::suite::run_in_vm("behaviour_suite_in_vm", $backend);
        }
    };
    (@tests $backend:expr; $($name:ident $feature:ident),*) => {
        /// The scenarios over IPv4.
        mod ipv4 {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $crate::suite::run(
                        $crate::suite::Feature::$feature,
                        $crate::IpFamily::V4,
                        $backend,
                    );
                }
            )*
        }
        /// The scenarios over IPv6.
        mod ipv6 {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $crate::suite::run(
                        $crate::suite::Feature::$feature,
                        $crate::IpFamily::V6,
                        $backend,
                    );
                }
            )*
        }
    };
}
