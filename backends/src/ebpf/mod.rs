//! The `ebpf` backend: Service load balancing in BPF programs in the
//! node's namespace (tc programs on the pods' host veths, the uplink and
//! lo), steered by maps the agent updates.
//!
//! - `bpf/*.c, *.h` (compiled by `build.rs`): the programs; `object`
//!   embeds them.
//! - [`abi`]: the map layout shared with the programs.
//! - [`plan`]: what a service port asks of the maps.
//! - [`sync`]: map updates per port, generation flips, the book of what
//!   is programmed; [`maps`]: the kernel's maps behind it.
//! - [`flows`]: stale UDP flows of removed endpoints.
//! - [`loader`]: loading and attaching (links come from
//!   [`crate::kernel::links`]).
//! - `capability`: the probe; [`backend`]: the [`Backend`].
//!
//! Outside the checked behaviours, the programs leave alone (pass
//! unchanged): IP fragments, IPv4 options, SCTP ports (reported under
//! `unsupported` in the stats) and ICMP errors from endpoints, which reach
//! the client untranslated (a UDP client of an endpoint with no listener
//! times out instead of seeing ECONNREFUSED). Setup sets
//! `net.ipv4.conf.lo.accept_local` in the node namespace (restored at
//! cleanup): replies for the node's connections to its own NodePorts are
//! delivered through lo with the node's own address as source.

pub mod abi;
pub mod backend;
mod capability;
pub mod flows;
#[cfg(test)]
mod kernel_tests;
pub mod loader;
pub mod maps;
#[cfg(test)]
mod measure;
mod object;
pub mod plan;
pub mod sync;
#[cfg(test)]
mod testnet;
#[cfg(test)]
mod traffic_tests;

use crate::{BackendSpec, Evidence, Trace};

/// BPF programs with maps the agent updates. It implements every
/// behaviour the checks cover but three it declares: surviving its agent's
/// restart, NodePorts on 127.0.0.1 and load balancer source ranges. Its capability is whether the
/// programs were built and this kernel loads and attaches them.
pub const SPEC: BackendSpec = BackendSpec {
    name: "ebpf",
    capability: capability::capability,
    limitations: |_| {
        vec![
            (
                crate::Feature::SurvivesAgentRestart,
                "its programs and maps, the flow table included, belong to the agent's process \
                 and nothing is pinned in bpffs: killed, it takes the dataplane with it, and the \
                 next agent starts with an empty flow table, so established flows are balanced \
                 anew (Cilium pins its maps to survive a restart; kube-proxy's rules stay in the \
                 kernel)"
                    .to_string(),
            ),
            (
                crate::Feature::LocalhostNodePort,
                "the eBPF backend does not serve NodePorts on 127.0.0.1 (it serves them on the \
                 node's own address, as kube-proxy with nodePortAddresses [primary])"
                    .to_string(),
            ),
            (
                crate::Feature::Sctp,
                "the eBPF programs parse and rewrite TCP and UDP headers only (an SCTP \
                 header's CRC32c checksum would need recomputing after DNAT), so SCTP \
                 Service ports are left unprogrammed"
                    .to_string(),
            ),
            (
                crate::Feature::LoadBalancerSourceRanges,
                "the eBPF backend's service map is keyed by destination (address, port, \
                 protocol) only and its programs have no per-service source filter, so a load \
                 balancer IP is open to every source (Cilium needs its separate \
                 lb4_source_range map for this)"
                    .to_string(),
            ),
        ]
    },
    create: |options| Box::new(backend::EbpfBackend::new(options)),
    trace: Trace {
        notes: Some(
            "the eBPF programs rewrite packets at tc, before netfilter: the trace shows the \
             packet already DNATed; the decision is in the BPF map entries (service, flow, \
             counters)",
        ),
        evidence: Evidence::BpfMaps,
    },
    floor: None,
};
