//! [`FakeNfTables`]: the nf_tables seam in memory, for unit tests of the
//! proxier's logic (feature `testing`). It records the batches it is
//! given and refuses one when told to; it does not model the table (the
//! kernel tests do: `nft list table ip kube-proxy` after every step).

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::kernel::{NfTables, NftError};
use crate::nl::msg::{Batch, Family};

/// The nf_tables seam in memory.
#[derive(Debug, Default)]
pub struct FakeNfTables {
    /// Operations in each batch applied, in order.
    pub applied: Mutex<Vec<usize>>,
    /// Refuse the next batch at this operation, with this errno.
    pub refuse_next: Mutex<Option<(usize, i32)>>,
    /// Rule counts [`NfTables::rule_counts`] answers with.
    pub rules: Mutex<BTreeMap<String, usize>>,
}

#[async_trait]
impl NfTables for FakeNfTables {
    async fn apply_batch(&self, batch: &mut Batch) -> Result<(), NftError> {
        if batch.msg_ops.is_empty() {
            return Ok(());
        }
        if let Some((i, errno)) = self.refuse_next.lock().expect("lock").take() {
            return Err(NftError::Refused {
                op: format!("operation {i}"),
                index: Some(i),
                family: batch.family.as_str(),
                table: batch.table.clone(),
                source: std::io::Error::from_raw_os_error(errno),
            });
        }
        self.applied.lock().expect("lock").push(batch.ops);
        Ok(())
    }

    async fn generation(&self) -> Result<u32, NftError> {
        Ok(self.applied.lock().expect("lock").len() as u32)
    }

    async fn rule_counts(
        &self,
        _family: Family,
        _table: &str,
        chains: &[&str],
    ) -> Result<BTreeMap<String, usize>, NftError> {
        let rules = self.rules.lock().expect("lock");
        Ok(chains
            .iter()
            .filter_map(|c| rules.get(*c).map(|n| (c.to_string(), *n)))
            .collect())
    }
}
