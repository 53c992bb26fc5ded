//! [`IpvsProxier`]: reconciles IPVS, `kube-ipvs0`, the ipsets and the
//! companion iptables rules with a snapshot.
//!
//! A **full sync** reads the kernel once (`ipvsadm -Ln`, the addresses of
//! `kube-ipvs0`, `ipset save`) and issues only the operations that make it
//! match; what it finds and owns but does not want is removed, so a
//! restart adopts the previous run's objects. A **partial sync** touches
//! only the service ports the change set names: their virtual servers
//! (one `GET_DEST` each, for fresh connection counts), their addresses and
//! their set entries, so its cost does not grow with the number of
//! services.
//!
//! Removed real servers of TCP services go to weight 0 and are deleted
//! once they have no connections, or after
//! [`Config::graceful_termination_cap`] (kube-proxy's graceful
//! termination); UDP and SCTP ones go at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use proxier_core::{
    IpFamily, Proxier, ProxierError, ServicePortName, Snapshot, SyncRequest, SyncStats,
};
use proxier_netfilter::{
    Conntrack, ConntrackNetlink, Iptables, IptablesCmd, ProcSys, StaleFlows, Sysctl, clean_stale,
};
use proxier_netfilter::{owned_drift, remove_owned, write_owned};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::desired::{Contribution, Settings, VsKey, key_of};
use crate::failure::{Failure, Failures};
use crate::kernel::{Ipset, IpsetCmd, Ipvs, IpvsNetlink, Links, Rtnl};
use crate::marks::Marks;
use crate::rules::{self, Tables};
use crate::sets::{self, Entries, Set};
use ipvs_netlink::ip_vs::IP_VS_SVC_F_HASHED;
use ipvs_netlink::{Dest, Service};
use ipvs_netlink::{IpvsClient, Op};

/// The kernel seams.
#[derive(Debug)]
pub struct Kernel {
    /// IPVS.
    pub ipvs: Box<dyn Ipvs>,
    /// `kube-ipvs0` and the node's addresses.
    pub links: Arc<dyn Links>,
    /// ipsets.
    pub ipset: Arc<dyn Ipset>,
    /// iptables of the proxier's family.
    pub iptables: Arc<dyn Iptables>,
    /// conntrack.
    pub conntrack: Arc<dyn Conntrack>,
    /// sysctls.
    pub sysctl: Arc<dyn Sysctl>,
}

impl Kernel {
    /// The real kernel, in the current network namespace: the IPVS
    /// family over generic netlink, rtnetlink, `ipset`, the iptables
    /// variant the machine uses, `conntrack` and `/proc/sys`. Must run
    /// inside a tokio runtime.
    pub async fn real(family: IpFamily) -> Result<Kernel, ProxierError> {
        let iptables = IptablesCmd::detect(family)
            .await
            .map_err(|e| perr("iptables", e))?;
        Kernel::real_with(iptables)
    }

    /// [`Kernel::real`] with a chosen iptables (a pinned variant). Must
    /// run inside a tokio runtime.
    pub fn real_with(iptables: IptablesCmd) -> Result<Kernel, ProxierError> {
        let ipvs = IpvsClient::connect()
            .map_err(|e| perr("connecting to IPVS over generic netlink", e))?;
        let links = Rtnl::new().map_err(|e| perr("rtnetlink", e))?;
        let conntrack = ConntrackNetlink::new().map_err(|e| perr("conntrack", e))?;
        Ok(Kernel {
            ipvs: Box::new(IpvsNetlink::new(ipvs)),
            links: Arc::new(links),
            ipset: Arc::new(IpsetCmd),
            iptables: Arc::new(iptables),
            conntrack: Arc::new(conntrack),
            sysctl: Arc::new(ProcSys),
        })
    }
}

mod full;
mod graceful;
mod partial;

const NAME: &str = "ipvs";

fn perr(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> ProxierError {
    ProxierError::with_source(NAME, what.to_string(), e)
}

/// What the last sync did, for benches and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Full or partial.
    pub full: bool,
    /// IPVS writes (add, edit, delete of services and real servers).
    pub ipvs_writes: usize,
    /// Netlink messages sent to the IPVS family (dump requests included).
    pub netlink_messages: u64,
    /// Addresses bound or unbound on `kube-ipvs0`.
    pub address_changes: usize,
    /// ipset entries added or deleted.
    pub ipset_changes: usize,
    /// Whether the iptables rules were rewritten.
    pub rules_written: bool,
    /// Virtual servers this backend owns after the sync.
    pub virtual_servers: usize,
    /// Real servers over them (draining ones included).
    pub real_servers: usize,
    /// How long each step took, in order (`contributions`, `ipset save`,
    /// `ipvs dump`, `ipvs writes`, `addresses`, `ipset restore`,
    /// `iptables`): where a sync's time goes.
    pub steps: Vec<(&'static str, std::time::Duration)>,
}

impl SyncReport {
    /// Records that step `what` ended, `since` it began; returns now.
    pub(crate) fn step(&mut self, what: &'static str, since: Instant) -> Instant {
        let now = Instant::now();
        self.steps.push((what, now - since));
        now
    }
}

type DestKey = (IpAddr, u16);

/// kube-proxy's IPVS mode. See the module docs.
pub struct IpvsProxier {
    cfg: Config,
    k: Kernel,
    initialized: bool,
    first_sync_done: bool,
    contribs: BTreeMap<ServicePortName, Contribution>,
    /// Which service port wants each virtual server.
    owner: HashMap<VsKey, ServicePortName>,
    /// What the kernel holds of ours, as of the last sync.
    kernel: HashMap<VsKey, (Service, BTreeMap<DestKey, Dest>)>,
    binds: HashMap<IpAddr, usize>,
    /// Whether each address touched by a partial sync was wanted before it.
    binds_before: HashMap<IpAddr, bool>,
    entries: HashMap<(Set, String), usize>,
    /// Entries per set (which sets are non-empty decides the rules).
    set_sizes: HashMap<Set, usize>,
    /// Real servers in `kernel`.
    real_servers: usize,
    out_filter: BTreeMap<ServicePortName, Vec<String>>,
    /// Real servers draining at weight 0, since when.
    graceful: HashMap<(VsKey, DestKey), Instant>,
    written: Option<Tables>,
    /// Firewall marks of the virtual servers for traffic from inside.
    marks: Marks,
    /// The marks `KUBE-EXTERNAL-LOCAL-MARK` held at the last read: a
    /// firewall-mark virtual server is ours only when its mark is there or
    /// handed out (keepalived's `-f 7` inside the mask stays foreign).
    set_marks: BTreeSet<u32>,
    settings: Option<Settings>,
    report: SyncReport,
}

impl std::fmt::Debug for IpvsProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpvsProxier")
            .field("scheduler", &self.cfg.scheduler)
            .field("virtual_servers", &self.kernel.len())
            .finish()
    }
}

/// The marks of `KUBE-EXTERNAL-LOCAL-MARK` in `ipset save` output.
fn marks_in_set(saved: &str, family: IpFamily) -> BTreeSet<u32> {
    sets::parse_save(saved, family)
        .get(&Set::ExternalLocalMark)
        .into_iter()
        .flatten()
        .filter_map(|e| crate::marks::parse_entry(e).map(|(_, m)| m))
        .collect()
}

fn vs_label(s: &Service) -> String {
    Op::DelService(s.clone())
        .to_string()
        .trim_start_matches("ipvsadm -D ")
        .to_string()
}

/// The fields of a service that a sync sets (the kernel adds
/// `IP_VS_SVC_F_HASHED` and counters).
fn same_service(a: &Service, b: &Service) -> bool {
    a.scheduler == b.scheduler
        && (a.flags & !IP_VS_SVC_F_HASHED) == (b.flags & !IP_VS_SVC_F_HASHED)
        && a.timeout == b.timeout
        && a.netmask == b.netmask
}

impl IpvsProxier {
    /// A proxier over `kernel`; nothing is touched until the first sync.
    pub fn new(mut cfg: Config, kernel: Kernel) -> Result<IpvsProxier, ProxierError> {
        // `--nodeport-addresses` may mix families; this proxier takes its own.
        cfg.node_port_addresses =
            proxier_netfilter::of_family(cfg.family, &cfg.node_port_addresses);
        cfg.validate()
            .map_err(|e| ProxierError::with_source(NAME, "configuration", e))?;
        let marks = Marks::new(cfg.external_local_mark_mask);
        Ok(IpvsProxier {
            cfg,
            k: kernel,
            initialized: false,
            first_sync_done: false,
            contribs: BTreeMap::new(),
            owner: HashMap::new(),
            kernel: HashMap::new(),
            binds: HashMap::new(),
            binds_before: HashMap::new(),
            entries: HashMap::new(),
            set_sizes: HashMap::new(),
            real_servers: 0,
            out_filter: BTreeMap::new(),
            graceful: HashMap::new(),
            written: None,
            marks,
            set_marks: BTreeSet::new(),
            settings: None,
            report: SyncReport::default(),
        })
    }

    /// What the last sync did.
    pub fn last_report(&self) -> &SyncReport {
        &self.report
    }

    /// Real servers draining at weight 0.
    pub fn draining(&self) -> usize {
        self.graceful.len()
    }

    fn set_sysctls(&self) -> Result<(), ProxierError> {
        let sys = &self.k.sysctl;
        let must = |key: &str, v: &str| sys.ensure(key, v).map_err(|e| perr("sysctl", e));
        must("net/ipv4/vs/conntrack", "1")?;
        must("net/ipv4/vs/expire_nodest_conn", "1")?;
        must("net/ipv4/vs/expire_quiescent_template", "1")?;
        must("net/ipv4/ip_forward", "1")?;
        if self.cfg.family == IpFamily::V6 {
            must("net/ipv6/conf/all/forwarding", "1")?;
        }
        // conn_reuse_mode=0 only on kernels 4.1 to 5.8 (kubernetes #93297).
        if let Ok(rel) = sys.get("kernel/osrelease") {
            let mut v = rel
                .split(|c: char| !c.is_ascii_digit())
                .map(|x| x.parse::<u32>().unwrap_or(0));
            let (maj, min) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
            if (maj, min) >= (4, 1) && (maj, min) < (5, 9) {
                must("net/ipv4/vs/conn_reuse_mode", "0")?;
            }
        }
        if self.cfg.strict_arp {
            must("net/ipv4/conf/all/arp_ignore", "1")?;
            must("net/ipv4/conf/all/arp_announce", "2")?;
        }
        Ok(())
    }

    async fn init(&mut self) -> Result<(), ProxierError> {
        self.set_sysctls()?;
        self.k
            .links
            .ensure_dummy(&self.cfg.dummy)
            .await
            .map_err(|e| perr("creating the dummy interface", e))?;
        let t = self.cfg.timeouts;
        if t.tcp > 0 || t.tcp_fin > 0 || t.udp > 0 {
            self.k
                .ipvs
                .set_timeouts(t)
                .await
                .map_err(|e| perr("ipvsadm --set", e))?;
        }
        self.initialized = true;
        Ok(())
    }

    async fn settings(&self) -> Result<Settings, ProxierError> {
        let fam = self.cfg.family;
        let node_ips: Vec<IpAddr> = if self.cfg.node_ips.is_empty() {
            self.k
                .links
                .node_addresses(&self.cfg.dummy)
                .await
                .map_err(|e| perr("reading the node's addresses", e))?
        } else {
            self.cfg.node_ips.clone()
        };
        let node_ips: Vec<IpAddr> = node_ips.into_iter().filter(|ip| fam.matches(ip)).collect();
        let npa = &self.cfg.node_port_addresses;
        let match_all = npa.is_empty() || npa.iter().any(|n| n.prefix_len() == 0);
        let node_port_ips = node_ips
            .iter()
            .copied()
            .filter(|ip| {
                if match_all {
                    !ip.is_loopback()
                        && !matches!(ip, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80)
                } else {
                    npa.iter().any(|n| n.contains(ip))
                }
            })
            .collect();
        Ok(Settings {
            family: fam,
            scheduler: self.cfg.scheduler.clone(),
            node_port_ips,
            node_ips,
            mark_mask: self.cfg.external_local_mark_mask,
        })
    }

    fn excluded(&self, ip: &IpAddr) -> bool {
        self.cfg.exclude_cidrs.iter().any(|n| n.contains(ip))
    }

    fn add_contribution(
        &mut self,
        name: &ServicePortName,
        c: &Contribution,
        errors: &mut Failures,
    ) {
        for (s, _) in &c.services {
            let key = key_of(s);
            match self.owner.get(&key) {
                Some(other) if other != name => errors.push(Failure::Conflict {
                    service: name.clone(),
                    vs: vs_label(s),
                    holder: other.clone(),
                }),
                _ => {
                    self.owner.insert(key, name.clone());
                }
            }
        }
        for ip in &c.binds {
            let before = self.binds.contains_key(ip);
            self.binds_before.entry(*ip).or_insert(before);
            *self.binds.entry(*ip).or_default() += 1;
        }
        for e in &c.entries {
            let n = self.entries.entry(e.clone()).or_default();
            *n += 1;
            if *n == 1 {
                *self.set_sizes.entry(e.0).or_default() += 1;
            }
        }
        if !c.out_filter.is_empty() {
            self.out_filter.insert(name.clone(), c.out_filter.clone());
        }
    }

    fn drop_contribution(&mut self, name: &ServicePortName, c: &Contribution) {
        for (s, _) in &c.services {
            let key = key_of(s);
            if self.owner.get(&key) == Some(name) {
                self.owner.remove(&key);
            }
        }
        for ip in &c.binds {
            self.binds_before.entry(*ip).or_insert(true);
            if let Some(n) = self.binds.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    self.binds.remove(ip);
                }
            }
        }
        for e in &c.entries {
            if let Some(n) = self.entries.get_mut(e) {
                *n -= 1;
                if *n == 0 {
                    self.entries.remove(e);
                    if let Some(k) = self.set_sizes.get_mut(&e.0) {
                        *k -= 1;
                    }
                }
            }
        }
        self.out_filter.remove(name);
    }

    fn wanted_entries(&self) -> Entries {
        let mut want = Entries::new();
        for (s, e) in self.entries.keys() {
            want.entry(*s).or_default().insert(e.clone());
        }
        for ip in self.binds.keys() {
            want.entry(Set::IpvsIps).or_default().insert(ip.to_string());
        }
        want
    }

    /// Writes the companion rules when they differ from what this instance
    /// last wrote; on a full sync also when the kernel lost a chain or jump
    /// of them (a firewall reload, a hand-run `iptables -F`), as kube-proxy's
    /// restore on every sync would repair.
    async fn write_rules(&mut self, full: bool) -> Result<(), ProxierError> {
        let mut non_empty: BTreeSet<Set> = self
            .set_sizes
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(s, _)| *s)
            .collect();
        if !self.binds.is_empty() {
            non_empty.insert(Set::IpvsIps);
        }
        let out: Vec<&str> = self
            .out_filter
            .values()
            .flatten()
            .map(String::as_str)
            .collect();
        let tables = rules::render(
            &self.cfg.rules,
            &non_empty,
            &out,
            self.cfg.external_local_mark_mask,
        );
        if self.written.as_ref() == Some(&tables) {
            if !full || self.rules_in_place(&tables).await {
                return Ok(());
            }
            warn!("iptables rules of the IPVS proxier were removed outside it; writing them again");
        }
        // nat first, then filter, as kube-proxy; then mangle (ours).
        for t in rules::TABLES {
            write_owned(&*self.k.iptables, t, tables.get(t), &|c| rules::owns(t, c))
                .await
                .map_err(|e| {
                    perr(&format!("iptables-restore ({t})"), e)
                        .refused(proxier_core::Refused::IptablesRestore)
                })?;
        }
        self.written = Some(tables);
        self.report.rules_written = true;
        Ok(())
    }

    async fn rules_in_place(&self, tables: &Tables) -> bool {
        let ipt = &*self.k.iptables;
        for t in rules::TABLES {
            if !matches!(owned_drift(ipt, t, tables.get(t)).await, Ok(None)) {
                return false;
            }
        }
        true
    }

    async fn bind(&mut self, add: &[IpAddr], del: &[IpAddr], errors: &mut Failures) {
        let dummy = self.cfg.dummy.clone();
        if !add.is_empty() {
            for e in self.k.links.add_addresses(&dummy, add).await {
                errors.push(Failure::Link(e));
            }
        }
        if !del.is_empty() {
            for e in self.k.links.del_addresses(&dummy, del).await {
                errors.push(Failure::Link(e));
            }
        }
        self.report.address_changes += add.len() + del.len();
    }

    /// Deletes the stale UDP and SCTP flows: the change set's targeted
    /// deletes and the reconciler (node ports on the node's addresses), in
    /// one dump. A failure is logged and does not fail the sync.
    async fn clear_conntrack(&self, req: &SyncRequest) {
        let node_ips = self
            .settings
            .as_ref()
            .map(|s| s.node_ips.clone())
            .unwrap_or_default();
        let stale = StaleFlows::from_changes(req).reconcile(&req.snapshot, &node_ips);
        match clean_stale(&*self.k.conntrack, &stale).await {
            Ok(r) if r.deleted > 0 => {
                debug!(
                    deleted = r.deleted,
                    seen = r.seen,
                    "stale conntrack flows deleted"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = %proxier_core::ErrorChain(&e), "conntrack cleanup failed"),
        }
    }

    /// Whether a virtual server found in the kernel is ours: on an address
    /// of `kube-ipvs0`, or on a node address with a port in the node-port
    /// range, or written by this proxier.
    fn owned_vs(&self, s: &Service, bound: &BTreeSet<IpAddr>, node_ips: &[IpAddr]) -> bool {
        if s.fwmark != 0 {
            // Ours: the firewall-mark virtual servers in our mark bits whose
            // mark our set names or we handed out.
            return self.cfg.family.matches(&s.addr)
                && self.marks.covers(s.fwmark)
                && (self.set_marks.contains(&s.fwmark)
                    || self.marks.in_use(s.fwmark)
                    || self.kernel.contains_key(&key_of(s)));
        }
        if !self.cfg.family.matches(&s.addr) || self.excluded(&s.addr) {
            return false;
        }
        bound.contains(&s.addr)
            || self.kernel.contains_key(&key_of(s))
            || (node_ips.contains(&s.addr) && self.cfg.node_port_range.contains(&s.port))
    }
}

#[async_trait]
impl Proxier for IpvsProxier {
    fn name(&self) -> &str {
        NAME
    }

    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        let t0 = Instant::now();
        let sent0 = self.k.ipvs.messages_sent();
        if req.snapshot.family != self.cfg.family {
            return Err(ProxierError::new(
                NAME,
                format!(
                    "snapshot is {}, proxier is {}",
                    req.snapshot.family.as_str(),
                    self.cfg.family.as_str()
                ),
            ));
        }
        if !self.initialized {
            self.init().await?;
        }
        let full = req.full || self.settings.is_none();
        self.report = SyncReport {
            full,
            ..SyncReport::default()
        };
        let mut errors = Failures::default();
        if full {
            self.full_sync(&req.snapshot, &mut errors).await?;
        } else {
            self.partial_sync(req, &mut errors).await?;
        }
        // Verifying is a full reconcile (one dump of IPVS, of the
        // addresses of kube-ipvs0 and of the ipsets, the companion rules
        // counted), what kube-proxy's IPVS mode does on every sync: what
        // it writes was changed behind our back.
        let mut repaired = None;
        if req.verify && !full && errors.is_empty() {
            let first = std::mem::take(&mut self.report);
            self.full_sync(&req.snapshot, &mut errors).await?;
            let fix = std::mem::replace(&mut self.report, first);
            if fix.ipvs_writes + fix.address_changes + fix.ipset_changes > 0 || fix.rules_written {
                repaired = Some(format!(
                    "{} IPVS writes, {} kube-ipvs0 address changes, {} ipset entry changes{}",
                    fix.ipvs_writes,
                    fix.address_changes,
                    fix.ipset_changes,
                    if fix.rules_written {
                        ", iptables rules rewritten"
                    } else {
                        ""
                    }
                ));
                self.report.ipvs_writes += fix.ipvs_writes;
                self.report.address_changes += fix.address_changes;
                self.report.ipset_changes += fix.ipset_changes;
                self.report.rules_written |= fix.rules_written;
            }
        }
        self.first_sync_done = true;
        self.clear_conntrack(req).await;
        self.report.netlink_messages = self.k.ipvs.messages_sent() - sent0;
        self.report.virtual_servers = self.kernel.len();
        self.report.real_servers = self.real_servers;
        debug!(report = ?self.report, took = ?t0.elapsed(), "ipvs sync");
        if !errors.is_empty() {
            // The runner retries, then runs a full sync.
            return Err(ProxierError::with_source(
                NAME,
                format!("{} step(s) failed", errors.0.len()),
                errors,
            ));
        }
        Ok(SyncStats {
            objects: self.report.virtual_servers + self.report.real_servers,
            written: self.report.ipvs_writes
                + self.report.address_changes
                + self.report.ipset_changes
                + usize::from(self.report.rules_written),
            full: full || repaired.is_some(),
            repaired,
            iptables_rules: self
                .written
                .as_ref()
                .map(|t| {
                    let last = |n: usize| if self.report.rules_written { n } else { 0 };
                    [
                        ("filter", &t.filter),
                        ("mangle", &t.mangle),
                        ("nat", &t.nat),
                    ]
                    .into_iter()
                    .map(|(name, r)| (name, r.rule_count(), last(r.rule_count())))
                    .collect()
                })
                .unwrap_or_default(),

            not_programmed: Vec::new(),

            incomplete: None,
        })
    }

    /// Removes what this backend owns: its virtual servers (on
    /// `kube-ipvs0` addresses and node ports), the companion rules, the
    /// ipsets and `kube-ipvs0`. Foreign virtual servers and sets stay.
    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        let mut errors = Failures::default();
        let bound: BTreeSet<IpAddr> = self
            .k
            .links
            .addresses(&self.cfg.dummy)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let node_ips = match self.settings().await {
            Ok(s) => s.node_ips,
            Err(_) => Vec::new(),
        };
        let saved = self.k.ipset.save().await;
        if let Ok(saved) = &saved {
            self.set_marks = marks_in_set(saved, self.cfg.family);
        }
        match self.k.ipvs.dump(self.cfg.family).await {
            Ok(dump) => {
                let ops: Vec<Op> = dump
                    .into_iter()
                    .filter(|(s, _)| self.owned_vs(s, &bound, &node_ips))
                    .map(|(s, _)| Op::DelService(s))
                    .collect();
                if let Err(e) = self.run_ops(&ops, &mut errors).await {
                    errors.step("ipvsadm -D (every owned virtual server)", e);
                }
            }
            Err(e) => errors.step("ipvsadm -Ln", e),
        }
        for t in rules::TABLES {
            if let Err(e) = remove_owned(&*self.k.iptables, t, &|c| rules::owns(t, c)).await {
                errors.step(format!("iptables -t {t} (owned chains)"), e);
            }
        }
        match saved {
            Ok(saved) => {
                let have = sets::parse_save(&saved, self.cfg.family);
                let input = sets::destroy(&have, self.cfg.family);
                if !input.is_empty()
                    && let Err(e) = self.k.ipset.restore(&input).await
                {
                    errors.push(Failure::Ipset(e));
                }
            }
            Err(e) => errors.push(Failure::Ipset(e)),
        }
        // `kube-ipvs0` is shared by both families' proxiers on a
        // dual-stack node: while the other family still has service
        // addresses on it, only this family's go; the last one deletes it.
        let fam = self.cfg.family;
        let service_addr = |ip: &IpAddr| match ip {
            IpAddr::V4(a) => !a.is_link_local(),
            IpAddr::V6(a) => !a.is_unicast_link_local(),
        };
        let other_family_left = bound.iter().any(|ip| service_addr(ip) && !fam.matches(ip));
        if other_family_left {
            for ip in bound
                .iter()
                .filter(|ip| fam.matches(ip) && service_addr(ip))
            {
                if let Err(e) = self.k.links.del_address(&self.cfg.dummy, *ip).await {
                    errors.push(Failure::Link(e));
                }
            }
        } else if let Err(e) = self.k.links.delete(&self.cfg.dummy).await {
            errors.push(Failure::Link(e));
        }
        self.kernel.clear();
        self.contribs.clear();
        self.owner.clear();
        self.binds.clear();
        self.binds_before.clear();
        self.entries.clear();
        self.set_sizes.clear();
        self.real_servers = 0;
        self.out_filter.clear();
        self.graceful.clear();
        self.written = None;
        self.marks.retain(|_| false);
        self.set_marks.clear();
        self.settings = None;
        self.initialized = false;
        self.first_sync_done = false;
        if errors.is_empty() {
            info!("ipvs: cleaned up");
            Ok(())
        } else {
            Err(ProxierError::with_source(
                NAME,
                format!("cleanup: {} step(s) failed", errors.0.len()),
                errors,
            ))
        }
    }
}
