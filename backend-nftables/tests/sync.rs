//! Partial syncs against the host kernel, in namespaces: after every step
//! the table a proxier reached by partial syncs reads back (`nft -j list
//! table ip kube-proxy`, handles dropped, elements sorted) exactly as the
//! table one full sync of the same snapshot writes in a fresh namespace.
//! A one-endpoint change and a new service cost a constant number of
//! operations; a no-op sync sends nothing; deleted services' chains go
//! one second later; a table deleted behind the proxier's back fails the
//! partial sync, which changes nothing, and the full sync after it
//! converges; a restart converges in one sync; foreign tables survive
//! everything, `cleanup` included.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use backend_nftables::{Config, NfTablesNetlink, NftablesProxier};
use proxier_core::{
    ChangeTracker, IpFamily, Protocol, Proxier, ServiceType, SessionAffinity, SyncRequest,
    TrafficPolicy,
};
use proxier_netfilter::{ConntrackNetlink, LocalDetector};
use proxier_testbed::{Netns, NsRuntime};
use proxier_testbed::{ep, service, slice};

const P: [(&str, u16, Protocol); 2] = [("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sh(ns: &Netns, cmd: &str) -> String {
    let out = ns.exec("sh", &["-c", cmd]).expect(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cfg() -> Config {
    let mut c = Config::new(IpFamily::V4);
    c.masquerade.local_detector = LocalDetector::ClusterCidr(vec!["10.0.0.0/16".parse().unwrap()]);
    c.node_ips = vec![ip("192.168.0.2")];
    c.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()];
    c
}

struct Node {
    ns: Netns,
    rt: NsRuntime,
    proxier: Option<NftablesProxier>,
}

impl Node {
    fn new(role: &str) -> Node {
        let ns = Netns::new(role).unwrap();
        let rt = NsRuntime::start(&ns).unwrap();
        let mut n = Node {
            ns,
            rt,
            proxier: None,
        };
        n.restart();
        n
    }

    fn restart(&mut self) {
        let p = self.rt.block_on(async {
            NftablesProxier::new(
                cfg(),
                Arc::new(NfTablesNetlink::new().unwrap()),
                Arc::new(ConntrackNetlink::new().unwrap()),
            )
            .unwrap()
        });
        self.proxier = Some(p);
    }

    fn sync(&mut self, req: SyncRequest) -> Result<proxier_core::SyncStats, String> {
        let mut p = self.proxier.take().unwrap();
        let (p, r) = self.rt.block_on(async move {
            let r = p.sync(&req).await;
            (p, r)
        });
        self.proxier = Some(p);
        r.map_err(|e| proxier_core::ErrorChain(&e).to_string())
    }

    fn proxier(&self) -> &NftablesProxier {
        self.proxier.as_ref().unwrap()
    }

    /// The table as `nft -j` reads it, normalized: each object as one JSON
    /// text without handles, elements sorted.
    fn table(&self) -> BTreeMap<String, Vec<String>> {
        let json = sh(&self.ns, "nft -j list table ip kube-proxy");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in v["nftables"].as_array().unwrap() {
            let (kind, mut body) = item
                .as_object()
                .unwrap()
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), v.clone()))
                .unwrap();
            if kind == "metainfo" {
                continue;
            }
            if let Some(o) = body.as_object_mut() {
                o.remove("handle");
                if let Some(e) = o.get_mut("elem").and_then(|e| e.as_array_mut()) {
                    e.sort_by_key(|x| x.to_string());
                }
            }
            let key = match kind.as_str() {
                "rule" => format!("rule {}", body["chain"].as_str().unwrap()),
                other => format!("{other} {}", body["name"].as_str().unwrap_or("")),
            };
            out.entry(key).or_default().push(body.to_string());
        }
        out
    }
}

/// A mixed workload: ClusterIP, NodePort, LoadBalancer with source
/// ranges, affinity, eTP Local, a service without endpoints.
fn workload(t: &mut ChangeTracker, n: usize) {
    for i in 0..n {
        let name = format!("s{i}");
        let (hi, lo) = ((i + 1) / 256, (i + 1) % 256);
        let mut s = service("ns", &name, &format!("10.96.{hi}.{lo}"), &P);
        match i % 5 {
            1 => {
                s.service_type = ServiceType::NodePort;
                s.ports[0].node_port = 30000 + i as u16;
            }
            2 => {
                s.service_type = ServiceType::LoadBalancer;
                s.ports[0].node_port = 31000 + i as u16;
                s.load_balancer_ips = vec![ip(&format!("198.51.{}.{lo}", 100 + hi))];
                s.load_balancer_source_ranges = vec!["203.0.113.0/24".into()];
                s.external_traffic_policy = TrafficPolicy::Local;
            }
            3 => {
                s.session_affinity = SessionAffinity::ClientIp {
                    timeout_seconds: 600,
                }
            }
            _ => {}
        }
        t.update_service(&s).unwrap();
        let eps = if i % 7 == 6 {
            vec![]
        } else {
            (1..=3)
                .map(|k| {
                    ep(
                        ip(&format!("10.{}.{}.{k}", i / 256, i % 256)),
                        if k == 1 { "node-1" } else { "node-2" },
                    )
                })
                .collect()
        };
        t.update_endpoint_slice(&slice("ns", &name, &P, eps))
            .unwrap();
    }
}

/// Compares `a` (partial syncs) with a fresh namespace's full sync of the
/// same snapshot.
fn same_as_full(a: &Node, t: &ChangeTracker) {
    let mut b = Node::new("nft-full");
    b.sync(SyncRequest {
        snapshot: t.snapshot().clone(),
        changes: Default::default(),
        full: true,
        verify: false,
    })
    .unwrap();
    let (mut ta, tb) = (a.table(), b.table());
    // Chains flushed and waiting out the stale delay are empty and
    // unreferenced; the proxier counts them.
    let stale: Vec<String> = ta
        .keys()
        .filter(|k| {
            k.strip_prefix("chain ")
                .is_some_and(|c| !tb.contains_key(*k) && !ta.contains_key(&format!("rule {c}")))
        })
        .cloned()
        .collect();
    assert_eq!(stale.len(), a.proxier().stale_chains(), "{stale:?}");
    for k in stale {
        ta.remove(&k);
    }
    if ta != tb {
        let only_a: Vec<_> = ta
            .iter()
            .filter(|(k, v)| tb.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        let only_b: Vec<_> = tb
            .iter()
            .filter(|(k, v)| ta.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        panic!(
            "partial sync differs from a full sync: partial has {only_a:#?}, full has {only_b:#?}"
        );
    }
}

/// Service `s0` with endpoints .1, .2 and `third`: one endpoint moved.
fn s0_third_endpoint(t: &mut ChangeTracker, third: &str) {
    let eps = vec![
        ep(ip("10.0.0.1"), "node-1"),
        ep(ip("10.0.0.2"), "node-2"),
        ep(ip(third), "node-2"),
    ];
    t.update_endpoint_slice(&slice("ns", "s0", &P, eps))
        .unwrap();
}

fn step(t: &mut ChangeTracker, full: bool) -> SyncRequest {
    let (snapshot, changes) = t.apply();
    SyncRequest {
        snapshot,
        changes,
        full,
        verify: false,
    }
}

/// From 500 services a full sync renders and encodes on two threads: the
/// table it writes (read back with `nft -j list table`) is the table the
/// one-thread rendering (`render_full`) writes in another namespace, with
/// the same number of operations.
#[test]
fn a_full_sync_on_two_threads_writes_what_one_thread_does() {
    let mut a = Node::new("nft-two");
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    workload(&mut t, 700);
    let req = step(&mut t, true);
    let snap = req.snapshot.clone();
    let s = a.sync(req).unwrap();
    let (tx, _, errors) = backend_nftables::render_full(&cfg(), &snap);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(s.written, tx.ops.len());
    let b = Node::new("nft-one");
    b.rt.block_on(async move {
        backend_nftables::NfTables::apply(&NfTablesNetlink::new().unwrap(), &tx)
            .await
            .unwrap()
    });
    let (ta, tb) = (a.table(), b.table());
    assert!(ta.len() > 2000, "{} objects", ta.len());
    assert!(ta == tb, "two threads wrote another table than one");
}

/// On the host kernel.
#[test]
fn partial_syncs_equal_a_full_sync_and_cost_what_changed() {
    partial_syncs();
}

/// On Debian's 6.1 kernel in the test VM: before 6.2, a chain stays
/// referenced for a moment after the map element pointing at it is
/// deleted, which the delayed deletion of stale chains waits out.
#[test]
fn partial_syncs_on_kernel_6_1() {
    proxier_testbed::vm::delegate("partial_syncs_on_kernel_6_1", partial_syncs);
}

fn partial_syncs() {
    let mut a = Node::new("nft-partial");
    sh(
        &a.ns,
        "nft add table inet filter; nft add chain inet filter input '{ type filter hook input priority 0; }'; iptables-nft -t nat -N FOREIGN",
    );
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    workload(&mut t, 20);
    let s = a.sync(step(&mut t, true)).unwrap();
    assert!(s.full);
    same_as_full(&a, &t);

    // No change: nothing is sent.
    a.sync(step(&mut t, false)).unwrap();
    assert_eq!(a.proxier().last_operations(), 0);

    // One endpoint moves, in a small and a larger table: the same cost.
    s0_third_endpoint(&mut t, "10.0.0.9");
    let s = a.sync(step(&mut t, false)).unwrap();
    assert!(!s.full);
    let one_endpoint = a.proxier().last_operations();
    assert!(
        one_endpoint <= 20,
        "{one_endpoint} operations for one endpoint"
    );
    same_as_full(&a, &t);

    // A new ClusterIP service with one endpoint.
    t.update_service(&service("ns", "new", "10.96.1.1", &P[..1]))
        .unwrap();
    t.update_endpoint_slice(&slice(
        "ns",
        "new",
        &P[..1],
        vec![ep(ip("10.0.99.1"), "node-2")],
    ))
    .unwrap();
    a.sync(step(&mut t, false)).unwrap();
    let added = a.proxier().last_operations();
    // kube-proxy's test counts 10: two elements, two chains, their rules.
    assert!(added <= 12, "{added} operations for one new service");
    same_as_full(&a, &t);

    // A deleted service: its elements go now, its chains a second later.
    t.delete_service("ns", "s1");
    t.delete_endpoint_slice("ns", "s1-1");
    a.sync(step(&mut t, false)).unwrap();
    assert!(a.proxier().stale_chains() > 0);
    std::thread::sleep(backend_nftables::STALE_CHAIN_DELAY + std::time::Duration::from_millis(100));
    a.sync(step(&mut t, false)).unwrap();
    assert_eq!(a.proxier().stale_chains(), 0);
    assert!(
        a.proxier().last_operations() > 0,
        "the stale chains were deleted"
    );
    same_as_full(&a, &t);

    // The larger table: the same change costs the same.
    workload(&mut t, 60);
    a.sync(step(&mut t, false)).unwrap();
    // Let the chains this made stale be deleted first, so that the
    // measured sync carries the change alone (on a slow kernel a second
    // may pass between two syncs, and the deletions would ride along).
    std::thread::sleep(backend_nftables::STALE_CHAIN_DELAY + std::time::Duration::from_millis(100));
    a.sync(step(&mut t, false)).unwrap();
    assert_eq!(a.proxier().stale_chains(), 0);
    s0_third_endpoint(&mut t, "10.0.0.8");
    a.sync(step(&mut t, false)).unwrap();
    assert_eq!(
        a.proxier().last_operations(),
        one_endpoint,
        "constant in the number of services"
    );
    same_as_full(&a, &t);

    // Our table deleted behind our back: the partial sync fails and
    // changes nothing; the next (full) sync converges.
    sh(&a.ns, "nft delete table ip kube-proxy");
    t.update_endpoint_slice(&slice("ns", "s0", &P, vec![ep(ip("10.0.0.1"), "node-1")]))
        .unwrap();
    let e = a.sync(step(&mut t, false)).unwrap_err();
    assert!(
        e.contains("partial sync") && e.contains("No such file or directory"),
        "{e}"
    );
    let s = a.sync(step(&mut t, false)).unwrap();
    assert!(s.full, "the sync after a failure is full");
    same_as_full(&a, &t);

    // A restart over the existing table converges in one sync.
    a.restart();
    a.sync(step(&mut t, true)).unwrap();
    same_as_full(&a, &t);

    // Foreign tables survived every step; cleanup removes only ours.
    let tables = sh(&a.ns, "nft list tables");
    assert!(
        tables.contains("table inet filter") && tables.contains("table ip nat"),
        "{tables}"
    );
    let mut p = a.proxier.take().unwrap();
    a.rt.block_on(async move { p.cleanup().await.unwrap() });
    let tables = sh(&a.ns, "nft list tables");
    assert!(!tables.contains("kube-proxy"), "{tables}");
    assert!(
        tables.contains("table inet filter") && tables.contains("table ip nat"),
        "{tables}"
    );
    assert!(sh(&a.ns, "iptables-nft -t nat -S FOREIGN").contains("-N FOREIGN"));
}

/// A verifying sync sees what another program did to the table and
/// repairs it with a full sync; a change elsewhere in the namespace (a
/// foreign table) bumps the generation but is no drift.
#[test]
fn a_verifying_sync_repairs_what_others_broke() {
    let mut a = Node::new("nft-drift");
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    workload(&mut t, 6);
    a.sync(step(&mut t, true)).unwrap();
    let good = a.table();
    let verify = |a: &mut Node, t: &mut ChangeTracker| {
        let mut req = step(t, false);
        req.verify = true;
        a.sync(req).unwrap()
    };
    let s = verify(&mut a, &mut t);
    assert_eq!((s.repaired, s.written), (None, 0), "nothing changed");
    sh(&a.ns, "nft add table ip someone-else");
    let s = verify(&mut a, &mut t);
    assert_eq!(s.repaired, None, "a foreign table is not our drift");
    assert_eq!(s.written, 0);
    let svc = good
        .keys()
        .find_map(|k| k.strip_prefix("rule service-"))
        .map(|c| format!("service-{c}"))
        .expect("a service chain");
    for (what, cmd, expect) in [
        (
            "flush services",
            "nft flush chain ip kube-proxy services".to_string(),
            "chain services of table ip kube-proxy holds 0 rules",
        ),
        (
            "flush a service chain",
            format!("nft flush chain ip kube-proxy {svc}"),
            "holds 0 rules",
        ),
        (
            "delete the table",
            "nft delete table ip kube-proxy".to_string(),
            "is gone or empty",
        ),
        (
            "flush ruleset",
            "nft flush ruleset".to_string(),
            "is gone or empty",
        ),
    ] {
        sh(&a.ns, &cmd);
        let s = verify(&mut a, &mut t);
        let found = s
            .repaired
            .clone()
            .unwrap_or_else(|| panic!("{what}: not seen"));
        assert!(found.contains(expect), "{what}: {found}");
        assert!(s.full && s.written > 0, "{what}: {s:?}");
        assert_eq!(a.table(), good, "{what}: not repaired");
        assert_eq!(verify(&mut a, &mut t).repaired, None, "{what}: seen twice");
    }
}
