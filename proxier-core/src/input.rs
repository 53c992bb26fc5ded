//! Plain input types, for agents that have no Kubernetes at all, and the
//! validation that turns them into the [`model`](crate::model).
//!
//! The Kubernetes conversions in [`k8s`](crate::k8s) produce these same
//! types, so every object goes through one validation path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::{
    IpFamily, MAX_AFFINITY_TIMEOUT_SECONDS, NamespacedName, Protocol, ServicePort, ServicePortName,
    SessionAffinity, TrafficPolicy,
};
use crate::validate::{
    ErrCtx, ObjectKind, ValidationError, is_dns1035_label, is_dns1123_label, is_dns1123_subdomain,
    is_label_value, is_port_name,
};

/// `spec.type` of a Service (ExternalName services never reach here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    /// ClusterIP.
    #[default]
    ClusterIp,
    /// NodePort.
    NodePort,
    /// LoadBalancer.
    LoadBalancer,
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortSpec {
    /// `name` (may be empty when the service has a single port).
    pub name: String,
    /// `protocol`.
    pub protocol: Option<Protocol>,
    /// `port` (1..=65535).
    pub port: u16,
    /// `nodePort`, 0 when none.
    pub node_port: u16,
}

/// A Service, as plain values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (one per family; empty means headless).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<PortSpec>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` (VIP mode).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, as written (whitespace is trimmed).
    pub load_balancer_source_ranges: Vec<String>,
    /// `spec.sessionAffinity` with its timeout.
    pub session_affinity: SessionAffinity,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`, 0 when none.
    pub health_check_node_port: u16,
    /// The `service.kubernetes.io/topology-mode` annotation (or the
    /// deprecated `topology-aware-hints`, which wins).
    pub topology_annotation: Option<String>,
    /// `spec.trafficDistribution`.
    pub traffic_distribution: Option<String>,
}

/// The ports of one service, for one family, keyed by port name.
pub type ServicePortMap = BTreeMap<ServicePortName, Arc<ServicePort>>;

/// Why an endpoint address is refused, as the API server's EndpointSlice
/// validation refuses it (`ValidateEndpointIP`), and the limited
/// broadcast: `None` when it is usable.
fn unusable_endpoint(a: &IpAddr, loopback: bool) -> Option<&'static str> {
    if a.is_unspecified() {
        return Some("may not be unspecified");
    }
    if a.is_loopback() && !loopback {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    if a.is_multicast() {
        return Some("may not be a multicast address");
    }
    match a {
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
        }
        IpAddr::V4(v4) if v4.is_broadcast() => Some("may not be the limited broadcast address"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
            Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
        }
        _ => None,
    }
}

fn check_special_ip(ctx: &ErrCtx<'_>, field: &str, ip: &IpAddr) -> Result<(), ValidationError> {
    let bad = match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    if bad {
        return Err(ctx.err(
            field,
            ip,
            "may not be unspecified, loopback, link-local, multicast or the limited broadcast",
        ));
    }
    Ok(())
}

impl Service {
    /// Validates the service and returns its ports for `family`.
    ///
    /// A headless service, or one without a cluster IP of this family,
    /// yields no ports (as kube-proxy skips it); an invalid one yields an
    /// error that names the field.
    pub fn to_port_map(&self, family: IpFamily) -> Result<ServicePortMap, ValidationError> {
        let nn = NamespacedName::new(self.namespace.as_str(), self.name.as_str());
        self.port_map_named(family, nn)
    }

    /// [`Service::to_port_map`], with the name to key the ports by (the
    /// tracker passes one whose namespace is shared).
    pub(crate) fn port_map_named(
        &self,
        family: IpFamily,
        nn: NamespacedName,
    ) -> Result<ServicePortMap, ValidationError> {
        let ctx = ErrCtx::new(ObjectKind::Service, &self.namespace, &self.name);
        if !is_dns1123_label(&self.namespace) {
            return Err(ctx.err(
                "metadata.namespace",
                &self.namespace,
                "must be a DNS-1123 label",
            ));
        }
        if !is_dns1035_label(&self.name) {
            return Err(ctx.err("metadata.name", &self.name, "must be a DNS-1035 label"));
        }
        if self.cluster_ips.len() > 2 {
            return Err(ctx.err(
                "spec.clusterIPs",
                format!("{:?}", self.cluster_ips),
                "at most one address per family",
            ));
        }
        for (i, ip) in self.cluster_ips.iter().enumerate() {
            if ip.is_unspecified() || ip.is_loopback() {
                return Err(ctx.err(
                    format!("spec.clusterIPs[{i}]"),
                    ip,
                    "not a usable cluster IP",
                ));
            }
        }
        if self.cluster_ips.len() == 2
            && IpFamily::of(&self.cluster_ips[0]) == IpFamily::of(&self.cluster_ips[1])
        {
            return Err(ctx.err(
                "spec.clusterIPs",
                format!("{}, {}", self.cluster_ips[0], self.cluster_ips[1]),
                "dual-stack cluster IPs must be of different families",
            ));
        }
        // Names, numbers and uniqueness are checked whatever the family, so
        // that a bad object is reported the same way on every proxier.
        // Repeats: a scan of the ports before while few, sets beyond.
        let few = self.ports.len() <= 16;
        let mut names = BTreeSet::new();
        let mut port_protos = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            let before = &self.ports[..i];
            let f = |s: &str| format!("spec.ports[{i}].{s}");
            if p.name.is_empty() {
                if self.ports.len() > 1 {
                    return Err(ctx.err(
                        f("name"),
                        "",
                        "required when the service has more than one port",
                    ));
                }
            } else if !is_port_name(&p.name) {
                return Err(ctx.err(f("name"), &p.name, "must be a DNS-1123 label"));
            }
            let repeated = match few {
                true => before.iter().any(|q| q.name == p.name),
                false => !names.insert(p.name.as_str()),
            };
            if repeated {
                return Err(ctx.err(f("name"), &p.name, "duplicate port name"));
            }
            if p.port == 0 {
                return Err(ctx.err(f("port"), 0, "must be between 1 and 65535"));
            }
            let proto = p.protocol.unwrap_or(Protocol::Tcp);
            let repeated = match few {
                true => before
                    .iter()
                    .any(|q| q.port == p.port && q.protocol.unwrap_or(Protocol::Tcp) == proto),
                false => !port_protos.insert((p.port, proto)),
            };
            if repeated {
                return Err(ctx.err(f("port"), p.port, "duplicate port and protocol"));
            }
            if p.node_port != 0 && self.service_type == ServiceType::ClusterIp {
                return Err(ctx.err(
                    f("nodePort"),
                    p.node_port,
                    "may not be used when type is ClusterIP",
                ));
            }
        }
        for (i, ip) in self.external_ips.iter().enumerate() {
            check_special_ip(&ctx, &format!("spec.externalIPs[{i}]"), ip)?;
        }
        for (i, ip) in self.load_balancer_ips.iter().enumerate() {
            if ip.is_unspecified() {
                return Err(ctx.err(
                    format!("status.loadBalancer.ingress[{i}].ip"),
                    ip,
                    "may not be unspecified",
                ));
            }
        }
        let mut ranges = Vec::new();
        for (i, r) in self.load_balancer_source_ranges.iter().enumerate() {
            let net: IpNet = r.trim().parse().map_err(|_| {
                ctx.err(
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    r,
                    "must be a CIDR such as 10.0.0.0/8",
                )
            })?;
            if family.matches(&net.addr()) {
                ranges.push(net.trunc());
            }
        }
        let session_affinity = match self.session_affinity {
            SessionAffinity::ClientIp { timeout_seconds }
                if timeout_seconds == 0 || timeout_seconds > MAX_AFFINITY_TIMEOUT_SECONDS =>
            {
                return Err(ctx.err(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    timeout_seconds,
                    "must be between 1 and 86400",
                ));
            }
            a => a,
        };
        for (field, v) in [
            (
                "metadata.annotations[service.kubernetes.io/topology-mode]",
                &self.topology_annotation,
            ),
            ("spec.trafficDistribution", &self.traffic_distribution),
        ] {
            if let Some(v) = v
                && !is_label_value(v)
            {
                return Err(ctx.err(field, v, "not a valid value"));
            }
        }

        let Some(cluster_ip) = self
            .cluster_ips
            .iter()
            .find(|ip| family.matches(ip))
            .copied()
        else {
            return Ok(ServicePortMap::new());
        };
        let externally_accessible = matches!(
            self.service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) || !self.external_ips.is_empty();
        let external_policy_local =
            externally_accessible && self.external_traffic_policy == TrafficPolicy::Local;
        let health_check_node_port =
            if self.service_type == ServiceType::LoadBalancer && external_policy_local {
                self.health_check_node_port
            } else {
                0
            };
        let external_ips: Vec<IpAddr> = self
            .external_ips
            .iter()
            .filter(|ip| family.matches(ip))
            .copied()
            .collect();
        let lb_ips: Vec<IpAddr> = self
            .load_balancer_ips
            .iter()
            .filter(|ip| family.matches(ip))
            .copied()
            .collect();
        let hints_annotation = self.topology_annotation.as_deref().map(Arc::from);
        let traffic_distribution = self.traffic_distribution.as_deref().map(Arc::from);

        let mut map = ServicePortMap::new();
        for p in &self.ports {
            let name = ServicePortName {
                service: nn.clone(),
                port: Arc::from(p.name.as_str()),
                protocol: p.protocol.unwrap_or(Protocol::Tcp),
            };
            map.insert(
                name.clone(),
                Arc::new(ServicePort {
                    name,
                    cluster_ip,
                    port: p.port,
                    node_port: p.node_port,
                    external_ips: external_ips.clone(),
                    load_balancer_ips: lb_ips.clone(),
                    load_balancer_source_ranges: ranges.clone(),
                    session_affinity,
                    external_policy_local,
                    internal_policy_local: self.internal_traffic_policy == TrafficPolicy::Local,
                    health_check_node_port,
                    hints_annotation: hints_annotation.clone(),
                    traffic_distribution: traffic_distribution.clone(),
                }),
            );
        }
        Ok(map)
    }
}

/// One entry of an EndpointSlice's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlicePort {
    /// `name` (empty for the unnamed service port).
    pub name: String,
    /// `port`; `None` ports are ignored, as kube-proxy ignores them.
    pub port: Option<u16>,
    /// `protocol` (default TCP).
    pub protocol: Option<Protocol>,
}

/// One entry of an EndpointSlice's `endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SliceEndpoint {
    /// `addresses` (only the first is used, as kube-proxy does).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (nil = true).
    pub ready: Option<bool>,
    /// `conditions.serving` (nil = true).
    pub serving: Option<bool>,
    /// `conditions.terminating` (nil = false).
    pub terminating: Option<bool>,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones[].name`.
    pub hint_zones: Vec<String>,
    /// `hints.forNodes[].name`.
    pub hint_nodes: Vec<String>,
}

/// A discovery/v1 EndpointSlice of an IP address type, as plain values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The `kubernetes.io/service-name` label.
    pub service_name: String,
    /// `addressType` (FQDN slices never reach here).
    pub address_type: IpFamily,
    /// `ports`.
    pub ports: Vec<SlicePort>,
    /// `endpoints`.
    pub endpoints: Vec<SliceEndpoint>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation:
    /// when the change this version carries was made (what
    /// `network_programming_duration_seconds` measures from).
    pub trigger_time: Option<std::time::SystemTime>,
}

impl EndpointSlice {
    /// The service this slice belongs to.
    pub fn service(&self) -> NamespacedName {
        NamespacedName::new(self.namespace.as_str(), self.service_name.as_str())
    }

    /// Checks every field that can reach a rule.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_allowing(false)
    }

    /// [`EndpointSlice::validate`], accepting loopback endpoint addresses
    /// when `loopback` is set (local testing; the API server refuses them).
    pub fn validate_allowing(&self, loopback: bool) -> Result<(), ValidationError> {
        let ctx = ErrCtx::new(ObjectKind::EndpointSlice, &self.namespace, &self.name);
        if !is_dns1123_label(&self.namespace) {
            return Err(ctx.err(
                "metadata.namespace",
                &self.namespace,
                "must be a DNS-1123 label",
            ));
        }
        if !is_dns1123_subdomain(&self.name) {
            return Err(ctx.err("metadata.name", &self.name, "must be a DNS-1123 subdomain"));
        }
        if !is_dns1035_label(&self.service_name) {
            return Err(ctx.err(
                "metadata.labels[kubernetes.io/service-name]",
                &self.service_name,
                "must name a service (DNS-1035 label)",
            ));
        }
        let few = self.ports.len() <= 16;
        let mut names = BTreeSet::new();
        for (i, p) in self.ports.iter().enumerate() {
            if !p.name.is_empty() && !is_port_name(&p.name) {
                return Err(ctx.err(
                    format!("ports[{i}].name"),
                    &p.name,
                    "must be a DNS-1123 label",
                ));
            }
            let proto = p.protocol.unwrap_or(Protocol::Tcp);
            let repeated = match few {
                true => self.ports[..i]
                    .iter()
                    .any(|q| q.name == p.name && q.protocol.unwrap_or(Protocol::Tcp) == proto),
                false => !names.insert((p.name.as_str(), proto)),
            };
            if repeated {
                return Err(ctx.err(format!("ports[{i}].name"), &p.name, "duplicate port name"));
            }
            if p.port == Some(0) {
                return Err(ctx.err(format!("ports[{i}].port"), 0, "must be between 1 and 65535"));
            }
        }
        let mut last_node: Option<&str> = None;
        for (i, ep) in self.endpoints.iter().enumerate() {
            for (j, a) in ep.addresses.iter().enumerate() {
                if !self.address_type.matches(a) {
                    return Err(ctx.err(
                        format!("endpoints[{i}].addresses[{j}]"),
                        a,
                        format!("does not match addressType {}", self.address_type),
                    ));
                }
                if let Some(why) = unusable_endpoint(a, loopback) {
                    return Err(ctx.err(format!("endpoints[{i}].addresses[{j}]"), a, why));
                }
            }
            // Endpoints of one node come in runs: check a name once per run.
            if let Some(n) = &ep.node_name
                && last_node != Some(n.as_str())
            {
                if !is_dns1123_subdomain(n) {
                    return Err(ctx.err(
                        format!("endpoints[{i}].nodeName"),
                        n,
                        "must be a DNS-1123 subdomain",
                    ));
                }
                last_node = Some(n);
            }
            if let Some(z) = &ep.zone
                && !is_label_value(z)
            {
                return Err(ctx.err(format!("endpoints[{i}].zone"), z, "must be a label value"));
            }
            for (j, z) in ep.hint_zones.iter().enumerate() {
                if !is_label_value(z) || z.is_empty() {
                    return Err(ctx.err(
                        format!("endpoints[{i}].hints.forZones[{j}].name"),
                        z,
                        "must be a label value",
                    ));
                }
            }
            for (j, n) in ep.hint_nodes.iter().enumerate() {
                if !is_dns1123_subdomain(n) {
                    return Err(ctx.err(
                        format!("endpoints[{i}].hints.forNodes[{j}].name"),
                        n,
                        "must be a DNS-1123 subdomain",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The zone label kube-proxy reads from its Node.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";
/// The taint that makes `/healthz` report the node as not eligible.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// This node, as plain values.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// Tainted `ToBeDeletedByClusterAutoscaler`.
    pub to_be_deleted: bool,
}

impl Node {
    /// Checks the name and the zone label.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let ctx = ErrCtx::new(ObjectKind::Node, "", &self.name);
        if !is_dns1123_subdomain(&self.name) {
            return Err(ctx.err("metadata.name", &self.name, "must be a DNS-1123 subdomain"));
        }
        if let Some(z) = self.labels.get(LABEL_TOPOLOGY_ZONE)
            && !is_label_value(z)
        {
            return Err(ctx.err(
                format!("metadata.labels[{LABEL_TOPOLOGY_ZONE}]"),
                z,
                "must be a label value",
            ));
        }
        Ok(())
    }

    /// The node's zone, if labelled.
    pub fn zone(&self) -> Option<&str> {
        self.labels
            .get(LABEL_TOPOLOGY_ZONE)
            .map(String::as_str)
            .filter(|z| !z.is_empty())
    }

    /// kube-proxy's node eligibility for `/healthz`.
    pub fn eligible(&self) -> bool {
        !self.deleting && !self.to_be_deleted
    }
}
