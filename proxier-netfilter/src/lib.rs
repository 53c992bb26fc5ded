//! # proxier-netfilter
//!
//! What every netfilter-speaking backend shares, so that the backends
//! stand side by side on it and never on one another (as kube-proxy's
//! `iptables/`, `ipvs/` and `nftables/` packages share `pkg/util/iptables`
//! and `pkg/proxy/conntrack`):
//!
//! - [`iptables`]: the iptables seam ([`Iptables`]) and the real tools
//!   behind it ([`IptablesCmd`], legacy and nf_tables, IPv4 and IPv6).
//! - [`owned`]: a small set of chains written and removed with one
//!   `iptables-restore --noflush` per table (userspace portals, IPVS
//!   companion rules).
//! - [`chains`]: kube-proxy's chain names, written once.
//! - [`Masquerade`] and [`LocalDetector`]: the masquerade mark,
//!   `--masquerade-all`, `--detect-local-mode`, and the `KUBE-MARK-MASQ`,
//!   `KUBE-POSTROUTING`, `KUBE-FORWARD` chains built from them.
//! - [`escape`]: what may reach a rule or a comment from an API object.
//! - [`Sysctl`]: kernel parameters behind a seam ([`ProcSys`]).
//! - [`node_addresses`]: the node's addresses over rtnetlink.
//! - [`conntrack`]: conntrack over netlink ([`ConntrackNetlink`]) and
//!   kube-proxy's stale-flow cleanup with its reconciler ([`StaleFlows`],
//!   [`clean_stale`]), and kube-proxy's conntrack sysctls at start
//!   ([`ConntrackTuning`]).
//! - [`nfnl`]: a `NETLINK_NETFILTER` socket on tokio, for ctnetlink and
//!   nf_tables.
//! - [`census`]: rules per chain of an nf_tables table and the ruleset
//!   generation, over netlink: what drift checks read.
//! - `fake` (feature `testing`): in-memory [`Iptables`], [`Conntrack`]
//!   and [`Sysctl`] for unit tests.
//!
//! ## Dependencies, and why
//!
//! - `netlink-packet-netfilter` (rust-netlink) for the ctnetlink request
//!   messages; `netlink-sys` (its `tokio_socket`) for the socket, so a dump
//!   never blocks a tokio worker. Dump replies are read by our own decoder
//!   ([`conntrack::codec::parse`]), which allocates nothing per flow: the
//!   crate's parser builds about a dozen `Vec`s per flow and a reconcile
//!   pass reads every flow of the table (50,000 on a busy node). The codec
//!   tests check that both read the same flows from real kernel bytes.
//!   The `conntrack` program is no longer needed at run time.
//! - `rtnetlink` (with `netlink-packet-route`) for the node's addresses:
//!   the rust-netlink route client, no `ip` process.
//! - iptables is driven through `iptables-restore` (one atomic restore per
//!   table), not the `iptables` crate, which runs one process per rule.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod addresses;
pub mod census;
pub mod chains;
pub mod conntrack;
pub mod escape;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod iptables;
mod local;
mod masquerade;
pub mod nfnl;
pub mod owned;
mod sysctl;

pub use addresses::{is_global, node_addresses};
pub use conntrack::{
    CleanupReport, Conntrack, ConntrackError, ConntrackFilter, ConntrackNetlink, ConntrackTuning,
    Flow, FlowTuple, StaleFlows, TuningError, clean_stale,
};
pub use escape::{hash_base32, safe_label, safe_service_port_name};
pub use iptables::{ExecError, Iptables, IptablesCmd, TableCensus, TableListing, Variant};
pub use local::LocalDetector;
pub use masquerade::{ConfigError, Masquerade, check_family, of_family};
pub use sysctl::{ProcSys, Sysctl, SysctlError};
