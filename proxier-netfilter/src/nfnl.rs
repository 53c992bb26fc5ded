//! A `NETLINK_NETFILTER` socket on tokio: opened (and so bound to a network
//! namespace) by the thread that creates it, registered with the reactor
//! on first use. Conntrack (ctnetlink) and nf_tables both speak through it.

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols};
use tokio::io::unix::AsyncFd;

/// The socket, registered with the tokio reactor on first use (so that
/// [`crate::ConntrackNetlink::new`] needs no runtime, and the socket still
/// belongs to the namespace of the thread that created it).
pub struct NfnlSocket(Sock);

impl std::fmt::Debug for NfnlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NfnlSocket")
    }
}

/// The socket before and after its registration with the reactor.
enum Sock {
    Idle(Option<Socket>),
    Ready(AsyncFd<Socket>),
}

impl Sock {
    fn ready(&mut self) -> io::Result<&AsyncFd<Socket>> {
        if let Sock::Idle(s) = self {
            let s = s.take().ok_or_else(|| io::Error::other("socket lost"))?;
            // tokio 1.54 deprecates the safe constructor because some
            // types hand out a file descriptor they do not own; a
            // `netlink_sys::Socket` owns its descriptor until it is dropped
            // with the `AsyncFd`, which is what `register` asks for.
            #[allow(deprecated)]
            let fd = AsyncFd::new(s)?;
            *self = Sock::Ready(fd);
        }
        match self {
            Sock::Ready(fd) => Ok(fd),
            Sock::Idle(_) => unreachable!("registered above"),
        }
    }

    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        let fd = self.ready()?;
        loop {
            let mut guard = fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send(buf, 0)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    async fn send_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.ready()?;
        let iov: Vec<std::io::IoSlice<'_>> =
            bufs.iter().map(|b| std::io::IoSlice::new(b)).collect();
        loop {
            let mut guard = fd.writable().await?;
            match guard.try_io(|s| {
                nix::sys::socket::sendmsg::<nix::sys::socket::NetlinkAddr>(
                    s.get_ref().as_raw_fd(),
                    &iov,
                    &[],
                    nix::sys::socket::MsgFlags::empty(),
                    None,
                )
                .map_err(io::Error::from)
            }) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    async fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        let fd = self.ready()?;
        loop {
            let mut guard = fd.readable().await?;
            match guard.try_io(|s| s.get_ref().recv(buf, 0)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}

impl NfnlSocket {
    /// Opens, binds and connects a `NETLINK_NETFILTER` socket in the
    /// calling thread's network namespace, non-blocking, with a 1 MiB
    /// receive buffer and short acknowledgements. Needs no runtime; its
    /// first use must be inside one.
    pub fn open() -> io::Result<NfnlSocket> {
        let mut s = Socket::new(protocols::NETLINK_NETFILTER)?;
        s.bind_auto()?;
        s.connect(&SocketAddr::new(0, 0))?;
        s.set_non_blocking(true)?;
        let _ = s.set_cap_ack(true);
        let _ = s.set_ext_ack(true);
        let _ = s.set_rx_buf_sz(1 << 20);
        Ok(NfnlSocket(Sock::Idle(Some(s))))
    }

    /// Makes the kernel accept a datagram of `bytes` in one `sendmsg`
    /// (an nf_tables batch must arrive whole): `SO_SNDBUFFORCE`, or
    /// `SO_SNDBUF` without `CAP_NET_ADMIN`.
    pub fn ensure_send_buffer(&mut self, bytes: usize) -> io::Result<()> {
        use nix::sys::socket::{setsockopt, sockopt};
        let s: &Socket = match &self.0 {
            Sock::Idle(Some(s)) => s,
            Sock::Ready(fd) => fd.get_ref(),
            Sock::Idle(None) => return Err(io::Error::other("socket lost")),
        };
        setsockopt(s, sockopt::SndBufForce, &bytes)
            .or_else(|_| setsockopt(s, sockopt::SndBuf, &bytes))
            .map_err(io::Error::from)
    }

    /// Sends one buffer (one or more netlink messages).
    pub async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.send(buf).await
    }

    /// Sends buffers as one datagram (one `sendmsg` gathering them: an
    /// nf_tables batch in chunks).
    pub async fn send_vectored(&mut self, bufs: &[&[u8]]) -> io::Result<()> {
        self.0.send_vectored(bufs).await
    }

    /// Receives one datagram into `buf` (its spare capacity).
    pub async fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        self.0.recv(buf).await
    }
}
