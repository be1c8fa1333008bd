//! The iptables backend: renders, restores with `--noflush`, keeps the
//! book of what it programmed, and clears stale UDP conntrack entries.

use super::book::Book;
use super::names::Chain;
use super::render::{self, Config, NFT_CHAINS_PER_TRANSACTION, Scope};
use super::{cleanup, hooks};
use crate::kernel::dump;
use crate::kernel::iptables::saved::SavedTable;
use crate::kernel::iptables::{self, Flavor};
use crate::model::{IpFamily, NodeContext};
use crate::protocol::SyncMode;
use crate::{
    Backend, BackendError, BackendOptions, BackendStats, Fault, SyncOutcome, SyncRequest,
    kernel::conntrack,
};

/// The extension of this backend's per-sync dumps.
pub const DUMP_EXT: &str = "iptables";

const TCP_LIBERAL_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal";
/// Lets the node route packets to or from 127.0.0.0/8 (after DNAT, a
/// localhost NodePort's packet leaves with source 127.0.0.1 until it is
/// masqueraded); without it the kernel drops them as martians. Per
/// namespace: the node's own.
const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

pub struct IptablesBackend {
    flavor: Flavor,
    /// ip6tables for the IPv6 proxier.
    family: IpFamily,
    options: BackendOptions,
    config: Config,
    book: Book,
    /// A failed sync leaves the kernel's state unknown to the book (and
    /// the agent has taken its changes), so the next sync rewrites
    /// everything, as kube-proxy's needFullSync.
    need_full: bool,
    syncs: u64,
    deleted_chains: u64,
    /// route_localnet's value before setup set it, restored by cleanup.
    route_localnet: Option<String>,
}

impl IptablesBackend {
    pub fn new(flavor: Flavor, options: &BackendOptions) -> Self {
        let config = Config {
            chains_per_transaction: match flavor {
                Flavor::Nft => Some(NFT_CHAINS_PER_TRANSACTION),
                Flavor::Legacy => None,
            },
            ..Config::new(options)
        };
        IptablesBackend {
            flavor,
            family: options.family,
            options: options.clone(),
            config,
            book: Book::default(),
            need_full: true,
            syncs: 0,
            deleted_chains: 0,
            route_localnet: None,
        }
    }
}

impl Backend for IptablesBackend {
    fn setup(&mut self, node: &NodeContext) -> Result<(), BackendError> {
        hooks::ensure_in(self.flavor, self.family)?;
        // Loopback NodePorts are IPv4's only (route_localnet has no IPv6
        // twin; kube-proxy's IPv6 proxier never serves them).
        if self.family == IpFamily::IPv4
            && node.localhost_node_ports
            && !self.options.has_fault(Fault::NoRouteLocalnet)
        {
            let was = std::fs::read_to_string(ROUTE_LOCALNET)
                .map_err(|e| BackendError::io(format!("reading {ROUTE_LOCALNET}"), e))?;
            std::fs::write(ROUTE_LOCALNET, "1")
                .map_err(|e| BackendError::io(format!("writing 1 to {ROUTE_LOCALNET}"), e))?;
            self.route_localnet = Some(was.trim().to_string());
        }
        self.config.conntrack_tcp_liberal =
            std::fs::read_to_string(TCP_LIBERAL_SYSCTL).is_ok_and(|v| v.trim() != "0");
        // Service chains of an earlier run: the first full sync deletes
        // the ones it does not reuse.
        let saved = iptables::save_in(self.flavor, self.family, "nat")?;
        let orphans: Vec<Chain> = SavedTable::parse(&saved)
            .chains
            .into_iter()
            .filter_map(Chain::parse)
            .collect();
        self.book.set_orphans(orphans);
        if self.options.has_fault(Fault::FlushConntrackOnStart) {
            crate::kernel::conntrack::flush_all(node.family())?;
        }
        Ok(())
    }

    fn sync(&mut self, req: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError> {
        let scope = match req.mode {
            SyncMode::Partial if !self.need_full => Scope::Partial(&req.changes.changed),
            _ => Scope::Full,
        };
        let rendered = render::render(&self.config, req.state, req.node, scope, &self.book);
        if let Some(dir) = &self.options.dump_dir
            && let Err(e) = dump::write(
                dir,
                req.seq,
                dump::mode(rendered.full),
                DUMP_EXT,
                &rendered.text,
            )
        {
            // This sync's changes are not applied; the next sync covers them.
            self.need_full = true;
            return Err(e);
        }
        // Nothing differs from what is programmed: no restore at all.
        if !rendered.text.is_empty()
            && let Err(e) = iptables::restore_in(self.flavor, self.family, &rendered.text)
        {
            self.need_full = true;
            return Err(e);
        }
        self.need_full = false;
        self.syncs += 1;
        self.deleted_chains += rendered.deleted_chains;
        self.book.apply(rendered.update);
        conntrack::flush(&conntrack::stale_flows(req.state, req.changes))?;
        Ok(SyncOutcome {
            rules: self.book.rules(),
            written: rendered.lines,
        })
    }

    fn stats(&mut self) -> Result<BackendStats, BackendError> {
        let mut detail = self.book.detail();
        detail["syncs"] = self.syncs.into();
        detail["deletedChains"] = self.deleted_chains.into();
        detail["restore"] = self.flavor.binary(self.family, "iptables-restore").into();
        Ok(BackendStats {
            rules: self.book.rules(),
            detail,
        })
    }

    fn cleanup(&mut self) -> Result<(), Vec<BackendError>> {
        self.book.reset();
        self.need_full = true;
        let mut result = cleanup::remove_all(self.flavor, self.family);
        if let Some(was) = self.route_localnet.take()
            && let Err(e) = std::fs::write(ROUTE_LOCALNET, &was)
        {
            let e = BackendError::io(format!("restoring {ROUTE_LOCALNET} to {was}"), e);
            match &mut result {
                Ok(()) => result = Err(vec![e]),
                Err(v) => v.push(e),
            }
        }
        result
    }
}
