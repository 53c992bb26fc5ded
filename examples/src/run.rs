//! From flags and a backend to a running proxier: the source, the runner,
//! health and metrics, `--once` and `--cleanup`.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use proxier_core::{
    ChangeTracker, IpFamily, ManifestSource, MetaProxier, Proxier, ProxierError, Runner,
    RunnerConfig, SyncRequest, SyncStats,
};

use crate::cli::{Common, Settings};

/// Wraps a backend to keep the text of its last error (for `--once`).
struct Recorder {
    inner: Box<dyn Proxier>,
    last_error: Arc<Mutex<Option<String>>>,
    /// Per family, the service ports its last sync could not program.
    not_programmed: Arc<Mutex<std::collections::BTreeMap<IpFamily, Vec<String>>>>,
}

#[async_trait]
impl Proxier for Recorder {
    fn name(&self) -> &str {
        self.inner.name()
    }
    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        let r = self.inner.sync(req).await;
        match &r {
            Ok(s) => {
                tracing::info!(
                    backend = self.inner.name(),
                    family = req.snapshot.family.as_str(),
                    full = s.full,
                    objects = s.objects,
                    written = s.written,
                    "synced"
                );
                let ports = s
                    .not_programmed
                    .iter()
                    .map(|(p, why)| {
                        format!(
                            "{}: {}",
                            proxier_core::escape(&p.to_string()),
                            proxier_core::escape(why)
                        )
                    })
                    .collect();
                self.not_programmed
                    .lock()
                    .expect("lock")
                    .insert(req.snapshot.family, ports);
            }
            Err(e) => {
                *self.last_error.lock().expect("lock") =
                    Some(proxier_core::ErrorChain(e).to_string());
            }
        }
        r
    }
    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        self.inner.cleanup().await
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}

/// Starts logging (`RUST_LOG`, default `info`) on stderr.
pub fn init_logging() {
    init_logging_with_default("info");
}

/// Starts logging on stderr: `RUST_LOG`, else `default`.
pub fn init_logging_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Why this node cannot do IPv6, if it cannot: a kernel without it, or
/// `net.ipv6.conf.all.disable_ipv6=1`.
pub fn ipv6_unavailable() -> Option<String> {
    use proxier_netfilter::Sysctl;
    match proxier_netfilter::ProcSys.get("net/ipv6/conf/all/disable_ipv6") {
        Ok(v) if v.trim() == "1" => {
            Some("IPv6 is disabled (net.ipv6.conf.all.disable_ipv6=1)".into())
        }
        Ok(_) => None,
        Err(_) => Some("the kernel has no IPv6 (no /proc/sys/net/ipv6)".into()),
    }
}

/// The families to run, primary first: the forced one, or (as kube-proxy
/// does) the node's primary family — IPv4 unless every global address
/// of the node is IPv6 — followed by the other, unless the node cannot
/// do IPv6 (then IPv4 only, with a log line saying why).
pub async fn families(forced: Option<IpFamily>) -> Vec<IpFamily> {
    if let Some(f) = forced {
        return vec![f];
    }
    if let Some(why) = ipv6_unavailable() {
        tracing::warn!(reason = %why, "not running dual-stack; proxying IPv4 only");
        return vec![IpFamily::V4];
    }
    let addrs = proxier_netfilter::node_addresses(None)
        .await
        .unwrap_or_default();
    let global = |ip: &std::net::IpAddr| match ip {
        std::net::IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
        std::net::IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local(),
    };
    let v6_only = addrs.iter().any(|ip| global(ip) && ip.is_ipv6())
        && !addrs.iter().any(|ip| global(ip) && ip.is_ipv4());
    if v6_only {
        vec![IpFamily::V6, IpFamily::V4]
    } else {
        vec![IpFamily::V4, IpFamily::V6]
    }
}

/// Builds a backend per family with `make`. The primary family must
/// build; a secondary family that cannot (this mode or the kernel lacks
/// it, e.g. no `ip6tables`) is left out with a log line saying why, and
/// the node runs single-stack, as kube-proxy does.
pub async fn build_families(
    settings: &Settings,
    families: &[IpFamily],
    make: &impl AsyncFn(&Settings) -> Result<Box<dyn Proxier>, String>,
) -> Result<Vec<(IpFamily, Box<dyn Proxier>)>, String> {
    let node_ips = proxier_netfilter::node_addresses(None)
        .await
        .unwrap_or_default();
    for f in families {
        let s = settings.for_family(*f);
        for net in &s.nodeport_addresses {
            if !node_ips.iter().any(|ip| net.contains(ip)) {
                tracing::warn!(
                    flag = "--nodeport-addresses",
                    cidr = %net,
                    "no address of this node is in it: its {} node ports answer nowhere until one is",
                    f.as_str()
                );
            }
        }
    }
    let mut built = Vec::new();
    for (i, f) in families.iter().enumerate() {
        match make(&settings.for_family(*f)).await {
            Ok(p) => built.push((*f, p)),
            Err(e) if i == 0 => return Err(e),
            Err(e) => tracing::warn!(
                family = f.as_str(),
                error = %proxier_core::escape(&e),
                "not running dual-stack: the {} backend cannot be built; proxying {} only",
                f.as_str(),
                families[0].as_str()
            ),
        }
    }
    Ok(built)
}

/// Runs a mode: `make` builds one family's backend from the merged
/// settings (cut to that family); it is called for each family.
pub async fn run_mode(
    common: Common,
    make: impl AsyncFn(&Settings) -> Result<Box<dyn Proxier>, String>,
) -> ExitCode {
    run_mode_with(common, make, |_| {}).await
}

/// [`run_mode`], and `metrics` adds the backend's own metrics to
/// `/metrics` (once, however many families run).
pub async fn run_mode_with(
    common: Common,
    make: impl AsyncFn(&Settings) -> Result<Box<dyn Proxier>, String>,
    metrics: impl FnOnce(&proxier_core::Metrics),
) -> ExitCode {
    init_logging();
    let settings = match common.settings() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let families = families(settings.forced_family).await;
    let built = match build_families(&settings, &families, &make).await {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let families: Vec<IpFamily> = built.iter().map(|(f, _)| *f).collect();
    let family_list = families
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut proxier: Box<dyn Proxier> = if built.len() == 1 {
        built.into_iter().next().expect("one").1
    } else {
        Box::new(MetaProxier::new(built))
    };
    if common.cleanup {
        return match proxier.cleanup().await {
            Ok(()) => {
                tracing::info!(backend = proxier.name(), "cleaned up");
                ExitCode::SUCCESS
            }
            Err(e) => fail(proxier_core::ErrorChain(&e)),
        };
    }
    let last_error = Arc::new(Mutex::new(None));
    let not_programmed = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let trackers = families
        .iter()
        .map(|f| {
            ChangeTracker::new(*f, &settings.node_name)
                .with_loopback_endpoints(common.allow_loopback_endpoints)
        })
        .collect();
    let cfg = RunnerConfig {
        min_sync_period: settings.min_sync_period,
        sync_period: settings.sync_period,
        ..RunnerConfig::default()
    };
    let (runner, handle) = Runner::dual_stack(
        trackers,
        Box::new(Recorder {
            inner: proxier,
            last_error: last_error.clone(),
            not_programmed: not_programmed.clone(),
        }),
        cfg,
    );

    metrics(&handle.metrics());
    let mut object_errors = 0usize;
    match (&common.manifests, common.once) {
        (Some(path), true) => {
            match ManifestSource::new(path, settings.node_name.clone()).load_into(&handle) {
                Ok((_, errs)) => {
                    for e in &errs {
                        eprintln!("error: {e}");
                    }
                    object_errors = errs.len();
                }
                Err(e) => return fail(e),
            }
        }
        (Some(path), false) => {
            if let Err(e) = std::fs::metadata(path) {
                return fail(format!("--manifests {}: {e}", path.display()));
            }
            tokio::spawn(ManifestSource::new(path, settings.node_name.clone()).run(handle.clone()));
        }
        (None, _) => {
            let source = match &common.kubeconfig {
                Some(p) => proxier_kube::KubeSource::from_kubeconfig(p, settings.node_name.clone())
                    .await
                    .map_err(|e| e.to_string()),
                None => proxier_kube::KubeSource::infer(settings.node_name.clone())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match source {
                Ok(s) => {
                    tokio::spawn(s.run(handle.clone()));
                }
                Err(e) => return fail(format!("Kubernetes API: {e} (or use --manifests PATH)")),
            }
        }
    }

    if common.once {
        let mut ok = false;
        runner
            .run_with(std::future::pending::<()>(), |o| {
                ok = o.ok;
                false
            })
            .await;
        if !ok {
            let e = last_error
                .lock()
                .expect("lock")
                .clone()
                .unwrap_or_else(|| "sync failed".into());
            return fail(e);
        }
        let ports: Vec<String> = not_programmed
            .lock()
            .expect("lock")
            .values()
            .flatten()
            .cloned()
            .collect();
        if !ports.is_empty() {
            for p in &ports {
                eprintln!("error: service port not programmed: {p}");
            }
            return fail(format!(
                "{} service port(s) not programmed{}; everything else was synced",
                ports.len(),
                if object_errors > 0 {
                    format!(", {object_errors} object(s) skipped")
                } else {
                    String::new()
                }
            ));
        }
        return if object_errors > 0 {
            fail(format!(
                "{object_errors} object(s) skipped; everything else was synced"
            ))
        } else {
            ExitCode::SUCCESS
        };
    }

    let health = match tokio::net::TcpListener::bind(settings.healthz_bind_address).await {
        Ok(l) => l,
        Err(e) => {
            return fail(format!(
                "--healthz-bind-address {}: {e}",
                settings.healthz_bind_address
            ));
        }
    };
    let metrics = match tokio::net::TcpListener::bind(settings.metrics_bind_address).await {
        Ok(l) => l,
        Err(e) => {
            return fail(format!(
                "--metrics-bind-address {}: {e}",
                settings.metrics_bind_address
            ));
        }
    };
    tokio::spawn(proxier_core::serve_health(
        health,
        handle.health(),
        handle.metrics(),
    ));
    tokio::spawn(proxier_core::serve_metrics(metrics, handle.metrics()));
    tracing::info!(
        node = %settings.node_name,
        families = %family_list,
        healthz = %settings.healthz_bind_address,
        metrics = %settings.metrics_bind_address,
        "running; Ctrl-C to stop (rules stay in place, as with kube-proxy; --cleanup removes them)"
    );
    runner
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    ExitCode::SUCCESS
}
