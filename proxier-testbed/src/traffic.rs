//! Endpoint servers that answer with their identity, and clients that tell
//! a reply from a refusal from a timeout.
//!
//! The reply to each request line (TCP) or datagram (UDP) is
//! `SERVER_IP:PORT CLIENT_IP:PORT PAYLOAD`: the test sees which endpoint
//! answered and which source address it saw (masqueraded or preserved).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Protocol as SProto, SockAddr, Socket, Type};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// What a request got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A reply: who answered, and who it saw as the client.
    Reply {
        /// The endpoint that answered.
        server: SocketAddr,
        /// The client address the endpoint saw.
        peer: SocketAddr,
    },
    /// Refused (TCP RST or ICMP port unreachable): REJECT, or no listener.
    Refused,
    /// No answer in time: DROP, or a black hole.
    Timeout,
    /// Something else went wrong.
    Error(String),
}

impl Outcome {
    /// The endpoint that answered, if any.
    pub fn server(&self) -> Option<SocketAddr> {
        match self {
            Outcome::Reply { server, .. } => Some(*server),
            _ => None,
        }
    }

    /// The client address the endpoint saw, if it answered.
    pub fn peer(&self) -> Option<SocketAddr> {
        match self {
            Outcome::Reply { peer, .. } => Some(*peer),
            _ => None,
        }
    }

    fn parse(line: &str) -> Outcome {
        let mut it = line.split_whitespace();
        match (
            it.next().and_then(|s| s.parse().ok()),
            it.next().and_then(|s| s.parse().ok()),
        ) {
            (Some(server), Some(peer)) => Outcome::Reply { server, peer },
            _ => Outcome::Error(format!("bad reply {line:?}")),
        }
    }

    fn from_err(e: &io::Error) -> Outcome {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => Outcome::Refused,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Outcome::Timeout,
            _ if e.raw_os_error() == Some(libc::EHOSTUNREACH) => Outcome::Refused,
            _ => Outcome::Error(e.to_string()),
        }
    }
}

/// Starts a TCP identity server on `addr` (call inside a namespace
/// runtime). Each line read is answered with the identity line.
pub async fn tcp_server(addr: SocketAddr) -> io::Result<tokio::task::JoinHandle<()>> {
    let l = tokio::net::TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let local = s.local_addr().unwrap_or(addr);
                let (r, mut w) = s.into_split();
                let mut lines = tokio::io::BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if w.write_all(format!("{local} {peer} {line}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
    }))
}

/// Starts a UDP identity server on `addr` (call inside a namespace
/// runtime).
pub async fn udp_server(addr: SocketAddr) -> io::Result<tokio::task::JoinHandle<()>> {
    let s = tokio::net::UdpSocket::bind(addr).await?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, peer)) = s.recv_from(&mut buf).await else {
                continue;
            };
            let msg = format!("{addr} {peer} {}", String::from_utf8_lossy(&buf[..n]));
            let _ = s.send_to(msg.as_bytes(), peer).await;
        }
    }))
}

fn socket(dst: &SocketAddr, ty: Type, proto: SProto, src: Option<IpAddr>) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(*dst), ty, Some(proto))?;
    if let Some(ip) = src {
        s.bind(&SockAddr::from(SocketAddr::new(ip, 0)))?;
    }
    Ok(s)
}

/// Opens a TCP connection (call inside a namespace).
pub fn tcp_connect(
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let s = socket(&dst, Type::STREAM, SProto::TCP, src)?;
    s.connect_timeout(&SockAddr::from(dst), timeout)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

/// One request on an open connection.
pub fn tcp_line(s: &mut TcpStream, payload: &str) -> Outcome {
    if let Err(e) = s.write_all(format!("{payload}\n").as_bytes()) {
        return Outcome::from_err(&e);
    }
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    match r.read_line(&mut line) {
        Ok(0) => Outcome::Error("closed".into()),
        Ok(_) => Outcome::parse(&line),
        Err(e) => Outcome::from_err(&e),
    }
}

/// Connects, sends one line, reads the reply (call inside a namespace).
pub fn tcp_request(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> Outcome {
    match tcp_connect(src, dst, timeout) {
        Ok(mut s) => tcp_line(&mut s, "hello"),
        Err(e) => Outcome::from_err(&e),
    }
}

/// Sends one datagram from a fresh socket and reads the reply (call
/// inside a namespace).
pub fn udp_request(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> Outcome {
    let run = || -> io::Result<Outcome> {
        let s: UdpSocket = socket(&dst, Type::DGRAM, SProto::UDP, src)?.into();
        s.connect(dst)?;
        s.set_read_timeout(Some(timeout))?;
        udp_exchange(&s, "hello")
    };
    run().unwrap_or_else(|e| Outcome::from_err(&e))
}

/// One request/reply on a connected UDP socket (for flows that last).
pub fn udp_exchange(s: &UdpSocket, payload: &str) -> io::Result<Outcome> {
    s.send(payload.as_bytes())?;
    let mut buf = [0u8; 2048];
    match s.recv(&mut buf) {
        Ok(n) => Ok(Outcome::parse(&String::from_utf8_lossy(&buf[..n]))),
        Err(e) => Ok(Outcome::from_err(&e)),
    }
}

/// Reads everything left on a stream (unused bytes after a test).
pub fn drain(s: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}
