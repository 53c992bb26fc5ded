//! The data-plane wire protocol of the benches: one server that echoes
//! or sinks, a connect + 1-byte echo probe, and a bulk sender.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Bytes per bulk chunk.
pub const CHUNK: usize = 8 << 20;

/// The server: a first byte `s` switches the connection to sink mode
/// (8-byte length, that many bytes, one ack byte, repeat); anything else
/// is echoed, and so is the rest.
pub fn serve(conn: std::net::TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut c = conn;
    let mut first = [0u8; 1];
    if c.read_exact(&mut first).is_err() {
        return;
    }
    if first[0] == b's' {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let mut len = [0u8; 8];
            if c.read_exact(&mut len).is_err() {
                return;
            }
            let mut left = u64::from_le_bytes(len) as usize;
            while left > 0 {
                match c.read(&mut buf[..left.min(1 << 20)]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left -= n,
                }
            }
            if c.write_all(b"k").is_err() {
                return;
            }
        }
    }
    if c.write_all(&first).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if c.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// Accepts on `l` forever, one thread per connection.
pub fn serve_forever(l: std::net::TcpListener) {
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || serve(c));
        }
    });
}

/// Connect, send one byte, read it back: the time it took.
pub fn echo_once(addr: SocketAddr) -> Duration {
    let t = Instant::now();
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    // Close with a reset: tens of thousands of probes from one address
    // would otherwise run out of ports in TIME_WAIT.
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    c.write_all(b"e").expect("write");
    let mut b = [0u8; 1];
    c.read_exact(&mut b).expect("echo");
    t.elapsed()
}

/// A connection in sink mode: [`Bulk::chunk`] sends [`CHUNK`] bytes and
/// waits for the server's ack.
#[derive(Debug)]
pub struct Bulk {
    c: TcpStream,
    data: Vec<u8>,
}

impl Bulk {
    /// Connects to `addr` and switches it to sink mode.
    pub fn new(addr: SocketAddr) -> Bulk {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"s").expect("mode");
        Bulk {
            c,
            data: vec![7u8; CHUNK],
        }
    }
    /// One chunk, acknowledged.
    pub fn chunk(&mut self) {
        self.c
            .write_all(&(CHUNK as u64).to_le_bytes())
            .expect("len");
        self.c.write_all(&self.data).expect("data");
        let mut k = [0u8; 1];
        self.c.read_exact(&mut k).expect("ack");
    }
}
