//! The data path of one service port: a TCP accept loop or a UDP flow
//! table, sharing the port's [`Balancer`] with the proxier that updates it.
//! kube-proxy's `proxysocket.go`, on tokio.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg,
};
use proxier_core::ServicePortName;
use proxier_core::{Counter, Metrics};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::balancer::Balancer;
use crate::relay::Relay;

/// The dial timeouts of successive connect attempts to endpoints
/// (kube-proxy's `EndpointDialTimeouts`): a refused or slow endpoint
/// makes the proxy try the next one, four attempts in all.
pub const DIAL_TIMEOUTS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Data-path settings shared by every service port.
#[derive(Debug, Clone)]
pub struct DataPath {
    /// How TCP bytes are moved.
    pub relay: Relay,
    /// A UDP flow without traffic either way for this long is closed
    /// (`--udp-timeout`, 250 ms in kube-proxy).
    pub udp_idle_timeout: Duration,
    /// The most UDP flows one service port keeps; datagrams from new
    /// clients beyond it are dropped (and counted) until flows expire.
    pub max_udp_flows: usize,
    /// Datagrams from new clients dropped because a port's flow table
    /// was full, over every port of every proxier built from a clone of
    /// this value (one per family): what [`DataPath::register_metrics`]
    /// serves as `kubeproxy_userspace_udp_flow_table_full_drops_total`.
    pub udp_table_full: Counter,
}

impl DataPath {
    /// Adds this data path's counters to `/metrics`. Call once, with the
    /// value whose clones every family's proxier was built from.
    pub fn register_metrics(&self, metrics: &Metrics) {
        metrics.register(|r| {
            r.register(
                "userspace_udp_flow_table_full_drops",
                "Datagrams from new UDP clients dropped because a service port's flow table was full (--max-udp-flows; proxier's own)",
                self.udp_table_full.clone(),
            );
        });
    }
}

impl Default for DataPath {
    fn default() -> Self {
        DataPath {
            relay: Relay::default(),
            udp_idle_timeout: Duration::from_millis(250),
            max_udp_flows: 16_384,
            udp_table_full: Counter::default(),
        }
    }
}

/// Who may use the load-balancer addresses of a port
/// (`loadBalancerSourceRanges`), checked by the proxy itself so that
/// direct mode honours it too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Firewall {
    /// The load-balancer IPs the ranges apply to.
    pub lb_ips: Vec<IpAddr>,
    /// Allowed client ranges; empty allows everyone.
    pub ranges: Vec<IpNet>,
}

impl Firewall {
    /// Whether `client` may reach `dst`.
    pub fn allows(&self, client: IpAddr, dst: IpAddr) -> bool {
        self.ranges.is_empty()
            || !self.lb_ips.contains(&dst)
            || self.ranges.iter().any(|r| r.contains(&client))
    }
}

/// Counters of one service port.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Open TCP connections and live UDP flows.
    pub active: AtomicUsize,
    /// Connections or flows ever accepted.
    pub accepted: AtomicU64,
    /// Connections closed because no endpoint answered.
    pub no_endpoint: AtomicU64,
    /// Datagrams dropped (flow table full, no endpoint, firewall).
    pub dropped: AtomicU64,
    /// Of those, datagrams from new clients dropped because the UDP flow
    /// table was full (`max_udp_flows`).
    pub table_full: AtomicU64,
    /// When the table-full warning was last logged (ms since the port's
    /// epoch + 1; 0: never), so it is logged at most every 10 s.
    pub table_full_logged: AtomicU64,
    /// Accept errors (out of descriptors and the like).
    pub accept_errors: AtomicU64,
}

/// What the proxier and the data path of one service port share.
#[derive(Debug)]
pub struct PortShared {
    /// The service port, for logs.
    pub name: ServicePortName,
    /// Endpoint choice.
    pub lb: Mutex<Balancer>,
    /// Source ranges.
    pub firewall: Mutex<Firewall>,
    /// Cancelled when the service port goes: closes its listeners and
    /// every connection and flow.
    pub cancel: CancellationToken,
    /// Counters.
    pub counters: PortCounters,
    /// Settings.
    pub data: DataPath,
}

impl PortShared {
    fn pick(&self, client: IpAddr, reset: bool) -> Option<SocketAddr> {
        self.lb
            .lock()
            .expect("balancer lock")
            .pick(client, reset, Instant::now())
            .ok()
    }

    fn allows(&self, client: IpAddr, dst: IpAddr) -> bool {
        self.firewall
            .lock()
            .expect("firewall lock")
            .allows(client, dst)
    }
}

/// Decrements `active` when a connection or flow ends.
struct Active(Arc<PortShared>);

impl Active {
    fn new(p: &Arc<PortShared>) -> Active {
        p.counters.active.fetch_add(1, Ordering::Relaxed);
        p.counters.accepted.fetch_add(1, Ordering::Relaxed);
        Active(p.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The destination the client asked for: the original one when an
/// iptables portal redirected the connection (`SO_ORIGINAL_DST`), else
/// the address the socket was accepted on.
fn original_dst(s: &TcpStream) -> Option<IpAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = s.local_addr().ok()?;
    match local {
        SocketAddr::V4(_) => getsockopt(s, sockopt::OriginalDst)
            .ok()
            .map(|a| IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
            .or(Some(local.ip())),
        SocketAddr::V6(_) => getsockopt(s, sockopt::Ip6tOriginalDst)
            .ok()
            .map(|a| IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
            .or(Some(local.ip())),
    }
}

/// Accepts until the port is cancelled. Accept errors (`EMFILE`, ...) are
/// logged and backed off (5 ms doubling to 1 s), never fatal.
pub async fn serve_tcp(listener: TcpListener, port: Arc<PortShared>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = port.cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((conn, peer)) => {
                backoff = Duration::from_millis(5);
                tokio::spawn(handle_tcp(conn, peer, port.clone()));
            }
            Err(e) => {
                let n = port.counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    warn!(service = %port.name, error = %e, errors = n + 1, "accept failed; backing off");
                }
                tokio::select! {
                    _ = port.cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn handle_tcp(conn: TcpStream, peer: SocketAddr, port: Arc<PortShared>) {
    let _active = Active::new(&port);
    let ranges = !port
        .firewall
        .lock()
        .expect("firewall lock")
        .ranges
        .is_empty();
    if ranges
        && let Some(dst) = original_dst(&conn)
        && !port.allows(peer.ip(), dst)
    {
        debug!(service = %port.name, client = %peer, "outside loadBalancerSourceRanges");
        return;
    }
    let _ = conn.set_nodelay(true);
    let upstream = tokio::select! {
        _ = port.cancel.cancelled() => return,
        u = connect(&port, peer.ip()) => u,
    };
    let Some(upstream) = upstream else {
        port.counters.no_endpoint.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let relay = port.data.relay;
    tokio::select! {
        _ = port.cancel.cancelled() => {}
        r = relay.run(conn, upstream) => {
            if let Err(e) = r {
                debug!(service = %port.name, client = %peer, error = %e, "connection ended");
            }
        }
    }
}

/// `TryConnectEndpoints`: up to four endpoints, each with a growing dial
/// timeout; a failure resets affinity so the next attempt picks anew.
async fn connect(port: &PortShared, client: IpAddr) -> Option<TcpStream> {
    let mut reset = false;
    for timeout in DIAL_TIMEOUTS {
        let ep = port.pick(client, reset)?;
        match tokio::time::timeout(timeout, TcpStream::connect(ep)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Some(s);
            }
            Ok(Err(e)) => debug!(service = %port.name, endpoint = %ep, error = %e, "dial failed"),
            Err(_) => debug!(service = %port.name, endpoint = %ep, "dial timed out"),
        }
        reset = true;
    }
    None
}

/// Turns on the ancillary data that tells which local address a datagram
/// was sent to, so replies leave from it (what conntrack expects for a
/// redirected flow, and what the client expects from a service address).
pub fn enable_pktinfo(sock: &UdpSocket) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    let r = match sock.local_addr()? {
        SocketAddr::V4(_) => setsockopt(sock, sockopt::Ipv4PacketInfo, &true),
        SocketAddr::V6(_) => setsockopt(sock, sockopt::Ipv6RecvPacketInfo, &true),
    };
    r.map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// One datagram in: its length, sender and the local address it was for.
fn recv_from_to(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    )
    .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let from = msg
        .address
        .as_ref()
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|a| SocketAddr::V4(SocketAddrV4::from(*a)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|a| SocketAddr::V6(SocketAddrV6::from(*a)))
                })
        })
        .ok_or_else(|| io::Error::other("datagram without a sender address"))?;
    let mut local = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::Ipv4PacketInfo(i) => {
                    local = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(i.ipi_addr.s_addr))));
                }
                ControlMessageOwned::Ipv6PacketInfo(i) => {
                    local = Some(IpAddr::V6(Ipv6Addr::from(i.ipi6_addr.s6_addr)));
                }
                _ => {}
            }
        }
    }
    Ok((msg.bytes, from, local))
}

/// One datagram out to `to`, from the local address `from` when known.
fn send_from_to(
    sock: &UdpSocket,
    data: &[u8],
    from: Option<IpAddr>,
    to: SocketAddr,
) -> io::Result<usize> {
    let iov = [io::IoSlice::new(data)];
    let dst = SockaddrStorage::from(to);
    let r = match from {
        Some(IpAddr::V4(ip)) if to.is_ipv4() => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv4PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&dst),
            )
        }
        Some(IpAddr::V6(ip)) if to.is_ipv6() => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
                ipi6_ifindex: 0,
            };
            sendmsg(
                sock.as_raw_fd(),
                &iov,
                &[ControlMessage::Ipv6PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&dst),
            )
        }
        _ => sendmsg(sock.as_raw_fd(), &iov, &[], MsgFlags::empty(), Some(&dst)),
    };
    r.map_err(|e| io::Error::from_raw_os_error(e as i32))
}

/// One client's UDP flow to one endpoint.
#[derive(Debug)]
struct Flow {
    upstream: UdpSocket,
    endpoint: SocketAddr,
    /// Milliseconds since `epoch` of the last datagram either way.
    last: AtomicU64,
    cancel: CancellationToken,
}

type Flows = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

thread_local! {
    static REPLY_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 65536]);
}

/// Serves UDP until the port is cancelled: one flow per client address,
/// each with its own connected socket to the chosen endpoint, closed after
/// the idle timeout; replies leave from the address the client used.
pub async fn serve_udp(sock: UdpSocket, port: Arc<PortShared>) {
    let sock = Arc::new(sock);
    let flows: Flows = Arc::default();
    let epoch = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let got = tokio::select! {
            _ = port.cancel.cancelled() => return,
            r = sock.async_io(Interest::READABLE, || recv_from_to(&sock, &mut buf)) => r,
        };
        let (n, client, local) = match got {
            Ok(v) => v,
            Err(e) => {
                debug!(service = %port.name, error = %e, "udp receive");
                continue;
            }
        };
        let now_ms = epoch.elapsed().as_millis() as u64;
        let existing = flows.lock().expect("flows").get(&client).cloned();
        let flow = match existing {
            Some(f) if port.lb.lock().expect("balancer lock").has(&f.endpoint) => f,
            stale => {
                if let Some(f) = stale {
                    // Its endpoint is gone: the next datagram goes elsewhere.
                    f.cancel.cancel();
                    flows.lock().expect("flows").remove(&client);
                }
                match new_flow(&sock, &port, &flows, client, local, epoch) {
                    Some(f) => f,
                    None => {
                        port.counters.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
        };
        flow.last.store(now_ms, Ordering::Relaxed);
        // Straight to the kernel: a fresh socket has no readiness in tokio
        // yet, and a UDP send that would block is a drop anyway.
        if socket2::SockRef::from(&flow.upstream)
            .send(&buf[..n])
            .is_err()
        {
            port.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn new_flow(
    sock: &Arc<UdpSocket>,
    port: &Arc<PortShared>,
    flows: &Flows,
    client: SocketAddr,
    local: Option<IpAddr>,
    epoch: Instant,
) -> Option<Arc<Flow>> {
    if let Some(dst) = local
        && !port.allows(client.ip(), dst)
    {
        return None;
    }
    let live = flows.lock().expect("flows").len();
    if live >= port.data.max_udp_flows {
        let c = &port.counters;
        let dropped = c.table_full.fetch_add(1, Ordering::Relaxed) + 1;
        port.data.udp_table_full.inc();
        let now = epoch.elapsed().as_millis() as u64 + 1;
        let last = c.table_full_logged.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000)
            && c.table_full_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(
                service = %port.name,
                flows = live,
                max_udp_flows = port.data.max_udp_flows,
                dropped_so_far = dropped,
                "UDP flow table full: datagrams from new clients are dropped until flows idle out (logged at most every 10 s)"
            );
        }
        return None;
    }
    let endpoint = port.pick(client.ip(), false)?;
    let bind: SocketAddr = match endpoint {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let upstream = std::net::UdpSocket::bind(bind)
        .and_then(|s| {
            s.connect(endpoint)?;
            s.set_nonblocking(true)?;
            UdpSocket::from_std(s)
        })
        .map_err(|e| debug!(service = %port.name, endpoint = %endpoint, error = %e, "udp flow"))
        .ok()?;
    let flow = Arc::new(Flow {
        upstream,
        endpoint,
        last: AtomicU64::new(epoch.elapsed().as_millis() as u64),
        cancel: port.cancel.child_token(),
    });
    flows.lock().expect("flows").insert(client, flow.clone());
    tokio::spawn(flow_replies(
        sock.clone(),
        port.clone(),
        flows.clone(),
        flow.clone(),
        client,
        local,
        epoch,
    ));
    Some(flow)
}

/// Replies of one flow back to its client, until it idles out, its
/// endpoint refuses, or it is cancelled.
async fn flow_replies(
    sock: Arc<UdpSocket>,
    port: Arc<PortShared>,
    flows: Flows,
    flow: Arc<Flow>,
    client: SocketAddr,
    local: Option<IpAddr>,
    epoch: Instant,
) {
    let _active = Active::new(&port);
    let idle = port.data.udp_idle_timeout;
    loop {
        let since = epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(flow.last.load(Ordering::Relaxed)));
        if since >= idle {
            break;
        }
        let ready = tokio::select! {
            _ = flow.cancel.cancelled() => break,
            r = tokio::time::timeout(idle - since, flow.upstream.readable()) => r,
        };
        match ready {
            Err(_) => continue, // re-check the idle time
            Ok(Err(_)) => break,
            Ok(Ok(())) => {}
        }
        let r = REPLY_BUF.with_borrow_mut(|buf| match flow.upstream.try_recv(buf) {
            Ok(n) => {
                flow.last
                    .store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                // A full socket buffer drops the datagram, as UDP may.
                if send_from_to(&sock, &buf[..n], local, client).is_err() {
                    port.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        });
        if r.is_err() {
            // ICMP unreachable from the endpoint: end the flow.
            break;
        }
    }
    let mut map = flows.lock().expect("flows");
    if map.get(&client).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
        map.remove(&client);
    }
}
