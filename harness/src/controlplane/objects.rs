//! The objects a real cluster would have besides Services and
//! EndpointSlices, built from the scenario: Nodes (addresses, pod CIDRs),
//! Namespaces, Pods, Deployments and the ServiceCIDR. Proxies read Nodes
//! (kube-proxy: its own, for node IPs and the pod CIDR); people read the
//! rest with kubectl.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Namespace, NamespaceStatus, Node, NodeAddress, NodeCondition,
    NodeSpec, NodeStatus, Pod as KPod, PodCondition, PodIP, PodSpec, PodStatus,
};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec, ServiceCIDRStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};

use svclab_backends::model::IpFamily;

use crate::scenario::{Pod, Scenario};

/// The well-known label naming a Node's zone (kube-proxy reads its own
/// Node's; the EndpointSlice controller copies it into each endpoint).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

fn meta(namespace: Option<&str>, name: &str, rv: u64) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: namespace.map(str::to_string),
        uid: Some(format!(
            "svclab-{}{name}",
            namespace.map_or(String::new(), |n| format!("{n}-"))
        )),
        resource_version: Some(rv.to_string()),
        creation_timestamp: Some(Time(jiff::Timestamp::now())),
        ..Default::default()
    }
}

pub fn nodes(scenario: &Scenario, mut rv: impl FnMut() -> u64) -> Vec<Node> {
    scenario
        .nodes
        .iter()
        .map(|n| {
            let mut m = meta(None, &n.name, rv());
            m.labels = Some(
                [
                    ("kubernetes.io/hostname", n.name.as_str()),
                    ("kubernetes.io/os", "linux"),
                    ("kubernetes.io/arch", std::env::consts::ARCH),
                ]
                .into_iter()
                .chain(n.zone.as_deref().map(|z| (ZONE_LABEL, z)))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            );
            // The cluster's families, primary first, as a dual-stack
            // kubelet and node IPAM set them.
            let fams = &scenario.stack.families;
            let cidrs = per_family(fams, n.pod_cidr, n.pod_cidr6);
            let mut addresses: Vec<NodeAddress> = per_family(fams, n.ip, n.ip6)
                .into_iter()
                .map(|address| NodeAddress {
                    type_: "InternalIP".into(),
                    address,
                })
                .collect();
            addresses.push(NodeAddress {
                type_: "Hostname".into(),
                address: n.name.clone(),
            });
            Node {
                metadata: m,
                spec: Some(NodeSpec {
                    pod_cidr: cidrs.first().cloned(),
                    pod_cidrs: Some(cidrs),
                    ..Default::default()
                }),
                status: Some(NodeStatus {
                    addresses: Some(addresses),
                    conditions: Some(vec![NodeCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        reason: Some("SvclabNodeReady".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            }
        })
        .collect()
}

/// `default`, `kube-system`, and every namespace the scenario uses.
pub fn namespaces(scenario: &Scenario, mut rv: impl FnMut() -> u64) -> Vec<Namespace> {
    let mut names: BTreeSet<String> = ["default", "kube-system"].map(String::from).into();
    names.extend(scenario.pods.iter().map(|p| p.namespace.clone()));
    names.extend(scenario.services.iter().map(|s| {
        s.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    }));
    names
        .into_iter()
        .map(|n| Namespace {
            metadata: meta(None, &n, rv()),
            spec: None,
            status: Some(NamespaceStatus {
                phase: Some("Active".into()),
                ..Default::default()
            }),
        })
        .collect()
}

pub fn service_cidr(scenario: &Scenario, rv: u64) -> ServiceCIDR {
    ServiceCIDR {
        metadata: meta(None, "kubernetes", rv),
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(per_family(
                &scenario.stack.families,
                scenario.lab.service_cidr,
                scenario.stack.v6.as_ref().map(|v| v.service_cidr),
            )),
        }),
        status: Some(ServiceCIDRStatus {
            conditions: Some(vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "".into(),
                message: "".into(),
                last_transition_time: Time(jiff::Timestamp::now()),
                observed_generation: None,
            }]),
        }),
    }
}

/// An object's address (or range) per cluster family, primary first, as
/// the API shows them: the IPv4 one, and the IPv6 one where it has one.
fn per_family(families: &[IpFamily], v4: impl ToString, v6: Option<impl ToString>) -> Vec<String> {
    families
        .iter()
        .filter_map(|f| match f {
            IpFamily::IPv4 => Some(v4.to_string()),
            IpFamily::IPv6 => v6.as_ref().map(ToString::to_string),
        })
        .collect()
}

/// A pod as the API shows it: running on its node, with its IP and
/// readiness; terminating ones carry a deletionTimestamp.
pub fn pod(p: &Pod, node_names: &[String], families: &[IpFamily], rv: u64) -> KPod {
    let mut m = meta(Some(&p.namespace), &p.name, rv);
    m.labels = Some(p.labels.clone());
    if p.terminating {
        m.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
    }
    let ready = if p.ready && !p.terminating {
        "True"
    } else {
        "False"
    };
    let ips = per_family(families, p.ip, p.ip6);
    KPod {
        metadata: m,
        spec: Some(PodSpec {
            node_name: node_names.get(p.node).cloned(),
            containers: vec![Container {
                name: if p.client { "client" } else { "netexec" }.into(),
                image: Some("svclab/netexec".into()),
                ports: Some(
                    p.ports
                        .iter()
                        .map(|pp| ContainerPort {
                            name: pp.name.clone(),
                            container_port: i32::from(pp.port),
                            protocol: Some(pp.protocol.to_string().to_uppercase()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: ips.first().cloned(),
            pod_ips: Some(ips.into_iter().map(|ip| PodIP { ip }).collect()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

/// The Deployment with `replicas` of its pre-created pods active.
pub fn deployment(d: &Deployment, replicas: usize, rv: u64) -> Deployment {
    let mut out = d.clone();
    out.metadata.namespace = Some(
        d.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
    );
    out.metadata.resource_version = Some(rv.to_string());
    out.metadata
        .creation_timestamp
        .get_or_insert_with(|| Time(jiff::Timestamp::now()));
    out.metadata.uid = Some(format!(
        "svclab-{}-{}",
        out.metadata.namespace.as_deref().unwrap_or_default(),
        d.metadata.name.as_deref().unwrap_or_default()
    ));
    out.spec.replicas = Some(replicas as i32);
    out.status = Some(DeploymentStatus {
        replicas: Some(replicas as i32),
        ready_replicas: Some(replicas as i32),
        available_replicas: Some(replicas as i32),
        updated_replicas: Some(replicas as i32),
        ..Default::default()
    });
    out
}
