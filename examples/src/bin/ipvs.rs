//! kube-proxy's IPVS mode: `ipvs --manifests DIR` or against a cluster.
//! `--once` syncs and exits; `--cleanup` removes the virtual servers,
//! ipsets, rules and `kube-ipvs0` this mode owns. Needs a kernel with
//! `ip_vs` (`modprobe ip_vs`).

use std::process::ExitCode;
use std::time::Duration;

use backend_ipvs::{Config, IpvsProxier, Kernel, Timeouts};
use clap::Parser;
use examples::cli::{Common, LocalDetect, parse_duration};
use ipnet::IpNet;
use proxier_core::Proxier;
use proxier_netfilter::{IptablesCmd, Variant};

#[derive(Debug, Parser)]
#[command(
    name = "ipvs",
    version,
    about = "kube-proxy's IPVS mode, as a proxier backend"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// The IPVS scheduler: rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh.
    #[arg(long, value_name = "NAME")]
    ipvs_scheduler: Option<String>,
    /// Stop answering ARP for service addresses on kube-ipvs0
    /// (arp_ignore=1, arp_announce=2).
    #[arg(long)]
    ipvs_strict_arp: bool,
    /// Virtual servers in these CIDRs are never touched (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "CIDR,...")]
    ipvs_exclude_cidrs: Vec<IpNet>,
    /// Idle timeout of established TCP connections (0: the kernel's).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    ipvs_tcp_timeout: Option<Duration>,
    /// Timeout of TCP connections after FIN (0: the kernel's).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    ipvs_tcpfin_timeout: Option<Duration>,
    /// Timeout of UDP flows (0: the kernel's).
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    ipvs_udp_timeout: Option<Duration>,
    /// iptables variant for the companion rules: auto, nft, legacy.
    #[arg(long, default_value = "auto", value_parser = ["auto", "nft", "legacy"])]
    iptables_variant: String,
    #[command(flatten)]
    local: LocalDetect,
}

fn secs(d: Option<Duration>) -> u32 {
    d.map(|d| d.as_secs().min(u32::MAX as u64) as u32)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = cli.common.clone();
    examples::run::run_mode(common, async move |s| {
        let field = |p: &[&str]| cli.common.config_field(p);
        let scheduler = match &cli.ipvs_scheduler {
            Some(x) => x.clone(),
            None => field(&["ipvs", "scheduler"])?
                .and_then(|v| v.as_str().map(str::to_string))
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| "rr".into()),
        };
        let strict_arp = cli.ipvs_strict_arp
            || field(&["ipvs", "strictARP"])?
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
        let mut cfg = Config::new(s.family);
        cfg.scheduler = scheduler;
        cfg.strict_arp = strict_arp;
        cfg.node_port_addresses = s.nodeport_addresses.clone();
        cfg.exclude_cidrs = cli.ipvs_exclude_cidrs.clone();
        cfg.timeouts = Timeouts {
            tcp: secs(cli.ipvs_tcp_timeout),
            tcp_fin: secs(cli.ipvs_tcpfin_timeout),
            udp: secs(cli.ipvs_udp_timeout),
        };
        cfg.rules.masquerade_bit = s.masquerade_bit;
        cfg.rules.masquerade_all = s.masquerade_all;
        cfg.rules.local_detector = cli.local.detector(&s.cluster_cidr)?;
        cfg.validate()?;
        let iptables = match cli.iptables_variant.as_str() {
            "nft" => IptablesCmd::new(s.family, Variant::Nft),
            "legacy" => IptablesCmd::new(s.family, Variant::Legacy),
            _ => IptablesCmd::detect(s.family)
                .await
                .map_err(|e| e.to_string())?,
        };
        let kernel = Kernel::real_with(iptables).map_err(|e| e.to_string())?;
        let p = IpvsProxier::new(cfg, kernel).map_err(|e| e.to_string())?;
        Ok(Box::new(p) as Box<dyn Proxier>)
    })
    .await
}
