//! Writes the rendered N × 10 ruleset as `iptables-restore` input to
//! stdout (`cargo run --release -p benches --example dump_rules -- 5000`),
//! for timing the tools by hand.
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let snap = benches::filled(n, 10).snapshot().clone();
    let cfg = backend_iptables::Config::default();
    print!(
        "{}",
        backend_iptables::Ruleset::render(&cfg, &snap).to_restore_input()
    );
}
