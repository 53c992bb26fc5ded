//! The [`Proxier`]: renders, diffs against what the kernel holds, and
//! applies with one `iptables-restore` per table.
//!
//! - **Full sync** (first, on the runner's full period, after a failure,
//!   after the node changed): every owned chain is rewritten, the jump
//!   rules from the built-in chains are re-made, and chains found in the
//!   kernel that are no longer wanted are deleted.
//! - **Partial sync**: only the chains whose text changed are written
//!   (a one-endpoint change writes the service's `KUBE-SVC-` chain and the
//!   new or removed `KUBE-SEP-`); fixed chains only when their text
//!   changed. A sync with no change runs no command at all.
//! - **iptables-nft at scale**: `iptables-nft-restore --noflush` costs
//!   O(chains declared × chains in the table) in user space (measured:
//!   22,000 chains 16 s, 110,000 chains > 5 min). Above
//!   [`IptablesProxier::with_flush_threshold`] chains, a full sync of the
//!   nat table is one restore *without* `--noflush` that carries every
//!   foreign chain and rule along (read with `iptables -S CHAIN`, never
//!   with `iptables-save`, which at that size takes minutes): 10,000 × 10
//!   in about 20 s. Foreign rule counters restart from zero then.
//! - **The first sync of a large cluster** (above
//!   [`IptablesProxier::with_part_size`] nat chains) is written in growing
//!   parts, each serving as it commits (see `parts.rs`): one restore of
//!   50,000 × 10 takes 19 minutes on iptables-nft.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use async_trait::async_trait;
use proxier_core::{IpFamily, Proxier, ProxierError, SyncRequest, SyncStats};

use proxier_netfilter::{
    ConfigError, Conntrack, ExecError, Iptables, StaleFlows, Sysctl, Variant, clean_stale,
};
use proxier_netfilter::{builtin_chains, census_drift, rule_target as target};

use crate::names;
use crate::parts::{self, Parts};
use crate::render::{Config, Ruleset, is_large_cluster, jump_rules};

/// The flush-mode threshold on iptables-legacy (see
/// [`IptablesProxier::with_flush_threshold`]).
pub const LEGACY_FLUSH_THRESHOLD: usize = usize::MAX;

/// The default part size of a large first sync, in nat chains: 5,000
/// services × 10 endpoints, one restore of 6–10 s on iptables-nft and
/// about 5 s on legacy (see [`IptablesProxier::with_part_size`]).
pub const DEFAULT_PART_CHAINS: usize = 55_000;

/// What [`IptablesProxier::read_table`] found.
#[derive(Debug, Default)]
struct TableState {
    /// Every chain (when asked for).
    chains: Vec<String>,
    /// `-D` lines for our jump rules in the built-in chains.
    delete_jumps: Vec<String>,
    /// Foreign rules per built-in chain.
    foreign: BTreeMap<String, Vec<String>>,
    /// Every chain's rules, when the listing read the whole table.
    all_rules: Option<BTreeMap<String, Vec<String>>>,
}

/// What the last sync wrote.
#[derive(Debug, Default)]
struct Written {
    ruleset: Ruleset,
}

/// kube-proxy's iptables mode.
#[derive(Debug)]
pub struct IptablesProxier {
    cfg: Config,
    ipt: Arc<dyn Iptables>,
    ct: Arc<dyn Conntrack>,
    sysctl: Arc<dyn Sysctl>,
    written: Option<Written>,
    need_full: bool,
    flush_threshold: usize,
    sysctls_done: bool,
    name: String,
    last: Vec<(&'static str, String, bool)>,
    /// The nf_tables generation at the last drift check that found
    /// nothing (`None` after a write, or on legacy).
    verified_gen: Option<u32>,
    /// No drift check before then: a check that read the tables waits 19
    /// times its own duration before the next, so that checking costs at
    /// most 5% of a core however large the tables are.
    next_check: Option<std::time::Instant>,
    check_spacing: u32,
    /// A first sync above this many nat chains is written in parts
    /// (see [`crate::parts`]); `usize::MAX` never.
    part_chains: usize,
    parts: Option<Parts>,
    keep_payloads: bool,
}

/// What one restore will do.
#[derive(Debug, Default)]
struct Plan {
    filter: Option<(String, bool)>,
    nat: Option<(String, bool)>,
    lines: usize,
}

impl IptablesProxier {
    /// A proxier writing through `ipt`, cleaning conntrack through `ct`
    /// and setting kernel parameters through `sysctl`. Fails if the config
    /// has a value that cannot reach a rule.
    pub fn new(
        cfg: Config,
        ipt: Arc<dyn Iptables>,
        ct: Arc<dyn Conntrack>,
        sysctl: Arc<dyn Sysctl>,
    ) -> Result<Self, ConfigError> {
        let cfg = cfg.own_family();
        cfg.validate()?;
        let name = format!(
            "iptables-{}{}",
            ipt.variant(),
            if cfg.family == IpFamily::V6 {
                "-ipv6"
            } else {
                ""
            }
        );
        let flush_threshold = match ipt.variant() {
            Variant::Nft => 5000,
            Variant::Legacy => LEGACY_FLUSH_THRESHOLD,
        };
        Ok(IptablesProxier {
            cfg,
            ipt,
            ct,
            sysctl,
            written: None,
            need_full: true,
            flush_threshold,
            sysctls_done: false,
            name,
            last: Vec::new(),
            verified_gen: None,
            next_check: None,
            check_spacing: 20,
            part_chains: DEFAULT_PART_CHAINS,
            parts: None,
            keep_payloads: false,
        })
    }

    /// A first full sync that would declare more than `chains` nat chains
    /// into a kernel that holds fewer is written in parts, each serving
    /// as it commits: `chains` first, then four times as many, and so on
    /// (see the `parts` module). Default [`DEFAULT_PART_CHAINS`];
    /// `usize::MAX` writes any size in one restore.
    pub fn with_part_size(mut self, chains: usize) -> Self {
        self.part_chains = chains;
        self
    }

    /// A full sync that declares more than `chains` nat chains uses one
    /// restore without `--noflush` (see the module documentation).
    /// Default 5,000 on nft and [`LEGACY_FLUSH_THRESHOLD`] on legacy;
    /// `usize::MAX` never does.
    pub fn with_flush_threshold(mut self, chains: usize) -> Self {
        self.flush_threshold = chains;
        self
    }

    /// A drift check that read the tables is followed by none for
    /// `factor` − 1 times its duration (default 20: at most 5% of a core
    /// goes to checking). 0 or 1 checks whenever the runner asks (the
    /// benches, to time every check).
    pub fn with_check_spacing(mut self, factor: u32) -> Self {
        self.check_spacing = factor;
        self
    }

    /// The rendering configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The `iptables-restore` inputs of the last sync that wrote
    /// something: table, payload, `--noflush`. What an operator would
    /// diff; the benches replay them to time the bare restore. Empty
    /// unless [`with_kept_payloads`](Self::with_kept_payloads).
    pub fn last_payloads(&self) -> &[(&'static str, String, bool)] {
        &self.last
    }

    /// Keeps the last restore inputs for [`last_payloads`](Self::last_payloads).
    /// Off by default: at 50,000 × 10 they are 2.1 million lines, held
    /// until the next write.
    pub fn with_kept_payloads(mut self) -> Self {
        self.keep_payloads = true;
        self
    }

    /// What the last successful sync wrote, if any.
    pub fn ruleset(&self) -> Option<&Ruleset> {
        self.written.as_ref().map(|w| &w.ruleset)
    }

    fn err(&self, what: &str, e: ExecError) -> ProxierError {
        ProxierError::with_source(self.name.clone(), what.to_string(), e)
    }

    /// `nf_conntrack_tcp_be_liberal` (read: it drops the INVALID rule)
    /// and `route_localnet=1` for localhost node ports, once.
    fn sysctls(&mut self) -> Result<(), ProxierError> {
        if self.sysctls_done {
            return Ok(());
        }
        if let Ok(v) = self.sysctl.get("net/netfilter/nf_conntrack_tcp_be_liberal") {
            self.cfg.tcp_be_liberal = v != "0";
        }
        if self.cfg.localhost_node_ports && self.cfg.family == IpFamily::V4 {
            self.sysctl
                .ensure("net/ipv4/conf/all/route_localnet", "1")
                .map_err(|e| ProxierError::with_source(self.name.clone(), "sysctl", e))?;
        }
        self.sysctls_done = true;
        Ok(())
    }

    /// Reads a table before a full sync or cleanup: `-D` lines for every
    /// rule of ours in its built-in chains, the foreign rules per built-in
    /// chain, and (if asked) every chain's name.
    async fn read_table(&self, table: &str, with_chains: bool) -> Result<TableState, ProxierError> {
        let listing = self
            .ipt
            .list_table(table, builtin_chains(table), with_chains)
            .await
            .map_err(|e| self.err(&format!("reading table {table}"), e))?;
        let mut state = TableState {
            chains: listing.chains.unwrap_or_default(),
            all_rules: listing.all_rules,
            ..TableState::default()
        };
        for (chain, rules) in listing.builtin {
            let mut f = Vec::new();
            for r in rules {
                if target(&r).is_some_and(|t| names::is_fixed_chain(table, t)) {
                    state.delete_jumps.push(format!("-D{}", &r[2..]));
                } else {
                    f.push(r);
                }
            }
            state.foreign.insert(chain, f);
        }
        Ok(state)
    }

    /// Our jump rules for `table`, as `-I CHAIN 1 …` lines (inserted in
    /// reverse so they end up in list order, ahead of foreign rules).
    fn jump_inserts(&self, table: &str) -> Vec<String> {
        jump_rules(&self.cfg)
            .into_iter()
            .rev()
            .filter(|(t, _, _)| *t == table)
            .map(|(_, chain, rule)| format!("-I {chain} 1 {rule}"))
            .collect()
    }

    /// Full-sync payload for one table in `--noflush` mode.
    async fn full_noflush(
        &self,
        table: &str,
        fixed: &[(&'static str, String)],
        service_chains: &[(&str, &str)],
        list_stale: bool,
    ) -> Result<String, ProxierError> {
        let state = self.read_table(table, list_stale).await?;
        let delete_jumps = state.delete_jumps;
        let active: HashSet<&str> = fixed
            .iter()
            .map(|(c, _)| *c)
            .chain(service_chains.iter().map(|(c, _)| *c))
            .collect();
        let stale: Vec<String> = state
            .chains
            .into_iter()
            .filter(|c| names::is_service_chain(c) && !active.contains(c.as_str()))
            .collect();
        let mut out = format!("*{table}\n");
        for (c, _) in fixed {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for (c, _) in service_chains {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for c in &stale {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for l in delete_jumps.iter().chain(self.jump_inserts(table).iter()) {
            out.push_str(l);
            out.push('\n');
        }
        for (_, b) in fixed {
            out.push_str(b);
        }
        for (_, b) in service_chains {
            out.push_str(b);
        }
        for c in &stale {
            let _ = writeln!(out, "-X {c}");
        }
        out.push_str("COMMIT\n");
        Ok(out)
    }

    /// Full-sync payload for one table written without `--noflush`: the
    /// foreign chains and rules are read and written back unchanged.
    async fn full_flush(
        &self,
        table: &str,
        fixed: &[(&'static str, String)],
        service_chains: &[(&str, &str)],
        with_jumps: bool,
    ) -> Result<String, ProxierError> {
        let TableState {
            chains,
            foreign: builtin_foreign,
            all_rules,
            ..
        } = self.read_table(table, true).await?;
        let mut out = format!("*{table}\n");
        for c in builtin_chains(table) {
            let policy = self
                .ipt
                .policy(table, c)
                .await
                .map_err(|e| self.err("reading chain policy", e))?;
            let _ = writeln!(out, ":{c} {policy} [0:0]");
        }
        let foreign: Vec<&String> = chains
            .iter()
            .filter(|c| {
                !names::is_owned_chain(table, c) && !builtin_chains(table).contains(&c.as_str())
            })
            .collect();
        for c in &foreign {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for (c, _) in fixed {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for (c, _) in service_chains {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        // Our jumps first (kube-proxy prepends them), then what was there.
        for (t, chain, rule) in jump_rules(&self.cfg) {
            if with_jumps && t == table {
                let _ = writeln!(out, "-A {chain} {rule}");
            }
        }
        for rules in builtin_foreign.values() {
            for r in rules {
                out.push_str(r);
                out.push('\n');
            }
        }
        for c in &foreign {
            let rules = match all_rules.as_ref().and_then(|a| a.get(c.as_str())) {
                Some(r) => r.clone(),
                None => self
                    .ipt
                    .list_rules(table, c)
                    .await
                    .map_err(|e| self.err("listing foreign chain", e))?
                    .unwrap_or_default(),
            };
            for r in rules {
                out.push_str(&r);
                out.push('\n');
            }
        }
        for (_, b) in fixed {
            out.push_str(b);
        }
        for (_, b) in service_chains {
            out.push_str(b);
        }
        out.push_str("COMMIT\n");
        Ok(out)
    }

    async fn plan_full(&self, new: &Ruleset) -> Result<Plan, ProxierError> {
        let mut plan = Plan::default();
        let service_chains: Vec<(&str, &str)> =
            new.services.values().flat_map(|f| f.chains()).collect();
        let flush = service_chains.len() > self.flush_threshold;
        let (filter, nat) = tokio::join!(
            self.full_noflush("filter", &new.filter, &[], false),
            async {
                if flush {
                    Ok((
                        self.full_flush("nat", &new.nat, &service_chains, true)
                            .await?,
                        false,
                    ))
                } else {
                    Ok::<_, ProxierError>((
                        self.full_noflush("nat", &new.nat, &service_chains, true)
                            .await?,
                        true,
                    ))
                }
            }
        );
        let (filter, nat) = (filter?, nat?);
        plan.lines = filter.lines().count() + nat.0.lines().count();
        plan.filter = Some((filter, true));
        plan.nat = Some(nat);
        Ok(plan)
    }

    fn plan_partial(
        &self,
        prev: &Ruleset,
        new: &Ruleset,
        changed: &BTreeSet<proxier_core::NamespacedName>,
    ) -> Plan {
        let mut plan = Plan::default();
        let fixed_changes = |old: &[(&'static str, String)],
                             new: &[(&'static str, String)]|
         -> Vec<(&'static str, String)> {
            new.iter()
                .filter(|(c, b)| {
                    old.iter()
                        .find(|(o, _)| o == c)
                        .map(|(_, ob)| ob != b)
                        .unwrap_or(true)
                })
                .cloned()
                .collect()
        };
        let filter = fixed_changes(&prev.filter, &new.filter);
        if !filter.is_empty() {
            let mut out = String::from("*filter\n");
            for (c, _) in &filter {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for (_, b) in &filter {
                out.push_str(b);
            }
            out.push_str("COMMIT\n");
            plan.lines += out.lines().count();
            plan.filter = Some((out, true));
        }

        let mut chains: Vec<(&str, &str)> = fixed_changes(&prev.nat, &new.nat)
            .into_iter()
            .map(|(c, _)| {
                let body = &new.nat.iter().find(|(n, _)| *n == c).expect("fixed").1;
                (c, body.as_str())
            })
            .collect();
        let mut stale: Vec<&str> = Vec::new();
        for nn in changed {
            let old: BTreeMap<&str, &str> = ports_of(prev, nn).flat_map(|f| f.chains()).collect();
            let now: BTreeMap<&str, &str> = ports_of(new, nn).flat_map(|f| f.chains()).collect();
            for (c, b) in &now {
                if old.get(c) != Some(b) {
                    chains.push((c, b));
                }
            }
            stale.extend(old.keys().filter(|c| !now.contains_key(*c)));
        }
        if !chains.is_empty() || !stale.is_empty() {
            let mut out = String::from("*nat\n");
            for (c, _) in &chains {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for c in &stale {
                let _ = writeln!(out, ":{c} - [0:0]");
            }
            for (_, b) in &chains {
                out.push_str(b);
            }
            for c in &stale {
                let _ = writeln!(out, "-X {c}");
            }
            out.push_str("COMMIT\n");
            plan.lines += out.lines().count();
            plan.nat = Some((out, true));
        }
        plan
    }

    async fn apply<'a>(&'a self, plan: &'a Plan) -> Result<(), ProxierError> {
        // The tables are independent (filter never jumps into nat): both
        // restores run at once; each is atomic.
        let one = |table: &'static str, p: &'a Option<(String, bool)>| async move {
            match p {
                Some((payload, noflush)) => self
                    .ipt
                    .restore(table, payload, *noflush)
                    .await
                    .map_err(|e| {
                        self.err(&format!("restoring table {table}"), e)
                            .refused(proxier_core::Refused::IptablesRestore)
                    }),
                None => Ok(()),
            }
        };
        if self.ipt.variant() == Variant::Legacy {
            // Legacy restores serialize on the xtables lock anyway.
            one("filter", &plan.filter).await?;
            return one("nat", &plan.nat).await;
        }
        let (f, n) = tokio::join!(one("filter", &plan.filter), one("nat", &plan.nat));
        f.and(n)
    }

    /// Whether the kernel still holds what the last sync wrote: every
    /// chain of ours with as many rules as were written, and every jump
    /// from a built-in chain (kube-proxy watches a canary chain for a
    /// wipe only; this also sees one flushed `KUBE-SEP-` chain). On
    /// iptables-nft an unchanged ruleset generation answers without
    /// reading anything; otherwise one netlink rule dump per table
    /// (legacy: one `iptables-save`), and no such read sooner than 19
    /// times the last one's duration after it (at most 5% of a core).
    /// Returns the first difference.
    /// Check by hand: `iptables-save -t nat | grep -c '^-A KUBE-SERVICES '`.
    async fn drift(&mut self) -> Result<Option<String>, ProxierError> {
        let Some(w) = &self.written else {
            return Ok(None);
        };
        let generation = self
            .ipt
            .generation()
            .await
            .map_err(|e| self.err("reading the nf_tables generation", e))?;
        if generation.is_some() && generation == self.verified_gen {
            return Ok(None);
        }
        let start = std::time::Instant::now();
        if self.next_check.is_some_and(|t| start < t) {
            return Ok(None);
        }
        let jumps = jump_rules(&self.cfg);
        for table in ["filter", "nat"] {
            let (fixed, services) = if table == "filter" {
                (&w.ruleset.filter, None)
            } else {
                (&w.ruleset.nat, Some(&w.ruleset.services))
            };
            let chains: Vec<(&str, &str)> = fixed
                .iter()
                .map(|(c, b)| (*c, b.as_str()))
                .chain(
                    services
                        .into_iter()
                        .flat_map(|s| s.values().flat_map(|f| f.chains())),
                )
                .collect();
            let names: Vec<&str> = chains.iter().map(|(c, _)| *c).collect();
            let census = self
                .ipt
                .census(table, &names, builtin_chains(table))
                .await
                .map_err(|e| self.err(&format!("reading table {table}"), e))?;
            let jumps: Vec<(&str, &str)> = jumps
                .iter()
                .filter(|(t, _, _)| *t == table)
                .map(|(_, from, rule)| (*from, *rule))
                .collect();
            if let Some(found) = census_drift(table, &census, chains.iter().copied(), &jumps) {
                return Ok(Some(found));
            }
        }
        self.verified_gen = generation;
        self.next_check = Some(start + start.elapsed() * self.check_spacing);
        Ok(None)
    }

    /// The services to write in this sync if a large first sync is being
    /// written in parts (and what is still to come), else `None`.
    async fn next_part(
        &mut self,
        req: &SyncRequest,
    ) -> Result<Option<(proxier_core::Snapshot, Option<String>)>, ProxierError> {
        if self.parts.is_none() {
            if self.written.is_some() || self.part_chains == usize::MAX {
                return Ok(None);
            }
            let want = parts::chains(&req.snapshot);
            if want <= self.part_chains {
                return Ok(None);
            }
            // `nft list chains` / `iptables-save -t nat`: a restart finds
            // the old ruleset serving, and replaces it in one restore.
            let held = self
                .ipt
                .list_chains("nat")
                .await
                .map_err(|e| self.err("listing the chains of table nat", e))?
                .iter()
                .filter(|c| names::is_service_chain(c))
                .count();
            if held >= self.part_chains {
                tracing::info!(backend = %self.name, chains = want, held, "large cluster, and the kernel already serves a ruleset of this size: replacing it in one restore");
                return Ok(None);
            }
            tracing::warn!(
                backend = %self.name,
                chains = want,
                part = self.part_chains,
                "large cluster: iptables-restore time grows with the square of the nat chains \
                 (measured on iptables-nft, kube-proxy's layout: 10,000 services x 10 endpoints \
                 21 s, 20,000 x 10 94 s, 50,000 x 10 over 600 s); writing in parts, kube-system \
                 first, each serving as it commits. Above about 10,000 services consider \
                 --proxy-mode nftables (10,000 x 10 in 5.4 s here)"
            );
            self.parts = Some(Parts::default());
        }
        let p = self.parts.as_mut().expect("parts");
        let (snap, more) = p.next(&req.snapshot, self.part_chains);
        if more.is_none() {
            self.parts = None;
        }
        Ok(Some((snap, more)))
    }

    /// Deletes the stale UDP and SCTP flows: the change set's targeted
    /// deletes and the reconciler, in one dump. A failure is logged and
    /// does not fail the sync (the rules are in place).
    async fn clear_conntrack(&self, req: &SyncRequest) {
        if self.cfg.family != req.snapshot.family {
            return;
        }
        // Service flows are DNATed by our rules: the kernel dumps only
        // those for the reconciler (see `StaleFlows::dnat_only`).
        let stale = StaleFlows::from_changes(req)
            .reconcile(&req.snapshot, &self.cfg.node_ips)
            .dnat_only();
        match clean_stale(&*self.ct, &stale).await {
            Ok(r) if r.deleted > 0 => {
                tracing::debug!(backend = %self.name, deleted = r.deleted, seen = r.seen, "stale conntrack flows deleted")
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(backend = %self.name, error = %proxier_core::ErrorChain(&e), "conntrack cleanup failed")
            }
        }
    }
}

fn ports_of<'a>(
    r: &'a Ruleset,
    nn: &'a proxier_core::NamespacedName,
) -> impl Iterator<Item = &'a Arc<crate::render::Fragment>> + 'a {
    let first = proxier_core::ServicePortName {
        service: nn.clone(),
        port: Arc::from(""),
        protocol: proxier_core::Protocol::Tcp,
    };
    r.services
        .range(first..)
        .take_while(move |(k, _)| &k.service == nn)
        .map(|(_, v)| v)
}

#[async_trait]
impl Proxier for IptablesProxier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        if req.snapshot.family != self.cfg.family {
            return Err(ProxierError::new(
                self.name.clone(),
                format!(
                    "snapshot is {}, this proxier is {}",
                    req.snapshot.family.as_str(),
                    self.cfg.family.as_str()
                ),
            ));
        }
        let mut full = req.full || self.need_full || req.changes.node_changed;
        let mut repaired = None;
        if req.verify && !full {
            match self.drift().await {
                Ok(Some(found)) => {
                    full = true;
                    repaired = Some(found);
                }
                Ok(None) => {}
                Err(e) => {
                    self.need_full = true;
                    return Err(e);
                }
            }
        }
        // A large first sync is written in parts (see `crate::parts`).
        let part = match self.next_part(req).await {
            Ok(p) => p,
            Err(e) => {
                self.need_full = true;
                return Err(e);
            }
        };
        let incomplete = part.as_ref().and_then(|(_, more)| more.clone());
        if part.is_some() {
            full = true;
        }
        let snapshot = part.as_ref().map_or(&req.snapshot, |(s, _)| s);
        let prev = match &self.written {
            Some(w) if !full => {
                if req.changes.is_empty() {
                    // Nothing to write; the reconciler still looks for
                    // flows made behind our back.
                    self.clear_conntrack(req).await;
                    let (f, n) = w.ruleset.rule_counts();
                    return Ok(SyncStats {
                        objects: f + n,
                        written: 0,
                        full: false,
                        repaired,
                        iptables_rules: vec![("filter", f, 0), ("nat", n, 0)],
                        not_programmed: Vec::new(),
                        incomplete: None,
                    });
                }
                if w.ruleset.large_cluster != is_large_cluster(&self.cfg, snapshot) {
                    full = true;
                }
                Some(&w.ruleset)
            }
            _ => {
                full = true;
                None
            }
        };
        let new = match prev {
            Some(prev) if !full => {
                Ruleset::render_changed(&self.cfg, snapshot, prev, &req.changes.updated_services)
            }
            _ => Ruleset::render(&self.cfg, snapshot),
        };
        for e in &new.errors {
            tracing::error!(backend = %self.name, error = %e, "service skipped");
        }
        let result = async {
            let plan = if full {
                self.sysctls()?;
                self.plan_full(&new).await?
            } else {
                self.plan_partial(
                    &self.written.as_ref().expect("partial").ruleset,
                    &new,
                    &req.changes.updated_services,
                )
            };
            self.apply(&plan).await?;
            Ok::<Plan, ProxierError>(plan)
        }
        .await;
        match result {
            Ok(plan) => {
                let lines = plan.lines;
                let rules_in = |p: &Option<(String, bool)>| {
                    p.as_ref().map_or(0, |(payload, _)| {
                        payload
                            .lines()
                            .filter(|l| l.starts_with("-A ") || l.starts_with("-I "))
                            .count()
                    })
                };
                let (wf, wn) = (rules_in(&plan.filter), rules_in(&plan.nat));
                if self.keep_payloads {
                    self.last = [("filter", plan.filter), ("nat", plan.nat)]
                        .into_iter()
                        .filter_map(|(t, p)| p.map(|(payload, noflush)| (t, payload, noflush)))
                        .collect();
                }
                // The next part is the next full sync.
                self.need_full = incomplete.is_some();
                self.verified_gen = None;
                let (f, n) = new.rule_counts();
                self.written = Some(Written { ruleset: new });
                self.clear_conntrack(req).await;
                Ok(SyncStats {
                    objects: f + n,
                    written: lines,
                    full,
                    repaired,
                    iptables_rules: vec![("filter", f, wf), ("nat", n, wn)],
                    not_programmed: Vec::new(),
                    incomplete,
                })
            }
            Err(e) => {
                // The restore is atomic per table: what was written before
                // is still in force. Only a full sync is safe from here.
                self.need_full = true;
                Err(e)
            }
        }
    }

    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        for table in ["filter", "nat"] {
            let TableState {
                chains,
                delete_jumps,
                ..
            } = self.read_table(table, true).await?;
            let owned: Vec<&String> = chains
                .iter()
                .filter(|c| names::is_owned_chain(table, c))
                .collect();
            if owned.is_empty() && delete_jumps.is_empty() {
                continue;
            }
            let payload = if owned.len() > self.flush_threshold {
                (self.full_flush(table, &[], &[], false).await?, false)
            } else {
                let mut out = format!("*{table}\n");
                for c in &owned {
                    let _ = writeln!(out, ":{c} - [0:0]");
                }
                for l in &delete_jumps {
                    out.push_str(l);
                    out.push('\n');
                }
                for c in &owned {
                    let _ = writeln!(out, "-X {c}");
                }
                out.push_str("COMMIT\n");
                (out, true)
            };
            self.ipt
                .restore(table, &payload.0, payload.1)
                .await
                .map_err(|e| self.err(&format!("cleaning table {table}"), e))?;
        }
        self.written = None;
        self.need_full = true;
        Ok(())
    }
}
