//! The userspace proxier's data path on loopback, against a direct
//! connection and HAProxy (TCP mode) forwarding to the same server, in one
//! run: single-stream throughput, connect + 1-byte echo latency (criterion
//! median, and p50/p99 over 2,000 samples), connections per second with
//! 100 concurrent clients, and memory per idle connection.
//!
//! Each proxy runs in its own process (HAProxy, and this bench re-executed
//! as the userspace proxier with the copy or the splice relay), so memory
//! is the proxy's alone. The summary goes to stdout as `USERSPACE …`
//! lines and to `target/proxier-report/userspace.json`.
//!
//! `cargo bench -p benches --bench userspace` (needs `haproxy`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backend_userspace::{Config, DataPath, Direct, Mode, Relay, UserspaceProxier};
use benches::wire::{Bulk, CHUNK, echo_once, serve_forever};
use criterion::{Criterion, Throughput};
use proxier_core::{ChangeTracker, IpFamily, Protocol, Proxier, ServiceType, SyncRequest};
use proxier_testbed::{ep, service, slice};

const ECHO: &str = "127.0.0.1:0";

fn start_server() -> SocketAddr {
    let l = std::net::TcpListener::bind(ECHO).expect("bind server");
    let addr = l.local_addr().expect("addr");
    serve_forever(l);
    addr
}

/// This bench, re-executed as a userspace proxier serving `front` →
/// `backend` with `relay` until its stdin closes.
fn proxy_role(front: SocketAddr, backend: SocketAddr, relay: Relay) {
    let _ = backend_userspace::raise_fd_limit(64_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut tracker = ChangeTracker::new(IpFamily::V4, "node-1").with_loopback_endpoints(true);
        let mut s = service(
            "default",
            "bench",
            "10.96.0.1",
            &[("p", front.port(), Protocol::Tcp)],
        );
        s.service_type = ServiceType::LoadBalancer;
        s.load_balancer_ips = vec![front.ip()];
        tracker.update_service(&s).expect("service");
        tracker
            .update_endpoint_slice(&slice(
                "default",
                "bench",
                &[("p", backend.port(), Protocol::Tcp)],
                vec![ep(backend.ip(), "node-1")],
            ))
            .expect("slice");
        let mut p = UserspaceProxier::new(Config {
            family: IpFamily::V4,
            mode: Mode::Direct(Direct {
                external_ips: true,
                ..Direct::default()
            }),
            data: DataPath {
                relay,
                ..DataPath::default()
            },
        });
        let (snapshot, changes) = tracker.apply();
        p.sync(&SyncRequest {
            snapshot,
            changes,
            full: true,
            verify: false,
        })
        .await
        .expect("sync");
        println!("ready");
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_to_string(&mut s);
        })
        .await;
    });
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn spawn_userspace(front: SocketAddr, backend: SocketAddr, relay: &str) -> Proc {
    let mut c = Command::new(std::env::current_exe().expect("exe"))
        .env(
            "PROXIER_BENCH_ROLE",
            format!("userspace {front} {backend} {relay}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("userspace proxy");
    let mut line = String::new();
    BufReader::new(c.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready");
    assert_eq!(line.trim(), "ready", "the userspace proxy did not start");
    Proc(c)
}

fn spawn_haproxy(front: SocketAddr, backend: SocketAddr) -> Proc {
    let dir = std::env::temp_dir().join(format!("proxier-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 9000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend f\n  bind {front}\n  default_backend b\nbackend b\n  server s1 {backend}\n"
        ),
    )
    .expect("config");
    let c = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("haproxy: {e} (apt-get install haproxy)"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(front).is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // haproxy has read its configuration: nothing is left in the temp folder.
    let _ = std::fs::remove_dir_all(&dir);
    Proc(c)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Connect + echo from 100 threads for `dur`: connections per second.
fn conn_rate(addr: SocketAddr, dur: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    echo_once(addr);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(dur);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    done.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
}

/// KiB of the proxy's RSS per idle, established connection.
fn idle_kib(proc_: &Proc, addr: SocketAddr, n: usize) -> f64 {
    let before = proc_.rss_kib();
    let conns: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).expect("connect");
            c.write_all(b"e").expect("write");
            let mut b = [0u8; 1];
            c.read_exact(&mut b).expect("echo");
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let after = proc_.rss_kib();
    drop(conns);
    after.saturating_sub(before) as f64 / n as f64
}

fn main() {
    if let Ok(role) = std::env::var("PROXIER_BENCH_ROLE") {
        let w: Vec<&str> = role.split_whitespace().collect();
        assert_eq!(w.first(), Some(&"userspace"), "unknown role {role}");
        let relay = Relay::parse(w[3]).expect("relay");
        proxy_role(
            w[1].parse().expect("front"),
            w[2].parse().expect("backend"),
            relay,
        );
        return;
    }
    let quick = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default().configure_from_args();
    let backend = start_server();
    let fronts: [(&str, SocketAddr); 4] = [
        ("direct", backend),
        (
            "haproxy",
            SocketAddr::new(IpAddr::from([127, 0, 0, 2]), backend.port()),
        ),
        (
            "userspace-copy",
            SocketAddr::new(IpAddr::from([127, 0, 0, 3]), backend.port()),
        ),
        (
            "userspace-splice",
            SocketAddr::new(IpAddr::from([127, 0, 0, 4]), backend.port()),
        ),
    ];
    let procs: Vec<(&str, Proc)> = vec![
        ("haproxy", spawn_haproxy(fronts[1].1, backend)),
        (
            "userspace-copy",
            spawn_userspace(fronts[2].1, backend, "copy"),
        ),
        (
            "userspace-splice",
            spawn_userspace(fronts[3].1, backend, "splice"),
        ),
    ];

    let mut g = c.benchmark_group("userspace/throughput");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    g.sample_size(10);
    for (name, addr) in fronts {
        let mut bulk = Bulk::new(addr);
        g.bench_function(name, |b| b.iter(|| bulk.chunk()));
    }
    g.finish();

    let mut g = c.benchmark_group("userspace/connect_echo");
    for (name, addr) in fronts {
        g.bench_function(name, |b| b.iter(|| echo_once(addr)));
    }
    g.finish();

    // The figures criterion does not give: percentiles, rate, memory.
    let samples = if quick { 50 } else { 2000 };
    let rate_for = if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(3)
    };
    let idle = if quick { 50 } else { 2000 };
    let mut json = Vec::new();
    for (name, addr) in fronts {
        let mut lat: Vec<Duration> = (0..samples).map(|_| echo_once(addr)).collect();
        lat.sort();
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
        let rate = conn_rate(addr, rate_for);
        let mem = procs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| idle_kib(p, addr, idle));
        println!(
            "USERSPACE {name} p50_us={:.1} p99_us={:.1} conn_per_s={rate:.0} idle_kib_per_conn={}",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            mem.map(|m| format!("{m:.2}")).unwrap_or_else(|| "-".into())
        );
        json.push(format!(
            "{{\"target\":\"{name}\",\"p50_us\":{:.1},\"p99_us\":{:.1},\"conn_per_s\":{rate:.0},\"idle_kib_per_conn\":{}}}",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            mem.map(|m| format!("{m:.3}")).unwrap_or_else(|| "null".into())
        ));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/proxier-report");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("userspace.json"),
        format!("[{}]\n", json.join(",\n")),
    );
    drop(procs);
    c.final_summary();
}
