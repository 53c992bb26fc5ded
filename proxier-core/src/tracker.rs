//! Change tracking, as kube-proxy's `ServiceChangeTracker`,
//! `EndpointsChangeTracker` and `EndpointSliceCache`.
//!
//! Events accumulate per service: the state before the first pending change
//! (the applied state) and the latest one; a change that returns to the
//! applied state vanishes. [`ChangeTracker::apply`] turns what is pending
//! into a new immutable [`Snapshot`] and a [`ChangeSet`]. The snapshot is a
//! persistent map, so taking one costs O(changes · log n), not O(n).
//!
//! Three files: this one (the tracker), `snapshot.rs` (what it hands
//! out) and `slices.rs` (the slice cache, kube-proxy's
//! `endpointslicecache.go`). Validation is [`validate`](crate::validate)'s.

use std::collections::BTreeMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::input::{EndpointSlice, Node, Service, ServicePortMap};
use crate::model::{Hints, IpFamily, NamespacedName, Protocol};
use crate::validate::ValidationError;

mod slices;
mod snapshot;

use slices::{
    SliceData, SliceEp, SliceTracker, build_endpoints, built_get, diff_endpoints, local_ready_ips,
};
#[cfg(test)]
use slices::{decimal_text_order, ordered_endpoints, v4_text_order};
pub use snapshot::{ChangeSet, NodeInfo, Snapshot, StaleEndpoint};

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
        // The namespace is interned once validation has passed it.
        let mut named = None;
        let map = svc.port_map_interned(self.family, |ns| {
            let nn = NamespacedName::new(self.intern(ns), svc.name.as_str());
            named = Some(nn.clone());
            nn
        })?;
        let nn = named.expect("a valid service has been named");
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

#[cfg(test)]
mod tests;
