//! The iptables backend at cluster sizes, on both variants, each sample
//! in a fresh network namespace: rendering in memory; first full sync;
//! no-op sync; the periodic drift check (`verify_sync`, and
//! `verify_after_foreign_change` when another program committed something
//! in the namespace); one endpoint changed; one service added; and, in the same
//! run, the floor: bare `iptables-restore` loading the same rules (the
//! whole ruleset into an empty namespace; the one-endpoint payload into
//! the loaded table). Rule counts are printed as `RULES …` lines.
//!
//! `PROXIER_BENCH_SIZES=1000,5000,10000 cargo bench -p benches --bench iptables`
//! (`PROXIER_BENCH_VARIANTS=nft,legacy` chooses the variants). Needs root.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend_iptables::{Config, IptablesProxier, Ruleset};
use benches::{endpoint_moved, filled, service_added, sizes, slice};
use criterion::{Criterion, criterion_group, criterion_main};
use proxier_core::{ChangeSet, ChangeTracker, IpFamily, Proxier, SyncRequest, SyncStats};
use proxier_netfilter::{ConntrackNetlink, IptablesCmd, LocalDetector, Variant};
use proxier_testbed::{Netns, NsRuntime};

const EPS: usize = 10;

fn config() -> Config {
    Config {
        local_detector: LocalDetector::ClusterCidr(vec!["10.128.0.0/9".parse().expect("cidr")]),
        ..Config::default()
    }
}

fn variants() -> Vec<Variant> {
    let v = std::env::var("PROXIER_BENCH_VARIANTS").unwrap_or_else(|_| "nft,legacy".into());
    v.split(',')
        .filter_map(|s| match s.trim() {
            "nft" => Some(Variant::Nft),
            "legacy" => Some(Variant::Legacy),
            _ => None,
        })
        .collect()
}

/// A proxier in its own fresh namespace.
struct Kernel {
    rt: NsRuntime,
    ns: Netns,
    proxier: Option<IptablesProxier>,
    variant: Variant,
}

impl Kernel {
    fn new(variant: Variant) -> Kernel {
        let ns = Netns::new("bench").expect("netns");
        let rt = NsRuntime::start(&ns).expect("runtime");
        let p = IptablesProxier::new(
            config(),
            Arc::new(IptablesCmd::new(IpFamily::V4, variant)),
            Arc::new(ConntrackNetlink::new().unwrap()),
            Arc::new(proxier_netfilter::ProcSys),
        )
        .expect("config")
        .with_check_spacing(0)
        // A full sync is timed as one restore, against the floor of one
        // (the first sync in parts is `examples/first_sync.rs`).
        .with_part_size(usize::MAX)
        .with_kept_payloads();
        Kernel {
            rt,
            ns,
            proxier: Some(p),
            variant,
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

    fn payloads(&self) -> Vec<(&'static str, String, bool)> {
        self.proxier
            .as_ref()
            .expect("proxier")
            .last_payloads()
            .to_vec()
    }

    /// Bare `iptables-restore` of `payload` in this namespace, timed.
    fn restore(&self, payload: String, noflush: bool) -> Duration {
        let prog = format!("iptables-{}-restore", self.variant.as_str());
        self.ns
            .enter(move || {
                let mut args = vec!["-w", "5", "-W", "100000"];
                if noflush {
                    args.push("--noflush");
                }
                let t0 = Instant::now();
                let mut child = Command::new(&prog)
                    .args(&args)
                    .stdin(Stdio::piped())
                    .spawn()
                    .expect("restore");
                child
                    .stdin
                    .take()
                    .expect("stdin")
                    .write_all(payload.as_bytes())
                    .expect("write");
                let st = child.wait().expect("wait");
                assert!(st.success(), "{prog} failed");
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

        let mut g = c.benchmark_group(format!("iptables/{n}x{EPS}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(1));
        g.bench_function("render", |b| {
            b.iter_with_large_drop(|| Ruleset::render(&config(), &snap))
        });
        let r = Ruleset::render(&config(), &snap);
        let (f, nat) = r.rule_counts();
        let full_input = r.to_restore_input();
        eprintln!(
            "RULES {n}x{EPS}: filter {f}, nat {nat}, nat chains {}",
            r.nat_chains().count()
        );
        g.finish();

        for variant in variants() {
            // Every variant starts from the same state.
            t.update_endpoint_slice(&slice(0, EPS, 0)).expect("slice");
            t.apply();
            let mut g = c.benchmark_group(format!("iptables-{variant}/{n}x{EPS}"));
            g.sample_size(10).warm_up_time(Duration::from_millis(1));
            let full_req = SyncRequest {
                snapshot: snap.clone(),
                changes: ChangeSet::default(),
                full: true,
                verify: false,
            };

            g.bench_function("full_sync", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let mut k = Kernel::new(variant);
                            k.sync(full_req.clone()).1
                        })
                        .sum()
                })
            });
            g.bench_function("floor_full_restore", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let k = Kernel::new(variant);
                            k.restore(full_input.clone(), false)
                        })
                        .sum()
                })
            });

            // One loaded namespace for the incremental cases.
            let mut k = Kernel::new(variant);
            let (stats, _) = k.sync(full_req.clone());
            eprintln!(
                "RULES iptables-{variant} {n}x{EPS}: {} rules",
                stats.objects
            );
            let noop = SyncRequest {
                snapshot: snap.clone(),
                changes: ChangeSet::default(),
                full: false,
                verify: false,
            };
            g.bench_function("noop_sync", |b| {
                b.iter_custom(|iters| (0..iters).map(|_| k.sync(noop.clone()).1).sum())
            });
            // The periodic drift check: with nothing changed in the
            // namespace (nft: the generation answers), and after another
            // program committed something elsewhere (nft: one rule dump
            // per table; legacy: always one iptables-save per table).
            let verify = SyncRequest {
                verify: true,
                ..noop.clone()
            };
            g.bench_function("verify_sync", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let (s, d) = k.sync(verify.clone());
                            assert_eq!(s.repaired, None, "drift where there is none");
                            d
                        })
                        .sum()
                })
            });
            let mut foreign = false;
            g.bench_function("verify_after_foreign_change", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            foreign = !foreign;
                            let verb = if foreign { "add" } else { "delete" };
                            let out =
                                k.ns.exec("nft", &[verb, "table", "ip", "bench-foreign"])
                                    .expect("nft");
                            assert!(out.status.success());
                            let (s, d) = k.sync(verify.clone());
                            assert_eq!(s.repaired, None, "drift where there is none");
                            d
                        })
                        .sum()
                })
            });

            // One endpoint changed: flip service 0's last endpoint.
            let mut generation = 0u32;
            let mut flip = |t: &mut ChangeTracker| {
                generation ^= 1;
                endpoint_moved(t, 0, EPS, generation)
            };
            g.bench_function("one_endpoint", |b| {
                b.iter_custom(|iters| (0..iters).map(|_| k.sync(flip(&mut t)).1).sum())
            });
            // The floor: the same payloads, replayed with bare restores.
            let a = k.sync(flip(&mut t));
            let pa = k.payloads();
            let b2 = k.sync(flip(&mut t));
            let pb = k.payloads();
            assert!(a.0.written > 0 && b2.0.written > 0);
            let mut which = false;
            g.bench_function("floor_one_endpoint", |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            which = !which;
                            let p = if which { &pa } else { &pb };
                            p.iter()
                                .map(|(_, payload, nf)| k.restore(payload.clone(), *nf))
                                .sum::<Duration>()
                        })
                        .sum()
                })
            });
            // Leave the kernel matching the proxier's view again.
            if which {
                k.sync(SyncRequest {
                    snapshot: t.snapshot().clone(),
                    changes: ChangeSet::default(),
                    full: true,
                    verify: false,
                });
            }

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
            // Back to n services for the next variant.
            for i in n + 1..=next {
                t.delete_service("bench", &format!("svc-{i}"));
                t.delete_endpoint_slice("bench", &format!("svc-{i}-abcde"));
            }
            t.apply();
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
