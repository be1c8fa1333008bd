//! Kernel tests: each runs in its own fresh network namespace, programs the
//! `ip kube-proxy` table there and reads it back with `nft -j`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::model::{ProxyState, ServicePortName};
use crate::nftables::fixtures::{changes, ep, insert, mixed, node, tcp};
use crate::nftables::{NftablesBackend, capability};
use crate::protocol::SyncMode;
use crate::testkit::in_new_netns;
use crate::testkit::plumb_node;
use crate::{Backend, BackendOptions, Fault, SyncRequest, kernel::cmd, require_netns};

fn nft_json(args: &[&str]) -> Value {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = cmd::run("nft", &full, None).expect("nft -j list");
    serde_json::from_str(&out.stdout).expect("nft -j prints JSON")
}

fn objects(v: &Value) -> &Vec<Value> {
    v["nftables"].as_array().expect("nftables array")
}

/// The table as a sorted list of canonical strings: kernel handles dropped,
/// element lists sorted, rules keyed by chain and position, so two tables
/// built by different transaction sequences compare equal when they hold
/// the same objects.
fn canonical_table() -> Vec<String> {
    let v = nft_json(&["list", "table", "ip", "kube-proxy"]);
    let mut rule_pos: std::collections::HashMap<String, usize> = Default::default();
    let mut out = Vec::new();
    for obj in objects(&v) {
        let mut obj = obj.clone();
        let Some((kind, body)) = obj.as_object_mut().and_then(|m| m.iter_mut().next()) else {
            continue;
        };
        if kind == "metainfo" {
            continue;
        }
        let body = body.as_object_mut().expect("object body");
        body.remove("handle");
        if let Some(Value::Array(elems)) = body.get_mut("elem") {
            elems.sort_by_key(|e| e.to_string());
        }
        if kind == "rule" {
            let chain = body["chain"].as_str().unwrap_or_default().to_string();
            let pos = rule_pos.entry(chain.clone()).or_default();
            out.push(format!(
                "rule {chain} #{pos} {}",
                Value::Object(body.clone())
            ));
            *pos += 1;
        } else {
            out.push(format!("{kind} {}", Value::Object(body.clone())));
        }
    }
    out.sort();
    out
}

fn sync(b: &mut NftablesBackend, seq: u64, mode: SyncMode, old: &ProxyState, new: &ProxyState) {
    let cs = changes(old, new);
    let node = node();
    b.sync(&SyncRequest {
        mode,
        seq,
        state: new,
        changes: &cs,
        node: &node,
    })
    .unwrap_or_else(|e| panic!("sync {seq} ({mode}): {e}"));
}

/// The table a fresh agent would program for `state`: setup and one full
/// sync in a namespace of its own.
fn fresh_full_table(state: &ProxyState) -> Vec<String> {
    in_new_netns(|| {
        let mut b = NftablesBackend::new(&BackendOptions::default());
        b.setup(&node()).expect("setup");
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), state);
        canonical_table()
    })
}

fn names_of(kind: &str, v: &Value) -> Vec<String> {
    objects(v)
        .iter()
        .filter_map(|o| o.get(kind))
        .filter(|b| kind == "table" || b["table"] == "kube-proxy")
        .filter_map(|b| b["name"].as_str().map(str::to_string))
        .collect()
}

fn elements_of(map: &str, v: &Value) -> usize {
    objects(v)
        .iter()
        .filter_map(|o| o.get("map").or_else(|| o.get("set")))
        .filter(|b| b["name"] == map)
        .map(|b| b["elem"].as_array().map_or(0, Vec::len))
        .sum()
}

#[test]
fn capability_probe_passes_here() {
    require_netns!();
    capability().expect("nft and this kernel support the nftables backend");
}

#[test]
fn full_sync_is_accepted_and_listed_then_cleaned_up() {
    require_netns!();
    in_new_netns(|| {
        let state = mixed();
        let mut b = NftablesBackend::new(&BackendOptions::default());
        b.setup(&node()).expect("setup");
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);

        let v = nft_json(&["list", "ruleset"]);
        let tables = names_of("table", &v);
        assert_eq!(tables, vec!["kube-proxy".to_string()]);
        let maps = names_of("map", &v);
        for m in [
            "service-ips",
            "service-nodeports",
            "no-endpoint-services",
            "no-endpoint-nodeports",
            "firewall-ips",
        ] {
            assert!(maps.iter().any(|x| x == m), "map {m} missing: {maps:?}");
        }
        let chains = names_of("chain", &v);
        for c in [
            "nat-prerouting",
            "nat-output",
            "nat-postrouting",
            "filter-input",
            "filter-forward",
            "filter-output",
            "services",
            "masquerading",
            "reject-chain",
            "service-LY4HC3X6-ns1/plain/tcp/p80",
            "external-O4B5ELNJ-ns1/etp/tcp/p80",
            "local-O4B5ELNJ-ns1/etp/tcp/p80",
        ] {
            assert!(chains.iter().any(|x| x == c), "chain {c} missing");
        }
        // 7 ClusterIPs; 8 ports with endpoints plus the etp external IP.
        assert_eq!(elements_of("cluster-ips", &v), 7);
        assert_eq!(elements_of("service-ips", &v), 9);
        assert_eq!(elements_of("service-nodeports", &v), 2);
        assert_eq!(elements_of("no-endpoint-services", &v), 1);
        assert_eq!(
            names_of("set", &v)
                .iter()
                .filter(|s| s.starts_with("affinity-"))
                .count(),
            3
        );
        assert!(
            names_of("set", &v)
                .iter()
                .any(|s| s == "hairpin-connections")
        );

        let stats = b.stats().expect("stats");
        let rules_listed = objects(&v)
            .iter()
            .filter(|o| o.get("rule").is_some())
            .count();
        assert_eq!(stats.detail["rules"], rules_listed as u64);

        b.cleanup().expect("cleanup");
        let after = nft_json(&["list", "tables"]);
        assert!(names_of("table", &after).is_empty(), "{after}");
    });
}

#[test]
fn partial_syncs_converge_to_a_fresh_full_sync() {
    require_netns!();
    let mut steps: Vec<(&str, ProxyState)> = Vec::new();
    let start = mixed();
    let name = |ns: &str, svc: &str, port: &str, proto| ServicePortName::new(ns, svc, port, proto);
    let plain = name("ns1", "plain", "p80", crate::model::Protocol::Tcp);
    let sticky = name("ns1", "sticky", "p80", crate::model::Protocol::Tcp);
    let etp = name("ns1", "etp", "p80", crate::model::Protocol::Tcp);
    let multi_dns = name("ns2", "multi", "dns", crate::model::Protocol::Udp);
    let multi_http = name("ns2", "multi", "http", crate::model::Protocol::Tcp);

    let mut s = start.clone();
    s.endpoints
        .get_mut(&plain)
        .unwrap()
        .push(ep([10, 180, 1, 9], 8080, false));
    steps.push(("endpoint added", s.clone()));

    s.endpoints.get_mut(&plain).unwrap().remove(0);
    steps.push(("endpoint removed", s.clone()));

    let mut new_svc = tcp("ns3", "late", [172, 30, 0, 30]);
    new_svc.node_port = Some(30030);
    new_svc.session_affinity_seconds = Some(60);
    insert(
        &mut s,
        new_svc,
        vec![
            ep([10, 180, 30, 1], 80, true),
            ep([10, 180, 30, 2], 80, false),
        ],
    );
    steps.push(("service added", s.clone()));

    s.services.remove(&sticky);
    s.endpoints.remove(&sticky);
    steps.push(("service with affinity deleted", s.clone()));

    s.endpoints.remove(&plain);
    steps.push(("last endpoint gone", s.clone()));

    s.endpoints
        .insert(plain.clone(), vec![ep([10, 180, 1, 5], 8080, false)]);
    s.services.get_mut(&etp).unwrap().external_policy_local = false;
    steps.push(("endpoint back, etp to Cluster", s.clone()));

    // One port of a multi-port Service goes, another changes: their shared
    // ClusterIP must stay in cluster-ips.
    s.services.remove(&multi_dns);
    s.endpoints.remove(&multi_dns);
    s.endpoints.get_mut(&multi_http).unwrap().pop();
    steps.push(("multiport port removed", s.clone()));

    let want: Vec<Vec<String>> = steps.iter().map(|(_, st)| fresh_full_table(st)).collect();
    let want_start = fresh_full_table(&start);
    in_new_netns(|| {
        let mut b = NftablesBackend::new(&BackendOptions::default());
        b.setup(&node()).expect("setup");
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &start);
        let mut prev = start.clone();
        for (i, ((what, st), want)) in steps.iter().zip(&want).enumerate() {
            sync(&mut b, i as u64 + 2, SyncMode::Partial, &prev, st);
            let got = canonical_table();
            let missing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).collect();
            let extra: Vec<&String> = got.iter().filter(|l| !want.contains(l)).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "after partial sync \"{what}\": missing {missing:#?}\nextra {extra:#?}"
            );
            prev = st.clone();
        }
        // A full resync over the partial history changes nothing.
        sync(&mut b, 99, SyncMode::Full, &prev, &prev);
        assert_eq!(canonical_table(), *want.last().unwrap());
        // A full sync back to the start deletes what the start lacks.
        sync(&mut b, 100, SyncMode::Full, &prev, &start);
        assert_eq!(canonical_table(), want_start);
        b.cleanup().expect("cleanup");
    });
}

/// A full sync removes per-service objects left by an earlier agent that
/// its own bookkeeping never knew, and restores a chain emptied behind its
/// back.
#[test]
fn full_sync_repairs_leftovers_and_drift() {
    require_netns!();
    let state = mixed();
    let want = fresh_full_table(&state);
    in_new_netns(|| {
        let mut b = NftablesBackend::new(&BackendOptions::default());
        b.setup(&node()).expect("setup");
        let leftovers = "\
add chain ip kube-proxy endpoint-AAAAAAAA-old/svc/tcp/p__10.9.9.9/80
add rule ip kube-proxy endpoint-AAAAAAAA-old/svc/tcp/p__10.9.9.9/80 meta l4proto tcp dnat to 10.9.9.9:80
add set ip kube-proxy affinity-AAAAAAAA-old/svc/tcp/p__10.9.9.9/80 { type ipv4_addr ; flags dynamic,timeout ; timeout 60s ; }
";
        cmd::run("nft", &["-f", "-"], Some(leftovers.as_bytes())).expect("leftovers");
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);
        assert_eq!(canonical_table(), want);

        cmd::run(
            "nft",
            &[
                "flush",
                "chain",
                "ip",
                "kube-proxy",
                "service-LY4HC3X6-ns1/plain/tcp/p80",
            ],
            None,
        )
        .expect("drift");
        sync(&mut b, 2, SyncMode::Full, &state, &state);
        assert_eq!(canonical_table(), want);
        b.cleanup().expect("cleanup");
    });
}

/// Serves one connection at a time, answering "hello"; bounded.
fn serve(listener: TcpListener) {
    std::thread::spawn(move || {
        for mut c in listener.incoming().take(16).flatten() {
            let _ = c.write_all(b"hello");
        }
    });
}

fn connect(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(700))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}

fn traffic_state() -> ProxyState {
    let mut state = ProxyState::default();
    let mut web = tcp("ns1", "web", [172, 30, 0, 41]);
    web.node_port = Some(30080);
    insert(&mut state, web, vec![ep([10, 0, 0, 5], 8080, true)]);
    insert(&mut state, tcp("ns1", "empty", [172, 30, 0, 42]), vec![]);
    state
}

#[test]
fn node_traffic_is_dnated_and_refused_without_endpoints() {
    require_netns!();
    in_new_netns(|| {
        plumb_node(&[Ipv4Addr::new(10, 0, 0, 5)]);
        serve(TcpListener::bind("10.0.0.5:8080").expect("listen on the endpoint"));
        let mut b = NftablesBackend::new(&BackendOptions::default());
        b.setup(&node()).expect("setup");
        sync(
            &mut b,
            1,
            SyncMode::Full,
            &ProxyState::default(),
            &traffic_state(),
        );

        assert_eq!(connect("172.30.0.41:80").expect("ClusterIP"), "hello");
        assert_eq!(connect("192.168.0.2:30080").expect("NodePort"), "hello");
        let refused = |addr: &str| {
            let err = connect(addr).expect_err("must be refused");
            assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{addr}: {err}");
        };
        refused("172.30.0.42:80");
        // A port the Service does not declare is refused, not DNATed.
        refused("172.30.0.41:81");
        b.cleanup().expect("cleanup");
    });
}

#[test]
fn no_reject_fault_makes_clients_time_out() {
    require_netns!();
    in_new_netns(|| {
        plumb_node(&[Ipv4Addr::new(10, 0, 0, 5)]);
        let mut b = NftablesBackend::new(&BackendOptions {
            faults: vec![Fault::NoReject],
            ..BackendOptions::default()
        });
        b.setup(&node()).expect("setup");
        sync(
            &mut b,
            1,
            SyncMode::Full,
            &ProxyState::default(),
            &traffic_state(),
        );
        let err = connect("172.30.0.42:80").expect_err("no endpoints");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        b.cleanup().expect("cleanup");
    });
}

#[test]
fn dump_dir_gets_each_transaction() {
    require_netns!();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dump");
    in_new_netns(|| {
        let mut b = NftablesBackend::new(&BackendOptions {
            dump_dir: Some(dir.clone()),
            ..BackendOptions::default()
        });
        b.setup(&node()).expect("setup");
        let state = traffic_state();
        sync(&mut b, 1, SyncMode::Full, &ProxyState::default(), &state);
        let mut next = state.clone();
        next.endpoints
            .values_mut()
            .next()
            .unwrap()
            .push(ep([10, 0, 0, 6], 8080, true));
        sync(&mut b, 2, SyncMode::Partial, &state, &next);
        b.cleanup().expect("cleanup");
    });
    let full = std::fs::read_to_string(dir.join("1-full.nft")).expect("1-full.nft");
    let partial = std::fs::read_to_string(dir.join("2-partial.nft")).expect("2-partial.nft");
    std::fs::remove_dir_all(&dir).expect("removing the dump dir");
    assert!(full.starts_with("add table ip kube-proxy"));
    // Two endpoints now: one DNAT through a numgen map of both.
    assert!(
        partial.contains("map { 0 : 10.0.0.5 . 8080, 1 : 10.0.0.6 . 8080 }"),
        "{partial}"
    );
    assert!(!partial.contains("add table"), "{partial}");
}
