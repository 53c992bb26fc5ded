//! The `iptables` binary, run as a user would: `--help`, an unknown flag,
//! `--once` against the bundled manifest in a throwaway namespace with the
//! rules checked afterwards, `--cleanup`, and a bad manifest.

mod common;

use std::process::Command;

use proxier_testbed::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_iptables");

fn run_in(ns: &Netns, args: &[&str]) -> std::process::Output {
    common::run_in(ns, BIN, args)
}

#[test]
fn help_and_unknown_flag() {
    common::assert_help(
        BIN,
        &[
            "--manifests",
            "--kubeconfig",
            "--hostname-override",
            "--nodeport-addresses",
            "--cluster-cidr",
            "--masquerade-all",
            "--once",
            "--cleanup",
            "--config",
        ],
    );
    let out = Command::new(BIN)
        .args(["--min-sync-period", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid duration"));
}

#[test]
fn once_then_cleanup_in_a_namespace() {
    for variant in ["nft", "legacy"] {
        let ns = Netns::new("exbin").unwrap();
        let out = common::run_demo_once(
            &ns,
            BIN,
            &[
                "--cluster-cidr",
                "10.0.0.0/16",
                "--iptables-variant",
                variant,
            ],
        );
        assert!(
            out.status.success(),
            "{variant}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let save = String::from_utf8(
            ns.exec(&format!("iptables-{variant}-save"), &["-t", "nat"])
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(save.contains("-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"demo/echo:http cluster IP\"") || save.contains("demo/echo:http cluster IP"), "{save}");
        assert_eq!(
            save.matches("-j DNAT --to-destination 127.0.0.1").count(),
            3,
            "{save}"
        );
        let out = run_in(&ns, &["--cleanup", "--iptables-variant", variant]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let save = String::from_utf8(
            ns.exec(&format!("iptables-{variant}-save"), &[])
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(
            !save.contains("KUBE-"),
            "{variant} after --cleanup:\n{save}"
        );
    }
}

#[test]
fn bad_manifest_names_the_object_and_field() {
    let ns = Netns::new("exbad").unwrap();
    common::assert_bad_manifest_refused(
        "badmanifest",
        &["--hostname-override", "node-1", "--iptables-variant", "nft"],
        |a| run_in(&ns, a),
    );
    let out = run_in(
        &ns,
        &[
            "--once",
            "--manifests",
            "/nonexistent/x.yaml",
            "--iptables-variant",
            "nft",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: "));
}

const CLEANUP: &[&str] = &[
    "--cleanup",
    "--iptables-variant",
    "nft",
    "--ip-family",
    "ipv4",
];

/// An exit message carries the whole cause chain: a foreign rule that
/// jumps into our chain makes `--cleanup`'s restore fail, and the message
/// says why (the kernel's answer), not only which table.
#[test]
fn a_failed_cleanup_says_why() {
    let ns = Netns::new("exwhy").unwrap();
    let once = common::run_demo_once(
        &ns,
        BIN,
        &["--iptables-variant", "nft", "--ip-family", "ipv4"],
    );
    assert!(once.status.success());
    let sh = |cmd: &str| {
        assert!(
            ns.exec("sh", &["-c", cmd]).unwrap().status.success(),
            "{cmd}"
        )
    };
    sh("iptables-nft -t nat -N FOREIGN && iptables-nft -t nat -A FOREIGN -j KUBE-SERVICES");
    let out = run_in(&ns, CLEANUP);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "error: cleanup failed for iptables (IPv4, nft): iptables-nft: cleaning table nat: "
        ),
        "{err}"
    );
    assert!(
        last.contains("KUBE-SERVICES") && (last.contains("busy") || last.contains("in use")),
        "the kernel's answer is missing: {last}"
    );
    sh("iptables-nft -t nat -F FOREIGN && iptables-nft -t nat -X FOREIGN");
    let out = run_in(&ns, CLEANUP);
    assert!(out.status.success());
}
