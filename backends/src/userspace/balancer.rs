//! Round-robin endpoint choice with ClientIP session affinity, as kube-proxy's
//! userspace `LoadBalancerRR`: each new connection (or UDP session) takes
//! the next endpoint; with affinity, a client IP keeps its endpoint while it
//! keeps coming back within the timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// The endpoints of one pool (cluster or local) of one service port.
#[derive(Debug, Default)]
pub struct Balancer {
    endpoints: Vec<SocketAddr>,
    next: usize,
    affinity: Option<Affinity>,
}

#[derive(Debug)]
struct Affinity {
    timeout: Duration,
    /// Client IP -> (endpoint, last time it was handed out).
    clients: HashMap<IpAddr, (SocketAddr, Instant)>,
}

impl Balancer {
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// Replaces the endpoint list. Clients pinned to an endpoint that is gone
    /// lose their affinity (kube-proxy's `removeStaleAffinity`); the rotation
    /// carries on where it was, so frequent updates do not favour the first
    /// endpoints.
    pub fn set_endpoints(&mut self, endpoints: Vec<SocketAddr>) {
        if let Some(a) = &mut self.affinity {
            a.clients.retain(|_, (ep, _)| endpoints.contains(ep));
        }
        self.next = if endpoints.is_empty() {
            0
        } else {
            self.next % endpoints.len()
        };
        self.endpoints = endpoints;
    }

    /// Turns ClientIP affinity on with `timeout`, or off with `None`. A new
    /// timeout keeps the existing pins; turning it off forgets them.
    pub fn set_affinity(&mut self, timeout: Option<Duration>) {
        match (timeout, &mut self.affinity) {
            (None, _) => self.affinity = None,
            (Some(t), Some(a)) => a.timeout = t,
            (Some(t), None) => {
                self.affinity = Some(Affinity {
                    timeout: t,
                    clients: HashMap::new(),
                })
            }
        }
    }

    /// The endpoint for a new connection from `client`. `reset` ignores the
    /// client's pin (the pinned endpoint just failed to connect) and pins the
    /// next one instead.
    pub fn next(&mut self, client: IpAddr, now: Instant, reset: bool) -> Option<SocketAddr> {
        if self.endpoints.is_empty() {
            return None;
        }
        if let Some(a) = &mut self.affinity
            && !reset
            && let Some((ep, last)) = a.clients.get_mut(&client)
            && now.saturating_duration_since(*last) < a.timeout
        {
            *last = now;
            return Some(*ep);
        }
        let ep = self.endpoints[self.next];
        self.next = (self.next + 1) % self.endpoints.len();
        if let Some(a) = &mut self.affinity {
            a.clients.insert(client, (ep, now));
        }
        Some(ep)
    }

    /// Forgets pins older than the timeout, so the table does not grow with
    /// every client ever seen.
    pub fn expire(&mut self, now: Instant) {
        if let Some(a) = &mut self.affinity {
            let timeout = a.timeout;
            a.clients
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < timeout);
        }
    }

    /// Clients currently pinned.
    pub fn pinned(&self) -> usize {
        self.affinity.as_ref().map_or(0, |a| a.clients.len())
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ep(last: u8) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 244, 0, last), 8080))
    }

    fn client(last: u8) -> IpAddr {
        Ipv4Addr::new(10, 244, 1, last).into()
    }

    fn picks(b: &mut Balancer, from: IpAddr, n: usize, now: Instant) -> Vec<u8> {
        (0..n)
            .map(|_| match b.next(from, now, false).unwrap().ip() {
                IpAddr::V4(ip) => ip.octets()[3],
                IpAddr::V6(ip) => ip.octets()[15],
            })
            .collect()
    }

    #[test]
    fn empty_pool_has_no_endpoint() {
        let mut b = Balancer::default();
        assert_eq!(b.next(client(1), Instant::now(), false), None);
        b.set_affinity(Some(Duration::from_secs(10)));
        assert_eq!(b.next(client(1), Instant::now(), false), None);
    }

    #[test]
    fn round_robin_cycles_through_every_endpoint_in_turn() {
        let mut b = Balancer::default();
        b.set_endpoints(vec![ep(1), ep(2), ep(3)]);
        let now = Instant::now();
        assert_eq!(picks(&mut b, client(1), 7, now), [1, 2, 3, 1, 2, 3, 1]);
        // Without affinity another client just continues the rotation.
        assert_eq!(picks(&mut b, client(2), 2, now), [2, 3]);
    }

    #[test]
    fn rotation_survives_endpoint_updates_and_skips_removed_ones() {
        let mut b = Balancer::default();
        b.set_endpoints(vec![ep(1), ep(2), ep(3)]);
        let now = Instant::now();
        assert_eq!(picks(&mut b, client(1), 2, now), [1, 2]);
        b.set_endpoints(vec![ep(1), ep(3)]);
        assert_eq!(picks(&mut b, client(1), 4, now), [1, 3, 1, 3]);
        b.set_endpoints(vec![]);
        assert_eq!(b.next(client(1), now, false), None);
        b.set_endpoints(vec![ep(4)]);
        assert_eq!(picks(&mut b, client(1), 2, now), [4, 4]);
    }

    #[test]
    fn affinity_pins_each_client_until_its_timeout() {
        let mut b = Balancer::default();
        b.set_endpoints(vec![ep(1), ep(2), ep(3)]);
        b.set_affinity(Some(Duration::from_secs(10)));
        let t0 = Instant::now();
        assert_eq!(picks(&mut b, client(1), 4, t0), [1, 1, 1, 1]);
        assert_eq!(picks(&mut b, client(2), 3, t0), [2, 2, 2]);
        // Each use refreshes the pin: 9 s apart, three times, still pinned.
        let mut t = t0;
        for _ in 0..3 {
            t += Duration::from_secs(9);
            assert_eq!(picks(&mut b, client(1), 1, t), [1]);
        }
        // Idle for the whole timeout: the pin expired, the rotation decides.
        let late = t + Duration::from_secs(10);
        assert_eq!(picks(&mut b, client(1), 2, late), [3, 3]);
    }

    #[test]
    fn expire_forgets_only_idle_clients() {
        let mut b = Balancer::default();
        b.set_endpoints(vec![ep(1), ep(2)]);
        b.set_affinity(Some(Duration::from_secs(5)));
        let t0 = Instant::now();
        b.next(client(1), t0, false);
        b.next(client(2), t0 + Duration::from_secs(3), false);
        b.expire(t0 + Duration::from_secs(6));
        assert_eq!(b.pinned(), 1);
        b.expire(t0 + Duration::from_secs(8));
        assert_eq!(b.pinned(), 0);
    }

    #[test]
    fn removed_endpoint_releases_its_clients() {
        let mut b = Balancer::default();
        b.set_endpoints(vec![ep(1), ep(2)]);
        b.set_affinity(Some(Duration::from_secs(100)));
        let now = Instant::now();
        assert_eq!(picks(&mut b, client(1), 1, now), [1]);
        assert_eq!(picks(&mut b, client(2), 1, now), [2]);
        b.set_endpoints(vec![ep(2), ep(3)]);
        assert_eq!(b.pinned(), 1);
        let moved = b.next(client(1), now, false).unwrap();
        assert_ne!(moved, ep(1));
        assert_eq!(
            picks(&mut b, client(1), 3, now),
            vec![crate::model::V4::v4(&moved.ip()).octets()[3]; 3]
        );
        assert_eq!(picks(&mut b, client(2), 2, now), [2, 2]);
    }

    #[test]
    fn reset_repins_the_client_to_the_next_endpoint() {
        let mut b = Balancer::default();
        b.set_endpoints(vec![ep(1), ep(2)]);
        b.set_affinity(Some(Duration::from_secs(100)));
        let now = Instant::now();
        assert_eq!(picks(&mut b, client(1), 1, now), [1]);
        assert_eq!(b.next(client(1), now, true), Some(ep(2)));
        assert_eq!(picks(&mut b, client(1), 2, now), [2, 2]);
    }

    #[test]
    fn turning_affinity_off_spreads_again_and_new_timeout_keeps_pins() {
        let mut b = Balancer::default();
        b.set_endpoints(vec![ep(1), ep(2)]);
        b.set_affinity(Some(Duration::from_secs(100)));
        let now = Instant::now();
        assert_eq!(picks(&mut b, client(1), 2, now), [1, 1]);
        b.set_affinity(Some(Duration::from_secs(50)));
        assert_eq!(picks(&mut b, client(1), 1, now), [1]);
        b.set_affinity(None);
        assert_eq!(b.pinned(), 0);
        assert_eq!(picks(&mut b, client(1), 2, now), [2, 1]);
    }
}
