//! The agent with `--backend kube-proxy:<mode>[@<version>]`: it starts the
//! unmodified upstream binary as its child, in the same node namespace, fed
//! by the lab's API through the node's kubeconfig, and turns kube-proxy's own
//! metrics into the agent's sync reports.
//!
//! The agent keeps its informers ([`super::watch`]) for one reason: to know
//! which resourceVersions exist, so it can say when kube-proxy has provably
//! programmed them. It polls `http://127.0.0.1:10249/metrics` (kube-proxy's)
//! and reports the versions it has seen as synced once, in two polls in a
//! row ([`Prover`]):
//!
//! - kube-proxy has counted at least as many Service and EndpointSlice
//!   changes as the agent received (`kubeproxy_sync_proxy_rules_service_changes_total`,
//!   `..._endpoint_changes_total`; both informers see the same events, and
//!   kube-proxy counts each in its change trackers before it queues a sync),
//! - nothing is pending in its trackers (`..._service_changes_pending`,
//!   `..._endpoint_changes_pending` are 0), and
//! - the last sync request (`..._last_queued_timestamp_seconds`) is no later
//!   than the start of its last completed sync (`..._last_timestamp_seconds`
//!   minus the duration of the syncs since the previous poll, from the
//!   duration histogram's sum; that errs early, as kube-proxy stamps the
//!   timestamp before its sync's cleanup ends, so it never proves too soon),
//!   or else no later than that sync's end, with the sync count and the last
//!   request unchanged for `minSyncPeriod` + 1 s + twice the longest sync
//!   seen. The second form is the common one: an event after a quiet spell
//!   makes kube-proxy queue and start a sync within microseconds. It is
//!   sound because kube-proxy's runner buffers a request that arrives during
//!   a sync and runs again `minSyncPeriod` after that sync ends, so a request
//!   the last sync missed shows as another completed sync by then.
//!
//! A change kube-proxy ignores (one that leaves its service or endpoint maps
//! unchanged, so nothing is queued) is proven the same way: counted, nothing
//! pending, no sync requested since. Should kube-proxy count fewer changes
//! than the agent (an informer relist can make the two counts differ), the
//! agent waits at most [`COUNT_BOUND`] with kube-proxy idle, then reports the
//! versions anyway and says so on stderr.
//!
//! Each report's `seq` is kube-proxy's own sync count; a report that only
//! proves versions (no new kube-proxy sync) repeats the last `seq` with
//! `wallSeconds` 0. CPU is kube-proxy's (with its iptables/nft children)
//! from /proc, wall time and mode from its full/partial duration histograms,
//! programming latency from `kubeproxy_network_programming_duration_seconds`.
//!
//! The agent's own healthz/metrics servers stay off: kube-proxy owns 10249
//! and 10256 (and the health check node ports). On stop the agent sends
//! kube-proxy SIGTERM, then runs `kube-proxy --cleanup` with the same config
//! in the node namespace (which the lab deletes afterwards anyway).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use svclab_backends::kubeproxy::Mode;
use svclab_backends::protocol::{
    AgentMessage, CpuUsage, StreamVersions, SyncMode, SyncReport, WatchEvent,
};
use svclab_backends::tracker::ChangeTracker;

use super::{AgentArgs, Input, emit};
use crate::kubeproxy::NodeConfig;
use crate::scenario::AgentSettings;

/// How often the agent reads kube-proxy's metrics while versions wait for
/// proof, and while nothing does.
const POLL_BUSY: Duration = Duration::from_millis(25);
const POLL_IDLE: Duration = Duration::from_millis(500);
/// See the module notes.
pub const COUNT_BOUND: Duration = Duration::from_secs(3);
/// How long kube-proxy gets to exit after SIGTERM, and `--cleanup` to run.
/// The cleanup's bound does not stretch under emulation: there each of its
/// `iptables-restore` runs takes seconds and it outlasts any bound (120 s
/// measured, killed), while the lab deletes the node's namespace, and with
/// it everything kube-proxy made, right after.
const STOP_GRACE: Duration = Duration::from_secs(10);
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// kube-proxy's metrics, summed over label sets (one IP family here).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub syncs: f64,
    pub syncs_sum: f64,
    pub full: f64,
    pub full_sum: f64,
    pub partial: f64,
    pub partial_sum: f64,
    pub service_changes: f64,
    pub endpoint_changes: f64,
    pub service_pending: f64,
    pub endpoint_pending: f64,
    pub programming: f64,
    pub programming_sum: f64,
    pub iptables_rules: f64,
    pub failures: f64,
    /// Whether an IPv6 proxier runs too: both count every Service change in
    /// the one unlabelled `..._service_changes_total`.
    pub dual_stack: bool,
    /// Each proxier's own (last sync, last request), IPv4's first; a
    /// change of one family's Services moves only that family's. Empty
    /// when the scrape has no such series.
    pub proxiers: Vec<(f64, f64)>,
}

impl Snapshot {
    /// The earliest of the proxiers' last syncs.
    pub fn last_sync(&self) -> f64 {
        let first = self.proxiers.iter().map(|p| p.0).reduce(f64::min);
        first.unwrap_or(0.0)
    }

    /// The latest of the proxiers' last sync requests.
    pub fn last_queued(&self) -> f64 {
        self.proxiers.iter().map(|p| p.1).fold(0.0, f64::max)
    }
}

/// The samples of a scrape: (series with its labels, value), comments and
/// unparsable lines left out.
fn samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        Some((series, value.trim().parse::<f64>().ok()?))
    })
}

/// A series of kube-proxy's IPv6 proxier (most series carry `ip_family`).
fn ipv6_series(series: &str) -> bool {
    series.contains("ip_family=\"IPv6\"")
}

/// Each proxier's (last sync, last request) from its `ip_family`-labelled
/// series (an unlabelled series is IPv4's), the IPv6 one only `with_v6`.
fn proxier_times(text: &str, with_v6: bool) -> Vec<(f64, f64)> {
    let mut by: BTreeMap<bool, (f64, f64)> = BTreeMap::new();
    for (series, v) in samples(text) {
        let v6 = ipv6_series(series);
        if v6 && !with_v6 {
            continue;
        }
        let slot = by.entry(v6).or_default();
        match series.split('{').next().unwrap_or(series) {
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds" => slot.0 = v,
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds" => slot.1 = v,
            _ => {}
        }
    }
    by.into_values().filter(|t| *t != (0.0, 0.0)).collect()
}

/// `name{labels} value` lines -> name -> value summed over label sets.
/// kube-proxy runs an IPv6 proxier beside the IPv4 one whenever the
/// namespace can, and labels most series with `ip_family`; its IPv6
/// series are read only when `with_v6` (a lab with IPv6, where each proxier
/// counts its own family's endpoint changes). The timestamps are read per
/// proxier ([`proxier_times`]); their sums here mean nothing.
pub fn parse_metrics(text: &str, with_v6: bool) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for (series, v) in samples(text) {
        if !with_v6 && ipv6_series(series) {
            continue;
        }
        let name = series.split('{').next().unwrap_or(series).trim();
        *out.entry(name.to_string()).or_default() += v;
    }
    out
}

impl Snapshot {
    /// A snapshot of one scrape, over both proxiers when `with_v6`
    /// ([`parse_metrics`]).
    pub fn from_text(text: &str, with_v6: bool) -> Snapshot {
        let m = parse_metrics(text, with_v6);
        let g = |n: &str| m.get(&format!("kubeproxy_{n}")).copied().unwrap_or(0.0);
        Snapshot {
            syncs: g("sync_proxy_rules_duration_seconds_count"),
            syncs_sum: g("sync_proxy_rules_duration_seconds_sum"),
            full: g("sync_full_proxy_rules_duration_seconds_count"),
            full_sum: g("sync_full_proxy_rules_duration_seconds_sum"),
            partial: g("sync_partial_proxy_rules_duration_seconds_count"),
            partial_sum: g("sync_partial_proxy_rules_duration_seconds_sum"),
            service_changes: g("sync_proxy_rules_service_changes_total"),
            endpoint_changes: g("sync_proxy_rules_endpoint_changes_total"),
            service_pending: g("sync_proxy_rules_service_changes_pending"),
            endpoint_pending: g("sync_proxy_rules_endpoint_changes_pending"),
            programming: g("network_programming_duration_seconds_count"),
            programming_sum: g("network_programming_duration_seconds_sum"),
            iptables_rules: g("sync_proxy_rules_iptables_total"),
            failures: g("sync_proxy_rules_iptables_restore_failures_total")
                + g("sync_proxy_rules_iptables_partial_restore_failures_total")
                + g("sync_proxy_rules_nftables_sync_failures_total"),
            dual_stack: text.contains("ip_family=\"IPv6\""),
            proxiers: proxier_times(text, with_v6),
        }
    }
}

/// What the agent's informers received, counted as kube-proxy counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Seen {
    pub versions: StreamVersions,
    pub services: u64,
    pub endpoint_slices: u64,
    /// Whether kube-proxy's IPv6 proxier has the lab's IPv6 slices to count
    /// (a lab with IPv6).
    pub with_v6: bool,
}

impl Seen {
    /// Counts `ev`: every object of the initial lists, and afterwards every
    /// event that moves its stream's version on (a relist's unchanged
    /// objects do not; kube-proxy's informer does not see those again).
    /// EndpointSlices of another address family kube-proxy skips uncounted.
    pub fn count(&mut self, ev: &WatchEvent, initial: bool) {
        let Some(obj) = ev.object() else { return };
        let rv = obj
            .metadata()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let (newer, count) = match obj {
            svclab_backends::protocol::ApiObject::Service(_) => {
                (rv > self.versions.services, &mut self.services)
            }
            svclab_backends::protocol::ApiObject::EndpointSlice(s) => {
                let counted =
                    s.address_type == "IPv4" || (self.with_v6 && s.address_type == "IPv6");
                if !counted {
                    return;
                }
                (
                    rv > self.versions.endpoint_slices,
                    &mut self.endpoint_slices,
                )
            }
        };
        if initial || newer {
            *count += 1;
        }
        self.versions.saw(obj.kind(), rv);
    }
}

/// Decides, poll by poll, which versions kube-proxy has provably programmed.
#[derive(Debug)]
pub struct Prover {
    pub proven: StreamVersions,
    /// What the previous poll found covered, waiting for a second poll.
    candidate: Option<StreamVersions>,
    /// The duration of the syncs that completed between the two polls that
    /// saw the last one (an upper bound of the last one's), and the longest
    /// such figure so far.
    last_duration: f64,
    longest: f64,
    /// `minSyncPeriod` + 1 s: with twice the longest sync, how long the sync
    /// count and the last request must stay put to prove that the last
    /// sync saw that request.
    settle: Duration,
    /// Since when (sync count, last request) have been what they are.
    still: Option<((f64, f64), Instant)>,
    /// Since when kube-proxy has been idle with fewer changes counted.
    short_since: Option<Instant>,
}

impl Prover {
    pub fn new(min_sync_period: Duration) -> Prover {
        Prover {
            proven: StreamVersions::default(),
            candidate: None,
            last_duration: 0.0,
            longest: 0.0,
            settle: min_sync_period + Duration::from_secs(1),
            still: None,
            short_since: None,
        }
    }

    /// Takes one poll (`prev` -> `now`) with what the agent has `seen` by
    /// then; returns true when `proven` moved on.
    pub fn poll(&mut self, prev: &Snapshot, now: &Snapshot, seen: &Seen, at: Instant) -> bool {
        let done = now.syncs - prev.syncs;
        if done > 0.0 {
            self.last_duration = (now.syncs_sum - prev.syncs_sum).max(0.0);
            // Each proxier's first sync programs the whole lab; it says
            // nothing of how long a change takes. In a dual-stack lab the
            // second family's first sync ends after the first family's, so
            // "the first sync overall" is not enough: with kube-proxy's
            // iptables mode at 2,000 Services it made `settle` 77 s, and
            // every change after waited that long.
            let first_of_a_proxier = now
                .proxiers
                .iter()
                .enumerate()
                .any(|(i, n)| n.0 > 0.0 && prev.proxiers.get(i).is_none_or(|p| p.0 == 0.0));
            if prev.syncs > 0.0 && !first_of_a_proxier {
                self.longest = self.longest.max(self.last_duration);
            }
        }
        let key = (now.syncs, now.last_queued());
        let since = match self.still {
            Some((k, t)) if k == key => t,
            _ => {
                self.still = Some((key, at));
                at
            }
        };
        let settle = self.settle + Duration::from_secs_f64(2.0 * self.longest);
        let settled = at.duration_since(since) >= settle;
        // Per proxier: a change of one family's Services is requested of,
        // and synced by, that family's proxier alone.
        let caught_up = |last_sync: f64, last_queued: f64| {
            last_queued <= last_sync - self.last_duration || (last_queued <= last_sync && settled)
        };
        let requested_before_start = now.proxiers.iter().all(|&(s, q)| caught_up(s, q));
        let idle = now.syncs >= 1.0
            && now.service_pending == 0.0
            && now.endpoint_pending == 0.0
            && requested_before_start;
        let per_change = if now.dual_stack { 2.0 } else { 1.0 };
        let counted = now.service_changes >= per_change * seen.services as f64
            && now.endpoint_changes >= seen.endpoint_slices as f64;
        let before = self.proven;
        if idle && counted {
            self.short_since = None;
            if let Some(c) = self.candidate.take() {
                self.proven = self.proven.max(c);
            }
            self.candidate = Some(seen.versions);
        } else {
            self.candidate = None;
            if idle && !self.proven.covers(&seen.versions) {
                let since = *self.short_since.get_or_insert(at);
                if at.duration_since(since) >= COUNT_BOUND {
                    tracing::info!(
                        "agent: kube-proxy counted {} Service and {} EndpointSlice changes, the \
                         agent {} and {}; kube-proxy has been idle for {:.1} s, so versions {:?} \
                         are reported as synced",
                        now.service_changes,
                        now.endpoint_changes,
                        seen.services,
                        seen.endpoint_slices,
                        COUNT_BOUND.as_secs_f64(),
                        seen.versions
                    );
                    self.proven = self.proven.max(seen.versions);
                    self.short_since = None;
                }
            } else {
                self.short_since = None;
            }
        }
        self.proven != before
    }
}

/// GET http://127.0.0.1:10249/metrics, plainly.
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    match body.split_once("\r\n\r\n") {
        Some((head, rest)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(rest.to_string())
        }
        _ => Err(std::io::Error::other(format!(
            "kube-proxy /metrics answered {:?}",
            body.lines().next().unwrap_or("")
        ))),
    }
}

/// kube-proxy's CPU (with its waited-for children) and peak RSS, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14-17 (utime, stime, cutime, cstime), counted from the state (3).
    let tick = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let user = (tick(14)? + tick(16)?) / hz;
    let sys = (tick(15)? + tick(17)?) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((user, sys, rss))
}

/// Where kube-proxy's config and log go: the run's folder (the kubeconfig's).
fn run_folder(kubeconfig: &Path) -> PathBuf {
    kubeconfig
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn start(binary: &Path, config: &Path, log: &Path, dir: &Path) -> std::io::Result<Child> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--config={}", config.display()))
        .env_clear()
        .env("PATH", crate::kubeproxy::PATH)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    // kube-proxy gets SIGTERM when the agent's main thread (which forks
    // it) ends, so it never outlives it.
    crate::netns::prepare_child(&mut cmd, None, crate::netns::Group::Inherit);
    cmd.spawn()
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + STOP_GRACE * crate::results::HostFacts::slowdown();
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `kube-proxy --cleanup` with the same config, bounded in time.
fn cleanup(binary: &Path, config: &Path, log: &Path, dir: &Path) -> Result<(), String> {
    let out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = Command::new(binary)
        .arg(format!("--config={}", config.display()))
        .arg("--cleanup")
        .env_clear()
        .env("PATH", crate::kubeproxy::PATH)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("starting kube-proxy --cleanup: {e}"))?;
    let bound = CLEANUP_TIMEOUT;
    let deadline = Instant::now() + bound;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("kube-proxy --cleanup exited with {s}")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "kube-proxy --cleanup still ran after {} s; killed",
                    bound.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for kube-proxy --cleanup: {e}")),
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs the agent with kube-proxy until stdin closes. Returns the exit code.
pub fn run(args: AgentArgs, mode: Mode, version: &str) -> i32 {
    let mut out = std::io::stdout().lock();
    let fatal = |out: &mut std::io::StdoutLock<'_>, error: String| {
        tracing::error!("agent {}: {error}", args.node);
        emit(
            out,
            &AgentMessage::Fatal {
                node: args.node.clone(),
                error,
            },
        );
        3
    };
    let Some(kubeconfig) = args.kubeconfig.clone() else {
        return fatal(
            &mut out,
            "kube-proxy reads the lab's API: the agent needs --kubeconfig (the API feed, not \
             the stdin pipe)"
                .into(),
        );
    };
    let binary = crate::kubeproxy::binary(version);
    let dir = run_folder(&kubeconfig);
    let mut cfg = NodeConfig::new(
        mode,
        &args.node,
        args.cluster_cidr,
        &kubeconfig,
        &AgentSettings {
            min_sync_period_ms: args.min_sync_period_ms,
            sync_period_ms: args.sync_period_ms,
            node_port_addresses: args.node_port_addresses.clone(),
        },
    );
    cfg.cluster_cidr_v6 = args.cluster_cidr_v6;
    let config = dir.join(format!("kube-proxy-{}.yaml", args.node));
    let log = dir.join(format!("kube-proxy-{}.log", args.node));
    if let Err(e) = std::fs::write(&config, cfg.to_yaml()) {
        return fatal(&mut out, format!("writing {}: {e}", config.display()));
    }

    let (tx, rx) = channel::<Input>();
    let stdin_tx = tx.clone();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            // Lines on stdin mean nothing here (kube-proxy reads the API);
            // its end means stop.
            let mut sink = [0u8; 4096];
            let mut stdin = std::io::stdin().lock();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
            let _ = stdin_tx.send(Input::Stop("stdin closed"));
        })
        .expect("spawning a thread");
    if let Err(e) = super::watch::spawn(&kubeconfig, &args.node, tx) {
        return fatal(&mut out, format!("starting the informers: {e}"));
    }
    let mut child = match start(&binary, &config, &log, &dir) {
        Ok(c) => c,
        Err(e) => {
            return fatal(
                &mut out,
                format!("starting {} in node {}: {e}", binary.display(), args.node),
            );
        }
    };
    let pid = child.id();
    emit(
        &mut out,
        &AgentMessage::Started {
            node: args.node.clone(),
            backend: args.backend.to_string(),
            pid: std::process::id(),
        },
    );
    tracing::info!(
        "agent {}: kube-proxy {version} ({mode}) runs as pid {pid}; config {}, log {}",
        args.node,
        config.display(),
        log.display()
    );

    let metrics_addr: SocketAddr = crate::kubeproxy::config::METRICS_BIND_ADDRESS
        .parse()
        .expect("a socket address");
    let mut tracker = ChangeTracker::new(&args.node).with_zone(args.zone.clone());
    let mut seen = Seen {
        with_v6: args.cluster_cidr_v6.is_some(),
        ..Seen::default()
    };
    let mut prover = Prover::new(Duration::from_millis(args.min_sync_period_ms));
    let mut prev = Snapshot::default();
    let mut reported = Snapshot::default();
    let mut cpu0 = (0.0, 0.0);
    let mut self0 = (0.0, 0.0);
    let mut stop_reason = "stdin closed";
    let mut next_poll = Instant::now();
    let mut scrape_errors = 0u64;
    let mut code = 0;
    loop {
        let wait = next_poll.saturating_duration_since(Instant::now());
        let round = super::next_round(&rx, wait, |ev| {
            seen.count(ev, !tracker.is_synced());
            if let Err(e) = tracker.apply(ev) {
                tracing::warn!("agent {}: skipping object: {e}", args.node);
            }
        });
        if let Err(why) = round {
            stop_reason = why;
            break;
        }
        if Instant::now() < next_poll {
            continue;
        }
        if let Ok(Some(status)) = child.try_wait() {
            code = fatal(
                &mut out,
                format!(
                    "kube-proxy exited with {status}; log ({}):\n{}",
                    log.display(),
                    tail(&log, 20)
                ),
            );
            break;
        }
        let busy = tracker.is_synced() && !prover.proven.covers(&seen.versions);
        next_poll = Instant::now() + if busy { POLL_BUSY } else { POLL_IDLE };
        // The tracker is kept for its state's counts only.
        let _ = tracker.take_changes(false);
        let now = match scrape(metrics_addr) {
            Ok(text) => Snapshot::from_text(&text, args.cluster_cidr_v6.is_some()),
            Err(e) => {
                scrape_errors += 1;
                if scrape_errors.is_power_of_two() && (prev.syncs > 0.0 || scrape_errors >= 64) {
                    tracing::warn!("agent {}: reading kube-proxy's metrics: {e}", args.node);
                }
                continue;
            }
        };
        let moved = tracker.is_synced() && prover.poll(&prev, &now, &seen, Instant::now());
        let new_syncs = now.syncs > reported.syncs;
        if moved || new_syncs {
            let (user, sys, rss) = proc_usage(pid).unwrap_or_default();
            let (su, ss, _) = super::rusage(nix::sys::resource::UsageWho::RUSAGE_SELF);
            let report = report(
                &args,
                &tracker,
                &reported,
                &now,
                &prover,
                ReportCpu {
                    cpu: CpuUsage {
                        self_user_seconds: su - self0.0,
                        self_sys_seconds: ss - self0.1,
                        children_user_seconds: user - cpu0.0,
                        children_sys_seconds: sys - cpu0.1,
                        self_max_rss_kib: super::peak_rss_kib().unwrap_or(0),
                        children_max_rss_kib: rss,
                    },
                },
            );
            cpu0 = (user, sys);
            self0 = (su, ss);
            reported = now.clone();
            emit(&mut out, &AgentMessage::Sync(Box::new(report)));
        }
        prev = now;
    }
    tracing::info!(
        "agent {}: stopping ({stop_reason}); stopping kube-proxy and running its cleanup",
        args.node
    );
    stop(&mut child);
    if let Err(e) = cleanup(&binary, &config, &log, &dir) {
        tracing::error!("agent {}: cleanup: {e}", args.node);
        if code == 0 {
            code = 4;
        }
    }
    code
}

struct ReportCpu {
    cpu: CpuUsage,
}

fn report(
    args: &AgentArgs,
    tracker: &ChangeTracker,
    last: &Snapshot,
    now: &Snapshot,
    prover: &Prover,
    cpu: ReportCpu,
) -> SyncReport {
    let syncs = now.syncs - last.syncs;
    let full = now.full > last.full;
    let wall = if syncs > 0.0 {
        (now.syncs_sum - last.syncs_sum) / syncs
    } else {
        0.0
    };
    let programmed = (now.programming - last.programming).max(0.0);
    let programming_seconds = if programmed > 0.0 {
        let mean = (now.programming_sum - last.programming_sum) / programmed;
        vec![mean; programmed as usize]
    } else {
        Vec::new()
    };
    let failed = now.failures - last.failures;
    let state = tracker.state();
    SyncReport {
        node: args.node.clone(),
        backend: args.backend.to_string(),
        seq: now.syncs as u64,
        mode: if full {
            SyncMode::Full
        } else {
            SyncMode::Partial
        },
        started_at: now.last_sync() - wall,
        wall_seconds: wall,
        cpu: cpu.cpu,
        rules: now.iptables_rules as u64,
        written: 0,
        services: state.services.len() as u64,
        endpoints: state.endpoint_count() as u64,
        service_ports_changed: 0,
        service_events: ((now.service_changes - last.service_changes)
            / if now.dual_stack { 2.0 } else { 1.0 })
        .max(0.0) as u64,
        endpoint_events: (now.endpoint_changes - last.endpoint_changes).max(0.0) as u64,
        resource_version: prover.proven.services.max(prover.proven.endpoint_slices),
        versions: prover.proven,
        programming_seconds,
        error: (failed > 0.0).then(|| {
            format!(
                "kube-proxy: {failed} failed sync(s) since the last report (see kube-proxy-{}.log)",
                args.node
            )
        }),
        // Both proxiers' work is in one report: kube-proxy's metrics add
        // the families up.
        family: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP kubeproxy_sync_proxy_rules_duration_seconds [ALPHA] SyncProxyRules latency in seconds
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="0.001"} 0
kubeproxy_sync_proxy_rules_duration_seconds_sum{ip_family="IPv4"} 0.25
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} 3
kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv6"} 1
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1.6e+09
kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"} 1
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} 1.6999999995e+09
kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="filter"} 4
kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"} 30
kubeproxy_sync_proxy_rules_service_changes_total 7
"#;

    #[test]
    fn metrics_parse_and_sum_over_labels() {
        let s = Snapshot::from_text(METRICS, false);
        assert_eq!(s.syncs, 3.0);
        assert_eq!(s.syncs_sum, 0.25);
        assert_eq!(s.full, 1.0);
        assert_eq!(s.iptables_rules, 34.0);
        assert_eq!(s.service_changes, 7.0);
        assert_eq!(
            s.last_sync(),
            1.7e9,
            "the IPv6 proxier's series are left out"
        );
        assert!(s.dual_stack);
        assert_eq!(s.proxiers, [(1.7e9, 1.6999999995e9)]);
        let both = Snapshot::from_text(METRICS, true);
        assert_eq!(both.proxiers, [(1.7e9, 1.6999999995e9), (1.6e9, 0.0)]);
    }

    fn snap(syncs: f64, sum: f64, last: f64, queued: f64, svc: f64, eps: f64) -> Snapshot {
        Snapshot {
            syncs,
            syncs_sum: sum,
            proxiers: vec![(last, queued)],
            service_changes: svc,
            endpoint_changes: eps,
            ..Snapshot::default()
        }
    }

    fn seen(s: u64, e: u64, svc: u64, eps: u64) -> Seen {
        Seen {
            versions: StreamVersions {
                services: s,
                endpoint_slices: e,
            },
            services: svc,
            endpoint_slices: eps,
            with_v6: false,
        }
    }

    /// A prover (minSyncPeriod 0.5 s) that has proven one sync at 100.0
    /// (requested at 99.0, 2 Service and 2 EndpointSlice changes), and that
    /// snapshot.
    fn primed(t: Instant) -> (Prover, Snapshot) {
        let mut p = Prover::new(Duration::from_millis(500));
        let a = snap(1.0, 0.1, 100.0, 99.0, 2.0, 2.0);
        p.poll(&Snapshot::default(), &a, &seen(10, 11, 2, 2), t);
        p.poll(&a, &a, &seen(10, 11, 2, 2), t);
        (p, a)
    }

    #[test]
    fn versions_are_proven_after_a_sync_that_started_after_the_last_queue() {
        let t = Instant::now();
        let mut p = Prover::new(Duration::from_millis(500));
        let a = snap(1.0, 0.1, 100.0, 99.0, 2.0, 2.0);
        let w = seen(10, 11, 2, 2);
        assert!(!p.poll(&Snapshot::default(), &a, &w, t), "two polls needed");
        assert!(p.poll(&a, &a, &w, t));
        assert_eq!(p.proven, w.versions);
        // A new event: counted by kube-proxy and queued at 100.5, during
        // the sync that ran 100.4..100.6: not proven by that sync.
        let w2 = seen(12, 11, 3, 2);
        let b = snap(2.0, 0.3, 100.6, 100.5, 3.0, 2.0);
        assert!(!p.poll(&a, &b, &w2, t));
        assert!(!p.poll(&b, &b, &w2, t));
        // The next sync (100.8..100.9) covers it.
        let c = snap(3.0, 0.4, 100.9, 100.5, 3.0, 2.0);
        assert!(!p.poll(&b, &c, &w2, t));
        assert!(p.poll(&c, &c, &w2, t));
        assert_eq!(p.proven, w2.versions);
    }

    /// The IPv6 proxier's first sync (38 s, ending after the IPv4 one's)
    /// is no measure of a change's: it leaves the settle time alone.
    #[test]
    fn no_proxiers_first_sync_counts_as_the_longest() {
        let t = Instant::now();
        let mut p = Prover::new(Duration::from_millis(500));
        let v4_first = Snapshot {
            proxiers: vec![(137.6, 99.0), (0.0, 99.0)],
            ..snap(1.0, 37.6, 137.6, 99.0, 2.0, 2.0)
        };
        let v6_first = Snapshot {
            proxiers: vec![(137.6, 99.0), (175.5, 99.0)],
            ..snap(2.0, 75.5, 137.6, 99.0, 2.0, 2.0)
        };
        let change = Snapshot {
            proxiers: vec![(176.4, 176.0), (176.5, 176.0)],
            ..snap(4.0, 76.3, 137.6, 176.0, 4.0, 2.0)
        };
        let w = seen(10, 11, 2, 2);
        p.poll(&Snapshot::default(), &v4_first, &w, t);
        p.poll(&v4_first, &v6_first, &w, t);
        p.poll(&v6_first, &change, &w, t);
        assert!(p.longest < 1.0, "longest {}", p.longest);
        assert_eq!(p.last_duration, 76.3 - 75.5);
    }

    #[test]
    fn a_change_of_one_family_is_proven_by_its_proxier_alone() {
        let t = Instant::now();
        let (mut p, a) = primed(t);
        // An IPv4-only Service changed: the IPv4 proxier queued at 101.0
        // and synced at 101.2; the IPv6 one last synced at 100.0, before
        // that request, and has nothing to do.
        let b = Snapshot {
            proxiers: vec![(101.2, 101.0), (100.0, 99.0)],
            ..snap(2.0, 0.15, 100.0, 101.0, 3.0, 2.0)
        };
        let w = seen(13, 11, 3, 2);
        p.poll(&a, &b, &w, t);
        assert!(p.poll(&b, &b, &w, t));
        assert_eq!(p.proven, w.versions);
        // Both families' times folded into one pair would never be.
        let (mut q, a) = primed(t);
        let folded = snap(2.0, 0.15, 100.0, 101.0, 3.0, 2.0);
        q.poll(&a, &folded, &w, t);
        assert!(!q.poll(&folded, &folded, &w, t));
    }

    #[test]
    fn an_ignored_change_is_proven_without_a_sync() {
        let t = Instant::now();
        let (mut p, a) = primed(t);
        // kube-proxy counted the change and queued nothing.
        let b = snap(1.0, 0.1, 100.0, 99.0, 3.0, 2.0);
        let w = seen(13, 11, 3, 2);
        p.poll(&a, &b, &w, t);
        assert!(p.poll(&b, &b, &w, t));
        assert_eq!(p.proven, w.versions);
    }

    #[test]
    fn uncounted_changes_wait_for_the_bound() {
        let t = Instant::now();
        let mut p = Prover::new(Duration::from_millis(500));
        let a = snap(1.0, 0.1, 100.0, 99.0, 2.0, 2.0);
        let w = seen(10, 11, 3, 2);
        assert!(!p.poll(&Snapshot::default(), &a, &w, t));
        assert!(!p.poll(&a, &a, &w, t + Duration::from_secs(1)));
        assert!(p.poll(&a, &a, &w, t + COUNT_BOUND + Duration::from_millis(1)));
        assert_eq!(p.proven, w.versions);
    }

    #[test]
    fn pending_changes_are_never_proven() {
        let t = Instant::now();
        let mut p = Prover::new(Duration::from_millis(500));
        let mut a = snap(1.0, 0.1, 100.0, 99.0, 2.0, 2.0);
        a.endpoint_pending = 1.0;
        let w = seen(10, 11, 2, 2);
        for i in 0..5 {
            assert!(!p.poll(&a, &a, &w, t + COUNT_BOUND * i));
        }
    }

    #[test]
    fn two_syncs_between_polls_prove_after_the_settle_time_without_another_sync() {
        let t = Instant::now();
        let (mut p, a) = primed(t);
        // Two syncs (100.2..100.4 and 100.9..101.3) between two polls; the
        // request at 100.85 came between them. The histogram only says the
        // last took at most 0.5 s, so it may have started at 100.8.
        let w = seen(12, 11, 3, 2);
        let b = snap(3.0, 0.6, 101.3, 100.85, 3.0, 2.0);
        assert!(!p.poll(&a, &b, &w, t));
        assert!(!p.poll(&b, &b, &w, t + Duration::from_millis(2000)));
        // Nothing moved for minSyncPeriod + 1 s + twice the 0.5 s the syncs
        // took: the last sync saw it.
        assert!(!p.poll(&b, &b, &w, t + Duration::from_millis(2500)));
        assert!(p.poll(&b, &b, &w, t + Duration::from_millis(2525)));
        assert_eq!(p.proven, w.versions);
    }

    #[test]
    fn a_request_during_an_unmeasured_sync_waits_for_the_next_sync() {
        let t = Instant::now();
        let (mut p, a) = primed(t);
        let w = seen(12, 11, 3, 2);
        let b = snap(3.0, 0.6, 101.3, 101.2, 3.0, 2.0);
        assert!(!p.poll(&a, &b, &w, t));
        // The buffered request's sync comes 0.6 s later: the clock restarts
        // and that sync (exactly measured) proves it.
        let c = snap(4.0, 0.7, 101.9, 101.2, 3.0, 2.0);
        assert!(!p.poll(&b, &c, &w, t + Duration::from_millis(600)));
        assert!(p.poll(&c, &c, &w, t + Duration::from_millis(625)));
        // A request that never shows a sync is never proven early.
        let w2 = seen(13, 11, 4, 2);
        let d = snap(4.0, 0.7, 101.9, 102.5, 4.0, 2.0);
        for i in 0..5 {
            assert!(!p.poll(&d, &d, &w2, t + Duration::from_secs(2 + i)));
        }
    }

    #[test]
    fn a_sync_queued_just_before_it_started_is_proven_once_things_settle() {
        // kube-proxy stamps the request, starts the sync 40 us later, stamps
        // its end and then finishes cleaning up: end minus duration lands
        // before the request.
        let t = Instant::now();
        let (mut p, a) = primed(t);
        let w = seen(12, 11, 3, 2);
        let b = snap(2.0, 0.1084, 919.3460, 919.3377, 3.0, 2.0);
        assert!(!p.poll(&a, &b, &w, t));
        let settle = Duration::from_millis(1500) + Duration::from_secs_f64(2.0 * 0.0084);
        assert!(!p.poll(&b, &b, &w, t + settle - Duration::from_millis(10)));
        assert!(!p.poll(&b, &b, &w, t + settle));
        assert!(p.poll(&b, &b, &w, t + settle + Duration::from_millis(25)));
    }
}
