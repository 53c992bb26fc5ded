//! [`NftablesProxier`]: kube-proxy's nftables mode as a [`Proxier`].
//!
//! Every sync that has something to change rebuilds the table in one
//! atomic transaction (the old table is deleted in the same batch, so a
//! failed sync leaves the previous ruleset in force and nothing of ours
//! lingers); a sync with no change writes nothing. Stale UDP and SCTP
//! flows are deleted over netlink after each sync (the shared reconciler,
//! DNATed flows only, since these rules DNAT).

use std::sync::Arc;

use async_trait::async_trait;
use proxier_core::{ErrorChain, IpFamily, Proxier, ProxierError, SyncRequest, SyncStats};
use proxier_netfilter::{Conntrack, StaleFlows, clean_stale};

use crate::kernel::NfTables;
use crate::layout::{self, Config, TABLE, nft_family};
use crate::nl::msg::{Op, Transaction};

/// kube-proxy's nftables mode.
#[derive(Debug)]
pub struct NftablesProxier {
    cfg: Config,
    nft: Arc<dyn NfTables>,
    ct: Arc<dyn Conntrack>,
    name: String,
    written: Option<usize>,
}

impl NftablesProxier {
    /// A proxier writing through `nft` and cleaning conntrack through
    /// `ct`. Fails if the configuration has a value that cannot reach a
    /// rule.
    pub fn new(
        cfg: Config,
        nft: Arc<dyn NfTables>,
        ct: Arc<dyn Conntrack>,
    ) -> Result<NftablesProxier, proxier_netfilter::ConfigError> {
        cfg.masquerade.validate()?;
        let fam = cfg.masquerade.family;
        proxier_netfilter::check_family("node_port_addresses", fam, &cfg.node_port_addresses)?;
        let name = match fam {
            IpFamily::V4 => "nftables".to_string(),
            IpFamily::V6 => "nftables-ipv6".to_string(),
        };
        Ok(NftablesProxier {
            cfg,
            nft,
            ct,
            name,
            written: None,
        })
    }

    /// The layout configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    async fn clear_conntrack(&self, req: &SyncRequest) {
        let stale = StaleFlows::from_changes(req)
            .reconcile(&req.snapshot, &self.cfg.node_ips)
            .dnat_only();
        if let Err(e) = clean_stale(&*self.ct, &stale).await {
            tracing::warn!(backend = %self.name, error = %ErrorChain(&e), "conntrack cleanup failed");
        }
    }
}

fn objects(tx: &Transaction) -> usize {
    tx.ops
        .iter()
        .map(|op| match op {
            Op::AddElements { elements, .. } => elements.len(),
            Op::AddRule(_) | Op::AddChain(_) | Op::AddSet(_) => 1,
            _ => 0,
        })
        .sum()
}

#[async_trait]
impl Proxier for NftablesProxier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        if req.snapshot.family != self.cfg.masquerade.family {
            return Err(ProxierError::new(
                self.name.clone(),
                format!(
                    "snapshot is {}, this proxier is {}",
                    req.snapshot.family.as_str(),
                    self.cfg.masquerade.family.as_str()
                ),
            ));
        }
        if let Some(n) = self.written
            && !req.full
            && req.changes.is_empty()
        {
            self.clear_conntrack(req).await;
            return Ok(SyncStats {
                objects: n,
                written: 0,
                full: false,
            });
        }
        let (tx, errors) = layout::full(&self.cfg, &req.snapshot);
        for e in &errors {
            tracing::error!(backend = %self.name, error = %e, "service skipped");
        }
        let n = objects(&tx);
        if let Err(e) = self.nft.apply(&tx).await {
            self.written = None;
            return Err(ProxierError::with_source(
                self.name.clone(),
                "nf_tables transaction",
                e,
            ));
        }
        self.written = Some(n);
        self.clear_conntrack(req).await;
        Ok(SyncStats {
            objects: n,
            written: tx.ops.len(),
            full: true,
        })
    }

    /// `nft delete table ip kube-proxy`: everything this backend owns,
    /// and nothing else.
    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        let mut tx = Transaction::new(nft_family(self.cfg.masquerade.family), TABLE);
        tx.push(Op::AddTable { comment: None });
        tx.push(Op::DeleteTable);
        self.nft
            .apply(&tx)
            .await
            .map_err(|e| ProxierError::with_source(self.name.clone(), "delete table", e))?;
        self.written = None;
        Ok(())
    }
}
