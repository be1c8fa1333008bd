//! Sync cost and relay cost at benchmark sizes, run by hand in a release
//! build:
//!
//! ```text
//! cargo test --release -p svclab-backends userspace::measure -- --ignored --nocapture --test-threads 1
//! ```
//!
//! `SVCLAB_MEASURE_SERVICES` (default `1000,10000`) sets the sizes: TCP
//! Services with 10 endpoints each, every tenth with a NodePort. Each size
//! runs in a fresh namespace: setup and the first full sync (listeners and
//! rules), a resync, partial syncs that only move endpoints (no rule
//! changes), and partial syncs that add and delete a Service (a rule diff).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::backend::UserspaceBackend;
use crate::model::{
    ChangeSet, Endpoint, NodeContext, Protocol, ProxyState, ServicePort, ServicePortName,
};
use crate::protocol::SyncMode;
use crate::testkit;
use crate::testkit::in_new_netns;
use crate::{Backend, BackendOptions, SyncRequest, require_netns};

const ENDPOINTS_PER_SERVICE: u32 = 10;
const PARTIALS: usize = 10;

fn node() -> NodeContext {
    NodeContext {
        pod_cidr: "10.0.0.0/24".parse().unwrap(),
        cluster_cidr: "10.0.0.0/8".parse().unwrap(),
        service_cidr: "172.30.0.0/16".parse().unwrap(),
        run_prefix: "m".into(),
        uplink: "v0".into(),
        zone: None,
        ..testkit::node()
    }
}

fn service(i: u32) -> ServicePort {
    ServicePort {
        name: ServicePortName::new("ns", &format!("s{i}"), "", Protocol::Tcp),
        cluster_ip: Ipv4Addr::from(0xac1e_0000 + i + 1).into(),
        port: 80,
        protocol: Protocol::Tcp,
        node_port: i.is_multiple_of(10).then(|| 30000 + (i / 10 % 2700) as u16),
        session_affinity_seconds: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
    }
}

fn endpoint(n: u32) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::from(0x0a00_0000 + n).into(),
        port: 8080,
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        is_local: false,
        hints: Default::default(),
    }
}

fn synthetic(services: u32) -> ProxyState {
    let mut s = ProxyState::default();
    for i in 0..services {
        let svc = service(i);
        let eps = (0..ENDPOINTS_PER_SERVICE)
            .map(|k| endpoint(i * ENDPOINTS_PER_SERVICE + k + 1))
            .collect();
        s.endpoints.insert(svc.name.clone(), eps);
        s.services.insert(svc.name.clone(), svc);
    }
    s
}

fn timed_sync(
    b: &mut UserspaceBackend,
    seq: u64,
    mode: SyncMode,
    state: &ProxyState,
    changed: BTreeSet<ServicePortName>,
) -> Duration {
    let cs = ChangeSet {
        changed,
        ..ChangeSet::default()
    };
    let t = Instant::now();
    b.sync(&SyncRequest {
        mode,
        seq,
        state,
        changes: &cs,
        node: &node(),
    })
    .unwrap_or_else(|e| panic!("sync {seq}: {e}"));
    t.elapsed()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "a measurement: run by hand in a release build"]
fn sync_cost_at_scale() {
    require_netns!();
    let sizes: Vec<u32> = std::env::var("SVCLAB_MEASURE_SERVICES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("a number of Services"))
        .collect();
    println!(
        "| Services | setup | first full sync | resync | partial, endpoints only | partial, add+delete a Service | listeners | iptables rules |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        in_new_netns(|| {
            let mut state = synthetic(n);
            let mut b = UserspaceBackend::new(&BackendOptions::default());
            let t = Instant::now();
            b.setup(&node()).expect("setup");
            let setup = t.elapsed();
            let first = timed_sync(&mut b, 1, SyncMode::Full, &state, BTreeSet::new());
            let resync = timed_sync(&mut b, 2, SyncMode::Full, &state, BTreeSet::new());
            let mut seq = 3;
            let mut endpoint_only = Vec::new();
            for k in 0..PARTIALS as u32 {
                let name = service(k * 7 % n).name;
                state
                    .endpoints
                    .get_mut(&name)
                    .unwrap()
                    .push(endpoint(0x00ff_0000 + k));
                endpoint_only.push(timed_sync(
                    &mut b,
                    seq,
                    SyncMode::Partial,
                    &state,
                    BTreeSet::from([name]),
                ));
                seq += 1;
            }
            let (mut adds, mut deletes) = (Vec::new(), Vec::new());
            for k in 0..PARTIALS as u32 {
                let svc = service(n + k);
                let name = svc.name.clone();
                state.services.insert(name.clone(), svc);
                state
                    .endpoints
                    .insert(name.clone(), vec![endpoint(0x00fe_0000 + k)]);
                let add = timed_sync(
                    &mut b,
                    seq,
                    SyncMode::Partial,
                    &state,
                    BTreeSet::from([name.clone()]),
                );
                state.services.remove(&name);
                state.endpoints.remove(&name);
                let del = timed_sync(
                    &mut b,
                    seq + 1,
                    SyncMode::Partial,
                    &state,
                    BTreeSet::from([name]),
                );
                adds.push(add);
                deletes.push(del);
                seq += 2;
            }
            let stats = b.stats().unwrap();
            println!(
                "| {n} | {} | {} | {} | {} | {} | {} | {} | {} |",
                ms(setup),
                ms(first),
                ms(resync),
                ms(median(endpoint_only)),
                ms(median(adds)),
                ms(median(deletes)),
                stats.detail["listeners"],
                stats.detail["iptablesRules"],
            );
            let t = Instant::now();
            b.cleanup().expect("cleanup");
            println!("cleanup at {n}: {}", ms(t.elapsed()));
        });
    }
}

/// Sequential connections and a bulk transfer through the proxy, against
/// the same directly to the endpoint, all inside one namespace over `lo`.
#[test]
#[ignore = "a measurement: run by hand in a release build"]
fn relay_cost() {
    require_netns!();
    const CONNECTIONS: usize = 2000;
    const BULK: usize = 256 << 20;
    in_new_netns(|| {
        testkit::plumb_node(&[Ipv4Addr::new(10, 0, 0, 5)]);
        let listener = TcpListener::bind("10.0.0.5:8080").unwrap();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            for c in listener.incoming() {
                let Ok(mut c) = c else { continue };
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 1 << 16];
                    let mut first = [0u8; 1];
                    if c.read_exact(&mut first).is_err() {
                        return;
                    }
                    if first[0] == b'b' {
                        let _ = std::io::copy(&mut (&c).take(BULK as u64), &mut std::io::sink());
                        let _ = c.write_all(b"k");
                    } else {
                        let _ = c.write_all(b"k");
                    }
                    let _ = c.read(&mut buf);
                });
                if Instant::now() > deadline {
                    break;
                }
            }
        });
        let mut state = ProxyState::default();
        let svc = ServicePort {
            cluster_ip: Ipv4Addr::new(172, 30, 0, 1).into(),
            ..service(1)
        };
        state.endpoints.insert(
            svc.name.clone(),
            vec![Endpoint {
                ip: Ipv4Addr::new(10, 0, 0, 5).into(),
                ..endpoint(0)
            }],
        );
        state.services.insert(svc.name.clone(), svc);
        let mut b = UserspaceBackend::new(&BackendOptions::default());
        b.setup(&node()).expect("setup");
        timed_sync(&mut b, 1, SyncMode::Full, &state, BTreeSet::new());

        let run = |addr: &str| {
            let addr: SocketAddr = addr.parse().unwrap();
            let t = Instant::now();
            for _ in 0..CONNECTIONS {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"c").unwrap();
                let mut k = [0u8; 1];
                s.read_exact(&mut k).unwrap();
            }
            let per_conn = t.elapsed() / CONNECTIONS as u32;
            let mut s = TcpStream::connect(addr).unwrap();
            let chunk = vec![7u8; 1 << 16];
            let t = Instant::now();
            s.write_all(b"b").unwrap();
            for _ in 0..BULK / chunk.len() {
                s.write_all(&chunk).unwrap();
            }
            let mut k = [0u8; 1];
            s.read_exact(&mut k).unwrap();
            let gbps = BULK as f64 * 8.0 / t.elapsed().as_secs_f64() / 1e9;
            (per_conn, gbps)
        };
        let (direct_conn, direct_bw) = run("10.0.0.5:8080");
        let (proxy_conn, proxy_bw) = run("172.30.0.1:80");
        println!(
            "| path | connect+1 byte each way ({CONNECTIONS} sequential) | bulk {} MiB |",
            BULK >> 20
        );
        println!("|---|---|---|");
        println!(
            "| direct | {:.0} µs | {direct_bw:.1} Gbit/s |",
            direct_conn.as_secs_f64() * 1e6
        );
        println!(
            "| through the proxy | {:.0} µs | {proxy_bw:.1} Gbit/s |",
            proxy_conn.as_secs_f64() * 1e6
        );
        b.cleanup().expect("cleanup");
    });
}
