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
use crate::validate::ValidationError;

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
    /// A document is not valid YAML.
    #[error("{path}: document {doc}: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file (0-based).
        doc: usize,
        /// What the parser said.
        message: String,
    },
    /// An object does not match its kind's schema.
    #[error("{path}: {kind} {object}: {field}: {message}")]
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
    let mut out = Manifests::default();
    let mut errors = Vec::new();
    for file in files_of(path)? {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        for (doc, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: serde_json::Value = match serde::Deserialize::deserialize(de) {
                Ok(v) => v,
                Err(e) => {
                    // The YAML stream cannot be resynchronised after a
                    // syntax error: report it and leave the rest of the file.
                    errors.push(ManifestError::Yaml {
                        path: file.clone(),
                        doc,
                        message: e.to_string(),
                    });
                    break;
                }
            };
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .to_string();
            let meta = value.get("metadata");
            let ns = meta
                .and_then(|m| m.get("namespace"))
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                .to_string();
            let name = meta
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or("")
                .to_string();
            let object = format!("{ns}/{name}");
            match kind.as_str() {
                "Service" => match decode::<core::Service>(&file, &kind, &object, value) {
                    Ok(mut s) => {
                        s.metadata.namespace = Some(ns.clone());
                        out.services.insert((ns, name), s);
                    }
                    Err(e) => errors.push(e),
                },
                "EndpointSlice" => {
                    match decode::<discovery::EndpointSlice>(&file, &kind, &object, value) {
                        Ok(mut s) => {
                            s.metadata.namespace = Some(ns.clone());
                            out.slices.insert((ns, name), s);
                        }
                        Err(e) => errors.push(e),
                    }
                }
                "Node" => match decode::<core::Node>(&file, &kind, &name, value) {
                    Ok(n) => {
                        out.nodes.insert(name, n);
                    }
                    Err(e) => errors.push(e),
                },
                "List" => errors.push(ManifestError::Yaml {
                    path: file.clone(),
                    doc,
                    message: "kind List is not supported; write one object per document".into(),
                }),
                // Other kinds (Deployments, ConfigMaps...) are not ours.
                _ => {
                    tracing::debug!(file = %file.display(), kind, "ignoring object of another kind")
                }
            }
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
                match load(&self.path) {
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
