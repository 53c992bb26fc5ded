//! Change tracking, as kube-proxy's `ServiceChangeTracker`,
//! `EndpointsChangeTracker` and `EndpointSliceCache`.
//!
//! Events accumulate per service: the state before the first pending change
//! (the applied state) and the latest one; a change that returns to the
//! applied state vanishes. [`ChangeTracker::apply`] turns what is pending
//! into a new immutable [`Snapshot`] and a [`ChangeSet`]. The snapshot is a
//! persistent map, so taking one costs O(changes · log n), not O(n).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

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

#[derive(Debug, Default)]
struct SliceTracker {
    applied: BTreeMap<Arc<str>, Arc<SliceData>>,
    /// `None` = removal pending.
    pending: BTreeMap<Arc<str>, Option<Arc<SliceData>>>,
    built: BTreeMap<ServicePortName, Arc<[Endpoint]>>,
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
    slice_owner: HashMap<(Arc<str>, Arc<str>), NamespacedName>,
    node_pending: Option<Arc<NodeInfo>>,
    snapshot: Snapshot,
    interned: HashSet<Arc<str>>,
    counters: TrackerCounters,
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
            slice_owner: HashMap::new(),
            node_pending: None,
            snapshot: Snapshot::empty(family, node_name),
            interned: HashSet::new(),
            counters: TrackerCounters::default(),
        }
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
            || self.slices.values().any(|t| !t.pending.is_empty())
    }

    /// Services with pending Service changes.
    pub fn pending_service_changes(&self) -> usize {
        self.services_pending.len()
    }

    /// Services with pending EndpointSlice changes.
    pub fn pending_endpoint_changes(&self) -> usize {
        self.slices
            .values()
            .filter(|t| !t.pending.is_empty())
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

    fn set_service(&mut self, nn: NamespacedName, map: ServicePortMap) -> bool {
        self.counters.service_changes_total += 1;
        let applied_equal = match self.services_applied.get(&nn) {
            Some(applied) => *applied == map,
            None => map.is_empty(),
        };
        if applied_equal {
            self.services_pending.remove(&nn).is_some()
        } else {
            let prev = self.services_pending.insert(nn, map.clone());
            prev.as_ref() != Some(&map)
        }
    }

    /// Adds or updates a Service. An invalid one is rejected and leaves the
    /// last valid version in force. Returns whether pending state changed.
    pub fn update_service(&mut self, svc: &Service) -> Result<bool, ValidationError> {
        let map = svc.to_port_map(self.family)?;
        Ok(self.set_service(
            NamespacedName::new(svc.namespace.as_str(), svc.name.as_str()),
            map,
        ))
    }

    /// Removes a Service. Returns whether pending state changed.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> bool {
        self.set_service(NamespacedName::new(namespace, name), ServicePortMap::new())
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
        for e in &slice.endpoints {
            let Some(ip) = e.addresses.first().copied() else {
                continue;
            };
            let node_name = e.node_name.as_deref().map(|n| self.intern(n));
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
        if t.applied.is_empty() && t.pending.is_empty() && t.built.is_empty() {
            self.slices.remove(&svc);
        }
        if changed {
            self.counters.endpoint_changes_total += 1;
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
        slice.validate()?;
        if slice.address_type != self.family {
            return Ok(false);
        }
        let svc = slice.service();
        let key = (
            Arc::from(slice.namespace.as_str()),
            Arc::from(slice.name.as_str()),
        );
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
        Ok(changed)
    }

    /// Removes an EndpointSlice. Returns whether pending state changed.
    pub fn delete_endpoint_slice(&mut self, namespace: &str, name: &str) -> bool {
        let key: (Arc<str>, Arc<str>) = (Arc::from(namespace), Arc::from(name));
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

    /// Builds the endpoints of every port of a service from its slices:
    /// later slices (by name) win over earlier ones for the same
    /// `ip:port`, unless the later one is terminating; each list is
    /// sorted by `ip:port` text, as kube-proxy sorts it.
    fn build_endpoints(
        &self,
        svc: &NamespacedName,
        applied: &BTreeMap<Arc<str>, Arc<SliceData>>,
    ) -> BTreeMap<ServicePortName, Arc<[Endpoint]>> {
        let mut by_port: BTreeMap<ServicePortName, Vec<Endpoint>> = BTreeMap::new();
        for data in applied.values() {
            for (pname, port, proto) in &data.ports {
                let key = ServicePortName {
                    service: svc.clone(),
                    port: pname.clone(),
                    protocol: *proto,
                };
                let list = by_port.entry(key).or_default();
                for e in &data.endpoints {
                    let local = e.node_name.as_deref() == Some(&*self.node_name);
                    let mut ep = Endpoint::new(
                        SocketAddr::new(e.ip, *port),
                        e.ready,
                        e.serving,
                        e.terminating,
                        local,
                    );
                    ep.node_name = e.node_name.clone();
                    ep.zone = e.zone.clone();
                    ep.hints = e.hints.clone();
                    list.push(ep);
                }
            }
        }
        by_port
            .into_iter()
            .map(|(k, list)| (k, Arc::from(sort_dedup(list))))
            .collect()
    }

    /// Applies everything pending: returns the new snapshot and what changed.
    pub fn apply(&mut self) -> (Snapshot, ChangeSet) {
        let mut changes = ChangeSet::default();
        let mut snap = self.snapshot.clone();

        for (nn, cur) in std::mem::take(&mut self.services_pending) {
            let prev = self.services_applied.remove(&nn).unwrap_or_default();
            for (k, p) in &prev {
                if !cur.contains_key(k) {
                    snap.services.remove(k);
                    if k.protocol == Protocol::Udp {
                        changes.deleted_udp_cluster_ips.insert(p.cluster_ip);
                    }
                }
            }
            for (k, p) in &cur {
                snap.services.insert(k.clone(), p.clone());
            }
            if !cur.is_empty() {
                self.services_applied.insert(nn.clone(), cur);
            }
            changes.updated_services.insert(nn);
        }

        let pending_svcs: Vec<NamespacedName> = self
            .slices
            .iter()
            .filter(|(_, t)| !t.pending.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for nn in pending_svcs {
            let mut t = self.slices.remove(&nn).unwrap_or_default();
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
            let cur = self.build_endpoints(&nn, &t.applied);
            let prev = std::mem::replace(&mut t.built, cur);
            Self::diff_endpoints(&prev, &t.built, &mut changes);
            for k in prev.keys() {
                if !t.built.contains_key(k) {
                    snap.endpoints.remove(k);
                }
            }
            for (k, v) in &t.built {
                snap.endpoints.insert(k.clone(), v.clone());
            }
            let count = local_ready_ips(&t.built);
            let before = snap.local_ready.get(&nn).copied().unwrap_or(0);
            if count != before {
                changes.local_endpoints_changed.insert(nn.clone(), count);
                if count == 0 {
                    snap.local_ready.remove(&nn);
                } else {
                    snap.local_ready.insert(nn.clone(), count);
                }
            }
            changes.updated_services.insert(nn.clone());
            if !(t.applied.is_empty() && t.built.is_empty()) {
                self.slices.insert(nn, t);
            }
        }

        if let Some(node) = self.node_pending.take() {
            snap.node = node;
            changes.node_changed = true;
            // Locality is fixed by the node's name, which does not change;
            // zone changes are read at selection time.
        }

        self.snapshot = snap.clone();
        (snap, changes)
    }

    fn diff_endpoints(
        prev: &BTreeMap<ServicePortName, Arc<[Endpoint]>>,
        cur: &BTreeMap<ServicePortName, Arc<[Endpoint]>>,
        changes: &mut ChangeSet,
    ) {
        for (k, old) in prev.iter().filter(|(k, _)| k.protocol == Protocol::Udp) {
            let new = cur.get(k).map(|v| &v[..]).unwrap_or(&[]);
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
            let serving_before = prev
                .get(k)
                .is_some_and(|v| v.iter().any(|e| e.is_serving()));
            if serving_now && !serving_before {
                changes.newly_active_udp_services.push(k.clone());
            }
        }
    }
}

/// `ip:port` as text, on the stack: the order kube-proxy sorts by.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct TextKey([u8; 56], u8);

impl TextKey {
    fn of(a: &SocketAddr) -> TextKey {
        let mut buf = [0u8; 56];
        let n = match a {
            // The common case, without `fmt` (a fifth of a cold build).
            SocketAddr::V4(v4) => {
                let mut n = 0;
                for (i, o) in v4.ip().octets().iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    n += put_dec(&mut buf[n..], u32::from(*o));
                }
                buf[n] = b':';
                n + 1 + put_dec(&mut buf[n + 1..], u32::from(v4.port()))
            }
            SocketAddr::V6(_) => {
                use std::io::Write;
                let mut cur = std::io::Cursor::new(&mut buf[..]);
                let _ = write!(cur, "{a}");
                cur.position() as usize
            }
        };
        // Bytes after the text are zero, so arrays compare like strings.
        TextKey(buf, n as u8)
    }
}

fn put_dec(buf: &mut [u8], mut v: u32) -> usize {
    let mut tmp = [0u8; 10];
    let mut n = 0;
    loop {
        tmp[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = tmp[n - 1 - i];
    }
    n
}

/// Sorts endpoints by `ip:port` text and merges duplicates: a later copy
/// (a later slice, by name) replaces an earlier one unless it is
/// terminating, as kube-proxy's slice cache does.
fn sort_dedup(mut list: Vec<Endpoint>) -> Vec<Endpoint> {
    if list.len() > 1 {
        // Stable: copies of one address stay in slice order.
        list.sort_by_cached_key(|e| TextKey::of(&e.addr));
    }
    let mut out: Vec<Endpoint> = Vec::with_capacity(list.len());
    for ep in list {
        match out.last_mut() {
            Some(prev) if prev.addr == ep.addr => {
                if !ep.is_terminating() {
                    *prev = ep;
                }
            }
            _ => out.push(ep),
        }
    }
    out
}

fn local_ready_ips(built: &BTreeMap<ServicePortName, Arc<[Endpoint]>>) -> u32 {
    let ips: BTreeSet<IpAddr> = built
        .values()
        .flat_map(|v| v.iter())
        .filter(|e| e.is_ready() && e.is_local())
        .map(|e| e.ip())
        .collect();
    ips.len() as u32
}

#[cfg(test)]
mod tests;
