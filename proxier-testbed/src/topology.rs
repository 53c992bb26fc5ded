//! A throwaway topology of namespaces joined by veth pairs:
//!
//! ```text
//!   ext (external clients)              remote (another node and its pods)
//!   192.168.50.2.. /24                  192.168.60.2/24, pods 10.0.2.10.. /32 on lo
//!        │ eth0                              │ eth0
//!        │                                   │
//!   eth0 192.168.50.1/24 ─── node ─── eth1 192.168.60.1/24   (the proxier runs here)
//!        vp0 10.0.1.1/30  vp1 10.0.1.5/30  vp2 10.0.1.9/30 ...
//!         │                 │                │
//!       pod 10.0.1.2     local-1 10.0.1.6   local-2 10.0.1.10     (pods on this node)
//!       (a client pod)   (endpoints)        (endpoints)
//! ```
//!
//! Every link is dual-stack: beside each IPv4 address above is its IPv6
//! twin (`fd00:50::/64` external, `fd00:60::/64` towards the remote node,
//! pods `fd00:10:1::/126` each, remote pods `fd00:10:2::10..` on lo; no
//! duplicate address detection, so they work at once). [`Plan::family`]
//! says which family the accessors ([`Topology::ip_of`], ...) answer in:
//! the family a scenario runs over.
//!
//! Pods are routed point to point (/30 and /126 per pod), so hairpin
//! traffic leaves and re-enters the node, as with most CNIs. The cluster
//! CIDRs are 10.0.0.0/16 and fd00:10::/32. Nothing is created in, or routed through, the root
//! namespace; dropping the [`Topology`] deletes every namespace (and with
//! them every veth), even when a test panics.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use proxier_core::{IpFamily, Protocol};

use crate::netns::{Netns, ip_batch, remove_stale};
use crate::runtime::NsRuntime;
use crate::traffic::{self, Outcome};

/// The address plan of a scenario.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Endpoint namespaces on this node (pods).
    pub local_pods: usize,
    /// Endpoint addresses on the remote node.
    pub remote_pods: usize,
    /// Source addresses the external client namespace owns.
    pub ext_clients: usize,
    /// The node's name (endpoints on it are local).
    pub node_name: String,
    /// The family the scenario runs over (both are always configured).
    pub family: IpFamily,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            local_pods: 2,
            remote_pods: 2,
            ext_clients: 3,
            node_name: "node-1".into(),
            family: IpFamily::V4,
        }
    }
}

/// The node's address on the external network.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// The node's address towards the remote node.
pub const NODE_IP2: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 1);
/// The remote node's address.
pub const REMOTE_NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 2);
/// The cluster (pod) CIDR.
pub const CLUSTER_CIDR: &str = "10.0.0.0/16";
/// The node's IPv6 address on the external network.
pub const NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1);
/// The node's IPv6 address towards the remote node.
pub const NODE_IP2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 1);
/// The remote node's IPv6 address.
pub const REMOTE_NODE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x60, 0, 0, 0, 0, 0, 2);
/// The IPv6 cluster (pod) CIDR.
pub const CLUSTER_CIDR6: &str = "fd00:10::/32";
/// The name of the remote node.
pub const REMOTE_NODE_NAME: &str = "node-2";

/// A pod namespace on this node.
#[derive(Debug)]
pub struct Pod {
    /// Its namespace.
    pub ns: Netns,
    /// Its IPv4 address.
    pub ip: IpAddr,
    /// Its IPv6 address.
    pub ip6: IpAddr,
    rt: Option<NsRuntime>,
}

/// Where an endpoint lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// The client pod on this node (index 0 of the pods).
    ClientPod,
    /// Local endpoint pod `i` (0-based).
    Local(usize),
    /// Remote endpoint `i` (0-based) on node-2.
    Remote(usize),
    /// The external client.
    Ext,
    /// The node itself.
    Node,
}

/// A built topology. Dropping it removes everything.
#[derive(Debug)]
pub struct Topology {
    /// The plan it was built from.
    pub plan: Plan,
    /// The node namespace (where the proxier runs).
    pub node: Netns,
    /// External clients.
    pub ext: Netns,
    /// The remote node.
    pub remote: Netns,
    /// The client pod on this node.
    pub client_pod: Pod,
    /// Endpoint pods on this node.
    pub local: Vec<Pod>,
    node_rt: Option<NsRuntime>,
    remote_rt: Option<NsRuntime>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

fn pod_net(k: usize) -> (Ipv4Addr, Ipv4Addr) {
    let base = (4 * k) as u32;
    let node = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 0)) + base + 1);
    let pod = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 1, 0)) + base + 2);
    (node, pod)
}

fn pod_net6(k: usize) -> (Ipv6Addr, Ipv6Addr) {
    let base = u128::from(Ipv6Addr::new(0xfd00, 0x10, 1, 0, 0, 0, 0, 0)) + 4 * k as u128;
    (Ipv6Addr::from(base + 1), Ipv6Addr::from(base + 2))
}

fn write_sysctl(ns: &Netns, entries: &'static [(&'static str, &'static str)]) -> io::Result<()> {
    ns.enter(move || -> io::Result<()> {
        for (k, v) in entries {
            std::fs::write(format!("/proc/sys/{k}"), v)?;
        }
        Ok(())
    })?
}

impl Topology {
    /// Builds the topology (needs root). Namespaces left by dead test
    /// processes are removed first.
    pub fn build(plan: Plan) -> io::Result<Topology> {
        remove_stale();
        assert!(
            plan.local_pods < 60 && plan.remote_pods < 200 && (1..200).contains(&plan.ext_clients)
        );
        let node = Netns::new("node")?;
        let ext = Netns::new("ext")?;
        let remote = Netns::new("remote")?;
        let mut pods = Vec::new();
        for k in 0..=plan.local_pods {
            let role = if k == 0 {
                "pod".to_string()
            } else {
                format!("local{k}")
            };
            pods.push(Netns::new(&role)?);
        }

        // No duplicate address detection anywhere, link-local addresses
        // included: while one is tentative the first packets to a new
        // neighbour are lost (a first request would time out).
        for ns in [&node, &ext, &remote].into_iter().chain(pods.iter()) {
            write_sysctl(
                ns,
                &[
                    ("net/ipv6/conf/all/accept_dad", "0"),
                    ("net/ipv6/conf/default/accept_dad", "0"),
                ],
            )?;
        }
        let mut node_cmds = vec![
            format!(
                "link add eth0 type veth peer name eth0 netns {}",
                ext.name()
            ),
            format!(
                "link add eth1 type veth peer name eth0 netns {}",
                remote.name()
            ),
            format!("addr add {NODE_IP}/24 dev eth0"),
            format!("addr add {NODE_IP2}/24 dev eth1"),
            "link set eth0 up".into(),
            "link set eth1 up".into(),
            format!("addr add {NODE_IP6}/64 dev eth0 nodad"),
            format!("addr add {NODE_IP2_6}/64 dev eth1 nodad"),
            "link set eth0 up".into(),
            "link set eth1 up".into(),
            format!("route add 10.0.2.0/24 via {REMOTE_NODE_IP}"),
            format!("route add fd00:10:2::/64 via {REMOTE_NODE_IP6}"),
            // Like a real node, a default route (the node's own traffic to
            // a cluster IP is routed before it is DNATed).
            format!("route add default via {REMOTE_NODE_IP}"),
            format!("route add ::/0 via {REMOTE_NODE_IP6}"),
        ];
        for (k, p) in pods.iter().enumerate() {
            let (n, _) = pod_net(k);
            let (n6, _) = pod_net6(k);
            node_cmds.push(format!(
                "link add vp{k} type veth peer name eth0 netns {}",
                p.name()
            ));
            node_cmds.push(format!("addr add {n}/30 dev vp{k}"));
            node_cmds.push(format!("addr add {n6}/126 dev vp{k} nodad"));
            node_cmds.push(format!("link set vp{k} up"));
        }
        ip_batch(node.name(), &node_cmds)?;

        let mut ext_cmds = vec!["link set eth0 up".to_string()];
        for i in 0..plan.ext_clients {
            ext_cmds.push(format!("addr add 192.168.50.{}/24 dev eth0", 2 + i));
            ext_cmds.push(format!("addr add fd00:50::{:x}/64 dev eth0 nodad", 2 + i));
        }
        ext_cmds.push(format!("route add default via {NODE_IP}"));
        ext_cmds.push(format!("route add ::/0 via {NODE_IP6}"));
        ip_batch(ext.name(), &ext_cmds)?;

        let mut remote_cmds = vec![
            format!("addr add {REMOTE_NODE_IP}/24 dev eth0"),
            "link set eth0 up".into(),
            // Not a default route: traffic the node sends out by default
            // ends here (unreachable) instead of looping back.
            format!("route add 10.0.0.0/16 via {NODE_IP2}"),
            format!("route add 192.168.50.0/24 via {NODE_IP2}"),
            format!("addr add {REMOTE_NODE_IP6}/64 dev eth0 nodad"),
            format!("route add fd00:10::/32 via {NODE_IP2_6}"),
            format!("route add fd00:50::/64 via {NODE_IP2_6}"),
        ];
        for i in 0..plan.remote_pods {
            remote_cmds.push(format!("addr add 10.0.2.{}/32 dev lo", 10 + i));
            remote_cmds.push(format!(
                "addr add fd00:10:2::{:x}/128 dev lo nodad",
                0x10 + i
            ));
        }
        ip_batch(remote.name(), &remote_cmds)?;

        for (k, p) in pods.iter().enumerate() {
            let (n, a) = pod_net(k);
            let (n6, a6) = pod_net6(k);
            ip_batch(
                p.name(),
                &[
                    format!("addr add {a}/30 dev eth0"),
                    format!("addr add {a6}/126 dev eth0 nodad"),
                    "link set eth0 up".into(),
                    format!("route add default via {n}"),
                    format!("route add ::/0 via {n6}"),
                ],
            )?;
        }
        write_sysctl(
            &node,
            &[
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/rp_filter", "0"),
                ("net/ipv4/conf/default/rp_filter", "0"),
                ("net/ipv6/conf/all/forwarding", "1"),
            ],
        )?;

        let mut pods: Vec<Pod> = pods
            .into_iter()
            .enumerate()
            .map(|(k, ns)| Pod {
                ns,
                ip: IpAddr::V4(pod_net(k).1),
                ip6: IpAddr::V6(pod_net6(k).1),
                rt: None,
            })
            .collect();
        let client_pod = pods.remove(0);
        Ok(Topology {
            plan,
            node,
            ext,
            remote,
            client_pod,
            local: pods,
            node_rt: None,
            remote_rt: None,
            servers: Vec::new(),
        })
    }

    /// The node's tokio runtime (started on first use): run the proxier
    /// here so that everything it creates is inside the node namespace.
    pub fn node_rt(&mut self) -> &NsRuntime {
        if self.node_rt.is_none() {
            self.node_rt = Some(NsRuntime::start(&self.node).expect("node runtime"));
        }
        self.node_rt.as_ref().expect("started")
    }

    fn v6(&self) -> bool {
        self.plan.family == IpFamily::V6
    }

    /// The address of an endpoint location, in the plan's family.
    pub fn ip_of(&self, w: Where) -> IpAddr {
        let pod = |p: &Pod| if self.v6() { p.ip6 } else { p.ip };
        match w {
            Where::ClientPod => pod(&self.client_pod),
            Where::Local(i) => pod(&self.local[i]),
            Where::Remote(i) if self.v6() => {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 2, 0, 0, 0, 0, 0x10 + i as u16))
            }
            Where::Remote(i) => IpAddr::V4(Ipv4Addr::new(10, 0, 2, 10 + i as u8)),
            Where::Ext => self.ext_ip(0),
            Where::Node => self.node_ip(),
        }
    }

    /// The `i`-th external client address, in the plan's family.
    pub fn ext_ip(&self, i: usize) -> IpAddr {
        if self.v6() {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 2 + i as u16))
        } else {
            IpAddr::V4(Ipv4Addr::new(192, 168, 50, 2 + i as u8))
        }
    }

    /// The node's address on the external network, in the plan's family.
    pub fn node_ip(&self) -> IpAddr {
        if self.v6() {
            IpAddr::V6(NODE_IP6)
        } else {
            IpAddr::V4(NODE_IP)
        }
    }

    /// The node's address towards the remote node, in the plan's family.
    pub fn node_ip2(&self) -> IpAddr {
        if self.v6() {
            IpAddr::V6(NODE_IP2_6)
        } else {
            IpAddr::V4(NODE_IP2)
        }
    }

    /// The cluster CIDR of the plan's family.
    pub fn cluster_cidr(&self) -> ipnet::IpNet {
        let c = if self.v6() {
            CLUSTER_CIDR6
        } else {
            CLUSTER_CIDR
        };
        c.parse().expect("cidr")
    }

    /// The node name an endpoint at `w` runs on.
    pub fn node_name_of(&self, w: Where) -> &str {
        match w {
            Where::Remote(_) => REMOTE_NODE_NAME,
            _ => &self.plan.node_name,
        }
    }

    fn ns_of(&self, w: Where) -> &Netns {
        match w {
            Where::ClientPod => &self.client_pod.ns,
            Where::Local(i) => &self.local[i].ns,
            Where::Remote(_) => &self.remote,
            Where::Ext => &self.ext,
            Where::Node => &self.node,
        }
    }

    fn rt_of(&mut self, w: Where) -> io::Result<&NsRuntime> {
        if matches!(w, Where::Ext) {
            return Err(io::Error::other("no servers on the external client"));
        }
        let missing = match w {
            Where::ClientPod => self.client_pod.rt.is_none(),
            Where::Local(i) => self.local[i].rt.is_none(),
            Where::Remote(_) => self.remote_rt.is_none(),
            _ => self.node_rt.is_none(),
        };
        if missing {
            let rt = Some(NsRuntime::start(self.ns_of(w))?);
            match w {
                Where::ClientPod => self.client_pod.rt = rt,
                Where::Local(i) => self.local[i].rt = rt,
                Where::Remote(_) => self.remote_rt = rt,
                _ => self.node_rt = rt,
            }
        }
        let slot = match w {
            Where::ClientPod => &self.client_pod.rt,
            Where::Local(i) => &self.local[i].rt,
            Where::Remote(_) => &self.remote_rt,
            _ => &self.node_rt,
        };
        Ok(slot.as_ref().expect("started"))
    }

    /// Starts an identity server for `proto` on the endpoint's address.
    pub fn serve(&mut self, w: Where, port: u16, proto: Protocol) -> io::Result<SocketAddr> {
        let addr = SocketAddr::new(self.ip_of(w), port);
        let rt = self.rt_of(w)?;
        let h = match proto {
            Protocol::Tcp => rt.block_on(traffic::tcp_server(addr))?,
            Protocol::Udp => rt.block_on(traffic::udp_server(addr))?,
            Protocol::Sctp => return Err(io::Error::other("no SCTP server in the test bed")),
        };
        self.servers.push(h);
        Ok(addr)
    }

    /// One TCP request from `from` (optionally from a chosen source
    /// address) to `dst`.
    pub fn tcp(
        &self,
        from: Where,
        src: Option<IpAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Outcome {
        self.request(from, Protocol::Tcp, src, dst, timeout)
    }

    /// One UDP request from `from` to `dst`.
    pub fn udp(
        &self,
        from: Where,
        src: Option<IpAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Outcome {
        self.request(from, Protocol::Udp, src, dst, timeout)
    }

    /// One request of `proto` from `from` to `dst`.
    pub fn request(
        &self,
        from: Where,
        proto: Protocol,
        src: Option<IpAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> Outcome {
        self.requests(from, proto, src, dst, 1, timeout)
            .pop()
            .unwrap_or(Outcome::Error("no request made".into()))
    }

    /// `n` requests of one protocol, each on a new connection or socket.
    pub fn requests(
        &self,
        from: Where,
        proto: Protocol,
        src: Option<IpAddr>,
        dst: SocketAddr,
        n: usize,
        timeout: Duration,
    ) -> Vec<Outcome> {
        self.ns_of(from)
            .enter(move || {
                (0..n)
                    .map(|_| match proto {
                        Protocol::Udp => traffic::udp_request(src, dst, timeout),
                        _ => traffic::tcp_request(src, dst, timeout),
                    })
                    .collect()
            })
            .unwrap_or_else(|e| vec![Outcome::Error(e.to_string())])
    }

    /// Opens a TCP connection that stays open (created inside `from`).
    pub fn tcp_open(
        &self,
        from: Where,
        dst: SocketAddr,
        timeout: Duration,
    ) -> io::Result<std::net::TcpStream> {
        self.ns_of(from)
            .enter(move || traffic::tcp_connect(None, dst, timeout))?
    }

    /// Opens a connected UDP socket inside `from` (for a flow that lasts).
    pub fn udp_open(
        &self,
        from: Where,
        dst: SocketAddr,
        timeout: Duration,
    ) -> io::Result<std::net::UdpSocket> {
        self.ns_of(from)
            .enter(move || -> io::Result<std::net::UdpSocket> {
                let any = match dst {
                    SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                let s = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
                s.connect(dst)?;
                s.set_read_timeout(Some(timeout))?;
                Ok(s)
            })?
    }

    /// Runs a command in the node namespace.
    pub fn node_exec(&self, program: &str, args: &[&str]) -> io::Result<String> {
        let out = self.node.exec(program, args)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every line with `KUBE-` in `ip[6]tables-<variant>-save` (the
    /// plan's family) in the node namespace: what an iptables-speaking
    /// backend left there.
    pub fn kube_iptables_lines(&self, variant: &str) -> Vec<String> {
        let ip = if self.v6() { "ip6tables" } else { "iptables" };
        self.node_exec(&format!("{ip}-{variant}-save"), &[])
            .expect("iptables-save")
            .lines()
            .filter(|l| l.contains("KUBE-"))
            .map(str::to_owned)
            .collect()
    }

    /// Names of every namespace of this topology.
    pub fn namespace_names(&self) -> Vec<String> {
        let mut v = vec![
            self.node.name().to_string(),
            self.ext.name().to_string(),
            self.remote.name().to_string(),
        ];
        v.push(self.client_pod.ns.name().to_string());
        v.extend(self.local.iter().map(|p| p.ns.name().to_string()));
        v
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for s in &self.servers {
            s.abort();
        }
        // Runtimes stop before their namespaces go.
        self.node_rt = None;
        self.remote_rt = None;
        self.client_pod.rt = None;
        for p in &mut self.local {
            p.rt = None;
        }
    }
}
