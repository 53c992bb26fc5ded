//! Conntrack over netlink (`NETLINK_NETFILTER`, the ctnetlink subsystem),
//! with no process spawned: what kube-proxy's `pkg/proxy/conntrack` does
//! since v1.32.
//!
//! - [`Flow`]: one conntrack entry as `conntrack -L` shows it.
//! - [`Conntrack`]: the seam (dump with a filter, delete); [`ConntrackNetlink`]
//!   speaks ctnetlink, and `FakeConntrack` (feature `testing`) holds flows
//!   in memory.
//! - [`codec`]: the messages (built with `netlink-packet-netfilter`; dump
//!   replies read by a decoder that allocates nothing per flow).
//! - [`StaleFlows`]: which flows a sync must delete (pure): kube-proxy's
//!   targeted deletes from the change set, and its reconciler (every UDP
//!   or SCTP flow to a service address whose reply does not come from a
//!   serving endpoint of that service).
//! - [`clean_stale`]: one dump, then the deletes, batched.
//!
//! Check by hand with `conntrack -L -p udp` and `conntrack -D`.

pub mod codec;
mod netlink;
mod stale;
mod tuning;

use std::fmt;
use std::net::IpAddr;

use async_trait::async_trait;
use proxier_core::IpFamily;

pub use codec::DumpFilter;
pub use netlink::{Capture, ConntrackNetlink};
pub use stale::{CleanupReport, ConntrackFilter, StaleFlows, clean_stale};
pub use tuning::{ConntrackTuning, TuningError};

/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: u8 = 17;
/// `IPPROTO_SCTP`.
pub const IPPROTO_SCTP: u8 = 132;

/// One direction of a flow: addresses and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowTuple {
    /// `src=`.
    pub src: IpAddr,
    /// `dst=`.
    pub dst: IpAddr,
    /// `sport=` (0 for protocols without ports).
    pub src_port: u16,
    /// `dport=`.
    pub dst_port: u16,
}

/// One conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// The layer-4 protocol ([`IPPROTO_UDP`], [`IPPROTO_SCTP`], [`IPPROTO_TCP`]).
    pub protocol: u8,
    /// The original direction (what the client sent).
    pub orig: FlowTuple,
    /// The reply direction (its source is the endpoint a DNAT chose).
    pub reply: FlowTuple,
    /// The conntrack zone (`zone=`; 0 is the default zone).
    pub zone: u16,
    /// The kernel's id of the entry, when it said (a delete with the id
    /// never removes a newer entry with the same tuple).
    pub id: Option<u32>,
    /// A DNAT rule rewrote its destination (`IPS_DST_NAT`: iptables and
    /// nftables service rules; IPVS alters the reply without it).
    pub dnat: bool,
}

fn proto_name(p: u8) -> String {
    match p {
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_SCTP => "sctp".into(),
        n => n.to_string(),
    }
}

impl fmt::Display for Flow {
    /// As `conntrack -L` prints it: `udp src=… dst=… sport=… dport=…
    /// src=… dst=… sport=… dport=… [zone=N]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |f: &mut fmt::Formatter<'_>, t: &FlowTuple| {
            write!(
                f,
                " src={} dst={} sport={} dport={}",
                t.src, t.dst, t.src_port, t.dst_port
            )
        };
        f.write_str(&proto_name(self.protocol))?;
        t(f, &self.orig)?;
        t(f, &self.reply)?;
        if self.zone != 0 {
            write!(f, " zone={}", self.zone)?;
        }
        Ok(())
    }
}

impl Flow {
    /// The family of its addresses.
    pub fn family(&self) -> IpFamily {
        if self.orig.dst.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }
}

/// A conntrack operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The netlink socket could not be opened, bound or used.
    #[error("conntrack netlink socket: {what}: {source}")]
    Socket {
        /// What was being done (`opening NETLINK_NETFILTER`).
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a dump (`conntrack -L`).
    #[error("conntrack -L -f {family}: {source}")]
    Dump {
        /// `ipv4` or `ipv6`.
        family: &'static str,
        /// What the kernel said.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused some requests (`conntrack -D`, `conntrack -I`);
    /// the others landed.
    #[error("{op}: {failed} of {asked} refused (first: {first}): {source}")]
    Refused {
        /// The equivalent command (`conntrack -D`).
        op: &'static str,
        /// How many were asked for.
        asked: usize,
        /// How many failed.
        failed: usize,
        /// The first flow that failed.
        first: Box<Flow>,
        /// The kernel's answer for it.
        #[source]
        source: std::io::Error,
    },
    /// The kernel sent something that is not a conntrack message.
    #[error("conntrack netlink: cannot decode a reply: {0}")]
    Decode(String),
}

/// The conntrack seam: everything a backend asks of the connection
/// tracking table.
#[async_trait]
pub trait Conntrack: Send + Sync + fmt::Debug {
    /// `conntrack -L -f FAMILY`: every flow of `family` that passes
    /// `filter` in the kernel and for which `keep` says yes, and how many
    /// flows the dump held. The dump is read as it arrives, so memory grows
    /// with what is kept, not with the table.
    async fn dump(
        &self,
        family: IpFamily,
        filter: DumpFilter,
        keep: &(dyn for<'f> Fn(&'f Flow) -> bool + Send + Sync),
    ) -> Result<(Vec<Flow>, usize), ConntrackError>;

    /// `conntrack -D` of each flow (by its original tuple, zone and id),
    /// batched. A flow already gone is not an error. Returns how many were
    /// deleted.
    async fn delete(&self, flows: &[Flow]) -> Result<usize, ConntrackError>;
}
