//! Flags shared by every mode, named as kube-proxy names them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use ipnet::IpNet;
use proxier_core::IpFamily;

/// Flags every mode takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// A YAML file or directory of Service, EndpointSlice and Node objects,
    /// re-read on change (instead of the Kubernetes API).
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// A kubeconfig for the Kubernetes API (default: KUBECONFIG,
    /// ~/.kube/config or in-cluster).
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// A KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1) file;
    /// flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,
    /// Node-port addresses (CIDRs, comma-separated; default: all).
    #[arg(long, value_name = "CIDR,...", value_delimiter = ',')]
    pub nodeport_addresses: Vec<IpNet>,
    /// The cluster (pod) CIDR, for local-traffic detection.
    #[arg(long, value_name = "CIDR", value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNet>,
    /// Masquerade all traffic to cluster IPs.
    #[arg(long)]
    pub masquerade_all: bool,
    /// The fwmark bit for masquerading (0..=31).
    #[arg(long, value_name = "N")]
    pub masquerade_bit: Option<u8>,
    /// Minimum interval between syncs (Go duration: 1s, 500ms, 1m).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub min_sync_period: Option<Duration>,
    /// Interval of periodic syncs.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub sync_period: Option<Duration>,
    /// Health server address (/healthz, /livez).
    #[arg(long, value_name = "ADDR:PORT")]
    pub healthz_bind_address: Option<SocketAddr>,
    /// Metrics server address (/metrics).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_bind_address: Option<SocketAddr>,
    /// Proxy one IP family only (not a kube-proxy flag). Default: both, as
    /// kube-proxy does: the primary family is the node's (IPv4 unless the
    /// node has IPv6 addresses only), and the other one is added when this
    /// mode and the kernel support it (the log says why not otherwise).
    #[arg(long, value_name = "ipv4|ipv6", value_parser = parse_family)]
    pub ip_family: Option<IpFamily>,
    /// Accept endpoint addresses in 127.0.0.0/8 and ::1, which the API
    /// server refuses (not a kube-proxy flag): for local testing, as the
    /// bundled demo manifest does.
    #[arg(long)]
    pub allow_loopback_endpoints: bool,
    /// Sync once and exit (0, or non-zero with the error).
    #[arg(long)]
    pub once: bool,
    /// Remove everything this mode created and exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// Settings after the configuration file and the flags are merged.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Node name.
    pub node_name: String,
    /// Node-port CIDRs of `family` (empty: all).
    pub nodeport_addresses: Vec<IpNet>,
    /// Cluster CIDRs of `family`.
    pub cluster_cidr: Vec<IpNet>,
    /// Node-port CIDRs as given, of both families.
    pub all_nodeport_addresses: Vec<IpNet>,
    /// Cluster CIDRs as given, of both families.
    pub all_cluster_cidr: Vec<IpNet>,
    /// Masquerade everything.
    pub masquerade_all: bool,
    /// Mark bit.
    pub masquerade_bit: u8,
    /// Minimum sync interval.
    pub min_sync_period: Duration,
    /// Periodic sync interval.
    pub sync_period: Duration,
    /// Health server.
    pub healthz_bind_address: SocketAddr,
    /// Metrics server.
    pub metrics_bind_address: SocketAddr,
    /// The family a backend is being built for ([`Settings::for_family`]).
    pub family: IpFamily,
    /// `--ip-family`, if one is forced.
    pub forced_family: Option<IpFamily>,
}

impl Settings {
    /// These settings for one family's backend: `family` set, and the
    /// CIDR lists cut to that family (the flags may mix families, as
    /// kube-proxy's `--cluster-cidr` and `--nodeport-addresses` may).
    pub fn for_family(&self, family: IpFamily) -> Settings {
        let of = |v: &[IpNet]| -> Vec<IpNet> {
            v.iter()
                .copied()
                .filter(|n| family.matches(&n.addr()))
                .collect()
        };
        Settings {
            family,
            nodeport_addresses: of(&self.all_nodeport_addresses),
            cluster_cidr: of(&self.all_cluster_cidr),
            ..self.clone()
        }
    }
}

/// Parses a Go duration (`1h2m3s`, `500ms`, `1.5s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (examples: 1s, 500ms, 1m30s)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

fn parse_family(s: &str) -> Result<IpFamily, String> {
    match s {
        "ipv4" | "IPv4" | "4" => Ok(IpFamily::V4),
        "ipv6" | "IPv6" | "6" => Ok(IpFamily::V6),
        _ => Err(format!("unknown IP family {s:?} (ipv4 or ipv6)")),
    }
}

/// Reads the fields of a `KubeProxyConfiguration` that apply here.
fn read_config(path: &std::path::Path) -> Result<serde_yaml::Value, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let v: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))?;
    let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    if kind != "KubeProxyConfiguration" {
        return Err(format!(
            "--config {}: kind is {kind:?}, expected KubeProxyConfiguration",
            path.display()
        ));
    }
    Ok(v)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

impl Common {
    /// Merges the configuration file (if any) under the flags, and checks
    /// every value.
    pub fn settings(&self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(p) => Some(read_config(p)?),
            None => None,
        };
        let get = |path: &[&str]| -> Option<&serde_yaml::Value> {
            let mut v = file.as_ref()?;
            for k in path {
                v = v.get(*k)?;
            }
            Some(v)
        };
        let field = |path: &[&str]| path.join(".");
        let dur = |path: &[&str],
                   flag: Option<Duration>,
                   default: Duration|
         -> Result<Duration, String> {
            if let Some(d) = flag {
                return Ok(d);
            }
            match get(path).and_then(|v| v.as_str()) {
                Some(s) => parse_duration(s).map_err(|e| format!("--config: {}: {e}", field(path))),
                None => Ok(default),
            }
        };
        let addr = |path: &[&str],
                    flag: Option<SocketAddr>,
                    default: &str|
         -> Result<SocketAddr, String> {
            if let Some(a) = flag {
                return Ok(a);
            }
            match get(path).and_then(|v| v.as_str()) {
                Some(s) => s
                    .parse()
                    .map_err(|_| format!("--config: {}: invalid address {s:?}", field(path))),
                None => Ok(default.parse().expect("default")),
            }
        };
        let cidrs = |flag: &[IpNet], path: &[&str]| -> Result<Vec<IpNet>, String> {
            if !flag.is_empty() {
                return Ok(flag.to_vec());
            }
            let mut out = Vec::new();
            let items: Vec<String> = match get(path) {
                Some(serde_yaml::Value::String(s)) => {
                    s.split(',').map(|x| x.trim().to_string()).collect()
                }
                Some(serde_yaml::Value::Sequence(v)) => v
                    .iter()
                    .filter_map(|x| x.as_str())
                    .map(str::to_string)
                    .collect(),
                _ => Vec::new(),
            };
            for s in items.iter().filter(|s| !s.is_empty() && *s != "primary") {
                out.push(
                    s.parse()
                        .map_err(|_| format!("--config: {}: invalid CIDR {s:?}", field(path)))?,
                );
            }
            Ok(out)
        };
        let family = self.ip_family.unwrap_or(IpFamily::V4);
        let node_name = self
            .hostname_override
            .clone()
            .or_else(|| {
                get(&["hostnameOverride"])
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(host_name);
        if !proxier_core::validate::is_dns1123_subdomain(&node_name) {
            return Err(format!(
                "--hostname-override: {node_name:?} is not a valid node name"
            ));
        }
        let masquerade_bit = match self.masquerade_bit {
            Some(b) => b,
            None => get(&["iptables", "masqueradeBit"])
                .and_then(|v| v.as_u64())
                .unwrap_or(14) as u8,
        };
        if masquerade_bit > 31 {
            return Err(format!(
                "--masquerade-bit: {masquerade_bit} is out of range 0..=31"
            ));
        }
        let all_nodeport_addresses = cidrs(&self.nodeport_addresses, &["nodePortAddresses"])?;
        let all_cluster_cidr = cidrs(&self.cluster_cidr, &["clusterCIDR"])?;
        // kube-proxy takes at most one cluster CIDR per family.
        for f in [IpFamily::V4, IpFamily::V6] {
            let n = all_cluster_cidr
                .iter()
                .filter(|c| f.matches(&c.addr()))
                .count();
            if n > 1 {
                return Err(format!(
                    "--cluster-cidr: more than one {} CIDR ({n}); give at most one per family",
                    f.as_str()
                ));
            }
        }
        if let Some(forced) = self.ip_family
            && !all_cluster_cidr.is_empty()
            && !all_cluster_cidr.iter().any(|c| forced.matches(&c.addr()))
        {
            return Err(format!(
                "--cluster-cidr: no {} CIDR for --ip-family {}",
                forced.as_str(),
                forced.as_str()
            ));
        }
        let settings = Settings {
            node_name,
            nodeport_addresses: Vec::new(),
            cluster_cidr: Vec::new(),
            all_nodeport_addresses,
            all_cluster_cidr,
            masquerade_all: self.masquerade_all
                || get(&["iptables", "masqueradeAll"])
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
            masquerade_bit,
            min_sync_period: dur(
                &["iptables", "minSyncPeriod"],
                self.min_sync_period,
                Duration::from_secs(1),
            )?,
            sync_period: dur(
                &["iptables", "syncPeriod"],
                self.sync_period,
                Duration::from_secs(30),
            )?,
            healthz_bind_address: addr(
                &["healthzBindAddress"],
                self.healthz_bind_address,
                "0.0.0.0:10256",
            )?,
            metrics_bind_address: addr(
                &["metricsBindAddress"],
                self.metrics_bind_address,
                "127.0.0.1:10249",
            )?,
            family,
            forced_family: self.ip_family,
        };
        if settings.sync_period.is_zero() {
            return Err("--sync-period: must be greater than 0".into());
        }
        Ok(settings.for_family(family))
    }
}

/// `--detect-local-mode` and its prefix, shared by the modes that
/// masquerade with iptables (iptables, ipvs).
#[derive(Debug, Clone, clap::Args)]
pub struct LocalDetect {
    /// How pod traffic is told apart: ClusterCIDR or InterfaceNamePrefix.
    #[arg(long, value_name = "MODE")]
    pub detect_local_mode: Option<String>,
    /// The interface prefix for --detect-local-mode=InterfaceNamePrefix.
    #[arg(long, value_name = "PREFIX")]
    pub pod_interface_name_prefix: Option<String>,
}

impl LocalDetect {
    /// The detector, given the cluster CIDRs (`--cluster-cidr`).
    pub fn detector(
        &self,
        cluster_cidr: &[IpNet],
    ) -> Result<proxier_netfilter::LocalDetector, String> {
        use proxier_netfilter::LocalDetector;
        match self.detect_local_mode.as_deref() {
            None | Some("ClusterCIDR") if !cluster_cidr.is_empty() => {
                Ok(LocalDetector::ClusterCidr(cluster_cidr.to_vec()))
            }
            None | Some("ClusterCIDR") => Ok(LocalDetector::None),
            Some("InterfaceNamePrefix") => match &self.pod_interface_name_prefix {
                Some(p) => Ok(LocalDetector::InterfacePrefix(p.clone())),
                None => Err(
                    "--detect-local-mode=InterfaceNamePrefix needs --pod-interface-name-prefix"
                        .into(),
                ),
            },
            Some(m) => Err(format!(
                "--detect-local-mode: unsupported mode {m:?} (ClusterCIDR, InterfaceNamePrefix)"
            )),
        }
    }
}

impl Common {
    /// A field of the `--config` file (`["ipvs", "scheduler"]`), if the
    /// file is given and has it.
    pub fn config_field(&self, path: &[&str]) -> Result<Option<serde_yaml::Value>, String> {
        let Some(p) = &self.config else {
            return Ok(None);
        };
        let mut v = read_config(p)?;
        for k in path {
            match v.get(*k) {
                Some(x) => v = x.clone(),
                None => return Ok(None),
            }
        }
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("").is_err());
    }
}
