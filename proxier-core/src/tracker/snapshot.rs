//! What the tracker hands out: the immutable [`Snapshot`] of one family,
//! the node it describes ([`NodeInfo`]), and what changed since the last
//! one ([`ChangeSet`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use imbl::OrdMap;

use crate::model::{Endpoint, IpFamily, NamespacedName, Protocol, ServicePort, ServicePortName};
use crate::topology::{Categorized, categorize_endpoints};

/// What the proxier knows of its own node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name (`--hostname-override`).
    pub name: Arc<str>,
    /// `topology.kubernetes.io/zone`, if labelled.
    pub zone: Option<Arc<str>>,
    /// The node's labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the Node object has been seen.
    pub known: bool,
    /// Not being deleted and not tainted for deletion.
    pub eligible: bool,
}

/// An immutable view of every service port and its endpoints, for one
/// family. Cloning is O(1).
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The family of every address in it.
    pub family: IpFamily,
    /// This node.
    pub node: Arc<NodeInfo>,
    /// Every service port, in key order.
    pub services: OrdMap<ServicePortName, Arc<ServicePort>>,
    /// Endpoints per service port, each list in kube-proxy's order (by
    /// `ip:port` text). May hold keys without a service.
    pub endpoints: OrdMap<ServicePortName, Arc<[Endpoint]>>,
    pub(super) local_ready: OrdMap<NamespacedName, u32>,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn empty(family: IpFamily, node_name: &str) -> Self {
        Snapshot {
            family,
            node: Arc::new(NodeInfo {
                name: Arc::from(node_name),
                zone: None,
                labels: BTreeMap::new(),
                known: false,
                eligible: true,
            }),
            services: OrdMap::new(),
            endpoints: OrdMap::new(),
            local_ready: OrdMap::new(),
        }
    }

    /// The endpoints of a service port (empty when none).
    pub fn endpoints_of(&self, name: &ServicePortName) -> &[Endpoint] {
        self.endpoints.get(name).map(|e| &e[..]).unwrap_or(&[])
    }

    /// Endpoint selection for a service port, for this node.
    pub fn categorize<'a>(&'a self, svc: &ServicePort) -> Categorized<'a> {
        categorize_endpoints(
            self.endpoints_of(&svc.name),
            svc,
            &self.node.name,
            self.node.zone.as_deref(),
        )
    }

    /// The ports of one service.
    pub fn ports_of<'a>(
        &'a self,
        nn: &'a NamespacedName,
    ) -> impl Iterator<Item = &'a Arc<ServicePort>> + 'a {
        // Keys sort by service first, and the empty port name with the
        // first protocol is the smallest key of a service: a range lookup,
        // not a scan of every service.
        let first = ServicePortName {
            service: nn.clone(),
            port: Arc::from(""),
            protocol: Protocol::Tcp,
        };
        self.services
            .range(first..)
            .take_while(move |(k, _)| &k.service == nn)
            .map(|(_, v)| v)
    }

    /// The same snapshot with only the services `keep` accepts (their
    /// endpoints and the node unchanged): what a backend that programs a
    /// large cluster in parts renders for one part.
    pub fn retain_services(&self, keep: impl Fn(&NamespacedName) -> bool) -> Snapshot {
        let mut s = self.clone();
        s.services = self
            .services
            .iter()
            .filter(|(k, _)| keep(&k.service))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        s
    }

    /// Health-check node ports of every eTP=Local LoadBalancer service.
    pub fn health_check_node_ports(&self) -> BTreeMap<NamespacedName, u16> {
        self.services
            .values()
            .filter(|s| s.health_check_node_port != 0)
            .map(|s| (s.name.service.clone(), s.health_check_node_port))
            .collect()
    }

    /// Number of distinct ready local endpoint IPs of a service (what the
    /// health-check node port reports).
    pub fn local_ready_endpoints(&self, nn: &NamespacedName) -> u32 {
        self.local_ready.get(nn).copied().unwrap_or(0)
    }

    /// Number of endpoints over all service ports.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.values().map(|e| e.len()).sum()
    }
}

/// An endpoint removed from a UDP service port (its conntrack entries may
/// black-hole a client).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleEndpoint {
    /// The service port.
    pub service: ServicePortName,
    /// The endpoint that went away.
    pub endpoint: SocketAddr,
}

/// What changed between two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    /// Services whose ports or endpoints changed (a partial sync rewrites
    /// only these).
    pub updated_services: BTreeSet<NamespacedName>,
    /// Cluster IPs of UDP service ports that were removed.
    pub deleted_udp_cluster_ips: BTreeSet<IpAddr>,
    /// UDP endpoints that were removed or stopped serving.
    pub deleted_udp_endpoints: Vec<StaleEndpoint>,
    /// UDP service ports that went from no serving endpoint to some.
    pub newly_active_udp_services: Vec<ServicePortName>,
    /// Services whose count of ready local endpoint IPs changed, with the
    /// new count.
    pub local_endpoints_changed: BTreeMap<NamespacedName, u32>,
    /// The node's labels or eligibility changed (backends resync fully).
    pub node_changed: bool,
    /// When the EndpointSlice changes in this set were made (their
    /// `endpoints.kubernetes.io/last-change-trigger-time`): the runner
    /// observes `network_programming_duration_seconds` from each once the
    /// sync that carries them succeeds.
    pub trigger_times: Vec<std::time::SystemTime>,
}

impl ChangeSet {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.updated_services.is_empty() && !self.node_changed
    }

    /// Merges `later` into `self` (used when a sync failed and its change
    /// set must not be lost).
    pub fn merge(&mut self, later: ChangeSet) {
        self.updated_services.extend(later.updated_services);
        self.trigger_times.extend(later.trigger_times);
        self.deleted_udp_cluster_ips
            .extend(later.deleted_udp_cluster_ips);
        self.deleted_udp_endpoints
            .extend(later.deleted_udp_endpoints);
        self.newly_active_udp_services
            .extend(later.newly_active_udp_services);
        self.local_endpoints_changed
            .extend(later.local_endpoints_changed);
        self.node_changed |= later.node_changed;
    }
}
