//! Real TCP and UDP through the loaded programs, in a private namespace
//! (see `testnet`): pods, the node itself and an external client reach
//! Services, and the answers say who served and which source it saw.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use super::backend::EbpfBackend;
use super::testnet::{
    Answer, EXTERNAL, GATEWAY, Host, NODE_IP, REMOTE_POD, TCP_PORT, Topology, UDP_PORT, exchange,
    service,
};
use crate::model::{ChangeSet, Endpoint, Protocol, ProxyState, ServicePort};
use crate::protocol::SyncMode;
use crate::testkit;
use crate::{Backend, BackendOptions, SyncOutcome, SyncRequest};

fn insert(state: &mut ProxyState, svc: ServicePort, eps: Vec<Endpoint>) {
    state.endpoints.insert(svc.name.clone(), eps);
    state.services.insert(svc.name.clone(), svc);
}

fn sync(
    b: &mut EbpfBackend,
    mode: SyncMode,
    state: &ProxyState,
    changes: &ChangeSet,
) -> SyncOutcome {
    b.sync(&SyncRequest {
        mode,
        seq: 1,
        state,
        changes,
        node: &Topology::node(),
    })
    .unwrap()
}

fn full(b: &mut EbpfBackend, state: &ProxyState) -> SyncOutcome {
    let changes = ChangeSet {
        changed: state.services.keys().cloned().collect(),
        ..ChangeSet::default()
    };
    sync(b, SyncMode::Full, state, &changes)
}

/// A partial sync of the ports that differ between `old` and `new`.
fn partial(b: &mut EbpfBackend, old: &ProxyState, new: &ProxyState) -> SyncOutcome {
    let mut changes = ChangeSet::default();
    for name in old.services.keys().chain(new.services.keys()) {
        if old.services.get(name) != new.services.get(name)
            || old.endpoints_of(name) != new.endpoints_of(name)
        {
            changes.changed.insert(name.clone());
        }
    }
    sync(b, SyncMode::Partial, new, &changes)
}

/// Builds the topology, sets the backend up with `state`, runs `f`.
fn with_lab(pods: u8, state: &ProxyState, f: impl FnOnce(&Topology, &mut EbpfBackend) + Send) {
    if let Err(e) = super::capability::capability() {
        eprintln!("SKIP: {e}");
        return;
    }
    crate::testkit::in_new_netns(|| {
        let topo = Topology::build(pods);
        let mut b = EbpfBackend::new(&BackendOptions::default());
        b.setup(&Topology::node()).unwrap();
        full(&mut b, state);
        f(&topo, &mut b);
        b.cleanup().unwrap();
    });
}

fn vip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 96, 0, last)
}

/// `n` exchanges from `host` (the node itself when None).
fn many(
    host: Option<&Host>,
    n: usize,
    protocol: Protocol,
    to: SocketAddrV4,
    from: Option<SocketAddrV4>,
) -> Vec<Result<Answer, ErrorKind>> {
    let go = move || {
        (0..n)
            .map(|_| exchange(protocol, to, from))
            .collect::<Vec<_>>()
    };
    match host {
        Some(h) => h.run(go),
        None => go(),
    }
}

fn servers(r: &[Result<Answer, ErrorKind>]) -> BTreeSet<Ipv4Addr> {
    r.iter()
        .map(|a| a.as_ref().expect("answered").server)
        .collect()
}

fn seen(r: &[Result<Answer, ErrorKind>]) -> BTreeSet<Ipv4Addr> {
    r.iter()
        .map(|a| a.as_ref().expect("answered").saw)
        .collect()
}

#[test]
fn pods_and_the_node_reach_local_and_remote_endpoints() {
    crate::require_netns!();
    let mut state = ProxyState::default();
    let pod1 = Ipv4Addr::new(10, 244, 0, 12);
    let remote = |port| Endpoint {
        ip: REMOTE_POD.into(),
        is_local: false,
        hints: Default::default(),
        ..local_ep(pod1, port)
    };
    insert(
        &mut state,
        service("web", vip(10), 80, Protocol::Tcp),
        vec![local_ep(pod1, TCP_PORT), remote(TCP_PORT)],
    );
    insert(
        &mut state,
        service("dns", vip(53), 53, Protocol::Udp),
        vec![local_ep(pod1, UDP_PORT), remote(UDP_PORT)],
    );
    with_lab(2, &state, |t, _| {
        let client = &t.pods[0];
        for (protocol, to) in [
            (Protocol::Tcp, SocketAddrV4::new(vip(10), 80)),
            (Protocol::Udp, SocketAddrV4::new(vip(53), 53)),
        ] {
            let r = many(Some(client), 40, protocol, to, None);
            assert_eq!(
                servers(&r),
                BTreeSet::from([pod1, REMOTE_POD]),
                "{protocol}: {r:?}"
            );
            assert_eq!(
                seen(&r),
                BTreeSet::from([client.ip]),
                "{protocol}: source kept"
            );
            let r = many(None, 30, protocol, to, None);
            assert_eq!(
                servers(&r),
                BTreeSet::from([pod1, REMOTE_POD]),
                "node, {protocol}: {r:?}"
            );
            assert_eq!(seen(&r), BTreeSet::from([NODE_IP]), "node, {protocol}");
        }
        // A port the Service does not declare is left alone.
        let r = many(
            Some(client),
            1,
            Protocol::Tcp,
            SocketAddrV4::new(vip(10), TCP_PORT),
            None,
        );
        assert!(r[0].is_err(), "{r:?}");
    });
}

fn local_ep(ip: Ipv4Addr, port: u16) -> Endpoint {
    testkit::endpoint(ip, port, Some("n0"), true)
}

#[test]
fn hairpin_is_masqueraded_to_the_bridge_address() {
    crate::require_netns!();
    let own = Ipv4Addr::new(10, 244, 0, 11);
    let mut state = ProxyState::default();
    insert(
        &mut state,
        service("self", vip(12), 80, Protocol::Tcp),
        vec![local_ep(own, TCP_PORT)],
    );
    insert(
        &mut state,
        service("self-udp", vip(12), 53, Protocol::Udp),
        vec![local_ep(own, UDP_PORT)],
    );
    with_lab(1, &state, |t, _| {
        for (protocol, port) in [(Protocol::Tcp, 80), (Protocol::Udp, 53)] {
            let r = many(
                Some(&t.pods[0]),
                5,
                protocol,
                SocketAddrV4::new(vip(12), port),
                None,
            );
            assert_eq!(servers(&r), BTreeSet::from([own]), "{protocol}: {r:?}");
            assert_eq!(
                seen(&r),
                BTreeSet::from([GATEWAY]),
                "{protocol}: masqueraded"
            );
        }
    });
}

#[test]
fn services_without_endpoints_are_refused_at_once() {
    crate::require_netns!();
    let mut state = ProxyState::default();
    insert(
        &mut state,
        service("empty", vip(30), 80, Protocol::Tcp),
        vec![],
    );
    insert(
        &mut state,
        service("empty-udp", vip(30), 53, Protocol::Udp),
        vec![],
    );
    let mut np = service("empty-np", vip(31), 80, Protocol::Tcp);
    np.node_port = Some(30090);
    insert(&mut state, np, vec![]);
    with_lab(1, &state, |t, _| {
        let ext = Some(SocketAddrV4::new(EXTERNAL, 0));
        let cases: [(Option<&Host>, Protocol, SocketAddrV4, Option<SocketAddrV4>); 6] = [
            (
                Some(&t.pods[0]),
                Protocol::Tcp,
                SocketAddrV4::new(vip(30), 80),
                None,
            ),
            (
                Some(&t.pods[0]),
                Protocol::Udp,
                SocketAddrV4::new(vip(30), 53),
                None,
            ),
            (None, Protocol::Tcp, SocketAddrV4::new(vip(30), 80), None),
            (None, Protocol::Udp, SocketAddrV4::new(vip(30), 53), None),
            (
                Some(&t.remote),
                Protocol::Tcp,
                SocketAddrV4::new(NODE_IP, 30090),
                ext,
            ),
            (None, Protocol::Tcp, SocketAddrV4::new(NODE_IP, 30090), None),
        ];
        for (host, protocol, to, from) in cases {
            let start = Instant::now();
            let r = many(host, 3, protocol, to, from);
            assert!(
                r.iter().all(|a| *a == Err(ErrorKind::ConnectionRefused)),
                "{protocol} to {to}: {r:?}"
            );
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "{protocol} to {to}: slow"
            );
        }
    });
}

#[test]
fn nodeports_masquerade_for_cluster_and_keep_the_client_for_local() {
    crate::require_netns!();
    let pod1 = Ipv4Addr::new(10, 244, 0, 12);
    let remote = |port| Endpoint {
        ip: REMOTE_POD.into(),
        is_local: false,
        hints: Default::default(),
        ..local_ep(pod1, port)
    };
    let mut state = ProxyState::default();
    let mut np = service("np", vip(40), 80, Protocol::Tcp);
    np.node_port = Some(30080);
    insert(
        &mut state,
        np,
        vec![local_ep(pod1, TCP_PORT), remote(TCP_PORT)],
    );
    let mut np_udp = service("np-udp", vip(40), 53, Protocol::Udp);
    np_udp.node_port = Some(30053);
    insert(
        &mut state,
        np_udp,
        vec![local_ep(pod1, UDP_PORT), remote(UDP_PORT)],
    );
    let mut local = service("local", vip(41), 80, Protocol::Tcp);
    local.node_port = Some(30081);
    local.external_policy_local = true;
    insert(
        &mut state,
        local,
        vec![local_ep(pod1, TCP_PORT), remote(TCP_PORT)],
    );
    let mut elsewhere = service("elsewhere", vip(42), 80, Protocol::Tcp);
    elsewhere.node_port = Some(30082);
    elsewhere.external_policy_local = true;
    insert(&mut state, elsewhere, vec![remote(TCP_PORT)]);
    let external_ip = Ipv4Addr::new(203, 0, 113, 10);
    let mut ext_ip = service("ext-ip", vip(43), 80, Protocol::Tcp);
    ext_ip.external_ips = vec![external_ip.into()];
    insert(&mut state, ext_ip, vec![local_ep(pod1, TCP_PORT)]);
    with_lab(2, &state, |t, _| {
        t.remote.run(|| {
            let via = ["route", "add", "203.0.113.10/32", "via", "192.168.0.1"];
            crate::kernel::cmd::run("ip", &via, None).unwrap();
        });
        let ext = Some(SocketAddrV4::new(EXTERNAL, 0));
        for (protocol, port) in [(Protocol::Tcp, 30080), (Protocol::Udp, 30053)] {
            let r = many(
                Some(&t.remote),
                40,
                protocol,
                SocketAddrV4::new(NODE_IP, port),
                ext,
            );
            assert_eq!(
                servers(&r),
                BTreeSet::from([pod1, REMOTE_POD]),
                "{protocol}: {r:?}"
            );
            for a in r.iter().flatten() {
                let want = if a.server == pod1 { GATEWAY } else { NODE_IP };
                assert_eq!(
                    a.saw, want,
                    "{protocol}: SNAT to the outgoing side's address"
                );
            }
        }
        let r = many(
            Some(&t.remote),
            10,
            Protocol::Tcp,
            SocketAddrV4::new(NODE_IP, 30081),
            ext,
        );
        assert_eq!(
            servers(&r),
            BTreeSet::from([pod1]),
            "Local: local endpoints only"
        );
        assert_eq!(seen(&r), BTreeSet::from([EXTERNAL]), "Local: source kept");
        let r = many(
            Some(&t.remote),
            1,
            Protocol::Tcp,
            SocketAddrV4::new(NODE_IP, 30082),
            ext,
        );
        assert_eq!(
            r,
            vec![Err(ErrorKind::TimedOut)],
            "Local without a local endpoint drops"
        );
        let r = many(
            Some(&t.remote),
            5,
            Protocol::Tcp,
            SocketAddrV4::new(external_ip, 80),
            ext,
        );
        assert_eq!(servers(&r), BTreeSet::from([pod1]), "external IP: {r:?}");
        assert_eq!(
            seen(&r),
            BTreeSet::from([GATEWAY]),
            "external IP: masqueraded"
        );
        // The node to its own NodePort (through lo).
        let r = many(
            None,
            20,
            Protocol::Tcp,
            SocketAddrV4::new(NODE_IP, 30080),
            None,
        );
        assert_eq!(
            servers(&r),
            BTreeSet::from([pod1, REMOTE_POD]),
            "node: {r:?}"
        );
    });
}

#[test]
fn stale_udp_flows_move_to_a_remaining_endpoint() {
    crate::require_netns!();
    let pods = [Ipv4Addr::new(10, 244, 0, 12), Ipv4Addr::new(10, 244, 0, 13)];
    let mut state = ProxyState::default();
    let dns = service("dns", vip(53), 53, Protocol::Udp);
    insert(
        &mut state,
        dns.clone(),
        pods.iter().map(|p| local_ep(*p, UDP_PORT)).collect(),
    );
    with_lab(3, &state, |t, b| {
        let to = SocketAddrV4::new(vip(53), 53);
        let from = Some(SocketAddrV4::new(t.pods[0].ip, 41234));
        let first = many(Some(&t.pods[0]), 1, Protocol::Udp, to, from)[0]
            .unwrap()
            .server;
        let again = many(Some(&t.pods[0]), 3, Protocol::Udp, to, from);
        assert_eq!(
            servers(&again),
            BTreeSet::from([first]),
            "one flow, one endpoint"
        );
        let mut after = state.clone();
        after.endpoints.insert(
            dns.name.clone(),
            pods.iter()
                .filter(|p| **p != first)
                .map(|p| local_ep(*p, UDP_PORT))
                .collect(),
        );
        partial(b, &state, &after);
        let r = many(Some(&t.pods[0]), 3, Protocol::Udp, to, from);
        let rest: BTreeSet<Ipv4Addr> = pods.iter().copied().filter(|p| *p != first).collect();
        assert_eq!(
            servers(&r),
            rest,
            "the removed endpoint's flow was cleared: {r:?}"
        );
    });
}

#[test]
fn client_ip_affinity_sticks_until_turned_off() {
    crate::require_netns!();
    let pods = [Ipv4Addr::new(10, 244, 0, 12), Ipv4Addr::new(10, 244, 0, 13)];
    let mut state = ProxyState::default();
    let mut sticky = service("sticky", vip(11), 80, Protocol::Tcp);
    sticky.session_affinity_seconds = Some(600);
    insert(
        &mut state,
        sticky.clone(),
        pods.iter().map(|p| local_ep(*p, TCP_PORT)).collect(),
    );
    with_lab(3, &state, |t, b| {
        let to = SocketAddrV4::new(vip(11), 80);
        let r = many(Some(&t.pods[0]), 20, Protocol::Tcp, to, None);
        assert_eq!(servers(&r).len(), 1, "{r:?}");
        let mut off = state.clone();
        off.services
            .get_mut(&sticky.name)
            .unwrap()
            .session_affinity_seconds = None;
        partial(b, &state, &off);
        let r = many(Some(&t.pods[0]), 30, Protocol::Tcp, to, None);
        assert_eq!(servers(&r), BTreeSet::from(pods), "{r:?}");
    });
}

#[test]
fn internal_traffic_policy_local_and_partial_endpoint_changes() {
    crate::require_netns!();
    let pod1 = Ipv4Addr::new(10, 244, 0, 12);
    let remote = Endpoint {
        ip: REMOTE_POD.into(),
        is_local: false,
        hints: Default::default(),
        ..local_ep(pod1, TCP_PORT)
    };
    let mut state = ProxyState::default();
    let mut itp = service("itp", vip(20), 80, Protocol::Tcp);
    itp.internal_policy_local = true;
    insert(
        &mut state,
        itp,
        vec![local_ep(pod1, TCP_PORT), remote.clone()],
    );
    let mut itp_remote = service("itp-remote", vip(21), 80, Protocol::Tcp);
    itp_remote.internal_policy_local = true;
    insert(&mut state, itp_remote, vec![remote.clone()]);
    let web = service("web", vip(10), 80, Protocol::Tcp);
    insert(&mut state, web.clone(), vec![local_ep(pod1, TCP_PORT)]);
    with_lab(2, &state, |t, b| {
        let client = &t.pods[0];
        let r = many(
            Some(client),
            20,
            Protocol::Tcp,
            SocketAddrV4::new(vip(20), 80),
            None,
        );
        assert_eq!(
            servers(&r),
            BTreeSet::from([pod1]),
            "local endpoints only: {r:?}"
        );
        let r = many(
            Some(client),
            1,
            Protocol::Tcp,
            SocketAddrV4::new(vip(21), 80),
            None,
        );
        assert_eq!(
            r,
            vec![Err(ErrorKind::TimedOut)],
            "no local endpoint: dropped"
        );

        let mut moved = state.clone();
        moved
            .endpoints
            .insert(web.name.clone(), vec![remote.clone()]);
        let out = partial(b, &state, &moved);
        // One slot written, the entry flipped, the old slot deleted.
        assert_eq!(out.written, 3, "{out:?}");
        let r = many(
            Some(client),
            10,
            Protocol::Tcp,
            SocketAddrV4::new(vip(10), 80),
            None,
        );
        assert_eq!(servers(&r), BTreeSet::from([REMOTE_POD]), "{r:?}");
        let stats = b.stats().unwrap();
        let web_stats = &stats.detail["services"]["ns/web"];
        assert!(
            web_stats["connections"].as_u64().unwrap() >= 10,
            "{stats:?}"
        );
        assert!(web_stats["packets"].as_u64().unwrap() >= 30, "{stats:?}");
    });
}

/// TcpExtTCPSynRetrans of the calling thread's network namespace.
fn syn_retransmits() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "TCPSynRetrans")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap()
}

/// One client port through two Service addresses to the same endpoint, one
/// right after the other: DNAT alone would give the endpoint the tuple it
/// still holds in TIME_WAIT from the first connection, and the second SYN,
/// whose timestamp comes from another clock offset (another destination),
/// is dropped there about half the time (PAWS); the client retries a second
/// later. The programs move the port instead, as netfilter's NAT does, so
/// no SYN is ever retransmitted.
#[test]
fn a_client_port_reused_through_another_service_address_connects_at_once() {
    crate::require_netns!();
    let mut state = ProxyState::default();
    let pod1 = Ipv4Addr::new(10, 244, 0, 12);
    let remote = Endpoint {
        ip: REMOTE_POD.into(),
        is_local: false,
        ..local_ep(pod1, TCP_PORT)
    };
    for (name, last, ep) in [
        ("a", 20, local_ep(pod1, TCP_PORT)),
        ("b", 21, local_ep(pod1, TCP_PORT)),
        ("remote-a", 22, remote.clone()),
        ("remote-b", 23, remote.clone()),
    ] {
        insert(
            &mut state,
            service(name, vip(last), 80, Protocol::Tcp),
            vec![ep],
        );
    }
    with_lab(2, &state, |t, _| {
        let pairs = |base: u16| {
            move || {
                let before = syn_retransmits();
                let mut answers = Vec::new();
                for i in 0..24u16 {
                    let from = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, base + i);
                    for (first, second) in [(20, 21), (22, 23)] {
                        for last in [first, second] {
                            let to = SocketAddrV4::new(vip(last), 80);
                            answers.push(exchange(Protocol::Tcp, to, Some(from)));
                        }
                    }
                }
                (syn_retransmits() - before, answers)
            }
        };
        for (who, (retransmits, answers)) in [
            ("pod", t.pods[0].run(pairs(40000))),
            ("node", pairs(41000)()),
        ] {
            assert!(answers.iter().all(|a| a.is_ok()), "{who}: {answers:?}");
            assert_eq!(retransmits, 0, "{who}: SYNs retransmitted");
        }
    });
}
