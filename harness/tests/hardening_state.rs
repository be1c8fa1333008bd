//! Root never trusts what others could have written (issue 14, findings 1,
//! 2 and 6): temporary files are never opened at a name someone could plant
//! first, run state is private whatever the umask, `cleanup` and `down`
//! refuse records others could write and never signal a process that is not
//! svclab's, and namespaces without a record are reported, not removed,
//! unless `--force`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use svclab::state::{ProcRef, RunState};
use svclab::topology::RunId;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .mode()
        & 0o7777
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().expect("try_wait").is_none()
}

fn netns_of(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// What a test made by hand (a fake run's folder, namespaces, processes):
/// removed when dropped, whatever happened.
#[derive(Default)]
struct Mess {
    children: Vec<Child>,
    namespaces: Vec<String>,
    paths: Vec<PathBuf>,
}

impl Mess {
    /// `sleep 60` in the host's namespace, or in `netns`; returns once it
    /// runs `sleep` where asked.
    fn sleep(&mut self, netns: Option<&str>) -> u32 {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "sleep", "60"]);
                c
            }
            None => {
                let mut c = Command::new("sleep");
                c.arg("60");
                c
            }
        };
        let child = cmd.stdin(Stdio::null()).spawn().expect("spawn sleep");
        let pid = child.id();
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                return pid;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("pid {pid} never ran sleep");
    }

    fn child(&mut self, pid: u32) -> &mut Child {
        self.children
            .iter_mut()
            .find(|c| c.id() == pid)
            .expect("our child")
    }

    fn netns(&mut self, name: &str) {
        let out = Command::new("ip")
            .args(["netns", "add", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::text(&out));
        self.namespaces.push(name.to_string());
    }
}

impl Drop for Mess {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
        for p in &self.paths {
            let _ = std::fs::remove_dir_all(p);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A record for a fake run `run`: its owner is a dead process, and it names
/// `victim` (a process that is not svclab's) as one of its agents.
fn forged_record(run: &RunId, victim: u32) -> Vec<u8> {
    let mut st = RunState::new(run, "scenarios/smoke.yaml");
    st.owner = ProcRef {
        pid: dead_pid(),
        start_ticks: 1,
        role: "owner".into(),
        exe: None,
        netns: None,
    };
    st.processes
        .push(ProcRef::of(victim, "agent node-0").expect("the victim runs"));
    serde_json::to_vec_pretty(&st).unwrap()
}

/// A pid that no process has now.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Writes a fake run's folder and record with the given modes (and owner,
/// if `uid` is given), under /run/svclab.
fn plant_record(
    mess: &mut Mess,
    run: &RunId,
    record: &[u8],
    dir_mode: u32,
    file_mode: u32,
    uid: Option<u32>,
) -> PathBuf {
    let dir = svclab::state::run_dir(run);
    std::fs::create_dir_all(&dir).unwrap();
    mess.paths.push(dir.clone());
    let file = dir.join("state.json");
    std::fs::write(&file, record).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(file_mode)).unwrap();
    if let Some(uid) = uid {
        std::os::unix::fs::chown(&file, Some(uid), Some(uid)).unwrap();
    }
    file
}

/// Finding 1: `bench sync` opened `/tmp/svclab-floor-<pid>-<n>.stderr`
/// (truncating whatever a symlink there pointed to) and let its agents
/// write their dumps into `/tmp/svclab-bench-<pid>-<backend>-<size>`. The
/// bench is started through `sh -c '...; exec svclab'`, so the symlinks are
/// planted at the very paths the old code used (its pid is the shell's).
#[test]
fn bench_sync_follows_no_symlink_planted_at_a_predictable_path() {
    require_root!();
    let _lab = common::lab_lock();
    let results = tempfile::tempdir().unwrap();
    let victim_file = results.path().join("victim.txt");
    std::fs::write(&victim_file, "precious\n").unwrap();
    let victim_dir = results.path().join("victim-dir");
    std::fs::create_dir(&victim_dir).unwrap();
    let out_dir = results.path().join("out");
    let script = r#"
        for n in $(seq 0 99); do ln -s "$1" "/tmp/svclab-floor-$$-$n.stderr"; done
        ln -s "$2" "/tmp/svclab-bench-$$-iptables-20"
        echo "$$" > "$3"
        exec "$4" bench sync --services 20 --endpoints 2 --backend iptables --partials 2 \
            --budget 60 --connects 20 --nodes 1 --results "$5"
    "#;
    let pidfile = results.path().join("pid");
    let out = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(&victim_file)
        .arg(&victim_dir)
        .arg(&pidfile)
        .arg(env!("CARGO_BIN_EXE_svclab"))
        .arg(&out_dir)
        .current_dir(common::root())
        .output()
        .unwrap();
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let planted: Vec<PathBuf> = (0..100)
        .map(|n| PathBuf::from(format!("/tmp/svclab-floor-{pid}-{n}.stderr")))
        .chain([PathBuf::from(format!(
            "/tmp/svclab-bench-{pid}-iptables-20"
        ))])
        .collect();
    for p in &planted {
        let _ = std::fs::remove_file(p);
    }
    assert!(out.status.success(), "{}", common::text(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("iptables"), "{said}");
    assert_eq!(
        std::fs::read_to_string(&victim_file).unwrap(),
        "precious\n",
        "the bench wrote through a planted symlink"
    );
    let inside: Vec<_> = std::fs::read_dir(&victim_dir).unwrap().collect();
    assert!(
        inside.is_empty(),
        "the agents dumped into a planted folder: {inside:?}"
    );
    // The floor ran (on dumps in the bench's own private folder), and that
    // folder is gone afterwards.
    let bench = std::fs::read_dir(&out_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("bench.json").is_file())
        .expect("a bench folder");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bench.join("bench.json")).unwrap()).unwrap();
    let case = json["cases"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["backend"] == "iptables"))
        .unwrap_or_else(|| panic!("no iptables case in {json}"));
    assert!(
        case["detail"]["floor"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "the floor did not run: {case}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&bench)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".dump-"))
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Finding 2, first half: under `umask 000` the run folder was 0777 and
/// state.json 0666.
#[test]
fn run_state_is_private_whatever_the_umask() {
    require_root!();
    let _lab = common::lab_lock();
    let mut cmd = common::svclab();
    cmd.args([
        "up",
        "--foreground",
        "scenarios/smoke.yaml",
        "--backend",
        "none",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn svclab up");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a READY line").expect("read");
    let run = first
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("not READY: {first}"))
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    let _g = common::LabGuard(run.clone());
    let dir = PathBuf::from(format!("/run/svclab/{run}"));
    let modes = (
        mode(Path::new("/run/svclab")),
        mode(&dir),
        mode(&dir.join("state.json")),
    );
    let owner = std::fs::metadata(dir.join("state.json")).unwrap().uid();
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let down = common::run(&["down", "--run", &run]);
    let _ = child.wait();
    assert_eq!(modes, (0o700, 0o700, 0o600), "modes under umask 000");
    assert_eq!(owner, 0);
    // What `cleanup` needs to prove a process is the one recorded.
    assert!(state["owner"]["exe"]["ino"].is_u64(), "{state}");
    assert!(state["owner"]["netns"].is_u64(), "{state}");
    assert!(down.status.success(), "{}", common::text(&down));
    assert!(!dir.exists());
}

/// Finding 2, second half: a record others could write (or owned by
/// someone else) is refused by `cleanup` and `down`, and nothing it names
/// is touched; a record that names a process that is not svclab's (by its
/// executable) does not get that process killed.
#[test]
fn cleanup_and_down_refuse_records_others_could_write() {
    require_root!();
    let _lab = common::lab_lock();
    for (what, dir_mode, file_mode, uid) in [
        ("a world-writable record", 0o700, 0o666, None),
        ("a record in a world-writable folder", 0o777, 0o600, None),
        ("a group-writable record", 0o700, 0o620, None),
        ("a record owned by nobody", 0o700, 0o600, Some(65534)),
    ] {
        let mut mess = Mess::default();
        let run = svclab::state::fresh_run_id();
        let node_ns = format!("svclab-{run}-node-0");
        mess.netns(&node_ns);
        let victim = mess.sleep(None);
        let file = plant_record(
            &mut mess,
            &run,
            &forged_record(&run, victim),
            dir_mode,
            file_mode,
            uid,
        );
        for cmd in [
            &["cleanup", run.as_str()][..],
            &["down", "--run", run.as_str()][..],
        ] {
            let out = common::run(cmd);
            let text = common::text(&out);
            assert_eq!(out.status.code(), Some(1), "{what}, {cmd:?}: {text}");
            let dir = svclab::state::run_dir(&run);
            assert!(
                text.contains("refused") && text.contains(&dir.display().to_string()),
                "{what}, {cmd:?}: {text}"
            );
            assert!(
                alive(mess.child(victim)),
                "{what}, {cmd:?}: the victim was killed"
            );
            assert!(
                Path::new("/run/netns").join(&node_ns).exists(),
                "{what}, {cmd:?}: a namespace was removed"
            );
            assert!(file.exists(), "{what}, {cmd:?}");
        }
        // Forced, the record is ignored: the run's namespace goes, and the
        // process it names is still never signalled.
        let out = common::run(&["cleanup", "--force", run.as_str()]);
        let text = common::text(&out);
        assert!(out.status.success(), "{what}: {text}");
        assert!(text.contains("record was ignored"), "{what}: {text}");
        assert!(
            alive(mess.child(victim)),
            "{what}: forced: the victim was killed"
        );
        assert!(
            !Path::new("/run/netns").join(&node_ns).exists(),
            "{what}: {text}"
        );
    }
}

#[test]
fn cleanup_never_signals_a_process_that_is_not_svclabs() {
    require_root!();
    let _lab = common::lab_lock();
    let mut mess = Mess::default();
    let run = svclab::state::fresh_run_id();
    let node_ns = format!("svclab-{run}-node-0");
    mess.netns(&node_ns);
    // One unrelated process in the host's namespace, one inside the run's
    // namespace, both named by a record only root could have written.
    let outside = mess.sleep(None);
    let inside = mess.sleep(Some(&node_ns));
    let mut st = RunState::new(&run, "scenarios/smoke.yaml");
    st.owner = ProcRef {
        pid: dead_pid(),
        start_ticks: 1,
        role: "owner".into(),
        exe: None,
        netns: None,
    };
    st.processes
        .push(ProcRef::of(outside, "agent node-0").unwrap());
    let mut legacy = ProcRef::of(inside, "agent node-1").unwrap();
    legacy.exe = None;
    legacy.netns = None;
    st.processes.push(legacy);
    st.save().unwrap();
    mess.paths.push(svclab::state::run_dir(&run));

    let out = common::run(&["cleanup", run.as_str()]);
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(alive(mess.child(outside)), "killed pid {outside}: {text}");
    assert!(alive(mess.child(inside)), "killed pid {inside}: {text}");
    for pid in [outside, inside] {
        assert!(
            text.contains(&format!("pid {pid} (sleep")) && text.contains("not signalled"),
            "pid {pid} is not mentioned: {text}"
        );
    }
    // The run itself (a trusted record, a dead owner) is removed.
    assert!(!Path::new("/run/netns").join(&node_ns).exists(), "{text}");
    assert!(!svclab::state::run_dir(&run).exists(), "{text}");
    // Its process lives on, in what was the run's namespace.
    assert!(netns_of(inside).is_some());
}

/// Finding 6: a namespace that looks like svclab's (`svclab-<4 hex>-*`) but
/// has no run record was removed by `cleanup`, even with a live process
/// inside that is not svclab's.
#[test]
fn namespaces_without_a_record_are_reported_and_left_unless_forced() {
    require_root!();
    let _lab = common::lab_lock();
    let mut mess = Mess::default();
    let run = svclab::state::fresh_run_id();
    let ns = format!("svclab-{run}-orphan");
    mess.netns(&ns);
    let pid = mess.sleep(Some(&ns));

    let out = common::run(&["cleanup"]);
    let text = common::text(&out);
    assert!(
        Path::new("/run/netns").join(&ns).exists(),
        "cleanup removed {ns}: {text}"
    );
    assert!(alive(mess.child(pid)), "{text}");
    let said = String::from_utf8_lossy(&out.stdout);
    let line = said
        .lines()
        .find(|l| l.contains("without a run record"))
        .unwrap_or_else(|| panic!("not reported: {text}"));
    assert!(line.contains(&ns) && line.contains("--force"), "{line}");

    // Forced, the namespace goes; the process in it is not svclab's, so it
    // is not killed, and cleanup says so.
    let out = common::run(&["cleanup", "--force", run.as_str()]);
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    assert!(!Path::new("/run/netns").join(&ns).exists(), "{text}");
    assert!(alive(mess.child(pid)), "{text}");
    assert!(
        text.contains(&format!("pid {pid} (sleep)")) && text.contains("not signalled"),
        "{text}"
    );
}
