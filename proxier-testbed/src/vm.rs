//! A small VM with a real IPVS kernel: Debian's `linux-image-cloud-amd64`
//! under qemu (software emulation), booted from an initramfs that holds
//! busybox, iproute2, ipvsadm, ipset, iptables (nft and legacy), conntrack,
//! the netfilter/IPVS/bridge/dummy/veth modules and the test binary.
//!
//! [`delegate`] makes a `#[test]` run its body inside the VM: on the host
//! it boots the VM, runs the same test binary there with `--exact NAME`,
//! streams the output and turns the result line into pass or fail; inside
//! the VM (`PROXIER_IN_VM=1`) it runs the body.
//!
//! By hand: `cargo run -p proxier-testbed --bin vm-run -- BINARY [ARGS...]`.

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable set inside the VM.
pub const IN_VM: &str = "PROXIER_IN_VM";
const RESULT: &str = "PROXIER-VM-RESULT";

/// Whether this process runs inside the test VM.
pub fn in_vm() -> bool {
    std::env::var_os(IN_VM).is_some()
}

/// What a VM run produced.
#[derive(Debug, Clone)]
pub struct VmRun {
    /// The inner command's exit status (`None`: no result line, e.g. a
    /// timeout or a kernel panic).
    pub status: Option<i32>,
    /// Everything the VM printed.
    pub output: String,
    /// Boot to power-off.
    pub elapsed: Duration,
}

impl VmRun {
    /// The inner command exited 0.
    pub fn passed(&self) -> bool {
        self.status == Some(0)
    }
}

/// The installed cloud kernel: `(version, vmlinuz path)`.
pub fn kernel() -> io::Result<(String, PathBuf)> {
    let mut found: Vec<String> = std::fs::read_dir("/boot")?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|v| {
            v.contains("cloud") && Path::new(&format!("/lib/modules/{v}/modules.dep")).exists()
        })
        .collect();
    found.sort();
    let v = found.pop().ok_or_else(|| {
        io::Error::other(
            "no /boot/vmlinuz-*cloud* kernel with modules: apt-get install linux-image-cloud-amd64",
        )
    })?;
    Ok((v.clone(), PathBuf::from(format!("/boot/vmlinuz-{v}"))))
}

fn which(name: &str) -> io::Result<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return std::fs::canonicalize(p);
        }
    }
    Err(io::Error::other(format!("{name} not installed")))
}

fn ldd(path: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(path).output()?;
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(s.lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect())
}

fn copy_into(root: &Path, src: &Path) -> io::Result<()> {
    let dst = root.join(src.strip_prefix("/").unwrap_or(src));
    if dst.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dst.parent().expect("has parent"))?;
    std::fs::copy(src, &dst)?;
    Ok(())
}

fn copy_with_libs(root: &Path, src: &Path) -> io::Result<()> {
    copy_into(root, src)?;
    for lib in ldd(src)? {
        copy_into(root, &lib)?;
    }
    Ok(())
}

fn cpio(dir: &Path, out: &Path, gzip: bool) -> io::Result<()> {
    let cmd = if gzip {
        format!(
            "find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            out.display()
        )
    } else {
        format!("find . | cpio -o -H newc --quiet > '{}'", out.display())
    };
    let st = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .status()?;
    if !st.success() {
        return Err(io::Error::other("cpio failed"));
    }
    Ok(())
}

/// Modules loaded at boot (the rest load on demand through modprobe).
const BOOT_MODULES: &[&str] = &[
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_lc",
    "ip_vs_wlc",
    "ip_vs_sh",
    "ip_vs_mh",
    "ip_vs_sed",
    "ip_vs_nq",
    "dummy",
    "veth",
    "nf_conntrack",
    "nf_conntrack_netlink",
    "nf_nat",
    "xt_ipvs",
    "ip_set",
    // nf_tables on demand races the first `iptables-nft` call after boot
    // ("Could not fetch rule set generation id: Invalid argument"), which
    // failed a first sync now and then (embed_ipvs).
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
];

fn module_closure(version: &str) -> io::Result<Vec<String>> {
    let base = format!("/lib/modules/{version}");
    let dep = std::fs::read_to_string(format!("{base}/modules.dep"))?;
    let deps: std::collections::HashMap<&str, Vec<&str>> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (m, d.split_whitespace().collect()))
        .collect();
    let wanted = |m: &str| {
        m.starts_with("kernel/net/netfilter/")
            || m.starts_with("kernel/net/ipv4/netfilter/")
            || m.starts_with("kernel/net/ipv6/netfilter/")
            || m.starts_with("kernel/net/bridge/")
            || m == "kernel/drivers/net/dummy.ko"
            || m == "kernel/drivers/net/veth.ko"
    };
    let mut out = std::collections::BTreeSet::new();
    let mut stack: Vec<&str> = deps.keys().copied().filter(|m| wanted(m)).collect();
    while let Some(m) = stack.pop() {
        if out.insert(m.to_string()) {
            stack.extend(deps.get(m).into_iter().flatten().copied());
        }
    }
    Ok(out.into_iter().collect())
}

fn cache_dir() -> PathBuf {
    // target/ of the workspace: the test binary lives in target/*/deps.
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/tmp/x"));
    let target = exe
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    target.join("proxier-vm")
}

/// Builds (once, cached) the base archive: tools, libraries, modules.
pub fn base_image() -> io::Result<PathBuf> {
    let (version, _) = kernel()?;
    let dir = cache_dir();
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("base-{version}-v2.cpio.gz"));
    if out.exists() {
        return Ok(out);
    }
    let stage = dir.join(format!("stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "etc", "var",
        "lib64",
    ] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::os::unix::fs::symlink("../run", stage.join("var/run"))?;
    let busybox = which("busybox")?;
    std::fs::copy(&busybox, stage.join("bin/busybox"))?;
    for app in [
        "sh", "mount", "umount", "modprobe", "insmod", "poweroff", "sleep", "cat", "echo", "ls",
        "mkdir", "nc", "grep", "sysctl", "ps", "kill", "uname", "true", "false", "sed", "wc",
        "head", "tr",
    ] {
        std::os::unix::fs::symlink("/bin/busybox", stage.join("bin").join(app))?;
    }
    std::os::unix::fs::symlink("/bin/busybox", stage.join("sbin/modprobe"))?;
    for tool in [
        "ip",
        "ipvsadm",
        "ipset",
        "conntrack",
        "xtables-nft-multi",
        "xtables-legacy-multi",
        "nft",
    ] {
        if let Ok(p) = which(tool) {
            copy_with_libs(&stage, &p)?;
            let name = p.file_name().expect("file");
            if !stage.join("usr/sbin").join(name).exists() {
                std::os::unix::fs::symlink(&p, stage.join("usr/sbin").join(name))?;
            }
        }
    }
    let nft = which("xtables-nft-multi")?;
    let legacy = which("xtables-legacy-multi")?;
    for fam in ["iptables", "ip6tables"] {
        for suffix in ["", "-save", "-restore"] {
            let l = |v: &str| stage.join(format!("usr/sbin/{fam}-{v}{suffix}"));
            std::os::unix::fs::symlink(&nft, l("nft"))?;
            std::os::unix::fs::symlink(&legacy, l("legacy"))?;
            std::os::unix::fs::symlink(&nft, stage.join(format!("usr/sbin/{fam}{suffix}")))?;
        }
    }
    let xt = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    if xt.exists() {
        for e in std::fs::read_dir(xt)?.flatten() {
            copy_with_libs(&stage, &e.path())?;
        }
    }
    for f in ["/etc/protocols", "/etc/services", "/etc/ethertypes"] {
        if Path::new(f).exists() {
            copy_into(&stage, Path::new(f))?;
        }
    }
    let mods = format!("lib/modules/{version}");
    for m in module_closure(&version)? {
        copy_into(&stage, &Path::new("/").join(&mods).join(&m))?;
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let p = Path::new("/").join(&mods).join(f);
        if p.exists() {
            copy_into(&stage, &p)?;
        }
    }
    let st = Command::new("depmod")
        .args(["-b"])
        .arg(&stage)
        .arg(&version)
        .status()?;
    if !st.success() {
        return Err(io::Error::other("depmod failed"));
    }
    let st = Command::new("mknod")
        .arg(stage.join("dev/console"))
        .args(["c", "5", "1"])
        .status()?;
    if !st.success() {
        return Err(io::Error::other("mknod /dev/console failed (needs root)"));
    }
    let tmp = dir.join(format!("base-{}.tmp", std::process::id()));
    cpio(&stage, &tmp, true)?;
    std::fs::rename(&tmp, &out)?;
    let _ = std::fs::remove_dir_all(&stage);
    Ok(out)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Boots the VM, runs `binary args...` inside it (with `PROXIER_IN_VM=1`
/// and `env`), streams its output to stderr, and returns its exit status.
pub fn run(
    binary: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<VmRun> {
    run_with_files(binary, &[], args, env, timeout)
}

/// [`run`], with more programs copied into the VM at the same absolute
/// paths (stripped of debug info), with their libraries: a test can then
/// run `env!("CARGO_BIN_EXE_...")` inside the VM.
pub fn run_with_files(
    binary: &Path,
    extra: &[&Path],
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<VmRun> {
    let (version, vmlinuz) = kernel()?;
    let base = base_image()?;
    let dir = cache_dir();
    let stage = tempdir_in(&dir)?;
    std::fs::create_dir_all(stage.join("bin"))?;
    // Strip debug info: the binary is copied into RAM.
    let bin = stage.join("bin/test");
    let st = Command::new("strip")
        .args(["-g", "-o"])
        .arg(&bin)
        .arg(binary)
        .status()?;
    if !st.success() {
        std::fs::copy(binary, &bin)?;
    }
    for lib in ldd(binary)? {
        copy_into(&stage, &lib)?;
    }
    for f in extra {
        let dst = stage.join(f.strip_prefix("/").unwrap_or(f));
        std::fs::create_dir_all(dst.parent().expect("has parent"))?;
        let st = Command::new("strip")
            .args(["-g", "-o"])
            .arg(&dst)
            .arg(f)
            .stderr(Stdio::null())
            .status()?;
        if !st.success() {
            std::fs::copy(f, &dst)?;
        }
        for lib in ldd(f)? {
            copy_into(&stage, &lib)?;
        }
    }
    let mut init = String::from(
        "#!/bin/sh\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n\
         mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n\
         mount -t tmpfs tmpfs /run; mkdir -p /tmp /run/netns\n",
        // (No tmpfs on /tmp: the root is already in RAM, and files copied
        // in at their host paths may live under /tmp.)
    );
    init.push_str(&format!(
        "for m in {}; do modprobe $m || echo \"modprobe $m failed\"; done\n",
        BOOT_MODULES.join(" ")
    ));
    init.push_str("ip link set lo up\necho 1 > /proc/sys/net/ipv4/vs/conntrack 2>/dev/null\n");
    init.push_str(&format!("export {IN_VM}=1 RUST_BACKTRACE=1 HOME=/tmp\n"));
    for (k, v) in env {
        init.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    init.push_str("echo PROXIER-VM-BOOTED $(uname -r)\ncd /tmp\n/bin/test");
    for a in args {
        init.push(' ');
        init.push_str(&shell_quote(a));
    }
    init.push_str(&format!("\necho \"{RESULT} $?\"\npoweroff -f\n"));
    let init_path = stage.join("init");
    std::fs::write(&init_path, init)?;
    std::fs::set_permissions(
        &init_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let run_cpio = dir.join(format!("run-{}.cpio.gz", unique()));
    cpio(&stage, &run_cpio, true)?;
    let initrd = dir.join(format!("initrd-{}.img", unique()));
    {
        let mut f = std::fs::File::create(&initrd)?;
        let b = std::fs::read(&base)?;
        f.write_all(&b)?;
        // The kernel looks for the next archive after zero padding.
        f.write_all(&vec![0u8; (512 - b.len() % 512) % 512])?;
        f.write_all(&std::fs::read(&run_cpio)?)?;
    }
    let _ = std::fs::remove_file(&run_cpio);
    let _ = std::fs::remove_dir_all(&stage);

    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-m",
            "1024",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
        ])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut output = String::new();
    let mut status = None;
    let deadline = start + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                eprintln!("[vm {version}] {line}");
                if let Some(rest) = line.strip_prefix(RESULT) {
                    status = rest.trim().parse().ok();
                }
                output.push_str(&line);
                output.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    output.push_str(&format!("timed out after {timeout:?}\n"));
                    let _ = child.kill();
                    break;
                }
            }
        }
    }
    let _ = child.wait();
    let _ = reader.join();
    let _ = std::fs::remove_file(&initrd);
    Ok(VmRun {
        status,
        output,
        elapsed: start.elapsed(),
    })
}

fn unique() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn tempdir_in(dir: &Path) -> io::Result<PathBuf> {
    let p = dir.join(format!("stage-run-{}", unique()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// Runs a test's body inside the VM. Call it as the whole body of a
/// `#[test]` named `name`: on the host it boots the VM and runs this same
/// test there (failing if it fails there); inside the VM it runs `body`.
pub fn delegate(name: &str, body: impl FnOnce()) {
    delegate_with(name, &[], body)
}

/// [`delegate`], with more programs copied into the VM (see
/// [`run_with_files`]).
pub fn delegate_with(name: &str, extra: &[&str], body: impl FnOnce()) {
    if in_vm() {
        body();
        return;
    }
    let exe = std::env::current_exe().expect("current exe");
    let extra: Vec<&Path> = extra.iter().map(Path::new).collect();
    let r = run_with_files(
        &exe,
        &extra,
        &["--exact", name, "--nocapture", "--test-threads", "1"],
        &[],
        Duration::from_secs(600),
    )
    .expect("could not start the VM");
    assert!(
        r.passed(),
        "{name} failed inside the VM (status {:?}, {:?}):\n{}",
        r.status,
        r.elapsed,
        r.output
    );
    // The inner harness must have run exactly this test.
    assert!(
        r.output.contains("1 passed"),
        "{name} did not run inside the VM:\n{}",
        r.output
    );
}
