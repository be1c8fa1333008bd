//! The `userspace` backend (not built yet: it reports itself unavailable).

use crate::{Backend, BackendOptions, Feature, Unavailable};

pub fn capability() -> Result<(), Unavailable> {
    Err(Unavailable::new("the userspace backend is not built yet"))
}

pub fn limitations() -> Vec<(Feature, String)> {
    Vec::new()
}

pub fn new(_options: &BackendOptions) -> Box<dyn Backend> {
    Box::new(crate::none::NoneBackend::default())
}
