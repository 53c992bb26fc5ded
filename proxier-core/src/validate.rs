//! Validation: the checks the API server would have made, so that nothing
//! that could not appear in a real cluster ever reaches a rule.
//!
//! Every error names the object (`kind namespace/name`), the field (in the
//! API's own path syntax, `spec.ports[1].port`) and the offending value.

use std::fmt;

pub(crate) mod service;
pub(crate) mod slice;

/// The kind of object an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A Service.
    Service,
    /// A discovery/v1 EndpointSlice.
    EndpointSlice,
    /// A Node.
    Node,
    /// Something whose kind could not be read.
    Unknown,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
            ObjectKind::Unknown => "object",
        })
    }
}

/// An object that was rejected: it changes nothing, every other object
/// keeps working.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{kind} {}: {}: {} (got {value:?})",
    Escaped(object),
    Escaped(field),
    Escaped(reason)
)]
pub struct ValidationError {
    /// What kind of object.
    pub kind: ObjectKind,
    /// `namespace/name` (or the node's name).
    pub object: String,
    /// The field path, e.g. `spec.ports[0].port`.
    pub field: String,
    /// The offending value, as text.
    pub value: String,
    /// Why it is rejected.
    pub reason: String,
}

/// Text from an object, shown so that it cannot forge a log line: control
/// characters (a newline in a name), backslashes and quotes are escaped
/// as Rust escapes them (`\n`, `\u{1b}`); everything else is shown as is.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.chars().all(|c| !c.is_control() && c != '\\') {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            if c.is_control() || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// [`Escaped`] as a `String`.
pub fn escape(s: &str) -> String {
    Escaped(s).to_string()
}

/// Builds errors for one object. Borrows the names: the happy path
/// formats nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrCtx<'a> {
    pub kind: ObjectKind,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl<'a> ErrCtx<'a> {
    pub fn new(kind: ObjectKind, namespace: &'a str, name: &'a str) -> Self {
        ErrCtx {
            kind,
            namespace,
            name,
        }
    }

    pub fn err(
        &self,
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> ValidationError {
        let object = if self.namespace.is_empty() {
            self.name.to_string()
        } else {
            format!("{}/{}", self.namespace, self.name)
        };
        ValidationError {
            kind: self.kind,
            object,
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 label: 1..=63 of `[a-z0-9-]`, starting and ending
/// alphanumeric (namespaces, port names).
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter (service
/// names).
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters
/// (EndpointSlice and Node names). One pass: every label starts and ends
/// alphanumeric.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 253 {
        return false;
    }
    // What came before: `.` at a label's start.
    let mut prev = b'.';
    for &c in b {
        let ok = match c {
            b'a'..=b'z' | b'0'..=b'9' => true,
            b'-' => prev != b'.',
            b'.' => prev != b'.' && prev != b'-',
            _ => false,
        };
        if !ok {
            return false;
        }
        prev = c;
    }
    prev != b'.' && prev != b'-'
}

/// A label value: empty, or 1..=63 of `[A-Za-z0-9_.-]` starting and ending
/// alphanumeric (zones, hints).
pub fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

/// A port name as Kubernetes allows it on a Service: a DNS-1123 label.
pub fn is_port_name(s: &str) -> bool {
    is_dns1123_label(s)
}

impl crate::input::Node {
    /// Checks the name and the zone label.
    pub fn validate(&self) -> Result<(), ValidationError> {
        node(self)
    }
}

/// A Node's checks: its name and its zone label.
pub(crate) fn node(node: &crate::input::Node) -> Result<(), ValidationError> {
    use crate::input::LABEL_TOPOLOGY_ZONE;
    let ctx = ErrCtx::new(ObjectKind::Node, "", &node.name);
    if !is_dns1123_subdomain(&node.name) {
        return Err(ctx.err("metadata.name", &node.name, "must be a DNS-1123 subdomain"));
    }
    if let Some(z) = node.labels.get(LABEL_TOPOLOGY_ZONE)
        && !is_label_value(z)
    {
        return Err(ctx.err(
            format!("metadata.labels[{LABEL_TOPOLOGY_ZONE}]"),
            z,
            "must be a label value",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_cannot_forge_a_line() {
        let e = ErrCtx::new(ObjectKind::Service, "bad", "a\nCOMMIT\n*filter").err(
            "metadata.name",
            "a\nCOMMIT",
            "not a DNS-1035 label",
        );
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("bad/a\\nCOMMIT\\n*filter"), "{text}");
        assert_eq!(escape("web-1"), "web-1");
        assert_eq!(escape("x\u{1b}[2J\\"), "x\\u{1b}[2J\\\\");
    }

    #[test]
    fn names() {
        assert!(is_dns1123_label("ns-1"));
        assert!(!is_dns1123_label("-ns"));
        assert!(!is_dns1123_label("Ns"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1035_label("svc1"));
        assert!(!is_dns1035_label("1svc"));
        assert!(is_dns1123_subdomain("node-1.example.com"));
        assert!(!is_dns1123_subdomain("node..x"));
        assert!(!is_dns1123_subdomain("--flag"));
        assert!(is_label_value("us-east-1a"));
        assert!(is_label_value(""));
        assert!(!is_label_value("a\"b"));
        assert!(!is_label_value("a\nb"));
        for bad in ["", ".", "a.", ".a", "a-", "a-.b", "a.-b", "a_b", "A", "a b"] {
            assert!(!is_dns1123_subdomain(bad), "{bad:?}");
        }
        assert!(is_dns1123_subdomain(&"a".repeat(253)));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
    }

    /// Kubernetes' definition, label by label.
    fn subdomain_by_labels(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                let b = l.as_bytes();
                !b.is_empty()
                    && is_alnum_lower(b[0])
                    && is_alnum_lower(b[b.len() - 1])
                    && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
            })
    }

    proptest::proptest! {
        #[test]
        fn subdomain_one_pass_agrees(s in "[a-c0-1.\\-_A]{0,12}") {
            proptest::prop_assert_eq!(is_dns1123_subdomain(&s), subdomain_by_labels(&s), "{:?}", s);
        }
    }
}
