//! localhost-nodeport: a NodePort on 127.0.0.1, from the node itself.
//! kube-proxy's iptables mode serves it (`iptables.localhostNodePorts`,
//! on by default, with `route_localnet` so a loopback-sourced packet may be
//! DNATed out to a pod, and masqueraded); its nftables and IPVS modes never
//! do; svclab's iptables backends follow its iptables mode. A backend that
//! does not serve it declares so, and then the check
//! holds it to its word: 127.0.0.1 on the NodePort is not answered. The
//! same holds when the Lab's `agent.nodePortAddresses` leaves loopback out,
//! and always for IPv6: no mode serves NodePorts on ::1, since the kernel
//! has no route_localnet for IPv6 and kube-proxy never matches IPv6
//! loopback in nodePortAddresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use svclab_backends::model::IpFamily;

use svclab_backends::Feature;
use svclab_backends::nodeport_addresses;

use super::{CheckResult, Ctx, Evidence, all_reach, names, none_answered, tally};

pub async fn localhost_nodeport(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(t) = super::nodeport_addresses::cluster_tcp_nodeport(ctx) else {
        return Ok(CheckResult::skip(
            name,
            super::nodeport_addresses::NO_CLUSTER_TCP_NODEPORT,
        ));
    };
    let np = t.node_port.unwrap_or(0);
    // A backend that serves loopback NodePorts does so only when
    // nodePortAddresses covers 127.0.0.1 (kube-proxy's default `all` does).
    let (setting, source) = super::nodeport_addresses::setting(
        &ctx.lab.scenario.lab.agent.node_port_addresses,
        ctx.lab.backend.as_ref(),
    );
    let loopback: IpAddr = match ctx.family {
        IpFamily::IPv4 => Ipv4Addr::LOCALHOST.into(),
        IpFamily::IPv6 => Ipv6Addr::LOCALHOST.into(),
    };
    let declared = if ctx.family == IpFamily::IPv6 {
        Some(
            "no proxy serves NodePorts on ::1: the kernel has no route_localnet for IPv6, so \
             a packet from ::1 may not leave the node, and kube-proxy never matches IPv6 \
             loopback in nodePortAddresses"
                .to_string(),
        )
    } else {
        ctx.limits
            .get(&Feature::LocalhostNodePort)
            .cloned()
            .or_else(|| {
                let node_ip = ctx.nodes().first().map(|n| n.ip)?;
                let covered = nodeport_addresses::matches(&setting, node_ip, loopback);
                (!covered).then(|| {
                    format!(
                        "127.0.0.1 is outside nodePortAddresses [{}] ({source})",
                        setting.join(", ")
                    )
                })
            })
    };
    let mut evidence = Vec::new();
    for v in ctx.nodes() {
        let node = v.name.clone();
        let addr = SocketAddr::new(loopback, np);
        let results = ctx
            .probe(
                &v,
                vec![ctx.spec(addr, t.protocol); ctx.settings.per_target],
            )
            .await?;
        let eps = t.external(&node);
        let (expected, ok) = match &declared {
            None => (
                format!("a ready endpoint: {}", names(&eps)),
                all_reach(&results, &eps),
            ),
            Some(why) => (
                format!("not answered (declared: {why})"),
                none_answered(&results),
            ),
        };
        if !ok {
            ctx.want_trace(&v, &t, addr);
        }
        evidence.push(Evidence {
            vantage: format!("node {node}"),
            target: format!("{} via {loopback} port {np}", t.label()),
            expected,
            observed: tally(&results),
            ok,
            probes: results.len(),
        });
    }
    Ok(CheckResult::from_evidence(name, evidence, ""))
}
