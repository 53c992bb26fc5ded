//! [`Kept`]: what a partial sync needs to remember of one service's
//! [`Fragment`] once it is written. Chains keep their name, a 128-bit
//! digest of their rules and the number of rules; sets and elements are
//! kept whole (a delete needs the key). The rules themselves are not
//! kept: at 10,000 services × 10 endpoints they were a second copy of
//! the whole table in memory (see the nftables bench's peak RSS line).

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::layout::{Body, ElementKey, ElementValue, Fragment};
use crate::nl::msg::Set;

/// The digest of a chain's rules: two SipHash passes with different
/// prefixes (deterministic in the process; a collision, 2⁻¹²⁸, would
/// leave a changed chain unwritten until the next full sync).
pub fn digest(bodies: &[Body]) -> u128 {
    let half = |salt: u8| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        bodies.hash(&mut h);
        h.finish()
    };
    (u128::from(half(1)) << 64) | u128::from(half(2))
}

/// One chain as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptChain {
    /// Its name.
    pub name: String,
    /// [`digest`] of its rules.
    pub digest: u128,
    /// Rules in it (a numgen choice counts as one, as in
    /// [`Fragment::objects`]).
    pub bodies: usize,
    /// Rules the kernel holds for it (a numgen choice is one rule per
    /// endpoint): what a verifying sync expects to count.
    pub rules: usize,
}

/// A written [`Fragment`], compact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    /// Chains in creation order.
    pub chains: Vec<KeptChain>,
    /// Affinity sets.
    pub sets: Vec<Set>,
    /// Elements, sorted by container and key, with their verdict and
    /// comment (a vector: a map per service cost a kilobyte of nodes for
    /// its one or two elements).
    pub elements: Vec<(ElementKey, ElementValue)>,
}

impl Kept {
    /// The compact record of `f`.
    pub fn of(f: &Fragment) -> Kept {
        Kept {
            chains: f
                .chains
                .iter()
                .map(|(name, bodies)| KeptChain {
                    name: name.clone(),
                    digest: digest(bodies),
                    bodies: bodies.len(),
                    rules: bodies
                        .iter()
                        .map(|b| match b {
                            Body::Rule(..) => 1,
                            Body::Numgen(targets) => targets.len(),
                        })
                        .sum(),
                })
                .collect(),
            sets: f.sets.clone(),
            // A map iterates in key order: the vector is sorted.
            elements: f
                .elements
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The element of container and key `key`, if written.
    pub fn element(&self, key: &ElementKey) -> Option<&ElementValue> {
        self.elements
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.elements[i].1)
    }

    /// Rules and elements it holds (as [`Fragment::objects`]).
    pub fn objects(&self) -> usize {
        self.chains.iter().map(|c| c.bodies).sum::<usize>() + self.elements.len()
    }

    /// The chain named `name`, if written.
    pub fn chain(&self, name: &str) -> Option<&KeptChain> {
        self.chains.iter().find(|c| c.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nl::expr::{Expr, Verdict};

    fn rule(v: Verdict) -> Body {
        Body::Rule(vec![Expr::Verdict(v)], None)
    }

    #[test]
    fn digest_tells_rules_apart_and_keeps_counts() {
        let a = vec![rule(Verdict::Accept)];
        let b = vec![rule(Verdict::Drop)];
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&[]));
        let mut f = Fragment::default();
        f.chains
            .push(("c".into(), vec![rule(Verdict::Accept), rule(Verdict::Drop)]));
        f.elements
            .insert(("service-ips", vec![1, 2]), (Some(Verdict::Accept), None));
        let objects = f.objects();
        let k = Kept::of(&f);
        assert_eq!(k.objects(), objects);
        assert_eq!(k.objects(), 3);
        assert_eq!(k.chain("c").map(|c| c.bodies), Some(2));
        assert!(k.chain("d").is_none());
        assert_eq!(
            k.element(&("service-ips", vec![1, 2])),
            Some(&(Some(Verdict::Accept), None))
        );
        assert_eq!(k.element(&("service-ips", vec![1, 3])), None);
        f.chains.push((
            "n".into(),
            vec![Body::Numgen(vec!["a".into(), "b".into(), "c".into()])],
        ));
        let k = Kept::of(&f);
        let n = k.chain("n").unwrap();
        assert_eq!(
            (n.bodies, n.rules),
            (1, 3),
            "a numgen choice is one rule per endpoint"
        );
    }
}
