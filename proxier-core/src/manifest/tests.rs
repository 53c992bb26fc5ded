use std::time::Duration;

use super::*;
use crate::model::IpFamily;
use crate::proxier::{FakeProxier, SyncRequest};

const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: demo
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.0.0.1]
    nodeName: node-1
  - addresses: [10.0.0.2]
---
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {topology.kubernetes.io/zone: z1}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
"#;

#[test]
fn loads_objects_and_reports_bad_ones_by_name_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        "kind: Service\napiVersion: v1\nmetadata: {name: bad, namespace: demo}\nspec:\n  ports: [{port: eighty}]\n---\n: : :\n",
    )
    .unwrap();
    let (m, errs) = load(dir.path()).unwrap();
    assert_eq!(m.services.len(), 1);
    assert_eq!(m.slices.len(), 1);
    assert_eq!(m.nodes.len(), 1);
    assert_eq!(errs.len(), 2, "{errs:?}");
    let e0 = errs[0].to_string();
    assert!(
        e0.contains("Service demo/bad") && e0.contains("spec.ports[0].port"),
        "{e0}"
    );
    assert!(
        matches!(errs[1], ManifestError::Yaml { doc: 1, .. }),
        "{:?}",
        errs[1]
    );
    assert!(load(&dir.path().join("missing")).is_err());
}

fn wait_for(fake: &FakeProxier, pred: impl Fn(&SyncRequest) -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if fake.log.lock().unwrap().syncs.last().is_some_and(&pred) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_feeds_the_runner_and_follows_changes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.yaml");
    std::fs::write(&file, GOOD).unwrap();
    let fake = FakeProxier::new();
    let (handle, runner) = fake.spawn_runner(IpFamily::V4, "node-1", Duration::from_millis(10));
    let src = tokio::spawn(
        ManifestSource::new(&file, "node-1")
            .with_interval(Duration::from_millis(20))
            .run(handle.clone()),
    );
    let f = fake.clone();
    let ok = tokio::task::spawn_blocking(move || {
        wait_for(&f, |r| {
            r.snapshot.endpoint_count() == 2 && r.snapshot.node.zone.as_deref() == Some("z1")
        })
    });
    assert!(ok.await.unwrap(), "first load never synced");
    // Remove one endpoint and rename the service; the runner follows.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let changed = GOOD
        .replace("  - addresses: [10.0.0.2]\n", "")
        .replace("name: web, namespace: demo", "name: web2, namespace: demo");
    std::fs::write(&file, changed).unwrap();
    let f = fake.clone();
    let ok = tokio::task::spawn_blocking(move || {
        wait_for(&f, |r| {
            r.snapshot.endpoint_count() == 1
                && r.snapshot.services.len() == 1
                && r.snapshot
                    .services
                    .keys()
                    .all(|k| &*k.service.name == "web2")
        })
    });
    assert!(ok.await.unwrap(), "change never synced");
    src.abort();
    runner.abort();
}
