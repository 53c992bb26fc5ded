//! kube-proxy's conntrack settings at start (`pkg/proxy/conntrack/sysctls.go`,
//! the `conntrack.*` fields of its configuration): the table size and the
//! TCP and UDP timeouts, written through the [`Sysctl`] seam. Check by
//! hand: `sysctl net.netfilter.nf_conntrack_max
//! net.netfilter.nf_conntrack_tcp_timeout_established`.

use std::time::Duration;

use crate::sysctl::{Sysctl, SysctlError};

/// The `conntrack.*` settings. `None` and zero durations leave the
/// kernel's value as it is, as kube-proxy does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackTuning {
    /// Entries per CPU (`--conntrack-max-per-core`; 0 leaves the limit).
    pub max_per_core: u32,
    /// The least `nf_conntrack_max` (`--conntrack-min`).
    pub min: u32,
    /// `nf_conntrack_tcp_timeout_established`.
    pub tcp_established: Option<Duration>,
    /// `nf_conntrack_tcp_timeout_close_wait`.
    pub tcp_close_wait: Option<Duration>,
    /// `nf_conntrack_tcp_be_liberal=1` when true (never written back to 0).
    pub tcp_be_liberal: bool,
    /// `nf_conntrack_udp_timeout`.
    pub udp: Option<Duration>,
    /// `nf_conntrack_udp_timeout_stream`.
    pub udp_stream: Option<Duration>,
}

impl Default for ConntrackTuning {
    /// kube-proxy's defaults: 32768 per core, at least 131072, 24 h
    /// established, 1 h close-wait, the UDP timeouts left alone.
    fn default() -> Self {
        ConntrackTuning {
            max_per_core: 32768,
            min: 131072,
            tcp_established: Some(Duration::from_secs(24 * 3600)),
            tcp_close_wait: Some(Duration::from_secs(3600)),
            tcp_be_liberal: false,
            udp: None,
            udp_stream: None,
        }
    }
}

/// One setting that could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("conntrack {what}: {source}")]
pub struct TuningError {
    /// The `conntrack.*` field.
    pub what: &'static str,
    /// The sysctl failure.
    #[source]
    pub source: SysctlError,
}

impl ConntrackTuning {
    /// The `nf_conntrack_max` these settings ask for on `cpus` CPUs, or
    /// `None` to leave it.
    pub fn max_for(&self, cpus: u32) -> Option<u32> {
        if self.max_per_core == 0 {
            return None;
        }
        Some(self.max_per_core.saturating_mul(cpus).max(self.min))
    }

    /// Applies every setting, writing only what differs. A setting the
    /// kernel refuses is returned and the others are still applied
    /// (`nf_conntrack_max` is read-only outside the initial network
    /// namespace on most kernels; kube-proxy logs that and goes on).
    pub fn apply(&self, sysctl: &dyn Sysctl, cpus: u32) -> Vec<TuningError> {
        let mut errors = Vec::new();
        let mut put = |what: &'static str, key: &str, value: String| {
            if let Err(source) = sysctl.ensure(key, &value) {
                errors.push(TuningError { what, source });
            }
        };
        if let Some(max) = self.max_for(cpus) {
            // Only ever raised, as kube-proxy does.
            let current: Option<u32> = sysctl
                .get("net/netfilter/nf_conntrack_max")
                .ok()
                .and_then(|v| v.parse().ok());
            if current.is_none_or(|c| c < max) {
                put("max", "net/netfilter/nf_conntrack_max", max.to_string());
            }
        }
        let secs = |d: Duration| d.as_secs().to_string();
        for (what, key, d) in [
            (
                "tcpEstablishedTimeout",
                "net/netfilter/nf_conntrack_tcp_timeout_established",
                self.tcp_established,
            ),
            (
                "tcpCloseWaitTimeout",
                "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
                self.tcp_close_wait,
            ),
            (
                "udpTimeout",
                "net/netfilter/nf_conntrack_udp_timeout",
                self.udp,
            ),
            (
                "udpStreamTimeout",
                "net/netfilter/nf_conntrack_udp_timeout_stream",
                self.udp_stream,
            ),
        ] {
            if let Some(d) = d.filter(|d| !d.is_zero()) {
                put(what, key, secs(d));
            }
        }
        if self.tcp_be_liberal {
            put(
                "tcpBeLiberal",
                "net/netfilter/nf_conntrack_tcp_be_liberal",
                "1".into(),
            );
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeSysctl;

    #[test]
    fn kube_proxy_defaults_raise_the_table_and_set_tcp_timeouts() {
        let s = FakeSysctl::with(&[
            ("net/netfilter/nf_conntrack_max", "65536"),
            (
                "net/netfilter/nf_conntrack_tcp_timeout_established",
                "432000",
            ),
            ("net/netfilter/nf_conntrack_tcp_timeout_close_wait", "3600"),
        ]);
        let errs = ConntrackTuning::default().apply(&s, 2);
        assert!(errs.is_empty(), "{errs:?}");
        // max(32768 × 2, 131072); close-wait already right: not written.
        assert_eq!(
            *s.writes.lock().unwrap(),
            vec![
                (
                    "net/netfilter/nf_conntrack_max".to_string(),
                    "131072".to_string()
                ),
                (
                    "net/netfilter/nf_conntrack_tcp_timeout_established".to_string(),
                    "86400".to_string()
                ),
            ]
        );
    }

    #[test]
    fn zero_leaves_the_kernel_alone_and_a_larger_table_is_kept() {
        let s = FakeSysctl::with(&[("net/netfilter/nf_conntrack_max", "1000000")]);
        let t = ConntrackTuning {
            tcp_established: Some(Duration::ZERO),
            tcp_close_wait: None,
            udp: Some(Duration::from_secs(30)),
            tcp_be_liberal: true,
            ..ConntrackTuning::default()
        };
        assert!(t.apply(&s, 4).is_empty());
        assert_eq!(
            *s.writes.lock().unwrap(),
            vec![
                (
                    "net/netfilter/nf_conntrack_udp_timeout".to_string(),
                    "30".to_string()
                ),
                (
                    "net/netfilter/nf_conntrack_tcp_be_liberal".to_string(),
                    "1".to_string()
                ),
            ]
        );
        assert_eq!(
            ConntrackTuning {
                max_per_core: 0,
                ..ConntrackTuning::default()
            }
            .max_for(8),
            None
        );
    }
}
