//! `proxier`: a drop-in for kube-proxy. `--proxy-mode iptables|ipvs|nftables|userspace`
//! (or the configuration's `mode`; iptables by default, as kube-proxy's),
//! kube-proxy's flags by their own names and Go syntax, a
//! `KubeProxyConfiguration` file, `--cleanup` of every mode.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    examples::run::main(
        None,
        "proxier",
        "A drop-in for kube-proxy: --proxy-mode iptables (default), ipvs, nftables or userspace; kube-proxy's flags and KubeProxyConfiguration",
    )
    .await
}
