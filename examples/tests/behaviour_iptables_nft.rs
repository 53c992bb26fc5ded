//! The behaviour suite on iptables mode over iptables-nft, with real
//! packets in namespaces.

mod suite;

use proxier_core::Proxier;
use proxier_netfilter::Variant;
use proxier_testbed::suite::{Backend, Env};

fn make(env: &Env) -> Box<dyn Proxier> {
    suite::make("iptables", Variant::Nft, env)
}

static BACKEND: Backend = Backend {
    name: "iptables (nft)",
    make,
    unsupported: &[],
    no_ipv6: None,
    leftovers: |t| suite::iptables_leftovers(t, Variant::Nft),
    verify: None,
};

proxier_testbed::behaviour_suite!(&BACKEND);
