//! [`UserspaceProxier`]: listeners per service port, balancers fed from the
//! core's endpoint selection, and (in portal mode) the iptables rules that
//! bring service traffic to them.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnet::IpNet;
use proxier_core::{
    IpFamily, Protocol, Proxier, ProxierError, ServicePort, ServicePortName, SyncRequest, SyncStats,
};
use proxier_netfilter::{Conntrack, ConntrackFilter, Iptables, StaleFlows, clean_stale};
use proxier_netfilter::{TableRules, owned_drift, remove_owned, write_owned};
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::balancer::Balancer;
use crate::portal::{self, PortalPort};
use crate::proxy::{self, DataPath, Firewall, PortCounters, PortShared};

/// How traffic reaches the proxy.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Like the original: one proxy port per service port on the
    /// wildcard address, and iptables rules (`REDIRECT`) that send the
    /// cluster IPs, external IPs, LB IPs and node ports to it.
    Portal(Portal),
    /// No iptables: listen on the service addresses themselves. A service
    /// port without endpoints has no listener, so the kernel refuses.
    Direct(Direct),
}

/// Portal mode's kernel seams.
#[derive(Debug, Clone)]
pub struct Portal {
    /// iptables of the proxier's family (`IptablesCmd`).
    pub iptables: Arc<dyn Iptables>,
    /// conntrack, to forget UDP flows of deleted services
    /// (`conntrack -D -p udp --orig-dst IP`, over netlink). The reconciler
    /// is not used: a portal's flows are redirected to the proxy, not to
    /// endpoints.
    pub conntrack: Arc<dyn Conntrack>,
    /// `--nodeport-addresses`: node ports only on these ranges (empty:
    /// every local address).
    pub node_port_addresses: Vec<IpNet>,
}

/// Which addresses direct mode binds.
#[derive(Debug, Clone, Default)]
pub struct Direct {
    /// `clusterIP:port` (the agent makes the cluster IPs local, e.g. on a
    /// dummy interface, or routes them here with `freebind`).
    pub cluster_ips: bool,
    /// `externalIP:port` and `LB-IP:port`.
    pub external_ips: bool,
    /// Addresses to open node ports on (`0.0.0.0` for all of them).
    pub node_addresses: Vec<IpAddr>,
    /// `IP_FREEBIND`: bind addresses that are not (yet) local.
    pub freebind: bool,
}

/// Everything the userspace proxier needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The family this proxier serves (one per family, as kube-proxy).
    pub family: IpFamily,
    /// Portal or direct.
    pub mode: Mode,
    /// TCP relay and UDP flow settings.
    pub data: DataPath,
}

struct Entry {
    svc: Arc<ServicePort>,
    shared: Arc<PortShared>,
    affinity: Option<Duration>,
    /// What the listeners should be bound to.
    binds: Vec<SocketAddr>,
    /// Cancels the listeners only (connections drain on their own).
    listening: Option<(CancellationToken, Vec<SocketAddr>)>,
    has_endpoints: bool,
    /// [`PortalPort::no_local_endpoints`].
    no_local_endpoints: bool,
}

/// What one service port should be after a sync.
struct Wanted<'a> {
    svc: &'a Arc<ServicePort>,
    eps: Vec<SocketAddr>,
    /// [`PortalPort::no_local_endpoints`].
    no_local: bool,
}

/// kube-proxy's userspace mode. See the crate docs.
pub struct UserspaceProxier {
    cfg: Config,
    entries: BTreeMap<ServicePortName, Entry>,
    written: Option<(TableRules, TableRules)>,
    seeds: RandomState,
}

impl std::fmt::Debug for UserspaceProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceProxier")
            .field("mode", &self.cfg.mode)
            .field("ports", &self.entries.len())
            .finish()
    }
}

const NAME: &str = "userspace";

impl UserspaceProxier {
    /// A proxier; nothing is bound or written until the first sync.
    pub fn new(mut cfg: Config) -> Self {
        // `--nodeport-addresses` may mix families; this proxier takes its own.
        if let Mode::Portal(p) = &mut cfg.mode {
            p.node_port_addresses =
                proxier_netfilter::of_family(cfg.family, &p.node_port_addresses);
        }
        UserspaceProxier {
            cfg,
            entries: BTreeMap::new(),
            written: None,
            seeds: RandomState::new(),
        }
    }

    /// Every service port's listening addresses (in portal mode, the proxy
    /// ports), for logs and tests. `ss -ltnu` shows the same.
    pub fn listeners(&self) -> Vec<(ServicePortName, Vec<SocketAddr>)> {
        self.entries
            .iter()
            .filter_map(|(n, e)| e.listening.as_ref().map(|(_, a)| (n.clone(), a.clone())))
            .collect()
    }

    /// The counters of a service port.
    pub fn counters(&self, name: &ServicePortName) -> Option<&PortCounters> {
        self.entries.get(name).map(|e| &e.shared.counters)
    }

    /// Open TCP connections plus live UDP flows, over every service port.
    pub fn active(&self) -> usize {
        self.entries
            .values()
            .map(|e| e.shared.counters.active.load(Ordering::Relaxed))
            .sum()
    }

    fn binds(&self, svc: &ServicePort) -> Vec<SocketAddr> {
        match &self.cfg.mode {
            Mode::Portal(_) => vec![SocketAddr::new(self.cfg.family.unspecified(), 0)],
            Mode::Direct(d) => {
                let mut v = Vec::new();
                if d.cluster_ips {
                    v.push(SocketAddr::new(svc.cluster_ip, svc.port));
                }
                if d.external_ips {
                    for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
                        v.push(SocketAddr::new(*ip, svc.port));
                    }
                }
                if svc.node_port != 0 {
                    for ip in &d.node_addresses {
                        if self.cfg.family.matches(ip) {
                            v.push(SocketAddr::new(*ip, svc.node_port));
                        }
                    }
                }
                v.sort();
                v.dedup();
                v
            }
        }
    }

    fn freebind(&self) -> bool {
        matches!(&self.cfg.mode, Mode::Direct(d) if d.freebind)
    }

    /// Opens every listener of an entry; on failure nothing stays open.
    fn open(&self, e: &Entry) -> Result<(CancellationToken, Vec<SocketAddr>), String> {
        let token = e.shared.cancel.child_token();
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        let mut addrs = Vec::new();
        for b in &e.binds {
            let s = bind(*b, e.svc.protocol(), self.freebind())
                .map_err(|err| format!("binding {b}/{}: {err}", e.svc.protocol()))?;
            addrs.push(
                s.local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .unwrap_or(*b),
            );
            match e.svc.protocol() {
                Protocol::Udp => udp.push(s),
                _ => tcp.push(s),
            }
        }
        for s in tcp {
            let l = TcpListener::from_std(s.into()).map_err(|x| x.to_string())?;
            let port = e.shared.clone();
            let t = token.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = t.cancelled() => {}
                    _ = proxy::serve_tcp(l, port) => {}
                }
            });
        }
        for s in udp {
            let u = UdpSocket::from_std(s.into()).map_err(|x| x.to_string())?;
            proxy::enable_pktinfo(&u).map_err(|x| format!("IP_PKTINFO: {x}"))?;
            let port = e.shared.clone();
            let t = token.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = t.cancelled() => {}
                    _ = proxy::serve_udp(u, port) => {}
                }
            });
        }
        Ok((token, addrs))
    }

    /// Brings one service port to `svc` with `eps`; returns the kernel
    /// operations it took (listeners opened or closed).
    fn reconcile(
        &mut self,
        svc: &Arc<ServicePort>,
        eps: Vec<SocketAddr>,
        no_local_endpoints: bool,
        errors: &mut Vec<(ServicePortName, String)>,
    ) -> usize {
        let affinity = svc
            .sticky_seconds()
            .map(|s| Duration::from_secs(u64::from(s)));
        let binds = self.binds(svc);
        let portal = matches!(self.cfg.mode, Mode::Portal(_));
        let has_endpoints = !eps.is_empty();
        let firewall = Firewall {
            lb_ips: svc.load_balancer_ips.clone(),
            ranges: svc.load_balancer_source_ranges.clone(),
        };
        let seed = self.seeds.hash_one(&svc.name);
        let e = self
            .entries
            .entry(svc.name.clone())
            .or_insert_with(|| Entry {
                svc: svc.clone(),
                shared: Arc::new(PortShared {
                    name: svc.name.clone(),
                    lb: Mutex::new(Balancer::new(affinity, seed)),
                    firewall: Mutex::default(),
                    cancel: CancellationToken::new(),
                    counters: PortCounters::default(),
                    data: self.cfg.data.clone(),
                }),
                affinity,
                binds: Vec::new(),
                listening: None,
                has_endpoints: false,
                no_local_endpoints: false,
            });
        e.svc = svc.clone();
        e.has_endpoints = has_endpoints;
        e.no_local_endpoints = no_local_endpoints;
        {
            let mut lb = e.shared.lb.lock().expect("balancer lock");
            if e.affinity != affinity {
                *lb = Balancer::new(affinity, seed);
                e.affinity = affinity;
            }
            lb.set_endpoints(eps);
        }
        *e.shared.firewall.lock().expect("firewall lock") = firewall;
        let want = portal || has_endpoints;
        let mut ops = 0;
        let rebind = e.binds != binds;
        e.binds = binds;
        if let Some((t, _)) = &e.listening
            && (!want || rebind)
        {
            t.cancel();
            e.listening = None;
            ops += 1;
        }
        if want && e.listening.is_none() {
            ops += self.listen(&svc.name, errors);
        }
        ops
    }

    /// Opens the listeners of one entry; a failure (the address is taken,
    /// descriptors ran out) is that service port's alone and is retried
    /// on the next sync. Returns the listeners opened.
    fn listen(
        &mut self,
        name: &ServicePortName,
        errors: &mut Vec<(ServicePortName, String)>,
    ) -> usize {
        match self.open(&self.entries[name]) {
            Ok(l) => {
                debug!(service = %name, addrs = ?l.1, "listening");
                let n = l.1.len();
                self.entries.get_mut(name).expect("entry").listening = Some(l);
                n
            }
            Err(m) => {
                errors.push((name.clone(), m));
                0
            }
        }
    }

    /// Entries that should listen and do not (their last attempt failed).
    fn unopened(&self) -> Vec<ServicePortName> {
        let portal = matches!(self.cfg.mode, Mode::Portal(_));
        self.entries
            .iter()
            .filter(|(_, e)| (portal || e.has_endpoints) && e.listening.is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    fn remove(&mut self, name: &ServicePortName) -> usize {
        match self.entries.remove(name) {
            Some(e) => {
                e.shared.cancel.cancel();
                usize::from(e.listening.is_some())
            }
            None => 0,
        }
    }

    async fn write_portals(&mut self, full: bool) -> Result<usize, ProxierError> {
        let Mode::Portal(p) = &self.cfg.mode else {
            return Ok(0);
        };
        let ports: Vec<PortalPort<'_>> = self
            .entries
            .values()
            .filter_map(|e| {
                let (_, addrs) = e.listening.as_ref()?;
                Some(PortalPort {
                    svc: &e.svc,
                    proxy_port: addrs.first()?.port(),
                    has_endpoints: e.has_endpoints,
                    no_local_endpoints: e.no_local_endpoints,
                })
            })
            .collect();
        let (nat, filter, unsafe_names) = portal::render(&ports, &p.node_port_addresses);
        for u in &unsafe_names {
            warn!("{u}");
        }
        if !full && self.written.as_ref() == Some(&(nat.clone(), filter.clone())) {
            return Ok(0);
        }
        let ipt = p.iptables.clone();
        // Filter first: refusals are in place before redirects move.
        for (table, rules) in [("filter", &filter), ("nat", &nat)] {
            write_owned(ipt.as_ref(), table, rules, &portal::is_portal_chain)
                .await
                .map_err(|e| {
                    self.written = None;
                    ProxierError::with_source(NAME, format!("writing portal rules ({table})"), e)
                        .refused(proxier_core::Refused::IptablesRestore)
                })?;
        }
        let n = nat.rule_count() + filter.rule_count();
        self.written = Some((nat, filter));
        Ok(n)
    }

    /// What another program changed in the portal rules last written
    /// (a flushed chain, a deleted jump, a wipe), if anything: one
    /// [`proxier_netfilter::owned_drift`] per table. Check by hand with
    /// `iptables -t nat -S KUBE-PORTALS-CONTAINER`.
    async fn portal_drift(&self) -> Result<Option<String>, ProxierError> {
        let (Mode::Portal(p), Some((nat, filter))) = (&self.cfg.mode, &self.written) else {
            return Ok(None);
        };
        for (table, rules) in [("filter", filter), ("nat", nat)] {
            let found = owned_drift(p.iptables.as_ref(), table, rules)
                .await
                .map_err(|e| {
                    ProxierError::with_source(NAME, format!("reading portal rules ({table})"), e)
                })?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn portal_rule_count(&self) -> usize {
        self.written
            .as_ref()
            .map(|(n, f)| n.rule_count() + f.rule_count())
            .unwrap_or(0)
    }
}

/// A listening socket: `SO_REUSEADDR`, `IPV6_V6ONLY` for IPv6, and
/// `IP_FREEBIND` when asked.
fn bind(addr: SocketAddr, proto: Protocol, freebind: bool) -> std::io::Result<Socket> {
    let (ty, p) = match proto {
        Protocol::Udp => (Type::DGRAM, socket2::Protocol::UDP),
        _ => (Type::STREAM, socket2::Protocol::TCP),
    };
    let s = Socket::new(Domain::for_address(addr), ty, Some(p))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
        if freebind {
            s.set_freebind_v6(true)?;
        }
    } else if freebind {
        s.set_freebind_v4(true)?;
    }
    s.bind(&SockAddr::from(addr))?;
    if ty == Type::STREAM {
        s.listen(4096)?;
    }
    Ok(s)
}

#[async_trait]
impl Proxier for UserspaceProxier {
    fn name(&self) -> &str {
        NAME
    }

    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        let snap = &req.snapshot;
        // A full sync looks at every service; a partial one only at the
        // services the change set names (the rest are as they were).
        let svcs: Vec<&Arc<ServicePort>> = if req.full {
            snap.services.values().collect()
        } else {
            req.changes
                .updated_services
                .iter()
                .flat_map(|nn| snap.ports_of(nn))
                .collect()
        };
        let mut desired: HashMap<&ServicePortName, Wanted<'_>> = HashMap::new();
        for svc in svcs {
            if svc.protocol() == Protocol::Sctp || !self.cfg.family.matches(&svc.cluster_ip) {
                continue;
            }
            let cat = snap.categorize(svc);
            let eps = if svc.internal_policy_local {
                cat.local()
            } else {
                cat.cluster()
            };
            let no_local = svc.internal_policy_local && eps.is_empty() && cat.has_any;
            desired.insert(
                &svc.name,
                Wanted {
                    svc,
                    eps: eps.iter().map(|e| e.addr).collect(),
                    no_local,
                },
            );
        }
        let mut ops = 0;
        let gone: Vec<ServicePortName> = self
            .entries
            .keys()
            .filter(|n| {
                (req.full || req.changes.updated_services.contains(&n.service))
                    && !desired.contains_key(n)
            })
            .cloned()
            .collect();
        for n in &gone {
            ops += self.remove(n);
        }
        let mut errors = Vec::new();
        let touched: std::collections::HashSet<ServicePortName> =
            desired.keys().map(|n| (*n).clone()).collect();
        for w in desired.into_values() {
            let svc = w.svc.clone();
            ops += self.reconcile(&svc, w.eps, w.no_local, &mut errors);
        }
        // A port that could not listen before is tried again on every
        // sync (the runner asks for one, with backoff, while any is left).
        for n in self.unopened() {
            if !touched.contains(&n) {
                ops += self.listen(&n, &mut errors);
            }
        }
        // Stale affinity entries go on every sync (`cleanupStaleStickySessions`).
        let now = Instant::now();
        for e in self.entries.values() {
            e.shared.lb.lock().expect("balancer lock").expire(now);
        }
        let repaired = if req.verify && !req.full {
            self.portal_drift().await?
        } else {
            None
        };
        let rules = self.write_portals(req.full || repaired.is_some()).await?;
        if let Mode::Portal(p) = &self.cfg.mode {
            let stale = StaleFlows::filters(
                self.cfg.family,
                req.changes
                    .deleted_udp_cluster_ips
                    .iter()
                    .map(|ip| ConntrackFilter {
                        orig_dst: Some(*ip),
                        ..ConntrackFilter::default()
                    }),
            );
            if let Err(e) = clean_stale(&*p.conntrack, &stale).await {
                warn!(error = %proxier_core::ErrorChain(&e), "conntrack cleanup failed");
            }
        }
        let listeners: usize = self
            .entries
            .values()
            .filter_map(|e| e.listening.as_ref().map(|(_, a)| a.len()))
            .sum();
        if req.full {
            info!(
                listeners,
                rules = self.portal_rule_count(),
                "userspace sync"
            );
        }
        Ok(SyncStats {
            objects: listeners + self.portal_rule_count(),
            written: ops + rules,
            full: req.full,
            repaired,
            iptables_rules: self
                .written
                .as_ref()
                .map(|(nat, filter)| {
                    let last = |n: usize| if rules > 0 { n } else { 0 };
                    vec![
                        ("filter", filter.rule_count(), last(filter.rule_count())),
                        ("nat", nat.rule_count(), last(nat.rule_count())),
                    ]
                })
                .unwrap_or_default(),
            not_programmed: errors,
            incomplete: None,
        })
    }

    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        let names: Vec<ServicePortName> = self.entries.keys().cloned().collect();
        for n in &names {
            self.remove(n);
        }
        if let Mode::Portal(p) = &self.cfg.mode {
            for table in ["nat", "filter"] {
                remove_owned(p.iptables.as_ref(), table, &portal::is_portal_chain)
                    .await
                    .map_err(|e| {
                        ProxierError::with_source(
                            NAME,
                            format!("removing portal rules ({table})"),
                            e,
                        )
                    })?;
            }
        }
        self.written = None;
        Ok(())
    }
}

impl Drop for UserspaceProxier {
    fn drop(&mut self) {
        for e in self.entries.values() {
            e.shared.cancel.cancel();
        }
    }
}

/// Raises the open-file limit (kube-proxy's `setRLimit(64*1000)`): each
/// proxied TCP connection holds two descriptors, and with `splice` four
/// more. Asks for `want` (hard limit included, which root may raise),
/// else settles for the hard limit. Returns the new soft limit.
pub fn raise_fd_limit(want: u64) -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft >= want {
        return Ok(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        return Ok(want);
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    Ok(hard)
}
