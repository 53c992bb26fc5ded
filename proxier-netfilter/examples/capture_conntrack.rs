//! Records the bytes this crate and the kernel exchange over ctnetlink,
//! in a throwaway network namespace, into
//! `proxier-netfilter/tests/data/conntrack-<major.minor>.captures` (the codec
//! tests replay them). Run as root:
//! `cargo run -p proxier-netfilter --example capture_conntrack`.
//!
//! The flows are made by the `conntrack` program (`conntrack -I`), so the
//! dump replies describe entries another tool created; then this crate
//! dumps them and deletes one of each family.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use proxier_core::IpFamily;
use proxier_netfilter::{Conntrack, ConntrackNetlink, Flow};
use proxier_testbed::{Netns, NsRuntime};

const FLOWS: &[&str] = &[
    "-I -p udp -s 10.1.0.1 -d 10.96.0.10 --sport 40000 --dport 53 -r 10.2.0.5 -q 10.1.0.1 --reply-port-src 5353 --reply-port-dst 40000 -t 120",
    "-I -p udp -s 10.1.0.2 -d 10.96.0.10 --sport 40001 --dport 53 -r 10.2.0.6 -q 10.1.0.2 --reply-port-src 5353 --reply-port-dst 40001 -t 120 --zone 7",
    "-I -p tcp -s 10.1.0.3 -d 10.96.0.11 --sport 40002 --dport 80 -r 10.2.0.7 -q 10.1.0.3 --reply-port-src 8080 --reply-port-dst 40002 --state ESTABLISHED -t 120",
    "-I -p sctp -s 10.1.0.4 -d 10.96.0.12 --sport 40003 --dport 9000 -r 10.2.0.8 -q 10.1.0.4 --reply-port-src 9000 --reply-port-dst 40003 --orig-vtag 1 --reply-vtag 2 --state ESTABLISHED -t 120",
    "-I -p udp -s fd00::1 -d fd00:96::10 --sport 40004 --dport 53 -r fd00:2::5 -q fd00::1 --reply-port-src 5353 --reply-port-dst 40004 -t 120",
];

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let ns = Netns::new("ct-capture").expect("namespace (root?)");
    for f in FLOWS {
        let args: Vec<&str> = f.split_whitespace().collect();
        let out = ns.exec("conntrack", &args).expect("conntrack -I");
        assert!(
            out.status.success(),
            "conntrack {f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rt = NsRuntime::start(&ns).expect("runtime");
    let sections = rt.block_on(async {
        let mut sections = Vec::new();
        for (name, family) in [("dump ipv4", IpFamily::V4), ("dump ipv6", IpFamily::V6)] {
            let cap = Arc::new(Mutex::new(Vec::new()));
            let ct = ConntrackNetlink::new().unwrap().capturing(cap.clone());
            let (flows, _) = ct
                .dump(family, Default::default(), &|_: &Flow| true)
                .await
                .unwrap();
            let one: Vec<Flow> = flows
                .iter()
                .filter(|f| f.protocol == 17)
                .take(1)
                .copied()
                .collect();
            sections.push((
                name.to_string(),
                flows,
                std::mem::take(&mut *cap.lock().unwrap()),
            ));
            let ct = ConntrackNetlink::new().unwrap().capturing(cap.clone());
            ct.delete(&one).await.unwrap();
            // A delete of a flow that is gone: the kernel says ENOENT.
            ct.delete(&one).await.unwrap();
            sections.push((
                format!("delete {}", &name[5..]),
                one,
                std::mem::take(&mut *cap.lock().unwrap()),
            ));
        }
        sections
    });
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# ctnetlink bytes exchanged with Linux {}",
        release.trim()
    );
    let _ = writeln!(
        out,
        "# made by `cargo run -p proxier-netfilter --example capture_conntrack`"
    );
    let _ = writeln!(
        out,
        "# '> ' sent, '< ' received, '= ' a flow the exchange concerned (conntrack -L form)"
    );
    for (name, flows, frames) in sections {
        let _ = writeln!(out, "[{name}]");
        for f in flows {
            let _ = writeln!(out, "= {f}");
        }
        for (sent, bytes) in frames {
            let _ = writeln!(out, "{} {}", if sent { ">" } else { "<" }, hex(&bytes));
        }
    }
    let path = format!(
        "{}/tests/data/conntrack-{}.captures",
        env!("CARGO_MANIFEST_DIR"),
        release
            .trim()
            .split('.')
            .take(2)
            .collect::<Vec<_>>()
            .join(".")
    );
    std::fs::write(&path, out).unwrap();
    println!("wrote {path}");
}
