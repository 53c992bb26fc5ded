//! # proxier-testbed
//!
//! The bench every backend proves itself on: real kernels, real packets.
//!
//! - Objects ([`service`], [`slice()`], [`ep`], [`terminating`]): short
//!   builders for Services and EndpointSlices;
//! - [`Netns`]: network namespaces made and removed by the tests
//!   ([`remove_stale`] clears what a killed run left);
//! - [`NsRuntime`]: a tokio runtime on a thread inside a namespace, so a
//!   proxier (and every socket and process it creates) lives there;
//! - [`Topology`]: node, client pod, endpoint pods, external clients and a
//!   remote node, joined by veths, never touching the root namespace;
//! - Traffic ([`Outcome`], [`tcp_line`], [`udp_exchange`]): identity
//!   servers and clients that tell a reply from a refusal from a timeout;
//! - [`suite`]: the behaviour suite every backend runs, and its feature
//!   table;
//! - [`settle`]: waiting for the CPUs to go quiet between timed runs
//!   (the kernel tears a dropped namespace down later);
//! - [`vm`]: a Debian cloud kernel under qemu, for what the host kernel
//!   lacks (IPVS, dummy links).
//!
//! The modules are private and the list below is the crate's public
//! surface, except two namespaces that are tools of their own and read
//! with their prefix: [`suite`] (`suite::Backend`, `suite::run`) and
//! [`vm`] (`vm::delegate`, `vm::run`).
//!
//! Needs root. Not published.

mod memory;
mod netns;
mod objects;
mod quiet;
mod runtime;
pub mod suite;
mod topology;
mod traffic;
pub mod vm;

pub use memory::{meminfo_kib, rss_kib};
pub use netns::{Netns, PREFIX as NETNS_PREFIX, remove_stale};
pub use objects::{ep, service, slice, terminating};
/// The family type the suite macro names (so test crates need not name
/// `proxier-core`).
pub use proxier_core::IpFamily;
pub use quiet::settle;
pub use runtime::NsRuntime;
pub use topology::{
    CLUSTER_CIDR, CLUSTER_CIDR6, NODE_IP, NODE_IP2, NODE_IP2_6, NODE_IP6, Plan, Pod,
    REMOTE_NODE_IP, REMOTE_NODE_IP6, REMOTE_NODE_NAME, Topology, Where,
};
pub use traffic::{Outcome, drain, tcp_connect, tcp_line, tcp_request, udp_exchange, udp_request};
