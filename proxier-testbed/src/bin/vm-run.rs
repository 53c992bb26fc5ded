//! Runs a binary (usually a test binary, with a test-name filter) inside
//! the IPVS VM: `vm-run TARGET/debug/deps/foo-HASH [ARGS...]`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((bin, rest)) = args.split_first() else {
        eprintln!("usage: vm-run BINARY [ARGS...]");
        std::process::exit(2);
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match proxier_testbed::vm::run(
        std::path::Path::new(bin),
        &rest,
        &[],
        std::time::Duration::from_secs(1800),
    ) {
        Ok(r) => {
            eprintln!("vm-run: status {:?} after {:?}", r.status, r.elapsed);
            std::process::exit(r.status.unwrap_or(1));
        }
        Err(e) => {
            eprintln!("vm-run: {e}");
            std::process::exit(1);
        }
    }
}
