//! Health, as kube-proxy's `pkg/proxy/healthcheck`: the proxy's own
//! `/healthz` and `/livez`, and one HTTP server per health-check node port
//! for `externalTrafficPolicy: Local` services.
//!
//! Check by hand: `curl -i http://NODE:10256/healthz`,
//! `curl -i http://NODE:HC_NODE_PORT/`.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::{CodeLabel, Metrics};
use crate::model::NamespacedName;

#[derive(Debug)]
struct HealthInner {
    last_updated: SystemTime,
    oldest_pending: Option<Instant>,
    node_eligible: bool,
}

/// kube-proxy's `ProxyHealthServer` state: unhealthy when an update has
/// been queued for longer than the timeout (2 × sync period by default).
#[derive(Debug)]
pub struct ProxyHealth {
    inner: Mutex<HealthInner>,
    timeout: Duration,
}

/// What `/healthz` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthStatus {
    /// No queued update older than the timeout.
    pub healthy: bool,
    /// The node exists and is not being deleted.
    pub node_eligible: bool,
    /// The last successful sync.
    pub last_updated: SystemTime,
}

impl ProxyHealth {
    /// A health state with the given timeout; starts healthy.
    pub fn new(timeout: Duration) -> Self {
        ProxyHealth {
            inner: Mutex::new(HealthInner {
                last_updated: SystemTime::now(),
                oldest_pending: None,
                node_eligible: true,
            }),
            timeout,
        }
    }

    /// An update was queued (kube-proxy's `QueuedUpdate`): remembered only
    /// if none is pending.
    pub fn queued_update(&self) {
        let mut i = self.inner.lock().unwrap();
        if i.oldest_pending.is_none() {
            i.oldest_pending = Some(Instant::now());
        }
    }

    /// A sync succeeded (kube-proxy's `Updated`).
    pub fn updated(&self) {
        let mut i = self.inner.lock().unwrap();
        i.oldest_pending = None;
        i.last_updated = SystemTime::now();
    }

    /// Sets node eligibility (from the Node object).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.inner.lock().unwrap().node_eligible = eligible;
    }

    /// The current status.
    pub fn status(&self) -> HealthStatus {
        let i = self.inner.lock().unwrap();
        let healthy = i.oldest_pending.is_none_or(|t| t.elapsed() <= self.timeout);
        HealthStatus {
            healthy,
            node_eligible: i.node_eligible,
            last_updated: i.last_updated,
        }
    }

    /// Healthy, ignoring the node.
    pub fn is_healthy(&self) -> bool {
        self.status().healthy
    }
}

/// Formats a time as RFC 3339 UTC (`2006-01-02T15:04:05Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A response: status, extra headers, JSON or text body.
type Reply = (StatusCode, Vec<(&'static str, String)>, String);

/// Bounds of the health and metrics servers, so that a flood of
/// connections cannot exhaust the descriptors or stall the proxier.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once; beyond it a new connection is closed
    /// at once (kube-proxy's probes are short-lived).
    pub max_connections: usize,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// Longest life of a connection, keep-alive included.
    pub lifetime: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 256,
            header_timeout: Duration::from_secs(5),
            lifetime: Duration::from_secs(30),
        }
    }
}

/// Serves HTTP/1 on `listener` with `handler(path)` until the task is
/// aborted, within [`ServerLimits::default`].
pub async fn serve<F>(listener: TcpListener, handler: F)
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    serve_within(listener, handler, ServerLimits::default()).await
}

/// Serves `handler` over HTTP/1 on `listener` within `limits`.
pub async fn serve_within<F>(listener: TcpListener, handler: F, limits: ServerLimits)
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut refused = 0u64;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed on health server");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Full: close it now rather than let it hold a descriptor.
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    max = limits.max_connections,
                    refused,
                    "health/metrics server at its connection limit; closing new connections"
                );
            }
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, headers, body) = handler(req.uri().path());
                async move {
                    let mut resp = Response::builder().status(status);
                    for (k, v) in headers {
                        resp = resp.header(k, v);
                    }
                    Ok::<_, Infallible>(
                        resp.body(Full::new(Bytes::from(body)))
                            .expect("valid response"),
                    )
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, svc);
            let _ = tokio::time::timeout(limits.lifetime, conn).await;
        });
    }
}

fn json_headers() -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".into()),
        ("X-Content-Type-Options", "nosniff".into()),
    ]
}

/// The proxy's `/healthz` and `/livez` (kube-proxy's `--healthz-bind-address`).
pub async fn serve_health(listener: TcpListener, health: Arc<ProxyHealth>, metrics: Arc<Metrics>) {
    serve(listener, move |path| {
        let s = health.status();
        let now = SystemTime::now();
        let (ok, counter) = match path {
            "/healthz" => (s.healthy && s.node_eligible, &metrics.healthz_total),
            "/livez" => (s.healthy, &metrics.livez_total),
            _ => return (StatusCode::NOT_FOUND, vec![], "404 page not found\n".into()),
        };
        let status = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        counter
            .get_or_create(&CodeLabel {
                code: status.as_u16().to_string(),
            })
            .inc();
        // On success kube-proxy reports "now" as lastUpdated.
        let last = if ok { now } else { s.last_updated };
        let mut body = format!(
            "{{\"lastUpdated\":\"{}\",\"currentTime\":\"{}\"",
            rfc3339(last),
            rfc3339(now)
        );
        if path == "/healthz" {
            body.push_str(&format!(",\"nodeEligible\":{}", s.node_eligible));
        }
        body.push_str(&format!(",\"healthy\":{}}}", s.healthy));
        (status, json_headers(), body)
    })
    .await
}

/// `/metrics` (kube-proxy's `--metrics-bind-address`).
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    serve(listener, move |path| match path {
        "/metrics" => (
            StatusCode::OK,
            vec![("Content-Type", "text/plain; version=0.0.4".into())],
            metrics.encode(),
        ),
        _ => (StatusCode::NOT_FOUND, vec![], "404 page not found\n".into()),
    })
    .await
}

#[derive(Debug)]
struct Instance {
    port: u16,
    endpoints: Arc<AtomicU32>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One HTTP server per health-check node port (kube-proxy's
/// `ServiceHealthServer`): 200 with the local endpoint count when the
/// service has ready endpoints on this node and the proxy is healthy, 503
/// otherwise.
#[derive(Debug)]
pub struct ServiceHealthServer {
    bind_ips: Vec<IpAddr>,
    proxy: Arc<ProxyHealth>,
    services: Mutex<HashMap<NamespacedName, Instance>>,
}

impl ServiceHealthServer {
    /// Listens on each of `bind_ips` (use `0.0.0.0` for every address).
    pub fn new(bind_ips: Vec<IpAddr>, proxy: Arc<ProxyHealth>) -> Self {
        ServiceHealthServer {
            bind_ips,
            proxy,
            services: Mutex::new(HashMap::new()),
        }
    }

    /// Opens servers for new services, closes those gone or moved. A port
    /// that cannot be bound is logged and retried at the next sync.
    pub async fn sync_services(&self, ports: &BTreeMap<NamespacedName, u16>) {
        let mut to_open = Vec::new();
        {
            let mut svcs = self.services.lock().unwrap();
            svcs.retain(|nn, inst| ports.get(nn) == Some(&inst.port));
            for (nn, port) in ports {
                if !svcs.contains_key(nn) {
                    to_open.push((nn.clone(), *port));
                }
            }
        }
        for (nn, port) in to_open {
            let endpoints = Arc::new(AtomicU32::new(0));
            let mut tasks = Vec::new();
            let mut failed = false;
            for ip in &self.bind_ips {
                match TcpListener::bind(SocketAddr::new(*ip, port)).await {
                    Ok(l) => tasks.push(tokio::spawn(serve(
                        l,
                        Self::handler(nn.clone(), endpoints.clone(), self.proxy.clone()),
                    ))),
                    Err(e) => {
                        tracing::warn!(service = %nn, port, error = %e, "FailedToStartServiceHealthcheck");
                        failed = true;
                    }
                }
            }
            let inst = Instance {
                port,
                endpoints,
                tasks,
            };
            if !failed {
                self.services.lock().unwrap().insert(nn, inst);
            }
        }
    }

    fn handler(
        nn: NamespacedName,
        endpoints: Arc<AtomicU32>,
        proxy: Arc<ProxyHealth>,
    ) -> impl Fn(&str) -> Reply + Send + Sync + 'static {
        move |_path| {
            let n = endpoints.load(Ordering::Relaxed);
            let healthy = proxy.is_healthy();
            let status = if n != 0 && healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut headers = json_headers();
            headers.push(("X-Load-Balancing-Endpoint-Weight", n.to_string()));
            let body = format!(
                "{{\"service\":{{\"namespace\":\"{}\",\"name\":\"{}\"}},\"localEndpoints\":{},\"serviceProxyHealthy\":{}}}",
                nn.namespace, nn.name, n, healthy
            );
            (status, headers, body)
        }
    }

    /// Sets local ready endpoint counts; services not in `counts` get 0.
    pub fn sync_endpoints(&self, counts: &dyn Fn(&NamespacedName) -> u32) {
        for (nn, inst) in self.services.lock().unwrap().iter() {
            inst.endpoints.store(counts(nn), Ordering::Relaxed);
        }
    }

    /// Ports currently served.
    pub fn ports(&self) -> BTreeMap<NamespacedName, u16> {
        self.services
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.port))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // leap day 2000
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
    }
}
