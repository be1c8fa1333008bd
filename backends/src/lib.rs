//! svclab's proxy backends: one dataplane per module, all behind [`Backend`].
//!
//! An agent (one process per node, inside the node's network namespace)
//! feeds watch events into a [`tracker::ChangeTracker`] and calls
//! [`Backend::sync`] with the resulting [`model::ProxyState`] and
//! [`model::ChangeSet`]. Backends program the kernel of the namespace they
//! run in and nothing else.
//!
//! - [`api`]: the trait, its errors, options and spec type.
//! - [`registry`]: every built-in backend, one line each.
//! - [`kernel`]: the tools all backends share (tool runner, conntrack,
//!   iptables, netlink links, dumps, probes). Backends build on it and
//!   never import each other.

pub mod api;
pub mod ebpf;
pub mod exec;
pub mod faults;
pub mod iptables;
pub mod ipvs;
pub mod kernel;
pub mod kubeproxy;
pub mod model;
pub mod nftables;
pub mod nodeport_addresses;
pub mod none;
pub mod protocol;
pub mod registry;
#[cfg(test)]
pub mod testkit;
pub mod tracker;
pub mod userspace;

pub use api::{
    Backend, BackendError, BackendOptions, BackendSpec, BackendStats, Evidence, Fault, Feature,
    FloorTool, NftablesLayout, SyncOutcome, SyncRequest, Trace, Unavailable,
};
pub use registry::{BackendKind, create};
