//! The behaviour suite on IPVS mode, inside the test VM (a real IPVS
//! kernel): real TCP and UDP traffic between namespaces, with
//! `kube-ipvs0`, the ipsets and the companion iptables rules (nft); after
//! every sync `ipvsadm -Sn` is compared with the desired state.

mod suite;

use proxier_core::Proxier;
use proxier_netfilter::Variant;
use proxier_testbed::suite::{Backend, Env, Feature};

fn make(env: &Env) -> Box<dyn Proxier> {
    suite::make("ipvs", Variant::Nft, env)
}

static BACKEND: Backend = Backend {
    name: "ipvs",
    make,
    // As kube-proxy's IPVS mode (README: "Where it differs from
    // kube-proxy"); issue 17 closes both.
    unsupported: &[
        (
            Feature::ExternalLocalFromInside,
            "an eTP: Local virtual server lists the local endpoints only, for traffic from inside the cluster too",
        ),
        (
            Feature::InternalLocalDrops,
            "a virtual server without real servers is answered with a reset: refused, not dropped",
        ),
    ],
    no_ipv6: None,
    leftovers: suite::ipvs_leftovers,
    verify: Some(suite::ipvs_verify),
};

proxier_testbed::behaviour_suite!(@vm &BACKEND);
