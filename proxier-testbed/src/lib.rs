//! # proxier-testbed
//!
//! The bench every backend proves itself on: real kernels, real packets.
//!
//! - [`objects`]: short builders for Services and EndpointSlices;
//! - [`netns`]: network namespaces made and removed by the tests;
//! - [`runtime`]: a tokio runtime on a thread inside a namespace, so a
//!   proxier (and every socket and process it creates) lives there;
//! - [`topology`]: node, client pod, endpoint pods, external clients and a
//!   remote node, joined by veths, never touching the root namespace;
//! - [`traffic`]: identity servers and clients that tell a reply from a
//!   refusal from a timeout;
//! - [`suite`]: the behaviour suite every backend runs, and its feature
//!   table;
//! - [`vm`]: a Debian cloud kernel under qemu, for what the host kernel
//!   lacks (IPVS, dummy links).
//!
//! Needs root. Not published.

pub mod netns;
pub mod objects;
pub mod runtime;
pub mod suite;
pub mod topology;
pub mod traffic;
pub mod vm;

pub use netns::Netns;
/// The family type the suite macro names (so test crates need not name
/// `proxier-core`).
pub use proxier_core::IpFamily;
pub use runtime::NsRuntime;
pub use topology::{Plan, Topology, Where};
pub use traffic::Outcome;
