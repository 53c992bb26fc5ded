//! The README's embedding example, compiled and run: a source, a backend,
//! the runner, and health, in under 30 lines.

use std::time::Duration;

use proxier_core::{
    ChangeTracker, IpFamily, ManifestSource, Proxier, ProxierError, Runner, RunnerConfig,
    SyncRequest, SyncStats,
};

/// A backend: here one that only counts; a real one programs the kernel.
struct Printer(std::sync::Arc<std::sync::atomic::AtomicUsize>);

#[async_trait::async_trait]
impl Proxier for Printer {
    fn name(&self) -> &str {
        "printer"
    }
    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        for svc in req.snapshot.services.values() {
            let eps = req.snapshot.categorize(svc);
            println!("{} {} -> {:?}", svc.name, svc.frontend(), eps.cluster());
        }
        self.0.store(
            req.snapshot.endpoint_count(),
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(SyncStats::default())
    }
    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        Ok(())
    }
}

#[tokio::test]
async fn embed_in_under_thirty_lines() {
    let dir = std::env::temp_dir().join(format!("proxier-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("svc.yaml"),
        // The demo's endpoints are on loopback (local testing); these are
        // addresses the API server accepts.
        include_str!("../../examples/manifests/demo.yaml").replace("127.0.0.1", "10.0.1."),
    )
    .unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // --- the example ---
    let tracker = ChangeTracker::new(IpFamily::V4, "node-1");
    let (runner, handle) = Runner::new(
        tracker,
        Box::new(Printer(seen.clone())),
        RunnerConfig::default(),
    );
    let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = health.local_addr().unwrap();
    tokio::spawn(proxier_core::serve_health(
        health,
        handle.health(),
        handle.metrics(),
    ));
    tokio::spawn(ManifestSource::new(&dir, "node-1").run(handle.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async {
        let _ = stopped.await;
    }));
    // --- end of the example ---

    for _ in 0..100 {
        if seen.load(std::sync::atomic::Ordering::SeqCst) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
    // /healthz answers over real HTTP.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("\"healthy\":true") && body.contains("\"nodeEligible\":true"),
        "{body}"
    );
    let _ = stop.send(());
    let mut backend = task.await.unwrap();
    backend.cleanup().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
