//! Rule fragments in kube-proxy's words, as expression lists: what `nft`
//! compiles `ip daddr . meta l4proto . th dport vmap @service-ips`,
//! `numgen random mod N vmap { … }` or `dnat to IP:PORT` into.

use std::net::IpAddr;

use super::expr::{
    BASE_NETWORK, BASE_TRANSPORT, CT_STATE, CT_STATE_NEW, CmpOp, Expr, META_L4PROTO, META_MARK,
    REG_1, REG_2, REG_VERDICT, REG32_00, Verdict,
};

fn addr_offset(ip: IpAddr, dst: bool) -> (u32, u32) {
    match (ip, dst) {
        (IpAddr::V4(_), true) => (16, 4),
        (IpAddr::V4(_), false) => (12, 4),
        (IpAddr::V6(_), true) => (24, 16),
        (IpAddr::V6(_), false) => (8, 16),
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// `ip daddr IP` / `ip saddr IP` (`ip6` for IPv6).
pub fn addr_eq(ip: IpAddr, dst: bool, op: CmpOp) -> Vec<Expr> {
    let (offset, len) = addr_offset(ip, dst);
    vec![
        Expr::Payload {
            base: BASE_NETWORK,
            offset,
            len,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op,
            data: octets(ip),
        },
    ]
}

/// `ip saddr != NET/LEN` (`op` `Eq` for `ip saddr NET/LEN`).
pub fn saddr_in(net: IpAddr, prefix: u8, op: CmpOp) -> Vec<Expr> {
    addr_in(net, prefix, false, op)
}

/// `ip daddr|saddr [!=] NET/LEN`, as `nft` compiles it: a full-length
/// prefix is a plain comparison (`ip daddr 10.0.0.1`); a prefix of whole
/// bytes loads and compares only those bytes (`10.0.0.0/8`: one byte);
/// any other is masked (`nft --debug=netlink list ruleset` shows the
/// three).
pub fn addr_in(net: IpAddr, prefix: u8, dst: bool, op: CmpOp) -> Vec<Expr> {
    let (offset, len) = addr_offset(net, dst);
    if u32::from(prefix) >= len * 8 {
        return addr_eq(net, dst, op);
    }
    if prefix > 0 && prefix.is_multiple_of(8) {
        let bytes = u32::from(prefix / 8);
        return vec![
            Expr::Payload {
                base: BASE_NETWORK,
                offset,
                len: bytes,
                dreg: REG_1,
            },
            Expr::Cmp {
                sreg: REG_1,
                op,
                data: octets(net)[..bytes as usize].to_vec(),
            },
        ];
    }
    let bits = len * 8;
    let mut mask = vec![0u8; len as usize];
    for i in 0..u32::from(prefix).min(bits) {
        mask[(i / 8) as usize] |= 0x80 >> (i % 8);
    }
    let masked: Vec<u8> = octets(net).iter().zip(&mask).map(|(a, m)| a & m).collect();
    vec![
        Expr::Payload {
            base: BASE_NETWORK,
            offset,
            len,
            dreg: REG_1,
        },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            xor: vec![0; mask.len()],
            mask,
        },
        Expr::Cmp {
            sreg: REG_1,
            op,
            data: masked,
        },
    ]
}

/// `meta l4proto PROTO`.
pub fn l4proto(proto: u8) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: META_L4PROTO,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: vec![proto],
        },
    ]
}

/// `th dport PORT` (after a protocol match).
pub fn dport(port: u16) -> Vec<Expr> {
    vec![
        Expr::Payload {
            base: BASE_TRANSPORT,
            offset: 2,
            len: 2,
            dreg: REG_1,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: port.to_be_bytes().to_vec(),
        },
    ]
}

/// `ip daddr . meta l4proto . th dport vmap @MAP` (`ip6 daddr` for
/// IPv6): kube-proxy's one-lookup dispatch.
pub fn daddr_proto_port_vmap(v6: bool, map: &str) -> Vec<Expr> {
    let (offset, len) = if v6 { (24, 16) } else { (16, 4) };
    let r = |i: u32| REG32_00 + i;
    let after_addr = len / 4;
    vec![
        Expr::Payload {
            base: BASE_NETWORK,
            offset,
            len,
            dreg: r(0),
        },
        Expr::Meta {
            key: META_L4PROTO,
            dreg: r(after_addr),
        },
        Expr::Payload {
            base: BASE_TRANSPORT,
            offset: 2,
            len: 2,
            dreg: r(after_addr + 1),
        },
        Expr::Lookup {
            sreg: r(0),
            set: map.into(),
            set_id: None,
            dreg: Some(REG_VERDICT),
            invert: false,
        },
    ]
}

/// The key of a `ipv4_addr . inet_proto . inet_service` element.
pub fn addr_proto_port_key(ip: IpAddr, proto: u8, port: u16) -> Vec<u8> {
    let mut k = octets(ip);
    k.extend_from_slice(&[proto, 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// `numgen random mod N vmap { … }`: the lookup into the anonymous map
/// `set` (its id `set_id` in the same transaction).
pub fn numgen_vmap(n: u32, set: &str, set_id: u32) -> Vec<Expr> {
    vec![
        Expr::Numgen {
            dreg: REG_1,
            modulus: n,
        },
        Expr::Lookup {
            sreg: REG_1,
            set: set.into(),
            set_id: Some(set_id),
            dreg: Some(REG_VERDICT),
            invert: false,
        },
    ]
}

/// The key of element `i` of a `numgen` map (a host-order `u32`).
pub fn numgen_key(i: u32) -> Vec<u8> {
    i.to_ne_bytes().to_vec()
}

/// `meta l4proto PROTO dnat to IP:PORT` (`ip6` family for IPv6).
pub fn dnat(proto: u8, ip: IpAddr, port: u16) -> Vec<Expr> {
    let mut e = l4proto(proto);
    e.push(Expr::Value {
        dreg: REG_1,
        data: octets(ip),
    });
    e.push(Expr::Value {
        dreg: REG_2,
        data: port.to_be_bytes().to_vec(),
    });
    e.push(Expr::Nat {
        dnat: true,
        family: if ip.is_ipv4() { 2 } else { 10 },
        addr: REG_1,
        proto: Some(REG_2),
    });
    e
}

/// `mark set mark or M`.
pub fn mark_or(m: u32) -> Vec<Expr> {
    mark_set(!m, m)
}

/// `ct state new`.
pub fn ct_new() -> Vec<Expr> {
    bits_test(
        Expr::Ct {
            key: CT_STATE,
            dreg: REG_1,
        },
        CT_STATE_NEW,
        CmpOp::Neq,
    )
}

/// `LOAD and MASK OP 0`: a value loaded into `NFT_REG_1`, masked, and
/// compared with zero.
fn bits_test(load: Expr, mask: u32, op: CmpOp) -> Vec<Expr> {
    vec![
        load,
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: mask.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        },
        Expr::Cmp {
            sreg: REG_1,
            op,
            data: vec![0; 4],
        },
    ]
}

/// `meta mark set (meta mark & MASK) ^ XOR`.
fn mark_set(mask: u32, xor: u32) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: META_MARK,
            dreg: REG_1,
        },
        Expr::Bitwise {
            sreg: REG_1,
            dreg: REG_1,
            mask: mask.to_ne_bytes().to_vec(),
            xor: xor.to_ne_bytes().to_vec(),
        },
        Expr::MetaSet {
            key: META_MARK,
            sreg: REG_1,
        },
    ]
}

/// `jump CHAIN`.
pub fn jump(chain: &str) -> Expr {
    Expr::Verdict(Verdict::Jump(chain.into()))
}

/// `goto CHAIN`.
pub fn goto(chain: &str) -> Expr {
    Expr::Verdict(Verdict::Goto(chain.into()))
}

/// `ip daddr` into `NFT_REG_1` (`ip6 daddr` for IPv6), for a lookup.
pub fn daddr_load(v6: bool) -> Expr {
    let (offset, len) = if v6 { (24, 16) } else { (16, 4) };
    Expr::Payload {
        base: BASE_NETWORK,
        offset,
        len,
        dreg: REG_1,
    }
}

/// `ip saddr` into `NFT_REG_1` (`ip6 saddr` for IPv6).
pub fn saddr_load(v6: bool) -> Expr {
    let (offset, len) = if v6 { (8, 16) } else { (12, 4) };
    Expr::Payload {
        base: BASE_NETWORK,
        offset,
        len,
        dreg: REG_1,
    }
}

/// `meta l4proto . th dport vmap @MAP` (node ports).
pub fn proto_port_vmap(map: &str) -> Vec<Expr> {
    vec![
        Expr::Meta {
            key: META_L4PROTO,
            dreg: REG32_00,
        },
        Expr::Payload {
            base: BASE_TRANSPORT,
            offset: 2,
            len: 2,
            dreg: REG32_00 + 1,
        },
        Expr::Lookup {
            sreg: REG32_00,
            set: map.into(),
            set_id: None,
            dreg: Some(REG_VERDICT),
            invert: false,
        },
    ]
}

/// The key of an `ipv4_addr` (or `ipv6_addr`) element.
pub fn addr_key(ip: IpAddr) -> Vec<u8> {
    octets(ip)
}

/// The key of an `inet_proto . inet_service` element.
pub fn proto_port_key(proto: u8, port: u16) -> Vec<u8> {
    let mut k = vec![proto, 0, 0, 0];
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    k
}

/// `mark and M == 0`.
pub fn mark_and_zero(m: u32) -> Vec<Expr> {
    bits_test(
        Expr::Meta {
            key: META_MARK,
            dreg: REG_1,
        },
        m,
        CmpOp::Eq,
    )
}

/// `mark set mark xor M`.
pub fn mark_xor(m: u32) -> Vec<Expr> {
    mark_set(u32::MAX, m)
}

/// `numgen random mod N 0`: true with probability 1/N.
pub fn numgen_is_zero(n: u32) -> Vec<Expr> {
    vec![
        Expr::Numgen {
            dreg: REG_1,
            modulus: n,
        },
        Expr::Cmp {
            sreg: REG_1,
            op: CmpOp::Eq,
            data: 0u32.to_ne_bytes().to_vec(),
        },
    ]
}
