//! ClusterIP and NodePort allocation, as the API server's allocators do it:
//! explicit requests are honoured if free, the rest are handed out in order.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("{what} {value} is already allocated to Service {owner}")]
    Taken {
        what: &'static str,
        value: String,
        owner: String,
    },
    #[error("{what} {value} is outside the range {range}")]
    OutOfRange {
        what: &'static str,
        value: String,
        range: String,
    },
    #[error("the {what} range {range} is exhausted ({size} in use)")]
    Exhausted {
        what: &'static str,
        range: String,
        size: usize,
    },
}

/// Hands out ClusterIPs from the service CIDR. The network address, the
/// broadcast address and the first ten addresses are never handed out
/// automatically (the API server keeps `.1` for the `kubernetes` Service and
/// clusters put DNS at `.10`), but may be requested.
#[derive(Debug)]
pub struct IpAllocator {
    net: IpNet,
    used: BTreeMap<u128, String>,
    next: u128,
}

const RESERVED_LOW: u128 = 10;

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl IpAllocator {
    /// One family's allocator: an IPv4 or an IPv6 service CIDR.
    pub fn new(net: impl Into<IpNet>) -> Self {
        let net = net.into();
        IpAllocator {
            net,
            used: BTreeMap::new(),
            next: to_u128(net.network()) + RESERVED_LOW + 1,
        }
    }

    fn addr_at(&self, n: u128) -> IpAddr {
        match self.net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(n)),
        }
    }

    pub fn request(&mut self, ip: impl Into<IpAddr>, owner: &str) -> Result<(), AllocError> {
        let ip = ip.into();
        if !self.net.contains(&ip) || ip == self.net.network() || ip == self.net.broadcast() {
            return Err(AllocError::OutOfRange {
                what: "clusterIP",
                value: ip.to_string(),
                range: self.net.to_string(),
            });
        }
        let n = to_u128(ip);
        if let Some(o) = self.used.get(&n)
            && o != owner
        {
            return Err(AllocError::Taken {
                what: "clusterIP",
                value: ip.to_string(),
                owner: o.clone(),
            });
        }
        self.used.insert(n, owner.to_string());
        Ok(())
    }

    pub fn allocate(&mut self, owner: &str) -> Result<IpAddr, AllocError> {
        let first = to_u128(self.net.network()) + RESERVED_LOW + 1;
        let last = to_u128(self.net.broadcast()).saturating_sub(1);
        if first > last {
            return Err(self.exhausted());
        }
        let span = last - first + 1;
        // At most one step per address in use past the cursor: a free one
        // is always within `used.len() + 1` steps.
        let steps = span.min(self.used.len() as u128 + 1);
        for step in 0..steps {
            let cand = first + (self.next - first + step) % span;
            if let std::collections::btree_map::Entry::Vacant(e) = self.used.entry(cand) {
                e.insert(owner.to_string());
                self.next = if cand == last { first } else { cand + 1 };
                return Ok(self.addr_at(cand));
            }
        }
        Err(self.exhausted())
    }

    fn exhausted(&self) -> AllocError {
        AllocError::Exhausted {
            what: "service CIDR",
            range: self.net.to_string(),
            size: self.used.len(),
        }
    }

    pub fn release(&mut self, ip: impl Into<IpAddr>) {
        self.used.remove(&to_u128(ip.into()));
    }
}

/// Hands out NodePorts (and health-check node ports) from one range.
#[derive(Debug)]
pub struct PortAllocator {
    lo: u16,
    hi: u16,
    used: BTreeMap<u16, String>,
    next: u16,
}

impl PortAllocator {
    pub fn new((lo, hi): (u16, u16)) -> Self {
        PortAllocator {
            lo,
            hi,
            used: BTreeMap::new(),
            next: lo,
        }
    }

    fn range(&self) -> String {
        format!("{}-{}", self.lo, self.hi)
    }

    pub fn request(&mut self, port: u16, owner: &str) -> Result<(), AllocError> {
        if port < self.lo || port > self.hi {
            return Err(AllocError::OutOfRange {
                what: "nodePort",
                value: port.to_string(),
                range: self.range(),
            });
        }
        if let Some(o) = self.used.get(&port)
            && o != owner
        {
            return Err(AllocError::Taken {
                what: "nodePort",
                value: port.to_string(),
                owner: o.clone(),
            });
        }
        self.used.insert(port, owner.to_string());
        Ok(())
    }

    pub fn allocate(&mut self, owner: &str) -> Result<u16, AllocError> {
        let span = u32::from(self.hi - self.lo) + 1;
        for step in 0..span {
            let cand = self.lo + ((u32::from(self.next - self.lo) + step) % span) as u16;
            if let std::collections::btree_map::Entry::Vacant(e) = self.used.entry(cand) {
                e.insert(owner.to_string());
                self.next = if cand == self.hi { self.lo } else { cand + 1 };
                return Ok(cand);
            }
        }
        Err(AllocError::Exhausted {
            what: "node port",
            range: self.range(),
            size: self.used.len(),
        })
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

/// Hands out LoadBalancer ingress addresses from the Lab's
/// `spec.loadBalancerPool`, as a cloud controller's IPAM would: a
/// requested address is honoured if it is in the pool and free, the rest
/// are handed out in pool order.
#[derive(Debug)]
pub struct PoolAllocator {
    pool: Option<crate::scenario::LoadBalancerPool>,
    used: BTreeMap<IpAddr, String>,
}

impl PoolAllocator {
    pub fn new(pool: Option<crate::scenario::LoadBalancerPool>) -> Self {
        PoolAllocator {
            pool,
            used: BTreeMap::new(),
        }
    }

    /// Whether the lab has a pool at all (without one, LoadBalancer
    /// Services stay pending).
    pub fn enabled(&self) -> bool {
        self.pool.is_some()
    }

    fn range(&self) -> String {
        self.pool
            .as_ref()
            .map(|p| {
                p.nets()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    }

    pub fn request(&mut self, ip: IpAddr, owner: &str) -> Result<(), AllocError> {
        let inside = self.pool.as_ref().is_some_and(|p| p.holds(ip));
        if !inside {
            return Err(AllocError::OutOfRange {
                what: "loadBalancerIP",
                value: ip.to_string(),
                range: self.range(),
            });
        }
        if let Some(o) = self.used.get(&ip)
            && o != owner
        {
            return Err(AllocError::Taken {
                what: "loadBalancerIP",
                value: ip.to_string(),
                owner: o.clone(),
            });
        }
        self.used.insert(ip, owner.to_string());
        Ok(())
    }

    pub fn allocate(&mut self, owner: &str) -> Result<IpAddr, AllocError> {
        let free = self
            .pool
            .as_ref()
            .and_then(|p| p.addresses().find(|a| !self.used.contains_key(a)));
        match free {
            Some(ip) => {
                self.used.insert(ip, owner.to_string());
                Ok(ip)
            }
            None => Err(AllocError::Exhausted {
                what: "load balancer pool",
                range: self.range(),
                size: self.used.len(),
            }),
        }
    }

    pub fn release(&mut self, ip: IpAddr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_in_order_requests_honoured_release_and_exhaustion() {
        let pool: crate::scenario::LoadBalancerPool =
            serde_json::from_str("\"192.0.2.0/30\"").unwrap();
        let mut p = PoolAllocator::new(Some(pool));
        p.request(Ipv4Addr::new(192, 0, 2, 2).into(), "ns/a")
            .unwrap();
        assert_eq!(p.allocate("ns/b").unwrap(), Ipv4Addr::new(192, 0, 2, 1));
        assert!(matches!(
            p.allocate("ns/c"),
            Err(AllocError::Exhausted { .. })
        ));
        assert!(matches!(
            p.request(Ipv4Addr::new(192, 0, 2, 3).into(), "ns/c"),
            Err(AllocError::OutOfRange { .. })
        ));
        assert!(matches!(
            p.request(Ipv4Addr::new(192, 0, 2, 2).into(), "ns/c"),
            Err(AllocError::Taken { .. })
        ));
        p.release(Ipv4Addr::new(192, 0, 2, 2).into());
        assert_eq!(p.allocate("ns/c").unwrap(), Ipv4Addr::new(192, 0, 2, 2));
        let list: crate::scenario::LoadBalancerPool =
            serde_json::from_str("[\"198.51.100.7\", \"198.51.100.9\"]").unwrap();
        let mut p = PoolAllocator::new(Some(list));
        assert_eq!(p.allocate("x").unwrap(), Ipv4Addr::new(198, 51, 100, 7));
        assert_eq!(p.allocate("y").unwrap(), Ipv4Addr::new(198, 51, 100, 9));
        assert!(PoolAllocator::new(None).allocate("z").is_err());
    }

    #[test]
    fn an_ipv6_pool_is_never_walked_whole() {
        // A /64: requests are a containment test, allocations take at most
        // used + 1 steps.
        let pool: crate::scenario::LoadBalancerPool =
            serde_json::from_str("\"fd00:198:51:100::/64\"").unwrap();
        let mut p = PoolAllocator::new(Some(pool));
        let far: IpAddr = "fd00:198:51:100:ffff::9".parse().unwrap();
        p.request(far, "ns/a").unwrap();
        assert_eq!(
            p.allocate("ns/b").unwrap(),
            "fd00:198:51:100::1".parse::<IpAddr>().unwrap()
        );
        assert!(matches!(
            p.request("fd00:198:51:101::1".parse().unwrap(), "ns/c"),
            Err(AllocError::OutOfRange { .. })
        ));
    }

    #[test]
    fn cluster_ips_in_order_explicit_honoured_collisions_and_exhaustion() {
        let mut a = IpAllocator::new("10.96.0.0/28".parse::<IpNet>().unwrap());
        a.request(Ipv4Addr::new(10, 96, 0, 10), "kube-system/dns")
            .unwrap();
        assert_eq!(a.allocate("a").unwrap(), Ipv4Addr::new(10, 96, 0, 11));
        let err = a.request(Ipv4Addr::new(10, 96, 0, 11), "b").unwrap_err();
        assert!(
            err.to_string().contains("already allocated to Service a"),
            "{err}"
        );
        let err = a.request(Ipv4Addr::new(10, 97, 0, 1), "b").unwrap_err();
        assert!(matches!(err, AllocError::OutOfRange { .. }));
        // /28: .11 to .14 are automatic; .11 is taken, three remain.
        for want in [12, 13, 14] {
            assert_eq!(a.allocate("x").unwrap(), Ipv4Addr::new(10, 96, 0, want));
        }
        let err = a.allocate("y").unwrap_err();
        assert!(err.to_string().contains("exhausted"), "{err}");
        a.release(Ipv4Addr::new(10, 96, 0, 13));
        assert_eq!(a.allocate("y").unwrap(), Ipv4Addr::new(10, 96, 0, 13));
    }

    #[test]
    fn an_ipv6_range_allocates_the_same_way_without_walking_it() {
        // A /64 has 2^64 addresses; the allocator must not walk them.
        let mut a = IpAllocator::new("fd00:10:96::/64".parse::<IpNet>().unwrap());
        let first: IpAddr = "fd00:10:96::b".parse().unwrap();
        assert_eq!(a.allocate("a").unwrap(), first);
        a.request("fd00:10:96::c".parse::<IpAddr>().unwrap(), "b")
            .unwrap();
        assert_eq!(
            a.allocate("c").unwrap(),
            "fd00:10:96::d".parse::<IpAddr>().unwrap()
        );
        let err = a
            .request("fd00:10:97::1".parse::<IpAddr>().unwrap(), "d")
            .unwrap_err();
        assert!(matches!(err, AllocError::OutOfRange { .. }), "{err}");
        let err = a.request(first, "d").unwrap_err();
        assert!(err.to_string().contains("already allocated to Service a"));
        a.release(first);
        a.request(first, "d").unwrap();
    }

    #[test]
    fn node_ports_table() {
        let mut p = PortAllocator::new((30000, 30002));
        p.request(30001, "ns/a").unwrap();
        assert_eq!(p.allocate("ns/b").unwrap(), 30000);
        assert_eq!(p.allocate("ns/c").unwrap(), 30002);
        assert!(matches!(
            p.allocate("ns/d"),
            Err(AllocError::Exhausted { .. })
        ));
        assert!(matches!(
            p.request(30001, "ns/d"),
            Err(AllocError::Taken { .. })
        ));
        assert!(matches!(
            p.request(80, "ns/d"),
            Err(AllocError::OutOfRange { .. })
        ));
        // Re-requesting one's own port is not a collision (updates).
        p.request(30001, "ns/a").unwrap();
    }
}
