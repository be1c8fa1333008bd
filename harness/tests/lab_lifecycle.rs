//! The lab's safety: it leaves the host's own network namespace exactly as
//! it found it, removes what it made on every exit path, and never touches
//! another run's objects.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::host::{diff, host_snapshot};

/// Everything about the host that a lab could change ([`host_snapshot`]),
/// and the namespaces under /run/netns.
fn snapshot() -> BTreeMap<String, String> {
    let mut s = host_snapshot();
    let mut netns: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    netns.sort();
    s.insert("netns".into(), netns.join("\n"));
    s
}

#[test]
fn up_and_down_leave_the_host_namespace_identical() {
    require_root!();
    let _lab = common::lab_lock();
    let before = snapshot();
    let up = common::run(&["up", "scenarios/smoke.yaml", "--backend", "iptables"]);
    assert!(up.status.success(), "{}", common::text(&up));
    let run = common::run_id(&String::from_utf8_lossy(&up.stdout));
    let _guard = common::LabGuard(run.clone());
    assert!(
        common::run_namespaces(&run).len() >= 9,
        "the lab's namespaces exist while it is up"
    );
    // Inside, the ICMP limits that would turn a burst of REJECTs into
    // timeouts are lifted (per namespace on this kernel).
    for (key, want) in [
        ("net.ipv4.icmp_ratelimit", "0"),
        ("net.ipv4.icmp_msgs_burst", "100000"),
    ] {
        let ns = format!("svclab-{run}-node-0");
        let got = common::host::cmd_text(&["ip", "netns", "exec", &ns, "sysctl", "-n", key]);
        assert_eq!(got.trim(), want, "{key} in {ns}");
    }
    let during = snapshot();
    let down = common::run(&["down", "--run", &run]);
    assert!(down.status.success(), "{}", common::text(&down));
    let after = snapshot();
    assert!(
        common::run_namespaces(&run).is_empty(),
        "namespaces left: {:?}",
        common::run_namespaces(&run)
    );
    // Only /run/netns entries differ while the lab is up; nothing else.
    let strip_netns = |s: &BTreeMap<String, String>| {
        let mut s = s.clone();
        s.remove("netns");
        s
    };
    let d1 = diff(&strip_netns(&before), &strip_netns(&during));
    assert!(
        d1.is_empty(),
        "the lab changed the host namespace while up:\n{d1}"
    );
    let d2 = diff(&before, &after);
    assert!(
        d2.is_empty(),
        "the host namespace differs after up/down:\n{d2}"
    );
}

#[test]
fn a_bad_scenario_exits_2_names_the_place_and_creates_nothing() {
    require_root!();
    // It compares the host's lab namespaces before and after: no other
    // lab test may be bringing one up meanwhile.
    let _lab = common::lab_lock();
    let dir = common::results_dir("bad-scenario");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n  podCIDR: 10.244.0.0/16\n  serviceCIDR: 10.244.0.0/20\n",
    )
    .unwrap();
    let before = common::lab_namespaces();
    let out = common::run(&["up", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml:6:16: Lab: spec.serviceCIDR"),
        "{err}"
    );
    assert!(err.contains("overlaps spec.podCIDR"), "{err}");
    assert_eq!(common::lab_namespaces(), before);
    let out = common::run(&["run", bad.to_str().unwrap(), "--backend", "none"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
}

/// Starts `svclab up --foreground` and waits for READY; returns the child
/// and the run id.
fn up_foreground(backend: &str) -> (std::process::Child, String) {
    let mut child = common::svclab()
        .args([
            "up",
            "--foreground",
            "scenarios/smoke.yaml",
            "--backend",
            backend,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn svclab up");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a READY line").expect("read");
    let run = first
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("not READY: {first}"))
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    (child, run)
}

fn wait_exit(
    child: &mut std::process::Child,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn ctrl_c_and_sigterm_remove_the_lab() {
    require_root!();
    let _lab = common::lab_lock();
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let (mut child, run) = up_foreground("none");
        let _guard = common::LabGuard(run.clone());
        assert!(!common::run_namespaces(&run).is_empty());
        unsafe { libc::kill(child.id() as i32, sig) };
        let status =
            wait_exit(&mut child, Duration::from_secs(30)).expect("svclab exits after the signal");
        assert_eq!(status.code(), Some(code));
        assert!(
            common::run_namespaces(&run).is_empty(),
            "signal {sig}: left {:?}",
            common::run_namespaces(&run)
        );
        assert!(!std::path::Path::new(&format!("/run/svclab/{run}")).exists());
    }
}

#[test]
fn cleanup_removes_a_sigkilled_run_and_leaves_live_runs_alone() {
    require_root!();
    let _lab = common::lab_lock();
    let (mut killed, dead_run) = up_foreground("none");
    let _g1 = common::LabGuard(dead_run.clone());
    let (mut live, live_run) = up_foreground("none");
    let _g2 = common::LabGuard(live_run.clone());
    assert_ne!(dead_run, live_run, "two runs at once get different ids");
    unsafe { libc::kill(killed.id() as i32, libc::SIGKILL) };
    wait_exit(&mut killed, Duration::from_secs(10)).expect("killed");
    assert!(
        !common::run_namespaces(&dead_run).is_empty(),
        "a SIGKILLed run leaves its namespaces"
    );

    let out = common::run(&["cleanup"]);
    assert!(out.status.success(), "{}", common::text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("run {live_run}: left alone")),
        "{said}"
    );
    assert!(
        common::run_namespaces(&dead_run).is_empty(),
        "cleanup left {:?}",
        common::run_namespaces(&dead_run)
    );
    assert!(
        !common::run_namespaces(&live_run).is_empty(),
        "cleanup touched a live run"
    );
    // No process of the killed run survives (agents and workloads die with it).
    let stale: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
        .filter(|c| {
            c.contains(&format!("sl{dead_run}")) || c.contains(&format!("--run\0{dead_run}"))
        })
        .collect();
    assert!(stale.is_empty(), "{stale:?}");

    let out = common::run(&["down", "--run", &live_run]);
    assert!(out.status.success(), "{}", common::text(&out));
    wait_exit(&mut live, Duration::from_secs(30)).expect("the live run's owner exits on down");
    assert!(common::run_namespaces(&live_run).is_empty());
}

#[test]
fn a_panic_tears_the_lab_down() {
    require_root!();
    let _lab = common::lab_lock();
    let out = common::svclab()
        .args(["up", "--foreground", "scenarios/smoke.yaml"])
        .env("SVCLAB_TEST_PANIC_AFTER_UP", "1")
        .output()
        .expect("run");
    assert!(!out.status.success(), "{}", common::text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("READY "))
        .unwrap_or_else(|| panic!("{}", common::text(&out)))
        .to_string();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        common::text(&out)
    );
    assert!(
        common::run_namespaces(&run).is_empty(),
        "panic left {:?}",
        common::run_namespaces(&run)
    );
}

/// Issue 18: a dual-stack lab gives every namespace its IPv6 address,
/// usable at once (no tentative address), routes IPv6 between nodes'
/// pods, serves both families from each pod, lifts the ICMPv6 rate limit
/// inside, and leaves the host namespace as it was.
#[test]
fn a_dual_stack_lab_routes_ipv6_and_leaves_the_host_alone() {
    require_root!();
    let _lab = common::lab_lock();
    let before = snapshot();
    let up = common::run(&["up", "harness/tests/fixtures/dualstack.yaml"]);
    assert!(up.status.success(), "{}", common::text(&up));
    let run = common::run_id(&String::from_utf8_lossy(&up.stdout));
    let _guard = common::LabGuard(run.clone());
    let ns = |n: &str| format!("svclab-{run}-{n}");
    for n in ["node-0", "default.web-1", "external"] {
        let addrs = common::host::cmd_text(&["ip", "-n", &ns(n), "-6", "addr"]);
        assert!(
            addrs.contains("inet6 fd00:"),
            "{n} has no IPv6 address:\n{addrs}"
        );
        assert!(!addrs.contains("tentative"), "{n} waits on DAD:\n{addrs}");
    }
    for (key, want) in [
        ("net.ipv6.icmp.ratelimit", "0"),
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.default.accept_dad", "0"),
    ] {
        let got =
            common::host::cmd_text(&["ip", "netns", "exec", &ns("node-0"), "sysctl", "-n", key]);
        assert_eq!(got.trim(), want, "{key} in node-0");
    }
    // web-1 is on node-1 (fd00:10:244:1::3); the client on node-0 reaches
    // it over IPv6, and it answers with its IPv6 address and the client's.
    let curl = |from: &str, url: &str| {
        common::host::cmd_text(&[
            "ip",
            "netns",
            "exec",
            &ns(from),
            "curl",
            "-sS",
            "-g",
            "--max-time",
            "5",
            url,
        ])
    };
    let who = curl(
        "svclab-system.client-node-0",
        "http://[fd00:10:244:1::3]:8080/whoami",
    );
    let w: serde_json::Value = serde_json::from_str(&who).unwrap_or_else(|e| panic!("{e}: {who}"));
    assert_eq!(w["pod"], "default/web-1", "{who}");
    assert_eq!(w["ip"], "fd00:10:244:1::3", "{who}");
    assert!(
        w["peer"].as_str().unwrap().starts_with("[fd00:10:244::2]:"),
        "{who}"
    );
    // IPv4 still answers, with the IPv4 address.
    let who = curl(
        "svclab-system.client-node-0",
        "http://10.244.1.3:8080/whoami",
    );
    assert!(who.contains("\"ip\":\"10.244.1.3\""), "{who}");
    // A node reaches another node's pods over IPv6 (host-gw routes).
    let host = curl("node-0", "http://[fd00:10:244:1::3]:8080/hostname");
    assert_eq!(host, "web-1");
    let during = snapshot();
    let down = common::run(&["down", "--run", &run]);
    assert!(down.status.success(), "{}", common::text(&down));
    let after = snapshot();
    let strip = |s: &BTreeMap<String, String>| {
        let mut s = s.clone();
        s.remove("netns");
        s
    };
    let d = diff(&strip(&before), &strip(&during));
    assert!(
        d.is_empty(),
        "the lab changed the host namespace while up:\n{d}"
    );
    let d = diff(&before, &after);
    assert!(d.is_empty(), "the host differs after up/down:\n{d}");
}
