//! Renders 10,000 × 10 iptables rules twenty times, for `perf record`.
fn main() {
    let n = 10000;
    let snap = benches::filled(n, 10).snapshot().clone();
    let cfg = backend_iptables::Config::default();
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        let r = backend_iptables::Ruleset::render(&cfg, &snap);
        std::hint::black_box(&r);
    }
    println!("{:?} per render", t0.elapsed() / 20);
}
