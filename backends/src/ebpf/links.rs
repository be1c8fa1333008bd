//! The node's links as the backend needs them, over rtnetlink in the
//! calling thread's namespace: the uplink, the pod bridge, the pods' host
//! veths (the bridge's ports), the bridge's address, and removing the
//! clsact qdiscs the backend added (kernels before tcx).

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::tc::{TcHandle, TcMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
#[error("rtnetlink: {what}: {source}")]
pub struct LinkError {
    what: String,
    #[source]
    source: io::Error,
}

/// One network interface of the current namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
}

/// Every link of the current namespace.
pub fn all() -> Result<Vec<Link>, LinkError> {
    let replies = request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        NLM_F_DUMP,
    )
    .map_err(|source| LinkError {
        what: "listing links".into(),
        source,
    })?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
            _ => None,
        })
        .collect())
}

fn link_of(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        master: None,
    };
    for a in l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Controller(m) => link.master = Some(m),
            _ => {}
        }
    }
    link
}

/// The IPv4 addresses on link `index`, in the kernel's order (primary
/// first).
pub fn ipv4_addresses(index: u32) -> Result<Vec<Ipv4Addr>, LinkError> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    let replies =
        request(RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP).map_err(|source| LinkError {
            what: "listing IPv4 addresses".into(),
            source,
        })?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a.attributes),
            _ => None,
        })
        .flatten()
        .filter_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(ip),
            _ => None,
        })
        .collect())
}

/// Deletes the clsact qdisc of link `name` (`tc qdisc del dev NAME
/// clsact`), with the filters on it. A link that is gone, or has no
/// clsact qdisc, is not an error.
pub fn delete_clsact(name: &str) -> Result<(), LinkError> {
    let Some(link) = all()?.into_iter().find(|l| l.name == name) else {
        return Ok(());
    };
    let mut msg = TcMessage::with_index(link.index as i32);
    msg.header.parent = TcHandle::CLSACT;
    msg.header.handle = TcHandle {
        major: TcHandle::CLSACT.major,
        minor: 0,
    };
    match request(RouteNetlinkMessage::DelQueueDiscipline(msg), NLM_F_ACK) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)
            ) =>
        {
            Ok(())
        }
        Err(source) => Err(LinkError {
            what: format!("deleting the clsact qdisc of {name}"),
            source,
        }),
    }
}

/// Sends a request (a dump with `NLM_F_DUMP`, acknowledged with
/// `NLM_F_ACK`) and collects the replies up to NLMSG_DONE or the ack.
fn request(msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    request.finalize();
    let mut bytes = vec![0u8; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut out = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut rest = data.as_slice();
        while !rest.is_empty() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = (m.header.length as usize).div_ceil(4) * 4;
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                NetlinkPayload::Error(_) => return Ok(out),
                _ => {}
            }
            if len == 0 || len > rest.len() {
                break;
            }
            rest = &rest[len..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_lo_with_its_address_in_a_private_netns() {
        crate::require_netns!();
        crate::testns::in_new_netns(|| {
            let links = all().unwrap();
            let lo = links.iter().find(|l| l.name == "lo").expect("lo is listed");
            assert_eq!(lo.index, 1);
            assert_eq!(lo.master, None);
            assert_eq!(ipv4_addresses(lo.index).unwrap(), vec![Ipv4Addr::LOCALHOST]);
        });
    }

    #[test]
    fn deletes_a_clsact_qdisc_and_tolerates_none() {
        crate::require_netns!();
        crate::testns::in_new_netns(|| {
            let show = || {
                crate::cmd::run("tc", &["qdisc", "show", "dev", "lo"], None)
                    .unwrap()
                    .stdout
            };
            crate::cmd::run("tc", &["qdisc", "add", "dev", "lo", "clsact"], None).unwrap();
            assert!(show().contains("clsact"));
            delete_clsact("lo").unwrap();
            assert!(!show().contains("clsact"), "{}", show());
            delete_clsact("lo").unwrap();
            delete_clsact("no-such-link").unwrap();
        });
    }
}
