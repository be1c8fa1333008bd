//! The `svclab` command line: the top-level parser, the argument shapes
//! every subcommand shares, and one file per subcommand.
//!
//! Shared shapes:
//! - `--backend LIST`: comma-separated backends, `all` for every built-in
//!   backend this host can run ([`BackendList`]);
//! - `--run R`: a running lab, by default the only one ([`RunArg`]);
//! - `-o text|json`: the output format ([`Output`]);
//! - `--check`/`--skip-check REGEX`: which checks run ([`CheckSelection`]).

pub mod agent;
pub mod bench;
pub mod capture;
pub mod churn;
pub mod cleanup;
pub mod compare;
pub mod completions;
pub mod demo;
pub mod doctor;
pub mod down;
pub mod exec;
pub mod generate;
pub mod ls;
pub mod matrix;
pub mod rules;
pub mod run;
pub mod trace;
pub mod up;
pub mod vm;
pub mod workloads;

use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use svclab_backends::BackendKind;

#[derive(Parser, Debug)]
#[command(
    name = "svclab",
    version,
    about = "End-to-end test harness and benchmark lab for Kubernetes Service proxies",
    long_about = "svclab emulates a multi-node Kubernetes cluster on one Linux host with network \
                  namespaces, runs a kube-proxy-like agent per node with a pluggable backend \
                  (iptables, nftables, IPVS, userspace, eBPF or your own program), and checks \
                  DNAT correctness, load balance and rule-sync cost. It never changes the host's \
                  own network namespace.\n\n\
                  Shared flags: --backend takes a comma-separated list (`all`: every built-in \
                  backend this host can run); --run names a running lab (default: the only \
                  one, see `svclab ls`); -o text|json picks the output format. Logging on \
                  stderr: -v (debug), -vv (trace), or SVCLAB_LOG (a tracing filter such as \
                  `debug` or `svclab::agent=trace`, which wins over -v)."
)]
pub struct Cli {
    /// More diagnostics on stderr: -v debug, -vv trace (SVCLAB_LOG, a
    /// tracing filter, wins over it).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build a lab and keep it running until `svclab down`.
    Up(up::UpArgs),
    /// Tear a running lab down (the only one, or --run R).
    Down(down::DownArgs),
    /// List the labs running on this host.
    Ls(ls::LsArgs),
    /// Run a command inside a lab's pod, node or external namespace.
    Exec(exec::ExecArgs),
    /// Print the ruleset a running lab's backend programmed in a node,
    /// normalised for comparison (counters, handles, element order).
    Rules(rules::RulesArgs),
    /// Run a scenario's checks against one or more backends and write a
    /// results folder (exit code 1 if any check failed).
    Run(run::RunArgs),
    /// Run a scenario's checks over kernels × backends (VM kernels under
    /// `svclab vm`) and write one matrix folder whose report's columns are
    /// kernels (exit code 1 if any check failed); or, with `-- bench sync
    /// [OPTIONS]` instead of a scenario, a sync benchmark per kernel, set
    /// side by side.
    Matrix(matrix::MatrixArgs),
    /// Join matrix shard folders into one matrix folder and report (exit
    /// code 1 if a cell failed or is missing).
    Merge(matrix::MergeArgs),
    /// Run the built-in scenario (every check) on every backend this host
    /// can run, the `none` baseline aside.
    Demo(demo::DemoArgs),
    /// What this host can run, and why not.
    Doctor(doctor::DoctorArgs),
    /// Bring a lab up with agents, play churn against it, and account for
    /// every change (exit code 1 if an agent missed one).
    Churn(churn::ChurnArgs),
    /// Print a generated scenario (Services x endpoints) as YAML.
    Generate(generate::GenerateArgs),
    /// Benchmarks: topology build, rule sync at scale, the API endpoint,
    /// probe throughput (results/<UTC>-bench-<kind>/ with bench.json,
    /// bench.csv, report.html).
    Bench(bench::BenchArgs),
    /// Compare two bench runs figure by figure (exit code 1 on a
    /// regression beyond the threshold, 2 when they cannot be compared).
    Compare(compare::CompareArgs),
    /// Send one probe through a running lab and print the path the kernel
    /// reports: hooks, chains and rules (nf_tables trace), conntrack, and
    /// IPVS or BPF map entries.
    Trace(trace::TraceArgs),
    /// Write a live cluster's Services and EndpointSlices as a scenario
    /// that reproduces them (YAML on stdout).
    Capture(capture::CaptureArgs),
    /// Run a svclab command inside a VM booted from a stock kernel.
    Vm(vm::VmArgs),
    /// Remove what earlier runs left behind (only runs whose owner is gone,
    /// unless --force; namespaces without a run record only with --force).
    Cleanup(cleanup::CleanupArgs),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions(completions::CompletionsArgs),
    /// Run one node's agent (started by the lab inside the node's namespace).
    #[command(hide = true)]
    Agent(agent::AgentArgs),
    /// Serve every pod's echo servers (started by the lab).
    #[command(hide = true)]
    Workloads(workloads::WorkloadsArgs),
}

/// The help of every `--backend`: the shape, then the default rule.
pub const BACKEND_RULE: &str = "Comma-separated backends (iptables,nftables,ipvs,...; see \
    `svclab doctor`), or `all`: every built-in backend this host can run. Default rule: \
    commands that compare backends (run, bench sync) default to `all`; commands that drive one \
    lab (up, churn, bench api, bench probes) take exactly one, and their default is named here.";

/// One item of a `--backend` list: a backend, or `all`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendItem {
    /// Every built-in backend this host can run.
    All,
    One(BackendKind),
}

impl FromStr for BackendItem {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "all" {
            Ok(BackendItem::All)
        } else {
            s.parse::<BackendKind>().map(BackendItem::One)
        }
    }
}

impl std::fmt::Display for BackendItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendItem::All => f.write_str("all"),
            BackendItem::One(b) => write!(f, "{b}"),
        }
    }
}

/// Expands `all` (to every built-in backend this host can run) and drops
/// repeats, keeping the order given.
pub fn resolve_backends(items: &[BackendItem]) -> anyhow::Result<Vec<BackendKind>> {
    resolve_backends_with(items, crate::doctor::runnable)
}

/// [`resolve_backends`] with the runnable set given (for tests).
pub fn resolve_backends_with(
    items: &[BackendItem],
    runnable: impl Fn() -> Vec<BackendKind>,
) -> anyhow::Result<Vec<BackendKind>> {
    let mut out: Vec<BackendKind> = Vec::new();
    for item in items {
        let add = match item {
            BackendItem::All => runnable(),
            BackendItem::One(b) => vec![b.clone()],
        };
        for b in add {
            if !out.contains(&b) {
                out.push(b);
            }
        }
    }
    if out.is_empty() {
        anyhow::bail!("no backend to run (`all` found none that can run here; see svclab doctor)");
    }
    Ok(out)
}

/// The one backend of a command that drives one lab.
pub fn one_backend(command: &str, items: &[BackendItem]) -> anyhow::Result<BackendKind> {
    let all = resolve_backends(items)?;
    match all.as_slice() {
        [one] => Ok(one.clone()),
        many => anyhow::bail!(
            "svclab {command} drives one lab with one backend; --backend gave {} ({})",
            many.len(),
            many.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `--run R`: which running lab (default: the only one).
#[derive(Args, Clone, Debug, Default)]
pub struct RunArg {
    /// The lab's run id, 4 hex digits (default: the only running lab; see
    /// `svclab ls`).
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
}

/// `-o text|json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    // No doc comments: they would turn every `-h` into the long help.
    #[default]
    Text,
    Json,
}

/// `--check`/`--skip-check`: which checks a run has.
#[derive(Args, Clone, Debug, Default)]
pub struct CheckSelection {
    /// Run only the checks whose name matches this regular expression
    /// (e.g. `^clusterip-|nodeport`); the others are left out of the
    /// results, not skipped. Check names: see results/README.md.
    #[arg(long, value_name = "REGEX")]
    pub check: Option<String>,
    /// Leave out the checks whose name matches this regular expression
    /// (applied after --check).
    #[arg(long, value_name = "REGEX")]
    pub skip_check: Option<String>,
}

impl CheckSelection {
    /// The selected checks, in run order; an error (before anything is
    /// built) for an invalid expression or one that leaves no check.
    pub fn select(&self) -> anyhow::Result<Vec<&'static str>> {
        let compile = |flag: &str, re: &str| {
            regex::Regex::new(re)
                .map_err(|e| anyhow::anyhow!("{flag} {re:?} is not a regular expression: {e}"))
        };
        let keep = self
            .check
            .as_deref()
            .map(|r| compile("--check", r))
            .transpose()?;
        let drop = self
            .skip_check
            .as_deref()
            .map(|r| compile("--skip-check", r))
            .transpose()?;
        let names: Vec<&'static str> = crate::checks::check_names().collect();
        if let (Some(re), Some(src)) = (&keep, &self.check)
            && !names.iter().any(|n| re.is_match(n))
        {
            anyhow::bail!(
                "--check {src:?} matches no check; checks: {}",
                names.join(", ")
            );
        }
        let out: Vec<&'static str> = names
            .iter()
            .copied()
            .filter(|n| keep.as_ref().is_none_or(|re| re.is_match(n)))
            .filter(|n| drop.as_ref().is_none_or(|re| !re.is_match(n)))
            .collect();
        if out.is_empty() {
            anyhow::bail!(
                "--check {:?} with --skip-check {:?} leaves no check to run; checks: {}",
                self.check.as_deref().unwrap_or(".*"),
                self.skip_check.as_deref().unwrap_or(""),
                names.join(", ")
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                if a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                if sub.get_about().is_none() {
                    missing.push(format!("{path} {} (no about)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "svclab", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
    }

    #[test]
    fn backend_lists_expand_all_and_drop_repeats() {
        let items: Vec<BackendItem> = ["nftables", "all", "iptables"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let runnable = || vec!["none".parse().unwrap(), "iptables".parse().unwrap()];
        let got = resolve_backends_with(&items, runnable).unwrap();
        let names: Vec<String> = got.iter().map(|b| b.to_string()).collect();
        assert_eq!(names, ["nftables", "none", "iptables"]);
        assert!(resolve_backends_with(&[BackendItem::All], Vec::new).is_err());
        assert!("ipchains".parse::<BackendItem>().is_err());
    }

    #[test]
    fn check_selection_keeps_order_and_rejects_bad_expressions() {
        let sel = |check: Option<&str>, skip: Option<&str>| {
            CheckSelection {
                check: check.map(Into::into),
                skip_check: skip.map(Into::into),
            }
            .select()
        };
        assert_eq!(sel(None, None).unwrap().len(), crate::checks::CHECKS.len());
        assert_eq!(
            sel(Some("^clusterip-"), None).unwrap(),
            ["clusterip-tcp", "clusterip-udp"]
        );
        assert_eq!(
            sel(Some("^clusterip-"), Some("udp")).unwrap(),
            ["clusterip-tcp"]
        );
        let e = sel(Some("("), None).unwrap_err().to_string();
        assert!(e.contains("not a regular expression"), "{e}");
        let e = sel(Some("^nothing$"), None).unwrap_err().to_string();
        assert!(
            e.contains("matches no check") && e.contains("clusterip-tcp"),
            "{e}"
        );
        let e = sel(None, Some(".")).unwrap_err().to_string();
        assert!(e.contains("leaves no check"), "{e}");
    }
}
