//! # examples
//!
//! The command-line layer of `proxier` (a drop-in for kube-proxy) and of
//! every mode's binary: kube-proxy's flags by their own names and Go
//! syntax, a `KubeProxyConfiguration` file read strictly, the two sources
//! (manifest files, or the Kubernetes API through `proxier-kube`), one
//! factory of backends per mode, the runner, health and metrics, `--once`
//! and `--cleanup` of every mode.
//!
//! - [`flags`]: kube-proxy's flag table and Go value syntax.
//! - [`config`]: `KubeProxyConfiguration` v1alpha1, strict.
//! - [`cli`]: the command line, and the merge into [`cli::Settings`].
//! - [`modes`]: the backend factory and `--cleanup` of every mode.
//! - [`run`]: from a command line to a running proxier.
//!
//! ## Dependencies, and why
//!
//! - `clap` (derive) for the flags; kube-proxy's Go forms (`--flag=false`,
//!   `--v=2`) are clap arguments with Go value parsers, and the flags that
//!   do not apply here are added as hidden arguments from [`flags::KUBE_PROXY_FLAGS`].
//! - `serde_yaml` with `serde_path_to_error` for the configuration: serde's
//!   `deny_unknown_fields` is kube-proxy's strict decoding, and the path
//!   names the field (`iptables.masqueradeBit`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod config;
pub mod flags;
pub mod modes;
pub mod run;
