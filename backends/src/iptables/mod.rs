//! The `iptables` and `iptables-legacy` backends: kube-proxy's iptables
//! mode, rule for rule (pkg/proxy/iptables/proxier.go), through
//! iptables-nft or iptables-legacy.
//!
//! - [`names`]: kube-proxy's chain names (sha256 + base32).
//! - [`render`]: the pure renderer of full and partial restore input.
//! - [`book`]: what is programmed, so partial syncs stay partial.

pub mod book;
pub mod names;
pub mod render;
pub mod saved;
pub mod tool;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod render_tests;
#[cfg(test)]
mod restore_model;

pub use render::{Config, Rendered, Scope, render, render_full};
pub use tool::Flavor;

use crate::{Backend, BackendOptions, Feature, Unavailable};

pub fn capability(_flavor: Flavor) -> Result<(), Unavailable> {
    Err(Unavailable::new("the iptables backend has no kernel side yet"))
}

pub fn limitations() -> Vec<(Feature, String)> {
    Vec::new()
}

pub fn new(_flavor: Flavor, _options: &BackendOptions) -> Box<dyn Backend> {
    Box::new(crate::none::NoneBackend::default())
}
