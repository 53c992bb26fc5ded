//! # backend-iptables
//!
//! kube-proxy's iptables mode as a [`proxier_core::Proxier`]: the same
//! fixed chains, the same hashed per-service chain names, the same rules,
//! applied with one `iptables-restore` per table. An operator who knows
//! kube-proxy reads `iptables-save -t nat` and finds what they expect.
//!
//! - [`names`]: chain names and kube-proxy's hashing.
//! - [`render`]: a snapshot becomes rules, in memory, no I/O.
//! - [`proxier`]: full and partial syncs, stale-chain removal, conntrack
//!   cleanup, `cleanup`.
//!
//! The kernel seams (`Iptables`, `Conntrack`, `Sysctl`), their fakes, the
//! masquerade configuration and local-traffic detection come from
//! `proxier-netfilter`, which every netfilter backend shares.
//!
//! Dependencies, and why: kube-proxy's chain-name hash comes from
//! `proxier-netfilter` (SHA-256 and base32, shared with nftables mode);
//! `imbl` so a partial sync clones the previous fragments in O(1).
//! The `iptables` crate was considered for single rule edits and not
//! used: every change, jump rules included, goes through one
//! `iptables-restore` per table, so each table changes atomically.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod names;
mod parts;
mod proxier;
mod render;

pub use names::{ServiceChains, endpoint_chain, is_owned_chain, is_service_chain};
pub use proxier::{DEFAULT_PART_CHAINS, IptablesProxier, LEGACY_FLUSH_THRESHOLD};
pub use render::{Config, FixedChains, Fragment, RenderError, Ruleset, probability};
