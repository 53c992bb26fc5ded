//! kube-proxy's nftables mode: `proxier --proxy-mode nftables`, as its own
//! binary. Programmed with nf_tables netlink transactions: the `nft`
//! program is not needed (only to look: `nft list table ip kube-proxy`).
//!
//! Localhost node ports are not part of kube-proxy's nftables mode, nor
//! of this one: node ports answer on the node's addresses
//! (`--nodeport-addresses`), not on 127.0.0.1.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    examples::run::main(
        Some(examples::cli::Mode::Nftables),
        "nftables",
        "kube-proxy's nftables mode, as a proxier backend (nf_tables over netlink; no localhost node ports, as in kube-proxy)",
    )
    .await
}
