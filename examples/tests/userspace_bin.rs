//! The `userspace` binary and the demo, run as a user would.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use proxier_testbed::Netns;

const BIN: &str = env!("CARGO_BIN_EXE_userspace");
const DEMO: &str = env!("CARGO_BIN_EXE_demo");

fn run_in(ns: &Netns, args: &[&str]) -> std::process::Output {
    common::run_in(ns, BIN, args)
}

#[test]
fn help_and_bad_flags() {
    common::assert_help(
        BIN,
        &[
            "--manifests",
            "--portal",
            "--direct",
            "--udp-timeout",
            "--relay",
            "--once",
            "--cleanup",
            "--config",
        ],
    );
    for bad in [
        &["--no-such-flag"][..],
        &["--relay", "zerocopy"],
        &["--portal", "--direct"],
        &["--udp-timeout", "soon"],
    ] {
        let out = Command::new(BIN).args(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} was accepted");
    }
}

#[test]
fn portal_once_then_cleanup_in_a_namespace() {
    let ns = Netns::new("usbin").unwrap();
    let out = common::run_demo_once(&ns, BIN, &["--iptables-variant", "nft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let save = String::from_utf8(ns.exec("iptables-nft-save", &[]).unwrap().stdout).unwrap();
    // One line holding every part (iptables-save quotes the comment).
    for want in [
        &[
            "-A KUBE-PORTALS-CONTAINER -d 10.96.0.10/32 -p tcp",
            "demo/echo:http",
            "--dport 80 -j REDIRECT --to-ports",
        ][..],
        &[
            "-A KUBE-PORTALS-HOST -d 10.96.0.10/32 -p tcp",
            "--dport 80 -j REDIRECT --to-ports",
        ],
        &[
            "-A KUBE-NODEPORT-CONTAINER -p tcp",
            "--dport 30080 -j REDIRECT --to-ports",
        ],
        &["-A PREROUTING", "-j KUBE-PORTALS-CONTAINER"],
        &["-A INPUT", "-j KUBE-NODEPORT-NON-LOCAL"],
    ] {
        assert!(
            save.lines().any(|l| want.iter().all(|w| l.contains(w))),
            "no line with {want:?} in\n{save}"
        );
    }
    let out = run_in(&ns, &["--cleanup", "--iptables-variant", "nft"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let save = String::from_utf8(ns.exec("iptables-nft-save", &[]).unwrap().stdout).unwrap();
    assert!(!save.contains("KUBE-"), "after --cleanup:\n{save}");
}

#[test]
fn bad_manifest_names_the_object_and_field() {
    common::assert_bad_manifest_refused(
        "us-bad",
        &["--direct", "--nodeport-addresses", "127.0.0.1/32"],
        |a| Command::new(BIN).args(a).output().unwrap(),
    );
}

fn http_get(addr: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// The README's first command: started, curled, stopped.
#[test]
fn demo_starts_answers_and_stops() {
    let mut child = Command::new(DEMO)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("demo ended early: {seen:?} {err}");
        }
        seen.push(l.trim_end().to_string());
        if l.starts_with("try:") {
            break;
        }
    }
    let spread = seen
        .iter()
        .find(|l| l.contains("requests through 127.0.0.1:30080"))
        .unwrap();
    for ep in [
        "127.0.0.11:8080 ×3",
        "127.0.0.12:8080 ×3",
        "127.0.0.13:8080 ×3",
    ] {
        assert!(spread.contains(ep), "{spread}");
    }
    let mut who = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = http_get("127.0.0.1:30080");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        who.insert(
            r.split("hello from endpoint ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(who.len(), 3, "{who:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    // Stopped: nothing listens any more.
    assert!(TcpStream::connect("127.0.0.1:30080").is_err());
}
