//! The command line as a user meets it: help, completions, argument
//! shapes and the errors said before anything is built (no root needed),
//! then `ls`/`exec` against a live lab (root).

mod common;

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;
use svclab_backends::BackendKind;

fn svclab() -> Command {
    let mut c = Command::new(common::svclab_bin());
    c.current_dir(common::root());
    c
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs svclab with `/run` replaced by an empty tmpfs, in a mount namespace
/// of its own (the host's mounts are untouched): a host with no lab at all,
/// whatever other checkouts are running. None when unshare cannot do it.
fn on_a_host_without_labs(args: &[&str]) -> Option<Output> {
    let bin = common::svclab_bin();
    let mut tries: Vec<Vec<&str>> = vec![vec!["--mount", "--propagation", "private"]];
    // Without root: a user namespace of our own, if the kernel allows it.
    tries.push(vec![
        "--user",
        "--map-root-user",
        "--mount",
        "--propagation",
        "private",
    ]);
    for flags in tries {
        let out = std::process::Command::new("unshare")
            .args(&flags)
            .args([
                "--",
                "sh",
                "-c",
                "mount -t tmpfs none /run && exec \"$0\" \"$@\"",
            ])
            .arg(&bin)
            .args(args)
            .current_dir(common::root())
            .output()
            .ok()?;
        if stderr(&out).contains("unshare:") || stderr(&out).contains("mount:") {
            continue;
        }
        return Some(out);
    }
    None
}

fn subcommands() -> Vec<String> {
    use clap::CommandFactory;
    svclab::cli::Cli::command()
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect()
}

#[test]
fn top_level_help_lists_every_command() {
    let out = svclab().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = stdout(&out);
    for sub in subcommands() {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "`svclab --help` does not list {sub}:\n{help}"
        );
    }
    for new in ["ls", "exec", "completions"] {
        assert!(subcommands().iter().any(|s| s == new), "no `svclab {new}`");
    }
    // Hidden internals stay hidden.
    assert!(
        !help.contains("workloads") && !help.contains("\n  agent"),
        "{help}"
    );
}

#[test]
fn every_subcommand_has_help_on_every_option() {
    let mut checked = 0;
    let mut subs: Vec<Vec<String>> = subcommands().into_iter().map(|s| vec![s]).collect();
    for b in ["topology", "sync", "api", "probes"] {
        subs.push(vec!["bench".into(), b.into()]);
    }
    for sub in subs {
        if sub == ["help"] {
            continue;
        }
        let out = svclab().args(&sub).arg("--help").output().unwrap();
        let help = stdout(&out);
        assert!(
            out.status.success(),
            "svclab {sub:?} --help: {}",
            stderr(&out)
        );
        assert!(
            help.contains(&format!("Usage: svclab {}", sub.join(" "))),
            "{sub:?}:\n{help}"
        );
        // In the short help an option line (`  --flag <V>  help`) carries
        // its help: none is bare.
        for l in help.lines() {
            let t = l.trim_start();
            if (t.starts_with("--") || t.starts_with('-')) && !t.contains("  ") {
                panic!(
                    "svclab {}: option without help: {l:?}\n{help}",
                    sub.join(" ")
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 18, "only {checked} commands checked");
}

#[test]
fn backend_help_states_the_one_shape_and_default_rule() {
    for sub in [
        &["run"][..],
        &["up"],
        &["churn"],
        &["bench", "sync"],
        &["bench", "probes"],
    ] {
        let out = svclab().args(sub).arg("--help").output().unwrap();
        let help = stdout(&out);
        assert!(
            help.contains("`all`: every built-in backend this host can run")
                && help.contains("Default rule"),
            "svclab {sub:?} --help:\n{help}"
        );
    }
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef svclab"),
        ("fish", "complete -c svclab"),
    ] {
        let out = svclab().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for sub in ["exec", "ls", "doctor", "backend", "skip-check"] {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
    }
    let out = svclab().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bash") && stderr(&out).contains("fish"),
        "{}",
        stderr(&out)
    );
}

/// A results folder that must stay empty: nothing was built or written.
fn untouched_results() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("svclab-cli-")
        .tempdir()
        .unwrap()
}

fn assert_empty(dir: &Path) {
    let n = std::fs::read_dir(dir).unwrap().count();
    assert_eq!(n, 0, "{} has {n} entries: something ran", dir.display());
}

#[test]
fn check_selection_errors_come_before_any_lab() {
    let res = untouched_results();
    let r = res.path().to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (
            &["run", "scenarios/smoke.yaml", "--check", "("],
            "--check \"(\" is not a regular expression",
        ),
        (
            &["run", "scenarios/smoke.yaml", "--check", "^no-such-check$"],
            "matches no check",
        ),
        (
            &["run", "scenarios/smoke.yaml", "--skip-check", "."],
            "leaves no check",
        ),
        (
            &[
                "run",
                "scenarios/smoke.yaml",
                "--check",
                "^nodeport$",
                "--skip-check",
                "node",
            ],
            "leaves no check",
        ),
        (
            &["demo", "--skip-check", "[z-a]"],
            "--skip-check \"[z-a]\" is not a regular expression",
        ),
    ];
    for (args, want) in cases {
        let out = svclab().args(args).args(["--results", r]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
    // A selection that matches nothing names the checks there are.
    let out = svclab()
        .args([
            "run",
            "scenarios/smoke.yaml",
            "--check",
            "^zzz",
            "--results",
            r,
        ])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("clusterip-tcp") && stderr(&out).contains("service-update"));
    assert_empty(res.path());
}

#[test]
fn backend_lists_are_checked_before_any_lab() {
    // An unknown name, in any command's --backend.
    for args in [
        &[
            "run",
            "scenarios/smoke.yaml",
            "--backend",
            "iptables,ipchains",
        ][..],
        &["up", "--backend", "ipchains"],
        &["churn", "scenarios/smoke.yaml", "--backend", "ipchains"],
        &["bench", "sync", "--backend", "ipchains"],
        &["bench", "probes", "--backend", "ipchains"],
        &["doctor", "--require", "ipchains"],
    ] {
        let out = svclab().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("ipchains"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // One-lab commands take exactly one.
    for args in [
        &["up", "--backend", "iptables,nftables"][..],
        &[
            "churn",
            "scenarios/smoke.yaml",
            "--backend",
            "iptables,nftables",
        ],
    ] {
        let out = svclab().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("one backend") && stderr(&out).contains("iptables, nftables"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

fn ipvs_reason() -> Option<String> {
    BackendKind::Ipvs.capability().err().map(|e| e.reason)
}

#[test]
fn doctor_require_names_a_backend_that_cannot_run() {
    let out = svclab()
        .args(["doctor", "--require", "iptables,ipvs"])
        .output()
        .unwrap();
    match ipvs_reason() {
        Some(why) => {
            assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains("required backend ipvs cannot run here") && err.contains(&why),
                "{err}"
            );
            assert!(!err.contains("backend iptables cannot"), "{err}");
        }
        None => assert!(out.status.success(), "IPVS can run here: {}", stderr(&out)),
    }
    // The report is printed either way.
    assert!(stdout(&out).contains("backends:"), "{}", stdout(&out));
}

#[test]
fn doctor_json_lists_every_backend_and_finding() {
    let out = svclab().args(["doctor", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).expect("doctor -o json is JSON");
    let backends = j["backends"].as_array().expect("backends");
    let names: Vec<&str> = backends
        .iter()
        .filter_map(|b| b["backend"].as_str())
        .collect();
    let want: Vec<String> = BackendKind::BUILTIN.iter().map(|b| b.to_string()).collect();
    assert_eq!(names, want);
    let ipvs = backends.iter().find(|b| b["backend"] == "ipvs").unwrap();
    assert_eq!(ipvs["canRun"], ipvs_reason().is_none());
    if let Some(why) = ipvs_reason() {
        assert_eq!(ipvs["reason"], why.as_str());
    }
    assert!(j["findings"].as_array().is_some_and(|f| !f.is_empty()));
    assert!(j["findings"][0]["what"].is_string() && j["findings"][0]["ok"].is_boolean());
    assert!(j["kernel"].as_str().is_some_and(|k| !k.is_empty()));
}

#[test]
fn run_require_fails_before_any_lab_when_a_backend_cannot_run() {
    let Some(why) = ipvs_reason() else {
        eprintln!("IPVS can run here: nothing to refuse");
        return;
    };
    let res = untouched_results();
    let out = svclab()
        .args([
            "run",
            "scenarios/smoke.yaml",
            "--backend",
            "none",
            "--require",
            "ipvs",
        ])
        .args(["--results", res.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("required backend ipvs cannot run here")
            && stderr(&out).contains(&why),
        "{}",
        stderr(&out)
    );
    assert_empty(res.path());
}

#[test]
fn run_ids_are_checked() {
    for args in [
        &["down", "--run", "zz"][..],
        &["exec", "--run", "zz", "node/node-0", "--", "true"],
        &[
            "trace", "--run", "zz", "--from", "external", "--to", "web:80",
        ],
    ] {
        let out = svclab().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("not a run id"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // The positional run id of `down` is kept, but not with --run too.
    let out = svclab()
        .args(["down", "--run", "1a2b", "1a2b"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // exec needs a command after --.
    let out = svclab().args(["exec", "node/node-0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("<CMD>"), "{}", stderr(&out));
}

#[test]
fn ls_and_exec_on_a_host_without_labs() {
    let Some(out) = on_a_host_without_labs(&["ls", "-o", "json"]) else {
        common::skip("unshare cannot make a private mount namespace here");
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).expect("ls -o json is JSON");
    assert_eq!(j, serde_json::json!([]));

    let out = on_a_host_without_labs(&["ls"]).unwrap();
    assert!(out.status.success());
    assert_eq!(stdout(&out), "no lab is running\n");

    let out = on_a_host_without_labs(&["exec", "node/node-0", "--", "true"]).unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no lab is running"),
        "{}",
        stderr(&out)
    );

    let out = on_a_host_without_labs(&["exec", "--run", "1a2b", "external", "--", "true"]).unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no lab 1a2b") && stderr(&out).contains("running: none"),
        "{}",
        stderr(&out)
    );
}

/// Diagnostics go through `tracing`: `SVCLAB_LOG` (a filter) or `-v`
/// turns on debug lines on stderr; without either there are none, and
/// stdout (the command's output) is the same at every level.
#[test]
fn svclab_log_and_v_turn_on_debug_lines() {
    let args = ["generate", "--services", "2", "--endpoints", "1"];
    let is_debug = |l: &str| l.starts_with("debug svclab");
    let quiet = svclab()
        .args(args)
        .env_remove("SVCLAB_LOG")
        .output()
        .unwrap();
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(
        !stderr(&quiet).lines().any(is_debug),
        "debug lines by default:\n{}",
        stderr(&quiet)
    );
    assert!(
        stdout(&quiet).contains("kind: Service"),
        "{}",
        stdout(&quiet)
    );

    let by_env = svclab()
        .args(args)
        .env("SVCLAB_LOG", "debug")
        .output()
        .unwrap();
    assert!(by_env.status.success(), "{}", stderr(&by_env));
    assert!(
        stderr(&by_env)
            .lines()
            .any(|l| is_debug(l) && l.contains("generate")),
        "SVCLAB_LOG=debug printed no debug line:\n{}",
        stderr(&by_env)
    );
    assert_eq!(stdout(&by_env), stdout(&quiet), "logging reached stdout");

    let by_flag = svclab()
        .arg("-v")
        .args(args)
        .env_remove("SVCLAB_LOG")
        .output()
        .unwrap();
    assert!(
        stderr(&by_flag).lines().any(is_debug),
        "{}",
        stderr(&by_flag)
    );
    assert_eq!(stdout(&by_flag), stdout(&quiet));
    // The filter wins over -v; a bad one is said and ignored.
    let off = svclab()
        .arg("-vv")
        .args(args)
        .env("SVCLAB_LOG", "warn")
        .output()
        .unwrap();
    assert!(!stderr(&off).lines().any(is_debug), "{}", stderr(&off));
    let bad = svclab()
        .args(args)
        .env("SVCLAB_LOG", "[[")
        .output()
        .unwrap();
    assert!(bad.status.success());
    assert!(
        stderr(&bad).contains("ignoring SVCLAB_LOG"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn compare_json_has_every_row_and_the_verdict() {
    use svclab::bench::schema::BenchResults;
    let dir = untouched_results();
    let write = |name: &str, full: f64| {
        let mut r = BenchResults::new("sync", name, serde_json::json!({}));
        r.value(
            "iptables",
            1000,
            "sync_full_proxy_rules_duration_seconds",
            "seconds",
            full,
        );
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        r.write(&d).unwrap();
        d
    };
    let base = write("base", 1.0);
    let cand = write("cand", 2.0);
    let out = svclab()
        .arg("compare")
        .args([&base, &cand])
        .args(["--threshold", "10%", "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a doubled sync time regresses: {}",
        stderr(&out)
    );
    let j: Value = serde_json::from_slice(&out.stdout).expect("compare -o json is JSON");
    assert_eq!(j["regressions"], 1);
    assert!((j["threshold"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    let row = j["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["metric"] == "sync_full_proxy_rules_duration_seconds")
        .expect("the sync row");
    assert_eq!(row["verdict"], "regression");
    assert_eq!(row["backend"], "iptables");
    assert_eq!(row["size"], 1000);
    assert!((row["ratio"].as_f64().unwrap() - 2.0).abs() < 1e-9);
}

/// `ls` and `exec` against a live lab: its row, a command in a node, a
/// pod and the external client, exit statuses passed through, and the
/// error for an unknown target listing the valid ones.
#[test]
fn ls_and_exec_in_a_live_lab() {
    require_root!();
    let _lock = common::lab_lock();
    // -v reaches the processes the lab starts: the detached lab and the
    // pods' servers log debug lines into the run folder.
    let up = common::run(&["-v", "up", "scenarios/smoke.yaml"]);
    assert!(up.status.success(), "{}", common::text(&up));
    let run = common::run_id(&stdout(&up));
    let _guard = common::LabGuard(run.clone());
    let run_dir = svclab::state::run_dir(&svclab::topology::RunId::parse(&run).unwrap());
    for (log, command) in [("daemon.log", "\"up\""), ("workloads.log", "\"workloads\"")] {
        let text = std::fs::read_to_string(run_dir.join(log)).unwrap_or_default();
        assert!(
            text.lines()
                .any(|l| l.starts_with("debug svclab") && l.contains(command)),
            "{log} has no debug line of {command}:\n{text}"
        );
    }

    let me = ls_entry(&run);
    assert_eq!(me["nodes"], 2, "{me}");
    assert!(me["pods"].as_u64().unwrap() >= 2, "{me}");
    assert_eq!(me["ownerAlive"], true, "{me}");
    assert!(me["ownerPid"].as_u64().unwrap() > 1, "{me}");
    assert!(me["ageSeconds"].as_f64().unwrap() >= 0.0, "{me}");
    assert!(me["backend"].is_null(), "no agents: {me}");
    let text = stdout(&svclab().arg("ls").output().unwrap());
    assert!(text.lines().any(|l| l.starts_with(&run)), "{text}");

    let exec = |target: &str, cmd: &[&str]| {
        svclab()
            .args(["exec", "--run", &run, target, "--"])
            .args(cmd)
            .output()
            .unwrap()
    };
    // The namespace is the node's: its own name and address.
    let out = exec("node/node-0", &["ip", "-o", "-4", "addr", "show"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let topo = svclab::state::RunState::load(&svclab::topology::RunId::parse(&run).unwrap())
        .unwrap()
        .topology
        .unwrap();
    assert!(
        stdout(&out).contains(&topo.nodes[0].ip.to_string()),
        "{}",
        stdout(&out)
    );
    let ext = exec("external", &["ip", "-o", "-4", "addr", "show"]);
    assert!(
        stdout(&ext).contains(&topo.external_ip.unwrap().to_string()),
        "{}",
        stdout(&ext)
    );
    let pod = &topo.pods[0];
    let out = exec(
        &format!("pod/{}/{}", pod.namespace, pod.name),
        &["ip", "-o", "-4", "addr", "show"],
    );
    assert!(
        stdout(&out).contains(&pod.ip.to_string()),
        "{}",
        stdout(&out)
    );
    // Exit statuses are the command's.
    assert_eq!(
        exec("node/node-1", &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(
        exec("node/node-1", &["/no/such/program"]).status.code(),
        Some(127)
    );
    // An unknown target lists the valid ones.
    let out = exec("node/node-9", &["true"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("no target \"node/node-9\"")
            && err.contains("node/node-0")
            && err.contains("external")
            && err.contains(&format!("pod/{}/{}", pod.namespace, pod.name)),
        "{err}"
    );

    let down = common::run(&["down", "--run", &run]);
    assert!(down.status.success(), "{}", common::text(&down));
}

/// Namespaces of a run that has no record (its state folder gone, as
/// after a `kill -9` and a wiped /run/svclab) show in `svclab ls` as a
/// leftover, with the command that removes them; that command does.
#[test]
fn ls_lists_leftovers_without_a_run_record() {
    require_root!();
    let _lock = common::lab_lock();
    let run = svclab::state::fresh_run_id();
    let names = ["node-0", "default.web-0", "fabric"].map(|n| format!("{}{n}", run.ns_prefix()));
    struct Gone(Vec<String>);
    impl Drop for Gone {
        fn drop(&mut self) {
            for n in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", n])
                    .output();
            }
        }
    }
    let _gone = Gone(names.to_vec());
    for n in &names {
        let out = std::process::Command::new("ip")
            .args(["netns", "add", n])
            .output()
            .unwrap();
        assert!(out.status.success(), "ip netns add {n}: {}", stderr(&out));
    }
    assert!(!svclab::state::run_dir(&run).exists());

    let me = ls_entry(run.as_str());
    assert_eq!(me["leftover"], true, "{me}");
    assert_eq!(me["ownerPid"], Value::Null, "{me}");
    assert_eq!(me["ownerAlive"], false, "{me}");
    assert_eq!(me["namespaces"], 3, "{me}");
    assert_eq!(
        (me["nodes"].clone(), me["pods"].clone()),
        (1.into(), 1.into()),
        "{me}"
    );

    let text = stdout(&svclab().arg("ls").output().unwrap());
    let row = text
        .lines()
        .find(|l| l.starts_with(run.as_str()))
        .unwrap_or_else(|| panic!("no row for {run}:\n{text}"));
    let hint = format!("svclab cleanup --force {run}");
    assert!(row.contains("leftover") && row.contains(&hint), "{text}");

    let out = svclab()
        .args(["cleanup", "--force", run.as_str()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(common::run_namespaces(run.as_str()).is_empty());
    let text = stdout(&svclab().arg("ls").output().unwrap());
    assert!(!text.lines().any(|l| l.starts_with(run.as_str())), "{text}");
}

/// `--check`/`--skip-check` on a real run: the selected checks, in order,
/// and no trace of the others in any output file.
#[test]
fn unselected_checks_are_absent_from_the_results() {
    require_root!();
    let _lock = common::lab_lock();
    let res = common::results_dir("cli-check");
    let out = svclab()
        .args(["run", "scenarios/smoke.yaml", "--backend", "none"])
        .args(["--check", "^clusterip-|^multiport$", "--skip-check", "udp"])
        .arg("--results")
        .arg(&res)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    let (dir, json) = common::results_json(&res);
    let names: Vec<String> = common::verdicts(&json).into_iter().map(|v| v.1).collect();
    assert_eq!(names, ["clusterip-tcp", "multiport"]);
    for file in ["junit.xml", "summary.md", "report.html"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        assert!(
            text.contains("clusterip-tcp"),
            "{file} lacks a selected check"
        );
        for absent in ["clusterip-udp", "nodeport", "service-update"] {
            assert!(!text.contains(absent), "{file} mentions {absent}");
        }
    }
    let _ = std::fs::remove_dir_all(&res);
}

/// Not a test of its own: [`a_test_that_cannot_run_skips_locally_and_fails_in_ci`]
/// runs it in a child process, with the environment under test.
#[test]
fn skip_helper_probe() {
    if std::env::var_os("SVCLAB_CLI_SKIP_PROBE").is_some() {
        common::skip("the probe cannot run here");
    }
}

#[test]
fn a_test_that_cannot_run_skips_locally_and_fails_in_ci() {
    let probe = |env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(std::env::current_exe().unwrap());
        c.args([
            "--exact",
            "skip_helper_probe",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SVCLAB_CLI_SKIP_PROBE", "1")
        .env_remove("CI")
        .env_remove("SVCLAB_REQUIRE_PRIVILEGED");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let local = probe(&[]);
    assert!(local.status.success(), "{}", common::text(&local));
    assert!(
        stderr(&local).contains("SKIP skip_helper_probe: the probe cannot run here"),
        "{}",
        common::text(&local)
    );
    for env in [&[("CI", "true")][..], &[("SVCLAB_REQUIRE_PRIVILEGED", "1")]] {
        let out = probe(env);
        assert!(!out.status.success(), "{env:?}: {}", common::text(&out));
        let text = common::text(&out);
        assert!(
            text.contains("skip_helper_probe cannot run here: the probe cannot run here")
                && text.contains("SVCLAB_REQUIRE_PRIVILEGED=1 makes this a failure"),
            "{env:?}: {text}"
        );
    }
    // Other values of CI leave local behaviour alone.
    let out = probe(&[("CI", "false")]);
    assert!(out.status.success(), "{}", common::text(&out));
}

/// The entry of `svclab ls -o json` for `run`.
fn ls_entry(run: &str) -> Value {
    let out = svclab().args(["ls", "-o", "json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let labs: Value = serde_json::from_slice(&out.stdout).unwrap();
    labs.as_array()
        .unwrap()
        .iter()
        .find(|l| l["run"] == run)
        .cloned()
        .unwrap_or_else(|| panic!("{run} not in {labs}"))
}
