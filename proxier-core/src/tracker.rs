//! Change tracking, as kube-proxy's `ServiceChangeTracker`,
//! `EndpointsChangeTracker` and `EndpointSliceCache`.
//!
//! Events accumulate per service: the state before the first pending change
//! (the applied state) and the latest one; a change that returns to the
//! applied state vanishes. [`ChangeTracker::apply`] turns what is pending
//! into a new immutable [`Snapshot`] and a [`ChangeSet`]. The snapshot is a
//! persistent map, so taking one costs O(changes · log n), not O(n).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use imbl::OrdMap;

use crate::input::{EndpointSlice, Node, Service, ServicePortMap};
use crate::model::{
    Endpoint, Hints, IpFamily, NamespacedName, Protocol, ServicePort, ServicePortName,
};
use crate::topology::{Categorized, categorize_endpoints};
use crate::validate::ValidationError;

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
    local_ready: OrdMap<NamespacedName, u32>,
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

/// An EndpointSlice reduced to what the proxier uses, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceData {
    ports: Vec<(Arc<str>, u16, Protocol)>,
    endpoints: Vec<SliceEp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceEp {
    ip: IpAddr,
    ready: bool,
    serving: bool,
    terminating: bool,
    node_name: Option<Arc<str>>,
    zone: Option<Arc<str>>,
    hints: Option<Arc<Hints>>,
}

/// The endpoints of every port of one service, by port key (few entries:
/// a vector, not a map).
type Built = Vec<(ServicePortName, Arc<[Endpoint]>)>;

fn built_get<'a>(built: &'a Built, k: &ServicePortName) -> Option<&'a Arc<[Endpoint]>> {
    built.iter().find(|(b, _)| b == k).map(|(_, v)| v)
}

#[derive(Debug, Default)]
struct SliceTracker {
    applied: BTreeMap<Arc<str>, Arc<SliceData>>,
    /// `None` = removal pending.
    pending: BTreeMap<Arc<str>, Option<Arc<SliceData>>>,
    built: Built,
    /// Listed in `slices_dirty` (kept until the next apply).
    dirty: bool,
}

/// Counters the metrics read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrackerCounters {
    /// Service events seen (`sync_proxy_rules_service_changes_total`).
    pub service_changes_total: u64,
    /// EndpointSlice events that changed something
    /// (`sync_proxy_rules_endpoint_changes_total`).
    pub endpoint_changes_total: u64,
}

/// Accumulates Service, EndpointSlice and Node events for one IP family.
#[derive(Debug)]
pub struct ChangeTracker {
    family: IpFamily,
    node_name: Arc<str>,
    services_applied: HashMap<NamespacedName, ServicePortMap>,
    services_pending: HashMap<NamespacedName, ServicePortMap>,
    slices: HashMap<NamespacedName, SliceTracker>,
    /// Services whose slices may have pending changes, each once (their
    /// trackers are flagged `dirty`): an apply visits these, not every
    /// service.
    slices_dirty: Vec<NamespacedName>,
    slice_owner: HashMap<(Arc<str>, Arc<str>), NamespacedName>,
    node_pending: Option<Arc<NodeInfo>>,
    snapshot: Snapshot,
    /// Names shared by many objects (namespaces, nodes, zones): one
    /// `Arc` each. Pruned of unused ones as it doubles.
    interned: HashSet<Arc<str>>,
    intern_prune_at: usize,
    counters: TrackerCounters,
    /// Loopback endpoint addresses accepted (local testing).
    loopback_endpoints: bool,
    /// Which service holds each node port and protocol (the API server
    /// allocates each once; a second claim is refused here too).
    node_ports: HashMap<(u16, Protocol), NamespacedName>,
    /// The node ports each service holds.
    node_ports_of: HashMap<NamespacedName, Vec<(u16, Protocol)>>,
    /// Trigger times of the slice changes not yet applied, and when this
    /// tracker started (older times are ignored, as kube-proxy does).
    trigger_times: Vec<std::time::SystemTime>,
    started: std::time::SystemTime,
}

impl ChangeTracker {
    /// A tracker for `family` on the node named `node_name`.
    pub fn new(family: IpFamily, node_name: &str) -> Self {
        ChangeTracker {
            family,
            node_name: Arc::from(node_name),
            services_applied: HashMap::new(),
            services_pending: HashMap::new(),
            slices: HashMap::new(),
            slices_dirty: Vec::new(),
            slice_owner: HashMap::new(),
            node_pending: None,
            snapshot: Snapshot::empty(family, node_name),
            interned: HashSet::new(),
            intern_prune_at: 1024,
            counters: TrackerCounters::default(),
            loopback_endpoints: false,
            node_ports: HashMap::new(),
            node_ports_of: HashMap::new(),
            trigger_times: Vec::new(),
            started: std::time::SystemTime::now(),
        }
    }

    /// Accepts endpoint addresses in the loopback range (`127.0.0.0/8`,
    /// `::1`), which the API server refuses: for local testing only (the
    /// demo, a laptop), never for a cluster's objects.
    pub fn with_loopback_endpoints(mut self, allow: bool) -> Self {
        self.loopback_endpoints = allow;
        self
    }

    /// The family.
    pub fn family(&self) -> IpFamily {
        self.family
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The last applied snapshot.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Whether anything is pending.
    pub fn has_pending(&self) -> bool {
        !self.services_pending.is_empty()
            || self.node_pending.is_some()
            || self
                .slices_dirty
                .iter()
                .any(|nn| self.slices.get(nn).is_some_and(|t| !t.pending.is_empty()))
    }

    /// Services with pending Service changes.
    pub fn pending_service_changes(&self) -> usize {
        self.services_pending.len()
    }

    /// Services with pending EndpointSlice changes.
    pub fn pending_endpoint_changes(&self) -> usize {
        self.slices_dirty
            .iter()
            .filter(|nn| self.slices.get(*nn).is_some_and(|t| !t.pending.is_empty()))
            .count()
    }

    /// Event counters.
    pub fn counters(&self) -> TrackerCounters {
        self.counters
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(a.clone());
        a
    }

    /// The interned copy if there is one (deletions name objects we may
    /// never have seen: nothing is added).
    fn shared(&self, s: &str) -> Arc<str> {
        self.interned
            .get(s)
            .cloned()
            .unwrap_or_else(|| Arc::from(s))
    }

    fn set_service(&mut self, nn: NamespacedName, map: ServicePortMap) -> bool {
        self.counters.service_changes_total += 1;
        let applied_equal = match self.services_applied.get(&nn) {
            Some(applied) => *applied == map,
            None => map.is_empty(),
        };
        if applied_equal {
            return self.services_pending.remove(&nn).is_some();
        }
        match self.services_pending.entry(nn) {
            Entry::Occupied(o) if *o.get() == map => false,
            Entry::Occupied(mut o) => {
                *o.get_mut() = map;
                true
            }
            Entry::Vacant(v) => {
                v.insert(map);
                true
            }
        }
    }

    /// Adds or updates a Service. An invalid one is rejected and leaves the
    /// last valid version in force. Returns whether pending state changed.
    pub fn update_service(&mut self, svc: &Service) -> Result<bool, ValidationError> {
        // Interned once valid (validation follows, in `port_map_named`).
        let ns = match crate::validate::is_dns1123_label(&svc.namespace) {
            true => self.intern(&svc.namespace),
            false => Arc::from(svc.namespace.as_str()),
        };
        let nn = NamespacedName::new(ns, svc.name.as_str());
        let map = svc.port_map_named(self.family, nn.clone())?;
        self.claim_node_ports(svc, &nn, !map.is_empty())?;
        Ok(self.set_service(nn, map))
    }

    /// Refuses a node port another service holds (the API server never
    /// allocates one twice; from manifests it can happen, and the second
    /// claim would shadow the first), else makes `nn` the holder of its
    /// node ports and of no others.
    fn claim_node_ports(
        &mut self,
        svc: &Service,
        nn: &NamespacedName,
        programmed: bool,
    ) -> Result<(), ValidationError> {
        let wanted: Vec<(usize, (u16, Protocol))> = svc
            .ports
            .iter()
            .enumerate()
            .filter(|(_, p)| programmed && p.node_port != 0)
            .map(|(i, p)| (i, (p.node_port, p.protocol.unwrap_or(Protocol::Tcp))))
            .collect();
        for (i, key) in &wanted {
            if let Some(holder) = self.node_ports.get(key)
                && holder != nn
            {
                return Err(crate::validate::ErrCtx::new(
                    crate::validate::ObjectKind::Service,
                    &svc.namespace,
                    &svc.name,
                )
                .err(
                    format!("spec.ports[{i}].nodePort"),
                    key.0,
                    format!("already allocated to {holder} ({})", key.1.as_str()),
                ));
            }
        }
        self.release_node_ports(nn);
        if !wanted.is_empty() {
            let keys: Vec<(u16, Protocol)> = wanted.into_iter().map(|(_, k)| k).collect();
            for k in &keys {
                self.node_ports.insert(*k, nn.clone());
            }
            self.node_ports_of.insert(nn.clone(), keys);
        }
        Ok(())
    }

    fn release_node_ports(&mut self, nn: &NamespacedName) {
        for k in self.node_ports_of.remove(nn).unwrap_or_default() {
            if self.node_ports.get(&k) == Some(nn) {
                self.node_ports.remove(&k);
            }
        }
    }

    /// Removes a Service. Returns whether pending state changed.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> bool {
        let nn = NamespacedName::new(self.shared(namespace), name);
        self.release_node_ports(&nn);
        self.set_service(nn, ServicePortMap::new())
    }

    fn slice_data(&mut self, slice: &EndpointSlice) -> SliceData {
        let ports = slice
            .ports
            .iter()
            .filter_map(|p| {
                p.port.map(|port| {
                    (
                        Arc::from(p.name.as_str()),
                        port,
                        p.protocol.unwrap_or(Protocol::Tcp),
                    )
                })
            })
            .collect();
        let mut endpoints = Vec::with_capacity(slice.endpoints.len());
        // A slice names few nodes: the last few, before the intern table.
        let mut recent: [Option<Arc<str>>; 4] = Default::default();
        for (i, e) in slice.endpoints.iter().enumerate() {
            let Some(ip) = e.addresses.first().copied() else {
                continue;
            };
            let node_name = e.node_name.as_deref().map(|n| {
                if let Some(a) = recent.iter().flatten().find(|a| ***a == *n) {
                    return a.clone();
                }
                let a = self.intern(n);
                recent[i % recent.len()] = Some(a.clone());
                a
            });
            let zone = e.zone.as_deref().map(|z| self.intern(z));
            let hints = if e.hint_zones.is_empty() && e.hint_nodes.is_empty() {
                None
            } else {
                Some(Arc::new(Hints {
                    zones: e.hint_zones.iter().map(|z| self.intern(z)).collect(),
                    nodes: e.hint_nodes.iter().map(|n| self.intern(n)).collect(),
                }))
            };
            endpoints.push(SliceEp {
                ip,
                ready: e.ready.unwrap_or(true),
                serving: e.serving.unwrap_or(true),
                terminating: e.terminating.unwrap_or(false),
                node_name,
                zone,
                hints,
            });
        }
        SliceData { ports, endpoints }
    }

    fn set_slice(
        &mut self,
        svc: NamespacedName,
        slice_name: Arc<str>,
        data: Option<Arc<SliceData>>,
    ) -> bool {
        let t = self.slices.entry(svc.clone()).or_default();
        let applied = t.applied.get(&slice_name);
        let same_as_applied = match (&data, applied) {
            (Some(d), Some(a)) => d == a,
            (None, None) => true,
            _ => false,
        };
        let changed = if same_as_applied {
            t.pending.remove(&slice_name).is_some()
        } else {
            match t.pending.get(&slice_name) {
                Some(p) if *p == data => false,
                _ => {
                    t.pending.insert(slice_name, data);
                    true
                }
            }
        };
        let listed = t.dirty;
        t.dirty |= changed;
        if !t.dirty && t.applied.is_empty() && t.pending.is_empty() && t.built.is_empty() {
            self.slices.remove(&svc);
        }
        if changed {
            self.counters.endpoint_changes_total += 1;
            if !listed {
                self.slices_dirty.push(svc);
            }
        }
        changed
    }

    /// Adds or updates an EndpointSlice. Slices of the other family are
    /// ignored. An invalid one is rejected and leaves the last valid
    /// version in force. Returns whether pending state changed.
    pub fn update_endpoint_slice(
        &mut self,
        slice: &EndpointSlice,
    ) -> Result<bool, ValidationError> {
        slice.validate_allowing(self.loopback_endpoints)?;
        if slice.address_type != self.family {
            return Ok(false);
        }
        let ns = self.intern(&slice.namespace);
        let svc = NamespacedName::new(ns.clone(), slice.service_name.as_str());
        let key = (ns, Arc::from(slice.name.as_str()));
        let mut changed = false;
        // A slice whose service label changed leaves its old service.
        if let Some(old) = self.slice_owner.get(&key).cloned()
            && old != svc
        {
            changed |= self.set_slice(old, key.1.clone(), None);
        }
        let data = Arc::new(self.slice_data(slice));
        self.slice_owner.insert(key.clone(), svc.clone());
        changed |= self.set_slice(svc, key.1, Some(data));
        if changed
            && let Some(t) = slice.trigger_time
            && t >= self.started
        {
            self.trigger_times.push(t);
        }
        Ok(changed)
    }

    /// Removes an EndpointSlice. Returns whether pending state changed.
    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) -> bool {
        let key: (Arc<str>, Arc<str>) = (self.shared(namespace), Arc::from(name));
        match self.slice_owner.remove(&key) {
            Some(svc) => self.set_slice(svc, key.1, None),
            None => false,
        }
    }

    /// Records this node's object. Objects for other nodes are ignored.
    pub fn update_node(&mut self, node: &Node) -> Result<bool, ValidationError> {
        node.validate()?;
        if *node.name != *self.node_name {
            return Ok(false);
        }
        let info = Arc::new(NodeInfo {
            name: self.node_name.clone(),
            zone: node.zone().map(Arc::from),
            labels: node.labels.clone(),
            known: true,
            eligible: node.eligible(),
        });
        Ok(self.set_node(info))
    }

    /// Records that this node's object was deleted.
    pub fn delete_node(&mut self) -> bool {
        let info = Arc::new(NodeInfo {
            name: self.node_name.clone(),
            zone: None,
            labels: BTreeMap::new(),
            known: false,
            eligible: false,
        });
        self.set_node(info)
    }

    fn set_node(&mut self, info: Arc<NodeInfo>) -> bool {
        if *info == *self.snapshot.node {
            return self.node_pending.take().is_some();
        }
        if self.node_pending.as_deref() == Some(&*info) {
            return false;
        }
        self.node_pending = Some(info);
        true
    }

    /// Applies everything pending: returns the new snapshot and what changed.
    pub fn apply(&mut self) -> (Snapshot, ChangeSet) {
        let mut changes = ChangeSet {
            trigger_times: std::mem::take(&mut self.trigger_times),
            ..ChangeSet::default()
        };
        let mut snap = self.snapshot.clone();
        // Collected, then built in one go: sorted bulk builds, not one
        // tree insertion per service.
        let mut updated = Vec::with_capacity(self.services_pending.len() + self.slices_dirty.len());
        let mut local_changed = Vec::new();

        // In key order: the snapshot's trees are then filled along one
        // path, and the change set's sets are built from sorted runs.
        let mut pending: Vec<_> = self.services_pending.drain().collect();
        pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for (nn, cur) in pending {
            for (k, p) in &cur {
                snap.services.insert(k.clone(), p.clone());
            }
            match self.services_applied.entry(nn.clone()) {
                Entry::Occupied(mut applied) => {
                    for (k, p) in applied.get() {
                        if !cur.contains_key(k) {
                            snap.services.remove(k);
                            if k.protocol == Protocol::Udp {
                                changes.deleted_udp_cluster_ips.insert(p.cluster_ip);
                            }
                        }
                    }
                    if cur.is_empty() {
                        applied.remove();
                    } else {
                        *applied.get_mut() = cur;
                    }
                }
                Entry::Vacant(v) => {
                    if !cur.is_empty() {
                        v.insert(cur);
                    }
                }
            }
            updated.push(nn);
        }

        let mut dirty = std::mem::take(&mut self.slices_dirty);
        dirty.sort_unstable();
        for nn in dirty {
            let Some(t) = self.slices.get_mut(&nn) else {
                continue;
            };
            t.dirty = false;
            if t.pending.is_empty() {
                if t.applied.is_empty() && t.built.is_empty() {
                    self.slices.remove(&nn);
                }
                continue;
            }
            for (name, data) in std::mem::take(&mut t.pending) {
                match data {
                    Some(d) => {
                        t.applied.insert(name, d);
                    }
                    None => {
                        t.applied.remove(&name);
                    }
                }
            }
            let cur = build_endpoints(&nn, &t.applied, &self.node_name);
            let prev = std::mem::replace(&mut t.built, cur);
            diff_endpoints(&prev, &t.built, &mut changes);
            for (k, _) in &prev {
                if built_get(&t.built, k).is_none() {
                    snap.endpoints.remove(k);
                }
            }
            for (k, v) in &t.built {
                snap.endpoints.insert(k.clone(), v.clone());
            }
            let count = local_ready_ips(&t.built);
            let before = snap.local_ready.get(&nn).copied().unwrap_or(0);
            if count != before {
                if count == 0 {
                    snap.local_ready.remove(&nn);
                } else {
                    snap.local_ready.insert(nn.clone(), count);
                }
                local_changed.push((nn.clone(), count));
            }
            if t.applied.is_empty() && t.built.is_empty() {
                self.slices.remove(&nn);
            }
            updated.push(nn);
        }
        changes.updated_services = updated.into_iter().collect();
        changes.local_endpoints_changed = local_changed.into_iter().collect();

        if let Some(node) = self.node_pending.take() {
            snap.node = node;
            changes.node_changed = true;
            // Locality is fixed by the node's name, which does not change;
            // zone changes are read at selection time.
        }

        self.snapshot = snap.clone();
        if self.interned.len() > self.intern_prune_at {
            self.interned.retain(|a| Arc::strong_count(a) > 1);
            self.intern_prune_at = (2 * self.interned.len()).max(1024);
        }
        (snap, changes)
    }
}

/// Builds the endpoints of every port of a service from its slices: later
/// slices (by name) win over earlier ones for the same `ip:port`, unless
/// the later one is terminating; each list is sorted by `ip:port` text, as
/// kube-proxy sorts it.
fn build_endpoints(
    svc: &NamespacedName,
    applied: &BTreeMap<Arc<str>, Arc<SliceData>>,
    node_name: &str,
) -> Built {
    let mut by_port: Vec<(ServicePortName, Vec<(&SliceEp, u16)>)> = Vec::new();
    for data in applied.values() {
        for (pname, port, proto) in &data.ports {
            let i = match by_port
                .iter()
                .position(|(k, _)| k.protocol == *proto && k.port == *pname)
            {
                Some(i) => i,
                None => {
                    let key = ServicePortName {
                        service: svc.clone(),
                        port: pname.clone(),
                        protocol: *proto,
                    };
                    by_port.push((key, Vec::with_capacity(data.endpoints.len())));
                    by_port.len() - 1
                }
            };
            by_port[i]
                .1
                .extend(data.endpoints.iter().map(|e| (e, *port)));
        }
    }
    by_port.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    by_port
        .into_iter()
        .map(|(k, raws)| (k, ordered_endpoints(&raws, node_name)))
        .collect()
}

fn diff_endpoints(prev: &Built, cur: &Built, changes: &mut ChangeSet) {
    for (k, old) in prev.iter().filter(|(k, _)| k.protocol == Protocol::Udp) {
        let new = built_get(cur, k).map(|v| &v[..]).unwrap_or(&[]);
        for ep in old.iter().filter(|e| e.is_serving()) {
            let kept = new.iter().any(|n| n.addr == ep.addr && n.is_serving());
            if !kept {
                changes.deleted_udp_endpoints.push(StaleEndpoint {
                    service: k.clone(),
                    endpoint: ep.addr,
                });
            }
        }
    }
    for (k, new) in cur.iter().filter(|(k, _)| k.protocol == Protocol::Udp) {
        let serving_now = new.iter().any(|e| e.is_serving());
        let serving_before = built_get(prev, k).is_some_and(|v| v.iter().any(|e| e.is_serving()));
        if serving_now && !serving_before {
            changes.newly_active_udp_services.push(k.clone());
        }
    }
}

/// `ip:port` as text, on the stack: the order kube-proxy sorts by (used
/// for IPv6; IPv4 has [`v4_text_order`]).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct TextKey([u8; 56], u8);

impl TextKey {
    fn of(a: &SocketAddr) -> TextKey {
        use std::io::Write;
        let mut buf = [0u8; 56];
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cur, "{a}");
        let n = cur.position() as usize;
        // Bytes after the text are zero, so arrays compare like strings.
        TextKey(buf, n as u8)
    }
}

/// A number whose order is the order of `n`'s decimal text among texts of
/// at most `width` digits followed by a separator: each digit `d` becomes
/// `d + 1` in base `base`, and a missing digit (where the separator
/// stands) is `missing`: 0 when the separator sorts before the digits
/// (`.`, or the end of the text), `base - 1` when it sorts after them
/// (`:`).
const fn decimal_text_order(n: u32, width: u32, base: u64, missing: u64) -> u64 {
    let mut digits = [0u8; 5];
    let mut len = 0;
    let mut v = n;
    loop {
        digits[len] = (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut code = 0u64;
    let mut i = 0;
    while i < width as usize {
        let d = if i < len {
            digits[len - 1 - i] as u64 + 1
        } else {
            missing
        };
        code = code * base + d;
        i += 1;
    }
    code
}

/// [`decimal_text_order`] of every octet followed by `.` (which sorts
/// before the digits).
const OCTET_ORDER: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decimal_text_order(i as u32, 3, 11, 0) as u16;
        i += 1;
    }
    t
};

/// [`decimal_text_order`] of the last octet, followed by `:` (which sorts
/// after the digits: `1.2.3.245:1` before `1.2.3.24:1`).
const LAST_OCTET_ORDER: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decimal_text_order(i as u32, 3, 12, 11) as u16;
        i += 1;
    }
    t
};

/// A `u64` that orders IPv4 `a.b.c.d:port` as their text does: the text
/// compares part by part, and each part is coded by
/// [`decimal_text_order`] with its separator's place among the digits
/// (`.` before them, `:` after, the end of the port before):
/// 11^9 × 12^3 × 11^5 < 2^64. `port_order` is the port's code (computed
/// once per list, ports repeat).
fn v4_text_order(ip: std::net::Ipv4Addr, port_order: u64) -> u64 {
    let o = ip.octets();
    let ip = o[..3].iter().fold(0u64, |k, o| {
        k * 1331 + u64::from(OCTET_ORDER[usize::from(*o)])
    });
    let ip = ip * 1728 + u64::from(LAST_OCTET_ORDER[usize::from(o[3])]);
    ip * 161_051 + port_order
}

/// The endpoints of one service port, from its slices' endpoints (in
/// slice order) at their target ports: sorted by `ip:port` text, and a
/// later copy of an address (a later slice, by name) replaces an earlier
/// one unless it is terminating, as kube-proxy's slice cache does. Sorts
/// keys, not endpoints, and builds each endpoint once.
fn ordered_endpoints(raws: &[(&SliceEp, u16)], node_name: &str) -> Arc<[Endpoint]> {
    fn merge<K: Ord>(raws: &[(&SliceEp, u16)], key: impl Fn(&SliceEp, u16) -> K) -> Vec<(K, u32)> {
        let mut keyed: Vec<(K, u32)> = raws
            .iter()
            .zip(0..)
            .map(|((e, p), i)| (key(e, *p), i))
            .collect();
        // (key, position): copies of an address stay in slice order.
        keyed.sort_unstable();
        keyed.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            if !raws[later.1 as usize].0.terminating {
                kept.1 = later.1;
            }
            true
        });
        keyed
    }
    let endpoint = |i: u32| {
        let (e, port) = raws[i as usize];
        let local = e.node_name.as_deref() == Some(node_name);
        let mut ep = Endpoint::new(
            SocketAddr::new(e.ip, port),
            e.ready,
            e.serving,
            e.terminating,
            local,
        );
        ep.node_name = e.node_name.clone();
        ep.zone = e.zone.clone();
        ep.hints = e.hints.clone();
        ep
    };
    if raws.iter().all(|(e, _)| e.ip.is_ipv4()) {
        // Ports repeat: code the first once.
        let p0 = raws.first().map_or(0, |r| r.1);
        let c0 = decimal_text_order(u32::from(p0), 5, 11, 0);
        let keyed = merge(raws, |e, p| match e.ip {
            IpAddr::V4(ip) if p == p0 => v4_text_order(ip, c0),
            IpAddr::V4(ip) => v4_text_order(ip, decimal_text_order(u32::from(p), 5, 11, 0)),
            IpAddr::V6(_) => u64::MAX,
        });
        keyed.iter().map(|(_, i)| endpoint(*i)).collect()
    } else {
        let keyed = merge(raws, |e, p| TextKey::of(&SocketAddr::new(e.ip, p)));
        keyed.iter().map(|(_, i)| endpoint(*i)).collect()
    }
}

fn local_ready_ips(built: &Built) -> u32 {
    let local = |e: &&Endpoint| e.is_ready() && e.is_local();
    match &built[..] {
        // One port: addresses are unique in its list, so are IPs.
        [(_, eps)] => eps.iter().filter(local).count() as u32,
        _ => {
            let mut ips: Vec<IpAddr> = built
                .iter()
                .flat_map(|(_, v)| v.iter())
                .filter(local)
                .map(|e| e.ip())
                .collect();
            ips.sort_unstable();
            ips.dedup();
            ips.len() as u32
        }
    }
}

#[cfg(test)]
mod tests;
