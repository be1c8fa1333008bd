//! The `iptables` and `iptables-legacy` backends (not built yet).

use crate::{Backend, BackendOptions, Feature, Unavailable};

/// Which iptables binary family programs the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Nft,
    Legacy,
}

pub fn capability(_flavor: Flavor) -> Result<(), Unavailable> {
    Err(Unavailable::new("the iptables backend is not built yet"))
}

pub fn limitations() -> Vec<(Feature, String)> {
    Vec::new()
}

pub fn new(_flavor: Flavor, _options: &BackendOptions) -> Box<dyn Backend> {
    Box::new(crate::none::NoneBackend::default())
}
