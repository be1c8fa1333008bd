//! The nftables backend: runs each planned transaction through `nft -f -`,
//! keeps the bookkeeping in step with the kernel, and clears stale UDP
//! conntrack entries after every successful sync.

use crate::kernel::dump;
use crate::model::IpFamily;
use crate::model::NodeContext;
use crate::nftables::existing::Existing;
use crate::nftables::names::Family;
use crate::nftables::programmed::{Plan, Programmed};
use crate::nftables::skeleton::write_skeleton;
use crate::nftables::tx::Tx;
use crate::protocol::SyncMode;
use crate::{
    Backend, BackendError, BackendOptions, BackendStats, Fault, SyncOutcome, SyncRequest,
    kernel::cmd, kernel::conntrack,
};

pub struct NftablesBackend {
    family: IpFamily,
    options: BackendOptions,
    programmed: Programmed,
    /// Set until a full sync succeeds: after setup, and after a failed
    /// transaction (whose changes the agent has already handed over, so a
    /// partial sync could no longer reach them).
    needs_full: bool,
    last: Option<LastSync>,
}

#[derive(Clone, Debug)]
struct LastSync {
    seq: u64,
    mode: SyncMode,
    lines: u64,
    ports_written: u64,
    conntrack_flushes: usize,
    conntrack_deleted: usize,
}

impl NftablesBackend {
    pub fn new(options: &BackendOptions) -> Self {
        NftablesBackend {
            family: options.family,
            options: options.clone(),
            programmed: Programmed::default(),
            needs_full: true,
            last: None,
        }
    }

    fn run(&self, text: &str, seq: u64, mode: &str) -> Result<(), BackendError> {
        if let Some(dir) = &self.options.dump_dir {
            dump::write(dir, seq, mode, DUMP_EXT, text)?;
        }
        cmd::run("nft", &["-f", "-"], Some(text.as_bytes()))?;
        Ok(())
    }
}

/// The extension of this backend's per-sync dumps (`nft -f` input).
pub const DUMP_EXT: &str = "nft";

/// The setup transaction: a fresh table holding only the fixed objects.
/// A table left by an earlier run in this namespace is dropped first
/// (`add` then `delete`, so a missing table is not an error).
pub fn setup_text(node: &NodeContext, options: &BackendOptions) -> String {
    let mut tx = Tx::with_capacity(node.family(), 8192);
    let table = Family(node.family()).table();
    tx.raw(format_args!("add table {table}"));
    tx.raw(format_args!("delete table {table}"));
    write_skeleton(&mut tx, node, options);
    tx.into_text()
}

impl Backend for NftablesBackend {
    fn setup(&mut self, node: &NodeContext) -> Result<(), BackendError> {
        self.run(&setup_text(node, &self.options), 0, "setup")?;
        if self.options.has_fault(Fault::FlushConntrackOnStart) {
            conntrack::flush_all(node.family())?;
        }
        self.programmed = Programmed::default();
        self.needs_full = true;
        Ok(())
    }

    fn sync(&mut self, req: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError> {
        let plan: Plan = if req.mode == SyncMode::Full || self.needs_full {
            let existing = Existing::list(req.node.family())?;
            self.programmed
                .plan_full(req.state, req.node, &self.options, &existing)
        } else {
            self.programmed
                .plan_partial(req.state, req.changes, req.node, &self.options)
        };
        if plan.lines > 0
            && let Err(e) = self.run(&plan.text, req.seq, &plan.mode.to_string())
        {
            self.needs_full = true;
            return Err(e);
        }
        let (mode, lines, ports_written) = (plan.mode, plan.lines, plan.ports_written);
        self.programmed.apply(plan);
        self.needs_full = false;

        let flows = conntrack::stale_flows(req.state, req.changes);
        let flushed = conntrack::flush(&flows)?;
        self.last = Some(LastSync {
            seq: req.seq,
            mode,
            lines,
            ports_written,
            conntrack_flushes: flushed.flows,
            conntrack_deleted: flushed.entries,
        });
        let c = self.programmed.counts();
        Ok(SyncOutcome {
            rules: c.rules + c.elements,
            written: lines,
        })
    }

    fn stats(&mut self) -> Result<BackendStats, BackendError> {
        let c = self.programmed.counts();
        let last = self.last.as_ref().map(|l| {
            serde_json::json!({
                "seq": l.seq,
                "mode": l.mode.to_string(),
                "lines": l.lines,
                "servicePortsWritten": l.ports_written,
                "conntrackFlushes": l.conntrack_flushes,
                "conntrackEntriesDeleted": l.conntrack_deleted,
            })
        });
        Ok(BackendStats {
            rules: c.rules + c.elements,
            detail: serde_json::json!({
                "table": Family(self.family).table(),
                "servicePorts": c.service_ports,
                "serviceChains": c.chains,
                "rules": c.rules,
                "elements": c.elements,
                "affinitySets": c.affinity_sets,
                "lastSync": last,
            }),
        })
    }

    fn cleanup(&mut self) -> Result<(), Vec<BackendError>> {
        let table = Family(self.family).table();
        let text = format!("add table {table}\ndelete table {table}\n");
        let mut errors = Vec::new();
        if let Err(e) = cmd::run("nft", &["-f", "-"], Some(text.as_bytes())) {
            errors.push(e);
        }
        self.programmed = Programmed::default();
        self.needs_full = true;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
