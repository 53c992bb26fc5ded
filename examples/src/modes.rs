//! One place that builds a backend per mode from merged [`Settings`]
//! (the `proxier` binary and every mode's binary use it), and kube-proxy's
//! `--cleanup`, which removes what every mode could have left.

use std::net::IpAddr;
use std::sync::Arc;

use backend_userspace::{DataPath, Direct, Portal, Relay, UserspaceProxier};
use ipnet::IpNet;
use proxier_core::{IpFamily, Proxier};
use proxier_netfilter::{ConntrackNetlink, Iptables, IptablesCmd, ProcSys, Variant};

use crate::cli::{Cli, Mode, Settings};

/// An error that keeps its cause chain (printed with
/// [`proxier_core::ErrorChain`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the backends of one mode; holds what the families share.
#[derive(Debug, Clone)]
pub struct Factory {
    cli: Cli,
    /// The userspace data path, one for both families so their counters
    /// add up.
    data: DataPath,
    /// [`Factory::iptables_part_chains`].
    iptables_part_chains: Option<usize>,
}

/// What was being done when `source` failed, with the source kept.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Context {
    /// What was being done.
    pub what: String,
    /// Why it failed.
    #[source]
    pub source: BoxError,
}

/// The node's addresses of `family` (rtnetlink).
pub async fn node_ips(family: IpFamily) -> Result<Vec<IpAddr>, BoxError> {
    Ok(proxier_netfilter::node_addresses(None)
        .await
        .map_err(|e| Context {
            what: "reading the node's addresses".into(),
            source: Box::new(e),
        })?
        .into_iter()
        .filter(|ip| family.matches(ip))
        .collect())
}

/// The node-port CIDRs of a family: `--nodeport-addresses`, or for
/// `primary` the node's first global address of the family (the Node
/// object's addresses are not consulted).
pub fn node_port_cidrs(s: &Settings, node_ips: &[IpAddr]) -> Vec<IpNet> {
    if s.nodeport_primary {
        return node_ips
            .iter()
            .find(|ip| proxier_netfilter::is_global(ip))
            .map(|ip| vec![IpNet::from(*ip)])
            .unwrap_or_default();
    }
    s.nodeport_addresses.clone()
}

fn iptables_cmd_sync(family: IpFamily, variant: &str) -> Option<IptablesCmd> {
    match variant {
        "nft" => Some(IptablesCmd::new(family, Variant::Nft)),
        "legacy" => Some(IptablesCmd::new(family, Variant::Legacy)),
        _ => None,
    }
}

/// What the factory reads of the node before it builds a family's
/// backend ([`Factory::node`]); a test bed or a bench gives its own.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node's addresses of the family (`ip -o addr`).
    pub ips: Vec<IpAddr>,
    /// The iptables variant: `--iptables-variant`, else what
    /// `iptables --version` reports.
    pub variant: Variant,
}

impl Factory {
    /// A factory for the parsed command line.
    pub fn new(cli: &Cli) -> Result<Factory, String> {
        let u = &cli.userspace;
        let relay = Relay::parse(&u.relay).ok_or_else(|| {
            format!(
                "--relay {:?}: expected copy, copy:BYTES, splice or splice:BYTES (BYTES ≥ 4096)",
                proxier_core::escape(&u.relay)
            )
        })?;
        Ok(Factory {
            cli: cli.clone(),
            data: DataPath {
                relay,
                udp_idle_timeout: u.udp_timeout,
                max_udp_flows: u.max_udp_flows,
                ..DataPath::default()
            },
            iptables_part_chains: None,
        })
    }

    /// The factory and merged settings of `proxier ARGS…` (kube-proxy's
    /// flags, `--config` included), as the binary would build them: how
    /// the behaviour suite and the modes bench get each mode's backend.
    pub fn from_flags(args: &[&str]) -> Result<(Factory, Settings), BoxError> {
        let cli = Cli::parse_from_args(
            "proxier",
            "",
            std::iter::once("proxier").chain(args.iter().copied()),
        )?;
        let settings = cli.settings(None)?;
        Ok((Factory::new(&cli)?, settings))
    }

    /// iptables mode's first full sync into a kernel holding fewer
    /// chains is written in parts of this many chains
    /// (`IptablesProxier::with_part_size`); `usize::MAX` is one restore.
    /// Not a kube-proxy flag: for benches that compare one write per mode.
    pub fn iptables_part_chains(mut self, chains: usize) -> Factory {
        self.iptables_part_chains = Some(chains);
        self
    }

    /// Adds the mode's own metrics to `/metrics` (once, however many
    /// families run).
    pub fn register_metrics(&self, mode: Mode, m: &proxier_core::Metrics) {
        if mode == Mode::Userspace {
            self.data.register_metrics(m);
        }
    }

    /// Reads what a backend of `family` needs of the node: its addresses
    /// (rtnetlink) and the iptables variant.
    pub async fn node(&self, family: IpFamily) -> Result<Node, BoxError> {
        let variant = match iptables_cmd_sync(family, &self.cli.iptables.iptables_variant) {
            Some(c) => c.variant(),
            None => IptablesCmd::detect(family).await?.variant(),
        };
        Ok(Node {
            ips: node_ips(family).await?,
            variant,
        })
    }

    /// One family's backend of `s.mode`, on this node.
    pub async fn build(&self, s: &Settings) -> Result<Box<dyn Proxier>, BoxError> {
        let node = self.node(s.family).await?;
        self.build_on(s, &node)
    }

    /// One family's backend of `s.mode` on a node already read (a test
    /// bed's): the one place a backend is configured from settings. Opens
    /// its sockets in the current network namespace; must run inside a
    /// tokio runtime.
    pub fn build_on(&self, s: &Settings, node: &Node) -> Result<Box<dyn Proxier>, BoxError> {
        match s.mode {
            Mode::Iptables => self.iptables(s, node),
            Mode::Ipvs => self.ipvs(s, node),
            Mode::Nftables => self.nftables(s, node),
            Mode::Userspace => self.userspace(s, node),
        }
    }

    fn iptables(&self, s: &Settings, node: &Node) -> Result<Box<dyn Proxier>, BoxError> {
        let cfg = backend_iptables::Config {
            family: s.family,
            masquerade_bit: s.masquerade_bit,
            masquerade_all: s.masquerade_all,
            local_detector: s.detector()?,
            node_port_addresses: node_port_cidrs(s, &node.ips),
            node_ips: node.ips.clone(),
            localhost_node_ports: s.localhost_node_ports,
            ..backend_iptables::Config::default()
        };
        let mut p = backend_iptables::IptablesProxier::new(
            cfg,
            Arc::new(IptablesCmd::new(s.family, node.variant)),
            Arc::new(ConntrackNetlink::new()?),
            Arc::new(ProcSys),
        )?;
        if let Some(chains) = self.iptables_part_chains {
            p = p.with_part_size(chains);
        }
        Ok(Box::new(p))
    }

    fn ipvs(&self, s: &Settings, node: &Node) -> Result<Box<dyn Proxier>, BoxError> {
        let mut cfg = backend_ipvs::Config::new(s.family);
        cfg.scheduler = s.ipvs.scheduler.clone();
        cfg.strict_arp = s.ipvs.strict_arp;
        cfg.node_port_addresses = node_port_cidrs(s, &node.ips);
        cfg.exclude_cidrs = s.ipvs.exclude_cidrs.clone();
        if let Some(m) = s.ipvs.external_local_mark_mask {
            cfg.external_local_mark_mask = m;
        }
        let (tcp, tcp_fin, udp) = s.ipvs.timeouts;
        cfg.timeouts = backend_ipvs::Timeouts { tcp, tcp_fin, udp };
        cfg.rules.masquerade_bit = s.masquerade_bit;
        cfg.rules.masquerade_all = s.masquerade_all;
        cfg.rules.local_detector = s.detector()?;
        // The library names its field; the command line names the flag.
        cfg.validate().map_err(|e| match e.field {
            "scheduler" => format!("--ipvs-scheduler: {} (got {:?})", e.reason, e.value),
            "external_local_mark_mask" => format!(
                "--ipvs-external-local-mark-mask: {} (got {})",
                e.reason, e.value
            ),
            _ => e.to_string(),
        })?;
        let kernel = backend_ipvs::Kernel::real_with(IptablesCmd::new(s.family, node.variant))?;
        Ok(Box::new(backend_ipvs::IpvsProxier::new(cfg, kernel)?))
    }

    fn nftables(&self, s: &Settings, node: &Node) -> Result<Box<dyn Proxier>, BoxError> {
        let mut cfg = backend_nftables::Config::new(s.family);
        cfg.masquerade.masquerade_bit = s.masquerade_bit;
        cfg.masquerade.masquerade_all = s.masquerade_all;
        cfg.masquerade.local_detector = s.detector()?;
        cfg.node_port_addresses = node_port_cidrs(s, &node.ips);
        cfg.service_cidrs = self
            .cli
            .nftables
            .service_cluster_ip_range
            .iter()
            .copied()
            .filter(|n| s.family.matches(&n.addr()))
            .collect();
        cfg.node_ips = node.ips.clone();
        let nft = backend_nftables::NfTablesNetlink::new()?;
        let ct = ConntrackNetlink::new()?;
        Ok(Box::new(backend_nftables::NftablesProxier::new(
            cfg,
            Arc::new(nft),
            Arc::new(ct),
        )?))
    }

    fn userspace(&self, s: &Settings, node: &Node) -> Result<Box<dyn Proxier>, BoxError> {
        let u = &self.cli.userspace;
        let mode = if u.direct {
            // Node ports on the --nodeport-addresses host addresses, or on
            // every address.
            let cidrs = node_port_cidrs(s, &node.ips);
            let mut node_addresses: Vec<IpAddr> = cidrs
                .iter()
                .filter(|n| n.prefix_len() == n.max_prefix_len())
                .map(|n| n.addr())
                .collect();
            if cidrs.is_empty() {
                node_addresses.push(s.family.unspecified());
            } else if node_addresses.len() != cidrs.len() {
                return Err(
                    "--direct takes host addresses (/32, /128) in --nodeport-addresses".into(),
                );
            }
            backend_userspace::Mode::Direct(Direct {
                cluster_ips: u.direct_cluster_ips,
                external_ips: true,
                node_addresses,
                freebind: true,
            })
        } else {
            backend_userspace::Mode::Portal(Portal {
                iptables: Arc::new(IptablesCmd::new(s.family, node.variant)),
                conntrack: Arc::new(ConntrackNetlink::new()?),
                node_port_addresses: s.nodeport_addresses.clone(),
            })
        };
        Ok(Box::new(UserspaceProxier::new(backend_userspace::Config {
            family: s.family,
            mode,
            data: self.data.clone(),
        })))
    }
}

/// Whether `prog` is on `PATH`.
fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
}

/// Empties every chain any mode of proxier writes, in `nat` and `filter`
/// (one `iptables-restore --noflush` per table, `:CHAIN - [0:0]` lines).
async fn flush_every_mode(ipt: &IptablesCmd) -> Result<(), BoxError> {
    use proxier_netfilter::Iptables;
    for table in ["nat", "filter"] {
        let listing = ipt
            .list_table(table, proxier_netfilter::builtin_chains(table), true)
            .await?;
        let ours: Vec<String> = listing
            .chains
            .unwrap_or_default()
            .into_iter()
            .filter(|c| proxier_netfilter::chains::is_any_mode_chain(c))
            .collect();
        if ours.is_empty() {
            continue;
        }
        let mut payload = format!("*{table}\n");
        for c in &ours {
            payload.push_str(&format!(":{c} - [0:0]\n"));
        }
        payload.push_str("COMMIT\n");
        ipt.restore(table, &payload, true).await?;
    }
    Ok(())
}

/// kube-proxy's `--cleanup`: removes what every mode of proxier could
/// have left in `families` — iptables mode's chains on both variants,
/// IPVS mode's virtual servers, `kube-ipvs0`, ipsets and companion rules,
/// nftables mode's `kube-proxy` tables, userspace portal chains — and
/// nothing else. A mode whose kernel support or tool is missing cannot
/// have left anything and is skipped (logged at debug). Returns what was
/// cleaned and the failures, each naming its mode.
pub async fn cleanup_all(
    s: &Settings,
    families: &[IpFamily],
) -> (Vec<String>, Vec<(String, BoxError)>) {
    let mut done = Vec::new();
    let mut failed: Vec<(String, BoxError)> = Vec::new();
    let mut record = |what: String, r: Result<(), BoxError>| match r {
        Ok(()) => done.push(what),
        Err(e) => failed.push((what, e)),
    };
    for &family in families {
        let prefix = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        for variant in ["nft", "legacy"] {
            let label = |m: &str| format!("{m} ({}, {variant})", family.as_str());
            if !on_path(&format!("{prefix}-{variant}-restore")) {
                tracing::debug!(
                    variant,
                    family = family.as_str(),
                    "no {prefix}-{variant}-restore: nothing of that variant to remove"
                );
                continue;
            }
            let cmd = || iptables_cmd_sync(family, variant).expect("variant");
            // Modes share chain names (KUBE-MARK-MASQ), so one mode's chain
            // may be referenced by another's: every chain of ours is
            // emptied first, then each mode deletes its own.
            if let Err(e) = flush_every_mode(&cmd()).await {
                record(label("flushing"), Err(e));
                continue;
            }
            // IPVS first: its companion rules jump to chains iptables mode
            // shares (KUBE-MARK-MASQ). A kernel without IPVS (or a node
            // without ipset) cannot have any of it.
            let ipvs = if on_path("ipset") {
                backend_ipvs::Kernel::real_with(cmd()).ok()
            } else {
                None
            };
            match ipvs {
                Some(kernel) => record(
                    label("ipvs"),
                    cleaned(|| {
                        Ok(Box::new(backend_ipvs::IpvsProxier::new(
                            backend_ipvs::Config::new(family),
                            kernel,
                        )?))
                    })
                    .await,
                ),
                None => tracing::debug!("no IPVS here: nothing of ipvs mode to remove"),
            }
            record(
                label("userspace"),
                cleaned(|| {
                    Ok(Box::new(UserspaceProxier::new(backend_userspace::Config {
                        family,
                        mode: backend_userspace::Mode::Portal(Portal {
                            iptables: Arc::new(cmd()),
                            conntrack: Arc::new(ConntrackNetlink::new()?),
                            node_port_addresses: Vec::new(),
                        }),
                        data: DataPath::default(),
                    })))
                })
                .await,
            );
            record(
                label("iptables"),
                cleaned(|| {
                    let cfg = backend_iptables::Config {
                        family,
                        ..backend_iptables::Config::default()
                    };
                    Ok(Box::new(backend_iptables::IptablesProxier::new(
                        cfg,
                        Arc::new(cmd()),
                        Arc::new(ConntrackNetlink::new()?),
                        Arc::new(ProcSys),
                    )?))
                })
                .await,
            );
        }
        record(
            format!("nftables ({})", family.as_str()),
            cleaned(|| {
                let mut cfg = backend_nftables::Config::new(family);
                cfg.masquerade.masquerade_bit = s.masquerade_bit;
                Ok(Box::new(backend_nftables::NftablesProxier::new(
                    cfg,
                    Arc::new(backend_nftables::NfTablesNetlink::new()?),
                    Arc::new(ConntrackNetlink::new()?),
                )?))
            })
            .await,
        );
    }
    (done, failed)
}

/// Builds a backend with `make` and runs its cleanup.
async fn cleaned(
    make: impl FnOnce() -> Result<Box<dyn Proxier>, BoxError>,
) -> Result<(), BoxError> {
    make()?.cleanup().await?;
    Ok(())
}
