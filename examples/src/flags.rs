//! kube-proxy's command line as kube-proxy (v1.33, Go's `pflag`) spells
//! it: Go booleans (`--flag`, `--flag=true|false`), Go durations
//! (`1m30s`), `IP:port` or a bare IP, and every flag kube-proxy has,
//! either supported or accepted with one warning that names it.
//!
//! [`KUBE_PROXY_FLAGS`] is the whole table; the README's flag table and
//! the tests are written from it. Check by hand: `kube-proxy --help`
//! against `proxier --help`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// What proxier does with one of kube-proxy's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Supported: the text says what it sets.
    Supported(&'static str),
    /// Accepted and ignored, with one warning; the text says why.
    Ignored(&'static str),
}

/// One kube-proxy flag.
#[derive(Debug, Clone, Copy)]
pub struct KubeFlag {
    /// Its long name, without `--`.
    pub name: &'static str,
    /// A Go boolean (takes no value, or `=true|false`).
    pub boolean: bool,
    /// What proxier does with it.
    pub support: Support,
}

const fn s(name: &'static str, boolean: bool, what: &'static str) -> KubeFlag {
    KubeFlag {
        name,
        boolean,
        support: Support::Supported(what),
    }
}

const fn i(name: &'static str, boolean: bool, why: &'static str) -> KubeFlag {
    KubeFlag {
        name,
        boolean,
        support: Support::Ignored(why),
    }
}

/// Every flag of kube-proxy v1.33 on Linux (`cmd/kube-proxy/app/options.go`
/// and component-base's logging flags), in kube-proxy's order.
pub const KUBE_PROXY_FLAGS: &[KubeFlag] = &[
    s("config", false, "the KubeProxyConfiguration file"),
    s(
        "write-config-to",
        false,
        "writes the default configuration and exits",
    ),
    s(
        "cleanup",
        true,
        "removes what every mode could have left, then exits",
    ),
    s(
        "feature-gates",
        false,
        "parsed and checked (`Name=true|false,...`); none changes behaviour here",
    ),
    s("kubeconfig", false, "the kubeconfig of the Kubernetes API"),
    s(
        "master",
        false,
        "the API server's URL, overriding the kubeconfig's",
    ),
    i(
        "kube-api-content-type",
        false,
        "the client speaks JSON (protobuf is not offered by the Rust client)",
    ),
    i(
        "kube-api-burst",
        false,
        "watches only; no client-side rate limit to tune",
    ),
    i(
        "kube-api-qps",
        false,
        "watches only; no client-side rate limit to tune",
    ),
    s("hostname-override", false, "the node name"),
    s(
        "bind-address",
        false,
        "a specific IP sets the primary family (as kube-proxy's primary IP does)",
    ),
    s(
        "healthz-bind-address",
        false,
        "the health server (`/healthz`, `/livez`); empty disables",
    ),
    s(
        "metrics-bind-address",
        false,
        "the metrics server (`/metrics`); empty disables",
    ),
    s(
        "bind-address-hard-fail",
        true,
        "a health or metrics port that cannot be bound is fatal (otherwise logged)",
    ),
    i("profiling", true, "no Go pprof handler; profile with perf"),
    i(
        "show-hidden-metrics-for-version",
        false,
        "no metric is hidden",
    ),
    s("init-only", true, "applies the conntrack sysctls and exits"),
    s(
        "proxy-mode",
        false,
        "iptables (default), ipvs, nftables, or userspace (ours)",
    ),
    s(
        "iptables-masquerade-bit",
        false,
        "the masquerade mark bit (every mode)",
    ),
    s("masquerade-all", true, "masquerade all service traffic"),
    s(
        "iptables-localhost-nodeports",
        true,
        "node ports on 127.0.0.1 (iptables mode, IPv4)",
    ),
    s(
        "iptables-sync-period",
        false,
        "the periodic sync, unless the mode is ipvs",
    ),
    s(
        "iptables-min-sync-period",
        false,
        "the minimum sync interval, unless the mode is ipvs",
    ),
    s("ipvs-sync-period", false, "the periodic sync in ipvs mode"),
    s(
        "ipvs-min-sync-period",
        false,
        "the minimum sync interval in ipvs mode",
    ),
    s("ipvs-scheduler", false, "the IPVS scheduler"),
    s(
        "ipvs-exclude-cidrs",
        false,
        "virtual servers the ipvs mode never touches",
    ),
    s("ipvs-strict-arp", true, "arp_ignore=1, arp_announce=2"),
    s("ipvs-tcp-timeout", false, "IPVS TCP idle timeout"),
    s("ipvs-tcpfin-timeout", false, "IPVS TCP FIN timeout"),
    s("ipvs-udp-timeout", false, "IPVS UDP timeout"),
    s(
        "detect-local-mode",
        false,
        "ClusterCIDR or InterfaceNamePrefix (BridgeInterface and NodeCIDR are refused with an error)",
    ),
    i(
        "pod-bridge-interface",
        false,
        "BridgeInterface detection is not supported here (--detect-local-mode=BridgeInterface is refused with an error)",
    ),
    s(
        "pod-interface-name-prefix",
        false,
        "the prefix of InterfaceNamePrefix",
    ),
    s("cluster-cidr", false, "the pod CIDRs, one per family"),
    s(
        "nodeport-addresses",
        false,
        "node-port CIDRs of both families, or `primary`",
    ),
    i(
        "oom-score-adj",
        false,
        "set it in the pod spec; the process does not adjust itself",
    ),
    s(
        "conntrack-max-per-core",
        false,
        "nf_conntrack_max = max(this × CPUs, --conntrack-min)",
    ),
    s("conntrack-min", false, "the floor of nf_conntrack_max"),
    s(
        "conntrack-tcp-timeout-established",
        false,
        "nf_conntrack_tcp_timeout_established",
    ),
    s(
        "conntrack-tcp-timeout-close-wait",
        false,
        "nf_conntrack_tcp_timeout_close_wait",
    ),
    s(
        "conntrack-tcp-be-liberal",
        true,
        "nf_conntrack_tcp_be_liberal=1",
    ),
    s("conntrack-udp-timeout", false, "nf_conntrack_udp_timeout"),
    s(
        "conntrack-udp-timeout-stream",
        false,
        "nf_conntrack_udp_timeout_stream",
    ),
    i(
        "config-sync-period",
        false,
        "watches are relisted when they break, not on a timer",
    ),
    s(
        "healthz-port",
        false,
        "the health server's port (deprecated in kube-proxy; 0 disables)",
    ),
    s(
        "metrics-port",
        false,
        "the metrics server's port (deprecated in kube-proxy; 0 disables)",
    ),
    i(
        "proxy-port-range",
        false,
        "unused since kube-proxy v1.26, as there",
    ),
    i(
        "log-flush-frequency",
        false,
        "log lines are written unbuffered",
    ),
    i("logging-format", false, "text only (tracing's format)"),
    i("log-text-split-stream", true, "every line goes to stderr"),
    i(
        "log-text-info-buffer-size",
        false,
        "log lines are written unbuffered",
    ),
    i(
        "log-json-split-stream",
        true,
        "text only (tracing's format)",
    ),
    i(
        "log-json-info-buffer-size",
        false,
        "text only (tracing's format)",
    ),
    s("v", false, "log verbosity (0-2 info, 3-4 debug, 5+ trace)"),
    s(
        "vmodule",
        false,
        "per-module verbosity (`module=N,...`, modules as tracing targets)",
    ),
    s("version", true, "prints the version and exits"),
    s("help", true, "prints the flags and exits"),
];

/// [`KUBE_PROXY_FLAGS`] as the README's Markdown table.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| kube-proxy v1.33 flag | here | what it does here, or why it is ignored |\n|---|---|---|\n",
    );
    for f in KUBE_PROXY_FLAGS {
        let name = if f.name == "v" {
            "`-v`, `--v`".to_string()
        } else if f.name == "help" {
            "`-h`, `--help`".to_string()
        } else {
            format!("`--{}`", f.name)
        };
        let (status, text) = match f.support {
            Support::Supported(t) => ("supported", t),
            Support::Ignored(t) => ("accepted, ignored with a warning", t),
        };
        out.push_str(&format!("| {name} | {status} | {text} |\n"));
    }
    out
}

/// The flags of [`KUBE_PROXY_FLAGS`] that are accepted and ignored.
pub fn ignored_flags() -> impl Iterator<Item = &'static KubeFlag> {
    KUBE_PROXY_FLAGS
        .iter()
        .filter(|f| matches!(f.support, Support::Ignored(_)))
}

/// Adds every ignored kube-proxy flag to `cmd` as a hidden argument, so
/// that a kube-proxy command line parses; [`ignored_given`] names those
/// that were given.
pub fn with_ignored_flags(mut cmd: clap::Command) -> clap::Command {
    for f in ignored_flags() {
        let mut arg = clap::Arg::new(f.name).long(f.name).hide(true);
        arg = if f.boolean {
            arg.num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .value_parser(parse_go_bool)
        } else {
            arg.num_args(1).allow_hyphen_values(true)
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

/// The ignored kube-proxy flags present in `m`, each with the reason.
pub fn ignored_given(m: &clap::ArgMatches) -> Vec<(&'static str, &'static str)> {
    ignored_flags()
        .filter(|f| m.value_source(f.name) == Some(clap::parser::ValueSource::CommandLine))
        .map(|f| match f.support {
            Support::Ignored(why) => (f.name, why),
            Support::Supported(_) => unreachable!(),
        })
        .collect()
}

/// A mark mask, `0x`-prefixed hexadecimal or decimal, as iptables spells
/// marks (`--ipvs-external-local-mark-mask`, ours).
pub fn parse_mark_mask(v: &str) -> Result<u32, String> {
    let r = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|_| format!("{:?}: not a 32-bit mark mask", proxier_core::escape(v)))
}

/// Parses a Go boolean as `strconv.ParseBool` does: `1 t T TRUE true
/// True`, `0 f F FALSE false False`.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (true or false)")),
    }
}

/// Parses a Go duration (`1h2m3s`, `500ms`, `1.5s`, `0`).
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

/// A server address as kube-proxy's `IPPortVar` takes it: `IP:port`,
/// `[IPv6]:port`, or a bare IP (the port then comes from the default);
/// empty disables the server. Returns `Ok(None)` for empty.
pub fn parse_bind(s: &str, default_port: u16) -> Result<Option<SocketAddr>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(Some(a));
    }
    match s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        Ok(ip) => Ok(Some(SocketAddr::new(ip, default_port))),
        Err(_) => Err(format!("invalid address {s:?} (IP:port, or IP)")),
    }
}

/// `--feature-gates`: `Name=true|false,...`, as kube-proxy's
/// `MapStringBool` takes it.
pub fn parse_feature_gates(s: &str) -> Result<Vec<(String, bool)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("missing bool value for {item:?} (Name=true|false)"))?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("invalid feature gate name {k:?}"));
        }
        out.push((k.to_string(), parse_go_bool(v.trim())?));
    }
    Ok(out)
}

/// `--vmodule`: `pattern=N,...`. Each pattern becomes a tracing target
/// (`backend_iptables=4` → `backend_iptables=debug`).
pub fn parse_vmodule(s: &str) -> Result<Vec<(String, u32)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: expected pattern=N"))?;
        if k.is_empty()
            || !k
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_:-".contains(c))
        {
            return Err(format!(
                "{k:?}: a module name (letters, digits, _ - ::; no globs)"
            ));
        }
        let n: u32 = v
            .parse()
            .map_err(|_| format!("{item:?}: the level must be a number"))?;
        out.push((k.replace('-', "_"), n));
    }
    Ok(out)
}

/// klog's verbosity as a tracing level: 0-2 info (kube-proxy's
/// DaemonSets run at 2), 3-4 debug, 5 and above trace.
pub fn level_of(v: u32) -> &'static str {
    match v {
        0..=2 => "info",
        3..=4 => "debug",
        _ => "trace",
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
        assert_eq!(parse_duration("2h22m").unwrap(), Duration::from_secs(8520));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn go_booleans_binds_gates_and_vmodule() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(parse_go_bool(t).unwrap());
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert!(!parse_go_bool(f).unwrap());
        }
        assert!(parse_go_bool("yes").is_err());
        assert_eq!(
            parse_bind("0.0.0.0:10256", 1).unwrap(),
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            parse_bind("::1", 10249).unwrap(),
            Some("[::1]:10249".parse().unwrap())
        );
        assert_eq!(parse_bind("", 1).unwrap(), None);
        assert!(parse_bind("localhost:1", 1).is_err());
        assert_eq!(
            parse_feature_gates("A=true, B=false").unwrap(),
            vec![("A".into(), true), ("B".into(), false)]
        );
        assert!(parse_feature_gates("A").is_err());
        assert!(parse_feature_gates("A=maybe").is_err());
        assert_eq!(
            parse_vmodule("backend-iptables=4,proxier_core=2").unwrap(),
            vec![("backend_iptables".into(), 4), ("proxier_core".into(), 2)]
        );
        assert!(parse_vmodule("proxier*=4").is_err());
        assert_eq!(level_of(2), "info");
        assert_eq!(level_of(4), "debug");
        assert_eq!(level_of(9), "trace");
    }

    #[test]
    fn the_readme_has_the_flag_table() {
        let readme = include_str!("../../README.md");
        let table = markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's flag table differs; it should be:\n{table}"
        );
    }

    #[test]
    fn the_table_has_each_flag_once() {
        let mut names: Vec<_> = KUBE_PROXY_FLAGS.iter().map(|f| f.name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
