//! # proxier-core
//!
//! What every proxier backend stands on: kube-proxy's model, change
//! tracking, endpoint selection, sync runner, health and metrics, as a
//! library. Start with [`ChangeTracker`] (feed it Services and
//! EndpointSlices, get [`Snapshot`]s and [`ChangeSet`]s), implement
//! [`Proxier`] for a backend, and drive it with [`Runner`]. On a
//! dual-stack node, [`Runner::dual_stack`] takes a tracker per family and
//! a [`MetaProxier`] holding a backend per family (kube-proxy's
//! meta-proxier); each round syncs the families at once
//! ([`Proxier::sync_families`]).
//!
//! The pure part (the model, [`ServicePort`] and [`Endpoint`]; the input
//! objects, [`Service`] and [`EndpointSlice`]; their validation,
//! [`ValidationError`]; the conversion from k8s-openapi,
//! [`service_from_k8s`]; the [`ChangeTracker`]; endpoint selection,
//! [`categorize_endpoints`]; the [`Proxier`] trait and [`MetaProxier`])
//! does no I/O and reads no clock. The modules are private: the list of
//! `pub use` below is the crate's whole public surface. The runtime part (`runner`, `health`, `metrics`,
//! `manifest`) runs on tokio and is the default feature `runtime`: a
//! feature rather than a crate of its own because the two halves share
//! one public list and one version, and the layering still holds (the
//! pure modules never name the runtime ones; `cargo check -p proxier-core
//! --no-default-features` builds without hyper, prometheus-client,
//! serde_yaml or tokio's networking, and `scripts/test-all` checks it).
//! Backends depend on the pure part only; an agent that brings its own
//! loop can do the same.
//!
//! Dependencies, and why: `k8s-openapi` for the Kubernetes object types
//! (the API's own schema, no client); `imbl` for the snapshot's persistent
//! maps (a one-endpoint change costs O(log n), not a copy of 100,000
//! endpoints); `foldhash` for the tracker's hash maps (hashbrown's
//! default hasher, hashbrown being the crate behind std's `HashMap`;
//! randomly seeded per map. SipHash took a tenth of a 10,000-service build,
//! and the keys are names the API server has already validated, so its
//! stronger DoS resistance buys little here); `hyper` for the health and metrics servers (small, no
//! framework); `prometheus-client` (the official Rust client's successor,
//! OpenMetrics text); `serde_yaml` + `serde_path_to_error` so a bad
//! manifest names the failing field; `futures` for `join_all`, which runs
//! the families' syncs of one round side by side. The Kubernetes API client (`kube`)
//! lives in the `proxier-kube` crate, so this crate does not compile it.
//!
//! **Kubernetes version.** This crate does not select a k8s-openapi
//! version feature (k8s-openapi's rule for libraries): your binary does,
//! for example `k8s-openapi = { version = "0.29", features = ["v1_35"] }`.
//! Every version k8s-openapi 0.29 supports (v1.33 to v1.37) builds;
//! `tests/k8s-earliest` (built by `scripts/test-all`) checks the oldest.
//! Building this crate alone (`cargo check -p proxier-core`) needs
//! `K8S_OPENAPI_ENABLED_VERSION=1.37` in the environment, as every
//! k8s-openapi library does.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "runtime")]
mod health;
mod input;
mod k8s;
#[cfg(feature = "runtime")]
mod manifest;
mod meta;
#[cfg(feature = "runtime")]
mod metrics;
mod model;
mod proxier;
#[cfg(feature = "runtime")]
mod runner;
mod timestamp;
mod topology;
mod tracker;
mod validate;

// The crate's public surface, written once.

// The objects a proxier is fed: Services, EndpointSlices, the Node.
pub use input::{
    EndpointSlice, LABEL_TOPOLOGY_ZONE, Node, PortSpec, Service, ServicePortMap, ServiceType,
    SliceEndpoint, SlicePort, TAINT_TO_BE_DELETED,
};
// Their conversion from the Kubernetes API (k8s-openapi types).
pub use k8s::{
    ANNOTATION_TOPOLOGY_AWARE_HINTS, ANNOTATION_TOPOLOGY_MODE, ANNOTATION_TRIGGER_TIME,
    LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, PROXY_LABEL_SELECTOR,
    endpoint_slice_from_k8s, node_from_k8s, service_from_k8s,
};
// The model a backend renders.
pub use model::{
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, Endpoint, Hints, IpFamily, MAX_AFFINITY_TIMEOUT_SECONDS,
    NamespacedName, Protocol, ServicePort, ServicePortName, SessionAffinity, TrafficPolicy,
};
pub use timestamp::parse_rfc3339;
pub use topology::{Categorized, categorize_endpoints};
pub use tracker::{ChangeSet, ChangeTracker, NodeInfo, Snapshot, StaleEndpoint, TrackerCounters};
// Validation and escaping of everything that comes from an API object.
pub use validate::{
    Escaped, ObjectKind, ValidationError, escape, is_dns1035_label, is_dns1123_label,
    is_dns1123_subdomain, is_label_value, is_port_name,
};
// The seam a backend implements.
pub use meta::MetaProxier;
pub use proxier::{ErrorChain, FamilySync, Proxier, ProxierError, Refused, SyncRequest, SyncStats};
#[cfg(any(test, feature = "testing"))]
pub use proxier::{FakeLog, FakeProxier};
// The runtime (feature `runtime`): the sync loop, health and metrics
// servers, the manifest source.
#[cfg(feature = "runtime")]
pub use health::{
    HealthStatus, ProxyHealth, ServerLimits, ServiceHealthServer, rfc3339, serve_health,
    serve_metrics, serve_within,
};
#[cfg(feature = "runtime")]
pub use manifest::{ManifestError, ManifestSource};
#[cfg(feature = "runtime")]
pub use metrics::{
    CodeLabel, Counter, FamilyHistogram, FamilyLabel, Metrics, PolicyLabel, TableLabel,
    unix_seconds,
};
#[cfg(feature = "runtime")]
pub use runner::{Runner, RunnerConfig, RunnerHandle, SyncOutcome};
