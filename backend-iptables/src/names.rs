//! kube-proxy's chain names, hashed exactly as `pkg/proxy/iptables` does,
//! so that an operator finds the same `KUBE-SVC-…` for the same service
//! (`iptables-save -t nat | grep KUBE-SVC`).

use std::fmt::Write as _;
use std::net::SocketAddr;

use proxier_core::ServicePortName;

pub use proxier_netfilter::chains::{
    KUBE_EXTERNAL_SERVICES, KUBE_FIREWALL, KUBE_FORWARD, KUBE_MARK_MASQ, KUBE_NODEPORTS,
    KUBE_POSTROUTING, KUBE_PROXY_FIREWALL, KUBE_SERVICES, is_service_chain,
};

/// Whether `chain` is one of the fixed chains this backend owns in `table`.
pub fn is_fixed_chain(table: &str, chain: &str) -> bool {
    match table {
        "nat" => [
            KUBE_SERVICES,
            KUBE_NODEPORTS,
            KUBE_POSTROUTING,
            KUBE_MARK_MASQ,
        ]
        .contains(&chain),
        "filter" => [
            KUBE_SERVICES,
            KUBE_EXTERNAL_SERVICES,
            KUBE_FORWARD,
            KUBE_NODEPORTS,
            KUBE_PROXY_FIREWALL,
            KUBE_FIREWALL,
        ]
        .contains(&chain),
        _ => false,
    }
}

/// Whether this backend owns `chain` in `table`.
pub fn is_owned_chain(table: &str, chain: &str) -> bool {
    is_fixed_chain(table, chain) || (table == "nat" && is_service_chain(chain))
}

/// The first 16 characters of standard base32 of SHA-256(`input`):
/// kube-proxy's `portProtoHash` and `servicePortEndpointChainName`.
pub fn hash16(input: &[u8]) -> [u8; 16] {
    proxier_netfilter::hash_base32(&[input])
}

fn chain(prefix: &str, hash: &[u8; 16]) -> String {
    let mut s = String::with_capacity(prefix.len() + 16);
    s.push_str(prefix);
    // Base32 output is ASCII.
    s.extend(hash.iter().map(|&b| b as char));
    s
}

/// The four chains of one service port, sharing one hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChains {
    /// `KUBE-SVC-…`: cluster-policy endpoints.
    pub svc: String,
    /// `KUBE-SVL-…`: local-policy endpoints.
    pub svl: String,
    /// `KUBE-EXT-…`: external traffic dispatcher.
    pub ext: String,
    /// `KUBE-FW-…`: `loadBalancerSourceRanges` filter.
    pub fw: String,
}

impl ServiceChains {
    /// The chains of `name` (hash of `ns/name:port` + lowercase protocol).
    pub fn of(name: &ServicePortName) -> ServiceChains {
        let mut key = name.to_string();
        key.push_str(name.protocol.lower());
        let h = hash16(key.as_bytes());
        ServiceChains {
            svc: chain("KUBE-SVC-", &h),
            svl: chain("KUBE-SVL-", &h),
            ext: chain("KUBE-EXT-", &h),
            fw: chain("KUBE-FW-", &h),
        }
    }
}

/// [`hash16`] of `a` followed by `b`, without joining them: the
/// renderer's fast path for `KUBE-SEP-` names (service key, then the
/// endpoint's `ip:port` text).
pub fn hash16_parts(a: &str, b: &str) -> [u8; 16] {
    proxier_netfilter::hash_base32(&[a.as_bytes(), b.as_bytes()])
}

/// `KUBE-SEP-…` of one endpoint of one service port.
pub fn endpoint_chain(name: &ServicePortName, endpoint: SocketAddr) -> String {
    let mut key = name.to_string();
    key.push_str(name.protocol.lower());
    let _ = write!(key, "{endpoint}");
    chain("KUBE-SEP-", &hash16(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxier_core::Protocol;

    fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName::new(ns, name, port, Protocol::Tcp)
    }

    /// The vectors of kube-proxy's own tests (reference §3.3).
    #[test]
    fn names_match_kube_proxy() {
        let cases = [
            ("ns1", "svc1", "p80", "XPGD46QRK7WJZT7O"),
            ("ns2", "svc2", "p80", "GNZBNJ2PO5MGZ6GT"),
            ("ns3", "svc3", "p80", "X27LE4BHSL4DOUIK"),
            ("ns4", "svc4", "p80", "4SW47YFZTEDKD3PK"),
            ("ns5", "svc5", "p80", "NUKIZ6OKUXPJNT4C"),
            ("ns2", "svc2", "p8080", "2VJB64SDSIJUP5T6"),
            ("ns4", "svc4", "p8082", "EBDQOQU5SJFXRIL3"),
        ];
        for (ns, n, p, want) in cases {
            let c = ServiceChains::of(&spn(ns, n, p));
            assert_eq!(c.svc, format!("KUBE-SVC-{want}"));
            assert_eq!(c.svl, format!("KUBE-SVL-{want}"));
            assert_eq!(c.ext, format!("KUBE-EXT-{want}"));
            assert_eq!(c.fw, format!("KUBE-FW-{want}"));
        }
        let sep = |ns, n, ep: &str| endpoint_chain(&spn(ns, n, "p80"), ep.parse().unwrap());
        assert_eq!(
            sep("ns1", "svc1", "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            sep("ns5", "svc5", "10.180.0.3:80"),
            "KUBE-SEP-I77PXRDZVX7PMWMN"
        );
        assert_eq!(
            sep("ns1", "svc1", "10.0.0.0:80"),
            "KUBE-SEP-DKGQUZGBKLTPAR56"
        );
    }

    #[test]
    fn ownership() {
        assert!(is_owned_chain("nat", "KUBE-SEP-ABC"));
        assert!(is_owned_chain("filter", "KUBE-PROXY-FIREWALL"));
        assert!(!is_owned_chain("filter", "KUBE-SEP-ABC"));
        assert!(!is_owned_chain("nat", "KUBE-MARK-DROP"));
        assert!(!is_owned_chain("nat", "DOCKER"));
    }
}
