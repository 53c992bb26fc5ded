//! The nf_tables seam: one transaction applied atomically. [`NfTables`] is
//! the narrow trait; [`NfTablesNetlink`] sends the batch over
//! `NETLINK_NETFILTER` (what `nft -f` does, without the `nft` program).
//! Check by hand with `nft list table ip kube-proxy`.

use std::fmt;
use std::io;

use async_trait::async_trait;
use proxier_netfilter::NfnlSocket;

use crate::nl::msg::{Batch, Family, Transaction};

/// A transaction the kernel refused: nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The socket failed.
    #[error("nf_tables netlink socket: {what}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The kernel refused an operation; the whole batch was rolled back.
    #[error("{op} in table {family} {table}: {source} (the transaction was not applied)")]
    Refused {
        /// The operation, as `nft` would say it (or its number, from a
        /// batch alone).
        op: String,
        /// Its index in the transaction, when known.
        index: Option<usize>,
        /// The table's family.
        family: &'static str,
        /// The table.
        table: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// The kernel's reply could not be read.
    #[error("nf_tables netlink: {0}")]
    Decode(String),
}

impl NftError {
    /// A refusal with its operation named by `name` (from its index).
    pub fn naming(self, name: impl FnOnce(usize) -> Option<String>) -> NftError {
        match self {
            NftError::Refused {
                op,
                index: Some(i),
                family,
                table,
                source,
            } => NftError::Refused {
                op: name(i).unwrap_or(op),
                index: Some(i),
                family,
                table,
                source,
            },
            e => e,
        }
    }
}

/// `UIO_MAXIOV`: buffers one `sendmsg` gathers.
const MAX_IOV: usize = 1024;

/// The nf_tables seam.
#[async_trait]
pub trait NfTables: Send + Sync + fmt::Debug {
    /// Sends an encoded batch (numbered again from the seam's own
    /// sequence) and waits for the kernel: all of it is applied, or (on
    /// error) none; a refusal names the operation by its index.
    async fn apply_batch(&self, batch: &mut Batch) -> Result<(), NftError>;

    /// Applies `tx` atomically: all of it, or (on error) none; a refusal
    /// names the operation as `nft` would say it.
    async fn apply(&self, tx: &Transaction) -> Result<(), NftError> {
        if tx.ops.is_empty() {
            return Ok(());
        }
        let mut batch = tx.encode(0);
        self.apply_batch(&mut batch)
            .await
            .map_err(|e| e.naming(|i| tx.ops.get(i).map(|o| o.to_string())))
    }

    /// The namespace's nf_tables generation: bumped by every committed
    /// transaction of any program (`nft monitor` prints `# new generation
    /// N`). Unchanged since a check means nothing changed.
    async fn generation(&self) -> Result<u32, NftError>;

    /// Rules in each of the chains `chains` of table `table` (chains
    /// without rules, or missing, absent): what a verifying sync compares
    /// with what it wrote (`nft list chain ip kube-proxy CHAIN`, counted).
    async fn rule_counts(
        &self,
        family: Family,
        table: &str,
        chains: &[&str],
    ) -> Result<std::collections::BTreeMap<String, usize>, NftError>;
}

/// nf_tables over netlink, in the network namespace of the thread that
/// created it.
#[derive(Debug)]
pub struct NfTablesNetlink {
    state: tokio::sync::Mutex<(NfnlSocket, u32, Vec<u8>, usize)>,
}

impl NfTablesNetlink {
    /// Opens the socket (no runtime needed; its first use must be in one).
    pub fn new() -> Result<NfTablesNetlink, NftError> {
        let sock = NfnlSocket::open().map_err(|source| NftError::Socket {
            what: "opening NETLINK_NETFILTER",
            source,
        })?;
        Ok(NfTablesNetlink {
            state: tokio::sync::Mutex::new((sock, 1, Vec::with_capacity(1 << 16), 0)),
        })
    }
}

#[async_trait]
impl NfTables for NfTablesNetlink {
    async fn generation(&self) -> Result<u32, NftError> {
        proxier_netfilter::ruleset_generation()
            .await
            .map_err(|source| NftError::Socket {
                what: "reading the ruleset generation",
                source,
            })
    }

    async fn rule_counts(
        &self,
        family: Family,
        table: &str,
        chains: &[&str],
    ) -> Result<std::collections::BTreeMap<String, usize>, NftError> {
        proxier_netfilter::nft_chain_rules(family.nfproto(), table, chains, &[])
            .await
            .map(|r| r.counts)
            .map_err(|source| NftError::Socket {
                what: "dumping the table's rules",
                source,
            })
    }

    async fn apply_batch(&self, batch: &mut Batch) -> Result<(), NftError> {
        if batch.msg_ops.is_empty() {
            return Ok(());
        }
        let mut st = self.state.lock().await;
        let (sock, seq, buf, sndbuf) = &mut *st;
        batch.renumber(*seq);
        let last_seq = batch.last_seq();
        *seq = last_seq.wrapping_add(2);
        let len = batch.len();
        if len + 4096 > *sndbuf {
            let want = (len + 4096).next_power_of_two();
            sock.ensure_send_buffer(want)
                .map_err(|source| NftError::Socket {
                    what: "setting SO_SNDBUF",
                    source,
                })?;
            *sndbuf = want;
        }
        // One `sendmsg` gathers the chunks into one datagram; past
        // `UIO_MAXIOV` chunks they are joined first.
        let joined;
        let parts: Vec<&[u8]> = if batch.chunks.len() > MAX_IOV {
            joined = batch.to_bytes();
            vec![&joined]
        } else {
            batch.chunks.iter().map(Vec::as_slice).collect()
        };
        sock.send_vectored(&parts)
            .await
            .map_err(|source| NftError::Socket {
                what: "sending the batch",
                source,
            })?;
        let mut first_error: Option<(u32, i32)> = None;
        loop {
            buf.clear();
            sock.recv(buf).await.map_err(|source| NftError::Socket {
                what: "receiving",
                source,
            })?;
            let mut at = 0;
            while at + 16 <= buf.len() {
                let len =
                    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
                if len < 16 || at + len > buf.len() {
                    return Err(NftError::Decode(format!("a reply of {len} bytes")));
                }
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let mseq =
                    u32::from_ne_bytes([buf[at + 8], buf[at + 9], buf[at + 10], buf[at + 11]]);
                if kind == 2 && len >= 20 {
                    let code = i32::from_ne_bytes([
                        buf[at + 16],
                        buf[at + 17],
                        buf[at + 18],
                        buf[at + 19],
                    ]);
                    if code != 0 && first_error.is_none() {
                        first_error = Some((mseq, -code));
                    }
                    if mseq == last_seq {
                        return match first_error {
                            None => Ok(()),
                            Some((s, errno)) => {
                                let index = batch.op_of(s);
                                Err(NftError::Refused {
                                    op: index.map_or_else(
                                        || "the batch".into(),
                                        |i| format!("operation {i}"),
                                    ),
                                    index,
                                    family: family_str(batch.family),
                                    table: batch.table.clone(),
                                    source: io::Error::from_raw_os_error(errno),
                                })
                            }
                        };
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }
}

fn family_str(f: Family) -> &'static str {
    f.as_str()
}
