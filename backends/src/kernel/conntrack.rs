//! Stale conntrack cleanup, as kube-proxy does after a sync: UDP flows
//! DNATed to an endpoint that is gone keep going there until they time out,
//! unless their entries are deleted.
//!
//! Over ctnetlink, as kube-proxy does since v1.32 (kubernetes/kubernetes
//! #126847), instead of one `conntrack -D` process per flow: one
//! `NETLINK_NETFILTER` socket per sync, opened in the calling thread's
//! namespace, dumps the IPv4 table once, matches every entry against every
//! stale flow here (the filters `conntrack -D` applied), and deletes the
//! matches in batches of `IPCTNL_MSG_CT_DELETE`, reading every ack. An
//! entry that is already gone (`ENOENT`) is not an error.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::model::IpFamily;

use netlink_packet_core::{DefaultNla, Nla};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol as CtProtocol, Status,
    Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

use crate::BackendError;
use crate::kernel::netlink::Transport;
use crate::model::{ChangeSet, Protocol, ProxyState};

const IPPROTO_UDP: u8 = 17;
/// `CTA_ID` and `CTA_ZONE` (`enum ctattr_type`), which the crate leaves raw.
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;

/// One conntrack deletion, named for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Flush {
    /// Flows to `vip:port` that were DNATed to `endpoint`.
    ServiceToEndpoint {
        vip: IpAddr,
        port: u16,
        endpoint: IpAddr,
    },
    /// Flows to any address on `node_port` DNATed to `endpoint`.
    NodePortToEndpoint { node_port: u16, endpoint: IpAddr },
    /// Every UDP flow to `vip:port` that was not DNATed (a Service that
    /// just got endpoints may have flows that were rejected or dropped
    /// while it had none). Flows DNATed to an endpoint stay: after an
    /// agent restart every Service "just got" its endpoints, and deleting
    /// those flows loses them (kubernetes/kubernetes#122740; kube-proxy's
    /// reconciler deletes only entries whose reply does not come from a
    /// serving endpoint).
    Service { vip: IpAddr, port: u16 },
}

impl fmt::Display for Flush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flush::ServiceToEndpoint {
                vip,
                port,
                endpoint,
            } => write!(f, "udp flows to {vip}:{port} DNATed to {endpoint}"),
            Flush::NodePortToEndpoint {
                node_port,
                endpoint,
            } => write!(f, "udp flows to port {node_port} DNATed to {endpoint}"),
            Flush::Service { vip, port } => write!(f, "udp flows to {vip}:{port} not DNATed"),
        }
    }
}

impl Flush {
    /// The family of the table the flow's entries are in.
    pub fn family(&self) -> IpFamily {
        match self {
            Flush::ServiceToEndpoint { endpoint, .. }
            | Flush::NodePortToEndpoint { endpoint, .. } => IpFamily::of(endpoint),
            Flush::Service { vip, .. } => IpFamily::of(vip),
        }
    }

    /// Whether `entry` is one this deletion removes: the filters
    /// `conntrack -D -p udp` applied with `--orig-dst`, `--orig-port-dst`
    /// and `--dst-nat ENDPOINT` (DNAT done, and the reply comes from the
    /// endpoint).
    pub fn matches(&self, entry: &Entry) -> bool {
        if entry.orig.proto != IPPROTO_UDP {
            return false;
        }
        match *self {
            Flush::ServiceToEndpoint {
                vip,
                port,
                endpoint,
            } => {
                entry.orig.dst == vip
                    && entry.orig.dport == port
                    && entry.is_dnat()
                    && entry.reply.src == endpoint
            }
            Flush::NodePortToEndpoint {
                node_port,
                endpoint,
            } => entry.orig.dport == node_port && entry.is_dnat() && entry.reply.src == endpoint,
            Flush::Service { vip, port } => {
                entry.orig.dst == vip && entry.orig.dport == port && !entry.is_dnat()
            }
        }
    }
}

/// One direction of a conntrack entry (IPv4 or IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple4 {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

impl Default for Tuple4 {
    fn default() -> Self {
        Tuple4 {
            src: Ipv4Addr::UNSPECIFIED.into(),
            dst: Ipv4Addr::UNSPECIFIED.into(),
            proto: 0,
            sport: 0,
            dport: 0,
        }
    }
}

impl Tuple4 {
    fn from_attrs(tuples: &[Tuple]) -> Option<Tuple4> {
        let (mut src, mut dst, mut proto) = (None, None, None);
        let mut t = Tuple4::default();
        for tuple in tuples {
            match tuple {
                Tuple::Ip(ips) => {
                    for ip in ips {
                        match ip {
                            IPTuple::SourceAddress(a) => src = Some(*a),
                            IPTuple::DestinationAddress(a) => dst = Some(*a),
                            _ => {}
                        }
                    }
                }
                Tuple::Proto(protos) => {
                    for p in protos {
                        match p {
                            ProtoTuple::Protocol(n) => proto = Some(u8::from(*n)),
                            ProtoTuple::SourcePort(n) => t.sport = *n,
                            ProtoTuple::DestinationPort(n) => t.dport = *n,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        t.src = src?;
        t.dst = dst?;
        t.proto = proto?;
        Some(t)
    }

    fn attrs(&self) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(self.src),
                IPTuple::DestinationAddress(self.dst),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(CtProtocol::from(self.proto)),
                ProtoTuple::SourcePort(self.sport),
                ProtoTuple::DestinationPort(self.dport),
            ]),
        ]
    }
}

/// The parts of a dumped conntrack entry the filters and the deletion use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple4,
    pub reply: Tuple4,
    pub status: u32,
    /// The kernel's id of the entry: a deletion that names it cannot remove
    /// a newer entry that reused the tuple.
    pub id: Option<u32>,
    pub zone: Option<u16>,
}

impl Entry {
    /// Reads a dumped entry; `None` for one without both tuples.
    pub fn parse(attrs: &[ConntrackAttribute]) -> Option<Entry> {
        let (mut orig, mut reply) = (None, None);
        let mut e = Entry::default();
        for a in attrs {
            match a {
                ConntrackAttribute::CtaTupleOrig(t) => orig = Tuple4::from_attrs(t),
                ConntrackAttribute::CtaTupleReply(t) => reply = Tuple4::from_attrs(t),
                ConntrackAttribute::CtaStatus(s) => e.status = s.bits(),
                ConntrackAttribute::Other(nla) => {
                    let mut value = vec![0u8; nla.value_len()];
                    nla.emit_value(&mut value);
                    match (nla.kind(), value.len()) {
                        (CTA_ID, 4) => e.id = Some(u32::from_be_bytes(value.try_into().ok()?)),
                        (CTA_ZONE, 2) => e.zone = Some(u16::from_be_bytes(value.try_into().ok()?)),
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        e.orig = orig?;
        e.reply = reply?;
        Some(e)
    }

    /// libnetfilter_conntrack's `NFCT_GOPT_IS_DNAT`, which `--dst-nat`
    /// used: destination NAT was done and the reply does not come from the
    /// original destination address (a changed port alone does not count).
    pub fn is_dnat(&self) -> bool {
        self.status & Status::DstNatDone.bits() != 0 && self.reply.src != self.orig.dst
    }

    /// The `IPCTNL_MSG_CT_DELETE` for this entry: its original tuple, and
    /// its id and zone when the dump gave them. Never without a tuple (a
    /// delete without one flushes the whole table).
    pub fn delete_message(&self) -> NetfilterMessage {
        let mut attrs = vec![ConntrackAttribute::CtaTupleOrig(self.orig.attrs())];
        if let Some(zone) = self.zone {
            attrs.push(ConntrackAttribute::Other(DefaultNla::new(
                CTA_ZONE,
                zone.to_be_bytes().to_vec(),
            )));
        }
        if let Some(id) = self.id {
            attrs.push(ConntrackAttribute::Other(DefaultNla::new(
                CTA_ID,
                id.to_be_bytes().to_vec(),
            )));
        }
        let family = IpFamily::of(&self.orig.dst);
        NetfilterMessage::new(header(family), ConntrackMessage::Delete(attrs))
    }
}

fn header(family: IpFamily) -> NetfilterHeader {
    let f = match family {
        IpFamily::IPv4 => NetfilterProtoFamily::IPv4,
        IpFamily::IPv6 => NetfilterProtoFamily::IPv6,
    };
    NetfilterHeader::new(f, 0, 0)
}

/// The `IPCTNL_MSG_CT_GET` that, sent with `NLM_F_DUMP`, lists the
/// family's table.
pub fn dump_message(family: IpFamily) -> NetfilterMessage {
    NetfilterMessage::new(header(family), ConntrackMessage::Get(vec![]))
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the entry {}:{} -> {}:{} (reply from {}:{})",
            self.orig.src,
            self.orig.sport,
            self.orig.dst,
            self.orig.dport,
            self.reply.src,
            self.reply.sport
        )
    }
}

/// The deletions a change set calls for (UDP only, as in kube-proxy).
pub fn stale_flows(state: &ProxyState, changes: &ChangeSet) -> Vec<Flush> {
    let mut out = Vec::new();
    for (name, removed) in &changes.removed_endpoints {
        if name.protocol != Protocol::Udp {
            continue;
        }
        let Some(svc) = state
            .services
            .get(name)
            .or_else(|| changes.deleted.get(name))
        else {
            continue;
        };
        for ep in removed {
            out.push(Flush::ServiceToEndpoint {
                vip: svc.cluster_ip,
                port: svc.port,
                endpoint: ep.ip,
            });
            for ext in &svc.external_ips {
                out.push(Flush::ServiceToEndpoint {
                    vip: *ext,
                    port: svc.port,
                    endpoint: ep.ip,
                });
            }
            if let Some(np) = svc.node_port {
                out.push(Flush::NodePortToEndpoint {
                    node_port: np,
                    endpoint: ep.ip,
                });
            }
        }
    }
    for name in &changes.became_ready {
        if let Some(svc) = state.services.get(name) {
            out.push(Flush::Service {
                vip: svc.cluster_ip,
                port: svc.port,
            });
        }
    }
    out
}

/// Whether ctnetlink answers in the calling thread's namespace: all the
/// cleanup needs from the kernel (`nf_conntrack_netlink`), asked by the
/// backends' capability probes instead of looking for the `conntrack` tool.
pub fn probe() -> Result<(), String> {
    Transport::open(netlink_sys::protocols::NETLINK_NETFILTER)
        .and_then(|mut nl| nl.dump(dump_message(IpFamily::IPv4)))
        .map(drop)
        .map_err(|e| {
            format!(
                "the kernel's conntrack netlink interface (nf_conntrack_netlink) does not \
                 answer, so stale UDP flows could not be cleared: {e}"
            )
        })
}

/// What one cleanup did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Stale flows asked for.
    pub flows: usize,
    /// Conntrack entries deleted (one entry may match several flows).
    pub entries: usize,
}

/// Pairs every entry that at least one flow matches with the indices of
/// the flows that match it.
pub fn select(
    flows: &[Flush],
    entries: impl IntoIterator<Item = Entry>,
) -> Vec<(Entry, Vec<usize>)> {
    entries
        .into_iter()
        .filter_map(|e| {
            let hits: Vec<usize> = flows
                .iter()
                .enumerate()
                .filter(|(_, f)| f.matches(&e))
                .map(|(i, _)| i)
                .collect();
            (!hits.is_empty()).then_some((e, hits))
        })
        .collect()
}

/// The entries of a dump.
fn entries(dumped: Vec<NetfilterMessage>) -> Vec<Entry> {
    dumped
        .into_iter()
        .filter_map(|m| match m.inner {
            NetfilterMessageInner::Conntrack(
                ConntrackMessage::New(a) | ConntrackMessage::Get(a) | ConntrackMessage::Delete(a),
            ) => Entry::parse(&a),
            _ => None,
        })
        .collect()
}

/// Deletes the entries of every stale flow over one netfilter netlink
/// socket in the calling thread's namespace: one dump, then every deletion
/// batched, every ack read. Nothing to delete is not an error, nor an entry
/// that expired between the dump and its deletion (`ENOENT`); any other
/// failure is reported for each flow whose entry it was.
pub fn flush(flows: &[Flush]) -> Result<Flushed, BackendError> {
    if flows.is_empty() {
        return Ok(Flushed::default());
    }
    let mut nl = Transport::open(netlink_sys::protocols::NETLINK_NETFILTER)
        .map_err(|e| BackendError::io("conntrack: opening a netfilter netlink socket", e))?;
    // One dump per family the flows are in (a proxier's are all of one).
    let mut dumped = Vec::new();
    for family in IpFamily::ALL {
        if flows.iter().any(|f| f.family() == family) {
            dumped.extend(nl.dump(dump_message(family)).map_err(|e| {
                BackendError::io(format!("conntrack: listing the {family} table"), e)
            })?);
        }
    }
    let selected = select(flows, entries(dumped));
    let requests = selected
        .iter()
        .map(|(e, _)| (e.delete_message(), 0))
        .collect();
    let results = nl
        .batch(requests)
        .map_err(|e| BackendError::io("conntrack: deleting entries", e))?;
    let mut failed: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let mut deleted = 0;
    for ((entry, hits), result) in selected.iter().zip(results) {
        match result {
            Ok(()) => deleted += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                for i in hits {
                    failed.entry(*i).or_default().push(format!("{entry}: {e}"));
                }
            }
        }
    }
    if !failed.is_empty() {
        let all: Vec<String> = failed
            .into_iter()
            .map(|(i, errs)| format!("deleting {}: {}", flows[i], errs.join(", ")))
            .collect();
        return Err(BackendError::Other(format!(
            "conntrack: {}",
            all.join("; ")
        )));
    }
    Ok(Flushed {
        flows: flows.len(),
        entries: deleted,
    })
}

/// Deletes every conntrack entry of `family` in the calling thread's namespace
/// and returns how many went. Only the `flush-conntrack-on-start` fault
/// does this: it is the defect of kubernetes/kubernetes#122740 (flows
/// through Services lost when the proxy restarts), kept so the lab can show
/// its agent-restart check catches it.
pub fn flush_all(family: IpFamily) -> Result<usize, BackendError> {
    let mut nl = Transport::open(netlink_sys::protocols::NETLINK_NETFILTER)
        .map_err(|e| BackendError::io("conntrack: opening a netfilter netlink socket", e))?;
    let dumped = nl
        .dump(dump_message(family))
        .map_err(|e| BackendError::io("conntrack: listing the table", e))?;
    let requests: Vec<_> = entries(dumped)
        .iter()
        .map(|e| (e.delete_message(), 0))
        .collect();
    let results = nl
        .batch(requests)
        .map_err(|e| BackendError::io("conntrack: deleting entries", e))?;
    Ok(results.iter().filter(|r| r.is_ok()).count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::serialize;
    use crate::model::{Endpoint, ServicePort, ServicePortName};
    use netlink_packet_core::{
        NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
    };

    const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
    const EP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 3, 5);

    #[test]
    fn removed_udp_endpoint_flushes_vip_and_nodeport() {
        let name = ServicePortName::new("ns", "dns", "", Protocol::Udp);
        let svc = ServicePort {
            name: name.clone(),
            cluster_ip: VIP.into(),
            port: 53,
            protocol: Protocol::Udp,
            node_port: Some(30053),
            session_affinity_seconds: None,
            external_policy_local: false,
            internal_policy_local: false,
            health_check_node_port: None,
            external_ips: vec![Ipv4Addr::new(192, 0, 2, 7).into()],
            load_balancer_ips: vec![],
            load_balancer_source_ranges: vec![],
        };
        let ep = Endpoint {
            ip: EP.into(),
            port: 5353,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            is_local: false,
            hints: Default::default(),
        };
        let mut state = ProxyState::default();
        state.services.insert(name.clone(), svc);
        let mut cs = ChangeSet::default();
        cs.removed_endpoints.insert(name.clone(), vec![ep]);
        cs.became_ready.insert(name);
        let flows = stale_flows(&state, &cs);
        assert_eq!(
            flows,
            vec![
                Flush::ServiceToEndpoint {
                    vip: VIP.into(),
                    port: 53,
                    endpoint: EP.into()
                },
                Flush::ServiceToEndpoint {
                    vip: Ipv4Addr::new(192, 0, 2, 7).into(),
                    port: 53,
                    endpoint: EP.into()
                },
                Flush::NodePortToEndpoint {
                    node_port: 30053,
                    endpoint: EP.into()
                },
                Flush::Service {
                    vip: VIP.into(),
                    port: 53
                },
            ]
        );
        assert_eq!(
            flows[0].to_string(),
            "udp flows to 10.96.0.53:53 DNATed to 10.244.1.5"
        );
    }

    #[test]
    fn tcp_removals_need_no_flush() {
        let name = ServicePortName::new("ns", "web", "", Protocol::Tcp);
        let mut cs = ChangeSet::default();
        cs.removed_endpoints.insert(name, vec![]);
        assert!(stale_flows(&ProxyState::default(), &cs).is_empty());
    }

    /// The dump request, decoded by hand: nlmsghdr, then nfgenmsg.
    #[test]
    fn dump_request_bytes() {
        let got = serialize(dump_message(IpFamily::IPv4), NLM_F_REQUEST | NLM_F_DUMP, 7);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &20u32.to_ne_bytes()[..],  // nlmsg_len
            &0x0101u16.to_ne_bytes(),  // NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
            &0x0301u16.to_ne_bytes(),  // NLM_F_REQUEST | NLM_F_DUMP
            &7u32.to_ne_bytes(),       // nlmsg_seq
            &0u32.to_ne_bytes(),       // nlmsg_pid
            &[2, 0, 0, 0],             // nfgenmsg: AF_INET, version 0, res_id 0
        ]
        .concat();
        assert_eq!(got, want);
    }

    fn dnat_entry() -> Entry {
        Entry {
            orig: Tuple4 {
                src: CLIENT.into(),
                dst: VIP.into(),
                proto: IPPROTO_UDP,
                sport: 40053,
                dport: 53,
            },
            reply: Tuple4 {
                src: EP.into(),
                dst: CLIENT.into(),
                proto: IPPROTO_UDP,
                sport: 5353,
                dport: 40053,
            },
            status: (Status::DstNat | Status::DstNatDone | Status::Confirmed).bits(),
            id: Some(0x1234_5678),
            zone: None,
        }
    }

    /// A deletion, decoded by hand: the original tuple (nested, network
    /// byte order) and the entry's id, nothing else.
    #[test]
    fn delete_request_bytes() {
        let got = serialize(dnat_entry().delete_message(), NLM_F_REQUEST | NLM_F_ACK, 9);
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &80u32.to_ne_bytes()[..],            // nlmsg_len: 16 + 4 + 52 + 8
            &0x0102u16.to_ne_bytes(),            // CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
            &0x0005u16.to_ne_bytes(),            // NLM_F_REQUEST | NLM_F_ACK
            &9u32.to_ne_bytes(),
            &0u32.to_ne_bytes(),
            &[2, 0, 0, 0],                       // nfgenmsg: AF_INET
            &[52, 0], &[1, 0x80],                // CTA_TUPLE_ORIG | NLA_F_NESTED
            &[20, 0], &[1, 0x80],                //   CTA_TUPLE_IP | NLA_F_NESTED
            &[8, 0, 1, 0, 10, 244, 3, 5],        //     CTA_IP_V4_SRC 10.244.3.5
            &[8, 0, 2, 0, 10, 96, 0, 53],        //     CTA_IP_V4_DST 10.96.0.53
            &[28, 0], &[2, 0x80],                //   CTA_TUPLE_PROTO | NLA_F_NESTED
            &[5, 0, 1, 0, 17, 0, 0, 0],          //     CTA_PROTO_NUM udp, padded
            &[6, 0, 2, 0, 0x9c, 0x75, 0, 0],     //     CTA_PROTO_SRC_PORT 40053
            &[6, 0, 3, 0, 0, 53, 0, 0],          //     CTA_PROTO_DST_PORT 53
            &[8, 0, 12, 0, 0x12, 0x34, 0x56, 0x78], // CTA_ID
        ]
        .concat();
        assert_eq!(got, want);
    }

    /// A dumped entry as the kernel sends it (IPCTNL_MSG_CT_NEW, with
    /// attributes the filters ignore), decoded by hand.
    #[test]
    fn parses_a_dumped_entry() {
        #[rustfmt::skip]
        let payload: Vec<u8> = [
            &[2u8, 0, 0, 0][..],
            &[52, 0, 1, 0x80],
            &[20, 0, 1, 0x80],
            &[8, 0, 1, 0, 10, 244, 3, 5],
            &[8, 0, 2, 0, 10, 96, 0, 53],
            &[28, 0, 2, 0x80],
            &[5, 0, 1, 0, 17, 0, 0, 0],
            &[6, 0, 2, 0, 0x9c, 0x75, 0, 0],
            &[6, 0, 3, 0, 0, 53, 0, 0],
            &[52, 0, 2, 0x80],                   // CTA_TUPLE_REPLY
            &[20, 0, 1, 0x80],
            &[8, 0, 1, 0, 10, 244, 1, 5],        //   from the endpoint
            &[8, 0, 2, 0, 10, 244, 3, 5],
            &[28, 0, 2, 0x80],
            &[5, 0, 1, 0, 17, 0, 0, 0],
            &[6, 0, 2, 0, 0x14, 0xe9, 0, 0],     //   5353
            &[6, 0, 3, 0, 0x9c, 0x75, 0, 0],
            &[8, 0, 3, 0, 0, 0, 0x01, 0x28],     // CTA_STATUS: DST_NAT | CONFIRMED | DST_NAT_DONE
            &[8, 0, 7, 0, 0, 0, 0, 30],          // CTA_TIMEOUT
            &[8, 0, 8, 0, 0, 0, 0, 0],           // CTA_MARK
            &[8, 0, 12, 0, 0x12, 0x34, 0x56, 0x78], // CTA_ID
            &[8, 0, 11, 0, 0, 0, 0, 1],          // CTA_USE
        ]
        .concat();
        let mut bytes = Vec::new();
        bytes.extend((16 + payload.len() as u32).to_ne_bytes());
        bytes.extend(0x0100u16.to_ne_bytes()); // CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
        bytes.extend(0x0002u16.to_ne_bytes()); // NLM_F_MULTI
        bytes.extend(3u32.to_ne_bytes());
        bytes.extend(0u32.to_ne_bytes());
        bytes.extend(&payload);
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes).unwrap();
        let NetlinkPayload::InnerMessage(m) = msg.payload else {
            panic!("not an entry: {msg:?}");
        };
        let got = entries(vec![m]);
        let want = dnat_entry();
        assert_eq!(got, vec![want.clone()]);
        assert_eq!(
            want.to_string(),
            "the entry 10.244.3.5:40053 -> 10.96.0.53:53 (reply from 10.244.1.5:5353)"
        );
    }

    #[test]
    fn filters_are_conntrack_ds() {
        let e = dnat_entry();
        let to_ep = |endpoint| Flush::ServiceToEndpoint {
            vip: VIP.into(),
            port: 53,
            endpoint,
        };
        assert!(to_ep(EP.into()).matches(&e));
        assert!(!to_ep(Ipv4Addr::new(10, 244, 2, 5).into()).matches(&e));
        assert!(
            !Flush::ServiceToEndpoint {
                vip: VIP.into(),
                port: 54,
                endpoint: EP.into()
            }
            .matches(&e)
        );
        let np = |node_port| Flush::NodePortToEndpoint {
            node_port,
            endpoint: EP.into(),
        };
        assert!(np(53).matches(&e));
        assert!(!np(30053).matches(&e));
        // A flow DNATed to an endpoint is not the whole-Service flush's:
        // an agent restart must not lose it (kubernetes/kubernetes#122740).
        assert!(
            !Flush::Service {
                vip: VIP.into(),
                port: 53
            }
            .matches(&e)
        );
        assert!(
            !Flush::Service {
                vip: EP.into(),
                port: 53
            }
            .matches(&e)
        );

        // Not DNATed (a flow rejected while the Service had no endpoints):
        // only the whole-Service flush takes it.
        let plain = Entry {
            reply: Tuple4 {
                src: VIP.into(),
                sport: 53,
                ..e.reply
            },
            status: Status::Confirmed.bits(),
            ..e.clone()
        };
        assert!(!to_ep(EP.into()).matches(&plain));
        assert!(!np(53).matches(&plain));
        assert!(
            Flush::Service {
                vip: VIP.into(),
                port: 53
            }
            .matches(&plain)
        );
        // DNATed to another port of the same address: not `--dst-nat`.
        let port_only = Entry {
            reply: Tuple4 {
                src: VIP.into(),
                sport: 5353,
                ..e.reply
            },
            ..e.clone()
        };
        assert!(!port_only.is_dnat());
        assert!(e.is_dnat());

        // TCP is never touched.
        let tcp = Entry {
            orig: Tuple4 { proto: 6, ..e.orig },
            ..e.clone()
        };
        assert!(
            !Flush::Service {
                vip: VIP.into(),
                port: 53
            }
            .matches(&tcp)
        );

        // One entry, matched by two flows, is deleted once.
        let flows = [
            to_ep(EP.into()),
            np(53),
            Flush::Service {
                vip: EP.into(),
                port: 1,
            },
        ];
        let picked = select(&flows, [e.clone(), plain]);
        assert_eq!(picked, vec![(e, vec![0, 1])]);
    }

    /// Makes a UDP entry over ctnetlink, DNATed to `nat` if given (as
    /// `conntrack -I --dst-nat` does).
    fn create(nl: &mut Transport, sport: u16, dst: Ipv4Addr, nat: Option<Ipv4Addr>) {
        let orig = Tuple4 {
            src: CLIENT.into(),
            dst: dst.into(),
            proto: IPPROTO_UDP,
            sport,
            dport: 53,
        };
        let reply = Tuple4 {
            src: nat.unwrap_or(dst).into(),
            dst: CLIENT.into(),
            proto: IPPROTO_UDP,
            sport: if nat.is_some() { 5353 } else { 53 },
            dport: sport,
        };
        let mut attrs = vec![
            ConntrackAttribute::CtaTupleOrig(orig.attrs()),
            ConntrackAttribute::CtaTupleReply(reply.attrs()),
            ConntrackAttribute::CtaTimeout(120),
        ];
        if let Some(ip) = nat {
            // CTA_NAT_DST { CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP,
            // CTA_NAT_PROTO { CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX } }
            let [a, b, c, d] = ip.octets();
            #[rustfmt::skip]
            let value: Vec<u8> = [
                &[8u8, 0, 1, 0, a, b, c, d][..],
                &[8, 0, 2, 0, a, b, c, d],
                &[20, 0, 3, 0x80],
                &[6, 0, 1, 0, 0x14, 0xe9, 0, 0],
                &[6, 0, 2, 0, 0x14, 0xe9, 0, 0],
            ]
            .concat();
            attrs.push(ConntrackAttribute::Other(DefaultNla::new(
                13 | 0x8000,
                value,
            )));
        }
        let msg = NetfilterMessage::new(header(IpFamily::IPv4), ConntrackMessage::New(attrs));
        nl.request(
            msg,
            netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
        )
        .unwrap_or_else(|e| panic!("creating the entry from port {sport}: {e}"));
    }

    fn udp_sports(nl: &mut Transport) -> Vec<u16> {
        let mut ports: Vec<u16> = entries(nl.dump(dump_message(IpFamily::IPv4)).unwrap())
            .into_iter()
            .filter(|e| e.orig.proto == IPPROTO_UDP)
            .map(|e| e.orig.sport)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// In a fresh namespace, on entries made over ctnetlink: one cleanup
    /// deletes exactly the entries its flows match (the DNATed one by its
    /// endpoint, the plain one by its Service), and a second finds none.
    #[test]
    fn kernel_deletes_only_matching_entries() {
        crate::require_netns!();
        let other_vip = Ipv4Addr::new(10, 96, 0, 10);
        let other_ep = Ipv4Addr::new(10, 244, 2, 5);
        let (before, flushed, after, again) = crate::testkit::in_new_netns(|| {
            let mut nl = Transport::open(netlink_sys::protocols::NETLINK_NETFILTER).unwrap();
            create(&mut nl, 40053, VIP, Some(EP));
            create(&mut nl, 40054, VIP, Some(other_ep));
            create(&mut nl, 40055, other_vip, None);
            create(&mut nl, 40056, Ipv4Addr::new(10, 96, 0, 99), None);
            let before = udp_sports(&mut nl);
            let flows = [
                Flush::ServiceToEndpoint {
                    vip: VIP.into(),
                    port: 53,
                    endpoint: EP.into(),
                },
                Flush::Service {
                    vip: other_vip.into(),
                    port: 53,
                },
                Flush::NodePortToEndpoint {
                    node_port: 30053,
                    endpoint: other_ep.into(),
                },
            ];
            let flushed = flush(&flows).unwrap();
            let after = udp_sports(&mut nl);
            let again = flush(&flows).unwrap();
            (before, flushed, after, again)
        });
        assert_eq!(before, vec![40053, 40054, 40055, 40056]);
        assert_eq!(
            flushed,
            Flushed {
                flows: 3,
                entries: 2
            }
        );
        assert_eq!(after, vec![40054, 40056]);
        assert_eq!(
            again,
            Flushed {
                flows: 3,
                entries: 0
            }
        );
    }
}
