//! The VM test bed's own tests: it boots a real kernel, loads ip_vs,
//! creates a dummy link, runs the namespace test bed, and a failing inner
//! test fails the outer one (both directions proven).

use std::net::SocketAddr;
use std::time::Duration;

use proxier_core::Protocol;
use proxier_testbed::vm::{self, delegate};
use proxier_testbed::{Plan, Topology, Where};

/// Runs a shell command in the VM. Busybox's shell prefers its own
/// applets, so iproute2 is named by its full path.
fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn vm_has_ipvs_dummy_links_and_the_namespace_bed() {
    delegate("vm_has_ipvs_dummy_links_and_the_namespace_bed", || {
        assert!(
            std::path::Path::new("/proc/net/ip_vs").exists(),
            "ip_vs not loaded"
        );
        sh(
            "/usr/sbin/ip link add kube-ipvs0 type dummy && /usr/sbin/ip addr add 10.96.0.1/32 dev kube-ipvs0",
        );
        sh("ipvsadm -A -t 10.96.0.1:80 -s rr && ipvsadm -a -t 10.96.0.1:80 -r 10.0.1.6:8080 -m");
        let l = sh("ipvsadm -Ln");
        assert!(
            l.contains("10.96.0.1:80 rr") && l.contains("10.0.1.6:8080"),
            "{l}"
        );
        sh("ipvsadm -C && /usr/sbin/ip link del kube-ipvs0");
        // The namespace test bed works in the VM too, with IPVS carrying a
        // real connection inside the node namespace.
        let mut topo = Topology::build(Plan::default()).unwrap();
        let ep = topo.serve(Where::Local(0), 8080, Protocol::Tcp).unwrap();
        let node = topo.node.name().to_string();
        sh(&format!(
            "/usr/sbin/ip -n {node} link add kube-ipvs0 type dummy && /usr/sbin/ip -n {node} addr add 10.96.0.1/32 dev kube-ipvs0 && \
             /usr/sbin/ip netns exec {node} sh -c 'echo 1 > /proc/sys/net/ipv4/vs/conntrack' && \
             /usr/sbin/ip netns exec {node} ipvsadm -A -t 10.96.0.1:80 -s rr && \
             /usr/sbin/ip netns exec {node} ipvsadm -a -t 10.96.0.1:80 -r {ep} -m"
        ));
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let o = topo.tcp(Where::Ext, None, vip, Duration::from_secs(3));
        assert_eq!(o.server(), Some(ep), "{o:?}");
        // iptables (nft and legacy) and ipset work in the VM.
        sh(
            "iptables-nft -t nat -N PX-CHECK && iptables-nft -t nat -A PX-CHECK -m comment --comment x -m statistic --mode random --probability 0.5 -j RETURN && iptables-nft -t nat -F PX-CHECK && iptables-nft -t nat -X PX-CHECK",
        );
        sh("iptables-legacy -t nat -N PX-CHECK && iptables-legacy -t nat -X PX-CHECK");
        sh("ipset create PX-CHECK hash:ip,port && ipset destroy PX-CHECK");
    });
}

/// Fails when told to (inside the VM); passes otherwise.
#[test]
fn vm_probe() {
    let want = std::env::var("PROXIER_VM_PROBE").unwrap_or_else(|_| "pass".into());
    assert_eq!(want, "pass", "probe told to fail");
}

#[test]
fn vm_turns_inner_results_into_outer_results() {
    if vm::in_vm() {
        return; // this test drives the VM from the host
    }
    let exe = std::env::current_exe().unwrap();
    let args = ["--exact", "vm_probe", "--nocapture"];
    let fail = vm::run(
        &exe,
        &args,
        &[("PROXIER_VM_PROBE", "fail")],
        Duration::from_secs(300),
    )
    .unwrap();
    assert_eq!(
        fail.status,
        Some(101),
        "a failing inner test must fail: {}",
        fail.output
    );
    assert!(!fail.passed());
    assert!(fail.output.contains("probe told to fail"));
    let pass = vm::run(
        &exe,
        &args,
        &[("PROXIER_VM_PROBE", "pass")],
        Duration::from_secs(300),
    )
    .unwrap();
    assert!(pass.passed(), "{}", pass.output);
    assert!(pass.output.contains("1 passed"));
    eprintln!(
        "VM boot-run-shutdown for a trivial test: {:?} (pass), {:?} (fail)",
        pass.elapsed, fail.elapsed
    );
}
