//! # backend-ipvs
//!
//! kube-proxy's IPVS mode as a [`proxier_core::Proxier`]: a virtual server
//! per cluster IP, external IP, load-balancer IP and node address × node
//! port, real servers from the core's endpoint selection, service
//! addresses bound to the dummy interface `kube-ipvs0`, kube-proxy's
//! ipsets, and the iptables rules beside them (masquerade, node ports,
//! source ranges, hairpin, the VIP access filter). An operator who knows
//! kube-proxy finds what they expect with `ipvsadm -Ln`, `ipset list`,
//! `ip addr show kube-ipvs0` and `iptables-save`.
//!
//! - [`codec`]: `ip_vs.h` constants, [`codec::Service`], [`codec::Dest`],
//!   and [`codec::IpvsMessage`], which plugs into `netlink-packet-generic`.
//! - [`client`]: [`IpvsClient`], the IPVS family on one netlink socket,
//!   with batched writes; each call names its `ipvsadm` equivalent.
//! - [`kernel`]: the seams ([`kernel::Ipvs`], [`kernel::Links`],
//!   [`kernel::Ipset`]) and the real implementations.
//! - `fake` (feature `testing`): in-memory seams for unit tests.
//! - [`desired`]: what one service port asks of the kernel (pure).
//! - [`sets`]: kube-proxy's ipsets and the `ipset restore` diff (pure).
//! - [`rules`]: the companion iptables rules (pure), written through
//!   `proxier_netfilter::owned`.
//! - [`proxier`]: [`IpvsProxier`]: full syncs against one dump of the
//!   kernel, partial syncs of the changed services only, graceful
//!   termination, restart adoption, `cleanup`.
//!
//! [`codec`] and [`client`] depend on nothing else in the workspace: they
//! could be published on their own.
//!
//! ## Dependencies, and why
//!
//! - No maintained IPVS crate exists (the `ipvs` crate is a placeholder),
//!   so the messages are ours; the framing and the socket are the
//!   rust-netlink crates' (`netlink-packet-core`, `netlink-packet-generic`,
//!   `netlink-sys`).
//! - `rtnetlink` (with `netlink-packet-route`) for `kube-ipvs0` and its
//!   addresses: the rust-netlink project's route client, no `ip` process
//!   per address.
//! - ipsets go through the `ipset` tool (`ipset save`, one
//!   `ipset restore -exist` per sync), not the `ipset` crate (0.9, libipset
//!   over FFI). Measured with `tools/ipset-compare` (the figures are in
//!   the README's IPVS benchmarks), the crate is about 10 % faster for
//!   10,000 entries, but needs `libipset-dev` and libclang (bindgen) at
//!   build time, ties the build to the host's libipset, and is `unsafe`
//!   underneath; the tool costs one process per sync and is what
//!   `ipset save` output is compared against anyway.
//! - iptables, conntrack (over netlink), sysctls and the node's addresses
//!   come from `proxier-netfilter`, which every netfilter backend shares.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod codec;
mod config;
mod desired;
mod failure;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
mod kernel;
mod proxier;
mod rules;
mod sets;

pub use client::{IpvsClient, IpvsError, Op, Timeouts};
pub use config::{Config, DUMMY};
pub use desired::{Contribution, Settings, VsKey, contribution};
pub use failure::{Failure, Failures};
pub use kernel::{Ipset, IpsetCmd, Ipvs, Links, Rtnl};
pub use proxier::{IpvsProxier, Kernel, SyncReport};
pub use sets::Set;
