//! The map keys and values shared with the BPF programs: `#[repr(C)]`
//! twins of `backends/bpf/abi.h`, field for field. Addresses and ports are
//! kept in network byte order, as the programs compare them with packet
//! fields.

use std::net::Ipv4Addr;

use crate::model::Protocol;

/// An IPv4 address as the programs store it: its octets in memory order.
pub fn be_addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn addr_of(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

pub fn be_port(port: u16) -> u16 {
    port.to_be()
}

pub fn port_of(be: u16) -> u16 {
    u16::from_be(be)
}

/// IPPROTO_TCP / IPPROTO_UDP, or None for protocols the programs do not
/// balance.
pub fn ip_proto(p: Protocol) -> Option<u8> {
    match p {
        Protocol::Tcp => Some(libc::IPPROTO_TCP as u8),
        Protocol::Udp => Some(libc::IPPROTO_UDP as u8),
        Protocol::Sctp => None,
    }
}

/// `SVC_*` flags.
pub const SVC_HAS_ANY: u8 = 0x01;
pub const SVC_ITP_LOCAL: u8 = 0x02;
pub const SVC_ETP_LOCAL: u8 = 0x04;
pub const SVC_EXTERNAL: u8 = 0x08;

pub const SET_CLUSTER: u8 = 0;
pub const SET_LOCAL: u8 = 1;

/// Size of the stats array, so the number of service ports at once.
pub const MAX_SERVICE_IDS: u32 = 262_144;

pub const CT_ORIG: u8 = 1;
pub const CT_SNAT: u8 = 2;
pub const CT_UNSNAT: u8 = 3;
pub const CT_UNDNAT: u8 = 4;
pub const CT_UNDNAT_LOCAL: u8 = 5;
pub const CT_UNDNAT_MASQ: u8 = 6;

pub const FAULT_MISSING_MASQUERADE: u32 = 0x01;
pub const FAULT_WRONG_PROBABILITY: u32 = 0x02;
pub const FAULT_NO_REJECT: u32 = 0x04;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SvcKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcVal {
    pub id: u32,
    pub count: [u16; 2],
    pub affinity_seconds: u32,
    pub generation: u8,
    pub flags: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub svc_id: u32,
    pub slot: u32,
}

impl BackendKey {
    pub fn new(svc_id: u32, generation: u8, set: u8, index: usize) -> Self {
        BackendKey {
            svc_id,
            slot: (u32::from(generation) << 31) | (u32::from(set) << 30) | index as u32,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    pub svc_id: u32,
    pub addr: u32,
    pub port: u16,
    pub set: u8,
    pub pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub kind: u8,
    pub pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtVal {
    pub addr: u32,
    pub port: u16,
    pub flags: u8,
    pub pad: u8,
    pub svc_id: u32,
    pub ep_addr: u32,
    pub ep_port: u16,
    /// When the entry was written, in seconds of the monotonic clock,
    /// modulo 65536 (the programs' TIME_WAIT guard, flows.h).
    pub opened: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SvcStats {
    pub packets: u64,
    pub connections: u64,
}

// SAFETY: plain #[repr(C)] integers without padding bytes the compiler
// could leave uninitialised (every gap is an explicit field).
unsafe impl aya::Pod for SvcKey {}
unsafe impl aya::Pod for SvcVal {}
unsafe impl aya::Pod for BackendKey {}
unsafe impl aya::Pod for Backend {}
unsafe impl aya::Pod for MemberKey {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtVal {}
unsafe impl aya::Pod for SvcStats {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_abi_h() {
        assert_eq!(size_of::<SvcKey>(), 8);
        assert_eq!(size_of::<SvcVal>(), 16);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<MemberKey>(), 12);
        assert_eq!(size_of::<CtKey>(), 16);
        assert_eq!(size_of::<CtVal>(), 20);
        assert_eq!(size_of::<SvcStats>(), 16);
    }

    #[test]
    fn network_order() {
        let ip = Ipv4Addr::new(10, 96, 0, 1);
        assert_eq!(be_addr(ip).to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(addr_of(be_addr(ip)), ip);
        assert_eq!(be_port(8080).to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(port_of(be_port(8080)), 8080);
        let k = BackendKey::new(7, 1, SET_LOCAL, 3);
        assert_eq!(k.slot, 0xC000_0003);
    }
}
