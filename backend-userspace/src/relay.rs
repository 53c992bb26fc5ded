//! Moving bytes between a client and an endpoint: two ways, one switch.
//!
//! - [`Relay::Copy`]: `read`/`write` through a user-space buffer per
//!   direction. The buffer is taken only while bytes are flowing and given
//!   back when the socket runs dry, so an idle connection holds none.
//! - [`Relay::Splice`]: `splice(2)` socket → pipe → socket, so the bytes
//!   never enter user space. Costs a pipe (two descriptors) per direction.
//!
//! Both half-close: when one side finishes sending, the other side's
//! write half is shut down (`shutdown(SHUT_WR)`) and the opposite
//! direction carries on until it finishes too. The choice between them is
//! made by the numbers in `benches/userspace.rs` (see the crate docs).

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// How TCP bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// User-space copy with a buffer of this many bytes per direction.
    Copy {
        /// Buffer size per direction.
        buffer: usize,
    },
    /// `splice(2)` through a pipe of this many bytes per direction.
    Splice {
        /// Pipe capacity per direction (`F_SETPIPE_SZ`).
        pipe: usize,
    },
}

impl Default for Relay {
    fn default() -> Self {
        Relay::Copy { buffer: 64 * 1024 }
    }
}

impl Relay {
    /// Parses `copy`, `copy:BYTES`, `splice` or `splice:BYTES`.
    pub fn parse(s: &str) -> Option<Relay> {
        let (kind, size) = match s.split_once(':') {
            Some((k, n)) => (k, Some(n.parse::<usize>().ok().filter(|n| *n >= 4096)?)),
            None => (s, None),
        };
        match kind {
            "copy" => Some(Relay::Copy {
                buffer: size.unwrap_or(64 * 1024),
            }),
            "splice" => Some(Relay::Splice {
                pipe: size.unwrap_or(256 * 1024),
            }),
            _ => None,
        }
    }

    /// Relays until both directions are finished or one fails. Returns
    /// the bytes moved client → endpoint and endpoint → client.
    pub async fn run(self, client: TcpStream, upstream: TcpStream) -> io::Result<(u64, u64)> {
        match self {
            Relay::Copy { buffer } => tokio::try_join!(
                copy_one(&client, &upstream, buffer),
                copy_one(&upstream, &client, buffer)
            ),
            Relay::Splice { pipe } => {
                let a = Pipe::new(pipe)?;
                let b = Pipe::new(pipe)?;
                tokio::try_join!(
                    a.pump(&client, &upstream, pipe),
                    b.pump(&upstream, &client, pipe)
                )
            }
        }
    }
}

thread_local! {
    /// Buffers not in use, per worker thread: an idle connection holds
    /// none, and a busy one does not allocate (or zero) one per read.
    static POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer from the pool, returned to it when dropped.
struct Pooled(Vec<u8>);

impl Pooled {
    fn take(size: usize) -> Pooled {
        let b = POOL
            .with_borrow_mut(|p| p.pop())
            .filter(|b| b.len() == size)
            .unwrap_or_else(|| vec![0u8; size]);
        Pooled(b)
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let b = std::mem::take(&mut self.0);
        POOL.with_borrow_mut(|p| {
            if p.len() < 64 {
                p.push(b);
            }
        });
    }
}

/// One direction by copy: wait until `src` is readable, then read and
/// write until it runs dry; the buffer goes back to the pool while waiting.
async fn copy_one(src: &TcpStream, dst: &TcpStream, size: usize) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        src.readable().await?;
        let mut buf = Pooled::take(size);
        let buf = &mut buf.0;
        loop {
            let n = match src.try_read(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            if n == 0 {
                let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                return Ok(total);
            }
            let mut off = 0;
            while off < n {
                dst.writable().await?;
                match dst.try_write(&buf[off..n]) {
                    Ok(m) => off += m,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            total += n as u64;
        }
    }
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

impl Pipe {
    fn new(size: usize) -> io::Result<Pipe> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(errno)?;
        // A larger pipe moves more per call; the default (64 KiB) is kept
        // when the system limit (`/proc/sys/fs/pipe-max-size`) refuses.
        let _ = fcntl(
            &write,
            FcntlArg::F_SETPIPE_SZ(size.min(i32::MAX as usize) as i32),
        );
        Ok(Pipe { read, write })
    }

    /// One direction: `src` → pipe → `dst` until `src` ends, then
    /// `shutdown(SHUT_WR)` on `dst`.
    async fn pump(&self, src: &TcpStream, dst: &TcpStream, chunk: usize) -> io::Result<u64> {
        let flags = SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE;
        let mut total = 0u64;
        loop {
            let n = src
                .async_io(Interest::READABLE, || {
                    splice(src.as_fd(), None, self.write.as_fd(), None, chunk, flags).map_err(errno)
                })
                .await?;
            if n == 0 {
                // The peer finished sending: pass the half-close on.
                let _ = socket2::SockRef::from(dst).shutdown(Shutdown::Write);
                return Ok(total);
            }
            let mut left = n;
            while left > 0 {
                let m = dst
                    .async_io(Interest::WRITABLE, || {
                        splice(self.read.as_fd(), None, dst.as_fd(), None, left, flags)
                            .map_err(errno)
                    })
                    .await?;
                if m == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                left -= m;
            }
            total += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[test]
    fn parse() {
        assert_eq!(Relay::parse("copy"), Some(Relay::Copy { buffer: 65536 }));
        assert_eq!(
            Relay::parse("splice:1048576"),
            Some(Relay::Splice { pipe: 1048576 })
        );
        assert_eq!(Relay::parse("splice:12"), None);
        assert_eq!(Relay::parse("zerocopy"), None);
    }

    /// Each relay moves a large payload both ways and passes half-closes
    /// on: the client shuts down its write half, still reads the whole
    /// answer, and then sees the end.
    #[tokio::test]
    async fn both_relays_move_bytes_and_half_close() {
        for relay in [Relay::Copy { buffer: 16384 }, Relay::Splice { pipe: 65536 }] {
            let (mut client, proxy_in) = pair().await;
            let (proxy_out, mut server) = pair().await;
            let task = tokio::spawn(relay.run(proxy_in, proxy_out));
            let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let sent = payload.clone();
            let writer = tokio::spawn(async move {
                client.write_all(&sent).await.unwrap();
                client.shutdown().await.unwrap();
                let mut back = Vec::new();
                client.read_to_end(&mut back).await.unwrap();
                back
            });
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), payload.len(), "{relay:?}");
            assert!(got == payload, "{relay:?}: bytes differ");
            // The server answers after the client's half-close.
            server.write_all(b"after half-close").await.unwrap();
            server.shutdown().await.unwrap();
            let back = writer.await.unwrap();
            assert_eq!(back, b"after half-close");
            let (up, down) = task.await.unwrap().unwrap();
            assert_eq!((up, down), (payload.len() as u64, 16), "{relay:?}");
        }
    }
}
