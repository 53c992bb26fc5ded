//! The `nftables` binary, run as a user would: `--help`, `--once` against
//! the bundled manifest in a throwaway namespace with the table checked
//! afterwards, `--cleanup` (foreign tables left alone), and a bad manifest.

mod common;

use proxier_testbed::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_nftables");

fn run_in(ns: &Netns, args: &[&str]) -> std::process::Output {
    common::run_in(ns, BIN, args)
}

#[test]
fn help() {
    common::assert_help(
        BIN,
        &[
            "--manifests",
            "--kubeconfig",
            "--hostname-override",
            "--nodeport-addresses",
            "--cluster-cidr",
            "--service-cluster-ip-range",
            "--once",
            "--cleanup",
            "no localhost node ports",
        ],
    );
}

#[test]
fn once_then_cleanup_in_a_namespace() {
    let ns = Netns::new("exnft").unwrap();
    ns.exec("nft", &["add", "table", "inet", "filter"]).unwrap();
    let out = common::run_demo_once(
        &ns,
        BIN,
        &[
            "--cluster-cidr",
            "10.0.0.0/16",
            "--service-cluster-ip-range",
            "10.96.0.0/16",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8(
        ns.exec("nft", &["list", "table", "ip", "kube-proxy"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    for want in [
        "10.96.0.10 . tcp . 80 : goto service-",
        "tcp . 30080 : goto external-",
        "ip daddr 10.96.0.0/16 drop comment \"Drop traffic to unallocated ClusterIPs\"",
        "numgen random mod 3 0 goto endpoint-",
        "numgen random mod 2 0 goto endpoint-",
        "meta l4proto tcp dnat to 127.0.0.11:8080",
    ] {
        assert!(list.contains(want), "missing {want:?}:\n{list}");
    }
    let out = run_in(&ns, &["--cleanup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tables = String::from_utf8(ns.exec("nft", &["list", "tables"]).unwrap().stdout).unwrap();
    assert!(!tables.contains("kube-proxy"), "{tables}");
    assert!(tables.contains("table inet filter"), "{tables}");
}

#[test]
fn bad_manifest_names_the_object_and_field() {
    let ns = Netns::new("exnftbad").unwrap();
    common::assert_bad_manifest_refused("badmanifest", &["--hostname-override", "node-1"], |a| {
        run_in(&ns, a)
    });
}
