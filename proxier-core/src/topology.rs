//! Endpoint selection shared by every backend: kube-proxy's
//! `CategorizeEndpoints` (`pkg/proxy/topology.go`, v1.33).
//!
//! Traffic policies, topology hints (zone and node) and the fallback to
//! serving-but-terminating endpoints; never a not-serving endpoint.

use std::collections::BTreeMap;

use crate::model::{Endpoint, ServicePort};

/// Which endpoints each kind of traffic may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Categorized<'a> {
    /// Endpoints for cluster-policy traffic; `None` when the service never
    /// uses the cluster policy (iTP Local and not externally reachable).
    pub cluster: Option<Vec<&'a Endpoint>>,
    /// Endpoints for local-policy traffic; `None` when the service never
    /// uses a Local policy, `Some(empty)` when it does but has none here.
    pub local: Option<Vec<&'a Endpoint>>,
    /// Every endpoint some traffic may reach (the union of the two).
    pub all_reachable: Vec<&'a Endpoint>,
    /// Whether the service has any usable endpoint anywhere in the cluster.
    pub has_any: bool,
}

impl<'a> Categorized<'a> {
    /// Cluster endpoints, empty when unused.
    pub fn cluster(&self) -> &[&'a Endpoint] {
        self.cluster.as_deref().unwrap_or(&[])
    }

    /// Local endpoints, empty when unused.
    pub fn local(&self) -> &[&'a Endpoint] {
        self.local.as_deref().unwrap_or(&[])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    None,
    PreferSameNode,
    PreferSameZone,
}

fn topology_mode(endpoints: &[Endpoint], node_name: &str, zone: Option<&str>) -> TopologyMode {
    let mut has_for_node = false;
    let mut all_node_hints = true;
    let mut has_for_zone = false;
    let mut all_zone_hints = true;
    for ep in endpoints.iter().filter(|e| e.is_ready()) {
        if ep.node_hints().is_empty() {
            all_node_hints = false;
        } else if ep.node_hints().iter().any(|n| &**n == node_name) {
            has_for_node = true;
        }
        if ep.zone_hints().is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|z| ep.zone_hints().iter().any(|h| &**h == z)) {
            has_for_zone = true;
        }
    }
    if all_node_hints && has_for_node {
        return TopologyMode::PreferSameNode;
    }
    if all_zone_hints && has_for_zone {
        return TopologyMode::PreferSameZone;
    }
    TopologyMode::None
}

fn available(ep: &Endpoint, mode: TopologyMode, node_name: &str, zone: Option<&str>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::PreferSameNode => ep.node_hints().iter().any(|n| &**n == node_name),
        TopologyMode::PreferSameZone => {
            zone.is_some_and(|z| ep.zone_hints().iter().any(|h| &**h == z))
        }
    }
}

/// Splits a service port's endpoints into the cluster and local sets, as
/// kube-proxy's `CategorizeEndpoints` does. `endpoints` must be in the
/// snapshot's deterministic order; the result keeps it.
pub fn categorize_endpoints<'a>(
    endpoints: &'a [Endpoint],
    svc: &ServicePort,
    node_name: &str,
    zone: Option<&str>,
) -> Categorized<'a> {
    let mut has_any = false;
    let mut mode = TopologyMode::None;
    let mut cluster = None;
    if svc.uses_cluster_endpoints() {
        mode = topology_mode(endpoints, node_name, zone);
        let mut c: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| e.is_ready() && available(e, mode, node_name, zone))
            .collect();
        if c.is_empty() {
            c = endpoints
                .iter()
                .filter(|e| e.is_serving() && e.is_terminating())
                .collect();
        }
        has_any = !c.is_empty();
        cluster = Some(c);
    }
    if !svc.uses_local_endpoints() {
        let all_reachable = cluster.clone().unwrap_or_default();
        return Categorized {
            cluster,
            local: None,
            all_reachable,
            has_any,
        };
    }

    let mut has_local_ready = false;
    let mut has_local_serving_terminating = false;
    for ep in endpoints {
        if ep.is_ready() {
            has_any = true;
            has_local_ready |= ep.is_local();
        } else if ep.is_serving() && ep.is_terminating() {
            has_any = true;
            has_local_serving_terminating |= ep.is_local();
        }
    }
    let mut use_serving_terminating = false;
    let local: Vec<&Endpoint> = if has_local_ready {
        endpoints
            .iter()
            .filter(|e| e.is_local() && e.is_ready())
            .collect()
    } else if has_local_serving_terminating {
        use_serving_terminating = true;
        endpoints
            .iter()
            .filter(|e| e.is_local() && e.is_serving() && e.is_terminating())
            .collect()
    } else {
        Vec::new()
    };

    let all_reachable = match &cluster {
        None => local.clone(),
        Some(c) if mode == TopologyMode::None && !use_serving_terminating => c.clone(),
        Some(c) => {
            // The two sets may each hold endpoints the other lacks: merge,
            // in address order so that rules stay deterministic.
            let mut m: BTreeMap<std::net::SocketAddr, &Endpoint> = BTreeMap::new();
            for e in c.iter().chain(local.iter()) {
                m.insert(e.addr, e);
            }
            let mut v: Vec<&Endpoint> = m.into_values().collect();
            v.sort_by_cached_key(|e| e.addr.to_string());
            v
        }
    };
    Categorized {
        cluster,
        local: Some(local),
        all_reachable,
        has_any,
    }
}

#[cfg(test)]
mod tests;
