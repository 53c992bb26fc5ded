//! The real tools on the real kernel, in a throwaway namespace: foreign
//! rules survive, failures leave the previous rules in force and the next
//! sync converges, IPv6 loads through ip6tables-restore.

use std::net::IpAddr;
use std::sync::Arc;

use backend_iptables::{Config, IptablesProxier};
use proxier_core::{ChangeTracker, IpFamily, Protocol, Proxier, SyncRequest};
use proxier_netfilter::{ConntrackNetlink, IptablesCmd, LocalDetector, Variant};
use proxier_testbed::{Netns, NsRuntime};
use proxier_testbed::{ep, service, slice};

const P: [(&str, u16, Protocol); 2] = [("http", 80, Protocol::Tcp), ("dns", 53, Protocol::Udp)];

struct Rig {
    ns: Netns,
    rt: NsRuntime,
    tracker: ChangeTracker,
    proxier: Option<IptablesProxier>,
    variant: Variant,
    family: IpFamily,
    first: bool,
}

impl Rig {
    fn new(variant: Variant, family: IpFamily, lock_wait: u32, flush_threshold: usize) -> Rig {
        let ns = Netns::new("ipt").unwrap();
        let rt = NsRuntime::start(&ns).unwrap();
        let mut cmd = IptablesCmd::new(family, variant);
        cmd.lock_wait_secs = lock_wait;
        let cidr = if family == IpFamily::V4 {
            "10.0.0.0/16"
        } else {
            "fd00:1::/64"
        };
        let cfg = Config {
            family,
            local_detector: LocalDetector::ClusterCidr(vec![cidr.parse().unwrap()]),
            ..Config::default()
        };
        let proxier = IptablesProxier::new(
            cfg,
            Arc::new(cmd),
            Arc::new(ConntrackNetlink::new().unwrap()),
            Arc::new(proxier_netfilter::ProcSys),
        )
        .unwrap()
        .with_flush_threshold(flush_threshold);
        Rig {
            ns,
            rt,
            tracker: ChangeTracker::new(family, "node-1"),
            proxier: Some(proxier),
            variant,
            family,
            first: true,
        }
    }

    fn prog(&self, suffix: &str) -> String {
        let base = if self.family == IpFamily::V4 {
            "iptables"
        } else {
            "ip6tables"
        };
        format!("{base}-{}{suffix}", self.variant.as_str())
    }

    fn ipt(&self, args: &str) {
        let a: Vec<&str> = args.split_whitespace().collect();
        let out = self.ns.exec(&self.prog(""), &a).unwrap();
        assert!(
            out.status.success(),
            "{args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn save(&self) -> String {
        String::from_utf8(self.ns.exec(&self.prog("-save"), &[]).unwrap().stdout).unwrap()
    }

    /// Rule and chain lines, without comments and counters, sorted.
    fn lines(&self, kube: bool) -> Vec<String> {
        let mut v: Vec<String> = self
            .save()
            .lines()
            .filter(|l| l.starts_with('-') || (l.starts_with(':') && !l.contains("ACCEPT")))
            .filter(|l| l.contains("KUBE-") == kube)
            .map(|l| l.split(" [").next().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    fn add(&mut self, name: &str, cip: &str, eps: &[&str]) {
        self.tracker
            .update_service(&service("ns", name, cip, &P))
            .unwrap();
        let e = eps
            .iter()
            .map(|a| ep(a.parse::<IpAddr>().unwrap(), "node-2"))
            .collect();
        self.tracker
            .update_endpoint_slice(&slice("ns", name, &P, e))
            .unwrap();
    }

    fn sync(&mut self) -> Result<proxier_core::SyncStats, proxier_core::ProxierError> {
        let (snapshot, changes) = self.tracker.apply();
        let req = SyncRequest {
            snapshot,
            changes,
            full: self.first,
            verify: false,
        };
        self.first = false;
        let mut p = self.proxier.take().unwrap();
        let (p, r) = self.rt.block_on(async move {
            let r = p.sync(&req).await;
            (p, r)
        });
        self.proxier = Some(p);
        r
    }

    fn cleanup(&mut self) {
        let mut p = self.proxier.take().unwrap();
        let (p, r) = self.rt.block_on(async move {
            let r = p.cleanup().await;
            (p, r)
        });
        self.proxier = Some(p);
        r.unwrap();
    }
}

fn foreign_rules_survive(variant: Variant, flush_threshold: usize) {
    let mut r = Rig::new(variant, IpFamily::V4, 5, flush_threshold);
    r.ipt("-t nat -N DOCKER");
    r.ipt("-t nat -A DOCKER -d 172.17.0.2/32 -j RETURN");
    r.ipt("-t nat -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER");
    r.ipt("-t nat -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE");
    r.ipt("-t filter -N MINE");
    r.ipt("-t filter -A MINE -s 1.2.3.4/32 -j DROP");
    r.ipt("-t filter -A INPUT -j MINE");
    r.ipt("-t filter -P FORWARD DROP");
    let want = r.lines(false);
    assert!(want.len() >= 7, "{want:?}");

    r.add("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]);
    r.add("b", "10.96.0.2", &["10.0.0.3"]);
    assert!(r.sync().unwrap().full);
    assert_eq!(r.lines(false), want, "after a full sync");
    let kube = r.lines(true);
    assert!(kube.iter().any(|l| l.starts_with(":KUBE-SVC-")), "{kube:?}");
    assert!(r.save().contains(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
    ));
    assert!(r.save().contains(":FORWARD DROP"), "policy kept");

    r.add("a", "10.96.0.1", &["10.0.0.1", "10.0.0.9"]);
    assert!(!r.sync().unwrap().full);
    assert_eq!(r.lines(false), want, "after a partial sync");

    // A second full sync (hourly, after failure) from a fresh proxier:
    // stale chains from the first are found in the kernel and removed.
    r.tracker.delete_service("ns", "b");
    r.first = true;
    r.sync().unwrap();
    assert_eq!(r.lines(false), want, "after a second full sync");
    let kube2 = r.lines(true);
    let svcs = kube2.iter().filter(|l| l.starts_with(":KUBE-SVC-")).count();
    assert_eq!(svcs, 2, "only service a's two ports remain: {kube2:#?}");
    let jumps = r
        .save()
        .lines()
        .filter(|l| l.starts_with("-A PREROUTING") && l.contains("KUBE-SERVICES"))
        .count();
    assert_eq!(jumps, 1, "jump rules are not duplicated");

    r.cleanup();
    assert_eq!(r.lines(false), want, "after cleanup");
    assert!(
        r.lines(true).is_empty(),
        "cleanup leaves nothing: {:#?}",
        r.lines(true)
    );
}

#[test]
fn foreign_rules_survive_nft() {
    foreign_rules_survive(Variant::Nft, usize::MAX);
}

#[test]
fn foreign_rules_survive_nft_flush_mode() {
    // The path a 10,000-service full sync takes on iptables-nft.
    foreign_rules_survive(Variant::Nft, 0);
}

#[test]
fn foreign_rules_survive_legacy_flush_mode() {
    foreign_rules_survive(Variant::Legacy, 0);
}

#[test]
fn foreign_rules_survive_legacy() {
    foreign_rules_survive(Variant::Legacy, usize::MAX);
}

fn foreign_reference_fails_then_converges(variant: Variant) {
    let mut r = Rig::new(variant, IpFamily::V4, 5, usize::MAX);
    r.add("a", "10.96.0.1", &["10.0.0.1", "10.0.0.2"]);
    r.sync().unwrap();
    let sep = r
        .lines(true)
        .into_iter()
        .find(|l| l.starts_with("-A KUBE-SEP-") && l.contains("10.0.0.2:80"))
        .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
        .unwrap();
    // Another program jumps to one of our endpoint chains (kube-proxy's
    // TestSyncProxyRulesRepeated injects exactly this).
    r.ipt("-t nat -N OTHER");
    r.ipt(&format!("-t nat -A OTHER -j {sep}"));
    let before = r.lines(true);

    r.add("a", "10.96.0.1", &["10.0.0.1"]);
    let err = r.sync().expect_err("deleting a referenced chain must fail");
    let text = format!("{err} {:?}", err.source);
    assert!(text.contains("restore"), "{text}");
    assert_eq!(
        r.lines(true),
        before,
        "the failed restore left the previous rules in force"
    );

    let err = r.sync().expect_err("still referenced");
    assert!(err.to_string().contains("nat"), "{err}");
    r.ipt("-t nat -F OTHER");
    let stats = r.sync().unwrap();
    assert!(stats.full, "the retry after a failure is a full sync");
    let now = r.lines(true);
    assert!(!now.iter().any(|l| l.contains(&sep)), "{now:#?}");
    assert!(!now.iter().any(|l| l.contains("10.0.0.2")), "{now:#?}");
    assert!(now.iter().any(|l| l.contains("10.0.0.1:80")));
    r.cleanup();
}

#[test]
fn foreign_reference_fails_then_converges_nft() {
    foreign_reference_fails_then_converges(Variant::Nft);
}

#[test]
fn foreign_reference_fails_then_converges_legacy() {
    foreign_reference_fails_then_converges(Variant::Legacy);
}

/// The legacy xtables lock held by another process: the restore waits
/// `-w 1`, fails, nothing changes; once the lock is free the retry works.
#[test]
fn lock_held_by_another_process() {
    let mut r = Rig::new(Variant::Legacy, IpFamily::V4, 1, usize::MAX);
    r.add("a", "10.96.0.1", &["10.0.0.1"]);
    // Hold the lock as another iptables process would (flock on the
    // lock file), released when the file is closed.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/xtables.lock")
        .unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let t0 = std::time::Instant::now();
    let err = r.sync().expect_err("lock held");
    drop(lock);
    assert!(
        t0.elapsed() >= std::time::Duration::from_millis(900),
        "waited for the lock"
    );
    let text = format!("{err} {:?}", err.source);
    assert!(text.contains("lock") || text.contains("Resource"), "{text}");
    assert!(r.lines(true).is_empty(), "nothing was written");
    assert!(r.sync().unwrap().full);
    assert!(r.lines(true).iter().any(|l| l.contains("10.0.0.1:80")));
    r.cleanup();
}

#[test]
fn ipv6_through_ip6tables_restore() {
    for variant in [Variant::Nft, Variant::Legacy] {
        let mut r = Rig::new(variant, IpFamily::V6, 5, usize::MAX);
        r.add("v6", "fd00::10", &["fd00:1::2", "fd00:1::3"]);
        r.sync().unwrap();
        let save = r.save();
        assert!(save.contains("-d fd00::10/128"), "{save}");
        assert!(save.contains("--to-destination [fd00:1::2]:80"), "{save}");
        r.add("v6", "fd00::10", &["fd00:1::2"]);
        r.sync().unwrap();
        assert!(!r.save().contains("fd00:1::3"));
        r.cleanup();
        assert!(r.lines(true).is_empty(), "{variant}");
    }
}

/// Issue 16, item 10: a first sync above the part size is written in
/// growing parts, `kube-system` first, each committed (and so serving)
/// before the next; a restarted proxier that finds a ruleset of that size
/// in the kernel replaces it in one restore.
fn large_first_sync_in_parts(variant: Variant) {
    let mut r = Rig::new(variant, IpFamily::V4, 5, usize::MAX);
    r.proxier = r.proxier.take().map(|p| p.with_part_size(6));
    // Six chains per service: two ports, each with two endpoints.
    for i in 0..5u8 {
        r.add(
            &format!("s{i}"),
            &format!("10.96.0.{}", 10 + i),
            &[&format!("10.0.{i}.1"), &format!("10.0.{i}.2")],
        );
    }
    r.tracker
        .update_service(&service("kube-system", "dns", "10.96.0.53", &P))
        .unwrap();
    r.tracker
        .update_endpoint_slice(&slice(
            "kube-system",
            "dns",
            &P,
            vec![
                ep("10.0.9.1".parse().unwrap(), "node-2"),
                ep("10.0.9.2".parse().unwrap(), "node-2"),
            ],
        ))
        .unwrap();
    let services = |r: &Rig| {
        r.lines(true)
            .iter()
            .filter(|l| l.starts_with("-A KUBE-SERVICES") && l.contains("--dport 80"))
            .filter_map(|l| l.split("-d ").nth(1)?.split('/').next().map(String::from))
            .collect::<Vec<_>>()
    };
    let s = r.sync().unwrap();
    assert_eq!(
        s.incomplete.as_deref(),
        Some("1 of 6 services (6 of 36 nat chains) written")
    );
    assert_eq!(services(&r), vec!["10.96.0.53"], "kube-system first");
    let s = r.sync().unwrap();
    assert!(s.full, "each part is a full sync");
    assert_eq!(
        s.incomplete.as_deref(),
        Some("4 of 6 services (24 of 36 nat chains) written")
    );
    assert_eq!(services(&r).len(), 4);
    let s = r.sync().unwrap();
    assert_eq!(s.incomplete, None);
    assert_eq!(services(&r).len(), 6);
    let all = r.lines(true);
    // Then partial syncs as usual.
    r.add("s0", "10.96.0.10", &["10.0.0.1"]);
    let s = r.sync().unwrap();
    assert!(!s.full && s.incomplete.is_none());
    // A restart: the kernel holds 36 chains ≥ 6, one restore.
    let cfg = r.proxier.as_ref().unwrap().config().clone();
    r.proxier = Some(
        IptablesProxier::new(
            cfg,
            Arc::new(IptablesCmd::new(IpFamily::V4, variant)),
            Arc::new(ConntrackNetlink::new().unwrap()),
            Arc::new(proxier_netfilter::ProcSys),
        )
        .unwrap()
        .with_part_size(6),
    );
    r.first = true;
    r.add("s0", "10.96.0.10", &["10.0.0.1", "10.0.0.2"]);
    let s = r.sync().unwrap();
    assert_eq!(s.incomplete, None, "a restart replaces in one restore");
    assert_eq!(r.lines(true), all);
    r.cleanup();
}

#[test]
fn large_first_sync_in_parts_nft() {
    large_first_sync_in_parts(Variant::Nft);
}

#[test]
fn large_first_sync_in_parts_legacy() {
    large_first_sync_in_parts(Variant::Legacy);
}
