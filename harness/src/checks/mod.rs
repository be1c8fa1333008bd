//! The checks: one named expectation per Service behaviour
//! (`shared/BEHAVIOURS.md`), each PASS, FAIL with the probes that showed it,
//! or SKIP with the reason. Expected outcomes come from [`expect`], which
//! reads only the Kubernetes objects.

pub mod balance;
pub mod expect;
mod lifecycle;
mod nodeport;
mod reach;

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use svclab_backends::{BackendKind, BackendOptions, Feature};

use crate::lab::Lab;
use crate::probe::{Outcome, ProbeResult, ProbeSpec};
use expect::{Ep, Target};

/// Every check, in the order they run and are reported.
pub const CHECKS: [&str; 20] = [
    "clusterip-tcp",
    "clusterip-udp",
    "multiport",
    "same-port-two-protocols",
    "pod-source-preserved",
    "unrelated-port-untouched",
    "no-endpoints-reject",
    "hairpin-masquerade",
    "nodeport",
    "nodeport-masquerade",
    "etp-local-preserves-source",
    "etp-local-healthcheck",
    "itp-local",
    "session-affinity-clientip",
    "balance-uniform",
    "endpoint-removed-tcp",
    "stale-udp-conntrack",
    "becomes-ready",
    "terminating-fallback",
    "service-update",
];

/// The backend features a check needs; a backend that lacks one makes the
/// check SKIP with the backend's reason.
fn needs(check: &str) -> &'static [Feature] {
    use Feature::*;
    match check {
        "pod-source-preserved" => &[Dnat, SourcePreservation],
        "no-endpoints-reject" => &[Dnat, RejectNoEndpoints],
        "nodeport" | "nodeport-masquerade" => &[Dnat, NodePort],
        "etp-local-preserves-source" => &[Dnat, NodePort, TrafficPolicyLocal, SourcePreservation],
        "etp-local-healthcheck" => &[NodePort, TrafficPolicyLocal, NodePortHealthCheck],
        "itp-local" => &[Dnat, TrafficPolicyLocal],
        "session-affinity-clientip" => &[Dnat, SessionAffinity],
        "balance-uniform" => &[Dnat, UniformBalance],
        "stale-udp-conntrack" => &[Dnat, ConntrackCleanup],
        "becomes-ready" => &[Dnat, ConntrackCleanup],
        "terminating-fallback" => &[Dnat, TrafficPolicyLocal],
        _ => &[Dnat],
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        })
    }
}

/// One row of proof: from where, to what, what was expected, what was seen.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    pub vantage: String,
    pub target: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
    pub probes: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    pub name: String,
    pub verdict: Verdict,
    /// One line: why it passed, failed or was skipped.
    pub summary: String,
    pub evidence: Vec<Evidence>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub balance: Vec<balance::BalanceTable>,
    /// For a failed check: the kernel's trace of one failing probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    pub seconds: f64,
}

impl CheckResult {
    pub fn skip(name: &str, why: impl Into<String>) -> CheckResult {
        CheckResult {
            name: name.into(),
            verdict: Verdict::Skip,
            summary: why.into(),
            evidence: Vec::new(),
            balance: Vec::new(),
            trace: None,
            seconds: 0.0,
        }
    }

    /// PASS when every piece of evidence is ok, FAIL otherwise; SKIP with
    /// `none` when there is no evidence at all.
    fn from_evidence(name: &str, evidence: Vec<Evidence>, none: &str) -> CheckResult {
        if evidence.is_empty() {
            return CheckResult::skip(name, none);
        }
        let bad = evidence.iter().filter(|e| !e.ok).count();
        let probes: usize = evidence.iter().map(|e| e.probes).sum();
        let summary = if bad == 0 {
            format!(
                "{} case(s), {probes} probe(s), all as expected",
                evidence.len()
            )
        } else {
            let first = evidence.iter().find(|e| !e.ok).expect("bad > 0");
            format!(
                "{bad} of {} case(s) wrong; e.g. {} -> {}: expected {}, saw {}",
                evidence.len(),
                first.vantage,
                first.target,
                first.expected,
                first.observed
            )
        };
        CheckResult {
            name: name.into(),
            verdict: if bad == 0 {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            summary,
            evidence,
            balance: Vec::new(),
            trace: None,
            seconds: 0.0,
        }
    }

    fn error(name: &str, e: &anyhow::Error) -> CheckResult {
        CheckResult {
            name: name.into(),
            verdict: Verdict::Fail,
            summary: format!("the check could not run: {e:#}"),
            evidence: Vec::new(),
            balance: Vec::new(),
            trace: None,
            seconds: 0.0,
        }
    }
}

/// Where a probe comes from.
#[derive(Clone, Debug)]
pub struct Vantage {
    /// `pod`, `node`, `external`, or `hairpin`.
    pub kind: &'static str,
    pub name: String,
    pub node: Option<String>,
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// Knobs of a check run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub timeout: Duration,
    /// How fast a Service without endpoints must refuse (1 s on a host).
    pub refuse_within: Duration,
    pub per_target: usize,
    pub concurrency: usize,
    pub balance_connections: usize,
    pub min_p_value: f64,
}

pub struct Ctx<'a> {
    pub lab: &'a mut Lab,
    pub limits: BTreeMap<Feature, String>,
    pub settings: Settings,
    /// ClusterIP probes already made: (vantage name, target label) -> results.
    cache: HashMap<(String, String), Vec<ProbeResult>>,
    /// The first failing probe of the running check, to trace if it fails.
    trace_request: Option<(Vantage, Target, std::net::SocketAddrV4)>,
}

impl<'a> Ctx<'a> {
    pub fn targets(&self) -> Vec<Target> {
        expect::targets(&self.lab.cp())
    }

    /// The lab's client pods, one per node.
    pub fn clients(&self) -> Vec<Vantage> {
        self.lab
            .scenario
            .pods
            .iter()
            .zip(&self.lab.topology.pods)
            .filter(|(p, _)| p.client)
            .map(|(p, net)| Vantage {
                kind: "pod",
                name: p.key(),
                node: Some(self.lab.topology.nodes[p.node].name.clone()),
                netns: net.netns.clone(),
                ip: p.ip,
            })
            .collect()
    }

    pub fn nodes(&self) -> Vec<Vantage> {
        self.lab
            .topology
            .nodes
            .iter()
            .map(|n| Vantage {
                kind: "node",
                name: n.name.clone(),
                node: Some(n.name.clone()),
                netns: n.netns.clone(),
                ip: n.ip,
            })
            .collect()
    }

    pub fn external(&self) -> Option<Vantage> {
        let t = &self.lab.topology;
        Some(Vantage {
            kind: "external",
            name: "external".into(),
            node: None,
            netns: t.external.clone()?,
            ip: t.external_ip?,
        })
    }

    /// The vantage of the pod behind an endpoint (for hairpin probes).
    pub fn pod_vantage(&self, ep: &Ep) -> Option<Vantage> {
        let (ns, name) = ep.pod.split_once('/')?;
        let net = self.lab.topology.pod(ns, name)?;
        Some(Vantage {
            kind: "hairpin",
            name: ep.pod.clone(),
            node: Some(self.lab.topology.nodes[net.node].name.clone()),
            netns: net.netns.clone(),
            ip: net.ip,
        })
    }

    pub fn node_ip(&self, node: &str) -> Option<Ipv4Addr> {
        self.lab.topology.node(node).map(|n| n.ip)
    }

    pub fn spec(
        &self,
        target: std::net::SocketAddrV4,
        protocol: svclab_backends::model::Protocol,
    ) -> ProbeSpec {
        ProbeSpec::new(target, protocol, self.settings.timeout)
    }

    pub async fn probe(
        &self,
        v: &Vantage,
        specs: Vec<ProbeSpec>,
    ) -> anyhow::Result<Vec<ProbeResult>> {
        self.lab
            .prober
            .probe_many(&v.netns, specs, self.settings.concurrency)
            .await
    }

    /// `per_target` probes from `v` to `target`'s VIP, cached.
    pub async fn probe_vip(
        &mut self,
        v: &Vantage,
        target: &Target,
    ) -> anyhow::Result<Vec<ProbeResult>> {
        let key = (v.name.clone(), target.label());
        if let Some(r) = self.cache.get(&key) {
            return Ok(r.clone());
        }
        let spec = self.spec(target.vip_addr(), target.protocol);
        let r = self.probe(v, vec![spec; self.settings.per_target]).await?;
        self.cache.insert(key, r.clone());
        Ok(r)
    }

    /// Changes the cluster and waits until every agent applied it; the
    /// probe cache is dropped since answers may differ now.
    pub async fn change(
        &mut self,
        events: Vec<svclab_backends::protocol::WatchEvent>,
    ) -> anyhow::Result<()> {
        self.cache.clear();
        self.lab.apply(events).await
    }

    /// Remembers a failing probe of the running check (the first one only):
    /// if the check fails, the report gets the kernel's trace of it.
    pub fn want_trace(&mut self, v: &Vantage, t: &Target, address: std::net::SocketAddrV4) {
        if self.trace_request.is_none() {
            self.trace_request = Some((v.clone(), t.clone(), address));
        }
    }

    /// Vantage name qualified with its kind relative to a target: a pod
    /// client is `pod-same-node` when its node hosts an endpoint.
    pub fn vantage_label(&self, v: &Vantage, target: &Target) -> String {
        let kind = match v.kind {
            "pod" => {
                let same = v
                    .node
                    .as_ref()
                    .is_some_and(|n| target.nodes_with_endpoints().contains(n));
                if same {
                    "pod-same-node"
                } else {
                    "pod-other-node"
                }
            }
            k => k,
        };
        format!("{kind} {}", v.name)
    }
}

/// Counts answers per pod and failures per outcome: `web-0 ×7, web-1 ×13,
/// timeout ×2`.
pub fn tally(results: &[ProbeResult]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in results {
        let k = match (&r.outcome, &r.answer) {
            (Outcome::Answered, Some(w)) => format!("{}:{}", w.pod, w.port),
            (Outcome::Error(e), _) => format!("error ({e})"),
            (o, _) => format!("{o:?}").to_lowercase(),
        };
        *counts.entry(k).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `web-0:8080, web-1:8080` for an endpoint set.
pub fn names(eps: &[&Ep]) -> String {
    if eps.is_empty() {
        return "no endpoint".into();
    }
    eps.iter()
        .map(|e| format!("{}:{}", e.pod, e.port))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every probe answered, each by one of `eps` on its target port.
pub fn all_reach(results: &[ProbeResult], eps: &[&Ep]) -> bool {
    !results.is_empty()
        && results.iter().all(|r| {
            r.outcome == Outcome::Answered
                && r.answer
                    .as_ref()
                    .is_some_and(|w| eps.iter().any(|e| e.pod == w.pod && e.port == w.port))
        })
}

/// No probe was answered.
pub fn none_answered(results: &[ProbeResult]) -> bool {
    results.iter().all(|r| r.outcome != Outcome::Answered)
}

/// Runs every check against a lab whose agents run `backend`, in order.
/// Once a stop signal arrives no further check starts, the running one is
/// cancelled (its probes with it) and gets no verdict: the result holds
/// only the checks that finished before the signal.
pub async fn run_all(
    lab: &mut Lab,
    backend: &BackendKind,
    options: &BackendOptions,
    settings: Settings,
    selected: &[&'static str],
    progress: &indicatif::ProgressBar,
) -> Vec<CheckResult> {
    let limits: BTreeMap<Feature, String> = backend.limitations(options).into_iter().collect();
    let mut ctx = Ctx {
        lab,
        limits,
        settings,
        cache: HashMap::new(),
        trace_request: None,
    };
    let mut out = Vec::new();
    for &name in selected {
        if crate::stop::stopping() {
            break;
        }
        progress.set_message(format!("{backend}: {name}"));
        let start = Instant::now();
        let missing = needs(name).iter().find_map(|f| ctx.limits.get(f).cloned());
        ctx.trace_request = None;
        let mut result = match missing {
            Some(reason) => CheckResult::skip(name, format!("backend {backend}: {reason}")),
            None => {
                let ran = tokio::select! {
                    biased;
                    _ = crate::stop::stopped() => None,
                    r = run_one(&mut ctx, name) => Some(r),
                };
                match ran {
                    // Cancelled: no verdict for a check that did not finish.
                    None => break,
                    Some(Ok(r)) => r,
                    Some(Err(e)) => CheckResult::error(name, &e),
                }
            }
        };
        // A stop signal while the check ran: what it saw may be the
        // teardown, not the backend.
        if crate::stop::stopping() {
            break;
        }
        if result.verdict == Verdict::Fail
            && let Some((v, t, address)) = ctx.trace_request.take()
        {
            progress.set_message(format!("{backend}: {name}: tracing a failing probe"));
            let traced = tokio::select! {
                biased;
                _ = crate::stop::stopped() => None,
                t = crate::trace::for_failure(ctx.lab, &v, &t, address) => Some(t),
            };
            result.trace = match traced {
                None => None,
                Some(Some(Ok(trace))) => Some(crate::trace::text(&trace)),
                Some(Some(Err(e))) => Some(format!("the trace could not be taken: {e}")),
                Some(None) => None,
            };
        }
        result.seconds = start.elapsed().as_secs_f64();
        out.push(result);
        progress.inc(1);
        // Between checks: a dead agent is restarted (with backoff) before
        // the next check relies on it.
        ctx.lab.supervise().await;
    }
    out
}

async fn run_one(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    match name {
        "clusterip-tcp" => reach::clusterip(ctx, name, svclab_backends::model::Protocol::Tcp).await,
        "clusterip-udp" => reach::clusterip(ctx, name, svclab_backends::model::Protocol::Udp).await,
        "multiport" => reach::multiport(ctx, name).await,
        "same-port-two-protocols" => reach::same_port_two_protocols(ctx, name).await,
        "pod-source-preserved" => reach::pod_source_preserved(ctx, name).await,
        "unrelated-port-untouched" => reach::unrelated_port(ctx, name).await,
        "no-endpoints-reject" => reach::no_endpoints_reject(ctx, name).await,
        "hairpin-masquerade" => reach::hairpin(ctx, name).await,
        "nodeport" => nodeport::nodeport(ctx, name).await,
        "nodeport-masquerade" => nodeport::nodeport_masquerade(ctx, name).await,
        "etp-local-preserves-source" => nodeport::etp_local(ctx, name).await,
        "etp-local-healthcheck" => nodeport::etp_local_healthcheck(ctx, name).await,
        "itp-local" => nodeport::itp_local(ctx, name).await,
        "session-affinity-clientip" => lifecycle::affinity(ctx, name).await,
        "balance-uniform" => balance::check(ctx, name).await,
        "endpoint-removed-tcp" => lifecycle::endpoint_removed(ctx, name).await,
        "stale-udp-conntrack" => lifecycle::stale_udp(ctx, name).await,
        "becomes-ready" => lifecycle::becomes_ready(ctx, name).await,
        "terminating-fallback" => lifecycle::terminating_fallback(ctx, name).await,
        "service-update" => lifecycle::service_update(ctx, name).await,
        other => anyhow::bail!("unknown check {other}"),
    }
}
