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
mod link;
mod netlink;
mod plan;
mod rules;
mod transport;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod traffic_tests;

pub use backend::IpvsBackend;
pub use capability::capability;

use link::LinkError;
use netlink::IpvsError;

use crate::{Backend, BackendError, BackendOptions, Feature};

const DEFAULT_SCHEDULER: &str = "rr";
const IPTABLES_RESTORE: &str = "iptables-nft-restore";
const IPTABLES_SAVE: &str = "iptables-nft-save";

/// Behaviours not implemented: none. Every check's behaviour is covered
/// (see the kernel and traffic tests); a scheduler other than rr or wrr
/// adds its own limitation on the backend ([`IpvsBackend`]).
pub fn limitations() -> Vec<(Feature, String)> {
    Vec::new()
}

pub fn new(options: &BackendOptions) -> Box<dyn Backend> {
    Box::new(IpvsBackend::new(options))
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
