//! The first sync of a large cluster through the iptables backend, part
//! by part, into a fresh namespace (issue 16, item 10). Run as root:
//! `/usr/bin/time -f '%e s, peak RSS %M KiB' cargo run --release -p
//! benches --example first_sync -- 50000 nft [PART_CHAINS|one]`. Prints
//! each part's time and the time at which `kube-system/good` (one
//! endpoint, added last) first served; `time`'s peak is the largest of
//! this process and its `iptables-restore` children, the proxier's own
//! is printed at the end (`VmHWM`).
use std::sync::Arc;
use std::time::Instant;

use backend_iptables::{Config, DEFAULT_PART_CHAINS, IptablesProxier};
use proxier_core::{Proxier, SyncRequest};
use proxier_netfilter::{ConntrackNetlink, IptablesCmd, ProcSys, Variant};
use proxier_testbed::{Netns, NsRuntime};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let variant = match args.next().as_deref() {
        Some("legacy") => Variant::Legacy,
        _ => Variant::Nft,
    };
    let part = match args.next().as_deref() {
        Some("one") => usize::MAX,
        Some(p) => p.parse().expect("PART_CHAINS"),
        None => DEFAULT_PART_CHAINS,
    };
    let mut tracker = benches::filled(n, 10);
    let mut good = benches::service(n, false);
    good.namespace = "kube-system".into();
    good.name = "good".into();
    let mut good_slice = benches::slice(n, 1, 0);
    good_slice.namespace = "kube-system".into();
    good_slice.service_name = "good".into();
    tracker.update_service(&good).unwrap();
    tracker.update_endpoint_slice(&good_slice).unwrap();
    let ns = Netns::new("firstsync").unwrap();
    let rt = NsRuntime::start(&ns).unwrap();
    let mut p = IptablesProxier::new(
        Config::default(),
        Arc::new(IptablesCmd::new(proxier_core::IpFamily::V4, variant)),
        Arc::new(ConntrackNetlink::new().unwrap()),
        Arc::new(ProcSys),
    )
    .unwrap()
    .with_part_size(part);
    let t0 = Instant::now();
    let mut first = true;
    let mut good_at = None;
    loop {
        let (snapshot, changes) = tracker.apply();
        let req = SyncRequest {
            snapshot,
            changes,
            full: first,
            verify: false,
        };
        first = false;
        let t = Instant::now();
        let (back, stats) = rt.block_on(async move {
            let s = p.sync(&req).await;
            (p, s)
        });
        p = back;
        let stats = stats.expect("sync");
        let took = t.elapsed();
        if good_at.is_none() {
            // One chain's listing, cheap while the table is small.
            let prog = format!("iptables-{}", variant.as_str());
            let out = ns.exec(&prog, &["-t", "nat", "-S", "KUBE-SERVICES"]);
            if out
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("kube-system/good:http"))
            {
                good_at = Some(t0.elapsed());
            }
        }
        println!(
            "part: {:.1} s (at {:.1} s), {} lines written; {}",
            took.as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            stats.written,
            stats.incomplete.as_deref().unwrap_or("everything written")
        );
        if stats.incomplete.is_none() {
            break;
        }
    }
    let hwm = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        .unwrap_or_default();
    println!(
        "FIRST-SYNC {n}x10 {variant:?} part={part} total_s={:.1} good_served_s={:.1} proxier_peak_kib={hwm}",
        t0.elapsed().as_secs_f64(),
        good_at.unwrap_or_default().as_secs_f64()
    );
}
