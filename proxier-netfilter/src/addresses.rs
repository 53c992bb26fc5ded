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
