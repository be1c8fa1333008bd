use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;
use crate::model::{Endpoint, ServicePort};

/// The maps in memory. After every operation it checks what a packet
/// could see: each service entry's live slots all hold an endpoint.
#[derive(Default)]
struct FakeMaps {
    services: BTreeMap<SvcKey, SvcVal>,
    backends: BTreeMap<BackendKey, Backend>,
    members: BTreeSet<MemberKey>,
    resets: Vec<u32>,
    /// Fail the n-th backend write from now (1 = the next).
    fail_backend_write: Option<usize>,
}

impl FakeMaps {
    fn consistent(&self) {
        for (k, v) in &self.services {
            for set in [abi::SET_CLUSTER, abi::SET_LOCAL] {
                for i in 0..v.count[usize::from(set)] {
                    let slot = BackendKey::new(v.id, v.generation, set, usize::from(i));
                    assert!(
                        self.backends.contains_key(&slot),
                        "entry {k:?} -> {v:?} points at missing slot {slot:?}"
                    );
                }
            }
        }
    }
}

fn gone(map: &'static str) -> MapOpError {
    MapOpError {
        map,
        op: "deleting",
        source: std::io::Error::from_raw_os_error(libc::ENOENT),
    }
}

impl Maps for FakeMaps {
    fn put_service(&mut self, k: &SvcKey, v: &SvcVal) -> Result<(), MapOpError> {
        self.services.insert(*k, *v);
        self.consistent();
        Ok(())
    }
    fn del_service(&mut self, k: &SvcKey) -> Result<(), MapOpError> {
        self.services
            .remove(k)
            .map(|_| ())
            .ok_or_else(|| gone("services"))
    }
    fn put_backend(&mut self, k: &BackendKey, v: &Backend) -> Result<(), MapOpError> {
        match self.fail_backend_write {
            Some(1) => {
                self.fail_backend_write = None;
                return Err(MapOpError {
                    map: "backends",
                    op: "updating",
                    source: std::io::Error::from_raw_os_error(libc::E2BIG),
                });
            }
            Some(n) => self.fail_backend_write = Some(n - 1),
            None => {}
        }
        self.backends.insert(*k, *v);
        Ok(())
    }
    fn del_backend(&mut self, k: &BackendKey) -> Result<(), MapOpError> {
        self.backends.remove(k).ok_or_else(|| gone("backends"))?;
        self.consistent();
        Ok(())
    }
    fn put_member(&mut self, k: &MemberKey) -> Result<(), MapOpError> {
        self.members.insert(*k);
        Ok(())
    }
    fn del_member(&mut self, k: &MemberKey) -> Result<(), MapOpError> {
        self.members
            .remove(k)
            .then_some(())
            .ok_or_else(|| gone("members"))
    }
    fn reset_stats(&mut self, id: u32) -> Result<(), MapOpError> {
        self.resets.push(id);
        Ok(())
    }
}

fn name(port: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName::new("ns", "svc", port, protocol)
}

fn plan(protocol: Protocol, eps: &[u8], affinity: Option<u32>) -> ServicePlan {
    let svc = ServicePort {
        name: name("p", protocol),
        cluster_ip: Ipv4Addr::new(10, 96, 0, 1).into(),
        port: 80,
        protocol,
        node_port: Some(30080),
        session_affinity_seconds: affinity,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: None,
        external_ips: vec![],
        load_balancer_ips: vec![],
        load_balancer_source_ranges: vec![],
    };
    let eps: Vec<Endpoint> = eps
        .iter()
        .map(|&last| Endpoint {
            ip: Ipv4Addr::new(10, 244, 0, last).into(),
            port: 8080,
            ready: true,
            serving: true,
            terminating: false,
            node_name: None,
            is_local: false,
            hints: Default::default(),
        })
        .collect();
    ServicePlan::new(&svc, &eps).unwrap()
}

fn live(maps: &FakeMaps) -> Vec<Vec<u8>> {
    maps.services
        .values()
        .map(|v| {
            (0..v.count[0])
                .map(|i| {
                    let b = maps.backends
                        [&BackendKey::new(v.id, v.generation, abi::SET_CLUSTER, usize::from(i))];
                    abi::addr_of(b.addr).octets()[3]
                })
                .collect()
        })
        .collect()
}

#[test]
fn create_then_flip_generations_without_a_half_updated_service() {
    let mut maps = FakeMaps::default();
    let mut book = Book::default();
    let n = name("p", Protocol::Tcp);
    let mut out = Applied::default();
    book.apply(
        &mut maps,
        &n,
        Some(&plan(Protocol::Tcp, &[1, 2], None)),
        &mut out,
    )
    .unwrap();
    // Two backend slots, the ClusterIP and the NodePort entry, one reset.
    assert_eq!(out.written, 5);
    assert_eq!(live(&maps), vec![vec![1, 2]; 2]);
    assert_eq!(book.get(&n).unwrap().generation, 0);

    let mut out = Applied::default();
    book.apply(
        &mut maps,
        &n,
        Some(&plan(Protocol::Tcp, &[2, 3, 4], None)),
        &mut out,
    )
    .unwrap();
    assert_eq!(live(&maps), vec![vec![2, 3, 4]; 2]);
    assert_eq!(book.get(&n).unwrap().generation, 1);
    // Old slots are gone: only the live generation is left.
    assert_eq!(maps.backends.len(), 3);
    assert_eq!(out.written, 3 + 2 + 2);
    assert!(out.stale_udp.is_empty(), "TCP flows are never flushed");

    let mut out = Applied::default();
    book.apply(
        &mut maps,
        &n,
        Some(&plan(Protocol::Tcp, &[2, 3, 4], None)),
        &mut out,
    )
    .unwrap();
    assert_eq!(out.written, 0, "an unchanged port writes nothing");
    assert_eq!(book.entries(), 5);
}

#[test]
fn deletion_removes_everything_and_frees_the_id_after_the_sync() {
    let mut maps = FakeMaps::default();
    let mut book = Book::default();
    let a = name("a", Protocol::Udp);
    let b = name("b", Protocol::Udp);
    let mut out = Applied::default();
    book.apply(
        &mut maps,
        &a,
        Some(&plan(Protocol::Udp, &[1, 2], Some(60))),
        &mut out,
    )
    .unwrap();
    assert_eq!(maps.members.len(), 2);
    book.apply(&mut maps, &a, None, &mut out).unwrap();
    assert!(maps.services.is_empty() && maps.backends.is_empty() && maps.members.is_empty());
    assert_eq!(book.entries(), 0);
    let stale: Vec<(u32, u8)> = out
        .stale_udp
        .iter()
        .map(|(id, e)| (*id, abi::addr_of(e.addr).octets()[3]))
        .collect();
    assert_eq!(stale, vec![(0, 1), (0, 2)]);
    // Not reused within the sync that deleted it.
    book.apply(
        &mut maps,
        &b,
        Some(&plan(Protocol::Udp, &[1], None)),
        &mut out,
    )
    .unwrap();
    assert_eq!(book.get(&b).unwrap().id, 1);
    book.release_ids();
    book.apply(
        &mut maps,
        &a,
        Some(&plan(Protocol::Udp, &[1], None)),
        &mut out,
    )
    .unwrap();
    assert_eq!(book.get(&a).unwrap().id, 0);
    assert_eq!(maps.resets, vec![0, 1, 0]);
}

#[test]
fn removed_udp_endpoints_are_stale_and_members_follow() {
    let mut maps = FakeMaps::default();
    let mut book = Book::default();
    let n = name("dns", Protocol::Udp);
    let mut out = Applied::default();
    book.apply(
        &mut maps,
        &n,
        Some(&plan(Protocol::Udp, &[1, 2, 3], Some(10))),
        &mut out,
    )
    .unwrap();
    let mut out = Applied::default();
    book.apply(
        &mut maps,
        &n,
        Some(&plan(Protocol::Udp, &[1, 3], Some(10))),
        &mut out,
    )
    .unwrap();
    let stale: Vec<u8> = out
        .stale_udp
        .iter()
        .map(|(_, e)| abi::addr_of(e.addr).octets()[3])
        .collect();
    assert_eq!(stale, vec![2]);
    let members: Vec<u8> = maps
        .members
        .iter()
        .map(|m| abi::addr_of(m.addr).octets()[3])
        .collect();
    assert_eq!(members, vec![1, 3]);
    // Affinity off: no members at all.
    book.apply(
        &mut maps,
        &n,
        Some(&plan(Protocol::Udp, &[1, 3], None)),
        &mut out,
    )
    .unwrap();
    assert!(maps.members.is_empty());
    assert_eq!(maps.services.values().next().unwrap().affinity_seconds, 0);
}

#[test]
fn a_failed_update_is_purged_forgotten_and_named() {
    let mut maps = FakeMaps::default();
    let mut book = Book::default();
    let n = name("p", Protocol::Tcp);
    let mut out = Applied::default();
    book.apply(
        &mut maps,
        &n,
        Some(&plan(Protocol::Tcp, &[1, 2], None)),
        &mut out,
    )
    .unwrap();
    maps.fail_backend_write = Some(2);
    let err = book
        .apply(
            &mut maps,
            &n,
            Some(&plan(Protocol::Tcp, &[3, 4], None)),
            &mut out,
        )
        .unwrap_err();
    assert!(err.to_string().contains("ns/svc:p"), "{err}");
    assert!(err.to_string().contains("backends"), "{err}");
    assert!(book.get(&n).is_none());
    assert_eq!(book.entries(), 0, "the purged port counts no more");
    assert!(maps.services.is_empty() && maps.backends.is_empty());
    // The next sync programs it from scratch.
    book.release_ids();
    book.apply(
        &mut maps,
        &n,
        Some(&plan(Protocol::Tcp, &[3, 4], None)),
        &mut out,
    )
    .unwrap();
    assert_eq!(live(&maps), vec![vec![3, 4]; 2]);
}
