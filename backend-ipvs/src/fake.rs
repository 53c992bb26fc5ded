//! In-memory kernel seams for unit tests of the proxier's logic. The
//! kernel tests run in the VM; these only check what the proxier asks for.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use proxier_core::IpFamily;

use crate::desired::{VsKey, key_of};
use crate::kernel::{Ipset, IpsetError, Ipvs, LinkError, Links};
use ipvs_netlink::ip_vs::IP_VS_SVC_F_HASHED;
use ipvs_netlink::{Dest, Service};
use ipvs_netlink::{IpvsError, Op, Timeouts};

/// A virtual server with its real servers by `(address, port)`.
pub type VirtualServer = (Service, BTreeMap<(IpAddr, u16), Dest>);

/// A set: its `create` line and its entries.
pub type SetState = (String, BTreeSet<String>);

/// What the fake IPVS holds, shared with the test.
#[derive(Debug, Default)]
pub struct IpvsState {
    /// Services by key, with their real servers.
    pub services: BTreeMap<VsKey, VirtualServer>,
    /// Every op applied, in order.
    pub log: Vec<Op>,
    /// Ops on these virtual servers fail with `ENOENT`.
    pub fail: BTreeSet<VsKey>,
    /// Netlink messages "sent".
    pub sent: u64,
    /// Timeouts set.
    pub timeouts: Option<Timeouts>,
}

/// A fake IPVS table (`ipvsadm` semantics: adding an existing service
/// fails with `EEXIST`, deleting a missing one with `ESRCH`).
#[derive(Debug, Clone, Default)]
pub struct FakeIpvs(pub Arc<Mutex<IpvsState>>);

fn kerr(op: &Op, errno: i32) -> IpvsError {
    IpvsError::Kernel {
        op: op.to_string(),
        source: io::Error::from_raw_os_error(errno),
    }
}

#[async_trait]
impl Ipvs for FakeIpvs {
    async fn dump(&mut self, family: IpFamily) -> Result<Vec<(Service, Vec<Dest>)>, IpvsError> {
        let mut st = self.0.lock().expect("lock");
        let mine: Vec<(Service, Vec<Dest>)> = st
            .services
            .values()
            .filter(|(s, _)| family.matches(&s.addr))
            .map(|(s, d)| (s.clone(), d.values().cloned().collect()))
            .collect();
        st.sent += 1 + mine.len() as u64;
        Ok(mine)
    }

    async fn dests(&mut self, svc: &Service) -> Result<Vec<Dest>, IpvsError> {
        let mut st = self.0.lock().expect("lock");
        st.sent += 1;
        st.services
            .get(&key_of(svc))
            .map(|(_, d)| d.values().cloned().collect())
            .ok_or_else(|| kerr(&Op::DelService(svc.clone()), 3))
    }

    async fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        let mut st = self.0.lock().expect("lock");
        st.sent += ops.len() as u64;
        let mut out = Vec::new();
        for op in ops {
            st.log.push(op.clone());
            let r = match op {
                Op::AddService(s) | Op::UpdateService(s) | Op::DelService(s)
                    if st.fail.contains(&key_of(s)) =>
                {
                    Err(kerr(op, 2))
                }
                Op::AddService(s) => match st.services.entry(key_of(s)) {
                    std::collections::btree_map::Entry::Occupied(_) => Err(kerr(op, 17)),
                    std::collections::btree_map::Entry::Vacant(v) => {
                        let mut s = s.clone();
                        s.flags |= IP_VS_SVC_F_HASHED;
                        v.insert((s, BTreeMap::new()));
                        Ok(())
                    }
                },
                Op::UpdateService(s) => match st.services.get_mut(&key_of(s)) {
                    Some(e) => {
                        e.0 = s.clone();
                        Ok(())
                    }
                    None => Err(kerr(op, 3)),
                },
                Op::DelService(s) => match st.services.remove(&key_of(s)) {
                    Some(_) => Ok(()),
                    None => Err(kerr(op, 3)),
                },
                Op::AddDest(s, d) | Op::UpdateDest(s, d) | Op::DelDest(s, d) => {
                    match st.services.get_mut(&key_of(s)) {
                        None => Err(kerr(op, 3)),
                        Some((_, ds)) => {
                            let k = (d.addr, d.port);
                            match (op, ds.contains_key(&k)) {
                                (Op::AddDest(..), true) => Err(kerr(op, 17)),
                                (Op::AddDest(..), false) => {
                                    ds.insert(k, d.clone());
                                    Ok(())
                                }
                                (Op::UpdateDest(..), true) => {
                                    let e = ds.get_mut(&k).expect("present");
                                    e.weight = d.weight;
                                    Ok(())
                                }
                                (Op::DelDest(..), true) => {
                                    ds.remove(&k);
                                    Ok(())
                                }
                                _ => Err(kerr(op, 2)),
                            }
                        }
                    }
                }
            };
            out.push(r);
        }
        Ok(out)
    }

    async fn set_timeouts(&mut self, t: Timeouts) -> Result<(), IpvsError> {
        self.0.lock().expect("lock").timeouts = Some(t);
        Ok(())
    }

    fn messages_sent(&self) -> u64 {
        self.0.lock().expect("lock").sent
    }
}

/// Fake links: interface name → addresses, plus the node's addresses.
#[derive(Debug, Clone, Default)]
pub struct FakeLinks {
    /// Interfaces and their addresses.
    pub links: Arc<Mutex<BTreeMap<String, BTreeSet<IpAddr>>>>,
}

#[async_trait]
impl Links for FakeLinks {
    async fn ensure_dummy(&self, name: &str) -> Result<(), LinkError> {
        self.links
            .lock()
            .expect("lock")
            .entry(name.into())
            .or_default();
        Ok(())
    }
    async fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, LinkError> {
        Ok(self
            .links
            .lock()
            .expect("lock")
            .get(name)
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default())
    }
    async fn add_address(&self, name: &str, ip: IpAddr) -> Result<(), LinkError> {
        let mut l = self.links.lock().expect("lock");
        let a = l.get_mut(name).ok_or_else(|| {
            LinkError::add_address(name, ip, io::Error::from_raw_os_error(19 /* ENODEV */))
        })?;
        a.insert(ip);
        Ok(())
    }
    async fn del_address(&self, name: &str, ip: IpAddr) -> Result<(), LinkError> {
        if let Some(a) = self.links.lock().expect("lock").get_mut(name) {
            a.remove(&ip);
        }
        Ok(())
    }
    async fn delete(&self, name: &str) -> Result<(), LinkError> {
        self.links.lock().expect("lock").remove(name);
        Ok(())
    }
    async fn node_addresses(&self, except: &str) -> Result<Vec<IpAddr>, LinkError> {
        Ok(self
            .links
            .lock()
            .expect("lock")
            .iter()
            .filter(|(n, _)| n.as_str() != except)
            .flat_map(|(_, a)| a.iter().copied())
            .collect())
    }
}

/// Fake ipsets: name → (create line, entries).
#[derive(Debug, Clone, Default)]
pub struct FakeIpset {
    /// The sets.
    pub sets: Arc<Mutex<BTreeMap<String, SetState>>>,
    /// Every restore input.
    pub restores: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Ipset for FakeIpset {
    async fn save(&self) -> Result<String, IpsetError> {
        let mut out = String::new();
        for (name, (create, entries)) in self.sets.lock().expect("lock").iter() {
            out.push_str(create);
            out.push('\n');
            for e in entries {
                out.push_str(&format!("add {name} {e}\n"));
            }
        }
        Ok(out)
    }

    async fn restore(&self, input: &str) -> Result<(), IpsetError> {
        self.restores.lock().expect("lock").push(input.to_string());
        let mut sets = self.sets.lock().expect("lock");
        for line in input.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["create", name, ..] => {
                    sets.entry(name.to_string())
                        .or_insert_with(|| (line.to_string(), BTreeSet::new()));
                }
                // `add` takes extensions (`skbmark 0x10000/0xffff0000`) and,
                // as under `-exist`, replaces the element's; `del` takes
                // the element alone, as `ipset` does.
                ["add", name, e, ..] | ["del", name, e] => {
                    let set = sets.get_mut(*name).ok_or_else(|| {
                        IpsetError::restore(io::Error::other(format!("no set {name}")))
                    })?;
                    set.1.retain(|have| have.split(' ').next() != Some(*e));
                    if w[0] == "add" {
                        set.1.insert(w[2..].join(" "));
                    }
                }
                ["destroy", name] => {
                    sets.remove(*name);
                }
                _ => {
                    return Err(IpsetError::restore(io::Error::other(format!(
                        "bad line {line:?}"
                    ))));
                }
            }
        }
        Ok(())
    }
}
