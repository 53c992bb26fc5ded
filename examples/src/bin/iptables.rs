//! kube-proxy's iptables mode: `iptables --manifests DIR` or against a
//! cluster. `--once` syncs and exits; `--cleanup` removes every rule and
//! chain this mode owns.

use std::process::ExitCode;
use std::sync::Arc;

use backend_iptables::{Config, IptablesProxier};
use clap::Parser;
use examples::cli::{Common, LocalDetect};
use proxier_core::Proxier;
use proxier_netfilter::{ConntrackNetlink, IptablesCmd, ProcSys, Variant};

#[derive(Debug, Parser)]
#[command(
    name = "iptables",
    version,
    about = "kube-proxy's iptables mode, as a proxier backend"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// iptables variant: auto (what `iptables --version` reports), nft, legacy.
    #[arg(long, default_value = "auto", value_parser = ["auto", "nft", "legacy"])]
    iptables_variant: String,
    /// Accept node ports on 127.0.0.1 (IPv4; sets route_localnet).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    iptables_localhost_nodeports: bool,
    #[command(flatten)]
    local: LocalDetect,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = cli.common.clone();
    examples::run::run_mode(common, async move |s| {
        let local_detector = cli.local.detector(&s.cluster_cidr)?;
        let cfg = Config {
            family: s.family,
            masquerade_bit: s.masquerade_bit,
            masquerade_all: s.masquerade_all,
            local_detector,
            node_port_addresses: s.nodeport_addresses.clone(),
            node_ips: proxier_netfilter::node_addresses(None)
                .await
                .map_err(|e| format!("reading the node's addresses: {e}"))?
                .into_iter()
                .filter(|ip| s.family.matches(ip))
                .collect(),
            localhost_node_ports: cli.iptables_localhost_nodeports,
            ..Config::default()
        };
        let cmd = match cli.iptables_variant.as_str() {
            "nft" => IptablesCmd::new(s.family, Variant::Nft),
            "legacy" => IptablesCmd::new(s.family, Variant::Legacy),
            _ => IptablesCmd::detect(s.family)
                .await
                .map_err(|e| e.to_string())?,
        };
        let p = IptablesProxier::new(
            cfg,
            Arc::new(cmd),
            Arc::new(ConntrackNetlink::new().map_err(|e| e.to_string())?),
            Arc::new(ProcSys),
        )
        .map_err(|e| e.to_string())?;
        Ok(Box::new(p) as Box<dyn Proxier>)
    })
    .await
}
