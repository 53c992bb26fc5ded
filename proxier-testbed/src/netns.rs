//! Network namespaces made and removed by the test bed.
//!
//! A [`Netns`] is created with `ip netns add` and deleted on drop. Code that
//! must live in the namespace (servers, clients, a proxier and the
//! processes it starts) runs on a thread that entered it with `setns(2)`:
//! sockets and child processes created there belong to the namespace,
//! whatever thread uses them afterwards.

use std::io;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The prefix of every namespace the test bed creates; with the pid it
/// lets a later run remove what a killed run left.
pub const PREFIX: &str = "pxt";

/// A network namespace owned by the test bed.
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

fn run(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// Runs `ip` with the given arguments.
pub fn ip(args: &[&str]) -> io::Result<Output> {
    run(Command::new("ip").args(args))
}

/// Runs a batch of `ip` commands (one per line) in one process, inside a
/// namespace.
pub fn ip_batch(ns: &str, lines: &[String]) -> io::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(lines.join("\n").as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip -n {ns} -batch failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr).trim(),
            lines.join("\n")
        )));
    }
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces left by test-bed processes that no longer exist.
pub fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: Option<u32> = rest.split('x').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid
            && !pid_alive(pid)
        {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Netns {
    /// Creates a namespace named `pxt<pid>x<n>-<role>` with `lo` up.
    pub fn new(role: &str) -> io::Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}x{n}-{role}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name, keep: false };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace (`ip netns exec NAME ...`).
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args))
    }

    /// Like [`exec`](Self::exec) but returns the output even on failure.
    pub fn exec_unchecked(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Writes a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Runs `f` on a new thread that has entered this namespace.
    pub fn enter<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> io::Result<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || -> io::Result<R> {
            enter_path(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
    }

    /// Leaks the namespace on drop (to look at it after a failure).
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_path(path: &str) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path)?;
    // SAFETY: setns takes a valid open descriptor (held by `f` for the
    // duration of the call) and a namespace type flag; it only changes
    // the calling thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
