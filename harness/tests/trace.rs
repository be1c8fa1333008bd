//! `svclab trace` in a running smoke lab: the path the kernel reports names
//! kube-proxy's chains for the Service and the endpoint that answered, for
//! the iptables and nftables backends, from a pod to a ClusterIP and from
//! outside to a NodePort. Needs root; skips with the reason otherwise.

mod common;

use std::net::SocketAddrV4;

use data_encoding::BASE32;
use serde_json::Value;
use sha2::{Digest, Sha256};
use svclab_backends::BackendKind;
use svclab_backends::model::{Endpoint, Protocol, ServicePortName};

use common::LabGuard;

/// kube-proxy's iptables chain hash: base32(sha256(text))[..16].
fn iptables_hash(text: &str) -> String {
    BASE32.encode(&Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// kube-proxy's nftables name: base32(sha256(name))[..8] + "-" + name.
fn nft_name(name: &str) -> String {
    format!(
        "{}-{name}",
        &BASE32.encode(&Sha256::digest(name.as_bytes()))[..8]
    )
}

fn up(backend: &str) -> Option<LabGuard> {
    if let Err(e) = backend.parse::<BackendKind>().unwrap().capability() {
        common::skip(&format!("backend {backend} cannot run here: {}", e.reason));
        return None;
    }
    let out = common::run(&["up", "scenarios/smoke.yaml", "--backend", backend]);
    assert!(out.status.success(), "{}", common::text(&out));
    Some(LabGuard(common::run_id(&String::from_utf8_lossy(
        &out.stdout,
    ))))
}

fn trace(run: &str, args: &[&str]) -> Value {
    let mut all = vec!["trace", "-o", "json", "--run", run];
    all.extend_from_slice(args);
    let out = common::run(&all);
    assert!(out.status.success(), "{}", common::text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", common::text(&out)))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// `want` appear in `path` in this order (other chains may come between).
fn in_order(path: &[String], want: &[&str]) -> bool {
    let mut it = path.iter();
    want.iter().all(|w| it.any(|p| p == w))
}

/// The endpoint that answered, as its pod and address.
fn answered(t: &Value) -> (String, SocketAddrV4) {
    let a = &t["answeredBy"];
    assert!(a.is_object(), "no answer: {t:#}");
    let pod = a["pod"].as_str().unwrap().to_string();
    let addr = SocketAddrV4::new(
        a["ip"].as_str().unwrap().parse().unwrap(),
        a["port"].as_u64().unwrap() as u16,
    );
    (pod, addr)
}

/// Every rule text the trace matched.
fn rules(t: &Value) -> Vec<String> {
    t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["hooks"].as_array().unwrap())
        .flat_map(|h| h["steps"].as_array().unwrap())
        .filter_map(|s| s["rule"].as_str().map(str::to_string))
        .collect()
}

fn hooks(t: &Value, node: usize) -> Vec<String> {
    t["nodes"][node]["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hook"].as_str().unwrap().to_string())
        .collect()
}

fn no_trace_table_left(run: &str) {
    for n in ["node-0", "node-1"] {
        let out = common::in_netns(&format!("svclab-{run}-{n}"), &["nft", "list", "tables"]);
        let tables = String::from_utf8_lossy(&out.stdout);
        assert!(
            !tables.contains(&format!("svclab-trace-{run}")),
            "{n}: {tables}"
        );
    }
}

/// The probe most tests trace: the first node's client pod to web:80.
const CLIENT_TO_WEB: [&str; 4] = [
    "--from",
    "pod/svclab-system/client-node-0",
    "--to",
    "web:80",
];

#[test]
fn iptables_trace_names_kube_proxy_chains() {
    require_root!();
    let _lock = common::lab_lock();
    let Some(lab) = up("iptables") else { return };
    let run = lab.0.clone();

    let t = trace(&run, &CLIENT_TO_WEB);
    let (pod, ep) = answered(&t);
    assert!(pod.starts_with("default/web-"), "{pod}");
    let svc = format!("KUBE-SVC-{}", iptables_hash("default/web:httptcp"));
    let sep = format!(
        "KUBE-SEP-{}",
        iptables_hash(&format!("default/web:httptcp{ep}"))
    );
    // The same names as the backend's own.
    let spn = ServicePortName::new("default", "web", "http", Protocol::Tcp);
    assert_eq!(
        svclab_backends::iptables::names::ServiceChains::new(&spn)
            .svc()
            .to_string(),
        svc
    );
    let endpoint = Endpoint {
        ip: std::net::IpAddr::V4(*ep.ip()),
        port: ep.port(),
        ready: true,
        serving: true,
        terminating: false,
        node_name: None,
        is_local: false,
        hints: Default::default(),
    };
    assert_eq!(
        svclab_backends::iptables::names::endpoint_chain(&spn, &endpoint).to_string(),
        sep
    );
    let path = strings(&t["path"]);
    assert!(
        in_order(
            &path,
            &[
                "PREROUTING",
                "KUBE-SERVICES",
                &svc,
                &sep,
                "KUBE-POSTROUTING"
            ]
        ),
        "{path:?}"
    );
    assert_eq!(t["dnat"].as_str(), Some(ep.to_string().as_str()), "{t:#}");
    assert!(t["snat"].is_null(), "a pod's source is kept: {t:#}");
    assert_eq!(hooks(&t, 0)[0], "prerouting");
    assert!(
        rules(&t)
            .iter()
            .any(|r| r.contains(&format!("dnat to {ep}"))),
        "{:?}",
        rules(&t)
    );
    let ct = &t["nodes"][0]["conntrack"][0];
    assert_eq!(ct["original"]["dst"], "10.96.0.11:80", "{t:#}");
    assert_eq!(ct["reply"]["src"].as_str(), Some(ep.to_string().as_str()));

    // UDP too.
    let t = trace(
        &run,
        &[
            "--from",
            "pod/svclab-system/client-node-1",
            "--to",
            "dns:53",
            "--proto",
            "udp",
        ],
    );
    let (_, ep) = answered(&t);
    let path = strings(&t["path"]);
    let svc = format!("KUBE-SVC-{}", iptables_hash("default/dns:dnsudp"));
    let sep = format!(
        "KUBE-SEP-{}",
        iptables_hash(&format!("default/dns:dnsudp{ep}"))
    );
    assert!(in_order(&path, &["KUBE-SERVICES", &svc, &sep]), "{path:?}");

    // NodePort from outside: KUBE-NODEPORTS, KUBE-EXT, masquerade.
    let t = trace(&run, &["--from", "external", "--to", "web-nodeport:30080"]);
    answered(&t);
    assert_eq!(t["to"]["address"], "172.18.0.2:30080");
    let ext = format!("KUBE-EXT-{}", iptables_hash("default/web-nodeport:httptcp"));
    let path = strings(&t["path"]);
    assert!(
        in_order(
            &path,
            &[
                "KUBE-SERVICES",
                "KUBE-NODEPORTS",
                &ext,
                "KUBE-MARK-MASQ",
                "KUBE-POSTROUTING"
            ]
        ),
        "{path:?}"
    );
    assert!(
        rules(&t).iter().any(|r| r.starts_with("masquerade")),
        "{:?}",
        rules(&t)
    );
    let snat = t["snat"]
        .as_str()
        .expect("SNAT for externalTrafficPolicy Cluster");
    assert!(
        snat.starts_with("172.18.0.2:") || snat.starts_with("10.244.0.1:"),
        "{snat}"
    );

    no_trace_table_left(&run);
}

#[test]
fn nftables_trace_names_maps_and_chains() {
    require_root!();
    let _lock = common::lab_lock();
    let Some(lab) = up("nftables") else { return };
    let run = lab.0.clone();

    let t = trace(&run, &CLIENT_TO_WEB);
    let (pod, ep) = answered(&t);
    assert!(pod.starts_with("default/web-"), "{pod}");
    let svc = format!("service-{}", nft_name("default/web/tcp/http"));
    let path = strings(&t["path"]);
    assert!(
        in_order(&path, &["nat-prerouting", "services", &svc]),
        "{path:?}"
    );
    // kube-proxy's current layout: the service chain DNATs through a numgen
    // map of the endpoints (no endpoint chains without affinity).
    assert!(
        rules(&t).iter().any(|r| r.contains("numgen random mod 3")),
        "{:?}",
        rules(&t)
    );
    assert!(
        rules(&t).iter().any(|r| r.contains("vmap @service-ips")),
        "{:?}",
        rules(&t)
    );
    assert_eq!(t["dnat"].as_str(), Some(ep.to_string().as_str()), "{t:#}");
    assert!(t["snat"].is_null(), "{t:#}");

    let t = trace(&run, &["--from", "external", "--to", "web-nodeport:8080"]);
    answered(&t);
    assert_eq!(
        t["to"]["address"], "172.18.0.2:30080",
        "a Service port from outside is its NodePort"
    );
    let ext = format!("external-{}", nft_name("default/web-nodeport/tcp/http"));
    let path = strings(&t["path"]);
    assert!(
        in_order(&path, &["services", &ext, "masquerading"]),
        "{path:?}"
    );
    assert!(
        rules(&t)
            .iter()
            .any(|r| r.contains("vmap @service-nodeports")),
        "{:?}",
        rules(&t)
    );
    assert!(
        t["snat"].is_string(),
        "SNAT for externalTrafficPolicy Cluster: {t:#}"
    );

    no_trace_table_left(&run);
}

#[test]
fn a_refused_probe_still_shows_its_path() {
    require_root!();
    let _lock = common::lab_lock();
    let Some(lab) = up("iptables") else { return };
    let run = lab.0.clone();
    let out = common::run(&[
        "trace",
        "--json",
        "--run",
        &run,
        "--from",
        "node/node-1",
        "--to",
        "empty:80",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", common::text(&out));
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["probe"]["outcome"], "refused", "{t:#}");
    assert_eq!(hooks(&t, 0)[0], "output", "the node's own traffic: {t:#}");
    assert!(
        rules(&t).iter().any(|r| r.contains("reject")),
        "{:?}",
        rules(&t)
    );
    no_trace_table_left(&run);
}

#[test]
fn iptables_legacy_trace_follows_rule_counters() {
    require_root!();
    let _lock = common::lab_lock();
    let Some(lab) = up("iptables-legacy") else {
        return;
    };
    let run = lab.0.clone();
    let t = trace(&run, &CLIENT_TO_WEB);
    let (_, ep) = answered(&t);
    let svc = format!("KUBE-SVC-{}", iptables_hash("default/web:httptcp"));
    let sep = format!(
        "KUBE-SEP-{}",
        iptables_hash(&format!("default/web:httptcp{ep}"))
    );
    let path = strings(&t["path"]);
    assert!(
        in_order(
            &path,
            &[
                "PREROUTING",
                "KUBE-SERVICES",
                &svc,
                &sep,
                "KUBE-POSTROUTING"
            ]
        ),
        "{path:?}"
    );
    assert_eq!(t["dnat"].as_str(), Some(ep.to_string().as_str()), "{t:#}");
    no_trace_table_left(&run);
}

#[test]
fn ebpf_trace_shows_map_entries() {
    require_root!();
    let _lock = common::lab_lock();
    let Some(lab) = up("ebpf") else { return };
    let run = lab.0.clone();
    let t = trace(&run, &CLIENT_TO_WEB);
    let (_, ep) = answered(&t);
    let bpf = &t["nodes"][0]["bpf"];
    assert_eq!(bpf["service"]["key"], "10.96.0.11:80/TCP", "{t:#}");
    assert!(
        strings(&bpf["service"]["clusterEndpoints"]).contains(&ep.to_string()),
        "{t:#}"
    );
    let flows = bpf["flows"].as_array().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["kind"] == "dnat" && f["rewriteTo"] == ep.to_string().as_str()),
        "{t:#}"
    );
    assert_eq!(t["dnat"].as_str(), Some(ep.to_string().as_str()), "{t:#}");
    no_trace_table_left(&run);
}

/// A recorded trace (iptables, pod to ClusterIP) renders as text and as
/// an HTML fragment for reports; needs no root.
#[test]
fn recorded_trace_renders() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trace-iptables.json");
    let t: svclab::trace::Trace =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let text = svclab::trace::text(&t);
    for want in [
        "answered by default/web-0 (10.244.0.3:8080)",
        "DNAT to 10.244.0.3:8080",
        "source kept (no SNAT)",
        "KUBE-SVC-CDGGSHYLG3RE2FKL",
        "prerouting  ip nat PREROUTING [10.244.0.2:",
        "conntrack: tcp",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    let html = svclab::trace::html(&t);
    assert!(html.starts_with("<details class=\"trace\">"), "{html}");
    assert!(html.contains("KUBE-SVC-CDGGSHYLG3RE2FKL"), "{html}");
    assert!(
        html.contains("-&gt;") && !html.contains("->"),
        "unescaped: {html}"
    );
    let again: svclab::trace::Trace =
        serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(svclab::trace::text(&again), text);
}
