//! The ctnetlink messages this crate sends and reads, in the kernel's own
//! words (`linux/netfilter/nfnetlink_conntrack.h`).
//!
//! Requests are built with `netlink-packet-netfilter`'s conntrack types
//! (`ConntrackMessage::Get`/`Delete`/`New`). Dump replies are read by
//! [`parse`], which walks the attributes in place and allocates nothing
//! per flow: a reconcile pass reads every flow of the table, 50,000 of them
//! on a busy node, and the crate's parser builds about a dozen `Vec`s for
//! each. The codec tests check that both read the same flows from bytes a
//! real kernel sent.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DefaultNla, NLA_F_NESTED, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, NlaBuffer, NlasIterator,
};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Tuple,
};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use proxier_core::IpFamily;

use super::{Flow, FlowTuple};

/// `NFNL_SUBSYS_CTNETLINK`.
pub const NFNL_SUBSYS_CTNETLINK: u8 = 1;
/// `IPCTNL_MSG_CT_NEW`.
pub const IPCTNL_MSG_CT_NEW: u8 = 0;
/// `IPCTNL_MSG_CT_GET`.
pub const IPCTNL_MSG_CT_GET: u8 = 1;
/// `IPCTNL_MSG_CT_DELETE`.
pub const IPCTNL_MSG_CT_DELETE: u8 = 2;

/// `CTA_TUPLE_ORIG`.
pub const CTA_TUPLE_ORIG: u16 = 1;
/// `CTA_TUPLE_REPLY`.
pub const CTA_TUPLE_REPLY: u16 = 2;
/// `CTA_STATUS`.
pub const CTA_STATUS: u16 = 3;
/// `CTA_ID`.
pub const CTA_ID: u16 = 12;
/// `CTA_FILTER` (kernel 5.10+: dump only what matches; older kernels
/// ignore it and dump everything).
pub const CTA_FILTER: u16 = 25;
/// `CTA_STATUS_MASK` (with `CTA_STATUS`, a dump filter since 5.19).
pub const CTA_STATUS_MASK: u16 = 26;
/// `CTA_FILTER_ORIG_FLAGS`.
pub const CTA_FILTER_ORIG_FLAGS: u16 = 1;
/// `CTA_FILTER_REPLY_FLAGS`.
pub const CTA_FILTER_REPLY_FLAGS: u16 = 2;
/// `CTA_FILTER_FLAG(CTA_PROTO_NUM)`.
pub const CTA_FILTER_FLAG_PROTO_NUM: u32 = 1 << 3;
/// `IPS_DST_NAT`: the flow's destination was rewritten by a DNAT rule.
pub const IPS_DST_NAT: u32 = 1 << 5;
/// `CTA_ZONE`.
pub const CTA_ZONE: u16 = 18;
/// `CTA_TUPLE_IP`.
pub const CTA_TUPLE_IP: u16 = 1;
/// `CTA_TUPLE_PROTO`.
pub const CTA_TUPLE_PROTO: u16 = 2;
/// `CTA_IP_V4_SRC`.
pub const CTA_IP_V4_SRC: u16 = 1;
/// `CTA_IP_V4_DST`.
pub const CTA_IP_V4_DST: u16 = 2;
/// `CTA_IP_V6_SRC`.
pub const CTA_IP_V6_SRC: u16 = 3;
/// `CTA_IP_V6_DST`.
pub const CTA_IP_V6_DST: u16 = 4;
/// `CTA_PROTO_NUM`.
pub const CTA_PROTO_NUM: u16 = 1;
/// `CTA_PROTO_SRC_PORT`.
pub const CTA_PROTO_SRC_PORT: u16 = 2;
/// `CTA_PROTO_DST_PORT`.
pub const CTA_PROTO_DST_PORT: u16 = 3;

/// `NLMSG_ERROR`.
pub const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`.
pub const NLMSG_DONE: u16 = 3;
/// `NLM_F_DUMP_INTR`: the table changed while it was dumped.
pub const NLM_F_DUMP_INTR: u16 = 0x10;

fn nfproto(family: IpFamily) -> NetfilterProtoFamily {
    match family {
        IpFamily::V4 => NetfilterProtoFamily::IPv4,
        IpFamily::V6 => NetfilterProtoFamily::IPv6,
    }
}

fn serialize(family: IpFamily, msg: ConntrackMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(
        header,
        NetlinkPayload::from(NetfilterMessage::new(
            NetfilterHeader::new(nfproto(family), 0, 0),
            msg,
        )),
    );
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

fn tuple(t: &FlowTuple, protocol: u8) -> Vec<Tuple> {
    vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(t.src),
            IPTuple::DestinationAddress(t.dst),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(protocol)),
            ProtoTuple::SourcePort(t.src_port),
            ProtoTuple::DestinationPort(t.dst_port),
        ]),
    ]
}

fn zone_and_id(flow: &Flow, attrs: &mut Vec<ConntrackAttribute>) {
    if flow.zone != 0 {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ZONE,
            flow.zone.to_be_bytes().to_vec(),
        )));
    }
    if let Some(id) = flow.id {
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_ID,
            id.to_be_bytes().to_vec(),
        )));
    }
}

/// What the kernel itself leaves out of a dump. Kernels that do not know
/// a filter ignore it; the reader checks every flow it keeps anyway.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpFilter {
    /// Only this layer-4 protocol (`conntrack -L -p udp`; `CTA_FILTER`).
    pub protocol: Option<u8>,
    /// Only flows a DNAT rule rewrote (`conntrack -L --status DST_NAT`
    /// ... as `CTA_STATUS` with `CTA_STATUS_MASK`).
    pub dnat_only: bool,
}

fn nla_u32(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

/// `conntrack -L -f FAMILY [-p PROTO] [--status DST_NAT]`: a dump of the
/// flows of `family`, filtered in the kernel as `filter` says.
pub fn dump_request(family: IpFamily, filter: DumpFilter, seq: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    if let Some(p) = filter.protocol {
        attrs.push(ConntrackAttribute::CtaTupleOrig(vec![Tuple::Proto(vec![
            ProtoTuple::Protocol(Protocol::from(p)),
        ])]));
        // CTA_FILTER { ORIG_FLAGS, REPLY_FLAGS }, nested.
        let mut nested = Vec::new();
        for (k, v) in [
            (CTA_FILTER_ORIG_FLAGS, CTA_FILTER_FLAG_PROTO_NUM),
            (CTA_FILTER_REPLY_FLAGS, 0),
        ] {
            nested.extend_from_slice(&8u16.to_ne_bytes());
            nested.extend_from_slice(&k.to_ne_bytes());
            nested.extend_from_slice(&v.to_ne_bytes());
        }
        attrs.push(ConntrackAttribute::Other(DefaultNla::new(
            CTA_FILTER, nested,
        )));
    }
    if filter.dnat_only {
        attrs.push(ConntrackAttribute::Other(nla_u32(CTA_STATUS, IPS_DST_NAT)));
        attrs.push(ConntrackAttribute::Other(nla_u32(
            CTA_STATUS_MASK,
            IPS_DST_NAT,
        )));
    }
    let mut buf = serialize(
        family,
        ConntrackMessage::Get(attrs),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    );
    // The kernel parses CTA_FILTER strictly: it must carry NLA_F_NESTED,
    // which `DefaultNla` cannot set. Set it in place.
    let mut at = 20; // nlmsghdr + nfgenmsg
    while at + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[at], buf[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([buf[at + 2], buf[at + 3]]);
        if kind & NLA_TYPE_MASK == CTA_FILTER {
            let flagged = kind | NLA_F_NESTED;
            buf[at + 2..at + 4].copy_from_slice(&flagged.to_ne_bytes());
        }
        if len < 4 {
            break;
        }
        at += (len + 3) & !3;
    }
    buf
}

/// `conntrack -D` of one flow, by its original tuple, its zone and its id;
/// the kernel acknowledges it.
pub fn delete_request(flow: &Flow, seq: u32) -> Vec<u8> {
    let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(tuple(
        &flow.orig,
        flow.protocol,
    ))];
    zone_and_id(flow, &mut attrs);
    serialize(
        flow.family(),
        ConntrackMessage::Delete(attrs),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// `conntrack -I` of one flow with both tuples and a timeout: what the
/// tests and benches use to fill a table quickly (a real packet makes the
/// same entry).
pub fn create_request(flow: &Flow, timeout_secs: u32, seq: u32) -> Vec<u8> {
    let mut attrs = vec![
        ConntrackAttribute::CtaTupleOrig(tuple(&flow.orig, flow.protocol)),
        ConntrackAttribute::CtaTupleReply(tuple(&flow.reply, flow.protocol)),
        ConntrackAttribute::CtaTimeout(timeout_secs),
    ];
    let mut flow = *flow;
    flow.id = None;
    zone_and_id(&flow, &mut attrs);
    serialize(
        flow.family(),
        ConntrackMessage::New(attrs),
        NLM_F_REQUEST | NLM_F_ACK | netlink_packet_core::NLM_F_CREATE,
        seq,
    )
}

/// A reply message that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

fn derr(what: &str) -> DecodeError {
    DecodeError(what.to_string())
}

/// One message of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A flow of a dump (or of an event).
    Flow(Flow),
    /// A ctnetlink message of another type.
    Other,
    /// The end of a dump.
    Done,
    /// The kernel's answer to a request: 0 is success, else `-errno`.
    Ack(i32),
}

/// The netlink header fields a reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
}

fn u16_ne(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn u32_ne(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads every netlink message of one `recv` buffer, in order. A message
/// whose length does not fit the buffer, or a flow without a complete
/// original and reply tuple, is an error; nothing panics.
pub fn parse(buf: &[u8]) -> impl Iterator<Item = Result<(Header, Reply), DecodeError>> + '_ {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let item = parse_one(rest);
        match &item {
            Ok((len, _, _)) => {
                let aligned = (*len + 3) & !3;
                rest = &rest[aligned.min(rest.len())..];
            }
            Err(_) => rest = &[],
        }
        Some(item.map(|(_, h, r)| (h, r)))
    })
}

fn parse_one(buf: &[u8]) -> Result<(usize, Header, Reply), DecodeError> {
    if buf.len() < 16 {
        return Err(derr("netlink header truncated"));
    }
    let len = u32_ne(&buf[0..4]) as usize;
    if len < 16 || len > buf.len() {
        return Err(DecodeError(format!(
            "netlink message of {len} bytes in a buffer of {}",
            buf.len()
        )));
    }
    let header = Header {
        kind: u16_ne(&buf[4..6]),
        flags: u16_ne(&buf[6..8]),
        seq: u32_ne(&buf[8..12]),
    };
    let payload = &buf[16..len];
    let reply = match header.kind {
        NLMSG_DONE => Reply::Done,
        NLMSG_ERROR => {
            if payload.len() < 4 {
                return Err(derr("NLMSG_ERROR truncated"));
            }
            Reply::Ack(i32::from_ne_bytes([
                payload[0], payload[1], payload[2], payload[3],
            ]))
        }
        k if (k >> 8) as u8 == NFNL_SUBSYS_CTNETLINK
            && matches!(k as u8, IPCTNL_MSG_CT_NEW | IPCTNL_MSG_CT_DELETE) =>
        {
            Reply::Flow(parse_flow(payload)?)
        }
        k if (k >> 8) as u8 == NFNL_SUBSYS_CTNETLINK => Reply::Other,
        k => {
            return Err(DecodeError(format!(
                "unexpected netlink message type {k:#x}"
            )));
        }
    };
    Ok((len, header, reply))
}

fn nlas(buf: &[u8]) -> impl Iterator<Item = Result<NlaBuffer<&[u8]>, DecodeError>> {
    NlasIterator::new(buf).map(|n| n.map_err(|e| DecodeError(format!("attribute: {e}"))))
}

fn be16(v: &[u8], what: &str) -> Result<u16, DecodeError> {
    match v {
        [a, b] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(DecodeError(format!("{what}: {} bytes, want 2", v.len()))),
    }
}

fn ip(v: &[u8], what: &str) -> Result<IpAddr, DecodeError> {
    if let Ok(b) = <[u8; 4]>::try_from(v) {
        Ok(IpAddr::V4(Ipv4Addr::from(b)))
    } else if let Ok(b) = <[u8; 16]>::try_from(v) {
        Ok(IpAddr::V6(Ipv6Addr::from(b)))
    } else {
        Err(DecodeError(format!(
            "{what}: {} bytes is no address",
            v.len()
        )))
    }
}

/// Reads `CTA_TUPLE_*`: addresses, protocol, ports.
fn parse_tuple(buf: &[u8]) -> Result<(FlowTuple, u8), DecodeError> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, 0, 0);
    for a in nlas(buf) {
        let a = a?;
        match a.kind() {
            CTA_TUPLE_IP => {
                for b in nlas(a.value()) {
                    let b = b?;
                    match b.kind() {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip(b.value(), "source")?),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(ip(b.value(), "destination")?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for b in nlas(a.value()) {
                    let b = b?;
                    match b.kind() {
                        CTA_PROTO_NUM => match b.value() {
                            [p] => proto = Some(*p),
                            v => {
                                return Err(DecodeError(format!(
                                    "CTA_PROTO_NUM: {} bytes",
                                    v.len()
                                )));
                            }
                        },
                        CTA_PROTO_SRC_PORT => sport = be16(b.value(), "CTA_PROTO_SRC_PORT")?,
                        CTA_PROTO_DST_PORT => dport = be16(b.value(), "CTA_PROTO_DST_PORT")?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    match (src, dst, proto) {
        (Some(src), Some(dst), Some(p)) if src.is_ipv4() == dst.is_ipv4() => Ok((
            FlowTuple {
                src,
                dst,
                src_port: sport,
                dst_port: dport,
            },
            p,
        )),
        _ => Err(derr(
            "tuple without both addresses of one family and a protocol",
        )),
    }
}

/// Reads one flow from a ctnetlink message payload (`nfgenmsg` and
/// attributes).
pub fn parse_flow(payload: &[u8]) -> Result<Flow, DecodeError> {
    if payload.len() < 4 {
        return Err(derr("nfgenmsg truncated"));
    }
    let (mut orig, mut reply, mut zone, mut id, mut status) = (None, None, 0u16, None, 0u32);
    for a in nlas(&payload[4..]) {
        let a = a?;
        match a.kind() {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(a.value())?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(a.value())?),
            CTA_ZONE => zone = be16(a.value(), "CTA_ZONE")?,
            CTA_STATUS => match <[u8; 4]>::try_from(a.value()) {
                Ok(b) => status = u32::from_be_bytes(b),
                Err(_) => return Err(derr("CTA_STATUS: want 4 bytes")),
            },
            CTA_ID => match <[u8; 4]>::try_from(a.value()) {
                Ok(b) => id = Some(u32::from_be_bytes(b)),
                Err(_) => return Err(derr("CTA_ID: want 4 bytes")),
            },
            _ => {}
        }
    }
    match (orig, reply) {
        (Some((orig, p)), Some((reply, q))) if p == q => Ok(Flow {
            protocol: p,
            orig,
            reply,
            zone,
            id,
            dnat: status & IPS_DST_NAT != 0,
        }),
        (Some(_), Some(_)) => Err(derr("original and reply tuples of different protocols")),
        _ => Err(derr("flow without an original and a reply tuple")),
    }
}
