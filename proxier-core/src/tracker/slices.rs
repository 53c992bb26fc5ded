//! The slice cache, as kube-proxy's `endpointslicecache.go`: each
//! service's EndpointSlices reduced to what the proxier uses (applied and
//! pending), and the endpoint lists built from them in kube-proxy's
//! order (by `ip:port` text), with the diff that makes a change set.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::model::{Endpoint, Hints, NamespacedName, Protocol, ServicePortName};

use super::snapshot::{ChangeSet, StaleEndpoint};

/// An EndpointSlice reduced to what the proxier uses, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SliceData {
    pub(super) ports: Vec<(Arc<str>, u16, Protocol)>,
    pub(super) endpoints: Vec<SliceEp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SliceEp {
    pub(super) ip: IpAddr,
    pub(super) ready: bool,
    pub(super) serving: bool,
    pub(super) terminating: bool,
    pub(super) node_name: Option<Arc<str>>,
    pub(super) zone: Option<Arc<str>>,
    pub(super) hints: Option<Arc<Hints>>,
}

/// The endpoints of every port of one service, by port key (few entries:
/// a vector, not a map).
pub(super) type Built = Vec<(ServicePortName, Arc<[Endpoint]>)>;

pub(super) fn built_get<'a>(built: &'a Built, k: &ServicePortName) -> Option<&'a Arc<[Endpoint]>> {
    built.iter().find(|(b, _)| b == k).map(|(_, v)| v)
}

#[derive(Debug, Default)]
pub(super) struct SliceTracker {
    pub(super) applied: BTreeMap<Arc<str>, Arc<SliceData>>,
    /// `None` = removal pending.
    pub(super) pending: BTreeMap<Arc<str>, Option<Arc<SliceData>>>,
    pub(super) built: Built,
    /// Listed in `slices_dirty` (kept until the next apply).
    pub(super) dirty: bool,
}

/// Builds the endpoints of every port of a service from its slices: later
/// slices (by name) win over earlier ones for the same `ip:port`, unless
/// the later one is terminating; each list is sorted by `ip:port` text, as
/// kube-proxy sorts it.
pub(super) fn build_endpoints(
    svc: &NamespacedName,
    applied: &BTreeMap<Arc<str>, Arc<SliceData>>,
    node_name: &str,
) -> Built {
    let mut by_port: Vec<(ServicePortName, Vec<(&SliceEp, u16)>)> = Vec::new();
    for data in applied.values() {
        for (pname, port, proto) in &data.ports {
            let i = match by_port
                .iter()
                .position(|(k, _)| k.protocol == *proto && k.port == *pname)
            {
                Some(i) => i,
                None => {
                    let key = ServicePortName {
                        service: svc.clone(),
                        port: pname.clone(),
                        protocol: *proto,
                    };
                    by_port.push((key, Vec::with_capacity(data.endpoints.len())));
                    by_port.len() - 1
                }
            };
            by_port[i]
                .1
                .extend(data.endpoints.iter().map(|e| (e, *port)));
        }
    }
    by_port.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    by_port
        .into_iter()
        .map(|(k, raws)| (k, ordered_endpoints(&raws, node_name)))
        .collect()
}

pub(super) fn diff_endpoints(prev: &Built, cur: &Built, changes: &mut ChangeSet) {
    for (k, old) in prev.iter().filter(|(k, _)| k.protocol == Protocol::Udp) {
        let new = built_get(cur, k).map(|v| &v[..]).unwrap_or(&[]);
        for ep in old.iter().filter(|e| e.is_serving()) {
            let kept = new.iter().any(|n| n.addr == ep.addr && n.is_serving());
            if !kept {
                changes.deleted_udp_endpoints.push(StaleEndpoint {
                    service: k.clone(),
                    endpoint: ep.addr,
                });
            }
        }
    }
    for (k, new) in cur.iter().filter(|(k, _)| k.protocol == Protocol::Udp) {
        let serving_now = new.iter().any(|e| e.is_serving());
        let serving_before = built_get(prev, k).is_some_and(|v| v.iter().any(|e| e.is_serving()));
        if serving_now && !serving_before {
            changes.newly_active_udp_services.push(k.clone());
        }
    }
}

/// `ip:port` as text, on the stack: the order kube-proxy sorts by (used
/// for IPv6; IPv4 has [`v4_text_order`]).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct TextKey([u8; 56], u8);

impl TextKey {
    fn of(a: &SocketAddr) -> TextKey {
        use std::io::Write;
        let mut buf = [0u8; 56];
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cur, "{a}");
        let n = cur.position() as usize;
        // Bytes after the text are zero, so arrays compare like strings.
        TextKey(buf, n as u8)
    }
}

/// A number whose order is the order of `n`'s decimal text among texts of
/// at most `width` digits followed by a separator: each digit `d` becomes
/// `d + 1` in base `base`, and a missing digit (where the separator
/// stands) is `missing`: 0 when the separator sorts before the digits
/// (`.`, or the end of the text), `base - 1` when it sorts after them
/// (`:`).
pub(super) const fn decimal_text_order(n: u32, width: u32, base: u64, missing: u64) -> u64 {
    let mut digits = [0u8; 5];
    let mut len = 0;
    let mut v = n;
    loop {
        digits[len] = (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut code = 0u64;
    let mut i = 0;
    while i < width as usize {
        let d = if i < len {
            digits[len - 1 - i] as u64 + 1
        } else {
            missing
        };
        code = code * base + d;
        i += 1;
    }
    code
}

/// [`decimal_text_order`] of every octet followed by `.` (which sorts
/// before the digits).
const OCTET_ORDER: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decimal_text_order(i as u32, 3, 11, 0) as u16;
        i += 1;
    }
    t
};

/// [`decimal_text_order`] of the last octet, followed by `:` (which sorts
/// after the digits: `1.2.3.245:1` before `1.2.3.24:1`).
const LAST_OCTET_ORDER: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decimal_text_order(i as u32, 3, 12, 11) as u16;
        i += 1;
    }
    t
};

/// A `u64` that orders IPv4 `a.b.c.d:port` as their text does: the text
/// compares part by part, and each part is coded by
/// [`decimal_text_order`] with its separator's place among the digits
/// (`.` before them, `:` after, the end of the port before):
/// 11^9 × 12^3 × 11^5 < 2^64. `port_order` is the port's code (computed
/// once per list, ports repeat).
pub(super) fn v4_text_order(ip: std::net::Ipv4Addr, port_order: u64) -> u64 {
    let o = ip.octets();
    let ip = o[..3].iter().fold(0u64, |k, o| {
        k * 1331 + u64::from(OCTET_ORDER[usize::from(*o)])
    });
    let ip = ip * 1728 + u64::from(LAST_OCTET_ORDER[usize::from(o[3])]);
    ip * 161_051 + port_order
}

/// The endpoints of one service port, from its slices' endpoints (in
/// slice order) at their target ports: sorted by `ip:port` text, and a
/// later copy of an address (a later slice, by name) replaces an earlier
/// one unless it is terminating, as kube-proxy's slice cache does. Sorts
/// keys, not endpoints, and builds each endpoint once.
pub(super) fn ordered_endpoints(raws: &[(&SliceEp, u16)], node_name: &str) -> Arc<[Endpoint]> {
    fn merge<K: Ord>(raws: &[(&SliceEp, u16)], key: impl Fn(&SliceEp, u16) -> K) -> Vec<(K, u32)> {
        let mut keyed: Vec<(K, u32)> = raws
            .iter()
            .zip(0..)
            .map(|((e, p), i)| (key(e, *p), i))
            .collect();
        // (key, position): copies of an address stay in slice order.
        keyed.sort_unstable();
        keyed.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            if !raws[later.1 as usize].0.terminating {
                kept.1 = later.1;
            }
            true
        });
        keyed
    }
    let endpoint = |i: u32| {
        let (e, port) = raws[i as usize];
        let local = e.node_name.as_deref() == Some(node_name);
        let mut ep = Endpoint::new(
            SocketAddr::new(e.ip, port),
            e.ready,
            e.serving,
            e.terminating,
            local,
        );
        ep.node_name = e.node_name.clone();
        ep.zone = e.zone.clone();
        ep.hints = e.hints.clone();
        ep
    };
    if raws.iter().all(|(e, _)| e.ip.is_ipv4()) {
        // Ports repeat: code the first once.
        let p0 = raws.first().map_or(0, |r| r.1);
        let c0 = decimal_text_order(u32::from(p0), 5, 11, 0);
        let keyed = merge(raws, |e, p| match e.ip {
            IpAddr::V4(ip) if p == p0 => v4_text_order(ip, c0),
            IpAddr::V4(ip) => v4_text_order(ip, decimal_text_order(u32::from(p), 5, 11, 0)),
            IpAddr::V6(_) => u64::MAX,
        });
        keyed.iter().map(|(_, i)| endpoint(*i)).collect()
    } else {
        let keyed = merge(raws, |e, p| TextKey::of(&SocketAddr::new(e.ip, p)));
        keyed.iter().map(|(_, i)| endpoint(*i)).collect()
    }
}

pub(super) fn local_ready_ips(built: &Built) -> u32 {
    let local = |e: &&Endpoint| e.is_ready() && e.is_local();
    match &built[..] {
        // One port: addresses are unique in its list, so are IPs.
        [(_, eps)] => eps.iter().filter(local).count() as u32,
        _ => {
            let mut ips: Vec<IpAddr> = built
                .iter()
                .flat_map(|(_, v)| v.iter())
                .filter(local)
                .map(|e| e.ip())
                .collect();
            ips.sort_unstable();
            ips.dedup();
            ips.len() as u32
        }
    }
}
