//! # backend-nftables
//!
//! kube-proxy's nftables mode (`pkg/proxy/nftables`) as a
//! [`proxier_core::Proxier`], programmed with nf_tables netlink
//! transactions instead of the `nft` program. Start at
//! [`NftablesProxier`]; check a node by hand with
//! `nft list table ip kube-proxy`.
//!
//! - The layout: kube-proxy's table rendered from a snapshot (pure), whole
//!   ([`render_full`]) or one service at a time ([`Fragment`]), with
//!   kube-proxy's chain names ([`service_base`], [`endpoint_base`]).
//! - [`NftablesProxier`]: full syncs (one atomic rebuild), partial syncs
//!   (only what changed), delayed deletion of stale chains, conntrack
//!   cleanup.
//! - The encoder: attributes, the expressions kube-proxy's layout needs
//!   (payload, meta, ct, cmp, bitwise, lookup and verdict maps, immediate,
//!   nat, numgen, fib, masq, reject, counter, dynset), and the objects and
//!   operations of a [`Transaction`] (tables, base and regular chains,
//!   sets and verdict maps with concatenated keys, anonymous maps,
//!   elements, rules, flushes and deletes), encoded as one
//!   `NFNL_MSG_BATCH_BEGIN` … `END` batch ([`Batch`]), either from a
//!   [`Transaction`] or streamed: [`render_full_into`] hands each
//!   operation to an [`OpSink`] as it is made, and an [`Encoder`] writes it
//!   into the batch at once (a full sync never holds its operations).
//!   The rule builders this layout uses are [`exprs`].
//! - The seam ([`NfTables`]) and [`NfTablesNetlink`], which applies a
//!   transaction atomically and names the operation the kernel refused;
//!   `FakeNfTables` (feature `testing`) records batches and refuses one
//!   on demand, for unit tests of an embedder's logic.
//!
//! The modules are private: the `pub use` list below is the crate's whole
//! public surface ([`exprs`] is a namespace of rule builders).
//!
//! ## Dependencies, and why
//!
//! - The encoder is ours (`nl`): `netlink-packet-netfilter` 0.4 has
//!   nf_tables message types but only six of the fourteen expressions this
//!   layout needs, and its attribute writer cannot set `NLA_F_NESTED`,
//!   which nf_tables requires on every nest. `nftnl` binds libnftnl over
//!   FFI (a C library at build and run time, and `unsafe`); `rustables` is
//!   GPL-3.0, which this Apache-2.0 workspace cannot take; `nft -f` text,
//!   as kube-proxy's knftables does, spawns a process and re-parses the
//!   whole transaction on every sync (the cost this backend exists to
//!   avoid; the benches measure it as the baseline).
//! - The socket is `proxier_netfilter::NfnlSocket`, shared with
//!   conntrack.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(test, feature = "testing"))]
mod fake;
mod kept;
mod kernel;
mod layout;
mod nl;
mod proxier;

// The seam in memory, for unit tests (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub use fake::FakeNfTables;
pub use kernel::{NfTables, NfTablesNetlink, NftError};
pub use layout::{
    Config, Fragment, Fragments, RenderError, TABLE, endpoint_base, full as render_full,
    full_into as render_full_into, hash_and_truncate, service_base,
};
/// Expression builders for the rules kube-proxy's layout writes
/// (`ip daddr . meta l4proto . th dport vmap @map`, `numgen random mod N
/// vmap`, `dnat to`, `ct state new`, ...), each returning the expressions
/// of one match or statement.
pub use nl::build as exprs;
pub use nl::expr::{CmpOp, Expr, Verdict};
pub use nl::msg::{
    BaseHook, Batch, Chain, Element, Encoder, Family, Hook, KeyType, Op, OpSink, Rule,
    SET_ANONYMOUS, SET_CONCAT, SET_CONSTANT, SET_EVAL, SET_INTERVAL, SET_MAP, SET_TIMEOUT, Set,
    Transaction,
};
pub use proxier::{NftablesProxier, STALE_CHAIN_DELAY};
