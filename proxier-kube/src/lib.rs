//! # proxier-kube
//!
//! Feeds a [`proxier_core::Runner`] from the Kubernetes API, as
//! kube-proxy's informers do: kube-rs watchers for Services and
//! EndpointSlices (with kube-proxy's label selector: not claimed by another
//! proxy, not headless) and for this node's Node object. After an error the
//! watcher backs off and relists; objects that vanished while it was away
//! are deleted. The runner starts syncing once Services and EndpointSlices
//! have both been listed.
//!
//! This crate holds the heavy dependency (`kube`, with rustls and ring) so
//! that `proxier-core` never compiles it. Like `proxier-core` (and `kube`
//! itself) it selects no k8s-openapi version: the binary that uses it does.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use proxier_core::{
    PROXY_LABEL_SELECTOR, RunnerHandle, endpoint_slice_from_k8s, node_from_k8s, service_from_k8s,
};

pub use kube;

/// Watches the API server and feeds a runner.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    node_name: String,
}

impl std::fmt::Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("node_name", &self.node_name)
            .finish()
    }
}

/// What kind of object a watcher handles.
trait Kind:
    kube::Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + 'static
{
    fn apply(h: &RunnerHandle, obj: &Self, node: &str);
    fn delete(h: &RunnerHandle, key: &(String, String));
}

fn key<K: kube::Resource>(o: &K) -> (String, String) {
    (
        o.namespace().unwrap_or_else(|| "default".into()),
        o.name_any(),
    )
}

impl Kind for Service {
    fn apply(h: &RunnerHandle, s: &Self, _: &str) {
        let k = key(s);
        match service_from_k8s(s) {
            Ok(Some(svc)) => {
                if let Err(e) = h.update_service(&svc) {
                    tracing::error!(error = %e, "skipping Service");
                }
            }
            // Now skipped (e.g. became headless): forget it.
            Ok(None) => h.delete_service(&k.0, &k.1),
            Err(e) => tracing::error!(error = %e, "skipping Service"),
        }
    }
    fn delete(h: &RunnerHandle, k: &(String, String)) {
        h.delete_service(&k.0, &k.1);
    }
}

impl Kind for EndpointSlice {
    fn apply(h: &RunnerHandle, s: &Self, _: &str) {
        let k = key(s);
        match endpoint_slice_from_k8s(s) {
            Ok(Some(slice)) => {
                if let Err(e) = h.update_endpoint_slice(&slice) {
                    tracing::error!(error = %e, "skipping EndpointSlice");
                }
            }
            Ok(None) => h.delete_endpoint_slice(&k.0, &k.1),
            Err(e) => tracing::error!(error = %e, "skipping EndpointSlice"),
        }
    }
    fn delete(h: &RunnerHandle, k: &(String, String)) {
        h.delete_endpoint_slice(&k.0, &k.1);
    }
}

impl Kind for Node {
    fn apply(h: &RunnerHandle, n: &Self, node: &str) {
        if n.name_any() == node
            && let Err(e) = h.update_node(&node_from_k8s(n))
        {
            tracing::error!(error = %e, "skipping Node");
        }
    }
    fn delete(h: &RunnerHandle, _: &(String, String)) {
        h.delete_node();
    }
}

/// Applies a watcher's events; a relist deletes what it no longer lists.
async fn follow<K: Kind>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    h: RunnerHandle,
    node: String,
    listed: Arc<AtomicU8>,
    bit: u8,
) {
    futures::pin_mut!(stream);
    let mut known: BTreeSet<(String, String)> = BTreeSet::new();
    let mut relist: Option<BTreeSet<(String, String)>> = None;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => relist = Some(BTreeSet::new()),
            Ok(Event::InitApply(o)) => {
                let k = key(&o);
                K::apply(&h, &o, &node);
                if let Some(r) = relist.as_mut() {
                    r.insert(k.clone());
                }
                known.insert(k);
            }
            Ok(Event::InitDone) => {
                if let Some(r) = relist.take() {
                    for gone in known.difference(&r) {
                        K::delete(&h, gone);
                    }
                    known = r;
                }
                if (listed.fetch_or(bit, Ordering::SeqCst) | bit) & 0b11 == 0b11 {
                    h.set_initialized();
                }
            }
            Ok(Event::Apply(o)) => {
                known.insert(key(&o));
                K::apply(&h, &o, &node);
            }
            Ok(Event::Delete(o)) => {
                let k = key(&o);
                known.remove(&k);
                K::delete(&h, &k);
            }
            Err(e) => {
                tracing::warn!(error = %proxier_core::ErrorChain(&e), "watch failed; relisting after backoff")
            }
        }
    }
}

/// What the source reads from the API server: (API group, resource,
/// verbs). The RBAC rules of `deploy/rbac.yaml` grant exactly this, a
/// subset of kube-proxy's `system:node-proxier` (no Endpoints: slices
/// only; no Events written). Check with `kubectl auth can-i --list
/// --as=system:serviceaccount:kube-system:proxier`.
pub const API_ACCESS: &[(&str, &str, &[&str])] = &[
    ("", "services", &["list", "watch"]),
    ("", "nodes", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
];

impl KubeSource {
    /// A source using `client`, for the node named `node_name`.
    pub fn new(client: Client, node_name: impl Into<String>) -> Self {
        KubeSource {
            client,
            node_name: node_name.into(),
        }
    }

    /// A source from the usual configuration: `KUBECONFIG`/`~/.kube/config`
    /// or the in-cluster service account.
    pub async fn infer(node_name: impl Into<String>) -> Result<Self, kube::Error> {
        Ok(Self::new(Client::try_default().await?, node_name))
    }

    /// A source from a kubeconfig file.
    pub async fn from_kubeconfig(
        path: &std::path::Path,
        node_name: impl Into<String>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let kc = kube::config::Kubeconfig::read_from(path)?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
        Ok(Self::new(Client::try_from(cfg)?, node_name))
    }

    /// A source as kube-proxy connects: the kubeconfig at `kubeconfig`
    /// (else `KUBECONFIG`, `~/.kube/config` or the in-cluster service
    /// account), with the API server's URL replaced by `master` when given
    /// (kube-proxy's `--master`).
    pub async fn connect(
        kubeconfig: Option<&std::path::Path>,
        master: Option<&str>,
        node_name: impl Into<String>,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut cfg = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
            }
            None => kube::Config::infer().await?,
        };
        if let Some(m) = master {
            cfg.cluster_url = m
                .parse()
                .map_err(|e| format!("--master {m:?}: not a URL: {e}"))?;
        }
        Ok(Self::new(Client::try_from(cfg)?, node_name))
    }

    /// Runs the three watchers until the future is dropped.
    pub async fn run(self, handle: RunnerHandle) {
        let listed = Arc::new(AtomicU8::new(0));
        let cfg = watcher::Config::default().labels(PROXY_LABEL_SELECTOR);
        let services =
            watcher(Api::<Service>::all(self.client.clone()), cfg.clone()).default_backoff();
        let slices = watcher(Api::<EndpointSlice>::all(self.client.clone()), cfg).default_backoff();
        let node_cfg =
            watcher::Config::default().fields(&format!("metadata.name={}", self.node_name));
        let nodes = watcher(Api::<Node>::all(self.client.clone()), node_cfg).default_backoff();
        tokio::join!(
            follow(
                services,
                handle.clone(),
                self.node_name.clone(),
                listed.clone(),
                0b01
            ),
            follow(
                slices,
                handle.clone(),
                self.node_name.clone(),
                listed.clone(),
                0b10
            ),
            follow(
                nodes,
                handle.clone(),
                self.node_name.clone(),
                listed.clone(),
                0b100
            ),
        );
    }
}

use kube::runtime::watcher::watcher;
