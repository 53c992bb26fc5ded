//! The core at cluster sizes: build a snapshot from scratch, apply a
//! one-endpoint change, endpoint events per second, and the snapshot's
//! memory per endpoint (counted by a global allocator, printed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};

use benches::{filled, service, sizes, slice};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use proxier_core::{ChangeTracker, IpFamily};

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const EPS: usize = 10;

fn bench(c: &mut Criterion) {
    for n in sizes() {
        let svcs: Vec<_> = (0..n).map(|i| service(i, false)).collect();
        let slices: Vec<_> = (0..n).map(|i| slice(i, EPS, 0)).collect();

        let mut g = c.benchmark_group(format!("core/{n}x{EPS}"));
        g.sample_size(10);
        g.bench_function("snapshot_from_scratch", |b| {
            b.iter_with_large_drop(|| {
                let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
                for s in &svcs {
                    t.update_service(s).unwrap();
                }
                for s in &slices {
                    t.update_endpoint_slice(s).unwrap();
                }
                let snap = t.apply();
                (t, snap)
            })
        });

        // The same, split: only `apply` of everything pending (ingest of
        // the 2·N objects, i.e. validation and conversion, excluded).
        g.bench_function("apply_from_scratch", |b| {
            b.iter_batched(
                || {
                    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
                    for s in &svcs {
                        t.update_service(s).unwrap();
                    }
                    for s in &slices {
                        t.update_endpoint_slice(s).unwrap();
                    }
                    t
                },
                |mut t| {
                    let snap = t.apply();
                    (t, snap)
                },
                BatchSize::PerIteration,
            )
        });

        let mut t = filled(n, EPS);
        let mut generation = 1;
        let changed: Vec<_> = (1..=64).map(|g| slice(n / 2, EPS, g)).collect();
        g.bench_function("apply_one_endpoint_change", |b| {
            b.iter(|| {
                generation = (generation + 1) % changed.len();
                t.update_endpoint_slice(&changed[generation]).unwrap();
                black_box(t.apply())
            })
        });

        // Endpoint events: slice updates (each a changed endpoint) into the
        // tracker, applied every 1,000 events as a runner would.
        let events: Vec<_> = (0..2000)
            .map(|k| slice(k % n, EPS, 1 + (k / n) as u32))
            .collect();
        g.throughput(Throughput::Elements(events.len() as u64));
        g.bench_function("endpoint_events", |b| {
            b.iter_batched(
                || filled(n.min(2000), EPS),
                |mut t| {
                    for (k, e) in events.iter().enumerate() {
                        t.update_endpoint_slice(e).unwrap();
                        if k % 1000 == 999 {
                            black_box(t.apply());
                        }
                    }
                    t
                },
                BatchSize::LargeInput,
            )
        });
        g.finish();

        // Memory held by one snapshot, per endpoint: build a tracker, take
        // its snapshot, drop the tracker, count what the snapshot keeps.
        let before = LIVE.load(Ordering::SeqCst);
        let snap = {
            let mut t = filled(n, EPS);
            let (s, _) = t.apply();
            s
        };
        let held = LIVE.load(Ordering::SeqCst) - before;
        let eps = snap.endpoint_count();
        println!(
            "core/{n}x{EPS}/snapshot_memory: {held} bytes for {} service ports and {eps} endpoints = {:.0} bytes per endpoint (services included)",
            snap.services.len(),
            held as f64 / eps as f64
        );
        drop(snap);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
