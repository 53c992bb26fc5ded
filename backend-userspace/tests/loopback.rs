//! The userspace proxier in direct mode on loopback: real sockets, no
//! root. Each test has its own 127.77.N.0/24 so they run in parallel.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use backend_userspace::{DataPath, Relay};
use common::*;
use proxier_core::{ServiceType, SessionAffinity};
use proxier_testbed::{ep, service, slice};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Service `name` with load-balancer IP 127.77.N.1 (loopback addresses
/// are local, cluster IPs may not be loopback), TCP "http" on 8080 and UDP
/// "dns" on 5353, with endpoints 127.77.N.{hosts}:9000.
fn objects(
    n: u8,
    name: &str,
    hosts: &[u8],
) -> (proxier_core::Service, proxier_core::EndpointSlice) {
    let mut svc = service(
        "default",
        name,
        &format!("10.96.{n}.1"),
        &[("http", 8080, TCP), ("dns", 5353, UDP)],
    );
    svc.service_type = ServiceType::LoadBalancer;
    svc.load_balancer_ips = vec![ip(&format!("127.77.{n}.1"))];
    let eps = hosts
        .iter()
        .map(|h| ep(ip(&format!("127.77.{n}.{h}")), "node-1"))
        .collect();
    let sl = slice(
        "default",
        name,
        &[("http", 9000, TCP), ("dns", 9000, UDP)],
        eps,
    );
    (svc, sl)
}

async fn servers(n: u8, hosts: &[u8]) {
    for h in hosts {
        let a: SocketAddr = format!("127.77.{n}.{h}:9000").parse().unwrap();
        tcp_server(a).await;
        udp_server(a).await;
    }
}

fn vip(n: u8, port: u16) -> SocketAddr {
    format!("127.77.{n}.1:{port}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_round_robin_over_every_endpoint() {
    servers(1, &[11, 12, 13]).await;
    let mut bed = Bed::new(DataPath::default());
    let (s, sl) = objects(1, "rr", &[11, 12, 13]);
    let stats = bed.apply(&[s], &[sl]).await;
    assert_eq!(stats.objects, 2, "one TCP and one UDP listener");
    let mut hits: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for _ in 0..30 {
        *hits
            .entry(tcp_who(None, vip(1, 8080)).await.unwrap())
            .or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert!(
        hits.values().all(|n| *n == 10),
        "round robin is exact: {hits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_round_robin_replies_from_the_service_address() {
    servers(2, &[11, 12, 13]).await;
    let mut bed = Bed::new(DataPath::default());
    let (s, sl) = objects(2, "udp", &[11, 12, 13]);
    bed.apply(&[s], &[sl]).await;
    let mut hits: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for i in 0..12 {
        let (server, from) = udp_who(vip(2, 5353), &format!("hello {i}")).await.unwrap();
        assert_eq!(
            from,
            vip(2, 5353),
            "the reply must come from the service address"
        );
        *hits.entry(server).or_default() += 1;
    }
    assert_eq!(hits.len(), 3, "{hits:?}");
    // One client socket is one flow: it keeps its endpoint.
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (first, _) = udp_on(&s, vip(2, 5353), "a").await.unwrap();
    for i in 0..5 {
        let (again, _) = udp_on(&s, vip(2, 5353), &format!("b{i}")).await.unwrap();
        assert_eq!(again, first);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_idle_out_and_move_off_removed_endpoints() {
    servers(3, &[11, 12]).await;
    let data = DataPath {
        udp_idle_timeout: Duration::from_millis(200),
        ..DataPath::default()
    };
    let mut bed = Bed::new(data);
    let (s, sl) = objects(3, "flows", &[11]);
    bed.apply(&[s], &[sl]).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (a, _) = udp_on(&sock, vip(3, 5353), "1").await.unwrap();
    assert_eq!(a, sa("127.77.3.11:9000"));
    assert_eq!(bed.proxier.active(), 1, "one live flow");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(bed.proxier.active(), 0, "the flow idled out");
    // A live flow whose endpoint is removed moves on its next datagram.
    udp_on(&sock, vip(3, 5353), "2").await.unwrap();
    let (_, sl) = objects(3, "flows", &[12]);
    bed.apply(&[], &[sl]).await;
    let (b, _) = udp_on(&sock, vip(3, 5353), "3").await.unwrap();
    assert_eq!(b, sa("127.77.3.12:9000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_sticks_per_client() {
    servers(4, &[11, 12, 13]).await;
    let mut bed = Bed::new(DataPath::default());
    let (mut s, sl) = objects(4, "sticky", &[11, 12, 13]);
    s.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 60,
    };
    bed.apply(&[s], &[sl]).await;
    let mut chosen = std::collections::BTreeSet::new();
    for c in 100..106 {
        let client = ip(&format!("127.77.4.{c}"));
        let first = tcp_who(Some(client), vip(4, 8080)).await.unwrap();
        for _ in 0..5 {
            assert_eq!(tcp_who(Some(client), vip(4, 8080)).await.unwrap(), first);
        }
        chosen.insert(first);
    }
    assert!(chosen.len() >= 2, "six clients on one endpoint: {chosen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_an_endpoint_refuses() {
    // .11 has no server: connecting to it is refused.
    servers(5, &[12]).await;
    let mut bed = Bed::new(DataPath::default());
    let (s, sl) = objects(5, "failover", &[11, 12]);
    bed.apply(&[s], &[sl]).await;
    let t0 = Instant::now();
    for _ in 0..10 {
        assert_eq!(
            tcp_who(None, vip(5, 8080)).await.unwrap(),
            sa("127.77.5.12:9000")
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_removal_drains_open_connections() {
    servers(6, &[11, 12]).await;
    let mut bed = Bed::new(DataPath::default());
    let (s, sl) = objects(6, "drain", &[11]);
    bed.apply(&[s], &[sl]).await;
    let (mut old, line) = tcp_hello(None, vip(6, 8080)).await.unwrap();
    assert!(line.starts_with("127.77.6.11:9000"), "{line}");
    let (_, sl) = objects(6, "drain", &[12]);
    bed.apply(&[], &[sl]).await;
    for _ in 0..5 {
        assert_eq!(
            tcp_who(None, vip(6, 8080)).await.unwrap(),
            sa("127.77.6.12:9000")
        );
    }
    // The connection to the removed endpoint still works.
    old.get_mut().write_all(b"still here\n").await.unwrap();
    let mut echo = String::new();
    old.read_line(&mut echo).await.unwrap();
    assert_eq!(echo, "still here\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_through_with_both_relays() {
    for (n, relay) in [
        (7u8, Relay::Copy { buffer: 65536 }),
        (8, Relay::Splice { pipe: 65536 }),
    ] {
        servers(n, &[11]).await;
        let mut bed = Bed::new(DataPath {
            relay,
            ..DataPath::default()
        });
        let (s, sl) = objects(n, "half", &[11]);
        bed.apply(&[s], &[sl]).await;
        let (mut c, _) = tcp_hello(None, vip(n, 8080)).await.unwrap();
        let big = "x".repeat(1 << 20);
        c.get_mut().write_all(big.as_bytes()).await.unwrap();
        c.get_mut().shutdown().await.unwrap();
        // The server sees the end only through the proxy, then answers.
        let rest = rest(&mut c).await;
        assert_eq!(rest.len(), big.len() + 4, "{relay:?}");
        assert!(rest.ends_with("bye\n"), "{relay:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    servers(9, &[11, 12]).await;
    let mut bed = Bed::new(DataPath::default());
    let (s, sl) = objects(9, "many", &[11, 12]);
    bed.apply(&[s], &[sl]).await;
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            tokio::spawn(async move {
                let (mut c, _) = tcp_hello(None, vip(9, 8080)).await.unwrap();
                let msg = format!("{i}-{}\n", "y".repeat(1000));
                c.get_mut().write_all(msg.as_bytes()).await.unwrap();
                c.get_mut().shutdown().await.unwrap();
                let got = rest(&mut c).await;
                assert_eq!(got, format!("{msg}bye\n"));
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_refuses_and_deleted_service_closes_everything() {
    servers(10, &[11]).await;
    let mut bed = Bed::new(DataPath::default());
    let (s, _) = objects(10, "empty", &[]);
    bed.apply(&[s], &[]).await;
    let e = tcp_who(None, vip(10, 8080)).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    // Endpoints appear: it answers; an open connection, then the
    // service goes: the listener and the connection close.
    let (_, sl) = objects(10, "empty", &[11]);
    bed.apply(&[], &[sl]).await;
    let (mut c, _) = tcp_hello(None, vip(10, 8080)).await.unwrap();
    bed.tracker.delete_service("default", "empty");
    bed.sync().await;
    assert_eq!(bed.proxier.listeners().len(), 0);
    let left = rest(&mut c).await;
    assert!(
        !left.contains("bye"),
        "closed by the proxy, not by the server: {left:?}"
    );
    // The listener's task drops the socket just after the sync returns: a
    // connection in that moment lands in the closing backlog and is reset.
    // Within a second every one is refused.
    let mut e = tcp_who(None, vip(10, 8080)).await.unwrap_err();
    for _ in 0..20 {
        if e.kind() != std::io::ErrorKind::ConnectionReset {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        e = tcp_who(None, vip(10, 8080)).await.unwrap_err();
    }
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(bed.proxier.active(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_port_and_source_ranges() {
    servers(11, &[11]).await;
    let mut bed = Bed::new(DataPath::default());
    let (mut s, sl) = objects(11, "lb", &[11]);
    s.ports.truncate(1);
    s.ports[0].node_port = 31811;
    s.load_balancer_source_ranges = vec!["127.77.11.60/32".into()];
    bed.apply(&[s], &[sl]).await;
    let lb = vip(11, 8080);
    assert!(tcp_who(Some(ip("127.77.11.60")), lb).await.is_ok());
    let denied = tcp_who(Some(ip("127.77.11.61")), lb).await;
    assert!(denied.is_err(), "outside the ranges: {denied:?}");
    // The ranges apply to the LB IP only, not to the node port.
    assert!(
        tcp_who(Some(ip("127.77.11.61")), sa("127.0.0.1:31811"))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_tcp_and_udp() {
    let backend: SocketAddr = "[::1]:19611".parse().unwrap();
    tcp_server(backend).await;
    udp_server(backend).await;
    let mut bed = Bed::v6(DataPath::default());
    let mut s = service(
        "default",
        "six",
        "fd00::10",
        &[("http", 18611, TCP), ("dns", 18611, UDP)],
    );
    s.service_type = ServiceType::NodePort;
    s.ports[0].node_port = 31611;
    s.ports[1].node_port = 31611;
    let sl = slice(
        "default",
        "six",
        &[("http", 19611, TCP), ("dns", 19611, UDP)],
        vec![ep(ip("::1"), "node-1")],
    );
    bed.apply(&[s], &[sl]).await;
    let np: SocketAddr = "[::1]:31611".parse().unwrap();
    assert_eq!(tcp_who(None, np).await.unwrap(), backend);
    let (server, from) = udp_who(np, "six").await.unwrap();
    assert_eq!((server, from), (backend, np));
}

/// A service port whose address another program holds (issue 16, item
/// 7) is reported by name and retried; the sync succeeds and every other
/// port, of that service and of others, serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_is_reported_and_retried() {
    servers(12, &[11]).await;
    servers(13, &[11]).await;
    let blocker = std::net::TcpListener::bind(vip(12, 8080)).unwrap();
    let mut bed = Bed::new(DataPath::default());
    let (busy, busy_sl) = objects(12, "busy", &[11]);
    let (free, free_sl) = objects(13, "free", &[11]);
    let stats = bed.apply(&[busy, free], &[busy_sl, free_sl]).await;
    assert_eq!(stats.not_programmed.len(), 1, "{:?}", stats.not_programmed);
    let (port, why) = &stats.not_programmed[0];
    assert_eq!(port.to_string(), "default/busy:http");
    assert!(
        why.contains("binding 127.77.12.1:8080/TCP") && why.contains("in use"),
        "{why}"
    );
    assert_eq!(stats.objects, 3, "the other three listeners are open");
    assert_eq!(
        tcp_who(None, vip(13, 8080)).await.unwrap(),
        sa("127.77.13.11:9000")
    );
    assert_eq!(
        udp_who(vip(12, 5353), "dns").await.unwrap().0,
        sa("127.77.12.11:9000")
    );
    // Still taken: a sync with no changes tries again and says so again.
    let again = bed.sync().await;
    assert_eq!(again.not_programmed.len(), 1);
    // Released: the next sync with no changes opens it.
    drop(blocker);
    let fixed = bed.sync().await;
    assert!(
        fixed.not_programmed.is_empty(),
        "{:?}",
        fixed.not_programmed
    );
    assert_eq!(fixed.written, 1, "one listener opened");
    assert_eq!(
        tcp_who(None, vip(12, 8080)).await.unwrap(),
        sa("127.77.12.11:9000")
    );
}
