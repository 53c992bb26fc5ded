//! The rule text helpers every section shares: comments as kube-proxy
//! quotes them, the `-m P -p P -d IP --dport PORT` match, addresses and
//! numbers written without the formatting machinery, probabilities.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use proxier_core::ServicePortName;
use proxier_netfilter::safe_service_port_name;

use super::RenderError;

pub(super) fn check_name(name: &ServicePortName) -> Result<String, RenderError> {
    if safe_service_port_name(name) {
        Ok(name.to_string())
    } else {
        Err(RenderError {
            service: name.to_string(),
            reason: "name is not a DNS label and cannot go into an iptables comment",
        })
    }
}

/// `computeProbability`: `1/n` with ten decimals.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

pub(super) struct Probabilities(pub(super) Vec<String>);

impl Probabilities {
    pub(super) fn get(&mut self, n: usize) -> &str {
        while self.0.len() <= n {
            let k = self.0.len();
            self.0.push(if k == 0 {
                String::new()
            } else {
                probability(k)
            });
        }
        &self.0[n]
    }
}

/// Writes ` -m comment --comment TEXT`, quoting when there is a space
/// (as kube-proxy writes it). `text` is made only of safe names and
/// fixed words.
pub(super) fn comment(out: &mut String, text: &str) {
    out.push_str(" -m comment --comment ");
    if text.contains(' ') {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(text);
    }
}

/// ` -m comment --comment "A B C"` from parts (no allocation).
pub(super) fn comment_parts(out: &mut String, parts: &[&str]) {
    out.push_str(" -m comment --comment ");
    let quote = parts.iter().any(|p| p.contains(' '));
    if quote {
        out.push('"');
    }
    for p in parts {
        out.push_str(p);
    }
    if quote {
        out.push('"');
    }
}

/// ` -m P -p P -d IP --dport PORT`
pub(super) fn match_dst(out: &mut String, proto: &str, ip: IpAddr, port: u16) {
    out.push_str(" -m ");
    out.push_str(proto);
    out.push_str(" -p ");
    out.push_str(proto);
    out.push_str(" -d ");
    push_ip(out, ip);
    out.push_str(" --dport ");
    push_u32(out, u32::from(port));
}

/// `-A CHAIN -m comment --comment "…" -m P -p P -d IP --dport PORT -j TARGET`:
/// the shape of every rule that matches a service address.
pub(super) fn dst_rule(
    out: &mut String,
    chain: &str,
    comment: &[&str],
    proto: &str,
    ip: IpAddr,
    port: u16,
    target: &str,
) {
    out.push_str("-A ");
    out.push_str(chain);
    comment_parts(out, comment);
    match_dst(out, proto, ip, port);
    jump(out, target);
}

/// Decimal digits without the formatting machinery (a tenth of the
/// render time went to `Display` for addresses).
pub(super) fn push_u32(out: &mut String, mut n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(b as char);
    }
}

/// An address as `Display` writes it; IPv4 by hand.
pub(super) fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            push_u32(out, u32::from(o[0]));
            for b in &o[1..] {
                out.push('.');
                push_u32(out, u32::from(*b));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// `ip:port`, or `[ip6]:port`, as `SocketAddr`'s `Display`.
pub(super) fn push_socket(out: &mut String, addr: SocketAddr) {
    if addr.is_ipv6() {
        out.push('[');
        push_ip(out, addr.ip());
        out.push(']');
    } else {
        push_ip(out, addr.ip());
    }
    out.push(':');
    push_u32(out, u32::from(addr.port()));
}

pub(super) fn jump(out: &mut String, target: &str) {
    out.push_str(" -j ");
    out.push_str(target);
    out.push('\n');
}
