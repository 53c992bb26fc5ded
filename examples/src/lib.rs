//! # examples
//!
//! The command-line layer every mode's binary shares: kube-proxy's flag
//! names where they exist, a `KubeProxyConfiguration` file, the two
//! sources (manifest files, or the Kubernetes API through `proxier-kube`),
//! the runner, health and metrics, `--once` and `--cleanup`.
//!
//! - [`cli`]: flags, durations, the configuration file.
//! - [`run`]: from parsed flags and a backend to a running proxier.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod run;
