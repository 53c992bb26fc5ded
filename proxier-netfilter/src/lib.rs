//! # proxier-netfilter
//!
//! What every netfilter-speaking backend shares, so that the backends
//! stand side by side on it and never on one another (as kube-proxy's
//! `iptables/`, `ipvs/` and `nftables/` packages share `pkg/util/iptables`
//! and `pkg/proxy/conntrack`):
//!
//! - iptables: the seam ([`Iptables`]) and the real tools behind it
//!   ([`IptablesCmd`], legacy and nf_tables, IPv4 and IPv6).
//! - Owned chains ([`TableRules`], [`write_owned`], [`owned_drift`],
//!   [`remove_owned`]): a small set of chains written and removed with one
//!   `iptables-restore --noflush` per table (userspace portals, IPVS
//!   companion rules).
//! - [`chains`]: kube-proxy's chain names, written once.
//! - [`Masquerade`] and [`LocalDetector`]: the masquerade mark,
//!   `--masquerade-all`, `--detect-local-mode`, and the `KUBE-MARK-MASQ`,
//!   `KUBE-POSTROUTING`, `KUBE-FORWARD` chains built from them.
//! - Escaping ([`safe_label`], [`hash_base32`]): what may reach a rule or
//!   a comment from an API object.
//! - [`Sysctl`]: kernel parameters behind a seam ([`ProcSys`]).
//! - [`node_addresses`]: the node's addresses over rtnetlink.
//! - Conntrack over netlink ([`ConntrackNetlink`], its wire format in
//!   [`ctnetlink`]) and kube-proxy's stale-flow cleanup with its
//!   reconciler ([`StaleFlows`], [`clean_stale`]), and kube-proxy's
//!   conntrack sysctls at start ([`ConntrackTuning`]).
//! - [`NfnlSocket`]: a `NETLINK_NETFILTER` socket on tokio, for ctnetlink
//!   and nf_tables.
//! - The census ([`nft_chain_rules`], [`ruleset_generation`]): rules per
//!   chain of an nf_tables table and the ruleset generation, over netlink:
//!   what drift checks read.
//! - Fakes (feature `testing`): in-memory [`Iptables`], [`Conntrack`] and
//!   [`Sysctl`] for unit tests (`FakeIptables`, `FakeConntrack`,
//!   `FakeSysctl`).
//!
//! The modules are private: the `pub use` list below is the crate's
//! whole public surface.
//!
//! ## Dependencies, and why
//!
//! - `netlink-packet-netfilter` (rust-netlink) for the ctnetlink request
//!   messages; `netlink-sys` (its `tokio_socket`) for the socket, so a dump
//!   never blocks a tokio worker. Dump replies are read by our own decoder
//!   ([`ctnetlink::parse`]), which allocates nothing per flow: the
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
mod census;
pub mod chains;
mod conntrack;
mod escape;
#[cfg(any(test, feature = "testing"))]
mod fake;
mod iptables;
mod local;
mod masquerade;
mod nfnl;
mod owned;
mod sysctl;

// The crate's public surface, written once. `chains` stays a namespace:
// kube-proxy's chain names, constants every mode shares
// (`chains::KUBE_SERVICES`); `ctnetlink` is the conntrack wire format.

// iptables: the seam, the tools, and what is parsed of them.
pub use iptables::{
    ExecError, Iptables, IptablesCmd, TableCensus, TableListing, Variant, parse_nft_chains,
    parse_save, restore_context,
};
// Chains a component owns, written and removed with one restore per table.
pub use owned::{
    Jump, Position, TableRules, builtin_chains, census_drift, owned_drift, remove_owned,
    rule_target, write_owned,
};
// nf_tables over netlink: the socket, and what drift checks read.
pub use census::{NftRules, nfproto, nft_chain_rules, nft_rules, ruleset_generation};
pub use nfnl::NfnlSocket;
// Conntrack over netlink, stale-flow cleanup, the sysctls at start.
pub use conntrack::codec as ctnetlink;
pub use conntrack::{
    Capture, CleanupReport, Conntrack, ConntrackError, ConntrackFilter, ConntrackNetlink,
    ConntrackTuning, DumpFilter, Flow, FlowTuple, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP,
    StaleFlows, TuningError, clean_stale,
};
// Masquerading and local-traffic detection.
pub use local::LocalDetector;
pub use masquerade::{ConfigError, Masquerade, check_family, of_family};
// What may reach a rule or a comment from an API object.
pub use escape::{hash_base32, safe_interface_name, safe_label, safe_service_port_name};
// The node's addresses; kernel parameters.
pub use addresses::{is_global, node_addresses};
pub use sysctl::{ProcSys, Sysctl, SysctlError};
// In-memory fakes of the seams, for unit tests (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub use fake::{FakeConntrack, FakeIptables, FakeState, FakeSysctl, Table as FakeTable};
