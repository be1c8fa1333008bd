//! Running labs for people: `svclab ls` (what runs here) and `svclab exec`
//! (a command inside one of a lab's namespaces), both from the run records
//! under /run/svclab.

use std::process::ExitCode;

use serde::Serialize;

use crate::state::{self, RunState};
use crate::topology::{RunId, Topology};

/// One line of `svclab ls` (and one object of `svclab ls -o json`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabSummary {
    pub run: String,
    /// The scenario's name; `-` for a leftover (no record says it).
    pub scenario: String,
    /// The agents' backend; none when the lab runs no agents.
    pub backend: Option<String>,
    pub nodes: usize,
    pub pods: usize,
    /// Seconds since the lab started (for a leftover: since its oldest
    /// namespace was made).
    pub age_seconds: f64,
    /// None for a leftover: no record names an owner.
    pub owner_pid: Option<u32>,
    /// Whether the owner process still runs (a lab whose owner is gone is
    /// a leftover: `svclab cleanup` removes it).
    pub owner_alive: bool,
    /// Namespaces of a run without a readable run record (its state
    /// folder was removed, or the run was killed before writing it):
    /// `svclab cleanup --force RUN` removes them.
    pub leftover: bool,
    /// The run's network namespaces on this host.
    pub namespaces: usize,
}

impl LabSummary {
    pub fn of(st: &RunState, now: f64) -> LabSummary {
        LabSummary {
            run: st.run.to_string(),
            scenario: st.scenario.clone(),
            backend: st.backend.clone(),
            nodes: st.topology.as_ref().map_or(0, |t| t.nodes.len()),
            pods: st.topology.as_ref().map_or(0, |t| t.pods.len()),
            age_seconds: (now - st.started_at).max(0.0),
            owner_pid: Some(st.owner.pid),
            owner_alive: st.owner.alive(),
            leftover: false,
            namespaces: crate::netns::list_with_prefix(&st.run.ns_prefix()).len(),
        }
    }

    /// A run with namespaces but no record; None when it has none.
    pub fn leftover(run: &RunId, now: f64) -> Option<LabSummary> {
        let namespaces = crate::netns::list_with_prefix(&run.ns_prefix());
        if namespaces.is_empty() {
            return None;
        }
        let made = namespaces
            .iter()
            .filter_map(|ns| std::fs::symlink_metadata(ns.path()).ok()?.modified().ok())
            .min()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now, |d| d.as_secs_f64());
        // `<namespace>.<pod>` for pods; nodes, `fabric` and `external`
        // have no dot.
        let rest = |ns: &crate::netns::NetNs| ns.name[run.ns_prefix().len()..].to_string();
        let pods = namespaces
            .iter()
            .filter(|ns| rest(ns).contains('.'))
            .count();
        let nodes = namespaces
            .iter()
            .map(rest)
            .filter(|r| !r.contains('.') && r != "fabric" && r != "external")
            .count();
        Some(LabSummary {
            run: run.to_string(),
            scenario: "-".into(),
            backend: None,
            nodes,
            pods,
            age_seconds: (now - made).max(0.0),
            owner_pid: None,
            owner_alive: false,
            leftover: true,
            namespaces: namespaces.len(),
        })
    }
}

/// Every lab on this host, oldest first: those with a run record, and
/// leftovers (namespaces named for a run that has no readable record).
pub fn list() -> Vec<LabSummary> {
    let now = state::now();
    let mut out: Vec<LabSummary> = state::known_runs()
        .iter()
        .filter_map(|r| match RunState::load(r) {
            Ok(st) => Some(LabSummary::of(&st, now)),
            Err(_) => LabSummary::leftover(r, now),
        })
        .collect();
    out.sort_by(|a, b| b.age_seconds.total_cmp(&a.age_seconds));
    out
}

fn age(seconds: f64) -> String {
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// The table `svclab ls` prints.
pub fn text(labs: &[LabSummary]) -> String {
    if labs.is_empty() {
        return "no lab is running\n".into();
    }
    let rows: Vec<[String; 7]> = labs
        .iter()
        .map(|l| {
            [
                l.run.clone(),
                l.scenario.clone(),
                l.backend.clone().unwrap_or_else(|| "-".into()),
                l.nodes.to_string(),
                l.pods.to_string(),
                age(l.age_seconds),
                match l.owner_pid {
                    _ if l.leftover => format!(
                        "leftover: {} namespace(s), no run record; svclab cleanup --force {} \
                         removes them",
                        l.namespaces, l.run
                    ),
                    Some(pid) if l.owner_alive => format!("{pid} (alive)"),
                    Some(pid) => format!("{pid} (gone: svclab cleanup removes it)"),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let head = [
        "RUN", "SCENARIO", "BACKEND", "NODES", "PODS", "AGE", "OWNER",
    ];
    let mut width = head.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 7]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(width).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        l.push('\n');
        l
    };
    let mut out = line(head);
    for r in &rows {
        out.push_str(&line(r.each_ref().map(String::as_str)));
    }
    out
}

/// Every target `svclab exec` accepts in this lab.
pub fn targets(t: &Topology) -> Vec<String> {
    let mut out: Vec<String> = t.nodes.iter().map(|n| format!("node/{}", n.name)).collect();
    out.extend(
        t.pods
            .iter()
            .map(|p| format!("pod/{}/{}", p.namespace, p.name)),
    );
    if t.external.is_some() {
        out.push("external".into());
    }
    if t.external2.is_some() {
        out.push("external-2".into());
    }
    out
}

/// The namespace of `pod/<ns>/<name>` (or `pod/<name>` in `default`),
/// `node/<name>`, `external` or `external-2`; an error lists the valid targets.
pub fn target_netns(t: &Topology, target: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = target.split('/').collect();
    let found = match parts.as_slice() {
        ["external"] => t.external.clone(),
        ["external-2"] => t.external2.clone(),
        ["node", name] => t.node(name).map(|n| n.netns.clone()),
        ["pod", ns, name] => t.pod(ns, name).map(|p| p.netns.clone()),
        ["pod", name] => t.pod("default", name).map(|p| p.netns.clone()),
        _ => None,
    };
    found.ok_or_else(|| {
        let all = targets(t);
        const SHOWN: usize = 24;
        let more = if all.len() > SHOWN {
            format!(" and {} more", all.len() - SHOWN)
        } else {
            String::new()
        };
        anyhow::anyhow!(
            "no target {target:?} in lab {} (expected pod/<namespace>/<name>, node/<name> or \
             external); valid targets: {}{more}",
            t.run,
            all.iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// `svclab exec`: enters the target's network namespace and replaces this
/// process with the command, so its exit status is the command's. Called
/// before any runtime thread starts.
pub fn exec(run: Option<&str>, target: &str, command: &[String]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let netns = match state::pick_run(run).and_then(|st| {
        let t = st.topology.as_ref().ok_or_else(|| {
            anyhow::anyhow!("lab {} has no topology yet (still coming up?)", st.run)
        })?;
        target_netns(t, target)
    }) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("svclab exec: {e:#}");
            return ExitCode::from(2);
        }
    };
    let entered = crate::netns::NetNs::new(&netns)
        .open()
        .map_err(anyhow::Error::from)
        .and_then(|fd| {
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(Into::into)
        });
    if let Err(e) = entered {
        eprintln!("svclab exec: entering namespace {netns}: {e:#}");
        return ExitCode::from(2);
    }
    let Some((program, args)) = command.split_first() else {
        eprintln!("svclab exec: no command after --");
        return ExitCode::from(2);
    };
    let err = std::process::Command::new(program).args(args).exec();
    eprintln!("svclab exec: {program}: {err}");
    // As a shell says it: 127 not found, 126 found but not runnable.
    ExitCode::from(if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectls() {
        assert_eq!(age(5.2), "5s");
        assert_eq!(age(125.0), "2m5s");
        assert_eq!(age(7300.0), "2h1m");
        assert_eq!(age(90000.0), "1d1h");
    }

    #[test]
    fn no_lab_reads_as_such() {
        assert_eq!(text(&[]), "no lab is running\n");
        let l = LabSummary {
            run: "1a2b".into(),
            scenario: "smoke".into(),
            backend: Some("nftables".into()),
            nodes: 2,
            pods: 5,
            age_seconds: 61.0,
            owner_pid: Some(42),
            owner_alive: true,
            leftover: false,
            namespaces: 6,
        };
        let t = text(&[l]);
        assert!(t.starts_with("RUN "), "{t}");
        assert!(
            t.contains("1a2b")
                && t.contains("nftables")
                && t.contains("1m1s")
                && t.contains("42 (alive)"),
            "{t}"
        );
    }

    #[test]
    fn a_leftover_says_so_and_how_to_remove_it() {
        let l = LabSummary {
            run: "f00d".into(),
            scenario: "-".into(),
            backend: None,
            nodes: 2,
            pods: 3,
            age_seconds: 5.0,
            owner_pid: None,
            owner_alive: false,
            leftover: true,
            namespaces: 6,
        };
        let t = text(&[l]);
        let row = t.lines().nth(1).unwrap();
        assert!(row.starts_with("f00d "), "{t}");
        assert!(
            row.contains("leftover: 6 namespace(s), no run record; svclab cleanup --force f00d"),
            "{t}"
        );
    }
}
