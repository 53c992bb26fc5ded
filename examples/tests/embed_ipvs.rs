//! The README's "embed the IPVS backend" program, compiled and run inside
//! the test VM (a kernel with IPVS), in a throwaway namespace, until its
//! first sync.

use proxier_testbed::vm::delegate_with;
use proxier_testbed::{Netns, NsRuntime};

#[test]
fn embed_ipvs_backend() {
    let manifests = format!("{}/manifests/cluster/echo.yaml", env!("CARGO_MANIFEST_DIR"));
    let m = manifests.clone();
    delegate_with("embed_ipvs_backend", &[&m], move || {
        // A failed sync says why on stderr.
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .try_init();
        let ns = Netns::new("embedipvs").unwrap();
        let rt = NsRuntime::start(&ns).unwrap();
        let synced = rt.block_on(async move {
            tokio::time::timeout(std::time::Duration::from_secs(180), async move {
                // --- the example ---
                use backend_ipvs::{Config, IpvsProxier, Kernel};
                use proxier_core::{ChangeTracker, IpFamily, ManifestSource, Runner, RunnerConfig};
                use proxier_netfilter::LocalDetector;

                let mut cfg = Config::new(IpFamily::V4); // rr, kube-ipvs0, node IPs read from the kernel
                cfg.scheduler = "wrr".into();
                cfg.rules.local_detector =
                    LocalDetector::ClusterCidr(vec!["10.0.0.0/16".parse().unwrap()]);
                let kernel = Kernel::real(IpFamily::V4).await.unwrap(); // netlink, ipset, iptables
                let backend = IpvsProxier::new(cfg, kernel).unwrap();
                let tracker = ChangeTracker::new(IpFamily::V4, "node-1");
                let (runner, handle) =
                    Runner::new(tracker, Box::new(backend), RunnerConfig::default());
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
            })
            .await
            .expect("a first sync within 3 minutes")
        });
        assert!(synced);
        let ipvs = String::from_utf8(ns.exec("ipvsadm", &["-Sn"]).unwrap().stdout).unwrap();
        assert!(ipvs.contains("-A -t 10.96.0.10:80 -s wrr"), "{ipvs}");
        assert_eq!(
            ipvs.matches("-a -t 10.96.0.10:80 -r 10.0.1.1").count(),
            3,
            "{ipvs}"
        );
    });
}
