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

/// A batch chunk's size: under glibc's mmap threshold (128 KiB).
const CHUNK: usize = 120 * 1024;

/// Room left in a chunk below which the next message starts a new one
/// (most messages are a few hundred bytes; a longer one grows its chunk).
const SMALL_MESSAGE: usize = 2048;

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

/// An encoded batch: `BATCH_BEGIN`, one or more messages per operation,
/// `BATCH_END`, in chunks that one `sendmsg` gathers into one datagram
/// (an nf_tables batch must arrive whole). Chunks are small enough for
/// the allocator to take them from memory the process already holds (a
/// single buffer of the whole batch, 91 MiB at 10,000 services, was
/// always fresh pages on top of everything else); no message straddles
/// two chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The bytes to send, in order.
    pub chunks: Vec<Vec<u8>>,
    /// The table's family.
    pub family: Family,
    /// The table's name.
    pub table: String,
    /// For each message between `BEGIN` and `END`, the index of the
    /// operation it came from (an element run may take several).
    pub msg_ops: Vec<u32>,
    /// Operations encoded.
    pub ops: usize,
    /// The sequence number of `BATCH_BEGIN`; message `i` has `first_seq +
    /// 1 + i`.
    pub first_seq: u32,
}

/// Walks the messages of one chunk: the offset of each.
fn message_offsets(chunk: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at + 16 > chunk.len() {
            return None;
        }
        let here = at;
        let len = u32::from_ne_bytes([chunk[at], chunk[at + 1], chunk[at + 2], chunk[at + 3]]);
        at += (len as usize + 3) & !3;
        Some(here)
    })
}

impl Batch {
    /// The sequence number of the last message (it asks for an
    /// acknowledgement; errors come for any message).
    pub fn last_seq(&self) -> u32 {
        self.first_seq.wrapping_add(self.msg_ops.len() as u32)
    }

    /// The operation a message's sequence number belongs to.
    pub fn op_of(&self, seq: u32) -> Option<usize> {
        let i = seq.wrapping_sub(self.first_seq).wrapping_sub(1) as usize;
        self.msg_ops.get(i).map(|o| *o as usize)
    }

    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    /// No bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole batch in one buffer (tests, and a batch of more chunks
    /// than one `sendmsg` takes).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.chunks.concat()
    }

    /// Numbers the messages again from `first_seq` (the socket's own
    /// sequence), in place.
    pub fn renumber(&mut self, first_seq: u32) {
        let mut seq = first_seq;
        for chunk in &mut self.chunks {
            let offsets: Vec<usize> = message_offsets(chunk).collect();
            for at in offsets {
                chunk[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
                seq = seq.wrapping_add(1);
            }
        }
        self.first_seq = first_seq;
    }
}

/// Where operations go: kept as a [`Transaction`], or encoded at once by
/// an [`Encoder`] (a full sync at scale never holds its operations).
pub trait OpSink {
    /// Takes one operation.
    fn add(&mut self, op: Op);
}

impl OpSink for Transaction {
    fn add(&mut self, op: Op) {
        self.ops.push(op);
    }
}

/// Encodes operations one by one straight into the batch buffer: no
/// operation outlives its call to [`Encoder::push`], and no message is
/// built apart and copied.
#[derive(Debug)]
pub struct Encoder {
    a: Attrs,
    done: Vec<Vec<u8>>,
    chunk: usize,
    family: Family,
    table: String,
    seq: u32,
    first_seq: u32,
    msg_ops: Vec<u32>,
    ops: usize,
    last_msg: Option<usize>,
}

impl OpSink for Encoder {
    fn add(&mut self, op: Op) {
        self.push(&op);
    }
}

impl Encoder {
    /// A batch on `family` `table` numbered from `first_seq`, for about
    /// `ops` operations (the chunk size and the index of messages are
    /// sized from it).
    pub fn new(family: Family, table: &str, first_seq: u32, ops: usize) -> Encoder {
        // About 240 bytes per operation at scale; chunks under glibc's
        // mmap threshold (128 KiB), unless that would make more than one
        // `sendmsg` gathers (`UIO_MAXIOV`, 1,024).
        let chunk = (ops * 240 / 900).max(CHUNK);
        let mut e = Encoder {
            a: Attrs::with_capacity(chunk),
            done: Vec::new(),
            chunk,
            family,
            table: table.to_string(),
            seq: first_seq,
            first_seq,
            msg_ops: Vec::with_capacity(ops),
            ops: 0,
            last_msg: None,
        };
        e.start(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        e.end();
        e
    }

    /// The rest of a batch, to be [`Encoder::absorb`]ed by the encoder
    /// of its beginning (no `BATCH_BEGIN`): how two threads encode one
    /// batch.
    pub fn continuation(family: Family, table: &str, ops: usize) -> Encoder {
        let chunk = (ops * 240 / 900).max(CHUNK);
        Encoder {
            a: Attrs::with_capacity(chunk),
            done: Vec::new(),
            chunk,
            family,
            table: table.to_string(),
            seq: 0,
            first_seq: 0,
            msg_ops: Vec::with_capacity(ops),
            ops: 0,
            last_msg: None,
        }
    }

    /// Appends what `tail` encoded (a [`Encoder::continuation`]) after
    /// what this one has, as if this one had encoded it; messages are
    /// numbered again when the batch is sent ([`Batch::renumber`]).
    pub fn absorb(&mut self, tail: Encoder) {
        if tail.a.is_empty() && tail.done.is_empty() {
            return;
        }
        let head = std::mem::replace(&mut self.a, tail.a);
        self.done.push(head.into_bytes());
        self.done.extend(tail.done);
        let base = self.ops as u32;
        self.msg_ops.extend(tail.msg_ops.iter().map(|o| o + base));
        self.ops += tail.ops;
        self.seq = self.seq.wrapping_add(tail.msg_ops.len() as u32);
        self.last_msg = tail.last_msg;
    }

    /// The same, with chunks of about `bytes` (tests: many chunks from a
    /// small batch).
    pub fn chunked(mut self, bytes: usize) -> Encoder {
        self.chunk = bytes;
        self
    }

    /// Operations encoded so far.
    pub fn ops(&self) -> usize {
        self.ops
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.done.iter().map(Vec::len).sum::<usize>() + self.a.len()
    }

    /// Nothing encoded yet but `BATCH_BEGIN`.
    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// Writes a message header (its length is set by [`Encoder::end`]),
    /// in a new chunk if this one is nearly full (so no message straddles
    /// two).
    fn start(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> usize {
        if self.a.len() + SMALL_MESSAGE > self.chunk {
            let full = std::mem::replace(&mut self.a, Attrs::with_capacity(self.chunk));
            self.done.push(full.into_bytes());
        }
        let at = self.a.len();
        self.a
            .raw(&0u32.to_ne_bytes())
            .raw(&kind.to_ne_bytes())
            .raw(&flags.to_ne_bytes())
            .raw(&self.seq.to_ne_bytes())
            .raw(&0u32.to_ne_bytes())
            .raw(&[family, 0])
            .raw(&res_id.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        self.last_msg = Some(at);
        at
    }

    fn end(&mut self) {
        if let Some(at) = self.last_msg {
            let len = (self.a.len() - at) as u32;
            self.a.patch(at, &len.to_ne_bytes());
        }
    }

    /// Starts an nf_tables message of operation `self.ops` on the table.
    fn nft(&mut self, msg: u8, flags: u16) -> &mut Attrs {
        self.start(
            (NFNL_SUBSYS_NFTABLES << 8) | u16::from(msg),
            NLM_F_REQUEST | flags,
            self.family.nfproto(),
            0,
        );
        self.msg_ops.push(self.ops as u32);
        let t = std::mem::take(&mut self.table);
        self.a.str(1, &t);
        self.table = t;
        &mut self.a
    }

    /// Encodes one operation (one message, or one per
    /// [`ELEMENTS_PER_MESSAGE`] elements).
    pub fn push(&mut self, op: &Op) {
        match op {
            Op::AddTable { comment } => {
                let a = self.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE);
                if let Some(c) = comment {
                    a.comment(6, 0, c);
                }
                self.end();
            }
            Op::DeleteTable => {
                self.nft(NFT_MSG_DELTABLE, 0);
                self.end();
            }
            Op::AddChain(c) => {
                let a = self.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
                a.str(3, &c.name);
                if let Some(b) = &c.base {
                    a.nested(4, |h| {
                        h.u32(1, b.hook as u32).u32(2, b.priority as u32);
                    });
                    a.str(7, b.kind);
                }
                if let Some(cm) = &c.comment {
                    a.comment(12, 0, cm);
                }
                self.end();
            }
            Op::FlushChain(c) => {
                self.nft(NFT_MSG_DELRULE, 0).str(2, c);
                self.end();
            }
            Op::DeleteChain(c) => {
                self.nft(NFT_MSG_DELCHAIN, 0).str(3, c);
                self.end();
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
                let a = self.nft(NFT_MSG_NEWSET, NLM_F_CREATE);
                a.str(2, &s.name)
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
                self.end();
            }
            Op::FlushSet(s) => {
                self.nft(NFT_MSG_DELSETELEM, 0).str(2, s);
                self.end();
            }
            Op::DeleteSet(s) => {
                self.nft(NFT_MSG_DELSET, 0).str(2, s);
                self.end();
            }
            Op::AddElements {
                set,
                set_id,
                elements,
            } => {
                for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
                    let a = self.nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE);
                    a.str(2, set);
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
                                    x.comment(6, 0, c);
                                }
                            });
                        }
                    });
                    self.end();
                }
            }
            Op::DeleteElements { set, keys } => {
                for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
                    let a = self.nft(NFT_MSG_DELSETELEM, 0);
                    a.str(2, set);
                    a.nested(3, |l| {
                        for key in chunk {
                            l.nested(1, |x| {
                                x.nested(1, |k| {
                                    k.bytes_attr(1, key);
                                });
                            });
                        }
                    });
                    self.end();
                }
            }
            Op::AddRule(r) => {
                let a = self.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
                a.str(2, &r.chain);
                a.nested(4, |l| {
                    for e in &r.exprs {
                        e.encode(l);
                    }
                });
                if let Some(c) = &r.comment {
                    a.comment(7, 0, c);
                }
                self.end();
            }
        }
        self.ops += 1;
    }

    /// The batch: the last message asks for an acknowledgement (so the
    /// reader knows when the kernel is done; errors come for any
    /// message), then `BATCH_END`.
    pub fn finish(mut self) -> Batch {
        if !self.msg_ops.is_empty()
            && let Some(at) = self.last_msg
        {
            let b = self.a.bytes_mut();
            let flags = u16::from_ne_bytes([b[at + 6], b[at + 7]]) | NLM_F_ACK;
            self.a.patch(at + 6, &flags.to_ne_bytes());
        }
        self.start(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.end();
        let mut chunks = self.done;
        chunks.push(self.a.into_bytes());
        Batch {
            chunks,
            family: self.family,
            table: self.table,
            msg_ops: self.msg_ops,
            ops: self.ops,
            first_seq: self.first_seq,
        }
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
        let mut e = Encoder::new(self.family, &self.table, first_seq, self.ops.len());
        for op in &self.ops {
            e.push(op);
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx() -> Transaction {
        let mut tx = Transaction::new(Family::Ip, "kube-proxy");
        tx.push(Op::AddTable { comment: None });
        tx.push(Op::AddChain(Chain {
            name: "services".into(),
            base: None,
            comment: Some("c".into()),
        }));
        tx.push(Op::AddElements {
            set: "cluster-ips".into(),
            set_id: None,
            elements: (0..ELEMENTS_PER_MESSAGE as u32 + 1)
                .map(|i| Element {
                    key: i.to_be_bytes().to_vec(),
                    verdict: None,
                    comment: None,
                })
                .collect(),
        });
        tx.push(Op::FlushChain("services".into()));
        tx
    }

    /// Message lengths, sequence numbers and flags, walked as the kernel
    /// walks the batch.
    fn headers(b: &[u8]) -> Vec<(usize, u32, u16)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at + 16 <= b.len() {
            let len = u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            let flags = u16::from_ne_bytes(b[at + 6..at + 8].try_into().unwrap());
            let seq = u32::from_ne_bytes(b[at + 8..at + 12].try_into().unwrap());
            out.push((len, seq, flags));
            at += (len + 3) & !3;
        }
        assert_eq!(at, b.len(), "the messages cover the batch exactly");
        out
    }

    #[test]
    fn streamed_encoding_equals_the_transactions_and_numbers_again() {
        let t = tx();
        let whole = t.encode(7);
        let mut e = Encoder::new(Family::Ip, "kube-proxy", 7, 1);
        for op in t.ops.clone() {
            e.add(op);
        }
        assert_eq!(e.finish(), whole);
        // BEGIN, table, chain, two element messages (257 elements), flush, END.
        assert_eq!(whole.chunks.len(), 1);
        let h = headers(&whole.to_bytes());
        assert_eq!(h.len(), 7);
        assert_eq!(whole.msg_ops, vec![0, 1, 2, 2, 3]);
        assert_eq!(
            h.iter().map(|x| x.1).collect::<Vec<_>>(),
            (7..14).collect::<Vec<_>>()
        );
        // Only the last operation's message asks for an acknowledgement.
        let acks: Vec<bool> = h.iter().map(|x| x.2 & NLM_F_ACK != 0).collect();
        assert_eq!(acks, [false, false, false, false, false, true, false]);
        assert_eq!(whole.last_seq(), 12);
        assert_eq!(whole.op_of(10), Some(2));
        assert_eq!(whole.op_of(12), Some(3));
        assert_eq!(whole.op_of(7), None, "BEGIN is no operation");
        let mut again = whole.clone();
        again.renumber(100);
        let h2 = headers(&again.to_bytes());
        assert_eq!(
            h2.iter().map(|x| x.1).collect::<Vec<_>>(),
            (100..107).collect::<Vec<_>>()
        );
        assert_eq!(again.last_seq(), 105);
        assert_eq!(again.op_of(103), Some(2));
        assert_eq!(again, t.encode(100));
    }

    #[test]
    fn a_continuation_absorbed_equals_one_encoder() {
        let t = tx();
        let whole = t.encode(1);
        let mut head = Encoder::new(Family::Ip, "kube-proxy", 1, 1);
        head.push(&t.ops[0]);
        head.push(&t.ops[1]);
        let mut tail = Encoder::continuation(Family::Ip, "kube-proxy", 1);
        tail.push(&t.ops[2]);
        head.absorb(tail);
        head.push(&t.ops[3]);
        let mut b = head.finish();
        assert_eq!(b.msg_ops, whole.msg_ops);
        assert_eq!(b.ops, whole.ops);
        b.renumber(1);
        assert_eq!(b.to_bytes(), whole.to_bytes());
        assert_eq!(b.last_seq(), whole.last_seq());
    }

    #[test]
    fn chunks_split_at_message_boundaries() {
        let t = tx();
        let whole = t.encode(1);
        let mut e = Encoder::new(Family::Ip, "kube-proxy", 1, 1).chunked(SMALL_MESSAGE + 64);
        for op in &t.ops {
            e.push(op);
        }
        let mut split = e.finish();
        assert!(split.chunks.len() >= 4, "{} chunks", split.chunks.len());
        assert_eq!(split.to_bytes(), whole.to_bytes());
        for c in &split.chunks {
            headers(c); // each chunk holds whole messages
        }
        split.renumber(40);
        let mut w = whole.clone();
        w.renumber(40);
        assert_eq!(split.to_bytes(), w.to_bytes());
        assert_eq!(split.len(), w.len());
    }
}
