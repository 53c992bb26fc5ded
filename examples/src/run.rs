//! From flags and a backend to a running proxier: the source, the runner,
//! health and metrics, `--once` and `--cleanup`.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use proxier_core::{
    ChangeTracker, IpFamily, ManifestSource, MetaProxier, Proxier, ProxierError, Runner,
    RunnerConfig, SyncRequest, SyncStats,
};

use crate::cli::{Cli, Mode, Settings};
use crate::modes::{BoxError, Factory};

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
    start_logging(filter);
}

/// Starts logging as kube-proxy's flags ask: `--v` (klog levels: 0-2
/// info, 3-4 debug, 5+ trace) and `--vmodule` entries as tracing
/// targets; without `--v`, `RUST_LOG`, else info.
pub fn init_logging_for(s: &Settings) {
    let mut directives = match s.verbosity {
        Some(v) => crate::flags::level_of(v).to_string(),
        None => std::env::var("RUST_LOG")
            .ok()
            .filter(|x| !x.is_empty())
            .unwrap_or_else(|| "info".into()),
    };
    for (module, v) in &s.vmodule {
        directives.push_str(&format!(",{module}={}", crate::flags::level_of(*v)));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    start_logging(filter);
}

/// Colour only on a terminal, and never with `NO_COLOR` set
/// (<https://no-color.org>): a log file or a pipe gets plain text.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn start_logging(filter: tracing_subscriber::EnvFilter) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
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
    families_with(forced, None).await
}

/// [`families`], with the primary family given (`--bind-address`).
pub async fn families_with(forced: Option<IpFamily>, primary: Option<IpFamily>) -> Vec<IpFamily> {
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
    let global = proxier_netfilter::is_global;
    let v6_only = addrs.iter().any(|ip| global(ip) && ip.is_ipv6())
        && !addrs.iter().any(|ip| global(ip) && ip.is_ipv4());
    if primary == Some(IpFamily::V6) || (primary.is_none() && v6_only) {
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
    make: &impl AsyncFn(&Settings) -> Result<Box<dyn Proxier>, BoxError>,
) -> Result<Vec<(IpFamily, Box<dyn Proxier>)>, BoxError> {
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
                error = %proxier_core::escape(&proxier_core::ErrorChain(e.as_ref()).to_string()),
                "not running dual-stack: the {} backend cannot be built; proxying {} only",
                f.as_str(),
                families[0].as_str()
            ),
        }
    }
    Ok(built)
}

/// The entry point of `proxier` (`fixed` is `None`: `--proxy-mode`
/// chooses) and of each mode's binary (`fixed` is its mode).
pub async fn main(fixed: Option<Mode>, name: &'static str, about: &'static str) -> ExitCode {
    let cli = Cli::parse_args(name, about);
    run(cli, fixed).await
}

/// Applies the `conntrack.*` settings, logging each one the kernel refuses.
fn apply_conntrack(settings: &Settings) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    for e in settings.conntrack.apply(&proxier_netfilter::ProcSys, cpus) {
        tracing::warn!(error = %proxier_core::ErrorChain(&e), "conntrack setting not applied");
    }
}

fn fail_chain(e: &BoxError) -> ExitCode {
    fail(proxier_core::ErrorChain(e.as_ref()))
}

/// Runs a parsed command line.
pub async fn run(cli: Cli, fixed: Option<Mode>) -> ExitCode {
    let settings = match cli.settings(fixed) {
        Ok(s) => s,
        Err(e) => {
            init_logging();
            return fail(e);
        }
    };
    init_logging_for(&settings);
    for (flag, why) in &cli.ignored {
        tracing::warn!(flag = %format!("--{flag}"), "kube-proxy flag accepted and ignored: {why}");
    }
    for (field, why) in &settings.ignored_fields {
        tracing::warn!(field, "configuration field accepted and ignored: {why}");
    }
    if !cli.beside_config.is_empty() {
        tracing::warn!(
            flags = %cli.beside_config.join(" "),
            "these flags override the --config file here; kube-proxy v1.33 ignores them when --config is given"
        );
    }
    if !settings.feature_gates.is_empty() {
        tracing::info!(
            gates = %settings.feature_gates.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
            "feature gates read; none changes behaviour here"
        );
    }
    let c = &cli.common;
    if let Some(path) = &c.write_config_to {
        return match std::fs::write(path, crate::cli::DEFAULT_CONFIG) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "wrote the default configuration");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("--write-config-to {}: {e}", path.display())),
        };
    }
    let families = families_with(settings.forced_family, settings.primary_family).await;
    if c.cleanup == Some(true) {
        let (done, failed) = crate::modes::cleanup_all(&settings, &families).await;
        for (what, e) in &failed {
            tracing::error!(mode = %what, error = %proxier_core::ErrorChain(e.as_ref()), "cleanup failed");
        }
        if failed.is_empty() {
            tracing::info!(modes = %done.join(", "), "cleaned up every mode");
            return ExitCode::SUCCESS;
        }
        return fail(format!(
            "cleanup failed for {}: {}",
            failed
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            proxier_core::ErrorChain(failed[0].1.as_ref())
        ));
    }
    if c.init_only == Some(true) {
        apply_conntrack(&settings);
        tracing::info!("initialised (conntrack settings); exiting as --init-only asks");
        return ExitCode::SUCCESS;
    }
    let factory = match Factory::new(&cli) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let make = async |s: &Settings| factory.build(s).await;
    let built = match build_families(&settings, &families, &make).await {
        Ok(b) => b,
        Err(e) => return fail_chain(&e),
    };
    // kube-proxy's conntrack settings, once every value has been checked
    // and the backends built (a bad flag touches nothing), before the
    // first sync; not for userspace --direct, which NATs nothing.
    if !(settings.mode == Mode::Userspace && cli.userspace.direct) {
        apply_conntrack(&settings);
    }
    let families: Vec<IpFamily> = built.iter().map(|(f, _)| *f).collect();
    let family_list = families
        .iter()
        .map(|f| f.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let proxier: Box<dyn Proxier> = if built.len() == 1 {
        built.into_iter().next().expect("one").1
    } else {
        Box::new(MetaProxier::new(built))
    };
    let once = c.once == Some(true);
    let allow_loopback = c.allow_loopback_endpoints == Some(true);
    let last_error = Arc::new(Mutex::new(None));
    let not_programmed = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    let trackers = families
        .iter()
        .map(|f| {
            ChangeTracker::new(*f, &settings.node_name).with_loopback_endpoints(allow_loopback)
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

    factory.register_metrics(settings.mode, &handle.metrics());
    let mut object_errors = 0usize;
    match (&c.manifests, once) {
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
            let source = proxier_kube::KubeSource::connect(
                settings.kubeconfig.as_deref(),
                settings.master.as_deref(),
                settings.node_name.clone(),
            )
            .await;
            match source {
                Ok(s) => {
                    tokio::spawn(s.run(handle.clone()));
                }
                Err(e) => {
                    return fail(format!(
                        "Kubernetes API: {} (or use --manifests PATH)",
                        proxier_core::ErrorChain(e.as_ref())
                    ));
                }
            }
        }
    }

    if once {
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

    let bind = async |what: &str, addr: Option<std::net::SocketAddr>| {
        let addr = addr?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(Ok(l)),
            Err(e) if settings.bind_address_hard_fail => Some(Err(format!(
                "--{what} {addr}: {e} (--bind-address-hard-fail)"
            ))),
            Err(e) => {
                tracing::error!(flag = %format!("--{what}"), %addr, error = %e, "cannot bind; serving without it (kube-proxy does the same unless --bind-address-hard-fail)");
                None
            }
        }
    };
    match bind("healthz-bind-address", settings.healthz_bind_address).await {
        Some(Ok(l)) => {
            tokio::spawn(proxier_core::serve_health(
                l,
                handle.health(),
                handle.metrics(),
            ));
        }
        Some(Err(e)) => return fail(e),
        None => {}
    }
    match bind("metrics-bind-address", settings.metrics_bind_address).await {
        Some(Ok(l)) => {
            tokio::spawn(proxier_core::serve_metrics(l, handle.metrics()));
        }
        Some(Err(e)) => return fail(e),
        None => {}
    }
    tracing::info!(
        node = %settings.node_name,
        families = %family_list,
        mode = settings.mode.as_str(),
        healthz = %settings.healthz_bind_address.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        metrics = %settings.metrics_bind_address.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        "running; Ctrl-C to stop (rules stay in place, as with kube-proxy; --cleanup removes them)"
    );
    runner
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    ExitCode::SUCCESS
}
