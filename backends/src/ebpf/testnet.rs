//! Test topology for real traffic: the test thread's private namespace is
//! the node (`cni0` at 10.244.0.1/24, uplink `eth0` at 192.168.0.1/24),
//! pods are namespaces on veths enslaved to `cni0` (10.244.0.11, .12, ...),
//! and `remote` is one namespace behind the uplink that plays another node
//! (192.168.0.2, with its pod 10.244.1.5) and an external client
//! (192.168.0.100). Pods and the remote pod run TCP 8080 and UDP 5353
//! servers that answer `<their address> <the source they saw>`.

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

use crate::kernel::cmd;
use crate::model::{NodeContext, Protocol, ServicePort, ServicePortName};
use crate::testkit;
pub use crate::testkit::{Host, TCP_PORT, UDP_PORT};

pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
pub const EXTERNAL: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 100);

fn ip(args: &[&str]) {
    cmd::run("ip", args, None).unwrap();
}

/// The node's side of the topology; build it from inside the node's
/// (the test thread's) namespace.
pub struct Topology {
    pub pods: Vec<Host>,
    pub remote: Host,
}

impl Topology {
    pub fn build(pods: u8) -> Topology {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        ip(&["link", "add", "cni0", "type", "bridge"]);
        ip(&["addr", "add", "10.244.0.1/24", "dev", "cni0"]);
        ip(&["link", "set", "cni0", "up"]);
        let (remote, path) = Host::spawn(REMOTE_POD);
        ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &path,
        ]);
        ip(&["addr", "add", "192.168.0.1/24", "dev", "eth0"]);
        ip(&["link", "set", "eth0", "up"]);
        ip(&["route", "add", "10.244.1.0/24", "via", "192.168.0.2"]);
        // Covers the service CIDR, as a node's default route does.
        ip(&["route", "add", "default", "via", "192.168.0.2"]);
        remote.run(|| {
            ip(&["link", "set", "lo", "up"]);
            ip(&["addr", "add", "10.244.1.5/32", "dev", "lo"]);
            ip(&["addr", "add", "192.168.0.2/24", "dev", "eth0"]);
            ip(&["addr", "add", "192.168.0.100/24", "dev", "eth0"]);
            ip(&["link", "set", "eth0", "up"]);
            ip(&["route", "add", "10.244.0.0/24", "via", "192.168.0.1"]);
        });
        let mut t = Topology {
            pods: Vec::new(),
            remote,
        };
        for _ in 0..pods {
            t.add_pod();
        }
        t
    }

    /// Another pod on `cni0`: 10.244.0.11 for the first, .12 next...
    pub fn add_pod(&mut self) -> &Host {
        let i = self.pods.len() as u8;
        let addr = Ipv4Addr::new(10, 244, 0, 11 + i);
        let (pod, path) = Host::spawn(addr);
        let veth = format!("vethp{i}");
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &path,
        ]);
        ip(&["link", "set", &veth, "master", "cni0", "up"]);
        ip(&[
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ]);
        let cidr = format!("{addr}/24");
        pod.run(move || {
            ip(&["link", "set", "lo", "up"]);
            ip(&["addr", "add", &cidr, "dev", "eth0"]);
            ip(&["link", "set", "eth0", "up"]);
            ip(&["route", "add", "default", "via", "10.244.0.1"]);
        });
        self.pods.push(pod);
        self.pods.last().expect("just added")
    }

    pub fn node() -> NodeContext {
        NodeContext {
            node_ip: NODE_IP.into(),
            service_cidr: "10.96.0.0/16".parse().unwrap(),
            run_prefix: "svclab-t".into(),
            ..testkit::node()
        }
    }
}

pub fn service(name: &str, vip: Ipv4Addr, port: u16, protocol: Protocol) -> ServicePort {
    testkit::service_port(ServicePortName::new("ns", name, "", protocol), vip, port)
}

/// Who answered and which source it saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Answer {
    pub server: Ipv4Addr,
    pub saw: Ipv4Addr,
}

fn parse(text: &str) -> Answer {
    let mut it = text
        .split(' ')
        .map(|s| s.parse::<Ipv4Addr>().expect("server answer"));
    Answer {
        server: it.next().unwrap(),
        saw: it.next().unwrap(),
    }
}

/// One exchange with `to` over `protocol`, from `from` (any address and
/// port when None). UDP replies are only accepted from `to` itself (the
/// socket is connected), as TCP's are.
pub fn exchange(
    protocol: Protocol,
    to: SocketAddrV4,
    from: Option<SocketAddrV4>,
) -> Result<Answer, ErrorKind> {
    let ty = if protocol == Protocol::Tcp {
        Type::STREAM
    } else {
        Type::DGRAM
    };
    let s = Socket::new(Domain::IPV4, ty, None).map_err(|e| e.kind())?;
    s.set_reuse_address(true).map_err(|e| e.kind())?;
    if let Some(from) = from {
        s.bind(&SocketAddr::V4(from).into()).map_err(|e| e.kind())?;
    }
    let timeout = Duration::from_secs(2);
    s.set_read_timeout(Some(timeout)).map_err(|e| e.kind())?;
    let mut out = String::new();
    if protocol == Protocol::Tcp {
        s.connect_timeout(&SocketAddr::V4(to).into(), timeout)
            .map_err(|e| e.kind())?;
        let mut stream: TcpStream = s.into();
        stream.read_to_string(&mut out).map_err(|e| e.kind())?;
    } else {
        s.connect(&SocketAddr::V4(to).into())
            .map_err(|e| e.kind())?;
        let udp: UdpSocket = s.into();
        udp.send(b"hi").map_err(|e| e.kind())?;
        let mut buf = [0u8; 64];
        let n = udp.recv(&mut buf).map_err(|e| e.kind())?;
        out = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    Ok(parse(&out))
}
