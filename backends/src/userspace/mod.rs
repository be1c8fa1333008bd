//! The `userspace` backend: kube-proxy's original userspace mode
//! (pkg/proxy/userspace, removed in Kubernetes 1.26) as a real proxy in the
//! agent. Every service port gets listeners on proxy ports of the node's
//! namespace; iptables rules send ClusterIP, external IP and NodePort
//! traffic to them; the proxy picks an endpoint round-robin (with ClientIP
//! affinity) and relays TCP streams and UDP datagrams.
//!
//! - [`balancer`]: round-robin and session affinity.
//! - [`policy`]: traffic policies (which endpoints a connection may use).
//! - [`service`]: one proxied service port's shared state and counters.
//! - [`tcp`] and [`udp`]: the relays; [`sessions`]: the UDP relay's sessions.
//! - [`ports`]: proxy port allocation.
//! - [`rules`] and [`hooks`]: the iptables side.
//! - [`backend`]: the [`Backend`] that ties them together.
//!
//! SCTP service ports are not proxied (kube-proxy's userspace mode did not
//! either); `stats()` lists them.

pub mod backend;
pub mod balancer;
mod capability;
pub mod hooks;
pub mod policy;
pub mod ports;
pub mod rules;
pub mod service;
pub mod sessions;
pub mod tcp;
pub mod udp;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod measure;

use crate::{BackendSpec, Evidence, Feature, Trace};

/// kube-proxy's userspace mode: a proxy in the agent.
pub const SPEC: BackendSpec = BackendSpec {
    name: "userspace",
    capability: capability::capability,
    limitations: |_| limitations(),
    create: |options| Box::new(backend::UserspaceBackend::new(options)),
    trace: Trace {
        notes: Some(
            "the userspace proxy accepts the connection in the agent and opens its own to the \
             endpoint: the trace shows the redirect to the proxy, not the second connection",
        ),
        evidence: Evidence::NfTables,
    },
    floor: None,
};

/// A proxy terminates the client's connection and opens its own to the
/// endpoint, so the endpoint sees the node, never the client.
fn limitations() -> Vec<(Feature, String)> {
    vec![
        (
            Feature::SourcePreservation,
            "userspace mode proxies connections: the server sees the node, as kube-proxy's \
             userspace mode did"
                .to_string(),
        ),
        (
            Feature::SurvivesAgentRestart,
            "userspace mode carries every connection on the agent's own sockets: they die with \
             the agent, as they did with kube-proxy's userspace mode (removed in v1.26)"
                .to_string(),
        ),
        (
            Feature::LocalhostNodePort,
            "the userspace backend listens for NodePorts on the node's own address only (as \
             kube-proxy with nodePortAddresses [primary]), not on 127.0.0.1"
                .to_string(),
        ),
        (
            Feature::Sctp,
            "the userspace backend relays TCP and UDP only: it opens no SCTP proxy sockets \
             (kube-proxy's userspace mode, removed in v1.26, did not proxy SCTP either)"
                .to_string(),
        ),
        (
            Feature::LoadBalancerSourceRanges,
            "the userspace backend redirects a load balancer IP to its proxy socket for every \
             source (as kube-proxy's userspace proxier, removed in v1.26, did): it learns the \
             client only once it has accepted the connection, too late to drop it unanswered"
                .to_string(),
        ),
    ]
}
