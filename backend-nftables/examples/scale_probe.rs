//! Where the time of a transaction goes at scale: one full transaction of
//! `N` services × 10 endpoints into a fresh namespace (render, encode,
//! apply, and apply with parts of the layout left out), then one small
//! transaction on the loaded table, 20 times (what a one-endpoint change
//! costs: the kernel validates the whole table on every transaction).
//! Run as root: `cargo run --release -p backend-nftables --example
//! scale_probe -- N` (`PROBE_VARIANTS=1` also applies the transaction
//! without parts of the layout); add `perf record -g` to see the kernel's
//! share.

use std::net::IpAddr;
use std::time::Instant;

use backend_nftables::{Config, Expr, NfTables, NfTablesNetlink, Transaction};
use backend_nftables::{Encoder, Family, Op, render_full as full, render_full_into};
use proxier_core::{
    ChangeTracker, EndpointSlice, IpFamily, PortSpec, Protocol, Service, SliceEndpoint, SlicePort,
};
use proxier_testbed::{Netns, NsRuntime, rss_kib};

fn addr(a: u8, i: usize) -> IpAddr {
    IpAddr::from([a, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

fn apply(tx: Transaction) -> std::time::Duration {
    let ns = Netns::new("probe").expect("netns");
    let rt = NsRuntime::start(&ns).expect("runtime");
    rt.block_on(async move {
        let nft = NfTablesNetlink::new().expect("socket");
        let t0 = Instant::now();
        nft.apply(&tx).await.expect("apply");
        t0.elapsed()
    })
}

fn without(tx: &Transaction, drop: impl Fn(&Op) -> bool) -> Transaction {
    let mut t = tx.clone();
    t.ops.retain(|op| !drop(op));
    t
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for i in 0..n {
        t.update_service(&Service {
            namespace: "b".into(),
            name: format!("s{i}"),
            cluster_ips: vec![addr(10, i + 1)],
            ports: vec![PortSpec {
                name: "p".into(),
                protocol: Some(Protocol::Tcp),
                port: 80,
                node_port: 0,
            }],
            ..Service::default()
        })
        .expect("service");
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
                    addresses: vec![addr(100 + k as u8, i)],
                    node_name: Some("node-2".into()),
                    ..Default::default()
                })
                .collect(),
            trigger_time: None,
        })
        .expect("slice");
    }
    let snap = t.apply().0;
    // The streamed path a full sync takes: rendered and encoded at once,
    // keeping only each service's digests (here: nothing).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss_kib("VmRSS:");
    let t0 = Instant::now();
    let mut enc = Encoder::new(Family::Ip, "kube-proxy", 1, n * 45);
    render_full_into(&Config::new(IpFamily::V4), &snap, &mut enc, |_, _| {});
    let mut batch = enc.finish();
    println!(
        "{n} services: streamed render+encode {:?} ({} bytes, {} operations), peak RSS growth {} KiB",
        t0.elapsed(),
        batch.len(),
        batch.ops,
        rss_kib("VmHWM:").saturating_sub(before)
    );
    // The streamed batch into a fresh namespace: the kernel's share of a
    // first full sync.
    let chunks = batch.chunks.len();
    let ns = Netns::new("probe").expect("netns");
    let d = NsRuntime::start(&ns)
        .expect("runtime")
        .block_on(async move {
            let nft = NfTablesNetlink::new().expect("socket");
            let t0 = Instant::now();
            nft.apply_batch(&mut batch).await.expect("apply");
            t0.elapsed()
        });
    println!("  apply the streamed batch ({chunks} chunks): {d:?}");
    drop(ns);
    let t0 = Instant::now();
    let (tx, _, _) = full(&Config::new(IpFamily::V4), &snap);
    let render = t0.elapsed();
    let t0 = Instant::now();
    let bytes = tx.encode(1).len();
    println!(
        "{n} services: render {render:?}, encode {:?} ({bytes} bytes, {} operations)",
        t0.elapsed(),
        tx.ops.len()
    );
    // PROBE_VARIANTS=1: the whole transaction again, and without parts
    // of the layout (what each part costs the kernel).
    if std::env::var_os("PROBE_VARIANTS").is_some() {
        println!("  apply all: {:?}", apply(tx.clone()));
        let map_elements = without(&tx, |op| matches!(op, Op::AddElements { .. }));
        println!("  apply without map elements: {:?}", apply(map_elements));
        let numgen = without(
            &tx,
            |op| matches!(op, Op::AddRule(r) if r.exprs.iter().any(|e| matches!(e, Expr::Numgen { .. }))),
        );
        println!("  apply without numgen rules: {:?}", apply(numgen));
    }

    // A small transaction on the loaded table.
    let svc = tx
        .ops
        .iter()
        .find_map(|op| match op {
            Op::AddChain(c) if c.name.starts_with("service-") => Some(c.name.clone()),
            _ => None,
        })
        .expect("a service chain");
    let mut small = Transaction::new(tx.family, tx.table.clone());
    small.push(Op::FlushChain(svc.clone()));
    small.ops.extend(
        tx.ops
            .iter()
            .filter(|op| matches!(op, Op::AddRule(r) if r.chain == svc))
            .cloned(),
    );
    let ops = small.ops.len();
    let ns = Netns::new("probe").expect("netns");
    let rt = NsRuntime::start(&ns).expect("runtime");
    // PROBE_REPEAT=200 makes the small transactions dominate a profile.
    let repeat: u32 = std::env::var("PROBE_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let d = rt.block_on(async move {
        let nft = NfTablesNetlink::new().expect("socket");
        nft.apply(&tx).await.expect("apply");
        let t0 = Instant::now();
        for _ in 0..repeat {
            nft.apply(&small).await.expect("apply");
        }
        t0.elapsed() / repeat
    });
    println!("  a {ops}-operation transaction on the loaded table: {d:?}");
}
