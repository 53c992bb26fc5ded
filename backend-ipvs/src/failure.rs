//! What one sync or cleanup could not do. The IPVS proxier goes on with
//! the rest and reports every failure of the round at once: each is typed
//! and keeps its source, so an agent can tell an IPVS refusal of one
//! service port (`ipvsadm -a` failed) from a missing `kube-ipvs0`
//! address (`ip addr add` failed) without parsing text.

use proxier_core::ServicePortName;
use std::fmt;

use crate::kernel::{IpsetError, LinkError};
use ipvs_netlink::IpvsError;

/// One failed step.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// An IPVS operation, for the service port that wanted its virtual
    /// server (none: a stale virtual server being removed).
    #[error("{}: {source}", who.as_ref().map_or_else(|| "stale virtual server".to_string(), |n| n.to_string()))]
    Ipvs {
        /// The service port.
        who: Option<ServicePortName>,
        /// The kernel's refusal, with the operation (`ipvsadm …`).
        #[source]
        source: IpvsError,
    },
    /// Two service ports want one virtual server; the second is refused.
    #[error("{service}: virtual server {vs} is already {holder}'s")]
    Conflict {
        /// The service port refused.
        service: ServicePortName,
        /// `proto addr:port`.
        vs: String,
        /// The service port that holds it.
        holder: ServicePortName,
    },
    /// An address of the dummy interface (`ip addr add|del IP dev kube-ipvs0`)
    /// or the interface itself (`ip link del`).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// `ipset save` or `ipset restore` (a cleanup's).
    #[error(transparent)]
    Ipset(#[from] IpsetError),
    /// Another step of a cleanup (`iptables`, `ipset`), by its command.
    #[error("{command}: {source}")]
    Step {
        /// The equivalent command.
        command: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Every failure of one round: the source of the proxier's error.
#[derive(Debug, Default)]
pub struct Failures(pub Vec<Failure>);

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failures {}

impl Failures {
    /// Nothing failed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds one.
    pub fn push(&mut self, f: Failure) {
        self.0.push(f);
    }

    /// A step of a cleanup that failed.
    pub fn step(
        &mut self,
        command: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) {
        self.0.push(Failure::Step {
            command: command.into(),
            source: Box::new(source),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_listed_with_its_cause() {
        let mut f = Failures::default();
        f.push(Failure::Link(LinkError::add_address(
            "kube-ipvs0",
            "10.96.0.1".parse().unwrap(),
            std::io::Error::from_raw_os_error(17),
        )));
        f.push(Failure::Ipset(IpsetError::save(std::io::Error::other(
            "ipset: not found",
        ))));
        let text = f.to_string();
        assert!(
            text.starts_with("ip addr add 10.96.0.1/32 dev kube-ipvs0: File exists"),
            "{text}"
        );
        assert!(text.ends_with("; ipset save: ipset: not found"), "{text}");
        assert!(matches!(&f.0[0], Failure::Link(e) if e.ip.is_some()));
    }
}
