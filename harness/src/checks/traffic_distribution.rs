//! traffic-distribution: `spec.trafficDistribution` keeps a client's traffic
//! close to it. The lab's EndpointSlice controller hints each endpoint for
//! its node's zone (PreferClose, PreferSameZone) and node (PreferSameNode),
//! and the proxy on each node follows the hints when every ready endpoint
//! has one and one is for that node's zone (or the node itself); otherwise
//! it spreads over every ready endpoint (kube-proxy's pkg/proxy/topology.go,
//! the e2e suite's traffic_distribution.go).
//!
//! From the client pod on each node, to each such Service: where the hints
//! narrow the endpoints, every answer comes from the hinted ones (the
//! client's zone or node); where they do not (no endpoint in the client's
//! zone), answers come from every ready endpoint. A Service over the same
//! pods without a traffic distribution spreads over all of them from every
//! client. What to expect is read from the Nodes' zones and the slices'
//! hints, never from the backend.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use svclab_backends::model::Protocol;

use super::expect::{Ep, Target, targets_of};
use super::{CheckResult, Ctx, Evidence, Vantage, all_reach, names, tally};
use crate::controlplane::endpoints::TRAFFIC_DISTRIBUTIONS;
use crate::probe::ProbeResult;

/// An endpoint's hints, from its slice: (forZones, forNodes).
type SliceHints = (BTreeSet<String>, BTreeSet<String>);

/// Whether the default proxy follows this Service's traffic distribution:
/// it has one the API server accepts (and a selector, so the controller
/// makes its slices).
pub fn distributed(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.selector.is_some()
            && s.traffic_distribution
                .as_deref()
                .is_some_and(|t| TRAFFIC_DISTRIBUTIONS.contains(&t))
    })
}

/// Each endpoint address's hints in `svc`'s slices.
fn hints_of(ctx: &Ctx<'_>, svc: &Service) -> BTreeMap<String, SliceHints> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let cp = ctx.lab.cp();
    let mut out = BTreeMap::new();
    for slice in cp.slices_of(ns, name) {
        for e in slice.endpoints.iter().flatten() {
            let h = e.hints.as_ref();
            let zones = h
                .and_then(|h| h.for_zones.as_ref())
                .into_iter()
                .flatten()
                .map(|z| z.name.clone())
                .collect();
            let nodes = h
                .and_then(|h| h.for_nodes.as_ref())
                .into_iter()
                .flatten()
                .map(|n| n.name.clone())
                .collect();
            if let Some(a) = e.addresses.first() {
                out.insert(a.clone(), (zones, nodes));
            }
        }
    }
    out
}

/// What a client on `node` in `zone` may reach: the ready endpoints hinted
/// for its node when every ready one has a node hint and one is for it,
/// else likewise by zone, else every ready endpoint. The `String` says
/// which (for the evidence); `narrowed` is whether hints were followed.
fn expected<'t>(
    t: &'t Target,
    hints: &BTreeMap<String, SliceHints>,
    node: &str,
    zone: Option<&str>,
) -> (Vec<&'t Ep>, String, bool) {
    let ready: Vec<&Ep> = t.endpoints.iter().filter(|e| e.ready).collect();
    let of = |e: &Ep| hints.get(&e.ip.to_string());
    let pick = |this: Option<&str>, which: fn(&SliceHints) -> &BTreeSet<String>| {
        let this = this?;
        let all_hinted = ready
            .iter()
            .all(|e| of(e).is_some_and(|h| !which(h).is_empty()));
        let mine: Vec<&Ep> = ready
            .iter()
            .copied()
            .filter(|e| of(e).is_some_and(|h| which(h).contains(this)))
            .collect();
        (all_hinted && !mine.is_empty()).then_some(mine)
    };
    if let Some(eps) = pick(Some(node), |h| &h.1) {
        return (eps, format!("only node {node}'s endpoints"), true);
    }
    if let Some(eps) = pick(zone, |h| &h.0) {
        let z = zone.unwrap_or_default();
        return (eps, format!("only zone {z}'s endpoints"), true);
    }
    let why = match zone {
        Some(z) => format!("every endpoint (none hinted for zone {z})"),
        None => "every endpoint (node has no zone)".to_string(),
    };
    (ready, why, false)
}

/// Every endpoint in `eps` answered at least once.
fn each_seen(results: &[ProbeResult], eps: &[&Ep]) -> bool {
    eps.iter().all(|e| {
        results.iter().any(|r| {
            r.answer
                .as_ref()
                .is_some_and(|w| w.pod == e.pod && w.port == e.port)
        })
    })
}

/// The first TCP port of `svc` with two or more ready endpoints.
fn tcp_target(ctx: &Ctx<'_>, svc: &Service) -> Option<Target> {
    let cp = ctx.lab.cp();
    targets_of(&cp, svc, ctx.family).into_iter().find(|t| {
        t.protocol == Protocol::Tcp && t.endpoints.iter().filter(|e| e.ready).count() >= 2
    })
}

pub async fn traffic_distribution(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let zones: BTreeMap<String, Option<String>> = ctx
        .lab
        .scenario
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.zone.clone()))
        .collect();
    if zones.values().all(Option::is_none) {
        return Ok(CheckResult::skip(
            name,
            "the scenario's Lab gives no node a zone (spec.zones)",
        ));
    }
    let clients = ctx.clients();
    if clients.is_empty() {
        return Ok(CheckResult::skip(name, "the scenario has no client pods"));
    }
    let svcs: Vec<Service> = ctx
        .lab
        .cp()
        .services()
        .filter(|s| crate::controlplane::store::proxied_labels(s.metadata.labels.as_ref()))
        .filter(|s| distributed(s))
        .cloned()
        .collect();
    // Enough probes that an endpoint outside the hinted ones would show
    // (with 3 endpoints spread evenly, one of them is missed by 30 in
    // about 1 in 50 000), and that a spread over all is seen whole.
    let per_target = ctx.settings.per_target;
    let per = move |eps: usize| per_target.max(10 * eps).min(200);
    let zone_of = |v: &Vantage| {
        v.node
            .as_ref()
            .and_then(|n| zones.get(n).cloned().flatten())
    };

    let mut evidence = Vec::new();
    let mut narrowed_any = false;
    let mut selectors = Vec::new();
    let mut port_names = Vec::new();
    for svc in &svcs {
        let Some(t) = tcp_target(ctx, svc) else {
            continue;
        };
        let td = svc
            .spec
            .as_ref()
            .and_then(|s| s.traffic_distribution.clone())
            .unwrap_or_default();
        selectors.push(svc.spec.as_ref().and_then(|s| s.selector.clone()));
        port_names.push(t.port_name.clone());
        let hints = hints_of(ctx, svc);
        for v in &clients {
            let node = v.node.clone().unwrap_or_default();
            let zone = zone_of(v);
            let (eps, why, narrowed) = expected(&t, &hints, &node, zone.as_deref());
            narrowed_any |= narrowed;
            let n = per(eps.len());
            let r = ctx
                .probe(v, vec![ctx.spec(t.vip_addr(), t.protocol); n])
                .await?;
            // Narrowed: nothing outside the hinted endpoints. Not narrowed:
            // the fallback reaches every ready endpoint, not just some.
            let ok = all_reach(&r, &eps) && (narrowed || each_seen(&r, &eps));
            if !ok {
                ctx.want_trace(v, &t, t.vip_addr());
            }
            let spread = if narrowed { "" } else { ", each at least once" };
            evidence.push(Evidence {
                vantage: format!(
                    "pod {} (node {node}, zone {})",
                    v.name,
                    zone.as_deref().unwrap_or("none")
                ),
                target: format!("{} ({td})", t.label()),
                expected: format!("{why}: {}{spread}", names(&eps)),
                observed: tally(&r),
                ok,
                probes: r.len(),
            });
        }
    }
    if svcs.is_empty() || evidence.is_empty() {
        return Ok(CheckResult::skip(
            name,
            "the scenario has no Service with a trafficDistribution and a TCP port with 2 or more \
             ready endpoints",
        ));
    }
    if !narrowed_any {
        return Ok(CheckResult::skip(
            name,
            "no client's endpoints are narrowed by the hints (are the endpoints in more than one \
             zone, and a client in one of them?)",
        ));
    }
    // The control: a Service over the same pods without a distribution.
    let candidates: Vec<Service> = ctx
        .lab
        .cp()
        .services()
        .filter(|s| crate::controlplane::store::proxied_labels(s.metadata.labels.as_ref()))
        .filter(|s| {
            s.spec.as_ref().is_some_and(|sp| {
                sp.traffic_distribution.is_none()
                    && sp.selector.is_some()
                    && selectors.contains(&sp.selector)
                    && sp.internal_traffic_policy.as_deref() != Some("Local")
                    && sp.session_affinity.as_deref() != Some("ClientIP")
            })
        })
        .cloned()
        .collect();
    // Preferably the same port (by name) as a distributed Service's.
    let found: Vec<Target> = candidates
        .iter()
        .filter_map(|s| tcp_target(ctx, s))
        .collect();
    let control = found
        .iter()
        .find(|t| port_names.contains(&t.port_name))
        .or(found.first())
        .cloned();
    if let Some(t) = control {
        let eps: Vec<&Ep> = t.endpoints.iter().filter(|e| e.ready).collect();
        for v in &clients {
            let n = per(eps.len());
            let r = ctx
                .probe(v, vec![ctx.spec(t.vip_addr(), t.protocol); n])
                .await?;
            let ok = all_reach(&r, &eps) && each_seen(&r, &eps);
            if !ok {
                ctx.want_trace(v, &t, t.vip_addr());
            }
            evidence.push(Evidence {
                vantage: format!(
                    "pod {} (zone {})",
                    v.name,
                    zone_of(v).as_deref().unwrap_or("none")
                ),
                target: format!("{} (no trafficDistribution)", t.label()),
                expected: format!("every endpoint, each at least once: {}", names(&eps)),
                observed: tally(&r),
                ok,
                probes: r.len(),
            });
        }
    }
    let mut result = CheckResult::from_evidence(name, evidence, "");
    if result.verdict == super::Verdict::Fail {
        for why in zoneless_kube_proxies(ctx, &zones) {
            result.summary.push_str(&format!("; {why}"));
        }
    }
    Ok(result)
}

/// What kube-proxy logs when a Service's hints are left unused because it
/// does not know its node's zone.
const NO_ZONE_LOG: &str =
    "Ignoring same-zone topology hints for service since node is missing label";

/// Whether the running kube-proxy (the log's last process: klog's third
/// field is the pid, and an agent restart appends a new process) logged
/// that its node has no zone.
fn says_no_zone(log: &str) -> bool {
    let pid = |l: &str| l.split_whitespace().nth(2).map(str::to_string);
    let Some(now) = log.lines().rev().find_map(pid) else {
        return false;
    };
    log.lines()
        .any(|l| l.contains(NO_ZONE_LOG) && pid(l).as_deref() == Some(&now))
}

/// Why upstream kube-proxy on a node ignored the hints though the lab's
/// Node has a zone: its log says the label is missing. kube-proxy (v1.34
/// on, v1.37 too) builds its NodeTopologyConfig on the node informer that
/// its NodeManager already started and synced, and appends the proxier as
/// a handler only after that: the Node replayed to the new informer handler
/// can be handled before the proxier is in the list. The zone is then
/// recorded, no handler hears of it, and later Node events carry the same
/// zone, so none is passed on until the label changes
/// (cmd/kube-proxy/app/server.go, pkg/proxy/config/config.go). A startup
/// race: the lab met it once, on node-1 of a run of kube-proxy v1.34.4.
fn zoneless_kube_proxies(ctx: &Ctx<'_>, zones: &BTreeMap<String, Option<String>>) -> Vec<String> {
    if !matches!(
        ctx.lab.backend,
        Some(svclab_backends::BackendKind::KubeProxy { .. })
    ) {
        return Vec::new();
    }
    let dir = crate::state::run_dir(&ctx.lab.run);
    zones
        .iter()
        .filter_map(|(node, zone)| -> Option<String> {
            let zone = zone.as_ref()?;
            let log = std::fs::read_to_string(dir.join(format!("kube-proxy-{node}.log"))).ok()?;
            says_no_zone(&log).then(|| {
                format!(
                    "kube-proxy on {node} never learned its zone ({zone}): its log says \"{NO_ZONE_LOG}\", \
                     though the Node carries topology.kubernetes.io/zone; the upstream startup race \
                     in kube-proxy's NodeTopologyConfig (the proxier is registered after the \
                     already-synced node informer may have replayed the Node to it)"
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn only_the_running_kube_proxys_lines_count() {
        let lost = format!(
            "I1207 11:15:07.1    5602 server.go:219] started\nI1207 11:15:07.7    5602 topology.go:208] \"{NO_ZONE_LOG}\" service=\"10.96.0.25:80/TCP\"\n"
        );
        assert!(says_no_zone(&lost));
        // Restarted since, and this process knows its zone.
        let restarted = format!("{lost}I1207 11:16:55.8    6179 server.go:219] started\n");
        assert!(!says_no_zone(&restarted));
        assert!(!says_no_zone(""));
    }

    fn ep(i: u8, node: &str, ready: bool) -> Ep {
        Ep {
            pod: format!("default/web-{i}"),
            ip: Ipv4Addr::new(10, 244, i, 2).into(),
            port: 8080,
            node: node.into(),
            ready,
            serving: ready,
            terminating: false,
        }
    }

    fn target(eps: Vec<Ep>) -> Target {
        Target {
            namespace: "default".into(),
            service: "web".into(),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
            vip: Ipv4Addr::new(10, 96, 0, 10).into(),
            port: 80,
            node_port: None,
            etp_local: false,
            itp_local: false,
            affinity: false,
            health_check_node_port: None,
            endpoints: eps,
        }
    }

    fn hint(i: u8, zones: &[&str], nodes: &[&str]) -> (String, SliceHints) {
        (
            Ipv4Addr::new(10, 244, i, 2).to_string(),
            (
                zones.iter().map(|z| z.to_string()).collect(),
                nodes.iter().map(|n| n.to_string()).collect(),
            ),
        )
    }

    fn pods(v: &[&Ep]) -> Vec<String> {
        v.iter().map(|e| e.pod.clone()).collect()
    }

    #[test]
    fn expectations_follow_the_hints() {
        let t = target(vec![
            ep(0, "node-0", true),
            ep(1, "node-1", true),
            ep(2, "node-2", true),
        ]);
        let zonal: BTreeMap<String, SliceHints> = [
            hint(0, &["a"], &[]),
            hint(1, &["a"], &[]),
            hint(2, &["b"], &[]),
        ]
        .into();
        let (eps, _, narrowed) = expected(&t, &zonal, "node-1", Some("a"));
        assert_eq!(pods(&eps), ["default/web-0", "default/web-1"]);
        assert!(narrowed);
        let (eps, _, narrowed) = expected(&t, &zonal, "node-2", Some("c"));
        assert_eq!(eps.len(), 3, "no endpoint for zone c: all");
        assert!(!narrowed);
        let (eps, _, narrowed) = expected(&t, &zonal, "node-2", None);
        assert!(eps.len() == 3 && !narrowed, "no zone: all");

        // One ready endpoint without a hint: hints are ignored.
        let partial: BTreeMap<String, SliceHints> =
            [hint(0, &["a"], &[]), hint(1, &["a"], &[])].into();
        let (eps, _, narrowed) = expected(&t, &partial, "node-0", Some("a"));
        assert!(eps.len() == 3 && !narrowed);
        // ... unless it is not ready.
        let t2 = target(vec![
            ep(0, "node-0", true),
            ep(1, "node-1", true),
            ep(2, "node-2", false),
        ]);
        let (eps, _, narrowed) = expected(&t2, &partial, "node-0", Some("a"));
        assert!(eps.len() == 2 && narrowed);

        // Node hints first.
        let per_node: BTreeMap<String, SliceHints> = [
            hint(0, &["a"], &["node-0"]),
            hint(1, &["a"], &["node-1"]),
            hint(2, &["b"], &["node-2"]),
        ]
        .into();
        let (eps, _, _) = expected(&t, &per_node, "node-1", Some("a"));
        assert_eq!(pods(&eps), ["default/web-1"]);
        let (eps, _, _) = expected(&t, &per_node, "node-9", Some("b"));
        assert_eq!(
            pods(&eps),
            ["default/web-2"],
            "no endpoint on node-9: its zone"
        );
    }
}
