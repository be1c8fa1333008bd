//! Kernel tests: each runs in a fresh network namespace with a node IP on a
//! veth, endpoint addresses on `lo` with small TCP and UDP servers that name
//! themselves, and the client in the same namespace (the node's own OUTPUT
//! path, DNAT to the proxy port).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::backend::UserspaceBackend;
use super::capability;
use crate::model::{
    ChangeSet, Endpoint, NodeContext, Protocol, ProxyState, ServicePort, ServicePortName,
};
use crate::protocol::SyncMode;
use crate::testkit::in_new_netns;
use crate::testkit::{self, Netns};
use crate::{Backend, BackendOptions, Fault, SyncRequest, kernel::cmd, require_netns};

fn node() -> NodeContext {
    NodeContext {
        service_cidr: "172.30.0.0/16".parse().unwrap(),
        uplink: "v0".into(),
        zone: None,
        ..testkit::node()
    }
}

fn service(name: &str, vip: [u8; 4], port: u16, protocol: Protocol) -> ServicePort {
    testkit::service_port(
        ServicePortName::new("ns", name, "", protocol),
        Ipv4Addr::from(vip),
        port,
    )
}

/// A ready endpoint 10.0.0.<last>:<port> on this node.
fn ep(last: u8, port: u16) -> Endpoint {
    testkit::endpoint(Ipv4Addr::new(10, 0, 0, last), port, Some("n0"), true)
}

fn insert(state: &mut ProxyState, svc: ServicePort, mut eps: Vec<Endpoint>) {
    eps.sort();
    state.endpoints.insert(svc.name.clone(), eps);
    state.services.insert(svc.name.clone(), svc);
}

/// What a change tracker would report between `old` and `new`.
fn changes(old: &ProxyState, new: &ProxyState) -> ChangeSet {
    let mut cs = ChangeSet::default();
    for name in old.services.keys().chain(new.services.keys()) {
        if old.services.get(name) != new.services.get(name)
            || old.endpoints_of(name) != new.endpoints_of(name)
        {
            cs.changed.insert(name.clone());
        }
    }
    cs
}

fn sync(b: &mut UserspaceBackend, seq: u64, mode: SyncMode, old: &ProxyState, new: &ProxyState) {
    let cs = changes(old, new);
    b.sync(&SyncRequest {
        mode,
        seq,
        state: new,
        changes: &cs,
        node: &node(),
    })
    .unwrap_or_else(|e| panic!("sync {seq} ({mode}): {e}"));
}

/// The node namespace with the endpoint addresses 10.0.0.<last> on `lo`.
fn plumb(endpoints: &[u8]) {
    let eps: Vec<Ipv4Addr> = endpoints
        .iter()
        .map(|l| Ipv4Addr::new(10, 0, 0, *l))
        .collect();
    testkit::plumb_node(&eps);
}

/// TCP and UDP servers on 10.0.0.<last>:<port> answering "<last> <peer ip>",
/// for at most 30 s.
fn serve(last: u8, port: u16) {
    let addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), port));
    let tcp = TcpListener::bind(addr).expect("TCP endpoint");
    tcp.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind(addr).expect("UDP endpoint");
    udp.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            if let Ok((mut c, peer)) = tcp.accept() {
                let _ = c.write_all(format!("{last} {}", peer.ip()).as_bytes());
            }
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{last} {}", peer.ip()).as_bytes(), peer);
            }
        }
    });
}

/// The answer to one TCP connection: (endpoint's last octet, source the
/// endpoint saw).
fn ask_tcp(addr: &str) -> std::io::Result<(u8, String)> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(700))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    parse(&buf)
}

fn parse(answer: &str) -> std::io::Result<(u8, String)> {
    let (who, peer) = answer
        .split_once(' ')
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, format!("answer {answer:?}")))?;
    Ok((who.parse().unwrap(), peer.to_string()))
}

/// One datagram from a connected socket: only an answer from `addr` itself
/// gets through, so this also proves the reply was un-NATed.
fn ask_udp(sock: &UdpSocket) -> std::io::Result<(u8, String)> {
    sock.send(b"hi")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    parse(std::str::from_utf8(&buf[..n]).unwrap())
}

fn udp_client(addr: &str) -> UdpSocket {
    udp_client_from(addr, 0)
}

fn udp_client_from(addr: &str, port: u16) -> UdpSocket {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
    s.connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s
}

fn tally(answers: impl IntoIterator<Item = u8>) -> BTreeMap<u8, usize> {
    let mut m = BTreeMap::new();
    for a in answers {
        *m.entry(a).or_default() += 1;
    }
    m
}

fn our_rules() -> Vec<String> {
    let mut out = Vec::new();
    for table in ["nat", "filter"] {
        let saved = cmd::run("iptables-nft-save", &["-t", table], None).unwrap();
        out.extend(
            saved
                .stdout
                .lines()
                .filter(|l| l.contains("KUBE-PORTALS") || l.contains("KUBE-NODEPORT"))
                .map(str::to_string),
        );
    }
    out.sort();
    out
}

fn backend() -> UserspaceBackend {
    let mut b = UserspaceBackend::new(&BackendOptions::default());
    b.setup(&node()).expect("setup");
    b
}

#[test]
fn capability_probe_passes_here() {
    require_netns!();
    capability::capability().expect("userspace backend available");
}

#[test]
fn node_traffic_is_proxied_round_robin_and_refused_without_endpoints() {
    require_netns!();
    in_new_netns(|| {
        plumb(&[5, 6]);
        serve(5, 8080);
        serve(6, 8080);
        let mut state = ProxyState::default();
        let mut web = service("web", [172, 30, 0, 41], 80, Protocol::Tcp);
        web.node_port = Some(30080);
        insert(&mut state, web, vec![ep(5, 8080), ep(6, 8080)]);
        insert(
            &mut state,
            service("empty", [172, 30, 0, 42], 80, Protocol::Tcp),
            vec![],
        );
        let mut b = backend();
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);

        let answers: Vec<(u8, String)> = (0..6)
            .map(|_| ask_tcp("172.30.0.41:80").expect("ClusterIP"))
            .collect();
        // Strict rotation, and the endpoint sees the node, not the client.
        let who: Vec<u8> = answers.iter().map(|a| a.0).collect();
        assert_eq!(who, [5, 6, 5, 6, 5, 6]);
        assert!(
            answers.iter().all(|a| a.1.starts_with("10.0.0.")),
            "{answers:?}"
        );
        let np = tally((0..4).map(|_| ask_tcp("192.168.0.2:30080").expect("NodePort").0));
        assert_eq!(np, BTreeMap::from([(5, 2), (6, 2)]));

        let t = Instant::now();
        let err = ask_tcp("172.30.0.42:80").expect_err("no endpoints");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        assert!(t.elapsed() < Duration::from_millis(500));
        // A port the Service does not declare is left alone (and here,
        // goes nowhere).
        assert!(ask_tcp("172.30.0.41:81").is_err());

        let stats = b.stats().unwrap();
        let web = &stats.detail["services"]["ns/web/TCP"];
        assert_eq!(web["tcpConnections"], 10);
        assert!(web["bytesFromEndpoints"].as_u64().unwrap() > 0);
        assert_eq!(stats.detail["listeners"], 3);

        b.cleanup().expect("cleanup");
        assert!(our_rules().is_empty(), "{:?}", our_rules());
        assert!(ask_tcp("172.30.0.41:80").is_err());
    });
}

#[test]
fn failed_connects_move_on_to_the_next_endpoint() {
    require_netns!();
    in_new_netns(|| {
        // 10.0.0.7 exists but nothing listens: connects are refused.
        plumb(&[5, 7]);
        serve(5, 8080);
        let mut state = ProxyState::default();
        insert(
            &mut state,
            service("web", [172, 30, 0, 41], 80, Protocol::Tcp),
            vec![ep(5, 8080), ep(7, 8080)],
        );
        let mut b = backend();
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);
        for _ in 0..4 {
            assert_eq!(ask_tcp("172.30.0.41:80").expect("retried").0, 5);
        }
        let stats = b.stats().unwrap();
        assert_eq!(stats.detail["services"]["ns/web/TCP"]["connectFailures"], 3);
        b.cleanup().expect("cleanup");
    });
}

#[test]
fn client_ip_affinity_holds_until_turned_off() {
    require_netns!();
    in_new_netns(|| {
        plumb(&[5, 6]);
        serve(5, 8080);
        serve(6, 8080);
        let mut state = ProxyState::default();
        let mut sticky = service("sticky", [172, 30, 0, 43], 80, Protocol::Tcp);
        sticky.session_affinity_seconds = Some(600);
        insert(&mut state, sticky.clone(), vec![ep(5, 8080), ep(6, 8080)]);
        let mut b = backend();
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);
        let pinned = tally((0..6).map(|_| ask_tcp("172.30.0.43:80").unwrap().0));
        assert_eq!(pinned.len(), 1, "{pinned:?}");

        let mut off = state.clone();
        sticky.session_affinity_seconds = None;
        insert(&mut off, sticky, vec![ep(5, 8080), ep(6, 8080)]);
        sync(&mut b, 2, SyncMode::Partial, &state, &off);
        let spread = tally((0..6).map(|_| ask_tcp("172.30.0.43:80").unwrap().0));
        assert_eq!(spread, BTreeMap::from([(5, 3), (6, 3)]));
        b.cleanup().expect("cleanup");
    });
}

#[test]
fn udp_sessions_follow_endpoint_removal_and_idle_out() {
    require_netns!();
    in_new_netns(|| {
        plumb(&[5, 6]);
        serve(5, 5353);
        serve(6, 5353);
        let mut state = ProxyState::default();
        let dns = service("dns", [172, 30, 0, 53], 53, Protocol::Udp);
        insert(&mut state, dns.clone(), vec![ep(5, 5353), ep(6, 5353)]);
        let mut b = UserspaceBackend::new(&BackendOptions::default())
            .with_udp_idle(Duration::from_millis(400));
        b.setup(&node()).expect("setup");
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);

        // One client port is one session: the same endpoint every time.
        let client = udp_client("172.30.0.53:53");
        let first = ask_udp(&client).expect("UDP through the proxy").0;
        for _ in 0..3 {
            assert_eq!(ask_udp(&client).unwrap().0, first);
        }
        // Another client port gets the next endpoint.
        let other = udp_client("172.30.0.53:53");
        assert_ne!(ask_udp(&other).unwrap().0, first);

        // The first client's endpoint leaves: its next datagram, from the
        // same source port, reaches the one that is left.
        let mut next = state.clone();
        let left = if first == 5 { 6 } else { 5 };
        insert(&mut next, dns, vec![ep(left, 5353)]);
        sync(&mut b, 2, SyncMode::Partial, &state, &next);
        assert_eq!(ask_udp(&client).unwrap().0, left);
        let stats = b.stats().unwrap();
        assert_eq!(
            stats.detail["services"]["ns/dns/UDP"]["udpSessionsDropped"],
            1
        );

        // Quiet for longer than the idle timeout: every session is gone.
        std::thread::sleep(Duration::from_millis(900));
        let stats = b.stats().unwrap();
        assert_eq!(stats.detail["udpSessions"], 0, "{}", stats.detail);
        assert_eq!(ask_udp(&client).unwrap().0, left);
        b.cleanup().expect("cleanup");
    });
}

#[test]
fn udp_without_endpoints_is_refused_then_works_once_ready() {
    require_netns!();
    in_new_netns(|| {
        plumb(&[5]);
        serve(5, 5353);
        let mut empty = ProxyState::default();
        let dns = service("dns", [172, 30, 0, 53], 53, Protocol::Udp);
        insert(&mut empty, dns.clone(), vec![]);
        let mut b = backend();
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &empty);
        let client = udp_client_from("172.30.0.53:53", 41234);
        let err = ask_udp(&client).expect_err("refused");
        assert!(
            matches!(
                err.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::PermissionDenied
            ),
            "{err}"
        );
        let mut ready = empty.clone();
        insert(&mut ready, dns, vec![ep(5, 5353)]);
        sync(&mut b, 2, SyncMode::Partial, &empty, &ready);
        // Same source port, new socket (the old one may hold the ICMP
        // error after send() already failed with EPERM).
        drop(client);
        let client = udp_client_from("172.30.0.53:53", 41234);
        assert_eq!(ask_udp(&client).expect("answered once ready").0, 5);
        b.cleanup().expect("cleanup");
    });
}

#[test]
fn partial_syncs_touch_only_changed_ports_and_match_a_full_sync() {
    require_netns!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dump");
    in_new_netns(|| {
        plumb(&[5, 6]);
        serve(5, 8080);
        let mut state = ProxyState::default();
        insert(
            &mut state,
            service("a", [172, 30, 0, 1], 80, Protocol::Tcp),
            vec![ep(5, 8080)],
        );
        insert(
            &mut state,
            service("b", [172, 30, 0, 2], 80, Protocol::Tcp),
            vec![ep(5, 8080)],
        );
        let mut b = UserspaceBackend::new(&BackendOptions {
            dump_dir: Some(dir.clone()),
            ..BackendOptions::default()
        });
        b.setup(&node()).expect("setup");
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);
        let ports_of = |b: &mut UserspaceBackend, svc: &str| {
            b.stats().unwrap().detail["services"][svc]["proxyPorts"].clone()
        };
        let a_port = ports_of(&mut b, "ns/a/TCP");

        // b loses its endpoints and gets a NodePort; c is new.
        let mut next = state.clone();
        let mut svc_b = service("b", [172, 30, 0, 2], 80, Protocol::Tcp);
        svc_b.node_port = Some(30002);
        insert(&mut next, svc_b, vec![]);
        insert(
            &mut next,
            service("c", [172, 30, 0, 3], 80, Protocol::Tcp),
            vec![ep(5, 8080)],
        );
        sync(&mut b, 2, SyncMode::Partial, &state, &next);
        let partial = std::fs::read_to_string(dir.join("2-partial.iptables")).unwrap();
        assert!(!partial.contains("ns/a"), "{partial}");
        assert!(
            partial.contains("-D KUBE-PORTALS-CONTAINER-02 -d 172.30.0.2/32"),
            "{partial}"
        );
        assert!(
            partial.contains("KUBE-NODEPORT-REJECT -d 192.168.0.2/32"),
            "{partial}"
        );
        assert_eq!(ports_of(&mut b, "ns/a/TCP"), a_port);
        assert_eq!(ask_tcp("172.30.0.3:80").expect("new Service").0, 5);
        assert!(ask_tcp("192.168.0.2:30002").is_err());

        // The kernel now holds what a full sync of the same state writes.
        let after_partial = our_rules();
        sync(&mut b, 3, SyncMode::Full, &next, &next);
        assert_eq!(our_rules(), after_partial);
        assert_eq!(ports_of(&mut b, "ns/a/TCP"), a_port);

        // Deleting a Service closes its listeners and removes its rules.
        let mut fewer = next.clone();
        let c = ServicePortName::new("ns", "c", "", Protocol::Tcp);
        fewer.services.remove(&c);
        fewer.endpoints.remove(&c);
        sync(&mut b, 4, SyncMode::Partial, &next, &fewer);
        assert!(!our_rules().iter().any(|r| r.contains("172.30.0.3/32")));
        assert_eq!(b.stats().unwrap().detail["listeners"], 3);
        b.cleanup().expect("cleanup");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_reject_fault_leaves_clients_hanging() {
    require_netns!();
    in_new_netns(|| {
        plumb(&[]);
        let mut state = ProxyState::default();
        insert(
            &mut state,
            service("empty", [172, 30, 0, 42], 80, Protocol::Tcp),
            vec![],
        );
        let mut b = UserspaceBackend::new(&BackendOptions {
            faults: vec![Fault::NoReject],
            ..BackendOptions::default()
        });
        b.setup(&node()).expect("setup");
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);
        let err = ask_tcp("172.30.0.42:80").expect_err("no endpoints");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        b.cleanup().expect("cleanup");
    });
}

/// A pod: a namespace of its own joined to the test's (node) namespace by
/// a veth, `eth0` 10.244.0.5/24 with the node side `vpod` 10.244.0.1/24 as
/// its gateway. Its packets reach the node through PREROUTING, like a real
/// pod's through `cni0`.
struct Pod {
    ns: Netns,
}

impl Pod {
    /// Must be called from the node namespace.
    fn start() -> Pod {
        let (ns, path) = Netns::spawn(None);
        for args in [
            &[
                "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns", &path,
            ][..],
            &["addr", "add", "10.244.0.1/24", "dev", "vpod"],
            &["link", "set", "vpod", "up"],
        ] {
            cmd::run("ip", args, None).expect("pod link");
        }
        // The node routes: pod packets to a VIP without endpoints must reach
        // FORWARD, where they are rejected.
        cmd::run(
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
            None,
        )
        .expect("forwarding on in the test namespace");
        let pod = Pod { ns };
        pod.run(|| {
            for args in [
                &["link", "set", "lo", "up"][..],
                &["addr", "add", "10.244.0.5/24", "dev", "eth0"],
                &["link", "set", "eth0", "up"],
                &["route", "add", "default", "via", "10.244.0.1"],
            ] {
                cmd::run("ip", args, None).expect("pod address");
            }
        });
        pod
    }

    /// Runs `f` inside the pod's namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.ns.run(f)
    }
}

#[test]
fn pod_traffic_is_redirected_to_the_proxy() {
    require_netns!();
    in_new_netns(|| {
        plumb(&[5, 6]);
        serve(5, 8080);
        serve(6, 8080);
        serve(5, 5353);
        serve(6, 5353);
        let pod = Pod::start();
        let mut state = ProxyState::default();
        let mut web = service("web", [172, 30, 0, 41], 80, Protocol::Tcp);
        web.node_port = Some(30080);
        insert(&mut state, web, vec![ep(5, 8080), ep(6, 8080)]);
        insert(
            &mut state,
            service("dns", [172, 30, 0, 53], 53, Protocol::Udp),
            vec![ep(5, 5353), ep(6, 5353)],
        );
        insert(
            &mut state,
            service("empty", [172, 30, 0, 42], 80, Protocol::Tcp),
            vec![],
        );
        let mut b = backend();
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);

        let (vip, node_port, empty, dns) = pod.run(|| {
            let vip = tally((0..4).map(|_| ask_tcp("172.30.0.41:80").expect("ClusterIP").0));
            let np = tally((0..4).map(|_| ask_tcp("192.168.0.2:30080").expect("NodePort").0));
            let empty = ask_tcp("172.30.0.42:80").map_err(|e| e.kind());
            // Replies must come back from the VIP (REDIRECT un-done), or the
            // connected socket drops them.
            let dns = (0..4)
                .map(|_| ask_udp(&udp_client("172.30.0.53:53")).map(|a| a.0))
                .collect::<std::io::Result<Vec<u8>>>();
            (vip, np, empty, dns)
        });
        let even = BTreeMap::from([(5, 2), (6, 2)]);
        assert_eq!(vip, even);
        assert_eq!(node_port, even);
        assert_eq!(empty, Err(ErrorKind::ConnectionRefused));
        assert_eq!(tally(dns.expect("UDP from the pod")), even);
        b.cleanup().expect("cleanup");
    });
}
