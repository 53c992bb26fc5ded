//! Resource bounds: 10,000 concurrent TCP connections through one service
//! leave no descriptor behind; a UDP flood from 100,000 source ports keeps
//! the flow table and memory bounded. Loopback, direct mode.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backend_userspace::{DataPath, raise_fd_limit};
use common::*;
use proxier_core::ServiceType;
use proxier_testbed::{ep, service, slice};

fn lb_service(
    n: u8,
    port: u16,
    proto: proxier_core::Protocol,
) -> (proxier_core::Service, proxier_core::EndpointSlice) {
    let mut s = service(
        "default",
        "big",
        &format!("10.97.{n}.1"),
        &[("p", port, proto)],
    );
    s.service_type = ServiceType::LoadBalancer;
    s.load_balancer_ips = vec![ip(&format!("127.78.{n}.1"))];
    let sl = slice(
        "default",
        "big",
        &[("p", 9000, proto)],
        vec![ep(ip(&format!("127.78.{n}.11")), "node-1")],
    );
    (s, sl)
}

/// The two tests count this process's descriptors: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A child running `tcp-load`, killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tcp_load(args: &[&str]) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::process::{Command, Stdio};
    let mut c = Command::new(env!("CARGO_BIN_EXE_tcp-load"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("tcp-load");
    let out = std::io::BufReader::new(c.stdout.take().unwrap());
    (Child(c), out)
}

fn line(r: &mut impl std::io::BufRead) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s.trim_end().to_string()
}

/// 10,000 connections held open at once through one service, then
/// closed: no descriptor left. The clients and the server run in their
/// own processes, so this process (the proxy) has the whole descriptor
/// limit; it holds two per connection. Where the hard limit cannot be
/// raised past 20,000 (no `CAP_SYS_RESOURCE`), N is what fits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_connections_leak_no_descriptors() {
    let _serial = SERIAL.lock().await;
    let limit = raise_fd_limit(65_536).unwrap() as usize;
    let n = 10_000.min((limit - 100) / 2);
    assert!(
        n >= 9_900,
        "RLIMIT_NOFILE {limit} leaves room for {n} connections only"
    );
    let (_server, mut sout) = tcp_load(&["server", "127.78.1.11:9000"]);
    assert_eq!(line(&mut sout), "listening");
    let mut bed = Bed::new(DataPath::default());
    let (s, sl) = lb_service(1, 8080, TCP);
    bed.apply(&[s], &[sl]).await;
    let before = open_fds();
    let t0 = Instant::now();
    let (mut clients, cout) = tcp_load(&["hold", "127.78.1.1:8080", &n.to_string()]);
    let (first, mut cout) = tokio::task::spawn_blocking(move || {
        let mut cout = cout;
        (line(&mut cout), cout)
    })
    .await
    .unwrap();
    assert_eq!(first, format!("open {n}"));
    let opened = t0.elapsed();
    assert_eq!(bed.proxier.active(), n, "every connection is open at once");
    let peak = open_fds();
    assert!(peak >= before + 2 * n, "{before} → {peak}");
    // Each connection echoes, then the clients close them all.
    use std::io::Write as _;
    writeln!(clients.0.stdin.as_mut().unwrap(), "go").unwrap();
    let last = tokio::task::spawn_blocking(move || line(&mut cout))
        .await
        .unwrap();
    assert_eq!(last, format!("ok {n}"));
    drop(clients); // and its stdin pipe
    let deadline = Instant::now() + Duration::from_secs(30);
    while (bed.proxier.active() > 0 || open_fds() > before) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bed.proxier.active(), 0);
    let after = open_fds();
    assert!(
        after <= before,
        "descriptors leaked: {before} before, {after} after"
    );
    eprintln!(
        "{n} connections open at once ({opened:?}); proxy descriptors {before} → {peak} → {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flood_from_100k_source_ports_stays_bounded() {
    const SOURCES: usize = 100_000;
    const CAP: usize = 2_000;
    let _serial = SERIAL.lock().await;
    raise_fd_limit(65_536).unwrap();
    udp_server("127.78.2.11:9000".parse().unwrap()).await;
    let data = DataPath {
        max_udp_flows: CAP,
        // Long enough that more than CAP sources arrive within one timeout
        // even on a slow, loaded machine (a 250 ms timeout let flows expire
        // faster than a loaded CI machine created them, so the cap was
        // never reached), short enough to wait for.
        udp_idle_timeout: Duration::from_secs(3),
        ..DataPath::default()
    };
    let data_counter = data.udp_table_full.clone();
    let mut bed = Bed::new(data);
    let (s, sl) = lb_service(2, 5353, UDP);
    bed.apply(&[s], &[sl]).await;
    let vip: SocketAddr = "127.78.2.1:5353".parse().unwrap();
    let fds_before = open_fds();
    let rss_before = rss_kib();
    let mut peak_active = 0;
    // Source addresses 127.78.2.100-149 × 2,000 ports each: 100,000
    // distinct client addresses, sent without waiting for replies.
    let mut sent = 0;
    'outer: for host in 100..150u8 {
        let src = ip(&format!("127.78.2.{host}"));
        let socks: Vec<std::net::UdpSocket> = (0..2000)
            .filter_map(|_| std::net::UdpSocket::bind(SocketAddr::new(src, 0)).ok())
            .collect();
        for s in &socks {
            let _ = s.send_to(b"flood", vip);
            sent += 1;
            if sent >= SOURCES {
                break 'outer;
            }
        }
        peak_active = peak_active.max(bed.proxier.active());
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    peak_active = peak_active.max(bed.proxier.active());
    let rss_peak = rss_kib();
    assert!(
        peak_active <= CAP,
        "flows {peak_active} above the cap {CAP}"
    );
    let name = bed.proxier.listeners()[0].0.clone();
    let counters = bed.proxier.counters(&name).unwrap();
    let accepted = counters.accepted.load(std::sync::atomic::Ordering::Relaxed);
    let dropped = counters.dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        accepted > 0 && dropped > 0,
        "accepted {accepted}, dropped {dropped}"
    );
    // The drops are counted as the table being full.
    let full = counters
        .table_full
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        full > 0 && full <= dropped,
        "table full {full}, dropped {dropped}"
    );
    // The metric's counter (shared by every port) saw each of them.
    assert_eq!(data_counter.get(), full);
    // Flows idle out: descriptors come back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while bed.proxier.active() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(bed.proxier.active(), 0);
    let fds_after = open_fds();
    assert!(fds_after <= fds_before + 2, "{fds_before} → {fds_after}");
    let grown = rss_peak.saturating_sub(rss_before);
    assert!(
        grown < 128 * 1024,
        "RSS grew by {grown} KiB under the flood"
    );
    // And it still serves.
    let (server, _) = udp_who(vip, "after").await.unwrap();
    assert_eq!(server, "127.78.2.11:9000".parse::<SocketAddr>().unwrap());
    eprintln!(
        "{sent} sources: peak flows {peak_active}, accepted {accepted}, dropped {dropped}, RSS +{grown} KiB"
    );
}
