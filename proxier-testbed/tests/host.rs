//! The host test bed's own tests: a topology comes up and goes away with
//! nothing left behind, and traffic across it reaches the right server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proxier_core::Protocol;
use proxier_testbed::{Outcome, Plan, Topology, Where};

fn namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn root_links() -> String {
    let out = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let mut v: Vec<&str> = s
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or("").trim())
        .collect();
    v.sort();
    v.join(",")
}

#[test]
fn topology_comes_up_and_goes_away_without_a_trace() {
    let links_before = root_links();
    let start = Instant::now();
    let topo = Topology::build(Plan::default()).unwrap();
    let built = start.elapsed();
    let names = topo.namespace_names();
    let present = namespaces();
    for n in &names {
        assert!(present.contains(n), "{n} missing");
    }
    // The node sees its pods and the remote node.
    let links = topo.node_exec("ip", &["-o", "link"]).unwrap();
    for l in ["eth0", "eth1", "vp0", "vp1", "vp2"] {
        assert!(
            links.contains(&format!(" {l}@")),
            "{l} missing in node: {links}"
        );
    }
    assert_eq!(
        root_links(),
        links_before,
        "the root namespace gained links"
    );
    let t = Instant::now();
    drop(topo);
    let torn = t.elapsed();
    let present = namespaces();
    for n in &names {
        assert!(!present.contains(n), "{n} left behind");
    }
    assert_eq!(root_links(), links_before);
    eprintln!(
        "topology: build {built:?}, teardown {torn:?}, total {:?}",
        built + torn
    );
    assert!(
        built + torn < Duration::from_secs(2),
        "build {built:?} + teardown {torn:?}"
    );
}

#[test]
fn tcp_and_udp_reach_the_right_server() {
    let mut topo = Topology::build(Plan::default()).unwrap();
    let t = Duration::from_secs(2);
    let l0 = topo.serve(Where::Local(0), 8080, Protocol::Tcp).unwrap();
    let l1 = topo.serve(Where::Local(1), 8080, Protocol::Udp).unwrap();
    let r0 = topo.serve(Where::Remote(0), 9090, Protocol::Tcp).unwrap();
    let r1 = topo.serve(Where::Remote(1), 9090, Protocol::Udp).unwrap();

    // Pod on this node to a local pod and to a remote pod (routed by the node).
    let o = topo.tcp(Where::ClientPod, None, l0, t);
    assert_eq!(o.server(), Some(l0), "{o:?}");
    assert_eq!(o.peer().unwrap().ip(), topo.ip_of(Where::ClientPod));
    let o = topo.udp(Where::ClientPod, None, r1, t);
    assert_eq!(o.server(), Some(r1), "{o:?}");
    // External client, from a chosen source address, to both.
    let src = topo.ext_ip(2);
    let o = topo.tcp(Where::Ext, Some(src), r0, t);
    assert_eq!(o.server(), Some(r0), "{o:?}");
    assert_eq!(o.peer().unwrap().ip(), src);
    let o = topo.udp(Where::Ext, None, l1, t);
    assert_eq!(o.server(), Some(l1), "{o:?}");
    // No listener: refused, quickly, not a timeout.
    let closed: SocketAddr = SocketAddr::new(topo.ip_of(Where::Local(0)), 1);
    assert_eq!(
        topo.tcp(Where::ClientPod, None, closed, t),
        Outcome::Refused
    );
    assert_eq!(
        topo.udp(Where::ClientPod, None, closed, t),
        Outcome::Refused
    );
    // A persistent connection carries several requests to the same server.
    let mut c = topo.tcp_open(Where::Ext, l0, t).unwrap();
    for _ in 0..3 {
        assert_eq!(proxier_testbed::tcp_line(&mut c, "x").server(), Some(l0));
    }
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let names = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let n2 = names.clone();
    let r = std::panic::catch_unwind(move || {
        let topo = Topology::build(Plan {
            local_pods: 1,
            ..Plan::default()
        })
        .unwrap();
        *n2.lock().unwrap() = topo.namespace_names();
        panic!("boom");
    });
    assert!(r.is_err());
    let present = namespaces();
    let names = names.lock().unwrap();
    assert!(!names.is_empty());
    for n in names.iter() {
        assert!(!present.contains(n), "{n} left behind after a panic");
    }
}
