//! The IPVS generic netlink family (the kernel's `uapi/linux/ip_vs.h`):
//! virtual servers (the kernel calls them services) and their real servers
//! (destinations), as attributes on netlink-packet-core's [`Nla`] and
//! messages on netlink-packet-generic's [`GenlMessage`], sent through a
//! synchronous [`Transport`].

use std::fmt;
use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_u16, emit_u16_be, emit_u32, parse_string, parse_u16, parse_u16_be,
    parse_u32, parse_u64,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::{GenlFamily, GenlHeader, GenlMessage};
use netlink_sys::protocols::NETLINK_GENERIC;

use crate::kernel::netlink::Transport;
use crate::model::Protocol;

pub const FAMILY_NAME: &str = "IPVS";
const FAMILY_VERSION: u8 = 1;

const CMD_NEW_SERVICE: u8 = 1;
const CMD_SET_SERVICE: u8 = 2;
const CMD_DEL_SERVICE: u8 = 3;
const CMD_GET_SERVICE: u8 = 4;
const CMD_NEW_DEST: u8 = 5;
const CMD_SET_DEST: u8 = 6;
const CMD_DEL_DEST: u8 = 7;
const CMD_GET_DEST: u8 = 8;
const CMD_SET_INFO: u8 = 14;
const CMD_GET_INFO: u8 = 15;
const CMD_FLUSH: u8 = 17;

const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;

const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;
const SVC_ATTR_STATS: u16 = 10;
const SVC_ATTR_STATS64: u16 = 12;

const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_STATS: u16 = 10;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;
const DEST_ATTR_STATS64: u16 = 12;

const STATS_ATTR_CONNS: u16 = 1;
const STATS_ATTR_INPKTS: u16 = 2;
const STATS_ATTR_OUTPKTS: u16 = 3;
const STATS_ATTR_INBYTES: u16 = 4;
const STATS_ATTR_OUTBYTES: u16 = 5;

const INFO_ATTR_VERSION: u16 = 1;
const INFO_ATTR_CONN_TAB_SIZE: u16 = 2;

/// `IP_VS_SVC_F_PERSISTENT`: ClientIP session affinity.
pub const SVC_F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every service it reports.
const SVC_F_HASHED: u32 = 0x0002;
/// `IP_VS_SVC_F_SCHED_SH_PORT`: hash the source port too (kube-proxy sets it
/// for the `mh` scheduler).
pub const SVC_F_SCHED_SH_PORT: u32 = 0x0010;
/// `IP_VS_CONN_F_MASQ`: NAT forwarding, the only method kube-proxy uses.
const FWD_MASQ: u32 = 0;
const AF_INET: u16 = libc::AF_INET as u16;
/// Persistence granularity: one client address (a /32).
const NETMASK_HOST: u32 = 0xffff_ffff;

fn ip_protocol(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => libc::IPPROTO_TCP as u16,
        Protocol::Udp => libc::IPPROTO_UDP as u16,
        Protocol::Sctp => libc::IPPROTO_SCTP as u16,
    }
}

fn from_ip_protocol(p: u16) -> Option<Protocol> {
    match i32::from(p) {
        libc::IPPROTO_TCP => Some(Protocol::Tcp),
        libc::IPPROTO_UDP => Some(Protocol::Udp),
        libc::IPPROTO_SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

/// The kernel's `union nf_inet_addr`: an IPv4 address fills the first four
/// of sixteen bytes.
fn inet_addr(ip: Ipv4Addr) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&ip.octets());
    raw
}

fn parse_inet_addr(payload: &[u8]) -> Result<[u8; 16], DecodeError> {
    if payload.len() < 4 || payload.len() > 16 {
        return Err(DecodeError::invalid_ip_address(payload.len()));
    }
    let mut raw = [0u8; 16];
    raw[..payload.len()].copy_from_slice(payload);
    Ok(raw)
}

fn ipv4_of(raw: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])
}

/// Identifies a virtual server: protocol, address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub protocol: Protocol,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// `TCP/10.96.0.10:80`, the way the report and errors name it.
impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.protocol, self.addr, self.port)
    }
}

/// One virtual server as kube-proxy programs it (NAT, no firewall mark).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub key: ServiceKey,
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` bits, without the kernel's own `HASHED`.
    pub flags: u32,
    /// Persistence timeout in seconds (with [`SVC_F_PERSISTENT`]).
    pub timeout: u32,
}

/// One real server of a virtual server, forwarded to by masquerading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RealServer {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
}

/// Traffic counters the kernel keeps per virtual and real server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub conns: u64,
    pub in_packets: u64,
    pub out_packets: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// A virtual server as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub server: VirtualServer,
    pub counters: Counters,
}

/// A real server as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DestInfo {
    pub server: RealServer,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub counters: Counters,
}

/// The answer to `IPVS_CMD_GET_INFO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Info {
    /// `major.minor.patch` packed as the kernel does (1.2.1 is 0x010201).
    pub version: u32,
    pub conn_tab_size: u32,
}

impl Info {
    pub fn version_string(&self) -> String {
        let v = self.version;
        format!("{}.{}.{}", (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff)
    }
}

/// Attributes nested in `IPVS_SVC_ATTR_STATS` (32-bit packet counters) or
/// `IPVS_SVC_ATTR_STATS64`; the rates that follow them are not kept.
fn parse_counters(payload: &[u8]) -> Result<Counters, DecodeError> {
    let mut c = Counters::default();
    for nla in NlasIterator::new(payload) {
        let nla = nla?;
        let v = nla.value();
        let n = match v.len() {
            4 => u64::from(parse_u32(v)?),
            8 => parse_u64(v)?,
            _ => continue,
        };
        match nla.kind() {
            STATS_ATTR_CONNS => c.conns = n,
            STATS_ATTR_INPKTS => c.in_packets = n,
            STATS_ATTR_OUTPKTS => c.out_packets = n,
            STATS_ATTR_INBYTES => c.in_bytes = n,
            STATS_ATTR_OUTBYTES => c.out_bytes = n,
            _ => {}
        }
    }
    Ok(c)
}

/// The counters as `IPVS_SVC_ATTR_STATS64` carries them (all 64-bit).
fn counter_nlas(c: &Counters) -> Vec<DefaultNla> {
    [
        (STATS_ATTR_CONNS, c.conns),
        (STATS_ATTR_INPKTS, c.in_packets),
        (STATS_ATTR_OUTPKTS, c.out_packets),
        (STATS_ATTR_INBYTES, c.in_bytes),
        (STATS_ATTR_OUTBYTES, c.out_bytes),
    ]
    .into_iter()
    .map(|(kind, v)| DefaultNla::new(kind, v.to_ne_bytes().to_vec()))
    .collect()
}

/// Attributes nested in `IPVS_CMD_ATTR_SERVICE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SvcAttr {
    Af(u16),
    Protocol(u16),
    Addr([u8; 16]),
    /// Network byte order on the wire.
    Port(u16),
    SchedName(String),
    Flags {
        flags: u32,
        mask: u32,
    },
    Timeout(u32),
    Netmask(u32),
    Stats64(Counters),
    Other(DefaultNla),
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) => 16,
            SvcAttr::SchedName(s) => s.len() + 1,
            SvcAttr::Flags { .. } => 8,
            SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::Stats64(c) => counter_nlas(c).as_slice().buffer_len(),
            SvcAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => SVC_ATTR_AF,
            SvcAttr::Protocol(_) => SVC_ATTR_PROTOCOL,
            SvcAttr::Addr(_) => SVC_ATTR_ADDR,
            SvcAttr::Port(_) => SVC_ATTR_PORT,
            SvcAttr::SchedName(_) => SVC_ATTR_SCHED_NAME,
            SvcAttr::Flags { .. } => SVC_ATTR_FLAGS,
            SvcAttr::Timeout(_) => SVC_ATTR_TIMEOUT,
            SvcAttr::Netmask(_) => SVC_ATTR_NETMASK,
            SvcAttr::Stats64(_) => SVC_ATTR_STATS64,
            SvcAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => emit_u16(buf, *v).expect("sized by value_len"),
            SvcAttr::Port(v) => emit_u16_be(buf, *v).expect("sized by value_len"),
            SvcAttr::Addr(raw) => buf.copy_from_slice(raw),
            SvcAttr::SchedName(s) => {
                buf[..s.len()].copy_from_slice(s.as_bytes());
                buf[s.len()] = 0;
            }
            SvcAttr::Flags { flags, mask } => {
                emit_u32(&mut buf[..4], *flags).expect("sized by value_len");
                emit_u32(&mut buf[4..], *mask).expect("sized by value_len");
            }
            SvcAttr::Timeout(v) | SvcAttr::Netmask(v) => {
                emit_u32(buf, *v).expect("sized by value_len")
            }
            SvcAttr::Stats64(c) => counter_nlas(c).as_slice().emit(buf),
            SvcAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for SvcAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            SVC_ATTR_AF => SvcAttr::Af(parse_u16(v)?),
            SVC_ATTR_PROTOCOL => SvcAttr::Protocol(parse_u16(v)?),
            SVC_ATTR_ADDR => SvcAttr::Addr(parse_inet_addr(v)?),
            SVC_ATTR_PORT => SvcAttr::Port(parse_u16_be(v)?),
            SVC_ATTR_SCHED_NAME => SvcAttr::SchedName(parse_string(v)?),
            SVC_ATTR_FLAGS if v.len() == 8 => SvcAttr::Flags {
                flags: parse_u32(&v[..4])?,
                mask: parse_u32(&v[4..])?,
            },
            SVC_ATTR_TIMEOUT => SvcAttr::Timeout(parse_u32(v)?),
            SVC_ATTR_NETMASK => SvcAttr::Netmask(parse_u32(v)?),
            SVC_ATTR_STATS64 => SvcAttr::Stats64(parse_counters(v)?),
            // The 32-bit STATS duplicate STATS64; read them only if alone.
            SVC_ATTR_STATS => SvcAttr::Other(DefaultNla::new(SVC_ATTR_STATS, v.to_vec())),
            _ => SvcAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// Attributes nested in `IPVS_CMD_ATTR_DEST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestAttr {
    Addr([u8; 16]),
    /// Network byte order on the wire.
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UThresh(u32),
    LThresh(u32),
    ActiveConns(u32),
    InactConns(u32),
    AddrFamily(u16),
    Stats64(Counters),
    Other(DefaultNla),
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_) | DestAttr::AddrFamily(_) => 2,
            DestAttr::FwdMethod(_)
            | DestAttr::Weight(_)
            | DestAttr::UThresh(_)
            | DestAttr::LThresh(_)
            | DestAttr::ActiveConns(_)
            | DestAttr::InactConns(_) => 4,
            DestAttr::Stats64(c) => counter_nlas(c).as_slice().buffer_len(),
            DestAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => DEST_ATTR_ADDR,
            DestAttr::Port(_) => DEST_ATTR_PORT,
            DestAttr::FwdMethod(_) => DEST_ATTR_FWD_METHOD,
            DestAttr::Weight(_) => DEST_ATTR_WEIGHT,
            DestAttr::UThresh(_) => DEST_ATTR_U_THRESH,
            DestAttr::LThresh(_) => DEST_ATTR_L_THRESH,
            DestAttr::ActiveConns(_) => DEST_ATTR_ACTIVE_CONNS,
            DestAttr::InactConns(_) => DEST_ATTR_INACT_CONNS,
            DestAttr::AddrFamily(_) => DEST_ATTR_ADDR_FAMILY,
            DestAttr::Stats64(_) => DEST_ATTR_STATS64,
            DestAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            DestAttr::Addr(raw) => buf.copy_from_slice(raw),
            DestAttr::Port(v) => emit_u16_be(buf, *v).expect("sized by value_len"),
            DestAttr::AddrFamily(v) => emit_u16(buf, *v).expect("sized by value_len"),
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UThresh(v)
            | DestAttr::LThresh(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactConns(v) => emit_u32(buf, *v).expect("sized by value_len"),
            DestAttr::Stats64(c) => counter_nlas(c).as_slice().emit(buf),
            DestAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&T>> for DestAttr {
    fn parse(buf: &NlaBuffer<&T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            DEST_ATTR_ADDR => DestAttr::Addr(parse_inet_addr(v)?),
            DEST_ATTR_PORT => DestAttr::Port(parse_u16_be(v)?),
            DEST_ATTR_FWD_METHOD => DestAttr::FwdMethod(parse_u32(v)?),
            DEST_ATTR_WEIGHT => DestAttr::Weight(parse_u32(v)?),
            DEST_ATTR_U_THRESH => DestAttr::UThresh(parse_u32(v)?),
            DEST_ATTR_L_THRESH => DestAttr::LThresh(parse_u32(v)?),
            DEST_ATTR_ACTIVE_CONNS => DestAttr::ActiveConns(parse_u32(v)?),
            DEST_ATTR_INACT_CONNS => DestAttr::InactConns(parse_u32(v)?),
            DEST_ATTR_ADDR_FAMILY => DestAttr::AddrFamily(parse_u16(v)?),
            DEST_ATTR_STATS64 => DestAttr::Stats64(parse_counters(v)?),
            DEST_ATTR_STATS => DestAttr::Other(DefaultNla::new(DEST_ATTR_STATS, v.to_vec())),
            _ => DestAttr::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// Top-level attributes of an IPVS message. `GET_INFO` replies use their
/// own numbering, which collides with the command attributes, so how they
/// parse depends on the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    InfoVersion(u32),
    InfoConnTabSize(u32),
    Other(DefaultNla),
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        match self {
            CmdAttr::Service(a) => a.as_slice().buffer_len(),
            CmdAttr::Dest(a) => a.as_slice().buffer_len(),
            CmdAttr::InfoVersion(_) | CmdAttr::InfoConnTabSize(_) => 4,
            CmdAttr::Other(nla) => nla.value_len(),
        }
    }

    /// Nested attributes carry `NLA_F_NESTED`, as ipvsadm (libnl) sends them.
    fn kind(&self) -> u16 {
        match self {
            CmdAttr::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            CmdAttr::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            CmdAttr::InfoVersion(_) => INFO_ATTR_VERSION,
            CmdAttr::InfoConnTabSize(_) => INFO_ATTR_CONN_TAB_SIZE,
            CmdAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            CmdAttr::Service(a) => a.as_slice().emit(buf),
            CmdAttr::Dest(a) => a.as_slice().emit(buf),
            CmdAttr::InfoVersion(v) | CmdAttr::InfoConnTabSize(v) => {
                emit_u32(buf, *v).expect("sized by value_len")
            }
            CmdAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

fn parse_nested<A>(payload: &[u8]) -> Result<Vec<A>, DecodeError>
where
    A: for<'a> Parseable<NlaBuffer<&'a [u8]>>,
{
    NlasIterator::new(payload)
        .map(|nla| nla.and_then(|nla| A::parse(&nla)))
        .collect()
}

/// One IPVS generic netlink message: a command and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: u8,
    pub attrs: Vec<CmdAttr>,
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY_NAME
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        FAMILY_VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        let mut attrs = Vec::new();
        for nla in NlasIterator::new(buf) {
            let nla = nla?;
            let v = nla.value();
            attrs.push(match (header.cmd, nla.kind()) {
                (CMD_SET_INFO, INFO_ATTR_VERSION) => CmdAttr::InfoVersion(parse_u32(v)?),
                (CMD_SET_INFO, INFO_ATTR_CONN_TAB_SIZE) => CmdAttr::InfoConnTabSize(parse_u32(v)?),
                (CMD_SET_INFO, _) => CmdAttr::Other(DefaultNla::parse(&nla)?),
                (_, CMD_ATTR_SERVICE) => CmdAttr::Service(parse_nested(v)?),
                (_, CMD_ATTR_DEST) => CmdAttr::Dest(parse_nested(v)?),
                _ => CmdAttr::Other(DefaultNla::parse(&nla)?),
            });
        }
        Ok(IpvsMessage {
            cmd: header.cmd,
            attrs,
        })
    }
}

fn key_attrs(key: &ServiceKey) -> Vec<SvcAttr> {
    vec![
        SvcAttr::Af(AF_INET),
        SvcAttr::Protocol(ip_protocol(key.protocol)),
        SvcAttr::Addr(inet_addr(key.addr)),
        SvcAttr::Port(key.port),
    ]
}

/// The full service attribute set `NEW_SERVICE` and `SET_SERVICE` need, in
/// the order ipvsadm sends it.
fn service_attrs(vs: &VirtualServer) -> Vec<SvcAttr> {
    let mut attrs = key_attrs(&vs.key);
    attrs.extend([
        SvcAttr::SchedName(vs.scheduler.clone()),
        SvcAttr::Flags {
            flags: vs.flags,
            mask: u32::MAX,
        },
        SvcAttr::Timeout(vs.timeout),
        SvcAttr::Netmask(NETMASK_HOST),
    ]);
    attrs
}

fn dest_attrs(rs: &RealServer, full: bool) -> Vec<DestAttr> {
    let mut attrs = vec![
        DestAttr::AddrFamily(AF_INET),
        DestAttr::Addr(inet_addr(rs.addr)),
        DestAttr::Port(rs.port),
    ];
    if full {
        attrs.extend([
            DestAttr::FwdMethod(FWD_MASQ),
            DestAttr::Weight(rs.weight),
            DestAttr::UThresh(0),
            DestAttr::LThresh(0),
        ]);
    }
    attrs
}

/// One change to the kernel's IPVS table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    NewService(VirtualServer),
    SetService(VirtualServer),
    DelService(ServiceKey),
    NewDest(ServiceKey, RealServer),
    SetDest(ServiceKey, RealServer),
    DelDest(ServiceKey, RealServer),
}

impl Op {
    pub fn message(&self) -> IpvsMessage {
        let (cmd, attrs) = match self {
            Op::NewService(vs) => (CMD_NEW_SERVICE, vec![CmdAttr::Service(service_attrs(vs))]),
            Op::SetService(vs) => (CMD_SET_SERVICE, vec![CmdAttr::Service(service_attrs(vs))]),
            Op::DelService(key) => (CMD_DEL_SERVICE, vec![CmdAttr::Service(key_attrs(key))]),
            Op::NewDest(key, rs) => (CMD_NEW_DEST, dest_cmd_attrs(key, rs, true)),
            Op::SetDest(key, rs) => (CMD_SET_DEST, dest_cmd_attrs(key, rs, true)),
            Op::DelDest(key, rs) => (CMD_DEL_DEST, dest_cmd_attrs(key, rs, false)),
        };
        IpvsMessage { cmd, attrs }
    }

    /// The same change as an `ipvsadm-restore` line, so a benchmark can time
    /// the standard tool on this sync's changes.
    pub fn ipvsadm_line(&self) -> String {
        fn service(key: &ServiceKey) -> String {
            let flag = match key.protocol {
                Protocol::Tcp => "-t",
                Protocol::Udp => "-u",
                Protocol::Sctp => "--sctp-service",
            };
            format!("{flag} {}:{}", key.addr, key.port)
        }
        fn options(vs: &VirtualServer) -> String {
            let mut s = format!("{} -s {}", service(&vs.key), vs.scheduler);
            if vs.flags & SVC_F_PERSISTENT != 0 {
                s.push_str(&format!(" -p {}", vs.timeout));
            }
            if vs.flags & SVC_F_SCHED_SH_PORT != 0 {
                s.push_str(" -b sh-port");
            }
            s
        }
        match self {
            Op::NewService(vs) => format!("-A {}", options(vs)),
            Op::SetService(vs) => format!("-E {}", options(vs)),
            Op::DelService(key) => format!("-D {}", service(key)),
            Op::NewDest(key, rs) => format!(
                "-a {} -r {}:{} -m -w {}",
                service(key),
                rs.addr,
                rs.port,
                rs.weight
            ),
            Op::SetDest(key, rs) => format!(
                "-e {} -r {}:{} -m -w {}",
                service(key),
                rs.addr,
                rs.port,
                rs.weight
            ),
            Op::DelDest(key, rs) => format!("-d {} -r {}:{}", service(key), rs.addr, rs.port),
        }
    }
}

fn dest_cmd_attrs(key: &ServiceKey, rs: &RealServer, full: bool) -> Vec<CmdAttr> {
    vec![
        CmdAttr::Service(key_attrs(key)),
        CmdAttr::Dest(dest_attrs(rs, full)),
    ]
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::NewService(vs) => write!(
                f,
                "adding virtual server {} (scheduler {})",
                vs.key, vs.scheduler
            ),
            Op::SetService(vs) => write!(
                f,
                "updating virtual server {} (scheduler {})",
                vs.key, vs.scheduler
            ),
            Op::DelService(key) => write!(f, "deleting virtual server {key}"),
            Op::NewDest(key, rs) => write!(
                f,
                "adding real server {}:{} (weight {}) to {key}",
                rs.addr, rs.port, rs.weight
            ),
            Op::SetDest(key, rs) => write!(
                f,
                "setting real server {}:{} of {key} to weight {}",
                rs.addr, rs.port, rs.weight
            ),
            Op::DelDest(key, rs) => {
                write!(f, "deleting real server {}:{} from {key}", rs.addr, rs.port)
            }
        }
    }
}

fn service_from_attrs(attrs: &[SvcAttr]) -> Option<ServiceInfo> {
    let (mut af, mut proto, mut addr, mut port) = (None, None, None, None);
    let mut server_flags = 0;
    let mut scheduler = String::new();
    let mut timeout = 0;
    let mut counters = Counters::default();
    for a in attrs {
        match a {
            SvcAttr::Af(v) => af = Some(*v),
            SvcAttr::Protocol(v) => proto = from_ip_protocol(*v),
            SvcAttr::Addr(raw) => addr = Some(ipv4_of(raw)),
            SvcAttr::Port(v) => port = Some(*v),
            SvcAttr::SchedName(s) => scheduler = s.clone(),
            SvcAttr::Flags { flags, .. } => server_flags = flags & !SVC_F_HASHED,
            SvcAttr::Timeout(v) => timeout = *v,
            SvcAttr::Stats64(c) => counters = *c,
            SvcAttr::Netmask(_) | SvcAttr::Other(_) => {}
        }
    }
    // IPv6 and firewall-mark services are not ours: they carry no usable
    // IPv4 (protocol, address, port) key.
    if af != Some(AF_INET) {
        return None;
    }
    Some(ServiceInfo {
        server: VirtualServer {
            key: ServiceKey {
                protocol: proto?,
                addr: addr?,
                port: port?,
            },
            scheduler,
            flags: server_flags,
            timeout,
        },
        counters,
    })
}

fn dest_from_attrs(attrs: &[DestAttr]) -> Option<DestInfo> {
    let (mut addr, mut port) = (None, None);
    let mut info = DestInfo {
        server: RealServer {
            addr: Ipv4Addr::UNSPECIFIED,
            port: 0,
            weight: 0,
        },
        active_conns: 0,
        inactive_conns: 0,
        counters: Counters::default(),
    };
    let mut family = AF_INET;
    for a in attrs {
        match a {
            DestAttr::Addr(raw) => addr = Some(ipv4_of(raw)),
            DestAttr::Port(v) => port = Some(*v),
            DestAttr::Weight(v) => info.server.weight = *v,
            DestAttr::ActiveConns(v) => info.active_conns = *v,
            DestAttr::InactConns(v) => info.inactive_conns = *v,
            DestAttr::AddrFamily(v) => family = *v,
            DestAttr::Stats64(c) => info.counters = *c,
            _ => {}
        }
    }
    if family != AF_INET {
        return None;
    }
    info.server.addr = addr?;
    info.server.port = port?;
    Some(info)
}

/// Why talking to IPVS failed. Every variant names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error(
        "kernel lacks IP_VS: it has no \"IPVS\" generic netlink family (module ip_vs not built or not loaded)"
    )]
    FamilyMissing,
    #[error("IPVS netlink: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{} IPVS operation(s) failed: {}", .0.len(), summarize(.0))]
    Ops(Vec<(String, io::Error)>),
}

fn summarize(failures: &[(String, io::Error)]) -> String {
    const SHOWN: usize = 5;
    let mut s: Vec<String> = failures
        .iter()
        .take(SHOWN)
        .map(|(what, e)| format!("{what}: {e}"))
        .collect();
    if failures.len() > SHOWN {
        s.push(format!("and {} more", failures.len() - SHOWN));
    }
    s.join("; ")
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> IpvsError {
    let what = what.into();
    move |source| IpvsError::Io { what, source }
}

/// A generic netlink socket bound to the IPVS family of the namespace it
/// was opened in.
pub struct IpvsClient {
    transport: Transport,
    family: u16,
}

impl IpvsClient {
    /// Opens a socket in the calling thread's namespace and looks up the
    /// IPVS family.
    pub fn open() -> Result<Self, IpvsError> {
        let mut transport =
            Transport::open(NETLINK_GENERIC).map_err(io_err("opening a generic netlink socket"))?;
        let query = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(FAMILY_NAME.to_string())],
        });
        let replies = match transport.request(query, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(IpvsError::FamilyMissing);
            }
            other => other.map_err(io_err("resolving the IPVS family"))?,
        };
        let family = replies
            .iter()
            .flat_map(|m| &m.payload.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(IpvsError::FamilyMissing)?;
        Ok(IpvsClient { transport, family })
    }

    fn message(&self, msg: IpvsMessage) -> GenlMessage<IpvsMessage> {
        let mut m = GenlMessage::from_payload(msg);
        m.set_resolved_family_id(self.family);
        m
    }

    pub fn info(&mut self) -> Result<Info, IpvsError> {
        let req = self.message(IpvsMessage {
            cmd: CMD_GET_INFO,
            attrs: vec![],
        });
        let replies = self
            .transport
            .request(req, 0)
            .map_err(io_err("reading IPVS info"))?;
        let mut info = Info {
            version: 0,
            conn_tab_size: 0,
        };
        for a in replies.iter().flat_map(|m| &m.payload.attrs) {
            match a {
                CmdAttr::InfoVersion(v) => info.version = *v,
                CmdAttr::InfoConnTabSize(v) => info.conn_tab_size = *v,
                _ => {}
            }
        }
        Ok(info)
    }

    /// Every IPv4 virtual server, with its counters.
    pub fn services(&mut self) -> Result<Vec<ServiceInfo>, IpvsError> {
        let req = self.message(IpvsMessage {
            cmd: CMD_GET_SERVICE,
            attrs: vec![],
        });
        let replies = self
            .transport
            .dump(req)
            .map_err(io_err("listing virtual servers"))?;
        Ok(replies
            .iter()
            .flat_map(|m| &m.payload.attrs)
            .filter_map(|a| match a {
                CmdAttr::Service(attrs) => service_from_attrs(attrs),
                _ => None,
            })
            .collect())
    }

    /// The real servers of one virtual server (none if it does not exist).
    pub fn dests(&mut self, key: &ServiceKey) -> Result<Vec<DestInfo>, IpvsError> {
        let req = self.message(IpvsMessage {
            cmd: CMD_GET_DEST,
            attrs: vec![CmdAttr::Service(key_attrs(key))],
        });
        let replies = self
            .transport
            .dump(req)
            .map_err(io_err(format!("listing real servers of {key}")))?;
        Ok(replies
            .iter()
            .flat_map(|m| &m.payload.attrs)
            .filter_map(|a| match a {
                CmdAttr::Dest(attrs) => dest_from_attrs(attrs),
                _ => None,
            })
            .collect())
    }

    /// Applies the operations in order, batched; every one is attempted, and
    /// the failures are returned together.
    pub fn apply(&mut self, ops: &[Op]) -> Result<(), IpvsError> {
        if ops.is_empty() {
            return Ok(());
        }
        let msgs = ops
            .iter()
            .map(|op| (self.message(op.message()), 0))
            .collect();
        let results = self
            .transport
            .batch(msgs)
            .map_err(io_err("sending IPVS changes"))?;
        let failures: Vec<(String, io::Error)> = ops
            .iter()
            .zip(results)
            .filter_map(|(op, r)| r.err().map(|e| (op.to_string(), e)))
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(IpvsError::Ops(failures))
        }
    }

    /// Deletes every virtual server of the namespace (`ipvsadm -C`).
    pub fn flush(&mut self) -> Result<(), IpvsError> {
        let req = self.message(IpvsMessage {
            cmd: CMD_FLUSH,
            attrs: vec![],
        });
        self.transport
            .request(req, 0)
            .map(|_| ())
            .map_err(io_err("flushing virtual servers"))
    }
}

#[cfg(test)]
#[path = "netlink_tests.rs"]
mod tests;
