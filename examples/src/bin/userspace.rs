//! kube-proxy's userspace mode: `userspace --manifests DIR` or against a
//! cluster. `--portal` (default) redirects service traffic to the proxy
//! with iptables rules; `--direct` binds the service addresses themselves
//! and needs no iptables (nor root, for ports ≥ 1024).

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use backend_userspace::{Config, DataPath, Direct, Mode, Portal, Relay, UserspaceProxier};
use clap::Parser;
use examples::cli::{Common, parse_duration};
use proxier_core::Proxier;
use proxier_netfilter::{ConntrackNetlink, IptablesCmd, Variant};

#[derive(Debug, Parser)]
#[command(
    name = "userspace",
    version,
    about = "kube-proxy's userspace mode, as a proxier backend"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// iptables portals (REDIRECT) send service traffic to the proxy (default).
    #[arg(long, conflicts_with = "direct")]
    portal: bool,
    /// No iptables: listen on external and LB IPs and on node ports directly.
    #[arg(long)]
    direct: bool,
    /// With --direct, also bind cluster IPs (IP_FREEBIND; the node must route them here).
    #[arg(long, requires = "direct")]
    direct_cluster_ips: bool,
    /// Idle timeout of a UDP flow.
    #[arg(long, value_parser = parse_duration, default_value = "250ms", value_name = "DUR")]
    udp_timeout: Duration,
    /// The most UDP flows per service port.
    #[arg(long, default_value_t = 16384, value_name = "N")]
    max_udp_flows: usize,
    /// How TCP bytes are moved: copy[:BYTES] or splice[:BYTES].
    #[arg(long, default_value = "copy", value_parser = parse_relay, value_name = "HOW")]
    relay: Relay,
    /// iptables variant for --portal: auto, nft, legacy.
    #[arg(long, default_value = "auto", value_parser = ["auto", "nft", "legacy"])]
    iptables_variant: String,
}

fn parse_relay(s: &str) -> Result<Relay, String> {
    Relay::parse(s).ok_or_else(|| {
        format!("{s:?}: expected copy, copy:BYTES, splice or splice:BYTES (BYTES ≥ 4096)")
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = cli.common.clone();
    if let Ok(n) = backend_userspace::raise_fd_limit(64_000) {
        tracing::debug!(limit = n, "open files");
    }
    // One data path for both families, so its counters add up.
    let data = DataPath {
        relay: cli.relay,
        udp_idle_timeout: cli.udp_timeout,
        max_udp_flows: cli.max_udp_flows,
        ..DataPath::default()
    };
    let counters = data.clone();
    let make = async move |s: &examples::cli::Settings| {
        let mode = if cli.direct {
            // Node ports on the --nodeport-addresses host addresses, or on
            // every address.
            let mut node_addresses: Vec<IpAddr> = s
                .nodeport_addresses
                .iter()
                .filter(|n| n.prefix_len() == n.max_prefix_len())
                .map(|n| n.addr())
                .collect();
            if s.nodeport_addresses.is_empty() {
                node_addresses.push(s.family.unspecified());
            } else if node_addresses.len() != s.nodeport_addresses.len() {
                return Err(
                    "--direct takes host addresses (/32, /128) in --nodeport-addresses".into(),
                );
            }
            Mode::Direct(Direct {
                cluster_ips: cli.direct_cluster_ips,
                external_ips: true,
                node_addresses,
                freebind: true,
            })
        } else {
            let ipt = match cli.iptables_variant.as_str() {
                "nft" => IptablesCmd::new(s.family, Variant::Nft),
                "legacy" => IptablesCmd::new(s.family, Variant::Legacy),
                _ => IptablesCmd::detect(s.family)
                    .await
                    .map_err(|e| e.to_string())?,
            };
            Mode::Portal(Portal {
                iptables: Arc::new(ipt),
                conntrack: Arc::new(ConntrackNetlink::new().map_err(|e| e.to_string())?),
                node_port_addresses: s.nodeport_addresses.clone(),
            })
        };
        let p = UserspaceProxier::new(Config {
            family: s.family,
            mode,
            data: data.clone(),
        });
        Ok(Box::new(p) as Box<dyn Proxier>)
    };
    examples::run::run_mode_with(common, make, |m| counters.register_metrics(m)).await
}
