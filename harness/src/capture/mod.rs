//! `svclab capture`: a live cluster's Services and EndpointSlices as a
//! scenario that reproduces them in the lab.
//!
//! [`convert`] is pure (objects in, scenario YAML out) and checks its own
//! output with [`Scenario::parse`]; [`client`] lists the objects with
//! `kube`. The scenario keeps the Service specs (ClusterIPs, ports,
//! targetPorts, types, node ports, traffic policies, affinity, selectors)
//! and turns the endpoints into Deployments: one per namespace, node,
//! label set and port set, pinned to the endpoints' node, whose pods have
//! the container ports the targetPorts resolved to, and whose not-ready or
//! terminating pods are listed in the Lab's `spec.pods`. Pod addresses are
//! the lab's own; what cannot be reproduced is said in the file's header.

pub mod cli;
pub mod client;
mod emit;
mod names;
mod plan;
mod pods;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use crate::scenario::{LAB_API_VERSION, Scenario, ScenarioErrors};
use names::{Names, dns_label, suffixed};
use pods::{PodRecord, ServiceView};

/// The label that selects the endpoints of a Service that has no selector
/// (its endpoints were managed by hand, or by another controller).
pub const ENDPOINTS_OF_LABEL: &str = "svclab.dev/endpoints-of";

/// The lab takes at most this many nodes.
const MAX_NODES: usize = 250;

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Rewrite namespaces, Services, nodes and labels to neutral names.
    pub anonymize: bool,
    /// Where the objects came from, for the file's header.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("listing {what} from {server}: {source}")]
    List {
        what: &'static str,
        server: String,
        #[source]
        source: kube::Error,
    },
    #[error("the cluster has more than {limit} {what}; capture one namespace (--namespace)")]
    TooMany { what: &'static str, limit: usize },
    #[error("the captured cluster has {0} nodes with endpoints; the lab holds at most {MAX_NODES}")]
    TooManyNodes(usize),
    #[error("no address plan fits the captured cluster: {0}")]
    Plan(String),
    #[error("the captured scenario does not load:\n{0}")]
    Invalid(ScenarioErrors),
}

/// A captured scenario and what went into it.
#[derive(Clone, Debug)]
pub struct Captured {
    pub yaml: String,
    /// What was skipped or changed, and why (also in the YAML header).
    pub notes: Vec<String>,
    pub services: usize,
    pub deployments: usize,
    pub pods: usize,
    pub nodes: usize,
}

/// A Service that goes into the scenario.
struct Kept<'a> {
    namespace: &'a str,
    name: &'a str,
    spec: ServiceSpec,
    svc: &'a Service,
}

/// One Deployment to write: pods alike in namespace, node, labels, ports.
#[derive(Default)]
struct Group<'a> {
    base: String,
    members: Vec<&'a PodRecord>,
}

type GroupKey = (
    String,
    Option<usize>,
    BTreeMap<String, String>,
    Vec<pods::ContainerPort>,
);

fn ns_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

/// Converts listed objects into scenario YAML that [`Scenario::parse`]
/// loads and whose control plane serves equivalent Services and slices.
pub fn convert(
    services: &[Service],
    slices: &[EndpointSlice],
    opts: &Options,
) -> Result<Captured, CaptureError> {
    let mut notes = Vec::new();
    let mut names = Names::new(opts.anonymize);
    let in_scope = |ns: &str| opts.namespace.as_deref().is_none_or(|n| n == ns);

    let mut sorted: Vec<&Service> = services
        .iter()
        .filter(|s| in_scope(ns_of(&s.metadata)))
        .collect();
    sorted.sort_by_key(|s| (ns_of(&s.metadata), s.metadata.name.as_deref().unwrap_or("")));
    let mut skipped = Vec::new();
    let mut kept: Vec<Kept<'_>> = Vec::new();
    for svc in sorted {
        match keep(svc) {
            Ok(k) => kept.push(k),
            Err(why) => skipped.push((svc, why)),
        }
    }
    let slices: Vec<EndpointSlice> = slices
        .iter()
        .filter(|s| in_scope(ns_of(&s.metadata)))
        .cloned()
        .collect();

    let views: Vec<ServiceView<'_>> = kept
        .iter()
        .map(|k| ServiceView {
            namespace: k.namespace,
            name: k.name,
            ports: k.spec.ports.as_deref().unwrap_or(&[]),
            publish_not_ready: k.spec.publish_not_ready_addresses.unwrap_or(false),
        })
        .collect();
    let mut pod_notes = Vec::new();
    let pods = pods::collect(&views, &slices, &mut pod_notes);

    // Output names, in a fixed order so anonymized names are stable.
    let mut out_ns = Vec::new();
    let mut out_name = Vec::new();
    let mut selectors: Vec<BTreeMap<String, String>> = Vec::new();
    for (i, k) in kept.iter().enumerate() {
        out_ns.push(names.namespace(k.namespace));
        out_name.push(names.service(k.namespace, k.name));
        let real = k.spec.selector.clone().unwrap_or_default();
        let has_endpoints = pods.values().any(|p| p.services.contains(&i));
        if real.is_empty() && has_endpoints {
            notes.push(format!(
                "Service {}/{}: has no selector (its endpoints are managed outside the endpoint \
                 controller); the lab selects them with {ENDPOINTS_OF_LABEL}={}",
                out_ns[i], out_name[i], out_name[i]
            ));
            selectors.push(BTreeMap::from([(
                ENDPOINTS_OF_LABEL.to_string(),
                out_name[i].clone(),
            )]));
        } else {
            selectors.push(names.labels(&real));
        }
    }
    for (svc, why) in skipped {
        let ns = ns_of(&svc.metadata);
        let name = svc.metadata.name.as_deref().unwrap_or("");
        notes.push(format!(
            "Service {}/{}: skipped: {why}",
            names.namespace(ns),
            names.service(ns, name)
        ));
    }
    for n in pod_notes {
        notes.push(word(&n, &out_ns, &out_name, &mut names));
    }
    let real_nodes: BTreeSet<&str> = pods.values().filter_map(|p| p.node.as_deref()).collect();
    if real_nodes.len() > MAX_NODES {
        return Err(CaptureError::TooManyNodes(real_nodes.len()));
    }
    let node_names: Vec<String> = real_nodes.iter().map(|n| names.node(n)).collect();
    let node_index: BTreeMap<&str, usize> = real_nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, i))
        .collect();

    let mut groups: BTreeMap<GroupKey, Group<'_>> = BTreeMap::new();
    for ((_, _), pod) in &pods {
        let first = *pod.services.first().expect("a pod backs a Service");
        let mut labels = BTreeMap::new();
        for &si in &pod.services {
            for (k, v) in &selectors[si] {
                match labels.get(k) {
                    Some(old) if old != v => notes.push(format!(
                        "{}: Services select it with {k}={old} and {k}={v}; the lab gives it \
                         {k}={old}",
                        pod_label(&out_ns[first], &pod.name, opts.anonymize)
                    )),
                    Some(_) => {}
                    None => {
                        labels.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        let ports = pod
            .ports
            .iter()
            .map(|(&(port, protocol), name)| pods::ContainerPort {
                port,
                protocol,
                name: name.clone(),
            })
            .collect();
        let node = pod.node.as_deref().and_then(|n| node_index.get(n).copied());
        let key = (out_ns[first].clone(), node, labels, ports);
        let group = groups.entry(key).or_default();
        if group.base.is_empty() {
            group.base = match pods::owner_name(&pod.name) {
                Some(owner) if !opts.anonymize => dns_label(owner, "pods"),
                _ => out_name[first].clone(),
            };
        }
        group.members.push(pod);
    }
    // A Service whose selector matches no captured pod still needs a
    // Deployment for the scenario to load; it has no replicas.
    for (i, sel) in selectors.iter().enumerate() {
        let covered = groups.keys().any(|(ns, _, labels, _)| {
            *ns == out_ns[i] && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
        });
        if !sel.is_empty() && !covered {
            groups
                .entry((out_ns[i].clone(), None, sel.clone(), Vec::new()))
                .or_insert_with(|| Group {
                    base: out_name[i].clone(),
                    members: Vec::new(),
                });
        }
    }

    let node_count = node_names.len().max(1);
    let mut per_node = vec![0usize; node_count];
    let mut deployments = Vec::new();
    let mut pod_states = Vec::new();
    let mut taken: BTreeSet<(String, String)> = BTreeSet::new();
    let mut ordered: Vec<(&GroupKey, &Group<'_>)> = groups.iter().collect();
    ordered.sort_by(|a, b| (&a.0.0, &a.1.base, a.0.1).cmp(&(&b.0.0, &b.1.base, b.0.1)));
    for ((ns, node, labels, ports), group) in ordered {
        let mut members = group.members.clone();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let first = match node {
            Some(i) => suffixed(&group.base, &format!("n{i}")),
            None => group.base.clone(),
        };
        let name = unique_name(&first, ns, members.len(), &mut taken);
        match node {
            Some(i) => per_node[*i] += members.len(),
            None => {
                for n in per_node.iter_mut() {
                    *n += members.len().div_ceil(node_count);
                }
            }
        }
        for (ordinal, pod) in members.iter().enumerate() {
            if !pod.ready || pod.terminating {
                pod_states.push(json!({
                    "name": format!("{name}-{ordinal}"),
                    "namespace": ns,
                    "ready": pod.ready,
                    "terminating": pod.terminating,
                }));
            }
        }
        deployments.push(deployment(
            &name,
            ns,
            members.len(),
            labels,
            ports,
            node.map(|i| node_names[i].as_str()),
        ));
    }

    let demand = plan::Demand {
        cluster_ips: kept
            .iter()
            .filter_map(|k| k.spec.cluster_ip.as_deref()?.parse().ok())
            .collect(),
        endpoint_ips: pods
            .values()
            .filter(|p| p.is_pod)
            .map(|p| p.address)
            .collect(),
        nodes: node_count,
        pods_per_node: per_node.iter().copied().max().unwrap_or(0),
        node_ports: kept
            .iter()
            .flat_map(|k| {
                let ports = k.spec.ports.iter().flatten().filter_map(|p| p.node_port);
                ports.chain(k.spec.health_check_node_port)
            })
            .filter_map(|p| u16::try_from(p).ok())
            .collect(),
    };
    let plan = plan::plan(&demand).map_err(CaptureError::Plan)?;
    if !plan.pod_cidr_from_endpoints && pods.values().any(|p| p.is_pod) {
        notes.push(format!(
            "the endpoints' addresses do not fit a pod CIDR beside the other ranges; the lab \
             uses {}",
            plan.pod_cidr
        ));
    }

    let nodes_value = if node_names.is_empty() {
        json!(2)
    } else {
        json!(node_names)
    };
    let lab = json!({
        "apiVersion": LAB_API_VERSION,
        "kind": "Lab",
        "metadata": {"name": "captured"},
        "spec": {
            "nodes": nodes_value,
            "nodeNetwork": plan.node_network.to_string(),
            "podCIDR": plan.pod_cidr.to_string(),
            "nodeCIDRMaskSize": plan.node_cidr_mask_size,
            "serviceCIDR": plan.service_cidr.to_string(),
            "nodePortRange": format!("{}-{}", plan.node_port_range.0, plan.node_port_range.1),
            "external": true,
            "pods": pod_states,
        }
    });
    let services_out: Vec<Value> = kept
        .iter()
        .enumerate()
        .map(|(i, k)| service(k, &out_ns[i], &out_name[i], &selectors[i], &mut names))
        .collect();

    let endpoints: usize = pods.values().map(|p| p.services.len()).sum();
    let mut text = header(opts, &kept, &slices, endpoints, &plan, &notes);
    for doc in std::iter::once(&lab)
        .chain(&deployments)
        .chain(&services_out)
    {
        text.push_str("---\n");
        text.push_str(&emit::document(doc));
    }
    Scenario::parse("captured", &text).map_err(CaptureError::Invalid)?;
    Ok(Captured {
        yaml: text,
        notes,
        services: kept.len(),
        deployments: deployments.len(),
        pods: pods.len(),
        nodes: node_names.len(),
    })
}

/// Whether a Service can be reproduced, or why not.
fn keep(svc: &Service) -> Result<Kept<'_>, String> {
    let spec = svc.spec.clone().unwrap_or_default();
    match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        "ExternalName" => {
            return Err(
                "type ExternalName is a DNS alias; no proxy programs anything for it".into(),
            );
        }
        other => return Err(format!("type {other:?} is unknown")),
    }
    match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => {}
        Some(ip) if ip.parse::<Ipv4Addr>().is_ok() => {}
        Some(ip) => return Err(format!("its ClusterIP {ip} is not IPv4 (the lab is IPv4)")),
    }
    Ok(Kept {
        namespace: ns_of(&svc.metadata),
        name: svc.metadata.name.as_deref().unwrap_or(""),
        spec,
        svc,
    })
}

/// A pod in a note: by name, or only by namespace when anonymizing.
fn pod_label(ns: &str, pod: &str, anonymize: bool) -> String {
    if anonymize {
        format!("a pod in {ns}")
    } else {
        format!("pod {ns}/{pod}")
    }
}

/// A note from the slices, in words, with output names.
fn word(n: &pods::Note, ns: &[String], svc: &[String], names: &mut Names) -> String {
    use pods::Note;
    match n {
        Note::NoServiceLabel { namespace, slice } => {
            let slice = if names.anonymize() {
                "(name withheld)"
            } else {
                slice
            };
            format!(
                "EndpointSlice {}/{slice}: skipped: no {} label",
                names.namespace(namespace),
                svclab_backends::tracker::SERVICE_NAME_LABEL
            )
        }
        Note::AddressType {
            service,
            address_type,
        } => format!(
            "Service {}/{}: a slice of address type {address_type} skipped (the lab is IPv4)",
            ns[*service], svc[*service]
        ),
        Note::UnknownPort {
            service,
            name,
            port,
            protocol,
        } => format!(
            "Service {}/{}: slice port {name:?} {port}/{protocol} matches no Service port",
            ns[*service], svc[*service]
        ),
        Note::PortNamedTwice {
            service,
            pod,
            port,
            protocol,
            kept,
        } => format!(
            "{}: port {port}/{protocol} has another name for Service {}; the lab keeps {kept:?}",
            pod_label(&ns[*service], pod, names.anonymize()),
            svc[*service]
        ),
    }
}

/// A name for a Deployment in `ns` whose pods' names are free too.
fn unique_name(
    first: &str,
    ns: &str,
    replicas: usize,
    taken: &mut BTreeSet<(String, String)>,
) -> String {
    fn pod_names(d: &str, replicas: usize) -> impl Iterator<Item = String> + '_ {
        (0..replicas).map(move |i| format!("{d}-{i}"))
    }
    let free = |d: &str, taken: &BTreeSet<(String, String)>| {
        !taken.contains(&(ns.to_string(), d.to_string()))
            && pod_names(d, replicas).all(|p| !taken.contains(&(ns.to_string(), p)))
    };
    let mut name = first.to_string();
    let mut k = 1;
    while !free(&name, taken) {
        k += 1;
        name = suffixed(first, &format!("v{k}"));
    }
    taken.insert((ns.to_string(), name.clone()));
    taken.extend(pod_names(&name, replicas).map(|p| (ns.to_string(), p)));
    name
}

fn deployment(
    name: &str,
    ns: &str,
    replicas: usize,
    labels: &BTreeMap<String, String>,
    ports: &[pods::ContainerPort],
    node: Option<&str>,
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            let mut v = json!({"containerPort": p.port, "protocol": p.protocol.as_k8s()});
            if let Some(n) = &p.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    let mut container = json!({"name": "app"});
    if !ports.is_empty() {
        container["ports"] = json!(ports);
    }
    let mut pod_spec = json!({"containers": [container]});
    if let Some(n) = node {
        pod_spec["nodeName"] = json!(n);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        }
    })
}

/// Annotations that change how a proxy treats a Service; others (tooling
/// state, descriptions) are left out.
fn proxy_annotation(key: &str) -> bool {
    key.starts_with("service.kubernetes.io/") || key.starts_with("service.beta.kubernetes.io/")
}

/// The Service as the scenario declares it: the spec without status,
/// server-set metadata or IPv6 parts.
fn service(
    k: &Kept<'_>,
    ns: &str,
    name: &str,
    selector: &BTreeMap<String, String>,
    names: &mut Names,
) -> Value {
    let mut spec = k.spec.clone();
    spec.selector = (!selector.is_empty()).then(|| selector.clone());
    spec.external_name = None;
    let v4 = |a: &String| a.parse::<Ipv4Addr>().is_ok();
    if let Some(ips) = &mut spec.cluster_ips {
        ips.retain(|a| a == "None" || v4(a));
    }
    if let Some(ips) = &mut spec.external_ips {
        ips.retain(v4);
    }
    if let Some(r) = &mut spec.load_balancer_source_ranges {
        r.retain(|c| c.parse::<ipnet::Ipv4Net>().is_ok());
    }
    if spec.ip_families.is_some() {
        spec.ip_families = Some(vec!["IPv4".into()]);
    }
    if spec.ip_family_policy.is_some() {
        spec.ip_family_policy = Some("SingleStack".into());
    }
    let mut meta = json!({"name": name, "namespace": ns});
    let labels = k.svc.metadata.labels.clone().unwrap_or_default();
    if !labels.is_empty() {
        meta["labels"] = json!(names.labels(&labels));
    }
    let annotations: BTreeMap<&String, &String> = k
        .svc
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(key, _)| proxy_annotation(key))
        .collect();
    if !annotations.is_empty() && !names.anonymize() {
        meta["annotations"] = json!(annotations);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": serde_json::to_value(&spec).expect("a Service spec serializes"),
    })
}

fn header(
    opts: &Options,
    kept: &[Kept<'_>],
    slices: &[EndpointSlice],
    endpoints: usize,
    plan: &plan::Plan,
    notes: &[String],
) -> String {
    let mut s = format!(
        "# Captured by `svclab capture` from {}{}{}.\n\
         # {} Services, {} EndpointSlices, {endpoints} endpoints. Pods get the lab's own\n\
         # addresses in {} ({}); ClusterIPs and node ports are the cluster's.\n",
        if opts.source.is_empty() {
            "a cluster"
        } else {
            &opts.source
        },
        opts.namespace
            .as_deref()
            .map(|n| format!(", namespace {n}"))
            .unwrap_or_default(),
        if opts.anonymize { ", anonymized" } else { "" },
        kept.len(),
        slices.len(),
        plan.pod_cidr,
        if plan.pod_cidr_from_endpoints {
            "the endpoints' range"
        } else {
            "a fresh range"
        },
    );
    if !notes.is_empty() {
        s.push_str("# Not reproduced as captured:\n");
        for n in notes {
            s.push_str(&format!("#   - {n}\n"));
        }
    }
    s
}
