//! The eBPF backend's map entries a probe used: its Service entry (with
//! the live endpoint slots), the flow entries of its connection, and the
//! Service's counters. The maps are not pinned: they belong to the node's
//! agent process, so they are found through the map ids in its fdinfo and
//! opened by id (root only).

use std::net::SocketAddrV4;

use aya::maps::{Array, HashMap, Map, MapData, MapInfo};
use serde::{Deserialize, Serialize};
use svclab_backends::ebpf::abi::{
    self, Backend, BackendKey, CtKey, CtVal, SET_CLUSTER, SET_LOCAL, SvcKey, SvcStats, SvcVal,
};
use svclab_backends::model::Protocol;

/// The most flow entries scanned (the conntrack map's size).
const MAX_FLOWS_SCANNED: usize = 131_072;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BpfService {
    /// `addr:port/proto` of the entry (address 0.0.0.0 for a NodePort).
    pub key: String,
    pub id: u32,
    pub flags: Vec<String>,
    pub affinity_seconds: u32,
    pub generation: u8,
    pub cluster_endpoints: Vec<SocketAddrV4>,
    pub local_endpoints: Vec<SocketAddrV4>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BpfFlow {
    /// What the entry does: dnat, snat, unsnat, undnat, undnat-local,
    /// undnat-masq.
    pub kind: String,
    pub tuple: String,
    /// The address and port the entry rewrites to.
    pub rewrite_to: SocketAddrV4,
    pub endpoint: SocketAddrV4,
    pub service_id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BpfView {
    pub agent_pid: u32,
    /// `name#id` of every map the agent holds.
    pub maps: Vec<String>,
    pub service: Option<BpfService>,
    pub flows: Vec<BpfFlow>,
    /// The Service's counters: (packets, connections).
    pub counters: Option<(u64, u64)>,
}

/// Map ids held open by process `pid`.
fn map_ids(pid: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn open(ids: &[(u32, String)], name: &str) -> Result<Map, String> {
    let id = ids
        .iter()
        .find(|(_, n)| n == name)
        .map(|(id, _)| *id)
        .ok_or_else(|| format!("the agent holds no map named {name:?}"))?;
    let data = MapData::from_id(id).map_err(|e| format!("opening map {name}#{id}: {e}"))?;
    Map::from_map_data(data).map_err(|e| format!("map {name}#{id}: {e}"))
}

fn flag_names(flags: u8) -> Vec<String> {
    [
        (abi::SVC_HAS_ANY, "has-endpoints"),
        (abi::SVC_ITP_LOCAL, "internal-local"),
        (abi::SVC_ETP_LOCAL, "external-local"),
        (abi::SVC_EXTERNAL, "external"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, n)| n.to_string())
    .collect()
}

fn kind_name(kind: u8) -> String {
    match kind {
        abi::CT_ORIG => "dnat".into(),
        abi::CT_SNAT => "snat".into(),
        abi::CT_UNSNAT => "unsnat".into(),
        abi::CT_UNDNAT => "undnat".into(),
        abi::CT_UNDNAT_LOCAL => "undnat-local".into(),
        abi::CT_UNDNAT_MASQ => "undnat-masq".into(),
        other => format!("kind-{other}"),
    }
}

/// Reads what agent `pid`'s maps hold for a probe from `client` to
/// `target` (the address the client dialled).
pub fn view(
    pid: u32,
    protocol: Protocol,
    client: SocketAddrV4,
    target: SocketAddrV4,
    node_port: bool,
) -> Result<BpfView, String> {
    let ids: Vec<(u32, String)> = map_ids(pid)
        .into_iter()
        .filter_map(|id| {
            let info = MapInfo::from_id(id).ok()?;
            Some((id, info.name_as_str()?.to_string()))
        })
        .collect();
    if ids.is_empty() {
        return Err(format!(
            "agent process {pid} holds no BPF maps (not the ebpf backend, or not running)"
        ));
    }
    let proto = abi::ip_proto(protocol)
        .ok_or_else(|| format!("the ebpf programs do not balance {protocol}"))?;

    let services: HashMap<MapData, SvcKey, SvcVal> =
        HashMap::try_from(open(&ids, "services")?).map_err(|e| e.to_string())?;
    let key = SvcKey {
        addr: if node_port {
            0
        } else {
            abi::be_addr(*target.ip())
        },
        port: abi::be_port(target.port()),
        proto,
        pad: 0,
    };
    let service = match services.get(&key, 0) {
        Ok(v) => {
            let backends: HashMap<MapData, BackendKey, Backend> =
                HashMap::try_from(open(&ids, "backends")?).map_err(|e| e.to_string())?;
            let slots = |set: u8| -> Vec<SocketAddrV4> {
                (0..usize::from(v.count[usize::from(set)]))
                    .filter_map(|i| {
                        backends
                            .get(&BackendKey::new(v.id, v.generation, set, i), 0)
                            .ok()
                    })
                    .map(|b| SocketAddrV4::new(abi::addr_of(b.addr), abi::port_of(b.port)))
                    .collect()
            };
            Some(BpfService {
                key: format!("{}:{}/{protocol}", abi::addr_of(key.addr), target.port()),
                id: v.id,
                flags: flag_names(v.flags),
                affinity_seconds: v.affinity_seconds,
                generation: v.generation,
                cluster_endpoints: slots(SET_CLUSTER),
                local_endpoints: slots(SET_LOCAL),
            })
        }
        Err(_) => None,
    };

    let conntrack: HashMap<MapData, CtKey, CtVal> =
        HashMap::try_from(open(&ids, "conntrack")?).map_err(|e| e.to_string())?;
    let ends = |a: u32, p: u16| abi::addr_of(a) == *client.ip() && abi::port_of(p) == client.port();
    let flows = conntrack
        .iter()
        .take(MAX_FLOWS_SCANNED)
        .filter_map(|r| r.ok())
        .filter(|(k, _)| k.proto == proto && (ends(k.saddr, k.sport) || ends(k.daddr, k.dport)))
        .map(|(k, v)| BpfFlow {
            kind: kind_name(k.kind),
            tuple: format!(
                "{}:{} -> {}:{}",
                abi::addr_of(k.saddr),
                abi::port_of(k.sport),
                abi::addr_of(k.daddr),
                abi::port_of(k.dport)
            ),
            rewrite_to: SocketAddrV4::new(abi::addr_of(v.addr), abi::port_of(v.port)),
            endpoint: SocketAddrV4::new(abi::addr_of(v.ep_addr), abi::port_of(v.ep_port)),
            service_id: v.svc_id,
        })
        .collect();

    let counters = match &service {
        Some(s) => {
            let stats: Array<MapData, SvcStats> =
                Array::try_from(open(&ids, "stats")?).map_err(|e| e.to_string())?;
            stats.get(&s.id, 0).ok().map(|c| (c.packets, c.connections))
        }
        None => None,
    };
    Ok(BpfView {
        agent_pid: pid,
        maps: ids.iter().map(|(id, n)| format!("{n}#{id}")).collect(),
        service,
        flows,
        counters,
    })
}
