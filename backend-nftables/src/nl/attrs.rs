//! Netlink attributes as nf_tables takes them: a type-length-value writer
//! with nesting. nf_tables reads every integer attribute big-endian
//! (`nla_get_be32`), and parses nests strictly, so every nest carries
//! `NLA_F_NESTED`.

/// `NLA_F_NESTED`.
pub const NLA_F_NESTED: u16 = 0x8000;

/// A buffer of attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    /// An empty buffer.
    pub fn new() -> Attrs {
        Attrs::default()
    }

    /// The encoded attributes.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Consumes the writer.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// An empty buffer with room for `bytes`.
    pub fn with_capacity(bytes: usize) -> Attrs {
        Attrs {
            buf: Vec::with_capacity(bytes),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing written yet.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Appends bytes that are not an attribute (a message header).
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }

    /// Overwrites bytes written earlier (a length or flags known late).
    pub fn patch(&mut self, at: usize, v: &[u8]) {
        self.buf[at..at + v.len()].copy_from_slice(v);
    }

    /// The bytes written so far, to change in place.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// libnftnl's user data holding one comment, `[type, len, text, 0]`,
    /// as attribute `kind`.
    pub fn comment(&mut self, kind: u16, udata_type: u8, text: &str) -> &mut Self {
        self.header(kind, text.len() + 3);
        self.buf.push(udata_type);
        self.buf.push((text.len() + 1) as u8);
        self.buf.extend_from_slice(text.as_bytes());
        self.buf.push(0);
        self.pad();
        self
    }

    fn header(&mut self, kind: u16, len: usize) {
        let len = u16::try_from(4 + len).expect("attribute over 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// Raw bytes.
    pub fn bytes_attr(&mut self, kind: u16, v: &[u8]) -> &mut Self {
        self.header(kind, v.len());
        self.buf.extend_from_slice(v);
        self.pad();
        self
    }

    /// A big-endian `u32` (`NLA_U32` in nf_tables).
    pub fn u32(&mut self, kind: u16, v: u32) -> &mut Self {
        self.bytes_attr(kind, &v.to_be_bytes())
    }

    /// A big-endian `u64`.
    pub fn u64(&mut self, kind: u16, v: u64) -> &mut Self {
        self.bytes_attr(kind, &v.to_be_bytes())
    }

    /// A NUL-terminated string.
    pub fn str(&mut self, kind: u16, s: &str) -> &mut Self {
        self.header(kind, s.len() + 1);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
        self.pad();
        self
    }

    /// A nest: `f` writes its attributes, in place.
    pub fn nested(&mut self, kind: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let start = self.buf.len();
        self.header(kind | NLA_F_NESTED, 0);
        f(self);
        let len = u16::try_from(self.buf.len() - start).expect("nest over 64 KiB");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.pad();
        self
    }

    /// Appends attributes written elsewhere.
    pub fn extend(&mut self, other: &Attrs) -> &mut Self {
        self.buf.extend_from_slice(&other.buf);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_padding_and_nests() {
        let mut a = Attrs::new();
        a.str(1, "kube-proxy").u32(2, 0x4000).nested(3, |n| {
            n.bytes_attr(1, &[10, 0, 0, 1]);
        });
        let b = a.bytes();
        // "kube-proxy\0" is 11 bytes: 15 with the header, padded to 16.
        assert_eq!(&b[0..4], &[15, 0, 1, 0]);
        assert_eq!(&b[16..24], &[8, 0, 2, 0, 0, 0, 0x40, 0]);
        assert_eq!(&b[24..28], &[12, 0, 3, 0x80]);
        assert_eq!(&b[28..36], &[8, 0, 1, 0, 10, 0, 0, 1]);
        assert_eq!(b.len(), 36);
    }
}
