//! Tests against the real kernel, each in its own network namespace. The
//! iptables/ipset part runs on any kernel with netfilter; everything with
//! IPVS or dummy links runs only where the kernel has them (under
//! `svclab vm`) and prints `SKIP: <reason>` elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Instant;

use super::DUMMY_DEVICE;
use super::backend::ensure_jumps;
use super::ipsets::{self, IpSet};
use super::netlink::{IpvsClient, IpvsError};
use super::{FLAVOR, IpvsBackend, SPEC, capability, rules};
use crate::kernel::iptables::{self, Flavor};
use crate::kernel::links::Links;
use crate::model::{ChangeSet, Endpoint, Protocol, ProxyState, ServicePort, ServicePortName};
use crate::protocol::SyncMode;
use crate::testkit::{self, node};
use crate::{Backend, BackendOptions, SyncOutcome, SyncRequest, kernel::cmd};

/// Why IPVS kernel tests cannot run in the current (private) namespace.
fn ipvs_missing() -> Option<String> {
    match IpvsClient::open() {
        Ok(_) => None,
        Err(IpvsError::FamilyMissing) => Some(
            "kernel lacks IP_VS (no IPVS generic netlink family): run under `svclab vm`".into(),
        ),
        Err(e) => Some(format!("IPVS unusable: {e}")),
    }
}

/// Runs `f` in a fresh namespace if the kernel has IPVS; else prints SKIP.
pub(super) fn with_ipvs<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    if let Some(reason) = testkit::unavailable() {
        eprintln!("SKIP: {reason}");
        return None;
    }
    testkit::in_new_netns(|| {
        if let Some(reason) = ipvs_missing() {
            eprintln!("SKIP: {reason}");
            return None;
        }
        Some(f())
    })
}

pub(super) fn service(name: &str, vip: [u8; 4], port: u16, protocol: Protocol) -> ServicePort {
    testkit::service_port(
        ServicePortName::new("ns", name, "", protocol),
        Ipv4Addr::from(vip),
        port,
    )
}

/// Endpoint 10.244.<node>.<last>:<port>, ready unless `terminating`.
pub(super) fn endpoint(node: u8, last: u8, port: u16, terminating: bool) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(10, 244, node, last).into(),
        port,
        ready: !terminating,
        serving: true,
        terminating,
        node_name: Some(format!("n{node}")),
        is_local: node == 0,
        hints: Default::default(),
    }
}

pub(super) fn insert(state: &mut ProxyState, svc: ServicePort, eps: Vec<Endpoint>) {
    state.endpoints.insert(svc.name.clone(), eps);
    state.services.insert(svc.name.clone(), svc);
}

/// A ClusterIP with two endpoints, a UDP NodePort with ClientIP affinity,
/// an externalTrafficPolicy Local NodePort, a Service without endpoints and
/// one with a terminating endpoint.
fn base_state() -> ProxyState {
    let mut s = ProxyState::default();
    insert(
        &mut s,
        service("web", [10, 96, 0, 10], 80, Protocol::Tcp),
        vec![endpoint(0, 5, 8080, false), endpoint(1, 6, 8080, false)],
    );
    let mut dns = service("dns", [10, 96, 0, 53], 53, Protocol::Udp);
    dns.node_port = Some(30053);
    dns.session_affinity_seconds = Some(10800);
    insert(&mut s, dns, vec![endpoint(1, 7, 5353, false)]);
    let mut local = service("local", [10, 96, 0, 20], 443, Protocol::Tcp);
    local.node_port = Some(30443);
    local.external_policy_local = true;
    local.health_check_node_port = Some(32000);
    insert(
        &mut s,
        local,
        vec![endpoint(0, 8, 8443, false), endpoint(1, 9, 8443, false)],
    );
    insert(
        &mut s,
        service("empty", [10, 96, 0, 30], 80, Protocol::Tcp),
        vec![],
    );
    insert(
        &mut s,
        service("drain", [10, 96, 0, 40], 80, Protocol::Tcp),
        vec![endpoint(1, 10, 8080, false), endpoint(1, 11, 8080, true)],
    );
    s
}

/// What changed between two states, as the tracker would report it.
pub(super) fn changes_between(prev: &ProxyState, next: &ProxyState) -> ChangeSet {
    let mut cs = ChangeSet::default();
    let names: BTreeSet<&ServicePortName> =
        prev.services.keys().chain(next.services.keys()).collect();
    for name in names {
        let (before, after) = (prev.endpoints_of(name), next.endpoints_of(name));
        if prev.services.get(name) == next.services.get(name) && before == after {
            continue;
        }
        cs.changed.insert(name.clone());
        if !next.services.contains_key(name) {
            cs.deleted.insert(name.clone(), prev.services[name].clone());
        }
        let serving = |eps: &[Endpoint], e: &Endpoint| {
            eps.iter()
                .any(|x| x.ip == e.ip && x.port == e.port && x.serving)
        };
        let removed: Vec<Endpoint> = before
            .iter()
            .filter(|e| e.serving && !serving(after, e))
            .cloned()
            .collect();
        if !removed.is_empty() {
            cs.removed_endpoints.insert(name.clone(), removed);
        }
        if name.protocol == Protocol::Udp && before.is_empty() && !after.is_empty() {
            cs.became_ready.insert(name.clone());
        }
    }
    cs
}

pub(super) fn full(state: &ProxyState) -> ChangeSet {
    ChangeSet {
        changed: state.services.keys().cloned().collect(),
        ..ChangeSet::default()
    }
}

pub(super) fn sync(
    b: &mut IpvsBackend,
    seq: u64,
    mode: SyncMode,
    state: &ProxyState,
    changes: &ChangeSet,
) -> SyncOutcome {
    let node = node();
    b.sync(&SyncRequest {
        mode,
        seq,
        state,
        changes,
        node: &node,
    })
    .unwrap_or_else(|e| panic!("sync {seq} ({mode}): {e}"))
}

/// The kernel state this backend owns, in comparable form.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    /// `TCP/vip:port sched flags timeout` -> `rs:port weight`.
    servers: BTreeMap<String, BTreeSet<String>>,
    addresses: BTreeSet<Ipv4Addr>,
    sets: ipsets::Entries,
    rules: Vec<String>,
}

fn snapshot() -> Snapshot {
    let mut ipvs = IpvsClient::open().unwrap();
    let mut servers = BTreeMap::new();
    for s in ipvs.services().unwrap() {
        let v = &s.server;
        let dests = ipvs
            .dests(&v.key)
            .unwrap()
            .into_iter()
            .map(|d| format!("{}:{} w{}", d.server.addr, d.server.port, d.server.weight))
            .collect();
        servers.insert(
            format!("{} {} f{} t{}", v.key, v.scheduler, v.flags, v.timeout),
            dests,
        );
    }
    let mut links = Links::open().unwrap();
    let addresses = match links.index_of(DUMMY_DEVICE).unwrap() {
        Some(i) => links.addresses(i).unwrap().into_iter().collect(),
        None => BTreeSet::new(),
    };
    let saved = cmd::run("ipset", &["save"], None).unwrap().stdout;
    let mut rules: Vec<String> = ["nat", "filter"]
        .iter()
        .flat_map(|t| {
            iptables::save(FLAVOR, t)
                .unwrap()
                .lines()
                .filter(|l| l.contains("KUBE-"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    rules.sort();
    Snapshot {
        servers,
        addresses,
        sets: ipsets::parse_save(&saved),
        rules,
    }
}

pub(super) fn setup_backend(options: &BackendOptions) -> IpvsBackend {
    let mut b = IpvsBackend::new(FLAVOR, options);
    b.setup(&node()).expect("setup");
    b
}

#[test]
fn kernel_full_sync_programs_what_kube_proxy_does() {
    let Some((snap, ipvsadm, stats, after_cleanup, leftovers)) = with_ipvs(|| {
        let mut b = setup_backend(&BackendOptions::default());
        let state = base_state();
        let out = sync(&mut b, 1, SyncMode::Full, &state, &full(&state));
        assert!(out.rules > 0 && out.written > 0, "{out:?}");
        let snap = snapshot();
        let ipvsadm = cmd::run("ipvsadm", &["-Ln"], None).unwrap().stdout;
        let stats = b.stats().unwrap();
        b.cleanup().expect("cleanup");
        let after = snapshot();
        let sets = cmd::run("ipset", &["list", "-n"], None).unwrap().stdout;
        (snap, ipvsadm, stats, after, sets)
    }) else {
        return;
    };
    println!("ipvsadm -Ln after the full sync:\n{ipvsadm}");
    let s = |k: &str| {
        snap.servers
            .get(k)
            .unwrap_or_else(|| panic!("no virtual server {k:?} in {:#?}", snap.servers))
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        s("TCP/10.96.0.10:80 rr f0 t0"),
        ["10.244.0.5:8080 w1", "10.244.1.6:8080 w1"]
    );
    assert_eq!(s("UDP/10.96.0.53:53 rr f1 t10800"), ["10.244.1.7:5353 w1"]);
    assert_eq!(
        s("UDP/192.168.0.2:30053 rr f1 t10800"),
        ["10.244.1.7:5353 w1"]
    );
    assert_eq!(
        s("TCP/10.96.0.20:443 rr f0 t0"),
        ["10.244.0.8:8443 w1", "10.244.1.9:8443 w1"]
    );
    assert_eq!(s("TCP/192.168.0.2:30443 rr f0 t0"), ["10.244.0.8:8443 w1"]);
    assert!(s("TCP/10.96.0.30:80 rr f0 t0").is_empty());
    assert_eq!(
        s("TCP/10.96.0.40:80 rr f0 t0"),
        ["10.244.1.10:8080 w1", "10.244.1.11:8080 w0"]
    );
    assert_eq!(snap.servers.len(), 7);
    // ipvsadm, reading the kernel on its own, agrees.
    assert!(
        ipvsadm.contains("UDP  10.96.0.53:53 rr persistent 10800"),
        "{ipvsadm}"
    );
    assert!(
        ipvsadm.contains("-> 10.244.1.11:8080             Masq    0"),
        "{ipvsadm}"
    );
    assert_eq!(snap.addresses.len(), 5);
    assert!(snap.addresses.contains(&Ipv4Addr::new(10, 96, 0, 30)));
    assert_eq!(
        snap.sets[&IpSet::NodePortLocalTcp],
        BTreeSet::from(["30443".to_string()])
    );
    assert_eq!(snap.sets[&IpSet::IpvsIps].len(), 5);
    assert!(
        snap.rules
            .iter()
            .any(|r| r == "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"),
        "{:#?}",
        snap.rules
    );
    assert_eq!(stats.detail["virtualServers"], 7);
    assert_eq!(stats.detail["realServers"], 9);
    assert_eq!(
        stats.detail["perVirtualServer"]["TCP/10.96.0.10:80"]["servicePort"],
        "ns/web"
    );
    assert_eq!(
        after_cleanup,
        Snapshot {
            servers: BTreeMap::new(),
            addresses: BTreeSet::new(),
            sets: ipsets::Entries::new(),
            rules: vec![],
        }
    );
    assert!(
        !leftovers.lines().any(|l| IpSet::from_name(l).is_some()),
        "{leftovers}"
    );
}

/// The states a run of partial syncs goes through: endpoints change, one
/// terminates, affinity toggles, a port is added to a Service, a Service
/// is deleted and another recreated with the same ClusterIP, a NodePort
/// appears, a Service loses its endpoints.
fn evolution() -> Vec<ProxyState> {
    let mut states = vec![base_state()];
    let mut next = |f: &dyn Fn(&mut ProxyState)| {
        let mut s = states.last().unwrap().clone();
        f(&mut s);
        states.push(s);
    };
    let name = |n: &str, p: Protocol| ServicePortName::new("ns", n, "", p);
    next(&|s| {
        s.endpoints
            .get_mut(&name("web", Protocol::Tcp))
            .unwrap()
            .push(endpoint(1, 12, 8080, false));
    });
    next(&|s| {
        let eps = s.endpoints.get_mut(&name("web", Protocol::Tcp)).unwrap();
        eps[1].ready = false;
        eps[1].terminating = true;
    });
    next(&|s| {
        s.services
            .get_mut(&name("dns", Protocol::Udp))
            .unwrap()
            .session_affinity_seconds = None;
    });
    next(&|s| {
        let mut alt = service("web", [10, 96, 0, 10], 8080, Protocol::Tcp);
        alt.name = ServicePortName::new("ns", "web", "alt", Protocol::Tcp);
        insert(s, alt, vec![endpoint(0, 5, 9090, false)]);
    });
    next(&|s| {
        let gone = name("drain", Protocol::Tcp);
        s.services.remove(&gone);
        s.endpoints.remove(&gone);
        insert(
            s,
            service("drain2", [10, 96, 0, 40], 80, Protocol::Tcp),
            vec![endpoint(1, 13, 8080, false)],
        );
    });
    next(&|s| {
        s.services
            .get_mut(&name("web", Protocol::Tcp))
            .unwrap()
            .node_port = Some(30080);
    });
    next(&|s| {
        s.endpoints.insert(name("local", Protocol::Tcp), vec![]);
        let web = name("web", Protocol::Tcp);
        s.services.remove(&web);
        s.endpoints.remove(&web);
    });
    states
}

#[test]
fn kernel_partial_syncs_converge_to_a_full_sync() {
    let states = evolution();
    let Some((incremental, written)) = with_ipvs(|| {
        let mut b = setup_backend(&BackendOptions::default());
        sync(&mut b, 1, SyncMode::Full, &states[0], &full(&states[0]));
        let mut written = Vec::new();
        for (i, pair) in states.windows(2).enumerate() {
            let changes = changes_between(&pair[0], &pair[1]);
            let out = sync(&mut b, i as u64 + 2, SyncMode::Partial, &pair[1], &changes);
            assert!(!b.needs_full, "partial sync {} fell back to full", i + 2);
            written.push(out.written);
        }
        let snap = snapshot();
        b.cleanup().expect("cleanup");
        (snap, written)
    }) else {
        return;
    };
    let last = states.last().unwrap();
    let from_scratch = with_ipvs(|| {
        let mut b = setup_backend(&BackendOptions::default());
        sync(&mut b, 1, SyncMode::Full, last, &full(last));
        let snap = snapshot();
        b.cleanup().expect("cleanup");
        snap
    })
    .expect("IPVS was there a moment ago");
    println!("objects written per partial sync: {written:?}");
    assert_eq!(incremental, from_scratch);
    // A partial sync writes only what changed: one endpoint added is one
    // real server plus its ipset entries, not the whole table.
    assert!(written[0] <= 3, "{written:?}");
}

/// Each sync's dump replays with the standard tools (`ipvsadm-restore`,
/// `ipset restore`, `iptables-nft-restore`) to the same kernel state, so a
/// benchmark can time the bare tools on exactly what the backend wrote.
#[test]
fn kernel_dumps_replay_with_the_standard_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dump");
    std::fs::create_dir_all(&dir).unwrap();
    let options = BackendOptions {
        dump_dir: Some(dir.clone()),
        ..BackendOptions::default()
    };
    let state = base_state();
    let saved = |what: &[&str]| cmd::run(what[0], &what[1..], None).unwrap().stdout;
    let Some(programmed) = with_ipvs(|| {
        let mut b = setup_backend(&options);
        sync(&mut b, 1, SyncMode::Full, &state, &full(&state));
        let out = (saved(&["ipvsadm", "-Sn"]), saved(&["ipset", "save"]));
        b.cleanup().expect("cleanup");
        out
    }) else {
        return;
    };
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files,
        BTreeSet::from([
            "1-full.ipset".into(),
            "1-full.iptables".into(),
            "1-full.ipvsadm".into()
        ])
    );
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let replayed = testkit::in_new_netns(|| {
        cmd::run("ipvsadm-restore", &[], Some(&read("1-full.ipvsadm"))).unwrap();
        cmd::run("ipset", &["restore"], Some(&read("1-full.ipset"))).unwrap();
        iptables::restore(FLAVOR, &String::from_utf8(read("1-full.iptables")).unwrap()).unwrap();
        (saved(&["ipvsadm", "-Sn"]), saved(&["ipset", "save"]))
    });
    std::fs::remove_dir_all(&dir).unwrap();
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&replayed.0), sorted(&programmed.0));
    assert_eq!(
        ipsets::parse_save(&replayed.1),
        ipsets::parse_save(&programmed.1)
    );
}

/// 2000 Services with 10 endpoints each (a tenth with a NodePort): the
/// full sync, a second full sync that finds everything in place (it reads
/// back every virtual server's real servers, so dumps span many
/// datagrams), and a one-endpoint partial sync.
#[test]
fn kernel_sync_at_scale() {
    const SERVICES: u16 = 2000;
    let mut state = ProxyState::default();
    for i in 0..SERVICES {
        let vip = [10, 96, (i >> 8) as u8, i as u8];
        let mut svc = service(&format!("s{i}"), vip, 80, Protocol::Tcp);
        if i % 10 == 0 {
            svc.node_port = Some(30000 + i);
        }
        let eps = (0..10u8)
            .map(|e| endpoint(1 + (i % 200) as u8, 10 + e, 8080, false))
            .collect();
        insert(&mut state, svc, eps);
    }
    let mut next = state.clone();
    // s1 has no NodePort: one virtual server loses one real server.
    let s1 = ServicePortName::new("ns", "s1", "", Protocol::Tcp);
    next.endpoints.get_mut(&s1).unwrap().pop();
    let Some((outcomes, listed)) = with_ipvs(|| {
        let mut b = setup_backend(&BackendOptions::default());
        let mut outcomes = Vec::new();
        for (seq, mode) in [(1, SyncMode::Full), (2, SyncMode::Full)] {
            let start = Instant::now();
            let out = sync(&mut b, seq, mode, &state, &full(&state));
            outcomes.push((mode, out, start.elapsed()));
        }
        let start = Instant::now();
        let out = sync(
            &mut b,
            3,
            SyncMode::Partial,
            &next,
            &changes_between(&state, &next),
        );
        outcomes.push((SyncMode::Partial, out, start.elapsed()));
        let listed = cmd::run("ipvsadm", &["-Ln"], None).unwrap().stdout;
        b.cleanup().expect("cleanup");
        (outcomes, listed)
    }) else {
        return;
    };
    for (mode, out, took) in &outcomes {
        println!("{mode} sync: {out:?} in {took:?} (under emulation; not a performance figure)");
    }
    let virtual_servers = usize::from(SERVICES) * 11 / 10;
    let services = listed.lines().filter(|l| l.starts_with("TCP ")).count();
    let dests = listed.lines().filter(|l| l.starts_with("  -> 10.")).count();
    assert_eq!(services, virtual_servers);
    assert_eq!(dests, virtual_servers * 10 - 1);
    // The second full sync changed no virtual server, real server or
    // address: it refilled the sets (2000 ClusterIP and 2000 KUBE-IPVS-IPS
    // entries, 200 NodePorts) and rewrote the fixed ruleset.
    let fixed_rules = outcomes[1].1.rules - (virtual_servers * 11) as u64;
    assert_eq!(outcomes[1].1.written, 4200 + fixed_rules, "{outcomes:?}");
    // One endpoint removed: its real server, nothing else.
    assert_eq!(outcomes[2].1.written, 1, "{outcomes:?}");
}

/// A scheduler the kernel does not have fails setup with its name; a
/// hashing scheduler declares it does not balance uniformly.
#[test]
fn kernel_scheduler_is_checked_at_setup() {
    let Some(err) = with_ipvs(|| {
        let options = BackendOptions {
            ipvs_scheduler: "nosuch".into(),
            ..BackendOptions::default()
        };
        let mut b = IpvsBackend::new(FLAVOR, &options);
        let err = b.setup(&node()).expect_err("no such scheduler").to_string();
        b.cleanup().expect("cleanup");
        err
    }) else {
        return;
    };
    assert!(err.contains("scheduler \"nosuch\""), "{err}");
    let sh = BackendOptions {
        ipvs_scheduler: "sh".into(),
        ..BackendOptions::default()
    };
    assert!(
        (SPEC.limitations)(&sh)
            .iter()
            .any(|(f, why)| *f == crate::Feature::UniformBalance && why.contains("\"sh\""))
    );
    assert!((SPEC.limitations)(&BackendOptions::default()).is_empty());
}

/// The fixed ruleset and the sets apply with the real tools and clean up;
/// needs netfilter only, so it runs on the host kernel too.
#[test]
fn ruleset_applies_and_cleans_up() {
    if let Some(reason) = testkit::unavailable() {
        eprintln!("SKIP: {reason}");
        return;
    }
    for flavor in [Flavor::Nft, Flavor::Legacy] {
        ruleset_applies_and_cleans_up_with(flavor);
    }
}

fn ruleset_applies_and_cleans_up_with(flavor: Flavor) {
    let (applied, after) = testkit::in_new_netns(|| {
        cmd::run(
            "ipset",
            &["restore", "-exist"],
            Some(ipsets::create_input().as_bytes()),
        )
        .unwrap();
        ensure_jumps(flavor).unwrap();
        ensure_jumps(flavor).unwrap();
        let non_empty: BTreeSet<IpSet> = IpSet::ALL
            .into_iter()
            .filter(|s| !matches!(s, IpSet::ExternalIp | IpSet::ExternalIpLocal))
            .collect();
        let text = rules::render(&rules::RuleInput {
            cluster_cidr: crate::model::V4Net::v4(&node().cluster_cidr),
            non_empty: &non_empty,
            masquerade: true,
            node_denied: &[],
        });
        iptables::restore(flavor, &text).unwrap();
        // Applying twice replaces, never duplicates.
        iptables::restore(flavor, &text).unwrap();
        let applied = snapshot_rules(flavor);
        let mut b = IpvsBackend::new(flavor, &BackendOptions::default());
        b.cleanup().expect("cleanup");
        (applied, snapshot_rules(flavor))
    });
    let jumps = applied
        .iter()
        .filter(|l| l.contains("-j KUBE-SERVICES"))
        .count();
    assert_eq!(jumps, 2, "{flavor:?}: {applied:#?}");
    assert_eq!(
        applied.iter().filter(|l| l.starts_with("-A KUBE-")).count(),
        rules::rule_count(&rules::render(&rules::RuleInput {
            cluster_cidr: crate::model::V4Net::v4(&node().cluster_cidr),
            non_empty: &IpSet::ALL
                .into_iter()
                .filter(|s| !matches!(s, IpSet::ExternalIp | IpSet::ExternalIpLocal))
                .collect(),
            masquerade: true,
            node_denied: &[],
        })),
        "{flavor:?}"
    );
    assert!(after.is_empty(), "{flavor:?}: {after:#?}");
}

/// A full sync's swap replaces set contents under rules that use the sets,
/// and leaves no scratch set behind; needs netfilter only.
#[test]
fn ipset_full_replace_swaps_under_live_rules() {
    if let Some(reason) = testkit::unavailable() {
        eprintln!("SKIP: {reason}");
        return;
    }
    let (first, second, sets) = testkit::in_new_netns(|| {
        let restore = |input: String| {
            cmd::run("ipset", &["restore", "-exist"], Some(input.as_bytes())).unwrap();
        };
        restore(ipsets::create_input());
        ensure_jumps(FLAVOR).unwrap();
        let non_empty = BTreeSet::from([IpSet::ClusterIp]);
        let text = rules::render(&rules::RuleInput {
            cluster_cidr: crate::model::V4Net::v4(&node().cluster_cidr),
            non_empty: &non_empty,
            masquerade: true,
            node_denied: &[],
        });
        iptables::restore(FLAVOR, &text).unwrap();
        let entries = |vips: &[u8]| {
            let mut e = ipsets::Entries::new();
            for v in vips {
                let vip = Ipv4Addr::new(10, 96, 0, *v);
                e.entry(IpSet::ClusterIp)
                    .or_default()
                    .insert(ipsets::ip_port(vip, Protocol::Tcp, 80));
            }
            e
        };
        let saved = || ipsets::parse_save(&cmd::run("ipset", &["save"], None).unwrap().stdout);
        restore(ipsets::replace_input(&entries(&[1, 2])));
        let first = saved();
        restore(ipsets::replace_input(&entries(&[2, 3])));
        let second = saved();
        let sets = cmd::run("ipset", &["list", "-n"], None).unwrap().stdout;
        let mut b = IpvsBackend::new(FLAVOR, &BackendOptions::default());
        b.cleanup().expect("cleanup");
        (first, second, sets)
    });
    assert_eq!(
        first[&IpSet::ClusterIp],
        BTreeSet::from([
            "10.96.0.1,tcp:80".to_string(),
            "10.96.0.2,tcp:80".to_string()
        ])
    );
    assert_eq!(
        second[&IpSet::ClusterIp],
        BTreeSet::from([
            "10.96.0.2,tcp:80".to_string(),
            "10.96.0.3,tcp:80".to_string()
        ])
    );
    assert!(!sets.contains("swap"), "{sets}");
    assert_eq!(sets.lines().count(), IpSet::ALL.len(), "{sets}");
}

fn snapshot_rules(flavor: Flavor) -> Vec<String> {
    ["nat", "filter"]
        .iter()
        .flat_map(|t| {
            iptables::save(flavor, t)
                .unwrap()
                .lines()
                .filter(|l| l.contains("KUBE-"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn capability_names_what_is_missing() {
    if let Some(reason) = testkit::unavailable() {
        eprintln!("SKIP: {reason}");
        return;
    }
    let kernel_has_ipvs = testkit::in_new_netns(|| ipvs_missing().is_none());
    match (capability(FLAVOR), kernel_has_ipvs) {
        (Ok(()), true) => {}
        (Err(u), false) => {
            assert!(u.reason.contains("kernel lacks IP_VS"), "{}", u.reason);
            assert!(u.reason.contains("svclab vm"), "{}", u.reason);
        }
        (got, has) => panic!("capability {got:?} while the kernel has IPVS: {has}"),
    }
}
