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
//! - IPVS itself is spoken by the `ipvs-netlink` crate ([`IpvsClient`],
//!   [`Service`], [`Dest`], re-exported as [`ipvs_netlink`]), which
//!   depends on nothing else in the workspace and is usable alone.
//! - The seams ([`Ipvs`], [`Links`], [`Ipset`]) and the real
//!   implementations: [`IpvsNetlink`] runs the blocking client on tokio's
//!   blocking pool, [`Rtnl`] is rtnetlink, [`IpsetCmd`] the `ipset` tool.
//!   Each seam's error says what it was doing ([`IpvsError`],
//!   [`LinkError`], [`IpsetError`]).
//! - Fakes (feature `testing`): in-memory seams for unit tests
//!   (`FakeIpvs`, `FakeLinks`, `FakeIpset`).
//! - What one service port asks of the kernel ([`contribution`], pure).
//! - kube-proxy's ipsets ([`Set`]) and the `ipset restore` diff (pure).
//! - The companion iptables rules (pure), written through
//!   `proxier_netfilter::write_owned`.
//! - [`IpvsProxier`]: full syncs against one dump of the kernel, partial
//!   syncs of the changed services only, graceful termination, restart
//!   adoption, `cleanup`.
//! - Beyond kube-proxy's IPVS mode, iptables mode's semantics: traffic
//!   from pods and the node to an `externalTrafficPolicy: Local`
//!   service's external addresses reaches every endpoint through one
//!   firewall-mark virtual server per service port (`ipvsadm -Ln`:
//!   `FWM 1`), its mark applied by `KUBE-EXTERNAL-LOCAL-MARK`
//!   (`ipset list`) from the mangle table; `internalTrafficPolicy: Local`
//!   without a local endpoint drops (`KUBE-NO-LOCAL-ENDPOINTS`). The marks
//!   are handed out by a pure allocator within
//!   [`Config::external_local_mark_mask`] (0: kube-proxy's semantics).
//!
//! The modules are private: the `pub use` list below is the crate's
//! whole public surface.
//!
//! ## Dependencies, and why
//!
//! - `ipvs-netlink` (ours, in this workspace) for IPVS: no maintained IPVS
//!   crate exists (the `ipvs` crate is a placeholder); see its docs.
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

mod config;
mod desired;
mod failure;
#[cfg(any(test, feature = "testing"))]
mod fake;
mod kernel;
mod marks;
mod proxier;
mod rules;
mod sets;

pub use config::{Config, DUMMY};
pub use desired::{Contribution, Settings, VsKey, contribution, external_destinations, wants_mark};
pub use failure::{Failure, Failures};
#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeIpset, FakeIpvs, FakeLinks, IpvsState, SetState, VirtualServer};
pub use ipvs_netlink;
pub use ipvs_netlink::{Dest, IpvsClient, IpvsError, Op, Service, Timeouts};
pub use kernel::{Ipset, IpsetCmd, IpsetError, Ipvs, IpvsNetlink, LinkError, Links, Rtnl};
pub use proxier::{IpvsProxier, Kernel, SyncReport};
pub use sets::Set;
