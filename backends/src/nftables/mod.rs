//! The `nftables` backend: kube-proxy's nftables mode.
//!
//! One `ip kube-proxy` table. Packets to a Service address are dispatched by
//! the `service-ips` and `service-nodeports` verdict maps (keyed on
//! `ipv4_addr . inet_proto . inet_service`) to a chain per service port,
//! which picks an endpoint with `numgen random mod N vmap { ... }` and jumps
//! to a chain per endpoint that DNATs. Services without endpoints are
//! refused through the `no-endpoint-*` maps, unknown ports of ClusterIPs
//! through the `cluster-ips` set. Every sync is one `nft -f -` transaction:
//! full syncs rewrite the table's contents (keeping endpoint chains the
//! kernel already holds as they should be, like kube-proxy), partial syncs
//! only what changed (see [`Programmed`]).
//!
//! Rendering is pure and needs no kernel: [`render_full`] and
//! [`render_partial`].

mod backend;
mod capability;
mod existing;
mod names;
mod objects;
mod programmed;
mod skeleton;
mod tx;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod golden_tests;
#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod measure;

pub use backend::{NftablesBackend, setup_text};
pub use capability::capability;
pub use existing::Existing;
pub use programmed::{Counts, Plan, Programmed};

use crate::model::{ChangeSet, NodeContext, ProxyState};
use crate::{BackendOptions, BackendSpec, Evidence, FloorTool, Trace};

/// kube-proxy's nftables mode. Behaviours not implemented: none.
pub const SPEC: BackendSpec = BackendSpec {
    name: "nftables",
    capability,
    limitations: |_| {
        vec![(
            crate::Feature::LocalhostNodePort,
            crate::api::NO_LOCALHOST_NODEPORTS_NFTABLES.to_string(),
        )]
    },
    create: |options| Box::new(NftablesBackend::new(options)),
    trace: Trace {
        notes: None,
        evidence: Evidence::NfTables,
    },
    floor: Some(FloorTool {
        program: "nft",
        args: &["-f", "-"],
        ext: backend::DUMP_EXT,
        prepare: || Ok(()),
    }),
};

/// The `nftables` backend with the flat layout ([`NftablesLayout::Flat`]):
/// kube-proxy's semantics, no anonymous map per Service.
///
/// [`NftablesLayout::Flat`]: crate::NftablesLayout::Flat
pub const FLAT_SPEC: BackendSpec = BackendSpec {
    name: "nftables-flat",
    create: |options| {
        Box::new(NftablesBackend::new(&BackendOptions {
            nftables_layout: crate::NftablesLayout::Flat,
            ..options.clone()
        }))
    },
    ..SPEC
};

/// The transaction a full sync of `state` writes into an empty table.
pub fn render_full(state: &ProxyState, node: &NodeContext, options: &BackendOptions) -> String {
    Programmed::default()
        .plan_full(state, node, options, &Existing::default())
        .text
}

/// The transaction a partial sync writes to bring a table holding
/// `programmed` to `state`, given what changed. Build `programmed` with
/// [`Programmed::apply`] on a full plan.
pub fn render_partial(
    programmed: &Programmed,
    state: &ProxyState,
    changes: &ChangeSet,
    node: &NodeContext,
    options: &BackendOptions,
) -> String {
    programmed.plan_partial(state, changes, node, options).text
}
