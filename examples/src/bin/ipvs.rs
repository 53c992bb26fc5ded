//! kube-proxy's IPVS mode: `proxier --proxy-mode ipvs`, as its own binary.
//! Needs a kernel with `ip_vs` (`modprobe ip_vs`; check with `lsmod`).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    examples::run::main(
        Some(examples::cli::Mode::Ipvs),
        "ipvs",
        "kube-proxy's IPVS mode, as a proxier backend (proxier --proxy-mode ipvs; needs ip_vs)",
    )
    .await
}
