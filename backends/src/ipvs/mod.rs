//! The `ipvs` backend: kube-proxy's IPVS mode. Every ClusterIP, external IP
//! and NodePort is an IPVS virtual server programmed over generic netlink,
//! its endpoints are real servers (NAT), the VIPs sit on the `kube-ipvs0`
//! dummy device, and a small fixed iptables ruleset keyed on ipsets does
//! the masquerading and filtering.
//!
//! A full sync reconciles the kernel (virtual and real servers, addresses,
//! ipset entries) with the whole state; a partial sync changes only what
//! the changed service ports contributed, from the [`ledger::Ledger`] of
//! what was programmed. A partial sync that fails makes the next one full.

mod backend;
mod capability;
mod ipsets;
mod ledger;
mod netlink;
mod plan;
mod rules;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod traffic_tests;

pub use backend::IpvsBackend;
pub use capability::capability;

use crate::kernel::links::LinkError;
use netlink::IpvsError;

use crate::kernel::iptables::Flavor;
use crate::{BackendError, BackendOptions, BackendSpec, Evidence, Feature, Trace};

const DEFAULT_SCHEDULER: &str = "rr";

/// kube-proxy's name for the device that holds Service addresses. IPVS
/// only sees packets the kernel delivers locally, so every VIP must be a
/// local address; a dummy device holds them without ever sending anything
/// (kube-proxy leaves it down, and so do we: local routes for its
/// addresses exist either way).
const DUMMY_DEVICE: &str = "kube-ipvs0";

/// The iptables flavor of the fixed ruleset; the backend takes either.
const FLAVOR: Flavor = Flavor::Nft;

pub const SPEC: BackendSpec = BackendSpec {
    name: "ipvs",
    capability: || capability(FLAVOR),
    limitations,
    create: |options| Box::new(IpvsBackend::new(FLAVOR, options)),
    trace: Trace {
        notes: Some(
            "IPVS balances in the input and output hooks without nf_tables rules: the trace \
             shows its iptables rules; the real server it picked is in the IPVS connection entry",
        ),
        evidence: Evidence::IpvsConnections,
    },
    floor: None,
};

/// The scheduler `options` ask for (`rr` when empty).
fn scheduler(options: &BackendOptions) -> String {
    if options.ipvs_scheduler.is_empty() {
        DEFAULT_SCHEDULER.to_string()
    } else {
        options.ipvs_scheduler.clone()
    }
}

/// What IPVS mode never does (localhost NodePorts, affinity that ends at
/// its timeout while connections linger), and a scheduler other than rr
/// or wrr does not spread evenly.
fn limitations(options: &BackendOptions) -> Vec<(Feature, String)> {
    let scheduler = scheduler(options);
    let mut out = vec![
        (
            Feature::LocalhostNodePort,
            crate::api::NO_LOCALHOST_NODEPORTS_IPVS.to_string(),
        ),
        (
            Feature::AffinityTimeout,
            crate::api::IPVS_AFFINITY_OUTLIVES_TIMEOUT.to_string(),
        ),
    ];
    if !matches!(scheduler.as_str(), "rr" | "wrr") {
        out.push((
            Feature::UniformBalance,
            format!(
                "IPVS scheduler {scheduler:?} does not spread connections evenly (only rr and wrr with equal weights do)"
            ),
        ));
    }
    out
}

impl From<IpvsError> for BackendError {
    fn from(e: IpvsError) -> Self {
        match e {
            IpvsError::Io { what, source } => {
                BackendError::io(format!("IPVS netlink: {what}"), source)
            }
            other => BackendError::Other(other.to_string()),
        }
    }
}

impl From<LinkError> for BackendError {
    fn from(e: LinkError) -> Self {
        BackendError::Other(e.to_string())
    }
}
