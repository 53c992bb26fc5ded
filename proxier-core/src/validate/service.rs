//! A Service's checks: every field that can reach a rule, a netlink
//! message or a log line, as the API server's validation has them, and
//! the ports it yields for one family.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::input::{Service, ServicePortMap, ServiceType};
use crate::model::{
    IpFamily, MAX_AFFINITY_TIMEOUT_SECONDS, NamespacedName, Protocol, ServicePort, ServicePortName,
    SessionAffinity, TrafficPolicy,
};

use super::{
    ErrCtx, ObjectKind, ValidationError, is_dns1035_label, is_dns1123_label, is_label_value,
    is_port_name,
};

impl Service {
    /// Validates the service and returns its ports for `family`.
    ///
    /// A headless service, or one without a cluster IP of this family,
    /// yields no ports (as kube-proxy skips it); an invalid one yields an
    /// error that names the field.
    pub fn to_port_map(&self, family: IpFamily) -> Result<ServicePortMap, ValidationError> {
        port_map(self, family, |ns| {
            NamespacedName::new(ns, self.name.as_str())
        })
    }

    /// [`Service::to_port_map`], with the namespace of the keys given by
    /// `intern` once it is known to be valid (the tracker shares one
    /// `Arc` per namespace).
    pub(crate) fn port_map_interned(
        &self,
        family: IpFamily,
        intern: impl FnOnce(&str) -> NamespacedName,
    ) -> Result<ServicePortMap, ValidationError> {
        port_map(self, family, intern)
    }
}

/// Validates `svc` and returns its ports for `family`, keyed by the name
/// `key` gives for its namespace (called once the namespace is valid).
///
/// A headless service, or one without a cluster IP of this family,
/// yields no ports (as kube-proxy skips it); an invalid one yields an
/// error that names the field.
pub(crate) fn port_map(
    svc: &Service,
    family: IpFamily,
    key: impl FnOnce(&str) -> NamespacedName,
) -> Result<ServicePortMap, ValidationError> {
    let ctx = ErrCtx::new(ObjectKind::Service, &svc.namespace, &svc.name);
    if !is_dns1123_label(&svc.namespace) {
        return Err(ctx.err(
            "metadata.namespace",
            &svc.namespace,
            "must be a DNS-1123 label",
        ));
    }
    if !is_dns1035_label(&svc.name) {
        return Err(ctx.err("metadata.name", &svc.name, "must be a DNS-1035 label"));
    }
    // Interned (or not) only once the names are known to be valid.
    let nn = key(&svc.namespace);
    if svc.cluster_ips.len() > 2 {
        return Err(ctx.err(
            "spec.clusterIPs",
            format!("{:?}", svc.cluster_ips),
            "at most one address per family",
        ));
    }
    for (i, ip) in svc.cluster_ips.iter().enumerate() {
        if ip.is_unspecified() || ip.is_loopback() {
            return Err(ctx.err(
                format!("spec.clusterIPs[{i}]"),
                ip,
                "not a usable cluster IP",
            ));
        }
    }
    if svc.cluster_ips.len() == 2
        && IpFamily::of(&svc.cluster_ips[0]) == IpFamily::of(&svc.cluster_ips[1])
    {
        return Err(ctx.err(
            "spec.clusterIPs",
            format!("{}, {}", svc.cluster_ips[0], svc.cluster_ips[1]),
            "dual-stack cluster IPs must be of different families",
        ));
    }
    // Names, numbers and uniqueness are checked whatever the family, so
    // that a bad object is reported the same way on every proxier.
    // Repeats: a scan of the ports before while few, sets beyond.
    let few = svc.ports.len() <= 16;
    let mut names = BTreeSet::new();
    let mut port_protos = BTreeSet::new();
    for (i, p) in svc.ports.iter().enumerate() {
        let before = &svc.ports[..i];
        let f = |s: &str| format!("spec.ports[{i}].{s}");
        if p.name.is_empty() {
            if svc.ports.len() > 1 {
                return Err(ctx.err(
                    f("name"),
                    "",
                    "required when the service has more than one port",
                ));
            }
        } else if !is_port_name(&p.name) {
            return Err(ctx.err(f("name"), &p.name, "must be a DNS-1123 label"));
        }
        let repeated = match few {
            true => before.iter().any(|q| q.name == p.name),
            false => !names.insert(p.name.as_str()),
        };
        if repeated {
            return Err(ctx.err(f("name"), &p.name, "duplicate port name"));
        }
        if p.port == 0 {
            return Err(ctx.err(f("port"), 0, "must be between 1 and 65535"));
        }
        let proto = p.protocol.unwrap_or(Protocol::Tcp);
        let repeated = match few {
            true => before
                .iter()
                .any(|q| q.port == p.port && q.protocol.unwrap_or(Protocol::Tcp) == proto),
            false => !port_protos.insert((p.port, proto)),
        };
        if repeated {
            return Err(ctx.err(f("port"), p.port, "duplicate port and protocol"));
        }
        if p.node_port != 0 && svc.service_type == ServiceType::ClusterIp {
            return Err(ctx.err(
                f("nodePort"),
                p.node_port,
                "may not be used when type is ClusterIP",
            ));
        }
    }
    for (i, ip) in svc.external_ips.iter().enumerate() {
        check_special_ip(&ctx, &format!("spec.externalIPs[{i}]"), ip)?;
    }
    for (i, ip) in svc.load_balancer_ips.iter().enumerate() {
        if ip.is_unspecified() {
            return Err(ctx.err(
                format!("status.loadBalancer.ingress[{i}].ip"),
                ip,
                "may not be unspecified",
            ));
        }
    }
    let mut ranges = Vec::new();
    for (i, r) in svc.load_balancer_source_ranges.iter().enumerate() {
        let net: IpNet = r.trim().parse().map_err(|_| {
            ctx.err(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                r,
                "must be a CIDR such as 10.0.0.0/8",
            )
        })?;
        if family.matches(&net.addr()) {
            ranges.push(net.trunc());
        }
    }
    let session_affinity = match svc.session_affinity {
        SessionAffinity::ClientIp { timeout_seconds }
            if timeout_seconds == 0 || timeout_seconds > MAX_AFFINITY_TIMEOUT_SECONDS =>
        {
            return Err(ctx.err(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                timeout_seconds,
                "must be between 1 and 86400",
            ));
        }
        a => a,
    };
    for (field, v) in [
        (
            "metadata.annotations[service.kubernetes.io/topology-mode]",
            &svc.topology_annotation,
        ),
        ("spec.trafficDistribution", &svc.traffic_distribution),
    ] {
        if let Some(v) = v
            && !is_label_value(v)
        {
            return Err(ctx.err(field, v, "not a valid value"));
        }
    }

    let Some(cluster_ip) = svc
        .cluster_ips
        .iter()
        .find(|ip| family.matches(ip))
        .copied()
    else {
        return Ok(ServicePortMap::new());
    };
    let externally_accessible = matches!(
        svc.service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) || !svc.external_ips.is_empty();
    let external_policy_local =
        externally_accessible && svc.external_traffic_policy == TrafficPolicy::Local;
    let health_check_node_port =
        if svc.service_type == ServiceType::LoadBalancer && external_policy_local {
            svc.health_check_node_port
        } else {
            0
        };
    let external_ips: Vec<IpAddr> = svc
        .external_ips
        .iter()
        .filter(|ip| family.matches(ip))
        .copied()
        .collect();
    let lb_ips: Vec<IpAddr> = svc
        .load_balancer_ips
        .iter()
        .filter(|ip| family.matches(ip))
        .copied()
        .collect();
    let hints_annotation = svc.topology_annotation.as_deref().map(Arc::from);
    let traffic_distribution = svc.traffic_distribution.as_deref().map(Arc::from);

    let mut map = ServicePortMap::new();
    for p in &svc.ports {
        let name = ServicePortName {
            service: nn.clone(),
            port: Arc::from(p.name.as_str()),
            protocol: p.protocol.unwrap_or(Protocol::Tcp),
        };
        map.insert(
            name.clone(),
            Arc::new(ServicePort {
                name,
                cluster_ip,
                port: p.port,
                node_port: p.node_port,
                external_ips: external_ips.clone(),
                load_balancer_ips: lb_ips.clone(),
                load_balancer_source_ranges: ranges.clone(),
                session_affinity,
                external_policy_local,
                internal_policy_local: svc.internal_traffic_policy == TrafficPolicy::Local,
                health_check_node_port,
                hints_annotation: hints_annotation.clone(),
                traffic_distribution: traffic_distribution.clone(),
            }),
        );
    }
    Ok(map)
}

fn check_special_ip(ctx: &ErrCtx<'_>, field: &str, ip: &IpAddr) -> Result<(), ValidationError> {
    let bad = match ip {
        IpAddr::V4(v4) => {
            v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    if bad {
        return Err(ctx.err(
            field,
            ip,
            "may not be unspecified, loopback, link-local, multicast or the limited broadcast",
        ));
    }
    Ok(())
}
