//! A load tool for the resource tests and benches, in its own process so
//! that the proxy under test has the whole descriptor limit to itself:
//!
//! - `tcp-load server ADDR`: a TCP server that sends `"<ADDR> <peer>\n"`
//!   and then echoes, until killed.
//! - `tcp-load hold ADDR N`: opens N connections to ADDR (500 at a time),
//!   checks each one's greeting, prints `open N` and waits for a line on
//!   stdin; then pings every connection, prints `ok N`, closes them all
//!   and exits.

use std::io::BufRead;
use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let _ = backend_userspace::raise_fd_limit(1 << 20);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let r = match args.get(1).map(String::as_str) {
        Some("server") => rt.block_on(server(args[2].parse().expect("ADDR"))),
        Some("hold") => rt.block_on(hold(
            args[2].parse().expect("ADDR"),
            args[3].parse().expect("N"),
        )),
        _ => Err("usage: tcp-load server ADDR | tcp-load hold ADDR N".into()),
    };
    if let Err(e) = r {
        eprintln!("tcp-load: {e}");
        std::process::exit(1);
    }
}

async fn server(addr: SocketAddr) -> Result<(), String> {
    let l = TcpListener::bind(addr).await.map_err(|e| e.to_string())?;
    println!("listening");
    loop {
        let Ok((mut c, peer)) = l.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = c.write_all(format!("{addr} {peer}\n").as_bytes()).await;
            let (mut r, mut w) = c.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

async fn hold(addr: SocketAddr, n: usize) -> Result<(), String> {
    let mut conns: Vec<BufReader<TcpStream>> = Vec::with_capacity(n);
    while conns.len() < n {
        let batch = (n - conns.len()).min(500);
        let tasks: Vec<_> = (0..batch)
            .map(|_| {
                tokio::spawn(async move {
                    let c = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                    let mut r = BufReader::new(c);
                    let mut line = String::new();
                    r.read_line(&mut line).await.map_err(|e| e.to_string())?;
                    if line.is_empty() {
                        return Err("closed before the greeting".to_string());
                    }
                    Ok::<_, String>(r)
                })
            })
            .collect();
        for t in tasks {
            conns.push(t.await.map_err(|e| e.to_string())??);
        }
    }
    println!("open {}", conns.len());
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    for c in conns.iter_mut() {
        c.get_mut()
            .write_all(b"ping\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        if &buf != b"ping\n" {
            return Err("bad echo".into());
        }
    }
    println!("ok {}", conns.len());
    Ok(())
}
