//! The objects of a table and the operations on them (what `nft -f` input
//! says), encoded as one nf_tables batch: `NFNL_MSG_BATCH_BEGIN`, one
//! message per operation, `NFNL_MSG_BATCH_END`. The kernel applies the
//! whole batch or none of it.

use std::fmt;

use super::attrs::Attrs;
use super::expr::{Expr, Verdict};

/// `NFNL_SUBSYS_NFTABLES`.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFNL_MSG_BATCH_BEGIN`.
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
/// `NFNL_MSG_BATCH_END`.
pub const NFNL_MSG_BATCH_END: u16 = 0x11;

const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_DELTABLE: u8 = 2;
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_DELCHAIN: u8 = 5;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_DELRULE: u8 = 8;
const NFT_MSG_NEWSET: u8 = 9;
const NFT_MSG_DELSET: u8 = 11;
const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_DELSETELEM: u8 = 14;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

/// `NFT_SET_ANONYMOUS`.
pub const SET_ANONYMOUS: u32 = 0x1;
/// `NFT_SET_CONSTANT`.
pub const SET_CONSTANT: u32 = 0x2;
/// `NFT_SET_INTERVAL`.
pub const SET_INTERVAL: u32 = 0x4;
/// `NFT_SET_MAP`.
pub const SET_MAP: u32 = 0x8;
/// `NFT_SET_TIMEOUT`.
pub const SET_TIMEOUT: u32 = 0x10;
/// `NFT_SET_EVAL` (`flags dynamic`).
pub const SET_EVAL: u32 = 0x20;
/// `NFT_SET_CONCAT`.
pub const SET_CONCAT: u32 = 0x80;

/// `NFT_DATA_VERDICT`: the data type of a verdict map.
pub const DATA_VERDICT: u32 = 0xffff_ff00;

/// A table's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `ip` (`NFPROTO_IPV4`).
    Ip,
    /// `ip6` (`NFPROTO_IPV6`).
    Ip6,
}

impl Family {
    /// `NFPROTO_*`.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Ip6 => 10,
        }
    }

    /// `ip` or `ip6`, as `nft` names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }
}

/// A netfilter hook (`NF_INET_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// `prerouting`.
    Prerouting = 0,
    /// `input`.
    Input = 1,
    /// `forward`.
    Forward = 2,
    /// `output`.
    Output = 3,
    /// `postrouting`.
    Postrouting = 4,
}

/// What makes a chain a base chain: `type KIND hook HOOK priority P`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseHook {
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// The hook.
    pub hook: Hook,
    /// The priority.
    pub priority: i32,
}

/// A chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// Set for a base chain.
    pub base: Option<BaseHook>,
    /// `comment "…"`.
    pub comment: Option<String>,
}

/// The type of one field of a set key (nft's datatypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// `ipv4_addr`.
    Ipv4Addr,
    /// `ipv6_addr`.
    Ipv6Addr,
    /// `inet_proto`.
    InetProto,
    /// `inet_service`.
    InetService,
    /// `integer` of 32 bits (what `numgen` yields).
    Integer32,
}

impl KeyType {
    /// nft's datatype number and the field's length in bytes.
    fn id_len(self) -> (u32, u32) {
        match self {
            KeyType::Ipv4Addr => (7, 4),
            KeyType::Ipv6Addr => (8, 16),
            KeyType::InetProto => (12, 1),
            KeyType::InetService => (13, 2),
            KeyType::Integer32 => (4, 4),
        }
    }
}

/// A set or a verdict map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Set {
    /// Its name (`__map%d` for an anonymous one: the kernel names it).
    pub name: String,
    /// The key, one field or a concatenation.
    pub key: Vec<KeyType>,
    /// A verdict map (`: verdict`).
    pub verdict_map: bool,
    /// `NFT_SET_*` flags besides `MAP` and `CONCAT`.
    pub flags: u32,
    /// `timeout`, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// `comment "…"`.
    pub comment: Option<String>,
    /// The set's id in the transaction (anonymous sets are referred to by
    /// it).
    pub id: u32,
}

/// An element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    /// The key's bytes (each field padded to 4 bytes).
    pub key: Vec<u8>,
    /// The verdict, in a verdict map.
    pub verdict: Option<Verdict>,
    /// `comment "…"`.
    pub comment: Option<String>,
}

/// A rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its chain.
    pub chain: String,
    /// Its expressions.
    pub exprs: Vec<Expr>,
    /// `comment "…"`.
    pub comment: Option<String>,
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `add table FAMILY NAME { comment "…" }` (kept if it exists).
    AddTable {
        /// `comment "…"`.
        comment: Option<String>,
    },
    /// `delete table FAMILY NAME`.
    DeleteTable,
    /// `add chain …` (kept if it exists).
    AddChain(Chain),
    /// `flush chain …`.
    FlushChain(String),
    /// `delete chain …`.
    DeleteChain(String),
    /// `add set …` / `add map …`.
    AddSet(Set),
    /// `flush set …`.
    FlushSet(String),
    /// `delete set …`.
    DeleteSet(String),
    /// `add element … { … }`.
    AddElements {
        /// The set.
        set: String,
        /// Its transaction id (anonymous sets).
        set_id: Option<u32>,
        /// The elements.
        elements: Vec<Element>,
    },
    /// `delete element … { … }` by key.
    DeleteElements {
        /// The set.
        set: String,
        /// The keys.
        keys: Vec<Vec<u8>>,
    },
    /// `add rule …`.
    AddRule(Rule),
}

impl fmt::Display for Op {
    /// As `nft` would say it (for error messages): `add chain NAME`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddTable { .. } => f.write_str("add table"),
            Op::DeleteTable => f.write_str("delete table"),
            Op::AddChain(c) => write!(f, "add chain {}", c.name),
            Op::FlushChain(c) => write!(f, "flush chain {c}"),
            Op::DeleteChain(c) => write!(f, "delete chain {c}"),
            Op::AddSet(s) => write!(
                f,
                "add {} {}",
                if s.verdict_map { "map" } else { "set" },
                s.name
            ),
            Op::FlushSet(s) => write!(f, "flush set {s}"),
            Op::DeleteSet(s) => write!(f, "delete set {s}"),
            Op::AddElements { set, elements, .. } => {
                write!(f, "add element {set} ({} elements)", elements.len())
            }
            Op::DeleteElements { set, keys } => {
                write!(f, "delete element {set} ({} elements)", keys.len())
            }
            Op::AddRule(r) => write!(f, "add rule {}", r.chain),
        }
    }
}

/// libnftnl's user data: `[type, len, value…]` entries.
fn udata_comment(kind: u8, text: &str) -> Vec<u8> {
    let mut v = vec![kind, (text.len() + 1) as u8];
    v.extend_from_slice(text.as_bytes());
    v.push(0);
    v
}

/// nft's concatenated datatype: each field's type shifted in 6 bits.
fn key_type(key: &[KeyType]) -> u32 {
    key.iter().fold(0, |t, k| (t << 6) | k.id_len().0)
}

fn key_len(key: &[KeyType]) -> u32 {
    key.iter().map(|k| k.id_len().1.next_multiple_of(4)).sum()
}

/// Elements per `NEWSETELEM` message: an attribute cannot exceed 64 KiB.
const ELEMENTS_PER_MESSAGE: usize = 256;

/// A transaction on one table: what one `nft -f` file with `add`,
/// `flush` and `delete` lines does, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The table's family.
    pub family: Family,
    /// The table's name.
    pub table: String,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

/// An encoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The bytes to send (one `sendmsg`).
    pub bytes: Vec<u8>,
    /// Sequence number of each message and the operation it came from.
    pub seqs: Vec<(u32, usize)>,
    /// The sequence number of the last message (it asks for an
    /// acknowledgement; errors come for any message).
    pub last_seq: u32,
}

struct Writer {
    bytes: Vec<u8>,
    seq: u32,
    seqs: Vec<(u32, usize)>,
}

impl Writer {
    fn message(&mut self, kind: u16, flags: u16, family: u8, res_id: u16, attrs: &[u8], op: usize) {
        let len = 16 + 4 + attrs.len();
        self.bytes.extend_from_slice(&(len as u32).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(&flags.to_ne_bytes());
        self.bytes.extend_from_slice(&self.seq.to_ne_bytes());
        self.bytes.extend_from_slice(&0u32.to_ne_bytes());
        self.bytes.push(family);
        self.bytes.push(0);
        self.bytes.extend_from_slice(&res_id.to_be_bytes());
        self.bytes.extend_from_slice(attrs);
        self.seqs.push((self.seq, op));
        self.seq = self.seq.wrapping_add(1);
    }

    fn nft(&mut self, msg: u8, flags: u16, family: Family, attrs: Attrs, op: usize) {
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg),
            NLM_F_REQUEST | flags,
            family.nfproto(),
            0,
            attrs.bytes(),
            op,
        );
    }
}

impl Transaction {
    /// A transaction on `family` `table`.
    pub fn new(family: Family, table: impl Into<String>) -> Transaction {
        Transaction {
            family,
            table: table.into(),
            ops: Vec::new(),
        }
    }

    /// Appends an operation.
    pub fn push(&mut self, op: Op) -> &mut Self {
        self.ops.push(op);
        self
    }

    /// Encodes the batch, numbering messages from `first_seq`.
    pub fn encode(&self, first_seq: u32) -> Batch {
        let mut w = Writer {
            // About 230 bytes per operation at scale; pages never written are
            // not resident, so reserving more than needed costs nothing and
            // spares the copies of a growing buffer.
            bytes: Vec::with_capacity(self.ops.len() * 320 + 4096),
            seq: first_seq,
            seqs: Vec::new(),
        };
        let subsys = NFNL_SUBSYS_NFTABLES;
        w.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            subsys,
            &[],
            usize::MAX,
        );
        w.seqs.clear();
        let t = self.table.as_str();
        let fam = self.family;
        for (i, op) in self.ops.iter().enumerate() {
            let mut a = Attrs::new();
            match op {
                Op::AddTable { comment } => {
                    a.str(1, t);
                    if let Some(c) = comment {
                        a.bytes_attr(6, &udata_comment(0, c));
                    }
                    w.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, fam, a, i);
                }
                Op::DeleteTable => {
                    a.str(1, t);
                    w.nft(NFT_MSG_DELTABLE, 0, fam, a, i);
                }
                Op::AddChain(c) => {
                    a.str(1, t).str(3, &c.name);
                    if let Some(b) = &c.base {
                        a.nested(4, |h| {
                            h.u32(1, b.hook as u32).u32(2, b.priority as u32);
                        });
                        a.str(7, b.kind);
                    }
                    if let Some(cm) = &c.comment {
                        a.bytes_attr(12, &udata_comment(0, cm));
                    }
                    w.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, fam, a, i);
                }
                Op::FlushChain(c) => {
                    a.str(1, t).str(2, c);
                    w.nft(NFT_MSG_DELRULE, 0, fam, a, i);
                }
                Op::DeleteChain(c) => {
                    a.str(1, t).str(3, c);
                    w.nft(NFT_MSG_DELCHAIN, 0, fam, a, i);
                }
                Op::AddSet(s) => {
                    let mut flags = s.flags;
                    if s.verdict_map {
                        flags |= SET_MAP;
                    }
                    if s.key.len() > 1 {
                        flags |= SET_CONCAT;
                    }
                    if s.timeout_ms.is_some() {
                        flags |= SET_TIMEOUT;
                    }
                    a.str(1, t)
                        .str(2, &s.name)
                        .u32(3, flags)
                        .u32(4, key_type(&s.key))
                        .u32(5, key_len(&s.key));
                    if s.verdict_map {
                        a.u32(6, DATA_VERDICT).u32(7, 0);
                    }
                    if s.key.len() > 1 {
                        a.nested(9, |d| {
                            d.nested(2, |c| {
                                for k in &s.key {
                                    c.nested(1, |f| {
                                        f.u32(1, k.id_len().1);
                                    });
                                }
                            });
                        });
                    }
                    a.u32(10, s.id);
                    if let Some(ms) = s.timeout_ms {
                        a.u64(11, ms);
                    }
                    // User data `nft` reads back: the key's byte order
                    // (host order for `numgen`'s integers) and the comment.
                    let mut udata = Vec::new();
                    if s.key == [KeyType::Integer32] {
                        udata.extend_from_slice(&[0, 4]);
                        udata.extend_from_slice(&1u32.to_ne_bytes()); // BYTEORDER_HOST_ENDIAN
                    }
                    if let Some(c) = &s.comment {
                        udata.extend(udata_comment(7, c));
                    }
                    if !udata.is_empty() {
                        a.bytes_attr(13, &udata);
                    }
                    w.nft(NFT_MSG_NEWSET, NLM_F_CREATE, fam, a, i);
                }
                Op::FlushSet(s) => {
                    a.str(1, t).str(2, s);
                    w.nft(NFT_MSG_DELSETELEM, 0, fam, a, i);
                }
                Op::DeleteSet(s) => {
                    a.str(1, t).str(2, s);
                    w.nft(NFT_MSG_DELSET, 0, fam, a, i);
                }
                Op::AddElements {
                    set,
                    set_id,
                    elements,
                } => {
                    for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
                        let mut a = Attrs::new();
                        a.str(1, t).str(2, set);
                        if let Some(id) = set_id {
                            a.u32(4, *id);
                        }
                        a.nested(3, |l| {
                            for e in chunk {
                                l.nested(1, |x| {
                                    x.nested(1, |k| {
                                        k.bytes_attr(1, &e.key);
                                    });
                                    if let Some(v) = &e.verdict {
                                        x.nested(2, |d| v.encode(d));
                                    }
                                    if let Some(c) = &e.comment {
                                        x.bytes_attr(6, &udata_comment(0, c));
                                    }
                                });
                            }
                        });
                        w.nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE, fam, a, i);
                    }
                }
                Op::DeleteElements { set, keys } => {
                    for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
                        let mut a = Attrs::new();
                        a.str(1, t).str(2, set);
                        a.nested(3, |l| {
                            for key in chunk {
                                l.nested(1, |x| {
                                    x.nested(1, |k| {
                                        k.bytes_attr(1, key);
                                    });
                                });
                            }
                        });
                        w.nft(NFT_MSG_DELSETELEM, 0, fam, a, i);
                    }
                }
                Op::AddRule(r) => {
                    a.str(1, t).str(2, &r.chain);
                    a.nested(4, |l| {
                        for e in &r.exprs {
                            e.encode(l);
                        }
                    });
                    if let Some(c) = &r.comment {
                        a.bytes_attr(7, &udata_comment(0, c));
                    }
                    w.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, fam, a, i);
                }
            }
        }
        // The last message asks for an acknowledgement, so the reader
        // knows when the kernel is done; errors come for any message.
        let last_seq = w.seq.wrapping_sub(1);
        if let Some(&(_, _)) = w.seqs.last() {
            let at = last_message_offset(&w.bytes);
            let flags = u16::from_ne_bytes([w.bytes[at + 6], w.bytes[at + 7]]) | NLM_F_ACK;
            w.bytes[at + 6..at + 8].copy_from_slice(&flags.to_ne_bytes());
        }
        w.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            subsys,
            &[],
            usize::MAX,
        );
        w.seqs.pop();
        Batch {
            bytes: w.bytes,
            seqs: w.seqs,
            last_seq,
        }
    }
}

fn last_message_offset(bytes: &[u8]) -> usize {
    let mut at = 0;
    let mut last = 0;
    while at + 16 <= bytes.len() {
        last = at;
        let len = u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        at += (len as usize + 3) & !3;
    }
    last
}
