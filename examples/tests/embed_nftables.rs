//! The README's "embed the nftables backend" program, compiled and run in
//! a throwaway network namespace until its first sync.

use std::sync::Arc;

use proxier_testbed::{Netns, NsRuntime};

#[test]
fn embed_nftables_backend() {
    let ns = Netns::new("embednft").unwrap();
    let rt = NsRuntime::start(&ns).unwrap();
    let manifests = format!("{}/manifests/cluster/echo.yaml", env!("CARGO_MANIFEST_DIR"));
    let synced = rt.block_on(async move {
        // --- the example ---
        use backend_nftables::{Config, NfTablesNetlink, NftablesProxier};
        use proxier_core::{ChangeTracker, IpFamily, ManifestSource, Runner, RunnerConfig};
        use proxier_netfilter::{ConntrackNetlink, LocalDetector};

        let mut cfg = Config::new(IpFamily::V4); // table `ip kube-proxy`, mark 0x4000
        cfg.masquerade.local_detector =
            LocalDetector::ClusterCidr(vec!["10.0.0.0/16".parse().unwrap()]);
        cfg.service_cidrs = vec!["10.96.0.0/16".parse().unwrap()]; // cluster-ips-check
        let nft = NfTablesNetlink::new().unwrap(); // nf_tables over netlink, no `nft`
        let conntrack = ConntrackNetlink::new().unwrap();
        let backend = NftablesProxier::new(cfg, Arc::new(nft), Arc::new(conntrack)).unwrap();
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
    let list = String::from_utf8(
        ns.exec("nft", &["list", "table", "ip", "kube-proxy"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        list.contains("10.96.0.10 . tcp . 80 : goto service-"),
        "{list}"
    );
}
