//! DNAT and addressing from inside the cluster: ClusterIP reachability over
//! TCP and UDP, ports and protocols, source preservation, hairpin, unrelated
//! ports, and Services without endpoints.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use svclab_backends::Feature;
use svclab_backends::model::{IpFamily, Protocol};

use super::{CheckResult, Ctx, Evidence, all_reach, names, none_answered, tally};
use crate::probe::Outcome;

/// Targets a plain ClusterIP check covers: cluster policy, some endpoint.
fn plain(t: &super::Target) -> bool {
    !t.itp_local && t.has_any()
}

pub async fn clusterip(
    ctx: &mut Ctx<'_>,
    name: &str,
    protocol: Protocol,
) -> anyhow::Result<CheckResult> {
    let targets: Vec<_> = ctx
        .targets()
        .into_iter()
        .filter(|t| t.protocol == protocol && plain(t))
        .collect();
    let mut vantages = ctx.clients();
    let node_note = if let Some(why) = ctx.limits.get(&Feature::NodeOrigin) {
        format!(" (node vantage skipped: {why})")
    } else {
        vantages.extend(ctx.nodes());
        String::new()
    };
    let mut evidence = Vec::new();
    for t in &targets {
        for v in &vantages {
            let results = ctx.probe_vip(v, t).await?;
            let expected = t.cluster();
            let ok = all_reach(&results, &expected);
            if !ok {
                ctx.want_trace(v, t, t.vip_addr());
            }
            evidence.push(Evidence {
                vantage: ctx.vantage_label(v, t),
                target: t.label(),
                expected: format!("a ready endpoint: {}", names(&expected)),
                observed: tally(&results),
                ok,
                probes: results.len(),
            });
        }
    }
    let mut r = CheckResult::from_evidence(
        name,
        evidence,
        &format!("the scenario has no {protocol} Service with endpoints"),
    );
    r.summary.push_str(&node_note);
    Ok(r)
}

pub async fn multiport(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let all = ctx.targets();
    let multi: BTreeSet<(String, String)> = all
        .iter()
        .filter(|t| {
            all.iter()
                .filter(|o| o.namespace == t.namespace && o.service == t.service)
                .count()
                > 1
        })
        .map(|t| (t.namespace.clone(), t.service.clone()))
        .collect();
    let mut evidence = Vec::new();
    let clients = ctx.clients();
    for t in all
        .iter()
        .filter(|t| plain(t) && multi.contains(&(t.namespace.clone(), t.service.clone())))
    {
        let Some(v) = clients.first() else { break };
        let results = ctx.probe_vip(v, t).await?;
        let expected = t.cluster();
        let ports: BTreeSet<u16> = expected.iter().map(|e| e.port).collect();
        evidence.push(Evidence {
            vantage: ctx.vantage_label(v, t),
            target: t.label(),
            expected: format!("targetPort {ports:?} of {}", names(&expected)),
            observed: tally(&results),
            ok: all_reach(&results, &expected),
            probes: results.len(),
        });
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no Service with several ports",
    ))
}

pub async fn same_port_two_protocols(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let all = ctx.targets();
    let mut evidence = Vec::new();
    let clients = ctx.clients();
    for t in all.iter().filter(|t| plain(t)) {
        let twin = all.iter().any(|o| {
            o.namespace == t.namespace
                && o.service == t.service
                && o.port == t.port
                && o.protocol != t.protocol
        });
        if !twin {
            continue;
        }
        let Some(v) = clients.first() else { break };
        let results = ctx.probe_vip(v, t).await?;
        let expected = t.cluster();
        evidence.push(Evidence {
            vantage: ctx.vantage_label(v, t),
            target: t.label(),
            expected: format!("{} server of {}", t.protocol, names(&expected)),
            observed: tally(&results),
            ok: all_reach(&results, &expected),
            probes: results.len(),
        });
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no Service with TCP and UDP on one port",
    ))
}

pub async fn pod_source_preserved(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let targets: Vec<_> = ctx.targets().into_iter().filter(plain).collect();
    let mut evidence = Vec::new();
    for t in &targets {
        for v in ctx.clients() {
            let results = ctx.probe_vip(&v, t).await?;
            let answered: Vec<_> = results.iter().filter_map(|r| r.answer.as_ref()).collect();
            let seen: BTreeSet<String> = answered.iter().map(|w| w.peer.ip().to_string()).collect();
            evidence.push(Evidence {
                vantage: ctx.vantage_label(&v, t),
                target: t.label(),
                expected: format!("server sees the client's own IP {}", v.ip),
                observed: format!(
                    "{} answered; source seen: {}",
                    answered.len(),
                    seen.into_iter().collect::<Vec<_>>().join(", ")
                ),
                ok: !answered.is_empty() && answered.iter().all(|w| w.peer.ip() == v.ip),
                probes: results.len(),
            });
        }
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no Service with endpoints",
    ))
}

pub async fn unrelated_port(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let all = ctx.targets();
    let mut evidence = Vec::new();
    let clients = ctx.clients();
    let Some(v) = clients.first() else {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    };
    // One port per VIP, all probed in one batch: a proxy that leaves them
    // alone lets them time out, and one VIP after another cost a probe
    // timeout each (13 s a backend on behaviours.yaml, 52 s in the VM).
    let mut seen_vips = BTreeSet::new();
    let mut probed = Vec::new();
    for t in all
        .iter()
        .filter(|t| t.protocol == Protocol::Tcp && plain(t))
    {
        if !seen_vips.insert(t.vip) {
            continue;
        }
        let declared: BTreeSet<u16> = all
            .iter()
            .filter(|o| o.vip == t.vip)
            .map(|o| o.port)
            .collect();
        // An endpoint's real port is the tempting one: it has a listener.
        let port = t
            .cluster()
            .iter()
            .map(|e| e.port)
            .chain([65000])
            .find(|p| !declared.contains(p))
            .expect("65000 ends the list");
        probed.push((t, port));
    }
    const EACH: usize = 3;
    let specs = probed
        .iter()
        .flat_map(|(t, port)| vec![ctx.spec(SocketAddr::new(t.vip, *port), Protocol::Tcp); EACH])
        .collect();
    let results = ctx.probe(v, specs).await?;
    for ((t, port), results) in probed.iter().zip(results.chunks(EACH)) {
        evidence.push(Evidence {
            vantage: ctx.vantage_label(v, t),
            target: format!(
                "{}/{} {}:{port}/TCP (not a Service port)",
                t.namespace, t.service, t.vip
            ),
            expected: "not DNATed: no answer".into(),
            observed: tally(results),
            ok: none_answered(results),
            probes: results.len(),
        });
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no TCP Service with endpoints",
    ))
}

/// How much later than an IPv4 one a TCP connect over IPv6 learns of a
/// reject on this host: one initial SYN retransmission timeout. The
/// ICMPv6 error comes back inside the client's own connect() call (the
/// node is the same kernel), finds the socket locked, and the kernel drops
/// it (TcpExtLockDroppedIcmps goes up); the retransmitted SYN is refused.
/// IPv4 takes the same locked case at once: measured on kernel 6.18 with
/// kube-proxy's nftables mode, 0.2 ms over IPv4 and 1.03 s over IPv6. A
/// dropping proxy still fails: its connects time out.
const IPV6_TCP_REFUSAL_DELAY: Duration = Duration::from_secs(1);

/// How fast a Service without endpoints must refuse `protocol` in the
/// checks' family.
fn refuse_within(ctx: &Ctx<'_>, protocol: Protocol) -> Duration {
    let base = ctx.settings.refuse_within;
    if ctx.family == IpFamily::IPv6 && protocol == Protocol::Tcp {
        base + IPV6_TCP_REFUSAL_DELAY
    } else {
        base
    }
}

pub async fn no_endpoints_reject(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let mut targets: Vec<_> = ctx.targets().into_iter().filter(|t| !t.has_any()).collect();
    let mut temporary = None;
    if targets.is_empty() {
        // No such Service in the scenario: make one for the check.
        let svc = super::lifecycle::selectorless_copy(ctx, "svclab-check-noep")?;
        let events = ctx.lab.cp().add_service(svc.clone())?;
        ctx.change(events).await?;
        targets = super::expect::targets_of(&ctx.lab.cp(), &svc, ctx.family);
        temporary = Some(svc);
    }
    let mut evidence = Vec::new();
    let mut vantages = ctx.clients();
    if !ctx.limits.contains_key(&Feature::NodeOrigin) {
        vantages.extend(ctx.nodes().into_iter().take(1));
    }
    for t in &targets {
        let within = refuse_within(ctx, t.protocol);
        for v in &vantages {
            let mut spec = ctx.spec(t.vip_addr(), t.protocol);
            spec.timeout = spec.timeout.max(within + Duration::from_millis(500));
            let results = ctx.probe(v, vec![spec; 3]).await?;
            let fast = results
                .iter()
                .all(|r| r.outcome == Outcome::Refused && r.latency < within);
            if !fast {
                ctx.want_trace(v, t, t.vip_addr());
            }
            let worst = results.iter().map(|r| r.latency).max().unwrap_or_default();
            evidence.push(Evidence {
                vantage: ctx.vantage_label(v, t),
                target: t.label(),
                expected: format!("refused (RST or ICMP unreachable) within {within:?}"),
                observed: format!(
                    "{} in at most {:.0} ms",
                    tally(&results),
                    worst.as_secs_f64() * 1e3
                ),
                ok: fast,
                probes: results.len(),
            });
        }
    }
    if let Some(svc) = temporary {
        let events = ctx.lab.cp().delete_service(
            svc.metadata.namespace.as_deref().unwrap_or("default"),
            svc.metadata.name.as_deref().unwrap_or(""),
        )?;
        ctx.change(events).await?;
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "no Service without endpoints could be made",
    ))
}

pub async fn hairpin(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let targets: Vec<_> = ctx
        .targets()
        .into_iter()
        .filter(|t| {
            plain(t) && t.protocol == Protocol::Tcp && !t.affinity && t.cluster().len() <= 10
        })
        .collect();
    let mut evidence = Vec::new();
    for t in &targets {
        let eps: Vec<_> = t.cluster().into_iter().cloned().collect();
        for ep in eps.iter().take(3) {
            let Some(v) = ctx.pod_vantage(ep) else {
                continue;
            };
            // Enough probes that some land on the caller itself.
            let n = (ctx.settings.per_target * eps.len()).clamp(10, 200);
            let spec = ctx.spec(t.vip_addr(), t.protocol);
            let results = ctx.probe(&v, vec![spec; n]).await?;
            let selfs: Vec<_> = results
                .iter()
                .filter_map(|r| r.answer.as_ref())
                .filter(|w| w.pod == ep.pod)
                .collect();
            let masqueraded = selfs.iter().all(|w| w.peer.ip() != ep.ip);
            let all_answered = results.iter().all(|r| r.outcome == Outcome::Answered);
            if !(all_answered && !selfs.is_empty() && masqueraded) {
                ctx.want_trace(&v, t, t.vip_addr());
            }
            let seen: BTreeSet<String> = selfs.iter().map(|w| w.peer.ip().to_string()).collect();
            evidence.push(Evidence {
                vantage: format!("hairpin {}", ep.pod),
                target: t.label(),
                expected: format!(
                    "every probe answered; when it lands on itself, source is masqueraded (not {})",
                    ep.ip
                ),
                observed: format!(
                    "{}; {} landed on itself, source seen: {}",
                    tally(&results),
                    selfs.len(),
                    if seen.is_empty() {
                        "-".into()
                    } else {
                        seen.into_iter().collect::<Vec<_>>().join(", ")
                    }
                ),
                ok: all_answered && !selfs.is_empty() && masqueraded,
                probes: results.len(),
            });
        }
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no TCP Service with 1 to 10 endpoints",
    ))
}
