//! The `ipvs` binary, run as a user would. `--help`, unknown and invalid
//! flags on the host; `--once` against the bundled manifest, `--cleanup`
//! and a bad manifest inside the test VM (a kernel with IPVS), each in a
//! throwaway namespace, with `ipvsadm`, `ipset` and `iptables-save`
//! checked afterwards.

mod common;

use std::process::Command;

use common::manifest;
use proxier_testbed::Netns;
use proxier_testbed::vm::delegate_with;

const BIN: &str = env!("CARGO_BIN_EXE_ipvs");

fn run_in(ns: &Netns, args: &[&str]) -> std::process::Output {
    common::run_in(ns, BIN, args)
}

fn text(ns: &Netns, prog: &str, args: &[&str]) -> String {
    String::from_utf8(ns.exec(prog, args).unwrap().stdout).unwrap()
}

#[test]
fn help_and_bad_flags() {
    common::assert_help(
        BIN,
        &[
            "--manifests",
            "--kubeconfig",
            "--ipvs-scheduler",
            "--ipvs-strict-arp",
            "--ipvs-exclude-cidrs",
            "--ipvs-tcp-timeout",
            "--once",
            "--cleanup",
            "--config",
        ],
    );
    // A scheduler name that could not be one is refused before anything
    // is touched, in one line.
    let out = Command::new(BIN)
        .args([
            "--once",
            "--ipvs-scheduler",
            "rr;reboot",
            "--manifests",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("error: --ipvs-scheduler")),
        "{err}"
    );
}

#[test]
fn once_then_cleanup_in_the_vm() {
    let m = manifest();
    delegate_with("once_then_cleanup_in_the_vm", &[BIN, &m], || {
        let ns = Netns::new("exipvs").unwrap();
        // A node address for the node port.
        let st = ns
            .exec(
                "sh",
                &["-c", "ip link add eth0 type dummy && ip addr add 192.168.77.1/24 dev eth0 && ip link set eth0 up"],
            )
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        let out = common::run_demo_once(
            &ns,
            BIN,
            &[
                "--cluster-cidr",
                "10.0.0.0/16",
                "--ipvs-scheduler",
                "wrr",
                "--iptables-variant",
                "nft",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ipvs = text(&ns, "ipvsadm", &["-Sn"]);
        for line in [
            "-A -t 10.96.0.10:80 -s wrr",
            "-a -t 10.96.0.10:80 -r 127.0.0.11:8080 -m -w 1",
            "-a -t 10.96.0.10:80 -r 127.0.0.13:8080 -m -w 1",
            "-A -t 192.168.77.1:30080 -s wrr",
            "-a -t 192.168.77.1:30080 -r 127.0.0.12:8080 -m -w 1",
        ] {
            assert!(ipvs.contains(line), "{line} missing:\n{ipvs}");
        }
        assert!(text(&ns, "ip", &["-o", "addr", "show", "kube-ipvs0"]).contains("10.96.0.10/32"));
        let sets = text(&ns, "ipset", &["list", "KUBE-CLUSTER-IP"]);
        assert!(sets.contains("10.96.0.10,tcp:80"), "{sets}");
        assert!(text(&ns, "ipset", &["list", "KUBE-NODE-PORT-TCP"]).contains("30080"));
        let nat = text(&ns, "iptables-nft-save", &["-t", "nat"]);
        assert!(
            nat.contains("-A KUBE-SERVICES ! -s 10.0.0.0/16 -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ"),
            "{nat}"
        );
        let out = run_in(
            &ns,
            &[
                "--cleanup",
                "--hostname-override",
                "node-1",
                "--iptables-variant",
                "nft",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text(&ns, "ipvsadm", &["-Sn"]).trim(), "");
        assert_eq!(text(&ns, "ipset", &["list", "-n"]).trim(), "");
        assert!(!text(&ns, "iptables-nft-save", &[]).contains("KUBE-"));
        let link = ns.exec("ip", &["-o", "link", "show", "kube-ipvs0"]);
        assert!(link.is_err(), "kube-ipvs0 left: {link:?}");

        // A bad manifest: one line naming the object and field.
        common::assert_bad_manifest_refused(
            "ipvsbad",
            &["--hostname-override", "node-1", "--iptables-variant", "nft"],
            |a| run_in(&ns, a),
        );
    });
}
