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

use crate::kernel::iptables::Flavor;
use crate::{BackendError, BackendSpec, Evidence, FloorTool, Trace};

/// kube-proxy's iptables mode through iptables-nft. It implements every
/// behaviour the checks cover.
pub const SPEC: BackendSpec = BackendSpec {
    name: "iptables",
    capability: || probe::capability(Flavor::Nft),
    limitations: |_| Vec::new(),
    create: |options| Box::new(backend::IptablesBackend::new(Flavor::Nft, options)),
    trace: Trace {
        notes: None,
        evidence: Evidence::NfTables,
    },
    floor: Some(floor(Flavor::Nft, || hooks::ensure(Flavor::Nft))),
};

/// kube-proxy's iptables mode through iptables-legacy.
pub const LEGACY_SPEC: BackendSpec = BackendSpec {
    name: "iptables-legacy",
    capability: || probe::capability(Flavor::Legacy),
    limitations: |_| Vec::new(),
    create: |options| Box::new(backend::IptablesBackend::new(Flavor::Legacy, options)),
    trace: Trace {
        notes: Some(
            "iptables-legacy rules live in x_tables, which nf_tables tracing cannot see; their \
             TRACE target logs to the kernel log only for the host's namespace unless the \
             host-wide sysctl net.netfilter.nf_log_all_netns is set, which svclab never changes. \
             The rules shown are those whose packet counters rose while the probe ran \
             (iptables-legacy-save -c before and after): every packet of the connection counts, \
             and in a busy lab other traffic would too",
        ),
        evidence: Evidence::RuleCounters,
    },
    floor: Some(floor(Flavor::Legacy, || hooks::ensure(Flavor::Legacy))),
};

/// The flavor's restore, on the dumps, after `prepare` made the hooks.
const fn floor(flavor: Flavor, prepare: fn() -> Result<(), BackendError>) -> FloorTool {
    FloorTool {
        program: flavor.restore(),
        args: flavor.restore_args(),
        ext: backend::DUMP_EXT,
        prepare,
    }
}
