//! The `proxier` binary as a kube-proxy replacement: a kube-proxy command
//! line as DaemonSets write it, IPVS missing on the host, `--cleanup` after
//! every mode in one namespace (IPVS too, in the VM), plain logs unless on
//! a terminal, `--write-config-to` and `--init-only`.

mod common;

use std::process::Command;

use proxier_testbed::Netns;
use proxier_testbed::vm::delegate_with;

const BIN: &str = env!("CARGO_BIN_EXE_proxier");

fn text(ns: &Netns, prog: &str, args: &[&str]) -> String {
    String::from_utf8(ns.exec_unchecked(prog, args).unwrap().stdout).unwrap()
}

fn echo() -> String {
    format!("{}/manifests/cluster/echo.yaml", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_kube_proxy_command_line_runs_with_one_warning_per_ignored_flag() {
    let ns = Netns::new("pxargs").unwrap();
    let m = echo();
    let out = common::run_in(
        &ns,
        BIN,
        &[
            "--once",
            "--manifests",
            &m,
            // As DaemonSets of kube-proxy pass them.
            "--proxy-mode=iptables",
            "--hostname-override=node-1",
            "--masquerade-all=true",
            "--cluster-cidr=10.244.0.0/16",
            "--v=2",
            "--iptables-min-sync-period=0s",
            "--iptables-sync-period=1m0s",
            "--oom-score-adj=-999",
            "--kube-api-qps=20",
            "--conntrack-tcp-timeout-established=2h",
            "--feature-gates=AllAlpha=false",
            "--ip-family=ipv4",
            "--iptables-variant=nft",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for flag in ["--oom-score-adj", "--kube-api-qps"] {
        assert_eq!(
            err.lines()
                .filter(|l| l.contains("accepted and ignored") && l.contains(flag))
                .count(),
            1,
            "{flag}: {err}"
        );
    }
    assert!(
        !err.contains('\u{1b}'),
        "colour codes off a terminal: {err}"
    );
    let nat = text(&ns, "iptables-nft-save", &["-t", "nat"]);
    // --masquerade-all: every cluster-IP packet is marked.
    assert!(
        nat.contains("-A KUBE-SVC-") && nat.contains("-d 10.96.0.10/32 -p tcp -m comment --comment \"demo/echo:http cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"),
        "{nat}"
    );
    // The conntrack setting reached the namespace's sysctl.
    assert_eq!(
        text(
            &ns,
            "sysctl",
            &["-n", "net.netfilter.nf_conntrack_tcp_timeout_established"]
        )
        .trim(),
        "7200"
    );
}

#[test]
fn ipvs_without_ip_vs_names_the_module() {
    assert!(
        !std::path::Path::new("/proc/net/ip_vs").exists(),
        "this test needs a host kernel without ip_vs (the VM tests cover IPVS)"
    );
    let ns = Netns::new("pxnoipvs").unwrap();
    let m = echo();
    for args in [
        &[
            "--proxy-mode=ipvs",
            "--once",
            "--manifests",
            &m,
            "--hostname-override=n1",
        ][..],
        &["--once", "--manifests", &m, "--hostname-override=n1"][..],
    ] {
        let bin = if args[0].starts_with("--proxy-mode") {
            BIN
        } else {
            env!("CARGO_BIN_EXE_ipvs")
        };
        let out = common::run_in(&ns, bin, args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ipvs: ")
                && last.contains("ip_vs kernel module is not loaded")
                && last.contains("modprobe ip_vs")
                && last.contains("lsmod"),
            "{err}"
        );
    }
}

/// Runs every mode `--once` in one namespace over foreign rules, then one
/// `proxier --cleanup`: nothing of any mode is left, the foreign rules are.
fn every_mode_then_one_cleanup(ns: &Netns, with_ipvs: bool) {
    let sh = |cmd: &str| {
        let o = ns.exec_unchecked("sh", &["-c", cmd]).unwrap();
        assert!(o.status.success(), "{cmd}: {o:?}");
    };
    // Foreign objects: an inet filter table, and a chain of each variant.
    sh(
        "nft add table inet filter && nft add chain inet filter input '{ type filter hook input priority 0; }' && nft add rule inet filter input tcp dport 22 accept",
    );
    sh("iptables-nft -t filter -N FOREIGN && iptables-nft -A INPUT -j FOREIGN");
    sh("iptables-legacy -t nat -N FOREIGN-LEGACY");
    sh("ip6tables-nft -t filter -N FOREIGN6");
    let m = echo();
    let mut runs: Vec<Vec<&str>> = vec![
        vec!["--proxy-mode=iptables", "--iptables-variant=nft"],
        vec!["--proxy-mode=iptables", "--iptables-variant=legacy"],
        vec!["--proxy-mode=nftables"],
        vec![
            "--proxy-mode=userspace",
            "--portal",
            "--iptables-variant=nft",
        ],
    ];
    if with_ipvs {
        runs.push(vec!["--proxy-mode=ipvs", "--iptables-variant=nft"]);
    }
    for extra in &runs {
        let mut args = vec!["--once", "--manifests", &m, "--hostname-override=node-1"];
        args.extend(extra);
        let out = common::run_in(ns, BIN, &args);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let saves = [
        "iptables-nft-save",
        "iptables-legacy-save",
        "ip6tables-nft-save",
        "ip6tables-legacy-save",
    ];
    let all_saves = || -> String { saves.iter().map(|s| text(ns, s, &[])).collect() };
    assert!(all_saves().contains("KUBE-"), "nothing was written");
    assert!(text(ns, "nft", &["list", "tables"]).contains("table ip kube-proxy"));

    let out = common::run_in(ns, BIN, &["--cleanup", "--hostname-override=node-1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");

    let left = all_saves();
    assert!(
        !left.lines().any(|l| l.contains("KUBE-")),
        "left behind:\n{left}"
    );
    let tables = text(ns, "nft", &["list", "tables"]);
    assert!(!tables.contains("kube-proxy"), "{tables}");
    // Foreign objects survive.
    assert!(tables.contains("table inet filter"), "{tables}");
    assert!(text(ns, "nft", &["list", "table", "inet", "filter"]).contains("tcp dport 22 accept"));
    assert!(text(ns, "iptables-nft-save", &[]).contains("-A INPUT -j FOREIGN"));
    assert!(text(ns, "iptables-legacy-save", &["-t", "nat"]).contains(":FOREIGN-LEGACY"));
    assert!(text(ns, "ip6tables-nft-save", &[]).contains(":FOREIGN6"));
    if with_ipvs {
        assert_eq!(text(ns, "ipvsadm", &["-Sn"]).trim(), "");
        assert_eq!(text(ns, "ipset", &["list", "-n"]).trim(), "");
        assert!(
            ns.exec("ip", &["-o", "link", "show", "kube-ipvs0"])
                .is_err(),
            "kube-ipvs0 left"
        );
    }
    // A second cleanup finds nothing and succeeds.
    let out = common::run_in(ns, BIN, &["--cleanup", "--hostname-override=node-1"]);
    assert!(out.status.success());
}

#[test]
fn cleanup_removes_every_mode_and_nothing_else() {
    let ns = Netns::new("pxclean").unwrap();
    every_mode_then_one_cleanup(&ns, false);
}

#[test]
fn cleanup_removes_every_mode_and_nothing_else_in_the_vm() {
    let m = echo();
    delegate_with(
        "cleanup_removes_every_mode_and_nothing_else_in_the_vm",
        &[BIN, &m],
        || {
            let ns = Netns::new("pxcleanvm").unwrap();
            every_mode_then_one_cleanup(&ns, true);
        },
    );
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    // `script` gives the binary a terminal. The ignored flag's warning is
    // a log line; --write-config-to then exits at once.
    let args = "--oom-score-adj=1 --write-config-to=/dev/null --hostname-override=n";
    let run = |env: &str| -> String {
        let out = Command::new("script")
            .args(["-qec", &format!("{env} {BIN} {args}"), "/dev/null"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tty = run("env -u NO_COLOR");
    assert!(tty.contains("oom-score-adj"), "{tty}");
    assert!(tty.contains('\u{1b}'), "a terminal gets colour: {tty:?}");
    let no_color = run("env NO_COLOR=1");
    assert!(no_color.contains("oom-score-adj"), "{no_color}");
    assert!(!no_color.contains('\u{1b}'), "{no_color:?}");
    // A pipe: plain.
    let out = Command::new(BIN).args(args.split(' ')).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("oom-score-adj") && !err.contains('\u{1b}'),
        "{err:?}"
    );
}

#[test]
fn write_config_to_and_init_only() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("defaults.yaml");
    let out = Command::new(BIN)
        .args([
            "--write-config-to",
            f.to_str().unwrap(),
            "--hostname-override=n",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let written = std::fs::read_to_string(&f).unwrap();
    assert!(written.contains("kind: KubeProxyConfiguration"));
    // What was written reads back, strictly.
    let ns = Netns::new("pxinit").unwrap();
    let out = common::run_in(
        &ns,
        BIN,
        &[
            "--config",
            f.to_str().unwrap(),
            "--init-only",
            "--hostname-override=n",
            "--conntrack-tcp-timeout-close-wait=10m",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text(
            &ns,
            "sysctl",
            &["-n", "net.netfilter.nf_conntrack_tcp_timeout_close_wait"]
        )
        .trim(),
        "600"
    );
    // --init-only wrote no rule.
    assert!(!text(&ns, "nft", &["list", "ruleset"]).contains("kube-proxy"));
}

#[test]
fn conntrack_settings_wait_for_a_valid_start_and_skip_direct_mode() {
    let ns = Netns::new("pxct").unwrap();
    let established = || {
        text(
            &ns,
            "sysctl",
            &["-n", "net.netfilter.nf_conntrack_tcp_timeout_established"],
        )
        .trim()
        .to_string()
    };
    let before = established();
    assert_ne!(before, "7200");
    let m = echo();
    let base = [
        "--once",
        "--manifests",
        m.as_str(),
        "--hostname-override=node-1",
        "--conntrack-tcp-timeout-established=2h",
        "--proxy-mode=userspace",
    ];
    // A bad value found after the flags parse: nothing touched.
    let mut args = base.to_vec();
    args.push("--relay=zerocopy");
    let out = common::run_in(&ns, BIN, &args);
    assert!(!out.status.success());
    assert_eq!(established(), before);
    // userspace --direct NATs nothing: no conntrack setting.
    let mut args = base.to_vec();
    args.extend([
        "--direct",
        "--nodeport-addresses=127.0.0.1/32",
        "--allow-loopback-endpoints",
    ]);
    let out = common::run_in(&ns, BIN, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(established(), before);
    // A mode that NATs: applied.
    let mut args = base.to_vec();
    args.push("--portal");
    args.push("--iptables-variant=nft");
    let out = common::run_in(&ns, BIN, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(established(), "7200");
}
