//! nodeport-addresses: kube-proxy's `nodePortAddresses` decides which of a
//! node's own addresses accept NodePort traffic. A lab node has two: its IP
//! on the fabric and its pod bridge's (the client pods' gateway). The check
//! probes a NodePort on both, from the client pod on that node, and on the
//! node IP from `external`: an address inside the setting reaches the
//! endpoints, one outside it is not answered by any.
//!
//! The setting is the Lab's `agent.nodePortAddresses`; unset, it is the
//! backend's default: kube-proxy's `all` in its iptables and IPVS modes
//! (it warns about that), `primary` in its nftables mode and in svclab's
//! backends.

use std::net::{IpAddr, SocketAddr};

use svclab_backends::BackendKind;
use svclab_backends::kubeproxy::Mode;
use svclab_backends::model::{IpFamily, Protocol};
use svclab_backends::nodeport_addresses;

use super::expect::Target;
use super::{CheckResult, Ctx, Evidence, all_reach, names, none_answered, tally};
use crate::probe::Vantage;

/// Why a check that needs [`cluster_tcp_nodeport`] skips without one.
pub const NO_CLUSTER_TCP_NODEPORT: &str =
    "the scenario has no TCP NodePort Service (Cluster policy) with endpoints";

/// A TCP NodePort service port with externalTrafficPolicy Cluster and
/// endpoints: one is enough to probe a node's addresses.
pub fn cluster_tcp_nodeport(ctx: &Ctx<'_>) -> Option<Target> {
    ctx.targets().into_iter().find(|t| {
        t.node_port.is_some() && !t.etp_local && t.protocol == Protocol::Tcp && t.has_any()
    })
}

/// The setting in force, and where it comes from: the Lab's, or the
/// backend's default.
pub fn setting(lab: &[String], backend: Option<&BackendKind>) -> (Vec<String>, &'static str) {
    if !lab.is_empty() {
        return (lab.to_vec(), "the Lab's agent.nodePortAddresses");
    }
    match backend {
        Some(BackendKind::KubeProxy {
            mode: Mode::Iptables | Mode::Ipvs,
            ..
        }) => (vec!["all".into()], "kube-proxy's default in this mode"),
        _ => (vec!["primary".into()], "the backend's default"),
    }
}

pub async fn nodeport_addresses(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(t) = cluster_tcp_nodeport(ctx) else {
        return Ok(CheckResult::skip(name, NO_CLUSTER_TCP_NODEPORT));
    };
    let np = t.node_port.unwrap_or(0);
    let (setting, source) = setting(
        &ctx.lab.scenario.lab.agent.node_port_addresses,
        ctx.lab.backend.as_ref(),
    );
    let shown = format!("[{}] ({source})", setting.join(", "));
    let clients = ctx.clients();
    let external = ctx.external();
    let nodes = ctx.lab.topology.nodes.clone();
    let mut evidence = Vec::new();
    for n in &nodes {
        let Some(pod) = clients.iter().find(|c| c.node.as_deref() == Some(&n.name)) else {
            continue;
        };
        // (vantage, address): both addresses from the node's own client
        // pod, and the node IP from outside the cluster.
        let (node_ip, gateway): (IpAddr, IpAddr) = match (ctx.family, n.ip6, n.gateway6) {
            (IpFamily::IPv6, Some(ip), Some(gw)) => (ip.into(), gw.into()),
            _ => (n.ip.into(), n.gateway.into()),
        };
        let mut cases: Vec<(&Vantage, IpAddr)> = vec![(pod, node_ip), (pod, gateway)];
        if let Some(ext) = &external {
            cases.push((ext, node_ip));
        }
        for (v, addr) in cases {
            let inside = nodeport_addresses::matches(&setting, node_ip, addr);
            let target = SocketAddr::new(addr, np);
            let results = ctx
                .probe(
                    v,
                    vec![ctx.spec(target, t.protocol); ctx.settings.per_target],
                )
                .await?;
            let eps = t.external(&n.name);
            let which = if addr == node_ip {
                "node IP"
            } else {
                "pod bridge"
            };
            let (expected, ok) = if inside {
                (
                    format!("inside {shown}: a ready endpoint: {}", names(&eps)),
                    all_reach(&results, &eps),
                )
            } else {
                (
                    format!("outside {shown}: no endpoint answers"),
                    none_answered(&results),
                )
            };
            if !ok {
                ctx.want_trace(v, &t, target);
            }
            evidence.push(Evidence {
                vantage: ctx.vantage_label(v, &t),
                target: format!("{} NodePort on {}'s {which} {target}", t.label(), n.name),
                expected,
                observed: tally(&results),
                ok,
                probes: results.len(),
            });
        }
    }
    if evidence.is_empty() {
        return Ok(CheckResult::skip(
            name,
            "the Lab has no client pods (spec.clientPods) to probe a node's addresses from",
        ));
    }
    Ok(CheckResult::from_evidence(name, evidence, ""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_backends() {
        let kp = |m: &str| -> BackendKind { format!("kube-proxy:{m}").parse().unwrap() };
        let s = |v: (Vec<String>, &str)| v.0;
        assert_eq!(s(setting(&[], Some(&kp("iptables")))), ["all"]);
        assert_eq!(s(setting(&[], Some(&kp("ipvs")))), ["all"]);
        assert_eq!(s(setting(&[], Some(&kp("nftables")))), ["primary"]);
        assert_eq!(s(setting(&[], Some(&BackendKind::Iptables))), ["primary"]);
        let lab = vec!["10.244.0.0/16".to_string()];
        assert_eq!(s(setting(&lab, Some(&kp("iptables")))), lab);
    }
}
