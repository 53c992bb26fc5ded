//! Builds a 2,000-service snapshot from scratch, for profiling with
//! `valgrind --tool=callgrind`.
use proxier_core::{ChangeTracker, IpFamily};
fn main() {
    let n = 2000;
    let svcs: Vec<_> = (0..n).map(|i| benches::service(i, false)).collect();
    let slices: Vec<_> = (0..n).map(|i| benches::slice(i, 10, 0)).collect();
    let mut t = ChangeTracker::new(IpFamily::V4, "node-1");
    for s in &svcs {
        t.update_service(s).unwrap();
    }
    for s in &slices {
        t.update_endpoint_slice(s).unwrap();
    }
    let (snap, _) = t.apply();
    println!("{}", snap.endpoint_count());
}
