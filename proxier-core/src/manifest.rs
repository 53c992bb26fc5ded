//! A source that reads Kubernetes YAML (multi-document: Service,
//! EndpointSlice, Node) from a file or a directory and re-reads it when it
//! changes.
//!
//! Change detection polls file sizes and modification times (and the file
//! list) every interval: it works on any filesystem, for directories,
//! without inotify limits, and costs a few `stat` calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::DeserializeOwned;

use crate::k8s::{endpoint_slice_from_k8s, node_from_k8s, service_from_k8s};
use crate::runner::RunnerHandle;
use crate::validate::{Escaped, ValidationError};

mod documents;

/// Why a manifest, or an object in it, was not used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML (or not a kind we can take). The
    /// document's last good objects stay in force.
    #[error("{path}: document {doc} (line {line}){}: {}", object.as_ref().map(|o| format!(", {}", Escaped(o))).unwrap_or_default(), Escaped(message))]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file (0-based).
        doc: usize,
        /// The file's line (1-based) the error is on.
        line: usize,
        /// `Kind namespace/name`, where it could be read from the text.
        object: Option<String>,
        /// What the parser said.
        message: String,
    },
    /// An object does not match its kind's schema.
    #[error(
        "{path}: {} {}: {}: {}",
        Escaped(kind),
        Escaped(object),
        Escaped(field),
        Escaped(message)
    )]
    Schema {
        /// The file.
        path: PathBuf,
        /// The object's kind.
        kind: String,
        /// `namespace/name`.
        object: String,
        /// The field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// Every object read from the manifests, keyed by `namespace/name`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    /// Services.
    pub services: BTreeMap<(String, String), core::Service>,
    /// EndpointSlices.
    pub slices: BTreeMap<(String, String), discovery::EndpointSlice>,
    /// Nodes, by name.
    pub nodes: BTreeMap<String, core::Node>,
    /// The file and document index each object was read from (Nodes
    /// with an empty namespace).
    pub origins: BTreeMap<ObjectKey, (PathBuf, usize)>,
}

/// An object's kind, namespace (empty for Nodes) and name.
pub type ObjectKey = (Kind, String, String);

/// The kinds a manifest source takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `v1` Node.
    Node,
}

impl Kind {
    fn parse(kind: &str) -> Option<Kind> {
        match kind {
            "Service" => Some(Kind::Service),
            "EndpointSlice" => Some(Kind::EndpointSlice),
            "Node" => Some(Kind::Node),
            _ => None,
        }
    }
}

impl Manifests {
    /// Carries `object` over from `last` (a document that held it failed
    /// this time). Returns whether there was one to carry.
    fn keep(&mut self, last: &Manifests, key: &ObjectKey) -> bool {
        let (kind, ns, name) = key;
        let kept = match kind {
            Kind::Service => last
                .services
                .get(&(ns.clone(), name.clone()))
                .map(|s| self.services.insert((ns.clone(), name.clone()), s.clone()))
                .is_some(),
            Kind::EndpointSlice => last
                .slices
                .get(&(ns.clone(), name.clone()))
                .map(|s| self.slices.insert((ns.clone(), name.clone()), s.clone()))
                .is_some(),
            Kind::Node => last
                .nodes
                .get(name)
                .map(|n| self.nodes.insert(name.clone(), n.clone()))
                .is_some(),
        };
        if kept && let Some(o) = last.origins.get(key) {
            self.origins.entry(key.clone()).or_insert_with(|| o.clone());
        }
        kept
    }

    fn contains(&self, (kind, ns, name): &ObjectKey) -> bool {
        match kind {
            Kind::Service => self.services.contains_key(&(ns.clone(), name.clone())),
            Kind::EndpointSlice => self.slices.contains_key(&(ns.clone(), name.clone())),
            Kind::Node => self.nodes.contains_key(name),
        }
    }
}

/// Kinds of the core and discovery groups that are not ours: ignored
/// without a word. Any other kind in those groups (`Servce`) is a typo and
/// reported; kinds of other groups (custom resources, apps/v1...) are not
/// ours and ignored, unless they look like one of ours.
const OTHER_CORE_KINDS: &[&str] = &[
    "Binding",
    "ComponentStatus",
    "ConfigMap",
    "Endpoints",
    "Event",
    "LimitRange",
    "List",
    "Namespace",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Pod",
    "PodTemplate",
    "ReplicationController",
    "ResourceQuota",
    "Secret",
    "ServiceAccount",
];

/// Case-insensitive edit distance at most 2 from one of our kinds.
fn looks_like_ours(kind: &str) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (
            a.to_lowercase().chars().collect(),
            b.to_lowercase().chars().collect(),
        );
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.iter().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    ["Service", "EndpointSlice", "Node"]
        .into_iter()
        .find(|ours| distance(kind, ours) <= 2)
}

/// Why a document's kind is refused, if it is: missing, a typo of ours,
/// or unknown in the core or discovery group.
fn refused_kind(kind: &str, api_version: &str) -> Option<String> {
    if kind.is_empty() {
        return Some("no kind".into());
    }
    if Kind::parse(kind).is_some() {
        return None;
    }
    if let Some(ours) = looks_like_ours(kind) {
        return Some(format!("unknown kind {kind:?} (did you mean {ours}?)"));
    }
    let core = api_version == "v1" || api_version.starts_with("discovery.k8s.io/");
    (core && !OTHER_CORE_KINDS.contains(&kind))
        .then(|| format!("unknown kind {kind:?} in {api_version}"))
}

fn files_of(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let io = |source| ManifestError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if p.is_file() && matches!(ext, "yaml" | "yml" | "json") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// A fingerprint of the manifests: file names, sizes, modification times.
fn fingerprint(path: &Path) -> Option<Vec<(PathBuf, u64, SystemTime)>> {
    let files = files_of(path).ok()?;
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok()?;
            Some((f, m.len(), m.modified().ok()?))
        })
        .collect()
}

fn decode<T: DeserializeOwned>(
    path: &Path,
    kind: &str,
    object: &str,
    value: serde_json::Value,
) -> Result<T, ManifestError> {
    serde_path_to_error::deserialize(value).map_err(|e| ManifestError::Schema {
        path: path.to_path_buf(),
        kind: kind.to_string(),
        object: object.to_string(),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Reads every object from a file or a directory. Objects that cannot be
/// decoded are reported and left out; the others are returned.
pub fn load(path: &Path) -> Result<(Manifests, Vec<ManifestError>), ManifestError> {
    load_keeping(path, &Manifests::default())
}

/// `serde_yaml`'s message with every `line N` in it counted from the top
/// of the file (the parser counts from the top of the document, which
/// starts at the file's line `first_line`), and that line of the error.
fn yaml_message(e: &serde_yaml::Error, first_line: usize) -> (String, usize) {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("line ") {
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + first_line - 1).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    let line = e.location().map_or(1, |l| l.line()) + first_line - 1;
    (out, line)
}

/// Reads every object as [`load`] does, and where a document fails (it
/// does not parse, has a type error or an unknown kind) keeps the objects
/// `last` had from it: the one it names where the name can be read,
/// otherwise those `last` read from the same file and document index.
/// Every document is parsed on its own, so one broken document never
/// takes its neighbours with it.
pub fn load_keeping(
    path: &Path,
    last: &Manifests,
) -> Result<(Manifests, Vec<ManifestError>), ManifestError> {
    let mut out = Manifests::default();
    let mut errors = Vec::new();
    // (file, doc, identity) of documents that failed.
    let mut failed: Vec<(PathBuf, usize, Option<ObjectKey>)> = Vec::new();
    for file in files_of(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        for d in documents::split(&text) {
            let doc = d.index;
            let value: serde_json::Value = match serde_yaml::from_str(d.text) {
                Ok(v) => v,
                Err(e) => {
                    let id = documents::Identity::recover(d.text);
                    let key = id
                        .kind
                        .as_deref()
                        .and_then(Kind::parse)
                        .zip(id.name.clone())
                        .map(|(k, name)| {
                            let ns = match k {
                                Kind::Node => String::new(),
                                _ => id.namespace.clone().unwrap_or_else(|| "default".into()),
                            };
                            (k, ns, name)
                        });
                    let object = id.name.as_ref().map(|name| {
                        let kind = id.kind.as_deref().unwrap_or("object");
                        match &id.namespace {
                            Some(ns) => format!("{kind} {ns}/{name}"),
                            None => format!("{kind} {name}"),
                        }
                    });
                    let (message, line) = yaml_message(&e, d.first_line);
                    errors.push(ManifestError::Yaml {
                        path: file.clone(),
                        doc,
                        line,
                        object,
                        message,
                    });
                    failed.push((file.clone(), doc, key));
                    continue;
                }
            };
            if value.is_null() {
                continue;
            }
            let str_of = |v: Option<&serde_json::Value>| {
                v.and_then(|k| k.as_str()).unwrap_or("").to_string()
            };
            let kind = str_of(value.get("kind"));
            let api_version = str_of(value.get("apiVersion"));
            let meta = value.get("metadata");
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                .to_string();
            let name = str_of(meta.and_then(|m| m.get("name")));
            let object = format!("{ns}/{name}");
            if let Some(why) = refused_kind(&kind, &api_version) {
                errors.push(ManifestError::Yaml {
                    path: file.clone(),
                    doc,
                    line: d.first_line,
                    object: (!name.is_empty()).then(|| format!("{kind} {object}")),
                    message: if kind == "List" {
                        "kind List is not supported; write one object per document".into()
                    } else {
                        why
                    },
                });
                failed.push((file.clone(), doc, None));
                continue;
            }
            let Some(k) = Kind::parse(&kind) else {
                // Other kinds (Deployments, ConfigMaps...) are not ours.
                tracing::debug!(file = %file.display(), kind = %crate::validate::escape(&kind), "ignoring object of another kind");
                continue;
            };
            let key = match k {
                Kind::Node => (k, String::new(), name.clone()),
                _ => (k, ns.clone(), name.clone()),
            };
            let decoded = match k {
                Kind::Service => {
                    decode::<core::Service>(&file, &kind, &object, value).map(|mut s| {
                        s.metadata.namespace = Some(ns.clone());
                        out.services.insert((ns, name), s);
                    })
                }
                Kind::EndpointSlice => {
                    decode::<discovery::EndpointSlice>(&file, &kind, &object, value).map(|mut s| {
                        s.metadata.namespace = Some(ns.clone());
                        out.slices.insert((ns, name), s);
                    })
                }
                Kind::Node => decode::<core::Node>(&file, &kind, &name, value).map(|n| {
                    out.nodes.insert(name, n);
                }),
            };
            match decoded {
                Ok(()) => {
                    out.origins.insert(key, (file.clone(), doc));
                }
                Err(e) => {
                    errors.push(e);
                    failed.push((file.clone(), doc, Some(key)));
                }
            }
        }
    }
    // What failed keeps its last good version.
    for (file, doc, key) in failed {
        let named = key.as_ref().is_some_and(|k| out.keep(last, k));
        if named {
            continue;
        }
        let from_here: Vec<_> = last
            .origins
            .iter()
            .filter(|(k, o)| o.0 == file && o.1 == doc && !out.contains(k))
            .map(|(k, _)| k.clone())
            .collect();
        for k in from_here {
            out.keep(last, &k);
        }
    }
    Ok((out, errors))
}

/// Feeds the difference between two reads to a runner. Returns the errors
/// of objects that were rejected (each skipped; the rest applied).
pub fn apply_diff(
    handle: &RunnerHandle,
    old: &Manifests,
    new: &Manifests,
    node_name: &str,
) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    for (k, s) in &new.services {
        if old.services.get(k) == Some(s) {
            continue;
        }
        match service_from_k8s(s) {
            Ok(Some(svc)) => {
                if let Err(e) = handle.update_service(&svc) {
                    errors.push(e);
                }
            }
            Ok(None) => handle.delete_service(&k.0, &k.1),
            Err(e) => errors.push(e),
        }
    }
    for k in old
        .services
        .keys()
        .filter(|k| !new.services.contains_key(*k))
    {
        handle.delete_service(&k.0, &k.1);
    }
    for (k, s) in &new.slices {
        if old.slices.get(k) == Some(s) {
            continue;
        }
        match endpoint_slice_from_k8s(s) {
            Ok(Some(slice)) => {
                if let Err(e) = handle.update_endpoint_slice(&slice) {
                    errors.push(e);
                }
            }
            Ok(None) => handle.delete_endpoint_slice(&k.0, &k.1),
            Err(e) => errors.push(e),
        }
    }
    for k in old.slices.keys().filter(|k| !new.slices.contains_key(*k)) {
        handle.delete_endpoint_slice(&k.0, &k.1);
    }
    match (old.nodes.get(node_name), new.nodes.get(node_name)) {
        (o, Some(n)) if o != Some(n) => {
            if let Err(e) = handle.update_node(&node_from_k8s(n)) {
                errors.push(e);
            }
        }
        (Some(_), None) => handle.delete_node(),
        _ => {}
    }
    errors
}

/// Watches a manifest path and feeds a runner.
#[derive(Debug, Clone)]
pub struct ManifestSource {
    path: PathBuf,
    node_name: String,
    interval: Duration,
}

impl ManifestSource {
    /// Reads `path` (a file or a directory) for the node `node_name`,
    /// checking for changes every second.
    pub fn new(path: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        ManifestSource {
            path: path.into(),
            node_name: node_name.into(),
            interval: Duration::from_secs(1),
        }
    }

    /// Checks for changes this often.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Loads once, feeds the runner and marks it initialized; returns the
    /// objects and every error (each object in error was skipped).
    pub fn load_into(
        &self,
        handle: &RunnerHandle,
    ) -> Result<(Manifests, Vec<String>), ManifestError> {
        let (m, errs) = load(&self.path)?;
        let mut msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        msgs.extend(
            apply_diff(handle, &Manifests::default(), &m, &self.node_name)
                .iter()
                .map(|e| e.to_string()),
        );
        handle.set_initialized();
        Ok((m, msgs))
    }

    /// Runs forever: loads, then re-reads whenever the files change.
    /// Errors are logged with the object and field; a file that cannot be
    /// read keeps the last good state in force.
    pub async fn run(self, handle: RunnerHandle) {
        let mut current = Manifests::default();
        let mut seen = None;
        loop {
            let fp = fingerprint(&self.path);
            if fp.is_some() && fp != seen {
                match load_keeping(&self.path, &current) {
                    Ok((m, errs)) => {
                        for e in &errs {
                            tracing::error!(error = %e, "skipping object");
                        }
                        for e in apply_diff(&handle, &current, &m, &self.node_name) {
                            tracing::error!(error = %e, "skipping object");
                        }
                        current = m;
                        seen = fp;
                        handle.set_initialized();
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read manifests; keeping the last good state")
                    }
                }
            }
            tokio::time::sleep(self.interval).await;
        }
    }
}

#[cfg(test)]
mod tests;
