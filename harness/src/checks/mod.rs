//! The checks: one named expectation per Service behaviour
//! (`shared/BEHAVIOURS.md`), each PASS, FAIL with the probes that showed it,
//! or SKIP with the reason. Expected outcomes come from [`expect`], which
//! reads only the Kubernetes objects.

mod agent_restart;
pub mod balance;
pub mod expect;
mod health_terminating;
mod lifecycle;
mod loadbalancer;
mod localhost_nodeport;
mod nodeport;
mod nodeport_addresses;
mod parity;
mod reach;
mod sctp;
mod traffic_distribution;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use svclab_backends::model::{IpFamily, Protocol};
use svclab_backends::{BackendKind, Feature};

use crate::lab::Lab;
pub use crate::probe::Vantage;
use crate::probe::{Outcome, ProbeResult, ProbeSpec};
use expect::{Ep, Target};

/// How a check runs: against the lab in `ctx`, under its own name.
pub type RunCheck =
    for<'c, 'a> fn(
        &'c mut Ctx<'a>,
        &'static str,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<CheckResult>> + 'c>>;

/// One check: its name, the backend features it needs (a backend that
/// lacks one makes the check SKIP with the backend's reason), and how it
/// runs. Adding a check is one entry in [`CHECKS`] and its function.
pub struct CheckDef {
    pub name: &'static str,
    pub needs: &'static [Feature],
    pub run: RunCheck,
}

/// Every check, in the order they run and are reported.
pub const CHECKS: &[CheckDef] = {
    use Feature::*;
    &[
        CheckDef {
            name: "clusterip-tcp",
            needs: &[Dnat],
            run: |c, n| Box::pin(reach::clusterip(c, n, Protocol::Tcp)),
        },
        CheckDef {
            name: "clusterip-udp",
            needs: &[Dnat],
            run: |c, n| Box::pin(reach::clusterip(c, n, Protocol::Udp)),
        },
        CheckDef {
            name: "multiport",
            needs: &[Dnat],
            run: |c, n| Box::pin(reach::multiport(c, n)),
        },
        CheckDef {
            name: "same-port-two-protocols",
            needs: &[Dnat],
            run: |c, n| Box::pin(reach::same_port_two_protocols(c, n)),
        },
        CheckDef {
            name: "pod-source-preserved",
            needs: &[Dnat, SourcePreservation],
            run: |c, n| Box::pin(reach::pod_source_preserved(c, n)),
        },
        CheckDef {
            name: "unrelated-port-untouched",
            needs: &[Dnat],
            run: |c, n| Box::pin(reach::unrelated_port(c, n)),
        },
        CheckDef {
            name: "no-endpoints-reject",
            needs: &[Dnat, RejectNoEndpoints],
            run: |c, n| Box::pin(reach::no_endpoints_reject(c, n)),
        },
        CheckDef {
            name: "hairpin-masquerade",
            needs: &[Dnat],
            run: |c, n| Box::pin(reach::hairpin(c, n)),
        },
        CheckDef {
            name: "nodeport",
            needs: &[Dnat, NodePort],
            run: |c, n| Box::pin(nodeport::nodeport(c, n)),
        },
        CheckDef {
            name: "nodeport-masquerade",
            needs: &[Dnat, NodePort],
            run: |c, n| Box::pin(nodeport::nodeport_masquerade(c, n)),
        },
        CheckDef {
            name: "etp-local-preserves-source",
            needs: &[Dnat, NodePort, TrafficPolicyLocal, SourcePreservation],
            run: |c, n| Box::pin(nodeport::etp_local(c, n)),
        },
        CheckDef {
            name: "etp-local-healthcheck",
            needs: &[NodePort, TrafficPolicyLocal, NodePortHealthCheck],
            run: |c, n| Box::pin(nodeport::etp_local_healthcheck(c, n)),
        },
        CheckDef {
            name: "itp-local",
            needs: &[Dnat, TrafficPolicyLocal],
            run: |c, n| Box::pin(nodeport::itp_local(c, n)),
        },
        CheckDef {
            name: "session-affinity-clientip",
            needs: &[Dnat, SessionAffinity],
            run: |c, n| Box::pin(lifecycle::affinity(c, n)),
        },
        CheckDef {
            name: "balance-uniform",
            needs: &[Dnat, UniformBalance],
            run: |c, n| Box::pin(balance::check(c, n)),
        },
        CheckDef {
            name: "endpoint-removed-tcp",
            needs: &[Dnat],
            run: |c, n| Box::pin(lifecycle::endpoint_removed(c, n)),
        },
        CheckDef {
            name: "stale-udp-conntrack",
            needs: &[Dnat, ConntrackCleanup],
            run: |c, n| Box::pin(lifecycle::stale_udp(c, n)),
        },
        CheckDef {
            name: "becomes-ready",
            needs: &[Dnat, ConntrackCleanup],
            run: |c, n| Box::pin(lifecycle::becomes_ready(c, n)),
        },
        CheckDef {
            name: "terminating-fallback",
            needs: &[Dnat, TrafficPolicyLocal],
            run: |c, n| Box::pin(lifecycle::terminating_fallback(c, n)),
        },
        CheckDef {
            name: "service-update",
            needs: &[Dnat],
            run: |c, n| Box::pin(lifecycle::service_update(c, n)),
        },
        CheckDef {
            name: "healthcheck-terminating",
            needs: &[NodePort, TrafficPolicyLocal],
            run: |c, n| Box::pin(health_terminating::healthcheck_terminating(c, n)),
        },
        CheckDef {
            name: "localhost-nodeport",
            needs: &[Dnat, NodePort, NodeOrigin],
            run: |c, n| Box::pin(localhost_nodeport::localhost_nodeport(c, n)),
        },
        CheckDef {
            name: "nodeport-addresses",
            needs: &[Dnat, NodePort],
            run: |c, n| Box::pin(nodeport_addresses::nodeport_addresses(c, n)),
        },
        CheckDef {
            name: "agent-restart",
            needs: &[Dnat, SurvivesAgentRestart],
            run: |c, n| Box::pin(agent_restart::agent_restart(c, n)),
        },
        CheckDef {
            name: "external-ips",
            needs: &[Dnat],
            run: |c, n| Box::pin(parity::external_ips(c, n)),
        },
        CheckDef {
            name: "publish-not-ready",
            needs: &[Dnat],
            run: |c, n| Box::pin(parity::publish_not_ready(c, n)),
        },
        CheckDef {
            name: "proxy-name-and-headless-labels",
            needs: &[Dnat],
            run: |c, n| Box::pin(parity::proxy_labels(c, n)),
        },
        CheckDef {
            name: "affinity-timeout",
            needs: &[Dnat, SessionAffinity, AffinityTimeout],
            run: |c, n| Box::pin(parity::affinity_timeout(c, n)),
        },
        CheckDef {
            name: "sctp",
            needs: &[Dnat, Sctp],
            run: |c, n| Box::pin(sctp::sctp(c, n)),
        },
        CheckDef {
            name: "service-recreate",
            needs: &[Dnat, NodePort],
            run: |c, n| Box::pin(parity::service_recreate(c, n)),
        },
        CheckDef {
            name: "unallocated-clusterip",
            needs: &[Dnat],
            run: |c, n| Box::pin(parity::unallocated_clusterip(c, n)),
        },
        CheckDef {
            name: "traffic-distribution",
            needs: &[Dnat],
            run: |c, n| Box::pin(traffic_distribution::traffic_distribution(c, n)),
        },
        CheckDef {
            name: "loadbalancer-ingress",
            needs: &[Dnat],
            run: |c, n| Box::pin(loadbalancer::loadbalancer_ingress(c, n)),
        },
        CheckDef {
            name: "loadbalancer-source-ranges",
            needs: &[Dnat, LoadBalancerSourceRanges],
            run: |c, n| Box::pin(loadbalancer::loadbalancer_source_ranges(c, n)),
        },
    ]
};

/// Every check's name, in run order.
pub fn check_names() -> impl Iterator<Item = &'static str> {
    CHECKS.iter().map(|c| c.name)
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

    /// A failure without evidence: something around the checks (the lab,
    /// a matrix cell, a written ruleset) went wrong, and `summary` says what.
    pub fn fail(name: &str, summary: impl Into<String>) -> CheckResult {
        CheckResult {
            verdict: Verdict::Fail,
            ..CheckResult::skip(name, summary)
        }
    }

    fn error(name: &str, e: &anyhow::Error) -> CheckResult {
        CheckResult::fail(name, format!("the check could not run: {e:#}"))
    }
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
    /// The family the checks run in now: their targets are the Services'
    /// ClusterIPs and endpoints of it, their vantages dial from their
    /// address of it.
    pub family: IpFamily,
    /// ClusterIP probes already made: (vantage name, target label) -> results.
    cache: HashMap<(String, String), Vec<ProbeResult>>,
    /// The first failing probe of the running check, to trace if it fails.
    trace_request: Option<TraceRequest>,
}

impl<'a> Ctx<'a> {
    /// The TCP and UDP Service ports the checks probe. SCTP ones need a
    /// kernel with SCTP; only the sctp check probes them
    /// ([`Self::sctp_targets`]).
    pub fn targets(&self) -> Vec<Target> {
        expect::targets(&self.lab.cp(), self.family)
            .into_iter()
            .filter(|t| t.protocol != svclab_backends::model::Protocol::Sctp)
            .collect()
    }

    /// The SCTP Service ports.
    pub fn sctp_targets(&self) -> Vec<Target> {
        expect::targets(&self.lab.cp(), self.family)
            .into_iter()
            .filter(|t| t.protocol == svclab_backends::model::Protocol::Sctp)
            .collect()
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
                ip: self.pick(p.ip, p.ip6),
            })
            .collect()
    }

    /// The address of the checks' family, from an IPv4 one and the IPv6
    /// one a dual-stack or IPv6 lab gives. The IPv6 checks run only in a
    /// lab with IPv6, where every namespace has an IPv6 address: one
    /// without is a bug in the topology, and it stops the run rather than
    /// let an IPv6 check probe over IPv4.
    fn pick(&self, v4: Ipv4Addr, v6: Option<std::net::Ipv6Addr>) -> IpAddr {
        match self.family {
            IpFamily::IPv4 => v4.into(),
            IpFamily::IPv6 => v6
                .expect("a lab with IPv6 gives every namespace an IPv6 address")
                .into(),
        }
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
                ip: self.pick(n.ip, n.ip6),
            })
            .collect()
    }

    /// The second external client (with a load balancer pool).
    pub fn external2(&self) -> Option<Vantage> {
        let t = &self.lab.topology;
        Some(Vantage {
            kind: "external",
            name: "external-2".into(),
            node: None,
            netns: t.external2.clone()?,
            ip: self.pick(t.external2_ip?, t.v6.as_ref().and_then(|v| v.external2_ip)),
        })
    }

    pub fn external(&self) -> Option<Vantage> {
        let t = &self.lab.topology;
        Some(Vantage {
            kind: "external",
            name: "external".into(),
            node: None,
            netns: t.external.clone()?,
            ip: self.pick(t.external_ip?, t.v6.as_ref().and_then(|v| v.external_ip)),
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
            ip: self.pick(net.ip, net.ip6),
        })
    }

    pub fn node_ip(&self, node: &str) -> Option<IpAddr> {
        let n = self.lab.topology.node(node)?;
        Some(self.pick(n.ip, n.ip6))
    }

    pub fn spec(
        &self,
        target: SocketAddr,
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

    /// Several vantages' batches at once, results in their order: checks
    /// whose probes are meant to time out wait about one timeout, not one
    /// for each batch.
    pub async fn probe_all(
        &self,
        batches: Vec<(&Vantage, Vec<ProbeSpec>)>,
    ) -> anyhow::Result<Vec<Vec<ProbeResult>>> {
        futures::future::try_join_all(batches.into_iter().map(|(v, specs)| self.probe(v, specs)))
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
    pub fn want_trace(&mut self, v: &Vantage, t: &Target, address: SocketAddr) {
        if self.trace_request.is_none() {
            self.trace_request = Some(TraceRequest {
                vantage: v.clone(),
                target: t.clone(),
                address,
            });
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

/// The probe a failed check asks to have traced: from `vantage` to
/// `address`, one of `target`'s.
pub struct TraceRequest {
    pub vantage: Vantage,
    pub target: Target,
    pub address: SocketAddr,
}

impl<'a> Ctx<'a> {
    /// A context for running checks on `lab`, whose backend lacks the
    /// features in `limits` (with the reasons).
    pub fn new(lab: &'a mut Lab, limits: BTreeMap<Feature, String>, settings: Settings) -> Self {
        let family = lab.scenario.stack.families[0];
        Ctx {
            lab,
            limits,
            settings,
            family,
            cache: HashMap::new(),
            trace_request: None,
        }
    }

    /// The IP families the lab's Services use, primary first; the checks
    /// run once in each.
    pub fn families(&self) -> Vec<IpFamily> {
        self.lab.scenario.stack.families.clone()
    }

    /// Runs `run`'s check in its family: SKIP with the backend's reason
    /// when it lacks a feature the check needs (or the family), FAIL when
    /// the check could not run. The result carries `run`'s name. With the
    /// result comes the first failing probe the check asked to have
    /// traced, if any.
    pub async fn run(
        &mut self,
        run: &CheckRun,
        backend: &BackendKind,
    ) -> (CheckResult, Option<TraceRequest>) {
        self.trace_request = None;
        self.cache.clear();
        self.family = run.family;
        let Some(check) = CHECKS.iter().find(|c| c.name == run.check) else {
            let e = anyhow::anyhow!("unknown check {}", run.check);
            return (CheckResult::error(&run.name, &e), None);
        };
        let family = run.family;
        let family_limit = (family == IpFamily::IPv6)
            .then(|| self.limits.get(&Feature::Ipv6).cloned())
            .flatten();
        let missing =
            family_limit.or_else(|| check.needs.iter().find_map(|f| self.limits.get(f).cloned()));
        let mut result = match missing {
            Some(reason) => CheckResult::skip(check.name, format!("backend {backend}: {reason}")),
            None => match (check.run)(self, check.name).await {
                Ok(r) => r,
                Err(e) => CheckResult::error(check.name, &e),
            },
        };
        result.name = run.name.clone();
        (result, self.trace_request.take())
    }
}

/// One check in one IP family.
#[derive(Clone, Debug)]
pub struct CheckRun {
    /// As results name it ([`qualified`]).
    pub name: String,
    pub check: &'static str,
    pub family: IpFamily,
}

impl CheckRun {
    /// Each of `checks` once per family of `lab`, the families of one check
    /// side by side.
    pub fn all(checks: &[&'static str], lab: &[IpFamily]) -> Vec<CheckRun> {
        checks
            .iter()
            .flat_map(|&check| {
                lab.iter().map(move |&family| CheckRun {
                    name: qualified(check, family, lab),
                    check,
                    family,
                })
            })
            .collect()
    }
}

/// A check's name in results: as is in an IPv4-only lab (as every result
/// before dual-stack), with the family otherwise (`clusterip-tcp/ipv6`).
pub fn qualified(name: &str, family: IpFamily, lab: &[IpFamily]) -> String {
    if lab == [IpFamily::IPv4] {
        name.to_string()
    } else {
        format!("{name}/{}", family.lower())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_name_the_family_unless_the_lab_is_ipv4_only() {
        use IpFamily::*;
        assert_eq!(qualified("nodeport", IPv4, &[IPv4]), "nodeport");
        assert_eq!(qualified("nodeport", IPv4, &[IPv4, IPv6]), "nodeport/ipv4");
        assert_eq!(qualified("nodeport", IPv6, &[IPv4, IPv6]), "nodeport/ipv6");
        assert_eq!(qualified("nodeport", IPv6, &[IPv6]), "nodeport/ipv6");
    }
}
