//! Round robin with ClientIP affinity: kube-proxy's `LoadBalancerRR`
//! (`pkg/proxy/userspace/roundrobin.go`) for one service port. Pure: the
//! caller passes the time, so tests need no clock.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Why no endpoint could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    /// The service port has no (selected) endpoints.
    #[error("no endpoints")]
    NoEndpoints,
}

#[derive(Debug, Clone, Copy)]
struct Sticky {
    endpoint: SocketAddr,
    last_used: Instant,
}

/// The balancer of one service port.
#[derive(Debug, Clone)]
pub struct Balancer {
    endpoints: Vec<SocketAddr>,
    index: usize,
    /// Affinity timeout when ClientIP affinity is on.
    ttl: Option<Duration>,
    sticky: HashMap<IpAddr, Sticky>,
    seed: u64,
}

impl Balancer {
    /// A balancer; `affinity` is the ClientIP timeout, if affinity is on.
    /// `seed` decides where round robin starts after each endpoint change
    /// (the original shuffled), so that many proxies do not all pick the
    /// same first endpoint.
    pub fn new(affinity: Option<Duration>, seed: u64) -> Self {
        Balancer {
            endpoints: Vec::new(),
            index: 0,
            ttl: affinity,
            sticky: HashMap::new(),
            seed,
        }
    }

    /// The current endpoints, in round-robin order.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Whether `ep` is still one of the endpoints.
    pub fn has(&self, ep: &SocketAddr) -> bool {
        self.endpoints.contains(ep)
    }

    /// Number of clients with a live affinity entry.
    pub fn sticky_clients(&self) -> usize {
        self.sticky.len()
    }

    /// Replaces the endpoints. Unchanged sets (in any order) keep the
    /// round-robin position and every affinity entry; otherwise entries
    /// pointing at removed endpoints are dropped and round robin restarts
    /// at a seed-chosen offset.
    pub fn set_endpoints(&mut self, mut eps: Vec<SocketAddr>) {
        eps.sort_unstable();
        eps.dedup();
        if eps == self.endpoints {
            return;
        }
        self.sticky
            .retain(|_, s| eps.binary_search(&s.endpoint).is_ok());
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.index = if eps.is_empty() {
            0
        } else {
            (self.seed >> 33) as usize % eps.len()
        };
        self.endpoints = eps;
    }

    /// Picks the endpoint for a new connection from `client`
    /// (`NextEndpoint`). `reset` (after a failed connect) skips the
    /// affinity entry and moves on in round robin.
    pub fn pick(
        &mut self,
        client: IpAddr,
        reset: bool,
        now: Instant,
    ) -> Result<SocketAddr, PickError> {
        if self.endpoints.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        if let Some(ttl) = self.ttl
            && !reset
            && let Some(s) = self.sticky.get_mut(&client)
            && now.saturating_duration_since(s.last_used) < ttl
        {
            s.last_used = now;
            return Ok(s.endpoint);
        }
        let ep = self.endpoints[self.index % self.endpoints.len()];
        self.index = (self.index + 1) % self.endpoints.len();
        if self.ttl.is_some() {
            self.sticky.insert(
                client,
                Sticky {
                    endpoint: ep,
                    last_used: now,
                },
            );
        }
        Ok(ep)
    }

    /// Drops affinity entries idle for the timeout or longer
    /// (`CleanupStaleStickySessions`).
    pub fn expire(&mut self, now: Instant) {
        if let Some(ttl) = self.ttl {
            self.sticky
                .retain(|_, s| now.saturating_duration_since(s.last_used) < ttl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    fn client(i: u8) -> IpAddr {
        IpAddr::from([192, 168, 0, i])
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let mut b = Balancer::new(None, 7);
        b.set_endpoints(eps(3));
        let now = Instant::now();
        let picks: Vec<_> = (0..6)
            .map(|_| b.pick(client(1), false, now).unwrap())
            .collect();
        assert_eq!(picks[0..3], picks[3..6]);
        let mut first = picks[0..3].to_vec();
        first.sort();
        assert_eq!(first, eps(3));
    }

    #[test]
    fn no_endpoints_is_an_error() {
        let mut b = Balancer::new(None, 0);
        assert_eq!(
            b.pick(client(1), false, Instant::now()),
            Err(PickError::NoEndpoints)
        );
        b.set_endpoints(eps(1));
        b.set_endpoints(vec![]);
        assert_eq!(
            b.pick(client(1), false, Instant::now()),
            Err(PickError::NoEndpoints)
        );
    }

    #[test]
    fn affinity_sticks_until_the_timeout() {
        let ttl = Duration::from_secs(10);
        let mut b = Balancer::new(Some(ttl), 3);
        b.set_endpoints(eps(4));
        let t0 = Instant::now();
        let first = b.pick(client(1), false, t0).unwrap();
        for s in 1..=9 {
            assert_eq!(
                b.pick(client(1), false, t0 + Duration::from_secs(s))
                    .unwrap(),
                first
            );
        }
        // Each use refreshes the entry: 9 s + 9 s is still sticky.
        assert_eq!(
            b.pick(client(1), false, t0 + Duration::from_secs(18))
                .unwrap(),
            first
        );
        // Idle for the whole timeout: a fresh pick (the next in turn).
        let later = b
            .pick(client(1), false, t0 + Duration::from_secs(40))
            .unwrap();
        assert_ne!(later, first);
        // Other clients are spread.
        let others: std::collections::BTreeSet<_> = (2..10)
            .map(|i| b.pick(client(i), false, t0).unwrap())
            .collect();
        assert_eq!(others.len(), 4);
    }

    #[test]
    fn reset_skips_the_sticky_endpoint() {
        let mut b = Balancer::new(Some(Duration::from_secs(60)), 1);
        b.set_endpoints(eps(2));
        let now = Instant::now();
        let first = b.pick(client(1), false, now).unwrap();
        let second = b.pick(client(1), true, now).unwrap();
        assert_ne!(first, second);
        // The reset pick became the sticky one.
        assert_eq!(b.pick(client(1), false, now).unwrap(), second);
    }

    #[test]
    fn endpoint_changes_drop_only_affected_affinity() {
        let mut b = Balancer::new(Some(Duration::from_secs(60)), 5);
        b.set_endpoints(eps(3));
        let now = Instant::now();
        let picks: Vec<_> = (1..=3)
            .map(|i| b.pick(client(i), false, now).unwrap())
            .collect();
        let removed = picks[0];
        let keep: Vec<_> = eps(3).into_iter().filter(|e| *e != removed).collect();
        b.set_endpoints(keep.clone());
        assert!(!b.has(&removed));
        assert_eq!(b.sticky_clients(), 2);
        assert_eq!(b.pick(client(2), false, now).unwrap(), picks[1]);
        assert_ne!(b.pick(client(1), false, now).unwrap(), removed);
        // The same set in another order changes nothing.
        let mut rev = keep.clone();
        rev.reverse();
        b.set_endpoints(rev);
        assert_eq!(b.sticky_clients(), 3);
    }

    #[test]
    fn expire_removes_idle_entries() {
        let mut b = Balancer::new(Some(Duration::from_secs(5)), 0);
        b.set_endpoints(eps(2));
        let t0 = Instant::now();
        b.pick(client(1), false, t0).unwrap();
        b.pick(client(2), false, t0 + Duration::from_secs(4))
            .unwrap();
        b.expire(t0 + Duration::from_secs(6));
        assert_eq!(b.sticky_clients(), 1);
    }
}
