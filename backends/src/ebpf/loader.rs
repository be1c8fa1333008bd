//! Loading the BPF programs with this node's settings, and attaching them
//! to the node's links (tcx links on kernels that have them, clsact
//! filters before 6.6). Everything is owned by the agent's process: links
//! and maps go away when it exits, and nothing is pinned.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use aya::programs::tc::{self, SchedClassifierLinkId, TcAttachType, TcError};
use aya::programs::{ProgramError, SchedClassifier};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};
use ipnet::Ipv4Net;

use super::abi::be_addr;
use super::object;
use crate::Unavailable;
use crate::kernel::links::{LinkError, Links};

/// Where a program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// Ingress of a pod's host veth: the pod's outgoing traffic.
    FromPod,
    /// Egress of a pod's host veth: what reaches the pod.
    ToPod,
    /// Ingress of the node's uplink.
    FromNet,
    /// Egress of the node's uplink.
    ToNet,
    /// Egress of lo: the node talking to its own addresses.
    FromLo,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::FromPod,
        Hook::ToPod,
        Hook::FromNet,
        Hook::ToNet,
        Hook::FromLo,
    ];

    /// The program's function name in `bpf/lb.c`.
    pub fn program(self) -> &'static str {
        match self {
            Hook::FromPod => "from_pod",
            Hook::ToPod => "to_pod",
            Hook::FromNet => "from_net",
            Hook::ToNet => "to_net",
            Hook::FromLo => "from_lo",
        }
    }

    fn direction(self) -> TcAttachType {
        match self {
            Hook::FromPod | Hook::FromNet => TcAttachType::Ingress,
            Hook::ToPod | Hook::ToNet | Hook::FromLo => TcAttachType::Egress,
        }
    }
}

/// The node settings the programs are compiled against at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub node_ip: Ipv4Addr,
    /// The pod bridge's address (masquerade source towards local pods).
    pub gateway_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub cluster_cidr: Ipv4Net,
    /// `FAULT_*` bits.
    pub faults: u32,
    /// `NODEPORT_ON_*` bits: which of `node_ip` and `gateway_ip` accept
    /// NodePorts.
    pub nodeport_on: u32,
}

/// `NODEPORT_ON_NODE_IP` and `NODEPORT_ON_GATEWAY` in bpf/config.h.
pub const NODEPORT_ON_NODE_IP: u32 = 1;
pub const NODEPORT_ON_GATEWAY: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    NoObject(#[from] Unavailable),
    #[error("loading the BPF object (maps, BTF, relocations): {0}")]
    Object(#[source] aya::EbpfError),
    #[error("BPF program `{program}`: {message}")]
    Program {
        program: &'static str,
        message: String,
    },
    #[error("attaching BPF program `{program}` to {iface} ({direction:?}): {message}")]
    Attach {
        program: &'static str,
        iface: String,
        direction: TcAttachType,
        message: String,
    },
}

/// Lines of a verifier log an error keeps: the end says what failed.
const LOG_TAIL: usize = 40;

/// A program error, with only the end of a verifier log.
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n");
            format!("the verifier rejected it ({io_error}); end of the verifier log:\n{tail}")
        }
        other => other.to_string(),
    }
}

/// The loaded programs and their attachments.
pub struct Programs {
    ebpf: Ebpf,
    links: BTreeMap<(String, Hook), SchedClassifierLinkId>,
    /// Links whose clsact qdisc this backend added (kernels before tcx).
    clsact_added: BTreeSet<String>,
}

impl Programs {
    /// Loads every program and map with `cfg` (the verifier runs here).
    pub fn load(cfg: &NodeConfig) -> Result<Programs, LoadError> {
        let bytes = object::bytes()?;
        let node_ip = be_addr(cfg.node_ip);
        let gateway_ip = be_addr(cfg.gateway_ip);
        let pod_net = be_addr(cfg.pod_cidr.network());
        let pod_mask = be_addr(cfg.pod_cidr.netmask());
        let cluster_net = be_addr(cfg.cluster_cidr.network());
        let cluster_mask = be_addr(cfg.cluster_cidr.netmask());
        let mut ebpf = EbpfLoader::new()
            .override_global("NODE_IP", &node_ip, true)
            .override_global("GATEWAY_IP", &gateway_ip, true)
            .override_global("POD_NET", &pod_net, true)
            .override_global("POD_MASK", &pod_mask, true)
            .override_global("CLUSTER_NET", &cluster_net, true)
            .override_global("CLUSTER_MASK", &cluster_mask, true)
            .override_global("FAULTS", &cfg.faults, true)
            .override_global("NODEPORT_ON", &cfg.nodeport_on, true)
            .load(bytes)
            .map_err(LoadError::Object)?;
        for hook in Hook::ALL {
            let program = hook.program();
            classifier(&mut ebpf, program)?
                .load()
                .map_err(|e| LoadError::Program {
                    program,
                    message: describe(&e),
                })?;
        }
        Ok(Programs {
            ebpf,
            links: BTreeMap::new(),
            clsact_added: BTreeSet::new(),
        })
    }

    /// The maps, for the caller to own.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches `hook`'s program to `iface` (once).
    pub fn attach(&mut self, iface: &str, hook: Hook) -> Result<(), LoadError> {
        let key = (iface.to_string(), hook);
        if self.links.contains_key(&key) {
            return Ok(());
        }
        let program = hook.program();
        let direction = hook.direction();
        let fail = |message: String| LoadError::Attach {
            program,
            iface: iface.to_string(),
            direction,
            message,
        };
        if !has_tcx() {
            match tc::qdisc_add_clsact(iface) {
                Ok(()) => {
                    self.clsact_added.insert(iface.to_string());
                }
                Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(fail(format!("adding the clsact qdisc: {e}"))),
            }
        }
        let id = classifier(&mut self.ebpf, program)?
            .attach(iface, direction)
            .map_err(|e| fail(describe(&e)))?;
        self.links.insert(key, id);
        Ok(())
    }

    /// Detaches `hook` from `iface`. A link whose device is gone is
    /// already detached, so errors are not interesting here.
    pub fn detach(&mut self, iface: &str, hook: Hook) {
        if let Some(id) = self.links.remove(&(iface.to_string(), hook))
            && let Ok(p) = classifier(&mut self.ebpf, hook.program())
        {
            let _ = p.detach(id);
        }
    }

    /// Detaches everything and removes the clsact qdiscs it added.
    pub fn unload(self) -> Result<(), LinkError> {
        let Programs {
            ebpf,
            links: _,
            clsact_added,
        } = self;
        drop(ebpf);
        if clsact_added.is_empty() {
            return Ok(());
        }
        let mut links = Links::open()?;
        clsact_added
            .iter()
            .try_for_each(|iface| links.delete_clsact(iface))
    }

    /// Interfaces `hook` is attached to.
    pub fn attached(&self, hook: Hook) -> Vec<String> {
        self.links
            .keys()
            .filter(|(_, h)| *h == hook)
            .map(|(i, _)| i.clone())
            .collect()
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    ebpf.program_mut(program)
        .ok_or_else(|| LoadError::Program {
            program,
            message: "not in the BPF object".into(),
        })?
        .try_into()
        .map_err(|e: ProgramError| LoadError::Program {
            program,
            message: e.to_string(),
        })
}

/// Kernels from 6.6 attach tc programs as tcx links, without a qdisc.
fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}
