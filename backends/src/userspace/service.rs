//! One proxied service port: its endpoint pools with their balancers, its
//! UDP sessions and its counters, shared by the sync thread (which updates
//! them) and the runtime's tasks (which route connections with them).

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::balancer::Balancer;
use super::policy::{self, Front, Policy, Pool};
use super::sessions::Sessions;
use crate::model::{Endpoint, NodeContext, ServicePort, ServicePortName};

pub struct ServiceProxy {
    pub name: ServicePortName,
    routing: Mutex<Routing>,
    pub sessions: Sessions,
    pub counters: Counters,
}

struct Routing {
    policy: Policy,
    cluster: Balancer,
    local: Balancer,
}

impl Routing {
    fn pool_mut(&mut self, pool: Pool) -> &mut Balancer {
        match pool {
            Pool::Cluster => &mut self.cluster,
            Pool::Local => &mut self.local,
        }
    }
}

impl ServiceProxy {
    pub fn new(svc: &ServicePort, endpoints: &[Endpoint], node: &NodeContext) -> Self {
        let proxy = ServiceProxy {
            name: svc.name.clone(),
            routing: Mutex::new(Routing {
                policy: Policy::new(svc, node.cluster_cidr, node.node_ip),
                cluster: Balancer::default(),
                local: Balancer::default(),
            }),
            sessions: Sessions::default(),
            counters: Counters::default(),
        };
        proxy.update(svc, endpoints, node);
        proxy
    }

    /// Takes a new spec and endpoint list. UDP sessions whose endpoint left
    /// their pool are dropped, so the client's next datagram picks a
    /// remaining endpoint (what flushing conntrack does for kube-proxy's
    /// other modes).
    pub fn update(&self, svc: &ServicePort, endpoints: &[Endpoint], node: &NodeContext) {
        let (cluster, local) = policy::pools(svc, endpoints);
        let affinity = svc
            .session_affinity_seconds
            .map(|s| Duration::from_secs(u64::from(s)));
        let dropped = {
            let mut r = self.routing.lock().expect("routing lock");
            r.policy = Policy::new(svc, node.cluster_cidr, node.node_ip);
            r.cluster.set_affinity(affinity);
            r.local.set_affinity(affinity);
            r.cluster.set_endpoints(cluster.clone());
            r.local.set_endpoints(local.clone());
            // Released first: session creation takes the session lock and
            // then this one.
            drop(r);
            self.sessions.retain(|pool, ep| match pool {
                Pool::Cluster => cluster.contains(&ep),
                Pool::Local => local.contains(&ep),
            })
        };
        self.counters
            .udp_sessions_dropped
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// The endpoint for a new connection or UDP session from `client` that
    /// came in on `front`, and the pool it was taken from.
    pub fn pick(&self, front: Front, client: IpAddr, reset: bool) -> Option<(Pool, SocketAddr)> {
        let mut r = self.routing.lock().expect("routing lock");
        let pool = r.policy.pool(front, client);
        let ep = r.pool_mut(pool).next(client, Instant::now(), reset)?;
        Some((pool, ep))
    }

    /// Forgets expired ClientIP pins.
    pub fn expire(&self, now: Instant) {
        let mut r = self.routing.lock().expect("routing lock");
        r.cluster.expire(now);
        r.local.expire(now);
    }

    pub fn pinned_clients(&self) -> usize {
        let r = self.routing.lock().expect("routing lock");
        r.cluster.pinned() + r.local.pinned()
    }
}

/// What the proxy did for one service port, for `stats()`.
#[derive(Debug, Default)]
pub struct Counters {
    pub tcp_connections: AtomicU64,
    /// Connects to an endpoint that failed (each is retried on the next).
    pub connect_failures: AtomicU64,
    /// Connections and datagrams dropped because no endpoint was usable for
    /// them (all connects failed, or a Local policy with none here).
    pub no_endpoint: AtomicU64,
    pub udp_sessions: AtomicU64,
    pub udp_sessions_dropped: AtomicU64,
    pub bytes_to_endpoints: AtomicU64,
    pub bytes_from_endpoints: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "tcpConnections": get(&self.tcp_connections),
            "connectFailures": get(&self.connect_failures),
            "noEndpoint": get(&self.no_endpoint),
            "udpSessions": get(&self.udp_sessions),
            "udpSessionsDropped": get(&self.udp_sessions_dropped),
            "bytesToEndpoints": get(&self.bytes_to_endpoints),
            "bytesFromEndpoints": get(&self.bytes_from_endpoints),
        })
    }
}
