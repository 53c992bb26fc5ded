//! How many rules each chain of an nf_tables table holds, and the
//! network namespace's ruleset generation, read over `NETLINK_NETFILTER`
//! with no process and no rule translation: what a drift check compares
//! with what a backend wrote (iptables-nft's `ip nat` table, the nftables
//! backend's `ip kube-proxy`).
//!
//! - [`generation`] is `NFT_MSG_GETGEN`: the kernel bumps it on every
//!   committed nf_tables transaction of the namespace (`nft monitor`
//!   prints `# new generation N by process …`). Unchanged since a check
//!   means nothing in any table changed.
//! - [`nft_chain_rules`] is one `NFT_MSG_GETRULE` dump per chain asked for
//!   ([`nft_rules`] one of the whole table); only each rule's chain name is
//!   read, and for the chains asked for, where its verdict jumps (`nft
//!   list chain ip nat KUBE-SERVICES`, counted; `iptables -t nat -S
//!   OUTPUT`).

use std::collections::BTreeMap;
use std::io;

use proxier_core::IpFamily;

use crate::nfnl::NfnlSocket;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// `NFT_JUMP` and `NFT_GOTO` as the kernel sends them (big endian).
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFTA_GEN_ID: u16 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP_INTR: u16 = 0x10;

/// `NFPROTO_IPV4` / `NFPROTO_IPV6`: the family of an `ip` / `ip6` table.
pub fn nfproto(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => 2,
        IpFamily::V6 => 10,
    }
}

fn request(msg: u16, flags: u16, family: u8, seq: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b.extend_from_slice(&[family, 0, 0, 0]); // nfgenmsg: family, version, res_id
    for (kind, value) in attrs {
        let len = 4 + value.len();
        b.extend_from_slice(&(len as u16).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(value);
        b.resize(b.len().next_multiple_of(4), 0);
    }
    let len = b.len() as u32;
    b[0..4].copy_from_slice(&len.to_ne_bytes());
    b[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    b
}

/// One message of a reply: its type, flags and payload after `nfgenmsg`
/// (or, for `NLMSG_ERROR`, after the header).
struct Msg<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    body: &'a [u8],
}

fn messages(buf: &[u8]) -> impl Iterator<Item = io::Result<Msg<'_>>> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at + 16 > buf.len() {
            return None;
        }
        let h = &buf[at..];
        let len = u32::from_ne_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || at + len > buf.len() {
            at = buf.len();
            return Some(Err(io::Error::other("truncated netlink message")));
        }
        let m = Msg {
            kind: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: u32::from_ne_bytes(h[8..12].try_into().expect("4 bytes")),
            body: &h[16..len],
        };
        at += len.next_multiple_of(4);
        Some(Ok(m))
    })
}

/// The attributes after `nfgenmsg`.
fn attrs(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    nla(body.get(4..).unwrap_or_default())
}

/// The attributes of a buffer (a nest's payload), type without flags.
fn nla(body: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at + 4 > body.len() {
            return None;
        }
        let len = u16::from_ne_bytes([body[at], body[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([body[at + 2], body[at + 3]]) & 0x3fff;
        if len < 4 || at + len > body.len() {
            return None;
        }
        let v = &body[at + 4..at + len];
        at += len.next_multiple_of(4);
        Some((kind, v))
    })
}

fn error_code(body: &[u8]) -> i32 {
    body.get(0..4)
        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .unwrap_or(0)
}

fn nul_str(v: &[u8]) -> &[u8] {
    v.split(|b| *b == 0).next().unwrap_or(v)
}

/// Sends `req` and hands every reply message with its sequence number to
/// `each` until the dump ends (or, for a plain request, the answer comes).
/// Returns whether the dump was interrupted by a concurrent change.
async fn exchange(
    sock: &mut NfnlSocket,
    req: &[u8],
    seq: u32,
    dump: bool,
    mut each: impl FnMut(u16, &[u8]),
) -> io::Result<bool> {
    sock.send(req).await?;
    let mut buf = Vec::with_capacity(1 << 18);
    let mut interrupted = false;
    loop {
        buf.clear();
        sock.recv(&mut buf).await?;
        for m in messages(&buf) {
            let m = m?;
            if m.seq != seq {
                continue;
            }
            interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
            match m.kind {
                NLMSG_DONE => return Ok(interrupted),
                NLMSG_ERROR => {
                    let code = error_code(m.body);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    if !dump {
                        return Ok(interrupted);
                    }
                }
                kind => {
                    each(kind & 0xff, m.body);
                    if !dump {
                        return Ok(interrupted);
                    }
                }
            }
        }
    }
}

/// The namespace's nf_tables generation (`NFT_MSG_GETGEN`).
pub async fn ruleset_generation() -> io::Result<u32> {
    let mut sock = NfnlSocket::open()?;
    let req = request(NFT_MSG_GETGEN, 0, 0, 1, &[]);
    let mut id = None;
    exchange(&mut sock, &req, 1, false, |kind, body| {
        if kind == NFT_MSG_NEWGEN {
            id = attrs(body)
                .find(|(k, _)| *k == NFTA_GEN_ID)
                .and_then(|(_, v)| v.get(0..4))
                .map(|v| u32::from_be_bytes(v.try_into().expect("4 bytes")));
        }
    })
    .await?;
    id.ok_or_else(|| io::Error::other("no NFTA_GEN_ID in the kernel's answer"))
}

/// What one dump of a table's rules found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NftRules {
    /// Rules per chain (chains without rules absent).
    pub counts: BTreeMap<String, usize>,
    /// For each chain asked for, the chain each of its rules jumps or
    /// goes to (`-j CHAIN`, `jump CHAIN`; `None` for any other verdict),
    /// in order.
    pub targets: BTreeMap<String, Vec<Option<String>>>,
}

/// The chain a rule's `immediate` verdict jumps or goes to, if any.
fn jump_target(exprs: &[u8]) -> Option<String> {
    for (k, e) in nla(exprs) {
        if k != NFTA_LIST_ELEM {
            continue;
        }
        let mut name = None;
        let mut data = None;
        for (k, v) in nla(e) {
            match k {
                NFTA_EXPR_NAME => name = Some(nul_str(v)),
                NFTA_EXPR_DATA => data = Some(v),
                _ => {}
            }
        }
        if name != Some(b"immediate".as_slice()) {
            continue;
        }
        let verdict = nla(data?)
            .find(|(k, _)| *k == NFTA_IMMEDIATE_DATA)
            .and_then(|(_, d)| nla(d).find(|(k, _)| *k == NFTA_DATA_VERDICT))
            .map(|(_, v)| v)?;
        let mut code = None;
        let mut chain = None;
        for (k, v) in nla(verdict) {
            match k {
                NFTA_VERDICT_CODE => {
                    code = v
                        .get(0..4)
                        .map(|b| i32::from_be_bytes(b.try_into().expect("4")))
                }
                NFTA_VERDICT_CHAIN => chain = Some(nul_str(v)),
                _ => {}
            }
        }
        if matches!(code, Some(NFT_JUMP | NFT_GOTO)) {
            return chain.map(|c| String::from_utf8_lossy(c).into_owned());
        }
    }
    None
}

/// One `NFT_MSG_GETRULE` dump of table `table` of `family` (`NFPROTO_*`):
/// the rules per chain, and where each rule of the chains `targets_of`
/// jumps (everything empty when the table does not exist). A dump that a
/// concurrent change interrupted is read again (up to three times). The
/// kernel's cost grows with the square of the table's rules: for big
/// tables, [`nft_chain_rules`].
pub async fn nft_rules(family: u8, table: &str, targets_of: &[&str]) -> io::Result<NftRules> {
    let mut sock = NfnlSocket::open()?;
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    for seq in 1..=3u32 {
        let req = request(
            NFT_MSG_GETRULE,
            NLM_F_DUMP,
            family,
            seq,
            &[(NFTA_RULE_TABLE, &name)],
        );
        let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        let mut targets: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
        let interrupted = exchange(&mut sock, &req, seq, true, |kind, body| {
            if kind != NFT_MSG_NEWRULE {
                return;
            }
            let mut in_table = true;
            let mut chain = None;
            let mut exprs = None;
            for (k, v) in attrs(body) {
                match k {
                    NFTA_RULE_TABLE => in_table = nul_str(v) == table.as_bytes(),
                    NFTA_RULE_CHAIN => chain = Some(nul_str(v)),
                    NFTA_RULE_EXPRESSIONS => exprs = Some(v),
                    _ => {}
                }
            }
            let (true, Some(c)) = (in_table, chain) else {
                return;
            };
            match counts.get_mut(c) {
                Some(n) => *n += 1,
                None => {
                    counts.insert(c.to_vec(), 1);
                }
            }
            if let Some(want) = targets_of.iter().find(|t| t.as_bytes() == c) {
                targets
                    .entry((*want).to_string())
                    .or_default()
                    .push(exprs.and_then(jump_target));
            }
        })
        .await?;
        if !interrupted || seq == 3 {
            return Ok(NftRules {
                counts: counts
                    .into_iter()
                    .map(|(c, n)| (String::from_utf8_lossy(&c).into_owned(), n))
                    .collect(),
                targets,
            });
        }
    }
    unreachable!("the loop returns on its last pass")
}

/// Replies are read 16 KiB at a time (the kernel sizes a dump's replies
/// by the largest read, up to 32 KiB).
const RECV_BUF: usize = 16384;
const ENOENT: i32 = 2;
const EBUSY: i32 = 16;

/// The rules of the chains `chains` of table `table` only: one dump
/// filtered by chain each (the kernel finds a chain by hash), one after
/// the other. Linear in the rules read, where one dump of a whole table
/// costs the kernel quadratic time (each reply resumes by walking every
/// rule it already sent): at 33,000 chains and 93,000 rules, 0.5 s
/// against 2.3 s (kernel 6.18; the `census` example measures both). A
/// chain that does not exist counts as empty. Jump targets as in
/// [`nft_rules`]. (Several dumps in one `sendmsg` do not help: a socket runs
/// one dump at a time and refuses the next with `EBUSY`.)
pub async fn nft_chain_rules(
    family: u8,
    table: &str,
    chains: &[&str],
    targets_of: &[&str],
) -> io::Result<NftRules> {
    // Blocking sockets on blocking threads: each answer is ready when
    // `send` returns (the kernel fills it in the sender's context), and a
    // reactor round trip per chain would double the cost. The sockets are
    // opened here, so they belong to the caller's network namespace. The
    // chains are split over one thread per core (at most two): the kernel
    // reads under RCU, so both run at once.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 2)
        .min(chains.len().max(1));
    let per = chains.len().div_ceil(workers).max(1);
    let mut tasks = Vec::new();
    for part in chains.chunks(per) {
        let sock = blocking_socket()?;
        let table = table.to_string();
        let part: Vec<String> = part.iter().map(|c| c.to_string()).collect();
        let targets_of: Vec<String> = targets_of.iter().map(|c| c.to_string()).collect();
        tasks.push(tokio::task::spawn_blocking(move || {
            chain_rules_blocking(&sock, family, &table, &part, &targets_of)
        }));
    }
    let mut out = NftRules::default();
    for t in tasks {
        let r = t.await.map_err(io::Error::other)??;
        out.counts.extend(r.counts);
        out.targets.extend(r.targets);
    }
    Ok(out)
}

fn blocking_socket() -> io::Result<netlink_sys::Socket> {
    let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    s.bind_auto()?;
    s.connect(&netlink_sys::SocketAddr::new(0, 0))?;
    let _ = s.set_ext_ack(true);
    Ok(s)
}

fn chain_rules_blocking(
    sock: &netlink_sys::Socket,
    family: u8,
    table: &str,
    chains: &[String],
    targets_of: &[String],
) -> io::Result<NftRules> {
    let mut tname = table.as_bytes().to_vec();
    tname.push(0);
    let mut out = NftRules::default();
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    let mut retries = 0usize;
    let mut seq = 0u32;
    let mut i = 0usize;
    while i < chains.len() {
        let chain = chains[i].as_str();
        let want_targets = targets_of.iter().any(|t| t == chain);
        seq = seq.wrapping_add(1);
        let mut cname = chain.as_bytes().to_vec();
        cname.push(0);
        let req = request(
            NFT_MSG_GETRULE,
            NLM_F_DUMP,
            family,
            seq,
            &[(NFTA_RULE_TABLE, &tname), (NFTA_RULE_CHAIN, &cname)],
        );
        sock.send(&req, 0)?;
        let (mut n, mut targets, mut interrupted) = (0usize, Vec::new(), false);
        let done = 'recv: loop {
            buf.clear();
            sock.recv(&mut buf, 0)?;
            for m in messages(&buf) {
                let m = m?;
                if m.seq != seq {
                    continue;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.kind {
                    NLMSG_DONE => break 'recv true,
                    NLMSG_ERROR => match -error_code(m.body) {
                        0 => {}
                        ENOENT => break 'recv true,
                        EBUSY => break 'recv false,
                        errno => return Err(io::Error::from_raw_os_error(errno)),
                    },
                    kind if kind & 0xff == NFT_MSG_NEWRULE => {
                        n += 1;
                        if want_targets {
                            let exprs = attrs(m.body)
                                .find(|(k, _)| *k == NFTA_RULE_EXPRESSIONS)
                                .map(|(_, v)| v);
                            targets.push(exprs.and_then(jump_target));
                        }
                    }
                    _ => {}
                }
            }
        };
        if !done || interrupted {
            retries += 1;
            if retries > 64 + chains.len() / 10 {
                return Err(io::Error::other(
                    "the table kept changing while it was read",
                ));
            }
            continue; // this chain again
        }
        if n > 0 {
            out.counts.insert(chain.to_string(), n);
        }
        if want_targets {
            out.targets.insert(chain.to_string(), targets);
        }
        i += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_well_formed() {
        let r = request(
            NFT_MSG_GETRULE,
            NLM_F_DUMP,
            2,
            7,
            &[(NFTA_RULE_TABLE, b"nat\0")],
        );
        assert_eq!(r.len(), 16 + 4 + 8);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 28);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), (10 << 8) | 7);
        assert_eq!(u16::from_ne_bytes([r[6], r[7]]), 0x301);
        assert_eq!(r[16], 2);
        let a: Vec<_> = attrs(&r[16..]).collect();
        assert_eq!(a, vec![(NFTA_RULE_TABLE, &b"nat\0"[..])]);
    }

    #[test]
    fn truncated_replies_are_errors_not_panics() {
        let mut r = request(NFT_MSG_GETGEN, 0, 0, 1, &[]);
        r[0] = 200;
        assert!(messages(&r).next().unwrap().is_err());
        assert!(messages(&r[..10]).next().is_none());
    }
}
