//! The netlink census against the host kernel, in a namespace: what
//! [`Iptables::census`] reads over netlink for iptables-nft (rules per
//! chain, the jump targets of the built-in chains) is what
//! `iptables-nft-save` prints, in both families; the generation moves
//! with every commit, and only then; legacy's census is its save.

use std::collections::BTreeMap;

use proxier_core::IpFamily;
use proxier_netfilter::parse_save;
use proxier_netfilter::{Iptables, IptablesCmd, Variant};
use proxier_netfilter::{builtin_chains, rule_target as target};
use proxier_testbed::{Netns, NsRuntime};

/// The chains the census is asked about (one never made).
const CHAINS: &[&str] = &["TEST-A", "TEST-B", "TEST-EMPTY", "TEST-MISSING"];

const PAYLOAD: &str = "*nat
:TEST-A - [0:0]
:TEST-B - [0:0]
:TEST-EMPTY - [0:0]
-A PREROUTING -m comment --comment \"to a\" -j TEST-A
-A OUTPUT -p tcp --dport 80 -j TEST-A
-A OUTPUT -m addrtype --dst-type LOCAL -g TEST-B
-A OUTPUT -p udp -j ACCEPT
-A POSTROUTING -j MASQUERADE
-A TEST-A -p tcp -j TEST-B
-A TEST-A -j RETURN
-A TEST-A -m mark --mark 0x4000/0x4000 -j ACCEPT
-A TEST-B -j DNAT --to-destination ADDR
COMMIT
";

/// `ip netns exec NS prog args`.
fn exec(ns: &str, prog: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", ns, prog])
        .args(args)
        .output()
        .unwrap()
}

/// Each built-in chain with the chain each of its rules jumps to.
type Targets = Vec<(String, Vec<Option<String>>)>;

/// What `iptables-nft-save` says, in the census's terms.
fn from_save(save: &str) -> (BTreeMap<String, usize>, Targets) {
    let l = parse_save(save, builtin_chains("nat"));
    let counts = l
        .all_rules
        .unwrap()
        .into_iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(c, r)| (c, r.len()))
        .collect();
    let builtin = l
        .builtin
        .into_iter()
        .map(|(c, rules)| {
            let t = rules
                .iter()
                .map(|r| {
                    // `-g` is a goto: a jump for the census.
                    let words: Vec<&str> = r.split_whitespace().collect();
                    let g = words.iter().position(|w| *w == "-g").map(|i| words[i + 1]);
                    g.or_else(|| target(r))
                        .filter(|t| t.starts_with("TEST-"))
                        .map(str::to_owned)
                })
                .collect();
            (c, t)
        })
        .collect();
    (counts, builtin)
}

#[test]
fn nft_census_reads_what_iptables_nft_save_prints() {
    for (family, addr) in [(IpFamily::V4, "10.1.2.3"), (IpFamily::V6, "fd00::3")] {
        let ns = Netns::new("census").unwrap();
        let rt = NsRuntime::start(&ns).unwrap();
        let ipt = IptablesCmd::new(family, Variant::Nft);
        let save_prog = match family {
            IpFamily::V4 => "iptables-nft-save",
            IpFamily::V6 => "ip6tables-nft-save",
        };
        let name = ns.name().to_string();
        rt.block_on(async move {
            let g0 = ipt
                .generation()
                .await
                .unwrap()
                .expect("nft has a generation");
            ipt.restore("nat", &PAYLOAD.replace("ADDR", addr), true)
                .await
                .unwrap();
            let g1 = ipt.generation().await.unwrap().unwrap();
            assert_ne!(g0, g1, "{family:?}: a commit moves the generation");
            assert_eq!(
                ipt.generation().await.unwrap(),
                Some(g1),
                "and only a commit"
            );
            let c = ipt
                .census("nat", CHAINS, builtin_chains("nat"))
                .await
                .unwrap();
            let out = exec(&name, save_prog, &["-t", "nat"]);
            let (counts, builtin) = from_save(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(c.counts, counts, "{family:?}");
            assert_eq!(c.counts["TEST-A"], 3);
            assert_eq!(c.counts["OUTPUT"], 3);
            assert!(!c.counts.contains_key("TEST-EMPTY"));
            let got: Targets = c
                .builtin
                .iter()
                .map(|(ch, rules)| {
                    let t = rules.iter().map(|r| target(r).map(str::to_owned)).collect();
                    (ch.clone(), t)
                })
                .collect();
            assert_eq!(got, builtin, "{family:?}");
            // A flush is seen.
            let flush = match family {
                IpFamily::V4 => "iptables-nft",
                IpFamily::V6 => "ip6tables-nft",
            };
            assert!(
                exec(&name, flush, &["-t", "nat", "-F", "TEST-A"])
                    .status
                    .success()
            );
            assert_ne!(ipt.generation().await.unwrap(), Some(g1));
            let c = ipt
                .census("nat", CHAINS, builtin_chains("nat"))
                .await
                .unwrap();
            assert!(!c.counts.contains_key("TEST-A"), "{:?}", c.counts);
            // A table that does not exist: empty, not an error.
            let c = ipt.census("raw", &["TEST-A"], &[]).await.unwrap();
            assert!(c.counts.is_empty());
        });
    }
}

#[test]
fn legacy_census_is_its_save_and_has_no_generation() {
    let ns = Netns::new("censusl").unwrap();
    let rt = NsRuntime::start(&ns).unwrap();
    let ipt = IptablesCmd::new(IpFamily::V4, Variant::Legacy);
    rt.block_on(async move {
        ipt.restore("nat", &PAYLOAD.replace("ADDR", "10.1.2.3"), true)
            .await
            .unwrap();
        assert_eq!(ipt.generation().await.unwrap(), None);
        let c = ipt
            .census("nat", CHAINS, builtin_chains("nat"))
            .await
            .unwrap();
        assert_eq!(c.counts["TEST-A"], 3);
        assert_eq!(c.counts["TEST-B"], 1);
        let output = &c.builtin.iter().find(|(ch, _)| ch == "OUTPUT").unwrap().1;
        assert_eq!(output.len(), 3);
    });
}
