//! The behaviour suite on the nftables backend inside the test VM
//! (Debian's 6.1 kernel): the kernels before 6.2, where a chain stays
//! referenced for a moment after the map element that pointed at it is
//! deleted.

mod common;

use proxier_testbed::suite::Backend;

static BACKEND: Backend = Backend {
    name: "nftables (kernel 6.1)",
    make: common::make,
    unsupported: &[],
    no_ipv6: None,
    leftovers: common::leftovers,
    verify: None,
};

proxier_testbed::behaviour_suite!(@vm &BACKEND);
