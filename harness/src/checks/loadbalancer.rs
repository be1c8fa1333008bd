//! LoadBalancer Services (issue 17): the lab's cloud controller gives each
//! an ingress address from `spec.loadBalancerPool`, and the external
//! clients route the pool to the first node, as a load balancer in front of
//! the cluster forwards to some node. `loadbalancer-ingress` checks that a
//! VIP-mode address reaches the endpoints and nothing else, that
//! `allocateLoadBalancerNodePorts: false` leaves the Service without node
//! ports, and that a Proxy-mode address is left alone (kube-proxy programs
//! only VIP-mode addresses: pkg/proxy/serviceport.go). `loadbalancer-source-
//! ranges` checks who gets through `spec.loadBalancerSourceRanges`: the
//! source the node sees must be in a range, from outside, from pods and from
//! nodes alike (kube-proxy's firewall chain; #119656 made IPVS drop node
//! traffic the same way), and anyone else is dropped without an answer.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use svclab_backends::Feature;
use svclab_backends::model::IpFamily;

use super::expect::{Ep, Target};
use super::{CheckResult, Ctx, Evidence, Vantage, all_reach, names, none_answered, tally};
use crate::probe::{Outcome, ProbeResult};

/// A Service's load balancer ingress addresses of `family` with their
/// ipMode (`VIP` when unset, as the API defines).
fn ingress(svc: &Service, family: IpFamily) -> Vec<(IpAddr, String)> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let ip: IpAddr = i.ip.as_deref()?.parse().ok()?;
            (IpFamily::of(&ip) == family).then_some(())?;
            Some((ip, i.ip_mode.clone().unwrap_or_else(|| "VIP".into())))
        })
        .collect()
}

/// Why a load balancer check has nothing to probe in `family`.
fn no_ingress(family: IpFamily, which: &str) -> String {
    match family {
        IpFamily::IPv4 => format!(
            "no LoadBalancer Service {which} has an ingress address (the Lab needs \
             spec.loadBalancerPool and a type: LoadBalancer Service)"
        ),
        IpFamily::IPv6 => format!(
            "no LoadBalancer Service {which} has an IPv6 ingress address (the Lab needs \
             spec.loadBalancerPoolIPv6 and a type: LoadBalancer Service whose ipFamilies list \
             IPv6)"
        ),
    }
}

fn is_lb(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// The Service's source ranges of `family`: the proxier of a family reads
/// only its own (with none of it left, no firewall).
fn source_ranges(svc: &Service, family: IpFamily) -> Vec<IpNet> {
    let ranges: Vec<IpNet> = svc
        .spec
        .as_ref()
        .and_then(|s| s.load_balancer_source_ranges.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|r| r.trim().parse::<IpNet>().ok())
        .filter(|n| IpFamily::of(&n.addr()) == family)
        .map(|n| n.trunc())
        .collect();
    // A zero-length range lets everyone in, as no ranges do.
    if ranges.iter().any(|n| n.prefix_len() == 0) {
        Vec::new()
    } else {
        ranges
    }
}

/// The LoadBalancer Services of the scenario with their targets.
fn lb_services(ctx: &Ctx<'_>) -> Vec<(Service, Vec<Target>)> {
    let cp = ctx.lab.cp();
    cp.services()
        .filter(|s| is_lb(s))
        .map(|s| (s.clone(), super::expect::targets_of(&cp, s, ctx.family)))
        .collect()
}

/// Where traffic from outside lands: the pool is routed to the first node.
fn entry_node(ctx: &Ctx<'_>) -> Option<String> {
    ctx.lab.topology.nodes.first().map(|n| n.name.clone())
}

/// Pods and (when the backend handles the node's own traffic) nodes.
fn inside_vantages(ctx: &Ctx<'_>) -> Vec<Vantage> {
    let mut v = ctx.clients();
    if !ctx.limits.contains_key(&Feature::NodeOrigin) {
        v.extend(ctx.nodes());
    }
    v
}

/// Endpoints a probe from `v` may reach on a load balancer address: from
/// outside, those for external traffic on the node the pool is routed to;
/// from pods and nodes, any (kube-proxy short-circuits their external
/// traffic to the cluster endpoints).
fn expected<'t>(t: &'t Target, v: &Vantage, entry: &str) -> Vec<&'t Ep> {
    if v.kind == "external" {
        t.external(entry)
    } else {
        t.cluster()
    }
}

fn all_timed_out(r: &[ProbeResult]) -> bool {
    !r.is_empty() && r.iter().all(|p| p.outcome == Outcome::Timeout)
}

/// A VIP-mode ingress address reaches the endpoints from outside, from pods
/// and from nodes; a port the Service does not have on that address is not
/// answered; `allocateLoadBalancerNodePorts: false` leaves the API object
/// without node ports; a Proxy-mode address is not forwarded by the nodes
/// (its Service's ClusterIP still is).
pub async fn loadbalancer_ingress(ctx: &mut Ctx<'_>, name: &str) -> anyhow::Result<CheckResult> {
    let Some(entry) = entry_node(ctx) else {
        return Ok(CheckResult::skip(name, "the lab has no node"));
    };
    let Some(ext) = ctx.external() else {
        return Ok(CheckResult::skip(
            name,
            "the lab has no external client (spec.external: false)",
        ));
    };
    // Services with source ranges are loadbalancer-source-ranges' to probe.
    let found: Vec<(Service, Vec<Target>)> = lb_services(ctx)
        .into_iter()
        .filter(|(s, _)| source_ranges(s, ctx.family).is_empty())
        .collect();
    if !found
        .iter()
        .any(|(s, _)| !ingress(s, ctx.family).is_empty())
    {
        return Ok(CheckResult::skip(
            name,
            no_ingress(ctx.family, "without source ranges"),
        ));
    }
    let mut vantages = vec![ext.clone()];
    vantages.extend(inside_vantages(ctx));
    let mut evidence = Vec::new();
    for (svc, targets) in &found {
        let svc_name = svc.metadata.name.clone().unwrap_or_default();
        let ingress = ingress(svc, ctx.family);
        let no_node_ports = svc
            .spec
            .as_ref()
            .is_some_and(|s| s.allocate_load_balancer_node_ports == Some(false));
        if no_node_ports {
            let ports: Vec<String> = svc
                .spec
                .as_ref()
                .and_then(|s| s.ports.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|p| p.node_port.map(|n| format!("{}:{n}", p.port)))
                .collect();
            evidence.push(Evidence {
                vantage: "API server".into(),
                target: format!("Service {svc_name} (allocateLoadBalancerNodePorts: false)"),
                expected: "no nodePort on any port".into(),
                observed: if ports.is_empty() {
                    "no nodePort".into()
                } else {
                    format!("nodePort {}", ports.join(", "))
                },
                ok: ports.is_empty(),
                probes: 0,
            });
        }
        for (ip, mode) in &ingress {
            for t in targets.iter().filter(|t| t.has_any()) {
                let addr = SocketAddr::new(*ip, t.port);
                if mode == "VIP" {
                    for v in &vantages {
                        // The node's own traffic to an externalTrafficPolicy
                        // Local address is left out, as the NodePort checks
                        // leave it out: in IPVS mode the VIP is bound on the
                        // node, the connection leaves from it unmasqueraded,
                        // and a remote endpoint answers the VIP on its own
                        // node (svclab's ipvs times out from node-1 and
                        // node-2 here).
                        if t.etp_local && v.kind == "node" {
                            continue;
                        }
                        let want = expected(t, v, &entry);
                        if want.is_empty() {
                            continue;
                        }
                        let r = ctx
                            .probe(v, vec![ctx.spec(addr, t.protocol); ctx.settings.per_target])
                            .await?;
                        let ok = all_reach(&r, &want);
                        if !ok {
                            ctx.want_trace(v, t, addr);
                        }
                        evidence.push(Evidence {
                            vantage: ctx.vantage_label(v, t),
                            target: format!("{} load balancer IP {addr}/{}", t.label(), t.protocol),
                            expected: format!("a ready endpoint: {}", names(&want)),
                            observed: tally(&r),
                            ok,
                            probes: r.len(),
                        });
                    }
                } else {
                    // kube-proxy leaves a Proxy-mode address to the load
                    // balancer: no node DNATs it, so with no proxy in front
                    // of the lab nothing answers, from outside or inside.
                    for v in [Some(ext.clone()), ctx.clients().into_iter().next()]
                        .into_iter()
                        .flatten()
                    {
                        let r = ctx.probe(&v, vec![ctx.spec(addr, t.protocol); 3]).await?;
                        let ok = none_answered(&r);
                        if !ok {
                            ctx.want_trace(&v, t, addr);
                        }
                        evidence.push(Evidence {
                            vantage: ctx.vantage_label(&v, t),
                            target: format!(
                                "{} load balancer IP {addr}/{} (ipMode {mode})",
                                t.label(),
                                t.protocol
                            ),
                            expected: "not forwarded by the node: no answer".into(),
                            observed: tally(&r),
                            ok,
                            probes: r.len(),
                        });
                    }
                    // The Service itself is programmed: its ClusterIP works.
                    if let Some(v) = ctx.clients().into_iter().next() {
                        let want = t.cluster();
                        let r = ctx.probe_vip(&v, t).await?;
                        let ok = all_reach(&r, &want);
                        evidence.push(Evidence {
                            vantage: ctx.vantage_label(&v, t),
                            target: format!("{} cluster IP {}", t.label(), t.vip_addr()),
                            expected: format!("a ready endpoint: {}", names(&want)),
                            observed: tally(&r),
                            ok,
                            probes: r.len(),
                        });
                    }
                }
            }
            // A port no Service port declares on this address, though the
            // endpoints listen on it: not forwarded.
            if mode == "VIP"
                && let Some(t) = targets.iter().find(|t| t.has_any())
            {
                let declared: Vec<u16> = targets.iter().map(|t| t.port).collect();
                let Some(other) = t
                    .cluster()
                    .iter()
                    .map(|e| e.port)
                    .chain([65000])
                    .find(|p| !declared.contains(p))
                else {
                    continue;
                };
                let addr = SocketAddr::new(*ip, other);
                let r = ctx.probe(&ext, vec![ctx.spec(addr, t.protocol); 3]).await?;
                evidence.push(Evidence {
                    vantage: ctx.vantage_label(&ext, t),
                    target: format!("{addr}/{} (not a port of {svc_name})", t.protocol),
                    expected: "not forwarded: no answer".into(),
                    observed: tally(&r),
                    ok: none_answered(&r),
                    probes: r.len(),
                });
            }
        }
    }
    Ok(CheckResult::from_evidence(
        name,
        evidence,
        "no LoadBalancer Service with an ingress address has endpoints",
    ))
}

/// `spec.loadBalancerSourceRanges`: a client whose address (as the node
/// sees it: no SNAT happens before the firewall) is in a range reaches the
/// endpoints through the load balancer IP; any other is dropped. From
/// outside and from pods a drop is a timeout; from a node the drop is in its
/// own output path, which may fail the connect at once instead, so there it
/// is "no answer".
pub async fn loadbalancer_source_ranges(
    ctx: &mut Ctx<'_>,
    name: &str,
) -> anyhow::Result<CheckResult> {
    let Some(entry) = entry_node(ctx) else {
        return Ok(CheckResult::skip(name, "the lab has no node"));
    };
    let family = ctx.family;
    let found: Vec<(Service, Vec<Target>, Vec<IpNet>)> = lb_services(ctx)
        .into_iter()
        .map(|(s, t)| {
            let r = source_ranges(&s, family);
            (s, t, r)
        })
        .filter(|(s, _, r)| !r.is_empty() && ingress(s, family).iter().any(|(_, m)| m == "VIP"))
        .collect();
    if found.is_empty() {
        return Ok(CheckResult::skip(
            name,
            no_ingress(family, "with spec.loadBalancerSourceRanges"),
        ));
    }
    let mut vantages: Vec<Vantage> = ctx.external().into_iter().collect();
    vantages.extend(ctx.external2());
    vantages.extend(inside_vantages(ctx));
    // Every (target, vantage) planned first and probed at once: the
    // outside vantages' probes are meant to time out, and one after
    // another they cost a probe timeout each.
    let mut plans = Vec::new();
    for (svc, targets, ranges) in &found {
        for (ip, mode) in ingress(svc, family) {
            if mode != "VIP" {
                continue;
            }
            for t in targets.iter().filter(|t| t.has_any()) {
                let addr = SocketAddr::new(ip, t.port);
                for v in &vantages {
                    let allowed = ranges.iter().any(|n| n.contains(&v.ip));
                    let want = expected(t, v, &entry);
                    if allowed && want.is_empty() {
                        continue;
                    }
                    plans.push((ranges, t, v, addr, allowed, want));
                }
            }
        }
    }
    let batches = plans
        .iter()
        .map(|(_, t, v, addr, allowed, _)| {
            let n = if *allowed { ctx.settings.per_target } else { 3 };
            (*v, vec![ctx.spec(*addr, t.protocol); n])
        })
        .collect();
    let results = ctx.probe_all(batches).await?;
    let mut evidence = Vec::new();
    for ((ranges, t, v, addr, allowed, want), r) in plans.into_iter().zip(results) {
        let shown: Vec<String> = ranges.iter().map(ToString::to_string).collect();
        let shown = shown.join(", ");
        let (ok, expect) = if allowed {
            (
                all_reach(&r, &want),
                format!(
                    "{} is in [{shown}]: a ready endpoint: {}",
                    v.ip,
                    names(&want)
                ),
            )
        } else if v.kind == "node" {
            (
                none_answered(&r),
                format!("{} is outside [{shown}]: dropped, no answer", v.ip),
            )
        } else {
            (
                all_timed_out(&r),
                format!("{} is outside [{shown}]: dropped (timeout)", v.ip),
            )
        };
        if !ok {
            ctx.want_trace(v, t, addr);
        }
        evidence.push(Evidence {
            vantage: ctx.vantage_label(v, t),
            target: format!("{} load balancer IP {addr}/{}", t.label(), t.protocol),
            expected: expect,
            observed: tally(&r),
            ok,
            probes: r.len(),
        });
    }
    let allowed = evidence
        .iter()
        .filter(|e| e.expected.contains(" is in "))
        .count();
    if allowed == 0 || allowed == evidence.len() {
        // Without both kinds of client the check proves nothing.
        return Ok(CheckResult::skip(
            name,
            "the source ranges hold every client or none: the check needs one inside and one \
             outside (external-2 needs spec.external and spec.loadBalancerPool)",
        ));
    }
    Ok(CheckResult::from_evidence(name, evidence, ""))
}
