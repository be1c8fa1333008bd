//! Which BPF conntrack entries a removed endpoint leaves stale (the
//! backend's own version of kube-proxy's UDP conntrack cleanup: every
//! entry of a connection records its service id and endpoint).

use std::collections::BTreeSet;

use super::abi::{Backend, CtKey, CtVal};

/// Whether the entry belongs to a UDP connection to one of `stale`'s
/// endpoints of that service id.
pub fn is_stale(k: &CtKey, v: &CtVal, stale: &BTreeSet<(u32, Backend)>) -> bool {
    k.proto == libc::IPPROTO_UDP as u8
        && stale.contains(&(
            v.svc_id,
            Backend {
                addr: v.ep_addr,
                port: v.ep_port,
                pad: 0,
            },
        ))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::ebpf::abi::{self, be_addr, be_port};

    #[test]
    fn only_udp_entries_of_that_endpoint_and_service() {
        let ep = Backend {
            addr: be_addr(Ipv4Addr::new(10, 244, 1, 5)),
            port: be_port(5353),
            pad: 0,
        };
        let stale = BTreeSet::from([(7, ep)]);
        let udp = CtKey {
            proto: libc::IPPROTO_UDP as u8,
            kind: abi::CT_ORIG,
            ..CtKey::default()
        };
        let tcp = CtKey {
            proto: libc::IPPROTO_TCP as u8,
            ..udp
        };
        let to = |svc_id, port| CtVal {
            svc_id,
            ep_addr: ep.addr,
            ep_port: be_port(port),
            ..CtVal::default()
        };
        assert!(is_stale(&udp, &to(7, 5353), &stale));
        assert!(is_stale(
            &CtKey {
                kind: abi::CT_UNDNAT,
                ..udp
            },
            &to(7, 5353),
            &stale
        ));
        assert!(!is_stale(&tcp, &to(7, 5353), &stale));
        assert!(!is_stale(&udp, &to(8, 5353), &stale));
        assert!(!is_stale(&udp, &to(7, 53), &stale));
    }
}
