//! The demo: no cluster, no root. Starts the userspace proxier in direct
//! mode from a bundled manifest (a NodePort service with three endpoints
//! on 127.0.0.11-13:8080), starts small HTTP servers on those endpoints,
//! sends a few requests through the node port and shows how they spread.
//! Then it keeps serving until Ctrl-C; edit the manifest file it prints
//! and the proxier follows.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use backend_userspace::{Config, DataPath, Direct, Mode, UserspaceProxier};
use clap::Parser;
use proxier_core::{ChangeTracker, IpFamily, ManifestSource, Protocol, Runner, RunnerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BUNDLED: &str = include_str!("../../manifests/demo.yaml");

#[derive(Debug, Parser)]
#[command(
    name = "demo",
    version,
    about = "proxier's zero-setup demo: the userspace proxier on loopback"
)]
struct Cli {
    /// A manifest file or directory instead of the bundled one.
    #[arg(long, value_name = "PATH")]
    manifests: Option<PathBuf>,
    /// The address node ports are served on.
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    listen: IpAddr,
    /// Requests the demo sends itself through each node port.
    #[arg(long, default_value_t = 9, value_name = "N")]
    requests: usize,
    /// The node this proxier runs as (endpoints' nodeName).
    #[arg(long, default_value = "node-1", value_name = "NAME")]
    hostname_override: String,
}

/// Logging on stderr, `RUST_LOG` else warnings only; colour only on a
/// terminal and never with `NO_COLOR`.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The copy of the bundled manifest, removed when the demo ends: by
/// Ctrl-C, SIGTERM or an error (not by SIGKILL, which nothing survives).
struct TempManifest(Option<PathBuf>);

impl Drop for TempManifest {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Ctrl-C or SIGTERM (what `kill` and a service manager send).
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// An HTTP server at `addr` answering every request with who it is.
async fn http_server(addr: SocketAddr) -> std::io::Result<()> {
    let l = TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        loop {
            let Ok((mut c, peer)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                // Read the request head (or whatever a raw `nc` sends).
                while got < buf.len() {
                    match tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf[got..]))
                        .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(n)) => {
                            got += n;
                            if buf[..got].windows(4).any(|w| w == b"\r\n\r\n")
                                || buf[..got].ends_with(b"\n\n")
                            {
                                break;
                            }
                        }
                    }
                }
                let body =
                    format!("hello from endpoint {addr} (the proxy connected from {peer})\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(resp.as_bytes()).await;
                let _ = c.shutdown().await;
            });
        }
    });
    Ok(())
}

/// One HTTP GET; returns the endpoint that answered.
async fn get(addr: SocketAddr) -> Result<String, String> {
    let mut c = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    c.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(3), c.read_to_string(&mut out))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    out.split("hello from endpoint ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .map(str::to_owned)
        .ok_or_else(|| format!("unexpected answer: {out:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    // Quiet unless RUST_LOG asks for more.
    init_logging();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut copy = TempManifest(None);
    let path = match &cli.manifests {
        Some(p) => p.clone(),
        None => {
            let p = std::env::temp_dir().join(format!("proxier-demo-{}.yaml", std::process::id()));
            std::fs::write(&p, BUNDLED).map_err(|e| format!("{}: {e}", p.display()))?;
            copy.0 = Some(p.clone());
            p
        }
    };
    let family = IpFamily::of(&cli.listen);
    let proxier = UserspaceProxier::new(Config {
        family,
        mode: Mode::Direct(Direct {
            cluster_ips: false,
            external_ips: true,
            node_addresses: vec![cli.listen],
            freebind: false,
        }),
        data: DataPath::default(),
    });
    // The demo's endpoints listen on loopback, which the API server would
    // refuse in an EndpointSlice: accepted here, for local testing only.
    let tracker = ChangeTracker::new(family, &cli.hostname_override).with_loopback_endpoints(true);
    let (runner, handle) = Runner::new(
        tracker,
        Box::new(proxier),
        RunnerConfig {
            min_sync_period: Duration::from_millis(100),
            ..RunnerConfig::default()
        },
    );
    let (_, errors) = ManifestSource::new(&path, cli.hostname_override.clone())
        .load_into(&handle)
        .map_err(|e| e.to_string())?;
    for e in &errors {
        eprintln!("warning: {e}");
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let bundled_copy = copy.0.clone();
    tokio::spawn(async move {
        runner
            .run_with(stop_signal(), move |o| {
                let _ = tx.send(o.ok);
                true
            })
            .await;
        if let Some(p) = bundled_copy {
            let _ = std::fs::remove_file(p);
        }
        std::process::exit(0);
    });
    tokio::spawn(ManifestSource::new(&path, cli.hostname_override.clone()).run(handle.clone()));
    if rx.recv().await != Some(true) {
        return Err(
            "the first sync failed (is a node port already in use?); RUST_LOG=info shows why"
                .into(),
        );
    }
    let snap = handle.with_tracker(|t| t.snapshot().clone());
    let mut fronts: Vec<(String, SocketAddr, Vec<SocketAddr>)> = Vec::new();
    for (name, svc) in snap.services.iter() {
        if svc.protocol() != Protocol::Tcp {
            continue;
        }
        let eps: Vec<SocketAddr> = snap.endpoints_of(name).iter().map(|e| e.addr).collect();
        for ep in &eps {
            if ep.ip().is_loopback() {
                // Ours to start; one already there (a rerun) is fine.
                let _ = http_server(*ep).await;
            }
        }
        if svc.node_port != 0 {
            fronts.push((
                name.to_string(),
                SocketAddr::new(cli.listen, svc.node_port),
                eps.clone(),
            ));
        }
        for ip in svc.load_balancer_ips.iter().chain(&svc.external_ips) {
            if ip.is_loopback() {
                fronts.push((
                    name.to_string(),
                    SocketAddr::new(*ip, svc.port),
                    eps.clone(),
                ));
            }
        }
    }
    if fronts.is_empty() {
        return Err(format!(
            "{}: no TCP service with a node port (or a loopback LB/external IP) to show",
            path.display()
        ));
    }
    println!(
        "proxier demo: the userspace proxier (direct mode) serving {}",
        path.display()
    );
    for (name, front, eps) in &fronts {
        let eps: Vec<String> = eps.iter().map(|e| e.to_string()).collect();
        println!("  {name:<24} {front}  →  {}", eps.join(", "));
    }
    for (_, front, _) in &fronts {
        let mut spread: BTreeMap<String, usize> = BTreeMap::new();
        for _ in 0..cli.requests {
            let who = get(*front).await.unwrap_or_else(|e| format!("error: {e}"));
            *spread.entry(who).or_default() += 1;
        }
        let parts: Vec<String> = spread.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        println!(
            "{} requests through {front}: {}",
            cli.requests,
            parts.join(", ")
        );
    }
    let (_, front, _) = &fronts[0];
    println!(
        "try: curl http://{front}/   (or: nc {} {})",
        front.ip(),
        front.port()
    );
    println!(
        "edit {} and the proxier follows; Ctrl-C to stop",
        path.display()
    );
    std::future::pending::<()>().await;
    Ok(())
}
