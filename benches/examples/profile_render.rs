//! Renders 10,000 × 10 iptables rules twenty times, for `perf record`.
use proxier_core::{ChangeTracker, IpFamily};
fn main() {
    let n = 10000;
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for i in 0..n {
        t.update_service(&benches::service(i, false)).unwrap();
        t.update_endpoint_slice(&benches::slice(i, 10, 0)).unwrap();
    }
    let (snap, _) = t.apply();
    let cfg = backend_iptables::Config::default();
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        let r = backend_iptables::Ruleset::render(&cfg, &snap);
        std::hint::black_box(&r);
    }
    println!("{:?} per render", t0.elapsed() / 20);
}
