//! Local-traffic detection (`--detect-local-mode`, kube-proxy's
//! `pkg/proxy/util/localdetector.go`): which packets come from pods of
//! this cluster, as iptables match arguments.

use std::fmt::Write as _;

use ipnet::IpNet;

/// How kube-proxy decides that traffic comes from a pod
/// (`--detect-local-mode`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalDetector {
    /// No detection: only masquerade-all masquerades cluster IP traffic.
    #[default]
    None,
    /// `ClusterCIDR`: sources inside these CIDRs are pods.
    ClusterCidr(Vec<IpNet>),
    /// `InterfaceNamePrefix`: packets entering through `prefix+` come from
    /// pods. The prefix is checked by [`crate::Masquerade::validate`].
    InterfacePrefix(String),
}

impl LocalDetector {
    /// Whether a detector is configured (kube-proxy's `IsImplemented`).
    pub fn is_implemented(&self) -> bool {
        *self != LocalDetector::None
    }

    /// Appends the iptables match for "from a pod" (`-s CIDR`,
    /// `-i PREFIX+`), or for "not from a pod" with `negate` (`! -s CIDR`):
    /// kube-proxy's `IfLocal` / `IfNotLocal`.
    pub fn iptables_match(&self, out: &mut String, negate: bool) {
        let not = if negate { " !" } else { "" };
        match self {
            LocalDetector::ClusterCidr(cidrs) => {
                for c in cidrs {
                    let _ = write!(out, "{not} -s {c}");
                }
            }
            LocalDetector::InterfacePrefix(p) => {
                let _ = write!(out, "{not} -i {p}+");
            }
            LocalDetector::None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_as_kube_proxy_writes_them() {
        let mut s = String::new();
        LocalDetector::ClusterCidr(vec!["10.0.0.0/8".parse().unwrap()])
            .iptables_match(&mut s, true);
        assert_eq!(s, " ! -s 10.0.0.0/8");
        let mut s = String::new();
        LocalDetector::InterfacePrefix("veth".into()).iptables_match(&mut s, false);
        assert_eq!(s, " -i veth+");
        let mut s = String::new();
        LocalDetector::None.iptables_match(&mut s, true);
        assert!(s.is_empty() && !LocalDetector::None.is_implemented());
    }
}
