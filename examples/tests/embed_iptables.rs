//! The README's "embed the iptables backend" program, compiled and run in
//! a throwaway network namespace until its first sync.

use std::sync::Arc;

use proxier_testbed::{Netns, NsRuntime};

#[test]
fn embed_iptables_backend() {
    let ns = Netns::new("embed").unwrap();
    let rt = NsRuntime::start(&ns).unwrap();
    let manifests = format!("{}/manifests/cluster/echo.yaml", env!("CARGO_MANIFEST_DIR"));
    let synced = rt.block_on(async move {
        // --- the example ---
        use backend_iptables::{Config, IptablesProxier};
        use proxier_core::{ChangeTracker, IpFamily, ManifestSource, Runner, RunnerConfig};
        use proxier_netfilter::{ConntrackNetlink, IptablesCmd, LocalDetector, ProcSys};

        let cfg = Config {
            local_detector: LocalDetector::ClusterCidr(vec!["10.0.0.0/16".parse().unwrap()]),
            ..Config::default()
        };
        let iptables = IptablesCmd::detect(IpFamily::V4).await.unwrap(); // nft or legacy
        let backend = IptablesProxier::new(
            cfg,
            Arc::new(iptables),
            Arc::new(ConntrackNetlink::new().unwrap()),
            Arc::new(ProcSys),
        )
        .unwrap();
        let tracker = ChangeTracker::new(IpFamily::V4, "node-1");
        let (runner, handle) = Runner::new(tracker, Box::new(backend), RunnerConfig::default());
        tokio::spawn(ManifestSource::new(manifests, "node-1").run(handle.clone()));
        let mut ok = false;
        runner
            .run_with(std::future::pending::<()>(), |sync| {
                ok = sync.ok;
                false
            })
            .await;
        // --- end of the example (a real agent runs until a signal) ---
        ok
    });
    assert!(synced);
    let save = String::from_utf8(ns.exec("iptables-save", &["-t", "nat"]).unwrap().stdout).unwrap();
    assert!(save.contains("demo/echo:http cluster IP"), "{save}");
}
