//! The command line: kube-proxy's flags by their own names and Go syntax
//! ([`crate::flags`]), ours beside them, and [`Cli::settings`], which
//! merges them over a `KubeProxyConfiguration` file ([`crate::config`])
//! and kube-proxy's defaults into one [`Settings`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, FromArgMatches, Parser};
use ipnet::IpNet;
use proxier_core::IpFamily;
use proxier_netfilter::ConntrackTuning;

use crate::config::{self, KubeProxyConfiguration, nonempty, nonzero_duration};
use crate::flags::{self, parse_duration, parse_go_bool};

pub use crate::flags::parse_duration as parse_go_duration;

/// A proxy mode (`--proxy-mode`, the configuration's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// kube-proxy's iptables mode (its default on Linux).
    Iptables,
    /// kube-proxy's IPVS mode.
    Ipvs,
    /// kube-proxy's nftables mode.
    Nftables,
    /// kube-proxy's userspace mode (gone from kube-proxy since v1.26).
    Userspace,
}

impl Mode {
    /// Every mode, in the order `--cleanup` visits them.
    pub const ALL: [Mode; 4] = [Mode::Iptables, Mode::Ipvs, Mode::Nftables, Mode::Userspace];

    /// The name kube-proxy gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Ipvs => "ipvs",
            Mode::Nftables => "nftables",
            Mode::Userspace => "userspace",
        }
    }

    /// Parses a mode name; empty is kube-proxy's default (iptables).
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "" | "iptables" => Ok(Mode::Iptables),
            "ipvs" => Ok(Mode::Ipvs),
            "nftables" => Ok(Mode::Nftables),
            "userspace" => Ok(Mode::Userspace),
            "kernelspace" => Err("\"kernelspace\" is kube-proxy's Windows mode; on Linux: iptables, ipvs, nftables or userspace".into()),
            _ => Err(format!(
                "unknown proxy mode {:?} (iptables, ipvs, nftables, userspace)",
                proxier_core::escape(s)
            )),
        }
    }
}

/// Every flag: kube-proxy's (by its names) and ours.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxier",
    version,
    about = "A drop-in for kube-proxy: its flags and KubeProxyConfiguration, modes iptables, ipvs, nftables and userspace",
    after_help = "Go-style flags work as in kube-proxy: --flag, --flag=true|false, --v=2, durations such as 1m30s. \
A kube-proxy flag that changes nothing here (e.g. --oom-score-adj) is accepted with one warning naming it. \
nftables mode has no localhost node ports, as in kube-proxy."
)]
pub struct Cli {
    /// Flags every mode takes.
    #[command(flatten)]
    pub common: Common,
    /// iptables mode.
    #[command(flatten)]
    pub iptables: IptablesArgs,
    /// IPVS mode.
    #[command(flatten)]
    pub ipvs: IpvsArgs,
    /// nftables mode.
    #[command(flatten)]
    pub nftables: NftablesArgs,
    /// userspace mode.
    #[command(flatten)]
    pub userspace: UserspaceArgs,
    /// Local-traffic detection.
    #[command(flatten)]
    pub local: LocalDetect,
    /// conntrack settings.
    #[command(flatten)]
    pub conntrack: ConntrackArgs,
    /// The ignored kube-proxy flags given, each with why.
    #[arg(skip)]
    pub ignored: Vec<(&'static str, &'static str)>,
    /// kube-proxy flags given beside `--config` (kube-proxy ignores them;
    /// here they override the file).
    #[arg(skip)]
    pub beside_config: Vec<String>,
}

/// Flags every mode takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Which proxy mode to use: iptables (default), ipvs, nftables, or
    /// userspace (ours; gone from kube-proxy since v1.26).
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,
    /// A YAML file or directory of Service, EndpointSlice and Node objects,
    /// re-read on change (instead of the Kubernetes API; not a kube-proxy flag).
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// A kubeconfig for the Kubernetes API (default: KUBECONFIG,
    /// ~/.kube/config or in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL, overriding the kubeconfig's.
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,
    /// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Write the default configuration to this file and exit.
    #[arg(long, value_name = "FILE")]
    pub write_config_to: Option<PathBuf>,
    /// This node's name [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,
    /// A specific IP here makes its family the primary one (kube-proxy's
    /// node primary IP) [default: 0.0.0.0].
    #[arg(long, value_name = "IP")]
    pub bind_address: Option<IpAddr>,
    /// Node-port addresses: CIDRs of either family, comma-separated, or
    /// `primary` (the node's primary address of each family) [default: all].
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// The pod CIDRs, at most one per family, for local-traffic detection.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// Masquerade all traffic sent to service cluster IPs [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub masquerade_all: Option<bool>,
    /// The fwmark bit for masquerading, 0..=31 [default: 14].
    #[arg(
        long = "iptables-masquerade-bit",
        visible_alias = "masquerade-bit",
        value_name = "N"
    )]
    pub masquerade_bit: Option<u8>,
    /// The periodic sync in iptables, nftables and userspace modes [default: 30s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub iptables_sync_period: Option<Duration>,
    /// The least interval between syncs in iptables, nftables and
    /// userspace modes [default: 1s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub iptables_min_sync_period: Option<Duration>,
    /// The periodic sync in ipvs mode [default: 30s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub ipvs_sync_period: Option<Duration>,
    /// The least interval between syncs in ipvs mode [default: 1s].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub ipvs_min_sync_period: Option<Duration>,
    /// The periodic sync of every mode (ours; overrides the per-mode flags).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub sync_period: Option<Duration>,
    /// The least interval between syncs of every mode (ours).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub min_sync_period: Option<Duration>,
    /// Health server address (/healthz, /livez); an IP alone takes port
    /// 10256; empty disables [default: 0.0.0.0:10256].
    #[arg(long, value_name = "IP:PORT")]
    pub healthz_bind_address: Option<String>,
    /// Metrics server address (/metrics); empty disables [default: 127.0.0.1:10249].
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_bind_address: Option<String>,
    /// The health server's port (deprecated in kube-proxy; 0 disables).
    #[arg(long, value_name = "PORT")]
    pub healthz_port: Option<u16>,
    /// The metrics server's port (deprecated in kube-proxy; 0 disables).
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// A health or metrics port that cannot be bound is fatal [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub bind_address_hard_fail: Option<bool>,
    /// Feature gates, Name=true|false,... (checked; none changes behaviour here).
    #[arg(long, value_name = "GATES")]
    pub feature_gates: Option<String>,
    /// Log verbosity, klog's levels: 0-2 info, 3-4 debug, 5+ trace
    /// [default: RUST_LOG, else info].
    #[arg(short = 'v', long = "v", value_name = "N")]
    pub verbosity: Option<u32>,
    /// Per-module verbosity: module=N,... (modules are tracing targets,
    /// e.g. backend_iptables=4).
    #[arg(long, value_name = "LIST")]
    pub vmodule: Option<String>,
    /// Proxy one IP family only (ours). Default: both, as kube-proxy does:
    /// the primary family is the node's (IPv4 unless the node has IPv6
    /// addresses only), and the other one is added when this mode and the
    /// kernel support it (the log says why not otherwise).
    #[arg(long, value_name = "ipv4|ipv6", value_parser = parse_family)]
    pub ip_family: Option<IpFamily>,
    /// Accept endpoint addresses in 127.0.0.0/8 and ::1, which the API
    /// server refuses (ours): for local testing, as the bundled demo
    /// manifest does.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub allow_loopback_endpoints: Option<bool>,
    /// Sync once and exit, 0 or non-zero with the error (ours).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub once: Option<bool>,
    /// Remove what every mode of proxier could have left (both families,
    /// both iptables variants) and exit.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub cleanup: Option<bool>,
    /// Apply the settings that need full privileges (conntrack sysctls)
    /// and exit.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub init_only: Option<bool>,
}

/// iptables mode's flags.
#[derive(Debug, Clone, Args)]
pub struct IptablesArgs {
    /// iptables variant (ours): auto (what `iptables --version` reports), nft, legacy.
    #[arg(long, default_value = "auto", value_parser = ["auto", "nft", "legacy"])]
    pub iptables_variant: String,
    /// Accept node ports on 127.0.0.1 (iptables mode, IPv4; sets
    /// route_localnet) [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub iptables_localhost_nodeports: Option<bool>,
}

/// IPVS mode's flags.
#[derive(Debug, Clone, Args)]
pub struct IpvsArgs {
    /// The IPVS scheduler: rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh [default: rr].
    #[arg(long, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,
    /// Stop answering ARP for service addresses on kube-ipvs0
    /// (arp_ignore=1, arp_announce=2) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub ipvs_strict_arp: Option<bool>,
    /// Virtual servers in these CIDRs are never touched (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
    pub ipvs_exclude_cidrs: Vec<IpNet>,
    /// Packet-mark bits (ours) of the firewall-mark virtual servers that
    /// send traffic from pods and the node to an externalTrafficPolicy:
    /// Local service's external addresses to every endpoint, as iptables
    /// mode does; contiguous, apart from the masquerade bit; 0: kube-proxy's
    /// IPVS semantics (local endpoints only) [default: 0x1fff].
    #[arg(long, value_name = "MASK", value_parser = crate::flags::parse_mark_mask)]
    pub ipvs_external_local_mark_mask: Option<u32>,
    /// Idle timeout of established TCP connections (0: the kernel's).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub ipvs_tcp_timeout: Option<Duration>,
    /// Timeout of TCP connections after FIN (0: the kernel's).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub ipvs_tcpfin_timeout: Option<Duration>,
    /// Timeout of UDP flows (0: the kernel's).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub ipvs_udp_timeout: Option<Duration>,
}

/// nftables mode's flags.
#[derive(Debug, Clone, Args)]
pub struct NftablesArgs {
    /// The service CIDRs (kube-apiserver's `--service-cluster-ip-range`;
    /// nftables mode): new connections to an unallocated cluster IP in
    /// them are rejected.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub service_cluster_ip_range: Vec<IpNet>,
}

/// userspace mode's flags.
#[derive(Debug, Clone, Args)]
pub struct UserspaceArgs {
    /// userspace: iptables portals (REDIRECT) send service traffic to the proxy (default).
    #[arg(long, conflicts_with = "direct")]
    pub portal: bool,
    /// userspace: no iptables; listen on external and LB IPs and on node ports directly.
    #[arg(long)]
    pub direct: bool,
    /// userspace, with --direct: also bind cluster IPs (IP_FREEBIND; the
    /// node must route them here).
    #[arg(long, requires = "direct")]
    pub direct_cluster_ips: bool,
    /// userspace: idle timeout of a UDP flow (kube-proxy's old userspace flag).
    #[arg(long, value_parser = parse_duration, default_value = "250ms", value_name = "DUR")]
    pub udp_timeout: Duration,
    /// userspace: the most UDP flows per service port.
    #[arg(long, default_value_t = 16384, value_name = "N")]
    pub max_udp_flows: usize,
    /// userspace: how TCP bytes are moved, copy[:BYTES] or splice[:BYTES].
    #[arg(long, default_value = "copy", value_name = "HOW")]
    pub relay: String,
}

/// kube-proxy's conntrack flags.
#[derive(Debug, Clone, Args)]
pub struct ConntrackArgs {
    /// Conntrack entries per CPU (0 leaves the limit) [default: 32768].
    #[arg(long, value_name = "N")]
    pub conntrack_max_per_core: Option<u32>,
    /// The least nf_conntrack_max [default: 131072].
    #[arg(long, value_name = "N")]
    pub conntrack_min: Option<u32>,
    /// Idle timeout of established TCP flows (0 leaves it) [default: 24h0m0s].
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub conntrack_tcp_timeout_established: Option<Duration>,
    /// Timeout of TCP flows in CLOSE_WAIT [default: 1h0m0s].
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub conntrack_tcp_timeout_close_wait: Option<Duration>,
    /// Set nf_conntrack_tcp_be_liberal=1 [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub conntrack_tcp_be_liberal: Option<bool>,
    /// Idle timeout of unreplied UDP flows (0 leaves it).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub conntrack_udp_timeout: Option<Duration>,
    /// Idle timeout of assured UDP flows (0 leaves it).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub conntrack_udp_timeout_stream: Option<Duration>,
}

/// `--detect-local-mode` and its companions.
#[derive(Debug, Clone, Args)]
pub struct LocalDetect {
    /// How pod traffic is told apart: ClusterCIDR or InterfaceNamePrefix
    /// [default: ClusterCIDR].
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,
    /// The interface prefix for --detect-local-mode=InterfaceNamePrefix.
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,
}

/// The IPVS settings after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsSettings {
    /// Scheduler.
    pub scheduler: String,
    /// Strict ARP.
    pub strict_arp: bool,
    /// Excluded CIDRs.
    pub exclude_cidrs: Vec<IpNet>,
    /// `--ipvs-external-local-mark-mask` (`None`: the library's default).
    pub external_local_mark_mask: Option<u32>,
    /// TCP, TCP FIN and UDP timeouts in seconds (0: the kernel's).
    pub timeouts: (u32, u32, u32),
}

/// Settings after the configuration file and the flags are merged.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The proxy mode.
    pub mode: Mode,
    /// Node name.
    pub node_name: String,
    /// Node-port CIDRs of `family` (empty: all).
    pub nodeport_addresses: Vec<IpNet>,
    /// Cluster CIDRs of `family`.
    pub cluster_cidr: Vec<IpNet>,
    /// Node-port CIDRs as given, of both families.
    pub all_nodeport_addresses: Vec<IpNet>,
    /// `nodePortAddresses: [primary]`.
    pub nodeport_primary: bool,
    /// Cluster CIDRs as given, of both families.
    pub all_cluster_cidr: Vec<IpNet>,
    /// Masquerade everything.
    pub masquerade_all: bool,
    /// Mark bit.
    pub masquerade_bit: u8,
    /// Minimum sync interval.
    pub min_sync_period: Duration,
    /// Periodic sync interval.
    pub sync_period: Duration,
    /// Health server (`None`: disabled).
    pub healthz_bind_address: Option<SocketAddr>,
    /// Metrics server (`None`: disabled).
    pub metrics_bind_address: Option<SocketAddr>,
    /// A port that cannot be bound is fatal.
    pub bind_address_hard_fail: bool,
    /// The family a backend is being built for ([`Settings::for_family`]).
    pub family: IpFamily,
    /// `--ip-family`, if one is forced.
    pub forced_family: Option<IpFamily>,
    /// The primary family, if `--bind-address` names one.
    pub primary_family: Option<IpFamily>,
    /// The kubeconfig (flag, else `clientConnection.kubeconfig`).
    pub kubeconfig: Option<PathBuf>,
    /// `--master`.
    pub master: Option<String>,
    /// Node ports on 127.0.0.1 (iptables mode).
    pub localhost_node_ports: bool,
    /// IPVS mode.
    pub ipvs: IpvsSettings,
    /// `detectLocalMode`, if given.
    pub detect_local_mode: Option<String>,
    /// `detectLocal.interfaceNamePrefix`.
    pub pod_interface_name_prefix: Option<String>,
    /// conntrack sysctls.
    pub conntrack: ConntrackTuning,
    /// Log verbosity (`--v`, `logging.verbosity`).
    pub verbosity: Option<u32>,
    /// Per-module verbosity.
    pub vmodule: Vec<(String, u32)>,
    /// Feature gates given.
    pub feature_gates: Vec<(String, bool)>,
    /// Fields of the file that change nothing here, with why.
    pub ignored_fields: Vec<(&'static str, &'static str)>,
}

impl Settings {
    /// These settings for one family's backend: `family` set, and the
    /// CIDR lists cut to that family (the flags may mix families, as
    /// kube-proxy's `--cluster-cidr` and `--nodeport-addresses` may).
    pub fn for_family(&self, family: IpFamily) -> Settings {
        let of = |v: &[IpNet]| -> Vec<IpNet> {
            v.iter()
                .copied()
                .filter(|n| family.matches(&n.addr()))
                .collect()
        };
        Settings {
            family,
            nodeport_addresses: of(&self.all_nodeport_addresses),
            cluster_cidr: of(&self.all_cluster_cidr),
            ..self.clone()
        }
    }

    /// The local-traffic detector of this family.
    pub fn detector(&self) -> Result<proxier_netfilter::LocalDetector, String> {
        use proxier_netfilter::LocalDetector;
        match self.detect_local_mode.as_deref() {
            None | Some("") | Some("ClusterCIDR") if !self.cluster_cidr.is_empty() => {
                Ok(LocalDetector::ClusterCidr(self.cluster_cidr.clone()))
            }
            None | Some("") | Some("ClusterCIDR") => Ok(LocalDetector::None),
            Some("InterfaceNamePrefix") => match &self.pod_interface_name_prefix {
                Some(p) if !p.is_empty() => Ok(LocalDetector::InterfacePrefix(p.clone())),
                _ => Err(
                    "--detect-local-mode=InterfaceNamePrefix needs --pod-interface-name-prefix"
                        .into(),
                ),
            },
            Some(m @ ("BridgeInterface" | "NodeCIDR")) => Err(format!(
                "--detect-local-mode: {m} is not supported here (ClusterCIDR, InterfaceNamePrefix)"
            )),
            Some(m) => Err(format!(
                "--detect-local-mode: unknown mode {:?} (ClusterCIDR, InterfaceNamePrefix)",
                proxier_core::escape(m)
            )),
        }
    }
}

fn parse_family(s: &str) -> Result<IpFamily, String> {
    match s {
        "ipv4" | "IPv4" | "4" => Ok(IpFamily::V4),
        "ipv6" | "IPv6" | "6" => Ok(IpFamily::V6),
        _ => Err(format!("unknown IP family {s:?} (ipv4 or ipv6)")),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

/// Flags whose value a `--config` file does not replace in kube-proxy
/// (hostname-override, the logging flags) or that are not configuration.
const NOT_CONFIG: &[&str] = &[
    "config",
    "write-config-to",
    "cleanup",
    "init-only",
    "hostname-override",
    "v",
    "vmodule",
    "help",
    "version",
];

impl Cli {
    /// Parses the process's arguments (`proxier` and each mode's binary),
    /// exiting with clap's message on a bad one. `name` and `about` name
    /// the binary in `--help`.
    pub fn parse_args(name: &'static str, about: &'static str) -> Cli {
        Self::parse_from_args(name, about, std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`Cli::parse_args`] over `args` (the first is the program).
    pub fn parse_from_args<I, T>(
        name: &'static str,
        about: &'static str,
        args: I,
    ) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::CommandFactory;
        let cmd = flags::with_ignored_flags(Cli::command().name(name).about(about));
        let m = cmd.try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&m)?;
        cli.ignored = flags::ignored_given(&m);
        if cli.common.config.is_some() {
            cli.beside_config = flags::KUBE_PROXY_FLAGS
                .iter()
                .filter(|f| !NOT_CONFIG.contains(&f.name))
                .filter(|f| matches!(f.support, flags::Support::Supported(_)))
                .filter(|f| {
                    m.ids().any(|id| {
                        id.as_str().replace('_', "-") == f.name
                            && m.value_source(id.as_str())
                                == Some(clap::parser::ValueSource::CommandLine)
                    }) || (f.name == "iptables-masquerade-bit"
                        && m.value_source("masquerade_bit")
                            == Some(clap::parser::ValueSource::CommandLine))
                })
                .map(|f| format!("--{}", f.name))
                .collect();
        }
        Ok(cli)
    }

    /// The mode: `fixed` (a mode's own binary), else `--proxy-mode`, else
    /// the file's `mode`, else iptables.
    pub fn mode(
        &self,
        fixed: Option<Mode>,
        file: Option<&KubeProxyConfiguration>,
    ) -> Result<Mode, String> {
        let flag = match &self.common.proxy_mode {
            Some(m) => Some(Mode::parse(m).map_err(|e| format!("--proxy-mode: {e}"))?),
            None => None,
        };
        let from_file = match file.and_then(|f| nonempty(&f.mode)) {
            Some(m) => Some(Mode::parse(m).map_err(|e| format!("--config: mode: {e}"))?),
            None => None,
        };
        match (fixed, flag) {
            (Some(f), Some(g)) if f != g => Err(format!(
                "--proxy-mode {}: this is the {} binary (use `proxier --proxy-mode {}`)",
                g.as_str(),
                f.as_str(),
                g.as_str()
            )),
            (Some(f), _) => Ok(f),
            (None, Some(g)) => Ok(g),
            (None, None) => Ok(from_file.unwrap_or(Mode::Iptables)),
        }
    }

    /// Merges flags over the configuration file (if any) over kube-proxy's
    /// defaults, and checks every value. `fixed` is the mode of a mode's
    /// own binary.
    pub fn settings(&self, fixed: Option<Mode>) -> Result<Settings, String> {
        let c = &self.common;
        let file = match &c.config {
            Some(p) => Some(KubeProxyConfiguration::read(p).map_err(|e| e.to_string())?),
            None => None,
        };
        let path = c
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let f = file.clone().unwrap_or_default();
        let mode = self.mode(fixed, file.as_ref())?;
        let ferr = |e: config::ConfigError| e.to_string();
        let ipt = f.iptables.clone().unwrap_or_default();
        let ipvs = f.ipvs.clone().unwrap_or_default();
        let nft = f.nftables.clone().unwrap_or_default();
        let ct = f.conntrack.clone().unwrap_or_default();

        let node_name = match &c.hostname_override {
            Some(h) => {
                let h = h.trim();
                if h.is_empty() {
                    return Err("--hostname-override: empty hostname-override is invalid".into());
                }
                h.to_lowercase()
            }
            None => nonempty(&f.hostname_override)
                .map(|h| h.trim().to_lowercase())
                .unwrap_or_else(host_name),
        };
        if !proxier_core::is_dns1123_subdomain(&node_name) {
            return Err(format!(
                "--hostname-override: {:?} is not a valid node name",
                proxier_core::escape(&node_name)
            ));
        }

        let (file_bit, file_all) = match mode {
            Mode::Nftables => (nft.masquerade_bit, nft.masquerade_all),
            _ => (ipt.masquerade_bit, ipt.masquerade_all),
        };
        let masquerade_bit = match c.masquerade_bit {
            Some(b) => b as i64,
            None => file_bit.map(i64::from).unwrap_or(14),
        };
        if !(0..=31).contains(&masquerade_bit) {
            return Err(format!(
                "--iptables-masquerade-bit: {masquerade_bit} is out of range 0..=31"
            ));
        }
        let masquerade_all = c.masquerade_all.or(file_all).unwrap_or(false);

        // Sync periods: kube-proxy's --iptables-* apply unless the mode is
        // ipvs, --ipvs-* only in ipvs mode; the file's section of the mode.
        let (flag_sync, flag_min, file_sync, file_min, sect) = match mode {
            Mode::Ipvs => (
                c.ipvs_sync_period,
                c.ipvs_min_sync_period,
                &ipvs.sync_period,
                &ipvs.min_sync_period,
                "ipvs",
            ),
            Mode::Nftables => (
                c.iptables_sync_period,
                c.iptables_min_sync_period,
                &nft.sync_period,
                &nft.min_sync_period,
                "nftables",
            ),
            _ => (
                c.iptables_sync_period,
                c.iptables_min_sync_period,
                &ipt.sync_period,
                &ipt.min_sync_period,
                "iptables",
            ),
        };
        let sync_period = match c.sync_period.or(flag_sync) {
            Some(d) => d,
            None => nonzero_duration(&path, &format!("{sect}.syncPeriod"), file_sync)
                .map_err(ferr)?
                .unwrap_or(Duration::from_secs(30)),
        };
        let min_sync_period = match c.min_sync_period.or(flag_min) {
            Some(d) => d,
            None => nonzero_duration(&path, &format!("{sect}.minSyncPeriod"), file_min)
                .map_err(ferr)?
                .unwrap_or(Duration::from_secs(1)),
        };
        if sync_period.is_zero() {
            return Err("--sync-period: must be greater than 0".into());
        }

        let bind = |flag: &Option<String>,
                    port: Option<u16>,
                    field: &str,
                    file_v: &Option<String>,
                    default: &str|
         -> Result<Option<SocketAddr>, String> {
            let default_port: u16 = default
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let mut addr = match flag {
                Some(s) => {
                    flags::parse_bind(s, default_port).map_err(|e| format!("--{field}: {e}"))?
                }
                None => match nonempty(file_v) {
                    Some(s) => Some(
                        flags::parse_bind(s, default_port)
                            .map_err(|e| format!("--config {path}: {}: {e}", camel(field)))?,
                    ),
                    None => Some(Some(
                        default.parse::<SocketAddr>().expect("default address"),
                    )),
                }
                .flatten(),
            };
            if let Some(p) = port {
                addr = if p == 0 {
                    None
                } else {
                    addr.map(|a| SocketAddr::new(a.ip(), p)).or_else(|| {
                        Some(SocketAddr::new(
                            default.parse::<SocketAddr>().expect("default").ip(),
                            p,
                        ))
                    })
                };
            }
            Ok(addr)
        };
        let healthz_bind_address = bind(
            &c.healthz_bind_address,
            c.healthz_port,
            "healthz-bind-address",
            &f.healthz_bind_address,
            "0.0.0.0:10256",
        )?;
        let metrics_bind_address = bind(
            &c.metrics_bind_address,
            c.metrics_port,
            "metrics-bind-address",
            &f.metrics_bind_address,
            "127.0.0.1:10249",
        )?;

        // Node-port addresses: CIDRs or the `primary` keyword.
        let np_items: Vec<String> = if !c.nodeport_addresses.is_empty() {
            c.nodeport_addresses.clone()
        } else {
            f.node_port_addresses.clone().unwrap_or_default()
        };
        let np_field = if c.nodeport_addresses.is_empty() {
            format!("--config {path}: nodePortAddresses")
        } else {
            "--nodeport-addresses".into()
        };
        let mut all_nodeport_addresses = Vec::new();
        let mut nodeport_primary = false;
        for s in np_items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            if s == "primary" {
                nodeport_primary = true;
                continue;
            }
            all_nodeport_addresses.push(s.parse::<IpNet>().map_err(|_| {
                format!(
                    "{np_field}: invalid CIDR {:?} (CIDRs, or the single word primary)",
                    proxier_core::escape(s)
                )
            })?);
        }
        if nodeport_primary && !all_nodeport_addresses.is_empty() {
            return Err(format!("{np_field}: primary must be the only value"));
        }

        let all_cluster_cidr: Vec<IpNet> = if !c.cluster_cidr.is_empty() {
            c.cluster_cidr.clone()
        } else {
            let mut v = Vec::new();
            for s in nonempty(&f.cluster_cidr)
                .unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                v.push(s.parse().map_err(|_| {
                    format!(
                        "--config {path}: clusterCIDR: invalid CIDR {:?}",
                        proxier_core::escape(s)
                    )
                })?);
            }
            v
        };
        // kube-proxy takes at most one cluster CIDR per family.
        for fam in [IpFamily::V4, IpFamily::V6] {
            let n = all_cluster_cidr
                .iter()
                .filter(|x| fam.matches(&x.addr()))
                .count();
            if n > 1 {
                return Err(format!(
                    "--cluster-cidr: more than one {} CIDR ({n}); give at most one per family",
                    fam.as_str()
                ));
            }
        }
        if let Some(forced) = c.ip_family
            && !all_cluster_cidr.is_empty()
            && !all_cluster_cidr.iter().any(|x| forced.matches(&x.addr()))
        {
            return Err(format!(
                "--cluster-cidr: no {} CIDR for --ip-family {}",
                forced.as_str(),
                forced.as_str()
            ));
        }

        let dl = f.detect_local.clone().unwrap_or_default();
        let detect_local_mode = self
            .local
            .detect_local_mode
            .clone()
            .or_else(|| nonempty(&f.detect_local_mode).map(str::to_string));
        let pod_interface_name_prefix = self
            .local
            .pod_interface_name_prefix
            .clone()
            .or_else(|| nonempty(&dl.interface_name_prefix).map(str::to_string));

        let dur_file = |field: &str, v: &config::GoDuration| config::duration(&path, field, v);
        let a = &self.conntrack;
        let d = ConntrackTuning::default();
        let keep_default = |flag: Option<Duration>,
                            field: &str,
                            v: &config::GoDuration,
                            def: Option<Duration>|
         -> Result<Option<Duration>, String> {
            let d = match flag {
                Some(x) => Some(x),
                None => dur_file(field, v).map_err(ferr)?.or(def),
            };
            // Zero leaves the kernel's value, as no value does.
            Ok(d.filter(|d| !d.is_zero()))
        };
        let nonneg = |field: &str, v: Option<i32>| -> Result<Option<u32>, String> {
            match v {
                None => Ok(None),
                Some(n) if n < 0 => Err(format!("--config {path}: {field}: {n} is negative")),
                Some(n) => Ok(Some(n as u32)),
            }
        };
        let conntrack = ConntrackTuning {
            max_per_core: a
                .conntrack_max_per_core
                .or(nonneg("conntrack.maxPerCore", ct.max_per_core)?)
                .unwrap_or(d.max_per_core),
            min: a
                .conntrack_min
                .or(nonneg("conntrack.min", ct.min)?)
                .unwrap_or(d.min),
            tcp_established: keep_default(
                a.conntrack_tcp_timeout_established,
                "conntrack.tcpEstablishedTimeout",
                &ct.tcp_established_timeout,
                d.tcp_established,
            )?,
            tcp_close_wait: keep_default(
                a.conntrack_tcp_timeout_close_wait,
                "conntrack.tcpCloseWaitTimeout",
                &ct.tcp_close_wait_timeout,
                d.tcp_close_wait,
            )?,
            tcp_be_liberal: a
                .conntrack_tcp_be_liberal
                .or(ct.tcp_be_liberal)
                .unwrap_or(false),
            udp: keep_default(
                a.conntrack_udp_timeout,
                "conntrack.udpTimeout",
                &ct.udp_timeout,
                None,
            )?,
            udp_stream: keep_default(
                a.conntrack_udp_timeout_stream,
                "conntrack.udpStreamTimeout",
                &ct.udp_stream_timeout,
                None,
            )?,
        };

        let secs =
            |flag: Option<Duration>, field: &str, v: &config::GoDuration| -> Result<u32, String> {
                let d = match flag {
                    Some(d) => Some(d),
                    None => dur_file(field, v).map_err(ferr)?,
                };
                Ok(d.map(|d| d.as_secs().min(u32::MAX as u64) as u32)
                    .unwrap_or(0))
            };
        let mut exclude_cidrs = self.ipvs.ipvs_exclude_cidrs.clone();
        if exclude_cidrs.is_empty() {
            for s in ipvs.exclude_cidrs.clone().unwrap_or_default() {
                exclude_cidrs.push(s.trim().parse().map_err(|_| {
                    format!(
                        "--config {path}: ipvs.excludeCIDRs: invalid CIDR {:?}",
                        proxier_core::escape(&s)
                    )
                })?);
            }
        }
        let ipvs_settings = IpvsSettings {
            scheduler: self
                .ipvs
                .ipvs_scheduler
                .clone()
                .or_else(|| nonempty(&ipvs.scheduler).map(str::to_string))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "rr".into()),
            strict_arp: self
                .ipvs
                .ipvs_strict_arp
                .or(ipvs.strict_arp)
                .unwrap_or(false),
            exclude_cidrs,
            external_local_mark_mask: self.ipvs.ipvs_external_local_mark_mask,
            timeouts: (
                secs(
                    self.ipvs.ipvs_tcp_timeout,
                    "ipvs.tcpTimeout",
                    &ipvs.tcp_timeout,
                )?,
                secs(
                    self.ipvs.ipvs_tcpfin_timeout,
                    "ipvs.tcpFinTimeout",
                    &ipvs.tcp_fin_timeout,
                )?,
                secs(
                    self.ipvs.ipvs_udp_timeout,
                    "ipvs.udpTimeout",
                    &ipvs.udp_timeout,
                )?,
            ),
        };

        let logging = f.logging.clone().unwrap_or_default();
        let mut vmodule: Vec<(String, u32)> = logging
            .vmodule
            .unwrap_or_default()
            .into_iter()
            .map(|v| (v.file_pattern, v.verbosity))
            .collect();
        if let Some(v) = &c.vmodule {
            vmodule.extend(flags::parse_vmodule(v).map_err(|e| format!("--vmodule: {e}"))?);
        }
        let mut feature_gates: Vec<(String, bool)> = f
            .feature_gates
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        if let Some(g) = &c.feature_gates {
            feature_gates =
                flags::parse_feature_gates(g).map_err(|e| format!("--feature-gates: {e}"))?;
        }

        let settings = Settings {
            mode,
            node_name,
            nodeport_addresses: Vec::new(),
            cluster_cidr: Vec::new(),
            all_nodeport_addresses,
            nodeport_primary,
            all_cluster_cidr,
            masquerade_all,
            masquerade_bit: masquerade_bit as u8,
            min_sync_period,
            sync_period,
            healthz_bind_address,
            metrics_bind_address,
            bind_address_hard_fail: c
                .bind_address_hard_fail
                .or(f.bind_address_hard_fail)
                .unwrap_or(false),
            family: c.ip_family.unwrap_or(IpFamily::V4),
            forced_family: c.ip_family,
            primary_family: c
                .bind_address
                .or_else(|| nonempty(&f.bind_address).and_then(|s| s.parse().ok()))
                .filter(|ip| !ip.is_unspecified())
                .map(|ip| IpFamily::of(&ip)),
            kubeconfig: c.kubeconfig.clone().or_else(|| {
                f.client_connection
                    .as_ref()
                    .and_then(|cc| nonempty(&cc.kubeconfig))
                    .map(PathBuf::from)
            }),
            master: c.master.clone().filter(|m| !m.is_empty()),
            localhost_node_ports: self
                .iptables
                .iptables_localhost_nodeports
                .or(ipt.localhost_node_ports)
                .unwrap_or(true),
            ipvs: ipvs_settings,
            detect_local_mode,
            pod_interface_name_prefix,
            conntrack,
            verbosity: c.verbosity.or(logging.verbosity.filter(|v| *v > 0)),
            vmodule,
            feature_gates,
            ignored_fields: f.ignored(),
        };
        let family = settings.family;
        let s = settings.for_family(family);
        // The detector's mode and prefix are checked once here, for both families.
        s.detector()?;
        Ok(s)
    }
}

/// `healthz-bind-address` → `healthzBindAddress`.
fn camel(flag: &str) -> String {
    let mut out = String::new();
    let mut up = false;
    for ch in flag.chars() {
        if ch == '-' {
            up = true;
        } else if up {
            out.push(ch.to_ascii_uppercase());
            up = false;
        } else {
            out.push(ch);
        }
    }
    out
}

/// The default configuration, as `--write-config-to` writes it: kube-proxy's
/// defaults in its own fields.
pub const DEFAULT_CONFIG: &str = "\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  kubeconfig: \"\"
clusterCIDR: \"\"
conntrack:
  maxPerCore: 32768
  min: 131072
  tcpBeLiberal: false
  tcpCloseWaitTimeout: 1h0m0s
  tcpEstablishedTimeout: 24h0m0s
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: \"\"
  interfaceNamePrefix: \"\"
detectLocalMode: ClusterCIDR
healthzBindAddress: 0.0.0.0:10256
hostnameOverride: \"\"
iptables:
  localhostNodePorts: true
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: \"\"
  strictARP: false
  syncPeriod: 30s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
metricsBindAddress: 127.0.0.1:10249
mode: iptables
nftables:
  masqueradeAll: false
  masqueradeBit: 14
  minSyncPeriod: 1s
  syncPeriod: 30s
nodePortAddresses: null
";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::parse_from_args(
            "proxier",
            "test",
            std::iter::once("proxier").chain(args.iter().copied()),
        )
    }

    fn settings(args: &[&str]) -> Settings {
        let mut a = Vec::new();
        if !args.iter().any(|x| x.starts_with("--hostname-override")) {
            a.extend(["--hostname-override", "node-1"]);
        }
        a.extend(args);
        cli(&a).unwrap().settings(None).unwrap()
    }

    #[test]
    fn every_kube_proxy_flag_parses_supported_or_warned() {
        // A value each flag accepts.
        let value = |name: &str| match name {
            n if n.contains("period") || n.contains("timeout") || n == "log-flush-frequency" => {
                "5s"
            }
            "v"
            | "conntrack-max-per-core"
            | "conntrack-min"
            | "iptables-masquerade-bit"
            | "kube-api-burst"
            | "oom-score-adj"
            | "healthz-port"
            | "metrics-port" => "3",
            "kube-api-qps" => "5.5",
            "cluster-cidr" | "ipvs-exclude-cidrs" | "nodeport-addresses" => "10.0.0.0/8",
            "bind-address" => "0.0.0.0",
            "healthz-bind-address" | "metrics-bind-address" => "127.0.0.1:1",
            "proxy-mode" => "ipvs",
            "detect-local-mode" => "ClusterCIDR",
            "feature-gates" => "Foo=true",
            "vmodule" => "proxier_core=4",
            "ipvs-scheduler" => "rr",
            "show-hidden-metrics-for-version" => "1.32",
            "proxy-port-range" => "1000-2000",
            "logging-format" => "text",
            _ => "x",
        };
        for f in flags::KUBE_PROXY_FLAGS {
            if matches!(f.name, "help" | "version") {
                continue;
            }
            let forms: Vec<String> = if f.boolean {
                vec![
                    format!("--{}", f.name),
                    format!("--{}=true", f.name),
                    format!("--{}=false", f.name),
                ]
            } else {
                vec![format!("--{}={}", f.name, value(f.name))]
            };
            for form in forms {
                let mut args = vec![form.clone()];
                if !f.boolean && !form.contains('=') {
                    args.push(value(f.name).into());
                }
                let c = cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
                    .unwrap_or_else(|e| panic!("{form}: {e}"));
                let warned = c.ignored.iter().any(|(n, _)| *n == f.name);
                assert_eq!(
                    warned,
                    matches!(f.support, flags::Support::Ignored(_)),
                    "{form}"
                );
            }
            // The space-separated form too, for value flags.
            if !f.boolean {
                let args = [format!("--{}", f.name), value(f.name).to_string()];
                cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
                    .unwrap_or_else(|e| panic!("--{} {}: {e}", f.name, value(f.name)));
            }
        }
        assert!(cli(&["--no-such-flag"]).is_err());
        assert!(cli(&["--masquerade-all=maybe"]).is_err());
    }

    #[test]
    fn each_supported_flag_changes_its_setting() {
        let d = settings(&[]);
        assert_eq!(d.mode, Mode::Iptables);
        assert_eq!(d.masquerade_bit, 14);
        assert!(!d.masquerade_all);
        assert_eq!(d.sync_period, Duration::from_secs(30));
        assert_eq!(d.min_sync_period, Duration::from_secs(1));
        assert_eq!(
            d.healthz_bind_address,
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            d.metrics_bind_address,
            Some("127.0.0.1:10249".parse().unwrap())
        );
        assert_eq!(d.conntrack, ConntrackTuning::default());
        assert!(d.localhost_node_ports);
        assert_eq!(d.ipvs.scheduler, "rr");

        assert_eq!(settings(&["--proxy-mode=nftables"]).mode, Mode::Nftables);
        assert_eq!(settings(&["--iptables-masquerade-bit=3"]).masquerade_bit, 3);
        assert!(settings(&["--masquerade-all"]).masquerade_all);
        assert!(settings(&["--masquerade-all=true"]).masquerade_all);
        assert!(!settings(&["--masquerade-all=false"]).masquerade_all);
        assert_eq!(
            settings(&["--iptables-sync-period=1m30s"]).sync_period,
            Duration::from_secs(90)
        );
        assert_eq!(
            settings(&["--iptables-min-sync-period", "500ms"]).min_sync_period,
            Duration::from_millis(500)
        );
        // --ipvs-* apply in ipvs mode only, --iptables-* everywhere else.
        let s = settings(&[
            "--proxy-mode=ipvs",
            "--ipvs-sync-period=7s",
            "--iptables-sync-period=9s",
        ]);
        assert_eq!(s.sync_period, Duration::from_secs(7));
        let s = settings(&["--ipvs-min-sync-period=7s", "--iptables-min-sync-period=9s"]);
        assert_eq!(s.min_sync_period, Duration::from_secs(9));
        assert_eq!(
            settings(&["--healthz-bind-address=127.0.0.1"]).healthz_bind_address,
            Some("127.0.0.1:10256".parse().unwrap())
        );
        assert_eq!(
            settings(&["--healthz-bind-address="]).healthz_bind_address,
            None
        );
        assert_eq!(settings(&["--metrics-port=0"]).metrics_bind_address, None);
        assert_eq!(
            settings(&["--healthz-port=9999"]).healthz_bind_address,
            Some("0.0.0.0:9999".parse().unwrap())
        );
        assert!(settings(&["--bind-address-hard-fail"]).bind_address_hard_fail);
        assert_eq!(
            settings(&["--bind-address=fd00::1"]).primary_family,
            Some(IpFamily::V6)
        );
        assert!(!settings(&["--iptables-localhost-nodeports=false"]).localhost_node_ports);
        let s = settings(&[
            "--ipvs-scheduler=lc",
            "--ipvs-strict-arp",
            "--ipvs-exclude-cidrs=10.1.0.0/16,10.2.0.0/16",
            "--ipvs-tcp-timeout=15m",
            "--ipvs-tcpfin-timeout=30s",
            "--ipvs-udp-timeout=5s",
        ]);
        assert_eq!(s.ipvs.scheduler, "lc");
        assert!(s.ipvs.strict_arp);
        assert_eq!(s.ipvs.exclude_cidrs.len(), 2);
        assert_eq!(s.ipvs.timeouts, (900, 30, 5));
        let s = settings(&[
            "--detect-local-mode=InterfaceNamePrefix",
            "--pod-interface-name-prefix=veth",
        ]);
        assert_eq!(
            s.detector().unwrap(),
            proxier_netfilter::LocalDetector::InterfacePrefix("veth".into())
        );
        let s = settings(&["--cluster-cidr=10.244.0.0/16,fd00:10:244::/56"]);
        assert_eq!(s.all_cluster_cidr.len(), 2);
        assert_eq!(
            s.cluster_cidr,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
        let s = settings(&["--nodeport-addresses=10.0.0.0/8,fd00::/64"]);
        assert_eq!(s.all_nodeport_addresses.len(), 2);
        assert!(settings(&["--nodeport-addresses=primary"]).nodeport_primary);
        let s = settings(&[
            "--conntrack-max-per-core=0",
            "--conntrack-min=5",
            "--conntrack-tcp-timeout-established=1h",
            "--conntrack-tcp-timeout-close-wait=10m",
            "--conntrack-tcp-be-liberal",
            "--conntrack-udp-timeout=30s",
            "--conntrack-udp-timeout-stream=2m",
        ]);
        assert_eq!(
            s.conntrack,
            ConntrackTuning {
                max_per_core: 0,
                min: 5,
                tcp_established: Some(Duration::from_secs(3600)),
                tcp_close_wait: Some(Duration::from_secs(600)),
                tcp_be_liberal: true,
                udp: Some(Duration::from_secs(30)),
                udp_stream: Some(Duration::from_secs(120)),
            }
        );
        assert_eq!(settings(&["--v=4"]).verbosity, Some(4));
        assert_eq!(settings(&["-v", "3"]).verbosity, Some(3));
        assert_eq!(
            settings(&["--vmodule=backend_ipvs=5"]).vmodule,
            vec![("backend_ipvs".to_string(), 5)]
        );
        assert_eq!(
            settings(&["--feature-gates=NFTablesProxyMode=true"]).feature_gates,
            vec![("NFTablesProxyMode".to_string(), true)]
        );
        assert_eq!(
            settings(&["--master=https://10.0.0.1:6443"])
                .master
                .as_deref(),
            Some("https://10.0.0.1:6443")
        );
        assert_eq!(
            settings(&["--kubeconfig=/k"]).kubeconfig,
            Some(PathBuf::from("/k"))
        );
        assert_eq!(
            settings(&["--hostname-override=Node-2"]).node_name,
            "node-2"
        );
    }

    /// Each supported kube-proxy flag, a command line using it, and what it
    /// must change in the settings. The flags that are actions (cleanup,
    /// init-only, write-config-to, config, help, version) are run by the
    /// binary tests.
    #[test]
    fn the_check_of_every_supported_flag() {
        type Check = (&'static str, &'static [&'static str], fn(&Settings) -> bool);
        let checks: &[Check] = &[
            ("feature-gates", &["--feature-gates=A=true"], |s| {
                s.feature_gates == [("A".to_string(), true)]
            }),
            ("kubeconfig", &["--kubeconfig=/k"], |s| {
                s.kubeconfig == Some(PathBuf::from("/k"))
            }),
            ("master", &["--master=https://m:6443"], |s| {
                s.master.as_deref() == Some("https://m:6443")
            }),
            ("hostname-override", &["--hostname-override=Node-7"], |s| {
                s.node_name == "node-7"
            }),
            ("bind-address", &["--bind-address=fd00::1"], |s| {
                s.primary_family == Some(IpFamily::V6)
            }),
            (
                "healthz-bind-address",
                &["--healthz-bind-address=127.0.0.2:1"],
                |s| s.healthz_bind_address == Some("127.0.0.2:1".parse().unwrap()),
            ),
            (
                "metrics-bind-address",
                &["--metrics-bind-address=[::1]:2"],
                |s| s.metrics_bind_address == Some("[::1]:2".parse().unwrap()),
            ),
            (
                "bind-address-hard-fail",
                &["--bind-address-hard-fail"],
                |s| s.bind_address_hard_fail,
            ),
            ("proxy-mode", &["--proxy-mode=userspace"], |s| {
                s.mode == Mode::Userspace
            }),
            (
                "iptables-masquerade-bit",
                &["--iptables-masquerade-bit=0"],
                |s| s.masquerade_bit == 0,
            ),
            ("masquerade-all", &["--masquerade-all"], |s| {
                s.masquerade_all
            }),
            (
                "iptables-localhost-nodeports",
                &["--iptables-localhost-nodeports=false"],
                |s| !s.localhost_node_ports,
            ),
            (
                "iptables-sync-period",
                &["--iptables-sync-period=2m"],
                |s| s.sync_period == Duration::from_secs(120),
            ),
            (
                "iptables-min-sync-period",
                &["--iptables-min-sync-period=0s"],
                |s| s.min_sync_period.is_zero(),
            ),
            (
                "ipvs-sync-period",
                &["--proxy-mode=ipvs", "--ipvs-sync-period=3s"],
                |s| s.sync_period == Duration::from_secs(3),
            ),
            (
                "ipvs-min-sync-period",
                &["--proxy-mode=ipvs", "--ipvs-min-sync-period=4s"],
                |s| s.min_sync_period == Duration::from_secs(4),
            ),
            ("ipvs-scheduler", &["--ipvs-scheduler=sh"], |s| {
                s.ipvs.scheduler == "sh"
            }),
            (
                "ipvs-exclude-cidrs",
                &["--ipvs-exclude-cidrs=10.9.0.0/16"],
                |s| s.ipvs.exclude_cidrs.len() == 1,
            ),
            ("ipvs-strict-arp", &["--ipvs-strict-arp=true"], |s| {
                s.ipvs.strict_arp
            }),
            ("ipvs-tcp-timeout", &["--ipvs-tcp-timeout=1m"], |s| {
                s.ipvs.timeouts.0 == 60
            }),
            ("ipvs-tcpfin-timeout", &["--ipvs-tcpfin-timeout=1m"], |s| {
                s.ipvs.timeouts.1 == 60
            }),
            ("ipvs-udp-timeout", &["--ipvs-udp-timeout=1m"], |s| {
                s.ipvs.timeouts.2 == 60
            }),
            (
                "detect-local-mode",
                &[
                    "--detect-local-mode=InterfaceNamePrefix",
                    "--pod-interface-name-prefix=cali",
                ],
                |s| s.detect_local_mode.as_deref() == Some("InterfaceNamePrefix"),
            ),
            (
                "pod-interface-name-prefix",
                &[
                    "--detect-local-mode=InterfaceNamePrefix",
                    "--pod-interface-name-prefix=cali",
                ],
                |s| s.pod_interface_name_prefix.as_deref() == Some("cali"),
            ),
            ("cluster-cidr", &["--cluster-cidr=10.9.0.0/16"], |s| {
                s.cluster_cidr.len() == 1
            }),
            (
                "nodeport-addresses",
                &["--nodeport-addresses=10.9.0.0/16"],
                |s| s.nodeport_addresses.len() == 1,
            ),
            (
                "conntrack-max-per-core",
                &["--conntrack-max-per-core=7"],
                |s| s.conntrack.max_per_core == 7,
            ),
            ("conntrack-min", &["--conntrack-min=7"], |s| {
                s.conntrack.min == 7
            }),
            (
                "conntrack-tcp-timeout-established",
                &["--conntrack-tcp-timeout-established=7s"],
                |s| s.conntrack.tcp_established == Some(Duration::from_secs(7)),
            ),
            (
                "conntrack-tcp-timeout-close-wait",
                &["--conntrack-tcp-timeout-close-wait=7s"],
                |s| s.conntrack.tcp_close_wait == Some(Duration::from_secs(7)),
            ),
            (
                "conntrack-tcp-be-liberal",
                &["--conntrack-tcp-be-liberal"],
                |s| s.conntrack.tcp_be_liberal,
            ),
            (
                "conntrack-udp-timeout",
                &["--conntrack-udp-timeout=7s"],
                |s| s.conntrack.udp == Some(Duration::from_secs(7)),
            ),
            (
                "conntrack-udp-timeout-stream",
                &["--conntrack-udp-timeout-stream=7s"],
                |s| s.conntrack.udp_stream == Some(Duration::from_secs(7)),
            ),
            ("healthz-port", &["--healthz-port=7"], |s| {
                s.healthz_bind_address.map(|a| a.port()) == Some(7)
            }),
            ("metrics-port", &["--metrics-port=7"], |s| {
                s.metrics_bind_address.map(|a| a.port()) == Some(7)
            }),
            ("v", &["--v=5"], |s| s.verbosity == Some(5)),
            ("vmodule", &["--vmodule=x=3"], |s| {
                s.vmodule == [("x".to_string(), 3)]
            }),
        ];
        let defaults = settings(&[]);
        for (name, args, changed) in checks {
            assert!(
                !changed(&defaults),
                "--{name}: the default already passes its check"
            );
            assert!(
                changed(&settings(args)),
                "--{name}: {args:?} did not change its setting"
            );
        }
        let actions = [
            "config",
            "write-config-to",
            "cleanup",
            "init-only",
            "help",
            "version",
        ];
        let supported: BTreeSet<&str> = flags::KUBE_PROXY_FLAGS
            .iter()
            .filter(|f| matches!(f.support, flags::Support::Supported(_)))
            .map(|f| f.name)
            .filter(|n| !actions.contains(n))
            .collect();
        let checked: BTreeSet<&str> = checks.iter().map(|c| c.0).collect();
        assert_eq!(supported, checked);
    }

    #[test]
    fn bad_values_name_the_flag() {
        let bad = |args: &[&str], flag: &str| {
            let mut a = vec!["--hostname-override", "n"];
            a.extend(args);
            let e = match cli(&a) {
                Err(e) => e.to_string(),
                Ok(c) => c.settings(None).unwrap_err(),
            };
            assert!(e.contains(flag), "{args:?}: {e}");
        };
        bad(&["--proxy-mode=kernelspace"], "proxy-mode");
        bad(&["--proxy-mode=fast"], "proxy-mode");
        bad(&["--iptables-masquerade-bit=32"], "masquerade-bit");
        bad(
            &["--nodeport-addresses=primary,10.0.0.0/8"],
            "nodeport-addresses",
        );
        bad(&["--nodeport-addresses=nodes"], "nodeport-addresses");
        bad(
            &["--healthz-bind-address=localhost"],
            "healthz-bind-address",
        );
        bad(
            &["--detect-local-mode=BridgeInterface"],
            "detect-local-mode",
        );
        bad(&["--feature-gates=Foo"], "feature-gates");
        bad(&["--iptables-sync-period=0"], "sync-period");
        bad(&["--cluster-cidr=10.0.0.0/8,10.1.0.0/16"], "cluster-cidr");
        let c = cli(&["--proxy-mode=ipvs"]).unwrap();
        assert!(
            c.settings(Some(Mode::Nftables))
                .unwrap_err()
                .contains("nftables binary")
        );
    }

    fn with_file(text: &str, args: &[&str]) -> Result<Settings, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.conf");
        std::fs::write(&p, text).unwrap();
        let ps = p.display().to_string();
        let mut a = vec!["--config", ps.as_str()];
        a.extend(args);
        cli(&a).unwrap().settings(None)
    }

    #[test]
    fn the_kubeadm_configuration_gives_kube_proxys_defaults() {
        let s = with_file(
            include_str!("../../deploy/testdata/kubeadm-config.conf"),
            &["--hostname-override=node-1"],
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Iptables);
        assert_eq!(s.masquerade_bit, 14);
        assert_eq!(s.sync_period, Duration::from_secs(30));
        assert_eq!(s.min_sync_period, Duration::from_secs(1));
        assert_eq!(
            s.healthz_bind_address,
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            s.metrics_bind_address,
            Some("127.0.0.1:10249".parse().unwrap())
        );
        assert_eq!(
            s.all_cluster_cidr,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            s.kubeconfig,
            Some(PathBuf::from("/var/lib/kube-proxy/kubeconfig.conf"))
        );
        assert_eq!(s.conntrack, ConntrackTuning::default());
        assert!(s.ignored_fields.is_empty());
        assert_eq!(s.node_name, "node-1");
    }

    #[test]
    fn the_documentation_example_selects_ipvs_with_strict_arp() {
        let s = with_file(
            include_str!("../../deploy/testdata/docs-ipvs.yaml"),
            &["--hostname-override=node-1"],
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Ipvs);
        assert!(s.ipvs.strict_arp);
        assert_eq!(s.ipvs.scheduler, "rr");
    }

    #[test]
    fn per_mode_sections_and_flags_over_the_file() {
        let text = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n\
mode: nftables\nhostnameOverride: from-file\n\
iptables: {masqueradeBit: 5, syncPeriod: 10s}\n\
nftables: {masqueradeBit: 6, masqueradeAll: true, syncPeriod: 20s, minSyncPeriod: 2s}\n\
ipvs: {syncPeriod: 40s, scheduler: wlc}\n\
nodePortAddresses: [primary]\n\
healthzBindAddress: 127.0.0.1:20256\n\
conntrack: {maxPerCore: 0, tcpBeLiberal: true}\n\
logging: {verbosity: 4}\n";
        let s = with_file(text, &[]).unwrap();
        assert_eq!(s.mode, Mode::Nftables);
        assert_eq!(s.node_name, "from-file");
        assert_eq!(s.masquerade_bit, 6);
        assert!(s.masquerade_all);
        assert_eq!(s.sync_period, Duration::from_secs(20));
        assert_eq!(s.min_sync_period, Duration::from_secs(2));
        assert!(s.nodeport_primary);
        assert_eq!(
            s.healthz_bind_address,
            Some("127.0.0.1:20256".parse().unwrap())
        );
        assert_eq!(s.conntrack.max_per_core, 0);
        assert!(s.conntrack.tcp_be_liberal);
        assert_eq!(s.verbosity, Some(4));
        let s = with_file(text, &["--proxy-mode=ipvs", "--hostname-override=n2"]).unwrap();
        assert_eq!(s.sync_period, Duration::from_secs(40));
        assert_eq!(s.ipvs.scheduler, "wlc");
        assert_eq!(s.masquerade_bit, 5);
        assert_eq!(s.node_name, "n2");
        let s = with_file(text, &["--iptables-masquerade-bit=9"]).unwrap();
        assert_eq!(s.masquerade_bit, 9);
        let c = cli(&["--config=/x", "--masquerade-all", "--hostname-override=n"]).unwrap();
        assert_eq!(c.beside_config, vec!["--masquerade-all".to_string()]);
        // Strict: a field kube-proxy does not know is named.
        let e = with_file(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nipvs: {strictArp: true}\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("ipvs") && e.contains("strictArp"), "{e}");
        let e = with_file(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\niptables: {syncPeriod: soon}\n",
            &["--hostname-override=n"],
        )
        .unwrap_err();
        assert!(e.contains("iptables.syncPeriod"), "{e}");
    }

    #[test]
    fn the_default_configuration_reads_back() {
        let c = KubeProxyConfiguration::parse("default", DEFAULT_CONFIG).unwrap();
        assert!(c.ignored().is_empty(), "{:?}", c.ignored());
        let s = with_file(DEFAULT_CONFIG, &["--hostname-override=n"]).unwrap();
        assert_eq!(s.conntrack, ConntrackTuning::default());
        assert_eq!(s.masquerade_bit, 14);
    }
}
