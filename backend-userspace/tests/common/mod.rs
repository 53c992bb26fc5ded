//! Loopback test helpers: identity servers on 127.x addresses and a
//! tracker + direct-mode proxier pair. No root needed.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use backend_userspace::{Config, DataPath, Direct, Mode, UserspaceProxier};
use proxier_core::{
    ChangeTracker, EndpointSlice, IpFamily, Protocol, Proxier, Service, SyncRequest, SyncStats,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};

pub const TCP: Protocol = Protocol::Tcp;
pub const UDP: Protocol = Protocol::Udp;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP server at `addr` that first sends `"<addr> <peer>\n"`, then
/// echoes until the client half-closes, then sends `"bye\n"` and closes.
pub async fn tcp_server(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let l = TcpListener::bind(addr).await.expect("bind server");
    tokio::spawn(async move {
        loop {
            let Ok((mut c, peer)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = c.write_all(format!("{addr} {peer}\n").as_bytes()).await;
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.write_all(b"bye\n").await;
                let _ = w.shutdown().await;
            });
        }
    })
}

/// A UDP server at `addr` answering `"<addr>|<payload>"`.
pub async fn udp_server(addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let s = UdpSocket::bind(addr).await.expect("bind udp server");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = s.recv_from(&mut buf).await else {
                continue;
            };
            let mut reply = format!("{addr}|").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = s.send_to(&reply, from).await;
        }
    })
}

/// Connects (from `src` if given) and returns the stream and the server
/// line (`"<server> <peer>"`), or the error.
pub async fn tcp_hello(
    src: Option<IpAddr>,
    dst: SocketAddr,
) -> std::io::Result<(BufReader<TcpStream>, String)> {
    let sock = if dst.is_ipv6() {
        TcpSocket::new_v6()?
    } else {
        TcpSocket::new_v4()?
    };
    if let Some(s) = src {
        sock.bind(SocketAddr::new(s, 0))?;
    }
    let c = tokio::time::timeout(Duration::from_secs(5), sock.connect(dst))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let mut r = BufReader::new(c);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok((r, line.trim_end().to_string()))
}

/// The server that answered a TCP connection.
pub async fn tcp_who(src: Option<IpAddr>, dst: SocketAddr) -> std::io::Result<SocketAddr> {
    let (_, line) = tcp_hello(src, dst).await?;
    Ok(line.split(' ').next().unwrap().parse().unwrap())
}

/// Sends `payload` from a fresh socket and returns (server, reply source).
pub async fn udp_who(dst: SocketAddr, payload: &str) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let s = UdpSocket::bind(if dst.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    })
    .await?;
    udp_on(&s, dst, payload).await
}

/// One exchange on `s`.
pub async fn udp_on(
    s: &UdpSocket,
    dst: SocketAddr,
    payload: &str,
) -> std::io::Result<(SocketAddr, SocketAddr)> {
    s.send_to(payload.as_bytes(), dst).await?;
    let mut buf = vec![0u8; 65536];
    let (n, from) = tokio::time::timeout(Duration::from_secs(2), s.recv_from(&mut buf))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    let (server, echoed) = text.split_once('|').expect("reply format");
    assert_eq!(echoed, payload);
    Ok((server.parse().unwrap(), from))
}

/// A tracker and a direct-mode proxier binding cluster IPs and external
/// IPs (loopback addresses are local already).
pub struct Bed {
    pub tracker: ChangeTracker,
    pub proxier: UserspaceProxier,
    synced: bool,
}

impl Bed {
    pub fn new(data: DataPath) -> Bed {
        Bed::with_mode(
            data,
            Mode::Direct(Direct {
                cluster_ips: false,
                external_ips: true,
                node_addresses: vec![ip("127.0.0.1")],
                freebind: false,
            }),
        )
    }

    /// IPv6: node ports on `::1`.
    pub fn v6(data: DataPath) -> Bed {
        Bed {
            tracker: ChangeTracker::new(IpFamily::V6, "node-1").with_loopback_endpoints(true),
            proxier: UserspaceProxier::new(Config {
                family: IpFamily::V6,
                mode: Mode::Direct(Direct {
                    cluster_ips: false,
                    external_ips: true,
                    node_addresses: vec![ip("::1")],
                    freebind: false,
                }),
                data,
            }),
            synced: false,
        }
    }

    pub fn with_mode(data: DataPath, mode: Mode) -> Bed {
        Bed {
            tracker: ChangeTracker::new(IpFamily::V4, "node-1").with_loopback_endpoints(true),
            proxier: UserspaceProxier::new(Config {
                family: IpFamily::V4,
                mode,
                data,
            }),
            synced: false,
        }
    }

    pub async fn apply(&mut self, services: &[Service], slices: &[EndpointSlice]) -> SyncStats {
        for s in services {
            self.tracker.update_service(s).expect("valid service");
        }
        for s in slices {
            self.tracker.update_endpoint_slice(s).expect("valid slice");
        }
        self.sync().await
    }

    pub async fn sync(&mut self) -> SyncStats {
        let (snapshot, changes) = self.tracker.apply();
        let req = SyncRequest {
            snapshot,
            changes,
            full: !self.synced,
            verify: false,
        };
        self.synced = true;
        self.proxier.sync(&req).await.expect("sync")
    }
}

/// Reads everything left on a connection after the hello line.
pub async fn rest(r: &mut BufReader<TcpStream>) -> String {
    let mut s = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_string(&mut s)).await;
    s
}

/// Open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
