//! Conversion and validation from real object JSON: one test per class of
//! bad input, each asserting the object, the field, and that the other
//! services keep working.

use serde_json::{Value, json};

use super::*;
use crate::model::ServicePortName;
use crate::tracker::ChangeTracker;

fn service(v: Value) -> core::Service {
    serde_json::from_value(v).unwrap()
}

fn good(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
    })
}

/// Feeds a good service, then a bad one, and checks the error and that the
/// good one still syncs.
fn assert_rejected(bad: Value, field: &str) {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let ok = service_from_k8s(&service(good("good", "10.96.0.10")))
        .unwrap()
        .unwrap();
    t.update_service(&ok).unwrap();
    let err = service_from_k8s(&service(bad.clone()))
        .and_then(|s| t.update_service(&s.unwrap()).map(|_| ()))
        .expect_err("bad service accepted");
    assert_eq!(err.kind, ObjectKind::Service);
    assert_eq!(err.object, "ns/bad", "{err}");
    assert_eq!(err.field, field, "{err}");
    let (snap, _) = t.apply();
    assert_eq!(snap.services.len(), 1);
    assert!(
        snap.services
            .contains_key(&ServicePortName::new("ns", "good", "http", Protocol::Tcp))
    );
    // The message names object, field and value on one line.
    let msg = err.to_string();
    assert!(
        msg.contains("ns/bad") && msg.contains(field) && !msg.contains('\n'),
        "{msg}"
    );
}

fn with(mut v: Value, path: &[&str], val: Value) -> Value {
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = if let Ok(i) = p.parse::<usize>() {
            &mut cur[i]
        } else {
            &mut cur[*p]
        };
    }
    cur[path[path.len() - 1]] = val;
    v
}

#[test]
fn bad_ip() {
    assert_rejected(
        with(
            good("bad", "10.96.0.11"),
            &["spec", "clusterIPs"],
            json!(["10.96.0.300"]),
        ),
        "spec.clusterIPs[0]",
    );
    assert_rejected(
        with(
            good("bad", "10.96.0.11"),
            &["spec", "externalIPs"],
            json!(["1.2.3"]),
        ),
        "spec.externalIPs[0]",
    );
    for ip in [
        "127.0.0.1",
        "255.255.255.255",
        "169.254.169.254",
        "224.0.0.1",
    ] {
        assert_rejected(
            with(
                good("bad", "10.96.0.11"),
                &["spec", "externalIPs"],
                json!([ip]),
            ),
            "spec.externalIPs[0]",
        );
    }
    assert_rejected(
        with(
            good("bad", "10.96.0.11"),
            &["spec", "loadBalancerSourceRanges"],
            json!(["10.0.0.0/8", "nope"]),
        ),
        "spec.loadBalancerSourceRanges[1]",
    );
}

#[test]
fn bad_ports() {
    assert_rejected(
        with(
            good("bad", "10.96.0.11"),
            &["spec", "ports", "0", "port"],
            json!(0),
        ),
        "spec.ports[0].port",
    );
    assert_rejected(
        with(
            good("bad", "10.96.0.11"),
            &["spec", "ports", "0", "port"],
            json!(70000),
        ),
        "spec.ports[0].port",
    );
    let np = with(
        good("bad", "10.96.0.11"),
        &["spec", "type"],
        json!("NodePort"),
    );
    assert_rejected(
        with(np, &["spec", "ports", "0", "nodePort"], json!(-1)),
        "spec.ports[0].nodePort",
    );
    // A node port on a ClusterIP service.
    assert_rejected(
        with(
            good("bad", "10.96.0.11"),
            &["spec", "ports", "0", "nodePort"],
            json!(30080),
        ),
        "spec.ports[0].nodePort",
    );
}

#[test]
fn unknown_protocol() {
    assert_rejected(
        with(
            good("bad", "10.96.0.11"),
            &["spec", "ports", "0", "protocol"],
            json!("ICMP"),
        ),
        "spec.ports[0].protocol",
    );
}

#[test]
fn duplicate_port_names() {
    let ports = json!([{"name": "http", "port": 80}, {"name": "http", "port": 81}]);
    assert_rejected(
        with(good("bad", "10.96.0.11"), &["spec", "ports"], ports),
        "spec.ports[1].name",
    );
    let ports = json!([{"port": 80}, {"name": "b", "port": 81}]);
    assert_rejected(
        with(good("bad", "10.96.0.11"), &["spec", "ports"], ports),
        "spec.ports[0].name",
    );
    // Few ports are checked by a scan, many by a set: both find repeats.
    for n in [3, 40] {
        let many = |repeat: &str| {
            let mut ports: Vec<Value> = (0..n)
                .map(|i| json!({"name": format!("p{i}"), "port": 1000 + i}))
                .collect();
            ports[n - 1] = match repeat {
                "name" => json!({"name": "p1", "port": 5000}),
                _ => json!({"name": "last", "port": 1001}),
            };
            with(
                good("bad", "10.96.0.11"),
                &["spec", "ports"],
                Value::Array(ports),
            )
        };
        assert_rejected(many("name"), &format!("spec.ports[{}].name", n - 1));
        assert_rejected(many("port"), &format!("spec.ports[{}].port", n - 1));
    }
}

#[test]
fn impossible_names_and_values() {
    let v = with(
        good("bad", "10.96.0.11"),
        &["spec", "ports", "0", "name"],
        json!("http\" -j ACCEPT"),
    );
    assert_rejected(v, "spec.ports[0].name");
    let v = with(
        good("bad", "10.96.0.11"),
        &["metadata", "annotations"],
        json!({"service.kubernetes.io/topology-mode": "Auto\n-A X"}),
    );
    assert_rejected(
        v,
        "metadata.annotations[service.kubernetes.io/topology-mode]",
    );
    // Bad object names are reported under their own name.
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    let s = service_from_k8s(&service(with(
        good("x", "10.96.0.11"),
        &["metadata", "name"],
        json!("--flush"),
    )))
    .unwrap()
    .unwrap();
    let err = t.update_service(&s).unwrap_err();
    assert_eq!(
        (err.object.as_str(), err.field.as_str()),
        ("ns/--flush", "metadata.name")
    );
}

#[test]
fn mismatched_families() {
    let v = with(
        good("bad", "10.96.0.11"),
        &["spec", "ipFamilies"],
        json!(["IPv6"]),
    );
    assert_rejected(v, "spec.clusterIPs[0]");
    let v = with(
        good("bad", "10.96.0.11"),
        &["spec", "clusterIPs"],
        json!(["10.96.0.11", "10.96.0.12"]),
    );
    assert_rejected(v, "spec.clusterIPs");
}

#[test]
fn bad_affinity() {
    let v = with(
        good("bad", "10.96.0.11"),
        &["spec", "sessionAffinity"],
        json!("ClientIP"),
    );
    let v = with(
        v,
        &["spec", "sessionAffinityConfig"],
        json!({"clientIP": {"timeoutSeconds": 100000}}),
    );
    assert_rejected(v, "spec.sessionAffinityConfig.clientIP.timeoutSeconds");
}

#[test]
fn skips_what_kube_proxy_skips() {
    let headless = with(good("h", "None"), &["spec", "clusterIPs"], json!(["None"]));
    assert!(service_from_k8s(&service(headless)).unwrap().is_none());
    let ext = with(
        good("e", "10.96.0.11"),
        &["spec", "type"],
        json!("ExternalName"),
    );
    assert!(service_from_k8s(&service(ext)).unwrap().is_none());
    let other = with(
        good("o", "10.96.0.11"),
        &["metadata", "labels"],
        json!({LABEL_SERVICE_PROXY_NAME: "cilium"}),
    );
    assert!(service_from_k8s(&service(other)).unwrap().is_none());
    let fqdn: discovery::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "ns", "name": "f-1", "labels": {LABEL_SERVICE_NAME: "f"}},
        "addressType": "FQDN", "endpoints": [{"addresses": ["example.com"]}]
    }))
    .unwrap();
    assert!(endpoint_slice_from_k8s(&fqdn).unwrap().is_none());
}

#[test]
fn full_service_conversion() {
    let v = json!({
        "metadata": {"namespace": "ns2", "name": "svc2", "annotations": {"service.kubernetes.io/topology-mode": "Auto"}},
        "spec": {
            "type": "LoadBalancer", "clusterIP": "172.30.0.42", "clusterIPs": ["172.30.0.42", "fd00::42"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ports": [{"name": "p80", "port": 80, "nodePort": 3001, "protocol": "TCP"}],
            "externalIPs": ["192.168.99.22", "2001:db8::22"],
            "loadBalancerSourceRanges": [" 203.0.113.0/25", "2001:db8::/64"],
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 30000,
            "sessionAffinity": "ClientIP",
            "trafficDistribution": "PreferClose"
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"ip": "5.6.7.8", "ipMode": "Proxy"}, {"hostname": "lb.example.com"}]}}
    });
    let s = service_from_k8s(&service(v)).unwrap().unwrap();
    let m = s.to_port_map(IpFamily::V4).unwrap();
    let p = m.values().next().unwrap();
    assert_eq!(p.name.to_string(), "ns2/svc2:p80");
    assert_eq!(p.cluster_ip.to_string(), "172.30.0.42");
    assert_eq!(p.node_port, 3001);
    assert_eq!(
        p.external_ips,
        vec!["192.168.99.22".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        p.load_balancer_ips,
        vec!["1.2.3.4".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        p.load_balancer_source_ranges,
        vec!["203.0.113.0/25".parse().unwrap()]
    );
    assert!(p.external_policy_local);
    assert_eq!(p.health_check_node_port, 30000);
    assert_eq!(p.sticky_seconds(), Some(10800));
    assert_eq!(p.hints_annotation.as_deref(), Some("Auto"));
    assert_eq!(p.traffic_distribution.as_deref(), Some("PreferClose"));
    let m6 = s.to_port_map(IpFamily::V6).unwrap();
    let p6 = m6.values().next().unwrap();
    assert_eq!(p6.cluster_ip.to_string(), "fd00::42");
    assert_eq!(
        p6.load_balancer_source_ranges,
        vec!["2001:db8::/64".parse().unwrap()]
    );
    assert!(p6.load_balancer_ips.is_empty());
}

#[test]
fn endpoint_slice_conversion_and_errors() {
    let v = json!({
        "metadata": {"namespace": "ns", "name": "svc-abc", "labels": {LABEL_SERVICE_NAME: "svc"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "node-1", "zone": "a",
             "hints": {"forZones": [{"name": "a"}], "forNodes": [{"name": "node-1"}]}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true, "terminating": true}}
        ]
    });
    let s: discovery::EndpointSlice = serde_json::from_value(v.clone()).unwrap();
    let s = endpoint_slice_from_k8s(&s).unwrap().unwrap();
    s.validate().unwrap();
    assert_eq!(s.endpoints[0].hint_zones, vec!["a".to_string()]);
    assert_eq!(s.trigger_time, None);
    // The endpoint-slice controller's trigger time; a malformed one is
    // ignored, not an error (it only feeds a latency metric).
    for (value, secs) in [
        ("2026-12-01T15:04:05Z", Some(1_796_137_445u64)),
        ("soon", None),
    ] {
        let annotated = with(
            v.clone(),
            &["metadata", "annotations"],
            json!({ANNOTATION_TRIGGER_TIME: value}),
        );
        let a: discovery::EndpointSlice = serde_json::from_value(annotated).unwrap();
        let a = endpoint_slice_from_k8s(&a).unwrap().unwrap();
        assert_eq!(
            a.trigger_time
                .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()),
            secs,
            "{value}"
        );
    }
    assert_eq!(s.endpoints[1].terminating, Some(true));

    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    t.update_endpoint_slice(&s).unwrap();
    let bad = |v: Value, field: &str| {
        let s: discovery::EndpointSlice = serde_json::from_value(v).unwrap();
        let err = endpoint_slice_from_k8s(&s)
            .and_then(|s| s.unwrap().validate())
            .expect_err("bad slice accepted");
        assert_eq!(err.field, field, "{err}");
        assert_eq!(err.object, "ns/svc-abc");
    };
    bad(
        with(
            v.clone(),
            &["endpoints", "0", "addresses"],
            json!(["fd00::1"]),
        ),
        "endpoints[0].addresses[0]",
    );
    bad(
        with(
            v.clone(),
            &["endpoints", "0", "addresses"],
            json!(["10.0.0.999"]),
        ),
        "endpoints[0].addresses[0]",
    );
    // What the API server's EndpointSlice validation refuses: loopback,
    // link-local (the cloud metadata address among them), multicast, the
    // limited broadcast.
    for (a, why) in [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.251", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("0.0.0.0", "unspecified"),
    ] {
        let s: discovery::EndpointSlice = serde_json::from_value(with(
            v.clone(),
            &["endpoints", "1", "addresses"],
            json!([a]),
        ))
        .unwrap();
        let s = endpoint_slice_from_k8s(&s).unwrap().unwrap();
        let err = t.update_endpoint_slice(&s).expect_err(a);
        assert_eq!(err.field, "endpoints[1].addresses[0]", "{err}");
        assert!(err.to_string().contains(why), "{err}");
        // Loopback only, and only when asked (local testing).
        let mut local = ChangeTracker::new(IpFamily::V4, "node-1").with_loopback_endpoints(true);
        assert_eq!(
            local.update_endpoint_slice(&s).is_ok(),
            why == "loopback",
            "{a}"
        );
    }
    let mut v6 = ChangeTracker::new(IpFamily::V6, "node-1").with_loopback_endpoints(false);
    for a in ["::1", "fe80::1", "ff02::1"] {
        let s: discovery::EndpointSlice = serde_json::from_value(with(
            with(v.clone(), &["addressType"], json!("IPv6")),
            &["endpoints"],
            json!([{"addresses": [a]}]),
        ))
        .unwrap();
        let s = endpoint_slice_from_k8s(&s).unwrap().unwrap();
        let err = v6.update_endpoint_slice(&s).expect_err(a);
        assert_eq!(err.field, "endpoints[0].addresses[0]", "{a}: {err}");
    }
    // The good slice is still in force.
    assert_eq!(t.apply().0.endpoint_count(), 2);
    bad(
        with(v.clone(), &["ports", "0", "port"], json!(0)),
        "ports[0].port",
    );
    bad(
        with(v.clone(), &["ports", "0", "protocol"], json!("XTP")),
        "ports[0].protocol",
    );
    bad(
        with(
            v.clone(),
            &["endpoints", "0", "nodeName"],
            json!("-o /etc/passwd"),
        ),
        "endpoints[0].nodeName",
    );
    bad(
        with(v.clone(), &["endpoints", "0", "zone"], json!("a\"b")),
        "endpoints[0].zone",
    );
    bad(
        with(v.clone(), &["metadata", "labels"], json!({})),
        "metadata.labels[kubernetes.io/service-name]",
    );
    let (snap, _) = t.apply();
    assert_eq!(snap.endpoint_count(), 2);
}

#[test]
fn node_conversion() {
    let n: core::Node = serde_json::from_value(json!({
        "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}
    }))
    .unwrap();
    let n = node_from_k8s(&n);
    assert_eq!(n.zone(), Some("zone-a"));
    assert!(!n.eligible());
}

/// Two services claiming one node port and protocol: the second is refused
/// by name and field and the first keeps it; another protocol, or the
/// port freed by the first, is fine.
#[test]
fn a_node_port_is_held_once() {
    let np = |name: &str, ip: &str, port: u16, proto: &str| {
        let v = with(good(name, ip), &["spec", "type"], json!("NodePort"));
        let v = with(v, &["spec", "ports", "0", "nodePort"], json!(port));
        service_from_k8s(&service(with(
            v,
            &["spec", "ports", "0", "protocol"],
            json!(proto),
        )))
        .unwrap()
        .unwrap()
    };
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    t.update_service(&np("first", "10.96.0.10", 30080, "TCP"))
        .unwrap();
    let err = t
        .update_service(&np("second", "10.96.0.11", 30080, "TCP"))
        .expect_err("a second claim on 30080/TCP");
    assert_eq!(err.object, "ns/second");
    assert_eq!(err.field, "spec.ports[0].nodePort");
    assert!(
        err.to_string().contains("already allocated to ns/first"),
        "{err}"
    );
    let (snap, _) = t.apply();
    let ports: Vec<String> = snap.services.keys().map(|k| k.to_string()).collect();
    assert_eq!(ports, vec!["ns/first:http"], "the holder is not shadowed");
    // The same service again, another protocol: fine.
    t.update_service(&np("first", "10.96.0.10", 30080, "TCP"))
        .unwrap();
    t.update_service(&np("third", "10.96.0.12", 30080, "UDP"))
        .unwrap();
    // Freed by the first, the port can be taken.
    t.delete_service("ns", "first");
    t.update_service(&np("second", "10.96.0.11", 30080, "TCP"))
        .unwrap();
    let (snap, _) = t.apply();
    assert_eq!(snap.services.len(), 2);
}
