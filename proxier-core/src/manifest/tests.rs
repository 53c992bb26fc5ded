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

const THREE: &str = r#"apiVersion: v1
kind: Service
metadata: {name: svc-a, namespace: md}
spec:
  clusterIP: 10.96.0.1
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: svc-b, namespace: md}
spec:
  clusterIP: 10.96.0.2
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: svc-c, namespace: md}
spec:
  clusterIP: 10.96.0.3
  ports: [{port: 80}]
"#;

fn names(m: &Manifests) -> Vec<String> {
    m.services.keys().map(|(_, n)| n.clone()).collect()
}

fn cluster_ip(m: &Manifests, name: &str) -> Option<String> {
    m.services
        .get(&("md".into(), name.into()))
        .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
}

/// Loads `good`, then `bad` over it; returns the second read.
fn reread(good: &str, bad: &str) -> (Manifests, Vec<ManifestError>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.yaml");
    std::fs::write(&file, good).unwrap();
    let (last, errs) = load(dir.path()).unwrap();
    assert!(errs.is_empty(), "{errs:?}");
    std::fs::write(&file, bad).unwrap();
    load_keeping(dir.path(), &last).unwrap()
}

#[test]
fn a_syntax_error_loses_no_neighbour_and_keeps_its_last_good_version() {
    // The middle document broken (the issue's case), with svc-c changed
    // in the same write: svc-b stays as it was, svc-c is read anew.
    let bad = THREE
        .replace(
            "metadata: {name: svc-b, namespace: md}\nspec:",
            "metadata: {name: svc-b, namespace: md\nspec: [",
        )
        .replace("10.96.0.3", "10.96.0.33");
    let (m, errs) = reread(THREE, &bad);
    assert_eq!(names(&m), ["svc-a", "svc-b", "svc-c"]);
    assert_eq!(cluster_ip(&m, "svc-b").as_deref(), Some("10.96.0.2"));
    assert_eq!(cluster_ip(&m, "svc-c").as_deref(), Some("10.96.0.33"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    let text = errs[0].to_string();
    assert!(
        text.contains("m.yaml: document 1 (line ") && text.contains("Service md/svc-b"),
        "{text}"
    );
    // The first document broken: the other two still read.
    let bad = THREE.replacen("spec:\n", "spec: [\n", 1);
    let (m, errs) = reread(THREE, &bad);
    assert_eq!(names(&m), ["svc-a", "svc-b", "svc-c"]);
    assert_eq!(errs.len(), 1);
    assert!(
        matches!(errs[0], ManifestError::Yaml { doc: 0, .. }),
        "{:?}",
        errs[0]
    );
    // Lines are the file's: the broken flow sequence of document 1 opens
    // on line 11 and is reported there, not on the document's line 4.
    let bad = THREE.replace(
        "metadata: {name: svc-b, namespace: md}\nspec:",
        "metadata: {name: svc-b, namespace: md}\nspec: [",
    );
    let (_, errs) = reread(THREE, &bad);
    let text = errs[0].to_string();
    assert!(text.contains("line 11"), "{text}");
}

#[test]
fn a_type_error_or_a_kind_typo_keeps_the_last_good_version() {
    let bad = THREE.replacen("ports: [{port: 80}]", "ports: [{port: \"eighty\"}]", 2);
    let (m, errs) = reread(THREE, &bad);
    assert_eq!(names(&m), ["svc-a", "svc-b", "svc-c"]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[1]
            .to_string()
            .contains("Service md/svc-b: spec.ports[0].port"),
        "{}",
        errs[1]
    );
    let bad = THREE.replacen(
        "kind: Service\nmetadata: {name: svc-b",
        "kind: Servce\nmetadata: {name: svc-b",
        1,
    );
    let (m, errs) = reread(THREE, &bad);
    assert_eq!(names(&m), ["svc-a", "svc-b", "svc-c"]);
    assert!(
        errs.len() == 1
            && errs[0]
                .to_string()
                .contains("unknown kind \"Servce\" (did you mean Service?)"),
        "{errs:?}"
    );
    // A document with nothing readable keeps what that position held.
    let bad = THREE.replacen(
        "apiVersion: v1\nkind: Service\nmetadata: {name: svc-c, namespace: md}",
        ": : :",
        1,
    );
    let (m, errs) = reread(THREE, &bad);
    assert_eq!(names(&m), ["svc-a", "svc-b", "svc-c"], "{errs:?}");
}

#[test]
fn a_removed_document_is_removed_and_kinds_of_others_are_not_ours() {
    let fewer = THREE
        .split("---\n")
        .take(2)
        .collect::<Vec<_>>()
        .join("---\n");
    let (m, errs) = reread(THREE, &fewer);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(names(&m), ["svc-a", "svc-b"]);
    // A custom resource, an apps/v1 object and a ConfigMap are not errors;
    // an unknown core kind is.
    let others = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: v1\nkind: Bogus\nmetadata: {name: b}\n";
    let (_, errs) = reread(THREE, &format!("{THREE}---\n{others}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].to_string().contains("unknown kind \"Bogus\" in v1"),
        "{}",
        errs[0]
    );
}

#[test]
fn names_in_errors_cannot_forge_lines() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("m.yaml"),
        "kind: Service\napiVersion: v1\nmetadata: {name: \"a\\nCOMMIT\\n*filter\", namespace: bad}\nspec:\n  ports: [{port: eighty}]\n",
    )
    .unwrap();
    let (_, errs) = load(dir.path()).unwrap();
    let text = errs[0].to_string();
    assert!(
        !text.contains('\n') && text.contains("bad/a\\nCOMMIT\\n*filter"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_directory_keeps_a_broken_documents_service() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.yaml");
    std::fs::write(&file, THREE).unwrap();
    let fake = FakeProxier::new();
    let (handle, runner) = fake.spawn_runner(IpFamily::V4, "node-1", Duration::from_millis(10));
    let src = tokio::spawn(
        ManifestSource::new(dir.path(), "node-1")
            .with_interval(Duration::from_millis(20))
            .run(handle.clone()),
    );
    let f = fake.clone();
    let ok = tokio::task::spawn_blocking(move || wait_for(&f, |r| r.snapshot.services.len() == 3));
    assert!(ok.await.unwrap(), "first load never synced");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Break svc-b and move svc-c in one write: the sync that follows has
    // svc-c's new address and still has svc-b.
    let bad = THREE
        .replace(
            "metadata: {name: svc-b, namespace: md}\nspec:",
            "metadata: {name: svc-b, namespace: md\nspec: [",
        )
        .replace("10.96.0.3", "10.96.0.33");
    std::fs::write(&file, bad).unwrap();
    let f = fake.clone();
    let ok = tokio::task::spawn_blocking(move || {
        wait_for(&f, |r| {
            r.snapshot
                .services
                .values()
                .any(|s| s.cluster_ip.to_string() == "10.96.0.33")
        })
    });
    assert!(ok.await.unwrap(), "the change to svc-c never synced");
    let last = fake.log.lock().unwrap().syncs.last().cloned().unwrap();
    let mut names: Vec<String> = last
        .snapshot
        .services
        .keys()
        .map(|k| k.service.name.to_string())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names, ["svc-a", "svc-b", "svc-c"]);
    src.abort();
    runner.abort();
}
