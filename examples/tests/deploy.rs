//! `deploy/`: every manifest parses into the Kubernetes types, the
//! DaemonSet's exact command with the ConfigMap's configuration runs
//! `--once` in a namespace and writes its rules, the ClusterRole grants
//! what the kube source reads and no more (and nothing kube-proxy's
//! `system:node-proxier` does not), and the Containerfile copies and runs
//! what exists.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use proxier_testbed::Netns;
use serde::Deserialize;

const BIN: &str = env!("CARGO_BIN_EXE_proxier");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of `file` (YAML, `---` separated).
fn documents(file: &str) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(deploy().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(v: &serde_yaml::Value) -> T {
    serde_yaml::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v:?}"))
}

struct Manifests {
    daemonset: DaemonSet,
    configmap: ConfigMap,
    account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
}

fn manifests() -> Manifests {
    let mut ds = None;
    let mut cm = None;
    let mut sa = None;
    let mut cr = None;
    let mut crb = None;
    for file in ["daemonset.yaml", "configmap.yaml", "rbac.yaml"] {
        for d in documents(file) {
            match d["kind"].as_str().unwrap() {
                "DaemonSet" => ds = Some(typed::<DaemonSet>(&d)),
                "ConfigMap" => cm = Some(typed::<ConfigMap>(&d)),
                "ServiceAccount" => sa = Some(typed::<ServiceAccount>(&d)),
                "ClusterRole" => cr = Some(typed::<ClusterRole>(&d)),
                "ClusterRoleBinding" => crb = Some(typed::<ClusterRoleBinding>(&d)),
                k => panic!("{file}: unexpected kind {k}"),
            }
        }
    }
    Manifests {
        daemonset: ds.expect("DaemonSet"),
        configmap: cm.expect("ConfigMap"),
        account: sa.expect("ServiceAccount"),
        role: cr.expect("ClusterRole"),
        binding: crb.expect("ClusterRoleBinding"),
    }
}

#[test]
fn the_daemonset_is_kubeadms_kube_proxy_with_proxiers_image() {
    let m = manifests();
    let spec = &m.daemonset.spec;
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(
        pod.service_account_name.as_deref(),
        m.account.metadata.name.as_deref()
    );
    let tol = pod.tolerations.as_ref().unwrap();
    assert!(
        tol.iter()
            .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none())
    );
    let c = &pod.containers[0];
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
    let mounts: BTreeSet<&str> = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|v| v.mount_path.as_str())
        .collect();
    for p in ["/run/xtables.lock", "/lib/modules", "/var/lib/proxier"] {
        assert!(mounts.contains(p), "{p} not mounted");
    }
    let vols = pod.volumes.as_ref().unwrap();
    let lock = vols.iter().find(|v| v.name == "xtables-lock").unwrap();
    assert_eq!(
        lock.host_path.as_ref().unwrap().type_.as_deref(),
        Some("FileOrCreate")
    );
    let cfg = vols.iter().find(|v| v.name == "proxier-config").unwrap();
    assert_eq!(
        cfg.config_map.as_ref().unwrap().name,
        m.configmap.metadata.name.clone().unwrap()
    );
    // The binding names the role and the account.
    assert_eq!(
        m.binding.role_ref.name,
        m.role.metadata.name.clone().unwrap()
    );
    let subj = &m.binding.subjects.as_ref().unwrap()[0];
    assert_eq!(Some(&subj.name), m.account.metadata.name.as_ref());
    assert_eq!(subj.namespace, m.account.metadata.namespace);
}

/// (group, resource, verb) triples of a role.
fn grants(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in role.rules.as_ref().unwrap() {
        for g in r.api_groups.as_ref().unwrap() {
            for res in r.resources.as_ref().unwrap() {
                for v in &r.verbs {
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn the_cluster_role_grants_what_the_kube_source_reads_and_no_more() {
    let role = manifests().role;
    let granted = grants(&role);
    let used: BTreeSet<(String, String, String)> = proxier_kube::API_ACCESS
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(granted, used);
    // kube-proxy's system:node-proxier (plugin/pkg/auth/authorizer/rbac/
    // bootstrappolicy): nothing here beyond it.
    let node_proxier: BTreeSet<(String, String, String)> = [
        ("", "services", "list"),
        ("", "services", "watch"),
        ("", "endpoints", "list"),
        ("", "endpoints", "watch"),
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("", "events", "create"),
        ("", "events", "patch"),
        ("", "events", "update"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        ("events.k8s.io", "events", "update"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert!(granted.is_subset(&node_proxier), "{granted:?}");
}

/// The container's command with `$(NODE_NAME)` expanded as the kubelet does.
fn daemonset_args(ds: &DaemonSet, node: &str) -> Vec<String> {
    let c = &ds.spec.template.spec.as_ref().unwrap().containers[0];
    c.command
        .as_ref()
        .unwrap()
        .iter()
        .chain(c.args.iter().flatten())
        .map(|a| a.replace("$(NODE_NAME)", node))
        .collect()
}

#[test]
fn the_daemonsets_command_with_the_configmap_runs_once_in_a_namespace() {
    let m = manifests();
    let args = daemonset_args(&m.daemonset, "node-1");
    assert_eq!(args[0], "/usr/local/bin/proxier");
    // The ConfigMap's files at the path the DaemonSet mounts them on, in
    // a private mount namespace (`ip netns exec` makes one).
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in m.configmap.data.as_ref().unwrap() {
        std::fs::write(dir.path().join(k), v).unwrap();
    }
    let ns = Netns::new("deploy").unwrap();
    let manifest = format!("{}/manifests/cluster/echo.yaml", env!("CARGO_MANIFEST_DIR"));
    let quoted: Vec<String> = args[1..].iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "mount -t tmpfs none /var/lib && mkdir /var/lib/proxier && cp {dir}/* /var/lib/proxier/ && \
         exec {BIN} {args} --once --manifests {manifest}",
        dir = dir.path().display(),
        args = quoted.join(" "),
    );
    let out = ns.exec_unchecked("sh", &["-c", &script]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}\n{err}");
    // mode: nftables in the ConfigMap: kube-proxy's table, with the
    // service from the manifest.
    let table = String::from_utf8(
        ns.exec("nft", &["list", "table", "ip", "kube-proxy"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(table.contains("10.96.0.10"), "{table}");
    assert!(table.contains("demo/echo/tcp/http"), "{table}");
    // Both families: the ConfigMap's clusterCIDR is dual-stack.
    assert!(
        ns.exec("nft", &["list", "table", "ip6", "kube-proxy"])
            .is_ok()
    );
    // The conntrack section reached the sysctls.
    let v = String::from_utf8(
        ns.exec(
            "sysctl",
            &["-n", "net.netfilter.nf_conntrack_tcp_timeout_established"],
        )
        .unwrap()
        .stdout,
    )
    .unwrap();
    assert_eq!(v.trim(), "86400");
    // Nothing was ignored or refused on the way.
    assert!(!err.contains("WARN"), "{err}");
}

#[test]
fn the_containerfile_builds_and_runs_what_exists() {
    let text = std::fs::read_to_string(deploy().join("Containerfile")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    // It builds the `proxier` binary of the `examples` package, which exists.
    let build = lines
        .iter()
        .find(|l| l.starts_with("RUN cargo build"))
        .unwrap();
    assert!(
        build.contains("-p examples") && build.contains("--bin proxier"),
        "{build}"
    );
    assert!(Path::new(BIN).ends_with("proxier"));
    // It copies that binary to where the DaemonSet runs it from.
    let copy = lines
        .iter()
        .find(|l| l.starts_with("COPY --from=build"))
        .unwrap();
    let parts: Vec<&str> = copy.split_whitespace().collect();
    assert_eq!(parts[2], "/src/target/release/proxier");
    let ds = manifests().daemonset;
    let cmd = daemonset_args(&ds, "n");
    assert_eq!(parts[3], cmd[0]);
    assert!(text.contains(&format!("ENTRYPOINT [\"{}\"]", cmd[0])));
    // The Rust image is at least the workspace's minimum Rust.
    let from = lines
        .iter()
        .find(|l| l.starts_with("FROM") && l.contains("rust:"))
        .unwrap();
    let tag = from.split("rust:").nth(1).unwrap();
    let ver: Vec<u32> = tag
        .split('-')
        .next()
        .unwrap()
        .split('.')
        .map(|x| x.parse().unwrap())
        .collect();
    let ws = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .unwrap();
    let min = ws
        .lines()
        .find(|l| l.starts_with("rust-version"))
        .unwrap()
        .split('"')
        .nth(1)
        .unwrap()
        .split('.')
        .map(|x| x.parse::<u32>().unwrap())
        .collect::<Vec<_>>();
    assert!(ver[..2] >= min[..2], "{tag} < {min:?}");
    // The packages it installs exist in Debian (the same release as the
    // base image's: this machine's apt lists, which .ci/run refreshes).
    let install = lines
        .iter()
        .find(|l| l.contains("apt-get install"))
        .unwrap();
    let pkgs: Vec<&str> = install
        .split_whitespace()
        .skip_while(|w| *w != "--no-install-recommends")
        .skip(1)
        .take_while(|w| *w != "\\" && *w != "&&")
        .collect();
    for p in ["iptables", "ipset", "nftables", "conntrack"] {
        assert!(pkgs.contains(&p), "{p} not installed: {pkgs:?}");
    }
    let out = std::process::Command::new("apt-cache")
        .arg("show")
        .args(&pkgs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let os = std::fs::read_to_string("/etc/os-release").unwrap();
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .unwrap_or("");
    assert!(
        text.contains(&format!("debian:{codename}-slim")),
        "the runtime image is Debian {codename}, the release the packages were checked in"
    );
}
