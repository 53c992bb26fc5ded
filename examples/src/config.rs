//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`), read as
//! kube-proxy v1.33 reads it: every field of the type is known, an
//! unknown field or a value of the wrong type is an error naming the
//! field (kube-proxy's strict decoding), and zero values mean "the
//! default", as kube-proxy's defaulting has it.
//!
//! Check a file by hand: `proxier --config FILE --write-config-to -`
//! prints nothing kube-proxy would not, and the same file given to
//! `kube-proxy --config FILE` decodes the same way.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The API version this reads.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// Reading the configuration file failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("--config {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A field is unknown or its value is not of the field's type.
    #[error("--config {path}: {field}: {reason}")]
    Field {
        /// The file.
        path: String,
        /// The field, as a path (`iptables.masqueradeBit`); `.` for the
        /// document itself.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A Go `metav1.Duration` as text (`30s`, `1m30s`), or null.
pub type GoDuration = Option<String>;

/// `KubeProxyConfiguration` v1alpha1, every field kube-proxy v1.33 knows.
/// Fields that do not apply here are read (so that the file is accepted
/// as kube-proxy accepts it) and reported by [`KubeProxyConfiguration::ignored`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct KubeProxyConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub feature_gates: Option<BTreeMap<String, bool>>,
    pub client_connection: Option<ClientConnection>,
    pub logging: Option<Logging>,
    pub hostname_override: Option<String>,
    pub bind_address: Option<String>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub enable_profiling: Option<bool>,
    pub show_hidden_metrics_for_version: Option<String>,
    pub mode: Option<String>,
    pub iptables: Option<IptablesSection>,
    pub ipvs: Option<IpvsSection>,
    pub nftables: Option<NftablesSection>,
    pub winkernel: Option<serde_yaml::Value>,
    pub detect_local_mode: Option<String>,
    pub detect_local: Option<DetectLocal>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub node_port_addresses: Option<Vec<String>>,
    pub oom_score_adj: Option<i32>,
    pub conntrack: Option<ConntrackSection>,
    pub config_sync_period: GoDuration,
    pub port_range: Option<String>,
    pub windows_run_as_service: Option<bool>,
}

/// `clientConnection`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
    pub accept_content_types: Option<String>,
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

/// `logging` (component-base's `LoggingConfiguration`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct Logging {
    pub format: Option<String>,
    /// A duration text or nanoseconds.
    pub flush_frequency: Option<serde_yaml::Value>,
    pub verbosity: Option<u32>,
    pub vmodule: Option<Vec<VModuleItem>>,
    pub options: Option<serde_yaml::Value>,
}

/// One `logging.vmodule` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct VModuleItem {
    pub file_pattern: String,
    pub verbosity: u32,
}

/// `iptables`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct IptablesSection {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: Option<bool>,
    pub localhost_node_ports: Option<bool>,
    pub sync_period: GoDuration,
    pub min_sync_period: GoDuration,
}

/// `ipvs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct IpvsSection {
    pub sync_period: GoDuration,
    pub min_sync_period: GoDuration,
    pub scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    pub tcp_timeout: GoDuration,
    pub tcp_fin_timeout: GoDuration,
    pub udp_timeout: GoDuration,
}

/// `nftables`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct NftablesSection {
    pub masquerade_bit: Option<i32>,
    pub masquerade_all: Option<bool>,
    pub sync_period: GoDuration,
    pub min_sync_period: GoDuration,
}

/// `detectLocal`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DetectLocal {
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
}

/// `conntrack`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ConntrackSection {
    pub max_per_core: Option<i32>,
    pub min: Option<i32>,
    pub tcp_established_timeout: GoDuration,
    pub tcp_close_wait_timeout: GoDuration,
    pub tcp_be_liberal: Option<bool>,
    pub udp_timeout: GoDuration,
    pub udp_stream_timeout: GoDuration,
}

impl KubeProxyConfiguration {
    /// Reads `path` strictly.
    pub fn read(path: &Path) -> Result<KubeProxyConfiguration, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses `text` (named `path` in errors) strictly.
    pub fn parse(path: &str, text: &str) -> Result<KubeProxyConfiguration, ConfigError> {
        let field_err = |field: String, reason: String| ConfigError::Field {
            path: path.into(),
            field: proxier_core::escape(&field),
            reason: proxier_core::escape(&reason),
        };
        let de = serde_yaml::Deserializer::from_str(text);
        let cfg: KubeProxyConfiguration = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            field_err(field, e.into_inner().to_string())
        })?;
        match cfg.kind.as_deref() {
            Some("KubeProxyConfiguration") => {}
            other => {
                return Err(field_err(
                    "kind".into(),
                    format!("{other:?}, expected \"KubeProxyConfiguration\""),
                ));
            }
        }
        match cfg.api_version.as_deref() {
            Some(API_VERSION) => {}
            other => {
                return Err(field_err(
                    "apiVersion".into(),
                    format!("{other:?}, expected {API_VERSION:?}"),
                ));
            }
        }
        Ok(cfg)
    }

    /// The fields set to a non-default value that change nothing here,
    /// each with the reason (logged once at start).
    pub fn ignored(&self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
        let cc = self.client_connection.clone().unwrap_or_default();
        if set(&cc.content_type) || set(&cc.accept_content_types) {
            out.push((
                "clientConnection.contentType",
                "the Kubernetes client speaks JSON",
            ));
        }
        if cc.qps.unwrap_or(0.0) != 0.0 || cc.burst.unwrap_or(0) != 0 {
            out.push((
                "clientConnection.qps/burst",
                "watches only, no client-side rate limit",
            ));
        }
        if self.enable_profiling == Some(true) {
            out.push(("enableProfiling", "no Go pprof handler"));
        }
        if set(&self.show_hidden_metrics_for_version) {
            out.push(("showHiddenMetricsForVersion", "no hidden metrics"));
        }
        if self.oom_score_adj.is_some() {
            out.push((
                "oomScoreAdj",
                "set it in the pod spec or with choom; the process does not adjust itself",
            ));
        }
        if set(&self.port_range) {
            out.push(("portRange", "unused since kube-proxy v1.26, as there"));
        }
        if self.winkernel.as_ref().is_some_and(|w| !is_zero(w)) {
            out.push(("winkernel", "Windows only"));
        }
        if set(&self.config_sync_period)
            && self.config_sync_period.as_deref() != Some("0s")
            && self.config_sync_period.as_deref() != Some("0")
        {
            out.push((
                "configSyncPeriod",
                "watches are relisted when they break, not on a timer",
            ));
        }
        out
    }
}

/// A YAML value that holds only zero values (kubeadm writes whole
/// sections of them).
fn is_zero(v: &serde_yaml::Value) -> bool {
    use serde_yaml::Value;
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "0" || s == "0s",
        Value::Sequence(s) => s.iter().all(is_zero),
        Value::Mapping(m) => m.values().all(is_zero),
        Value::Tagged(t) => is_zero(&t.value),
    }
}

/// A config string that is set: not null and not empty.
pub fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// A config duration that is set and not zero (zero means "the default"
/// in kube-proxy's defaulting).
pub fn nonzero_duration(
    path: &str,
    field: &str,
    s: &GoDuration,
) -> Result<Option<std::time::Duration>, ConfigError> {
    match nonempty(s) {
        None => Ok(None),
        Some(t) => match crate::flags::parse_duration(t) {
            Ok(d) if d.is_zero() => Ok(None),
            Ok(d) => Ok(Some(d)),
            Err(reason) => Err(ConfigError::Field {
                path: path.into(),
                field: field.into(),
                reason: proxier_core::escape(&reason),
            }),
        },
    }
}

/// A config duration that is set (zero included: for the fields where 0
/// means "leave as is" or "no minimum").
pub fn duration(
    path: &str,
    field: &str,
    s: &GoDuration,
) -> Result<Option<std::time::Duration>, ConfigError> {
    match nonempty(s) {
        None => Ok(None),
        Some(t) => crate::flags::parse_duration(t)
            .map(Some)
            .map_err(|reason| ConfigError::Field {
                path: path.into(),
                field: field.into(),
                reason: proxier_core::escape(&reason),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `kubeadm init` (v1.33) writes into the kube-proxy ConfigMap's
    /// `config.conf`.
    pub const KUBEADM: &str = include_str!("../../deploy/testdata/kubeadm-config.conf");

    #[test]
    fn kubeadm_configuration_reads_with_nothing_ignored_but_zeroes() {
        let c = KubeProxyConfiguration::parse("config.conf", KUBEADM).unwrap();
        assert_eq!(
            c.client_connection.as_ref().unwrap().kubeconfig.as_deref(),
            Some("/var/lib/kube-proxy/kubeconfig.conf")
        );
        assert_eq!(c.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
        assert_eq!(c.mode.as_deref(), Some(""));
        assert!(c.ignored().is_empty(), "{:?}", c.ignored());
    }

    #[test]
    fn unknown_fields_and_bad_values_name_the_field() {
        let base = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";
        for (extra, field) in [
            (
                "iptables:\n  masqueradeBitt: 14\n",
                "iptables.masqueradeBitt",
            ),
            (
                "iptables:\n  masqueradeBit: fourteen\n",
                "iptables.masqueradeBit",
            ),
            ("ipvs:\n  strictARP: maybe\n", "ipvs.strictARP"),
            ("conntrack:\n  maxPerCore: [1]\n", "conntrack.maxPerCore"),
            ("nodePortAddresses: 10.0.0.0/8\n", "nodePortAddresses"),
            ("modes: ipvs\n", "modes"),
        ] {
            let e = KubeProxyConfiguration::parse("f.yaml", &format!("{base}{extra}")).unwrap_err();
            match &e {
                ConfigError::Field { field: f, .. } => assert_eq!(f, field, "{e}"),
                other => panic!("{other}"),
            }
            assert!(e.to_string().starts_with("--config f.yaml: "), "{e}");
        }
        let e =
            KubeProxyConfiguration::parse("f", "apiVersion: v1\nkind: KubeProxyConfiguration\n")
                .unwrap_err();
        assert!(e.to_string().contains("apiVersion"), "{e}");
        let e = KubeProxyConfiguration::parse(
            "f",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: Pod\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
    }

    #[test]
    fn fields_that_change_nothing_here_are_named() {
        let c = KubeProxyConfiguration::parse(
            "f",
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nenableProfiling: true\noomScoreAdj: -999\n",
        )
        .unwrap();
        let names: Vec<_> = c.ignored().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["enableProfiling", "oomScoreAdj"]);
    }
}
