//! kube-proxy's iptables mode: `proxier --proxy-mode iptables`, as its own
//! binary. `iptables --manifests DIR` or against a cluster; `--once` syncs
//! and exits; `--cleanup` removes what every mode could have left.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    examples::run::main(
        Some(examples::cli::Mode::Iptables),
        "iptables",
        "kube-proxy's iptables mode, as a proxier backend (proxier --proxy-mode iptables)",
    )
    .await
}
