//! The codec against bytes a real kernel exchanged (recorded in the VM by
//! `client_vm.rs` into `data/kernel-6.1.captures`): every request we sent
//! re-encodes to the same bytes, every reply decodes to what was set, and
//! every truncation or corruption of a reply is an error, not a panic.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipvs_netlink::ip_vs::*;
use ipvs_netlink::{IpvsAttr, IpvsMessage, Reply, Service, parse_replies};
use netlink_packet_core::NetlinkMessage;
use netlink_packet_generic::GenlMessage;

const FAMILY: u16 = 32;

fn captures() -> BTreeMap<String, Vec<u8>> {
    let text = include_str!("data/kernel-6.1.captures");
    text.lines()
        .filter_map(|l| l.strip_prefix("CAPTURE "))
        .map(|l| {
            let (name, hex) = l.split_once(' ').expect("name hex");
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            (name.to_string(), bytes)
        })
        .collect()
}

fn one(name: &str) -> Vec<u8> {
    captures()
        .remove(name)
        .unwrap_or_else(|| panic!("{name} not captured"))
}

fn msgs(name: &str) -> Vec<IpvsMessage> {
    parse_replies(&one(name), FAMILY)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r {
            Reply::Msg(_, m) => Some(m),
            _ => None,
        })
        .collect()
}

#[test]
fn every_message_type_was_captured() {
    let c = captures();
    for step in [
        "new_service",
        "set_service",
        "del_service",
        "get_service",
        "new_dest",
        "set_dest",
        "del_dest",
        "get_dest",
        "get_config",
        "flush",
        "error",
        "stats",
    ] {
        assert!(
            c.keys().any(|k| k.starts_with(&format!("{step}."))),
            "{step}"
        );
    }
}

#[test]
fn requests_we_sent_reencode_byte_for_byte() {
    for (name, bytes) in captures().into_iter().filter(|(n, _)| n.ends_with(".sent")) {
        let m = NetlinkMessage::<GenlMessage<IpvsMessage>>::deserialize(&bytes)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut again = vec![0; m.buffer_len()];
        m.serialize(&mut again);
        assert_eq!(again, bytes, "{name}");
    }
}

#[test]
fn kernel_replies_decode_to_what_was_set() {
    // GET_SERVICE dump: four services, each with stats.
    let svcs: Vec<Service> = msgs("get_service.1.recv")
        .into_iter()
        .flat_map(|m| m.attrs)
        .filter_map(|a| match a {
            IpvsAttr::Service(s) => Some(s),
            _ => None,
        })
        .collect();
    let keys: Vec<(IpAddr, u16, u16, &str, u32)> = svcs
        .iter()
        .map(|s| (s.addr, s.protocol, s.port, s.scheduler.as_str(), s.timeout))
        .collect();
    for want in [
        ("10.96.0.10".parse().unwrap(), 6, 80, "rr", 300),
        ("10.96.0.10".parse().unwrap(), 17, 53, "wrr", 0),
        ("10.96.0.11".parse().unwrap(), 132, 9000, "sh", 0),
        ("fd00:10:96::1".parse().unwrap(), 6, 443, "lc", 0),
    ] {
        assert!(keys.contains(&want), "{want:?} not in {keys:?}");
    }
    assert!(svcs.iter().all(|s| s.stats.is_some()));
    let p = svcs.iter().find(|s| s.port == 80).unwrap();
    assert_eq!(p.flags & IP_VS_SVC_F_PERSISTENT, IP_VS_SVC_F_PERSISTENT);
    assert_eq!(p.netmask, u32::MAX);
    // GET_DEST dump: two NAT real servers with weights 1 and 3.
    let mut ds: Vec<(IpAddr, u16, u32, u32)> = msgs("get_dest.1.recv")
        .into_iter()
        .flat_map(|m| m.attrs)
        .filter_map(|a| match a {
            IpvsAttr::Dest(d) => Some((d.addr, d.port, d.weight, d.fwd_method)),
            _ => None,
        })
        .collect();
    ds.sort();
    assert_eq!(
        ds,
        vec![
            ("10.244.1.5".parse().unwrap(), 8080, 1, IP_VS_CONN_F_MASQ),
            ("10.244.2.6".parse().unwrap(), 8080, 3, IP_VS_CONN_F_MASQ)
        ]
    );
    // GET_CONFIG: the timeouts set just before.
    assert_eq!(
        msgs("get_config.1.recv")[0].attrs,
        vec![
            IpvsAttr::TimeoutTcp(900),
            IpvsAttr::TimeoutTcpFin(120),
            IpvsAttr::TimeoutUdp(300)
        ]
    );
    // A missing scheduler: -ENOENT.
    let r = parse_replies(&one("error.1.recv"), FAMILY).unwrap();
    assert!(
        matches!(&r[0], Reply::Ack(_, Some(e)) if e.raw_os_error() == Some(2)),
        "{r:?}"
    );
    // Acks and the end of a dump.
    assert!(matches!(
        parse_replies(&one("flush.1.recv"), FAMILY).unwrap()[0],
        Reply::Ack(_, None)
    ));
    assert!(matches!(
        parse_replies(&one("get_dest.2.recv"), FAMILY).unwrap()[0],
        Reply::Done(_)
    ));
    // Counters after real connections (one held open).
    let d = msgs("stats.4.recv")
        .into_iter()
        .flat_map(|m| m.attrs)
        .find_map(|a| match a {
            IpvsAttr::Dest(d) => Some(d),
            _ => None,
        })
        .unwrap();
    assert!(d.active_conns >= 1 && d.stats.unwrap().conns >= 4, "{d:?}");
}

#[test]
fn truncated_or_corrupt_replies_are_errors_not_panics() {
    for (name, bytes) in captures().into_iter().filter(|(n, _)| n.ends_with(".recv")) {
        // Message boundaries: a cut there leaves whole messages.
        let mut bounds = vec![0];
        while let Some(&b) = bounds.last().filter(|&&b| b < bytes.len()) {
            let len = u32::from_ne_bytes(bytes[b..b + 4].try_into().unwrap()) as usize;
            bounds.push(b + len.next_multiple_of(4));
        }
        for cut in 0..bytes.len() {
            let r = std::panic::catch_unwind(|| parse_replies(&bytes[..cut], FAMILY));
            let r = r.unwrap_or_else(|_| panic!("{name} cut at {cut} panicked"));
            if !bounds.contains(&cut) {
                assert!(r.is_err(), "{name} cut at {cut} decoded");
            }
        }
        // Flip every byte in turn: decoding may succeed (a changed value)
        // or fail, but never panic.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0xff;
            let r = std::panic::catch_unwind(|| parse_replies(&b, FAMILY));
            assert!(r.is_ok(), "{name} with byte {i} flipped panicked");
        }
    }
}
