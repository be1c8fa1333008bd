//! The `iptables` and `iptables-legacy` backends: kube-proxy's iptables
//! mode, rule for rule (pkg/proxy/iptables/proxier.go), through
//! iptables-nft or iptables-legacy.
//!
//! - [`names`]: kube-proxy's chain names (sha256 + base32).
//! - [`render`]: the pure renderer of full and partial restore input.
//! - [`book`]: what is programmed, so partial syncs stay partial.
//! - [`hooks`] and [`cleanup`]: the jumps from built-in chains, and
//!   removing everything again.
//! - [`backend`]: the [`Backend`] that ties them to the kernel.

pub mod backend;
pub mod book;
pub mod cleanup;
pub mod hooks;
pub mod names;
mod probe;
pub mod render;
pub mod saved;
pub mod tool;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod measure;
#[cfg(test)]
mod render_tests;
#[cfg(test)]
mod restore_model;

pub use render::{Config, Rendered, Scope, render, render_full};
pub use tool::Flavor;

use crate::{Backend, BackendOptions, Feature, Unavailable};

/// Whether `flavor`'s tools are installed and the kernel takes its rules.
pub fn capability(flavor: Flavor) -> Result<(), Unavailable> {
    probe::capability(flavor)
}

/// iptables implements every behaviour the checks cover.
pub fn limitations() -> Vec<(Feature, String)> {
    Vec::new()
}

pub fn new(flavor: Flavor, options: &BackendOptions) -> Box<dyn Backend> {
    Box::new(backend::IptablesBackend::new(flavor, options))
}
