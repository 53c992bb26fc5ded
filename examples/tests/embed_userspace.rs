//! The README's "embed the userspace backend" program: a source, the
//! backend in direct mode (no iptables, no root), the runner and health;
//! run until its first sync, then a request goes through it.

use std::io::{Read, Write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embed_userspace_backend() {
    let dir = std::env::temp_dir().join(format!("proxier-embed-us-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("svc.yaml");
    std::fs::write(
        &manifest,
        include_str!("../manifests/demo.yaml")
            .replace("30080", "30181")
            .replace("8080", "8181"),
    )
    .unwrap();
    // Servers on the manifest's three endpoints (moved to port 8181 and
    // node port 30181, away from the demo's).
    for ip in ["127.0.0.11", "127.0.0.12", "127.0.0.13"] {
        let l = std::net::TcpListener::bind((ip, 8181)).unwrap();
        std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(b"hello\n");
            }
        });
    }
    let manifests = manifest.clone();
    let handle_task = tokio::spawn(async move {
        // --- the example ---
        use backend_userspace::{Config, DataPath, Direct, Mode, UserspaceProxier};
        use proxier_core::{
            ChangeTracker, IpFamily, ManifestSource, Runner, RunnerConfig, serve_health,
        };

        let backend = UserspaceProxier::new(Config {
            family: IpFamily::V4,
            mode: Mode::Direct(Direct {
                node_addresses: vec!["127.0.0.1".parse().unwrap()], // node ports here
                external_ips: true,                                 // and on LB/external IPs
                ..Direct::default()
            }),
            data: DataPath::default(), // copy relay, 250 ms UDP idle timeout
        });
        let tracker = ChangeTracker::new(IpFamily::V4, "node-1").with_loopback_endpoints(true); // endpoints on 127.0.0.x: local testing
        let (runner, handle) = Runner::new(tracker, Box::new(backend), RunnerConfig::default());
        let health = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        tokio::spawn(serve_health(health, handle.health(), handle.metrics()));
        tokio::spawn(ManifestSource::new(manifests, "node-1").run(handle.clone()));
        runner.run(std::future::pending::<()>()).await;
        // --- end of the example ---
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(mut c) = std::net::TcpStream::connect("127.0.0.1:30181") {
            c.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
            let _ = c.read_to_string(&mut got);
            if !got.is_empty() {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    handle_task.abort();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got, "hello\n");
}
