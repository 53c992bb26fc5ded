//! Plain input types, for agents that have no Kubernetes at all. Their
//! checks (`Service::to_port_map`, `EndpointSlice::validate`,
//! `Node::validate`), and the ports a Service yields in the model, are
//! written in `validate/`, in one place; this file names no check.
//!
//! The Kubernetes conversions (`k8s.rs`) produce these same types, so
//! every object goes through one validation path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{
    IpFamily, NamespacedName, Protocol, ServicePort, ServicePortName, SessionAffinity,
    TrafficPolicy,
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
