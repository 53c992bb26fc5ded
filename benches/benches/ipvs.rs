//! The IPVS backend's control plane, inside the test VM (a real IPVS
//! kernel under software emulation: compare ratios, not seconds).
//!
//! For N services × 10 endpoints: the first full sync, a no-op sync, one
//! endpoint changed, one service added, and the netlink messages each
//! sends; against `ipvsadm -R` loading the same virtual and real servers,
//! and against the bare IPVS client sending the same writes, in the same
//! run.
//!
//! The same N as `externalTrafficPolicy: Local` LoadBalancers (cluster
//! IP, LB IP, node port): the first full sync with the firewall-mark
//! virtual servers that send traffic from inside to every endpoint, and
//! without them (mark mask 0, kube-proxy's IPVS semantics), in the same
//! run; then a no-op sync and one endpoint changed with them.
//! `PROXIER_BENCH_ONLY=etp` runs only these (`etp-first`: only their
//! first syncs, with where the time went).
//!
//! `PROXIER_BENCH_SIZES=100,1000,10000 cargo bench -p benches --bench ipvs`
//! boots the VM, runs this binary there, and writes the medians to
//! `target/proxier-report/ipvs.json`. Needs root and the VM's packages.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backend_ipvs::{Config, IpvsClient, IpvsProxier, Kernel, Op, SyncReport};
use backend_ipvs::{Dest, Service};
use benches::{endpoint_moved, filled, service, service_added, sizes, slice};
use criterion::{Criterion, SamplingMode};
use proxier_core::{
    ChangeSet, ChangeTracker, IpFamily, Proxier, ServiceType, Snapshot, SyncRequest, TrafficPolicy,
};
use proxier_netfilter::{IptablesCmd, LocalDetector, Variant};
use proxier_testbed::{Netns, NsRuntime, vm};

const EPS: usize = 10;
const LINE: &str = "PROXIER-BENCH";

/// Every measured duration, by name, for the medians.
static TIMES: Mutex<BTreeMap<String, Vec<Duration>>> = Mutex::new(BTreeMap::new());
/// Netlink messages per sync, by name.
static MESSAGES: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

fn record(name: &str, d: Duration) -> Duration {
    TIMES
        .lock()
        .expect("lock")
        .entry(name.into())
        .or_default()
        .push(d);
    d
}

fn messages(name: &str, r: &SyncReport) {
    MESSAGES
        .lock()
        .expect("lock")
        .insert(name.into(), r.netlink_messages);
}

/// A proxier in its own namespace.
struct Node {
    rt: NsRuntime,
    _ns: Netns,
    proxier: Option<IpvsProxier>,
    /// `Config::external_local_mark_mask`.
    mask: u32,
    /// iptables rules held after the last sync (every table).
    rules: usize,
}

impl Node {
    fn new() -> Node {
        Node::with_mask(Config::new(IpFamily::V4).external_local_mark_mask)
    }

    fn with_mask(mask: u32) -> Node {
        let ns = Netns::new("ipvsbench").expect("netns");
        let rt = NsRuntime::start(&ns).expect("runtime");
        let mut n = Node {
            rt,
            _ns: ns,
            proxier: None,
            mask,
            rules: 0,
        };
        n.fresh();
        n
    }

    fn fresh(&mut self) {
        let mask = self.mask;
        let p = self.rt.block_on(async move {
            let kernel =
                Kernel::real_with(IptablesCmd::new(IpFamily::V4, Variant::Nft)).expect("kernel");
            let mut cfg = Config::new(IpFamily::V4);
            cfg.node_ips = vec!["192.168.50.1".parse().expect("ip")];
            cfg.rules.local_detector =
                LocalDetector::ClusterCidr(vec!["10.128.0.0/9".parse().expect("cidr")]);
            cfg.external_local_mark_mask = mask;
            IpvsProxier::new(cfg, kernel).expect("config")
        });
        self.proxier = Some(p);
    }

    fn sync(&mut self, req: SyncRequest) -> (SyncReport, Duration) {
        let mut p = self.proxier.take().expect("proxier");
        let (p, r, d) = self.rt.block_on(async move {
            let t0 = Instant::now();
            let r = p.sync(&req).await;
            (p, r, t0.elapsed())
        });
        let stats = r.expect("sync");
        self.rules = stats.iptables_rules.iter().map(|(_, n, _)| n).sum();
        let rep = p.last_report().clone();
        self.proxier = Some(p);
        (rep, d)
    }
}

/// Times `one` (which records its own duration): through criterion, or,
/// for the largest sizes where one run of the baseline takes minutes in
/// the emulated VM, three plain runs (the median is what is reported).
fn measure(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    n: usize,
    name: &str,
    mut one: impl FnMut() -> Duration,
) {
    // Each run drops its namespace; the kernel tears it down afterwards
    // (on the VM's one vCPU, seconds at 10,000): the next run waits for
    // that, untimed, so that it is not measured inside the next sync.
    let mut one = move || {
        let d = one();
        let waited = proxier_testbed::settle(Duration::from_secs(30));
        (d, waited)
    };
    if n >= 5000 {
        for i in 0..3 {
            let (d, waited) = one();
            eprintln!("{name} at {n}: run {i}: {d:?} (then {waited:?} for the teardown)");
        }
        return;
    }
    g.bench_function(name, |b| {
        b.iter_custom(|iters| (0..iters).map(|_| one().0).sum())
    });
}

fn full(snap: &Snapshot) -> SyncRequest {
    SyncRequest {
        snapshot: snap.clone(),
        changes: ChangeSet::default(),
        full: true,
        verify: false,
    }
}

/// The virtual and real servers of `snap` as `ipvsadm -R` input and as
/// client operations (cluster IPs, as the proxier writes them).
fn servers(snap: &Snapshot) -> (String, Vec<Op>) {
    let mut text = String::new();
    let mut ops = Vec::new();
    for svc in snap.services.values() {
        let s = Service {
            addr: svc.cluster_ip,
            protocol: 6,
            port: svc.port,
            fwmark: 0,
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask: u32::MAX,
            stats: None,
        };
        let _ = writeln!(text, "-A -t {}:{} -s rr", s.addr, s.port);
        ops.push(Op::AddService(s.clone()));
        for e in snap.endpoints_of(&svc.name) {
            let _ = writeln!(text, "-a -t {}:{} -r {} -m -w 1", s.addr, s.port, e.addr);
            ops.push(Op::AddDest(
                s.clone(),
                Dest::masq(e.addr.ip(), e.addr.port(), 1),
            ));
        }
    }
    (text, ops)
}

/// Service `i` as an `externalTrafficPolicy: Local` LoadBalancer: cluster
/// IP, LB IP `172.16.x.y`, and for the first 2,000 a node port of their
/// own (the node-port range has 2,768; the rest are
/// `allocateLoadBalancerNodePorts: false`).
fn etp_service(i: usize) -> proxier_core::Service {
    let mut s = service(i, i < 2000);
    s.service_type = ServiceType::LoadBalancer;
    s.load_balancer_ips = vec![[172, 16 + (i >> 16) as u8, (i >> 8) as u8, i as u8].into()];
    s.external_traffic_policy = TrafficPolicy::Local;
    if i < 2000 {
        s.health_check_node_port = 32100 + (i % 600) as u16;
    }
    s
}

/// The eTP: Local group (see the module docs).
fn etp_group(c: &mut Criterion, n: usize) {
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for i in 0..n {
        t.update_service(&etp_service(i)).expect("valid service");
        t.update_endpoint_slice(&slice(i, EPS, 0))
            .expect("valid slice");
    }
    t.apply();
    let snap = t.snapshot().clone();
    let mut g = c.benchmark_group(format!("ipvs-etp-local/{n}x{EPS}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .sampling_mode(SamplingMode::Flat);
    let key = |what: &str| format!("{n}/etp_{what}");
    for (name, mask) in [("full_sync_without_marks", 0), ("full_sync", 0xffff_0000)] {
        measure(&mut g, n, name, || {
            let mut node = Node::with_mask(mask);
            let (rep, d) = node.sync(full(&snap));
            eprintln!(
                "OBJECTS ipvs-etp {name} {n}x{EPS}: {} virtual servers, {} real servers, {} iptables rules; steps {:?}; {} KiB available",
                rep.virtual_servers,
                rep.real_servers,
                node.rules,
                rep.steps,
                proxier_testbed::meminfo_kib("MemAvailable:")
            );
            messages(&key(name), &rep);
            record(&key(name), d)
        });
    }
    if std::env::var("PROXIER_BENCH_ONLY").as_deref() == Ok("etp-first") {
        g.finish();
        return;
    }
    let mut node = Node::new();
    node.sync(full(&snap));
    loaded_cases(&mut g, &mut node, &snap, &mut t, &key);
    g.finish();
}

/// The loaded cases both groups time on a synced node: a no-op full sync
/// (asserted to write nothing) and one endpoint changed.
fn loaded_cases(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    node: &mut Node,
    snap: &Snapshot,
    t: &mut ChangeTracker,
    key: &dyn Fn(&str) -> String,
) {
    g.bench_function("noop_full_sync", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let (rep, d) = node.sync(full(snap));
                    assert_eq!(rep.ipvs_writes, 0, "a no-op sync writes nothing");
                    messages(&key("noop_full_sync"), &rep);
                    record(&key("noop_full_sync"), d)
                })
                .sum()
        })
    });
    let mut generation = 0u32;
    g.bench_function("one_endpoint", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    generation ^= 1;
                    let (rep, d) = node.sync(endpoint_moved(t, 0, EPS, generation));
                    messages(&key("one_endpoint"), &rep);
                    record(&key("one_endpoint"), d)
                })
                .sum()
        })
    });
}

fn in_vm_main() {
    let quick = std::env::args().any(|a| a == "--test");
    let mut c = Criterion::default().configure_from_args();
    proxier_testbed::remove_stale();
    let only_etp = std::env::var("PROXIER_BENCH_ONLY").is_ok_and(|v| v.starts_with("etp"));
    for n in sizes() {
        etp_group(&mut c, n);
        if only_etp {
            if quick {
                break;
            }
            continue;
        }
        let mut t: ChangeTracker = filled(n, EPS);
        let snap = t.snapshot().clone();
        let (text, ops) = servers(&snap);
        let group = format!("ipvs/{n}x{EPS}");
        let mut g = c.benchmark_group(&group);
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .sampling_mode(SamplingMode::Flat);
        let key = |what: &str| format!("{n}/{what}");

        // `PROXIER_BENCH_SKIP=first` measures only the loaded cases.
        let first = std::env::var("PROXIER_BENCH_SKIP").as_deref() != Ok("first");
        // The floor: ipvsadm -R of the same servers, into an empty table
        // in a fresh namespace each time. (Not after `ipvsadm -C`: the
        // kernel keeps deleted real servers in a trash list for a minute
        // or two and scans it on every add, which makes back-to-back
        // reloads quadratic.)
        if first {
            measure(&mut g, n, "ipvsadm_restore", || {
                let ns = Netns::new("ipvsfloor").expect("netns");
                let text = text.clone();
                let d = ns
                    .enter(move || {
                        let t0 = Instant::now();
                        let mut child = Command::new("ipvsadm")
                            .arg("-R")
                            .stdin(Stdio::piped())
                            .spawn()
                            .expect("ipvsadm");
                        child
                            .stdin
                            .take()
                            .expect("stdin")
                            .write_all(text.as_bytes())
                            .expect("write");
                        assert!(child.wait().expect("wait").success());
                        t0.elapsed()
                    })
                    .expect("enter");
                record(&key("ipvsadm_restore"), d)
            });
            // The bare client: the same writes, batched on one socket.
            measure(&mut g, n, "client_batch", || {
                let ns = Netns::new("ipvsfloor").expect("netns");
                let ops = ops.clone();
                let d = ns
                    .enter(move || {
                        let mut c = IpvsClient::connect().expect("IPVS");
                        let t0 = Instant::now();
                        let r = c.apply(&ops).expect("batch");
                        let d = t0.elapsed();
                        assert!(r.iter().all(|r| r.is_ok()));
                        d
                    })
                    .expect("enter");
                record(&key("client_batch"), d)
            });
            // The proxier: first full sync on a fresh node.
            measure(&mut g, n, "full_sync", || {
                let mut node = Node::new();
                let (rep, d) = node.sync(full(&snap));
                messages(&key("full_sync"), &rep);
                record(&key("full_sync"), d)
            });
        }
        // Loaded: the incremental cases.
        let mut node = Node::new();
        let (rep, _) = node.sync(full(&snap));
        eprintln!(
            "OBJECTS ipvs {n}x{EPS}: {} virtual servers, {} real servers",
            rep.virtual_servers, rep.real_servers
        );
        loaded_cases(&mut g, &mut node, &snap, &mut t, &key);
        let mut next = n;
        g.bench_function("service_added", |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        next += 1;
                        let (rep, d) = node.sync(service_added(&mut t, next, EPS));
                        messages(&key("service_added"), &rep);
                        record(&key("service_added"), d)
                    })
                    .sum()
            })
        });
        g.finish();
        drop(node);
        if quick {
            break;
        }
    }
    // The medians, for the host side.
    let times = TIMES.lock().expect("lock");
    let msgs = MESSAGES.lock().expect("lock");
    for (k, v) in times.iter() {
        let mut v = v.clone();
        v.sort();
        let med = v[v.len() / 2];
        println!(
            "{LINE} {k} {} {}",
            med.as_nanos(),
            msgs.get(k).copied().unwrap_or(0)
        );
    }
}

fn main() {
    if vm::in_vm() {
        in_vm_main();
        return;
    }
    // On the host: run this binary inside the VM.
    let exe = std::env::current_exe().expect("exe");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sizes = std::env::var("PROXIER_BENCH_SIZES").unwrap_or_else(|_| "100,1000,10000".into());
    let r = vm::run(
        &exe,
        &args,
        &[
            ("PROXIER_BENCH_SIZES", &sizes),
            (
                "PROXIER_BENCH_SKIP",
                &std::env::var("PROXIER_BENCH_SKIP").unwrap_or_default(),
            ),
            (
                "PROXIER_BENCH_ONLY",
                &std::env::var("PROXIER_BENCH_ONLY").unwrap_or_default(),
            ),
        ],
        Duration::from_secs(4 * 3600),
    )
    .expect("VM");
    assert!(r.passed(), "the IPVS bench failed in the VM:\n{}", r.output);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/proxier-report");
    // New results over the last file's (a run with PROXIER_BENCH_SKIP
    // keeps the first-sync figures).
    let mut rows: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(old) = std::fs::read_to_string(dir.join("ipvs.json"))
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&old)
        && let Some(m) = v["results"].as_object()
    {
        for (k, val) in m {
            rows.insert(k.clone(), val.to_string());
        }
    }
    let mut fresh = 0;
    for rest in r.output.lines().filter_map(|l| l.split(LINE).nth(1)) {
        let w: Vec<&str> = rest.split_whitespace().collect();
        rows.insert(
            w[0].to_string(),
            format!(
                "{{\"median_ns\": {}, \"netlink_messages\": {}}}",
                w[1], w[2]
            ),
        );
        fresh += 1;
    }
    assert!(fresh > 0, "no results:\n{}", r.output);
    let mut json = format!(
        "{{\n  \"machine\": \"qemu TCG (software emulation), 1 vCPU, kernel {}\",\n  \"results\": {{\n",
        vm::kernel().map(|k| k.0).unwrap_or_default()
    );
    let rows: Vec<String> = rows
        .iter()
        .map(|(k, v)| format!("    \"{k}\": {v}"))
        .collect();
    json.push_str(&rows.join(",\n"));
    json.push_str("\n  }\n}\n");
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(dir.join("ipvs.json"), &json).expect("write");
    eprintln!("{json}");
}
