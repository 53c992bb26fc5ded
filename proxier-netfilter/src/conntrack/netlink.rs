//! [`ConntrackNetlink`]: the ctnetlink subsystem on one `NETLINK_NETFILTER`
//! socket, asynchronous (tokio), no process spawned.

use std::io;
use std::sync::{Arc, Mutex};

use crate::nfnl::NfnlSocket;
use async_trait::async_trait;
use proxier_core::IpFamily;

use super::codec::{self, DumpFilter, NLM_F_DUMP_INTR, Reply};
use super::{Conntrack, ConntrackError, Flow};

/// Requests per `sendmsg`: the kernel queues one acknowledgement per
/// request on the socket before it is read, and 128 of them fit a default
/// receive buffer with room to spare.
const BATCH: usize = 128;

/// What [`ConntrackNetlink::capturing`] records: `true` for what was
/// sent, `false` for what the kernel answered, one buffer per syscall.
pub type Capture = Arc<Mutex<Vec<(bool, Vec<u8>)>>>;

struct State {
    sock: NfnlSocket,
    seq: u32,
    buf: Vec<u8>,
}

/// Conntrack over netlink, in the network namespace of the thread that
/// created it. Equivalent to `conntrack -L` / `conntrack -D`.
pub struct ConntrackNetlink {
    state: tokio::sync::Mutex<State>,
    capture: Option<Capture>,
}

impl std::fmt::Debug for ConntrackNetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConntrackNetlink").finish_non_exhaustive()
    }
}

fn sock_err(what: &str) -> impl FnOnce(io::Error) -> ConntrackError + '_ {
    move |source| ConntrackError::Socket {
        what: what.to_string(),
        source,
    }
}

fn fam(f: IpFamily) -> &'static str {
    match f {
        IpFamily::V4 => "ipv4",
        IpFamily::V6 => "ipv6",
    }
}

impl ConntrackNetlink {
    /// Opens and binds the socket, in the calling thread's network
    /// namespace. Its first use must be inside a tokio runtime.
    pub fn new() -> Result<ConntrackNetlink, ConntrackError> {
        let sock = NfnlSocket::open().map_err(|source| ConntrackError::Socket {
            what: "opening NETLINK_NETFILTER".into(),
            source,
        })?;
        Ok(ConntrackNetlink {
            state: tokio::sync::Mutex::new(State {
                sock,
                seq: 1,
                buf: Vec::with_capacity(1 << 17),
            }),
            capture: None,
        })
    }

    /// Records every buffer sent and received (the codec tests' captures).
    pub fn capturing(mut self, capture: Capture) -> ConntrackNetlink {
        self.capture = Some(capture);
        self
    }

    fn record(&self, sent: bool, bytes: &[u8]) {
        if let Some(c) = &self.capture {
            c.lock().expect("lock").push((sent, bytes.to_vec()));
        }
    }

    /// `conntrack -I` of each flow with `timeout_secs` to live: how the
    /// tests and benches fill a table with flows quickly. Returns how many
    /// the kernel refused and the first error.
    pub async fn create(&self, flows: &[Flow], timeout_secs: u32) -> Result<usize, ConntrackError> {
        let (ok, errors) = self
            .requests(flows, |f, seq| codec::create_request(f, timeout_secs, seq))
            .await?;
        match errors.into_iter().next() {
            None => Ok(ok),
            Some((i, e)) => Err(ConntrackError::Refused {
                op: "conntrack -I",
                asked: flows.len(),
                failed: flows.len() - ok,
                first: Box::new(flows[i]),
                source: io::Error::from_raw_os_error(e),
            }),
        }
    }

    /// Sends one request per flow in batches and reads one answer each:
    /// how many succeeded, and the failures (index, errno). `ENOENT` counts
    /// as success for deletes (the flow is gone already).
    async fn requests(
        &self,
        flows: &[Flow],
        encode: impl Fn(&Flow, u32) -> Vec<u8>,
    ) -> Result<(usize, Vec<(usize, i32)>), ConntrackError> {
        let mut st = self.state.lock().await;
        let mut ok = 0;
        let mut errors = Vec::new();
        for (b, chunk) in flows.chunks(BATCH).enumerate() {
            let first_seq = st.seq;
            st.seq = st.seq.wrapping_add(chunk.len() as u32);
            let mut out = Vec::with_capacity(chunk.len() * 96);
            for (i, f) in chunk.iter().enumerate() {
                out.extend_from_slice(&encode(f, first_seq.wrapping_add(i as u32)));
            }
            self.record(true, &out);
            st.sock.send(&out).await.map_err(sock_err("sending"))?;
            let mut pending = chunk.len();
            while pending > 0 {
                let State { sock, buf, .. } = &mut *st;
                buf.clear();
                sock.recv(buf).await.map_err(sock_err("receiving"))?;
                self.record(false, buf);
                for m in codec::parse(buf) {
                    let (h, r) = m.map_err(|e| ConntrackError::Decode(e.0))?;
                    if let Reply::Ack(code) = r {
                        let i = h.seq.wrapping_sub(first_seq) as usize;
                        if i >= chunk.len() {
                            continue; // an answer to an earlier request
                        }
                        pending -= 1;
                        if code == 0 || code == -libc::ENOENT {
                            ok += 1;
                        } else {
                            errors.push((b * BATCH + i, -code));
                        }
                    }
                }
            }
        }
        Ok((ok, errors))
    }
}

#[async_trait]
impl Conntrack for ConntrackNetlink {
    async fn dump(
        &self,
        family: IpFamily,
        filter: DumpFilter,
        keep: &(dyn for<'f> Fn(&'f Flow) -> bool + Send + Sync),
    ) -> Result<(Vec<Flow>, usize), ConntrackError> {
        let mut st = self.state.lock().await;
        let seq = st.seq;
        st.seq = st.seq.wrapping_add(1);
        let req = codec::dump_request(family, filter, seq);
        self.record(true, &req);
        st.sock.send(&req).await.map_err(sock_err("sending"))?;
        let (mut kept, mut seen, mut interrupted) = (Vec::new(), 0usize, false);
        loop {
            let State { sock, buf, .. } = &mut *st;
            buf.clear();
            sock.recv(buf)
                .await
                .map_err(|source| ConntrackError::Dump {
                    family: fam(family),
                    source,
                })?;
            self.record(false, buf);
            for m in codec::parse(buf) {
                let (h, r) = m.map_err(|e| ConntrackError::Decode(e.0))?;
                if h.seq != seq {
                    continue;
                }
                interrupted |= h.flags & NLM_F_DUMP_INTR != 0;
                match r {
                    Reply::Flow(f) => {
                        seen += 1;
                        if keep(&f) {
                            kept.push(f);
                        }
                    }
                    Reply::Done => {
                        if interrupted {
                            // kube-proxy goes on with what it read, too.
                            tracing::debug!(
                                family = fam(family),
                                "conntrack dump interrupted by a change; using what was read"
                            );
                        }
                        return Ok((kept, seen));
                    }
                    Reply::Ack(0) | Reply::Other => {}
                    Reply::Ack(code) => {
                        return Err(ConntrackError::Dump {
                            family: fam(family),
                            source: io::Error::from_raw_os_error(-code),
                        });
                    }
                }
            }
        }
    }

    async fn delete(&self, flows: &[Flow]) -> Result<usize, ConntrackError> {
        let (ok, errors) = self.requests(flows, codec::delete_request).await?;
        match errors.first() {
            None => Ok(ok),
            Some(&(i, e)) => Err(ConntrackError::Refused {
                op: "conntrack -D",
                asked: flows.len(),
                failed: errors.len(),
                first: Box::new(flows[i]),
                source: io::Error::from_raw_os_error(e),
            }),
        }
    }
}
