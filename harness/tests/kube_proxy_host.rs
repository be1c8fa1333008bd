//! Upstream kube-proxy leaves the host alone. Each supported version that is
//! built (`ci/kube-proxy`) runs, in iptables and then nftables mode, inside a
//! throwaway namespace this test makes, with the configuration svclab
//! generates, against a stub API server inside that namespace that serves
//! one Node and no Services (so kube-proxy goes through its whole startup
//! and programs its empty ruleset). The host's links, addresses, routes,
//! iptables and nftables rulesets, conntrack and other sysctls kube-proxy may
//! write, and its usual files (the xtables lock, /run, /var/lib) are compared
//! before and after.
//!
//! Without a built kube-proxy the test skips, except under CI=true where it
//! fails: `ci/setup --kube-proxy` builds every supported version there.

mod common;

use common::host::{changed_since, diff, host_snapshot, strip_counters};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use svclab::kubeproxy::{self, KubeProxy, Mode, NodeConfig};
use svclab::netns::NetNs;
use svclab::scenario::AgentSettings;

const NODE: &str = "node-0";
const NODE_IP: &str = "172.18.0.2";
/// How long kube-proxy gets to reach its first completed sync.
const STARTUP_BUDGET: Duration = Duration::from_secs(30);

/// The namespace's own copies of the per-namespace sysctls kube-proxy may
/// write, to report what it changed there.
const NETNS_SYSCTLS: &[&str] = &[
    "/proc/sys/net/ipv4/conf/all/route_localnet",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal",
    "/proc/sys/net/netfilter/nf_conntrack_udp_timeout",
    "/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream",
    "/proc/sys/net/netfilter/nf_conntrack_max",
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv4/conf/all/arp_ignore",
    "/proc/sys/net/ipv4/conf/all/arp_announce",
];

// ---- a stub API server: one Node, no Services, no EndpointSlices ----------

fn node_json() -> String {
    format!(
        r#"{{"kind":"Node","apiVersion":"v1","metadata":{{"name":"{NODE}","uid":"6f1c1a4e-0000-4000-8000-000000000000","resourceVersion":"1","labels":{{"kubernetes.io/hostname":"{NODE}"}}}},"spec":{{"podCIDR":"10.244.0.0/24","podCIDRs":["10.244.0.0/24"]}},"status":{{"addresses":[{{"type":"InternalIP","address":"{NODE_IP}"}},{{"type":"Hostname","address":"{NODE}"}}]}}}}"#
    )
}

/// (kind, apiVersion) of the collection at `path`.
fn collection(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/api/v1/nodes" => Some(("Node", "v1")),
        "/api/v1/services" => Some(("Service", "v1")),
        "/apis/discovery.k8s.io/v1/endpointslices" => {
            Some(("EndpointSlice", "discovery.k8s.io/v1"))
        }
        "/apis/networking.k8s.io/v1/servicecidrs" => Some(("ServiceCIDR", "networking.k8s.io/v1")),
        _ => None,
    }
}

fn respond(stream: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        201 => "Created",
        _ => "Not Found",
    };
    write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn serve(stream: TcpStream, stop: Arc<AtomicBool>, requests: Arc<std::sync::Mutex<Vec<String>>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone a socket"));
    let mut stream = stream;
    while !stop.load(Ordering::Relaxed) {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => return,
        }
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        requests.lock().unwrap().push(format!("{method} {target}"));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let has = |kv: &str| query.split('&').any(|q| q == kv);
        let ok = match (method, collection(path)) {
            ("GET", Some((kind, api))) if has("watch=true") => {
                // A watch: the initial events (streaming list), the bookmark
                // that ends them, then nothing until the test stops.
                let mut events = String::new();
                if has("sendInitialEvents=true") {
                    if kind == "Node" {
                        events.push_str(&format!(
                            "{{\"type\":\"ADDED\",\"object\":{}}}\n",
                            node_json()
                        ));
                    }
                    events.push_str(&format!(
                        "{{\"type\":\"BOOKMARK\",\"object\":{{\"kind\":\"{kind}\",\"apiVersion\":\"{api}\",\"metadata\":{{\"resourceVersion\":\"1\",\"annotations\":{{\"k8s.io/initial-events-end\":\"true\"}}}}}}}}\n"
                    ));
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{events}"
                );
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            ("GET", Some((kind, api))) => {
                let items = if kind == "Node" {
                    node_json()
                } else {
                    String::new()
                };
                respond(
                    &mut stream,
                    200,
                    &format!(
                        r#"{{"kind":"{kind}List","apiVersion":"{api}","metadata":{{"resourceVersion":"1"}},"items":[{items}]}}"#
                    ),
                )
            }
            // Events: accepted as sent.
            ("POST", _) => respond(&mut stream, 201, &String::from_utf8_lossy(&body)),
            _ => respond(
                &mut stream,
                404,
                r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#,
            ),
        };
        if ok.is_err() {
            return;
        }
    }
}

struct Stub {
    stop: Arc<AtomicBool>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Stub {
    /// Listens on 127.0.0.1:6443 inside `ns`.
    fn start(ns: &NetNs) -> Stub {
        let listener = ns
            .run(|| TcpListener::bind("127.0.0.1:6443"))
            .expect("entering the test namespace")
            .expect("binding 127.0.0.1:6443 in the test namespace");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), requests.clone());
        let accept = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !s.load(Ordering::Relaxed) && conns.len() < 64 {
                match listener.accept() {
                    Ok((c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let (s, r) = (s.clone(), r.clone());
                        conns.push(std::thread::spawn(move || serve(c, s, r)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for c in conns {
                let _ = c.join();
            }
        });
        Stub {
            stop,
            requests,
            accept: Some(accept),
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

/// Deletes the namespace on every exit path.
struct NsGuard(NetNs);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = self.0.delete();
    }
}

fn in_ns(ns: &str, cmd: &[&str]) -> String {
    let o = common::in_netns(ns, cmd);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn netns_sysctls(ns: &str) -> BTreeMap<String, String> {
    NetNs::new(ns)
        .run(|| {
            NETNS_SYSCTLS
                .iter()
                .map(|p| {
                    let v = std::fs::read_to_string(p)
                        .map(|v| v.trim().to_string())
                        .unwrap_or_else(|e| format!("({})", e.kind()));
                    (p.to_string(), v)
                })
                .collect()
        })
        .expect("entering the test namespace")
}

/// The versions to run, or why not.
fn binaries() -> Result<Vec<(String, PathBuf)>, String> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for v in kubeproxy::SUPPORTED_VERSIONS {
        let path = kubeproxy::binary(v);
        if path.is_file() {
            found.push((v.to_string(), path));
        } else {
            missing.push(format!("{v} ({})", kubeproxy::build_command(v)));
        }
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci && !missing.is_empty() {
        panic!(
            "CI=true and kube-proxy is not built: {} (ci/setup --kube-proxy builds them)",
            missing.join(", ")
        );
    }
    if found.is_empty() {
        return Err(format!(
            "no kube-proxy built in {}: {}",
            kubeproxy::cache_dir().display(),
            missing.join(", ")
        ));
    }
    if !missing.is_empty() {
        eprintln!(
            "note: kube-proxy not built, not tested: {}",
            missing.join(", ")
        );
    }
    Ok(found)
}

/// Why the default kube-proxy version cannot run here, if it cannot
/// ([`binaries`] fails the run in CI when one is missing).
fn default_built() -> Result<(), String> {
    binaries()?;
    let version = kubeproxy::DEFAULT_VERSION;
    if !kubeproxy::binary(version).is_file() {
        return Err(format!("kube-proxy {version} is not built"));
    }
    Ok(())
}

/// Whether kube-proxy has programmed its (empty) ruleset in `ns`, for both
/// IP families (it runs one proxier per family).
fn programmed(ns: &str, mode: Mode) -> bool {
    programmed_text(mode, &ruleset(ns, mode))
}

fn ruleset(ns: &str, mode: Mode) -> String {
    match mode {
        Mode::Iptables => format!(
            "{}\n{}",
            strip_counters(&in_ns(ns, &["iptables-save"])),
            strip_counters(&in_ns(ns, &["ip6tables-save"]))
        ),
        _ => in_ns(ns, &["nft", "-s", "list", "ruleset"]),
    }
}

fn programmed_text(mode: Mode, ruleset: &str) -> bool {
    match mode {
        // One nat table per family, each with the services chain.
        Mode::Iptables => ruleset.matches(":KUBE-SERVICES - ").count() >= 2,
        Mode::Nftables => {
            ruleset.contains("table ip kube-proxy {") && ruleset.contains("table ip6 kube-proxy {")
        }
        Mode::Ipvs => unreachable!("ipvs needs IP_VS: VM mode only"),
    }
}

fn syncs_done(log: &str) -> usize {
    log.matches("\"SyncProxyRules complete\"").count()
}

/// One kube-proxy run; returns what it wrote inside the namespace.
async fn run_one(version: &str, binary: &Path, mode: Mode, case: usize) -> String {
    let ns = NetNs::new(format!("svclab-kpt{}-{case}", std::process::id()));
    let _ = ns.delete();
    ns.create().expect("creating the test namespace");
    let _ns_guard = NsGuard(ns.clone());
    let up = common::in_netns(&ns.name, &["ip", "link", "set", "lo", "up"]);
    assert!(up.status.success(), "{}", common::text(&up));
    let dir = std::env::temp_dir().join(format!(
        "svclab-test-kube-proxy-{}-{case}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join(format!("{NODE}.kubeconfig"));
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://127.0.0.1:6443\n\
         contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: node\ncurrent-context: lab\n\
         users:\n- name: node\n  user: {}\n",
    )
    .unwrap();
    let stub = Stub::start(&ns);
    let sysctls_before = netns_sysctls(&ns.name);
    let cfg = NodeConfig::new(
        mode,
        NODE,
        "10.244.0.0/16".parse().unwrap(),
        &kubeconfig,
        &AgentSettings::default(),
    );

    let mut kp = KubeProxy::start(binary, &cfg, &ns.name, &dir).expect("starting kube-proxy");
    let started = Instant::now();
    let mut exited = None;
    while started.elapsed() < STARTUP_BUDGET {
        if let Ok(Some(status)) = kp.child.try_wait() {
            exited = Some(status);
            break;
        }
        // One proxier per IP family, each logs its completed sync.
        if syncs_done(&std::fs::read_to_string(&kp.log).unwrap_or_default()) >= 2
            && programmed(&ns.name, mode)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let synced_after = started.elapsed();
    let log = std::fs::read_to_string(&kp.log).unwrap_or_default();
    let ruleset = ruleset(&ns.name, mode);
    let sysctls_after = netns_sysctls(&ns.name);
    let status = kp
        .stop(Duration::from_secs(5))
        .await
        .expect("stopping kube-proxy");
    let requests = stub.requests.lock().unwrap().clone();
    drop(stub);
    let mut paths: Vec<String> = requests
        .iter()
        .map(|r| r.split('?').next().unwrap_or("").to_string())
        .collect();
    paths.sort();
    paths.dedup();

    assert!(
        exited.is_none(),
        "kube-proxy {version} ({mode}) exited early with {exited:?}; log:\n{log}"
    );
    assert!(
        syncs_done(&log) >= 2 && programmed_text(mode, &ruleset),
        "kube-proxy {version} ({mode}) did not finish a sync within {STARTUP_BUDGET:?}; log:\n{log}"
    );
    for bad in [
        "strict decoding error",
        "unknown field",
        "Set sysctl",
        "Setting conntrack hashsize",
        "Setting nf_conntrack_max",
    ] {
        assert!(
            !log.contains(bad),
            "kube-proxy {version} ({mode}) logged {bad:?}:\n{log}"
        );
    }
    assert!(
        log.contains(&format!("\"Version info\" version=\"{version}\"")),
        "{log}"
    );
    // It asked for its own Node, by the name the configuration gave it.
    assert!(
        requests.iter().any(|r| r.starts_with("GET /api/v1/nodes?")
            && r.contains(&format!("fieldSelector=metadata.name%3D{NODE}"))),
        "{requests:?}"
    );

    let mut wrote = Vec::new();
    for (k, b) in &sysctls_before {
        let a = &sysctls_after[k];
        if a != b {
            wrote.push(format!("{k}: {b} -> {a}"));
        }
    }
    // iptables mode turns route_localnet on for localhost NodePorts, in its
    // own namespace (the host's value is checked by the caller).
    if mode == Mode::Iptables {
        assert_eq!(
            sysctls_after["/proc/sys/net/ipv4/conf/all/route_localnet"], "1",
            "{log}"
        );
    }
    let chains = ruleset
        .lines()
        .filter(|l| l.starts_with(':') || l.trim_start().starts_with("chain "))
        .count();
    let _ = std::fs::remove_dir_all(&dir);
    format!(
        "kube-proxy {version} {mode}: both families synced after {:.1} s, exit {status}; in the namespace: sysctls [{}], {chains} chains; API calls {paths:?}",
        synced_after.as_secs_f64(),
        wrote.join(", ")
    )
}

#[test]
fn kube_proxy_startup_leaves_the_host_unchanged() {
    require_root!();
    let binaries = match binaries() {
        Ok(b) => b,
        Err(why) => {
            common::skip(&why);
            return;
        }
    };
    let _lab = common::lab_lock();
    let start = SystemTime::now();
    let before = host_snapshot();
    // The snapshot sees something: the tools ran and the files were read.
    assert!(
        before["links"].contains("\"ifname\":\"lo\""),
        "{}",
        before["links"]
    );
    for (k, v) in &before {
        assert!(!v.contains("unavailable"), "{k}: {v}");
        if k.starts_with("/proc/") || k.starts_with("/sys/") {
            assert!(v.parse::<i64>().is_ok(), "{k} is unreadable: {v}");
        }
    }
    // One thread: kube-proxy's parent-death signal follows the thread that
    // started it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = Vec::new();
    let mut case = 0;
    for (version, binary) in &binaries {
        for mode in [Mode::Iptables, Mode::Nftables] {
            case += 1;
            report.push(rt.block_on(run_one(version, binary, mode, case)));
            let after = host_snapshot();
            let d = diff(&before, &after);
            assert!(
                d.is_empty(),
                "kube-proxy {version} ({mode}) changed the host:\n{d}"
            );
        }
    }
    let changed = changed_since(start, &[("/run", 2), ("/var/lib", 2), ("/etc", 1)]);
    for line in &report {
        eprintln!("{line}");
    }
    eprintln!("host paths modified during the test (by anything): {changed:?}");
    assert!(
        !changed
            .iter()
            .any(|p| p.contains("kube") || p.contains("xtables")),
        "kube-proxy left files on the host: {changed:?}"
    );
    assert!(
        common::lab_namespaces()
            .iter()
            .all(|n| !n.starts_with(&format!("svclab-kpt{}-", std::process::id())))
    );
}

/// A whole lab with kube-proxy in every node: `svclab up` with
/// `--backend kube-proxy:nftables`, then `svclab down`. The host's links,
/// addresses, routes, iptables (nft and legacy), nft ruleset, sysctls and
/// kube-proxy's usual files are the same while the lab runs and after it.
#[test]
fn a_lab_with_kube_proxy_leaves_the_host_unchanged() {
    require_root!();
    if let Err(why) = default_built() {
        common::skip(&why);
        return;
    }
    let _lab = common::lab_lock();
    let start = SystemTime::now();
    let before = host_snapshot();
    let up = common::run(&[
        "up",
        "scenarios/smoke.yaml",
        "--backend",
        "kube-proxy:nftables",
    ]);
    assert!(up.status.success(), "{}", common::text(&up));
    let run = common::run_id(&String::from_utf8_lossy(&up.stdout));
    let guard = common::LabGuard(run.clone());
    // kube-proxy runs in every node and has programmed its table there.
    let nodes: Vec<String> = common::run_namespaces(&run)
        .into_iter()
        .filter(|n| {
            n.rsplit_once("-node-")
                .is_some_and(|(head, i)| !head.contains('.') && i.parse::<u32>().is_ok())
                && n.starts_with(&format!("svclab-{run}-node-"))
        })
        .collect();
    assert!(!nodes.is_empty(), "no node namespaces for run {run}");
    for n in &nodes {
        let ruleset = in_ns(n, &["nft", "list", "table", "ip", "kube-proxy"]);
        assert!(
            ruleset.contains("chain services"),
            "{n}: no kube-proxy table:\n{ruleset}"
        );
    }
    let during = host_snapshot();
    let down = common::run(&["down", "--run", &run]);
    assert!(down.status.success(), "{}", common::text(&down));
    drop(guard);
    let after = host_snapshot();
    assert!(
        common::run_namespaces(&run).is_empty(),
        "namespaces left: {:?}",
        common::run_namespaces(&run)
    );
    let changed = changed_since(start, &[("/run", 2), ("/var/lib", 1), ("/etc", 1)]);
    let d1 = diff(&before, &during);
    assert!(
        d1.is_empty(),
        "the host changed while the lab ran:\n{d1}\nfiles changed: {changed:?}"
    );
    let d2 = diff(&before, &after);
    assert!(
        d2.is_empty(),
        "the host changed after the lab:\n{d2}\nfiles changed: {changed:?}"
    );
}

/// `svclab trace --family ipv6` follows an IPv6 probe through kube-proxy's
/// IPv6 proxier: the marking table is `ip6`, the path names the Service's
/// chain in `mode`'s IPv6 ruleset, the DNAT is to the IPv6 endpoint that
/// answered, and no marking table is left behind.
fn trace_ipv6(mode: &str, run: &str, vip: &str) {
    let out = common::run(&[
        "trace",
        "-o",
        "json",
        "--run",
        run,
        "--from",
        "pod/svclab-system/client-node-0",
        "--to",
        "web:80",
        "--family",
        "ipv6",
    ]);
    assert!(out.status.success(), "{mode}: {}", common::text(&out));
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["to"]["address"], format!("[{vip}]:80"), "{mode}: {t:#}");
    assert!(
        t["client"]
            .as_str()
            .unwrap()
            .starts_with("[fd00:10:244::2]:"),
        "{mode}: {t:#}"
    );
    let a = &t["answeredBy"];
    let answered = format!("[{}]:{}", a["ip"].as_str().unwrap(), a["port"]);
    assert_eq!(t["dnat"].as_str(), Some(answered.as_str()), "{mode}: {t:#}");
    let path: Vec<&str> = t["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let chain = if mode.ends_with("nftables") {
        "service-"
    } else {
        "KUBE-SVC-"
    };
    assert!(
        path.iter().any(|c| c.starts_with(chain)),
        "{mode}: {path:?}"
    );
    let tables: Vec<&str> = t["nodes"][0]["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["table"].as_str().unwrap())
        .collect();
    assert!(
        !tables.is_empty() && tables.iter().all(|t| t.starts_with("ip6 ")),
        "{mode}: {tables:?}"
    );
    let left = in_ns(&format!("svclab-{run}-node-0"), &["nft", "list", "tables"]);
    assert!(!left.contains("svclab-trace-"), "{mode}: {left}");
}

/// Issue 18: upstream kube-proxy, in a dual-stack lab, runs a proxier per
/// family: a PreferDualStack Service's IPv6 ClusterIP reaches both of its
/// pods over IPv6 (the pod sees the client's own IPv6 address), its IPv4
/// one still works, in iptables and nftables mode, and the host is the
/// same after.
#[test]
fn upstream_kube_proxy_serves_ipv6_cluster_ips_in_a_dual_stack_lab() {
    require_root!();
    if let Err(why) = default_built() {
        common::skip(&why);
        return;
    }
    let _lab = common::lab_lock();
    let before = host_snapshot();
    for mode in ["kube-proxy:iptables", "kube-proxy:nftables"] {
        let up = common::run(&[
            "up",
            "harness/tests/fixtures/dualstack.yaml",
            "--backend",
            mode,
        ]);
        assert!(up.status.success(), "{mode}: {}", common::text(&up));
        let run = common::run_id(&String::from_utf8_lossy(&up.stdout));
        let guard = common::LabGuard(run.clone());
        let node0 = format!("svclab-{run}-node-0");
        let kubeconfig = format!("/run/svclab/{run}/kubeconfig-node-0");
        let ips = in_ns(
            &node0,
            &[
                "kubectl",
                "--kubeconfig",
                &kubeconfig,
                "get",
                "svc",
                "web",
                "-o",
                "jsonpath={.spec.clusterIPs}",
            ],
        );
        let ips: Vec<String> =
            serde_json::from_str(ips.trim()).unwrap_or_else(|e| panic!("{mode}: {e}: {ips}"));
        assert_eq!(ips.len(), 2, "{mode}: {ips:?}");
        assert!(ips[1].starts_with("fd00:10:96::"), "{mode}: {ips:?}");
        let client = format!("svclab-{run}-svclab-system.client-node-0");
        let mut pods = BTreeSet::new();
        // Bounded: at most 40 connections, 3 s each.
        for _ in 0..40 {
            let url = format!("http://[{}]:80/whoami", ips[1]);
            let who = in_ns(&client, &["curl", "-sS", "-g", "--max-time", "3", &url]);
            let w: serde_json::Value =
                serde_json::from_str(&who).unwrap_or_else(|e| panic!("{mode}: {e}: {who}"));
            assert!(
                w["ip"].as_str().unwrap().starts_with("fd00:10:244:"),
                "{mode}: {who}"
            );
            assert!(
                w["peer"].as_str().unwrap().starts_with("[fd00:10:244::2]:"),
                "{mode}: {who}"
            );
            pods.insert(w["pod"].as_str().unwrap().to_string());
            if pods.len() == 2 {
                break;
            }
        }
        assert_eq!(
            pods.len(),
            2,
            "{mode}: only {pods:?} answered on the IPv6 ClusterIP"
        );
        let url = format!("http://{}:80/hostname", ips[0]);
        let host = in_ns(&client, &["curl", "-sS", "--max-time", "3", &url]);
        assert!(host.starts_with("web-"), "{mode}: {host}");
        trace_ipv6(mode, &run, &ips[1]);
        let down = common::run(&["down", "--run", &run]);
        assert!(down.status.success(), "{}", common::text(&down));
        drop(guard);
    }
    let d = diff(&before, &host_snapshot());
    assert!(
        d.is_empty(),
        "the host changed after the dual-stack labs:\n{d}"
    );
}
