//! The README's "a backend exactly as the binaries build it" program,
//! run in a throwaway network namespace until its first sync.

mod common;

use proxier_testbed::{Netns, NsRuntime};

#[test]
fn embed_through_the_factory() {
    let ns = Netns::new("embedfac").unwrap();
    let rt = NsRuntime::start(&ns).unwrap();
    let manifests = format!("{}/manifests/cluster/echo.yaml", env!("CARGO_MANIFEST_DIR"));
    let synced = rt.block_on(async move {
        // --- the example ---
        use examples::modes::Factory;
        use proxier_core::IpFamily;

        let (factory, settings) = Factory::from_flags(&[
            "--proxy-mode",
            "nftables",
            "--cluster-cidr",
            "10.244.0.0/16",
            "--hostname-override",
            "node-1",
        ])
        .unwrap();
        let backend = factory
            .build(&settings.for_family(IpFamily::V4))
            .await
            .unwrap(); // reads the node's addresses
        // --- end of the example; the rest drives one sync ---
        common::first_sync(backend, manifests).await
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
    // The local detector came from --cluster-cidr, as in the binary.
    assert!(list.contains("10.244.0.0/16"), "{list}");
}
