//! An EndpointSlice's checks: names, ports and endpoint addresses, as
//! the API server's validation has them.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::input::EndpointSlice;
use crate::model::Protocol;

use super::{
    ErrCtx, ObjectKind, ValidationError, is_dns1035_label, is_dns1123_label, is_dns1123_subdomain,
    is_label_value, is_port_name,
};

impl EndpointSlice {
    /// Checks every field that can reach a rule.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.validate_allowing(false)
    }

    /// [`EndpointSlice::validate`], accepting loopback endpoint addresses
    /// when `loopback` is set (local testing; the API server refuses them).
    pub fn validate_allowing(&self, loopback: bool) -> Result<(), ValidationError> {
        check(self, loopback)
    }
}

/// Checks every field of `slice` that can reach a rule; loopback endpoint
/// addresses pass when `loopback` is set (local testing; the API server
/// refuses them).
pub(crate) fn check(slice: &EndpointSlice, loopback: bool) -> Result<(), ValidationError> {
    let ctx = ErrCtx::new(ObjectKind::EndpointSlice, &slice.namespace, &slice.name);
    if !is_dns1123_label(&slice.namespace) {
        return Err(ctx.err(
            "metadata.namespace",
            &slice.namespace,
            "must be a DNS-1123 label",
        ));
    }
    if !is_dns1123_subdomain(&slice.name) {
        return Err(ctx.err("metadata.name", &slice.name, "must be a DNS-1123 subdomain"));
    }
    if !is_dns1035_label(&slice.service_name) {
        return Err(ctx.err(
            "metadata.labels[kubernetes.io/service-name]",
            &slice.service_name,
            "must name a service (DNS-1035 label)",
        ));
    }
    let few = slice.ports.len() <= 16;
    let mut names = BTreeSet::new();
    for (i, p) in slice.ports.iter().enumerate() {
        if !p.name.is_empty() && !is_port_name(&p.name) {
            return Err(ctx.err(
                format!("ports[{i}].name"),
                &p.name,
                "must be a DNS-1123 label",
            ));
        }
        let proto = p.protocol.unwrap_or(Protocol::Tcp);
        let repeated = match few {
            true => slice.ports[..i]
                .iter()
                .any(|q| q.name == p.name && q.protocol.unwrap_or(Protocol::Tcp) == proto),
            false => !names.insert((p.name.as_str(), proto)),
        };
        if repeated {
            return Err(ctx.err(format!("ports[{i}].name"), &p.name, "duplicate port name"));
        }
        if p.port == Some(0) {
            return Err(ctx.err(format!("ports[{i}].port"), 0, "must be between 1 and 65535"));
        }
    }
    let mut last_node: Option<&str> = None;
    for (i, ep) in slice.endpoints.iter().enumerate() {
        for (j, a) in ep.addresses.iter().enumerate() {
            if !slice.address_type.matches(a) {
                return Err(ctx.err(
                    format!("endpoints[{i}].addresses[{j}]"),
                    a,
                    format!("does not match addressType {}", slice.address_type),
                ));
            }
            if let Some(why) = unusable_endpoint(a, loopback) {
                return Err(ctx.err(format!("endpoints[{i}].addresses[{j}]"), a, why));
            }
        }
        // Endpoints of one node come in runs: check a name once per run.
        if let Some(n) = &ep.node_name
            && last_node != Some(n.as_str())
        {
            if !is_dns1123_subdomain(n) {
                return Err(ctx.err(
                    format!("endpoints[{i}].nodeName"),
                    n,
                    "must be a DNS-1123 subdomain",
                ));
            }
            last_node = Some(n);
        }
        if let Some(z) = &ep.zone
            && !is_label_value(z)
        {
            return Err(ctx.err(format!("endpoints[{i}].zone"), z, "must be a label value"));
        }
        for (j, z) in ep.hint_zones.iter().enumerate() {
            if !is_label_value(z) || z.is_empty() {
                return Err(ctx.err(
                    format!("endpoints[{i}].hints.forZones[{j}].name"),
                    z,
                    "must be a label value",
                ));
            }
        }
        for (j, n) in ep.hint_nodes.iter().enumerate() {
            if !is_dns1123_subdomain(n) {
                return Err(ctx.err(
                    format!("endpoints[{i}].hints.forNodes[{j}].name"),
                    n,
                    "must be a DNS-1123 subdomain",
                ));
            }
        }
    }
    Ok(())
}

/// Why an endpoint address is refused, as the API server's EndpointSlice
/// validation refuses it (`ValidateEndpointIP`), and the limited
/// broadcast: `None` when it is usable.
fn unusable_endpoint(a: &IpAddr, loopback: bool) -> Option<&'static str> {
    if a.is_unspecified() {
        return Some("may not be unspecified");
    }
    if a.is_loopback() && !loopback {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    if a.is_multicast() {
        return Some("may not be a multicast address");
    }
    match a {
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
        }
        IpAddr::V4(v4) if v4.is_broadcast() => Some("may not be the limited broadcast address"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {
            Some("may not be in the link-local range (169.254.0.0/16, fe80::/10)")
        }
        _ => None,
    }
}
