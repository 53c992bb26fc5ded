//! Writes the rendered N × 10 ruleset as `iptables-restore` input to
//! stdout (`cargo run --release -p benches --example dump_rules -- 5000`),
//! for timing the tools by hand.
use proxier_core::{ChangeTracker, IpFamily};
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for i in 0..n {
        t.update_service(&benches::service(i, false)).unwrap();
        t.update_endpoint_slice(&benches::slice(i, 10, 0)).unwrap();
    }
    let (snap, _) = t.apply();
    let cfg = backend_iptables::Config::default();
    print!(
        "{}",
        backend_iptables::Ruleset::render(&cfg, &snap).to_restore_input()
    );
}
