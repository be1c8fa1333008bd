//! The `ipvs` backend: kube-proxy's IPVS mode. Every ClusterIP, external IP
//! and NodePort is an IPVS virtual server programmed over generic netlink,
//! its endpoints are real servers (NAT), the VIPs sit on the `kube-ipvs0`
//! dummy device, and a small fixed iptables ruleset keyed on ipsets does
//! the masquerading and filtering.
//!
//! A full sync reconciles the kernel (virtual and real servers, addresses,
//! ipset entries) with the whole state; a partial sync changes only what
//! the changed service ports contributed, from the [`ledger::Ledger`] of
//! what was programmed. A partial sync that fails makes the next one full.

mod ipsets;
mod ledger;
mod link;
mod netlink;
mod plan;
mod rules;
mod transport;

#[cfg(test)]
mod kernel_tests;
#[cfg(test)]
mod traffic_tests;

use std::collections::BTreeMap;
use std::path::Path;

use ledger::Ledger;
use link::{DUMMY_DEVICE, LinkError, Links};
use netlink::{IpvsClient, IpvsError, Op};
use plan::{PlanContext, PlannedServer, plan_port, server_ops, servers_of};

use crate::model::{NodeContext, ProxyState};
use crate::protocol::SyncMode;
use crate::{
    Backend, BackendError, BackendKind, BackendOptions, BackendStats, Fault, Feature, SyncOutcome,
    SyncRequest, Unavailable, cmd, conntrack,
};

const DEFAULT_SCHEDULER: &str = "rr";
const IPTABLES_RESTORE: &str = "iptables-nft-restore";
const IPTABLES_SAVE: &str = "iptables-nft-save";

/// The sysctls kube-proxy's IPVS mode sets (all per network namespace):
/// conntrack for IPVS connections so iptables can masquerade them, expire
/// connections to removed real servers at once, and drop persistence
/// templates of weight-0 real servers.
const SYSCTLS: [(&str, &str); 4] = [
    ("/proc/sys/net/ipv4/vs/conntrack", "1"),
    ("/proc/sys/net/ipv4/vs/expire_nodest_conn", "1"),
    ("/proc/sys/net/ipv4/vs/expire_quiescent_template", "1"),
    ("/proc/sys/net/ipv4/ip_forward", "1"),
];

pub fn capability() -> Result<(), Unavailable> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Unavailable::new(
            "the ipvs backend needs root (CAP_NET_ADMIN) to program IPVS, links and iptables",
        ));
    }
    for tool in ["ipset", IPTABLES_RESTORE, IPTABLES_SAVE, "conntrack"] {
        if !cmd::have(tool) {
            return Err(Unavailable::new(format!(
                "{tool} is not installed (the ipvs backend needs ipset, iptables-nft and conntrack; ci/setup installs them)"
            )));
        }
    }
    let missing = std::thread::scope(|s| {
        s.spawn(probe_in_throwaway_netns)
            .join()
            .unwrap_or_else(|_| vec!["the kernel probe thread panicked".to_string()])
    });
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Unavailable::new(format!(
            "{}: run under `svclab vm`",
            missing.join("; ")
        )))
    }
}

/// Tries everything the backend needs from the kernel inside a private
/// network namespace that dies with this thread, so the host's own
/// namespace is never touched. Returns what is missing.
fn probe_in_throwaway_netns() -> Vec<String> {
    use nix::sched::{CloneFlags, unshare};
    if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
        return vec![format!(
            "cannot create a network namespace to probe in ({e})"
        )];
    }
    let mut missing = Vec::new();
    match IpvsClient::open() {
        Err(IpvsError::FamilyMissing) => {
            missing.push("kernel lacks IP_VS (no IPVS generic netlink family)".to_string())
        }
        Err(e) => missing.push(format!("IPVS is not usable: {e}")),
        Ok(mut ipvs) => {
            // kube-proxy's own probe: a virtual server on TEST-NET-2.
            let probe = netlink::VirtualServer {
                key: netlink::ServiceKey {
                    protocol: crate::model::Protocol::Tcp,
                    addr: std::net::Ipv4Addr::new(198, 51, 100, 0),
                    port: 20000,
                },
                scheduler: DEFAULT_SCHEDULER.into(),
                flags: 0,
                timeout: 0,
            };
            if let Err(e) = ipvs.apply(&[Op::NewService(probe.clone()), Op::DelService(probe.key)])
            {
                missing.push(format!(
                    "IPVS cannot create a virtual server with the rr scheduler (module ip_vs_rr?): {e}"
                ));
            }
        }
    }
    match Links::open().and_then(|mut l| l.ensure_dummy("svclab-probe0")) {
        Ok(_) => {}
        Err(e) => missing.push(format!(
            "kernel cannot create dummy links for kube-ipvs0 (CONFIG_DUMMY): {e}"
        )),
    }
    if let Err(e) = cmd::run(
        "ipset",
        &["create", "svclab-probe", "hash:ip,port,ip"],
        None,
    ) {
        missing.push(format!("kernel ipset support is missing: {e}"));
    }
    missing
}

pub fn limitations() -> Vec<(Feature, String)> {
    Vec::new()
}

pub fn new(options: &BackendOptions) -> Box<dyn Backend> {
    Box::new(IpvsBackend::new(options))
}

impl From<IpvsError> for BackendError {
    fn from(e: IpvsError) -> Self {
        match e {
            IpvsError::Io { what, source } => {
                BackendError::io(format!("IPVS netlink: {what}"), source)
            }
            other => BackendError::Other(other.to_string()),
        }
    }
}

impl From<LinkError> for BackendError {
    fn from(e: LinkError) -> Self {
        BackendError::Other(e.to_string())
    }
}

/// The open sockets and facts of the node namespace, from `setup`.
struct Kernel {
    ipvs: IpvsClient,
    links: Links,
    node: NodeContext,
    dummy: u32,
}

pub struct IpvsBackend {
    options: BackendOptions,
    scheduler: String,
    kernel: Option<Kernel>,
    ledger: Ledger,
    /// The iptables ruleset last applied.
    rules: Option<String>,
    /// A partial sync failed midway: the ledger may not match the kernel.
    needs_full: bool,
}

/// What one sync wrote, for the outcome and the dump.
#[derive(Default)]
struct Written {
    ipvs: Vec<Op>,
    addresses: usize,
    ipset: String,
    iptables: Option<String>,
}

impl Written {
    fn count(&self) -> u64 {
        (self.ipvs.len() + self.addresses + self.ipset.lines().count()) as u64
            + self
                .iptables
                .as_deref()
                .map_or(0, |t| rules::rule_count(t) as u64)
    }
}

impl IpvsBackend {
    pub fn new(options: &BackendOptions) -> Self {
        let scheduler = if options.ipvs_scheduler.is_empty() {
            DEFAULT_SCHEDULER.to_string()
        } else {
            options.ipvs_scheduler.clone()
        };
        IpvsBackend {
            options: options.clone(),
            scheduler,
            kernel: None,
            ledger: Ledger::default(),
            rules: None,
            needs_full: false,
        }
    }

    fn kernel(&mut self) -> Result<&mut Kernel, BackendError> {
        self.kernel
            .as_mut()
            .ok_or_else(|| BackendError::Other("ipvs backend used before setup".into()))
    }

    fn render_rules(&self, node: &NodeContext) -> String {
        rules::render(&rules::RuleInput {
            cluster_cidr: node.cluster_cidr,
            non_empty: &self.ledger.non_empty_sets(),
            masquerade: !self.options.has_fault(Fault::MissingMasquerade),
        })
    }

    fn full_sync(&mut self, state: &ProxyState) -> Result<Written, BackendError> {
        let scheduler = self.scheduler.clone();
        let k = self.kernel()?;
        let ctx = PlanContext {
            node_ip: k.node.node_ip,
            scheduler: &scheduler,
        };
        let plans: BTreeMap<_, _> = state
            .services
            .iter()
            .map(|(name, svc)| (name.clone(), plan_port(svc, state.endpoints_of(name), &ctx)))
            .collect();
        k.dummy = k.links.ensure_dummy(DUMMY_DEVICE)?;
        ensure_jumps()?;

        let desired = servers_of(plans.values());
        let mut current = BTreeMap::new();
        for info in k.ipvs.services()? {
            let key = info.server.key;
            let dests = if desired.contains_key(&key) {
                k.ipvs
                    .dests(&key)?
                    .into_iter()
                    .map(|d| ((d.server.addr, d.server.port), d.server.weight))
                    .collect()
            } else {
                Default::default()
            };
            current.insert(
                key,
                PlannedServer {
                    server: info.server,
                    dests,
                },
            );
        }
        let ops = server_ops(&current, &desired);

        let mut wanted = ipsets::Entries::new();
        for (set, entry) in plans.values().flat_map(|p| &p.entries) {
            wanted.entry(*set).or_default().insert(entry.clone());
        }
        let saved = cmd::run("ipset", &["save"], None)?;
        let (add, del) = ipsets::diff(&ipsets::parse_save(&saved.stdout), &wanted);
        let ipset = ipsets::restore_input(true, &add, &del);

        let bound = k.links.addresses(k.dummy)?;
        let want_bound: std::collections::BTreeSet<_> =
            plans.values().flat_map(|p| p.addresses.clone()).collect();
        let bind: Vec<_> = want_bound.difference(&bound).copied().collect();
        let unbind: Vec<_> = bound.difference(&want_bound).copied().collect();

        self.ledger.reset(plans);
        self.needs_full = true;
        let mut written = Written {
            ipvs: ops,
            addresses: bind.len() + unbind.len(),
            ipset,
            iptables: None,
        };
        self.apply(&mut written, &bind, &unbind, true)?;
        self.needs_full = false;
        Ok(written)
    }

    fn partial_sync(&mut self, req: &SyncRequest<'_>) -> Result<Written, BackendError> {
        let ctx = PlanContext {
            node_ip: req.node.node_ip,
            scheduler: &self.scheduler,
        };
        let changes = req
            .changes
            .changed
            .iter()
            .map(|name| {
                let plan = req
                    .state
                    .services
                    .get(name)
                    .map(|svc| plan_port(svc, req.state.endpoints_of(name), &ctx));
                (name.clone(), plan)
            })
            .collect();
        let delta = self.ledger.update(changes);
        self.needs_full = true;
        let mut written = Written {
            ipvs: delta.ops,
            addresses: delta.bind.len() + delta.unbind.len(),
            ipset: if delta.add.is_empty() && delta.del.is_empty() {
                String::new()
            } else {
                ipsets::restore_input(false, &delta.add, &delta.del)
            },
            iptables: None,
        };
        self.apply(&mut written, &delta.bind, &delta.unbind, false)?;
        self.needs_full = false;
        Ok(written)
    }

    /// Writes one sync's changes in kube-proxy's order: ipset entries (so
    /// masquerade and filter rules see new VIPs at once), virtual and real
    /// servers, new addresses, the iptables ruleset (if it changed or the
    /// sync is full), then stale addresses.
    fn apply(
        &mut self,
        written: &mut Written,
        bind: &[std::net::Ipv4Addr],
        unbind: &[std::net::Ipv4Addr],
        full: bool,
    ) -> Result<(), BackendError> {
        if !written.ipset.is_empty() {
            cmd::run(
                "ipset",
                &["restore", "-exist"],
                Some(written.ipset.as_bytes()),
            )?;
        }
        let node = self.kernel()?.node.clone();
        let ruleset = self.render_rules(&node);
        let k = self.kernel()?;
        k.ipvs.apply(&written.ipvs)?;
        k.links.add_addresses(k.dummy, DUMMY_DEVICE, bind)?;
        if full || self.rules.as_deref() != Some(ruleset.as_str()) {
            cmd::run(IPTABLES_RESTORE, &["--noflush"], Some(ruleset.as_bytes()))?;
            self.rules = Some(ruleset.clone());
            written.iptables = Some(ruleset);
        }
        let k = self.kernel()?;
        k.links.del_addresses(k.dummy, DUMMY_DEVICE, unbind)?;
        Ok(())
    }

    fn dump(
        &self,
        dir: &Path,
        req: &SyncRequest<'_>,
        written: &Written,
    ) -> Result<(), BackendError> {
        let stem = format!("{}-{}", req.seq, req.mode);
        let mut files: Vec<(String, String)> = Vec::new();
        if !written.ipvs.is_empty() {
            let lines: String = written
                .ipvs
                .iter()
                .map(|op| op.ipvsadm_line() + "\n")
                .collect();
            files.push((format!("{stem}.ipvsadm"), lines));
        }
        if !written.ipset.is_empty() {
            files.push((format!("{stem}.ipset"), written.ipset.clone()));
        }
        if let Some(t) = &written.iptables {
            files.push((format!("{stem}.iptables"), t.clone()));
        }
        for (name, text) in files {
            let path = dir.join(&name);
            std::fs::write(&path, text)
                .map_err(|e| BackendError::io(format!("writing {}", path.display()), e))?;
        }
        Ok(())
    }

    fn programmed(&self) -> u64 {
        let (vs, rs) = self.ledger.counts();
        (vs + rs) as u64 + self.rules.as_deref().map_or(0, rules::rule_count) as u64
    }
}

/// Prepends kube-proxy's jumps from the built-in chains (creating our
/// chains first) where they are missing.
fn ensure_jumps() -> Result<(), BackendError> {
    let nat = cmd::run(IPTABLES_SAVE, &["-t", "nat"], None)?;
    let filter = cmd::run(IPTABLES_SAVE, &["-t", "filter"], None)?;
    if let Some(input) = rules::jumps_input(&(nat.stdout + &filter.stdout)) {
        cmd::run(IPTABLES_RESTORE, &["--noflush"], Some(input.as_bytes()))?;
    }
    Ok(())
}

impl Backend for IpvsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ipvs
    }

    fn limitations(&self) -> Vec<(Feature, String)> {
        let mut out = limitations();
        if !matches!(self.scheduler.as_str(), "rr" | "wrr") {
            out.push((
                Feature::UniformBalance,
                format!(
                    "IPVS scheduler {:?} does not spread connections evenly (only rr and wrr with equal weights do)",
                    self.scheduler
                ),
            ));
        }
        out
    }

    fn setup(&mut self, node: &NodeContext) -> Result<(), BackendError> {
        let ipvs = IpvsClient::open()?;
        for (path, value) in SYSCTLS {
            std::fs::write(path, value)
                .map_err(|e| BackendError::io(format!("setting {path} to {value}"), e))?;
        }
        let mut links = Links::open()?;
        let dummy = links.ensure_dummy(DUMMY_DEVICE)?;
        cmd::run(
            "ipset",
            &["restore", "-exist"],
            Some(ipsets::restore_input(true, &[], &[]).as_bytes()),
        )?;
        ensure_jumps()?;
        self.kernel = Some(Kernel {
            ipvs,
            links,
            node: node.clone(),
            dummy,
        });
        Ok(())
    }

    fn sync(&mut self, req: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError> {
        let written = if req.mode == SyncMode::Full || self.needs_full {
            self.full_sync(req.state)?
        } else {
            self.partial_sync(req)?
        };
        if let Some(dir) = &self.options.dump_dir {
            self.dump(dir, req, &written)?;
        }
        conntrack::flush(&conntrack::stale_flows(req.state, req.changes))?;
        Ok(SyncOutcome {
            rules: self.programmed(),
            written: written.count(),
        })
    }

    fn stats(&mut self) -> Result<BackendStats, BackendError> {
        let names: BTreeMap<_, String> = self
            .ledger
            .plans()
            .iter()
            .flat_map(|(name, p)| {
                p.servers
                    .iter()
                    .map(move |s| (s.server.key, name.to_string()))
            })
            .collect();
        let k = self.kernel()?;
        let info = k.ipvs.info()?;
        let services = k.ipvs.services()?;
        let per_server: serde_json::Map<String, serde_json::Value> = services
            .iter()
            .map(|s| {
                let c = s.counters;
                (
                    s.server.key.to_string(),
                    serde_json::json!({
                        "servicePort": names.get(&s.server.key),
                        "connections": c.conns,
                        "inPackets": c.in_packets,
                        "outPackets": c.out_packets,
                        "inBytes": c.in_bytes,
                        "outBytes": c.out_bytes,
                    }),
                )
            })
            .collect();
        let (vs, rs) = self.ledger.counts();
        Ok(BackendStats {
            rules: self.programmed(),
            detail: serde_json::json!({
                "virtualServers": vs,
                "realServers": rs,
                "kernelVirtualServers": services.len(),
                "addresses": self.ledger.addresses().len(),
                "ipsetEntries": self.ledger.entry_count(),
                "iptablesRules": self.rules.as_deref().map_or(0, rules::rule_count),
                "scheduler": self.scheduler,
                "ipvsVersion": info.version_string(),
                "connectionTableSize": info.conn_tab_size,
                "perVirtualServer": per_server,
            }),
        })
    }

    fn cleanup(&mut self) -> Result<(), Vec<BackendError>> {
        let mut errors: Vec<BackendError> = Vec::new();
        match self.kernel.take() {
            Some(mut k) => {
                if let Err(e) = k.ipvs.flush() {
                    errors.push(e.into());
                }
                if let Err(e) = k.links.delete(DUMMY_DEVICE) {
                    errors.push(e.into());
                }
            }
            None => match Links::open().and_then(|mut l| l.delete(DUMMY_DEVICE)) {
                Ok(()) => {}
                Err(e) => errors.push(e.into()),
            },
        }
        let saved = cmd::run(IPTABLES_SAVE, &["-t", "nat"], None).and_then(|nat| {
            cmd::run(IPTABLES_SAVE, &["-t", "filter"], None).map(|f| nat.stdout + &f.stdout)
        });
        match saved {
            Ok(saved) => {
                if let Some(input) = rules::cleanup_input(&saved)
                    && let Err(e) =
                        cmd::run(IPTABLES_RESTORE, &["--noflush"], Some(input.as_bytes()))
                {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
        // Sets can be destroyed only once no rule refers to them.
        match cmd::run("ipset", &["list", "-n"], None) {
            Ok(listed) => {
                let input = ipsets::destroy_input(&listed.stdout);
                if !input.is_empty()
                    && let Err(e) = cmd::run("ipset", &["restore"], Some(input.as_bytes()))
                {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
        self.ledger = Ledger::default();
        self.rules = None;
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
