//! Kernel parameters, behind one narrow seam so that no backend writes
//! `/proc` directly and unit tests never read the host's values.

use std::fmt;
use std::io;

/// Reading or writing a kernel parameter failed.
#[derive(Debug, thiserror::Error)]
#[error("sysctl {key}{}: {source}", .value.as_ref().map(|v| format!("={v}")).unwrap_or_default())]
pub struct SysctlError {
    /// The key (`net/ipv4/vs/conntrack`).
    pub key: String,
    /// The value being written, when writing.
    pub value: Option<String>,
    /// What the kernel said.
    #[source]
    pub source: io::Error,
}

/// Kernel parameters (`sysctl`).
pub trait Sysctl: Send + Sync + fmt::Debug {
    /// `sysctl -n KEY` (`net/ipv4/vs/conntrack`), trimmed.
    fn get(&self, key: &str) -> Result<String, SysctlError>;
    /// `sysctl -w KEY=VALUE`.
    fn set(&self, key: &str, value: &str) -> Result<(), SysctlError>;

    /// Sets `key` to `value` unless it already is (kube-proxy's
    /// `EnsureSysctl`): a read, and a write only on change.
    fn ensure(&self, key: &str, value: &str) -> Result<(), SysctlError> {
        if self.get(key).ok().as_deref() == Some(value) {
            return Ok(());
        }
        self.set(key, value)
    }
}

/// [`Sysctl`] through `/proc/sys` (of the mount namespace's view, which
/// follows the network namespace for `net/`).
#[derive(Debug, Clone, Default)]
pub struct ProcSys;

impl Sysctl for ProcSys {
    fn get(&self, key: &str) -> Result<String, SysctlError> {
        std::fs::read_to_string(format!("/proc/sys/{key}"))
            .map(|v| v.trim().to_string())
            .map_err(|source| SysctlError {
                key: key.into(),
                value: None,
                source,
            })
    }

    fn set(&self, key: &str, value: &str) -> Result<(), SysctlError> {
        std::fs::write(format!("/proc/sys/{key}"), value).map_err(|source| SysctlError {
            key: key.into(),
            value: Some(value.into()),
            source,
        })
    }
}
