//! The three modes side by side on the same workload: N ClusterIP
//! services × 10 endpoints (N from `PROXIER_BENCH_SIZES`, default
//! `100,1000,5000,10000`), through iptables (nft), userspace (portal) and
//! IPVS (in the test VM: a real IPVS kernel under software emulation).
//!
//! For each mode and N, on a fresh namespace test bed
//! ([`proxier_testbed::Topology`]):
//! - control plane: the first full sync, a resync (full, nothing changed),
//!   one endpoint changed, one service added, and the objects the mode
//!   created (rules, virtual + real servers, listeners + rules);
//! - data plane, with the N services installed: connect + 1-byte echo from
//!   the client pod through service 0's cluster IP to an endpoint pod,
//!   and single-stream throughput the same way; a direct connection from
//!   the same pod to the same server is the baseline, in the same run.
//!
//! Results go to `target/proxier-report/modes.json`;
//! `cargo run -p benches --bin report` turns them into a Markdown table
//! and SVG charts. `PROXIER_BENCH_MODES=iptables,userspace,ipvs` chooses
//! the modes; the results of modes not run are kept from the last run.
//! Needs root (and the VM's packages for `ipvs`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backend_iptables::IptablesProxier;
use backend_userspace::{DataPath, Mode, Portal, UserspaceProxier};
use benches::wire::{Bulk, CHUNK, echo_once, serve_forever};
use benches::{endpoint_moved, service, service_added, slice};
use criterion::{Criterion, SamplingMode, Throughput};
use proxier_core::{
    ChangeSet, ChangeTracker, IpFamily, PortSpec, Protocol, Proxier, Service, ServiceType,
    SliceEndpoint, SlicePort, SyncRequest, SyncStats,
};
use proxier_netfilter::{ConntrackNetlink, IptablesCmd, LocalDetector, Variant};
use proxier_testbed::topology::{CLUSTER_CIDR, NODE_IP, NODE_IP2};
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

fn make(mode: &str) -> Box<dyn Proxier> {
    let nft = || Arc::new(IptablesCmd::new(IpFamily::V4, Variant::Nft));
    match mode {
        "iptables" => Box::new(
            IptablesProxier::new(
                backend_iptables::Config {
                    local_detector: LocalDetector::ClusterCidr(vec![
                        CLUSTER_CIDR.parse().expect("cidr"),
                    ]),
                    node_ips: vec![IpAddr::V4(NODE_IP), IpAddr::V4(NODE_IP2)],
                    ..Default::default()
                },
                nft(),
                Arc::new(ConntrackNetlink::new().unwrap()),
                Arc::new(proxier_netfilter::ProcSys),
            )
            .expect("config")
            // Every mode's resync is one write, side by side.
            .with_part_size(usize::MAX),
        ),
        "userspace" => {
            let _ = backend_userspace::raise_fd_limit(64_000);
            Box::new(UserspaceProxier::new(backend_userspace::Config {
                family: IpFamily::V4,
                mode: Mode::Portal(Portal {
                    iptables: nft(),
                    conntrack: Arc::new(ConntrackNetlink::new().unwrap()),
                    node_port_addresses: Vec::new(),
                }),
                data: DataPath::default(),
            }))
        }
        "ipvs" => {
            let kernel =
                backend_ipvs::Kernel::real_with(IptablesCmd::new(IpFamily::V4, Variant::Nft))
                    .expect("kernel");
            let mut cfg = backend_ipvs::Config::new(IpFamily::V4);
            cfg.node_ips = vec![IpAddr::V4(NODE_IP), IpAddr::V4(NODE_IP2)];
            cfg.rules.local_detector =
                LocalDetector::ClusterCidr(vec![CLUSTER_CIDR.parse().expect("cidr")]);
            Box::new(backend_ipvs::IpvsProxier::new(cfg, kernel).expect("config"))
        }
        m => panic!("unknown mode {m}"),
    }
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
        let p = topo.node_rt().block_on(async move { make(&m) });
        Bed {
            topo,
            proxier: Some(p),
        }
    }

    fn sync(&mut self, req: SyncRequest) -> (SyncStats, Duration) {
        let mut p = self.proxier.take().expect("proxier");
        let (p, r, d) = self.topo.node_rt().block_on(async move {
            let t0 = Instant::now();
            let r = p.sync(&req).await;
            (p, r, t0.elapsed())
        });
        self.proxier = Some(p);
        (r.expect("sync"), d)
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

fn one_mode(c: &mut Criterion, mode: &str, quick: bool) {
    proxier_testbed::netns::remove_stale();
    for n in benches::sizes_or(&[100, 1000, 5000, 10000]) {
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
    let modes =
        std::env::var("PROXIER_BENCH_MODES").unwrap_or_else(|_| "iptables,userspace,ipvs".into());
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
    let mut json = format!(
        "{{\n  \"date\": \"{}\",\n  \"machine\": \"{}\",\n  \"note\": \"{note}\",\n  \"results\": {{\n",
        benches::today(),
        benches::machine()
    );
    let rows: Vec<String> = by
        .iter()
        .map(|(k, v)| format!("    \"{k}\": {v}"))
        .collect();
    json.push_str(&rows.join(",\n"));
    json.push_str("\n  }\n}\n");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("modes.json"), &json).expect("write");
}
