//! `svclab rules`

use clap::Args;

use super::RunArg;
use crate::rules::{Ruleset, dump, normalise};

#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  svclab rules                    # node-0 of the only running lab, normalised\n  \
                  svclab rules --node node-1 --raw\n  svclab rules --all-nodes\n  \
                  svclab rules --up scenarios/smoke.yaml --backend ipvs,kube-proxy:ipvs --out rules/"
)]
pub struct RulesArgs {
    #[command(flatten)]
    pub run: RunArg,
    /// The node whose ruleset to print.
    #[arg(
        long,
        value_name = "NODE",
        default_value = "node-0",
        conflicts_with = "all_nodes"
    )]
    pub node: String,
    /// Every node's ruleset, each line prefixed with its node.
    #[arg(long)]
    pub all_nodes: bool,
    /// The tool's output as it is (iptables-save or nft list ruleset),
    /// not normalised.
    #[arg(long)]
    pub raw: bool,
    /// Bring this scenario up on each `--backend` in turn (repeat for more
    /// scenarios), read node-0's ruleset once it is synced, and take it down
    /// again: rulesets of backends that cannot run side by side (in a VM, for
    /// example), made comparable with `diff`.
    #[arg(long, value_name = "SCENARIO", requires = "backend")]
    pub up: Vec<std::path::PathBuf>,
    /// With `--up`: the backends, comma-separated.
    #[arg(long, value_name = "BACKENDS", value_delimiter = ',', requires = "up")]
    pub backend: Vec<String>,
    /// With `--up`: write each ruleset to `DIR/<scenario>/<backend>.rules`
    /// instead of printing it.
    #[arg(long, value_name = "DIR", requires = "up")]
    pub out: Option<std::path::PathBuf>,
}

/// Prints a lab node's ruleset, normalised (or raw).
pub fn run(args: &RulesArgs) -> anyhow::Result<()> {
    if !args.up.is_empty() {
        return up_each(args);
    }
    let st = crate::state::pick_run(args.run.run.as_deref())?;
    let backend = st
        .backend
        .clone()
        .ok_or_else(|| anyhow::anyhow!("lab {} runs no agents, so no rules", st.run))?;
    let ruleset = Ruleset::of_backend(&backend).ok_or_else(|| {
        anyhow::anyhow!(
            "lab {} runs {backend}, which programs no iptables or nftables ruleset",
            st.run
        )
    })?;
    let nodes: Vec<(String, String)> = st
        .topology
        .as_ref()
        .map(|t| {
            t.nodes
                .iter()
                .map(|n| (n.name.clone(), n.netns.clone()))
                .collect()
        })
        .unwrap_or_default();
    let picked: Vec<&(String, String)> = nodes
        .iter()
        .filter(|(name, _)| args.all_nodes || *name == args.node)
        .collect();
    if picked.is_empty() {
        anyhow::bail!(
            "lab {} has no node {:?} (nodes: {})",
            st.run,
            args.node,
            nodes
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (name, netns) in picked {
        let text = dump(netns, ruleset)?;
        let prefix = if args.all_nodes {
            format!("{name}: ")
        } else {
            String::new()
        };
        if args.raw {
            for l in text.lines() {
                println!("{prefix}{l}");
            }
        } else {
            for l in normalise(ruleset, &text) {
                println!("{prefix}{l}");
            }
        }
    }
    Ok(())
}

/// `--up`: each scenario on each backend, one lab at a time, through this
/// binary's own `up` and `down` (so a lab is removed however this ends).
fn up_each(args: &RulesArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let exe = std::env::current_exe().context("finding svclab's own binary")?;
    let svclab = |a: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(&exe)
            .args(a)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running svclab {}", a.join(" ")))?;
        if !out.status.success() {
            anyhow::bail!(
                "svclab {} failed ({}): {}{}",
                a.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    for scenario in &args.up {
        let stem = scenario
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into());
        let path = scenario.to_string_lossy();
        for backend in &args.backend {
            let ruleset = Ruleset::of_backend(backend).ok_or_else(|| {
                anyhow::anyhow!("{backend} programs no iptables, nftables or IPVS ruleset")
            })?;
            let started = std::time::Instant::now();
            let up = svclab(&["up", &path, "--backend", backend])?;
            let run = up
                .lines()
                .find_map(|l| l.trim().strip_prefix("stop: svclab down --run "))
                .map(|r| r.trim().to_string())
                .ok_or_else(|| anyhow::anyhow!("svclab up printed no run id:\n{up}"))?;
            let text = dump(&format!("svclab-{run}-node-0"), ruleset);
            let down = svclab(&["down", "--run", &run]);
            let lines = normalise(ruleset, &text?);
            down?;
            tracing::info!(
                "{stem} on {backend}: {} lines in {:.1} s",
                lines.len(),
                started.elapsed().as_secs_f64()
            );
            match &args.out {
                Some(dir) => {
                    let file = crate::rules::write_normalised(dir, &stem, backend, lines)?;
                    println!("{}", file.display());
                }
                None => {
                    for l in lines {
                        println!("{stem} {backend}: {l}");
                    }
                }
            }
        }
    }
    Ok(())
}
