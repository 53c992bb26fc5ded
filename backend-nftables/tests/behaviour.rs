//! The behaviour suite on the nftables backend, with real packets in
//! namespaces on the host kernel.

mod common;

use proxier_testbed::suite::Backend;

static BACKEND: Backend = Backend {
    name: "nftables",
    make: common::make,
    unsupported: &[],
    no_ipv6: None,
    leftovers: common::leftovers,
    verify: None,
};

proxier_testbed::behaviour_suite!(&BACKEND);
