//! The behaviour suite on IPVS mode, inside the test VM (a real IPVS
//! kernel): real TCP and UDP traffic between namespaces, with
//! `kube-ipvs0`, the ipsets and the companion iptables rules (nft); after
//! every sync `ipvsadm -Sn` is compared with the desired state, and the
//! firewall marks with `ipset save` and `iptables-save -t mangle`.

mod suite;

use proxier_core::Proxier;
use proxier_netfilter::Variant;
use proxier_testbed::suite::{Backend, Env};

fn make(env: &Env) -> Box<dyn Proxier> {
    suite::make("ipvs", Variant::Nft, env)
}

static BACKEND: Backend = Backend {
    name: "ipvs",
    make,
    // Beyond kube-proxy's IPVS mode (issue 17): eTP: Local external
    // destinations reach every endpoint from inside (firewall-mark virtual
    // servers), and iTP: Local without a local endpoint drops.
    unsupported: &[],
    no_ipv6: None,
    leftovers: suite::ipvs_leftovers,
    verify: Some(suite::ipvs_verify),
};

proxier_testbed::behaviour_suite!(@vm &BACKEND);
