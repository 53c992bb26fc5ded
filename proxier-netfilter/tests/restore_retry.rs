//! `iptables-nft-restore` that fails to read the ruleset generation
//! (iptables 1.8.9 on kernel 6.1, now and then) is run again; any other
//! failure is not. A stand-in program on `PATH` (this test binary runs in
//! its own process under nextest) fails as told and counts its runs.

use std::os::unix::fs::PermissionsExt;

use proxier_core::IpFamily;
use proxier_netfilter::{Iptables, IptablesCmd, Variant};

fn stand_in(dir: &std::path::Path, fail_times: u32, message: &str) {
    let script = format!(
        "#!/bin/sh\ncat >/dev/null\nn=$(cat {d}/runs 2>/dev/null || echo 0)\nn=$((n+1))\necho $n > {d}/runs\nif [ $n -le {fail_times} ]; then echo '{message}' >&2; exit 1; fi\nexit 0\n",
        d = dir.display()
    );
    let path = dir.join("iptables-nft-restore");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _ = std::fs::remove_file(dir.join("runs"));
}

fn runs(dir: &std::path::Path) -> u32 {
    std::fs::read_to_string(dir.join("runs"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_lost_generation_read_is_retried_and_nothing_else_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    // SAFETY: nextest runs this test alone in its process, and nothing
    // else has started a thread that reads the environment yet.
    unsafe { std::env::set_var("PATH", path) };
    let ipt = IptablesCmd::new(IpFamily::V4, Variant::Nft);
    let payload = "*nat\nCOMMIT\n";

    stand_in(
        dir.path(),
        1,
        "Could not fetch rule set generation id: Invalid argument",
    );
    ipt.restore("nat", payload, true).await.expect("retried");
    assert_eq!(runs(dir.path()), 2);

    stand_in(
        dir.path(),
        5,
        "Could not fetch rule set generation id: Invalid argument",
    );
    let e = ipt
        .restore("nat", payload, true)
        .await
        .expect_err("gives up");
    assert_eq!(runs(dir.path()), 3, "two retries at most");
    assert!(e.to_string().contains("generation id"), "{e}");

    stand_in(dir.path(), 1, "iptables-restore: line 2 failed");
    ipt.restore("nat", payload, true)
        .await
        .expect_err("not retried");
    assert_eq!(runs(dir.path()), 1);
}
