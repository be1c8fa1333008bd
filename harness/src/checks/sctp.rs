//! sctp: a Service port with `protocol: SCTP` is proxied as TCP and UDP
//! ones are: its ClusterIP from each node's client pod, and its NodePort on
//! every node from `external`, reach the endpoints' SCTP listener (the
//! probes speak SCTP one-to-one style, as the workloads do). It needs a
//! kernel with SCTP; this host's has none, Debian's stock kernels in
//! `svclab vm` have it as a module.

use std::net::SocketAddr;

use svclab_backends::model::Protocol;

use super::{CheckResult, Ctx, Evidence, all_reach, names, tally};

/// Whether this kernel makes SCTP sockets, tried inside `netns`.
fn sctp_socket(netns: &str) -> Result<(), std::io::Error> {
    let ns = crate::netns::NetNs::new(netns);
    ns.run(|| {
        socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::from(libc::IPPROTO_SCTP)),
        )
        .map(drop)
    })
    .map_err(std::io::Error::other)?
}

pub async fn sctp(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let targets: Vec<_> = ctx
        .sctp_targets()
        .into_iter()
        .filter(|t| !t.itp_local && t.has_any())
        .collect();
    if targets.is_empty() {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no SCTP Service port with endpoints",
        ));
    }
    let clients = ctx.clients();
    let Some(first) = clients.first() else {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    };
    if let Err(e) = sctp_socket(&first.netns) {
        return Ok(CheckResult::skip(
            name,
            format!(
                "this kernel has no SCTP: socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) in {}: {e} \
                 (Debian's stock kernels have it: svclab vm)",
                first.name
            ),
        ));
    }
    let mut evidence = Vec::new();
    for t in &targets {
        let expected = t.cluster();
        for v in &clients {
            let results = ctx.probe_vip(v, t).await?;
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
        let (Some(np), Some(ext)) = (t.node_port, ctx.external()) else {
            continue;
        };
        if t.etp_local {
            continue;
        }
        for node in ctx.lab.topology.nodes.clone() {
            let addr = SocketAddr::new(ctx.node_ip(&node.name).unwrap_or(node.ip.into()), np);
            let results = ctx
                .probe(
                    &ext,
                    vec![ctx.spec(addr, Protocol::Sctp); ctx.settings.per_target],
                )
                .await?;
            let expected = t.external(&node.name);
            let ok = all_reach(&results, &expected);
            if !ok {
                ctx.want_trace(&ext, t, addr);
            }
            evidence.push(Evidence {
                vantage: "external external".into(),
                target: format!("{} via node {} port {np}", t.label(), node.name),
                expected: format!("a ready endpoint: {}", names(&expected)),
                observed: tally(&results),
                ok,
                probes: results.len(),
            });
        }
    }
    Ok(CheckResult::from_evidence(name, evidence, ""))
}
