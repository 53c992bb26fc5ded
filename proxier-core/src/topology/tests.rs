//! kube-proxy's `TestCategorizeEndpoints` table, case for case, plus node
//! hints: the traffic-policy × topology × terminating matrix.

use std::net::IpAddr;
use std::sync::Arc;

use super::*;
use crate::model::{Hints, Protocol, ServicePortName, SessionAffinity};

#[derive(Clone, Copy, Default)]
struct Ep {
    ip: &'static str,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
}

fn ep(e: Ep, zones: &[&str], nodes: &[&str]) -> Endpoint {
    let mut out = Endpoint::new(
        std::net::SocketAddr::new(e.ip.parse().unwrap(), 80),
        e.ready,
        e.serving,
        e.terminating,
        e.local,
    );
    if !zones.is_empty() || !nodes.is_empty() {
        out.hints = Some(Arc::new(Hints {
            zones: zones.iter().map(|z| Arc::from(*z)).collect(),
            nodes: nodes.iter().map(|n| Arc::from(*n)).collect(),
        }));
    }
    out
}

fn ready(ip: &'static str, local: bool, zones: &[&str]) -> Endpoint {
    ep(
        Ep {
            ip,
            ready: true,
            serving: true,
            local,
            ..Default::default()
        },
        zones,
        &[],
    )
}

fn not_ready(ip: &'static str, local: bool, zones: &[&str]) -> Endpoint {
    ep(
        Ep {
            ip,
            local,
            ..Default::default()
        },
        zones,
        &[],
    )
}

fn terminating(ip: &'static str, serving: bool, local: bool) -> Endpoint {
    ep(
        Ep {
            ip,
            serving,
            terminating: true,
            local,
            ..Default::default()
        },
        &[],
        &[],
    )
}

#[derive(Default)]
struct Svc {
    itp_local: bool,
    etp_local: bool,
    node_port: u16,
}

fn svc(s: Svc) -> ServicePort {
    ServicePort {
        name: ServicePortName::new("ns", "svc", "p", Protocol::Tcp),
        cluster_ip: "172.30.0.1".parse().unwrap(),
        port: 80,
        node_port: s.node_port,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
        session_affinity: SessionAffinity::None,
        // The model only sets this for externally reachable services; the
        // table below also checks that selection ignores it otherwise.
        external_policy_local: s.etp_local,
        internal_policy_local: s.itp_local,
        health_check_node_port: 0,
        hints_annotation: Some("Auto".into()),
        traffic_distribution: None,
    }
}

fn ips(v: &[&Endpoint]) -> Vec<String> {
    let mut out: Vec<String> = v.iter().map(|e| e.ip().to_string()).collect();
    out.sort();
    out
}

fn set(v: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = v
        .iter()
        .map(|s| s.parse::<IpAddr>().unwrap().to_string())
        .collect();
    out.sort();
    out
}

struct Case {
    name: &'static str,
    svc: Svc,
    zone: Option<&'static str>,
    endpoints: Vec<Endpoint>,
    cluster: Option<&'static [&'static str]>,
    local: Option<&'static [&'static str]>,
    all: Option<&'static [&'static str]>,
    has_any: bool,
}

fn run(cases: Vec<Case>) {
    for c in cases {
        let s = svc(c.svc);
        let got = categorize_endpoints(&c.endpoints, &s, "node-1", c.zone);
        assert_eq!(
            got.cluster.as_deref().map(ips),
            c.cluster.map(set),
            "{}: cluster",
            c.name
        );
        assert_eq!(
            got.local.as_deref().map(ips),
            c.local.map(set),
            "{}: local",
            c.name
        );
        let all = c.all.or(c.cluster).unwrap_or(&[]);
        assert_eq!(
            ips(&got.all_reachable),
            set(all),
            "{}: allReachable",
            c.name
        );
        assert_eq!(got.has_any, c.has_any, "{}: hasAnyEndpoints", c.name);
    }
}

#[test]
fn categorize_endpoints_table() {
    let four = |zs: [&'static [&'static str]; 4]| {
        vec![
            ready("10.1.2.3", false, zs[0]),
            ready("10.1.2.4", false, zs[1]),
            ready("10.1.2.5", false, zs[2]),
            ready("10.1.2.6", false, zs[3]),
        ]
    };
    let std_zones: [&'static [&'static str]; 4] =
        [&["zone-a"], &["zone-b"], &["zone-c"], &["zone-a"]];
    run(vec![
        Case {
            name: "should use topology since all endpoints have hints, node has a zone label and and there are endpoints for the node's zone",
            svc: Svc::default(),
            zone: Some("zone-a"),
            endpoints: four(std_zones),
            cluster: Some(&["10.1.2.3", "10.1.2.6"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
            svc: Svc {
                etp_local: true,
                node_port: 8080,
                ..Default::default()
            },
            zone: Some("zone-a"),
            endpoints: vec![
                ready("10.1.2.3", true, &["zone-a"]),
                ready("10.1.2.4", true, &["zone-b"]),
                ready("10.1.2.5", false, &["zone-c"]),
                ready("10.1.2.6", false, &["zone-a"]),
            ],
            cluster: Some(&["10.1.2.3", "10.1.2.6"]),
            local: Some(&["10.1.2.3", "10.1.2.4"]),
            all: Some(&["10.1.2.3", "10.1.2.4", "10.1.2.6"]),
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
            svc: Svc {
                itp_local: true,
                node_port: 8080,
                ..Default::default()
            },
            zone: Some("zone-a"),
            endpoints: vec![
                ready("10.1.2.3", true, &["zone-a"]),
                ready("10.1.2.4", true, &["zone-b"]),
                ready("10.1.2.5", false, &["zone-c"]),
                ready("10.1.2.6", false, &["zone-a"]),
            ],
            cluster: Some(&["10.1.2.3", "10.1.2.6"]),
            local: Some(&["10.1.2.3", "10.1.2.4"]),
            all: Some(&["10.1.2.3", "10.1.2.4", "10.1.2.6"]),
            has_any: true,
        },
        Case {
            name: "empty node labels",
            svc: Svc::default(),
            zone: None,
            endpoints: vec![ready("10.1.2.3", false, &["zone-a"])],
            cluster: Some(&["10.1.2.3"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "node in different zone, no endpoint filtering",
            svc: Svc::default(),
            zone: Some("zone-b"),
            endpoints: vec![ready("10.1.2.3", false, &["zone-a"])],
            cluster: Some(&["10.1.2.3"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "unready endpoint",
            svc: Svc::default(),
            zone: Some("zone-a"),
            endpoints: vec![
                ready("10.1.2.3", false, &["zone-a"]),
                ready("10.1.2.4", false, &["zone-b"]),
                ready("10.1.2.5", false, &["zone-c"]),
                not_ready("10.1.2.6", false, &["zone-a"]),
            ],
            cluster: Some(&["10.1.2.3"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "only unready endpoints in same zone (should not filter)",
            svc: Svc::default(),
            zone: Some("zone-a"),
            endpoints: vec![
                not_ready("10.1.2.3", false, &["zone-a"]),
                ready("10.1.2.4", false, &["zone-b"]),
                ready("10.1.2.5", false, &["zone-c"]),
                not_ready("10.1.2.6", false, &["zone-a"]),
            ],
            cluster: Some(&["10.1.2.4", "10.1.2.5"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "missing hints, no filtering applied",
            svc: Svc::default(),
            zone: Some("zone-a"),
            endpoints: four([&["zone-a"], &["zone-b"], &[], &["zone-a"]]),
            cluster: Some(&["10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
            svc: Svc::default(),
            zone: Some("zone-c"),
            endpoints: four([
                &["zone-a", "zone-b", "zone-c"],
                &["zone-b", "zone-c"],
                &["zone-b", "zone-d"],
                &["zone-c"],
            ]),
            cluster: Some(&["10.1.2.3", "10.1.2.4", "10.1.2.6"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "conflicting topology and localness require merging allEndpoints",
            svc: Svc {
                etp_local: true,
                node_port: 8080,
                ..Default::default()
            },
            zone: Some("zone-a"),
            endpoints: vec![
                ready("10.0.0.0", true, &["zone-a"]),
                ready("10.0.0.1", true, &["zone-b"]),
                ready("10.0.0.2", false, &["zone-a"]),
                ready("10.0.0.3", false, &["zone-b"]),
            ],
            cluster: Some(&["10.0.0.0", "10.0.0.2"]),
            local: Some(&["10.0.0.0", "10.0.0.1"]),
            all: Some(&["10.0.0.0", "10.0.0.1", "10.0.0.2"]),
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, with empty endpoints",
            svc: Svc {
                itp_local: true,
                ..Default::default()
            },
            zone: None,
            endpoints: vec![],
            cluster: None,
            local: Some(&[]),
            all: Some(&[]),
            has_any: false,
        },
        Case {
            name: "internalTrafficPolicy: Local, but all endpoints are remote",
            svc: Svc {
                itp_local: true,
                ..Default::default()
            },
            zone: None,
            endpoints: vec![ready("10.0.0.0", false, &[]), ready("10.0.0.1", false, &[])],
            cluster: None,
            local: Some(&[]),
            all: Some(&[]),
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, all endpoints are local",
            svc: Svc {
                itp_local: true,
                ..Default::default()
            },
            zone: None,
            endpoints: vec![ready("10.0.0.0", true, &[]), ready("10.0.0.1", true, &[])],
            cluster: None,
            local: Some(&["10.0.0.0", "10.0.0.1"]),
            all: Some(&["10.0.0.0", "10.0.0.1"]),
            has_any: true,
        },
        Case {
            name: "internalTrafficPolicy: Local, some endpoints are local",
            svc: Svc {
                itp_local: true,
                ..Default::default()
            },
            zone: None,
            endpoints: vec![ready("10.0.0.0", true, &[]), ready("10.0.0.1", false, &[])],
            cluster: None,
            local: Some(&["10.0.0.0"]),
            all: Some(&["10.0.0.0"]),
            has_any: true,
        },
        Case {
            name: "Cluster traffic policy, endpoints not Ready",
            svc: Svc::default(),
            zone: None,
            endpoints: vec![
                not_ready("10.0.0.0", false, &[]),
                not_ready("10.0.0.1", false, &[]),
            ],
            cluster: Some(&[]),
            local: None,
            all: Some(&[]),
            has_any: false,
        },
        Case {
            name: "Cluster traffic policy, some endpoints are Ready",
            svc: Svc::default(),
            zone: None,
            endpoints: vec![
                not_ready("10.0.0.0", false, &[]),
                ready("10.0.0.1", false, &[]),
            ],
            cluster: Some(&["10.0.0.1"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "Cluster traffic policy, all endpoints are terminating",
            svc: Svc::default(),
            zone: None,
            endpoints: vec![
                terminating("10.0.0.0", true, true),
                terminating("10.0.0.1", true, false),
            ],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "iTP: Local, eTP: Cluster, some endpoints local",
            svc: Svc {
                itp_local: true,
                node_port: 8080,
                ..Default::default()
            },
            zone: None,
            endpoints: vec![ready("10.0.0.0", true, &[]), ready("10.0.0.1", false, &[])],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: Some(&["10.0.0.0"]),
            all: Some(&["10.0.0.0", "10.0.0.1"]),
            has_any: true,
        },
        Case {
            name: "iTP: Cluster, eTP: Local, some endpoints local",
            svc: Svc {
                etp_local: true,
                node_port: 8080,
                ..Default::default()
            },
            zone: None,
            endpoints: vec![ready("10.0.0.0", true, &[]), ready("10.0.0.1", false, &[])],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: Some(&["10.0.0.0"]),
            all: Some(&["10.0.0.0", "10.0.0.1"]),
            has_any: true,
        },
        Case {
            name: "iTP: Local, eTP: Local, some endpoints local",
            svc: Svc {
                itp_local: true,
                etp_local: true,
                node_port: 8080,
            },
            zone: None,
            endpoints: vec![ready("10.0.0.0", true, &[]), ready("10.0.0.1", false, &[])],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: Some(&["10.0.0.0"]),
            all: Some(&["10.0.0.0", "10.0.0.1"]),
            has_any: true,
        },
        Case {
            name: "iTP: Local, eTP: Local, all endpoints remote",
            svc: Svc {
                itp_local: true,
                etp_local: true,
                node_port: 8080,
            },
            zone: None,
            endpoints: vec![ready("10.0.0.0", false, &[]), ready("10.0.0.1", false, &[])],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: Some(&[]),
            all: Some(&["10.0.0.0", "10.0.0.1"]),
            has_any: true,
        },
        Case {
            name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
            svc: Svc {
                itp_local: true,
                etp_local: true,
                node_port: 8080,
            },
            zone: None,
            endpoints: vec![
                terminating("10.0.0.0", true, false),
                terminating("10.0.0.1", true, false),
            ],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: Some(&[]),
            all: Some(&["10.0.0.0", "10.0.0.1"]),
            has_any: true,
        },
        Case {
            name: "iTP: Cluster, eTP: Local, with terminating endpoints",
            svc: Svc {
                etp_local: true,
                node_port: 8080,
                ..Default::default()
            },
            zone: None,
            endpoints: vec![
                ready("10.0.0.0", false, &[]),
                terminating("10.0.0.1", true, true),
                terminating("10.0.0.2", true, true),
                terminating("10.0.0.3", false, true),
            ],
            cluster: Some(&["10.0.0.0"]),
            local: Some(&["10.0.0.1", "10.0.0.2"]),
            all: Some(&["10.0.0.0", "10.0.0.1", "10.0.0.2"]),
            has_any: true,
        },
        Case {
            name: "externalTrafficPolicy ignored if not externally accessible",
            svc: Svc {
                etp_local: true,
                ..Default::default()
            },
            zone: None,
            endpoints: vec![ready("10.0.0.0", true, &[]), ready("10.0.0.1", false, &[])],
            cluster: Some(&["10.0.0.0", "10.0.0.1"]),
            local: None,
            all: None,
            has_any: true,
        },
        Case {
            name: "no cluster endpoints for iTP:Local internal-only service",
            svc: Svc {
                itp_local: true,
                ..Default::default()
            },
            zone: None,
            endpoints: vec![ready("10.0.0.0", true, &[]), ready("10.0.0.1", false, &[])],
            cluster: None,
            local: Some(&["10.0.0.0"]),
            all: Some(&["10.0.0.0"]),
            has_any: true,
        },
        Case {
            name: "never a not-serving terminating endpoint",
            svc: Svc::default(),
            zone: None,
            endpoints: vec![
                terminating("10.0.0.0", false, false),
                terminating("10.0.0.1", true, false),
            ],
            cluster: Some(&["10.0.0.1"]),
            local: None,
            all: None,
            has_any: true,
        },
    ]);
}

#[test]
fn node_hints_prefer_same_node() {
    let eps = vec![
        ep(
            Ep {
                ip: "10.0.0.1",
                ready: true,
                serving: true,
                ..Default::default()
            },
            &["zone-a"],
            &["node-1"],
        ),
        ep(
            Ep {
                ip: "10.0.0.2",
                ready: true,
                serving: true,
                ..Default::default()
            },
            &["zone-a"],
            &["node-2"],
        ),
        ep(
            Ep {
                ip: "10.0.0.3",
                ready: true,
                serving: true,
                ..Default::default()
            },
            &["zone-b"],
            &["node-3"],
        ),
    ];
    let s = svc(Svc::default());
    let got = categorize_endpoints(&eps, &s, "node-1", Some("zone-a"));
    assert_eq!(ips(got.cluster()), set(&["10.0.0.1"]));
    // No endpoint for this node: fall back to the zone.
    let got = categorize_endpoints(&eps, &s, "node-9", Some("zone-a"));
    assert_eq!(ips(got.cluster()), set(&["10.0.0.1", "10.0.0.2"]));
    // Neither: every endpoint.
    let got = categorize_endpoints(&eps, &s, "node-9", Some("zone-z"));
    assert_eq!(
        ips(got.cluster()),
        set(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    );
}

#[test]
fn terminating_fallback_ignores_topology() {
    let eps = vec![
        ep(
            Ep {
                ip: "10.0.0.1",
                serving: true,
                terminating: true,
                ..Default::default()
            },
            &["zone-b"],
            &[],
        ),
        ep(
            Ep {
                ip: "10.0.0.2",
                serving: true,
                terminating: true,
                ..Default::default()
            },
            &["zone-a"],
            &[],
        ),
    ];
    let s = svc(Svc::default());
    let got = categorize_endpoints(&eps, &s, "node-1", Some("zone-a"));
    assert_eq!(ips(got.cluster()), set(&["10.0.0.1", "10.0.0.2"]));
}
