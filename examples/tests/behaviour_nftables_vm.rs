//! The behaviour suite on nftables mode inside the test VM (Debian's 6.1
//! kernel): the kernels before 6.2, where a chain stays referenced for a
//! moment after the map element that pointed at it is deleted.

mod suite;

use proxier_core::Proxier;
use proxier_netfilter::Variant;
use proxier_testbed::suite::{Backend, Env};

fn make(env: &Env) -> Box<dyn Proxier> {
    suite::make("nftables", Variant::Nft, env)
}

static BACKEND: Backend = Backend {
    name: "nftables (kernel 6.1)",
    make,
    unsupported: &[],
    no_ipv6: None,
    leftovers: suite::nftables_leftovers,
    verify: None,
};

proxier_testbed::behaviour_suite!(@vm &BACKEND);
