//! Which conntrack flows a sync must delete, and deleting them: kube-proxy's
//! `pkg/proxy/conntrack/cleanup.go` (v1.32+), pure up to [`clean_stale`].
//!
//! Two jobs, one dump:
//!
//! - **Targeted deletes** from the change set ([`StaleFlows::from_changes`]):
//!   flows to removed UDP cluster IPs, to UDP services that just got their
//!   first endpoint (their packets were rejected until now), and flows
//!   DNATed to removed UDP endpoints (what `conntrack -D --orig-dst IP
//!   [--dst-nat EP]` deletes).
//! - **The reconciler** ([`StaleFlows::reconcile`]): every UDP or SCTP
//!   flow whose original destination is a service frontend (cluster IP,
//!   external IP, LB IP, node address × node port) and whose reply source
//!   is not a serving endpoint of that service. A service with no serving
//!   endpoint at all is included (kube-proxy skipped those, and a UDP
//!   sender stayed blackholed: kubernetes #139628). Flows to anything that
//!   is not a frontend, and TCP flows, are never touched. Event-based
//!   cleanup never recovers from a lost event; this finds flows made
//!   behind the proxier's back on the next sync.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use proxier_core::{IpFamily, Protocol, Snapshot, SyncRequest};

use super::{
    Conntrack, ConntrackError, DumpFilter, Flow, IPPROTO_SCTP as SCTP, IPPROTO_UDP as UDP,
};

/// One set of UDP flows to delete, as `conntrack -D -p udp` filters them
/// (kube-proxy's `ClearEntriesFor*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConntrackFilter {
    /// `--orig-dst`.
    pub orig_dst: Option<IpAddr>,
    /// `--orig-port-dst`.
    pub orig_port_dst: Option<u16>,
    /// `--dst-nat`: the endpoint the flow was DNATed to (its reply source).
    pub dst_nat: Option<IpAddr>,
}

impl ConntrackFilter {
    /// Whether `flow` is one this filter deletes.
    pub fn matches(&self, flow: &Flow) -> bool {
        flow.protocol == UDP
            && self.orig_dst.is_none_or(|ip| flow.orig.dst == ip)
            && self.orig_port_dst.is_none_or(|p| flow.orig.dst_port == p)
            && self.dst_nat.is_none_or(|ip| flow.reply.src == ip)
    }

    /// The equivalent `conntrack -D` arguments.
    pub fn args(&self, family: IpFamily) -> Vec<String> {
        let mut a: Vec<String> = vec!["-D".into(), "-f".into()];
        a.push(match family {
            IpFamily::V4 => "ipv4".into(),
            IpFamily::V6 => "ipv6".into(),
        });
        a.extend(["-p".into(), "udp".into()]);
        if let Some(ip) = self.orig_dst {
            a.extend(["--orig-dst".into(), ip.to_string()]);
        }
        if let Some(p) = self.orig_port_dst {
            a.extend(["--orig-port-dst".into(), p.to_string()]);
        }
        if let Some(ip) = self.dst_nat {
            a.extend(["--dst-nat".into(), ip.to_string()]);
        }
        a
    }
}

fn proto_num(p: Protocol) -> Option<u8> {
    match p {
        Protocol::Udp => Some(UDP),
        Protocol::Sctp => Some(SCTP),
        Protocol::Tcp => None,
    }
}

/// The flows one sync deletes: targeted filters and, when asked, the
/// reconciler's frontends. Pure; see the module docs.
#[derive(Debug, Clone)]
pub struct StaleFlows {
    family: IpFamily,
    filters: Vec<ConntrackFilter>,
    /// Filters by original destination: the `--dst-nat` of each (`None`:
    /// every flow to it).
    by_ip: HashMap<IpAddr, Vec<Option<IpAddr>>>,
    /// Filters by original destination port (node ports).
    by_port: HashMap<u16, Vec<Option<IpAddr>>>,
    /// Service frontends (protocol, address, port) → their serving set.
    frontends: HashMap<(u8, IpAddr, u16), usize>,
    /// Node ports (protocol, port) → their serving set.
    node_ports: HashMap<(u8, u16), usize>,
    /// Serving endpoints (address, port) of each service port, sorted (a
    /// handful each: a sorted `Vec` is cheaper to build than a set).
    serving: Vec<Vec<(IpAddr, u16)>>,
    /// The node's addresses (a node-port flow's destination); empty: any.
    node_ips: HashSet<IpAddr>,
    /// The reconciler looks at DNATed flows only (see
    /// [`StaleFlows::dnat_only`]).
    dnat_only: bool,
}

impl StaleFlows {
    /// No flows.
    pub fn none(family: IpFamily) -> StaleFlows {
        StaleFlows {
            family,
            filters: Vec::new(),
            by_ip: HashMap::new(),
            by_port: HashMap::new(),
            frontends: HashMap::new(),
            node_ports: HashMap::new(),
            serving: Vec::new(),
            node_ips: HashSet::new(),
            dnat_only: false,
        }
    }

    /// Exactly the flows `filters` match.
    pub fn filters(family: IpFamily, filters: impl IntoIterator<Item = ConntrackFilter>) -> Self {
        let mut s = StaleFlows::none(family);
        for f in filters {
            s.add_filter(f);
        }
        s
    }

    fn add_filter(&mut self, f: ConntrackFilter) {
        if self.filters.contains(&f) {
            return;
        }
        match (f.orig_dst, f.orig_port_dst) {
            (Some(ip), _) => self.by_ip.entry(ip).or_default().push(f.dst_nat),
            (None, Some(p)) => self.by_port.entry(p).or_default().push(f.dst_nat),
            (None, None) => {}
        }
        self.filters.push(f);
    }

    /// The targeted deletes of `req`'s change set (see the module docs).
    pub fn from_changes(req: &SyncRequest) -> StaleFlows {
        let mut s = StaleFlows::none(req.snapshot.family);
        let by_ip = |ip: IpAddr| ConntrackFilter {
            orig_dst: Some(ip),
            ..ConntrackFilter::default()
        };
        for ip in &req.changes.deleted_udp_cluster_ips {
            s.add_filter(by_ip(*ip));
        }
        for name in &req.changes.newly_active_udp_services {
            if let Some(svc) = req.snapshot.services.get(name) {
                s.add_filter(by_ip(svc.cluster_ip));
                for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
                    s.add_filter(by_ip(*ip));
                }
                if svc.node_port != 0 {
                    s.add_filter(ConntrackFilter {
                        orig_port_dst: Some(svc.node_port),
                        ..ConntrackFilter::default()
                    });
                }
            }
        }
        for stale in &req.changes.deleted_udp_endpoints {
            if let Some(svc) = req.snapshot.services.get(&stale.service) {
                let ep = Some(stale.endpoint.ip());
                for ip in std::iter::once(&svc.cluster_ip)
                    .chain(&svc.external_ips)
                    .chain(&svc.load_balancer_ips)
                {
                    s.add_filter(ConntrackFilter {
                        orig_dst: Some(*ip),
                        orig_port_dst: None,
                        dst_nat: ep,
                    });
                }
                if svc.node_port != 0 {
                    s.add_filter(ConntrackFilter {
                        orig_dst: None,
                        orig_port_dst: Some(svc.node_port),
                        dst_nat: ep,
                    });
                }
            }
        }
        s
    }

    /// Adds the reconciler: every UDP and SCTP service frontend of
    /// `snapshot` with its serving endpoints (traffic policies, topology
    /// and terminating state ignored, as kube-proxy does), node ports on
    /// `node_ips` (empty: on any address).
    pub fn reconcile(mut self, snapshot: &Snapshot, node_ips: &[IpAddr]) -> StaleFlows {
        self.node_ips = node_ips.iter().copied().collect();
        for (name, svc) in &snapshot.services {
            let Some(p) = proto_num(name.protocol) else {
                continue;
            };
            let mut serving: Vec<(IpAddr, u16)> = snapshot
                .endpoints
                .get(name)
                .into_iter()
                .flat_map(|eps| eps.iter())
                .filter(|e| e.is_serving())
                .map(|e| (e.ip(), e.port()))
                .collect();
            serving.sort_unstable();
            let i = self.serving.len();
            self.serving.push(serving);
            for ip in std::iter::once(&svc.cluster_ip)
                .chain(&svc.external_ips)
                .chain(&svc.load_balancer_ips)
            {
                self.frontends.insert((p, *ip, svc.port), i);
            }
            if svc.node_port != 0 {
                self.node_ports.insert((p, svc.node_port), i);
            }
        }
        self
    }

    /// The reconciler looks only at flows a DNAT rule rewrote, and asks the
    /// kernel to dump only those (`CTA_STATUS` `IPS_DST_NAT`, kernel 5.19+;
    /// older kernels dump all and the check is made here). Right for
    /// backends whose service traffic is DNATed by rules (iptables,
    /// nftables), not for IPVS, which rewrites the reply tuple without the
    /// flag. A flow to a frontend that was never DNATed (sent before the
    /// rules existed) is left to the targeted deletes, which run when a
    /// service gets its first endpoint, and on the first sync for all.
    pub fn dnat_only(mut self) -> StaleFlows {
        self.dnat_only = true;
        self
    }

    /// The dumps a pass needs: one of every flow when targeted deletes
    /// are due (they look at flows of any status), else one per protocol
    /// the frontends use, filtered in the kernel.
    pub fn dumps(&self) -> Vec<DumpFilter> {
        if self.is_empty() {
            return Vec::new();
        }
        if !self.filters.is_empty() {
            return vec![DumpFilter::default()];
        }
        let mut protos: Vec<u8> = self
            .frontends
            .keys()
            .map(|k| k.0)
            .chain(self.node_ports.keys().map(|k| k.0))
            .collect();
        protos.sort_unstable();
        protos.dedup();
        protos
            .into_iter()
            .map(|p| DumpFilter {
                protocol: Some(p),
                dnat_only: self.dnat_only,
            })
            .collect()
    }

    /// Nothing to look for: no dump is needed.
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty() && self.frontends.is_empty() && self.node_ports.is_empty()
    }

    /// The targeted filters (as `conntrack -D` would take them).
    pub fn targeted(&self) -> &[ConntrackFilter] {
        &self.filters
    }

    /// Whether `flow` must be deleted.
    pub fn is_stale(&self, flow: &Flow) -> bool {
        if flow.protocol != UDP && flow.protocol != SCTP {
            return false;
        }
        let nat_matches = |eps: &Vec<Option<IpAddr>>| {
            flow.protocol == UDP
                && eps
                    .iter()
                    .any(|ep| ep.is_none_or(|ip| flow.reply.src == ip))
        };
        if self.by_ip.get(&flow.orig.dst).is_some_and(nat_matches)
            || self
                .by_port
                .get(&flow.orig.dst_port)
                .is_some_and(nat_matches)
        {
            return true;
        }
        if self.dnat_only && !flow.dnat {
            return false;
        }
        let reply = (flow.reply.src, flow.reply.src_port);
        if let Some(&i) = self
            .frontends
            .get(&(flow.protocol, flow.orig.dst, flow.orig.dst_port))
        {
            return self.serving[i].binary_search(&reply).is_err();
        }
        if let Some(&i) = self.node_ports.get(&(flow.protocol, flow.orig.dst_port))
            && (self.node_ips.is_empty()
                || self.node_ips.contains(&flow.orig.dst)
                || flow.orig.dst.is_loopback())
        {
            return self.serving[i].binary_search(&reply).is_err();
        }
        false
    }
}

/// What one cleanup pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Flows the dump held (0: no dump was needed).
    pub seen: usize,
    /// Stale flows found.
    pub stale: usize,
    /// Flows deleted.
    pub deleted: usize,
}

/// The dumps [`StaleFlows::dumps`] names (one, or one per protocol),
/// then one batched delete of the stale flows. Does nothing when `stale`
/// looks for nothing.
pub async fn clean_stale(
    ct: &dyn Conntrack,
    stale: &StaleFlows,
) -> Result<CleanupReport, ConntrackError> {
    let (mut flows, mut seen) = (Vec::new(), 0);
    for filter in stale.dumps() {
        let (f, n) = ct
            .dump(stale.family, filter, &|f| stale.is_stale(f))
            .await?;
        flows.extend(f);
        seen += n;
    }
    let deleted = if flows.is_empty() {
        0
    } else {
        ct.delete(&flows).await?
    };
    Ok(CleanupReport {
        seen,
        stale: flows.len(),
        deleted,
    })
}
