//! kube-proxy's userspace mode: `proxier --proxy-mode userspace`, as its
//! own binary. `--portal` (default) redirects service traffic to the proxy
//! with iptables rules; `--direct` binds the service addresses themselves
//! and needs no iptables (nor root, for ports ≥ 1024).

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Ok(n) = backend_userspace::raise_fd_limit(64_000) {
        tracing::debug!(limit = n, "open files");
    }
    examples::run::main(
        Some(examples::cli::Mode::Userspace),
        "userspace",
        "kube-proxy's userspace mode, as a proxier backend (proxier --proxy-mode userspace)",
    )
    .await
}
