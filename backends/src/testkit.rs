//! What the backends' tests share: a brand-new network namespace per test
//! (so tests that program the kernel never touch the host's own namespace
//! and can run in parallel), one node to sync for, service ports and
//! endpoints, and namespaces with echo servers to send traffic to.

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::kernel::cmd;
use crate::model::{Endpoint, NodeContext, Protocol, ServicePort, ServicePortName};

/// The echo servers' TCP port.
pub const TCP_PORT: u16 = 8080;
/// The echo servers' UDP port.
pub const UDP_PORT: u16 = 5353;

/// Why kernel tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (CAP_NET_ADMIN) to create a network namespace".into());
    }
    None
}

/// Runs `f` on a fresh thread inside a new, empty network namespace with
/// `lo` up. Tools spawned from `f` inherit that namespace.
pub fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET)");
            cmd::run("ip", &["link", "set", "lo", "up"], None).expect("lo up");
            f()
        })
        .join()
        .expect("test thread panicked")
    })
}

/// Skips the calling test (returns early) with a reason when kernel tests
/// cannot run on this machine.
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(reason) = $crate::testkit::unavailable() {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}

/// The node every backend test syncs for; a test that needs other
/// addresses overrides them (`NodeContext { pod_cidr, ..node() }`).
pub fn node() -> NodeContext {
    NodeContext {
        node_name: "n0".into(),
        node_ip: Ipv4Addr::new(192, 168, 0, 2).into(),
        pod_cidr: "10.244.0.0/24".parse().unwrap(),
        cluster_cidr: "10.244.0.0/16".parse().unwrap(),
        service_cidr: "10.96.0.0/12".parse().unwrap(),
        run_prefix: "t".into(),
        bridge: "cni0".into(),
        uplink: "eth0".into(),
        node_port_ips: None,
        localhost_node_ports: false,
        zone: None,
    }
}

/// A ClusterIP service port `name` on `vip:port`: no NodePort, affinity,
/// external IPs or Local traffic policies; tests set those themselves.
pub fn service_port(name: ServicePortName, vip: Ipv4Addr, port: u16) -> ServicePort {
    ServicePort {
        protocol: name.protocol,
        name,
        cluster_ip: vip.into(),
        port,
        node_port: None,
        session_affinity_seconds: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
    }
}

/// A ready, serving endpoint on node `node`, which is the test's own node
/// when `local`.
pub fn endpoint(ip: Ipv4Addr, port: u16, node: Option<&str>, local: bool) -> Endpoint {
    Endpoint {
        ip: ip.into(),
        port,
        ready: true,
        serving: true,
        terminating: false,
        node_name: node.map(str::to_string),
        is_local: local,
        hints: Default::default(),
    }
}

/// A ClusterIP service port in kube-proxy's test conventions (addresses as
/// octets).
pub fn port(
    ns: &str,
    name: &str,
    port_name: &str,
    proto: Protocol,
    vip: [u8; 4],
    port: u16,
) -> ServicePort {
    service_port(
        ServicePortName::new(ns, name, port_name, proto),
        Ipv4Addr::from(vip),
        port,
    )
}

/// Plumbs the calling thread's namespace as a node: node IP 192.168.0.2
/// on veth `v0`, the service CIDR 172.30.0.0/16 routed over it (as the
/// lab's default route does, so the OUTPUT hook sees ClusterIP packets and
/// rejects come back as ICMP errors), and `endpoints` as /32s on `lo`.
pub fn plumb_node(endpoints: &[Ipv4Addr]) {
    for args in [
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"][..],
        &["addr", "add", "192.168.0.2/24", "dev", "v0"],
        &["link", "set", "v0", "up"],
        &["link", "set", "v1", "up"],
        &[
            "route",
            "add",
            "172.30.0.0/16",
            "via",
            "192.168.0.1",
            "dev",
            "v0",
            "onlink",
        ],
    ] {
        cmd::run("ip", args, None).expect("plumbing the test namespace");
    }
    for ep in endpoints {
        let addr = format!("{ep}/32");
        cmd::run("ip", &["addr", "add", &addr, "dev", "lo"], None).expect("endpoint address");
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace on a thread of its own that runs jobs, and serves
/// while it waits for them if it was asked to, until it is dropped (or
/// after five minutes).
pub struct Netns {
    jobs: mpsc::Sender<Job>,
}

impl Netns {
    /// A new namespace whose echo servers (if any) bind `serve_on`;
    /// returns it and the path of its namespace (for `ip link ... netns`).
    /// The first [`Netns::run`] job runs before the servers start: it sets
    /// the namespace up.
    pub fn spawn(serve_on: Option<Ipv4Addr>) -> (Netns, String) {
        let (path_tx, path_rx) = mpsc::channel::<String>();
        let (jobs, job_rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let tid = nix::unistd::gettid();
            // Not `self`: that would be the `ip` process opening the path.
            let _ = path_tx.send(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
            let Ok(setup) = job_rx.recv() else { return };
            setup();
            serve(serve_on, &job_rx);
        });
        (
            Netns { jobs },
            path_rx.recv().expect("namespace thread started"),
        )
    }

    /// Runs `f` in this namespace (on a thread of its own, so the servers
    /// keep serving) and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .expect("namespace thread alive");
        rx.recv_timeout(Duration::from_secs(60))
            .expect("job finished in time")
    }
}

/// A [`Netns`] whose TCP ([`TCP_PORT`]) and UDP ([`UDP_PORT`]) servers on
/// `ip` answer `<ip> <peer address>`.
pub struct Host {
    pub ip: Ipv4Addr,
    ns: Netns,
}

impl Host {
    /// See [`Netns::spawn`].
    pub fn spawn(ip: Ipv4Addr) -> (Host, String) {
        let (ns, path) = Netns::spawn(Some(ip));
        (Host { ip, ns }, path)
    }

    /// See [`Netns::run`].
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.ns.run(f)
    }
}

/// Runs jobs (on threads spawned here, which inherit the namespace) and
/// serves on `on`, if given, until the handle is dropped.
fn serve(on: Option<Ipv4Addr>, jobs: &mpsc::Receiver<Job>) {
    let sockets = on.map(|on| {
        let tcp = TcpListener::bind((on, TCP_PORT)).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind((on, UDP_PORT)).unwrap();
        udp.set_nonblocking(true).unwrap();
        (on, tcp, udp)
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let mut idle = true;
        match jobs.try_recv() {
            Ok(job) => {
                std::thread::spawn(job);
                idle = false;
            }
            Err(mpsc::TryRecvError::Disconnected) => return,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        if let Some((on, tcp, udp)) = &sockets {
            if let Ok((mut conn, peer)) = tcp.accept() {
                let _ = conn.write_all(format!("{on} {}", peer.ip()).as_bytes());
                idle = false;
            }
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{on} {}", peer.ip()).as_bytes(), peer);
                idle = false;
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// The IPv6 twin of an IPv4 address in the IPv6 goldens: `a.b.c.d` is
/// `fd00::a:b:c:d`, its octets written as the groups' digits, so
/// 172.30.0.41 reads `fd00::172:30:0:41`.
pub fn ipv6_twin(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("fd00::{a}:{b}:{c}:{d}")
                .parse()
                .expect("octets' digits are hex digits")
        }
        v6 => v6,
    }
}

/// [`ipv6_twin`] of a range: the same host bits, the prefix 96 longer.
pub fn ipv6_twin_net(net: ipnet::IpNet) -> ipnet::IpNet {
    match net {
        ipnet::IpNet::V4(_) => {
            ipnet::IpNet::new(ipv6_twin(net.addr()), net.prefix_len() + 96).expect("at most 128")
        }
        v6 => v6,
    }
}

/// An IPv4 state with every address and range replaced by its
/// [`ipv6_twin`]: what the IPv6 proxier is given for the same Services.
pub fn ipv6_state(state: &crate::model::ProxyState) -> crate::model::ProxyState {
    let mut out = state.clone();
    for svc in out.services.values_mut() {
        svc.cluster_ip = ipv6_twin(svc.cluster_ip);
        for ip in svc
            .external_ips
            .iter_mut()
            .chain(&mut svc.load_balancer_ips)
        {
            *ip = ipv6_twin(*ip);
        }
        for net in &mut svc.load_balancer_source_ranges {
            *net = ipv6_twin_net(*net);
        }
    }
    for eps in out.endpoints.values_mut() {
        for e in eps.iter_mut() {
            e.ip = ipv6_twin(e.ip);
        }
        // The tracker's order.
        eps.sort();
    }
    out
}

/// `node` as the IPv6 proxier sees it ([`ipv6_twin`] of every address).
pub fn ipv6_node(node: &NodeContext) -> NodeContext {
    NodeContext {
        node_ip: ipv6_twin(node.node_ip),
        pod_cidr: ipv6_twin_net(node.pod_cidr),
        cluster_cidr: ipv6_twin_net(node.cluster_cidr),
        service_cidr: ipv6_twin_net(node.service_cidr),
        node_port_ips: node
            .node_port_ips
            .as_ref()
            .map(|v| v.iter().map(|ip| ipv6_twin(*ip)).collect()),
        localhost_node_ports: false,
        ..node.clone()
    }
}
