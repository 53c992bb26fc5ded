//! # backend-ipvs
//!
//! kube-proxy's IPVS mode. In progress: what has landed is the IPVS
//! generic-netlink codec ([`codec`]), the part of the IPVS client that
//! could be published on its own. The socket client, the proxier, ipsets
//! and `kube-ipvs0` come next (issue 5).
//!
//! - [`codec`]: `ip_vs.h` constants, [`codec::Service`], [`codec::Dest`],
//!   and [`codec::IpvsMessage`], which plugs into `netlink-packet-generic`.
//!
//! Dependencies, and why: no maintained IPVS crate exists (the `ipvs`
//! crate is a placeholder), so the messages are ours; the framing is the
//! rust-netlink crates' (`netlink-packet-core`, `netlink-packet-generic`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
