//! Checks that change the cluster and watch traffic follow: session
//! affinity on and off, endpoints removed (TCP and stale UDP conntrack),
//! Services becoming ready, terminating fallback, and Service updates.
//! Every check puts the cluster back as it found it.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use svclab_backends::model::Protocol;

use super::{CheckResult, Ctx, Evidence, Target, all_reach, names, none_answered, tally};
use crate::probe::Outcome;

fn pod_parts(pod: &str) -> (&str, &str) {
    pod.split_once('/').unwrap_or(("default", pod))
}

fn distinct(results: &[crate::probe::ProbeResult]) -> BTreeSet<String> {
    results
        .iter()
        .filter_map(|r| r.answer.as_ref().map(|w| w.pod.clone()))
        .collect()
}

/// A copy of a scenario Service with endpoints, renamed, without selector
/// (so without endpoints), with nothing allocated yet.
pub fn selectorless_copy(ctx: &Ctx<'_>, name: &str) -> anyhow::Result<Service> {
    let cp = ctx.lab.cp();
    let mut svc = cp
        .services()
        .find(|s| has_endpoints(&cp, s))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the scenario has no Service with a selector to copy"))?;
    fresh(&mut svc, name);
    if let Some(spec) = svc.spec.as_mut() {
        spec.selector = None;
    }
    Ok(svc)
}

/// A Service the checks can copy: it selects pods that are endpoints (not
/// an ExternalName Service, nor one whose selector matches nothing).
fn has_endpoints(cp: &crate::controlplane::ControlPlane, s: &Service) -> bool {
    s.spec.as_ref().is_some_and(|sp| sp.selector.is_some())
        && !cp
            .slices_of(
                s.metadata.namespace.as_deref().unwrap_or("default"),
                s.metadata.name.as_deref().unwrap_or(""),
            )
            .is_empty()
}

/// Renames a Service and clears what the API server allocated.
fn fresh(svc: &mut Service, name: &str) {
    svc.metadata.name = Some(name.to_string());
    svc.metadata.resource_version = None;
    svc.metadata.uid = None;
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.health_check_node_port = None;
        spec.type_ = Some("ClusterIP".into());
        spec.external_traffic_policy = None;
        spec.internal_traffic_policy = None;
        spec.session_affinity = None;
        spec.session_affinity_config = None;
        for p in spec.ports.iter_mut().flatten() {
            p.node_port = None;
        }
    }
}

fn client_on(ctx: &Ctx<'_>, i: usize) -> Option<super::Vantage> {
    let c = ctx.clients();
    let n = c.len();
    (n > 0).then(|| c[i % n].clone())
}

pub async fn affinity(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let targets: Vec<Target> = ctx
        .targets()
        .into_iter()
        .filter(|t| t.affinity && !t.itp_local && t.cluster().len() >= 2)
        .collect();
    let Some(t) = targets.first().cloned() else {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no ClientIP-affinity Service with 2 or more endpoints",
        ));
    };
    let mut evidence = Vec::new();
    let n = ctx.settings.per_target.max(10);
    for i in 0..2 {
        let Some(v) = client_on(ctx, i) else { break };
        let spec = ctx.spec(t.vip_addr(), t.protocol);
        let results = ctx.probe(&v, vec![spec; n]).await?;
        let pods = distinct(&results);
        evidence.push(Evidence {
            vantage: ctx.vantage_label(&v, &t),
            target: t.label(),
            expected: "affinity on: every connection lands on one endpoint".into(),
            observed: tally(&results),
            ok: pods.len() == 1 && all_reach(&results, &t.cluster()),
            probes: results.len(),
        });
    }
    // Affinity off: connections spread again.
    let original = ctx
        .lab
        .cp()
        .service(&t.namespace, &t.service)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("Service {}/{} vanished", t.namespace, t.service))?;
    let mut off = original.clone();
    if let Some(spec) = off.spec.as_mut() {
        spec.session_affinity = Some("None".into());
        spec.session_affinity_config = None;
    }
    let events = ctx.lab.cp().update_service(off)?;
    ctx.change(events).await?;
    if let Some(v) = client_on(ctx, 0) {
        let spec = ctx.spec(t.vip_addr(), t.protocol);
        let results = ctx.probe(&v, vec![spec; n]).await?;
        evidence.push(Evidence {
            vantage: ctx.vantage_label(&v, &t),
            target: t.label(),
            expected: "affinity off: connections spread over 2 or more endpoints".into(),
            observed: tally(&results),
            ok: distinct(&results).len() >= 2 && all_reach(&results, &t.cluster()),
            probes: results.len(),
        });
    }
    let events = ctx.lab.cp().update_service(original)?;
    ctx.change(events).await?;
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "no affinity case ran",
    ))
}

/// A TCP or UDP target with cluster policy, 2+ ready endpoints, no affinity.
fn pick(ctx: &Ctx<'_>, protocol: Protocol) -> Option<Target> {
    ctx.targets().into_iter().find(|t| {
        t.protocol == protocol
            && !t.itp_local
            && !t.affinity
            && t.endpoints.iter().filter(|e| e.ready).count() >= 2
    })
}

pub async fn endpoint_removed(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(t) = pick(ctx, Protocol::Tcp) else {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no TCP Service with 2 or more ready endpoints",
        ));
    };
    let gone = t.cluster()[0].clone();
    let (ns, pod) = pod_parts(&gone.pod);
    let events = ctx.lab.cp().set_ready(ns, pod, false)?;
    ctx.change(events).await?;
    let after = super::expect::targets(&ctx.lab.cp(), ctx.family)
        .into_iter()
        .find(|x| x.label() == t.label())
        .ok_or_else(|| anyhow::anyhow!("{} vanished", t.label()))?;
    let mut evidence = Vec::new();
    for i in 0..2 {
        let Some(v) = client_on(ctx, i) else { break };
        let spec = ctx.spec(t.vip_addr(), t.protocol);
        let results = ctx
            .probe(&v, vec![spec; ctx.settings.per_target * 2])
            .await?;
        evidence.push(Evidence {
            vantage: ctx.vantage_label(&v, &t),
            target: t.label(),
            expected: format!("{} removed: only {}", gone.pod, names(&after.cluster())),
            observed: tally(&results),
            ok: all_reach(&results, &after.cluster()),
            probes: results.len(),
        });
    }
    let events = ctx.lab.cp().set_ready(ns, pod, true)?;
    ctx.change(events).await?;
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "no client pod to probe from",
    ))
}

pub async fn stale_udp(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(t) = pick(ctx, Protocol::Udp) else {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no UDP Service with 2 or more ready endpoints",
        ));
    };
    let Some(v) = client_on(ctx, 0) else {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    };
    // One client source port for the whole check: one conntrack tuple.
    let mut spec = ctx.spec(t.vip_addr(), Protocol::Udp);
    spec.source_port = Some(41234);
    let first = ctx.probe(&v, vec![spec]).await?;
    let Some(answer) = first.first().and_then(|r| r.answer.clone()) else {
        return Ok(CheckResult::from_evidence(
            name,
            vec![Evidence {
                vantage: ctx.vantage_label(&v, &t),
                target: t.label(),
                expected: "an answer before the endpoint is removed".into(),
                observed: tally(&first),
                ok: false,
                probes: 1,
            }],
            "",
        ));
    };
    let (ns, pod) = pod_parts(&answer.pod);
    let (ns, pod) = (ns.to_string(), pod.to_string());
    let events = ctx.lab.cp().set_ready(&ns, &pod, false)?;
    ctx.change(events).await?;
    // One at a time: probes sharing a source port must not overlap.
    let mut after = Vec::new();
    for _ in 0..3 {
        after.extend(ctx.probe(&v, vec![spec]).await?);
    }
    let remaining: Vec<_> = t
        .cluster()
        .into_iter()
        .filter(|e| e.pod != answer.pod)
        .collect();
    let evidence = vec![Evidence {
        vantage: format!("{} (source port 41234 kept)", ctx.vantage_label(&v, &t)),
        target: t.label(),
        expected: format!(
            "after {} is removed: a remaining endpoint ({})",
            answer.pod,
            names(&remaining)
        ),
        observed: format!("before: {}; after: {}", tally(&first), tally(&after)),
        ok: all_reach(&after, &remaining),
        probes: 4,
    }];
    let events = ctx.lab.cp().set_ready(&ns, &pod, true)?;
    ctx.change(events).await?;
    Ok(CheckResult::from_evidence(name, evidence, ""))
}

pub async fn becomes_ready(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(v) = client_on(ctx, 0) else {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    };
    // A Service with the selector of one that has endpoints, created
    // without it (0 endpoints), then given it (N endpoints).
    let template = {
        let cp = ctx.lab.cp();
        cp.services()
            .filter(|s| has_endpoints(&cp, s))
            .max_by_key(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.ports.as_ref())
                    .map_or(0, |p| {
                        p.iter()
                            .filter(|p| p.protocol.as_deref() == Some("UDP"))
                            .count()
                    })
            })
            .cloned()
    }
    .ok_or_else(|| anyhow::anyhow!("the scenario has no Service with a selector"))?;
    let selector = template.spec.as_ref().and_then(|s| s.selector.clone());
    let mut svc = template.clone();
    fresh(&mut svc, "svclab-check-ready");
    svc.spec.as_mut().expect("copied spec").selector = None;
    let events = ctx.lab.cp().add_service(svc)?;
    ctx.change(events).await?;
    let targets = {
        let cp = ctx.lab.cp();
        let svc = cp
            .service("default", "svclab-check-ready")
            .or_else(|| {
                cp.services()
                    .find(|s| s.metadata.name.as_deref() == Some("svclab-check-ready"))
            })
            .expect("just added");
        super::expect::targets_of(&cp, svc, ctx.family)
    };
    let ns = targets
        .first()
        .map(|t| t.namespace.clone())
        .unwrap_or_else(|| "default".into());
    // Before: one probe per port with a fixed source port, expected to fail.
    let mut before = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let mut spec = ctx.spec(t.vip_addr(), t.protocol);
        spec.source_port = Some(42000 + i as u16);
        before.push(ctx.probe(&v, vec![spec]).await?);
    }
    let mut updated = ctx
        .lab
        .cp()
        .service(&ns, "svclab-check-ready")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("svclab-check-ready vanished"))?;
    updated.spec.as_mut().expect("spec").selector = selector;
    let events = ctx.lab.cp().update_service(updated)?;
    ctx.change(events).await?;
    let now = {
        let cp = ctx.lab.cp();
        let svc = cp.service(&ns, "svclab-check-ready").expect("still there");
        super::expect::targets_of(&cp, svc, ctx.family)
    };
    let mut evidence = Vec::new();
    for (i, t) in now.iter().enumerate() {
        let mut spec = ctx.spec(t.vip_addr(), t.protocol);
        spec.source_port = Some(42000 + i as u16);
        let after = ctx.probe(&v, vec![spec]).await?;
        evidence.push(Evidence {
            vantage: format!(
                "{} (same source port before and after)",
                ctx.vantage_label(&v, t)
            ),
            target: t.label(),
            expected: format!("0 -> {} endpoints: answered at once", t.cluster().len()),
            observed: format!(
                "with 0: {}; with {}: {}",
                tally(&before[i]),
                t.cluster().len(),
                tally(&after)
            ),
            ok: none_answered(&before[i]) && all_reach(&after, &t.cluster()),
            probes: 2,
        });
    }
    let events = ctx.lab.cp().delete_service(&ns, "svclab-check-ready")?;
    ctx.change(events).await?;
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the copied Service has no ports",
    ))
}

pub async fn terminating_fallback(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(ext) = ctx.external() else {
        return Ok(CheckResult::skip(
            name,
            "the lab has no external namespace (spec.external: false)",
        ));
    };
    // An externalTrafficPolicy: Local NodePort with ready local endpoints.
    let found = ctx.targets().into_iter().find_map(|t| {
        if !t.etp_local || t.node_port.is_none() {
            return None;
        }
        let node = t
            .endpoints
            .iter()
            .find(|e| e.ready)
            .map(|e| e.node.clone())?;
        Some((t, node))
    });
    let Some((t, node)) = found else {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no externalTrafficPolicy: Local NodePort Service with a ready endpoint",
        ));
    };
    let local: Vec<String> = t.local(&node).iter().map(|e| e.pod.clone()).collect();
    let mut events = Vec::new();
    for pod in &local {
        let (ns, p) = pod_parts(pod);
        events.extend(ctx.lab.cp().set_terminating(ns, p, true)?);
    }
    ctx.change(events).await?;
    let after = super::expect::targets(&ctx.lab.cp(), ctx.family)
        .into_iter()
        .find(|x| x.label() == t.label())
        .ok_or_else(|| anyhow::anyhow!("{} vanished", t.label()))?;
    let ip = ctx
        .node_ip(&node)
        .ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
    let spec = ctx.spec(SocketAddr::new(ip, t.node_port.unwrap_or(0)), t.protocol);
    let results = ctx.probe(&ext, vec![spec; ctx.settings.per_target]).await?;
    let fallback = after.local(&node);
    let evidence = vec![Evidence {
        vantage: "external".into(),
        target: format!(
            "{} via node {node} port {}",
            t.label(),
            t.node_port.unwrap_or(0)
        ),
        expected: format!(
            "only terminating local endpoints left: falls back to {}",
            names(&fallback)
        ),
        observed: tally(&results),
        ok: !fallback.is_empty()
            && fallback.iter().all(|e| e.terminating)
            && all_reach(&results, &fallback),
        probes: results.len(),
    }];
    let mut events = Vec::new();
    for pod in &local {
        let (ns, p) = pod_parts(pod);
        events.extend(ctx.lab.cp().set_terminating(ns, p, false)?);
    }
    ctx.change(events).await?;
    Ok(CheckResult::from_evidence(name, evidence, ""))
}

pub async fn service_update(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(v) = client_on(ctx, 0) else {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    };
    let Some(base) = pick(ctx, Protocol::Tcp) else {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no TCP Service with 2 or more ready endpoints",
        ));
    };
    let template = ctx
        .lab
        .cp()
        .service(&base.namespace, &base.service)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{} vanished", base.label()))?;
    let ns = base.namespace.clone();
    let svc_name = "svclab-check-update";
    let mut svc = template.clone();
    fresh(&mut svc, svc_name);
    // One TCP port to start from, pointing at the base port's endpoints.
    let first_port = base.cluster()[0].port;
    if let Some(spec) = svc.spec.as_mut() {
        let mut p = spec
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.port as u16 == base.port && p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .expect("the base port exists");
        p.target_port = Some(IntOrString::Int(i32::from(first_port)));
        spec.ports = Some(vec![p]);
    }
    let mut evidence = Vec::new();
    let step = async |ctx: &mut Ctx<'_>,
                      what: &str,
                      svc: Option<Service>,
                      delete: bool|
           -> anyhow::Result<()> {
        let events = if delete {
            ctx.lab.cp().delete_service(&ns, svc_name)?
        } else if ctx.lab.cp().service(&ns, svc_name).is_some() {
            ctx.lab.cp().update_service(svc.expect("a spec to apply"))?
        } else {
            ctx.lab.cp().add_service(svc.expect("a spec to apply"))?
        };
        ctx.change(events).await?;
        let _ = what;
        Ok(())
    };

    // 1. Created.
    step(ctx, "create", Some(svc.clone()), false).await?;
    let current = |ctx: &Ctx<'_>| {
        let cp = ctx.lab.cp();
        cp.service(&ns, svc_name)
            .map(|s| super::expect::targets_of(&cp, s, ctx.family))
            .unwrap_or_default()
    };
    let vip = current(ctx).first().map(|t| t.vip);
    let probe_all = async |ctx: &Ctx<'_>,
                           targets: &[Target]|
           -> anyhow::Result<Vec<(Target, Vec<crate::probe::ProbeResult>)>> {
        let mut out = Vec::new();
        for t in targets {
            let spec = ctx.spec(t.vip_addr(), t.protocol);
            out.push((t.clone(), ctx.probe(&v, vec![spec; 5]).await?));
        }
        Ok(out)
    };
    for (t, r) in probe_all(ctx, &current(ctx)).await? {
        evidence.push(Evidence {
            vantage: ctx.vantage_label(&v, &t),
            target: t.label(),
            expected: format!("created: {}", names(&t.cluster())),
            observed: tally(&r),
            ok: all_reach(&r, &t.cluster()),
            probes: r.len(),
        });
    }

    // 2. A port added.
    let mut two = ctx
        .lab
        .cp()
        .service(&ns, svc_name)
        .cloned()
        .expect("created");
    if let Some(ports) = two.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        let mut extra = ports[0].clone();
        extra.name = Some("added".into());
        extra.port = 8181;
        ports[0].name = Some("first".into());
        ports.push(extra);
    }
    step(ctx, "add port", Some(two), false).await?;
    for (t, r) in probe_all(ctx, &current(ctx))
        .await?
        .into_iter()
        .filter(|(t, _)| t.port == 8181)
    {
        evidence.push(Evidence {
            vantage: ctx.vantage_label(&v, &t),
            target: t.label(),
            expected: format!("port added: {}", names(&t.cluster())),
            observed: tally(&r),
            ok: all_reach(&r, &t.cluster()),
            probes: r.len(),
        });
    }

    // 3. The port removed again.
    let mut one = ctx
        .lab
        .cp()
        .service(&ns, svc_name)
        .cloned()
        .expect("exists");
    if let Some(ports) = one.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        ports.retain(|p| p.port != 8181);
        ports[0].name = None;
    }
    step(ctx, "remove port", Some(one.clone()), false).await?;
    if let Some(vip) = vip {
        let spec = ctx.spec(SocketAddr::new(vip, 8181), Protocol::Tcp);
        let r = ctx.probe(&v, vec![spec; 3]).await?;
        evidence.push(Evidence {
            vantage: format!("pod {}", v.name),
            target: format!("{ns}/{svc_name} {vip}:8181/TCP (removed)"),
            expected: "port removed: no answer".into(),
            observed: tally(&r),
            ok: none_answered(&r),
            probes: r.len(),
        });
    }

    // 4. targetPort changed to another TCP port the pods serve.
    let other_port = ctx
        .lab
        .scenario
        .pods
        .iter()
        .filter(|p| base.endpoints.iter().any(|e| e.pod == p.key()))
        .flat_map(|p| p.ports.iter())
        .find(|pp| pp.protocol == Protocol::Tcp && pp.port != first_port)
        .map(|pp| pp.port);
    match other_port {
        Some(port) => {
            let mut moved = one.clone();
            if let Some(ports) = moved.spec.as_mut().and_then(|s| s.ports.as_mut()) {
                ports[0].target_port = Some(IntOrString::Int(i32::from(port)));
            }
            step(ctx, "change targetPort", Some(moved), false).await?;
            for (t, r) in probe_all(ctx, &current(ctx)).await? {
                let on_new = r
                    .iter()
                    .all(|x| x.answer.as_ref().is_some_and(|w| w.port == port));
                evidence.push(Evidence {
                    vantage: ctx.vantage_label(&v, &t),
                    target: t.label(),
                    expected: format!("targetPort {first_port} -> {port}: answered on {port}"),
                    observed: tally(&r),
                    ok: on_new && all_reach(&r, &t.cluster()),
                    probes: r.len(),
                });
            }
        }
        None => evidence.push(Evidence {
            vantage: format!("pod {}", v.name),
            target: format!("{ns}/{svc_name}"),
            expected: "targetPort change (needs pods with two TCP ports)".into(),
            observed: "not tested: the pods have one TCP port".into(),
            ok: true,
            probes: 0,
        }),
    }

    // 5. Deleted, then 6. recreated under the same name.
    step(ctx, "delete", None, true).await?;
    if let Some(vip) = vip {
        let spec = ctx.spec(SocketAddr::new(vip, base.port), Protocol::Tcp);
        let r = ctx.probe(&v, vec![spec; 3]).await?;
        evidence.push(Evidence {
            vantage: format!("pod {}", v.name),
            target: format!("{ns}/{svc_name} {vip}:{}/TCP (deleted)", base.port),
            expected: "deleted: no answer".into(),
            observed: tally(&r),
            ok: none_answered(&r),
            probes: r.len(),
        });
    }
    step(ctx, "recreate", Some(svc), false).await?;
    for (t, r) in probe_all(ctx, &current(ctx)).await? {
        evidence.push(Evidence {
            vantage: ctx.vantage_label(&v, &t),
            target: t.label(),
            expected: format!("recreated: {}", names(&t.cluster())),
            observed: tally(&r),
            ok: all_reach(&r, &t.cluster()) && r.iter().all(|x| x.outcome == Outcome::Answered),
            probes: r.len(),
        });
    }
    step(ctx, "clean up", None, true).await?;
    Ok(CheckResult::from_evidence(name, evidence, ""))
}
