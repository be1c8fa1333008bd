//! The `ebpf` backend: Service load balancing in BPF programs in the
//! node's namespace (tc programs on the pods' host veths, the uplink and
//! lo), steered by maps the agent updates.
//!
//! - `bpf/*.c, *.h` (compiled by `build.rs`): the programs; [`object`]
//!   embeds them.
//! - [`abi`]: the map layout shared with the programs.
//! - [`plan`]: what a service port asks of the maps.
//! - [`sync`]: map updates per port, generation flips, the book of what
//!   is programmed; [`maps`]: the kernel's maps behind it.
//! - [`flows`]: stale UDP flows of removed endpoints.
//! - [`loader`] and [`links`]: loading, attaching, finding the links.
//! - [`capability`]: the probe; [`backend`]: the [`Backend`].

pub mod abi;
pub mod backend;
mod capability;
pub mod flows;
#[cfg(test)]
mod kernel_tests;
pub mod links;
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

use crate::{Backend, BackendOptions, Feature, Unavailable};

/// Whether the programs were built and this kernel loads and attaches them.
pub fn capability() -> Result<(), Unavailable> {
    capability::capability()
}

/// The ebpf backend implements every behaviour the checks cover.
pub fn limitations() -> Vec<(Feature, String)> {
    Vec::new()
}

pub fn new(options: &BackendOptions) -> Box<dyn Backend> {
    Box::new(backend::EbpfBackend::new(options))
}
