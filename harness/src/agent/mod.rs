//! The per-node agent (`svclab agent`): one process per node, started inside
//! the node's network namespace. It watches the lab's API (`--kubeconfig`,
//! [`watch`]) or reads watch events on stdin, keeps
//! kube-proxy's change tracking, coalesces bursts (a minimum sync period),
//! calls its backend (a full sync first and after every resync period, a
//! partial sync for changes) and writes one JSON line per sync on stdout.
//! It also serves kube-proxy's `/healthz` (0.0.0.0:10256), `/metrics`
//! (127.0.0.1:10249) and health-check node ports in the node's namespace.
//! A failed sync never ends it: it is retried with backoff ([`Retry`]) and
//! counted in the metrics, as kube-proxy does.

pub mod health;
mod http;
pub mod kubeproxy;
pub mod metrics;
pub mod supervisor;
pub mod watch;

use std::io::{BufRead, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::cli::agent::AgentArgs;
use std::net::IpAddr;

use ipnet::IpNet;
use svclab_backends::model::{IpFamily, NodeContext};
use svclab_backends::nodeport_addresses;
use svclab_backends::protocol::{AgentMessage, CpuUsage, SyncMode, SyncReport, WatchEvent};
use svclab_backends::tracker::ChangeTracker;
use svclab_backends::{BackendKind, BackendOptions, Fault, SyncRequest};

impl AgentArgs {
    /// The node as `family`'s proxier sees it; `None` when the lab has no
    /// such family.
    pub fn node_context(&self, family: IpFamily) -> Option<NodeContext> {
        let (node_ip, pod_cidr, cluster_cidr, service_cidr): (IpAddr, IpNet, IpNet, IpNet) =
            match family {
                IpFamily::IPv4 => (
                    self.node_ip.into(),
                    self.pod_cidr.into(),
                    self.cluster_cidr.into(),
                    self.service_cidr.into(),
                ),
                IpFamily::IPv6 => (
                    self.node_ip_v6?.into(),
                    self.pod_cidr_v6?.into(),
                    self.cluster_cidr_v6?.into(),
                    self.service_cidr_v6?.into(),
                ),
            };
        let mut node = NodeContext {
            node_name: self.node.clone(),
            node_ip,
            pod_cidr,
            cluster_cidr,
            service_cidr,
            run_prefix: self.run_prefix.clone(),
            bridge: crate::topology::names::POD_BRIDGE.into(),
            uplink: crate::topology::names::NODE_UPLINK.into(),
            zone: self.zone.clone(),
            node_port_ips: None,
            localhost_node_ports: false,
        };
        if !self.node_port_addresses.is_empty() {
            // A lab node's addresses: its IP on the fabric and its pod
            // bridge's. The flags were checked when they were parsed.
            let addresses = [node.node_ip, node.gateway_ip()];
            node.node_port_ips =
                nodeport_addresses::resolve(&self.node_port_addresses, node.node_ip, &addresses)
                    .ok();
            // Loopback NodePorts are IPv4's only, as in kube-proxy.
            node.localhost_node_ports = family == IpFamily::IPv4
                && nodeport_addresses::matches(
                    &self.node_port_addresses,
                    node.node_ip,
                    std::net::Ipv4Addr::LOCALHOST.into(),
                );
        }
        Some(node)
    }

    /// The families this agent runs a proxier for: IPv4, and IPv6 when
    /// the lab has it and the backend serves it.
    pub fn families(&self) -> Vec<IpFamily> {
        IpFamily::ALL
            .into_iter()
            .filter(|f| self.backend.serves(*f) && self.node_context(*f).is_some())
            .collect()
    }
}

/// One family's proxier in the agent (kube-proxy's metaproxier holds one
/// per family): its node context, its backend instance and its change
/// tracker. Both see every watch event; each takes its own family's.
struct Proxier {
    family: IpFamily,
    node: NodeContext,
    backend: Box<dyn svclab_backends::Backend>,
    tracker: ChangeTracker,
}

enum Input {
    Event(Box<WatchEvent>),
    /// stdin closed or a termination signal: clean up and exit.
    Stop(&'static str),
}

fn rusage(who: nix::sys::resource::UsageWho) -> (f64, f64, u64) {
    let r = nix::sys::resource::getrusage(who).expect("getrusage cannot fail for self/children");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    (
        secs(r.user_time()),
        secs(r.system_time()),
        r.max_rss() as u64,
    )
}

/// This process's peak resident set since its exec (VmHWM), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn emit(out: &mut impl Write, msg: &AgentMessage) {
    let mut line = serde_json::to_string(msg).expect("agent messages serialize");
    line.push('\n');
    // The harness reads these; if it is gone, there is nobody to tell.
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// Runs the agent until stdin closes or a signal arrives. Returns the exit code.
pub fn run(args: AgentArgs) -> i32 {
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
    if let Err(e) = args.backend.capability() {
        return fatal(
            &mut out,
            format!("backend {} cannot run here: {e}", args.backend),
        );
    }
    if let BackendKind::KubeProxy { mode, .. } = &args.backend {
        let version = args
            .backend
            .kube_proxy_version()
            .unwrap_or_default()
            .to_string();
        let mode = *mode;
        drop(out);
        return kubeproxy::run(args, mode, &version);
    }
    let families = args.families();
    let mut proxiers: Vec<Proxier> = Vec::with_capacity(families.len());
    for family in families {
        let node = args
            .node_context(family)
            .expect("families() lists only the lab's families");
        // The IPv6 proxier's dumps go beside the IPv4 one's, in `ipv6/`.
        let dump_dir = args.dump_dir.as_ref().map(|d| match family {
            IpFamily::IPv4 => d.clone(),
            IpFamily::IPv6 => d.join("ipv6"),
        });
        if let Some(d) = &dump_dir
            && let Err(e) = std::fs::create_dir_all(d)
        {
            cleanup_all(&mut proxiers, &args.node);
            return fatal(&mut out, format!("creating dump dir {}: {e}", d.display()));
        }
        let options = BackendOptions {
            ipvs_scheduler: args.ipvs_scheduler.clone(),
            faults: args.faults.clone(),
            dump_dir,
            family,
            ..BackendOptions::default()
        };
        let mut backend = svclab_backends::create(&args.backend, &options);
        if let Err(e) = backend.setup(&node) {
            let _ = backend.cleanup();
            cleanup_all(&mut proxiers, &args.node);
            return fatal(
                &mut out,
                format!("backend {} setup ({family}): {e}", args.backend),
            );
        }
        proxiers.push(Proxier {
            family,
            node,
            backend,
            tracker: ChangeTracker::new(&args.node)
                .with_zone(args.zone.clone())
                .for_family(family),
        });
    }
    let dual = proxiers.len() > 1;

    let (tx, rx) = channel::<Input>();
    let stdin_tx = tx.clone();
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<WatchEvent>(&line) {
                    Ok(ev) => {
                        if stdin_tx.send(Input::Event(Box::new(ev))).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("agent: ignoring a malformed event line: {e}"),
                }
            }
            let _ = stdin_tx.send(Input::Stop("stdin closed"));
        })
        .expect("spawning a thread");

    if let Some(kubeconfig) = &args.kubeconfig
        && let Err(e) = watch::spawn_selecting(
            kubeconfig,
            &args.node,
            tx.clone(),
            // The fault drops kube-proxy's selector: Services labelled for
            // another proxy, or headless, are programmed too.
            !args
                .faults
                .contains(&svclab_backends::Fault::IgnoreProxyLabels),
        )
    {
        cleanup_all(&mut proxiers, &args.node);
        return fatal(&mut out, format!("starting the informers: {e}"));
    }

    let shared = Arc::new(Mutex::new(metrics::AgentMetrics::for_backend(
        &args.node,
        &args.backend,
    )));
    let health = health::HealthState::new()
        .counting_terminating(args.faults.contains(&Fault::HealthCountsTerminating));
    let servers = match metrics::start_servers(&args, shared.clone(), health.clone(), tx) {
        Ok(s) => s,
        Err(e) => {
            cleanup_all(&mut proxiers, &args.node);
            return fatal(&mut out, format!("starting healthz/metrics servers: {e}"));
        }
    };
    emit(
        &mut out,
        &AgentMessage::Started {
            node: args.node.clone(),
            backend: args.backend.to_string(),
            pid: std::process::id(),
        },
    );

    let min_sync = Duration::from_millis(args.min_sync_period_ms);
    let sync_period = Duration::from_millis(args.sync_period_ms.max(1));
    let mut seq = 0u64;
    let mut last_sync: Option<Instant> = None;
    let mut last_full = Instant::now();
    let mut retry = Retry::new(sync_period);
    // Every proxier sees every event, so they are synced together.
    let synced = |p: &[Proxier]| p.iter().all(|p| p.tracker.is_synced());
    let pending = |p: &[Proxier]| p.iter().any(|p| p.tracker.has_pending());
    let stop_reason = loop {
        let wait = if !synced(&proxiers) {
            Duration::from_secs(3600)
        } else if let Some(at) = retry.at {
            at.saturating_duration_since(Instant::now())
        } else if pending(&proxiers) {
            last_sync.map_or(Duration::ZERO, |t| min_sync.saturating_sub(t.elapsed()))
        } else {
            sync_period.saturating_sub(last_full.elapsed())
        };
        let round = next_round(&rx, wait, |ev| {
            // A malformed Service is skipped by both trackers, a malformed
            // IPv6 slice by the IPv6 one only: say each reason once.
            let mut skipped: Vec<String> = Vec::new();
            for p in proxiers.iter_mut() {
                if let Err(e) = p.tracker.apply(ev) {
                    let e = e.to_string();
                    if !skipped.contains(&e) {
                        tracing::warn!("agent {}: skipping object: {e}", args.node);
                        skipped.push(e);
                    }
                }
                if let Err(e) = p.backend.observe(ev) {
                    tracing::warn!("agent {} ({}): backend observe: {e}", args.node, p.family);
                }
            }
        });
        if let Err(why) = round {
            break why;
        }
        if !synced(&proxiers) {
            continue;
        }
        // After a failed sync the next one waits for the retry's backoff
        // and is a full one (the failed sync took the changes with it),
        // as kube-proxy's needFullSync after a failure.
        let (full_due, partial_due) = match retry.at {
            Some(at) => (Instant::now() >= at, false),
            None => (
                seq == 0 || last_full.elapsed() >= sync_period,
                pending(&proxiers) && last_sync.is_none_or(|t| t.elapsed() >= min_sync),
            ),
        };
        if !(full_due || partial_due) {
            continue;
        }
        let mode = if full_due {
            SyncMode::Full
        } else {
            SyncMode::Partial
        };
        seq += 1;
        // Each proxier syncs in turn; the reports go out once all have, so
        // a change is reported programmed only when every family has it.
        let reports: Vec<SyncReport> = proxiers
            .iter_mut()
            .map(|p| {
                let mut report = sync_once(&args, p, mode, seq);
                report.family = dual.then_some(p.family);
                report
            })
            .collect();
        last_sync = Some(Instant::now());
        if mode == SyncMode::Full {
            last_full = Instant::now();
        }
        let failed = reports.iter().any(|r| r.error.is_some());
        let states: Vec<&svclab_backends::model::ProxyState> =
            proxiers.iter().map(|p| p.tracker.state()).collect();
        health.update(&states, &proxiers[0].node, !failed);
        {
            let mut m = shared.lock().expect("metrics lock");
            for report in &reports {
                m.record(report);
            }
            if failed {
                let wait = retry.failed();
                m.record_retry();
                tracing::warn!(
                    "agent {}: retrying in {:.1} s ({} failed sync(s) in a row)",
                    args.node,
                    wait.as_secs_f64(),
                    retry.failures
                );
            } else {
                retry.succeeded();
            }
        }
        for report in reports {
            emit(&mut out, &AgentMessage::Sync(Box::new(report)));
        }
    };
    tracing::warn!(
        "agent {}: stopping ({stop_reason}); cleaning up backend {}",
        args.node,
        args.backend
    );
    drop(servers);
    if cleanup_all(&mut proxiers, &args.node) {
        0
    } else {
        4
    }
}

/// Cleans up every proxier's backend, logging each error; `true` when all
/// went cleanly.
fn cleanup_all(proxiers: &mut [Proxier], node: &str) -> bool {
    let mut clean = true;
    for p in proxiers.iter_mut() {
        if let Err(errors) = p.backend.cleanup() {
            clean = false;
            for e in errors {
                tracing::error!("agent {node} ({}): cleanup: {e}", p.family);
            }
        }
    }
    clean
}

/// One round of input: waits up to `wait` for the first, then takes what
/// is already queued too (a burst folds into one round), handing each event
/// to `apply` in order. `Err` with the reason once stdin closed or a signal
/// arrived.
fn next_round(
    rx: &Receiver<Input>,
    wait: Duration,
    mut apply: impl FnMut(&WatchEvent),
) -> Result<(), &'static str> {
    let mut first = match rx.recv_timeout(wait) {
        Ok(i) => Some(i),
        Err(RecvTimeoutError::Timeout) => None,
        Err(RecvTimeoutError::Disconnected) => return Err("stdin closed"),
    };
    while let Some(input) = first.take().or_else(|| rx.try_recv().ok()) {
        match input {
            Input::Stop(why) => return Err(why),
            Input::Event(ev) => apply(&ev),
        }
    }
    Ok(())
}

/// When a failed sync is tried again: after 1 s, then twice as long after
/// every further failure, at most the sync period; a success resets it.
/// The agent never exits over a failed sync (kube-proxy neither): the rules
/// it could not write stay due until a sync succeeds.
#[derive(Debug)]
pub struct Retry {
    pub failures: u32,
    pub at: Option<Instant>,
    cap: Duration,
}

pub const RETRY_START: Duration = Duration::from_secs(1);

impl Retry {
    pub fn new(sync_period: Duration) -> Retry {
        Retry {
            failures: 0,
            at: None,
            cap: sync_period.max(RETRY_START),
        }
    }

    /// The backoff after the `failures`-th failure in a row.
    pub fn backoff(&self, failures: u32) -> Duration {
        RETRY_START
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.cap)
    }

    /// Records a failure; returns the wait before the retry.
    pub fn failed(&mut self) -> Duration {
        self.failures += 1;
        let wait = self.backoff(self.failures);
        self.at = Some(Instant::now() + wait);
        wait
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.at = None;
    }
}

fn sync_once(args: &AgentArgs, p: &mut Proxier, mode: SyncMode, seq: u64) -> SyncReport {
    let Proxier {
        family,
        node,
        backend,
        tracker,
    } = p;
    use nix::sys::resource::UsageWho;
    let changes = tracker.take_changes(mode == SyncMode::Full);
    let triggers = tracker.take_trigger_times();
    let started_at = crate::state::now();
    let (su0, ss0, _) = rusage(UsageWho::RUSAGE_SELF);
    let (cu0, cs0, _) = rusage(UsageWho::RUSAGE_CHILDREN);
    let t0 = Instant::now();
    let result = backend.sync(&SyncRequest {
        mode,
        seq,
        state: tracker.state(),
        changes: &changes,
        node,
    });
    let wall = t0.elapsed().as_secs_f64();
    let (su1, ss1, rusage_rss) = rusage(UsageWho::RUSAGE_SELF);
    // getrusage's peak survives execve: it would be the harness's peak at
    // the moment it forked this agent. The mm's own high-water mark is not.
    let self_rss = peak_rss_kib().unwrap_or(rusage_rss);
    let (cu1, cs1, child_rss) = rusage(UsageWho::RUSAGE_CHILDREN);
    let ended = crate::state::now();
    let state = tracker.state();
    let (outcome, error) = match result {
        Ok(o) => (o, None),
        Err(e) => (Default::default(), Some(e.to_string())),
    };
    if let Some(e) = &error {
        tracing::warn!(
            "agent {} ({family}): {mode} sync {seq} failed: {e}",
            args.node
        );
    }
    SyncReport {
        node: args.node.clone(),
        backend: args.backend.to_string(),
        seq,
        mode,
        started_at,
        wall_seconds: wall,
        cpu: CpuUsage {
            self_user_seconds: su1 - su0,
            self_sys_seconds: ss1 - ss0,
            children_user_seconds: cu1 - cu0,
            children_sys_seconds: cs1 - cs0,
            self_max_rss_kib: self_rss,
            children_max_rss_kib: child_rss,
        },
        rules: outcome.rules,
        written: outcome.written,
        services: state.services.len() as u64,
        endpoints: state.endpoint_count() as u64,
        service_ports_changed: changes.changed.len() as u64,
        service_events: changes.service_events,
        endpoint_events: changes.endpoint_events,
        resource_version: tracker.resource_version(),
        versions: tracker.versions(),
        programming_seconds: triggers.iter().map(|t| (ended - t).max(0.0)).collect(),
        error,
        family: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_ends_on_a_timeout_a_stop_or_a_closed_input() {
        let (tx, rx) = channel::<Input>();
        let mut events = 0;
        assert_eq!(
            next_round(&rx, Duration::from_millis(1), |_| events += 1),
            Ok(())
        );
        tx.send(Input::Stop("signal")).unwrap();
        assert_eq!(
            next_round(&rx, Duration::ZERO, |_| events += 1),
            Err("signal")
        );
        drop(tx);
        assert_eq!(
            next_round(&rx, Duration::ZERO, |_| events += 1),
            Err("stdin closed")
        );
        assert_eq!(events, 0);
    }

    #[test]
    fn a_failed_sync_is_retried_with_a_doubling_backoff() {
        let mut r = Retry::new(Duration::from_secs(10));
        let waits: Vec<u64> = (0..6).map(|_| r.failed().as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10], "capped at the sync period");
        assert!(r.at.is_some());
        r.succeeded();
        assert_eq!((r.failures, r.at), (0, None));
        assert_eq!(
            r.failed(),
            RETRY_START,
            "a success starts the backoff afresh"
        );
    }
}
