//! Short builders for the plain Service and EndpointSlice values that
//! tests and scenarios feed the tracker.

use std::net::IpAddr;

use proxier_core::{
    EndpointSlice, IpFamily, PortSpec, Protocol, Service, SliceEndpoint, SlicePort,
};

/// A ClusterIP service with `ports` (name, port, protocol).
pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16, Protocol)]) -> Service {
    let ip: IpAddr = cluster_ip.parse().expect("cluster IP");
    Service {
        namespace: ns.into(),
        name: name.into(),
        cluster_ips: vec![ip],
        ports: ports
            .iter()
            .map(|(n, p, proto)| PortSpec {
                name: (*n).into(),
                protocol: Some(*proto),
                port: *p,
                node_port: 0,
            })
            .collect(),
        ..Default::default()
    }
}

/// A ready endpoint on `node`.
pub fn ep(ip: IpAddr, node: &str) -> SliceEndpoint {
    SliceEndpoint {
        addresses: vec![ip],
        ready: Some(true),
        node_name: Some(node.into()),
        ..Default::default()
    }
}

/// A terminating endpoint on `node`, still serving or not.
pub fn terminating(ip: IpAddr, node: &str, serving: bool) -> SliceEndpoint {
    SliceEndpoint {
        addresses: vec![ip],
        ready: Some(false),
        serving: Some(serving),
        terminating: Some(true),
        node_name: Some(node.into()),
        ..Default::default()
    }
}

/// The slice `<svc>-1` of service `ns/svc`, with `ports` (name, target
/// port, protocol) and `endpoints`.
pub fn slice(
    ns: &str,
    svc: &str,
    ports: &[(&str, u16, Protocol)],
    endpoints: Vec<SliceEndpoint>,
) -> EndpointSlice {
    let family = endpoints
        .first()
        .and_then(|e| e.addresses.first())
        .map(IpFamily::of)
        .unwrap_or(IpFamily::V4);
    EndpointSlice {
        namespace: ns.into(),
        name: format!("{svc}-1"),
        service_name: svc.into(),
        address_type: family,
        ports: ports
            .iter()
            .map(|(n, p, proto)| SlicePort {
                name: (*n).into(),
                port: Some(*p),
                protocol: Some(*proto),
            })
            .collect(),
        endpoints,
        trigger_time: None,
    }
}
