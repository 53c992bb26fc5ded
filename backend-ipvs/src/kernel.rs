//! The kernel seams of the IPVS proxier, one narrow trait each, and the
//! real implementations. Fakes live in [`crate::fake`].
//!
//! | seam | real | check by hand |
//! |---|---|---|
//! | [`Ipvs`] | [`IpvsNetlink`] ([`IpvsClient`] over generic netlink, on the blocking pool) | `ipvsadm -Ln` |
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

use ipvs_netlink::{Dest, Service};
use ipvs_netlink::{IpvsClient, IpvsError, Op, Timeouts};

/// The IPVS table. Asynchronous: a real implementation must not block
/// the runtime's workers while the kernel works through a batch
/// ([`IpvsNetlink`] runs its socket on tokio's blocking pool).
#[async_trait]
pub trait Ipvs: Send + Sync + fmt::Debug {
    /// `ipvsadm -Ln`, for one family: its virtual services with their
    /// real servers (the kernel lists every family's services; the other
    /// family's real servers are not fetched, so a dual-stack node's two
    /// proxiers each read their own).
    async fn dump(&mut self, family: IpFamily) -> Result<Vec<(Service, Vec<Dest>)>, IpvsError>;
    /// `ipvsadm -Ln -t VIP:PORT`: one service's real servers.
    async fn dests(&mut self, svc: &Service) -> Result<Vec<Dest>, IpvsError>;
    /// Runs `ops` in order, batched; one result per op.
    async fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError>;
    /// `ipvsadm --set`.
    async fn set_timeouts(&mut self, t: Timeouts) -> Result<(), IpvsError>;
    /// Netlink messages sent so far.
    fn messages_sent(&self) -> u64;
}

/// [`Ipvs`] over generic netlink: the blocking [`IpvsClient`], each call
/// run on tokio's blocking pool (`spawn_blocking`) so that a sync of
/// 100,000 real servers (seconds of kernel time) does not hold up the
/// health server, the metrics or the other family's sync on the same
/// workers. The socket keeps the network namespace it was opened in,
/// whatever thread uses it. The client is shared with the call in
/// flight, so a caller that gives up on a call (drops its future) loses
/// nothing: the call finishes on the pool and the next one waits for it.
#[derive(Debug, Clone)]
pub struct IpvsNetlink {
    client: Arc<std::sync::Mutex<IpvsClient>>,
    /// Messages sent, as of the last call's end.
    sent: Arc<std::sync::atomic::AtomicU64>,
}

impl IpvsNetlink {
    /// Connects to the IPVS generic-netlink family in the current network
    /// namespace.
    pub fn connect() -> Result<IpvsNetlink, IpvsError> {
        Ok(IpvsNetlink::new(IpvsClient::connect()?))
    }

    /// Wraps a connected client.
    pub fn new(client: IpvsClient) -> IpvsNetlink {
        IpvsNetlink {
            sent: Arc::new(client.messages_sent().into()),
            client: Arc::new(std::sync::Mutex::new(client)),
        }
    }

    /// Runs `f` on the client on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut IpvsClient) -> Result<T, IpvsError> + Send + 'static,
    ) -> Result<T, IpvsError> {
        let (client, sent) = (self.client.clone(), self.sent.clone());
        tokio::task::spawn_blocking(move || {
            // A panicked call leaves the client as it was: usable.
            let mut c = client.lock().unwrap_or_else(|p| p.into_inner());
            let r = f(&mut c);
            sent.store(c.messages_sent(), std::sync::atomic::Ordering::Relaxed);
            r
        })
        .await
        .map_err(|_| IpvsError::Lost)?
    }
}

#[async_trait]
impl Ipvs for IpvsNetlink {
    async fn dump(&mut self, family: IpFamily) -> Result<Vec<(Service, Vec<Dest>)>, IpvsError> {
        self.blocking(move |c| c.dump_where(|s| family.matches(&s.addr)))
            .await
    }
    async fn dests(&mut self, svc: &Service) -> Result<Vec<Dest>, IpvsError> {
        let svc = svc.clone();
        self.blocking(move |c| c.dests(&svc)).await
    }
    async fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        // A copy for the blocking pool: small next to the kernel's work
        // (one allocation per op, against one netlink message per op).
        let ops = ops.to_vec();
        self.blocking(move |c| c.apply(&ops)).await
    }
    async fn set_timeouts(&mut self, t: Timeouts) -> Result<(), IpvsError> {
        self.blocking(move |c| c.set_timeouts(t)).await
    }
    fn messages_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The dummy interface that holds the service addresses, and the node's
/// own addresses.
#[async_trait]
pub trait Links: Send + Sync + fmt::Debug {
    /// `ip link add NAME type dummy` unless it exists; `ip link set up`
    /// is not needed (IPVS intercepts in INPUT).
    async fn ensure_dummy(&self, name: &str) -> Result<(), LinkError>;
    /// `ip -o addr show dev NAME`: its addresses (empty when it does not
    /// exist).
    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, LinkError>;
    /// `ip addr add IP/32 dev NAME` (or /128); an existing one is fine.
    async fn add_address(&self, name: &str, ip: IpAddr) -> Result<(), LinkError>;
    /// `ip addr del IP/32 dev NAME` (or /128); a missing one is fine.
    async fn del_address(&self, name: &str, ip: IpAddr) -> Result<(), LinkError>;
    /// `ip link del NAME`; a missing one is fine.
    async fn delete(&self, name: &str) -> Result<(), LinkError>;
    /// [`Links::add_address`] of each of `ips`; the failures, each with
    /// its address.
    async fn add_addresses(&self, name: &str, ips: &[IpAddr]) -> Vec<LinkError> {
        let mut failed = Vec::new();
        for ip in ips {
            if let Err(e) = self.add_address(name, *ip).await {
                failed.push(e);
            }
        }
        failed
    }
    /// [`Links::del_address`] of each of `ips`; the failures. [`Rtnl`]
    /// reads the addresses once for all of them.
    async fn del_addresses(&self, name: &str, ips: &[IpAddr]) -> Vec<LinkError> {
        let mut failed = Vec::new();
        for ip in ips {
            if let Err(e) = self.del_address(name, *ip).await {
                failed.push(e);
            }
        }
        failed
    }
    /// Every address on every interface except `except` (the node's
    /// addresses, for node ports): `ip -o addr`.
    async fn node_addresses(&self, except: &str) -> Result<Vec<IpAddr>, LinkError>;
}

/// A [`Links`] step failed: the equivalent `ip` command, the address it
/// was about, and what the kernel answered.
#[derive(Debug, thiserror::Error)]
#[error("{command}: {source}")]
pub struct LinkError {
    /// The equivalent command (`ip addr add 10.96.0.1/32 dev kube-ipvs0`).
    pub command: String,
    /// The address, when the step was about one.
    pub ip: Option<IpAddr>,
    /// What rtnetlink answered.
    #[source]
    pub source: io::Error,
}

impl LinkError {
    /// `ip link add NAME type dummy` failed.
    pub fn ensure_dummy(name: &str, source: io::Error) -> LinkError {
        LinkError::new(format!("ip link add {name} type dummy"), None, source)
    }
    /// `ip -o addr show dev NAME` failed.
    pub fn addresses(name: &str, source: io::Error) -> LinkError {
        LinkError::new(format!("ip -o addr show dev {name}"), None, source)
    }
    /// `ip addr add IP/LEN dev NAME` failed.
    pub fn add_address(name: &str, ip: IpAddr, source: io::Error) -> LinkError {
        LinkError::new(
            format!("ip addr add {} dev {name}", host(ip)),
            Some(ip),
            source,
        )
    }
    /// `ip addr del IP/LEN dev NAME` failed.
    pub fn del_address(name: &str, ip: IpAddr, source: io::Error) -> LinkError {
        LinkError::new(
            format!("ip addr del {} dev {name}", host(ip)),
            Some(ip),
            source,
        )
    }
    /// `ip link del NAME` failed.
    pub fn delete(name: &str, source: io::Error) -> LinkError {
        LinkError::new(format!("ip link del {name}"), None, source)
    }
    /// `ip -o addr` (every interface but `except`) failed.
    pub fn node_addresses(except: &str, source: io::Error) -> LinkError {
        LinkError::new(format!("ip -o addr (except {except})"), None, source)
    }
    fn new(command: String, ip: Option<IpAddr>, source: io::Error) -> LinkError {
        LinkError {
            command,
            ip,
            source,
        }
    }
}

/// `IP/32` or `IP/128`.
fn host(ip: IpAddr) -> String {
    format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 })
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

impl Rtnl {
    async fn io_ensure_dummy(&self, name: &str) -> io::Result<()> {
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

    async fn io_addresses(&self, name: &str) -> io::Result<Vec<IpAddr>> {
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

    async fn io_add_address(&self, name: &str, ip: IpAddr) -> io::Result<()> {
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

    /// Deletes those of `ips` that `name` holds, after one dump of the
    /// addresses (one dump per address would be quadratic); the failed
    /// deletes, each with its address.
    async fn io_del_addresses(&self, name: &str, ips: &[IpAddr]) -> io::Result<Vec<LinkError>> {
        let Some(idx) = self.index(name).await? else {
            return Ok(Vec::new());
        };
        let want: std::collections::HashSet<&IpAddr> = ips.iter().collect();
        let mut failed = Vec::new();
        for (i, a, m) in self.all_addresses().await? {
            if i != idx || !want.contains(&a) {
                continue;
            }
            match self.handle.address().del(m).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -99 => {}
                Err(e) => failed.push(LinkError::del_address(name, a, nl(e))),
            }
        }
        Ok(failed)
    }

    async fn io_delete(&self, name: &str) -> io::Result<()> {
        *self.index_cache.lock().expect("lock") = None;
        let Some(idx) = self.lookup(name).await? else {
            return Ok(());
        };
        self.handle.link().del(idx).execute().await.map_err(nl)
    }

    async fn io_node_addresses(&self, except: &str) -> io::Result<Vec<IpAddr>> {
        proxier_netfilter::node_addresses(Some(except)).await
    }
}

#[async_trait]
impl Links for Rtnl {
    async fn ensure_dummy(&self, name: &str) -> Result<(), LinkError> {
        self.io_ensure_dummy(name)
            .await
            .map_err(|e| LinkError::ensure_dummy(name, e))
    }
    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, LinkError> {
        self.io_addresses(name)
            .await
            .map_err(|e| LinkError::addresses(name, e))
    }
    async fn add_address(&self, name: &str, ip: IpAddr) -> Result<(), LinkError> {
        self.io_add_address(name, ip)
            .await
            .map_err(|e| LinkError::add_address(name, ip, e))
    }
    async fn del_addresses(&self, name: &str, ips: &[IpAddr]) -> Vec<LinkError> {
        match self.io_del_addresses(name, ips).await {
            Ok(failed) => failed,
            Err(e) => ips
                .iter()
                .map(|ip| {
                    LinkError::del_address(name, *ip, io::Error::new(e.kind(), e.to_string()))
                })
                .collect(),
        }
    }
    async fn del_address(&self, name: &str, ip: IpAddr) -> Result<(), LinkError> {
        match self.del_addresses(name, &[ip]).await.pop() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    async fn delete(&self, name: &str) -> Result<(), LinkError> {
        self.io_delete(name)
            .await
            .map_err(|e| LinkError::delete(name, e))
    }
    async fn node_addresses(&self, except: &str) -> Result<Vec<IpAddr>, LinkError> {
        self.io_node_addresses(except)
            .await
            .map_err(|e| LinkError::node_addresses(except, e))
    }
}

/// ipsets.
#[async_trait]
pub trait Ipset: Send + Sync + fmt::Debug {
    /// `ipset save`: every set's name with its `create` line and members,
    /// for the sets `owns` claims.
    async fn save(&self) -> Result<String, IpsetError>;
    /// `ipset restore -exist` of `input` (`create`/`add`/`del`/`flush`/
    /// `destroy` lines), all or nothing per line as the tool does.
    async fn restore(&self, input: &str) -> Result<(), IpsetError>;
}

/// An [`Ipset`] step failed: the command, and why (the tool could not be
/// run, or what it wrote on stderr).
#[derive(Debug, thiserror::Error)]
#[error("{command}: {source}")]
pub struct IpsetError {
    /// `ipset save` or `ipset restore -exist`.
    pub command: &'static str,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl IpsetError {
    /// `ipset save` failed.
    pub fn save(source: io::Error) -> IpsetError {
        IpsetError {
            command: "ipset save",
            source,
        }
    }
    /// `ipset restore -exist` failed.
    pub fn restore(source: io::Error) -> IpsetError {
        IpsetError {
            command: "ipset restore -exist",
            source,
        }
    }
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
    async fn save(&self) -> Result<String, IpsetError> {
        self.io_save().await.map_err(IpsetError::save)
    }
    async fn restore(&self, input: &str) -> Result<(), IpsetError> {
        self.io_restore(input).await.map_err(IpsetError::restore)
    }
}

impl IpsetCmd {
    async fn io_save(&self) -> io::Result<String> {
        let out = tokio::process::Command::new("ipset")
            .arg("save")
            .output()
            .await?;
        if !out.status.success() {
            return Err(io::Error::other(stderr_text(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn io_restore(&self, input: &str) -> io::Result<()> {
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
            return Err(io::Error::other(stderr_text(&out.stderr)));
        }
        Ok(())
    }
}

/// What a tool wrote on stderr, trimmed and escaped for a log line.
fn stderr_text(stderr: &[u8]) -> String {
    proxier_core::escape(String::from_utf8_lossy(stderr).trim())
}
