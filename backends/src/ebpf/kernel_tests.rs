//! The backend's life in a node namespace: what setup attaches, what a
//! full sync picks up, and that cleanup leaves nothing behind.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::programs::SchedClassifier;
use aya::programs::tc::TcAttachType;

use super::backend::EbpfBackend;
use super::testnet::{TCP_PORT, Topology, exchange, service};
use crate::model::{ChangeSet, Endpoint, Protocol, ProxyState};
use crate::protocol::SyncMode;
use crate::{Backend, BackendOptions, SyncRequest, kernel::cmd};

const LO_ACCEPT_LOCAL: &str = "/proc/sys/net/ipv4/conf/lo/accept_local";

/// BPF programs on `iface`: tcx links, or filters on a clsact qdisc.
fn attached(iface: &str) -> usize {
    let mut n = 0;
    for (direction, name) in [
        (TcAttachType::Ingress, "ingress"),
        (TcAttachType::Egress, "egress"),
    ] {
        if let Ok((_, programs)) = SchedClassifier::query_tcx(iface, direction) {
            n += programs.len();
        }
        if let Ok(out) = cmd::run("tc", &["filter", "show", "dev", iface, name], None) {
            // A filter prints a line per chain and one per program.
            n += out
                .stdout
                .lines()
                .filter(|l| l.contains(" bpf ") && l.contains(" handle "))
                .count();
        }
    }
    n
}

/// `attached(iface)` once it reaches 0, or after a bounded wait. A tcx
/// link goes when its last file descriptor closes; a test running in
/// parallel that forks (to run `tc`) holds a copy of every descriptor
/// until its child execs, so the count can lag the drop by a moment.
fn detached_soon(iface: &str) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let n = attached(iface);
        if n == 0 || std::time::Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn qdiscs() -> String {
    cmd::run("tc", &["qdisc", "show"], None).unwrap().stdout
}

fn accept_local() -> String {
    std::fs::read_to_string(LO_ACCEPT_LOCAL)
        .unwrap()
        .trim()
        .to_string()
}

fn full_sync(b: &mut EbpfBackend, state: &ProxyState) {
    let changes = ChangeSet {
        changed: state.services.keys().cloned().collect(),
        ..ChangeSet::default()
    };
    b.sync(&SyncRequest {
        mode: SyncMode::Full,
        seq: 1,
        state,
        changes: &changes,
        node: &Topology::node(),
    })
    .unwrap();
}

fn skip() -> bool {
    if let Err(e) = super::capability::capability() {
        eprintln!("SKIP: {e}");
        return true;
    }
    false
}

#[test]
fn cleanup_detaches_everything_and_restores_lo() {
    crate::require_netns!();
    if skip() {
        return;
    }
    crate::testkit::in_new_netns(|| {
        let _topo = Topology::build(1);
        let qdiscs_before = qdiscs();
        assert_eq!(accept_local(), "0");
        let mut b = EbpfBackend::new(&BackendOptions::default());
        b.setup(&Topology::node()).unwrap();
        assert_eq!(attached("vethp0"), 2, "pod veth: ingress and egress");
        assert_eq!(attached("eth0"), 2, "uplink: ingress and egress");
        assert_eq!(attached("lo"), 1, "lo: egress");
        assert_eq!(accept_local(), "1");
        b.cleanup().unwrap();
        for iface in ["vethp0", "eth0", "lo"] {
            assert_eq!(detached_soon(iface), 0, "{iface} after cleanup");
        }
        assert_eq!(qdiscs(), qdiscs_before, "no qdisc left behind");
        assert_eq!(accept_local(), "0");
        assert!(
            b.sync(&SyncRequest {
                mode: SyncMode::Full,
                seq: 2,
                state: &ProxyState::default(),
                changes: &ChangeSet::default(),
                node: &Topology::node(),
            })
            .is_err_and(|e| e.to_string().contains("not set up"))
        );
    });
}

#[test]
fn a_full_sync_attaches_to_new_pods() {
    crate::require_netns!();
    if skip() {
        return;
    }
    crate::testkit::in_new_netns(|| {
        let mut topo = Topology::build(1);
        let server = topo.pods[0].ip;
        let mut state = ProxyState::default();
        let web = service("web", Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp);
        let ep = Endpoint {
            ip: server.into(),
            port: TCP_PORT,
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some("n0".into()),
            is_local: true,
            hints: Default::default(),
        };
        state.endpoints.insert(web.name.clone(), vec![ep]);
        state.services.insert(web.name.clone(), web);
        let mut b = EbpfBackend::new(&BackendOptions::default());
        b.setup(&Topology::node()).unwrap();
        full_sync(&mut b, &state);
        let to = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
        let client_ip = topo.add_pod().ip;
        assert_eq!(attached("vethp1"), 0);
        full_sync(&mut b, &state);
        assert_eq!(attached("vethp1"), 2);
        let answer = topo.pods[1]
            .run(move || exchange(Protocol::Tcp, to, None))
            .unwrap();
        assert_eq!((answer.server, answer.saw), (server, client_ip));
        assert_eq!(b.stats().unwrap().detail["podVeths"], 2);
        b.cleanup().unwrap();
    });
}
