//! Conversion from k8s-openapi objects (`core/v1` Service and Node,
//! `discovery/v1` EndpointSlice) to the plain [`input`](crate::input)
//! types, skipping what kube-proxy skips.
//!
//! Each function returns `Ok(None)` for an object kube-proxy ignores
//! (headless, ExternalName, claimed by another proxy, FQDN slices) and an
//! error naming the field for one the API server would not have accepted.

use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

use crate::input::{
    EndpointSlice, Node, PortSpec, Service, ServiceType, SliceEndpoint, SlicePort,
    TAINT_TO_BE_DELETED,
};
use crate::model::{
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, IpFamily, Protocol, SessionAffinity, TrafficPolicy,
};
use crate::validate::{ErrCtx, ObjectKind, ValidationError};

/// Services with this label belong to another proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// EndpointSlices of headless services carry this label.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// The label naming an EndpointSlice's service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The annotation that says when the change an EndpointSlice carries was
/// made (set by the endpoint-slice controller).
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// The topology annotation.
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// The deprecated topology annotation (wins over the new one).
pub const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";

/// The label selector kube-proxy's informers use for Services and
/// EndpointSlices.
pub const PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// A list field that is required in one Kubernetes version and optional
/// in another (`EndpointSlice.endpoints`: `Vec` in v1.33, `Option<Vec>`
/// later), read the same way whichever k8s-openapi version the embedder
/// selected.
trait Items<T> {
    fn items(&self) -> &[T];
}

impl<T> Items<T> for Vec<T> {
    fn items(&self) -> &[T] {
        self
    }
}

impl<T> Items<T> for Option<Vec<T>> {
    fn items(&self) -> &[T] {
        self.as_deref().unwrap_or(&[])
    }
}

fn meta_names(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (String, String) {
    (
        meta.namespace
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn parse_ip(ctx: &ErrCtx<'_>, field: String, s: &str) -> Result<IpAddr, ValidationError> {
    s.parse()
        .map_err(|_| ctx.err(field, s, "not a valid IP address"))
}

fn port_u16(
    ctx: &ErrCtx<'_>,
    field: String,
    v: i32,
    allow_zero: bool,
) -> Result<u16, ValidationError> {
    if (v == 0 && allow_zero) || (1..=65535).contains(&v) {
        Ok(v as u16)
    } else {
        Err(ctx.err(field, v, "must be between 1 and 65535"))
    }
}

fn protocol(
    ctx: &ErrCtx<'_>,
    field: String,
    p: Option<&String>,
) -> Result<Option<Protocol>, ValidationError> {
    match p {
        None => Ok(None),
        Some(s) => Protocol::parse(s)
            .map(Some)
            .ok_or_else(|| ctx.err(field, s, "unsupported protocol (TCP, UDP or SCTP)")),
    }
}

fn policy(
    ctx: &ErrCtx<'_>,
    field: &str,
    p: Option<&String>,
) -> Result<TrafficPolicy, ValidationError> {
    match p.map(String::as_str) {
        None | Some("") | Some("Cluster") => Ok(TrafficPolicy::Cluster),
        Some("Local") => Ok(TrafficPolicy::Local),
        Some(other) => Err(ctx.err(field, other, "must be Cluster or Local")),
    }
}

/// Converts a `core/v1` Service. `Ok(None)` when kube-proxy would skip it.
pub fn service_from_k8s(svc: &core::Service) -> Result<Option<Service>, ValidationError> {
    let (namespace, name) = meta_names(&svc.metadata);
    let ctx = ErrCtx::new(ObjectKind::Service, &namespace, &name);
    if svc
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME))
    {
        return Ok(None);
    }
    let Some(spec) = &svc.spec else {
        return Ok(None);
    };
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Ok(None),
        Some(other) => return Err(ctx.err("spec.type", other, "unknown service type")),
    };
    let mut ip_strings: Vec<(String, &String)> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("spec.clusterIPs[{i}]"), s))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .map(|s| ("spec.clusterIP".to_string(), s))
            .collect(),
    };
    ip_strings.retain(|(_, s)| !s.is_empty());
    if ip_strings.is_empty() || ip_strings.iter().any(|(_, s)| s.as_str() == "None") {
        return Ok(None); // headless
    }
    let mut cluster_ips = Vec::new();
    for (field, s) in ip_strings {
        cluster_ips.push(parse_ip(&ctx, field, s)?);
    }
    if let Some(fams) = &spec.ip_families {
        for (i, (fam, ip)) in fams.iter().zip(cluster_ips.iter()).enumerate() {
            let want = match fam.as_str() {
                "IPv4" => IpFamily::V4,
                "IPv6" => IpFamily::V6,
                other => {
                    return Err(ctx.err(
                        format!("spec.ipFamilies[{i}]"),
                        other,
                        "must be IPv4 or IPv6",
                    ));
                }
            };
            if !want.matches(ip) {
                return Err(ctx.err(
                    format!("spec.clusterIPs[{i}]"),
                    ip,
                    format!("does not match spec.ipFamilies[{i}] {want}"),
                ));
            }
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        ports.push(PortSpec {
            name: p.name.clone().unwrap_or_default(),
            protocol: protocol(
                &ctx,
                format!("spec.ports[{i}].protocol"),
                p.protocol.as_ref(),
            )?,
            port: port_u16(&ctx, format!("spec.ports[{i}].port"), p.port, false)?,
            node_port: port_u16(
                &ctx,
                format!("spec.ports[{i}].nodePort"),
                p.node_port.unwrap_or(0),
                true,
            )?,
        });
    }
    let mut external_ips = Vec::new();
    for (i, s) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.push(parse_ip(&ctx, format!("spec.externalIPs[{i}]"), s)?);
    }
    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref());
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        if ing.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        if let Some(ip) = ing.ip.as_deref().filter(|s| !s.is_empty()) {
            load_balancer_ips.push(parse_ip(
                &ctx,
                format!("status.loadBalancer.ingress[{i}].ip"),
                ip,
            )?);
        }
    }
    let session_affinity = match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => SessionAffinity::None,
        Some("ClientIP") => {
            let t = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECONDS as i32);
            if t <= 0 {
                return Err(ctx.err(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    t,
                    "must be between 1 and 86400",
                ));
            }
            SessionAffinity::ClientIp {
                timeout_seconds: t as u32,
            }
        }
        Some(other) => {
            return Err(ctx.err("spec.sessionAffinity", other, "must be None or ClientIP"));
        }
    };
    let annotations = svc.metadata.annotations.as_ref();
    let topology_annotation = annotations
        .and_then(|a| {
            a.get(ANNOTATION_TOPOLOGY_AWARE_HINTS)
                .or_else(|| a.get(ANNOTATION_TOPOLOGY_MODE))
        })
        .cloned();
    let external_traffic_policy = policy(
        &ctx,
        "spec.externalTrafficPolicy",
        spec.external_traffic_policy.as_ref(),
    )?;
    let internal_traffic_policy = policy(
        &ctx,
        "spec.internalTrafficPolicy",
        spec.internal_traffic_policy.as_ref(),
    )?;
    let health_check_node_port = port_u16(
        &ctx,
        "spec.healthCheckNodePort".into(),
        spec.health_check_node_port.unwrap_or(0),
        true,
    )?;
    Ok(Some(Service {
        namespace,
        name,
        service_type,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges: spec.load_balancer_source_ranges.clone().unwrap_or_default(),
        session_affinity,
        external_traffic_policy,
        internal_traffic_policy,
        health_check_node_port,
        topology_annotation,
        traffic_distribution: spec.traffic_distribution.clone(),
    }))
}

/// Converts a `discovery/v1` EndpointSlice. `Ok(None)` for FQDN slices and
/// headless services' slices.
pub fn endpoint_slice_from_k8s(
    slice: &discovery::EndpointSlice,
) -> Result<Option<EndpointSlice>, ValidationError> {
    let (namespace, name) = meta_names(&slice.metadata);
    let ctx = ErrCtx::new(ObjectKind::EndpointSlice, &namespace, &name);
    let labels = slice.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return Ok(None);
    }
    let address_type = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Ok(None),
        other => return Err(ctx.err("addressType", other, "must be IPv4, IPv6 or FQDN")),
    };
    let Some(service_name) = labels.and_then(|l| l.get(LABEL_SERVICE_NAME)) else {
        return Err(ctx.err(
            format!("metadata.labels[{LABEL_SERVICE_NAME}]"),
            "",
            "missing",
        ));
    };
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            port: match p.port {
                None => None,
                Some(v) => Some(port_u16(&ctx, format!("ports[{i}].port"), v, false)?),
            },
            protocol: protocol(&ctx, format!("ports[{i}].protocol"), p.protocol.as_ref())?,
        });
    }
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.items().iter().enumerate() {
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            addresses.push(parse_ip(&ctx, format!("endpoints[{i}].addresses[{j}]"), a)?);
        }
        let cond = e.conditions.as_ref();
        let hints = e.hints.as_ref();
        endpoints.push(SliceEndpoint {
            addresses,
            ready: cond.and_then(|c| c.ready),
            serving: cond.and_then(|c| c.serving),
            terminating: cond.and_then(|c| c.terminating),
            node_name: e.node_name.clone(),
            zone: e.zone.clone(),
            hint_zones: hints
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default(),
            hint_nodes: hints
                .and_then(|h| h.for_nodes.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default(),
        });
    }
    // A malformed time is ignored, as kube-proxy does: it only feeds a
    // latency metric.
    let trigger_time = slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TRIGGER_TIME))
        .and_then(|t| crate::timestamp::parse_rfc3339(t));
    Ok(Some(EndpointSlice {
        namespace,
        name,
        service_name: service_name.clone(),
        address_type,
        ports,
        endpoints,
        trigger_time,
    }))
}

/// Converts a `core/v1` Node.
pub fn node_from_k8s(node: &core::Node) -> Node {
    Node {
        name: node.metadata.name.clone().unwrap_or_default(),
        labels: node.metadata.labels.clone().unwrap_or_default(),
        deleting: node.metadata.deletion_timestamp.is_some(),
        to_be_deleted: node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED)),
    }
}

#[cfg(test)]
mod tests;
