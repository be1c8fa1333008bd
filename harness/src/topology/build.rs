//! Building a [`Topology`] through rtnetlink.
//!
//! Each namespace gets its own netlink socket (a socket belongs to the
//! namespace it was opened in). Interface indexes are chosen up front, so no
//! request waits on a lookup: veth peers are created directly inside their
//! target namespace with a known index, never created and then moved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use futures::stream::{self, StreamExt, TryStreamExt};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder,
};

use super::names::{NODE_UPLINK, POD_BRIDGE, POD_IFACE};
use super::{BuildTimes, Topology, TopologyError};
use crate::netns::{NetNs, NetNsGuard, write_sysctl};

/// Fixed interface indexes inside each namespace (lo is 1).
const IDX_UPLINK: u32 = 2;
const IDX_BRIDGE: u32 = 3;
/// Fabric ports and pod ports count up from here.
const IDX_PORTS: u32 = 100;

/// Requests in flight per namespace.
const PIPELINE: usize = 32;

fn nl(ns: &str, op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> TopologyError {
    let (ns, op) = (ns.to_string(), op.into());
    move |source| TopologyError::Netlink { ns, op, source }
}

/// A netlink handle whose socket lives in `ns`.
pub(crate) fn connect_in(ns: &str) -> Result<Handle, TopologyError> {
    let netns = NetNs::new(ns);
    let fd = netns.open()?;
    let (conn, handle, _) = {
        let _inside = NetNsGuard::enter(fd.as_fd(), ns)?;
        rtnetlink::new_connection().map_err(|e| TopologyError::Other {
            ns: ns.to_string(),
            op: "open netlink socket".into(),
            message: e.to_string(),
        })?
    };
    tokio::spawn(conn);
    Ok(handle)
}

enum Role {
    Fabric,
    Node,
    Client,
}

fn init_namespace(role: &Role, v6: bool) -> Result<(), crate::netns::NetNsError> {
    if v6 {
        init_ipv6(role)?;
    }
    match role {
        Role::Fabric => {
            // The fabric is a plain switch; no netfilter on bridged frames.
            let _ = write_sysctl("net.bridge.bridge-nf-call-iptables", "0");
            unlimited_icmp()
        }
        Role::Node => {
            write_sysctl("net.ipv4.ip_forward", "1")?;
            unlimited_icmp()?;
            // Replies between pods on one bridge must pass netfilter so that
            // DNAT can be undone (kube-proxy requires br_netfilter).
            write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        }
        Role::Client => {
            // A node forwards what it does not DNAT back out of the link it
            // came in on, and tells the sender so with an ICMP redirect; an
            // external client that took it would send every later packet to
            // that address past the node (as a load balancer in front of
            // the cluster would not). Both knobs must be off for a host.
            write_sysctl("net.ipv4.conf.all.accept_redirects", "0")?;
            write_sysctl("net.ipv4.conf.default.accept_redirects", "0")?;
            write_sysctl("net.ipv4.ip_local_port_range", "10000 65000")
        }
    }
}

/// IPv6 in a lab namespace: addresses usable at once (no duplicate address
/// detection: a new address would otherwise stay tentative for a second or
/// two, and the lab assigns every address itself), no ICMPv6 rate limit (as
/// for IPv4, below), forwarding on nodes with bridged IPv6 through
/// ip6tables, and no redirects taken by clients. Set before any link
/// exists, so `default` covers every interface the lab adds.
fn init_ipv6(role: &Role) -> Result<(), crate::netns::NetNsError> {
    // A new namespace starts with `all.accept_dad` 0, and the kernel does
    // DAD when either `all` or the interface's own value asks for it; so
    // `default` (copied to each new interface) is the one write needed.
    // Every write here costs on each of a thousand namespaces (measured:
    // six writes took dual-stack's create time to 1.21x IPv4-only's).
    write_sysctl("net.ipv6.conf.default.accept_dad", "0")?;
    write_sysctl("net.ipv6.icmp.ratelimit", "0")?;
    match role {
        Role::Fabric => {
            let _ = write_sysctl("net.bridge.bridge-nf-call-ip6tables", "0");
        }
        Role::Node => {
            write_sysctl("net.ipv6.conf.all.forwarding", "1")?;
            write_sysctl("net.bridge.bridge-nf-call-ip6tables", "1")?;
        }
        // IPv6 takes a redirect by the receiving interface's own setting,
        // which new interfaces copy from `default`.
        Role::Client => {
            write_sysctl("net.ipv6.conf.default.accept_redirects", "0")?;
        }
    }
    Ok(())
}

/// The lab probes far faster than real clients; the kernel's ICMP rate
/// limits would turn a Service's REJECTs into silent timeouts:
/// - per destination, a burst of 6 and then one a second (`icmp_ratelimit`);
/// - per namespace, a bucket of `icmp_msgs_burst` (50) refilled at most
///   every 20 ms: a check's few dozen rejects in a millisecond empty it,
///   and the next ones are dropped (`IcmpOutRateLimitGlobal` in `nstat`;
///   seen as no-endpoints-reject timeouts from the node's own pod).
fn unlimited_icmp() -> Result<(), crate::netns::NetNsError> {
    write_sysctl("net.ipv4.icmp_ratelimit", "0")?;
    // Per namespace from 6.12 on; an older kernel keeps them global, does
    // not show them in a lab namespace, and the write fails harmlessly.
    let _ = write_sysctl("net.ipv4.icmp_msgs_per_sec", "100000");
    let _ = write_sysctl("net.ipv4.icmp_msgs_burst", "100000");
    Ok(())
}

pub(super) async fn create(t: &Topology) -> Result<BuildTimes, TopologyError> {
    let start = Instant::now();
    create_namespaces(t).await?;
    let namespaces = start.elapsed();
    let links = Instant::now();
    build_fabric(t).await?;
    let nodes = (0..t.nodes.len()).map(|i| build_node(t, i));
    futures::future::try_join_all(nodes).await?;
    Ok(BuildTimes {
        namespaces,
        links: links.elapsed(),
        total: start.elapsed(),
    })
}

async fn create_namespaces(t: &Topology) -> Result<(), TopologyError> {
    let mut work: Vec<(String, Role)> = vec![(t.fabric.clone(), Role::Fabric)];
    work.extend(t.external.iter().map(|e| (e.clone(), Role::Client)));
    work.extend(t.external2.iter().map(|e| (e.clone(), Role::Client)));
    work.extend(t.nodes.iter().map(|n| (n.netns.clone(), Role::Node)));
    work.extend(t.pods.iter().map(|p| (p.netns.clone(), Role::Client)));
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
    let chunk = work.len().div_ceil(workers).max(1);
    let mut parts = Vec::new();
    let mut work = work.into_iter().peekable();
    while work.peek().is_some() {
        parts.push(work.by_ref().take(chunk).collect::<Vec<_>>());
    }
    let v6 = t.v6.is_some();
    let tasks = parts.into_iter().map(|part| {
        tokio::task::spawn_blocking(move || -> Result<(), TopologyError> {
            for (name, role) in part {
                NetNs::new(&name).create_then(|| init_namespace(&role, v6))?;
            }
            Ok(())
        })
    });
    for r in futures::future::join_all(tasks).await {
        r.map_err(|e| TopologyError::Other {
            ns: t.run.ns_prefix(),
            op: "create namespaces".into(),
            message: e.to_string(),
        })??;
    }
    Ok(())
}

/// A veth whose near end is `name` (index `index`) and whose far end is
/// `peer` (index `peer_index`) created directly in namespace `peer_ns`.
/// The returned fd must stay open until the request has been answered.
fn veth_into(
    name: &str,
    index: u32,
    peer: &str,
    peer_index: u32,
    peer_ns: &NetNs,
    controller: u32,
) -> Result<(netlink_packet_route::link::LinkMessage, OwnedFd), TopologyError> {
    let fd = peer_ns.open()?;
    let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.to_string())
        .index(peer_index)
        .setns_by_fd(fd.as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
        .name(name.to_string())
        .index(index)
        .controller(controller)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .build();
    Ok((msg, fd))
}

async fn add_addr(
    h: &Handle,
    ns: &str,
    index: u32,
    ip: impl Into<IpAddr>,
    prefix: u8,
) -> Result<(), TopologyError> {
    let ip: IpAddr = ip.into();
    h.address()
        .add(index, ip, prefix)
        .execute()
        .await
        .map_err(nl(ns, format!("add address {ip}/{prefix}")))
}

async fn set_up(h: &Handle, ns: &str, index: u32, what: &str) -> Result<(), TopologyError> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(ns, format!("set {what} up")))
}

async fn add_route(
    h: &Handle,
    ns: &str,
    dst: ipnet::Ipv4Net,
    via: Ipv4Addr,
) -> Result<(), TopologyError> {
    let msg = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .gateway(via)
        .build();
    send_route(h, ns, msg, format!("add route {dst} via {via}")).await
}

async fn add_route6(
    h: &Handle,
    ns: &str,
    dst: ipnet::Ipv6Net,
    via: Ipv6Addr,
) -> Result<(), TopologyError> {
    // On-link, out of the uplink (every IPv6 route of the lab leaves by its
    // namespace's uplink): IPv6 adds an address's prefix route only once
    // the link has carrier, which a new veth gets asynchronously, and a
    // gateway check before then fails with EHOSTUNREACH (seen here, one in
    // a thousand pods).
    let msg = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(dst.addr(), dst.prefix_len())
        .gateway(via)
        .output_interface(IDX_UPLINK)
        .onlink()
        .build();
    send_route(h, ns, msg, format!("add route {dst} via {via}")).await
}

async fn send_route(
    h: &Handle,
    ns: &str,
    msg: netlink_packet_route::route::RouteMessage,
    what: String,
) -> Result<(), TopologyError> {
    h.route().add(msg).execute().await.map_err(nl(ns, what))
}

fn default6() -> ipnet::Ipv6Net {
    "::/0".parse().expect("constant")
}

async fn build_fabric(t: &Topology) -> Result<(), TopologyError> {
    let ns = t.fabric.as_str();
    let h = connect_in(ns)?;
    let bridge = t.run.fabric_bridge();
    h.link()
        .add(LinkBridge::new(&bridge).index(IDX_BRIDGE).up().build())
        .execute()
        .await
        .map_err(nl(ns, format!("create bridge {bridge}")))?;
    add_addr(
        &h,
        ns,
        IDX_BRIDGE,
        t.fabric_gateway,
        t.node_network.prefix_len(),
    )
    .await?;
    if let Some(v6) = &t.v6 {
        add_addr(
            &h,
            ns,
            IDX_BRIDGE,
            v6.fabric_gateway,
            v6.node_network.prefix_len(),
        )
        .await?;
    }

    let mut ports = Vec::new();
    for (i, n) in t.nodes.iter().enumerate() {
        ports.push((t.run.fabric_port(i), IDX_PORTS + i as u32, n.netns.clone()));
    }
    if let Some(ext) = &t.external {
        ports.push((t.run.external_port(), IDX_PORTS - 1, ext.clone()));
    }
    if let Some(ext) = &t.external2 {
        ports.push((t.run.external2_port(), IDX_PORTS - 2, ext.clone()));
    }
    stream::iter(ports)
        .map(|(port, index, peer_ns)| {
            let h = h.clone();
            async move {
                let (msg, _peer_fd) = veth_into(
                    &port,
                    index,
                    NODE_UPLINK,
                    IDX_UPLINK,
                    &NetNs::new(&peer_ns),
                    IDX_BRIDGE,
                )?;
                h.link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(nl(ns, format!("create veth {port} to {peer_ns}")))
            }
        })
        .buffer_unordered(PIPELINE)
        .try_collect::<Vec<()>>()
        .await?;

    let v6 = t.v6.as_ref();
    let clients = [
        (
            t.external.as_ref(),
            t.external_ip,
            v6.and_then(|v| v.external_ip),
        ),
        (
            t.external2.as_ref(),
            t.external2_ip,
            v6.and_then(|v| v.external2_ip),
        ),
    ];
    for (ext, ip, ip6) in clients {
        let (Some(ext), Some(ip)) = (ext, ip) else {
            continue;
        };
        let h = connect_in(ext)?;
        set_up(&h, ext, 1, "lo").await?;
        add_addr(&h, ext, IDX_UPLINK, ip, t.node_network.prefix_len()).await?;
        if let (Some(ip6), Some(v6)) = (ip6, v6) {
            add_addr(&h, ext, IDX_UPLINK, ip6, v6.node_network.prefix_len()).await?;
        }
        set_up(&h, ext, IDX_UPLINK, NODE_UPLINK).await?;
        // A load balancer in front of the cluster forwards its addresses to
        // some node; here the first.
        if let Some(first) = t.nodes.first() {
            for net in &t.lb_pool {
                match (net, first.ip6) {
                    (ipnet::IpNet::V4(net), _) => add_route(&h, ext, *net, first.ip).await?,
                    (ipnet::IpNet::V6(net), Some(ip6)) => add_route6(&h, ext, *net, ip6).await?,
                    // Validation allows an IPv6 pool only in a lab with IPv6.
                    (ipnet::IpNet::V6(_), None) => {}
                }
            }
        }
    }
    Ok(())
}

async fn build_node(t: &Topology, i: usize) -> Result<(), TopologyError> {
    let node = &t.nodes[i];
    let ns = node.netns.as_str();
    let h = connect_in(ns)?;
    set_up(&h, ns, 1, "lo").await?;
    add_addr(&h, ns, IDX_UPLINK, node.ip, t.node_network.prefix_len()).await?;
    set_up(&h, ns, IDX_UPLINK, NODE_UPLINK).await?;
    h.link()
        .add(LinkBridge::new(POD_BRIDGE).index(IDX_BRIDGE).up().build())
        .execute()
        .await
        .map_err(nl(ns, "create bridge cni0"))?;
    add_addr(&h, ns, IDX_BRIDGE, node.gateway, node.pod_cidr.prefix_len()).await?;
    let v6 =
        t.v6.as_ref()
            .zip(node.ip6.zip(node.gateway6.zip(node.pod_cidr6)));
    if let Some((fabric, (ip6, (gw6, cidr6)))) = v6 {
        add_addr(&h, ns, IDX_UPLINK, ip6, fabric.node_network.prefix_len()).await?;
        add_addr(&h, ns, IDX_BRIDGE, gw6, cidr6.prefix_len()).await?;
        add_route6(&h, ns, default6(), fabric.fabric_gateway).await?;
        for other in t.nodes.iter().filter(|o| o.name != node.name) {
            if let (Some(c), Some(via)) = (other.pod_cidr6, other.ip6) {
                add_route6(&h, ns, c, via).await?;
            }
        }
    }

    // Default route to the fabric gateway: it covers the service CIDR, so
    // the node's own connections to a VIP reach the nat OUTPUT chain.
    add_route(
        &h,
        ns,
        "0.0.0.0/0".parse().expect("constant"),
        t.fabric_gateway,
    )
    .await?;
    for other in t.nodes.iter().filter(|o| o.name != node.name) {
        add_route(&h, ns, other.pod_cidr, other.ip).await?;
    }

    let pods: Vec<(usize, &super::PodNet)> =
        t.pods.iter().filter(|p| p.node == i).enumerate().collect();
    stream::iter(pods.iter().copied())
        .map(|(k, pod)| {
            let h = h.clone();
            async move {
                let index = IDX_PORTS + k as u32;
                let (msg, _peer_fd) = veth_into(
                    &pod.host_port,
                    index,
                    POD_IFACE,
                    IDX_UPLINK,
                    &NetNs::new(&pod.netns),
                    IDX_BRIDGE,
                )?;
                h.link().add(msg).execute().await.map_err(nl(
                    ns,
                    format!("create veth {} to {}", pod.host_port, pod.netns),
                ))?;
                // Hairpin lets a pod reach itself through its Service.
                h.link()
                    .set_port(LinkBridgePort::new(index).hairpin(true).build())
                    .execute()
                    .await
                    .map_err(nl(ns, format!("set hairpin on {}", pod.host_port)))
            }
        })
        .buffer_unordered(PIPELINE)
        .try_collect::<Vec<()>>()
        .await?;

    let prefix = node.pod_cidr.prefix_len();
    stream::iter(pods.iter().map(|(_, p)| *p))
        .map(|pod| async move {
            let pns = pod.netns.as_str();
            let h = connect_in(pns)?;
            set_up(&h, pns, 1, "lo").await?;
            add_addr(&h, pns, IDX_UPLINK, pod.ip, prefix).await?;
            if let (Some(ip6), Some(cidr6)) = (pod.ip6, node.pod_cidr6) {
                add_addr(&h, pns, IDX_UPLINK, ip6, cidr6.prefix_len()).await?;
            }
            set_up(&h, pns, IDX_UPLINK, POD_IFACE).await?;
            add_route(
                &h,
                pns,
                "0.0.0.0/0".parse().expect("constant"),
                node.gateway,
            )
            .await?;
            if let (Some(_), Some(gw6)) = (pod.ip6, node.gateway6) {
                add_route6(&h, pns, default6(), gw6).await?;
            }
            Ok::<(), TopologyError>(())
        })
        .buffer_unordered(PIPELINE)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}
