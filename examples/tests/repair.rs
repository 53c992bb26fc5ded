//! What another program breaks is repaired within one `--sync-period`:
//! each mode's binary runs as a daemon (`--sync-period 2s`) in the node
//! namespace of a topology, serving a ClusterIP and NodePort service from
//! two pods; then a flushed chain, a deleted jump, one flushed endpoint
//! chain, a flushed filter chain and a firewalld-style wipe (and for IPVS
//! `ipvsadm -C`, `ip addr flush dev kube-ipvs0`, `ipset flush`; for
//! nftables `nft flush ruleset`) each break it. The rules read back as
//! they were within the period (plus the sync's own time), the service
//! answers the client pod again, the log names what was found, and
//! `kubeproxy_sync_proxy_rules_repairs_total` counts every case.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proxier_core::Protocol;
use proxier_testbed::{Outcome, Plan, Topology, Where};

const SVC: &str = "10.96.0.10";
const SYNC_PERIOD: Duration = Duration::from_secs(2);
/// A repair may start at most one period after the damage; the full sync
/// it runs takes well under a second on the host. The VM is emulated:
/// every process there (the reads of the state included) is slower.
fn repaired_within() -> Duration {
    if proxier_testbed::vm::in_vm() {
        Duration::from_secs(7)
    } else {
        Duration::from_millis(3500)
    }
}
const METRICS: &str = "127.0.0.1:10249";

fn manifest(topo: &Topology, dir: &std::path::Path) -> String {
    let eps: Vec<String> = [Where::Local(0), Where::Local(1)]
        .iter()
        .map(|w| {
            format!(
                "  - {{addresses: [\"{}\"], nodeName: node-1}}",
                topo.ip_of(*w)
            )
        })
        .collect();
    let text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\nspec:\n  type: NodePort\n  clusterIP: {SVC}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30090, protocol: TCP}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: demo\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n{}\n",
        eps.join("\n")
    );
    let path = dir.join("web.yaml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Whether the service answers the client pod (cluster IP and node port).
fn serves(topo: &Topology) -> bool {
    let dsts = [
        SocketAddr::new(SVC.parse().unwrap(), 80),
        SocketAddr::new(topo.node_ip(), 30090),
    ];
    dsts.iter().all(|dst| {
        topo.requests(
            Where::ClientPod,
            Protocol::Tcp,
            None,
            *dst,
            4,
            Duration::from_millis(800),
        )
        .iter()
        .all(|o| matches!(o, Outcome::Reply { .. }))
    })
}

fn sh(topo: &Topology, cmd: &str) -> String {
    let out = topo.node.exec_unchecked("sh", &["-c", cmd]).expect(cmd);
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `GET /metrics` from inside the node namespace.
fn metrics(topo: &Topology) -> String {
    common::http_get_in(&topo.node, METRICS, "/metrics")
}

fn repairs(topo: &Topology) -> Option<u64> {
    metrics(topo)
        .lines()
        .find_map(|l| l.strip_prefix("kubeproxy_sync_proxy_rules_repairs_total "))
        .and_then(|v| v.trim().parse().ok())
}

/// One mode: `bin args`, its rules read back by `state` (a text that must
/// be the same before the damage and after the repair), and the damage
/// done by each shell command of `cases`.
fn repairs_within_a_period(
    bin: &str,
    args: &[&str],
    state: &dyn Fn(&Topology) -> String,
    cases: &[(&str, &str)],
) {
    let mut topo = Topology::build(Plan::default()).expect("topology");
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(&topo, dir.path());
    for w in [Where::Local(0), Where::Local(1)] {
        topo.serve(w, 8080, Protocol::Tcp).expect("server");
    }
    let log_path = dir.path().join("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut argv = vec![
        "--manifests",
        &m,
        "--hostname-override",
        "node-1",
        "--ip-family",
        "ipv4",
        "--cluster-cidr",
        "10.0.0.0/16",
        "--nodeport-addresses",
        "192.168.50.0/24",
        "--sync-period",
        "2s",
        "--min-sync-period",
        "100ms",
        "--metrics-bind-address",
        METRICS,
        "--healthz-bind-address",
        "127.0.0.1:10256",
    ];
    argv.extend(args);
    let mut child = common::Daemon(
        std::process::Command::new("ip")
            .args(["netns", "exec", topo.node.name(), bin])
            .args(&argv)
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let t0 = Instant::now();
    while !(serves(&topo) && repairs(&topo).is_some()) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{bin} never served: {}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let a periodic sync pass, so that the state read is the settled one.
    std::thread::sleep(SYNC_PERIOD + Duration::from_millis(500));
    let good = state(&topo);
    assert_eq!(repairs(&topo), Some(0), "{}", log_text());
    // kube-proxy's gauges: iptables rules owned per table (the modes that
    // write iptables rules), and no Local service without endpoints.
    let m = metrics(&topo);
    let nat_rules = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\",ip_family=\"IPv4\"} ",
            )
        })
        .and_then(|v| v.trim().parse::<u64>().ok());
    if bin.ends_with("/nftables") {
        assert_eq!(nat_rules, None, "{m}");
    } else {
        assert!(nat_rules.is_some_and(|n| n > 0), "{bin}: {m}");
    }
    assert!(
        m.contains(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\",ip_family=\"IPv4\"} 0"
        ),
        "{m}"
    );
    for (n, (what, cmd)) in cases.iter().enumerate() {
        sh(&topo, cmd);
        let broken = Instant::now();
        // (That the damage was real is shown by the repair count below: a
        // read of the state here may come after the repair, in the VM.)
        let took = loop {
            // An upper bound: the repair was done by the end of the read
            // that matched.
            if state(&topo) == good {
                break broken.elapsed();
            }
            assert!(
                broken.elapsed() < repaired_within(),
                "{bin}: {what}: not repaired in {:?}: {}\n{}",
                repaired_within(),
                state(&topo),
                log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(serves(&topo), "{bin}: {what}: repaired but not serving");
        // The metric moves in the sync that repaired, after the write; the
        // read above may have matched before the damage was seen at all
        // (in the VM a read can race the repair either way), so the repair
        // itself is waited for within the same bound, from the damage.
        while repairs(&topo) != Some(n as u64 + 1)
            && broken.elapsed() < repaired_within() + Duration::from_secs(1)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(repairs(&topo), Some(n as u64 + 1), "{bin}: {what}");
        eprintln!("{bin}: {what}: repaired within {took:?}");
    }
    child.stop();
    let text = log_text();
    assert_eq!(
        text.matches("repaired with a full sync").count(),
        cases.len(),
        "{text}"
    );
    // And a period without damage repaired nothing (no false alarm).
    assert!(!text.contains("sync failed"), "{text}");
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `iptables-save` of both tables without counters, sorted (a repair by
/// a full sync may order foreign-free chains differently).
fn iptables_state(variant: &str) -> impl Fn(&Topology) -> String {
    let prog = format!("iptables-{variant}-save");
    move |t: &Topology| {
        let mut lines: Vec<String> = ["nat", "filter"]
            .iter()
            .flat_map(|table| {
                let out = t.node.exec_unchecked(&prog, &["-t", table]).unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with("-A ") || l.starts_with(':'))
                    .map(|l| format!("{table} {}", l.split(" [").next().unwrap_or(l)))
                    .collect::<Vec<_>>()
            })
            .collect();
        lines.sort();
        lines.join("\n")
    }
}

const DELETE_OUTPUT_JUMP: &str = "iptables-save -t nat | grep '^-A OUTPUT .*-j KUBE-SERVICES' | sed 's/^-A/-D/' | while read -r l; do eval iptables -t nat $l; done";
const FLUSH_ONE_SEP: &str = "iptables -t nat -F $(iptables-save -t nat | grep -o '^:KUBE-SEP-[A-Z0-9]*' | head -1 | tr -d :)";
const WIPE: &str =
    "iptables -t nat -F; iptables -t nat -X; iptables -t filter -F; iptables -t filter -X";

fn iptables_cases() -> Vec<(&'static str, &'static str)> {
    vec![
        ("flush KUBE-SERVICES", "iptables -t nat -F KUBE-SERVICES"),
        ("delete the OUTPUT jump", DELETE_OUTPUT_JUMP),
        ("flush one KUBE-SEP- chain", FLUSH_ONE_SEP),
        ("flush KUBE-FIREWALL", "iptables -t filter -F KUBE-FIREWALL"),
        ("firewalld-style wipe", WIPE),
    ]
}

#[test]
fn iptables_nft_repairs_within_a_sync_period() {
    let cases: Vec<(&str, String)> = iptables_cases()
        .into_iter()
        .map(|(w, c)| (w, c.replace("iptables", "iptables-nft")))
        .collect();
    let cases: Vec<(&str, &str)> = cases.iter().map(|(w, c)| (*w, c.as_str())).collect();
    repairs_within_a_period(
        env!("CARGO_BIN_EXE_iptables"),
        &["--iptables-variant", "nft"],
        &iptables_state("nft"),
        &cases,
    );
}

#[test]
fn iptables_legacy_repairs_within_a_sync_period() {
    let cases: Vec<(&str, String)> = iptables_cases()
        .into_iter()
        .map(|(w, c)| (w, c.replace("iptables", "iptables-legacy")))
        .collect();
    let cases: Vec<(&str, &str)> = cases.iter().map(|(w, c)| (*w, c.as_str())).collect();
    repairs_within_a_period(
        env!("CARGO_BIN_EXE_iptables"),
        &["--iptables-variant", "legacy"],
        &iptables_state("legacy"),
        &cases,
    );
}

#[test]
fn userspace_portals_repair_within_a_sync_period() {
    repairs_within_a_period(
        env!("CARGO_BIN_EXE_userspace"),
        &["--portal", "--iptables-variant", "nft"],
        &iptables_state("nft"),
        &[
            (
                "flush KUBE-PORTALS-CONTAINER",
                "iptables-nft -t nat -F KUBE-PORTALS-CONTAINER",
            ),
            (
                "delete the PREROUTING jump",
                "iptables-nft-save -t nat | grep '^-A PREROUTING .*-j KUBE-PORTALS-CONTAINER' | sed 's/^-A/-D/' | while read -r l; do eval iptables-nft -t nat $l; done",
            ),
            (
                "firewalld-style wipe",
                "iptables-nft -t nat -F; iptables-nft -t nat -X; iptables-nft -t filter -F; iptables-nft -t filter -X",
            ),
        ],
    );
}

fn nft_state(t: &Topology) -> String {
    let out = t
        .node
        .exec_unchecked("nft", &["list", "table", "ip", "kube-proxy"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nftables_repairs_within_a_sync_period() {
    repairs_within_a_period(
        env!("CARGO_BIN_EXE_nftables"),
        &[],
        &nft_state,
        &[
            (
                "flush chain services",
                "nft flush chain ip kube-proxy services",
            ),
            (
                "flush one endpoint chain",
                "nft flush chain ip kube-proxy $(nft list table ip kube-proxy | grep -o 'chain endpoint-[^ ]*' | head -1 | cut -d' ' -f2)",
            ),
            ("delete the table", "nft delete table ip kube-proxy"),
            ("flush ruleset", "nft flush ruleset"),
        ],
    );
}

fn ipvs_state(t: &Topology) -> String {
    let run = |p: &str, a: &[&str]| {
        String::from_utf8_lossy(&t.node.exec_unchecked(p, a).unwrap().stdout).into_owned()
    };
    let mut vs: Vec<String> = run("ipvsadm", &["-Sn"])
        .lines()
        .map(str::to_owned)
        .collect();
    vs.sort();
    let addrs = run("ip", &["-o", "-4", "addr", "show", "dev", "kube-ipvs0"]);
    let addrs: Vec<&str> = addrs
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect();
    let mut sets: Vec<String> = run("ipset", &["save"])
        .lines()
        .filter(|l| l.starts_with("add "))
        .map(str::to_owned)
        .collect();
    sets.sort();
    format!(
        "{}\n{addrs:?}\n{}\n{}",
        vs.join("\n"),
        sets.join("\n"),
        iptables_state("nft")(t)
    )
}

/// IPVS needs the VM's kernel.
#[test]
fn ipvs_repairs_within_a_sync_period_in_the_vm() {
    let bin = env!("CARGO_BIN_EXE_ipvs");
    proxier_testbed::vm::delegate_with(
        "ipvs_repairs_within_a_sync_period_in_the_vm",
        &[bin],
        || {
            repairs_within_a_period(
                bin,
                &["--iptables-variant", "nft"],
                &ipvs_state,
                &[
                    ("ipvsadm -C", "ipvsadm -C"),
                    (
                        "ip addr flush dev kube-ipvs0",
                        "ip addr flush dev kube-ipvs0",
                    ),
                    ("ipset flush KUBE-CLUSTER-IP", "ipset flush KUBE-CLUSTER-IP"),
                    (
                        "flush KUBE-SERVICES",
                        "iptables-nft -t nat -F KUBE-SERVICES",
                    ),
                    (
                        "firewalld-style wipe",
                        "iptables-nft -t nat -F; iptables-nft -t nat -X; iptables-nft -t filter -F; iptables-nft -t filter -X",
                    ),
                ],
            );
        },
    );
}
