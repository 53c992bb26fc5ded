//! # backend-userspace
//!
//! kube-proxy's first mode, the userspace proxy, as a
//! [`proxier_core::Proxier`]: a tokio L4 proxy with one listener per
//! service port, round robin with ClientIP affinity, and retries on a
//! failed connect. Embed it where you want services without kernel rules.
//!
//! - [`balancer`]: round robin and affinity (`roundrobin.go`), pure.
//! - [`relay`]: moving TCP bytes, by copy or by `splice(2)`.
//! - [`proxy`]: the data path of one service port (TCP accept loop, UDP
//!   flow table with idle timeout and a bound).
//! - [`portal`]: the iptables rules that redirect service traffic to the
//!   proxy ports, written through `proxier_netfilter::write_owned`.
//! - [`proxier`]: [`UserspaceProxier`], in [`Mode::Portal`] (like the
//!   original) or [`Mode::Direct`] (bind the service addresses, no
//!   iptables at all).
//!
//! Behaviour next to the original: endpoints come from the core's
//! selection (traffic policies, terminating fallback), so
//! `internalTrafficPolicy: Local` works; a port without endpoints refuses
//! (portal `REJECT`, or no listener in direct mode) instead of accepting
//! and closing; `loadBalancerSourceRanges` is enforced by the portal rules
//! and by the proxy (`SO_ORIGINAL_DST`, `IP_PKTINFO`). What a user-space
//! proxy cannot do: keep the client's source address
//! (`externalTrafficPolicy: Local` reaches local endpoints only through
//! selection, but the endpoint sees the node's address). SCTP is not
//! proxied, as in the original. Proxy ports are picked by the kernel
//! (the original's default, no `--proxy-port-range`).
//!
//! Copy or splice (`benches/benches/userspace.rs` measures both beside
//! HAProxy and a direct connection; the figures are in the README's
//! userspace benchmarks): splice moves bulk data faster but holds two
//! pipes (four descriptors) per connection on top of the two sockets, so
//! under a descriptor limit it serves a third as many connections. Copy is
//! the default; `Relay::Splice` is the switch for bulk traffic.
//!
//! Dependencies, and why: `tokio` (the runtime), `tokio-util`'s
//! `CancellationToken` (closing a port's listeners and connections at
//! once), `socket2` (`SO_REUSEADDR`, `IP_FREEBIND`, backlog), `nix` for
//! the calls std and tokio lack, with safe wrappers: `splice(2)`,
//! `IP_PKTINFO` on `recvmsg`/`sendmsg` (replies leave from the address
//! the client used), `SO_ORIGINAL_DST`, `setrlimit`. `proxier-netfilter`
//! for the portal rules and conntrack, so there is one restore code path
//! and no backend stands on another.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod balancer;
mod portal;
mod proxier;
mod proxy;
mod relay;

pub use balancer::Balancer;
pub use proxier::{Config, Direct, Mode, Portal, UserspaceProxier, raise_fd_limit};
pub use proxy::{DIAL_TIMEOUTS, DataPath};
pub use relay::Relay;
