//! The EndpointSlice controller: pods that match a Service's selector become
//! endpoints, grouped by their resolved port set, at most 100 per slice, with
//! Kubernetes' ready/serving/terminating conditions, their node's zone, and
//! the hints `spec.trafficDistribution` asks for.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use svclab_backends::model::{IpFamily, Protocol};
use svclab_backends::tracker::SERVICE_NAME_LABEL;

use super::store::HEADLESS_LABEL;
use crate::scenario::Pod;

/// Kubernetes' default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";

/// The `spec.trafficDistribution` values the API server accepts (v1.35+:
/// PreferSameZone and PreferSameNode are GA; PreferClose is the older name
/// of PreferSameZone).
pub const TRAFFIC_DISTRIBUTIONS: [&str; 3] = ["PreferClose", "PreferSameZone", "PreferSameNode"];

/// The hints the upstream controller gives an endpoint for a Service's
/// traffic distribution (k8s.io/endpointslice's trafficdist): its zone for
/// PreferClose and PreferSameZone, its node and its zone for PreferSameNode
/// (the zone for proxies that know no node hints). An endpoint with no zone
/// gets no zone hint, so a proxy sees a slice where not every endpoint is
/// hinted and ignores the hints. No distribution, no hints.
fn hints_for(
    distribution: Option<&str>,
    node: Option<&str>,
    zone: Option<&str>,
) -> Option<EndpointHints> {
    let zone = zone.filter(|z| !z.is_empty());
    let node = node.filter(|n| !n.is_empty());
    let for_zones = zone.map(|z| {
        vec![ForZone {
            name: z.to_string(),
        }]
    });
    let hints = match distribution? {
        "PreferClose" | "PreferSameZone" => EndpointHints {
            for_zones,
            for_nodes: None,
        },
        "PreferSameNode" => EndpointHints {
            for_zones,
            for_nodes: node.map(|n| {
                vec![ForNode {
                    name: n.to_string(),
                }]
            }),
        },
        _ => return None,
    };
    (hints.for_zones.is_some() || hints.for_nodes.is_some()).then_some(hints)
}

/// A pod's port for one service port: numeric targetPort as is, a named one
/// looked up among the pod's containerPorts of the same protocol.
fn resolve_port(
    target: Option<&IntOrString>,
    svc_port: i32,
    protocol: Protocol,
    pod: &Pod,
) -> Option<i32> {
    match target {
        None => Some(svc_port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => pod
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == protocol)
            .map(|p| i32::from(p.port)),
    }
}

fn matches(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
}

/// The slices a Service should have now, given the pods. Deterministic:
/// slices are named `<service>-<n>`, endpoints sorted by address.
/// `node_names` maps a pod's node index to its name, `node_zones` to its
/// zone (the Node's `topology.kubernetes.io/zone`), if any.
pub fn slices_for(
    svc: &Service,
    pods: &[Pod],
    node_names: &[String],
    node_zones: &[Option<String>],
) -> Vec<EndpointSlice> {
    let ns = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    // The controller leaves ExternalName Services alone, selector or not.
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let Some(selector) = &spec.selector else {
        // No selector: endpoints are managed by hand; none here.
        return Vec::new();
    };
    let selector: BTreeMap<String, String> = selector.clone().into_iter().collect();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let distribution = spec.traffic_distribution.as_deref();

    // Group endpoints by their resolved port list, as the controller does.
    let mut groups: BTreeMap<Vec<(String, i32, Protocol)>, Vec<&Pod>> = BTreeMap::new();
    for pod in pods
        .iter()
        .filter(|p| p.active && !p.client && p.namespace == ns && matches(&selector, p))
    {
        let mut ports = Vec::new();
        for sp in spec.ports.iter().flatten() {
            let protocol = Protocol::parse_k8s(sp.protocol.as_deref()).unwrap_or(Protocol::Tcp);
            if let Some(port) = resolve_port(sp.target_port.as_ref(), sp.port, protocol, pod) {
                ports.push((sp.name.clone().unwrap_or_default(), port, protocol));
            }
        }
        groups.entry(ports).or_default().push(pod);
    }

    // One address type per family of the Service (its `ipFamilies`, which
    // the API server always sets): IPv4 slices, then IPv6 ones.
    let families: Vec<IpFamily> = match spec.ip_families.as_deref() {
        Some(f) if !f.is_empty() => f.iter().filter_map(|f| IpFamily::parse_k8s(f)).collect(),
        _ => vec![IpFamily::IPv4],
    };
    let mut out = Vec::new();
    let mut v6_out = Vec::new();
    for family in IpFamily::ALL.into_iter().filter(|f| families.contains(f)) {
        let addr = |p: &Pod| -> Option<std::net::IpAddr> {
            match family {
                IpFamily::IPv4 => Some(p.ip.into()),
                IpFamily::IPv6 => p.ip6.map(Into::into),
            }
        };
        for (ports, members) in &groups {
            let mut members: Vec<(&Pod, std::net::IpAddr)> = members
                .iter()
                .filter_map(|p| Some((*p, addr(p)?)))
                .collect();
            members.sort_by_key(|(_, a)| *a);
            for chunk in members.chunks(MAX_ENDPOINTS_PER_SLICE) {
                let endpoints = chunk
                    .iter()
                    .map(|(pod, ip)| {
                        // A terminating pod is never ready; serving keeps its
                        // readiness so traffic can fall back to it. With
                        // publishNotReadyAddresses every endpoint is ready,
                        // while serving still tells the pod's own readiness
                        // (the upstream controller's podToEndpoint).
                        let ready = publish_not_ready || (pod.ready && !pod.terminating);
                        let node_name = node_names.get(pod.node).cloned();
                        let zone = node_zones.get(pod.node).cloned().flatten();
                        Endpoint {
                            hints: hints_for(distribution, node_name.as_deref(), zone.as_deref()),
                            zone,
                            addresses: vec![ip.to_string()],
                            conditions: Some(EndpointConditions {
                                ready: Some(ready),
                                serving: Some(pod.ready),
                                terminating: Some(pod.terminating),
                            }),
                            node_name,
                            target_ref: Some(ObjectReference {
                                kind: Some("Pod".into()),
                                namespace: Some(pod.namespace.clone()),
                                name: Some(pod.name.clone()),
                                ..ObjectReference::default()
                            }),
                            ..Endpoint::default()
                        }
                    })
                    .collect();
                let target = if family == IpFamily::IPv4 {
                    &mut out
                } else {
                    &mut v6_out
                };
                target.push(EndpointSlice {
                    address_type: family.as_k8s().into(),
                    endpoints: Some(endpoints),
                    metadata: ObjectMeta::default(),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p, proto)| EndpointPort {
                                name: Some(n.clone()),
                                port: Some(*p),
                                protocol: Some(proto.as_k8s().into()),
                                app_protocol: None,
                            })
                            .collect(),
                    ),
                });
            }
        }
    }
    // IPv4 slices keep the names they always had; IPv6 ones say so.
    let v4 = out.len();
    out.append(&mut v6_out);
    for (i, slice) in out.iter_mut().enumerate() {
        let slice_name = if i < v4 {
            format!("{name}-{i}")
        } else {
            format!("{name}-ipv6-{}", i - v4)
        };
        slice.metadata = ObjectMeta {
            name: Some(slice_name),
            namespace: Some(ns.clone()),
            labels: Some(slice_labels(svc, &name)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Service".into(),
                name: name.clone(),
                uid: svc.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        };
    }
    out
}

/// The upstream controller's slice labels: the Service's own (but the
/// two it reserves), its name and manager, and the headless label exactly
/// when the Service has no ClusterIP (kube-proxy's EndpointSlice informer
/// leaves those out).
fn slice_labels(svc: &Service, name: &str) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = svc
        .metadata
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| k != SERVICE_NAME_LABEL && k != MANAGED_BY_LABEL)
        .collect();
    let headless = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_none_or(|ip| ip.is_empty() || ip == "None");
    if headless {
        labels.insert(HEADLESS_LABEL.to_string(), String::new());
    } else {
        labels.remove(HEADLESS_LABEL);
    }
    labels.insert(SERVICE_NAME_LABEL.to_string(), name.to_string());
    labels.insert(MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string());
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::PodPort;
    use std::net::Ipv4Addr;

    fn pod(i: u32, ready: bool, terminating: bool) -> Pod {
        Pod {
            name: format!("web-{i}"),
            namespace: "default".into(),
            labels: [("app".to_string(), "web".to_string())]
                .into_iter()
                .collect(),
            node: (i % 2) as usize,
            ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 10)) + i),
            ip6: None,
            ports: vec![
                PodPort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                PodPort {
                    name: Some("dns".into()),
                    port: 5353,
                    protocol: Protocol::Udp,
                },
            ],
            ready,
            terminating,
            active: true,
            deployment: Some("web".into()),
            client: false,
        }
    }

    fn service(ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
            "spec": {"selector": {"app": "web"}, "ports": ports}
        }))
        .unwrap()
    }

    fn nodes() -> Vec<String> {
        vec!["node-0".into(), "node-1".into()]
    }

    #[test]
    fn slices_split_at_100() {
        let pods: Vec<Pod> = (0..250).map(|i| pod(i, true, false)).collect();
        let slices = slices_for(
            &service(serde_json::json!([{"port": 80, "targetPort": 8080}])),
            &pods,
            &nodes(),
            &[],
        );
        let sizes: Vec<usize> = slices
            .iter()
            .map(|s| s.endpoints.as_ref().unwrap().len())
            .collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        assert_eq!(slices[2].metadata.name.as_deref(), Some("web-2"));
        let labels = slices[0].metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
    }

    #[test]
    fn named_ports_resolve_per_protocol() {
        let pods = vec![pod(0, true, false)];
        let slices = slices_for(
            &service(serde_json::json!([
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"},
            ])),
            &pods,
            &nodes(),
            &[],
        );
        let ports: Vec<(Option<String>, Option<i32>, Option<String>)> = slices[0]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone(), p.port, p.protocol.clone()))
            .collect();
        assert_eq!(
            ports,
            vec![
                (Some("http".into()), Some(8080), Some("TCP".into())),
                (Some("dns".into()), Some(5353), Some("UDP".into())),
            ]
        );
    }

    #[test]
    fn pods_without_the_named_port_land_in_another_slice() {
        let mut other = pod(1, true, false);
        other.ports.retain(|p| p.name.as_deref() != Some("http"));
        let pods = vec![pod(0, true, false), other];
        let slices = slices_for(
            &service(serde_json::json!([{"name": "http", "port": 80, "targetPort": "http"}])),
            &pods,
            &nodes(),
            &[],
        );
        assert_eq!(slices.len(), 2);
        assert!(slices.iter().any(|s| s.ports.as_ref().unwrap().is_empty()));
    }

    #[test]
    fn conditions_table() {
        // (ready, terminating) -> (ready, serving, terminating)
        let cases = [
            ((true, false), (true, true, false)),
            ((false, false), (false, false, false)),
            ((true, true), (false, true, true)),
            ((false, true), (false, false, true)),
        ];
        for ((ready, term), want) in cases {
            let slices = slices_for(
                &service(serde_json::json!([{"port": 80}])),
                &[pod(0, ready, term)],
                &nodes(),
                &[],
            );
            let ep = &slices[0].endpoints.as_ref().unwrap()[0];
            let c = ep.conditions.as_ref().unwrap();
            assert_eq!(
                (c.ready, c.serving, c.terminating),
                (Some(want.0), Some(want.1), Some(want.2))
            );
            assert_eq!(ep.node_name.as_deref(), Some("node-0"));
        }
    }

    #[test]
    fn no_selector_no_slices_and_inactive_pods_excluded() {
        let mut svc = service(serde_json::json!([{"port": 80}]));
        let mut inactive = pod(1, true, false);
        inactive.active = false;
        let pods = vec![pod(0, true, false), inactive];
        assert_eq!(
            slices_for(&svc, &pods, &nodes(), &[])[0]
                .endpoints
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        svc.spec.as_mut().unwrap().selector = None;
        assert!(slices_for(&svc, &pods, &nodes(), &[]).is_empty());
    }

    /// Hints per traffic distribution: (distribution, node-0's zone) ->
    /// (zone, forZones, forNodes) of node-0's endpoint.
    #[test]
    fn hints_follow_traffic_distribution() {
        type Want = (
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let cases: [(Option<&str>, Option<&str>, Want); 7] = [
            (None, Some("a"), (Some("a"), None, None)),
            (Some("PreferClose"), Some("a"), (Some("a"), Some("a"), None)),
            (
                Some("PreferSameZone"),
                Some("a"),
                (Some("a"), Some("a"), None),
            ),
            (
                Some("PreferSameNode"),
                Some("a"),
                (Some("a"), Some("a"), Some("node-0")),
            ),
            (Some("PreferClose"), None, (None, None, None)),
            (Some("PreferSameNode"), None, (None, None, Some("node-0"))),
            (Some("PreferClose"), Some(""), (None, None, None)),
        ];
        for (td, zone, want) in cases {
            let mut svc = service(serde_json::json!([{"port": 80}]));
            svc.spec.as_mut().unwrap().traffic_distribution = td.map(str::to_string);
            let zones = [zone.map(str::to_string), Some("b".to_string())];
            let slices = slices_for(
                &svc,
                &[pod(0, true, false), pod(1, true, false)],
                &nodes(),
                &zones,
            );
            let eps = slices[0].endpoints.as_ref().unwrap();
            let ep = &eps[0];
            let hints = ep.hints.as_ref();
            let got = (
                ep.zone.as_deref().filter(|z| !z.is_empty()),
                hints
                    .and_then(|h| h.for_zones.as_ref())
                    .map(|z| z[0].name.as_str()),
                hints
                    .and_then(|h| h.for_nodes.as_ref())
                    .map(|n| n[0].name.as_str()),
            );
            assert_eq!(got, want, "{td:?} zone {zone:?}");
            // node-1's endpoint is in zone b.
            assert_eq!(eps[1].zone.as_deref(), Some("b"));
            if matches!(td, Some("PreferClose" | "PreferSameZone")) {
                let h = eps[1].hints.as_ref().unwrap().for_zones.as_ref().unwrap();
                assert_eq!(h[0].name, "b");
            }
        }
    }
}
