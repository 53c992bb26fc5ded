//! The `userspace` binary, run as a user would.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use proxier_testbed::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_userspace");

fn run_in(ns: &Netns, args: &[&str]) -> std::process::Output {
    common::run_in(ns, BIN, args)
}

#[test]
fn help_and_bad_flags() {
    common::assert_help(
        BIN,
        &[
            "--manifests",
            "--portal",
            "--direct",
            "--udp-timeout",
            "--relay",
            "--once",
            "--cleanup",
            "--config",
        ],
    );
    for bad in [
        &["--no-such-flag"][..],
        &["--relay", "zerocopy"],
        &["--portal", "--direct"],
        &["--udp-timeout", "soon"],
    ] {
        let out = Command::new(BIN).args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
}

#[test]
fn portal_once_then_cleanup_in_a_namespace() {
    let ns = Netns::new("usbin").unwrap();
    let out = common::run_demo_once(&ns, BIN, &["--iptables-variant", "nft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let save = String::from_utf8(ns.exec("iptables-nft-save", &[]).unwrap().stdout).unwrap();
    // One line holding every part (iptables-save quotes the comment).
    for want in [
        &[
            "-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp",
            "demo/echo:http",
            "--dport 80 -j REDIRECT --to-ports",
        ][..],
        &[
            "-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp",
            "--dport 80 -j REDIRECT --to-ports",
        ],
        &[
            "-A KUBE-NODEPORT-CONTAINER -p tcp",
            "--dport 30080 -j REDIRECT --to-ports",
        ],
        &["-A PREROUTING", "-j KUBE-PORTALS-CONTAINER"],
        &["-A INPUT", "-j KUBE-NODEPORT-NON-LOCAL"],
    ] {
        assert!(
            save.lines().any(|l| want.iter().all(|w| l.contains(w))),
            "no line with {want:?} in\n{save}"
        );
    }
    let out = run_in(&ns, &["--cleanup", "--iptables-variant", "nft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let save = String::from_utf8(ns.exec("iptables-nft-save", &[]).unwrap().stdout).unwrap();
    assert!(!save.contains("KUBE-"), "after --cleanup:\n{save}");
}

#[test]
fn bad_manifest_names_the_object_and_field() {
    common::assert_bad_manifest_refused(
        "us-bad",
        &["--direct", "--nodeport-addresses", "127.0.0.1/32"],
        |a| Command::new(BIN).args(a).output().unwrap(),
    );
}

/// Services `a` (node port 30090), `b` (node port 30091) and `c`
/// (external IP 192.0.2.1, a node address, port 10256: the health
/// server's), each with
/// the endpoint 127.0.0.11:8080.
fn three_services(dir: &std::path::Path) -> String {
    let mut text = String::new();
    for (name, ip, spec) in [
        (
            "a",
            "10.96.0.21",
            "type: NodePort\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30090, protocol: TCP}]",
        ),
        (
            "b",
            "10.96.0.22",
            "type: NodePort\n  ports: [{name: http, port: 80, targetPort: 8080, nodePort: 30091, protocol: TCP}]",
        ),
        (
            "c",
            "10.96.0.23",
            "externalIPs: [192.0.2.1]\n  ports: [{name: http, port: 10256, targetPort: 8080, protocol: TCP}]",
        ),
    ] {
        text += &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {ip}\n  {spec}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: demo\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n  - {{addresses: [\"127.0.0.11\"], nodeName: node-1}}\n---\n"
        );
    }
    let path = dir.join("three.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `--direct` on `manifest`'s loopback endpoints as node-1, IPv4, node
/// ports on 127.0.0.1, then `extra`.
fn direct_args<'a>(manifest: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--direct",
        "--manifests",
        manifest,
        "--allow-loopback-endpoints",
        "--hostname-override",
        "node-1",
        "--ip-family",
        "ipv4",
        "--nodeport-addresses",
        "127.0.0.1/32",
    ];
    v.extend(extra);
    v
}

/// The binary as a daemon in `ns`, its log in `log`.
fn daemon_in(ns: &Netns, args: &[&str], log: &std::path::Path) -> common::Daemon {
    common::Daemon(
        Command::new("ip")
            .args(["netns", "exec", ns.name(), BIN])
            .args(args)
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// What `127.0.0.1:port` answers inside `ns` (the endpoint says `hello`).
fn hello_in(ns: &Netns, port: u16) -> String {
    ns.enter(move || {
        let mut c = TcpStream::connect(("127.0.0.1", port)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut s = String::new();
        c.read_to_string(&mut s).ok()?;
        Some(s)
    })
    .unwrap()
    .unwrap_or_default()
}

/// Issue 16, item 7: in direct mode a port another program holds, or the
/// health server's own port, fails only its service. The node stays
/// healthy, the log and a gauge name what is missing, and the port is
/// programmed once it is free, with no change to any object. `--once`
/// names it and exits non-zero.
#[test]
fn direct_a_port_in_use_fails_only_its_service() {
    let ns = Netns::new("usbusy").unwrap();
    ns.exec("ip", &["addr", "add", "192.0.2.1/32", "dev", "lo"])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = three_services(dir.path());
    // The endpoint: answers "hello" and closes.
    let upstream = ns
        .enter(|| std::net::TcpListener::bind("127.0.0.11:8080").unwrap())
        .unwrap();
    std::thread::spawn(move || {
        for mut c in upstream.incoming().flatten() {
            let _ = c.write_all(b"hello\n");
        }
    });
    let blocker = ns
        .enter(|| std::net::TcpListener::bind("127.0.0.1:30091").unwrap())
        .unwrap();
    let args = direct_args(&m, &["--min-sync-period", "100ms"]);
    let log_path = dir.path().join("log");
    let mut daemon = daemon_in(&ns, &args, &log_path);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let gauge = |n: u32| {
        common::http_get_in(&ns, "127.0.0.1:10249", "/metrics").contains(&format!(
            "kubeproxy_sync_proxy_rules_service_ports_not_programmed {n}"
        ))
    };
    let t0 = std::time::Instant::now();
    while hello_in(&ns, 30090) != "hello\n" || !gauge(2) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "a never served: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let health = common::http_get_in(&ns, "127.0.0.1:10256", "/healthz");
    assert!(health.starts_with("HTTP/1.0 200 OK"), "{health}\n{}", log());
    let text = log();
    for want in [
        "service=demo/b:http error=binding 127.0.0.1:30091/TCP: Address already in use",
        "service=demo/c:http error=binding 192.0.2.1:10256/TCP: Address already in use",
    ] {
        assert!(text.contains(want), "no {want:?} in\n{text}");
    }
    assert!(!text.contains("sync failed"), "{text}");
    // Freed: programmed by a retry, with no object changed.
    drop(blocker);
    let t1 = std::time::Instant::now();
    while hello_in(&ns, 30091) != "hello\n" || !gauge(1) {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "b was never retried: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("b programmed {:?} after its port was freed", t1.elapsed());
    let health = common::http_get_in(&ns, "127.0.0.1:10256", "/healthz");
    assert!(health.starts_with("HTTP/1.0 200 OK"), "{health}");
    daemon.stop();
    // --once (no health server): the held port is named, the run fails.
    let _blocker = ns
        .enter(|| std::net::TcpListener::bind("127.0.0.1:30091").unwrap())
        .unwrap();
    let mut once = vec!["--once"];
    once.extend(&args);
    let out = run_in(&ns, &once);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("error: service port not programmed: demo/b:http: binding 127.0.0.1:30091/TCP: Address already in use"),
        "{err}"
    );
    assert!(
        err.contains("1 service port(s) not programmed; everything else was synced"),
        "{err}"
    );
}

/// Issue 16, item 8: datagrams dropped because a port's UDP flow table is
/// full are logged (at most every 10 s) and counted in
/// `kubeproxy_userspace_udp_flow_table_full_drops_total`.
#[test]
fn a_full_udp_flow_table_is_logged_and_counted() {
    let ns = Netns::new("usudp").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("dns.yaml");
    std::fs::write(
        &m,
        "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: demo}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.53\n  ports: [{name: dns, port: 53, targetPort: 5353, nodePort: 30053, protocol: UDP}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dns-1\n  namespace: demo\n  labels: {kubernetes.io/service-name: dns}\naddressType: IPv4\nports: [{name: dns, port: 5353, protocol: UDP}]\nendpoints:\n  - {addresses: [\"127.0.0.11\"], nodeName: node-1}\n",
    )
    .unwrap();
    let upstream = ns
        .enter(|| std::net::UdpSocket::bind("127.0.0.11:5353").unwrap())
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = upstream.recv_from(&mut buf) {
            let _ = upstream.send_to(&buf[..n], from);
        }
    });
    let log_path = dir.path().join("log");
    let m = m.display().to_string();
    let args = direct_args(&m, &["--max-udp-flows", "2", "--udp-timeout", "30s"]);
    let _daemon = daemon_in(&ns, &args, &log_path);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Five clients, one datagram each (the first retried until the port
    // is open): two flows fit, three are dropped.
    let replies = ns
        .enter(|| {
            let socks: Vec<std::net::UdpSocket> = (0..5)
                .map(|_| {
                    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                    s
                })
                .collect();
            let mut buf = [0u8; 64];
            let t0 = std::time::Instant::now();
            loop {
                socks[0].send_to(b"q", "127.0.0.1:30053").unwrap();
                if socks[0].recv_from(&mut buf).is_ok() {
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(15), "never served");
            }
            let mut replies = 1;
            for s in &socks[1..] {
                s.send_to(b"q", "127.0.0.1:30053").unwrap();
                replies += usize::from(s.recv_from(&mut buf).is_ok());
            }
            replies
        })
        .unwrap();
    assert_eq!(replies, 2, "{}", log());
    let metrics = common::http_get_in(&ns, "127.0.0.1:10249", "/metrics");
    assert!(
        metrics.contains("kubeproxy_userspace_udp_flow_table_full_drops_total 3"),
        "{metrics}"
    );
    let text = log();
    assert_eq!(
        text.matches("UDP flow table full").count(),
        1,
        "logged once per interval: {text}"
    );
    assert!(text.contains("service=demo/dns:dns"), "{text}");
}
