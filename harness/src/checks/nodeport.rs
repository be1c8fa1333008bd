//! NodePorts and traffic policies: reachability from `external` and from
//! nodes, SNAT for externalTrafficPolicy Cluster, source preservation and
//! local-only endpoints for Local, health-check node ports, and
//! internalTrafficPolicy Local.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CheckResult, Ctx, Evidence, Target, Vantage, all_reach, names, none_answered, tally};
use crate::probe::ProbeResult;

async fn probe_node_port(
    ctx: &Ctx<'_>,
    v: &Vantage,
    t: &Target,
    node: &str,
) -> anyhow::Result<Vec<ProbeResult>> {
    let ip = ctx
        .node_ip(node)
        .ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
    let np = t
        .node_port
        .ok_or_else(|| anyhow::anyhow!("{} has no node port", t.label()))?;
    let spec = ctx.spec(SocketAddr::new(ip, np), t.protocol);
    ctx.probe(v, vec![spec; ctx.settings.per_target]).await
}

fn node_names(ctx: &Ctx<'_>) -> Vec<String> {
    ctx.lab
        .topology
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .collect()
}

pub async fn nodeport(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let targets: Vec<_> = ctx
        .targets()
        .into_iter()
        .filter(|t| t.node_port.is_some() && !t.etp_local && t.has_any())
        .collect();
    let mut evidence = Vec::new();
    let nodes = node_names(ctx);
    let node_note = ctx
        .limits
        .get(&svclab_backends::Feature::NodeOrigin)
        .map(|why| format!(" (node vantage skipped: {why})"));
    for t in &targets {
        let mut vantages: Vec<Vantage> = ctx.external().into_iter().collect();
        if node_note.is_none() {
            vantages.extend(ctx.nodes());
        }
        for v in &vantages {
            for node in &nodes {
                let results = probe_node_port(ctx, v, t, node).await?;
                let expected = t.external(node);
                if !all_reach(&results, &expected) {
                    let ip = ctx.node_ip(node).unwrap_or(t.vip);
                    ctx.want_trace(v, t, SocketAddr::new(ip, t.node_port.unwrap_or(0)));
                }
                evidence.push(Evidence {
                    vantage: format!("{} {}", v.kind, v.name),
                    target: format!(
                        "{} via node {node} port {}",
                        t.label(),
                        t.node_port.unwrap_or(0)
                    ),
                    expected: format!("a ready endpoint: {}", names(&expected)),
                    observed: tally(&results),
                    ok: all_reach(&results, &expected),
                    probes: results.len(),
                });
            }
        }
    }
    let mut r = CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no NodePort Service (Cluster policy) with endpoints",
    );
    if let Some(note) = node_note {
        r.summary.push_str(&note);
    }
    Ok(r)
}

pub async fn nodeport_masquerade(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(ext) = ctx.external() else {
        return Ok(CheckResult::skip(
            name,
            "the lab has no external namespace (spec.external: false)",
        ));
    };
    let targets: Vec<_> = ctx
        .targets()
        .into_iter()
        .filter(|t| t.node_port.is_some() && !t.etp_local && t.has_any())
        .collect();
    let mut evidence = Vec::new();
    let nodes = node_names(ctx);
    for t in &targets {
        for node in &nodes {
            let results = probe_node_port(ctx, &ext, t, node).await?;
            let eps = t.cluster();
            let remote: Vec<_> = results
                .iter()
                .filter_map(|r| r.answer.as_ref())
                .filter(|w| eps.iter().any(|e| e.pod == w.pod && e.node != *node))
                .collect();
            let seen: BTreeSet<String> = remote.iter().map(|w| w.peer.ip().to_string()).collect();
            evidence.push(Evidence {
                vantage: "external".into(),
                target: format!(
                    "{} via node {node} port {}",
                    t.label(),
                    t.node_port.unwrap_or(0)
                ),
                expected: format!(
                    "answers from endpoints on other nodes see a node address, not {}",
                    ext.ip
                ),
                observed: format!(
                    "{}; {} from other nodes, source seen: {}",
                    tally(&results),
                    remote.len(),
                    if seen.is_empty() {
                        "-".into()
                    } else {
                        seen.into_iter().collect::<Vec<_>>().join(", ")
                    }
                ),
                ok: !remote.is_empty() && remote.iter().all(|w| w.peer.ip() != ext.ip),
                probes: results.len(),
            });
        }
    }
    // A node whose Service has all endpoints local proves nothing here.
    evidence.retain(|e| e.ok || !e.observed.contains("; 0 from other nodes"));
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no NodePort Service (Cluster policy) with an endpoint on another node",
    ))
}

pub async fn etp_local(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(ext) = ctx.external() else {
        return Ok(CheckResult::skip(
            name,
            "the lab has no external namespace (spec.external: false)",
        ));
    };
    let targets: Vec<_> = ctx
        .targets()
        .into_iter()
        .filter(|t| t.node_port.is_some() && t.etp_local)
        .collect();
    let mut evidence = Vec::new();
    let nodes = node_names(ctx);
    for t in &targets {
        for node in &nodes {
            let results = probe_node_port(ctx, &ext, t, node).await?;
            let local = t.local(node);
            let via = format!(
                "{} via node {node} port {}",
                t.label(),
                t.node_port.unwrap_or(0)
            );
            if local.is_empty() {
                evidence.push(Evidence {
                    vantage: "external".into(),
                    target: via,
                    expected: "dropped: this node has no local endpoint".into(),
                    observed: tally(&results),
                    ok: none_answered(&results),
                    probes: results.len(),
                });
            } else {
                let preserved = results
                    .iter()
                    .filter_map(|r| r.answer.as_ref())
                    .all(|w| w.peer.ip() == ext.ip);
                evidence.push(Evidence {
                    vantage: "external".into(),
                    target: via,
                    expected: format!(
                        "only local endpoints ({}) and source {} kept",
                        names(&local),
                        ext.ip
                    ),
                    observed: format!(
                        "{}; sources seen: {}",
                        tally(&results),
                        results
                            .iter()
                            .filter_map(|r| r.answer.as_ref().map(|w| w.peer.ip().to_string()))
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    ok: all_reach(&results, &local) && preserved,
                    probes: results.len(),
                });
            }
        }
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no externalTrafficPolicy: Local Service",
    ))
}

/// A plain HTTP GET from a vantage's namespace: (status, body).
pub(super) async fn http_get(
    ctx: &Ctx<'_>,
    v: &Vantage,
    addr: SocketAddr,
) -> anyhow::Result<(u16, String)> {
    let rt = ctx.lab.prober.vantage(&v.netns)?;
    let fetch = rt.spawn(async move {
        let mut s =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await??;
        s.write_all(
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await??;
        Ok::<_, anyhow::Error>(String::from_utf8_lossy(&buf).into_owned())
    });
    let text = fetch.await??;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP answer: {text:?}"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

pub async fn etp_local_healthcheck(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(ext) = ctx.external() else {
        return Ok(CheckResult::skip(
            name,
            "the lab has no external namespace (spec.external: false)",
        ));
    };
    let mut seen = BTreeSet::new();
    let targets: Vec<_> = ctx
        .targets()
        .into_iter()
        .filter(|t| t.etp_local && t.health_check_node_port.is_some())
        .filter(|t| seen.insert((t.namespace.clone(), t.service.clone())))
        .collect();
    let mut evidence = Vec::new();
    for t in &targets {
        let port = t.health_check_node_port.unwrap_or(0);
        for n in ctx.lab.topology.nodes.clone() {
            let local: BTreeSet<_> = t
                .endpoints
                .iter()
                .filter(|e| e.node == n.name && e.ready)
                .map(|e| e.ip)
                .collect();
            let want_status = if local.is_empty() { 503 } else { 200 };
            let node_ip = ctx.node_ip(&n.name).unwrap_or(n.ip.into());
            let observed = http_get(ctx, &ext, SocketAddr::new(node_ip, port)).await;
            let (ok, observed) = match observed {
                Ok((status, body)) => {
                    let count = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v.get("localEndpoints").and_then(|c| c.as_u64()));
                    (
                        status == want_status && count == Some(local.len() as u64),
                        format!("HTTP {status} {body}"),
                    )
                }
                Err(e) => (false, format!("no answer: {e}")),
            };
            evidence.push(Evidence {
                vantage: "external".into(),
                target: format!(
                    "{}/{} health check {}",
                    t.namespace,
                    t.service,
                    SocketAddr::new(node_ip, port)
                ),
                expected: format!("HTTP {want_status} with localEndpoints {}", local.len()),
                observed,
                ok,
                probes: 1,
            });
        }
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no externalTrafficPolicy: Local Service with a health check node port",
    ))
}

pub async fn itp_local(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let targets: Vec<_> = ctx
        .targets()
        .into_iter()
        .filter(|t| t.itp_local && t.has_any())
        .collect();
    let mut evidence = Vec::new();
    for t in &targets {
        for v in ctx.clients() {
            let node = v.node.clone().unwrap_or_default();
            let results = ctx.probe_vip(&v, t).await?;
            let local = t.local(&node);
            let (expected, ok) = if local.is_empty() {
                (
                    "fails: no endpoint on this node".to_string(),
                    none_answered(&results),
                )
            } else {
                (
                    format!("only local endpoints: {}", names(&local)),
                    all_reach(&results, &local),
                )
            };
            evidence.push(Evidence {
                vantage: ctx.vantage_label(&v, t),
                target: t.label(),
                expected,
                observed: tally(&results),
                ok,
                probes: results.len(),
            });
        }
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "the scenario has no internalTrafficPolicy: Local Service",
    ))
}
