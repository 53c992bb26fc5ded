//! Both families in one process: the `nftables`, `iptables` and
//! `userspace` (portal) binaries, run once in the node namespace of a
//! dual-stack topology with a dual-stack Service (`clusterIPs` of both
//! families, an EndpointSlice per address type) and mixed-family
//! `--cluster-cidr` and `--nodeport-addresses`, answer a client pod over
//! IPv4 and over IPv6; `--cleanup` removes both families' rules;
//! `--ip-family` keeps to one.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use proxier_core::{IpFamily, Protocol};
use proxier_testbed::{Outcome, Plan, Topology, Where};

const SVC4: &str = "10.96.0.10";
const SVC6: &str = "fd00:96::10";

/// A dual-stack service `web` (both cluster IPs, node port 30090) and a
/// slice per family with the two local pods (the IPv6 one left out
/// unless `with_v6`).
fn manifest(topo: &mut Topology, dir: &std::path::Path, with_v6: bool) -> String {
    let mut eps = |family: IpFamily| -> Vec<IpAddr> {
        topo.plan.family = family;
        vec![topo.ip_of(Where::Local(0)), topo.ip_of(Where::Local(1))]
    };
    let (v4, v6) = (eps(IpFamily::V4), eps(IpFamily::V6));
    let slice = |name: &str, ty: &str, eps: &[IpAddr]| {
        let list: Vec<String> = eps
            .iter()
            .map(|a| format!("  - {{addresses: [\"{a}\"], nodeName: node-1}}"))
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: demo\n  labels: {{kubernetes.io/service-name: web}}\naddressType: {ty}\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{}\n",
            list.join("\n")
        )
    };
    let mut text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\nspec:\n  type: NodePort\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n  clusterIP: {SVC4}\n  clusterIPs: [{SVC4}, \"{SVC6}\"]\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30090, protocol: TCP}}]\n---\n{}",
        slice("web-v4", "IPv4", &v4),
    );
    if with_v6 {
        text.push_str(&format!("---\n{}", slice("web-v6", "IPv6", &v6)));
    }
    let path = dir.join("dual.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn servers(topo: &Topology, dst: SocketAddr) -> Vec<IpAddr> {
    topo.requests(
        Where::ClientPod,
        Protocol::Tcp,
        None,
        dst,
        12,
        Duration::from_millis(1500),
    )
    .iter()
    .map(|o| match o {
        Outcome::Reply { server, .. } => server.ip(),
        other => panic!("{dst}: {other:?}"),
    })
    .collect()
}

/// The userspace proxy serves only while it runs: `bin args` (without
/// `--once`) in the node namespace, until both families' rules are in.
fn start_daemon(
    topo: &Topology,
    bin: &str,
    args: &[&str],
    ours: &impl Fn(&Topology) -> (String, String),
) -> std::process::Child {
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", topo.node.name(), bin])
        .args(args.iter().filter(|a| **a != "--once"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let (a, b) = ours(topo);
        if a.contains(SVC4) && b.contains(SVC6) {
            // The listeners open in the same sync as the portal rules.
            std::thread::sleep(Duration::from_millis(200));
            return child;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{bin} never programmed both families");
}

fn run_dual_stack(
    bin: &str,
    extra: &[&str],
    daemon: bool,
    ours: impl Fn(&Topology) -> (String, String),
) {
    let mut topo = Topology::build(Plan::default()).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(&mut topo, dir.path(), true);
    for family in [IpFamily::V4, IpFamily::V6] {
        topo.plan.family = family;
        for w in [Where::Local(0), Where::Local(1)] {
            topo.serve(w, 8080, Protocol::Tcp).expect("server");
        }
    }
    let mut args = vec![
        "--once",
        "--manifests",
        &m,
        "--hostname-override",
        "node-1",
        "--cluster-cidr",
        "10.0.0.0/16,fd00:10::/32",
        "--nodeport-addresses",
        "192.168.50.0/24,fd00:50::/64",
    ];
    args.extend(extra);
    let mut child = None;
    if daemon {
        child = Some(start_daemon(&topo, bin, &args, &ours));
    } else {
        let out = common::run_in(&topo.node, bin, &args);
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{log}");
        assert!(
            log.contains("family=\"IPv4\"") && log.contains("family=\"IPv6\""),
            "both families synced: {log}"
        );
    }
    let (v4_rules, v6_rules) = ours(&topo);
    assert!(v4_rules.contains(SVC4), "{v4_rules}");
    assert!(v6_rules.contains(SVC6), "{v6_rules}");
    // Both families answer, spread over both local endpoints.
    for (family, vip) in [(IpFamily::V4, SVC4), (IpFamily::V6, SVC6)] {
        topo.plan.family = family;
        let want = [topo.ip_of(Where::Local(0)), topo.ip_of(Where::Local(1))];
        let got = servers(&topo, SocketAddr::new(vip.parse().unwrap(), 80));
        assert!(got.iter().all(|s| want.contains(s)), "{got:?}");
        assert!(want.iter().all(|w| got.contains(w)), "{vip}: {got:?}");
        // And the node port on the node's address of the family.
        let np = SocketAddr::new(topo.node_ip(), 30090);
        assert!(!servers(&topo, np).is_empty());
    }
    // The IPv6 slice deleted: IPv4 keeps serving, IPv6 has no endpoint.
    manifest(&mut topo, dir.path(), false);
    if !daemon {
        let out = common::run_in(&topo.node, bin, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v6 = SocketAddr::new(SVC6.parse().unwrap(), 80);
    let t0 = std::time::Instant::now();
    loop {
        topo.plan.family = IpFamily::V6;
        let o = topo.tcp(Where::ClientPod, None, v6, Duration::from_millis(800));
        if o.server().is_none() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "IPv6 still served without its slice: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    topo.plan.family = IpFamily::V4;
    assert!(!servers(&topo, SocketAddr::new(SVC4.parse().unwrap(), 80)).is_empty());
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
    let out = common::run_in(
        &topo.node,
        bin,
        &["--cleanup", "--hostname-override", "node-1"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (v4_rules, v6_rules) = ours(&topo);
    assert!(!v4_rules.contains(SVC4) && !v6_rules.contains(SVC6));

    // One family forced: the other is not touched.
    let mut args4 = args.clone();
    args4.extend(["--ip-family", "ipv4"]);
    let out = common::run_in(&topo.node, bin, &args4);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (v4_rules, v6_rules) = ours(&topo);
    assert!(
        v4_rules.contains(SVC4) && !v6_rules.contains(SVC6),
        "{v6_rules}"
    );
    let out = common::run_in(
        &topo.node,
        bin,
        &[
            "--cleanup",
            "--ip-family",
            "ipv4",
            "--hostname-override",
            "node-1",
        ],
    );
    assert!(out.status.success());
}

fn exec(topo: &Topology, program: &str, args: &[&str]) -> String {
    topo.node_exec(program, args).unwrap_or_default()
}

/// A node with IPv6 disabled runs IPv4 only, and says why.
#[test]
fn ipv6_disabled_runs_ipv4_only() {
    let ns = proxier_testbed::Netns::new("nov6").unwrap();
    ns.enter(|| std::fs::write("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"))
        .unwrap()
        .unwrap();
    let out = common::run_demo_once(&ns, env!("CARGO_BIN_EXE_nftables"), &[]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("not running dual-stack") && log.contains("disable_ipv6=1"),
        "{log}"
    );
    let tables = String::from_utf8(ns.exec("nft", &["list", "tables"]).unwrap().stdout).unwrap();
    assert!(tables.contains("table ip kube-proxy"), "{tables}");
    assert!(!tables.contains("table ip6 kube-proxy"), "{tables}");
}

#[test]
fn nftables_serves_both_families() {
    run_dual_stack(env!("CARGO_BIN_EXE_nftables"), &[], false, |t| {
        (
            exec(t, "nft", &["list", "table", "ip", "kube-proxy"]),
            exec(t, "nft", &["list", "table", "ip6", "kube-proxy"]),
        )
    });
}

/// Both families' rules of an iptables-speaking mode (nft variant).
fn iptables_saves(t: &Topology) -> (String, String) {
    (
        exec(t, "iptables-nft-save", &[]),
        exec(t, "ip6tables-nft-save", &[]),
    )
}

#[test]
fn iptables_serves_both_families() {
    run_dual_stack(
        env!("CARGO_BIN_EXE_iptables"),
        &["--iptables-variant", "nft"],
        false,
        iptables_saves,
    );
}

#[test]
fn userspace_portal_serves_both_families() {
    run_dual_stack(
        env!("CARGO_BIN_EXE_userspace"),
        &["--iptables-variant", "nft"],
        true,
        iptables_saves,
    );
}

/// The IPVS mode needs the VM's kernel: virtual servers of both families,
/// both families' addresses on the one `kube-ipvs0`, `KUBE-…` and
/// `KUBE-6-…` ipsets; `--cleanup` of both leaves no virtual server.
#[test]
fn ipvs_serves_both_families_in_the_vm() {
    let bin = env!("CARGO_BIN_EXE_ipvs");
    proxier_testbed::vm::delegate_with("ipvs_serves_both_families_in_the_vm", &[bin], || {
        run_dual_stack(bin, &["--iptables-variant", "nft"], false, |t| {
            let vs = exec(t, "ipvsadm", &["-Sn"]);
            let v4 = vs.lines().filter(|l| !l.contains('[')).collect::<Vec<_>>();
            let v6 = vs.lines().filter(|l| l.contains('[')).collect::<Vec<_>>();
            // Each family's sets: `KUBE-CLUSTER-IP` (inet) and
            // `KUBE-6-CLUSTER-IP` (inet6), both needed for a match.
            let set4 = exec(t, "ipset", &["list", "KUBE-CLUSTER-IP"]);
            let set6 = exec(t, "ipset", &["list", "KUBE-6-CLUSTER-IP"]);
            let both = |vs: Vec<&str>, set: &str, ip: &str, fam: &str| {
                if set.contains(ip) && set.contains(fam) {
                    vs.join("\n")
                } else {
                    String::new()
                }
            };
            (
                both(v4, &set4, SVC4, "family inet "),
                both(v6, &set6, SVC6, "family inet6 "),
            )
        });
    });
}

/// A `--nodeport-addresses` CIDR holding none of the node's addresses is
/// named in the log; the rest syncs.
#[test]
fn nodeport_cidr_without_a_node_address_is_named() {
    let ns = proxier_testbed::Netns::new("npaw").unwrap();
    let out = common::run_demo_once(
        &ns,
        env!("CARGO_BIN_EXE_nftables"),
        &["--nodeport-addresses", "192.168.99.0/24,fd00:99::/64"],
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    for cidr in ["192.168.99.0/24", "fd00:99::/64"] {
        assert!(
            log.lines()
                .any(|l| l.contains("no address of this node is in it") && l.contains(cidr)),
            "{cidr}: {log}"
        );
    }
}
