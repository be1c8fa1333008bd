//! healthcheck-terminating: the health check node port of an
//! `externalTrafficPolicy: Local` Service counts only ready local
//! endpoints, so once every endpoint on a node is terminating the node
//! answers 503 (a load balancer stops sending new connections there) while
//! the terminating endpoints still serve what arrives (terminating-fallback).
//! Kubernetes' e2e test "should fail health check node port if there are
//! only terminating endpoints" (test/e2e/network/service.go).

use std::net::SocketAddr;

use super::{CheckResult, Ctx, Evidence};

/// (status, localEndpoints) from the health check, or why there is none.
async fn health(ctx: &Ctx<'_>, addr: SocketAddr) -> Result<(u16, Option<u64>, String), String> {
    let ext = ctx.external().ok_or("no external namespace")?;
    // The agent opens the port once it has synced; a refusal right after
    // the lab came up is retried, 1 s at most.
    let mut tries = 0;
    let (status, body) = loop {
        tries += 1;
        match super::nodeport::http_get(ctx, &ext, addr).await {
            Ok(answer) => break answer,
            Err(e) if tries < 5 => {
                tracing::debug!("health check {addr}: {e:#}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(format!("no answer in {tries} tries: {e:#}")),
        }
    };
    let count = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("localEndpoints").and_then(|c| c.as_u64()));
    Ok((status, count, format!("HTTP {status} {body}")))
}

pub async fn healthcheck_terminating(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    if ctx.external().is_none() {
        return Ok(CheckResult::skip(
            name,
            "the lab has no external namespace (spec.external: false)",
        ));
    }
    // A Service with a health check node port and a node with ready local
    // endpoints.
    let found = ctx.targets().into_iter().find_map(|t| {
        t.health_check_node_port?;
        let node = t.endpoints.iter().find(|e| e.ready)?.node.clone();
        Some((t, node))
    });
    let Some((t, node)) = found else {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no Service with a health check node port and a ready endpoint",
        ));
    };
    let ip = ctx
        .node_ip(&node)
        .ok_or_else(|| anyhow::anyhow!("no node {node}"))?;
    let addr = SocketAddr::new(ip, t.health_check_node_port.unwrap_or(0));
    let local: Vec<String> = t
        .endpoints
        .iter()
        .filter(|e| e.node == node && e.ready)
        .map(|e| e.pod.clone())
        .collect();
    let target = format!("{}/{} health check {addr}", t.namespace, t.service);
    let mut evidence = Vec::new();

    let before = health(ctx, addr).await;
    evidence.push(Evidence {
        vantage: "external".into(),
        target: target.clone(),
        expected: format!("HTTP 200 with localEndpoints {}", local.len()),
        ok: matches!(&before, Ok((200, Some(n), _)) if *n == local.len() as u64),
        observed: before.map_or_else(|e| e, |b| b.2),
        probes: 1,
    });

    let mut events = Vec::new();
    for pod in &local {
        let (ns, p) = pod.split_once('/').unwrap_or(("default", pod));
        events.extend(ctx.lab.cp().set_terminating(ns, p, true)?);
    }
    ctx.change(events).await?;
    let during = health(ctx, addr).await;
    evidence.push(Evidence {
        vantage: "external".into(),
        target: target.clone(),
        expected: format!(
            "HTTP 503 with localEndpoints 0: {} terminating (still serving)",
            local.join(", ")
        ),
        ok: matches!(&during, Ok((503, Some(0), _))),
        observed: during.map_or_else(|e| e, |b| b.2),
        probes: 1,
    });

    let mut events = Vec::new();
    for pod in &local {
        let (ns, p) = pod.split_once('/').unwrap_or(("default", pod));
        events.extend(ctx.lab.cp().set_terminating(ns, p, false)?);
    }
    ctx.change(events).await?;
    Ok(CheckResult::from_evidence(name, evidence, ""))
}
