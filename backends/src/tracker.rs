//! kube-proxy's service and endpoint change tracking: watch events go in,
//! [`ProxyState`] is kept up to date, and each sync takes the [`ChangeSet`]
//! accumulated since the previous one. A change that is undone before the
//! next sync (an endpoint that flaps down and up) is no change at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::model::{
    ChangeSet, Endpoint, Hint, Hints, IpFamily, Protocol, ProxyState, ServicePort, ServicePortName,
};
use crate::protocol::{ApiObject, WatchEvent};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The annotation kube-proxy reads for network programming latency.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// ClientIP affinity timeout when a Service does not set one.
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10800;

type ServiceKey = (String, String);

#[derive(Debug)]
pub struct ChangeTracker {
    node_name: String,
    /// The proxier's family: it takes only this family's ClusterIPs,
    /// addresses and EndpointSlices (kube-proxy runs one per family).
    family: IpFamily,
    /// The node's zone, for reading endpoints' zone hints.
    zone: Option<String>,
    /// Service ports per Service.
    service_ports: HashMap<ServiceKey, Vec<ServicePortName>>,
    /// Endpoints per Service, per slice name.
    slices: HashMap<ServiceKey, BTreeMap<String, Vec<(ServicePortName, Endpoint)>>>,
    state: ProxyState,
    /// State of each touched service port as of the last sync.
    before: BTreeMap<ServicePortName, (Option<ServicePort>, Vec<Endpoint>)>,
    service_events: u64,
    endpoint_events: u64,
    resource_version: u64,
    versions: crate::protocol::StreamVersions,
    trigger_times: Vec<f64>,
    synced: bool,
}

/// What converting one API object can go wrong with; the tracker skips such
/// objects, as kube-proxy does, and reports them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    #[error("Service {key}: {what}")]
    Service { key: String, what: String },
    #[error("EndpointSlice {key}: {what}")]
    Slice { key: String, what: String },
}

impl ChangeTracker {
    pub fn new(node_name: &str) -> Self {
        ChangeTracker {
            node_name: node_name.to_string(),
            family: IpFamily::IPv4,
            zone: None,
            service_ports: HashMap::new(),
            slices: HashMap::new(),
            state: ProxyState::default(),
            before: BTreeMap::new(),
            service_events: 0,
            endpoint_events: 0,
            resource_version: 0,
            versions: Default::default(),
            trigger_times: Vec::new(),
            synced: false,
        }
    }

    /// The family this tracker's proxier serves (IPv4 unless set). Set
    /// before the first event.
    pub fn for_family(mut self, family: IpFamily) -> Self {
        self.family = family;
        self
    }

    /// The node's zone (its `topology.kubernetes.io/zone` label): endpoints
    /// hinted for it are this node's zone's. Set before the first event.
    pub fn with_zone(mut self, zone: Option<String>) -> Self {
        self.zone = zone.filter(|z| !z.is_empty());
        self
    }

    pub fn state(&self) -> &ProxyState {
        &self.state
    }

    /// The initial list has been received.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Highest resourceVersion seen so far.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// Highest resourceVersion seen per watch stream.
    pub fn versions(&self) -> crate::protocol::StreamVersions {
        self.versions
    }

    /// Whether anything is waiting for a sync.
    pub fn has_pending(&self) -> bool {
        !self.before.is_empty()
    }

    /// Applies one watch event. Objects that cannot be used are skipped and
    /// returned as errors; the state stays consistent either way.
    pub fn apply(&mut self, event: &WatchEvent) -> Result<(), ObjectError> {
        let (object, deleted) = match event {
            WatchEvent::Synced => {
                self.synced = true;
                return Ok(());
            }
            WatchEvent::Added { object } | WatchEvent::Modified { object } => (object, false),
            WatchEvent::Deleted { object } => (object, true),
        };
        if let Some(rv) = object
            .metadata()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
        {
            self.resource_version = self.resource_version.max(rv);
            self.versions.saw(object.kind(), rv);
        }
        match object {
            ApiObject::Service(svc) => {
                self.service_events += 1;
                self.apply_service(svc, deleted)
            }
            ApiObject::EndpointSlice(slice) => {
                self.endpoint_events += 1;
                if let Some(t) = trigger_time(slice) {
                    self.trigger_times.push(t);
                }
                self.apply_slice(slice, deleted)
            }
        }
    }

    fn remember(&mut self, name: &ServicePortName) {
        if !self.before.contains_key(name) {
            let svc = self.state.services.get(name).cloned();
            let eps = self.state.endpoints_of(name).to_vec();
            self.before.insert(name.clone(), (svc, eps));
        }
    }

    fn apply_service(&mut self, svc: &Service, deleted: bool) -> Result<(), ObjectError> {
        let key = object_key(&svc.metadata);
        let (ports, result) = if deleted {
            (Vec::new(), Ok(()))
        } else {
            match service_ports(svc, self.family) {
                Ok(p) => (p, Ok(())),
                Err(what) => (
                    Vec::new(),
                    Err(ObjectError::Service {
                        key: format!("{}/{}", key.0, key.1),
                        what,
                    }),
                ),
            }
        };
        let old = self.service_ports.remove(&key).unwrap_or_default();
        for name in &old {
            self.remember(name);
            self.state.services.remove(name);
        }
        let mut names = Vec::with_capacity(ports.len());
        for port in ports {
            self.remember(&port.name);
            names.push(port.name.clone());
            self.state.services.insert(port.name.clone(), port);
        }
        if !names.is_empty() {
            self.service_ports.insert(key, names);
        }
        result
    }

    fn apply_slice(&mut self, slice: &EndpointSlice, deleted: bool) -> Result<(), ObjectError> {
        let ns = slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let slice_name = slice.metadata.name.clone().unwrap_or_default();
        let Some(svc_name) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
        else {
            return Err(ObjectError::Slice {
                key: format!("{ns}/{slice_name}"),
                what: format!("has no {SERVICE_NAME_LABEL} label"),
            });
        };
        let key = (ns.clone(), svc_name.clone());
        let (entries, result) = if deleted {
            (Vec::new(), Ok(()))
        } else {
            match slice_endpoints(
                slice,
                self.family,
                &ns,
                &svc_name,
                &self.node_name,
                self.zone.as_deref(),
            ) {
                Ok(e) => (e, Ok(())),
                Err(what) => (
                    Vec::new(),
                    Err(ObjectError::Slice {
                        key: format!("{ns}/{slice_name}"),
                        what,
                    }),
                ),
            }
        };
        let per_slice = self.slices.entry(key.clone()).or_default();
        let mut touched: BTreeSet<ServicePortName> = BTreeSet::new();
        if let Some(old) = per_slice.remove(&slice_name) {
            touched.extend(old.into_iter().map(|(n, _)| n));
        }
        touched.extend(entries.iter().map(|(n, _)| n.clone()));
        if !entries.is_empty() {
            per_slice.insert(slice_name, entries);
        }
        for name in &touched {
            self.remember(name);
        }
        let per_slice = self.slices.get(&key);
        for name in touched {
            let mut eps: Vec<Endpoint> = per_slice
                .into_iter()
                .flat_map(|s| s.values())
                .flatten()
                .filter(|(n, _)| *n == name)
                .map(|(_, e)| e.clone())
                .collect();
            eps.sort();
            // One endpoint per address; a ready copy wins over a not-ready one.
            eps.dedup_by(|later, earlier| {
                if later.ip == earlier.ip && later.port == earlier.port {
                    if later.ready && !earlier.ready {
                        std::mem::swap(later, earlier);
                    }
                    true
                } else {
                    false
                }
            });
            // kube-proxy's order: by the "ip:port" string (its byEndpoint
            // in pkg/proxy/endpointslicecache.go), so 10.0.0.10 comes before
            // 10.0.0.9; the iptables chain's probabilities follow it.
            eps.sort_by_cached_key(Endpoint::addr);
            if eps.is_empty() {
                self.state.endpoints.remove(&name);
            } else {
                self.state.endpoints.insert(name, eps);
            }
        }
        if self.slices.get(&key).is_some_and(|s| s.is_empty()) {
            self.slices.remove(&key);
        }
        result
    }

    /// Takes what changed since the last call. With `full`, every current
    /// service port counts as changed.
    pub fn take_changes(&mut self, full: bool) -> ChangeSet {
        let mut cs = ChangeSet {
            service_events: std::mem::take(&mut self.service_events),
            endpoint_events: std::mem::take(&mut self.endpoint_events),
            ..ChangeSet::default()
        };
        for (name, (old_svc, old_eps)) in std::mem::take(&mut self.before) {
            let new_svc = self.state.services.get(&name);
            let new_eps = self.state.endpoints_of(&name);
            if old_svc.as_ref() == new_svc && old_eps == new_eps {
                continue;
            }
            cs.changed.insert(name.clone());
            if let (None, Some(old)) = (new_svc, &old_svc) {
                cs.deleted.insert(name.clone(), old.clone());
            }
            let removed: Vec<Endpoint> = old_eps
                .iter()
                .filter(|o| o.serving || o.ready)
                .filter(|o| {
                    !new_eps
                        .iter()
                        .any(|n| n.ip == o.ip && n.port == o.port && (n.serving || n.ready))
                })
                .cloned()
                .collect();
            if !removed.is_empty() {
                cs.removed_endpoints.insert(name.clone(), removed);
            }
            let had = old_eps.iter().any(|e| e.ready || e.serving);
            let has = new_eps.iter().any(|e| e.ready || e.serving);
            if name.protocol == Protocol::Udp && !had && has {
                cs.became_ready.insert(name);
            }
        }
        if full {
            cs.changed.extend(self.state.services.keys().cloned());
        }
        cs
    }

    /// Takes the trigger times of the endpoint changes folded since the last
    /// call (Unix seconds).
    pub fn take_trigger_times(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.trigger_times)
    }
}

fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ServiceKey {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn trigger_time(slice: &EndpointSlice) -> Option<f64> {
    let raw = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let ts: jiff::Timestamp = raw.parse().ok()?;
    Some(ts.as_nanosecond() as f64 / 1e9)
}

/// The service ports of a Service, or none for Services kube-proxy skips
/// (headless, ExternalName). An error means the object is malformed.
/// The service ports `family`'s proxier programs.
pub fn service_ports(svc: &Service, family: IpFamily) -> Result<Vec<ServicePort>, String> {
    let (ns, name) = object_key(&svc.metadata);
    let Some(spec) = &svc.spec else {
        return Ok(Vec::new());
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return Ok(Vec::new());
    }
    match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => return Ok(Vec::new()),
        Some(ip) => {
            ip.parse::<IpAddr>()
                .map_err(|_| format!("spec.clusterIP {ip:?} is not an IP address"))?;
        }
    }
    // The proxy is one family's proxier (kube-proxy runs one per family):
    // it takes the Service's ClusterIP of its family wherever `clusterIPs`
    // lists it, and leaves a Service without one to the other proxier.
    let ours = |ip: &IpAddr| IpFamily::of(ip) == family;
    let Some(cluster_ip) = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .find(ours)
    else {
        return Ok(Vec::new());
    };
    let affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => Some(
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .map(|t| t.max(0) as u32)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS),
        ),
        _ => None,
    };
    let node_ports_allowed = matches!(ty, "NodePort" | "LoadBalancer");
    let external_policy_local =
        node_ports_allowed && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let mut external_ips = Vec::new();
    for ip in spec.external_ips.iter().flatten() {
        match ip.parse::<IpAddr>() {
            Ok(ip) if ours(&ip) => external_ips.push(ip),
            // The other proxier's.
            Ok(_) => {}
            Err(_) => return Err(format!("spec.externalIPs {ip:?} is not an IP address")),
        }
    }
    // Only VIP-mode ingress IPs are the proxy's to program (an unset ipMode
    // is VIP); a Proxy-mode load balancer delivers to the nodes itself.
    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for ing in ingress.into_iter().flatten() {
        let Some(ip) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if ing.ip_mode.as_deref().is_some_and(|m| m != "VIP") {
            continue;
        }
        // Another family's address is not this proxy's.
        if let Ok(ip) = ip.parse::<IpAddr>()
            && ours(&ip)
        {
            load_balancer_ips.push(ip);
        }
    }
    let mut load_balancer_source_ranges = Vec::new();
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let r = r.trim();
        let net: ipnet::IpNet = r
            .parse()
            .map_err(|_| format!("spec.loadBalancerSourceRanges[{i}] {r:?} is not a CIDR"))?;
        if ours(&net.addr()) {
            load_balancer_source_ranges.push(net.trunc());
        }
    }
    // A zero-length range allows everyone: the same as no ranges.
    if load_balancer_source_ranges
        .iter()
        .any(|n| n.prefix_len() == 0)
    {
        load_balancer_source_ranges.clear();
    }
    let mut out = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let protocol = Protocol::parse_k8s(p.protocol.as_deref()).ok_or_else(|| {
            format!(
                "spec.ports[{i}].protocol {:?} is not TCP, UDP or SCTP",
                p.protocol
            )
        })?;
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("spec.ports[{i}].port {} is out of range", p.port))?;
        let node_port = if node_ports_allowed {
            p.node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0)
        } else {
            None
        };
        out.push(ServicePort {
            name: ServicePortName::new(&ns, &name, p.name.as_deref().unwrap_or(""), protocol),
            cluster_ip,
            port,
            protocol,
            node_port,
            session_affinity_seconds: affinity,
            external_policy_local,
            internal_policy_local,
            health_check_node_port: if external_policy_local {
                spec.health_check_node_port
                    .and_then(|n| u16::try_from(n).ok())
            } else {
                None
            },
            external_ips: external_ips.clone(),
            load_balancer_ips: load_balancer_ips.clone(),
            load_balancer_source_ranges: load_balancer_source_ranges.clone(),
        });
    }
    Ok(out)
}

/// The (service port, endpoint) pairs an EndpointSlice contributes, seen
/// from node `node_name` in zone `zone`.
pub fn slice_endpoints(
    slice: &EndpointSlice,
    family: IpFamily,
    ns: &str,
    svc_name: &str,
    node_name: &str,
    zone: Option<&str>,
) -> Result<Vec<(ServicePortName, Endpoint)>, String> {
    if slice.address_type != family.as_k8s() {
        return Ok(Vec::new());
    }
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let protocol = Protocol::parse_k8s(p.protocol.as_deref())
            .ok_or_else(|| format!("ports[{i}].protocol {:?} is not supported", p.protocol))?;
        let Some(port) = p.port else { continue };
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("ports[{i}].port {port} is out of range"))?;
        let name = ServicePortName::new(ns, svc_name, p.name.as_deref().unwrap_or(""), protocol);
        ports.push((name, port));
    }
    let mut out = Vec::new();
    for (i, e) in slice.endpoints.iter().flatten().enumerate() {
        let Some(addr) = e.addresses.first() else {
            continue;
        };
        let ip: IpAddr = addr
            .parse()
            .ok()
            .filter(|ip| IpFamily::of(ip) == family)
            .ok_or_else(|| format!("endpoints[{i}].addresses[0] {addr:?} is not {family}"))?;
        let cond = e.conditions.as_ref();
        // The API's rules for unset conditions: ready unknown means ready,
        // serving follows ready, terminating defaults to false.
        let ready = cond.and_then(|c| c.ready).unwrap_or(true);
        let serving = cond.and_then(|c| c.serving).unwrap_or(ready);
        let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
        let hints = e.hints.as_ref().map_or_else(Hints::default, |h| Hints {
            zone: Hint::of(h.for_zones.iter().flatten().map(|z| z.name.as_str()), zone),
            node: Hint::of(
                h.for_nodes.iter().flatten().map(|n| n.name.as_str()),
                Some(node_name),
            ),
        });
        for (name, port) in &ports {
            out.push((
                name.clone(),
                Endpoint {
                    ip,
                    port: *port,
                    ready,
                    serving,
                    terminating,
                    node_name: e.node_name.clone(),
                    is_local: e.node_name.as_deref() == Some(node_name),
                    hints,
                },
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc_event(ty: &str, v: serde_json::Value) -> WatchEvent {
        let mut obj = json!({"apiVersion": "v1", "kind": "Service"});
        obj.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        serde_json::from_value(json!({"type": ty, "object": obj})).unwrap()
    }

    fn slice_event(ty: &str, name: &str, svc: &str, eps: serde_json::Value) -> WatchEvent {
        serde_json::from_value(json!({"type": ty, "object": {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps,
        }}))
        .unwrap()
    }

    fn web() -> serde_json::Value {
        json!({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "3"},
               "spec": {"clusterIP": "10.96.0.10", "type": "NodePort",
                        "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}})
    }

    fn spn() -> ServicePortName {
        ServicePortName::new("default", "web", "http", Protocol::Tcp)
    }

    #[test]
    fn service_and_slice_build_state() {
        let mut t = ChangeTracker::new("n0");
        t.apply(&svc_event("ADDED", web())).unwrap();
        t.apply(&slice_event(
            "ADDED",
            "web-a",
            "web",
            json!([
                {"addresses": ["10.244.0.2"], "nodeName": "n0"},
                {"addresses": ["10.244.1.2"], "nodeName": "n1", "conditions": {"ready": false}},
            ]),
        ))
        .unwrap();
        t.apply(&WatchEvent::Synced).unwrap();
        assert!(t.is_synced());
        assert_eq!(t.resource_version(), 3);
        let st = t.state();
        assert_eq!(st.services[&spn()].node_port, Some(30080));
        let eps = st.endpoints_of(&spn());
        assert_eq!(eps.len(), 2);
        assert!(eps[0].ready && eps[0].is_local);
        assert!(!eps[1].ready && !eps[1].serving && !eps[1].is_local);
        let cs = t.take_changes(true);
        assert_eq!(cs.changed.len(), 1);
        assert_eq!((cs.service_events, cs.endpoint_events), (1, 1));
        assert!(!t.has_pending());
    }

    #[test]
    fn the_ipv4_proxier_takes_a_dual_stack_services_ipv4_side() {
        let dual = |ips: serde_json::Value, external: serde_json::Value| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": ips[0], "clusterIPs": ips, "externalIPs": external,
                         "ports": [{"port": 80}]}}))
            .unwrap()
        };
        // IPv6 primary: the IPv4 address is the second.
        let svc = dual(
            json!(["fd00:10:96::a", "10.96.0.10"]),
            json!(["fd00:203::1", "203.0.113.9"]),
        );
        let ports = service_ports(&svc, IpFamily::IPv4).unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].cluster_ip, "10.96.0.10".parse::<IpAddr>().unwrap());
        assert_eq!(
            ports[0].external_ips,
            ["203.0.113.9".parse::<IpAddr>().unwrap()]
        );
        // The IPv6 proxier takes the other side of the same Service.
        let ports = service_ports(&svc, IpFamily::IPv6).unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(
            ports[0].cluster_ip,
            "fd00:10:96::a".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ports[0].external_ips,
            ["fd00:203::1".parse::<IpAddr>().unwrap()]
        );
        // IPv6 only: the IPv6 proxier's, none of this one's.
        assert!(
            service_ports(&dual(json!(["fd00:10:96::a"]), json!([])), IpFamily::IPv4)
                .unwrap()
                .is_empty()
        );
        // Not an address at all is still an error.
        let e =
            service_ports(&dual(json!(["10.96.0.300"]), json!([])), IpFamily::IPv4).unwrap_err();
        assert!(e.contains("spec.clusterIP"), "{e}");
    }

    #[test]
    fn flap_inside_one_window_is_no_change() {
        let mut t = ChangeTracker::new("n0");
        t.apply(&svc_event("ADDED", web())).unwrap();
        let one = json!([{"addresses": ["10.244.0.2"], "nodeName": "n0"}]);
        t.apply(&slice_event("ADDED", "web-a", "web", one.clone()))
            .unwrap();
        t.take_changes(true);
        t.apply(&slice_event("MODIFIED", "web-a", "web", json!([])))
            .unwrap();
        t.apply(&slice_event("MODIFIED", "web-a", "web", one))
            .unwrap();
        let cs = t.take_changes(false);
        assert!(cs.is_empty(), "{cs:?}");
        assert_eq!(cs.endpoint_events, 2);
    }

    #[test]
    fn removed_endpoint_and_deleted_service_are_reported() {
        let mut t = ChangeTracker::new("n0");
        t.apply(&svc_event("ADDED", web())).unwrap();
        t.apply(&slice_event(
            "ADDED",
            "web-a",
            "web",
            json!([{"addresses": ["10.244.0.2"]}, {"addresses": ["10.244.0.3"]}]),
        ))
        .unwrap();
        t.take_changes(true);
        t.apply(&slice_event(
            "MODIFIED",
            "web-a",
            "web",
            json!([{"addresses": ["10.244.0.2"]}]),
        ))
        .unwrap();
        let cs = t.take_changes(false);
        assert_eq!(cs.changed.iter().collect::<Vec<_>>(), vec![&spn()]);
        let removed = &cs.removed_endpoints[&spn()];
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].addr(), "10.244.0.3:8080");

        t.apply(&svc_event("DELETED", web())).unwrap();
        let cs = t.take_changes(false);
        assert!(cs.deleted.contains_key(&spn()));
        assert!(t.state().services.is_empty());
    }

    #[test]
    fn udp_service_becoming_ready_is_flagged() {
        let mut t = ChangeTracker::new("n0");
        let dns = json!({"metadata": {"name": "dns", "namespace": "default"},
                         "spec": {"clusterIP": "10.96.0.53",
                                  "ports": [{"port": 53, "protocol": "UDP"}]}});
        t.apply(&svc_event("ADDED", dns)).unwrap();
        t.take_changes(true);
        let ev: WatchEvent = serde_json::from_value(json!({"type": "ADDED", "object": {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "dns-a", "namespace": "default",
                         "labels": {SERVICE_NAME_LABEL: "dns"}},
            "addressType": "IPv4",
            "ports": [{"port": 5353, "protocol": "UDP"}],
            "endpoints": [{"addresses": ["10.244.0.9"]}],
        }}))
        .unwrap();
        t.apply(&ev).unwrap();
        let cs = t.take_changes(false);
        let name = ServicePortName::new("default", "dns", "", Protocol::Udp);
        assert!(cs.became_ready.contains(&name));
        assert_eq!(t.state().endpoints_of(&name)[0].port, 5353);
    }

    #[test]
    fn headless_and_external_name_are_skipped_and_affinity_defaults() {
        let headless = svc_event(
            "ADDED",
            json!({"metadata": {"name": "h"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}}),
        );
        let mut t = ChangeTracker::new("n0");
        t.apply(&headless).unwrap();
        assert!(t.state().services.is_empty());
        let aff = svc_event(
            "ADDED",
            json!({"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.5",
                   "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}}),
        );
        t.apply(&aff).unwrap();
        let sp = t.state().services.values().next().unwrap();
        assert_eq!(sp.session_affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
    }

    #[test]
    fn malformed_objects_are_skipped_with_a_named_error() {
        let mut t = ChangeTracker::new("n0");
        let bad = svc_event(
            "ADDED",
            json!({"metadata": {"name": "bad"}, "spec": {"clusterIP": "not-an-ip", "ports": [{"port": 80}]}}),
        );
        let err = t.apply(&bad).unwrap_err();
        assert!(err.to_string().contains("default/bad"), "{err}");
        assert!(t.state().services.is_empty());
    }

    #[test]
    fn hints_are_read_against_this_node_and_zone() {
        let mut t = ChangeTracker::new("n0").with_zone(Some("za".into()));
        t.apply(&svc_event("ADDED", web())).unwrap();
        t.apply(&slice_event(
            "ADDED",
            "web-a",
            "web",
            json!([
                {"addresses": ["10.244.0.2"], "nodeName": "n0", "zone": "za",
                 "hints": {"forZones": [{"name": "za"}], "forNodes": [{"name": "n0"}]}},
                {"addresses": ["10.244.1.2"], "nodeName": "n1", "zone": "zb",
                 "hints": {"forZones": [{"name": "zb"}]}},
                {"addresses": ["10.244.2.2"], "nodeName": "n2"},
            ]),
        ))
        .unwrap();
        let hints: Vec<Hints> = t
            .state()
            .endpoints_of(&spn())
            .iter()
            .map(|e| e.hints)
            .collect();
        assert_eq!(
            hints,
            vec![
                Hints {
                    zone: Hint::Here,
                    node: Hint::Here
                },
                Hints {
                    zone: Hint::Elsewhere,
                    node: Hint::None
                },
                Hints::default(),
            ]
        );
        // A node with no zone is in none of them.
        let mut t = ChangeTracker::new("n9");
        t.apply(&svc_event("ADDED", web())).unwrap();
        t.apply(&slice_event(
            "ADDED",
            "web-a",
            "web",
            json!([{"addresses": ["10.244.0.2"], "hints": {"forZones": [{"name": "za"}]}}]),
        ))
        .unwrap();
        assert_eq!(
            t.state().endpoints_of(&spn())[0].hints.zone,
            Hint::Elsewhere
        );
    }
}
