//! # backend-ipvs
//!
//! kube-proxy's IPVS mode (in progress, issue 5).
//!
//! - [`codec`]: `ip_vs.h` constants, [`codec::Service`], [`codec::Dest`],
//!   and [`codec::IpvsMessage`], which plugs into `netlink-packet-generic`.
//! - [`client`]: [`IpvsClient`], the IPVS family on one netlink socket,
//!   with batched writes; each call names its `ipvsadm` equivalent.
//!
//! [`codec`] and [`client`] depend on nothing else in the workspace: they
//! could be published on their own.
//!
//! Dependencies, and why: no maintained IPVS crate exists (the `ipvs`
//! crate is a placeholder), so the messages are ours; the framing and the
//! socket are the rust-netlink crates' (`netlink-packet-core`,
//! `netlink-packet-generic`, `netlink-sys`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod desired;
pub mod fake;
pub mod kernel;
pub mod proxier;
pub mod rules;
pub mod sets;

pub use client::{IpvsClient, IpvsError, Op, Timeouts};
pub use proxier::{Config, IpvsProxier, Kernel, SyncReport};
