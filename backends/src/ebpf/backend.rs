//! The ebpf [`Backend`]: loads and attaches the programs at setup, turns
//! each sync into map updates for the service ports that changed, clears
//! stale UDP flows, and reads the per-Service counters.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::abi;
use super::loader::{Hook, NODEPORT_ON_GATEWAY, NODEPORT_ON_NODE_IP, NodeConfig, Programs};
use super::maps::KernelMaps;
use super::plan::ServicePlan;
use super::sync::{Applied, Book, Maps};
use crate::kernel::links::{Link, Links};
use crate::model::{NodeContext, ServicePortName, V4, V4Net};
use crate::protocol::SyncMode;
use crate::{Backend, BackendError, BackendOptions, BackendStats, Fault, SyncOutcome, SyncRequest};

/// The sysctl that lets lo deliver replies from the node's own address to
/// itself (connections from the node to its own NodePorts).
const LO_ACCEPT_LOCAL: &str = "/proc/sys/net/ipv4/conf/lo/accept_local";

pub struct EbpfBackend {
    faults: u32,
    node: Option<Node>,
}

/// Everything set up in the node.
struct Node {
    programs: Programs,
    maps: KernelMaps,
    book: Book,
    bridge: String,
    /// A sync failed part-way: the next one reconciles every port.
    resync: bool,
    /// Ports the programs cannot balance, with the reason.
    unsupported: BTreeMap<ServicePortName, String>,
    /// lo's accept_local before setup, restored at cleanup.
    lo_accept_local: String,
    flows_flushed: u64,
}

fn other(what: impl std::fmt::Display) -> BackendError {
    BackendError::Other(what.to_string())
}

impl EbpfBackend {
    pub fn new(options: &BackendOptions) -> Self {
        let mut faults = 0;
        for (fault, bit) in [
            (Fault::MissingMasquerade, abi::FAULT_MISSING_MASQUERADE),
            (Fault::WrongProbability, abi::FAULT_WRONG_PROBABILITY),
            (Fault::NoReject, abi::FAULT_NO_REJECT),
        ] {
            if options.has_fault(fault) {
                faults |= bit;
            }
        }
        EbpfBackend { faults, node: None }
    }

    fn node(&mut self) -> Result<&mut Node, BackendError> {
        self.node
            .as_mut()
            .ok_or_else(|| other("the ebpf backend is not set up (setup was not called or failed)"))
    }
}

/// The pods' host veths: the bridge's ports.
fn pod_ports(all: &[Link], bridge: &str) -> Result<Vec<String>, BackendError> {
    let b = all.iter().find(|l| l.name == bridge).ok_or_else(|| {
        other(format!(
            "the pod bridge {bridge} does not exist in this namespace"
        ))
    })?;
    Ok(all
        .iter()
        .filter(|l| l.master == Some(b.index))
        .map(|l| l.name.clone())
        .collect())
}

impl Node {
    /// Attaches to new pod veths and forgets vanished ones.
    fn scan_pods(&mut self) -> Result<(), BackendError> {
        let all = Links::open().and_then(|mut l| l.all()).map_err(other)?;
        let ports = pod_ports(&all, &self.bridge)?;
        for gone in self.programs.attached(Hook::FromPod) {
            if !ports.contains(&gone) {
                self.programs.detach(&gone, Hook::FromPod);
                self.programs.detach(&gone, Hook::ToPod);
            }
        }
        for p in &ports {
            self.programs.attach(p, Hook::FromPod).map_err(other)?;
            self.programs.attach(p, Hook::ToPod).map_err(other)?;
        }
        Ok(())
    }
}

impl Backend for EbpfBackend {
    fn setup(&mut self, node: &NodeContext) -> Result<(), BackendError> {
        let mut links = Links::open().map_err(other)?;
        let all = links.all().map_err(other)?;
        let bridge = all.iter().find(|l| l.name == node.bridge).ok_or_else(|| {
            other(format!(
                "the pod bridge {} does not exist in this namespace",
                node.bridge
            ))
        })?;
        let gateway_ip = *links
            .addresses(bridge.index)
            .map_err(other)?
            .first()
            .ok_or_else(|| {
                other(format!(
                    "the pod bridge {} has no IPv4 address",
                    node.bridge
                ))
            })?;
        if !all.iter().any(|l| l.name == node.uplink) {
            return Err(other(format!(
                "the uplink {} does not exist in this namespace",
                node.uplink
            )));
        }
        // The programs know two node addresses; nodePortAddresses picks
        // among them.
        let mut nodeport_on = 0;
        for ip in node.nodeport_ips() {
            nodeport_on |= if ip == node.node_ip {
                NODEPORT_ON_NODE_IP
            } else if ip == gateway_ip {
                NODEPORT_ON_GATEWAY
            } else {
                return Err(other(format!(
                    "nodePortAddresses selects {ip}, which is neither the node IP {} nor the \
                     pod bridge's {gateway_ip}",
                    node.node_ip
                )));
            };
        }
        let cfg = NodeConfig {
            nodeport_on,
            node_ip: node.node_ip.v4(),
            gateway_ip,
            pod_cidr: node.pod_cidr.v4(),
            cluster_cidr: node.cluster_cidr.v4(),
            faults: self.faults,
        };
        let mut programs = Programs::load(&cfg).map_err(other)?;
        let maps = KernelMaps::take(programs.ebpf_mut()).map_err(other)?;
        programs
            .attach(&node.uplink, Hook::FromNet)
            .map_err(other)?;
        programs.attach(&node.uplink, Hook::ToNet).map_err(other)?;
        programs.attach("lo", Hook::FromLo).map_err(other)?;
        let lo_accept_local = std::fs::read_to_string(LO_ACCEPT_LOCAL)
            .map_err(|e| BackendError::io(format!("reading {LO_ACCEPT_LOCAL}"), e))?;
        std::fs::write(LO_ACCEPT_LOCAL, "1")
            .map_err(|e| BackendError::io(format!("writing 1 to {LO_ACCEPT_LOCAL}"), e))?;
        let mut n = Node {
            programs,
            maps,
            book: Book::default(),
            bridge: node.bridge.clone(),
            resync: false,
            unsupported: BTreeMap::new(),
            lo_accept_local: lo_accept_local.trim().to_string(),
            flows_flushed: 0,
        };
        let scanned = n.scan_pods();
        // Kept even on error, so cleanup restores the sysctl.
        self.node = Some(n);
        scanned
    }

    fn sync(&mut self, req: &SyncRequest<'_>) -> Result<SyncOutcome, BackendError> {
        let n = self.node()?;
        let full = req.mode == SyncMode::Full || n.resync;
        if req.mode == SyncMode::Full {
            n.scan_pods()?;
        }
        let names: BTreeSet<ServicePortName> = if full {
            n.book
                .names()
                .chain(req.state.services.keys())
                .cloned()
                .collect()
        } else {
            req.changes.changed.clone()
        };
        let mut applied = Applied::default();
        let mut errors = Vec::new();
        for name in &names {
            let desired = match req.state.services.get(name) {
                None => None,
                Some(svc) => match ServicePlan::new(svc, req.state.endpoints_of(name)) {
                    Ok(p) => {
                        n.unsupported.remove(name);
                        Some(p)
                    }
                    Err(e) => {
                        n.unsupported.insert(name.clone(), e.to_string());
                        None
                    }
                },
            };
            if desired.is_none() && !req.state.services.contains_key(name) {
                n.unsupported.remove(name);
            }
            let maps: &mut dyn Maps = &mut n.maps;
            if let Err(e) = n.book.apply(maps, name, desired.as_ref(), &mut applied) {
                errors.push(e.to_string());
            }
        }
        let flushed = n.maps.flush_flows(&applied.stale_udp);
        n.book.release_ids();
        n.resync = !errors.is_empty();
        n.flows_flushed += flushed.as_ref().map_or(0, |c| *c as u64);
        if let Err(e) = flushed {
            errors.push(format!("clearing stale UDP flows: {e}"));
        }
        if !errors.is_empty() {
            return Err(other(format!(
                "{} error(s), the next sync retries every port: {}",
                errors.len(),
                errors.join("; ")
            )));
        }
        Ok(SyncOutcome {
            rules: n.book.entries(),
            written: applied.written,
        })
    }

    fn stats(&mut self) -> Result<BackendStats, BackendError> {
        let n = self.node()?;
        let mut services = serde_json::Map::new();
        for (name, p) in n.book.iter() {
            let c = n.maps.counters(p.id).map_err(other)?;
            services.insert(
                name.to_string(),
                json!({"id": p.id, "packets": c.packets, "connections": c.connections}),
            );
        }
        let unsupported: BTreeMap<String, &String> = n
            .unsupported
            .iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        Ok(BackendStats {
            rules: n.book.entries(),
            detail: json!({
                "services": services,
                "podVeths": n.programs.attached(Hook::FromPod).len(),
                "staleUdpFlowsFlushed": n.flows_flushed,
                "unsupported": unsupported,
            }),
        })
    }

    fn cleanup(&mut self) -> Result<(), Vec<BackendError>> {
        let Some(n) = self.node.take() else {
            return Ok(());
        };
        let mut errors = Vec::new();
        // Closing the programs' links and maps detaches and frees them:
        // nothing is pinned.
        drop(n.maps);
        if let Err(e) = n.programs.unload() {
            errors.push(other(e));
        }
        if let Err(e) = std::fs::write(LO_ACCEPT_LOCAL, &n.lo_accept_local) {
            errors.push(BackendError::io(
                format!("restoring {LO_ACCEPT_LOCAL} to {}", n.lo_accept_local),
                e,
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}
