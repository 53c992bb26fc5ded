//! kube-proxy's nftables mode: `nftables --manifests DIR` or against a
//! cluster. `--once` syncs and exits; `--cleanup` deletes the
//! `kube-proxy` table (`nft delete table ip kube-proxy`) and nothing else.
//! Programmed with nf_tables netlink transactions: the `nft` program is
//! not needed (only to look: `nft list table ip kube-proxy`).
//!
//! Localhost node ports are not part of kube-proxy's nftables mode, nor
//! of this one: node ports answer on the node's addresses
//! (`--nodeport-addresses`), not on 127.0.0.1.

use std::process::ExitCode;
use std::sync::Arc;

use backend_nftables::{Config, NfTablesNetlink, NftablesProxier};
use clap::Parser;
use examples::cli::{Common, LocalDetect};
use ipnet::IpNet;
use proxier_core::Proxier;
use proxier_netfilter::ConntrackNetlink;

#[derive(Debug, Parser)]
#[command(
    name = "nftables",
    version,
    about = "kube-proxy's nftables mode, as a proxier backend (nf_tables over netlink; no localhost node ports, as in kube-proxy)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    /// The service CIDRs (`--service-cluster-ip-range`): new connections
    /// to an unallocated cluster IP in them are dropped.
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    service_cluster_ip_range: Vec<IpNet>,
    #[command(flatten)]
    local: LocalDetect,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = cli.common.clone();
    examples::run::run_mode(common, async move |s| {
        let mut cfg = Config::new(s.family);
        cfg.masquerade.masquerade_bit = s.masquerade_bit;
        cfg.masquerade.masquerade_all = s.masquerade_all;
        cfg.masquerade.local_detector = cli.local.detector(&s.cluster_cidr)?;
        cfg.node_port_addresses = s.nodeport_addresses.clone();
        cfg.service_cidrs = cli
            .service_cluster_ip_range
            .iter()
            .copied()
            .filter(|n| s.family.matches(&n.addr()))
            .collect();
        cfg.node_ips = proxier_netfilter::node_addresses(None)
            .await
            .map_err(|e| format!("reading the node's addresses: {e}"))?
            .into_iter()
            .filter(|ip| s.family.matches(ip))
            .collect();
        let nft = NfTablesNetlink::new().map_err(|e| e.to_string())?;
        let ct = ConntrackNetlink::new().map_err(|e| e.to_string())?;
        let p =
            NftablesProxier::new(cfg, Arc::new(nft), Arc::new(ct)).map_err(|e| e.to_string())?;
        Ok(Box::new(p) as Box<dyn Proxier>)
    })
    .await
}
