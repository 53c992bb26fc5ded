//! The behaviour suite on iptables-legacy, with real packets in namespaces.

mod common;

use proxier_testbed::suite::Backend;

static BACKEND: Backend = Backend {
    name: "iptables (legacy)",
    make: common::make_legacy,
    unsupported: &[],
    no_ipv6: None,
    leftovers: common::leftovers_legacy,
    verify: None,
};

proxier_testbed::behaviour_suite!(&BACKEND);
