//! Agents under `svclab up` are supervised like kube-proxy under a kubelet:
//! one that dies is reported at once and restarted with backoff, its new
//! pid recorded, its node's rules converging again; a failing
//! `iptables-restore` is retried with backoff and counted, and the agent
//! stays up. `/metrics` listens on loopback only, `/healthz` on every
//! address, as kube-proxy's defaults.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn curl(ns: &str, url: &str) -> (u16, String) {
    let out = common::in_netns(ns, &["curl", "-s", "-m", "3", "-w", "\n%{http_code}", url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn have_curl() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
}

/// `name{node="..."} value` from a /metrics text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `svclab up --foreground`, stderr into a file; returns the child, the
/// run id and the stderr file.
fn up(backend: &str, env: &[(&str, String)], name: &str) -> (Child, String, PathBuf) {
    let err =
        std::env::temp_dir().join(format!("svclab-test-{name}-{}.stderr", std::process::id()));
    let mut cmd = common::svclab();
    cmd.args([
        "up",
        "--foreground",
        "scenarios/smoke.yaml",
        "--backend",
        backend,
    ])
    .stdout(Stdio::piped())
    .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn svclab up");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = match lines.next() {
        Some(Ok(l)) => l,
        other => {
            let _ = child.kill();
            panic!(
                "no READY line ({other:?}); stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            )
        }
    };
    let run = first
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("not READY: {first}"))
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    (child, run, err)
}

fn state(run: &str) -> serde_json::Value {
    let raw = std::fs::read(format!("/run/svclab/{run}/state.json")).expect("state.json");
    serde_json::from_slice(&raw).expect("state.json parses")
}

/// (pid, role) of every process in the run's state.json.
fn processes(run: &str) -> Vec<(u64, String)> {
    state(run)["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_u64().unwrap(),
                p["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn agent_pid(run: &str, node: &str) -> Option<u64> {
    processes(run)
        .into_iter()
        .find(|(_, r)| r == &format!("agent {node}"))
        .map(|(p, _)| p)
}

fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut child: Child, run: &str) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "svclab up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(143), "SIGTERM: exit code 128+15");
    assert!(
        common::run_namespaces(run).is_empty(),
        "left {:?}",
        common::run_namespaces(run)
    );
}

/// The node's KUBE-* nat rules, as iptables-nft-save shows them.
fn kube_rules(ns: &str) -> Vec<String> {
    let out = common::in_netns(ns, &["iptables-nft-save", "-t", "nat"]);
    let mut rules: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A KUBE-"))
        .map(String::from)
        .collect();
    rules.sort();
    rules
}

#[test]
fn a_killed_agent_is_reported_restarted_and_its_rules_converge() {
    require_root!();
    if !have_curl() {
        common::skip("curl is not installed (ci/setup installs it)");
        return;
    }
    let _lab = common::lab_lock();
    let (child, run, err) = up("iptables", &[], "killed-agent");
    let _guard = common::LabGuard(run.clone());
    let node_ns = format!("svclab-{run}-node-1");
    let ext = format!("svclab-{run}-external");
    let node_ip = "172.18.0.3";

    // kube-proxy's addresses: /metrics on loopback only, /healthz on all.
    let (code, _) = curl(&node_ns, "http://127.0.0.1:10249/metrics");
    assert_eq!(code, 200, "metrics on 127.0.0.1:10249");
    let (code, _) = curl(&node_ns, &format!("http://{node_ip}:10249/metrics"));
    assert_eq!(code, 0, "metrics must not answer on the node IP");
    let (code, _) = curl(&ext, &format!("http://{node_ip}:10249/metrics"));
    assert_eq!(code, 0, "metrics must not answer from outside the node");
    let (code, body) = curl(&ext, &format!("http://{node_ip}:10256/healthz"));
    assert_eq!(code, 200, "healthz from outside the node: {body}");

    let rules_before = kube_rules(&node_ns);
    assert!(rules_before.len() > 10, "{rules_before:?}");
    let old = agent_pid(&run, "node-1").expect("agent node-1 in state.json");
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let killed_at = Instant::now();

    // Reported at once: stderr and state.json (no live "agent node-1"
    // entry with the dead pid).
    let said = wait_for(Duration::from_secs(2), || {
        let text = std::fs::read_to_string(&err).unwrap_or_default();
        text.contains(&format!("agent node-1 (pid {old}) exited"))
            .then_some(text)
    });
    assert!(
        said.is_some(),
        "no report on stderr within 2 s:\n{}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let recorded_dead = wait_for(Duration::from_secs(3), || {
        processes(&run)
            .into_iter()
            .find(|(p, r)| *p == old && r.contains("exited"))
    });
    let restarted = wait_for(Duration::from_secs(15), || {
        agent_pid(&run, "node-1").filter(|p| *p != old)
    })
    .unwrap_or_else(|| {
        panic!(
            "no restarted agent in state.json: {:?}\n{}",
            processes(&run),
            std::fs::read_to_string(&err).unwrap_or_default()
        )
    });
    let waited = killed_at.elapsed();
    assert!(
        recorded_dead.is_some() || waited < Duration::from_millis(900),
        "state.json never showed the dead agent as exited"
    );
    assert!(
        waited >= Duration::from_millis(900),
        "restarted after {waited:?}: before the 1 s backoff"
    );
    assert!(
        Path::new(&format!("/proc/{restarted}")).exists(),
        "the recorded pid {restarted} runs"
    );
    assert!(
        !processes(&run).iter().any(|(p, _)| *p == old),
        "the dead pid is gone from state.json: {:?}",
        processes(&run)
    );
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        text.contains(&format!("agent node-1: restart 1 as pid {restarted}")),
        "{text}"
    );

    // The new agent syncs what the control plane holds: the node's rules
    // and its health are back.
    let synced = wait_for(Duration::from_secs(20), || {
        let (code, body) = curl(&node_ns, "http://127.0.0.1:10249/metrics");
        (code == 200 && metric(&body, "svclab_agent_syncs_total").unwrap_or(0.0) >= 1.0)
            .then_some(body)
    })
    .expect("the restarted agent synced");
    assert_eq!(metric(&synced, "svclab_agent_sync_errors_total"), Some(0.0));
    let (code, body) = curl(&ext, &format!("http://{node_ip}:10256/healthz"));
    assert_eq!(code, 200, "healthz is back: {body}");
    let converged = wait_for(Duration::from_secs(10), || {
        (kube_rules(&node_ns) == rules_before).then_some(())
    });
    assert!(
        converged.is_some(),
        "rules differ after the restart:\nbefore {rules_before:#?}\nafter {:#?}",
        kube_rules(&node_ns)
    );
    stop(child, &run);
}

/// An `iptables-nft-restore` that fails the first `n` times it runs for a
/// node (counted in `dir/fail-<node>`), then runs the real one.
fn failing_restore(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let script = format!(
        r#"#!/bin/sh
# Only an agent's sync fails (the harness and the agent probe the tool
# first; a sync is the restore that programs endpoint chains).
node=$(tr '\0' '\n' < /proc/$PPID/cmdline | grep -A1 -x -- --node | tail -n 1)
input="{dir}/input.$$"
cat > "$input"
if [ -n "$node" ] && grep -q 'KUBE-SEP-' "$input"; then
  count="{dir}/fail-$node"
  [ -f "$count" ] || echo {n} > "$count"
  left=$(cat "$count")
  if [ "$left" -gt 0 ]; then
    echo $((left - 1)) > "$count"
    rm -f "$input"
    echo "iptables-nft-restore: line 1 failed (injected by the test)" >&2
    exit 1
  fi
fi
/usr/sbin/iptables-nft-restore "$@" < "$input"
rc=$?
rm -f "$input"
exit $rc
"#,
        dir = dir.display()
    );
    let path = dir.join("iptables-nft-restore");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_failing_restore_is_retried_with_backoff_and_counted() {
    require_root!();
    if !have_curl() || !Path::new("/usr/sbin/iptables-nft-restore").exists() {
        common::skip("curl or iptables-nft-restore is missing");
        return;
    }
    let _lab = common::lab_lock();
    let dir = std::env::temp_dir().join(format!(
        "svclab-test-failing-restore-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    failing_restore(&dir, 3);
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    // The first full sync fails three times on every node (retried after
    // 1, 2 and 4 s); the lab comes up once the fourth succeeds.
    let (child, run, err) = up("iptables", &[("PATH", path)], "failing-restore");
    let _guard = common::LabGuard(run.clone());
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "up after {:?}: the retries did not back off",
        started.elapsed()
    );
    for node in ["node-0", "node-1"] {
        let ns = format!("svclab-{run}-{node}");
        let (code, body) = curl(&ns, "http://127.0.0.1:10249/metrics");
        assert_eq!(code, 200);
        for (name, want) in [
            (
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
                3.0,
            ),
            ("svclab_agent_sync_errors_total", 3.0),
            ("svclab_agent_sync_retries_total", 3.0),
        ] {
            assert_eq!(metric(&body, name), Some(want), "{node} {name}:\n{body}");
        }
        assert!(metric(&body, "svclab_agent_syncs_total").unwrap() >= 4.0);
        assert!(
            kube_rules(&ns).len() > 10,
            "{node}: rules programmed at last"
        );
        let log = std::fs::read_to_string(format!("/run/svclab/{run}/agent-{node}.log")).unwrap();
        for wait in [
            "retrying in 1.0 s",
            "retrying in 2.0 s",
            "retrying in 4.0 s",
        ] {
            assert!(log.contains(wait), "{node}: {wait} missing:\n{log}");
        }
    }
    // Nobody died: no report, no restart.
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    assert!(!text.contains("exited"), "{text}");
    assert_eq!(
        processes(&run)
            .iter()
            .filter(|(p, r)| r.starts_with("agent ") && Path::new(&format!("/proc/{p}")).exists())
            .count(),
        2
    );
    stop(child, &run);
    let _ = std::fs::remove_dir_all(&dir);
}
