//! The backend itself: setup, full and partial syncs, stats and cleanup.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use super::DUMMY_DEVICE;
use super::capability::probe_scheduler;
use super::ledger::Ledger;
use super::netlink::{IpvsClient, Op};
use super::plan::{PlanContext, PlannedServer, plan_port, server_ops, servers_of};
use super::{ipsets, rules};
use crate::kernel::dump;
use crate::kernel::iptables::{self, Flavor};
use crate::kernel::links::Links;
use crate::model::{NodeContext, ProxyState, V4, V4Net};
use crate::protocol::SyncMode;
use crate::{
    Backend, BackendError, BackendOptions, BackendStats, Fault, SyncOutcome, SyncRequest,
    kernel::cmd, kernel::conntrack,
};

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

/// The open sockets and facts of the node namespace, from `setup`.
struct Kernel {
    ipvs: IpvsClient,
    links: Links,
    node: NodeContext,
    dummy: u32,
}

pub struct IpvsBackend {
    /// The iptables that holds the small fixed ruleset.
    flavor: Flavor,
    options: BackendOptions,
    scheduler: String,
    kernel: Option<Kernel>,
    ledger: Ledger,
    /// The iptables ruleset last applied.
    rules: Option<String>,
    /// A partial sync failed midway: the ledger may not match the kernel.
    pub(super) needs_full: bool,
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
        let entries = self
            .ipset
            .lines()
            .filter(|l| l.starts_with("add ") || l.starts_with("del "))
            .count();
        (self.ipvs.len() + self.addresses + entries) as u64
            + self
                .iptables
                .as_deref()
                .map_or(0, |t| rules::rule_count(t) as u64)
    }
}

impl IpvsBackend {
    pub fn new(flavor: Flavor, options: &BackendOptions) -> Self {
        IpvsBackend {
            flavor,
            scheduler: super::scheduler(options),
            options: options.clone(),
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
        let node_denied: Vec<_> = self
            .ledger
            .plans()
            .values()
            .flat_map(|p| p.node_denied.iter().copied())
            .collect();
        rules::render(&rules::RuleInput {
            cluster_cidr: node.cluster_cidr.v4(),
            non_empty: &self.ledger.non_empty_sets(),
            masquerade: !self.options.has_fault(Fault::MissingMasquerade),
            node_denied: &node_denied,
        })
    }

    fn full_sync(&mut self, state: &ProxyState) -> Result<Written, BackendError> {
        let scheduler = self.scheduler.clone();
        let flavor = self.flavor;
        let k = self.kernel()?;
        let node_port_ips: Vec<Ipv4Addr> = k.node.nodeport_ips().iter().map(V4::v4).collect();
        let ctx = PlanContext {
            node_ip: k.node.node_ip.v4(),
            node_port_ips: &node_port_ips,
            scheduler: &scheduler,
        };
        let plans: BTreeMap<_, _> = state
            .services
            .iter()
            .map(|(name, svc)| (name.clone(), plan_port(svc, state.endpoints_of(name), &ctx)))
            .collect();
        k.dummy = k.links.ensure_dummy(DUMMY_DEVICE)?;
        ensure_jumps(flavor)?;

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
        let ipset = ipsets::replace_input(&wanted);

        let bound: BTreeSet<_> = k.links.addresses(k.dummy)?.into_iter().collect();
        let want_bound: BTreeSet<_> = plans.values().flat_map(|p| p.addresses.clone()).collect();
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
        let node = &self.kernel()?.node;
        let node_ip = node.node_ip.v4();
        let node_port_ips: Vec<Ipv4Addr> = node.nodeport_ips().iter().map(V4::v4).collect();
        let ctx = PlanContext {
            node_ip,
            node_port_ips: &node_port_ips,
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
                ipsets::changes_input(&delta.add, &delta.del)
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
        bind: &[Ipv4Addr],
        unbind: &[Ipv4Addr],
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
            iptables::restore(self.flavor, &ruleset)?;
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
        let write = |ext: &str, text: &str| dump::write(dir, req.seq, req.mode, ext, text);
        if !written.ipvs.is_empty() {
            let lines: String = written
                .ipvs
                .iter()
                .map(|op| op.ipvsadm_line() + "\n")
                .collect();
            write("ipvsadm", &lines)?;
        }
        if !written.ipset.is_empty() {
            write("ipset", &written.ipset)?;
        }
        if let Some(t) = &written.iptables {
            write("iptables", t)?;
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
pub(super) fn ensure_jumps(flavor: Flavor) -> Result<(), BackendError> {
    let saved = iptables::save(flavor, "nat")? + &iptables::save(flavor, "filter")?;
    if let Some(input) = rules::jumps_input(&saved) {
        iptables::restore(flavor, &input)?;
    }
    Ok(())
}

impl Backend for IpvsBackend {
    fn setup(&mut self, node: &NodeContext) -> Result<(), BackendError> {
        let mut ipvs = IpvsClient::open()?;
        probe_scheduler(&mut ipvs, &self.scheduler).map_err(BackendError::Other)?;
        for (path, value) in SYSCTLS {
            std::fs::write(path, value)
                .map_err(|e| BackendError::io(format!("setting {path} to {value}"), e))?;
        }
        let mut links = Links::open()?;
        let dummy = links.ensure_dummy(DUMMY_DEVICE)?;
        cmd::run(
            "ipset",
            &["restore", "-exist"],
            Some(ipsets::create_input().as_bytes()),
        )?;
        ensure_jumps(self.flavor)?;
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
        let saved = iptables::save(self.flavor, "nat")
            .and_then(|nat| iptables::save(self.flavor, "filter").map(|f| nat + &f));
        match saved {
            Ok(saved) => {
                if let Some(input) = rules::cleanup_input(&saved)
                    && let Err(e) = iptables::restore(self.flavor, &input)
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
