//! [`IpvsClient`]: the IPVS generic-netlink family on one `NETLINK_GENERIC`
//! socket. Each call names the `ipvsadm` command it is equivalent to, so
//! anyone can check the result by hand with `ipvsadm -Ln`.
//!
//! Writes go through [`IpvsClient::apply`]: many operations are packed
//! into one `sendmsg` (up to [`BATCH_BYTES`]), each with `NLM_F_ACK` and
//! its own sequence number, and every acknowledgement is matched back to
//! its operation. One failed operation does not stop the others.

use std::fmt;
use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use crate::codec::*;
use crate::ip_vs::*;

/// Bytes of requests packed into one `sendmsg`.
pub const BATCH_BYTES: usize = 32 * 1024;
const RECV_BYTES: usize = 256 * 1024;

/// What went wrong talking to IPVS.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The `IPVS` generic-netlink family is not registered: the kernel has
    /// no `ip_vs` module loaded (`modprobe ip_vs`).
    #[error(
        "the IPVS generic-netlink family is not available: the ip_vs kernel module is not loaded \
         (load it with `modprobe ip_vs`; check with `lsmod | grep ip_vs`)"
    )]
    NoFamily(#[source] io::Error),
    /// The socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[from] io::Error),
    /// The kernel refused an operation (`errno`).
    #[error("{op}: {source}")]
    Kernel {
        /// The operation, as an `ipvsadm` command.
        op: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// A reply did not decode.
    #[error("malformed reply to {op}: {reason}")]
    Decode {
        /// The request.
        op: String,
        /// Why.
        reason: String,
    },
    /// A call run on another thread (as `backend_ipvs::IpvsNetlink` runs
    /// it on tokio's blocking pool) did not return: it panicked, or the
    /// runtime is shutting down.
    #[error(
        "an IPVS call on the blocking pool did not return (it panicked, or the runtime is shutting down)"
    )]
    Lost,
}

impl IpvsError {
    /// The kernel's `errno`, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            IpvsError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `ipvsadm -A`.
    AddService(Service),
    /// `ipvsadm -E`.
    UpdateService(Service),
    /// `ipvsadm -D`.
    DelService(Service),
    /// `ipvsadm -a`.
    AddDest(Service, Dest),
    /// `ipvsadm -e`.
    UpdateDest(Service, Dest),
    /// `ipvsadm -d`.
    DelDest(Service, Dest),
}

fn proto_flag(p: u16) -> &'static str {
    match p {
        17 => "-u",
        132 => "--sctp-service",
        _ => "-t",
    }
}

fn vip(s: &Service) -> String {
    match s.addr {
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", s.port),
        a => format!("{a}:{}", s.port),
    }
}

fn rip(d: &Dest) -> String {
    match d.addr {
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", d.port),
        a => format!("{a}:{}", d.port),
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let svc = |f: &mut fmt::Formatter<'_>, c: &str, s: &Service| {
            if s.fwmark != 0 {
                // As `ipvsadm -Sn` prints a firewall-mark service.
                let six = if s.addr.is_ipv6() { " -6" } else { "" };
                return write!(f, "ipvsadm {c} -f {}{six}", s.fwmark);
            }
            write!(f, "ipvsadm {c} {} {}", proto_flag(s.protocol), vip(s))
        };
        match self {
            Op::AddService(s) | Op::UpdateService(s) => {
                let c = if matches!(self, Op::AddService(_)) {
                    "-A"
                } else {
                    "-E"
                };
                svc(f, c, s)?;
                write!(f, " -s {}", s.scheduler)?;
                if s.flags & IP_VS_SVC_F_PERSISTENT != 0 {
                    write!(f, " -p {}", s.timeout)?;
                }
                Ok(())
            }
            Op::DelService(s) => svc(f, "-D", s),
            Op::AddDest(s, d) | Op::UpdateDest(s, d) => {
                let c = if matches!(self, Op::AddDest(..)) {
                    "-a"
                } else {
                    "-e"
                };
                svc(f, c, s)?;
                write!(f, " -r {} -m -w {}", rip(d), d.weight)
            }
            Op::DelDest(s, d) => {
                svc(f, "-d", s)?;
                write!(f, " -r {}", rip(d))
            }
        }
    }
}

impl Op {
    fn message(&self) -> IpvsMessage {
        match self {
            Op::AddService(s) => {
                IpvsMessage::new(IPVS_CMD_NEW_SERVICE, vec![IpvsAttr::Service(s.clone())])
            }
            Op::UpdateService(s) => {
                IpvsMessage::new(IPVS_CMD_SET_SERVICE, vec![IpvsAttr::Service(s.clone())])
            }
            Op::DelService(s) => {
                IpvsMessage::new(IPVS_CMD_DEL_SERVICE, vec![IpvsAttr::Service(s.key())])
            }
            Op::AddDest(s, d) => IpvsMessage::new(
                IPVS_CMD_NEW_DEST,
                vec![IpvsAttr::Service(s.key()), IpvsAttr::Dest(d.clone())],
            ),
            Op::UpdateDest(s, d) => IpvsMessage::new(
                IPVS_CMD_SET_DEST,
                vec![IpvsAttr::Service(s.key()), IpvsAttr::Dest(d.clone())],
            ),
            Op::DelDest(s, d) => IpvsMessage::new(
                IPVS_CMD_DEL_DEST,
                vec![IpvsAttr::Service(s.key()), IpvsAttr::Dest(d.clone())],
            ),
        }
    }
}

/// The connection timeouts (`ipvsadm --set TCP TCPFIN UDP`), seconds; 0
/// leaves a value unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// Established TCP.
    pub tcp: u32,
    /// TCP after FIN.
    pub tcp_fin: u32,
    /// UDP.
    pub udp: u32,
}

/// A client of the kernel's IPVS family.
pub struct IpvsClient {
    sock: Socket,
    family: u16,
    seq: u32,
    sent: u64,
    recv: Vec<u8>,
    capture: Option<Vec<(bool, Vec<u8>)>>,
}

impl fmt::Debug for IpvsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpvsClient")
            .field("family", &self.family)
            .field("sent", &self.sent)
            .finish()
    }
}

/// One message of a kernel reply, by sequence number.
#[derive(Debug)]
pub enum Reply {
    /// A message of the IPVS family (a dump entry, the config).
    Msg(u32, IpvsMessage),
    /// `NLMSG_ERROR`: an acknowledgement (`None`) or the kernel's error.
    Ack(u32, Option<io::Error>),
    /// `NLMSG_DONE`: the end of a dump.
    Done(u32),
}

impl IpvsClient {
    /// Opens a socket in the current network namespace and resolves the
    /// `IPVS` family (`genl ctrl get name IPVS`).
    pub fn connect() -> Result<IpvsClient, IpvsError> {
        let mut sock = Socket::new(NETLINK_GENERIC)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        let _ = sock.set_rx_buf_sz(4 << 20);
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        let mut c = IpvsClient {
            sock,
            family: 0,
            seq: 1,
            sent: 0,
            recv: vec![0; RECV_BYTES],
            capture: None,
        };
        c.family = c.resolve().map_err(|e| match e {
            IpvsError::Kernel { source, .. } => IpvsError::NoFamily(source),
            e => e,
        })?;
        Ok(c)
    }

    /// The resolved generic-netlink family id.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    /// Netlink request messages sent so far (dump requests and writes).
    pub fn messages_sent(&self) -> u64 {
        self.sent
    }

    /// Starts (or stops) recording every datagram sent and received, for
    /// codec tests built from real kernel traffic.
    pub fn set_capture(&mut self, on: bool) {
        self.capture = on.then(Vec::new);
    }

    /// The recorded datagrams since [`set_capture`](Self::set_capture):
    /// `(sent, bytes)`.
    pub fn take_capture(&mut self) -> Vec<(bool, Vec<u8>)> {
        self.capture
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn resolve(&mut self) -> Result<u16, IpvsError> {
        let mut g = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(IPVS_GENL_NAME.into())],
        });
        g.finalize();
        let mut h = NetlinkHeader::default();
        h.flags = NLM_F_REQUEST | NLM_F_ACK;
        h.sequence_number = self.next_seq();
        let seq = h.sequence_number;
        let mut m = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(g));
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        self.send(&buf, 1)?;
        let op = "genl ctrl get name IPVS";
        let mut id = None;
        loop {
            let n = self.sock.recv(&mut &mut self.recv[..], 0)?;
            let mut off = 0;
            while off + 16 <= n {
                let len =
                    u32::from_ne_bytes(self.recv[off..off + 4].try_into().expect("4")) as usize;
                if len < 16 || off + len > n {
                    return Err(decode_err(op, "bad netlink length"));
                }
                let msg = NetlinkMessage::<GenlMessage<GenlCtrl>>::deserialize(
                    &self.recv[off..off + len],
                )
                .map_err(|e| decode_err(op, e))?;
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(g) => {
                        for a in g.payload.nlas {
                            if let GenlCtrlAttrs::FamilyId(v) = a {
                                id = Some(v);
                            }
                        }
                    }
                    NetlinkPayload::Error(e) => {
                        if e.code.is_some() {
                            return Err(IpvsError::Kernel {
                                op: op.into(),
                                source: e.to_io(),
                            });
                        }
                        return id.ok_or_else(|| decode_err(op, "no CTRL_ATTR_FAMILY_ID"));
                    }
                    _ => {}
                }
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&mut self, buf: &[u8], messages: u64) -> Result<(), IpvsError> {
        let n = self.sock.send(buf, 0)?;
        if n != buf.len() {
            return Err(IpvsError::Socket(io::Error::other(format!(
                "short netlink send: {n} of {} bytes",
                buf.len()
            ))));
        }
        self.sent += messages;
        if let Some(c) = &mut self.capture {
            c.push((true, buf.to_vec()));
        }
        Ok(())
    }

    fn encode(&mut self, msg: IpvsMessage, flags: u16, out: &mut Vec<u8>) -> u32 {
        let mut g = GenlMessage::from_payload(msg);
        g.set_resolved_family_id(self.family);
        g.finalize();
        let mut h = NetlinkHeader::default();
        h.flags = flags;
        h.sequence_number = self.next_seq();
        let seq = h.sequence_number;
        let mut m = NetlinkMessage::new(h, NetlinkPayload::InnerMessage(g));
        m.finalize();
        let start = out.len();
        out.resize(start + m.buffer_len(), 0);
        m.serialize(&mut out[start..]);
        out.resize((out.len() + 3) & !3, 0);
        seq
    }

    /// Receives one datagram and decodes every message in it.
    fn receive(&mut self, op: &dyn Fn() -> String) -> Result<Vec<Reply>, IpvsError> {
        let n = self.sock.recv(&mut &mut self.recv[..], 0)?;
        if let Some(c) = &mut self.capture {
            c.push((false, self.recv[..n].to_vec()));
        }
        parse_replies(&self.recv[..n], self.family).map_err(|r| decode_err(&op(), r))
    }

    /// A dump request: every reply message until `NLMSG_DONE`.
    fn dump(&mut self, msg: IpvsMessage, op: &str) -> Result<Vec<IpvsMessage>, IpvsError> {
        let mut buf = Vec::with_capacity(128);
        let seq = self.encode(msg, NLM_F_REQUEST | NLM_F_DUMP | NLM_F_ACK, &mut buf);
        self.send(&buf, 1)?;
        let mut out = Vec::new();
        loop {
            for r in self.receive(&|| op.to_string())? {
                match r {
                    Reply::Msg(s, m) if s == seq => out.push(m),
                    Reply::Done(s) if s == seq => return Ok(out),
                    Reply::Ack(s, Some(e)) if s == seq => {
                        return Err(IpvsError::Kernel {
                            op: op.into(),
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// `ipvsadm -Ln` (services only): every virtual service with its
    /// counters.
    pub fn services(&mut self) -> Result<Vec<Service>, IpvsError> {
        let op = "ipvsadm -Ln";
        let msgs = self.dump(IpvsMessage::new(IPVS_CMD_GET_SERVICE, vec![]), op)?;
        let mut out = Vec::with_capacity(msgs.len());
        for m in msgs {
            for a in m.attrs {
                if let IpvsAttr::Service(s) = a {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// `ipvsadm -Ln -t VIP:PORT`: the real servers of one service, with
    /// their connection counts and counters.
    pub fn dests(&mut self, svc: &Service) -> Result<Vec<Dest>, IpvsError> {
        let op = format!("ipvsadm -Ln {} {}", proto_flag(svc.protocol), vip(svc));
        let msgs = self.dump(
            IpvsMessage::new(IPVS_CMD_GET_DEST, vec![IpvsAttr::Service(svc.key())]),
            &op,
        )?;
        let mut out = Vec::new();
        for m in msgs {
            for a in m.attrs {
                if let IpvsAttr::Dest(d) = a {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// `ipvsadm -Ln` in full: every service with its real servers.
    pub fn dump_all(&mut self) -> Result<Vec<(Service, Vec<Dest>)>, IpvsError> {
        self.dump_where(|_| true)
    }

    /// [`IpvsClient::dump_all`] for the services `keep` selects (the
    /// others' real servers are not asked for).
    pub fn dump_where(
        &mut self,
        keep: impl Fn(&Service) -> bool,
    ) -> Result<Vec<(Service, Vec<Dest>)>, IpvsError> {
        let svcs: Vec<Service> = self.services()?.into_iter().filter(|s| keep(s)).collect();
        let mut out = Vec::with_capacity(svcs.len());
        for s in svcs {
            let d = match self.dests(&s) {
                Ok(d) => d,
                // ESRCH: deleted between the two dumps.
                Err(e) if e.errno() == Some(ESRCH) => continue,
                Err(e) => return Err(e),
            };
            out.push((s, d));
        }
        Ok(out)
    }

    /// Runs `ops` in order, packed into as few `sendmsg` calls as
    /// [`BATCH_BYTES`] allows; one result per operation.
    pub fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<(), IpvsError>>, IpvsError> {
        let mut results: Vec<Option<Result<(), IpvsError>>> =
            (0..ops.len()).map(|_| None).collect();
        let mut i = 0;
        let mut buf = Vec::with_capacity(BATCH_BYTES + 512);
        while i < ops.len() {
            buf.clear();
            let mut seqs = Vec::new();
            while i < ops.len() && buf.len() < BATCH_BYTES {
                let seq = self.encode(ops[i].message(), NLM_F_REQUEST | NLM_F_ACK, &mut buf);
                seqs.push((seq, i));
                i += 1;
            }
            self.send(&buf, seqs.len() as u64)?;
            let mut left = seqs.len();
            while left > 0 {
                let replies = self.receive(&|| "a batch of IPVS writes".to_string())?;
                for r in replies {
                    if let Reply::Ack(s, e) = r
                        && let Some(&(_, idx)) = seqs.iter().find(|(q, _)| *q == s)
                        && results[idx].is_none()
                    {
                        results[idx] = Some(match e {
                            None => Ok(()),
                            Some(source) => Err(IpvsError::Kernel {
                                op: ops[idx].to_string(),
                                source,
                            }),
                        });
                        left -= 1;
                    }
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every op acknowledged"))
            .collect())
    }

    fn one(&mut self, op: Op) -> Result<(), IpvsError> {
        self.apply(std::slice::from_ref(&op))?
            .pop()
            .expect("one result")
    }

    /// `ipvsadm -A -t VIP:PORT -s SCHED [-p TIMEOUT]`.
    pub fn add_service(&mut self, s: &Service) -> Result<(), IpvsError> {
        self.one(Op::AddService(s.clone()))
    }

    /// `ipvsadm -E -t VIP:PORT -s SCHED [-p TIMEOUT]`.
    pub fn update_service(&mut self, s: &Service) -> Result<(), IpvsError> {
        self.one(Op::UpdateService(s.clone()))
    }

    /// `ipvsadm -D -t VIP:PORT`.
    pub fn del_service(&mut self, s: &Service) -> Result<(), IpvsError> {
        self.one(Op::DelService(s.clone()))
    }

    /// `ipvsadm -a -t VIP:PORT -r RIP:PORT -m -w WEIGHT`.
    pub fn add_dest(&mut self, s: &Service, d: &Dest) -> Result<(), IpvsError> {
        self.one(Op::AddDest(s.clone(), d.clone()))
    }

    /// `ipvsadm -e -t VIP:PORT -r RIP:PORT -m -w WEIGHT`.
    pub fn update_dest(&mut self, s: &Service, d: &Dest) -> Result<(), IpvsError> {
        self.one(Op::UpdateDest(s.clone(), d.clone()))
    }

    /// `ipvsadm -d -t VIP:PORT -r RIP:PORT`.
    pub fn del_dest(&mut self, s: &Service, d: &Dest) -> Result<(), IpvsError> {
        self.one(Op::DelDest(s.clone(), d.clone()))
    }

    fn command(&mut self, msg: IpvsMessage, op: &str) -> Result<(), IpvsError> {
        let mut buf = Vec::with_capacity(64);
        let seq = self.encode(msg, NLM_F_REQUEST | NLM_F_ACK, &mut buf);
        self.send(&buf, 1)?;
        loop {
            for r in self.receive(&|| op.to_string())? {
                if let Reply::Ack(s, e) = r
                    && s == seq
                {
                    return match e {
                        None => Ok(()),
                        Some(source) => Err(IpvsError::Kernel {
                            op: op.into(),
                            source,
                        }),
                    };
                }
            }
        }
    }

    /// `ipvsadm -C`: removes every virtual service.
    pub fn flush(&mut self) -> Result<(), IpvsError> {
        self.command(IpvsMessage::new(IPVS_CMD_FLUSH, vec![]), "ipvsadm -C")
    }

    /// `ipvsadm --set TCP TCPFIN UDP`.
    pub fn set_timeouts(&mut self, t: Timeouts) -> Result<(), IpvsError> {
        let op = format!("ipvsadm --set {} {} {}", t.tcp, t.tcp_fin, t.udp);
        self.command(
            IpvsMessage::new(
                IPVS_CMD_SET_CONFIG,
                vec![
                    IpvsAttr::TimeoutTcp(t.tcp),
                    IpvsAttr::TimeoutTcpFin(t.tcp_fin),
                    IpvsAttr::TimeoutUdp(t.udp),
                ],
            ),
            &op,
        )
    }

    /// `ipvsadm -L --timeout`.
    pub fn timeouts(&mut self) -> Result<Timeouts, IpvsError> {
        let op = "ipvsadm -L --timeout";
        let mut buf = Vec::with_capacity(64);
        let seq = self.encode(
            IpvsMessage::new(IPVS_CMD_GET_CONFIG, vec![]),
            NLM_F_REQUEST | NLM_F_ACK,
            &mut buf,
        );
        self.send(&buf, 1)?;
        let mut t = Timeouts::default();
        loop {
            for r in self.receive(&|| op.to_string())? {
                match r {
                    Reply::Msg(s, m) if s == seq => {
                        for a in m.attrs {
                            match a {
                                IpvsAttr::TimeoutTcp(v) => t.tcp = v,
                                IpvsAttr::TimeoutTcpFin(v) => t.tcp_fin = v,
                                IpvsAttr::TimeoutUdp(v) => t.udp = v,
                                _ => {}
                            }
                        }
                    }
                    Reply::Ack(s, e) if s == seq => {
                        return match e {
                            None => Ok(t),
                            Some(source) => Err(IpvsError::Kernel {
                                op: op.into(),
                                source,
                            }),
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

/// `errno` for "no such virtual service" (seen in the VM's 6.1 kernel).
pub const ESRCH: i32 = 3;
/// `errno` for "no such real server", and for "no such scheduler" (its
/// module is missing) when a service is added.
pub const ENOENT: i32 = 2;

fn decode_err(op: &str, reason: impl fmt::Display) -> IpvsError {
    IpvsError::Decode {
        op: op.into(),
        reason: reason.to_string(),
    }
}

/// Decodes every netlink message in one datagram from the kernel, whose
/// IPVS family id is `family`. Strict: a bad length, another family or a
/// malformed attribute is an error, never a panic.
pub fn parse_replies(buf: &[u8], family: u16) -> Result<Vec<Reply>, String> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        if buf.len() - off < 16 {
            return Err(format!("{} trailing bytes", buf.len() - off));
        }
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
        if len < 16 || off + len > buf.len() {
            return Err(format!("netlink length {len} at offset {off}"));
        }
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().expect("4"));
        let one = &buf[off..off + len];
        off += (len + 3) & !3;
        if ty != family && ty >= 16 {
            return Err(format!(
                "message type {ty}, expected the IPVS family {family}"
            ));
        }
        let m = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(one)
            .map_err(|e| e.to_string())?;
        match m.payload {
            NetlinkPayload::InnerMessage(g) => out.push(Reply::Msg(seq, g.payload)),
            NetlinkPayload::Error(e) => {
                out.push(Reply::Ack(seq, e.code.map(|_| e.to_io())));
            }
            NetlinkPayload::Done(_) => out.push(Reply::Done(seq)),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Service {
        Service {
            addr: "10.96.0.10".parse().unwrap(),
            protocol: 6,
            port: 80,
            fwmark: 0,
            scheduler: "rr".into(),
            flags: IP_VS_SVC_F_PERSISTENT,
            timeout: 10800,
            netmask: u32::MAX,
            stats: None,
        }
    }

    #[test]
    fn ops_read_as_ipvsadm_commands() {
        let s = svc();
        let d = Dest::masq("10.244.1.5".parse().unwrap(), 8080, 1);
        assert_eq!(
            Op::AddService(s.clone()).to_string(),
            "ipvsadm -A -t 10.96.0.10:80 -s rr -p 10800"
        );
        assert_eq!(
            Op::AddDest(s.clone(), d.clone()).to_string(),
            "ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1"
        );
        let mut u = s.clone();
        u.protocol = 17;
        u.addr = "fd00::1".parse().unwrap();
        assert_eq!(
            Op::DelDest(u, d).to_string(),
            "ipvsadm -d -u [fd00::1]:80 -r 10.244.1.5:8080"
        );
    }

    fn frame(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn replies_decode_and_reject_garbage() {
        // An ack (error 0), an error (-ENOENT), and DONE.
        let mut ack = 0i32.to_ne_bytes().to_vec();
        ack.extend_from_slice(&[0u8; 16]);
        let mut enoent = (-2i32).to_ne_bytes().to_vec();
        enoent.extend_from_slice(&[0u8; 16]);
        let mut buf = frame(2, 0, 7, &ack);
        buf.extend(frame(2, 0, 8, &enoent));
        buf.extend(frame(3, 2, 9, &0i32.to_ne_bytes()));
        let r = parse_replies(&buf, 30).unwrap();
        assert!(matches!(r[0], Reply::Ack(7, None)));
        assert!(matches!(&r[1], Reply::Ack(8, Some(e)) if e.raw_os_error() == Some(2)));
        assert!(matches!(r[2], Reply::Done(9)));
        // A reply of the IPVS family carrying a real service.
        let mut g = GenlMessage::from_payload(IpvsMessage::new(
            IPVS_CMD_NEW_SERVICE,
            vec![IpvsAttr::Service(svc())],
        ));
        g.set_resolved_family_id(30);
        g.finalize();
        let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(g));
        m.header.sequence_number = 5;
        m.finalize();
        let mut good = vec![0; m.buffer_len()];
        m.serialize(&mut good);
        let r = parse_replies(&good, 30).unwrap();
        assert!(matches!(&r[0], Reply::Msg(5, m) if m.attrs == vec![IpvsAttr::Service(svc())]));
        // Another family's message, a truncated frame, and a length that
        // runs past the datagram are errors, not panics.
        assert!(parse_replies(&good, 31).is_err());
        for cut in 1..good.len() {
            let _ = parse_replies(&good[..cut], 30);
        }
        assert!(parse_replies(&good[..good.len() - 4], 30).is_err());
        let mut long = good.clone();
        long[0] = 200;
        assert!(parse_replies(&long, 30).is_err());
    }
}
