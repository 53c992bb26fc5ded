//! The IPVS client against a real kernel, inside the test VM: every call
//! checked with `ipvsadm`, batches with one failing operation, real
//! connections counted, and the raw bytes of each exchange printed as
//! `CAPTURE name hex` lines (the codec tests replay them).

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use ipvs_netlink::ip_vs::*;
use ipvs_netlink::{Dest, ENOENT, ESRCH, IpvsClient, Op, Service, Timeouts};
use proxier_core::Protocol;
use proxier_testbed::vm::delegate;
use proxier_testbed::{Plan, Topology, Where};

fn ipvsadm(args: &[&str]) -> String {
    let out = Command::new("ipvsadm")
        .args(args)
        .output()
        .expect("ipvsadm");
    assert!(out.status.success(), "ipvsadm {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn svc(addr: &str, protocol: u16, port: u16, sched: &str) -> Service {
    let addr: IpAddr = addr.parse().unwrap();
    Service {
        addr,
        protocol,
        port,
        fwmark: 0,
        scheduler: sched.into(),
        flags: 0,
        timeout: 0,
        netmask: if addr.is_ipv4() { u32::MAX } else { 128 },
        stats: None,
    }
}

/// What a dump reports that we set (the kernel adds `IP_VS_SVC_F_HASHED`
/// and counters).
fn desired(s: &Service) -> (IpAddr, u16, u16, String, u32, u32, u32) {
    (
        s.addr,
        s.protocol,
        s.port,
        s.scheduler.clone(),
        s.flags & !IP_VS_SVC_F_HASHED,
        s.timeout,
        s.netmask,
    )
}

fn print_capture(name: &str, c: &mut IpvsClient) {
    for (i, (sent, bytes)) in c.take_capture().into_iter().enumerate() {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = if sent { "sent" } else { "recv" };
        println!("CAPTURE {name}.{i}.{dir} {hex}");
    }
}

#[test]
fn client_against_the_kernel() {
    delegate("client_against_the_kernel", || {
        let mut c = IpvsClient::connect().expect("IPVS family");
        assert!(c.family_id() >= 16);
        c.flush().unwrap();
        assert!(c.services().unwrap().is_empty());

        let mut tcp = svc("10.96.0.10", 6, 80, "rr");
        tcp.flags = IP_VS_SVC_F_PERSISTENT;
        tcp.timeout = 300;
        let udp = svc("10.96.0.10", 17, 53, "wrr");
        let sctp = svc("10.96.0.11", 132, 9000, "sh");
        let v6 = svc("fd00:10:96::1", 6, 443, "lc");
        c.set_capture(true);
        c.add_service(&tcp).unwrap();
        print_capture("new_service", &mut c);
        for s in [&udp, &sctp, &v6] {
            c.add_service(s).unwrap();
        }
        c.set_capture(true);
        let got = c.services().unwrap();
        print_capture("get_service", &mut c);
        let got: BTreeSet<_> = got.iter().map(desired).collect();
        let want: BTreeSet<_> = [&tcp, &udp, &sctp, &v6].into_iter().map(desired).collect();
        assert_eq!(got, want);
        let l = ipvsadm(&["-Ln"]);
        for line in [
            "TCP  10.96.0.10:80 rr persistent 300",
            "UDP  10.96.0.10:53 wrr",
            "SCTP 10.96.0.11:9000 sh",
            "TCP  [fd00:10:96::1]:443 lc",
        ] {
            assert!(l.contains(line), "{line} missing from:\n{l}");
        }

        // Real servers: add, read back, re-weight, delete.
        let a = Dest::masq("10.244.1.5".parse().unwrap(), 8080, 1);
        let b = Dest::masq("10.244.2.6".parse().unwrap(), 8080, 3);
        c.set_capture(true);
        c.add_dest(&tcp, &a).unwrap();
        print_capture("new_dest", &mut c);
        c.add_dest(&tcp, &b).unwrap();
        c.add_dest(&v6, &Dest::masq("fd00:244::5".parse().unwrap(), 8443, 1))
            .unwrap();
        c.set_capture(true);
        let ds = c.dests(&tcp).unwrap();
        print_capture("get_dest", &mut c);
        let ds: BTreeSet<_> = ds
            .iter()
            .map(|d| (d.addr, d.port, d.weight, d.fwd_method))
            .collect();
        assert_eq!(
            ds,
            BTreeSet::from([
                (a.addr, 8080, 1, IP_VS_CONN_F_MASQ),
                (b.addr, 8080, 3, IP_VS_CONN_F_MASQ)
            ])
        );
        let mut quiet = a.clone();
        quiet.weight = 0;
        c.set_capture(true);
        c.update_dest(&tcp, &quiet).unwrap();
        print_capture("set_dest", &mut c);
        let l = ipvsadm(&["-Ln", "-t", "10.96.0.10:80"]);
        let row: Vec<&str> = l
            .lines()
            .find(|r| r.contains("10.244.1.5:8080"))
            .expect("real server listed")
            .split_whitespace()
            .collect();
        assert_eq!(row[..4], ["->", "10.244.1.5:8080", "Masq", "0"], "{l}");
        c.set_capture(true);
        c.del_dest(&tcp, &b).unwrap();
        print_capture("del_dest", &mut c);
        let e = c.del_dest(&tcp, &b).unwrap_err();
        assert_eq!(e.errno(), Some(ENOENT), "{e}");
        assert!(
            e.to_string()
                .contains("ipvsadm -d -t 10.96.0.10:80 -r 10.244.2.6:8080"),
            "{e}"
        );
        // Edit a service: scheduler and persistence.
        let mut edited = tcp.clone();
        edited.scheduler = "wlc".into();
        edited.timeout = 60;
        c.set_capture(true);
        c.update_service(&edited).unwrap();
        print_capture("set_service", &mut c);
        assert!(ipvsadm(&["-Ln"]).contains("TCP  10.96.0.10:80 wlc persistent 60"));

        // A missing scheduler module is ENOENT, named after its service.
        c.set_capture(true);
        let e = c
            .add_service(&svc("10.96.0.12", 6, 80, "nosuch"))
            .unwrap_err();
        print_capture("error", &mut c);
        assert_eq!(e.errno(), Some(ENOENT), "{e}");
        assert!(e.to_string().contains("10.96.0.12:80"), "{e}");

        // A batch of 2,000 services with one bad one: every other lands.
        let mut ops: Vec<Op> = (0..2000u32)
            .map(|i| {
                let ip = format!("10.97.{}.{}", i / 250, i % 250 + 1);
                let sched = if i == 777 { "nosuch" } else { "rr" };
                Op::AddService(svc(&ip, 6, 80, sched))
            })
            .collect();
        ops.push(Op::AddDest(svc("10.97.0.1", 6, 80, "rr"), a.clone()));
        let before = c.messages_sent();
        let res = c.apply(&ops).unwrap();
        assert_eq!(c.messages_sent() - before, 2001);
        let failed: Vec<usize> = res
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_err())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(failed, vec![777]);
        assert_eq!(c.services().unwrap().len(), 4 + 1999);
        assert_eq!(c.dests(&svc("10.97.0.1", 6, 80, "rr")).unwrap().len(), 1);
        let all = c.dump_all().unwrap();
        assert_eq!(all.len(), 4 + 1999);

        // Timeouts.
        c.set_timeouts(Timeouts {
            tcp: 900,
            tcp_fin: 120,
            udp: 300,
        })
        .unwrap();
        c.set_capture(true);
        assert_eq!(
            c.timeouts().unwrap(),
            Timeouts {
                tcp: 900,
                tcp_fin: 120,
                udp: 300
            }
        );
        print_capture("get_config", &mut c);
        let t = ipvsadm(&["-L", "--timeout"]);
        assert!(t.contains("Timeout (tcp tcpfin udp): 900 120 300"), "{t}");

        c.set_capture(true);
        c.del_service(&v6).unwrap();
        print_capture("del_service", &mut c);
        let e = c.del_service(&v6).unwrap_err();
        assert_eq!(e.errno(), Some(ESRCH), "{e}");
        c.set_capture(true);
        c.flush().unwrap();
        print_capture("flush", &mut c);
        assert!(c.services().unwrap().is_empty());
        assert_eq!(ipvsadm(&["-Sn"]).trim(), "");
    });
}

#[test]
fn client_reads_connection_counts_and_stats() {
    delegate("client_reads_connection_counts_and_stats", || {
        let mut topo = Topology::build(Plan::default()).unwrap();
        let ep = topo.serve(Where::Local(0), 8080, Protocol::Tcp).unwrap();
        let node = topo.node.name().to_string();
        let sh = |cmd: String| {
            let st = Command::new("sh").args(["-c", &cmd]).status().unwrap();
            assert!(st.success(), "{cmd}");
        };
        sh(format!(
            "/usr/sbin/ip -n {node} link add kube-ipvs0 type dummy && /usr/sbin/ip -n {node} addr add 10.96.0.1/32 dev kube-ipvs0"
        ));
        let s = svc("10.96.0.1", 6, 80, "rr");
        let d = Dest::masq(ep.ip(), ep.port(), 1);
        let (s2, d2) = (s.clone(), d.clone());
        topo.node_rt().block_on(async move {
            let mut c = IpvsClient::connect().unwrap();
            c.add_service(&s2).unwrap();
            c.add_dest(&s2, &d2).unwrap();
        });
        let vip: SocketAddr = "10.96.0.1:80".parse().unwrap();
        let held = topo
            .tcp_open(Where::Ext, vip, Duration::from_secs(3))
            .unwrap();
        for _ in 0..3 {
            let o = topo.tcp(Where::Ext, None, vip, Duration::from_secs(3));
            assert_eq!(o.server(), Some(ep), "{o:?}");
        }
        // The kernel folds per-CPU counters into what it reports every
        // two seconds (its rate estimator).
        std::thread::sleep(Duration::from_millis(2500));
        let (svcs, dests) = topo.node_rt().block_on(async move {
            let mut c = IpvsClient::connect().unwrap();
            c.set_capture(true);
            let svcs = c.services().unwrap();
            let dests = c.dests(&s).unwrap();
            print_capture("stats", &mut c);
            (svcs, dests)
        });
        drop(held);
        assert_eq!(svcs.len(), 1);
        let st = svcs[0].stats.expect("service stats");
        assert!(st.conns >= 4 && st.inpkts > 0 && st.inbytes > 0, "{st:?}");
        assert_eq!(dests.len(), 1);
        assert_eq!((dests[0].addr, dests[0].port), (d.addr, d.port));
        assert!(
            dests[0].active_conns >= 1,
            "the held connection: {:?}",
            dests[0]
        );
        assert!(
            dests[0].active_conns + dests[0].inact_conns >= 4,
            "{:?}",
            dests[0]
        );
        assert!(dests[0].stats.expect("dest stats").conns >= 4);
    });
}
