//! Runner timing with paused tokio time.

use std::time::Duration;

use tokio::time::{Instant, advance, sleep};

use super::*;
use crate::input::{PortSpec, ServiceType};
use crate::model::{IpFamily, Protocol};
use crate::proxier::{FakeProxier, Refused};

fn svc(i: u32) -> Service {
    Service {
        namespace: "ns".into(),
        name: format!("s{i}"),
        service_type: ServiceType::ClusterIp,
        cluster_ips: vec![
            format!("10.96.{}.{}", i / 250, i % 250 + 1)
                .parse()
                .unwrap(),
        ],
        ports: vec![PortSpec {
            name: String::new(),
            protocol: Some(Protocol::Tcp),
            port: 80,
            node_port: 0,
        }],
        ..Default::default()
    }
}

fn cfg() -> RunnerConfig {
    RunnerConfig {
        min_sync_period: Duration::from_secs(1),
        sync_period: Duration::from_secs(30),
        full_sync_period: Duration::from_secs(300),
        retry_initial: Duration::from_secs(2),
        retry_max: Duration::from_secs(8),
    }
}

struct Bed {
    fake: FakeProxier,
    handle: RunnerHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Box<dyn Proxier>>,
    t0: Instant,
}

fn start(fake: FakeProxier, cfg: RunnerConfig) -> Bed {
    let (runner, handle) = Runner::new(
        ChangeTracker::new(IpFamily::V4, "node-1"),
        Box::new(fake.clone()),
        cfg,
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = rx.await;
    }));
    Bed {
        fake,
        handle,
        stop: Some(tx),
        task,
        t0: Instant::now(),
    }
}

impl Bed {
    fn syncs(&self) -> Vec<(bool, usize)> {
        self.fake
            .log
            .lock()
            .unwrap()
            .syncs
            .iter()
            .map(|r| (r.full, r.snapshot.services.len()))
            .collect()
    }
    async fn settle(&self) {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    async fn stop(mut self) -> FakeProxier {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
        self.fake
    }
}

#[tokio::test(start_paused = true)]
async fn waits_for_initialization_then_syncs_full() {
    let bed = start(FakeProxier::new(), cfg());
    bed.handle.update_service(&svc(1)).unwrap();
    sleep(Duration::from_secs(100)).await;
    assert!(
        bed.syncs().is_empty(),
        "synced before the sources listed everything"
    );
    bed.handle.set_initialized();
    bed.settle().await;
    assert_eq!(bed.syncs(), vec![(true, 1)]);
    bed.stop().await;
}

#[tokio::test(start_paused = true)]
async fn bursts_coalesce_with_min_interval() {
    let bed = start(FakeProxier::new(), cfg());
    bed.handle.set_initialized();
    bed.settle().await;
    assert_eq!(bed.syncs().len(), 1);
    // A burst right after a sync: one sync, not before min_sync_period.
    for i in 0..50 {
        bed.handle.update_service(&svc(i)).unwrap();
    }
    bed.settle().await;
    assert_eq!(bed.syncs().len(), 1, "ran inside the minimum interval");
    advance(Duration::from_millis(999)).await;
    bed.settle().await;
    assert_eq!(bed.syncs().len(), 1);
    advance(Duration::from_millis(2)).await;
    bed.settle().await;
    assert_eq!(bed.syncs(), vec![(true, 0), (false, 50)]);
    // Nothing more queued: no further sync until the period.
    advance(Duration::from_secs(10)).await;
    bed.settle().await;
    assert_eq!(bed.syncs().len(), 2);
    bed.stop().await;
}

#[tokio::test(start_paused = true)]
async fn periodic_and_full_resync() {
    let bed = start(FakeProxier::new(), cfg());
    bed.handle.set_initialized();
    bed.settle().await;
    // Every 30 s a sync; the one at or after 300 s is full.
    for _ in 0..10 {
        advance(Duration::from_secs(30)).await;
        bed.settle().await;
    }
    let s = bed.syncs();
    assert_eq!(s.len(), 11, "{s:?}");
    assert!(s[0].0 && !s[1].0 && !s[9].0);
    assert!(s[10].0, "no full resync after full_sync_period: {s:?}");
    assert!(bed.t0.elapsed() >= Duration::from_secs(300));
    bed.stop().await;
}

#[tokio::test(start_paused = true)]
async fn verifies_once_per_sync_period_and_counts_repairs() {
    let bed = start(FakeProxier::new(), cfg());
    bed.handle.set_initialized();
    bed.settle().await;
    // Changes every 5 s: partial syncs, and one of them per 30 s verifies.
    for i in 0..12 {
        advance(Duration::from_secs(5)).await;
        bed.handle.update_service(&svc(i)).unwrap();
        bed.settle().await;
    }
    let verifies: Vec<bool> = {
        let l = bed.fake.log.lock().unwrap();
        l.syncs.iter().map(|r| r.verify).collect()
    };
    assert!(!verifies[0], "a full sync needs no verification");
    let n = verifies.iter().filter(|v| **v).count();
    assert!(
        (1..=3).contains(&n),
        "60 s of changes every 5 s verified {n} times: {verifies:?}"
    );
    // A verification that finds something is counted.
    bed.fake.log.lock().unwrap().drift = Some("chain X flushed".into());
    advance(Duration::from_secs(31)).await;
    bed.settle().await;
    let m = bed.handle.metrics().encode();
    assert!(
        m.contains("kubeproxy_sync_proxy_rules_repairs_total 1"),
        "{m}"
    );
    assert!(bed.fake.log.lock().unwrap().drift.is_none());
    bed.stop().await;
}

/// A service port the backend could not program (issue 16, item 7) does
/// not fail the sync: the node stays healthy well past the health
/// timeout, the port shows in a gauge, and the runner asks again with
/// backoff (2 s, 4 s, 8 s, 8 s…) until the backend reports it programmed.
#[tokio::test(start_paused = true)]
async fn a_port_that_cannot_be_programmed_is_retried_and_the_node_stays_healthy() {
    let fake = FakeProxier::new();
    let port = crate::ServicePortName {
        service: crate::NamespacedName::new("ns", "busy"),
        port: "http".into(),
        protocol: Protocol::Tcp,
    };
    fake.log.lock().unwrap().not_programmed = vec![(
        port,
        "binding 127.0.0.1:30091/TCP: Address already in use".into(),
    )];
    let bed = start(fake, cfg());
    bed.handle.set_initialized();
    bed.settle().await;
    assert_eq!(bed.syncs().len(), 1);
    let gauge = "kubeproxy_sync_proxy_rules_service_ports_not_programmed 1";
    assert!(bed.handle.metrics().encode().contains(gauge));
    // Retries at +2, +6, +14, +22 s: no changes, no failure counted.
    let mut at = Vec::new();
    for s in 1..=24 {
        advance(Duration::from_secs(1)).await;
        bed.settle().await;
        if bed.syncs().len() > at.len() + 1 {
            at.push(s);
        }
    }
    assert_eq!(at, vec![2, 6, 14, 22], "retries at {at:?} s");
    assert!(
        !bed.syncs()[1..].iter().any(|s| s.0),
        "a retry need not be full"
    );
    // Well past the health timeout (2 x 30 s) the node is healthy.
    advance(Duration::from_secs(100)).await;
    bed.settle().await;
    assert!(bed.handle.health().is_healthy());
    let m = bed.handle.metrics().encode();
    assert!(
        m.contains("kubeproxy_sync_proxy_rules_failures_total 0"),
        "{m}"
    );
    // Programmed at last: the gauge falls and the retries stop.
    bed.fake.log.lock().unwrap().not_programmed.clear();
    advance(Duration::from_secs(8)).await;
    bed.settle().await;
    let n = bed.syncs().len();
    assert!(
        bed.handle
            .metrics()
            .encode()
            .contains("kubeproxy_sync_proxy_rules_service_ports_not_programmed 0")
    );
    advance(Duration::from_secs(20)).await;
    bed.settle().await;
    assert_eq!(
        bed.syncs().len(),
        n,
        "retried after everything was programmed"
    );
    bed.stop().await;
}

/// A backend writing a large cluster in parts is asked for the next part
/// as soon as the minimum interval allows, with no change pending, and
/// only until it says everything is written.
#[tokio::test(start_paused = true)]
async fn parts_follow_one_another_at_the_minimum_interval() {
    let fake = FakeProxier::new();
    fake.log.lock().unwrap().parts_left = 3;
    let bed = start(fake, cfg());
    bed.handle.set_initialized();
    bed.settle().await;
    for s in 1..=10 {
        advance(Duration::from_secs(1)).await;
        bed.settle().await;
        let n = bed.syncs().len();
        assert_eq!(n, (s + 1).min(4), "after {s} s: {:?}", bed.syncs());
    }
    assert!(bed.handle.health().is_healthy());
    bed.stop().await;
}

/// kube-proxy's failure counters: a refused `iptables-restore` counts in
/// `…_iptables_restore_failures_total` (and, in a partial sync, in the
/// partial one), a refused nf_tables transaction in its own; a Local
/// service without a local endpoint in `…_no_local_endpoints_total`.
#[tokio::test(start_paused = true)]
async fn refused_updates_and_local_services_without_endpoints_are_counted() {
    let bed = start(FakeProxier::new(), cfg());
    let mut local = svc(1);
    local.service_type = crate::input::ServiceType::NodePort;
    local.ports[0].node_port = 30001;
    local.external_traffic_policy = crate::TrafficPolicy::Local;
    bed.handle.update_service(&local).unwrap();
    bed.handle.set_initialized();
    bed.settle().await;
    let m = bed.handle.metrics().encode();
    assert!(
        m.contains(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"external\",ip_family=\"IPv4\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\",ip_family=\"IPv4\"} 0"
        ),
        "{m}"
    );
    for (i, (refused, after)) in [
        (
            Refused::IptablesRestore,
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{ip_family=\"IPv4\"} 1",
        ),
        (
            Refused::NftablesTransaction,
            "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{ip_family=\"IPv4\"} 1",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        {
            let mut l = bed.fake.log.lock().unwrap();
            l.fail_next = 1;
            l.refused = Some(refused);
        }
        bed.handle.update_service(&svc(2 + i as u32)).unwrap();
        advance(Duration::from_secs(2)).await;
        bed.settle().await;
        let m = bed.handle.metrics().encode();
        assert!(m.contains(after), "{refused:?}: {m}");
        // The retry (full) succeeds.
        advance(Duration::from_secs(3)).await;
        bed.settle().await;
    }
    let m = bed.handle.metrics().encode();
    assert!(
        m.contains(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("kubeproxy_sync_proxy_rules_failures_total 2"),
        "{m}"
    );
    bed.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failed_sync_retries_with_backoff_then_full() {
    let fake = FakeProxier::new();
    let bed = start(fake.clone(), cfg());
    bed.handle.set_initialized();
    bed.settle().await;
    fake.log.lock().unwrap().fail_next = 3;
    advance(Duration::from_secs(1)).await;
    bed.handle.update_service(&svc(1)).unwrap();
    bed.settle().await;
    let times = |b: &Bed| b.syncs().len();
    assert_eq!(times(&bed), 2); // the failing partial sync
    // Retries at +2 s, +4 s, +8 s (capped), each full.
    advance(Duration::from_millis(1990)).await;
    bed.settle().await;
    assert_eq!(times(&bed), 2);
    advance(Duration::from_millis(20)).await;
    bed.settle().await;
    assert_eq!(times(&bed), 3);
    advance(Duration::from_secs(4)).await;
    bed.settle().await;
    assert_eq!(times(&bed), 4);
    advance(Duration::from_secs(8)).await;
    bed.settle().await;
    assert_eq!(times(&bed), 5);
    let syncs = fake.log.lock().unwrap().syncs.clone();
    let full: Vec<bool> = syncs.iter().map(|r| r.full).collect();
    assert_eq!(full, vec![true, false, true, true, true]);
    // The failed sync's change set was carried into the retries.
    assert!(
        syncs[4]
            .changes
            .updated_services
            .contains(&crate::model::NamespacedName::new("ns", "s1"))
    );
    assert_eq!(bed.handle.metrics().sync_failures_total.get(), 3);
    bed.stop().await;
}

#[tokio::test(start_paused = true)]
async fn never_two_syncs_at_once_and_on_demand() {
    let mut fake = FakeProxier::new();
    fake.delay = Duration::from_secs(5);
    let bed = start(fake.clone(), cfg());
    bed.handle.set_initialized();
    for i in 0..20 {
        bed.handle.update_service(&svc(i)).unwrap();
        bed.handle.sync_now();
        advance(Duration::from_millis(700)).await;
        bed.settle().await;
    }
    // Let time run on its own until everything queued has synced.
    sleep(Duration::from_secs(20)).await;
    let n = fake.log.lock().unwrap().syncs.len();
    assert!((2..=4).contains(&n), "{n} syncs");
    assert_eq!(fake.log.lock().unwrap().max_running, 1);
    // The last sync saw every service.
    assert_eq!(bed.syncs().last().unwrap().1, 20);
    // On demand with nothing pending still syncs.
    sleep(Duration::from_secs(2)).await;
    bed.handle.sync_now();
    sleep(Duration::from_secs(7)).await;
    assert_eq!(fake.log.lock().unwrap().syncs.len(), n + 1);
    bed.stop().await;
}

#[tokio::test(start_paused = true)]
async fn health_goes_bad_when_a_queued_update_is_stuck() {
    let mut fake = FakeProxier::new();
    fake.delay = Duration::from_secs(100);
    let bed = start(fake, cfg());
    let health = bed.handle.health();
    assert!(
        health.is_healthy(),
        "a proxier that never synced starts healthy"
    );
    bed.handle.set_initialized();
    bed.settle().await;
    // The first sync is stuck for 100 s; an update queued meanwhile ages.
    bed.handle.update_service(&svc(1)).unwrap();
    advance(Duration::from_secs(59)).await;
    assert!(health.is_healthy());
    advance(Duration::from_secs(2)).await;
    assert!(
        !health.is_healthy(),
        "queued for longer than 2 × sync period"
    );
    advance(Duration::from_secs(40)).await;
    bed.settle().await;
    assert!(health.is_healthy());
    bed.stop().await;
}

/// A dual-stack service `d{i}` (IPv4 primary) and a slice per family.
fn dual(
    i: u8,
) -> (
    Service,
    crate::input::EndpointSlice,
    crate::input::EndpointSlice,
) {
    use crate::input::{EndpointSlice, SliceEndpoint, SlicePort};
    let mut s = svc(u32::from(i));
    s.name = format!("d{i}");
    s.cluster_ips = vec![
        format!("10.96.9.{i}").parse().unwrap(),
        format!("fd00:96::{i}").parse().unwrap(),
    ];
    let slice = |family: IpFamily, addr: &str| EndpointSlice {
        namespace: "ns".into(),
        name: format!("d{i}-{}", family.as_str().to_lowercase()),
        service_name: format!("d{i}"),
        address_type: family,
        ports: vec![SlicePort {
            name: String::new(),
            port: Some(8080),
            protocol: Some(Protocol::Tcp),
        }],
        endpoints: vec![SliceEndpoint {
            addresses: vec![addr.parse().unwrap()],
            ..Default::default()
        }],
        trigger_time: None,
    };
    (
        s,
        slice(IpFamily::V4, &format!("10.0.1.{i}")),
        slice(IpFamily::V6, &format!("fd00:10:1::{i}")),
    )
}

#[tokio::test(start_paused = true)]
async fn dual_stack_syncs_each_family_through_its_backend() {
    let (f4, f6) = (FakeProxier::new(), FakeProxier::new());
    let meta = crate::MetaProxier::new(vec![
        (IpFamily::V4, Box::new(f4.clone()) as Box<dyn Proxier>),
        (IpFamily::V6, Box::new(f6.clone())),
    ]);
    assert_eq!(meta.name(), "fake+fake");
    let (runner, handle) = Runner::dual_stack(
        vec![
            ChangeTracker::new(IpFamily::V4, "node-1"),
            ChangeTracker::new(IpFamily::V6, "node-1"),
        ],
        Box::new(meta),
        cfg(),
    );
    let rounds = Arc::new(Mutex::new(Vec::new()));
    let r = rounds.clone();
    let task = tokio::spawn(runner.run_with(std::future::pending(), move |o| {
        r.lock().unwrap().push(o.clone());
        true
    }));
    // One dual-stack service, and a single-stack IPv6 one.
    let (s, sl4, sl6) = dual(1);
    handle.update_service(&s).unwrap();
    handle.update_endpoint_slice(&sl4).unwrap();
    handle.update_endpoint_slice(&sl6).unwrap();
    let (mut v6only, _, sl6b) = dual(2);
    v6only.cluster_ips = vec!["fd00:96::2".parse().unwrap()];
    handle.update_service(&v6only).unwrap();
    handle.update_endpoint_slice(&sl6b).unwrap();
    // A bad object is refused once, whatever the families.
    let mut bad = svc(3);
    bad.ports[0].port = 0;
    assert!(handle.update_service(&bad).is_err());
    handle.set_initialized();
    tokio::task::yield_now().await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let last = |f: &FakeProxier| f.log.lock().unwrap().syncs.last().cloned().unwrap();
    let (r4, r6) = (last(&f4), last(&f6));
    assert_eq!(r4.snapshot.family, IpFamily::V4);
    assert_eq!(r6.snapshot.family, IpFamily::V6);
    let ips = |r: &SyncRequest| -> Vec<String> {
        r.snapshot
            .services
            .values()
            .map(|p| p.cluster_ip.to_string())
            .collect()
    };
    assert_eq!(ips(&r4), ["10.96.9.1"]);
    let mut v6 = ips(&r6);
    v6.sort();
    assert_eq!(v6, ["fd00:96::1", "fd00:96::2"]);
    assert_eq!(r4.snapshot.endpoint_count(), 1);
    assert_eq!(r6.snapshot.endpoint_count(), 2);
    assert_eq!(
        *rounds.lock().unwrap(),
        [SyncOutcome {
            full: true,
            ok: true
        }]
    );
    // kube-proxy's ip_family label: each family's sync recorded apart.
    let m = handle.metrics().encode();
    for fam in ["IPv4", "IPv6"] {
        for series in [
            format!("kubeproxy_sync_proxy_rules_duration_seconds_count{{ip_family=\"{fam}\"}} 1"),
            format!(
                "kubeproxy_sync_full_proxy_rules_duration_seconds_count{{ip_family=\"{fam}\"}} 1"
            ),
            format!("kubeproxy_sync_proxy_rules_last_timestamp_seconds{{ip_family=\"{fam}\"}} "),
        ] {
            assert!(m.contains(&series), "{series} missing:\n{m}");
        }
    }

    // The IPv6 backend fails: the round fails, health stops being renewed,
    // and only IPv6 retries in full; IPv4 stays partial.
    f6.log.lock().unwrap().fail_next = 1;
    advance(Duration::from_secs(2)).await;
    let (s, _, _) = dual(4);
    handle.update_service(&s).unwrap();
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!rounds.lock().unwrap().last().unwrap().ok);
    advance(Duration::from_secs(3)).await;
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    let full = |f: &FakeProxier| -> Vec<bool> {
        f.log.lock().unwrap().syncs.iter().map(|r| r.full).collect()
    };
    assert_eq!(full(&f4), [true, false, false]);
    assert_eq!(full(&f6), [true, false, true]);
    assert!(rounds.lock().unwrap().last().unwrap().ok);
    // The failed IPv6 change was carried into its retry.
    assert!(
        last(&f6)
            .changes
            .updated_services
            .contains(&crate::model::NamespacedName::new("ns", "d4"))
    );
    task.abort();
}

/// `network_programming_duration_seconds`: a slice change made after the
/// tracker started is observed once its sync succeeds; a slice without the
/// annotation, or one older than the tracker (kube-proxy ignores those:
/// they would measure its own start), adds nothing.
#[tokio::test(start_paused = true)]
async fn network_programming_latency_is_measured_from_the_trigger_time() {
    use crate::input::{EndpointSlice, SliceEndpoint, SlicePort};
    let bed = start(FakeProxier::new(), cfg());
    bed.handle.set_initialized();
    bed.settle().await;
    bed.handle.update_service(&svc(1)).unwrap();
    let slice = |name: &str, ep: &str, t: Option<std::time::SystemTime>| EndpointSlice {
        namespace: "ns".into(),
        name: name.into(),
        service_name: "s1".into(),
        address_type: IpFamily::V4,
        ports: vec![SlicePort {
            name: String::new(),
            port: Some(8080),
            protocol: Some(Protocol::Tcp),
        }],
        endpoints: vec![SliceEndpoint {
            addresses: vec![ep.parse().unwrap()],
            ..Default::default()
        }],
        trigger_time: t,
    };
    let now = std::time::SystemTime::now();
    bed.handle
        .update_endpoint_slice(&slice("s1-a", "10.0.0.1", Some(now)))
        .unwrap();
    bed.handle
        .update_endpoint_slice(&slice("s1-b", "10.0.0.2", None))
        .unwrap();
    bed.handle
        .update_endpoint_slice(&slice(
            "s1-c",
            "10.0.0.3",
            Some(now - Duration::from_secs(86_400)),
        ))
        .unwrap();
    advance(Duration::from_secs(2)).await;
    bed.settle().await;
    let m = bed.handle.metrics().encode();
    assert!(
        m.contains("kubeproxy_network_programming_duration_seconds_count{ip_family=\"IPv4\"} 1"),
        "{m}"
    );
    let sum: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "kubeproxy_network_programming_duration_seconds_sum{ip_family=\"IPv4\"} ",
            )
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!((0.0..60.0).contains(&sum), "{sum}");
    bed.stop().await;
}
