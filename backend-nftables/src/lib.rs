//! # backend-nftables
//!
//! kube-proxy's nftables mode (`pkg/proxy/nftables`) as a
//! [`proxier_core::Proxier`], programmed with nf_tables netlink
//! transactions instead of the `nft` program. Start at
//! [`NftablesProxier`]; check a node by hand with
//! `nft list table ip kube-proxy`.
//!
//! - [`layout`]: kube-proxy's table rendered from a snapshot (pure), whole
//!   or one service at a time ([`layout::Fragment`]).
//! - [`proxier`]: full syncs (one atomic rebuild), partial syncs (only what
//!   changed), delayed deletion of stale chains, conntrack cleanup.
//! - [`nl`]: attributes, the expressions kube-proxy's layout needs
//!   (payload, meta, ct, cmp, bitwise, lookup and verdict maps, immediate,
//!   nat, numgen, fib, masq, reject, counter, dynset), and the objects and
//!   operations of a [`Transaction`] (tables, base and regular chains,
//!   sets and verdict maps with concatenated keys, anonymous maps,
//!   elements, rules, flushes and deletes), encoded as one
//!   `NFNL_MSG_BATCH_BEGIN` … `END` batch.
//! - [`kernel`]: the seam ([`NfTables`]) and [`NfTablesNetlink`], which
//!   applies a transaction atomically and names the operation the kernel
//!   refused.
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
//! - The socket is `proxier_netfilter::nfnl::NfnlSocket`, shared with
//!   conntrack.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod kernel;
pub mod layout;
pub mod nl;
mod proxier;

pub use kernel::{NfTables, NfTablesNetlink, NftError};
pub use layout::Config;
pub use nl::expr::{Expr, Verdict};
pub use nl::msg::{BaseHook, Chain, Element, Family, Hook, KeyType, Op, Rule, Set, Transaction};
pub use proxier::{NftablesProxier, STALE_CHAIN_DELAY};
