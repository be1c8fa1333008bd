//! The links of the calling thread's namespace over rtnetlink, as the
//! backends need them: listing links and their IPv4 addresses, dummy
//! devices (ipvs's `kube-ipvs0`), /32 addresses on them, and removing the
//! clsact qdiscs the ebpf backend added (kernels before tcx).

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::tc::{TcHandle, TcMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;

use super::netlink::Transport;

#[derive(Debug, thiserror::Error)]
#[error("rtnetlink: {what}: {source}")]
pub struct LinkError {
    what: String,
    #[source]
    source: io::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LinkError {
    let what = what.into();
    move |source| LinkError { what, source }
}

/// One network interface of the current namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The bridge (or other master) it is enslaved to.
    pub master: Option<u32>,
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

/// An rtnetlink socket in the namespace it was opened in.
pub struct Links {
    transport: Transport,
}

impl Links {
    pub fn open() -> Result<Self, LinkError> {
        Ok(Links {
            transport: Transport::open(NETLINK_ROUTE).map_err(err("opening a route socket"))?,
        })
    }

    /// The index of link `name`, if it exists.
    pub fn index_of(&mut self, name: &str) -> Result<Option<u32>, LinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        match self.transport.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(err(format!("looking up link {name}"))(e)),
        }
    }

    /// Creates dummy device `name` unless it exists; returns its index.
    pub fn ensure_dummy(&mut self, name: &str) -> Result<u32, LinkError> {
        if let Some(index) = self.index_of(name)? {
            return Ok(index);
        }
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Dummy,
            )]));
        self.transport
            .request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(err(format!("creating dummy device {name}")))?;
        self.index_of(name)?.ok_or_else(|| LinkError {
            what: format!("dummy device {name} vanished after it was created"),
            source: io::Error::from_raw_os_error(libc::ENODEV),
        })
    }

    /// Deletes link `name`; a link that does not exist is not an error.
    pub fn delete(&mut self, name: &str) -> Result<(), LinkError> {
        let Some(index) = self.index_of(name)? else {
            return Ok(());
        };
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.transport
            .request(RouteNetlinkMessage::DelLink(msg), 0)
            .map(|_| ())
            .map_err(err(format!("deleting link {name}")))
    }

    /// Every link of the namespace.
    pub fn all(&mut self) -> Result<Vec<Link>, LinkError> {
        let replies = self
            .transport
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .map_err(err("listing links"))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })
            .collect())
    }

    /// Deletes the clsact qdisc of link `name` (`tc qdisc del dev NAME
    /// clsact`), with the filters on it. A link that is gone, or has no
    /// clsact qdisc, is not an error.
    pub fn delete_clsact(&mut self, name: &str) -> Result<(), LinkError> {
        let Some(index) = self.index_of(name)? else {
            return Ok(());
        };
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::CLSACT;
        msg.header.handle = TcHandle {
            major: TcHandle::CLSACT.major,
            minor: 0,
        };
        match self
            .transport
            .request(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
        {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(err(format!("deleting the clsact qdisc of {name}"))(e)),
        }
    }

    /// The IPv4 addresses on link `index`, in the kernel's order (primary
    /// first).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Ipv4Addr>, LinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self
            .transport
            .dump(RouteNetlinkMessage::GetAddress(msg))
            .map_err(err("listing IPv4 addresses"))?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
                _ => None,
            })
            .flat_map(|a| a.attributes)
            .filter_map(|attr| match attr {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(ip),
                _ => None,
            })
            .collect())
    }

    /// Adds each address as a /32 on link `index` (`device` names it in
    /// errors); an address already there is not an error.
    pub fn add_addresses(
        &mut self,
        index: u32,
        device: &str,
        ips: &[Ipv4Addr],
    ) -> Result<(), LinkError> {
        self.change_addresses(index, ips, true, |ip| {
            format!("adding address {ip}/32 to {device}")
        })
    }

    /// Removes each /32 from link `index`; an address already gone is not
    /// an error.
    pub fn del_addresses(
        &mut self,
        index: u32,
        device: &str,
        ips: &[Ipv4Addr],
    ) -> Result<(), LinkError> {
        self.change_addresses(index, ips, false, |ip| {
            format!("removing address {ip}/32 from {device}")
        })
    }

    /// Adds or removes the /32s in one batch; the address already being
    /// there (or gone) is not an error.
    fn change_addresses(
        &mut self,
        index: u32,
        ips: &[Ipv4Addr],
        add: bool,
        what: impl Fn(&Ipv4Addr) -> String,
    ) -> Result<(), LinkError> {
        if ips.is_empty() {
            return Ok(());
        }
        let msgs = ips
            .iter()
            .map(|ip| {
                let msg = host_address(index, *ip);
                if add {
                    (RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE)
                } else {
                    (RouteNetlinkMessage::DelAddress(msg), 0)
                }
            })
            .collect();
        let tolerated = if add {
            libc::EEXIST
        } else {
            libc::EADDRNOTAVAIL
        };
        let results = self
            .transport
            .batch(msgs)
            .map_err(err("sending address changes"))?;
        for (ip, r) in ips.iter().zip(results) {
            if let Err(e) = r
                && e.raw_os_error() != Some(tolerated)
            {
                return Err(err(what(ip))(e));
            }
        }
        Ok(())
    }
}

/// `ip addr add IP/32 dev INDEX`, scope global as kube-proxy adds them.
fn host_address(index: u32, ip: Ipv4Addr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = 32;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(IpAddr::V4(ip)));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(ip)));
    msg
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;

    use super::*;

    #[test]
    fn lists_lo_with_its_address_in_a_private_netns() {
        crate::require_netns!();
        crate::testkit::in_new_netns(|| {
            let mut links = Links::open().unwrap();
            let all = links.all().unwrap();
            let lo = all.iter().find(|l| l.name == "lo").expect("lo is listed");
            assert_eq!(lo.index, 1);
            assert_eq!(lo.master, None);
            assert_eq!(
                links.addresses(lo.index).unwrap(),
                vec![Ipv4Addr::LOCALHOST]
            );
        });
    }

    #[test]
    fn deletes_a_clsact_qdisc_and_tolerates_none() {
        crate::require_netns!();
        crate::testkit::in_new_netns(|| {
            let show = || {
                crate::kernel::cmd::run("tc", &["qdisc", "show", "dev", "lo"], None)
                    .unwrap()
                    .stdout
            };
            crate::kernel::cmd::run("tc", &["qdisc", "add", "dev", "lo", "clsact"], None).unwrap();
            assert!(show().contains("clsact"));
            let mut links = Links::open().unwrap();
            links.delete_clsact("lo").unwrap();
            assert!(!show().contains("clsact"), "{}", show());
            links.delete_clsact("lo").unwrap();
            links.delete_clsact("no-such-link").unwrap();
        });
    }

    /// The bytes `ip addr add 10.96.0.10/32 dev 7` sends after the netlink
    /// header: ifaddrmsg {AF_INET, /32, flags 0, scope 0, index 7}, then
    /// IFA_LOCAL and IFA_ADDRESS.
    #[test]
    fn host_address_layout() {
        let msg = host_address(7, Ipv4Addr::new(10, 96, 0, 10));
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        let mut want = vec![2u8, 32, 0, 0];
        want.extend(7u32.to_ne_bytes());
        want.extend([8, 0, 2, 0, 10, 96, 0, 10]); // IFA_LOCAL
        want.extend([8, 0, 1, 0, 10, 96, 0, 10]); // IFA_ADDRESS
        assert_eq!(buf, want);
    }
}
