//! The nf_tables expressions kube-proxy's layout needs, encoded as the
//! kernel takes them (`linux/netfilter/nf_tables.h`); `nft --debug=netlink`
//! prints the same expressions for the same rules.

use super::attrs::Attrs;

/// `NFT_REG_VERDICT`.
pub const REG_VERDICT: u32 = 0;
/// `NFT_REG_1` (16 bytes).
pub const REG_1: u32 = 1;
/// `NFT_REG_2`.
pub const REG_2: u32 = 2;
/// `NFT_REG32_00`: the first 4-byte register (concatenations start here).
pub const REG32_00: u32 = 8;

/// `NFT_PAYLOAD_NETWORK_HEADER`.
pub const BASE_NETWORK: u32 = 1;
/// `NFT_PAYLOAD_TRANSPORT_HEADER`.
pub const BASE_TRANSPORT: u32 = 2;

/// `NFT_META_MARK`.
pub const META_MARK: u32 = 3;
/// `NFT_META_IIFNAME`.
pub const META_IIFNAME: u32 = 6;
/// `NFT_META_L4PROTO`.
pub const META_L4PROTO: u32 = 16;

/// `NFT_CT_STATE`.
pub const CT_STATE: u32 = 0;
/// `IP_CT_NEW` as a ct state bit (`ct state new`).
pub const CT_STATE_NEW: u32 = 1 << 3;

/// `NFT_FIB_RESULT_ADDRTYPE`.
pub const FIB_RESULT_ADDRTYPE: u32 = 3;
/// `NFTA_FIB_F_SADDR`.
pub const FIB_F_SADDR: u32 = 1;
/// `NFTA_FIB_F_DADDR`.
pub const FIB_F_DADDR: u32 = 2;
/// `RTN_LOCAL` (`fib ... type local`).
pub const RTN_LOCAL: u32 = 2;

/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY` (`masquerade fully-random`).
pub const NAT_RANDOM_FULLY: u32 = 0x10;

/// A relational operator (`enum nft_cmp_ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `==`.
    Eq = 0,
    /// `!=`.
    Neq = 1,
}

/// A verdict (`enum nft_verdicts` and the netfilter ones).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// `drop` (`NF_DROP`).
    Drop,
    /// `accept` (`NF_ACCEPT`).
    Accept,
    /// `continue`.
    Continue,
    /// `return`.
    Return,
    /// `jump CHAIN`.
    Jump(String),
    /// `goto CHAIN`.
    Goto(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Continue => -1,
            Verdict::Return => -5,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
        }
    }

    /// The chain it names, if any.
    pub fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }

    /// `NFTA_DATA_VERDICT { CODE, CHAIN }` into `a`.
    pub fn encode(&self, a: &mut Attrs) {
        a.nested(2, |v| {
            v.u32(1, self.code() as u32);
            if let Some(c) = self.chain() {
                v.str(2, c);
            }
        });
    }
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// `payload load LEN b @ BASE + OFFSET => reg DREG`.
    Payload {
        /// Header base.
        base: u32,
        /// Offset in it.
        offset: u32,
        /// Bytes.
        len: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `meta load KEY => reg DREG`.
    Meta {
        /// `NFT_META_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `meta set KEY with reg SREG`.
    MetaSet {
        /// `NFT_META_*`.
        key: u32,
        /// Source register.
        sreg: u32,
    },
    /// `ct load KEY => reg DREG`.
    Ct {
        /// `NFT_CT_*`.
        key: u32,
        /// Destination register.
        dreg: u32,
    },
    /// `cmp OP reg SREG DATA`.
    Cmp {
        /// Source register.
        sreg: u32,
        /// Operator.
        op: CmpOp,
        /// Value.
        data: Vec<u8>,
    },
    /// `bitwise reg DREG = (reg SREG & MASK) ^ XOR`.
    Bitwise {
        /// Source register.
        sreg: u32,
        /// Destination register.
        dreg: u32,
        /// Mask.
        mask: Vec<u8>,
        /// Xor (same length).
        xor: Vec<u8>,
    },
    /// `lookup reg SREG set NAME [dreg DREG]` (a verdict map when `dreg`
    /// is the verdict register).
    Lookup {
        /// Source register of the key.
        sreg: u32,
        /// The set's name.
        set: String,
        /// The set's id in this transaction (anonymous sets).
        set_id: Option<u32>,
        /// Destination register (maps).
        dreg: Option<u32>,
        /// `!=`: match when absent.
        invert: bool,
    },
    /// `immediate reg DREG VALUE`.
    Value {
        /// Destination register.
        dreg: u32,
        /// Bytes.
        data: Vec<u8>,
    },
    /// `immediate reg 0 VERDICT`.
    Verdict(Verdict),
    /// `nat dnat|snat FAMILY addr_min reg A [proto_min reg P]`.
    Nat {
        /// DNAT (else SNAT).
        dnat: bool,
        /// `NFPROTO_IPV4` or `NFPROTO_IPV6`.
        family: u32,
        /// Register holding the address.
        addr: u32,
        /// Register holding the port.
        proto: Option<u32>,
    },
    /// `numgen random mod N => reg DREG`.
    Numgen {
        /// Destination register.
        dreg: u32,
        /// Modulus.
        modulus: u32,
    },
    /// `fib saddr|daddr type => reg DREG`.
    Fib {
        /// Destination register.
        dreg: u32,
        /// `NFT_FIB_RESULT_*`.
        result: u32,
        /// `NFTA_FIB_F_*`.
        flags: u32,
    },
    /// `masq [flags]`.
    Masq {
        /// `NF_NAT_RANGE_*`.
        flags: u32,
    },
    /// `reject type icmp[v6] code CODE` (port unreachable: 3, or 4 in
    /// ICMPv6).
    Reject {
        /// The ICMP code.
        icmp_code: u8,
    },
    /// `counter`.
    Counter,
    /// `dynset update reg SREG set NAME` (`update @set { ip saddr }`).
    DynsetUpdate {
        /// Source register of the key.
        sreg: u32,
        /// The set.
        set: String,
    },
}

fn data_value(a: &mut Attrs, kind: u16, v: &[u8]) {
    a.nested(kind, |d| {
        d.bytes_attr(1, v);
    });
}

impl Expr {
    /// The expression's kernel name.
    pub fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Lookup { .. } => "lookup",
            Expr::Value { .. } | Expr::Verdict(_) => "immediate",
            Expr::Nat { .. } => "nat",
            Expr::Numgen { .. } => "numgen",
            Expr::Fib { .. } => "fib",
            Expr::Masq { .. } => "masq",
            Expr::Reject { .. } => "reject",
            Expr::Counter => "counter",
            Expr::DynsetUpdate { .. } => "dynset",
        }
    }

    /// `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA { … } }` into `a`.
    pub fn encode(&self, a: &mut Attrs) {
        a.nested(1, |e| {
            e.str(1, self.name());
            e.nested(2, |d| self.data(d));
        });
    }

    fn data(&self, d: &mut Attrs) {
        match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                d.u32(1, *dreg).u32(2, *base).u32(3, *offset).u32(4, *len);
            }
            Expr::Meta { key, dreg } => {
                d.u32(1, *dreg).u32(2, *key);
            }
            Expr::MetaSet { key, sreg } => {
                d.u32(2, *key).u32(3, *sreg);
            }
            Expr::Ct { key, dreg } => {
                d.u32(1, *dreg).u32(2, *key);
            }
            Expr::Cmp { sreg, op, data } => {
                d.u32(1, *sreg).u32(2, *op as u32);
                data_value(d, 3, data);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                d.u32(1, *sreg).u32(2, *dreg).u32(3, mask.len() as u32);
                data_value(d, 4, mask);
                data_value(d, 5, xor);
                d.u32(6, 0); // NFT_BITWISE_MASK_XOR
            }
            Expr::Lookup {
                sreg,
                set,
                set_id,
                dreg,
                invert,
            } => {
                d.str(1, set).u32(2, *sreg);
                if let Some(r) = dreg {
                    d.u32(3, *r);
                }
                if let Some(id) = set_id {
                    d.u32(4, *id);
                }
                if *invert {
                    d.u32(5, 1);
                }
            }
            Expr::Value { dreg, data } => {
                d.u32(1, *dreg);
                data_value(d, 2, data);
            }
            Expr::Verdict(v) => {
                d.u32(1, REG_VERDICT);
                d.nested(2, |x| v.encode(x));
            }
            Expr::Nat {
                dnat,
                family,
                addr,
                proto,
            } => {
                d.u32(1, u32::from(*dnat)).u32(2, *family).u32(3, *addr);
                if let Some(p) = proto {
                    d.u32(5, *p);
                }
            }
            Expr::Numgen { dreg, modulus } => {
                d.u32(1, *dreg).u32(2, *modulus).u32(3, 1).u32(4, 0);
            }
            Expr::Fib {
                dreg,
                result,
                flags,
            } => {
                d.u32(1, *dreg).u32(2, *result).u32(3, *flags);
            }
            Expr::Masq { flags } => {
                if *flags != 0 {
                    d.u32(1, *flags);
                }
            }
            Expr::Reject { icmp_code } => {
                d.u32(1, 0).bytes_attr(2, &[*icmp_code]);
            }
            Expr::Counter => {}
            Expr::DynsetUpdate { sreg, set } => {
                d.str(1, set).u32(3, 1).u32(4, *sreg);
            }
        }
    }
}
