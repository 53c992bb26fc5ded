//! Times one full transaction of `N` services in a fresh namespace, with
//! parts of the layout left out: where the kernel's time goes.
//! `cargo run --release -p backend-nftables --example scale_probe -- N`.

use std::time::Instant;

use backend_nftables::layout::{Body, full};
use backend_nftables::nl::msg::Op;
use backend_nftables::{Config, NfTables, NfTablesNetlink};
use proxier_core::{
    ChangeTracker, EndpointSlice, IpFamily, PortSpec, Protocol, Service, SliceEndpoint, SlicePort,
};
use proxier_testbed::{Netns, NsRuntime};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for i in 0..n {
        let ip = [
            10,
            96,
            (i >> 8) as u8,
            (i & 255) as u8 + if i & 255 == 255 { 0 } else { 0 },
        ];
        t.update_service(&Service {
            namespace: "b".into(),
            name: format!("s{i}"),
            cluster_ips: vec![std::net::IpAddr::from([
                ip[0],
                ip[1] + (i >> 16) as u8,
                ip[2],
                ip[3],
            ])],
            ports: vec![PortSpec {
                name: "p".into(),
                protocol: Some(Protocol::Tcp),
                port: 80,
                node_port: 0,
            }],
            ..Service::default()
        })
        .unwrap();
        t.update_endpoint_slice(&EndpointSlice {
            namespace: "b".into(),
            name: format!("s{i}-1"),
            service_name: format!("s{i}"),
            address_type: IpFamily::V4,
            ports: vec![SlicePort {
                name: "p".into(),
                port: Some(8080),
                protocol: Some(Protocol::Tcp),
            }],
            endpoints: (0..10)
                .map(|k| SliceEndpoint {
                    addresses: vec![
                        std::net::IpAddr::from([
                            10,
                            128 + (i >> 16) as u8,
                            (i >> 8) as u8,
                            (i & 255) as u8,
                        ])
                        .to_string()
                        .replace(".", ".")
                        .parse()
                        .map(|a: std::net::Ipv4Addr| {
                            let mut o = a.octets();
                            o[1] = o[1].wrapping_add(k as u8 * 8);
                            std::net::IpAddr::from(o)
                        })
                        .unwrap(),
                    ],
                    node_name: Some("node-2".into()),
                    ..Default::default()
                })
                .collect(),
        })
        .unwrap();
    }
    let snap = t.apply().0;
    let t0 = Instant::now();
    let (tx, _, _) = full(&Config::new(IpFamily::V4), &snap);
    let render = t0.elapsed();
    let t0 = Instant::now();
    let bytes = tx.encode(1).bytes.len();
    println!(
        "{n} services: render {render:?}, encode {:?} ({bytes} bytes)",
        t0.elapsed()
    );
    let variants: Vec<(&str, Box<dyn Fn(&Op) -> bool>)> = vec![
        ("all", Box::new(|_| true)),
        (
            "no map elements",
            Box::new(|op| !matches!(op, Op::AddElements { set, .. } if set != "__map%d")),
        ),
        (
            "no numgen maps",
            Box::new(|op| {
                !matches!(op, Op::AddElements { set, .. } | Op::AddSet(backend_nftables::Set { name: set, .. }) if set == "__map%d")
                    && !matches!(op, Op::AddRule(r) if r.exprs.iter().any(|e| matches!(e, backend_nftables::Expr::Numgen { .. })))
            }),
        ),
    ];
    let _ = Body::Numgen(vec![]);
    for (name, keep) in variants {
        let mut t2 = tx.clone();
        t2.ops.retain(|op| keep(op));
        let ns = Netns::new("probe").unwrap();
        let rt = NsRuntime::start(&ns).unwrap();
        let ops = t2.ops.len();
        let d = rt.block_on(async move {
            let nft = NfTablesNetlink::new().unwrap();
            let t0 = Instant::now();
            nft.apply(&t2).await.unwrap();
            t0.elapsed()
        });
        println!("{n} services, {name}: {ops} ops in {d:?}");
    }
}
