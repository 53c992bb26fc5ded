//! # ipvs-netlink
//!
//! IPVS over generic netlink, usable alone as an `ipvsadm` in Rust: the
//! messages of `include/uapi/linux/ip_vs.h` and a client that speaks them
//! on one `NETLINK_GENERIC` socket. Every call names the `ipvsadm`
//! command it is equivalent to, so the result can be checked by hand
//! with `ipvsadm -Ln`.
//!
//! - [`IpvsClient`]: resolves the `IPVS` family, lists virtual servers and
//!   their real servers (with counters), and writes [`Op`]s in batches
//!   ([`IpvsClient::apply`]: many operations per `sendmsg`, each
//!   acknowledged and matched back to its operation; one failure does not
//!   stop the others). `ipvsadm --set` is [`IpvsClient::set_timeouts`].
//! - [`Service`], [`Dest`], [`Stats`]: typed virtual and real servers.
//! - [`IpvsMessage`]: the family's message, plugged into
//!   `netlink-packet-generic` (`GenlFamily`, `Emitable`,
//!   `ParseableParametrized`), so `GenlMessage<IpvsMessage>` goes through
//!   `NetlinkMessage` like any other family. Building is infallible;
//!   decoding a reply is strict and never panics.
//! - [`ip_vs`]: the header's constants, named as there.
//!
//! The client is blocking: an async caller runs it off its workers (the
//! IPVS proxier's `backend_ipvs::IpvsNetlink` uses tokio's blocking pool).
//!
//! It depends on nothing else in the workspace; `backend-ipvs` stands on
//! it. Tested against the kernel in the test VM (`tests/client_vm.rs`,
//! which also prints the bytes each exchange carried) and against those
//! captured bytes (`tests/codec_captured.rs`).
//!
//! ## Dependencies, and why
//!
//! No maintained IPVS crate exists (the `ipvs` crate is a placeholder),
//! so the messages are ours; the framing and the socket are the
//! rust-netlink crates' (`netlink-packet-core`, `netlink-packet-generic`,
//! `netlink-sys`), and `thiserror` for the error enum.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod codec;
pub mod ip_vs;

pub use client::{
    BATCH_BYTES, ENOENT, ESRCH, IpvsClient, IpvsError, Op, Reply, Timeouts, parse_replies,
};
pub use codec::{Dest, IpvsAttr, IpvsMessage, Service, Stats};
