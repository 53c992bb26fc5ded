//! `ipset` crate (libipset over FFI) against one `ipset restore`, adding
//! and then deleting 10,000 `hash:ip` entries. Run as root inside a
//! throwaway namespace (sets are per network namespace):
//!
//!     ip netns add ipsetcmp
//!     ip netns exec ipsetcmp cargo run --release --manifest-path tools/ipset-compare/Cargo.toml
//!     ip netns del ipsetcmp

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipset::Session;
use ipset::types::HashIp;

const N: u32 = 10_000;

fn ips() -> Vec<IpAddr> {
    (0..N)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i)))
        .collect()
}

fn ipset(args: &[&str], stdin: Option<&str>) {
    let mut c = Command::new("ipset")
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("ipset");
    if let Some(s) = stdin {
        c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(c.stdin.take());
    assert!(c.wait().unwrap().success(), "ipset {args:?}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let ips = ips();
    let runs = 9;
    let (mut crate_add, mut crate_del, mut tool_add, mut tool_del) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        // The crate: one call per entry on one libipset session.
        ipset(&["create", "CMP-CRATE", "hash:ip", "family", "inet", "hashsize", "1024", "maxelem", "65536"], None);
        let mut s: Session<HashIp> = Session::new("CMP-CRATE".to_string());
        let t0 = Instant::now();
        for ip in &ips {
            s.add(*ip, &[]).expect("add");
        }
        crate_add.push(t0.elapsed());
        let t0 = Instant::now();
        for ip in &ips {
            s.del(*ip).expect("del");
        }
        crate_del.push(t0.elapsed());
        ipset(&["destroy", "CMP-CRATE"], None);

        // The tool: one `ipset restore` per batch.
        ipset(&["create", "CMP-TOOL", "hash:ip", "family", "inet", "hashsize", "1024", "maxelem", "65536"], None);
        let adds: String = ips.iter().map(|ip| format!("add CMP-TOOL {ip}\n")).collect();
        let dels: String = ips.iter().map(|ip| format!("del CMP-TOOL {ip}\n")).collect();
        let t0 = Instant::now();
        ipset(&["restore", "-exist"], Some(&adds));
        tool_add.push(t0.elapsed());
        let t0 = Instant::now();
        ipset(&["restore", "-exist"], Some(&dels));
        tool_del.push(t0.elapsed());
        ipset(&["destroy", "CMP-TOOL"], None);
    }
    println!("{N} entries, median of {runs} runs:");
    println!("  ipset crate   add {:?}  del {:?}", median(crate_add), median(crate_del));
    println!("  ipset restore add {:?}  del {:?}", median(tool_add), median(tool_del));
}
