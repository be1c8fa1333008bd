//! Data-path cost against Service count: the connection-setup latency of
//! many sequential TCP connects from a client pod to one Service, and the
//! agent's CPU meanwhile (a proxy in the agent, like the userspace
//! backend, pays per connection; kernel dataplanes do not).
//!
//! The Service is the one iptables matches last: kube-proxy's KUBE-SERVICES
//! is a linear list (here in descending chain-name order), so a SYN to it
//! walks every other Service's rule first. nftables' verdict maps, IPVS and
//! eBPF look it up in one step, so they should stay flat.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use svclab_backends::iptables::names::ServiceChains;
use svclab_backends::model::{Protocol, ServicePortName};

use super::stats::{Recorder, Summary};
use crate::checks::expect::Target;
use crate::probe::{Outcome, ProbeSpec, Prober};

/// The connects before measuring (ARP, first conntrack entries).
const WARMUP: usize = 50;

/// Of `targets` (TCP service ports), the one whose KUBE-SERVICES rule comes
/// last.
pub fn deepest<'a>(targets: impl IntoIterator<Item = &'a Target>) -> Option<&'a Target> {
    targets
        .into_iter()
        .filter(|t| t.protocol == Protocol::Tcp && !t.cluster().is_empty())
        .min_by_key(|t| {
            ServiceChains::new(&ServicePortName::new(
                &t.namespace,
                &t.service,
                &t.port_name,
                t.protocol,
            ))
        })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Datapath {
    /// `namespace/name` of the Service, and the address connected to.
    pub service: String,
    pub target: SocketAddr,
    /// True when connecting straight to an endpoint (the `none` baseline).
    pub direct: bool,
    pub connects: usize,
    pub failures: usize,
    /// connect() latency of the answered connections.
    pub latency: Option<Summary>,
    /// CPU the agents used meanwhile, per connection.
    pub agent_cpu_per_connection_seconds: Option<f64>,
}

/// `n` sequential connects from `netns` to `target`.
pub async fn measure(
    prober: &Prober,
    netns: &str,
    service: String,
    target: std::net::SocketAddr,
    direct: bool,
    n: usize,
    agent_pids: &[u32],
) -> anyhow::Result<Datapath> {
    let spec = ProbeSpec::new(target, Protocol::Tcp, Duration::from_secs(1));
    prober.probe_many(netns, vec![spec; WARMUP], 1).await?;
    let cpu = |pids: &[u32]| -> Option<f64> {
        pids.iter()
            .map(|p| super::procs::process_cpu(*p))
            .sum::<Option<f64>>()
    };
    let before = cpu(agent_pids);
    let results = prober.probe_many(netns, vec![spec; n], 1).await?;
    let after = cpu(agent_pids);
    let mut lat = Recorder::new();
    let mut failures = 0;
    for r in &results {
        if r.outcome == Outcome::Answered {
            lat.record(r.latency.as_secs_f64());
        } else {
            failures += 1;
        }
    }
    Ok(Datapath {
        service,
        target,
        direct,
        connects: n,
        failures,
        latency: lat.summary(),
        agent_cpu_per_connection_seconds: match (before, after) {
            (Some(b), Some(a)) if n > 0 && !agent_pids.is_empty() => {
                Some((a - b).max(0.0) / n as f64)
            }
            _ => None,
        },
    })
}
