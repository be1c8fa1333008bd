//! Real connections through the programmed kernel: pods are namespaces on
//! veth pairs from the node namespace, with TCP and UDP servers that name
//! themselves and the source address they saw. Runs where the kernel has
//! IPVS (under `svclab vm`); prints `SKIP: <reason>` elsewhere.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::kernel_tests::{changes_between, full, insert, service, setup_backend, sync, with_ipvs};
use crate::model::{Endpoint, Protocol, ProxyState};
use crate::protocol::SyncMode;
use crate::testkit;
use crate::testkit::Host;
use crate::{Backend, BackendOptions, kernel::cmd};

/// A pod: a [`Host`] with `eth0` at 10.244.<n>.5/24, joined to the node
/// namespace's `veth-pod<n>` at 10.244.<n>.1/24. Dropping it stops its
/// servers.
struct Pod {
    ip: Ipv4Addr,
    host: Host,
}

impl Pod {
    /// Must be called from the node namespace.
    fn start(n: u8) -> Pod {
        let ip = Ipv4Addr::new(10, 244, n, 5);
        let (host, path) = Host::spawn(ip);
        let veth = format!("veth-pod{n}");
        let node_side = format!("10.244.{n}.1/24");
        for args in [
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &path,
            ][..],
            &["addr", "add", &node_side, "dev", &veth],
            &["link", "set", &veth, "up"],
        ] {
            cmd::run("ip", args, None).unwrap();
        }
        let pod_side = format!("{ip}/24");
        let gateway = format!("10.244.{n}.1");
        // The first job runs on the pod's own thread, before it serves.
        host.run(move || {
            for args in [
                &["link", "set", "lo", "up"][..],
                &["addr", "add", &pod_side, "dev", "eth0"],
                &["link", "set", "eth0", "up"],
                &["route", "add", "default", "via", &gateway],
            ] {
                cmd::run("ip", args, None).unwrap();
            }
        });
        Pod { ip, host }
    }

    /// Runs `f` inside the pod's namespace and returns its result.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.host.run(f)
    }

    fn endpoint(&self, port: u16) -> Endpoint {
        testkit::endpoint(self.ip, port, Some("n0"), true)
    }
}

/// Connects and reads the answer; the error kind and how long it took.
fn probe(addr: &str) -> (Result<String, ErrorKind>, Duration) {
    let start = Instant::now();
    let addr: SocketAddr = addr.parse().unwrap();
    let r = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .map_err(|e| e.kind());
    (r, start.elapsed())
}

/// How many of `count` connections to `addr` got each answer.
fn spread(addr: &str, count: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let answer = match probe(addr).0 {
            Ok(a) => a,
            Err(kind) => format!("error {kind:?}"),
        };
        *out.entry(answer).or_default() += 1;
    }
    out
}

/// `web` round-robins over `eps`, `sticky` has ClientIP affinity over the
/// same, `self` has only `own`, and two Services have no endpoints.
fn web(eps: Vec<Endpoint>, own: Endpoint) -> ProxyState {
    let mut state = ProxyState::default();
    insert(
        &mut state,
        service("web", [10, 96, 0, 10], 80, Protocol::Tcp),
        eps.clone(),
    );
    let mut sticky = service("sticky", [10, 96, 0, 11], 80, Protocol::Tcp);
    sticky.session_affinity_seconds = Some(60);
    insert(&mut state, sticky, eps);
    insert(
        &mut state,
        service("self", [10, 96, 0, 12], 80, Protocol::Tcp),
        vec![own],
    );
    insert(
        &mut state,
        service("empty", [10, 96, 0, 30], 80, Protocol::Tcp),
        vec![],
    );
    let mut sticky_empty = service("sticky-empty", [10, 96, 0, 31], 80, Protocol::Tcp);
    sticky_empty.session_affinity_seconds = Some(60);
    insert(&mut state, sticky_empty, vec![]);
    state
}

fn refusals() -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for addr in ["10.96.0.30:80", "10.96.0.31:80", "10.96.0.10:81"] {
        let (r, took) = probe(addr);
        let when = if took < Duration::from_secs(1) {
            "at once"
        } else {
            "late"
        };
        *out.entry(format!("{r:?} {when}")).or_default() += 1;
    }
    out
}

#[test]
fn kernel_tcp_traffic_follows_the_virtual_servers() {
    let Some(seen) = with_ipvs(|| {
        let pods = [Pod::start(1), Pod::start(2), Pod::start(3)];
        let [one, two, client] = &pods;
        let mut b = setup_backend(&BackendOptions::default());
        let both = web(
            vec![one.endpoint(8080), two.endpoint(8080)],
            one.endpoint(8080),
        );
        sync(&mut b, 1, SyncMode::Full, &both, &full(&both));
        let mut seen = vec![
            ("node: round robin", spread("10.96.0.10:80", 6)),
            ("node: affinity", spread("10.96.0.11:80", 6)),
            ("node: refused", refusals()),
            (
                "pod: round robin",
                client.run(|| spread("10.96.0.10:80", 4)),
            ),
            ("pod: refused", client.run(refusals)),
            ("pod: hairpin", one.run(|| spread("10.96.0.12:80", 2))),
        ];
        let mut draining_eps = vec![one.endpoint(8080), two.endpoint(8080)];
        draining_eps[1].ready = false;
        draining_eps[1].terminating = true;
        let draining = web(draining_eps, one.endpoint(8080));
        sync(
            &mut b,
            2,
            SyncMode::Partial,
            &draining,
            &changes_between(&both, &draining),
        );
        seen.push(("node: one draining", spread("10.96.0.10:80", 4)));
        let single = web(vec![one.endpoint(8080)], one.endpoint(8080));
        sync(
            &mut b,
            3,
            SyncMode::Partial,
            &single,
            &changes_between(&draining, &single),
        );
        seen.push(("node: one removed", spread("10.96.0.10:80", 4)));
        b.cleanup().expect("cleanup");
        drop(pods);
        seen
    }) else {
        return;
    };
    for (what, answers) in &seen {
        println!("{what}: {answers:?}");
    }
    let get = |what: &str| seen.iter().find(|(w, _)| *w == what).unwrap().1.clone();
    let count = |pairs: &[(&str, usize)]| -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    // From the node the source is a VIP, outside the cluster CIDR: it is
    // masqueraded to the node's address toward the pod.
    assert_eq!(
        get("node: round robin"),
        count(&[("10.244.1.5 10.244.1.1", 3), ("10.244.2.5 10.244.2.1", 3)])
    );
    let sticky = get("node: affinity");
    assert_eq!(
        (sticky.len(), sticky.values().sum::<usize>()),
        (1, 6),
        "{sticky:?}"
    );
    let refused = count(&[("Err(ConnectionRefused) at once", 3)]);
    assert_eq!(get("node: refused"), refused);
    // A pod keeps its own address (no masquerade inside the cluster CIDR).
    assert_eq!(
        get("pod: round robin"),
        count(&[("10.244.1.5 10.244.3.5", 2), ("10.244.2.5 10.244.3.5", 2)])
    );
    assert_eq!(get("pod: refused"), refused);
    // An endpoint reaching itself through its Service is masqueraded.
    assert_eq!(get("pod: hairpin"), count(&[("10.244.1.5 10.244.1.1", 2)]));
    assert_eq!(
        get("node: one draining"),
        count(&[("10.244.1.5 10.244.1.1", 4)])
    );
    assert_eq!(
        get("node: one removed"),
        count(&[("10.244.1.5 10.244.1.1", 4)])
    );
}

/// Sends one datagram from `socket` (connected to a VIP) and waits up to a
/// second for the answer.
fn ask(socket: &UdpSocket) -> Result<String, ErrorKind> {
    socket.send(b"who").map_err(|e| e.kind())?;
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf).map_err(|e| e.kind())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Asks up to three times; the last result and how many tries it took. A
/// socket reports the ICMP error of an earlier datagram on its next call,
/// so the first try after a refusal can fail for that reason alone.
fn ask_until_answered(socket: &UdpSocket) -> (Result<String, ErrorKind>, usize) {
    let mut last = Err(ErrorKind::TimedOut);
    for tries in 1..=3 {
        last = ask(socket);
        if last.is_ok() {
            return (last, tries);
        }
    }
    (last, 3)
}

fn dns(eps: Vec<Endpoint>) -> ProxyState {
    let mut state = ProxyState::default();
    insert(
        &mut state,
        service("dns", [10, 96, 0, 53], 53, Protocol::Udp),
        eps,
    );
    state
}

/// A UDP client in a pod that keeps its source port: refused while the
/// Service has no endpoints, answered once it has some, and moved to the
/// other endpoint by the first datagram after the one serving it is
/// removed (the stale conntrack entry is flushed; IPVS expires its own
/// entry for a removed real server, `expire_nodest_conn`).
#[test]
fn kernel_udp_flows_follow_endpoint_changes() {
    type Answer = (Result<String, ErrorKind>, usize);
    let Some((refused, first, again, moved)) = with_ipvs(|| {
        let pods = [Pod::start(1), Pod::start(2), Pod::start(3)];
        let [one, two, client] = &pods;
        let mut b = setup_backend(&BackendOptions::default());
        let none = dns(vec![]);
        sync(&mut b, 1, SyncMode::Full, &none, &full(&none));
        let (socket_tx, socket_rx) = mpsc::channel();
        let refused = client.run(move || {
            let socket = UdpSocket::bind("0.0.0.0:40053").unwrap();
            socket.connect("10.96.0.53:53").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(1)))
                .unwrap();
            let r = ask(&socket);
            socket_tx.send(socket).unwrap();
            r
        });
        // The socket stays in the pod's namespace wherever it is used from.
        let socket = socket_rx.recv().unwrap();
        let eps = vec![one.endpoint(5353), two.endpoint(5353)];
        let both = dns(eps.clone());
        sync(
            &mut b,
            2,
            SyncMode::Partial,
            &both,
            &changes_between(&none, &both),
        );
        let first: Answer = ask_until_answered(&socket);
        let again = ask(&socket);
        let serving = first.0.clone().unwrap_or_default();
        let rest = dns(eps
            .into_iter()
            .filter(|e| !serving.starts_with(&format!("{} ", e.ip)))
            .collect());
        assert_eq!(rest.endpoint_count(), 1, "{first:?}");
        sync(
            &mut b,
            3,
            SyncMode::Partial,
            &rest,
            &changes_between(&both, &rest),
        );
        let moved: Answer = ask_until_answered(&socket);
        b.cleanup().expect("cleanup");
        drop(pods);
        (refused, first, again, moved)
    }) else {
        return;
    };
    println!("no endpoints: {refused:?}; ready: {first:?}; again: {again:?}; moved: {moved:?}");
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
    let answer = first.0.expect("answered once the Service has endpoints");
    assert!(answer.ends_with(" 10.244.3.5"), "source kept: {answer}");
    assert_eq!(
        again.as_ref(),
        Ok(&answer),
        "one flow stays on one endpoint"
    );
    let (moved, tries) = moved;
    let moved = moved.expect("answered after its endpoint was removed");
    assert_ne!(moved, answer);
    assert_eq!(tries, 1, "the first datagram after the removal is answered");
}
