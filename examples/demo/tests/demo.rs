//! The README's first command, run as a user would: the demo starts,
//! answers through its node port, and on SIGTERM stops and removes the
//! manifest copy it made.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

const DEMO: &str = env!("CARGO_BIN_EXE_demo");

/// The demo process, killed if the test fails before it is stopped.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut s = String::new();
    c.read_to_string(&mut s).unwrap();
    s
}

/// The README's first command: started, curled, stopped.
#[test]
fn demo_starts_answers_and_stops() {
    let mut demo = Demo(
        Command::new(DEMO)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut demo.0;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    loop {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("demo ended early: {seen:?} {err}");
        }
        seen.push(l.trim_end().to_string());
        // The last line it prints before serving names the manifest copy.
        if l.starts_with("edit ") {
            break;
        }
    }
    let spread = seen
        .iter()
        .find(|l| l.contains("requests through 127.0.0.1:30080"))
        .unwrap();
    for ep in [
        "127.0.0.11:8080 ×3",
        "127.0.0.12:8080 ×3",
        "127.0.0.13:8080 ×3",
    ] {
        assert!(spread.contains(ep), "{spread}");
    }
    let mut who = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let r = http_get("127.0.0.1:30080");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        who.insert(
            r.split("hello from endpoint ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(who.len(), 3, "{who:?}");
    // The manifest copy it names.
    let copy = seen
        .iter()
        .find_map(|l| l.strip_prefix("edit ").and_then(|r| r.split(' ').next()))
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&copy).exists(), "{copy}");
    // SIGTERM, as `kill` and a service manager send.
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    // Stopped: nothing listens any more, and the copy is gone.
    assert!(TcpStream::connect("127.0.0.1:30080").is_err());
    assert!(!std::path::Path::new(&copy).exists(), "{copy} left behind");
}
