//! `svclab trace`: one real probe through a running lab, and the path the
//! kernel says it took.
//!
//! In every node the probe can cross, a temporary `ip svclab-trace-<run>`
//! table (`ip6` for an IPv6 probe) marks the probe's first packet for nf_tables tracing ([`nftrace`]),
//! `nft monitor trace` records every chain and rule it passed, and after
//! the probe the node's conntrack entry is read ([`conntrack`]). IPVS
//! ([`ipvs`]) and eBPF ([`bpf`]) keep their decisions outside nf_tables, so
//! their own tables are read as well. The marking tables are deleted again
//! whatever happens (and die with the lab's namespaces in any case).

pub mod bpf;
pub mod cli;
pub mod conntrack;
pub mod ipvs;
pub mod legacy;
pub mod nftrace;
mod render;
pub mod resolve;
mod tool;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::RngExt;
use serde::{Deserialize, Serialize};
use svclab_backends::{BackendKind, BackendSpec, Evidence};

use crate::probe::{ProbeResult, ProbeSpec, Prober};
use crate::state::{ProcRef, RunState};
use crate::topology::{RunId, Topology};
use crate::workload::Whoami;
use conntrack::ConntrackEntry;
use nftrace::{HookPass, MarkTable, Monitor, Selector};
pub use render::{html, text};
use resolve::{From, To};

/// How long a probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long trace events may trail the probe's answer.
const GRACE: Duration = Duration::from_millis(300);
/// Nodes traced at most; beyond, only the client's node and the nodes with
/// endpoints.
const MAX_TRACED_NODES: usize = 8;
/// Source ports a trace picks from: above Linux's default ephemeral range
/// start, so a concurrent connection rarely has it.
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 40000..=60999;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// No such lab, none, or several (the message says which).
    #[error("{0}")]
    Run(String),
    #[error("run {run}: reading its state: {message}")]
    State { run: String, message: String },
    #[error("--from {0}")]
    Vantage(String),
    #[error("--to {0}")]
    Target(String),
    #[error("in {netns}: `{command}`: {message}")]
    Tool {
        netns: String,
        command: String,
        message: String,
    },
    #[error("the probe could not run: {0}")]
    Probe(String),
}

impl TraceError {
    fn tool(netns: &str, program: &str, args: &[&str], message: String) -> TraceError {
        TraceError::Tool {
            netns: netns.to_string(),
            command: std::iter::once(program)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
            message,
        }
    }
}

/// What the kernel showed in one node.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeTrace {
    pub node: String,
    pub netns: String,
    /// Every base chain the packet passed, with the rules it matched.
    pub hooks: Vec<HookPass>,
    pub conntrack: Vec<ConntrackEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipvs: Option<Vec<ipvs::IpvsConn>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bpf: Option<bpf::BpfView>,
    /// What could not be read here, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One traced probe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trace {
    pub run: String,
    pub backend: Option<String>,
    pub from: From,
    pub to: To,
    /// The probe's own address: the client's IP and the source port
    /// the trace chose.
    pub client: SocketAddr,
    pub probe: ProbeResult,
    /// The pod that answered and the source it saw.
    pub answered_by: Option<Whoami>,
    /// Nodes in the order the packet reached them.
    pub nodes: Vec<NodeTrace>,
    /// Every chain entered, in order, across nodes.
    pub path: Vec<String>,
    /// The destination the first node rewrote to.
    pub dnat: Option<SocketAddr>,
    /// The source the first node rewrote to (masquerade).
    pub snat: Option<SocketAddr>,
    /// What a trace on this backend cannot show, and why.
    pub limits: Vec<String>,
}

/// What a trace needs to know about the lab.
#[derive(Clone, Debug)]
pub struct LabView {
    pub run: RunId,
    pub backend: Option<String>,
    pub topology: Topology,
    pub processes: Vec<ProcRef>,
}

impl LabView {
    pub fn of_state(st: &RunState) -> Result<LabView, TraceError> {
        let topology = st.topology.clone().ok_or_else(|| TraceError::State {
            run: st.run.to_string(),
            message: "it has no topology yet".into(),
        })?;
        Ok(LabView {
            run: st.run.clone(),
            backend: st.backend.clone(),
            topology,
            processes: st.processes.clone(),
        })
    }

    fn node_index(&self, name: &str) -> Option<usize> {
        self.topology.nodes.iter().position(|n| n.name == name)
    }
}

/// The running lab `run`, or the only one (the command line's one
/// run-id rule, [`crate::state::pick_run`]).
pub fn find_run(run: Option<&str>) -> Result<RunState, TraceError> {
    crate::state::pick_run(run).map_err(|e| TraceError::Run(format!("{e:#}")))
}

/// Limits of tracing on `backend`, said before anything runs.
fn limits(backend: Option<&str>) -> Vec<String> {
    let mut out = vec![
        "only the connection's first packet is traced (the one the nat chains see); chains \
         below priority -180 (the raw table) run before the trace is switched on"
            .to_string(),
    ];
    match backend {
        Some(b) if b.starts_with("exec:") => out.push(format!(
            "{b} is an external program: the trace shows whatever nf_tables rules it wrote; \
             other dataplanes are not visible"
        )),
        _ => out.extend(
            spec_of(backend)
                .and_then(|s| s.trace.notes)
                .map(str::to_string),
        ),
    }
    out
}

/// The registry's spec of the backend named in the run's state; no
/// backend at all is the `none` baseline.
fn spec_of(backend: Option<&str>) -> Option<&'static BackendSpec> {
    match backend {
        Some(b) => svclab_backends::registry::spec(b),
        None => BackendKind::None.spec(),
    }
}

/// Where `backend`'s decisions show besides nf_tables trace events; an
/// external program's rules are nf_tables rules as far as the trace knows.
fn evidence(backend: Option<&str>) -> Evidence {
    spec_of(backend).map_or(Evidence::NfTables, |s| s.trace.evidence)
}

/// The nodes to trace in, the client's node first.
fn traced_nodes(
    lab: &LabView,
    first: usize,
    endpoint_nodes: Option<&BTreeSet<usize>>,
) -> Vec<usize> {
    let mut out = vec![first];
    let all = 0..lab.topology.nodes.len();
    let rest: Vec<usize> = if lab.topology.nodes.len() <= MAX_TRACED_NODES {
        all.collect()
    } else {
        endpoint_nodes.into_iter().flatten().copied().collect()
    };
    for n in rest {
        if !out.contains(&n) && out.len() < MAX_TRACED_NODES {
            out.push(n);
        }
    }
    out
}

/// Why IPVS's and eBPF's own tables are not read for an IPv6 probe.
const IPV4_TABLES_ONLY: &str = "an IPv6 probe: the tracer reads IPVS's and eBPF's own tables for \
     IPv4 connections only (svclab's ipvs and ebpf backends program IPv4 only)";

/// Everything running in one node while the probe runs.
struct Armed {
    node: usize,
    table: MarkTable,
    monitor: Monitor,
    bases: nftrace::BaseChains,
    /// iptables-legacy's counters before the probe.
    legacy: Option<legacy::Counters>,
}

/// A node's address and pod CIDR in `client`'s family (`None` for IPv6 in
/// a lab without it).
fn node_side(
    node: &crate::topology::NodeNet,
    client: SocketAddr,
) -> Option<(IpAddr, ipnet::IpNet)> {
    let family = svclab_backends::model::IpFamily::of(&client.ip());
    Some((node.ip_of(family)?, node.pod_cidr_of(family)?))
}

fn arm(
    lab: &LabView,
    nodes: &[usize],
    client: SocketAddr,
    to: &To,
) -> Result<Vec<Armed>, TraceError> {
    let first_ip = node_side(&lab.topology.nodes[nodes[0]], client).map(|(ip, _)| ip);
    let mut armed = Vec::new();
    for (i, &n) in nodes.iter().enumerate() {
        let node = &lab.topology.nodes[n];
        let snat_from = match (first_ip, node_side(node, client)) {
            (Some(ip), Some((_, pods))) if i > 0 => Some((ip, pods)),
            _ => None,
        };
        let sel = Selector {
            protocol: to.protocol,
            client,
            snat_from,
        };
        let bases = nftrace::base_chains(&node.netns)?;
        let table = MarkTable::create(&node.netns, lab.run.as_str(), &sel)?;
        let monitor = Monitor::start(&node.netns)?;
        let legacy = match evidence(lab.backend.as_deref()) {
            Evidence::RuleCounters => Some(legacy::snapshot(&node.netns)?),
            _ => None,
        };
        armed.push(Armed {
            node: n,
            table,
            monitor,
            bases,
            legacy,
        });
    }
    Ok(armed)
}

fn agent_pid(lab: &LabView, node: &str) -> Option<u32> {
    lab.processes
        .iter()
        .find(|p| p.role == format!("agent {node}") && p.alive())
        .map(|p| p.pid)
}

/// Stops the monitors, reads conntrack and the backend's own tables, and
/// deletes the marking tables.
fn collect(
    lab: &LabView,
    armed: Vec<Armed>,
    client: SocketAddr,
    to: &To,
) -> Result<Vec<NodeTrace>, TraceError> {
    let skip = nftrace::table_name(lab.run.as_str());
    let mut out = Vec::new();
    let mut ip_id = None;
    let mut first_err = None;
    for mut a in armed {
        let node = &lab.topology.nodes[a.node];
        let mut notes = Vec::new();
        let text = a.monitor.stop().unwrap_or_else(|e| {
            notes.push(e.to_string());
            String::new()
        });
        if let Err(e) = a.table.delete() {
            first_err.get_or_insert(e);
        }
        let mut hooks = nftrace::parse(&text, &a.bases, &skip, ip_id);
        if let Some(before) = &a.legacy {
            match legacy::snapshot(&node.netns) {
                Ok(after) => hooks.extend(legacy::matched(before, &after)),
                Err(e) => notes.push(e.to_string()),
            }
        }
        ip_id = ip_id.or_else(|| hooks.first().and_then(|h| h.packet.ip_id));
        // The tuple this node saw first: the probe's own, or after SNAT.
        let seen = nftrace::marked(&text, &skip);
        let src = hooks
            .iter()
            .map(|h| &h.packet)
            .chain(seen.iter().map(|(_, p)| p))
            .find_map(|p| Some(SocketAddr::new(p.saddr?, p.sport?)))
            .unwrap_or(client);
        let conntrack = conntrack::entries(&node.netns, to.protocol, src).unwrap_or_else(|e| {
            notes.push(e.to_string());
            Vec::new()
        });
        let ipvs = match (evidence(lab.backend.as_deref()), src) {
            (Evidence::IpvsConnections, SocketAddr::V4(src)) => {
                match ipvs::connections(&node.netns, src) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        notes.push(e);
                        None
                    }
                }
            }
            (Evidence::IpvsConnections, SocketAddr::V6(_)) => {
                notes.push(IPV4_TABLES_ONLY.into());
                None
            }
            _ => None,
        };
        let bpf = match (evidence(lab.backend.as_deref()), agent_pid(lab, &node.name)) {
            (Evidence::BpfMaps, Some(pid)) => match (client, to.address) {
                (SocketAddr::V4(client), SocketAddr::V4(target)) => {
                    match bpf::view(pid, to.protocol, client, target, to.node_port) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            notes.push(e);
                            None
                        }
                    }
                }
                _ => {
                    notes.push(IPV4_TABLES_ONLY.into());
                    None
                }
            },
            (Evidence::BpfMaps, None) => {
                notes.push(format!("no live agent process for node {}", node.name));
                None
            }
            _ => None,
        };
        if hooks.is_empty() {
            match seen.first() {
                Some((hook, pkt)) => notes.push(format!(
                    "netfilter saw the packet at {hook} as {} and no rule of another table \
                     matched it",
                    pkt.summary()
                )),
                None => notes.push("no traced packet reached this node".into()),
            }
        }
        out.push(NodeTrace {
            node: node.name.clone(),
            netns: node.netns.clone(),
            hooks,
            conntrack,
            ipvs,
            bpf,
            notes,
        });
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Chains entered, in order: each step's chain and each jump's target,
/// once per hook pass (a return to the base chain is not a new entry).
pub(crate) fn path_of(nodes: &[NodeTrace]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in nodes.iter().flat_map(|n| &n.hooks) {
        let mut seen: Vec<&str> = Vec::new();
        for s in &h.steps {
            let target = s
                .verdict
                .strip_prefix("jump ")
                .or_else(|| s.verdict.strip_prefix("goto "));
            for c in std::iter::once(s.chain.as_str()).chain(target) {
                if !seen.contains(&c) {
                    seen.push(c);
                    out.push(c.to_string());
                }
            }
        }
    }
    out
}

/// The address the first eBPF flow entry of `kind` rewrites to: eBPF
/// translates before conntrack sees the packet.
fn bpf_rewrite(nodes: &[NodeTrace], kind: &str) -> Option<SocketAddr> {
    nodes
        .iter()
        .filter_map(|n| n.bpf.as_ref())
        .flat_map(|b| &b.flows)
        .find(|f| f.kind == kind)
        .map(|f| f.rewrite_to.into())
}

/// Traces one probe from `from` to `to` in a running lab. `endpoint_nodes`
/// (indices) narrows the traced nodes in big labs.
pub async fn trace(
    lab: &LabView,
    prober: &Prober,
    from: &From,
    to: &To,
    endpoint_nodes: Option<&BTreeSet<usize>>,
) -> Result<Trace, TraceError> {
    let first = match (&to.node, &from.node) {
        (Some(n), _) if to.node_port && from.kind == "external" => lab.node_index(n),
        (_, Some(n)) => lab.node_index(n),
        (Some(n), None) => lab.node_index(n),
        (None, None) => Some(0),
    }
    .unwrap_or(0);
    let nodes = traced_nodes(lab, first, endpoint_nodes);
    let port = rand::rng().random_range(SOURCE_PORTS);
    let client = SocketAddr::new(from.ip, port);

    let armed = {
        let (lab, nodes, to) = (lab.clone(), nodes.clone(), to.clone());
        tokio::task::spawn_blocking(move || arm(&lab, &nodes, client, &to))
            .await
            .map_err(|e| TraceError::Probe(e.to_string()))??
    };
    let mut spec = ProbeSpec::new(to.address, to.protocol, PROBE_TIMEOUT);
    spec.source_port = Some(port);
    let probe = prober.probe(&from.netns, spec).await;
    tokio::time::sleep(GRACE).await;
    let collected = {
        let (lab, to) = (lab.clone(), to.clone());
        tokio::task::spawn_blocking(move || collect(&lab, armed, client, &to))
            .await
            .map_err(|e| TraceError::Probe(e.to_string()))?
    };
    let probe = probe.map_err(|e| TraceError::Probe(format!("{e:#}")))?;
    let nodes = collected?;

    let first_ct = nodes.first().and_then(|n| {
        n.conntrack
            .iter()
            .find(|c| c.original.src == client)
            .cloned()
    });
    let dnat = first_ct
        .as_ref()
        .and_then(ConntrackEntry::dnat_to)
        .or_else(|| {
            nodes
                .iter()
                .flat_map(|n| &n.hooks)
                .flat_map(|h| &h.steps)
                .find_map(|s| {
                    let r = s.rule.as_deref()?;
                    r.split_once("dnat to ")?
                        .1
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
        })
        .or_else(|| bpf_rewrite(&nodes, "dnat"));
    let snat = first_ct
        .as_ref()
        .and_then(ConntrackEntry::snat_to)
        .or_else(|| bpf_rewrite(&nodes, "snat"));
    Ok(Trace {
        run: lab.run.to_string(),
        backend: lab.backend.clone(),
        from: from.clone(),
        to: to.clone(),
        client,
        answered_by: probe.answer.clone(),
        probe,
        path: path_of(&nodes),
        dnat,
        snat,
        nodes,
        limits: limits(lab.backend.as_deref()),
    })
}

/// A trace of the probe a failed check made, for its report: from the
/// check's vantage point to the address it dialled. One probe and about a
/// second of tracing; `None` when the lab's backend leaves nothing to trace
/// or the vantage is not one of the lab's namespaces.
pub async fn for_failure(
    lab: &crate::lab::Lab,
    vantage: &crate::probe::Vantage,
    target: &crate::checks::expect::Target,
    address: std::net::SocketAddr,
) -> Option<Result<Trace, TraceError>> {
    let view = LabView {
        run: lab.run.clone(),
        backend: lab.backend.as_ref().map(|b| b.to_string()),
        topology: lab.topology.clone(),
        processes: lab.state.processes.clone(),
    };
    if evidence(view.backend.as_deref()) == Evidence::Nothing {
        return None;
    }
    let from = From {
        kind: match vantage.kind {
            "hairpin" => "pod".into(),
            k => k.to_string(),
        },
        name: vantage.name.clone(),
        netns: vantage.netns.clone(),
        ip: vantage.ip,
        node: vantage.node.clone(),
    };
    let node_port = address.ip() != target.vip;
    let to = To {
        service: Some(format!("{}/{}", target.namespace, target.service)),
        port_name: Some(target.port_name.clone()).filter(|n| !n.is_empty()),
        protocol: target.protocol,
        address,
        node_port,
        node: view
            .topology
            .nodes
            .iter()
            .find(|n| n.has_ip(address.ip()))
            .map(|n| n.name.clone()),
    };
    let endpoint_nodes: BTreeSet<usize> = target
        .endpoints
        .iter()
        .filter_map(|e| view.node_index(&e.node))
        .collect();
    Some(trace(&view, &lab.prober, &from, &to, Some(&endpoint_nodes)).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_evidence_come_from_the_backend_spec() {
        let says = |b: Option<&str>, what: &str| limits(b).iter().any(|l| l.contains(what));
        assert!(says(Some("iptables-legacy"), "x_tables"));
        assert!(says(Some("ipvs"), "IPVS connection entry"));
        assert!(says(Some("ebpf"), "BPF map entries"));
        assert!(says(Some("userspace"), "redirect to the proxy"));
        assert!(says(Some("none"), "nothing rewrites the packet"));
        assert!(says(None, "nothing rewrites the packet"));
        assert!(says(Some("exec:/bin/proxy"), "external program"));
        assert_eq!(limits(Some("iptables")).len(), 1);
        assert_eq!(evidence(Some("iptables-legacy")), Evidence::RuleCounters);
        assert_eq!(evidence(Some("ipvs")), Evidence::IpvsConnections);
        assert_eq!(evidence(Some("ebpf")), Evidence::BpfMaps);
        assert_eq!(evidence(Some("nftables")), Evidence::NfTables);
        assert_eq!(evidence(Some("exec:/bin/proxy")), Evidence::NfTables);
        assert_eq!(evidence(None), Evidence::Nothing);
        assert_eq!(evidence(Some("none")), Evidence::Nothing);
    }
}
