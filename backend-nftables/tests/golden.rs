//! Golden test: kube-proxy's own `TestOverallNFTablesRules`. Its six
//! services and slices are rebuilt here, rendered, and written to a real
//! kernel over netlink in one namespace; kube-proxy's expected ruleset
//! (`tests/golden/kube-proxy-overall.nft`) is loaded with `nft -f` into
//! another. Both are read back with `nft list table ip kube-proxy`, so
//! nft's own printer normalises them, and compared block by block and
//! line for line: rules in order, set and map elements as sets.
//!
//! One difference is ours by design and rewritten before comparing
//! ([`as_our_numgen`]): kube-proxy picks an endpoint with one
//! `numgen random mod N vmap { 0 : goto e0, … }` rule (an anonymous map
//! per service, which made large loads quadratic in the kernel: see the
//! README's nftables benchmarks); this backend writes one
//! `numgen random mod (N-i) 0 goto e_i` rule per endpoint, the last one
//! plain `goto`, so each is still chosen with probability 1/N.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use backend_nftables::{Config, NfTables, NfTablesNetlink, render_full};
use proxier_core::{
    ChangeTracker, IpFamily, Protocol, Service, ServiceType, SessionAffinity, Snapshot,
    TrafficPolicy,
};
use proxier_netfilter::LocalDetector;
use proxier_testbed::{Netns, NsRuntime, ep, service, slice};

const NODE: &str = "test-node";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn lb(mut s: Service, node_port: u16, vip: &str) -> Service {
    s.service_type = ServiceType::LoadBalancer;
    s.ports[0].node_port = node_port;
    s.load_balancer_ips = vec![ip(vip)];
    s
}

/// Adds `s` and, if it has endpoints (address, node), its slice.
fn add_service(
    t: &mut ChangeTracker,
    ports: &[(&str, u16, Protocol)],
    s: Service,
    eps: Vec<(&str, &str)>,
) {
    let (ns, name) = (s.namespace.clone(), s.name.clone());
    t.update_service(&s).unwrap();
    if !eps.is_empty() {
        let eps = eps.into_iter().map(|(a, n)| ep(ip(a), n)).collect();
        t.update_endpoint_slice(&slice(&ns, &name, ports, eps))
            .unwrap();
    }
}

/// The services and slices of `TestOverallNFTablesRules`. An endpoint
/// without a node name there is another node's here.
fn overall() -> Snapshot {
    let mut t = ChangeTracker::new(IpFamily::V4, NODE);
    let p80 = [("p80", 80, Protocol::Tcp)];
    let other = "other-node";
    let mut add = |s: Service, eps: Vec<(&str, &str)>| add_service(&mut t, &p80, s, eps);
    // ClusterIP.
    add(
        service("ns1", "svc1", "172.30.0.41", &p80),
        vec![("10.180.0.1", other)],
    );
    // LoadBalancer, externalTrafficPolicy Local, an external IP; its
    // one endpoint is not on this node.
    let mut s2 = lb(service("ns2", "svc2", "172.30.0.42", &p80), 3001, "1.2.3.4");
    s2.external_traffic_policy = TrafficPolicy::Local;
    s2.external_ips = vec![ip("192.168.99.22")];
    s2.health_check_node_port = 30000;
    add(s2, vec![("10.180.0.2", other)]);
    // NodePort.
    let mut s3 = service("ns3", "svc3", "172.30.0.43", &p80);
    s3.service_type = ServiceType::NodePort;
    s3.ports[0].node_port = 3003;
    add(s3, vec![("10.180.0.3", other)]);
    // An external IP.
    let mut s4 = service("ns4", "svc4", "172.30.0.44", &p80);
    s4.service_type = ServiceType::NodePort;
    s4.external_ips = vec![ip("192.168.99.33")];
    add(s4, vec![("10.180.0.4", other), ("10.180.0.5", NODE)]);
    // LoadBalancer, Cluster policy, source ranges, ClientIP affinity.
    let mut s5 = lb(service("ns5", "svc5", "172.30.0.45", &p80), 3002, "5.6.7.8");
    s5.health_check_node_port = 30000;
    s5.load_balancer_source_ranges = vec![" 203.0.113.0/25".into()];
    s5.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    add(s5, vec![("10.180.0.3", other)]);
    // No endpoints.
    add(service("ns6", "svc6", "172.30.0.46", &p80), vec![]);
    t.apply().0
}

/// An IPv6 twin of [`overall`]'s kinds of service: ClusterIP with two
/// endpoints, LoadBalancer with eTP Local, an external IP, a source range
/// and affinity, NodePort, no endpoints.
fn overall_v6() -> Snapshot {
    let mut t = ChangeTracker::new(IpFamily::V6, NODE);
    let p80 = [("p80", 80, Protocol::Tcp)];
    let mut add = |s: Service, eps: Vec<(&str, &str)>| add_service(&mut t, &p80, s, eps);
    add(
        service("ns1", "svc1", "fd00:30::41", &p80),
        vec![("fd00:10::1", "other-node"), ("fd00:10::2", NODE)],
    );
    let mut s2 = lb(
        service("ns2", "svc2", "fd00:30::42", &p80),
        3001,
        "2001:db8::4",
    );
    s2.external_traffic_policy = TrafficPolicy::Local;
    s2.external_ips = vec![ip("2001:db8:99::22")];
    s2.health_check_node_port = 30000;
    s2.load_balancer_source_ranges = vec!["2001:db8:113::/56".into(), "2001:db8:114::/61".into()];
    s2.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 10800,
    };
    add(s2, vec![("fd00:10::3", NODE), ("fd00:10::4", "other-node")]);
    let mut s3 = service("ns3", "svc3", "fd00:30::43", &p80);
    s3.service_type = ServiceType::NodePort;
    s3.ports[0].node_port = 3003;
    add(s3, vec![("fd00:10::5", "other-node")]);
    add(service("ns6", "svc6", "fd00:30::46", &p80), vec![]);
    t.apply().0
}

fn config_v6() -> Config {
    let mut cfg = Config::new(IpFamily::V6);
    cfg.masquerade.local_detector =
        LocalDetector::ClusterCidr(vec!["fd00:10::/60".parse().unwrap()]);
    cfg.node_ips = vec![ip("fd00:192::2")];
    cfg.service_cidrs = vec!["fd00:30::/112".parse().unwrap()];
    cfg
}

/// `NewFakeProxier(v1.IPv4Protocol)`'s settings.
fn config() -> Config {
    let mut cfg = Config::new(IpFamily::V4);
    cfg.masquerade.local_detector = LocalDetector::ClusterCidr(vec!["10.0.0.0/8".parse().unwrap()]);
    cfg.node_port_addresses = vec!["192.168.0.2/32".parse().unwrap()];
    cfg.node_ips = ["192.168.0.2", "192.168.1.2", "192.168.99.11"]
        .into_iter()
        .map(ip)
        .collect();
    cfg.service_cidrs = vec!["172.30.0.0/16".parse().unwrap()];
    cfg
}

fn nft(ns: &Netns, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// kube-proxy's expected commands in an order `nft -f` accepts (a chain
/// is made before a rule names it): the table, sets and maps, chains,
/// then rules and elements in their order.
fn loadable(expected: &str) -> String {
    let lines: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let rank = |l: &str| match l.split_whitespace().nth(1) {
        Some("table") => 0,
        Some("set" | "map") => 1,
        Some("chain") => 2,
        _ => 3,
    };
    let mut sorted = lines.clone();
    sorted.sort_by_key(|l| rank(l));
    sorted.join("\n") + "\n"
}

/// `nft list table` as blocks (`table …`, `set NAME`, `map NAME`,
/// `chain NAME`), each with its lines: a chain's in order, a set's or
/// map's elements sorted (the kernel's order is its hash's).
fn blocks(listing: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    let mut elements: Option<String> = None;
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(acc) = elements.as_mut() {
            acc.push(' ');
            acc.push_str(line);
            if line.ends_with('}') {
                let items = element_items(&elements.take().unwrap());
                out.entry(current.clone()).or_default().extend(items);
            }
            continue;
        }
        if line.starts_with("elements = {") {
            if line.ends_with('}') {
                out.entry(current.clone())
                    .or_default()
                    .extend(element_items(line));
            } else {
                elements = Some(line.to_string());
            }
            continue;
        }
        if let Some(head) = line.strip_suffix(" {") {
            current = head.to_string();
            out.entry(current.clone()).or_default();
            continue;
        }
        if line == "}" {
            continue;
        }
        out.entry(current.clone())
            .or_default()
            .push(line.to_string());
    }
    out
}

/// `elements = { a, b, … }` as sorted `element a` lines.
fn element_items(all: &str) -> Vec<String> {
    let inner = all.trim_start_matches("elements = {").trim_end_matches('}');
    let mut items: Vec<String> = inner
        .split(',')
        .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|e| !e.is_empty())
        .map(|e| format!("element {e}"))
        .collect();
    items.sort();
    items
}

/// kube-proxy's `numgen random mod N vmap { 0 : goto e0, 1 : goto e1, … }`
/// as the rules this backend writes for it, in `nft list`'s words:
/// `numgen random mod N 0 goto e0`, `numgen random mod N-1 0 goto e1`, …,
/// `goto e(N-1)`. Any other line is kept.
fn as_our_numgen(line: &str) -> Vec<String> {
    let Some(rest) = line.strip_prefix("numgen random mod ") else {
        return vec![line.to_string()];
    };
    let Some((n, map)) = rest.split_once(" vmap { ") else {
        return vec![line.to_string()];
    };
    let n: usize = n.parse().expect("numgen modulus");
    let targets: Vec<&str> = map
        .trim_end_matches(" }")
        .split(", ")
        .map(|e| e.split_once(" : goto ").expect("i : goto chain").1)
        .collect();
    assert_eq!(targets.len(), n, "{line}");
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i + 1 == n {
                format!("goto {t}")
            } else {
                format!("numgen random mod {} 0 goto {t}", n - i)
            }
        })
        .collect()
}

/// Every difference between two block maps, one line each.
fn differences(
    ours: &BTreeMap<String, Vec<String>>,
    theirs: &BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let mut d = Vec::new();
    for (name, want) in theirs {
        match ours.get(name) {
            None => d.push(format!("missing {name}")),
            Some(have) if have != want => d.push(format!(
                "{name} differs:\n  kube-proxy: {want:#?}\n  ours:       {have:#?}"
            )),
            _ => {}
        }
    }
    for name in ours.keys().filter(|n| !theirs.contains_key(*n)) {
        d.push(format!("extra {name}"));
    }
    d
}

#[test]
fn overall_matches_kube_proxy() {
    let expected = include_str!("golden/kube-proxy-overall.nft");
    let (tx, _, errors) = render_full(&config(), &overall());
    assert!(errors.is_empty(), "{errors:?}");

    let ours_ns = Netns::new("goldnft").unwrap();
    let rt = NsRuntime::start(&ours_ns).unwrap();
    rt.block_on(async move {
        let nft = Arc::new(NfTablesNetlink::new().unwrap());
        nft.apply(&tx).await.unwrap();
    });
    let ours = nft(&ours_ns, &["list", "table", "ip", "kube-proxy"], None);

    let theirs_ns = Netns::new("goldkp").unwrap();
    nft(&theirs_ns, &["-f", "-"], Some(&loadable(expected)));
    let theirs = nft(&theirs_ns, &["list", "table", "ip", "kube-proxy"], None);

    let mut theirs_blocks = blocks(&theirs);
    for lines in theirs_blocks.values_mut() {
        *lines = lines.iter().flat_map(|l| as_our_numgen(l)).collect();
    }
    let d = differences(&blocks(&ours), &theirs_blocks);
    assert!(
        d.is_empty(),
        "{} difference(s) from kube-proxy's TestOverallNFTablesRules:\n{}\n--- ours ---\n{ours}",
        d.len(),
        d.join("\n")
    );
}

/// Per chain, each rule's expressions and user data, as the kernel dumps
/// them.
type KernelRules = BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>>;

/// Every rule of table `ip kube-proxy` in the calling thread's namespace,
/// as the kernel holds it, over netlink (`NFT_MSG_GETRULE` dump): per
/// chain, each rule's expressions and user data (its comment), byte for
/// byte. Handles and positions are left out (they differ between two
/// loads of the same rules).
async fn kernel_rules(nfproto: u8) -> KernelRules {
    const NFT_MSG_GETRULE: u16 = (10 << 8) | 7;
    const NLM_F_REQUEST_DUMP: u16 = 0x1 | 0x300;
    let mut sock = proxier_netfilter::NfnlSocket::open().unwrap();
    let mut req = Vec::new();
    let table = b"kube-proxy\0";
    let attr_len = 4 + table.len();
    let len = 16 + 4 + attr_len.next_multiple_of(4);
    req.extend_from_slice(&(len as u32).to_ne_bytes());
    req.extend_from_slice(&NFT_MSG_GETRULE.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST_DUMP.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[nfproto, 0, 0, 0]); // family, version, res_id
    req.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    req.extend_from_slice(&1u16.to_ne_bytes()); // NFTA_RULE_TABLE
    req.extend_from_slice(table);
    req.resize(len, 0);
    sock.send(&req).await.unwrap();
    let mut out = KernelRules::new();
    let mut buf = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        sock.recv(&mut buf).await.unwrap();
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
            match kind {
                3 => return out, // NLMSG_DONE
                2 => {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap());
                    panic!("rule dump refused: errno {}", -code);
                }
                _ => {}
            }
            let (mut chain, mut exprs, mut udata) = (String::new(), Vec::new(), Vec::new());
            let mut a = at + 20;
            while a + 4 <= at + len {
                let alen = u16::from_ne_bytes(buf[a..a + 2].try_into().unwrap()) as usize;
                let atype = u16::from_ne_bytes(buf[a + 2..a + 4].try_into().unwrap()) & 0x7fff;
                let v = &buf[a + 4..a + alen];
                match atype {
                    2 => chain = String::from_utf8_lossy(v).trim_end_matches('\0').into(),
                    4 => exprs = v.to_vec(),
                    7 => udata = v.to_vec(),
                    _ => {}
                }
                a += alen.next_multiple_of(4);
            }
            out.entry(chain).or_default().push((exprs, udata));
            at += len.next_multiple_of(4);
        }
    }
}

/// A rule's expressions: each one's name and data, as bytes.
fn expressions(list: &[u8]) -> Vec<(String, Vec<u8>)> {
    let attrs = |b: &[u8]| {
        let mut out = Vec::new();
        let mut a = 0;
        while a + 4 <= b.len() {
            let len = u16::from_ne_bytes([b[a], b[a + 1]]) as usize;
            let kind = u16::from_ne_bytes([b[a + 2], b[a + 3]]) & 0x7fff;
            out.push((kind, b[a + 4..a + len].to_vec()));
            a += len.next_multiple_of(4);
        }
        out
    };
    attrs(list)
        .into_iter()
        .map(|(_, elem)| {
            let parts = attrs(&elem);
            let name = parts.iter().find(|p| p.0 == 1).map(|p| p.1.clone());
            let data = parts.iter().find(|p| p.0 == 2).map(|p| p.1.clone());
            let name = String::from_utf8_lossy(&name.unwrap_or_default())
                .trim_end_matches('\0')
                .to_string();
            (name, data.unwrap_or_default())
        })
        .collect()
}

/// The wire format against `nft`'s own: our table, written over netlink,
/// is listed (`nft list table ip kube-proxy`) and that text loaded with
/// `nft -f` into a fresh namespace, so nft encodes every rule itself; then
/// both kernels are asked for their rules over netlink, and every rule of
/// every chain must hold the same expressions and comment, byte for byte
/// (payload, cmp, bitwise, meta, ct, lookup and verdict maps, immediate
/// and verdicts, nat, numgen, fib, masq, reject and dynset all occur in
/// this snapshot, and the test checks that they do).
#[test]
fn every_rule_holds_the_bytes_nft_would_have_sent() {
    same_bytes_as_nft(&config(), &overall());
}

/// The same for IPv6: `ip6 kube-proxy`, node ports on every local address
/// (`fib daddr type local`), a cluster CIDR that is not whole bytes.
#[test]
fn every_ipv6_rule_holds_the_bytes_nft_would_have_sent() {
    same_bytes_as_nft(&config_v6(), &overall_v6());
}

fn same_bytes_as_nft(cfg: &Config, snap: &Snapshot) {
    let (tx, _, errors) = render_full(cfg, snap);
    assert!(errors.is_empty(), "{errors:?}");
    let (family, nfproto) = match cfg.masquerade.family {
        IpFamily::V4 => ("ip", 2),
        IpFamily::V6 => ("ip6", 10),
    };
    let ours_ns = Netns::new("wirenft").unwrap();
    let rt = NsRuntime::start(&ours_ns).unwrap();
    let ours = rt.block_on(async move {
        let nft = Arc::new(NfTablesNetlink::new().unwrap());
        nft.apply(&tx).await.unwrap();
        kernel_rules(nfproto).await
    });
    let listing = nft(&ours_ns, &["list", "table", family, "kube-proxy"], None);
    let theirs_ns = Netns::new("wirekp").unwrap();
    nft(&theirs_ns, &["-f", "-"], Some(&listing));
    let theirs = NsRuntime::start(&theirs_ns)
        .unwrap()
        .block_on(kernel_rules(nfproto));
    let rules: usize = ours.values().map(Vec::len).sum();
    assert!(rules > 50, "{rules} rules read back");
    let kinds: std::collections::BTreeSet<String> = ours
        .values()
        .flatten()
        .flat_map(|r| expressions(&r.0).into_iter().map(|e| e.0))
        .collect();
    for k in [
        "payload",
        "cmp",
        "bitwise",
        "meta",
        "ct",
        "lookup",
        "immediate",
        "nat",
        "numgen",
        "fib",
        "masq",
        "reject",
        "dynset",
    ] {
        assert!(kinds.contains(k), "no {k} expression compared: {kinds:?}");
    }
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>(),
        "the same chains hold rules"
    );
    let mut d = Vec::new();
    for (chain, rs) in &ours {
        let other = &theirs[chain];
        if rs.len() != other.len() {
            d.push(format!(
                "{chain}: {} rules, nft's {}",
                rs.len(),
                other.len()
            ));
            continue;
        }
        for (i, (a, b)) in rs.iter().zip(other).enumerate() {
            if a.1 != b.1 {
                d.push(format!(
                    "{chain} rule {i}: comment {:?}, nft's {:?}",
                    a.1, b.1
                ));
            }
            let (ea, eb) = (expressions(&a.0), expressions(&b.0));
            if ea != eb {
                d.push(format!(
                    "{chain} rule {i}:\n  ours {ea:02x?}\n  nft  {eb:02x?}"
                ));
            }
        }
    }
    assert!(
        d.is_empty(),
        "{} rule(s) differ:\n{}",
        d.len(),
        d.join("\n")
    );
}
