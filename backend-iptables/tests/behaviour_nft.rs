//! The behaviour suite on iptables-nft, with real packets in namespaces.

mod common;

use proxier_testbed::suite::Backend;

static BACKEND: Backend = Backend {
    name: "iptables (nft)",
    make: common::make_nft,
    unsupported: &[],
    no_ipv6: None,
    leftovers: common::leftovers_nft,
    verify: None,
};

proxier_testbed::behaviour_suite!(&BACKEND);
