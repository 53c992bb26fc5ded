//! The firewall marks of the virtual servers for traffic from inside to
//! `externalTrafficPolicy: Local` services: one per service port, taken
//! from the bits of [`Config::external_local_mark_mask`](crate::Config),
//! kept while the service port wants one, and adopted from
//! `KUBE-EXTERNAL-LOCAL-MARK` after a restart so that a restart changes
//! nothing. No I/O.
//!
//! Check by hand with `ipvsadm -Ln` (`FWM` lines) and
//! `ipset list KUBE-EXTERNAL-LOCAL-MARK` (the `skbmark` of each entry).

use std::collections::{BTreeSet, HashMap};

use proxier_core::ServicePortName;

/// The allocator. Marks are `index << shift` for `index` in
/// `1..=max`.
#[derive(Debug, Clone)]
pub struct Marks {
    mask: u32,
    shift: u32,
    max: u32,
    by_name: HashMap<ServicePortName, u32>,
    used: BTreeSet<u32>,
    /// Indexes below `high` not in use.
    free: BTreeSet<u32>,
    /// The lowest index never handed out.
    high: u32,
}

impl Marks {
    /// An allocator over `mask`, a contiguous run of bits (checked by
    /// `Config::validate`).
    pub fn new(mask: u32) -> Marks {
        let shift = mask.trailing_zeros().min(31);
        Marks {
            mask,
            shift,
            max: mask >> shift,
            by_name: HashMap::new(),
            used: BTreeSet::new(),
            free: BTreeSet::new(),
            high: 1,
        }
    }

    /// The mask.
    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// Whether `mark` is one this allocator could hand out (a virtual
    /// server with it is ours).
    pub fn covers(&self, mark: u32) -> bool {
        mark != 0 && mark & !self.mask == 0
    }

    /// Whether `mark` is handed out.
    pub fn in_use(&self, mark: u32) -> bool {
        self.covers(mark) && self.used.contains(&(mark >> self.shift))
    }

    /// The mark of `name`, if it has one.
    pub fn get(&self, name: &ServicePortName) -> Option<u32> {
        self.by_name.get(name).map(|i| i << self.shift)
    }

    /// The mark of `name`, handing one out when it has none: `hint` (a
    /// mark found in the kernel for its destinations) when it is free,
    /// else the lowest free one. `None` when every mark is taken.
    pub fn assign(&mut self, name: &ServicePortName, hint: Option<u32>) -> Option<u32> {
        if let Some(m) = self.get(name) {
            return Some(m);
        }
        let hinted = hint
            .filter(|m| self.covers(*m))
            .map(|m| m >> self.shift)
            .filter(|i| !self.used.contains(i));
        let index = match hinted {
            Some(i) => {
                if i >= self.high {
                    self.free.extend(self.high..i);
                    self.high = i + 1;
                } else {
                    self.free.remove(&i);
                }
                i
            }
            None => match self.free.pop_first() {
                Some(i) => i,
                None if self.high <= self.max => {
                    self.high += 1;
                    self.high - 1
                }
                None => return None,
            },
        };
        self.used.insert(index);
        self.by_name.insert(name.clone(), index);
        Some(index << self.shift)
    }

    /// Gives `name`'s mark back.
    pub fn release(&mut self, name: &ServicePortName) {
        if let Some(i) = self.by_name.remove(name) {
            self.used.remove(&i);
            self.free.insert(i);
        }
    }

    /// Keeps the marks of the names `keep` accepts.
    pub fn retain(&mut self, keep: impl Fn(&ServicePortName) -> bool) {
        let gone: Vec<ServicePortName> =
            self.by_name.keys().filter(|n| !keep(n)).cloned().collect();
        for n in &gone {
            self.release(n);
        }
    }
}

/// The mark of a `KUBE-EXTERNAL-LOCAL-MARK` entry as `ipset save` prints
/// it (`10.0.0.5,tcp:80 skbmark 0x10000/0xffff0000`), with its element.
pub fn parse_entry(e: &str) -> Option<(&str, u32)> {
    let mut w = e.split(' ');
    let elem = w.next()?;
    let (Some("skbmark"), Some(v)) = (w.next(), w.next()) else {
        return None;
    };
    let v = v.split('/').next()?;
    let m = u32::from_str_radix(v.strip_prefix("0x")?, 16).ok()?;
    Some((elem, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxier_core::{NamespacedName, Protocol};
    use std::sync::Arc;

    fn n(s: &str) -> ServicePortName {
        ServicePortName {
            service: NamespacedName::new("ns", s),
            port: Arc::from("p"),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn marks_are_handed_out_kept_reused_and_adopted() {
        let mut m = Marks::new(0xffff_0000);
        assert_eq!(m.assign(&n("a"), None), Some(0x1_0000));
        assert_eq!(m.assign(&n("b"), None), Some(0x2_0000));
        assert_eq!(m.assign(&n("a"), None), Some(0x1_0000), "kept");
        m.release(&n("a"));
        assert_eq!(m.assign(&n("c"), None), Some(0x1_0000), "reused");
        // A hint from the kernel is taken when free, leaving the gap free.
        assert_eq!(m.assign(&n("d"), Some(0x5_0000)), Some(0x5_0000));
        assert_eq!(m.assign(&n("e"), Some(0x5_0000)), Some(0x3_0000));
        assert_eq!(m.assign(&n("f"), Some(0x4000)), Some(0x4_0000), "outside");
        assert_eq!(m.assign(&n("g"), None), Some(0x6_0000));
        assert!(m.covers(0x6_0000) && !m.covers(0x4000) && !m.covers(0));
        assert!(m.in_use(0x6_0000) && !m.in_use(0x7_0000));
        m.retain(|x| x == &n("g"));
        assert_eq!(m.by_name.len(), 1);
        // A one-bit mask has one mark.
        let mut one = Marks::new(0x10_0000);
        assert_eq!(one.assign(&n("a"), None), Some(0x10_0000));
        assert_eq!(one.assign(&n("b"), None), None);
        assert_eq!(
            parse_entry("10.0.0.5,tcp:80 skbmark 0x10000/0xffff0000"),
            Some(("10.0.0.5,tcp:80", 0x10000))
        );
        assert_eq!(parse_entry("10.0.0.5,tcp:80"), None);
    }
}
