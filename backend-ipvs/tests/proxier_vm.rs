//! The IPVS proxier in the VM's real kernel, beyond the behaviour suite:
//! graceful termination, restart adoption next to foreign objects,
//! `ipvsadm -Sn` agreeing with the desired state after every step, the
//! no-op sync (one dump, zero writes), netlink errors named per
//! service while the rest still syncs, and the firewall-mark virtual
//! servers of eTP: Local services through all of these.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use backend_ipvs::{Config, IpvsProxier, Kernel, SyncReport};
use proxier_core::{
    ChangeTracker, EndpointSlice, IpFamily, Protocol, Proxier, ProxierError, Service, ServiceType,
    SyncRequest, SyncStats,
};
use proxier_netfilter::{IptablesCmd, LocalDetector, Variant};
use proxier_testbed::tcp_line;
use proxier_testbed::vm::delegate;
use proxier_testbed::{CLUSTER_CIDR, NODE_IP, NODE_IP2};
use proxier_testbed::{Plan, Topology, Where};
use proxier_testbed::{ep, service, slice};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const T: Duration = Duration::from_secs(2);

struct Node {
    topo: Topology,
    tracker: ChangeTracker,
    proxier: Option<IpvsProxier>,
}

impl Node {
    fn new() -> Node {
        let mut topo = Topology::build(Plan::default()).expect("topology");
        for w in [Where::Local(0), Where::Local(1), Where::Remote(0)] {
            topo.serve(w, 8080, TCP).unwrap();
            topo.serve(w, 8080, UDP).unwrap();
        }
        let tracker = ChangeTracker::new(IpFamily::V4, &topo.plan.node_name);
        Node {
            topo,
            tracker,
            proxier: None,
        }
    }

    fn start(&mut self, tweak: impl FnOnce(&mut Config) + Send + 'static) {
        let p = self.topo.node_rt().block_on(async move {
            let kernel =
                Kernel::real_with(IptablesCmd::new(IpFamily::V4, Variant::Nft)).expect("kernel");
            let mut cfg = Config::new(IpFamily::V4);
            cfg.node_ips = vec![IpAddr::V4(NODE_IP), IpAddr::V4(NODE_IP2)];
            tweak(&mut cfg);
            IpvsProxier::new(cfg, kernel).expect("config")
        });
        self.proxier = Some(p);
    }

    fn sync(&mut self, full: bool) -> (Result<SyncStats, ProxierError>, SyncReport) {
        let (snapshot, changes) = self.tracker.apply();
        let req = SyncRequest {
            snapshot,
            changes,
            full,
            verify: false,
        };
        let mut p = self.proxier.take().expect("started");
        let (p, r) = self.topo.node_rt().block_on(async move {
            let r = p.sync(&req).await;
            (p, r)
        });
        let rep = p.last_report().clone();
        self.proxier = Some(p);
        (r, rep)
    }

    fn ok(&mut self, full: bool) -> SyncReport {
        let (r, rep) = self.sync(full);
        r.unwrap_or_else(|e| panic!("sync: {}", proxier_core::ErrorChain(&e)));
        rep
    }

    fn apply(&mut self, svcs: &[Service], slices: &[EndpointSlice]) {
        for s in svcs {
            self.tracker.update_service(s).unwrap();
        }
        for s in slices {
            self.tracker.update_endpoint_slice(s).unwrap();
        }
    }

    fn web_slice(&self, name: &str, eps: &[Where]) -> EndpointSlice {
        let e = eps
            .iter()
            .map(|w| ep(self.topo.ip_of(*w), self.topo.node_name_of(*w)))
            .collect();
        slice(
            "default",
            name,
            &[("http", 8080, TCP), ("dns", 8080, UDP)],
            e,
        )
    }

    fn sh(&self, cmd: &str) -> String {
        self.topo.node_exec("sh", &["-c", cmd]).unwrap()
    }

    /// `ipvsadm -Sn`, one line per object.
    fn ipvs(&self) -> BTreeSet<String> {
        self.sh("ipvsadm -Sn")
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect()
    }

    /// The proxier's `cleanup`, which must succeed.
    fn cleanup(&mut self) {
        let mut p = self.proxier.take().expect("started");
        self.topo
            .node_rt()
            .block_on(async move { p.cleanup().await })
            .unwrap();
    }

    fn ip(&self, w: Where) -> IpAddr {
        self.topo.ip_of(w)
    }
}

fn web(name: &str, cip: &str) -> Service {
    service("default", name, cip, &[("http", 80, TCP), ("dns", 53, UDP)])
}

fn lines(v: &[String]) -> BTreeSet<String> {
    v.iter().cloned().collect()
}

#[test]
fn graceful_termination_in_the_kernel() {
    delegate("graceful_termination_in_the_kernel", || {
        let mut n = Node::new();
        n.start(|c| c.graceful_termination_cap = Duration::from_secs(3));
        let (a, b, r) = (
            n.ip(Where::Local(0)),
            n.ip(Where::Local(1)),
            n.ip(Where::Remote(0)),
        );
        let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let sl = n.web_slice("web", &[Where::Local(0), Where::Remote(0)]);
        n.apply(&[web("web", "10.96.0.10")], &[sl]);
        n.ok(true);
        // A connection to each endpoint, held open.
        let mut held = Vec::new();
        let mut on_a = None;
        for _ in 0..6 {
            let mut c = n.topo.tcp_open(Where::ClientPod, vip, T).unwrap();
            let o = tcp_line(&mut c, "hello");
            if o.server().map(|s| s.ip()) == Some(a) && on_a.is_none() {
                on_a = Some(c);
            } else {
                held.push(c);
            }
        }
        let mut on_a = on_a.expect("round robin reached endpoint a");
        drop(held);
        // Remove a (connections open) and r (its connections closed by
        // now are still counted until IPVS expires them, so it drains
        // too); add b.
        let sl = n.web_slice("web", &[Where::Local(1)]);
        n.apply(&[], &[sl]);
        let rep = n.ok(false);
        assert!(!rep.full);
        let s = n.ipvs();
        let row =
            |ip: IpAddr, port: u16, w: u32| format!("-a -t 10.96.0.10:80 -r {ip}:{port} -m -w {w}");
        assert!(s.contains(&row(a, 8080, 0)), "a drains at weight 0: {s:#?}");
        assert!(s.contains(&row(b, 8080, 1)), "{s:#?}");
        // UDP real servers go at once.
        assert!(
            !s.iter().any(|l| l.starts_with("-a -u")
                && (l.contains(&a.to_string()) || l.contains(&r.to_string()))),
            "{s:#?}"
        );
        // New connections avoid a; the open one still reaches it.
        for _ in 0..6 {
            let o = n.topo.tcp(Where::ClientPod, None, vip, T);
            assert_eq!(o.server().map(|s| s.ip()), Some(b), "{o:?}");
        }
        let o = tcp_line(&mut on_a, "still there");
        assert_eq!(o.server().map(|s| s.ip()), Some(a), "{o:?}");
        // The endpoint comes back: weight 1 again, no delete and re-add.
        let sl = n.web_slice("web", &[Where::Local(0), Where::Local(1)]);
        n.apply(&[], &[sl]);
        n.ok(false);
        assert!(n.ipvs().contains(&row(a, 8080, 1)));
        // It goes again, and after the cap a sync deletes it although a
        // connection is still open.
        let sl = n.web_slice("web", &[Where::Local(1)]);
        n.apply(&[], &[sl]);
        n.ok(false);
        assert!(n.ipvs().contains(&row(a, 8080, 0)));
        std::thread::sleep(Duration::from_millis(3200));
        n.ok(false);
        let s = n.ipvs();
        assert!(
            !s.iter().any(|l| l.contains(&format!("{a}:8080"))),
            "deleted after the cap: {s:#?}"
        );
        // A real server that never had a connection is deleted at once,
        // without a weight-0 phase.
        let sl = n.web_slice("web", &[Where::Local(1), Where::Remote(0)]);
        n.apply(&[], &[sl]);
        n.ok(false);
        assert!(n.ipvs().contains(&row(r, 8080, 1)));
        let sl = n.web_slice("web", &[Where::Local(1)]);
        n.apply(&[], &[sl]);
        n.ok(false);
        let s = n.ipvs();
        assert!(
            !s.iter().any(|l| l.contains(&format!("{r}:8080"))),
            "an idle real server goes at once: {s:#?}"
        );
        drop(on_a);
    });
}

/// An eTP: Local LoadBalancer in the kernel: pods reach the remote
/// endpoint through the firewall-mark virtual server (`-f 1`), its
/// real servers drain gracefully, a restart adopts mark, set entries and
/// rules with zero writes, and a foreign firewall-mark service (`-f 7`,
/// as keepalived would make, inside the mark mask but not named by
/// `KUBE-EXTERNAL-LOCAL-MARK`) survives sync and cleanup.
#[test]
fn etp_local_firewall_marks_in_the_kernel() {
    delegate("etp_local_firewall_marks_in_the_kernel", || {
        let mut n = Node::new();
        let pods = |c: &mut Config| {
            c.graceful_termination_cap = Duration::from_secs(60);
            c.rules.local_detector =
                LocalDetector::ClusterCidr(vec![CLUSTER_CIDR.parse().unwrap()]);
        };
        n.start(pods);
        n.sh("ipvsadm -A -f 7 -s rr && ipvsadm -a -f 7 -r 10.1.2.4:80 -m");
        let (a, r) = (n.ip(Where::Local(0)), n.ip(Where::Remote(0)));
        let mut lb = web("lb", "10.96.0.30");
        lb.service_type = ServiceType::LoadBalancer;
        lb.ports[0].node_port = 30090;
        lb.ports[1].node_port = 30090;
        lb.load_balancer_ips = vec!["192.0.2.30".parse().unwrap()];
        lb.external_traffic_policy = proxier_core::TrafficPolicy::Local;
        lb.health_check_node_port = 30190;
        let sl = n.web_slice("lb", &[Where::Local(0), Where::Remote(0)]);
        n.apply(&[lb], &[sl]);
        let rep = n.ok(true);
        // Cluster IP, LB IP and two node addresses per protocol, plus one
        // firewall-mark virtual server per port.
        assert_eq!(rep.virtual_servers, 2 * 4 + 2, "{rep:?}");
        let s = n.ipvs();
        for m in [1, 2] {
            assert!(s.contains(&format!("-A -f {m} -s rr")), "{s:#?}");
            for ip in [a, r] {
                assert!(
                    s.contains(&format!("-a -f {m} -r {ip}:8080 -m -w 1")),
                    "{s:#?}"
                );
            }
        }
        assert!(!s.contains(&format!("-a -t 192.0.2.30:80 -r {r}:8080 -m -w 1")));
        let marks = n.sh("ipset save KUBE-EXTERNAL-LOCAL-MARK");
        assert!(
            marks.contains("add KUBE-EXTERNAL-LOCAL-MARK 192.0.2.30,tcp:80 skbmark 0x1/0x1fff")
                || marks
                    .contains("add KUBE-EXTERNAL-LOCAL-MARK 192.0.2.30,tcp:80 skbmark 0x2/0x1fff"),
            "{marks}"
        );
        assert!(
            n.sh("iptables-nft-save -t mangle")
                .contains("-j SET --map-set KUBE-EXTERNAL-LOCAL-MARK dst,dst --map-mark")
        );
        // A pod reaches the remote endpoint through the LB IP; the
        // connection is held.
        let lbip: SocketAddr = "192.0.2.30:80".parse().unwrap();
        let mut on_r = None;
        for _ in 0..8 {
            let mut c = n.topo.tcp_open(Where::ClientPod, lbip, T).unwrap();
            if tcp_line(&mut c, "hi").server().map(|s| s.ip()) == Some(r) {
                on_r = Some(c);
                break;
            }
        }
        let mut on_r = on_r.expect("a pod reaches the remote endpoint through the LB IP");
        // The remote endpoint goes: it drains at weight 0 on the
        // firewall-mark virtual server; the held connection still works.
        let sl = n.web_slice("lb", &[Where::Local(0)]);
        n.apply(&[], &[sl]);
        let rep = n.ok(false);
        assert!(!rep.full);
        let s = n.ipvs();
        let tcp_mark = s
            .iter()
            .find_map(|l| {
                l.strip_prefix("-a -f ")
                    .filter(|x| x.ends_with(&format!("-r {r}:8080 -m -w 0")))
                    .map(|x| x.split(' ').next().unwrap().to_string())
            })
            .unwrap_or_else(|| panic!("the remote endpoint drains at weight 0: {s:#?}"));
        assert_eq!(
            tcp_line(&mut on_r, "still").server().map(|s| s.ip()),
            Some(r)
        );
        drop(on_r);
        // A restart adopts everything: zero writes.
        let before = n.ipvs();
        n.proxier = None;
        n.start(pods);
        let rep = n.ok(true);
        assert_eq!(
            (rep.ipvs_writes, rep.ipset_changes, rep.address_changes),
            (0, 0, 0),
            "{rep:?}"
        );
        assert_eq!(n.ipvs(), before, "mark {tcp_mark} kept across the restart");
        // Cleanup removes our firewall-mark services, not the foreign one.
        n.cleanup();
        assert_eq!(
            n.ipvs(),
            lines(&[
                "-A -f 7 -s rr".into(),
                "-a -f 7 -r 10.1.2.4:80 -m -w 1".into()
            ])
        );
        assert!(!n.sh("iptables-nft-save").contains("KUBE-"));
    });
}

#[test]
fn restart_adopts_and_leaves_foreign_objects() {
    delegate("restart_adopts_and_leaves_foreign_objects", || {
        let mut n = Node::new();
        n.start(|_| {});
        let (a, b) = (n.ip(Where::Local(0)), n.ip(Where::Local(1)));
        let mut np = web("np", "10.96.0.20");
        np.service_type = ServiceType::NodePort;
        np.ports[0].node_port = 30080;
        np.ports[1].node_port = 30080;
        let sl1 = n.web_slice("np", &[Where::Local(0)]);
        let sl2 = n.web_slice("gone", &[Where::Local(1)]);
        n.apply(&[np, web("gone", "10.96.0.21")], &[sl1, sl2]);
        let rep = n.ok(true);
        let np_lines = |ip: &str, port: u16| {
            vec![
                format!("-A -t {ip}:{port} -s rr"),
                format!("-a -t {ip}:{port} -r {a}:8080 -m -w 1"),
                format!("-A -u {ip}:{}", if port == 80 { 53 } else { port }) + " -s rr",
                format!(
                    "-a -u {ip}:{} -r {a}:8080 -m -w 1",
                    if port == 80 { 53 } else { port }
                ),
            ]
        };
        let mut want = lines(&np_lines("10.96.0.20", 80));
        want.extend(np_lines(&NODE_IP.to_string(), 30080));
        want.extend(np_lines(&NODE_IP2.to_string(), 30080));
        let gone = [
            "-A -t 10.96.0.21:80 -s rr".to_string(),
            format!("-a -t 10.96.0.21:80 -r {b}:8080 -m -w 1"),
            "-A -u 10.96.0.21:53 -s rr".to_string(),
            format!("-a -u 10.96.0.21:53 -r {b}:8080 -m -w 1"),
        ];
        let mut all = want.clone();
        all.extend(gone.iter().cloned());
        assert_eq!(n.ipvs(), all, "ipvsadm -Sn after the first sync");
        assert_eq!(rep.virtual_servers, 8);
        // The proxier stops without cleaning up; foreign objects appear.
        n.proxier = None;
        n.sh("ipvsadm -A -t 10.1.2.3:80 -s wlc && ipvsadm -a -t 10.1.2.3:80 -r 10.1.2.4:80 -m");
        n.sh("ipset create FOREIGN hash:ip && ipset add FOREIGN 10.1.2.3");
        // A new run, and meanwhile "gone" was deleted.
        n.start(|_| {});
        n.tracker.delete_service("default", "gone");
        n.tracker.delete_endpoint_slice("default", "gone-1");
        let rep = n.ok(true);
        assert_eq!(
            rep.ipvs_writes, 2,
            "only the two stale virtual servers are deleted: {rep:?}"
        );
        let mut with_foreign = want.clone();
        with_foreign.insert("-A -t 10.1.2.3:80 -s wlc".into());
        with_foreign.insert("-a -t 10.1.2.3:80 -r 10.1.2.4:80 -m -w 1".into());
        assert_eq!(n.ipvs(), with_foreign);
        let addrs = n.sh("ip -o addr show dev kube-ipvs0");
        assert!(
            addrs.contains("10.96.0.20/32") && !addrs.contains("10.96.0.21"),
            "{addrs}"
        );
        let cip = n.sh("ipset list KUBE-CLUSTER-IP");
        assert!(
            cip.contains("10.96.0.20,tcp:80") && !cip.contains("10.96.0.21"),
            "{cip}"
        );
        // A no-op full sync: one dump, zero writes.
        let rep = n.ok(true);
        assert_eq!(
            (rep.ipvs_writes, rep.address_changes, rep.ipset_changes),
            (0, 0, 0),
            "{rep:?}"
        );
        assert_eq!(
            rep.netlink_messages,
            1 + 7,
            "one GET_SERVICE and one GET_DEST per service"
        );
        assert!(!rep.rules_written, "{rep:?}");
        // A firewall reload flushes the built-in chains behind the proxier's
        // back: a partial sync does not look, the next full sync repairs.
        n.sh("iptables-nft -t nat -F PREROUTING && iptables-nft -t nat -F OUTPUT");
        assert!(
            !n.sh("iptables-nft-save -t nat")
                .contains("-j KUBE-SERVICES")
        );
        assert!(!n.ok(false).rules_written);
        let rep = n.ok(true);
        assert!(rep.rules_written, "{rep:?}");
        let nat = n.sh("iptables-nft-save -t nat");
        for builtin in ["PREROUTING", "OUTPUT"] {
            assert!(
                nat.lines()
                    .any(|l| l.starts_with(&format!("-A {builtin} "))
                        && l.ends_with("-j KUBE-SERVICES")),
                "{builtin} → KUBE-SERVICES back:\n{nat}"
            );
        }
        assert!(!n.ok(true).rules_written, "repaired, then quiet again");
        // A no-op partial sync sends nothing at all.
        let rep = n.ok(false);
        assert_eq!(
            (rep.ipvs_writes, rep.netlink_messages, rep.rules_written),
            (0, 0, false)
        );
        // Cleanup removes ours and nothing else.
        n.cleanup();
        assert_eq!(
            n.ipvs(),
            lines(&[
                "-A -t 10.1.2.3:80 -s wlc".into(),
                "-a -t 10.1.2.3:80 -r 10.1.2.4:80 -m -w 1".into()
            ])
        );
        let sets = n.sh("ipset list -n");
        assert_eq!(sets.trim(), "FOREIGN");
        assert!(!n.sh("iptables-nft-save").contains("KUBE-"));
        assert!(
            n.sh("ip -o link show kube-ipvs0 2>/dev/null || true")
                .trim()
                .is_empty()
        );
    });
}

#[test]
fn netlink_errors_name_the_service_and_the_rest_syncs() {
    delegate("netlink_errors_name_the_service_and_the_rest_syncs", || {
        let mut n = Node::new();
        // A scheduler whose module does not exist.
        n.start(|c| c.scheduler = "nosuch".into());
        let sl = n.web_slice("web", &[Where::Local(0)]);
        n.apply(&[web("web", "10.96.0.30")], &[sl]);
        let (r, rep) = n.sync(true);
        let err = r.expect_err("the kernel refuses the scheduler");
        let e = proxier_core::ErrorChain(&err).to_string();
        assert!(
            e.contains(
                "default/web:http: ipvsadm -A -t 10.96.0.30:80 -s nosuch: No such file or directory"
            ),
            "{e}"
        );
        assert!(
            e.contains("default/web:dns: ipvsadm -A -u 10.96.0.30:53"),
            "{e}"
        );
        assert!(rep.ipvs_writes >= 2);
        // Everything else landed: the address, the sets and the rules.
        assert!(
            n.sh("ip -o addr show dev kube-ipvs0")
                .contains("10.96.0.30/32")
        );
        assert!(
            n.sh("ipset list KUBE-CLUSTER-IP")
                .contains("10.96.0.30,tcp:80")
        );
        assert!(n.sh("iptables-nft-save -t nat").contains("KUBE-CLUSTER-IP"));
        // Restarted with a scheduler that exists, it converges.
        n.start(|c| c.scheduler = "wrr".into());
        n.ok(true);
        let a = n.ip(Where::Local(0));
        assert_eq!(
            n.ipvs(),
            lines(&[
                "-A -t 10.96.0.30:80 -s wrr".into(),
                format!("-a -t 10.96.0.30:80 -r {a}:8080 -m -w 1"),
                "-A -u 10.96.0.30:53 -s wrr".into(),
                format!("-a -u 10.96.0.30:53 -r {a}:8080 -m -w 1"),
            ])
        );
        let o = n
            .topo
            .tcp(Where::ClientPod, None, "10.96.0.30:80".parse().unwrap(), T);
        assert_eq!(o.server().map(|s| s.ip()), Some(a), "{o:?}");
    });
}

/// [`IpvsNetlink`] (the proxier's seam) runs a batch on the blocking
/// pool: on a one-thread runtime, a timer task keeps ticking while the
/// kernel works through 2,000 virtual servers. With the blocking client
/// called in place, the timer could not run until the batch returned.
#[test]
fn a_batch_does_not_block_the_runtime() {
    delegate("a_batch_does_not_block_the_runtime", batch_beside_a_timer);
}

fn batch_beside_a_timer() {
    use backend_ipvs::{Ipvs, IpvsNetlink, Op};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ipvs = IpvsNetlink::connect().expect("IPVS family");
        let ops: Vec<Op> = (0..2000u32)
            .map(|i| {
                Op::AddService(backend_ipvs::Service {
                    addr: IpAddr::from([10, 97, (i / 250) as u8, (i % 250 + 1) as u8]),
                    protocol: 6,
                    port: 80,
                    fwmark: 0,
                    scheduler: "rr".into(),
                    flags: 0,
                    timeout: 0,
                    netmask: u32::MAX,
                    stats: None,
                })
            })
            .collect();
        let ticks = Arc::new(AtomicU64::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            let mut i = tokio::time::interval(Duration::from_millis(1));
            loop {
                i.tick().await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        // Let the ticker take its first (immediate) tick.
        tokio::task::yield_now().await;
        let before = ticks.load(Ordering::Relaxed);
        let sent0 = ipvs.messages_sent();
        let results = ipvs.apply(&ops).await.expect("batch");
        let during = ticks.load(Ordering::Relaxed) - before;
        ticker.abort();
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert!(ipvs.messages_sent() >= sent0 + 2000);
        assert!(
            during >= 2,
            "the timer ticked {during} times during a 2,000-op batch"
        );
        println!("the timer ticked {during} times during a 2,000-op batch");
        assert_eq!(
            ipvs.dump(proxier_core::IpFamily::V4).await.unwrap().len(),
            2000
        );
    });
    let mut c = backend_ipvs::IpvsClient::connect().unwrap();
    c.flush().unwrap();
    assert!(c.services().unwrap().is_empty());
}
