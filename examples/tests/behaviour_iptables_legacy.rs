//! The behaviour suite on iptables mode over iptables-legacy, with real
//! packets in namespaces.

mod suite;

use proxier_core::Proxier;
use proxier_netfilter::Variant;
use proxier_testbed::suite::{Backend, Env};

fn make(env: &Env) -> Box<dyn Proxier> {
    suite::make("iptables", Variant::Legacy, env)
}

static BACKEND: Backend = Backend {
    name: "iptables (legacy)",
    make,
    unsupported: &[],
    no_ipv6: None,
    leftovers: |t| suite::iptables_leftovers(t, Variant::Legacy),
    verify: None,
};

proxier_testbed::behaviour_suite!(&BACKEND);
