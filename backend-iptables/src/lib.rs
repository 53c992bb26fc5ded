//! # backend-iptables
//!
//! kube-proxy's iptables mode as a [`proxier_core::Proxier`]: the same
//! fixed chains, the same hashed per-service chain names, the same rules,
//! applied with one `iptables-restore` per table. An operator who knows
//! kube-proxy reads `iptables-save -t nat` and finds what they expect.
//!
//! - [`names`]: chain names and kube-proxy's hashing.
//! - [`render`]: a snapshot becomes rules, in memory, no I/O.
//! - [`exec`]: the kernel seam ([`Iptables`], [`Conntrack`]) and the
//!   real tools behind it, legacy and nf_tables.
//! - [`fake`]: an in-memory iptables that checks restore input as the
//!   real one does, for unit tests.
//! - [`owned`]: a few chains owned by another component (userspace
//!   portals, IPVS companions), written and removed with the same restore.
//! - [`proxier`]: full and partial syncs, stale-chain removal, conntrack
//!   cleanup, `cleanup`.
//!
//! Dependencies, and why: `sha2` for kube-proxy's chain-name hash;
//! `imbl` so a partial sync clones the previous fragments in O(1).
//! The `iptables` crate was considered for single rule edits and not
//! used: every change, jump rules included, goes through one
//! `iptables-restore` per table, so each table changes atomically.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod exec;
pub mod fake;
pub mod names;
pub mod owned;
pub mod proxier;
pub mod render;

pub use exec::{
    Conntrack, ConntrackCmd, ConntrackFilter, ExecError, Iptables, IptablesCmd, TableListing,
    Variant,
};
pub use proxier::IptablesProxier;
pub use render::{Config, ConfigError, LocalDetector, Ruleset};
