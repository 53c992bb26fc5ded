//! The ctnetlink codec against bytes a real kernel exchanged
//! (`tests/data/conntrack-6.18.captures`, made in a namespace by
//! `cargo run -p proxier-netfilter --example capture_conntrack` from flows
//! the `conntrack` program created): replies decode to those flows, and
//! `netlink-packet-netfilter`'s own parser reads the same; requests
//! re-encode byte for byte; every truncation is an error and no flipped
//! byte panics.

use std::collections::BTreeSet;
use std::net::IpAddr;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};
use proxier_core::IpFamily;
use proxier_netfilter::Flow;
use proxier_netfilter::ctnetlink::{self as codec, Reply};

struct Section {
    name: String,
    flows: Vec<String>,
    frames: Vec<(bool, Vec<u8>)>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn sections() -> Vec<Section> {
    let text = include_str!("data/conntrack-6.18.captures");
    let mut out: Vec<Section> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[') {
            out.push(Section {
                name: name.trim_end_matches(']').to_string(),
                flows: Vec::new(),
                frames: Vec::new(),
            });
        } else if let Some(f) = line.strip_prefix("= ") {
            out.last_mut().unwrap().flows.push(f.to_string());
        } else if let Some(h) = line.strip_prefix("> ") {
            out.last_mut().unwrap().frames.push((true, unhex(h)));
        } else if let Some(h) = line.strip_prefix("< ") {
            out.last_mut().unwrap().frames.push((false, unhex(h)));
        }
    }
    assert_eq!(out.len(), 4, "four sections");
    out
}

fn replies(s: &Section) -> Vec<(codec::Header, Reply)> {
    s.frames
        .iter()
        .filter(|(sent, _)| !sent)
        .flat_map(|(_, b)| codec::parse(b).map(Result::unwrap).collect::<Vec<_>>())
        .collect()
}

fn family(s: &Section) -> IpFamily {
    if s.name.ends_with("ipv6") {
        IpFamily::V6
    } else {
        IpFamily::V4
    }
}

/// The flows of a dump, read by `netlink-packet-netfilter` (the
/// reference): (protocol, orig src, orig dst, reply src).
fn crate_flows(buf: &[u8]) -> Vec<(u8, IpAddr, IpAddr, IpAddr)> {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let m = NetlinkMessage::<NetfilterMessage>::deserialize(rest).unwrap();
        let len = m.header.length as usize;
        if let NetlinkPayload::InnerMessage(nf) = m.payload
            && let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = nf.inner
        {
            let addrs = |t: &[Tuple]| {
                let mut src = None;
                let mut dst = None;
                let mut proto = 0;
                for x in t {
                    match x {
                        Tuple::Ip(ips) => {
                            for i in ips {
                                match i {
                                    IPTuple::SourceAddress(a) => src = Some(*a),
                                    IPTuple::DestinationAddress(a) => dst = Some(*a),
                                    _ => {}
                                }
                            }
                        }
                        Tuple::Proto(p) => {
                            for q in p {
                                if let ProtoTuple::Protocol(n) = q {
                                    proto = u8::from(*n);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                (proto, src.unwrap(), dst.unwrap())
            };
            let orig = attrs.iter().find_map(|a| match a {
                ConntrackAttribute::CtaTupleOrig(t) => Some(addrs(t)),
                _ => None,
            });
            let reply = attrs.iter().find_map(|a| match a {
                ConntrackAttribute::CtaTupleReply(t) => Some(addrs(t)),
                _ => None,
            });
            let (o, r) = (orig.unwrap(), reply.unwrap());
            out.push((o.0, o.1, o.2, r.1));
        }
        rest = &rest[len.min(rest.len())..];
    }
    out
}

#[test]
fn dumps_decode_to_the_flows_the_conntrack_program_made() {
    for s in sections().iter().filter(|s| s.name.starts_with("dump")) {
        let flows: Vec<Flow> = replies(s)
            .into_iter()
            .filter_map(|(_, r)| match r {
                Reply::Flow(f) => Some(f),
                _ => None,
            })
            .collect();
        let ours: BTreeSet<String> = flows.iter().map(Flow::to_string).collect();
        let want: BTreeSet<String> = s.flows.iter().cloned().collect();
        assert_eq!(ours, want, "{}", s.name);
        assert!(
            flows.iter().all(|f| f.id.is_some()),
            "the kernel sends CTA_ID"
        );
        assert!(flows.iter().all(|f| f.family() == family(s)));
        // The reference parser reads the same tuples.
        let reference: BTreeSet<_> = s
            .frames
            .iter()
            .filter(|(sent, _)| !sent)
            .flat_map(|(_, b)| crate_flows(b))
            .collect();
        let mine: BTreeSet<_> = flows
            .iter()
            .map(|f| (f.protocol, f.orig.src, f.orig.dst, f.reply.src))
            .collect();
        assert_eq!(mine, reference, "{}", s.name);
        // The dump ends with NLMSG_DONE.
        assert!(matches!(replies(s).last(), Some((_, Reply::Done))));
    }
    let v4 = &sections()[0];
    assert!(
        v4.flows.iter().any(|f| f.ends_with("zone=7")),
        "a zoned flow"
    );
    assert!(v4.flows.iter().any(|f| f.starts_with("sctp")));
}

#[test]
fn requests_reencode_byte_for_byte() {
    for s in sections() {
        let sent: Vec<&Vec<u8>> = s
            .frames
            .iter()
            .filter(|(x, _)| *x)
            .map(|(_, b)| b)
            .collect();
        let seq = |b: &[u8]| u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        if s.name.starts_with("dump") {
            assert_eq!(sent.len(), 1);
            assert_eq!(
                *sent[0],
                codec::dump_request(family(&s), Default::default(), seq(sent[0]))
            );
        } else {
            // The same delete twice: the flow as the dump read it.
            let dump = &sections()[if family(&s) == IpFamily::V4 { 0 } else { 2 }];
            let flow = replies(dump)
                .into_iter()
                .find_map(|(_, r)| match r {
                    Reply::Flow(f) if f.to_string() == s.flows[0] => Some(f),
                    _ => None,
                })
                .unwrap();
            assert_eq!(sent.len(), 2);
            for b in sent {
                assert_eq!(*b, codec::delete_request(&flow, seq(b)));
            }
            // Deleted, then gone: 0, then -ENOENT.
            let acks: Vec<i32> = replies(&s)
                .into_iter()
                .filter_map(|(_, r)| match r {
                    Reply::Ack(c) => Some(c),
                    _ => None,
                })
                .collect();
            assert_eq!(acks, vec![0, -libc::ENOENT], "{}", s.name);
        }
    }
}

#[test]
fn every_truncation_is_an_error_and_no_flip_panics() {
    for s in sections() {
        for (_, buf) in s.frames.iter().filter(|(sent, _)| !sent) {
            let mut bounds = vec![0usize];
            let mut at = 0;
            while at < buf.len() {
                let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                at += (len as usize + 3) & !3;
                bounds.push(at);
            }
            for cut in 1..buf.len() {
                let errs = codec::parse(&buf[..cut]).filter(Result::is_err).count();
                if bounds.contains(&cut) {
                    assert_eq!(errs, 0, "{}: cut at a message boundary {cut}", s.name);
                } else {
                    assert_eq!(errs, 1, "{}: cut inside a message at {cut}", s.name);
                }
            }
            for i in 0..buf.len() {
                let mut b = buf.clone();
                b[i] ^= 0xff;
                // An error or a (changed) value, never a panic.
                let _ = codec::parse(&b).count();
            }
        }
    }
}
