//! The node's own addresses, over rtnetlink (`ip -o addr`): for node
//! ports restricted by `--nodeport-addresses`, the source-range hairpin,
//! and the conntrack reconciler's node-port frontends. One way for every
//! backend and binary: no `ip` process.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::LinkAttribute;

fn nl(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        e => io::Error::other(e.to_string()),
    }
}

/// Whether `ip` can be a node's address to others: not loopback, not
/// link-local (kube-proxy's "primary" node-port address and the node's
/// primary family are chosen among these).
pub fn is_global(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_loopback() && !a.is_link_local(),
        IpAddr::V6(a) => !a.is_loopback() && !a.is_unicast_link_local(),
    }
}

/// Every address of every interface except those of `except` (an
/// interface name, e.g. `kube-ipvs0`, whose addresses are service
/// addresses, not the node's), sorted and deduplicated: what
/// `ip -o addr` lists. Runs on a fresh route socket in the network
/// namespace of the calling thread.
pub async fn node_addresses(except: Option<&str>) -> io::Result<Vec<IpAddr>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let result = async {
        let mut names = BTreeMap::new();
        let mut links = handle.link().get().execute();
        while let Some(l) = links.try_next().await.map_err(nl)? {
            if let Some(n) = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }) {
                names.insert(l.header.index, n);
            }
        }
        let mut out = Vec::new();
        let mut addrs = handle.address().get().execute();
        while let Some(m) = addrs.try_next().await.map_err(nl)? {
            if except.is_some() && names.get(&m.header.index).map(String::as_str) == except {
                continue;
            }
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            out.extend(ip);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
    .await;
    task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::is_global;

    #[test]
    fn loopback_and_link_local_are_not_global() {
        for (ip, global) in [
            ("192.168.50.1", true),
            ("127.0.0.1", false),
            ("169.254.3.4", false),
            ("fd00:50::1", true),
            ("2001:db8::1", true),
            ("::1", false),
            ("fe80::1", false),
        ] {
            assert_eq!(is_global(&ip.parse().unwrap()), global, "{ip}");
        }
    }
}
