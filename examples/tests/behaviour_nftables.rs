//! The behaviour suite on nftables mode on the host kernel, with real
//! packets in namespaces.

mod suite;

use proxier_core::Proxier;
use proxier_netfilter::Variant;
use proxier_testbed::suite::{Backend, Env};

fn make(env: &Env) -> Box<dyn Proxier> {
    suite::make("nftables", Variant::Nft, env)
}

static BACKEND: Backend = Backend {
    name: "nftables",
    make,
    unsupported: &[],
    no_ipv6: None,
    leftovers: suite::nftables_leftovers,
    verify: None,
};

proxier_testbed::behaviour_suite!(&BACKEND);
