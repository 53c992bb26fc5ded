//! Conntrack cleanup over netlink, in a fresh network namespace: deleting
//! stale UDP flows (against `conntrack -D` of the same flows in the same
//! run) and one reconcile pass over a table of unrelated flows, TCP or UDP
//! (its time, the process's peak RSS growth, and a bare dump and
//! `conntrack -L` of the same table as the floor, printed).
//!
//! `PROXIER_CT_FLOWS=STALE,UNRELATED` (default `5000,50000`); the services
//! in the snapshot are the largest of `PROXIER_BENCH_SIZES` (UDP, 10
//! endpoints each).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use benches::{service, sizes, slice};
use criterion::{Criterion, criterion_group, criterion_main};
use proxier_core::{ChangeTracker, IpFamily, Protocol, Snapshot};
use proxier_netfilter::{Conntrack, ConntrackNetlink, Flow, FlowTuple, StaleFlows, clean_stale};
use proxier_netfilter::{DumpFilter, IPPROTO_TCP as TCP, IPPROTO_UDP as UDP};
use proxier_testbed::{Netns, NsRuntime, rss_kib};

fn counts() -> (usize, usize) {
    let v: Vec<usize> = std::env::var("PROXIER_CT_FLOWS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_default();
    (*v.first().unwrap_or(&5000), *v.get(1).unwrap_or(&50000))
}

/// `n` UDP services × 10 endpoints, as one snapshot.
fn snapshot(n: usize) -> Snapshot {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for i in 0..n {
        let mut s = service(i, false);
        s.ports[0].protocol = Some(Protocol::Udp);
        t.update_service(&s).unwrap();
        let mut sl = slice(i, 10, 0);
        sl.ports[0].protocol = Some(Protocol::Udp);
        t.update_endpoint_slice(&sl).unwrap();
    }
    t.apply().0
}

fn addr(n: u32, first: u8) -> IpAddr {
    IpAddr::from([first, (n >> 16) as u8, (n >> 8) as u8, n as u8])
}

/// `n` flows from distinct clients to `to`, answered by `by(i)`.
fn flows(
    n: usize,
    to: impl Fn(u32) -> (IpAddr, u16),
    by: impl Fn(u32) -> (IpAddr, u16),
) -> Vec<Flow> {
    (0..n as u32)
        .map(|i| {
            let client = addr(i, 172);
            let (dst, dport) = to(i);
            let (rs, rport) = by(i);
            Flow {
                protocol: UDP,
                orig: FlowTuple {
                    src: client,
                    dst,
                    src_port: 10000 + (i % 50000) as u16,
                    dst_port: dport,
                },
                reply: FlowTuple {
                    src: rs,
                    dst: client,
                    src_port: rport,
                    dst_port: 10000 + (i % 50000) as u16,
                },
                zone: 0,
                id: None,
                dnat: false,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (stale_n, unrelated_n) = counts();
    let services = *sizes().iter().max().unwrap_or(&100);
    let snap = snapshot(services);
    let svc0 = snap.services.values().next().unwrap().clone();
    let vip = (svc0.cluster_ip, svc0.port);
    let ns = Netns::new("bench-ct").unwrap();
    let rt = NsRuntime::start(&ns).unwrap();
    let ct = std::sync::Arc::new(rt.block_on(async { ConntrackNetlink::new() }).unwrap());
    // Flows to service 0 answered by an endpoint it no longer has.
    let stale = flows(stale_n, |_| vip, |i| (addr(i, 10), 5353));
    let reconciler = |snap: &Snapshot| StaleFlows::none(IpFamily::V4).reconcile(snap, &[]);

    let mut g = c.benchmark_group(format!("conntrack/{services}-udp-services"));
    g.sample_size(10);
    g.bench_function(format!("delete_{stale_n}_stale/netlink"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (ct, stale, snap) = (ct.clone(), stale.clone(), snap.clone());
                total += rt.block_on(async move {
                    ct.create(&stale, 600).await.unwrap();
                    let t0 = Instant::now();
                    let r = clean_stale(&*ct, &reconciler(&snap)).await.unwrap();
                    let took = t0.elapsed();
                    assert_eq!(r.deleted, stale.len(), "{r:?}");
                    took
                });
            }
            total
        })
    });
    let vip_s = vip.0.to_string();
    g.bench_function(format!("delete_{stale_n}_stale/conntrack -D"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (ct2, stale) = (ct.clone(), stale.clone());
                rt.block_on(async move { ct2.create(&stale, 600).await.unwrap() });
                let t0 = Instant::now();
                let out = ns
                    .exec_unchecked("conntrack", &["-D", "-p", "udp", "--orig-dst", &vip_s])
                    .unwrap();
                total += t0.elapsed();
                let said = String::from_utf8_lossy(&out.stderr);
                assert!(said.contains(&format!("{stale_n} flow entries")), "{said}");
            }
            total
        })
    });

    // A table of unrelated flows (to addresses no service has): TCP, as
    // most of a node's flows are, then UDP that no DNAT rewrote.
    let tcp_table = flows(
        unrelated_n,
        |i| (addr(i, 192), 443),
        |i| (addr(i, 192), 443),
    );
    let tcp_table: Vec<Flow> = tcp_table
        .into_iter()
        .map(|f| Flow { protocol: TCP, ..f })
        .collect();
    let udp_table = flows(unrelated_n, |i| (addr(i, 198), 53), |i| (addr(i, 198), 53));
    let cases: [(&str, &Vec<Flow>, bool); 3] = [
        ("tcp", &tcp_table, false),
        ("udp", &udp_table, false),
        ("udp_dnat_only", &udp_table, true),
    ];
    for (name, table, dnat_only) in cases {
        {
            let (ct, table) = (ct.clone(), table.clone());
            rt.block_on(async move {
                // Empty the table, then fill it with this case's flows.
                let (all, _) = ct
                    .dump(IpFamily::V4, DumpFilter::default(), &|_: &Flow| true)
                    .await
                    .unwrap();
                ct.delete(&all).await.unwrap();
                // TCP flows need a state to be created.
                let made = ct.create(&table, 3600).await;
                made.unwrap();
            });
        }
        let pass = move |snap: &Snapshot| {
            let s = reconciler(snap);
            if dnat_only { s.dnat_only() } else { s }
        };
        // Peak RSS growth of one pass: reset the high-water mark, run, read.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = rss_kib("VmRSS:");
        {
            let (ct, snap) = (ct.clone(), snap.clone());
            let r = rt.block_on(async move { clean_stale(&*ct, &pass(&snap)).await.unwrap() });
            assert_eq!(r.deleted, 0, "{r:?}");
        }
        let peak = rss_kib("VmHWM:");
        // The floor: a bare dump of the whole table, and `conntrack -L`.
        let ct2 = ct.clone();
        let (dump, n) = rt.block_on(async move {
            let t0 = Instant::now();
            let (_, n) = ct2
                .dump(IpFamily::V4, DumpFilter::default(), &|_: &Flow| false)
                .await
                .unwrap();
            (t0.elapsed(), n)
        });
        let t0 = Instant::now();
        let out = ns
            .exec_unchecked("sh", &["-c", "conntrack -L 2>/dev/null | wc -l"])
            .unwrap();
        let tool = t0.elapsed();
        println!(
            "conntrack reconcile ({name}): {unrelated_n} unrelated flows, {services} UDP services: peak RSS growth {} KiB; floor: bare dump of {n} flows {dump:?}, conntrack -L {tool:?} ({} lines)",
            peak.saturating_sub(before),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        g.bench_function(format!("reconcile_{unrelated_n}_unrelated_{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (ct, snap) = (ct.clone(), snap.clone());
                    total += rt.block_on(async move {
                        let t0 = Instant::now();
                        let r = clean_stale(&*ct, &pass(&snap)).await.unwrap();
                        assert_eq!(r.deleted, 0);
                        t0.elapsed()
                    });
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
