//! The kernel seams of the IPVS proxier, one narrow trait each, and the
//! real implementations. Fakes live in [`crate::fake`].
//!
//! | seam | real | check by hand |
//! |---|---|---|
//! | [`Ipvs`] | [`IpvsClient`] (generic netlink) | `ipvsadm -Ln` |
//! | [`Links`] | [`Rtnl`] (rtnetlink) | `ip addr show kube-ipvs0` |
//! | [`Ipset`] | [`IpsetCmd`] (`ipset restore` / `ipset save`) | `ipset list` |
//!
//! Kernel parameters go through `proxier_netfilter::Sysctl`, the node's
//! addresses through `proxier_netfilter::node_addresses`.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::{Handle, LinkDummy};

use proxier_core::IpFamily;

use crate::client::{IpvsClient, IpvsError, Op, Timeouts};
use crate::codec::{Dest, Service};

/// The IPVS table.
pub trait Ipvs: Send + Sync + fmt::Debug {
    /// `ipvsadm -Ln`, for one family: its virtual services with their
    /// real servers (the kernel lists every family's services; the other
    /// family's real servers are not fetched, so a dual-stack node's two
    /// proxiers each read their own).
    fn dump(&mut self, family: IpFamily) -> Result<Vec<(Service, Vec<Dest>)>, IpvsError>;
    /// `ipvsadm -Ln -t VIP:PORT`: one service's real servers.
    fn dests(&mut self, svc: &Service) -> Result<Vec<Dest>, IpvsError>;
    /// Runs `ops` in order, batched; one result per op.
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError>;
    /// `ipvsadm --set`.
    fn set_timeouts(&mut self, t: Timeouts) -> Result<(), IpvsError>;
    /// Netlink messages sent so far.
    fn messages_sent(&self) -> u64;
}

impl Ipvs for IpvsClient {
    fn dump(&mut self, family: IpFamily) -> Result<Vec<(Service, Vec<Dest>)>, IpvsError> {
        self.dump_where(|s| family.matches(&s.addr))
    }
    fn dests(&mut self, svc: &Service) -> Result<Vec<Dest>, IpvsError> {
        IpvsClient::dests(self, svc)
    }
    fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        IpvsClient::apply(self, ops)
    }
    fn set_timeouts(&mut self, t: Timeouts) -> Result<(), IpvsError> {
        IpvsClient::set_timeouts(self, t)
    }
    fn messages_sent(&self) -> u64 {
        IpvsClient::messages_sent(self)
    }
}

/// The dummy interface that holds the service addresses, and the node's
/// own addresses.
#[async_trait]
pub trait Links: Send + Sync + fmt::Debug {
    /// `ip link add NAME type dummy` unless it exists; `ip link set up`
    /// is not needed (IPVS intercepts in INPUT).
    async fn ensure_dummy(&self, name: &str) -> io::Result<()>;
    /// `ip -o addr show dev NAME`: its addresses (empty when it does not
    /// exist).
    async fn addresses(&self, name: &str) -> io::Result<Vec<IpAddr>>;
    /// `ip addr add IP/32 dev NAME` (or /128); an existing one is fine.
    async fn add_address(&self, name: &str, ip: IpAddr) -> io::Result<()>;
    /// `ip addr del IP dev NAME`; a missing one is fine.
    async fn del_address(&self, name: &str, ip: IpAddr) -> io::Result<()>;
    /// `ip link del NAME`; a missing one is fine.
    async fn delete(&self, name: &str) -> io::Result<()>;
    /// Every address on every interface except `except` (the node's
    /// addresses, for node ports): `ip -o addr`.
    async fn node_addresses(&self, except: &str) -> io::Result<Vec<IpAddr>>;
}

/// [`Links`] over rtnetlink, in the network namespace of the thread that
/// created it.
#[derive(Debug, Clone)]
pub struct Rtnl {
    handle: Handle,
    /// The last interface looked up by name: `(name, index)`.
    index_cache: Arc<std::sync::Mutex<Option<(String, u32)>>>,
}

fn nl(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        e => io::Error::other(e.to_string()),
    }
}

impl Rtnl {
    /// Opens a route socket and spawns its connection task on the
    /// current tokio runtime.
    pub fn new() -> io::Result<Rtnl> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Rtnl {
            handle,
            index_cache: Arc::default(),
        })
    }

    async fn index(&self, name: &str) -> io::Result<Option<u32>> {
        if let Some((n, i)) = &*self.index_cache.lock().expect("lock")
            && n == name
        {
            return Ok(Some(*i));
        }
        let i = self.lookup(name).await?;
        if let Some(i) = i {
            *self.index_cache.lock().expect("lock") = Some((name.to_string(), i));
        }
        Ok(i)
    }

    async fn lookup(&self, name: &str) -> io::Result<Option<u32>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some(l.header.index)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -19 => Ok(None),
            Err(e) => Err(nl(e)),
        }
    }

    async fn all_addresses(&self) -> io::Result<Vec<(u32, IpAddr, AddressMessage)>> {
        let mut out = Vec::new();
        let mut s = self.handle.address().get().execute();
        while let Some(m) = s.try_next().await.map_err(nl)? {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                out.push((m.header.index, ip, m));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Links for Rtnl {
    async fn ensure_dummy(&self, name: &str) -> io::Result<()> {
        *self.index_cache.lock().expect("lock") = None;
        if self.index(name).await?.is_some() {
            return Ok(());
        }
        match self
            .handle
            .link()
            .add(LinkDummy::new(name).build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -17 => Ok(()),
            Err(e) => Err(nl(e)),
        }
    }

    async fn addresses(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        let Some(idx) = self.index(name).await? else {
            return Ok(Vec::new());
        };
        Ok(self
            .all_addresses()
            .await?
            .into_iter()
            .filter(|(i, _, _)| *i == idx)
            .map(|(_, ip, _)| ip)
            .collect())
    }

    async fn add_address(&self, name: &str, ip: IpAddr) -> io::Result<()> {
        let idx = self
            .index(name)
            .await?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {name}")))?;
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        match self.handle.address().add(idx, ip, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -17 => Ok(()),
            Err(e) => Err(nl(e)),
        }
    }

    async fn del_address(&self, name: &str, ip: IpAddr) -> io::Result<()> {
        let Some(idx) = self.index(name).await? else {
            return Ok(());
        };
        for (i, a, m) in self.all_addresses().await? {
            if i == idx && a == ip {
                match self.handle.address().del(m).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -99 => {}
                    Err(e) => return Err(nl(e)),
                }
            }
        }
        Ok(())
    }

    async fn delete(&self, name: &str) -> io::Result<()> {
        *self.index_cache.lock().expect("lock") = None;
        let Some(idx) = self.lookup(name).await? else {
            return Ok(());
        };
        self.handle.link().del(idx).execute().await.map_err(nl)
    }

    async fn node_addresses(&self, except: &str) -> io::Result<Vec<IpAddr>> {
        proxier_netfilter::node_addresses(Some(except)).await
    }
}

/// ipsets.
#[async_trait]
pub trait Ipset: Send + Sync + fmt::Debug {
    /// `ipset save`: every set's name with its `create` line and members,
    /// for the sets `owns` claims.
    async fn save(&self) -> io::Result<String>;
    /// `ipset restore` of `input` (`create`/`add`/`del`/`flush`/`destroy`
    /// lines), all or nothing per line as the tool does.
    async fn restore(&self, input: &str) -> io::Result<()>;
}

/// The `ipset` tool.
///
/// Why the tool and not the `ipset` crate: the crate binds libipset over
/// FFI (needs `libipset-dev` at build time and `unsafe`), while one
/// `ipset restore` applies a whole diff in one process; see the crate
/// docs for the measurement.
#[derive(Debug, Clone, Default)]
pub struct IpsetCmd;

#[async_trait]
impl Ipset for IpsetCmd {
    async fn save(&self) -> io::Result<String> {
        let out = tokio::process::Command::new("ipset")
            .arg("save")
            .output()
            .await?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ipset save: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn restore(&self, input: &str) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new("ipset")
            .args(["restore", "-exist"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("piped");
        let input = input.to_string();
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let out = child.wait_with_output().await?;
        let _ = writer.await;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "ipset restore: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}
