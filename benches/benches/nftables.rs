//! The nftables backend at cluster sizes, each first sync in a fresh
//! network namespace: rendering in memory; first full sync; no-op sync;
//! one endpoint changed; one service added; and, in the same run, the
//! baseline: `nft -f` loading the same ruleset (what `nft list table`
//! prints after our sync) into a fresh namespace, as kube-proxy's
//! knftables does. Object counts and the process's peak RSS growth over
//! a full sync, and the RSS before and after 1,000 partial syncs, are
//! printed as `NFT …` lines, and so are the first full
//! sync and the baseline above 20,000 services, timed once (criterion's
//! ten samples of each would take most of an hour at 50,000).
//!
//! `PROXIER_BENCH_SIZES=1000,10000 cargo bench -p benches --bench nftables`
//! (`PROXIER_BENCH_BASELINE=0`: without the `nft -f` baseline).
//! Needs root.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_nftables::{
    Config, Encoder, Family, NfTablesNetlink, NftablesProxier, TABLE, render_full_into,
};
use benches::{endpoint_moved, filled, service_added, sizes};
use criterion::{Criterion, criterion_group, criterion_main};
use proxier_core::{ChangeSet, IpFamily, Proxier, SyncRequest, SyncStats};
use proxier_netfilter::{ConntrackNetlink, LocalDetector};
use proxier_testbed::{Netns, NsRuntime, rss_kib};

const EPS: usize = 10;
/// Sizes above this are timed once for the first full sync and its
/// baseline.
const ONE_SHOT: usize = 20_000;

fn config() -> Config {
    let mut c = Config::new(IpFamily::V4);
    c.masquerade.local_detector =
        LocalDetector::ClusterCidr(vec!["10.128.0.0/9".parse().expect("cidr")]);
    c
}

/// A proxier in its own fresh namespace.
struct Kernel {
    rt: NsRuntime,
    ns: Netns,
    proxier: Option<NftablesProxier>,
}

impl Kernel {
    fn new() -> Kernel {
        let ns = Netns::new("bench-nft").expect("netns");
        let rt = NsRuntime::start(&ns).expect("runtime");
        let p = rt.block_on(async {
            NftablesProxier::new(
                config(),
                Arc::new(NfTablesNetlink::new().expect("nft")),
                Arc::new(ConntrackNetlink::new().expect("ct")),
            )
            .expect("config")
        });
        Kernel {
            rt,
            ns,
            proxier: Some(p),
        }
    }

    fn sync(&mut self, req: SyncRequest) -> (SyncStats, Duration) {
        let mut p = self.proxier.take().expect("proxier");
        let (p, r, d) = self.rt.block_on(async move {
            let t0 = Instant::now();
            let r = p.sync(&req).await;
            let d = t0.elapsed();
            (p, r, d)
        });
        self.proxier = Some(p);
        (r.expect("sync"), d)
    }

    fn ops(&self) -> usize {
        self.proxier.as_ref().expect("proxier").last_operations()
    }

    /// `nft -f -` of `text` in this namespace, timed.
    fn nft_f(&self, text: String) -> Duration {
        self.ns
            .enter(move || {
                let t0 = Instant::now();
                let mut child = Command::new("nft")
                    .args(["-f", "-"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .expect("nft");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(text.as_bytes())
                    .expect("write");
                assert!(child.wait().expect("wait").success(), "nft -f failed");
                t0.elapsed()
            })
            .expect("enter")
    }
}

fn bench(c: &mut Criterion) {
    proxier_testbed::remove_stale();
    for n in sizes() {
        let mut t = filled(n, EPS);
        let snap = t.snapshot().clone();
        let full_req = SyncRequest {
            snapshot: snap.clone(),
            changes: ChangeSet::default(),
            full: true,
            verify: false,
        };
        let mut g = c.benchmark_group(format!("nftables/{n}x{EPS}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(1));
        // What a full sync does before the kernel: render and encode at
        // once, into one batch.
        g.bench_function("render_encode", |b| {
            b.iter_with_large_drop(|| {
                let mut enc = Encoder::new(Family::Ip, TABLE, 1, n * 45);
                render_full_into(&config(), &snap, &mut enc, |_, _| {});
                enc.finish()
            })
        });
        // Above ONE_SHOT services a first sync and its baseline are timed
        // once each (criterion's ten samples would take most of an hour
        // at 50,000); the partial syncs are sampled as at every size.
        let one_shot = n > ONE_SHOT;
        if one_shot {
            let mut k = Kernel::new();
            let d = k.sync(full_req.clone()).1;
            eprintln!(
                "NFT {n}x{EPS}: first full sync (one run) {d:?}, steps {:?}",
                k.proxier.as_ref().expect("proxier").last_steps()
            );
        } else {
            g.bench_function("full_sync", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| Kernel::new().sync(full_req.clone()).1)
                        .sum()
                })
            });
        }

        // One loaded namespace for the incremental cases; its listing is
        // the baseline's input.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = rss_kib("VmRSS:");
        let mut k = Kernel::new();
        let (stats, loaded) = k.sync(full_req.clone());
        let peak = rss_kib("VmHWM:");
        eprintln!(
            "NFT {n}x{EPS}: the loaded namespace's full sync {loaded:?}, steps {:?}",
            k.proxier.as_ref().expect("proxier").last_steps()
        );
        // PROXIER_BENCH_BASELINE=0 leaves the baseline out (at 50,000 the
        // `nft list table` that makes its input runs for 16 minutes).
        let baseline = std::env::var("PROXIER_BENCH_BASELINE").as_deref() != Ok("0");
        let listing = if baseline {
            String::from_utf8(
                k.ns.exec("nft", &["list", "table", "ip", "kube-proxy"])
                    .expect("nft list")
                    .stdout,
            )
            .expect("utf8")
        } else {
            String::new()
        };
        eprintln!(
            "NFT {n}x{EPS}: {} objects (rules and elements), {} operations in the first transaction, {} lines listed; peak RSS growth over the full sync {} KiB",
            stats.objects,
            k.ops(),
            listing.lines().count(),
            peak.saturating_sub(before)
        );
        if baseline && one_shot {
            let d = Kernel::new().nft_f(listing.clone());
            eprintln!("NFT {n}x{EPS}: baseline nft -f (one run) {d:?}");
        } else if baseline {
            g.bench_function("baseline_nft_f", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| Kernel::new().nft_f(listing.clone()))
                        .sum()
                })
            });
        }
        let noop = SyncRequest {
            snapshot: snap.clone(),
            changes: ChangeSet::default(),
            full: false,
            verify: false,
        };
        g.bench_function("noop_sync", |b| {
            b.iter_custom(|iters| (0..iters).map(|_| k.sync(noop.clone()).1).sum())
        });
        assert_eq!(k.ops(), 0, "a no-op sync sends nothing");
        let mut generation = 0u32;
        g.bench_function("one_endpoint", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        generation ^= 1;
                        k.sync(endpoint_moved(&mut t, 0, EPS, generation)).1
                    })
                    .sum()
            })
        });
        eprintln!("NFT {n}x{EPS}: one endpoint: {} operations", k.ops());
        let mut next = n;
        g.bench_function("service_added", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        next += 1;
                        k.sync(service_added(&mut t, next, EPS)).1
                    })
                    .sum()
            })
        });
        eprintln!("NFT {n}x{EPS}: one service added: {} operations", k.ops());
        // Memory across partial syncs: one endpoint changed, service
        // after service (1,000 syncs up to 10,000 services, 100 above;
        // PROXIER_BENCH_PARTIALS sets it).
        let partials = std::env::var("PROXIER_BENCH_PARTIALS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(if n > 10_000 { 100 } else { 1000 });
        let before = rss_kib("VmRSS:");
        for i in 0..partials {
            if i % n == 0 {
                generation ^= 1;
            }
            k.sync(endpoint_moved(&mut t, i % n, EPS, generation));
        }
        eprintln!(
            "NFT {n}x{EPS}: RSS {before} KiB before {partials} partial syncs, {} KiB after",
            rss_kib("VmRSS:")
        );
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
