//! Both families in one process: kube-proxy's meta-proxier (a proxier per
//! IP family behind one, `pkg/proxy/metaproxier`). The runner keeps one
//! tracker per family and hands each family's snapshot to this proxier,
//! which passes it to that family's backend; cleanup cleans every one.

use async_trait::async_trait;

use crate::model::IpFamily;
use crate::proxier::{Proxier, ProxierError, SyncRequest, SyncStats};

/// A backend per IP family behind one [`Proxier`].
pub struct MetaProxier {
    name: String,
    families: Vec<(IpFamily, Box<dyn Proxier>)>,
}

impl std::fmt::Debug for MetaProxier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaProxier")
            .field("name", &self.name)
            .finish()
    }
}

impl MetaProxier {
    /// One backend per family; a family given twice keeps the first.
    pub fn new(families: Vec<(IpFamily, Box<dyn Proxier>)>) -> MetaProxier {
        let mut seen = Vec::new();
        let families: Vec<_> = families
            .into_iter()
            .filter(|(f, _)| {
                let new = !seen.contains(f);
                seen.push(*f);
                new
            })
            .collect();
        let name = families
            .iter()
            .map(|(_, p)| p.name())
            .collect::<Vec<_>>()
            .join("+");
        MetaProxier { name, families }
    }

    /// The families, in order (the first is the primary).
    pub fn families(&self) -> Vec<IpFamily> {
        self.families.iter().map(|(f, _)| *f).collect()
    }
}

#[async_trait]
impl Proxier for MetaProxier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn sync(&mut self, req: &SyncRequest) -> Result<SyncStats, ProxierError> {
        let family = req.snapshot.family;
        match self.families.iter_mut().find(|(f, _)| *f == family) {
            Some((_, p)) => p.sync(req).await,
            None => Err(ProxierError::new(
                self.name.clone(),
                format!("no {} backend", family.as_str()),
            )),
        }
    }

    /// Cleans every family's backend, even when one fails; returns the
    /// first failure.
    async fn cleanup(&mut self) -> Result<(), ProxierError> {
        let mut first = None;
        for (_, p) in &mut self.families {
            if let Err(e) = p.cleanup().await
                && first.is_none()
            {
                first = Some(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
