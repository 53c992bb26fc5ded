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
    /// A pod or the node reaching an `externalTrafficPolicy: Local`
    /// service's node port, external IP or LoadBalancer IP is internal
    /// traffic: every endpoint, with or without a local one (iptables
    /// mode's `KUBE-EXT-` short-circuits).
    ExternalLocalFromInside,
    /// `internalTrafficPolicy: Local` without a local endpoint drops
    /// (a timeout), from a pod and from the node; a service without any
    /// endpoint still refuses.
    InternalLocalDrops,
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
    pub const ALL: [Feature; 19] = [
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
        Feature::ExternalLocalFromInside,
        Feature::InternalLocalDrops,
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
            Feature::ExternalLocalFromInside => {
                "eTP: Local node port, external and LB IP from a pod or the node: every endpoint"
            }
            Feature::InternalLocalDrops => {
                "iTP: Local without a local endpoint drops (pod and node), not refuses"
            }
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

mod scenarios;

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

/// Runs one feature's scenario (each is a function of its own in
/// `suite/scenarios.rs`).
fn scenario(feature: Feature, ctx: &mut Ctx) {
    match feature {
        Feature::ClusterIpTcp | Feature::ClusterIpUdp => scenarios::cluster_ip(ctx, feature),
        Feature::MultiPort => scenarios::multi_port(ctx),
        Feature::NoEndpointsRejected => scenarios::no_endpoints_rejected(ctx),
        Feature::NodePort | Feature::NodePortAddresses => scenarios::node_ports(ctx, feature),
        Feature::ExternalIps => scenarios::external_ips(ctx),
        Feature::LoadBalancerSourceRanges => scenarios::load_balancer_source_ranges(ctx),
        Feature::SessionAffinity => scenarios::session_affinity(ctx),
        Feature::ExternalTrafficPolicyLocal => scenarios::external_traffic_policy_local(ctx),
        Feature::InternalTrafficPolicyLocal => scenarios::internal_traffic_policy_local(ctx),
        Feature::ExternalLocalFromInside => scenarios::external_local_from_inside(ctx),
        Feature::InternalLocalDrops => scenarios::internal_local_drops(ctx),
        Feature::TerminatingFallback => scenarios::terminating_fallback(ctx),
        Feature::Hairpin => scenarios::hairpin(ctx),
        Feature::MasqueradeExternal => scenarios::masquerade_external(ctx),
        Feature::EndpointChurn => scenarios::endpoint_churn(ctx),
        Feature::ServiceDeleted => scenarios::service_deleted(ctx),
        Feature::Cleanup => scenarios::cleanup(ctx),
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
            external_local_from_inside ExternalLocalFromInside,
            internal_local_drops InternalLocalDrops,
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
