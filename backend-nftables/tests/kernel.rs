//! The nf_tables encoder and transactions against the host kernel, in a
//! namespace each test creates: kube-proxy's service path (a concatenated
//! verdict map, `numgen` over an anonymous map, DNAT) carries real TCP
//! connections; `nft list table` reads back what kube-proxy writes; a
//! refused transaction changes nothing and names its operation; a foreign
//! table survives. Check by hand with `ip netns exec NS nft list ruleset`.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use backend_nftables::exprs as build;
use backend_nftables::{
    BaseHook, Chain, Element, Family, Hook, KeyType, NfTables, NfTablesNetlink, Op, Rule, Set,
    Transaction, Verdict,
};
use backend_nftables::{CmpOp, SET_ANONYMOUS, SET_CONSTANT};
use proxier_testbed::{Netns, NsRuntime};

const TABLE: &str = "kube-proxy";
const TCP: u8 = 6;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sh(ns: &Netns, cmd: &str) -> String {
    let out = ns.exec("sh", &["-c", cmd]).expect(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP server on `addr` that writes its address and closes.
fn serve(ns: &Netns, addr: SocketAddr) {
    let l = ns.enter(move || TcpListener::bind(addr)).unwrap().unwrap();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let mut c = c;
            let _ = c.write_all(addr.to_string().as_bytes());
        }
    });
}

fn chain(name: &str) -> Chain {
    Chain {
        name: name.into(),
        base: None,
        comment: None,
    }
}

fn base(name: &str, kind: &'static str, hook: Hook, priority: i32) -> Chain {
    Chain {
        name: name.into(),
        base: Some(BaseHook {
            kind,
            hook,
            priority,
        }),
        comment: None,
    }
}

fn rule(chain: &str, exprs: Vec<backend_nftables::Expr>, comment: Option<&str>) -> Op {
    Op::AddRule(Rule {
        chain: chain.into(),
        exprs,
        comment: comment.map(String::from),
    })
}

/// kube-proxy's path for one service: `services` looks up
/// `service-ips`, the service chain picks an endpoint with `numgen`, the
/// endpoint chain DNATs.
fn service_path(eps: &[&str]) -> Transaction {
    let mut tx = Transaction::new(Family::Ip, TABLE);
    tx.push(Op::AddTable {
        comment: Some("rules for kube-proxy".into()),
    });
    for (c, h) in [
        ("nat-output", Hook::Output),
        ("nat-prerouting", Hook::Prerouting),
    ] {
        tx.push(Op::AddChain(base(c, "nat", h, -100)));
    }
    tx.push(Op::AddChain(chain("services")));
    tx.push(Op::AddChain(chain("mark-for-masquerade")));
    tx.push(Op::AddSet(Set {
        name: "service-ips".into(),
        key: vec![KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
        verdict_map: true,
        flags: 0,
        timeout_ms: None,
        comment: Some("ClusterIP, ExternalIP and LoadBalancer IP traffic".into()),
        id: 1,
    }));
    tx.push(Op::AddSet(Set {
        name: "cluster-ips".into(),
        key: vec![KeyType::Ipv4Addr],
        verdict_map: false,
        flags: 0,
        timeout_ms: None,
        comment: Some("Active ClusterIPs".into()),
        id: 2,
    }));
    tx.push(rule("nat-output", vec![build::jump("services")], None));
    tx.push(rule("nat-prerouting", vec![build::jump("services")], None));
    tx.push(rule(
        "services",
        build::daddr_proto_port_vmap(false, "service-ips"),
        None,
    ));
    tx.push(rule("mark-for-masquerade", build::mark_or(0x4000), None));
    let svc = "service-ULMVA6XW-ns1/svc1/tcp/p80";
    tx.push(Op::AddChain(chain(svc)));
    let mut targets = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let name = format!("endpoint-{i}-ns1/svc1/tcp/p80__{ep}/8080");
        tx.push(Op::AddChain(chain(&name)));
        let mut e = build::addr_eq(ip(ep), false, CmpOp::Eq);
        e.push(build::jump("mark-for-masquerade"));
        tx.push(rule(&name, e, None));
        tx.push(rule(&name, build::dnat(TCP, ip(ep), 8080), None));
        targets.push(name);
    }
    let mut e = build::addr_eq(ip("10.96.0.10"), true, CmpOp::Eq);
    e.extend(build::l4proto(TCP));
    e.extend(build::dport(80));
    e.extend(build::saddr_in(ip("10.0.0.0"), 8, CmpOp::Neq));
    e.push(build::jump("mark-for-masquerade"));
    tx.push(rule(svc, e, None));
    tx.push(Op::AddSet(Set {
        name: "__map%d".into(),
        key: vec![KeyType::Integer32],
        verdict_map: true,
        flags: SET_ANONYMOUS | SET_CONSTANT,
        timeout_ms: None,
        comment: None,
        id: 3,
    }));
    tx.push(Op::AddElements {
        set: "__map%d".into(),
        set_id: Some(3),
        elements: targets
            .iter()
            .enumerate()
            .map(|(i, t)| Element {
                key: build::numgen_key(i as u32),
                verdict: Some(Verdict::Goto(t.clone())),
                comment: None,
            })
            .collect(),
    });
    tx.push(rule(
        svc,
        build::numgen_vmap(eps.len() as u32, "__map%d", 3),
        None,
    ));
    tx.push(Op::AddElements {
        set: "service-ips".into(),
        set_id: None,
        elements: vec![Element {
            key: build::addr_proto_port_key(ip("10.96.0.10"), TCP, 80),
            verdict: Some(Verdict::Goto(svc.into())),
            comment: None,
        }],
    });
    tx.push(Op::AddElements {
        set: "cluster-ips".into(),
        set_id: None,
        elements: vec![Element {
            key: vec![10, 96, 0, 10],
            verdict: None,
            comment: None,
        }],
    });
    tx
}

fn who(addr: &str) -> Option<String> {
    let mut c = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

#[test]
fn kube_proxy_service_path_carries_tcp_and_reads_back() {
    let ns = Netns::new("nft-path").unwrap();
    sh(
        &ns,
        "ip addr add 127.0.0.2/8 dev lo; ip addr add 127.0.0.3/8 dev lo; ip addr add 10.96.0.10/32 dev lo",
    );
    serve(&ns, "127.0.0.2:8080".parse().unwrap());
    serve(&ns, "127.0.0.3:8080".parse().unwrap());
    // A foreign table, as another program would have it.
    sh(
        &ns,
        "nft add table inet filter; nft add chain inet filter input '{ type filter hook input priority 0; }'",
    );
    let rt = NsRuntime::start(&ns).unwrap();
    rt.block_on(async {
        let nft = NfTablesNetlink::new().unwrap();
        nft.apply(&service_path(&["127.0.0.2", "127.0.0.3"]))
            .await
            .unwrap();
    });
    let listing = sh(&ns, "nft list table ip kube-proxy");
    for want in [
        "comment \"rules for kube-proxy\"",
        "map service-ips {",
        "type ipv4_addr . inet_proto . inet_service : verdict",
        "comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\"",
        "elements = { 10.96.0.10 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }",
        "set cluster-ips {",
        "type nat hook output priority -100; policy accept;",
        "type nat hook prerouting priority dstnat; policy accept;",
        "ip daddr . meta l4proto . th dport vmap @service-ips",
        "ip daddr 10.96.0.10 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade",
        "numgen random mod 2 vmap { 0 : goto endpoint-0-ns1/svc1/tcp/p80__127.0.0.2/8080, 1 : goto endpoint-1-ns1/svc1/tcp/p80__127.0.0.3/8080 }",
        "ip saddr 127.0.0.2 jump mark-for-masquerade",
        "meta l4proto tcp dnat to 127.0.0.2:8080",
        "meta mark set meta mark | 0x00004000",
    ] {
        assert!(listing.contains(want), "missing {want:?} in:\n{listing}");
    }
    // Real connections to the cluster IP reach both endpoints.
    let seen: BTreeSet<String> = (0..40)
        .filter_map(|_| ns.enter(|| who("10.96.0.10:80")).unwrap())
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from(["127.0.0.2:8080".to_string(), "127.0.0.3:8080".to_string()]),
        "{listing}"
    );
    assert!(
        sh(&ns, "nft list tables").contains("table inet filter"),
        "foreign table kept"
    );
}

/// A transaction the kernel refuses (a jump to a chain that does not
/// exist) changes nothing, and the error names the operation.
#[test]
fn refused_transaction_changes_nothing_and_names_its_operation() {
    let ns = Netns::new("nft-refuse").unwrap();
    let rt = NsRuntime::start(&ns).unwrap();
    let err = rt.block_on(async {
        let nft = NfTablesNetlink::new().unwrap();
        nft.apply(&service_path(&["127.0.0.2"])).await.unwrap();
        let mut bad = Transaction::new(Family::Ip, TABLE);
        bad.push(Op::AddChain(chain("added-then-rolled-back")));
        bad.push(Op::FlushChain("services".into()));
        bad.push(rule("services", vec![build::jump("no-such-chain")], None));
        nft.apply(&bad).await.unwrap_err()
    });
    let text = proxier_core::ErrorChain(&err).to_string();
    assert!(
        text.contains("add rule services") && text.contains("kube-proxy"),
        "{text}"
    );
    let listing = sh(&ns, "nft list table ip kube-proxy");
    assert!(!listing.contains("added-then-rolled-back"), "{listing}");
    assert!(
        listing.contains("ip daddr . meta l4proto . th dport vmap @service-ips"),
        "the flushed chain is intact: {listing}"
    );
}
