//! The four modes side by side on the same workload: N ClusterIP
//! services × 10 endpoints (N from `PROXIER_BENCH_SIZES`, default
//! `100,1000,5000,10000`), through iptables (nft), nftables, userspace
//! (portal) and IPVS (in the test VM: a real IPVS kernel under software
//! emulation).
//!
//! For each mode and N, on a fresh namespace test bed
//! ([`proxier_testbed::Topology`]):
//! - control plane: the first full sync, a resync (full, nothing changed),
//!   one endpoint changed, one service added, and the objects the mode
//!   created (rules, virtual + real servers, listeners + rules);
//! - data plane, with the N services installed: connect + 1-byte echo from
//!   the client pod through service 0's cluster IP to an endpoint pod,
//!   and single-stream throughput the same way; a direct connection from
//!   the same pod to the same server is the baseline, in the same run;
//! - dual stack, once, at 10,000 services (or the largest size run below
//!   that): the first full sync of both families in one round of the
//!   runner beside IPv4 alone, per family and in total.
//!
//! Results go to `target/proxier-report/modes.json`;
//! `cargo run -p benches --bin report` turns them into a Markdown table
//! and SVG charts. `PROXIER_BENCH_MODES=iptables,userspace,ipvs` chooses
//! the modes (`nftables` among them); the results of modes not run are
//! kept from the last run.
//! Needs root (and the VM's packages for `ipvs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use benches::wire::{Bulk, CHUNK, echo_once, serve_forever};
use benches::{endpoint_moved, service, service_added, slice};
use criterion::{Criterion, SamplingMode, Throughput};
use examples::modes::{Factory, Node};
use proxier_core::{
    ChangeSet, ChangeTracker, FamilySync, IpFamily, MetaProxier, PortSpec, Protocol, Proxier,
    Service, ServiceType, SliceEndpoint, SlicePort, SyncRequest, SyncStats,
};
use proxier_netfilter::Variant;
use proxier_testbed::{CLUSTER_CIDR, CLUSTER_CIDR6, NODE_IP, NODE_IP2, NODE_IP2_6, NODE_IP6};
use proxier_testbed::{Plan, Topology, Where, vm};

const EPS: usize = 10;
const LINE: &str = "PROXIER-MODE";
const VIP: &str = "10.95.0.1";

/// `mode n metric value`, in recording order.
static RESULTS: Mutex<Vec<(String, usize, String, f64)>> = Mutex::new(Vec::new());

fn put(mode: &str, n: usize, metric: &str, value: f64) {
    RESULTS
        .lock()
        .expect("lock")
        .push((mode.into(), n, metric.into(), value));
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One family's backend of `mode`, built by the binaries' factory
/// (`examples::modes::Factory`) from kube-proxy's flags for the test
/// bed's node: its cluster CIDRs and addresses, iptables-nft.
fn make(mode: &str, family: IpFamily) -> Box<dyn Proxier> {
    let cidrs = format!("{CLUSTER_CIDR},{CLUSTER_CIDR6}");
    let (factory, settings) = Factory::from_flags(&[
        "--proxy-mode",
        mode,
        "--cluster-cidr",
        &cidrs,
        "--hostname-override",
        "node-1",
        "--iptables-variant",
        "nft",
    ])
    .expect("flags");
    // Every mode's first sync is one write, side by side.
    let factory = factory.iptables_part_chains(usize::MAX);
    let ips: Vec<IpAddr> = match family {
        IpFamily::V4 => vec![NODE_IP.into(), NODE_IP2.into()],
        IpFamily::V6 => vec![NODE_IP6.into(), NODE_IP2_6.into()],
    };
    if mode == "userspace" {
        // Two families at 10,000 services: 20,000 listeners, and the
        // previous test bed's until it is gone.
        let _ = backend_userspace::raise_fd_limit(262_144);
    }
    factory
        .build_on(
            &settings.for_family(family),
            &Node {
                ips,
                variant: Variant::Nft,
            },
        )
        .expect("backend")
}

/// Service 0: the one traffic goes through, with one real endpoint.
fn probe_service(ep: IpAddr) -> (Service, proxier_core::EndpointSlice) {
    let s = Service {
        namespace: "bench".into(),
        name: "probe".into(),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![VIP.parse().expect("ip")],
        ports: vec![PortSpec {
            name: "http".into(),
            protocol: Some(Protocol::Tcp),
            port: 80,
            node_port: 0,
        }],
        ..Default::default()
    };
    let sl = proxier_core::EndpointSlice {
        namespace: "bench".into(),
        name: "probe-abcde".into(),
        service_name: "probe".into(),
        address_type: IpFamily::V4,
        ports: vec![SlicePort {
            name: "http".into(),
            port: Some(8080),
            protocol: Some(Protocol::Tcp),
        }],
        endpoints: vec![SliceEndpoint {
            addresses: vec![ep],
            ready: Some(true),
            node_name: Some("node-1".into()),
            ..Default::default()
        }],
        trigger_time: None,
    };
    (s, sl)
}

struct Bed {
    topo: Topology,
    proxier: Option<Box<dyn Proxier>>,
}

impl Bed {
    fn new(mode: &str) -> Bed {
        Self::with(mode, &[IpFamily::V4])
    }

    /// A test bed with a backend of `mode` per family (more than one: a
    /// [`MetaProxier`], as the binaries run a dual-stack node).
    fn with(mode: &str, families: &[IpFamily]) -> Bed {
        let mut topo = Topology::build(Plan::default()).expect("topology");
        // Thousands of short connections a second from one address (the
        // client pod, and the userspace proxy towards the endpoint) need
        // TIME_WAIT ports back, as on a busy node.
        for ns in [&topo.node, &topo.client_pod.ns] {
            ns.enter(|| std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1"))
                .expect("enter")
                .expect("tcp_tw_reuse");
        }
        let ip = topo.ip_of(Where::Local(0));
        let l = topo.local[0]
            .ns
            .enter(move || std::net::TcpListener::bind((ip, 8080)))
            .expect("enter")
            .expect("bind");
        serve_forever(l);
        let m = mode.to_string();
        let families = families.to_vec();
        let p = topo.node_rt().block_on(async move {
            if let [f] = families[..] {
                return make(&m, f);
            }
            let each = families.iter().map(|f| (*f, make(&m, *f))).collect();
            Box::new(MetaProxier::new(each)) as Box<dyn Proxier>
        });
        Bed {
            topo,
            proxier: Some(p),
        }
    }

    fn sync(&mut self, req: SyncRequest) -> (SyncStats, Duration) {
        let mut out = self.sync_families(vec![req]);
        let one = out.pop().expect("one result");
        (one.result.expect("sync"), one.took)
    }

    /// One round of the runner: every family's request at once.
    fn sync_families(&mut self, reqs: Vec<SyncRequest>) -> Vec<FamilySync> {
        let mut p = self.proxier.take().expect("proxier");
        let (p, out) = self.topo.node_rt().block_on(async move {
            let out = p.sync_families(&reqs).await;
            (p, out)
        });
        self.proxier = Some(p);
        out
    }

    fn in_client<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.topo.client_pod.ns.enter(f).expect("enter")
    }
}

fn full(t: &ChangeTracker) -> SyncRequest {
    SyncRequest {
        snapshot: t.snapshot().clone(),
        changes: ChangeSet::default(),
        full: true,
        verify: false,
    }
}

/// The process's descriptor limit (`Max open files` in /proc/self/limits),
/// after the userspace backend has raised it as far as it can.
fn fd_limit() -> usize {
    let _ = backend_userspace::raise_fd_limit(262_144);
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// The untimed wait after each first-sync sample for the kernel to free
/// the previous namespace (`PROXIER_BENCH_SETTLE_SECS`, default 4): a
/// namespace torn down while the next sample runs takes its time from it.
fn settle() {
    let secs = std::env::var("PROXIER_BENCH_SETTLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    std::thread::sleep(Duration::from_secs(secs));
}

/// A dual-stack node beside a single-stack one, in the same run: `n`
/// dual-stack services × 10 endpoints per family; the first full sync of
/// IPv4 alone, then of both families in one round of the runner (they
/// sync at once, as kube-proxy's metaproxier runs them), each on a fresh
/// test bed, alternating. Target: the round ≤ 2.1 × IPv4 alone.
fn dual_stack(mode: &str, n: usize, quick: bool) {
    let [t4, t6] = benches::filled_dual(n, EPS);
    let runs = if quick { 1 } else { 3 };
    let (mut single, mut single6) = (vec![], vec![]);
    let (mut v4, mut v6, mut round) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let mut bed = Bed::with(mode, &[IpFamily::V4]);
        single.push(bed.sync(full(&t4)).1);
        drop(bed);
        settle();
        // IPv6 alone too: what the round would cost one family after the
        // other is the sum of the two.
        let mut bed = Bed::with(mode, &[IpFamily::V6]);
        single6.push(bed.sync(full(&t6)).1);
        drop(bed);
        settle();
        let mut bed = Bed::with(mode, &[IpFamily::V4, IpFamily::V6]);
        let t0 = Instant::now();
        let out = bed.sync_families(vec![full(&t4), full(&t6)]);
        round.push(t0.elapsed());
        let [a, b] = &out[..] else {
            panic!("two families, two results")
        };
        for s in [a, b] {
            s.result.as_ref().expect("dual-stack sync");
        }
        v4.push(a.took);
        v6.push(b.took);
        drop(bed);
        settle();
    }
    let (single, single6) = (median(single), median(single6));
    let (v4, v6, round) = (median(v4), median(v6), median(round));
    eprintln!(
        "DUAL {mode} {n}x{EPS}: IPv4 alone {single:?}, IPv6 alone {single6:?}; dual-stack \
         round {round:?} (IPv4 {v4:?}, IPv6 {v6:?}), {:.2} x IPv4 alone",
        round.as_secs_f64() / single.as_secs_f64()
    );
    put(mode, n, "dual_single_v4_s", single.as_secs_f64());
    put(mode, n, "dual_single_v6_s", single6.as_secs_f64());
    put(mode, n, "dual_v4_s", v4.as_secs_f64());
    put(mode, n, "dual_v6_s", v6.as_secs_f64());
    put(mode, n, "dual_total_s", round.as_secs_f64());
}

fn one_mode(c: &mut Criterion, mode: &str, quick: bool) {
    proxier_testbed::remove_stale();
    let sizes = benches::sizes_or(&[100, 1000, 5000, 10000]);
    // The dual-stack run: at 10,000 services (the size), or at
    // the largest size asked for below that.
    // Userspace holds a listener per service port and family: its run is
    // at the largest size whose listeners fit the descriptor limit
    // (20,000 on this machine, which cannot raise it).
    let fits = |n: usize| mode != "userspace" || 2 * n + 4_000 <= fd_limit();
    let dual_at = sizes
        .iter()
        .copied()
        .filter(|n| *n <= 10_000 && fits(*n))
        .max();
    if dual_at != sizes.iter().copied().filter(|n| *n <= 10_000).max() {
        eprintln!(
            "DUAL {mode}: at {dual_at:?} services, not more: two families' listeners would \
             pass the descriptor limit ({})",
            fd_limit()
        );
    }
    for n in sizes {
        if Some(n) == dual_at || quick {
            dual_stack(mode, n, quick);
        }
        let mut bed = Bed::new(mode);
        let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
        let (ps, psl) = probe_service(bed.topo.ip_of(Where::Local(0)));
        t.update_service(&ps).expect("probe");
        t.update_endpoint_slice(&psl).expect("probe slice");
        for i in 1..n {
            t.update_service(&service(i, false)).expect("service");
            t.update_endpoint_slice(&slice(i, EPS, 0)).expect("slice");
        }
        t.apply();
        let mut g = c.benchmark_group(format!("modes-{mode}/{n}x{EPS}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .sampling_mode(SamplingMode::Flat);
        let big = n >= 5000;
        // First full sync, from nothing.
        let mut full_times = Vec::new();
        let runs = if big || quick { 3 } else { 10 };
        let mut objects = 0;
        for _ in 0..runs {
            // A fresh test bed each time: an empty table, as on a new
            // node (and no IPVS trash list from a previous run).
            let mut fresh = Bed::new(mode);
            let (st, d) = fresh.sync(full(&t));
            objects = st.objects;
            full_times.push(d);
            drop(fresh);
            if big {
                settle();
            }
        }
        put(mode, n, "full_sync_s", median(full_times).as_secs_f64());
        put(mode, n, "objects", objects as f64);
        let (st, _) = bed.sync(full(&t));
        assert_eq!(st.objects, objects);
        eprintln!("OBJECTS {mode} {n}x{EPS}: {objects}");
        let mut resync = Vec::new();
        g.bench_function("resync", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let d = bed.sync(full(&t)).1;
                        resync.push(d);
                        d
                    })
                    .sum()
            })
        });
        put(mode, n, "resync_s", median(resync).as_secs_f64());
        let mut generation = 0u32;
        let mut one = Vec::new();
        g.bench_function("one_endpoint", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        generation ^= 1;
                        let d = bed.sync(endpoint_moved(&mut t, 1, EPS, generation)).1;
                        one.push(d);
                        d
                    })
                    .sum()
            })
        });
        put(mode, n, "one_endpoint_s", median(one).as_secs_f64());
        let mut next = n + 10;
        let mut added = Vec::new();
        g.bench_function("service_added", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        next += 1;
                        let d = bed.sync(service_added(&mut t, next, EPS)).1;
                        added.push(d);
                        d
                    })
                    .sum()
            })
        });
        put(mode, n, "service_added_s", median(added).as_secs_f64());
        g.finish();

        // Data plane, with the services installed.
        let vip: SocketAddr = SocketAddr::new(VIP.parse().expect("ip"), 80);
        let direct = SocketAddr::new(bed.topo.ip_of(Where::Local(0)), 8080);
        let mut g = c.benchmark_group(format!("modes-{mode}/{n}x{EPS}/data"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(1))
            .warm_up_time(Duration::from_millis(200));
        // Service and direct samples alternate, so both see the same
        // machine (the figures that matter are their ratios).
        let samples = if quick { 20 } else { 400 };
        let (lat_s, lat_d): (Vec<Duration>, Vec<Duration>) = bed.in_client(move || {
            (0..samples)
                .map(|_| (echo_once(vip), echo_once(direct)))
                .unzip()
        });
        put(
            mode,
            n,
            "echo_p50_service_us",
            median(lat_s).as_secs_f64() * 1e6,
        );
        put(
            mode,
            n,
            "echo_p50_direct_us",
            median(lat_d).as_secs_f64() * 1e6,
        );
        for (what, addr) in [("service", vip), ("direct", direct)] {
            g.bench_function(format!("connect_echo_{what}"), |b| {
                b.iter_custom(|iters| {
                    bed.in_client(move || (0..iters).map(|_| echo_once(addr)).sum())
                })
            });
        }
        g.throughput(Throughput::Bytes(CHUNK as u64));
        let mut bulk_s = bed.in_client(move || Bulk::new(vip));
        let mut bulk_d = bed.in_client(move || Bulk::new(direct));
        let rounds = if quick { 2 } else { 12 };
        let (mut ts, mut td) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..rounds {
            let t0 = Instant::now();
            bulk_s.chunk();
            ts += t0.elapsed();
            let t0 = Instant::now();
            bulk_d.chunk();
            td += t0.elapsed();
        }
        let gib = (rounds * CHUNK) as f64 / (1u64 << 30) as f64;
        put(mode, n, "throughput_service_gibps", gib / ts.as_secs_f64());
        put(mode, n, "throughput_direct_gibps", gib / td.as_secs_f64());
        g.bench_function("throughput_service", |b| b.iter(|| bulk_s.chunk()));
        g.bench_function("throughput_direct", |b| b.iter(|| bulk_d.chunk()));
        g.finish();
        drop(bed);
        if quick {
            break;
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test");
    let modes = std::env::var("PROXIER_BENCH_MODES")
        .unwrap_or_else(|_| "iptables,nftables,userspace,ipvs".into());
    let modes: Vec<String> = modes.split(',').map(|m| m.trim().to_string()).collect();
    if vm::in_vm() {
        let mut c = Criterion::default().configure_from_args();
        for m in &modes {
            one_mode(&mut c, m, quick);
        }
        for (mode, n, metric, v) in RESULTS.lock().expect("lock").iter() {
            println!("{LINE} {mode} {n} {metric} {v}");
        }
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    for m in modes.iter().filter(|m| *m != "ipvs") {
        one_mode(&mut c, m, quick);
        save("");
    }
    let mut vm_note = String::new();
    if modes.iter().any(|m| m == "ipvs") {
        let exe = std::env::current_exe().expect("exe");
        let args: Vec<String> = std::env::args().skip(1).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let sizes =
            std::env::var("PROXIER_BENCH_SIZES").unwrap_or_else(|_| "100,1000,5000,10000".into());
        let r = vm::run(
            &exe,
            &args,
            &[
                ("PROXIER_BENCH_SIZES", &sizes),
                ("PROXIER_BENCH_MODES", "ipvs"),
            ],
            Duration::from_secs(4 * 3600),
        )
        .expect("VM");
        assert!(r.passed(), "the ipvs mode failed in the VM:\n{}", r.output);
        let mut res = RESULTS.lock().expect("lock");
        for l in r.output.lines() {
            if let Some(rest) = l.split(LINE).nth(1) {
                let w: Vec<&str> = rest.split_whitespace().collect();
                if let [mode, n, metric, v] = w[..] {
                    res.push((
                        mode.into(),
                        n.parse().expect("n"),
                        metric.into(),
                        v.parse().expect("value"),
                    ));
                }
            }
        }
        vm_note = format!(
            "ipvs ran in a qemu TCG VM (1 vCPU, kernel {}): compare its ratios, not its times",
            vm::kernel().map(|k| k.0).unwrap_or_default()
        );
    }
    save(&vm_note);
}

/// Writes `target/proxier-report/modes.json`: this run's results over the
/// last file's, so modes (and runs cut short) keep what they measured.
fn save(vm_note: &str) {
    let res = RESULTS.lock().expect("lock");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/proxier-report");
    let mut by: BTreeMap<String, f64> = BTreeMap::new();
    let mut note = vm_note.to_string();
    if let Ok(old) = std::fs::read_to_string(dir.join("modes.json"))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&old)
    {
        if let Some(m) = v["results"].as_object() {
            for (k, val) in m {
                if let Some(x) = val.as_f64() {
                    by.insert(k.clone(), x);
                }
            }
        }
        if note.is_empty() {
            note = v["note"].as_str().unwrap_or("").to_string();
        }
    }
    for (mode, n, metric, v) in res.iter() {
        by.insert(format!("{mode}/{n}/{metric}"), *v);
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "date": benches::today(),
        "machine": benches::machine(),
        "note": note,
        "results": by,
    }))
    .expect("results as JSON");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("modes.json"), &json).expect("write");
}
