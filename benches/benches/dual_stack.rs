//! A dual-stack node against a single-stack one, in the same run: `N`
//! dual-stack services × 10 endpoints per family, first full sync in a
//! fresh namespace, for the nftables backend and the iptables backend
//! (nft variant). `single_v4` syncs the IPv4 family alone; `dual_total`
//! syncs both families one after the other through a `MetaProxier`, as
//! the runner does on a dual-stack node (each family's share is printed
//! as a `DUAL …` line). Between samples the bench waits, untimed, for the
//! kernel to finish tearing down the previous sample's namespace (a
//! dual-stack one holds twice the objects, and its teardown would
//! otherwise run into the next sample). Target: dual total ≤ 2.1 ×
//! single.
//!
//! `PROXIER_BENCH_SIZES=10000 cargo bench -p benches --bench dual_stack`
//! (`PROXIER_BENCH_BACKENDS=nftables,iptables-nft` chooses).
//! Needs root.

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{filled_dual, sizes};
use criterion::{Criterion, criterion_group, criterion_main};
use proxier_core::{ChangeSet, IpFamily, MetaProxier, Proxier, SyncRequest};
use proxier_netfilter::{ConntrackNetlink, IptablesCmd, LocalDetector, Variant};
use proxier_testbed::{Netns, NsRuntime};

const EPS: usize = 10;

/// Builds one family's backend.
type Make = fn(IpFamily) -> Box<dyn Proxier>;

fn cidr(f: IpFamily) -> ipnet::IpNet {
    match f {
        IpFamily::V4 => "10.128.0.0/9",
        IpFamily::V6 => "fd00:128::/64",
    }
    .parse()
    .expect("cidr")
}

fn nftables(f: IpFamily) -> Box<dyn Proxier> {
    let mut c = backend_nftables::Config::new(f);
    c.masquerade.local_detector = LocalDetector::ClusterCidr(vec![cidr(f)]);
    Box::new(
        backend_nftables::NftablesProxier::new(
            c,
            Arc::new(backend_nftables::NfTablesNetlink::new().expect("nft")),
            Arc::new(ConntrackNetlink::new().expect("ct")),
        )
        .expect("config"),
    )
}

fn iptables(f: IpFamily) -> Box<dyn Proxier> {
    let c = backend_iptables::Config {
        family: f,
        local_detector: LocalDetector::ClusterCidr(vec![cidr(f)]),
        ..backend_iptables::Config::default()
    };
    Box::new(
        backend_iptables::IptablesProxier::new(
            c,
            Arc::new(IptablesCmd::new(f, Variant::Nft)),
            Arc::new(ConntrackNetlink::new().expect("ct")),
            Arc::new(proxier_netfilter::ProcSys),
        )
        .expect("config")
        .with_part_size(usize::MAX),
    )
}

/// The untimed wait after each sample (`PROXIER_BENCH_SETTLE_SECS`,
/// default 2).
fn settle() -> Duration {
    Duration::from_secs(
        std::env::var("PROXIER_BENCH_SETTLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
    )
}

fn full(snapshot: proxier_core::Snapshot) -> SyncRequest {
    SyncRequest {
        snapshot,
        changes: ChangeSet::default(),
        full: true,
        verify: false,
    }
}

/// Syncs `reqs` in order through a proxier built by `make` in a fresh
/// namespace; the time of each. The namespace's objects are deleted
/// (untimed) before it goes, and the kernel given time to free them.
fn run(make: Make, reqs: &[SyncRequest]) -> Vec<Duration> {
    let ns = Netns::new("bench-dual").expect("netns");
    let rt = NsRuntime::start(&ns).expect("runtime");
    let reqs = reqs.to_vec();
    let out = rt.block_on(async move {
        let families: Vec<(IpFamily, Box<dyn Proxier>)> = reqs
            .iter()
            .map(|r| (r.snapshot.family, make(r.snapshot.family)))
            .collect();
        let mut p = MetaProxier::new(families);
        let mut out = Vec::new();
        for r in &reqs {
            let t0 = Instant::now();
            p.sync(r).await.expect("sync");
            out.push(t0.elapsed());
        }
        p.cleanup().await.expect("cleanup");
        out
    });
    drop(rt);
    drop(ns);
    std::thread::sleep(settle());
    out
}

fn bench(c: &mut Criterion) {
    proxier_testbed::netns::remove_stale();
    for n in sizes() {
        let [t4, t6] = filled_dual(n, EPS);
        let (r4, r6) = (full(t4.snapshot().clone()), full(t6.snapshot().clone()));
        let backends: [(&str, Make); 2] = [("nftables", nftables), ("iptables-nft", iptables)];
        // `PROXIER_BENCH_BACKENDS=nftables` keeps to some.
        let only = std::env::var("PROXIER_BENCH_BACKENDS").ok();
        for (name, make) in backends.into_iter().filter(|(name, _)| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|x| x == *name))
        }) {
            let mut g = c.benchmark_group(format!("dual_stack/{name}/{n}x{EPS}"));
            g.sample_size(10).warm_up_time(Duration::from_millis(1));
            g.bench_function("single_v4", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| run(make, std::slice::from_ref(&r4))[0])
                        .sum()
                })
            });
            let mut shares = Vec::new();
            g.bench_function("dual_total", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let d = run(make, &[r4.clone(), r6.clone()]);
                            shares.push((d[0], d[1]));
                            d[0] + d[1]
                        })
                        .sum()
                })
            });
            shares.sort_by_key(|(a, b)| *a + *b);
            if let Some((a, b)) = shares.get(shares.len() / 2) {
                eprintln!("DUAL {name} {n}x{EPS}: median dual run IPv4 {a:?} + IPv6 {b:?}");
            }
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
