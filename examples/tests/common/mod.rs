//! What the binaries' tests share: the bundled manifest, running a binary
//! in a namespace, a bad manifest and the error line it must produce.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use proxier_testbed::Netns;

/// The bundled demo manifest.
pub fn manifest() -> String {
    format!("{}/manifests/demo.yaml", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `bin args` inside `ns`.
pub fn run_in(ns: &Netns, bin: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), bin])
        .args(args)
        .output()
        .unwrap()
}

/// Runs `bin --once` on the bundled demo manifest (its loopback endpoints
/// accepted) as node `node-1` inside `ns`, with `extra` flags after.
pub fn run_demo_once(ns: &Netns, bin: &str, extra: &[&str]) -> Output {
    let m = manifest();
    let mut args = vec![
        "--once",
        "--manifests",
        &m,
        "--allow-loopback-endpoints",
        "--hostname-override",
        "node-1",
    ];
    args.extend(extra);
    run_in(ns, bin, &args)
}

/// A manifest with one invalid Service (`demo/broken`, port 0) in a fresh
/// directory named after `tag`; returns (directory, file).
pub fn bad_manifest(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("proxier-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: demo}\nspec:\n  clusterIP: 10.96.0.20\n  clusterIPs: [10.96.0.20]\n  ports: [{name: http, port: 0, protocol: TCP}]\n",
    )
    .unwrap();
    (dir, bad)
}

/// The run failed with a one-line error naming `demo/broken` and its field.
pub fn assert_names_broken_port(out: &Output) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: Service"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("demo/broken") && line.contains("spec.ports[0].port"),
        "{line}"
    );
}

/// `bin --help` succeeds and lists every flag of `flags`; an unknown flag
/// fails.
pub fn assert_help(bin: &str, flags: &[&str]) {
    let out = Command::new(bin).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in flags {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(bin).arg("--no-such-flag").output().unwrap();
    assert!(!out.status.success(), "an unknown flag was accepted");
}

/// Runs `run(["--once", "--manifests", BAD, args...])` on the bad manifest
/// and checks the one-line error naming `demo/broken` and its field.
pub fn assert_bad_manifest_refused(tag: &str, args: &[&str], run: impl FnOnce(&[&str]) -> Output) {
    let (dir, bad) = bad_manifest(tag);
    let mut all = vec!["--once", "--manifests", bad.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(&all);
    assert_names_broken_port(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon, killed however the test ends.
pub struct Daemon(pub std::process::Child);

impl Daemon {
    /// Kills and reaps it.
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET path` on `addr` from inside `ns`: the whole response (status
/// line, headers, body), or an empty string if nothing answered.
pub fn http_get_in(ns: &Netns, addr: &'static str, path: &'static str) -> String {
    ns.enter(move || {
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// Runs `backend` under a runner fed from `manifests` as node `node-1`
/// until its first sync; whether that sync succeeded.
pub async fn first_sync(backend: Box<dyn proxier_core::Proxier>, manifests: String) -> bool {
    use proxier_core::{ChangeTracker, IpFamily, ManifestSource, Runner, RunnerConfig};
    let tracker = ChangeTracker::new(IpFamily::V4, "node-1");
    let (runner, handle) = Runner::new(tracker, backend, RunnerConfig::default());
    tokio::spawn(ManifestSource::new(manifests, "node-1").run(handle.clone()));
    let mut ok = false;
    runner
        .run_with(std::future::pending::<()>(), |sync| {
            ok = sync.ok;
            false
        })
        .await;
    ok
}
