//! Behaviours of kube-proxy that the e2e network suite checks beyond the
//! basic ones (issue 17): external IPs, publishNotReadyAddresses, the
//! proxy-name and headless labels with headless and ExternalName Services,
//! the ClientIP affinity timeout, a Service deleted and recreated,
//! addresses of the service CIDR no Service owns, and SCTP. Every check
//! puts the cluster back as it found it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use svclab_backends::model::{IpFamily, Protocol};
use svclab_backends::{BackendKind, Feature};

use super::{CheckResult, Ctx, Evidence, Target, Vantage, all_reach, names, none_answered, tally};
use crate::controlplane::store::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL, proxied_labels};
use crate::probe::{Outcome, ProbeResult};

fn client_on(ctx: &Ctx<'_>, i: usize) -> Option<Vantage> {
    let c = ctx.clients();
    let n = c.len();
    (n > 0).then(|| c[i % n].clone())
}

fn key(svc: &Service) -> (String, String) {
    (
        svc.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        svc.metadata.name.clone().unwrap_or_default(),
    )
}

/// The scenario's Services for which `pick` holds, cloned.
fn services(ctx: &Ctx<'_>, pick: impl Fn(&Service) -> bool) -> Vec<Service> {
    ctx.lab
        .cp()
        .services()
        .filter(|s| pick(s))
        .cloned()
        .collect()
}

fn targets_of(ctx: &Ctx<'_>, svc: &Service) -> Vec<Target> {
    let (ns, name) = key(svc);
    let cp = ctx.lab.cp();
    cp.service(&ns, &name)
        .map(|s| super::expect::targets_of(&cp, s, ctx.family))
        .unwrap_or_default()
}

/// Runs `ip -n <netns> <args>` (routes in a lab namespace only).
async fn ip(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("ip")
        .arg("-n")
        .arg(netns)
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "ip -n {netns} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `spec.externalIPs` reach the endpoints from outside (routed to a node as
/// a router would), from pods and from nodes; another port on the same
/// address, even the endpoints' own, is not forwarded.
pub async fn external_ips(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let found = services(ctx, |s| {
        s.spec
            .as_ref()
            .is_some_and(|sp| sp.external_ips.as_ref().is_some_and(|v| !v.is_empty()))
    });
    let mut cases: Vec<(Target, IpAddr)> = Vec::new();
    for svc in &found {
        // The proxier of a family programs the external IPs of its family.
        let ips: Vec<IpAddr> = svc
            .spec
            .as_ref()
            .and_then(|sp| sp.external_ips.clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|a| a.parse().ok())
            .filter(|a| IpFamily::of(a) == ctx.family)
            .collect();
        for t in targets_of(ctx, svc) {
            if t.has_any() && !t.itp_local {
                for ip in &ips {
                    cases.push((t.clone(), *ip));
                }
            }
        }
    }
    if cases.is_empty() {
        return Ok(CheckResult::skip(
            name,
            format!(
                "the scenario has no Service with {} spec.externalIPs and endpoints",
                ctx.family
            ),
        ));
    }
    let mut vantages = ctx.clients();
    if !ctx.limits.contains_key(&Feature::NodeOrigin) {
        vantages.extend(ctx.nodes());
    }
    // Outside the cluster a router sends an external IP to some node.
    let ext = ctx.external();
    let gateway = ctx.nodes().first().map(|n| n.ip);
    let mut routed = Vec::new();
    if let (Some(ext), Some(gw)) = (&ext, gateway) {
        let ips: BTreeSet<IpAddr> = cases.iter().map(|c| c.1).collect();
        for ip_addr in ips {
            let dst = IpNet::from(ip_addr).to_string();
            ip(
                &ext.netns,
                &["route", "replace", &dst, "via", &gw.to_string()],
            )
            .await?;
            routed.push(dst);
        }
        vantages.push(ext.clone());
    }
    let mut evidence = Vec::new();
    let result = async {
        for (t, addr) in &cases {
            let target = SocketAddr::new(*addr, t.port);
            for v in &vantages {
                let r = ctx
                    .probe(
                        v,
                        vec![ctx.spec(target, t.protocol); ctx.settings.per_target],
                    )
                    .await?;
                let expected = t.cluster();
                let ok = all_reach(&r, &expected);
                if !ok {
                    ctx.want_trace(v, t, target);
                }
                evidence.push(Evidence {
                    vantage: ctx.vantage_label(v, t),
                    target: format!("{} external IP {target}/{}", t.label(), t.protocol),
                    expected: format!("a ready endpoint: {}", names(&expected)),
                    observed: tally(&r),
                    ok,
                    probes: r.len(),
                });
            }
            // The endpoints' own port on the external IP: it has listeners
            // behind, but no Service port says so.
            let declared: BTreeSet<u16> = cases
                .iter()
                .filter(|c| c.1 == *addr && c.0.protocol == t.protocol)
                .map(|c| c.0.port)
                .collect();
            let Some(other) = t
                .cluster()
                .iter()
                .map(|e| e.port)
                .chain([65000])
                .find(|p| !declared.contains(p))
            else {
                continue;
            };
            let from = ext.clone().or_else(|| client_on(ctx, 0));
            if let Some(v) = from {
                let other_addr = SocketAddr::new(*addr, other);
                let r = ctx
                    .probe(&v, vec![ctx.spec(other_addr, t.protocol); 3])
                    .await?;
                evidence.push(Evidence {
                    vantage: ctx.vantage_label(&v, t),
                    target: format!("{other_addr}/{} (not a Service port)", t.protocol),
                    expected: "not forwarded: no answer".into(),
                    observed: tally(&r),
                    ok: none_answered(&r),
                    probes: r.len(),
                });
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(ext) = &ext {
        for dst in &routed {
            ip(&ext.netns, &["route", "del", dst]).await?;
        }
    }
    result?;
    Ok(CheckResult::from_evidence(name, evidence, ""))
}

/// With `publishNotReadyAddresses: true` a not-ready pod still gets
/// traffic; a Service of the same pods without it leaves the pod out.
pub async fn publish_not_ready(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let publish = |s: &Service| {
        s.spec
            .as_ref()
            .is_some_and(|sp| sp.publish_not_ready_addresses == Some(true) && sp.selector.is_some())
    };
    let Some(svc) = services(ctx, publish).into_iter().next() else {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no Service with publishNotReadyAddresses: true and a selector",
        ));
    };
    let selector = svc.spec.as_ref().and_then(|s| s.selector.clone());
    // The same pods without publishNotReadyAddresses, seen from inside with
    // cluster policy.
    let control = services(ctx, |s| {
        s.spec.as_ref().is_some_and(|sp| {
            sp.selector == selector
                && sp.publish_not_ready_addresses != Some(true)
                && sp.internal_traffic_policy.as_deref() != Some("Local")
        })
    })
    .into_iter()
    .next();
    let Some(control) = control else {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no Service without publishNotReadyAddresses selecting the same pods",
        ));
    };
    let Some(t) = targets_of(ctx, &svc)
        .into_iter()
        .find(|t| t.cluster().len() >= 2)
    else {
        return Ok(CheckResult::skip(
            name,
            "the publishNotReadyAddresses Service has no port with 2 or more endpoints",
        ));
    };
    let Some(v) = client_on(ctx, 0) else {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    };
    let pod = t.cluster()[0].pod.clone();
    let (ns, p) = pod.split_once('/').unwrap_or(("default", &pod));
    let (ns, p) = (ns.to_string(), p.to_string());
    let events = ctx.lab.cp().set_ready(&ns, &p, false)?;
    ctx.change(events).await?;
    let mut evidence = Vec::new();
    let result = async {
        let n = ctx.settings.per_target.max(10) * 2;
        let now = targets_of(ctx, &svc)
            .into_iter()
            .find(|x| x.label() == t.label())
            .ok_or_else(|| anyhow::anyhow!("{} vanished", t.label()))?;
        let r = ctx
            .probe(&v, vec![ctx.spec(t.vip_addr(), t.protocol); n])
            .await?;
        let reached_pod = r
            .iter()
            .any(|x| x.answer.as_ref().is_some_and(|w| w.pod == pod));
        let ok = all_reach(&r, &now.cluster()) && reached_pod;
        if !ok {
            ctx.want_trace(&v, &t, t.vip_addr());
        }
        evidence.push(Evidence {
            vantage: ctx.vantage_label(&v, &t),
            target: format!("{} (publishNotReadyAddresses: true)", t.label()),
            expected: format!(
                "{pod} not ready, still reached; among {}",
                names(&now.cluster())
            ),
            observed: tally(&r),
            ok,
            probes: r.len(),
        });
        for c in targets_of(ctx, &control)
            .into_iter()
            .filter(|c| c.protocol == t.protocol && !c.itp_local)
        {
            let r = ctx
                .probe(&v, vec![ctx.spec(c.vip_addr(), c.protocol); n])
                .await?;
            let expected = c.cluster();
            let ok = all_reach(&r, &expected)
                && !r
                    .iter()
                    .any(|x| x.answer.as_ref().is_some_and(|w| w.pod == pod));
            evidence.push(Evidence {
                vantage: ctx.vantage_label(&v, &c),
                target: format!("{} (publishNotReadyAddresses: false)", c.label()),
                expected: format!("{pod} not ready, left out: only {}", names(&expected)),
                observed: tally(&r),
                ok,
                probes: r.len(),
            });
        }
        anyhow::Ok(())
    }
    .await;
    let events = ctx.lab.cp().set_ready(&ns, &p, true)?;
    ctx.change(events).await?;
    result?;
    Ok(CheckResult::from_evidence(name, evidence, ""))
}

/// Services labelled `service.kubernetes.io/service-proxy-name` or
/// `service.kubernetes.io/headless` are not programmed by the default
/// proxy; an ExternalName Service turned into a ClusterIP one works.
/// (Headless and ExternalName Services have no address to probe: that
/// they break nothing shows in every other check passing beside them.)
pub async fn proxy_labels(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(v) = client_on(ctx, 0) else {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    };
    let labelled = services(ctx, |s| {
        !proxied_labels(s.metadata.labels.as_ref())
            && s.spec.as_ref().is_some()
            && super::expect::cluster_ip(s, ctx.family).is_some()
    });
    let external_name = services(ctx, |s| {
        proxied_labels(s.metadata.labels.as_ref())
            && s.spec.as_ref().is_some_and(|sp| {
                sp.type_.as_deref() == Some("ExternalName")
                    && sp.ports.as_ref().is_some_and(|p| !p.is_empty())
            })
    })
    .into_iter()
    .next();
    if labelled.is_empty() && external_name.is_none() {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no Service labelled for another proxy or headless, nor an ExternalName Service with ports",
        ));
    }
    let hides_headless = ctx
        .lab
        .backend
        .as_ref()
        .is_some_and(headless_label_hides_service);
    let mut evidence = Vec::new();
    for svc in &labelled {
        let labels = svc.metadata.labels.clone().unwrap_or_default();
        let (label, hidden) = if labels.contains_key(SERVICE_PROXY_NAME_LABEL) {
            (SERVICE_PROXY_NAME_LABEL, true)
        } else {
            (HEADLESS_LABEL, hides_headless)
        };
        for t in targets_of(ctx, svc) {
            let n = if hidden { 3 } else { 5 };
            let r = ctx
                .probe(&v, vec![ctx.spec(t.vip_addr(), t.protocol); n])
                .await?;
            let (expected, ok) = if hidden {
                (
                    format!(
                        "not programmed: no answer, though {} would answer",
                        names(&t.cluster())
                    ),
                    none_answered(&r),
                )
            } else {
                (
                    format!(
                        "programmed (the label hides only EndpointSlices since kube-proxy v1.37): {}",
                        names(&t.cluster())
                    ),
                    all_reach(&r, &t.cluster()),
                )
            };
            if !ok {
                ctx.want_trace(&v, &t, t.vip_addr());
            }
            evidence.push(Evidence {
                vantage: format!("pod {}", v.name),
                target: format!("{} (labelled {label})", t.label()),
                expected,
                observed: tally(&r),
                ok,
                probes: r.len(),
            });
        }
    }
    if let Some(alias) = external_name {
        let (ns, svc_name) = key(&alias);
        // The pods of some proxied Service serve it once it has a selector.
        let web = services(ctx, |s| {
            proxied_labels(s.metadata.labels.as_ref())
                && s.spec.as_ref().is_some_and(|sp| {
                    sp.selector.is_some() && sp.type_.as_deref() != Some("ExternalName")
                })
        })
        .into_iter()
        .find(|s| targets_of(ctx, s).iter().any(|t| t.has_any()));
        if let Some(web) = web {
            let mut changed = alias.clone();
            if let Some(sp) = changed.spec.as_mut() {
                let from = web.spec.as_ref().expect("has a spec");
                sp.type_ = Some("ClusterIP".into());
                sp.external_name = None;
                sp.selector = from.selector.clone();
                sp.ports = from.ports.clone();
                // Both families in a dual-stack lab, so each family's
                // proxier has it to program.
                if ctx.families().len() > 1 {
                    sp.ip_family_policy = Some("PreferDualStack".into());
                }
            }
            let events = ctx.lab.cp().update_service(changed)?;
            ctx.change(events).await?;
            let result = async {
                let now = {
                    let cp = ctx.lab.cp();
                    cp.service(&ns, &svc_name)
                        .map(|s| super::expect::targets_of(&cp, s, ctx.family))
                        .unwrap_or_default()
                };
                if now.is_empty() {
                    evidence.push(Evidence {
                        vantage: format!("pod {}", v.name),
                        target: format!("{ns}/{svc_name}"),
                        expected: "ExternalName -> ClusterIP: a ClusterIP".into(),
                        observed: "the API server gave it no ClusterIP".into(),
                        ok: false,
                        probes: 0,
                    });
                }
                for t in now {
                    let r = ctx
                        .probe(&v, vec![ctx.spec(t.vip_addr(), t.protocol); 5])
                        .await?;
                    let ok = all_reach(&r, &t.cluster());
                    if !ok {
                        ctx.want_trace(&v, &t, t.vip_addr());
                    }
                    evidence.push(Evidence {
                        vantage: ctx.vantage_label(&v, &t),
                        target: format!("{} (was ExternalName)", t.label()),
                        expected: format!("ExternalName -> ClusterIP: {}", names(&t.cluster())),
                        observed: tally(&r),
                        ok,
                        probes: r.len(),
                    });
                }
                anyhow::Ok(())
            }
            .await;
            // Back to the scenario's ExternalName Service.
            let mut events = ctx.lab.cp().delete_service(&ns, &svc_name)?;
            let mut original = alias.clone();
            original.metadata.resource_version = None;
            original.metadata.uid = None;
            events.extend(ctx.lab.cp().add_service(original)?);
            ctx.change(events).await?;
            result?;
        }
    }
    Ok(CheckResult::from_evidence(name, evidence, ""))
}

/// Whether a Service (with a ClusterIP) labelled
/// `service.kubernetes.io/headless` is left alone. kube-proxy v1.34's
/// Service informer selected `!service-proxy-name,!headless`; v1.37's
/// selects only `!service-proxy-name` and applies `!headless` to
/// EndpointSlices, where the EndpointSlice controller sets it for Services
/// without a ClusterIP (cmd/kube-proxy/app/server.go). svclab's own agent
/// follows v1.37.
fn headless_label_hides_service(kind: &BackendKind) -> bool {
    let minor = |v: &str| {
        v.trim_start_matches('v')
            .split('.')
            .nth(1)
            .and_then(|m| m.parse::<u32>().ok())
    };
    kind.kube_proxy_version()
        .and_then(minor)
        .is_some_and(|m| m < 37)
}

/// The longest `timeoutSeconds` the affinity-timeout check waits out.
const MAX_AFFINITY_WAIT_SECONDS: i32 = 30;

/// Expiry rounds at most: with 2 clients over 3 endpoints, all staying put
/// by chance 3 times running is 1 in 729.
const AFFINITY_ROUNDS: usize = 3;

/// ClientIP affinity with a short `timeoutSeconds`: each client sticks to
/// one endpoint within it, and after the timeout has passed without
/// traffic its next connection is balanced afresh (with many endpoints,
/// some client lands elsewhere).
pub async fn affinity_timeout(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let found = ctx.targets().into_iter().find_map(|t| {
        if !t.affinity || t.itp_local || t.cluster().len() < 3 {
            return None;
        }
        let cp = ctx.lab.cp();
        let secs = cp
            .service(&t.namespace, &t.service)?
            .spec
            .as_ref()?
            .session_affinity_config
            .as_ref()?
            .client_ip
            .as_ref()?
            .timeout_seconds?;
        (secs <= MAX_AFFINITY_WAIT_SECONDS).then_some((t, secs))
    });
    let Some((t, secs)) = found else {
        return Ok(CheckResult::skip(
            name,
            format!(
                "the scenario has no ClientIP-affinity Service with timeoutSeconds <= {MAX_AFFINITY_WAIT_SECONDS} and 3 or more endpoints"
            ),
        ));
    };
    let clients = ctx.clients();
    if clients.is_empty() {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    }
    let mut evidence = Vec::new();
    let mut first: Vec<Option<String>> = Vec::new();
    let mut last_probe = Instant::now();
    for v in &clients {
        let r = ctx
            .probe(v, vec![ctx.spec(t.vip_addr(), t.protocol); 5])
            .await?;
        last_probe = Instant::now();
        let pods: BTreeSet<String> = r
            .iter()
            .filter_map(|x| x.answer.as_ref().map(|w| w.pod.clone()))
            .collect();
        let ok = pods.len() == 1 && all_reach(&r, &t.cluster());
        first.push(if ok { pods.into_iter().next() } else { None });
        evidence.push(Evidence {
            vantage: ctx.vantage_label(v, &t),
            target: t.label(),
            expected: format!("within {secs} s: every connection on one endpoint"),
            observed: tally(&r),
            ok,
            probes: r.len(),
        });
    }
    // Past the timeout, with a second's margin either side of the kernel's
    // clock; bounded by MAX_AFFINITY_WAIT_SECONDS. Each round's connection
    // starts a new affinity, so the next round compares with it; with few
    // endpoints every client may land where it was by chance, and another
    // round (at most AFFINITY_ROUNDS) tells chance from stickiness.
    let wait = Duration::from_secs(secs as u64 + 2);
    let mut before = first;
    let mut after = Vec::new();
    let (mut moved, mut unanswered, mut probes) = (false, false, 0);
    for round in 1..=AFFINITY_ROUNDS {
        tokio::time::sleep(wait.saturating_sub(last_probe.elapsed())).await;
        let mut seen = Vec::new();
        for (v, was) in clients.iter().zip(before.iter_mut()) {
            let r = ctx
                .probe(v, vec![ctx.spec(t.vip_addr(), t.protocol)])
                .await?;
            last_probe = Instant::now();
            probes += r.len();
            let now = r
                .first()
                .and_then(|x| x.answer.as_ref().map(|w| w.pod.clone()));
            seen.push(format!(
                "{}: {} -> {}",
                v.name,
                was.as_deref().unwrap_or("?"),
                now.as_deref().unwrap_or("no answer")
            ));
            unanswered |= !all_reach(&r, &t.cluster());
            moved |= was.is_some() && now.is_some() && *was != now;
            *was = now;
        }
        after.push(format!("round {round}: {}", seen.join(", ")));
        if moved || unanswered {
            break;
        }
    }
    evidence.push(Evidence {
        vantage: format!("{} client pods", clients.len()),
        target: t.label(),
        expected: format!(
            "after {} s idle (timeout {secs} s): balanced afresh, some client on another of {} endpoints within {AFFINITY_ROUNDS} rounds",
            wait.as_secs(),
            t.cluster().len()
        ),
        observed: after.join("; "),
        ok: moved && !unanswered,
        probes,
    });
    Ok(CheckResult::from_evidence(name, evidence, ""))
}

/// A copy of a NodePort Service with endpoints, renamed, with nothing
/// allocated.
fn nodeport_template(ctx: &Ctx<'_>) -> Option<(Service, Target)> {
    let t = ctx.targets().into_iter().find(|t| {
        t.node_port.is_some()
            && !t.etp_local
            && !t.itp_local
            && !t.affinity
            && t.protocol == Protocol::Tcp
            && t.has_any()
    })?;
    let svc = ctx.lab.cp().service(&t.namespace, &t.service)?.clone();
    Some((svc, t))
}

fn renamed(template: &Service, name: &str, port: &Target, node_port: Option<u16>) -> Service {
    let mut svc = template.clone();
    svc.metadata.name = Some(name.into());
    svc.metadata.resource_version = None;
    svc.metadata.uid = None;
    svc.metadata.labels = None;
    if let Some(spec) = svc.spec.as_mut() {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
        spec.health_check_node_port = None;
        spec.external_ips = None;
        let mut p = spec
            .ports
            .clone()
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.port as u16 == port.port)
            .expect("the template's port");
        p.node_port = node_port.map(i32::from);
        spec.ports = Some(vec![p]);
    }
    svc
}

/// A deleted Service's ClusterIP and NodePort stop answering at once; the
/// NodePort is free for another Service, which works on it; the first
/// Service created again under its name gets a new ClusterIP that works.
pub async fn service_recreate(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some((template, base)) = nodeport_template(ctx) else {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no TCP NodePort Service with cluster policy and endpoints",
        ));
    };
    let Some(v) = client_on(ctx, 0) else {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    };
    // NodePorts from outside when the lab has it, else from the client.
    let outside = ctx.external().unwrap_or_else(|| v.clone());
    let node_ips: Vec<IpAddr> = ctx.nodes().iter().map(|n| n.ip).collect();
    let ns = base.namespace.clone();
    let (first, second) = ("svclab-check-recreate", "svclab-check-reuse");
    let mut evidence = Vec::new();
    let now = |ctx: &Ctx<'_>, n: &str| -> Option<Target> {
        let cp = ctx.lab.cp();
        cp.service(&ns, n).and_then(|s| {
            super::expect::targets_of(&cp, s, ctx.family)
                .into_iter()
                .next()
        })
    };
    let result = async {
        let events = ctx
            .lab
            .cp()
            .add_service(renamed(&template, first, &base, None))?;
        ctx.change(events).await?;
        let t1 = now(ctx, first).ok_or_else(|| anyhow::anyhow!("{first} was not created"))?;
        let np = t1.node_port.expect("a NodePort Service");
        let np_addr = SocketAddr::new(node_ips[0], np);
        let r = ctx
            .probe(&v, vec![ctx.spec(t1.vip_addr(), t1.protocol); 5])
            .await?;
        evidence.push(Evidence {
            vantage: ctx.vantage_label(&v, &t1),
            target: t1.label(),
            expected: format!("created: {}", names(&t1.cluster())),
            observed: tally(&r),
            ok: all_reach(&r, &t1.cluster()),
            probes: r.len(),
        });
        let events = ctx.lab.cp().delete_service(&ns, first)?;
        ctx.change(events).await?;
        for (what, addr, from) in [
            ("ClusterIP", t1.vip_addr(), &v),
            ("NodePort", np_addr, &outside),
        ] {
            let r = ctx
                .probe(from, vec![ctx.spec(addr, t1.protocol); 3])
                .await?;
            let ok = none_answered(&r);
            if !ok {
                ctx.want_trace(from, &t1, addr);
            }
            evidence.push(Evidence {
                vantage: format!("{} {}", from.kind, from.name),
                target: format!("{ns}/{first} {what} {addr} (deleted)"),
                expected: "deleted: no answer".into(),
                observed: tally(&r),
                ok,
                probes: r.len(),
            });
        }
        // The same NodePort, asked for by another Service.
        let reused = ctx
            .lab
            .cp()
            .add_service(renamed(&template, second, &base, Some(np)));
        match reused {
            Err(e) => evidence.push(Evidence {
                vantage: "API server".into(),
                target: format!("{ns}/{second} nodePort {np}"),
                expected: format!("NodePort {np} released: another Service may take it"),
                observed: format!("refused: {e}"),
                ok: false,
                probes: 0,
            }),
            Ok(events) => {
                ctx.change(events).await?;
                let t2 =
                    now(ctx, second).ok_or_else(|| anyhow::anyhow!("{second} was not created"))?;
                let addr = SocketAddr::new(node_ips[node_ips.len() - 1], np);
                let r = ctx
                    .probe(&outside, vec![ctx.spec(addr, t2.protocol); 5])
                    .await?;
                let ok = all_reach(&r, &t2.cluster());
                if !ok {
                    ctx.want_trace(&outside, &t2, addr);
                }
                evidence.push(Evidence {
                    vantage: format!("{} {}", outside.kind, outside.name),
                    target: format!("{} NodePort {addr} (reused)", t2.label()),
                    expected: format!("the reused NodePort: {}", names(&t2.cluster())),
                    observed: tally(&r),
                    ok,
                    probes: r.len(),
                });
                let events = ctx.lab.cp().delete_service(&ns, second)?;
                ctx.change(events).await?;
            }
        }
        // The first Service again, under its name: a new ClusterIP.
        let events = ctx
            .lab
            .cp()
            .add_service(renamed(&template, first, &base, None))?;
        ctx.change(events).await?;
        let t3 = now(ctx, first).ok_or_else(|| anyhow::anyhow!("{first} was not recreated"))?;
        let r = ctx
            .probe(&v, vec![ctx.spec(t3.vip_addr(), t3.protocol); 5])
            .await?;
        let ok = t3.vip != t1.vip && all_reach(&r, &t3.cluster());
        if !ok {
            ctx.want_trace(&v, &t3, t3.vip_addr());
        }
        evidence.push(Evidence {
            vantage: ctx.vantage_label(&v, &t3),
            target: t3.label(),
            expected: format!(
                "recreated with a new ClusterIP (was {}): {}",
                t1.vip,
                names(&t3.cluster())
            ),
            observed: tally(&r),
            ok,
            probes: r.len(),
        });
        anyhow::Ok(())
    }
    .await;
    // Clean up whatever the steps left.
    let mut events = Vec::new();
    for n in [first, second] {
        if ctx.lab.cp().service(&ns, n).is_some() {
            events.extend(ctx.lab.cp().delete_service(&ns, n)?);
        }
    }
    ctx.change(events).await?;
    result?;
    Ok(CheckResult::from_evidence(name, evidence, ""))
}

/// How a backend treats traffic to a service CIDR address no Service
/// owns, as its upstream mode does: `Some(true)` drops it (kube-proxy's
/// nftables mode, "Drop traffic to unallocated ClusterIPs", when it knows
/// the ServiceCIDRs), `Some(false)` leaves it to routing (the iptables and
/// IPVS modes have no rule for it), `None` when nothing says.
fn drops_unallocated(kind: &BackendKind) -> Option<bool> {
    use svclab_backends::kubeproxy::Mode;
    match kind {
        BackendKind::Builtin("nftables" | "nftables-flat") => Some(true),
        BackendKind::Builtin("iptables" | "iptables-legacy" | "ipvs" | "userspace" | "ebpf") => {
            Some(false)
        }
        BackendKind::KubeProxy { mode, .. } => Some(*mode == Mode::Nftables),
        _ => None,
    }
}

fn class(o: &Outcome) -> &'static str {
    match o {
        Outcome::Answered => "answered",
        Outcome::Refused => "refused",
        Outcome::Unreachable => "unreachable",
        Outcome::Timeout => "timeout",
        Outcome::Error(_) => "error",
    }
}

fn classes(r: &[ProbeResult]) -> BTreeSet<&'static str> {
    r.iter().map(|x| class(&x.outcome)).collect()
}

/// An address of the service CIDR of the checks' family that no Service
/// owns: one of the range's last 256.
fn unallocated(ctx: &Ctx<'_>) -> Option<IpAddr> {
    let cidr: IpNet = match ctx.family {
        IpFamily::IPv4 => ctx.lab.scenario.lab.service_cidr.into(),
        IpFamily::IPv6 => ctx.lab.scenario.stack.v6.as_ref()?.service_cidr.into(),
    };
    let used: BTreeSet<IpAddr> = ctx
        .lab
        .cp()
        .services()
        .filter_map(|s| s.spec.as_ref()?.cluster_ips.clone())
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    let last: u128 = match cidr.broadcast() {
        IpAddr::V4(b) => u32::from(b).into(),
        IpAddr::V6(b) => b.into(),
    };
    let at = |n: u128| -> IpAddr {
        match cidr {
            IpNet::V4(_) => Ipv4Addr::from(n as u32).into(),
            IpNet::V6(_) => Ipv6Addr::from(n).into(),
        }
    };
    (1..=256u128)
        .filter_map(|i| last.checked_sub(i))
        .map(at)
        .find(|ip| cidr.contains(ip) && !used.contains(ip))
}

/// Traffic to an address of the service CIDR that no Service owns: the
/// nftables modes drop it; the iptables and IPVS modes leave it alone.
/// To tell the two apart the check gives a node both that address and a
/// control address outside the cluster (TEST-NET-1) on its loopback, with
/// no listener behind either: left alone, a connection to the service
/// address is refused by the node's own stack exactly as the control's
/// is; dropped, it times out.
pub async fn unallocated_clusterip(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(kind) = ctx.lab.backend.clone() else {
        return Ok(CheckResult::skip(name, "the lab runs no backend"));
    };
    let Some(drops) = drops_unallocated(&kind) else {
        return Ok(CheckResult::skip(
            name,
            format!(
                "backend {kind} does not say how it treats unallocated ClusterIPs (a program speaking the agent protocol declares no kube-proxy mode)"
            ),
        ));
    };
    if let Some(why) = ctx.limits.get(&Feature::NodeOrigin) {
        return Ok(CheckResult::skip(
            name,
            format!("backend {kind}: the check probes from a node: {why}"),
        ));
    }
    let Some(addr) = unallocated(ctx) else {
        return Ok(CheckResult::skip(
            name,
            "the service CIDR's last 256 addresses are all allocated",
        ));
    };
    let Some(node) = ctx.nodes().into_iter().next() else {
        return Ok(CheckResult::skip(name, "the lab has no nodes"));
    };
    // TEST-NET-1, or IPv6's documentation range.
    let control_ip: IpAddr = match ctx.family {
        IpFamily::IPv4 => Ipv4Addr::new(192, 0, 2, 1).into(),
        IpFamily::IPv6 => "2001:db8::1".parse().expect("constant"),
    };
    let port = 80;
    let (control, target) = (
        SocketAddr::new(control_ip, port),
        SocketAddr::new(addr, port),
    );
    let added: Vec<String> = [addr, control_ip]
        .iter()
        .map(|a| IpNet::from(*a).to_string())
        .collect();
    for a in &added {
        ip(&node.netns, &["addr", "replace", a, "dev", "lo"]).await?;
    }
    let probed = async {
        let spec = |a| ctx.spec(a, Protocol::Tcp);
        ctx.probe(
            &node,
            vec![spec(control), spec(target), spec(control), spec(target)],
        )
        .await
    }
    .await;
    for a in &added {
        ip(&node.netns, &["addr", "del", a, "dev", "lo"]).await?;
    }
    let (c, t): (Vec<ProbeResult>, Vec<ProbeResult>) =
        probed?.into_iter().partition(|x| x.spec.target == control);
    let base = classes(&c);
    let control_ok = base == BTreeSet::from(["refused"]);
    let (want, ok) = if drops {
        (
            "dropped: every connection times out (the control is refused)".to_string(),
            control_ok && classes(&t) == BTreeSet::from(["timeout"]),
        )
    } else {
        (
            "left alone: refused by the node's own stack, as the control is".to_string(),
            control_ok && classes(&t) == base,
        )
    };
    let evidence = vec![Evidence {
        vantage: format!("node {} (both addresses on its lo, no listener)", node.name),
        target: format!("{target}/TCP (service CIDR, no Service; backend {kind})"),
        expected: want,
        observed: format!("{}; control {control}: {}", tally(&t), tally(&c)),
        ok,
        probes: t.len() + c.len(),
    }];
    Ok(CheckResult::from_evidence(name, evidence, ""))
}
