//! Health over real HTTP on 127.0.0.1: `/healthz` and `/livez` with
//! kube-proxy's semantics, and the per-service health-check node port
//! server (200 with the local endpoint count, 503 with none).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proxier_core::{Metrics, NamespacedName, ProxyHealth, ServiceHealthServer, serve_health};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut r = String::new();
    s.read_to_string(&mut r).await?;
    let code = r.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, r))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn healthz_and_livez() {
    let health = Arc::new(ProxyHealth::new(Duration::from_millis(100)));
    let metrics = Arc::new(Metrics::new());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(serve_health(l, health.clone(), metrics.clone()));
    let (code, body) = get(addr, "/healthz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("Content-Type: application/json")
            || body.contains("content-type: application/json"),
        "{body}"
    );
    assert!(
        body.to_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{body}"
    );
    // The node is going away: /healthz fails, /livez does not.
    health.set_node_eligible(false);
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 503);
    let (code, body) = get(addr, "/livez").await.unwrap();
    assert_eq!(code, 200, "{body}");
    health.set_node_eligible(true);
    // An update queued for longer than the timeout: both fail.
    health.queued_update();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (code, body) = get(addr, "/healthz").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("\"healthy\":false"), "{body}");
    assert_eq!(get(addr, "/livez").await.unwrap().0, 503);
    health.updated();
    assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(get(addr, "/nope").await.unwrap().0, 404);
    let text = metrics.encode();
    assert!(
        text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("kubeproxy_proxy_livez_total{code=\"200\"} 1"),
        "{text}"
    );
    // The sync histogram's series (one per ip_family) come with the first
    // sync, as kube-proxy's HistogramVec's do.
    assert!(
        !text.contains("kubeproxy_sync_proxy_rules_duration_seconds_bucket"),
        "{text}"
    );
    metrics.observe_sync(proxier_core::IpFamily::V6, true, Duration::from_millis(5));
    let text = metrics.encode();
    assert!(
        text.contains(
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.008\",ip_family=\"IPv6\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn health_check_node_ports() {
    let proxy = Arc::new(ProxyHealth::new(Duration::from_millis(100)));
    let server = ServiceHealthServer::new(vec!["127.0.0.1".parse().unwrap()], proxy.clone());
    let nn = NamespacedName::new("ns2", "svc2");
    let port = free_port();
    server
        .sync_services(&BTreeMap::from([(nn.clone(), port)]))
        .await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (code, body) = get(addr, "/").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"localEndpoints\":0"), "{body}");
    server.sync_endpoints(&|n| if *n == nn { 2 } else { 0 });
    let (code, body) = get(addr, "/").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("{\"service\":{\"namespace\":\"ns2\",\"name\":\"svc2\"},\"localEndpoints\":2,\"serviceProxyHealthy\":true}"), "{body}");
    assert!(
        body.to_lowercase()
            .contains("x-load-balancing-endpoint-weight: 2"),
        "{body}"
    );
    // An unhealthy proxy fails every service.
    proxy.queued_update();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(get(addr, "/").await.unwrap().0, 503);
    proxy.updated();
    // The service goes away: its port closes.
    server.sync_services(&BTreeMap::new()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        get(addr, "/").await.is_err(),
        "health-check port still open after the service left"
    );
    assert!(server.ports().is_empty());
}
