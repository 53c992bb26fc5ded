//! The IPVS generic-netlink messages: constants named as in
//! `include/uapi/linux/ip_vs.h`, typed services and destinations, and a
//! strict codec. Building is infallible; decoding a kernel reply returns
//! [`DecodeError`] on anything malformed (short attribute, bad length,
//! wrong family size), never panics.
//!
//! The generic-netlink header and the netlink framing come from
//! `netlink-packet-generic` and `netlink-packet-core`: [`IpvsMessage`]
//! implements their `GenlFamily`, `Emitable` and `ParseableParametrized`
//! so `GenlMessage<IpvsMessage>` goes through `NetlinkMessage` like any
//! other family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{DecodeError, Emitable, ParseableParametrized};
use netlink_packet_generic::{GenlFamily, GenlHeader};

use crate::ip_vs::*;

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Traffic counters of a service or destination (`STATS64`, or `STATS`
/// widened).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections scheduled.
    pub conns: u64,
    /// Packets in.
    pub inpkts: u64,
    /// Packets out.
    pub outpkts: u64,
    /// Bytes in.
    pub inbytes: u64,
    /// Bytes out.
    pub outbytes: u64,
}

/// A virtual service (`ipvsadm -A -t|-u|--sctp-service ADDR:PORT -s SCHED
/// [-p TIMEOUT] [-M NETMASK]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// The virtual address (its family is the service's `AF`).
    pub addr: IpAddr,
    /// `IPPROTO_TCP` (6), `IPPROTO_UDP` (17), `IPPROTO_SCTP` (132).
    pub protocol: u16,
    /// The virtual port.
    pub port: u16,
    /// Firewall mark (0: address-based service).
    pub fwmark: u32,
    /// Scheduler (`rr`, `wrr`, `lc`, `wlc`, `sh`, `mh`, ...).
    pub scheduler: String,
    /// `IP_VS_SVC_F_*`.
    pub flags: u32,
    /// Persistence timeout in seconds (with `IP_VS_SVC_F_PERSISTENT`).
    pub timeout: u32,
    /// Persistence netmask (`0xffffffff` for IPv4 /32, 128 for IPv6).
    pub netmask: u32,
    /// Counters, in dumps.
    pub stats: Option<Stats>,
}

impl Service {
    /// The key fields only, as `DEL_SERVICE` and `GET_DEST` need them.
    pub fn key(&self) -> Service {
        Service {
            addr: self.addr,
            protocol: self.protocol,
            port: self.port,
            fwmark: self.fwmark,
            scheduler: String::new(),
            flags: 0,
            timeout: 0,
            netmask: 0,
            stats: None,
        }
    }
}

/// A real server (`ipvsadm -a -t VIP:PORT -r ADDR:PORT -m -w WEIGHT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dest {
    /// The real server's address.
    pub addr: IpAddr,
    /// The real server's port.
    pub port: u16,
    /// `IP_VS_CONN_F_MASQ` etc.
    pub fwd_method: u32,
    /// Weight (0: quiescent, no new connections).
    pub weight: u32,
    /// Upper connection threshold (0: none).
    pub u_thresh: u32,
    /// Lower connection threshold.
    pub l_thresh: u32,
    /// Active connections, in dumps.
    pub active_conns: u32,
    /// Inactive connections, in dumps.
    pub inact_conns: u32,
    /// Persistent connection templates, in dumps.
    pub persist_conns: u32,
    /// Counters, in dumps.
    pub stats: Option<Stats>,
}

impl Dest {
    /// A NAT destination with `weight`.
    pub fn masq(addr: IpAddr, port: u16, weight: u32) -> Dest {
        Dest {
            addr,
            port,
            fwd_method: IP_VS_CONN_F_MASQ,
            weight,
            u_thresh: 0,
            l_thresh: 0,
            active_conns: 0,
            inact_conns: 0,
            persist_conns: 0,
            stats: None,
        }
    }
}

/// One top-level attribute of an IPVS message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsAttr {
    /// `IPVS_CMD_ATTR_SERVICE`.
    Service(Service),
    /// `IPVS_CMD_ATTR_DEST`.
    Dest(Dest),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP`.
    TimeoutTcp(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_TCP_FIN`.
    TimeoutTcpFin(u32),
    /// `IPVS_CMD_ATTR_TIMEOUT_UDP`.
    TimeoutUdp(u32),
}

/// An IPVS generic-netlink message: a command and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// `IPVS_CMD_*`.
    pub cmd: u8,
    /// Attributes, in order.
    pub attrs: Vec<IpvsAttr>,
}

impl IpvsMessage {
    /// A message with attributes.
    pub fn new(cmd: u8, attrs: Vec<IpvsAttr>) -> IpvsMessage {
        IpvsMessage { cmd, attrs }
    }
}

// ----- encoding -----

fn align(n: usize) -> usize {
    (n + 3) & !3
}

fn put_attr(out: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    out.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align(out.len()), 0);
}

fn put_nested(out: &mut Vec<u8>, ty: u16, inner: &[u8]) {
    put_attr(out, ty | NLA_F_NESTED, inner);
}

fn af(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// `union nf_inet_addr`: 16 bytes, an IPv4 address in the first four.
fn inet_addr(ip: &IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v) => b[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => b.copy_from_slice(&v.octets()),
    }
    b
}

fn encode_service(s: &Service) -> Vec<u8> {
    let mut o = Vec::with_capacity(96);
    put_attr(&mut o, IPVS_SVC_ATTR_AF, &af(&s.addr).to_ne_bytes());
    if s.fwmark != 0 {
        put_attr(&mut o, IPVS_SVC_ATTR_FWMARK, &s.fwmark.to_ne_bytes());
    } else {
        put_attr(&mut o, IPVS_SVC_ATTR_PROTOCOL, &s.protocol.to_ne_bytes());
        put_attr(&mut o, IPVS_SVC_ATTR_ADDR, &inet_addr(&s.addr));
        put_attr(&mut o, IPVS_SVC_ATTR_PORT, &s.port.to_be_bytes());
    }
    if !s.scheduler.is_empty() {
        let mut name = s.scheduler.as_bytes().to_vec();
        name.push(0);
        put_attr(&mut o, IPVS_SVC_ATTR_SCHED_NAME, &name);
        let mut flags = [0u8; 8];
        flags[..4].copy_from_slice(&s.flags.to_ne_bytes());
        flags[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
        put_attr(&mut o, IPVS_SVC_ATTR_FLAGS, &flags);
        put_attr(&mut o, IPVS_SVC_ATTR_TIMEOUT, &s.timeout.to_ne_bytes());
        put_attr(&mut o, IPVS_SVC_ATTR_NETMASK, &s.netmask.to_ne_bytes());
    }
    o
}

fn encode_dest(d: &Dest) -> Vec<u8> {
    let mut o = Vec::with_capacity(96);
    put_attr(&mut o, IPVS_DEST_ATTR_ADDR, &inet_addr(&d.addr));
    put_attr(&mut o, IPVS_DEST_ATTR_PORT, &d.port.to_be_bytes());
    put_attr(
        &mut o,
        IPVS_DEST_ATTR_FWD_METHOD,
        &d.fwd_method.to_ne_bytes(),
    );
    put_attr(&mut o, IPVS_DEST_ATTR_WEIGHT, &d.weight.to_ne_bytes());
    put_attr(&mut o, IPVS_DEST_ATTR_U_THRESH, &d.u_thresh.to_ne_bytes());
    put_attr(&mut o, IPVS_DEST_ATTR_L_THRESH, &d.l_thresh.to_ne_bytes());
    put_attr(
        &mut o,
        IPVS_DEST_ATTR_ADDR_FAMILY,
        &af(&d.addr).to_ne_bytes(),
    );
    o
}

impl IpvsMessage {
    /// The attribute bytes (what follows the generic-netlink header).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for a in &self.attrs {
            match a {
                IpvsAttr::Service(s) => {
                    put_nested(&mut out, IPVS_CMD_ATTR_SERVICE, &encode_service(s))
                }
                IpvsAttr::Dest(d) => put_nested(&mut out, IPVS_CMD_ATTR_DEST, &encode_dest(d)),
                IpvsAttr::TimeoutTcp(v) => {
                    put_attr(&mut out, IPVS_CMD_ATTR_TIMEOUT_TCP, &v.to_ne_bytes())
                }
                IpvsAttr::TimeoutTcpFin(v) => {
                    put_attr(&mut out, IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, &v.to_ne_bytes())
                }
                IpvsAttr::TimeoutUdp(v) => {
                    put_attr(&mut out, IPVS_CMD_ATTR_TIMEOUT_UDP, &v.to_ne_bytes())
                }
            }
        }
        out
    }
}

// ----- decoding -----

fn err(what: impl Into<String>) -> DecodeError {
    DecodeError::from(what.into())
}

/// Splits `buf` into (type without flags, payload), strictly.
fn attrs(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, DecodeError> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(err(format!(
                "attribute header truncated ({} bytes left)",
                rest.len()
            )));
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return Err(err(format!(
                "attribute {ty}: length {len} with {} bytes left",
                rest.len()
            )));
        }
        out.push((ty, &rest[4..len]));
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(out)
}

fn u16_ne(ty: &str, p: &[u8]) -> Result<u16, DecodeError> {
    p.try_into()
        .map(u16::from_ne_bytes)
        .map_err(|_| err(format!("{ty}: {} bytes, want 2", p.len())))
}

fn u32_ne(ty: &str, p: &[u8]) -> Result<u32, DecodeError> {
    p.try_into()
        .map(u32::from_ne_bytes)
        .map_err(|_| err(format!("{ty}: {} bytes, want 4", p.len())))
}

fn u64_ne(ty: &str, p: &[u8]) -> Result<u64, DecodeError> {
    p.try_into()
        .map(u64::from_ne_bytes)
        .map_err(|_| err(format!("{ty}: {} bytes, want 8", p.len())))
}

fn port_be(ty: &str, p: &[u8]) -> Result<u16, DecodeError> {
    p.try_into()
        .map(u16::from_be_bytes)
        .map_err(|_| err(format!("{ty}: {} bytes, want 2", p.len())))
}

fn addr_of(ty: &str, family: u16, p: &[u8]) -> Result<IpAddr, DecodeError> {
    match family {
        AF_INET if p.len() >= 4 => Ok(IpAddr::V4(Ipv4Addr::new(p[0], p[1], p[2], p[3]))),
        AF_INET6 if p.len() == 16 => {
            let b: [u8; 16] = p.try_into().expect("16 bytes");
            Ok(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => Err(err(format!(
            "{ty}: {} bytes for address family {family}",
            p.len()
        ))),
    }
}

fn decode_stats(p: &[u8], wide: bool) -> Result<Stats, DecodeError> {
    let mut s = Stats::default();
    for (ty, v) in attrs(p)? {
        let n = |name: &str| {
            if wide {
                u64_ne(name, v)
            } else {
                u32_ne(name, v).map(u64::from)
            }
        };
        match ty {
            IPVS_STATS_ATTR_CONNS => s.conns = n("STATS_CONNS")?,
            IPVS_STATS_ATTR_INPKTS => s.inpkts = n("STATS_INPKTS")?,
            IPVS_STATS_ATTR_OUTPKTS => s.outpkts = n("STATS_OUTPKTS")?,
            IPVS_STATS_ATTR_INBYTES => s.inbytes = u64_ne("STATS_INBYTES", v)?,
            IPVS_STATS_ATTR_OUTBYTES => s.outbytes = u64_ne("STATS_OUTBYTES", v)?,
            _ => {} // rates and padding
        }
    }
    Ok(s)
}

fn decode_service(p: &[u8]) -> Result<Service, DecodeError> {
    let list = attrs(p)?;
    let family = list
        .iter()
        .find(|(t, _)| *t == IPVS_SVC_ATTR_AF)
        .map(|(_, v)| u16_ne("SVC_AF", v))
        .transpose()?
        .ok_or_else(|| err("service without IPVS_SVC_ATTR_AF"))?;
    let mut s = Service {
        addr: if family == AF_INET6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        },
        protocol: 0,
        port: 0,
        fwmark: 0,
        scheduler: String::new(),
        flags: 0,
        timeout: 0,
        netmask: 0,
        stats: None,
    };
    let mut stats32 = None;
    for (ty, v) in list {
        match ty {
            IPVS_SVC_ATTR_PROTOCOL => s.protocol = u16_ne("SVC_PROTOCOL", v)?,
            IPVS_SVC_ATTR_ADDR => s.addr = addr_of("SVC_ADDR", family, v)?,
            IPVS_SVC_ATTR_PORT => s.port = port_be("SVC_PORT", v)?,
            IPVS_SVC_ATTR_FWMARK => s.fwmark = u32_ne("SVC_FWMARK", v)?,
            IPVS_SVC_ATTR_SCHED_NAME => {
                let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
                s.scheduler = std::str::from_utf8(&v[..end])
                    .map_err(|_| err("SVC_SCHED_NAME: not UTF-8"))?
                    .to_string();
            }
            IPVS_SVC_ATTR_FLAGS => {
                if v.len() != 8 {
                    return Err(err(format!("SVC_FLAGS: {} bytes, want 8", v.len())));
                }
                s.flags = u32_ne("SVC_FLAGS", &v[..4])?;
            }
            IPVS_SVC_ATTR_TIMEOUT => s.timeout = u32_ne("SVC_TIMEOUT", v)?,
            IPVS_SVC_ATTR_NETMASK => s.netmask = u32_ne("SVC_NETMASK", v)?,
            IPVS_SVC_ATTR_STATS64 => s.stats = Some(decode_stats(v, true)?),
            IPVS_SVC_ATTR_STATS => stats32 = Some(decode_stats(v, false)?),
            _ => {}
        }
    }
    if s.stats.is_none() {
        s.stats = stats32;
    }
    Ok(s)
}

fn decode_dest(p: &[u8]) -> Result<Dest, DecodeError> {
    let list = attrs(p)?;
    // Kernels before 4.x send no ADDR_FAMILY: the address length decides.
    let family = match list.iter().find(|(t, _)| *t == IPVS_DEST_ATTR_ADDR_FAMILY) {
        Some((_, v)) => u16_ne("DEST_ADDR_FAMILY", v)?,
        None => AF_INET,
    };
    let mut d = Dest::masq(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, 0);
    let mut addr = None;
    let mut stats32 = None;
    for (ty, v) in list {
        match ty {
            IPVS_DEST_ATTR_ADDR => addr = Some(addr_of("DEST_ADDR", family, v)?),
            IPVS_DEST_ATTR_PORT => d.port = port_be("DEST_PORT", v)?,
            IPVS_DEST_ATTR_FWD_METHOD => d.fwd_method = u32_ne("DEST_FWD_METHOD", v)?,
            IPVS_DEST_ATTR_WEIGHT => d.weight = u32_ne("DEST_WEIGHT", v)?,
            IPVS_DEST_ATTR_U_THRESH => d.u_thresh = u32_ne("DEST_U_THRESH", v)?,
            IPVS_DEST_ATTR_L_THRESH => d.l_thresh = u32_ne("DEST_L_THRESH", v)?,
            IPVS_DEST_ATTR_ACTIVE_CONNS => d.active_conns = u32_ne("DEST_ACTIVE_CONNS", v)?,
            IPVS_DEST_ATTR_INACT_CONNS => d.inact_conns = u32_ne("DEST_INACT_CONNS", v)?,
            IPVS_DEST_ATTR_PERSIST_CONNS => d.persist_conns = u32_ne("DEST_PERSIST_CONNS", v)?,
            IPVS_DEST_ATTR_STATS64 => d.stats = Some(decode_stats(v, true)?),
            IPVS_DEST_ATTR_STATS => stats32 = Some(decode_stats(v, false)?),
            _ => {}
        }
    }
    d.addr = addr.ok_or_else(|| err("destination without IPVS_DEST_ATTR_ADDR"))?;
    d.fwd_method &= 0x7; // IP_VS_CONN_F_FWD_MASK
    if d.stats.is_none() {
        d.stats = stats32;
    }
    Ok(d)
}

impl IpvsMessage {
    /// Parses the attribute bytes of a message with command `cmd`.
    pub fn decode(cmd: u8, buf: &[u8]) -> Result<IpvsMessage, DecodeError> {
        let mut out = Vec::new();
        for (ty, v) in attrs(buf)? {
            out.push(match ty {
                IPVS_CMD_ATTR_SERVICE => IpvsAttr::Service(decode_service(v)?),
                IPVS_CMD_ATTR_DEST => IpvsAttr::Dest(decode_dest(v)?),
                IPVS_CMD_ATTR_TIMEOUT_TCP => IpvsAttr::TimeoutTcp(u32_ne("TIMEOUT_TCP", v)?),
                IPVS_CMD_ATTR_TIMEOUT_TCP_FIN => {
                    IpvsAttr::TimeoutTcpFin(u32_ne("TIMEOUT_TCP_FIN", v)?)
                }
                IPVS_CMD_ATTR_TIMEOUT_UDP => IpvsAttr::TimeoutUdp(u32_ne("TIMEOUT_UDP", v)?),
                _ => continue,
            });
        }
        Ok(IpvsMessage { cmd, attrs: out })
    }
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        IPVS_GENL_NAME
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        IPVS_GENL_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.encode().len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        let b = self.encode();
        buffer[..b.len()].copy_from_slice(&b);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        IpvsMessage::decode(header.cmd, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp_service() -> Service {
        Service {
            addr: "10.96.0.10".parse().unwrap(),
            protocol: 6,
            port: 80,
            fwmark: 0,
            scheduler: "rr".into(),
            flags: 0,
            timeout: 0,
            netmask: 0xffff_ffff,
            stats: None,
        }
    }

    /// `ipvsadm -A -t 10.96.0.10:80 -s rr`, attribute for attribute as in
    /// `ip_vs.h` (little-endian host, port in network order, the address
    /// in a 16-byte `nf_inet_addr`).
    #[test]
    fn new_service_bytes() {
        let m = IpvsMessage::new(IPVS_CMD_NEW_SERVICE, vec![IpvsAttr::Service(tcp_service())]);
        let b = m.encode();
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            84, 0, 0x01, 0x80,            // SERVICE, nested, 4 + 80 bytes
            6, 0, 1, 0, 2, 0, 0, 0,       // AF = AF_INET (padded)
            6, 0, 2, 0, 6, 0, 0, 0,       // PROTOCOL = 6
            20, 0, 3, 0, 10, 96, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ADDR
            6, 0, 4, 0, 0, 80, 0, 0,      // PORT = 80, big-endian
            7, 0, 6, 0, b'r', b'r', 0, 0, // SCHED_NAME "rr\0"
            12, 0, 7, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, // FLAGS {0, mask ~0}
            8, 0, 8, 0, 0, 0, 0, 0,       // TIMEOUT 0
            8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff, // NETMASK
        ];
        if cfg!(target_endian = "little") {
            assert_eq!(b, want);
        }
        assert_eq!(IpvsMessage::decode(IPVS_CMD_NEW_SERVICE, &b).unwrap(), m);
    }

    #[test]
    fn every_message_round_trips() {
        let v6 = Service {
            addr: "fd00::10".parse().unwrap(),
            protocol: 17,
            port: 53,
            scheduler: "sh".into(),
            flags: IP_VS_SVC_F_PERSISTENT,
            timeout: 10800,
            netmask: 128,
            ..tcp_service()
        };
        let dest = Dest {
            u_thresh: 100,
            l_thresh: 10,
            ..Dest::masq("10.0.1.5".parse().unwrap(), 8080, 1)
        };
        let dest6 = Dest::masq("fd00::1:5".parse().unwrap(), 53, 0);
        for m in [
            IpvsMessage::new(IPVS_CMD_NEW_SERVICE, vec![IpvsAttr::Service(v6.clone())]),
            IpvsMessage::new(IPVS_CMD_SET_SERVICE, vec![IpvsAttr::Service(tcp_service())]),
            IpvsMessage::new(
                IPVS_CMD_DEL_SERVICE,
                vec![IpvsAttr::Service(tcp_service().key())],
            ),
            IpvsMessage::new(IPVS_CMD_GET_SERVICE, vec![]),
            IpvsMessage::new(
                IPVS_CMD_NEW_DEST,
                vec![
                    IpvsAttr::Service(tcp_service().key()),
                    IpvsAttr::Dest(dest.clone()),
                ],
            ),
            IpvsMessage::new(
                IPVS_CMD_SET_DEST,
                vec![IpvsAttr::Service(v6.key()), IpvsAttr::Dest(dest6.clone())],
            ),
            IpvsMessage::new(
                IPVS_CMD_DEL_DEST,
                vec![IpvsAttr::Service(tcp_service().key()), IpvsAttr::Dest(dest)],
            ),
            IpvsMessage::new(IPVS_CMD_GET_DEST, vec![IpvsAttr::Service(v6.key())]),
            IpvsMessage::new(
                IPVS_CMD_SET_CONFIG,
                vec![
                    IpvsAttr::TimeoutTcp(900),
                    IpvsAttr::TimeoutTcpFin(120),
                    IpvsAttr::TimeoutUdp(300),
                ],
            ),
            IpvsMessage::new(IPVS_CMD_FLUSH, vec![]),
        ] {
            let b = m.encode();
            assert_eq!(b.len() % 4, 0);
            assert_eq!(IpvsMessage::decode(m.cmd, &b).unwrap(), m, "{m:?}");
        }
    }

    #[test]
    fn fwmark_services_carry_no_address() {
        let s = Service {
            fwmark: 0x4000,
            ..tcp_service()
        };
        let b = IpvsMessage::new(IPVS_CMD_NEW_SERVICE, vec![IpvsAttr::Service(s)]).encode();
        let outer = attrs(&b).unwrap();
        let inner: Vec<u16> = attrs(outer[0].1).unwrap().iter().map(|(t, _)| *t).collect();
        assert!(inner.contains(&IPVS_SVC_ATTR_FWMARK));
        assert!(!inner.contains(&IPVS_SVC_ATTR_ADDR));
    }

    /// Every truncation of a valid message, and a few corruptions, are
    /// errors or shorter valid messages: never a panic.
    #[test]
    fn truncated_and_corrupt_replies_are_errors() {
        let m = IpvsMessage::new(
            IPVS_CMD_NEW_DEST,
            vec![
                IpvsAttr::Service(tcp_service()),
                IpvsAttr::Dest(Dest::masq("10.0.1.5".parse().unwrap(), 8080, 1)),
            ],
        );
        let b = m.encode();
        for cut in 0..b.len() {
            let _ = IpvsMessage::decode(m.cmd, &b[..cut]);
        }
        assert!(IpvsMessage::decode(m.cmd, &b[..3]).is_err());
        assert!(
            IpvsMessage::decode(m.cmd, &b[..b.len() - 4]).is_err(),
            "nested length overruns"
        );
        // An attribute length below the header size.
        let mut bad = b.clone();
        bad[4] = 2;
        assert!(IpvsMessage::decode(m.cmd, &bad).is_err());
        // A 3-byte port.
        let mut p = Vec::new();
        put_attr(&mut p, IPVS_SVC_ATTR_AF, &AF_INET.to_ne_bytes());
        put_attr(&mut p, IPVS_SVC_ATTR_PORT, &[0, 80, 0]);
        let mut msg = Vec::new();
        put_nested(&mut msg, IPVS_CMD_ATTR_SERVICE, &p);
        let e = IpvsMessage::decode(IPVS_CMD_NEW_SERVICE, &msg).unwrap_err();
        assert!(e.to_string().contains("SVC_PORT"), "{e}");
        // A service without its family.
        let mut p = Vec::new();
        put_attr(&mut p, IPVS_SVC_ATTR_PORT, &80u16.to_be_bytes());
        let mut msg = Vec::new();
        put_nested(&mut msg, IPVS_CMD_ATTR_SERVICE, &p);
        assert!(IpvsMessage::decode(IPVS_CMD_NEW_SERVICE, &msg).is_err());
        // An IPv6 family with a 4-byte address.
        let mut p = Vec::new();
        put_attr(&mut p, IPVS_SVC_ATTR_AF, &AF_INET6.to_ne_bytes());
        put_attr(&mut p, IPVS_SVC_ATTR_ADDR, &[10, 0, 0, 1]);
        let mut msg = Vec::new();
        put_nested(&mut msg, IPVS_CMD_ATTR_SERVICE, &p);
        assert!(IpvsMessage::decode(IPVS_CMD_NEW_SERVICE, &msg).is_err());
    }

    #[test]
    fn dumps_with_stats_decode() {
        let mut st = Vec::new();
        put_attr(&mut st, IPVS_STATS_ATTR_CONNS, &7u64.to_ne_bytes());
        put_attr(&mut st, IPVS_STATS_ATTR_INBYTES, &1234u64.to_ne_bytes());
        let mut d = encode_dest(&Dest::masq("10.0.1.5".parse().unwrap(), 8080, 1));
        put_attr(&mut d, IPVS_DEST_ATTR_ACTIVE_CONNS, &3u32.to_ne_bytes());
        put_attr(&mut d, IPVS_DEST_ATTR_INACT_CONNS, &2u32.to_ne_bytes());
        put_nested(&mut d, IPVS_DEST_ATTR_STATS64, &st);
        let mut msg = Vec::new();
        put_nested(&mut msg, IPVS_CMD_ATTR_DEST, &d);
        let m = IpvsMessage::decode(IPVS_CMD_NEW_DEST, &msg).unwrap();
        let IpvsAttr::Dest(d) = &m.attrs[0] else {
            panic!()
        };
        assert_eq!((d.active_conns, d.inact_conns), (3, 2));
        assert_eq!(d.stats.unwrap().conns, 7);
        assert_eq!(d.stats.unwrap().inbytes, 1234);
    }
}
