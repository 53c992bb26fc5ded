//! The health server under a flood of connections, over real sockets on
//! loopback: connections beyond the limit are closed at once (descriptors
//! stay bounded), a client that never finishes its headers is cut off,
//! and once the flood's connections age out a probe is answered again.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hyper::StatusCode;
use proxier_core::ServerLimits;
use proxier_core::serve_within;

fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
        || matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

fn get(addr: std::net::SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then_some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_bounded_and_passes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ServerLimits {
        max_connections: 8,
        header_timeout: Duration::from_millis(300),
        lifetime: Duration::from_millis(1500),
    };
    let server = tokio::spawn(serve_within(
        listener,
        |_path| (StatusCode::OK, Vec::new(), "ok".to_string()),
        limits,
    ));
    let r = tokio::task::spawn_blocking(move || {
        // 200 idle connections: at most 8 are kept, the rest closed.
        let mut flood: Vec<TcpStream> = (0..200)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let kept = flood
            .iter_mut()
            .map(closed_by_server)
            .filter(|c| !c)
            .count();
        assert!(kept <= 8, "{kept} idle connections kept, limit 8");
        assert!(kept >= 1, "the first connections are served");
        // A client that sends half its headers is cut off (after the
        // kept ones age out, a slot is free for it).
        std::thread::sleep(limits.lifetime);
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost").unwrap();
        let t0 = Instant::now();
        slow.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = Vec::new();
        let _ = slow.read_to_end(&mut buf);
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "a slow client held its connection {:?}",
            t0.elapsed()
        );
        // The flood's kept connections have aged out: a probe answers.
        let reply = get(addr).expect("a probe after the flood");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        drop(flood);
    })
    .await;
    server.abort();
    r.unwrap();
}
