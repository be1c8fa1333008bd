//! The lab's API server and controllers, in one object: Services get
//! ClusterIPs and NodePorts, pods become EndpointSlices, and every change
//! comes out as ordered watch events, as an informer would see them.

mod alloc;
pub mod churn;
pub mod endpoints;
pub mod families;
pub mod objects;
pub mod store;

use std::collections::BTreeMap;
use std::net::IpAddr;

use svclab_backends::model::IpFamily;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use svclab_backends::protocol::{ApiObject, WatchEvent};
use svclab_backends::tracker::TRIGGER_TIME_ANNOTATION;

pub use alloc::AllocError;
use alloc::{IpAllocator, PoolAllocator, PortAllocator};

use crate::scenario::{Pod, Scenario};
use store::{EventType, Resource, Store};

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("Service {service}: {source}")]
    Alloc {
        service: String,
        #[source]
        source: AllocError,
    },
    #[error("Service {0} already exists")]
    Exists(String),
    #[error("no Service {0}")]
    NoService(String),
    #[error("no pod {0}")]
    NoPod(String),
    #[error("no Deployment {0}")]
    NoDeployment(String),
}

type Key = (String, String);

/// The annotation a scenario's LoadBalancer Service sets to `Proxy` to get
/// `status.loadBalancer.ingress[].ipMode: Proxy` from the lab's cloud
/// controller (a load balancer that proxies rather than forwarding to the
/// VIP); `VIP`, the default, otherwise. In a real cluster the cloud
/// provider decides; here the scenario does.
pub const LB_IP_MODE_ANNOTATION: &str = "svclab.dev/load-balancer-ip-mode";

/// The ipMode a Service's annotation asks for; the value when it is not
/// `VIP` or `Proxy`.
pub fn lb_ip_mode(svc: &Service) -> Result<&'static str, String> {
    match svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_IP_MODE_ANNOTATION))
        .map(String::as_str)
    {
        None | Some("VIP") => Ok("VIP"),
        Some("Proxy") => Ok("Proxy"),
        Some(other) => Err(other.to_string()),
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

fn key_str(k: &Key) -> String {
    format!("{}/{}", k.0, k.1)
}

pub struct ControlPlane {
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, Vec<EndpointSlice>>,
    pods: Vec<Pod>,
    node_names: Vec<String>,
    /// Each node's zone label, by node index.
    node_zones: Vec<Option<String>>,
    deployments: Vec<k8s_openapi::api::apps::v1::Deployment>,
    /// One service CIDR allocator per lab family, primary first.
    ips: Vec<(IpFamily, IpAllocator)>,
    families: Vec<IpFamily>,
    node_ports: PortAllocator,
    /// The cloud controller's LoadBalancer addresses.
    lb_pool: PoolAllocator,
    /// `spec.loadBalancerPoolIPv6`'s addresses.
    lb_pool6: PoolAllocator,
    resource_version: u64,
    /// What the API endpoint serves: every change above is recorded here.
    store: Store,
}

impl ControlPlane {
    /// The cluster state the scenario describes: every Service admitted and
    /// allocated, every slice computed.
    pub fn new(scenario: &Scenario) -> Result<ControlPlane, ControlPlaneError> {
        let mut cp = ControlPlane {
            services: BTreeMap::new(),
            slices: BTreeMap::new(),
            pods: scenario.pods.clone(),
            node_names: scenario.node_names(),
            node_zones: scenario.nodes.iter().map(|n| n.zone.clone()).collect(),
            deployments: scenario.deployments.clone(),
            ips: scenario
                .stack
                .families
                .iter()
                .map(|f| match f {
                    IpFamily::IPv4 => (*f, IpAllocator::new(scenario.lab.service_cidr)),
                    IpFamily::IPv6 => (
                        *f,
                        IpAllocator::new(
                            scenario
                                .stack
                                .v6
                                .as_ref()
                                .expect("an IPv6 lab has IPv6 ranges")
                                .service_cidr,
                        ),
                    ),
                })
                .collect(),
            families: scenario.stack.families.clone(),
            node_ports: PortAllocator::new(scenario.node_port_range),
            lb_pool: PoolAllocator::new(scenario.lab.load_balancer_pool.clone()),
            lb_pool6: PoolAllocator::new(scenario.lab.load_balancer_pool_v6.clone()),
            resource_version: 0,
            store: Store::new(),
        };
        cp.seed_cluster(scenario);
        // Explicit addresses first, so automatic ones never take them.
        let (explicit, auto): (Vec<&Service>, Vec<&Service>) =
            scenario.services.iter().partition(|s| {
                s.spec
                    .as_ref()
                    .and_then(|sp| sp.cluster_ip.as_deref())
                    .is_some_and(|ip| !ip.is_empty())
            });
        for svc in explicit.into_iter().chain(auto) {
            cp.add_service(svc.clone())?;
        }
        // The initial state is a list, not a history: watches start after it.
        cp.store.seal();
        Ok(cp)
    }

    /// Nodes, Namespaces, the ServiceCIDR, Deployments and Pods, as a
    /// cluster has them before any Service.
    fn seed_cluster(&mut self, scenario: &Scenario) {
        let mut rv = self.resource_version;
        for n in objects::nodes(scenario, || {
            rv += 1;
            rv
        }) {
            self.store.seed(Resource::Nodes, &n.metadata, &n);
        }
        for n in objects::namespaces(scenario, || {
            rv += 1;
            rv
        }) {
            self.store.seed(Resource::Namespaces, &n.metadata, &n);
        }
        rv += 1;
        let cidr = objects::service_cidr(scenario, rv);
        self.store
            .seed(Resource::ServiceCidrs, &cidr.metadata, &cidr);
        self.resource_version = rv;
        for i in 0..self.deployments.len() {
            let d = self.deployment_object(i);
            self.store.seed(Resource::Deployments, &d.metadata, &d);
        }
        for i in 0..self.pods.len() {
            if self.pods[i].active {
                let rv = self.bump_rv();
                let p = objects::pod(&self.pods[i], &self.node_names, &self.families, rv);
                self.store.seed(Resource::Pods, &p.metadata, &p);
            }
        }
    }

    fn bump_rv(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    fn deployment_object(&mut self, i: usize) -> k8s_openapi::api::apps::v1::Deployment {
        let d = &self.deployments[i];
        let (ns, name) = key_of(&d.metadata);
        let replicas = self
            .pods
            .iter()
            .filter(|p| p.namespace == ns && p.deployment.as_deref() == Some(&name) && p.active)
            .count();
        let rv = self.bump_rv();
        objects::deployment(&self.deployments[i], replicas, rv)
    }

    /// The API's view of the cluster.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Records `events` in the store (the API's watches), and returns them.
    fn publish(&mut self, events: Vec<WatchEvent>) -> Vec<WatchEvent> {
        for e in &events {
            let (ty, object) = match e {
                WatchEvent::Added { object } => (EventType::Added, object),
                WatchEvent::Modified { object } => (EventType::Modified, object),
                WatchEvent::Deleted { object } => (EventType::Deleted, object),
                WatchEvent::Synced => continue,
            };
            match object {
                ApiObject::Service(s) => {
                    self.store.record(Resource::Services, ty, &s.metadata, &**s)
                }
                ApiObject::EndpointSlice(s) => {
                    self.store
                        .record(Resource::EndpointSlices, ty, &s.metadata, &**s)
                }
            }
        }
        events
    }

    /// Records pods `changed` (by index) as the API shows them now.
    fn publish_pods(&mut self, changed: &[usize]) {
        for &i in changed {
            let rv = self.bump_rv();
            let p = objects::pod(&self.pods[i], &self.node_names, &self.families, rv);
            let ty = if self.pods[i].active {
                EventType::Modified
            } else {
                EventType::Deleted
            };
            self.store.record(Resource::Pods, ty, &p.metadata, &p);
        }
    }

    fn bump(&mut self) -> String {
        self.bump_rv().to_string()
    }

    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    pub fn slices(&self) -> impl Iterator<Item = &EndpointSlice> {
        self.slices.values().flatten()
    }

    pub fn slices_of(&self, namespace: &str, service: &str) -> &[EndpointSlice] {
        self.slices
            .get(&(namespace.to_string(), service.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The lab's IP families as the API server names them, primary first.
    pub fn families(&self) -> Vec<&'static str> {
        self.families.iter().map(|f| f.as_k8s()).collect()
    }

    pub fn node_names(&self) -> &[String] {
        &self.node_names
    }

    /// The initial list, as an informer receives it, then `SYNCED`.
    pub fn initial_events(&self) -> Vec<WatchEvent> {
        let mut out: Vec<WatchEvent> = self
            .services
            .values()
            .map(|s| WatchEvent::Added {
                object: ApiObject::Service(Box::new(s.clone())),
            })
            .collect();
        out.extend(self.slices().map(|s| WatchEvent::Added {
            object: ApiObject::EndpointSlice(Box::new(s.clone())),
        }));
        out.push(WatchEvent::Synced);
        out
    }

    /// Admits a new Service: allocates what it asks for, computes its slices.
    pub fn add_service(&mut self, mut svc: Service) -> Result<Vec<WatchEvent>, ControlPlaneError> {
        let key = key_of(&svc.metadata);
        if self.services.contains_key(&key) {
            return Err(ControlPlaneError::Exists(key_str(&key)));
        }
        svc.metadata.namespace = Some(key.0.clone());
        // The API server ignores the status of an object it creates: a new
        // Service (a copy of another, say) gets its own load balancer.
        if let Some(st) = svc.status.as_mut() {
            st.load_balancer = None;
        }
        Self::set_defaults(&mut svc);
        self.allocate(&key, &mut svc)?;
        svc.metadata.uid = Some(format!("svclab-{}-{}", key.0, key.1));
        svc.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        svc.metadata.resource_version = Some(self.bump());
        self.services.insert(key.clone(), svc.clone());
        let mut events = vec![WatchEvent::Added {
            object: ApiObject::Service(Box::new(svc)),
        }];
        events.extend(self.reconcile_slices(&key));
        Ok(self.publish(events))
    }

    /// Replaces a Service's spec (ports, targetPorts, policies).
    pub fn update_service(
        &mut self,
        mut svc: Service,
    ) -> Result<Vec<WatchEvent>, ControlPlaneError> {
        let key = key_of(&svc.metadata);
        let Some(old) = self.services.get(&key).cloned() else {
            return Err(ControlPlaneError::NoService(key_str(&key)));
        };
        // ClusterIP is immutable; keep it (and node ports unless given).
        // A Service that becomes an ExternalName loses it, as the API
        // server's dropTypeDependentFields has it.
        let old_spec = old.spec.clone().unwrap_or_default();
        let spec = svc.spec.get_or_insert_with(Default::default);
        if spec.type_.as_deref() == Some("ExternalName") {
            spec.cluster_ip = None;
            spec.cluster_ips = None;
        } else {
            spec.cluster_ip = old_spec.cluster_ip.clone();
            spec.cluster_ips = old_spec.cluster_ips.clone();
        }
        // The cloud controller keeps a load balancer's address across
        // updates; the status is not the client's to write here.
        if svc.status.is_none() {
            svc.status = old.status.clone();
        }
        Self::set_defaults(&mut svc);
        self.release(&old);
        if let Err(e) = self.allocate(&key, &mut svc) {
            // Put the old allocations back; the update did not happen.
            let mut restore = old.clone();
            let _ = self.allocate(&key, &mut restore);
            return Err(e);
        }
        svc.metadata.namespace = Some(key.0.clone());
        svc.metadata.uid = old.metadata.uid.clone();
        svc.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
        svc.metadata.resource_version = Some(self.bump());
        self.services.insert(key.clone(), svc.clone());
        let mut events = vec![WatchEvent::Modified {
            object: ApiObject::Service(Box::new(svc)),
        }];
        events.extend(self.reconcile_slices(&key));
        Ok(self.publish(events))
    }

    pub fn delete_service(
        &mut self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<WatchEvent>, ControlPlaneError> {
        let key = (namespace.to_string(), name.to_string());
        let Some(mut svc) = self.services.remove(&key) else {
            return Err(ControlPlaneError::NoService(key_str(&key)));
        };
        self.release(&svc);
        let mut events = Vec::new();
        for mut slice in self.slices.remove(&key).unwrap_or_default() {
            slice.metadata.resource_version = Some(self.bump());
            events.push(WatchEvent::Deleted {
                object: ApiObject::EndpointSlice(Box::new(slice)),
            });
        }
        svc.metadata.resource_version = Some(self.bump());
        events.push(WatchEvent::Deleted {
            object: ApiObject::Service(Box::new(svc)),
        });
        Ok(self.publish(events))
    }

    /// The defaults the API server writes into every Service it admits
    /// (proxies rely on them: kube-proxy never sees an empty protocol).
    fn set_defaults(svc: &mut Service) {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let spec = svc.spec.get_or_insert_with(Default::default);
        let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
        if ty == "ExternalName" {
            return;
        }
        spec.session_affinity.get_or_insert_with(|| "None".into());
        // ClientIP affinity gets its timeout (3 h), as the API server's
        // SetDefaults_Service gives it: kube-proxy dereferences it unchecked
        // (pkg/proxy/serviceport.go newBaseServiceInfo) and panics without.
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            let cfg = spec
                .session_affinity_config
                .get_or_insert_with(Default::default);
            let client_ip = cfg.client_ip.get_or_insert_with(Default::default);
            client_ip.timeout_seconds.get_or_insert(10800);
        }
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
            spec.external_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        if ty == "LoadBalancer" {
            spec.allocate_load_balancer_node_ports.get_or_insert(true);
        } else {
            spec.allocate_load_balancer_node_ports = None;
        }
        for p in spec.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            if p.target_port.is_none() {
                p.target_port = Some(IntOrString::Int(p.port));
            }
        }
    }

    fn allocate(&mut self, key: &Key, svc: &mut Service) -> Result<(), ControlPlaneError> {
        let owner = key_str(key);
        let err = |source| ControlPlaneError::Alloc {
            service: owner.clone(),
            source,
        };
        let spec = svc.spec.get_or_insert_with(Default::default);
        if spec.type_.as_deref() == Some("ExternalName") {
            // A DNS alias: the API server gives it no address or ports.
            return Ok(());
        }
        // `clusterIPs` mirrors `clusterIP` when only that was given.
        if spec.cluster_ips.as_ref().is_none_or(Vec::is_empty)
            && let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty())
        {
            spec.cluster_ips = Some(vec![ip.to_string()]);
        }
        families::fill(spec, &self.families);
        if spec.cluster_ip.as_deref() == Some("None") {
            spec.cluster_ips = Some(vec!["None".into()]);
        } else {
            // One address per family, in the families' order: the one asked
            // for (or kept across an update), else the next free one.
            let asked: Vec<IpAddr> = spec
                .cluster_ips
                .iter()
                .flatten()
                .filter_map(|ip| ip.parse().ok())
                .collect();
            let mut ips = Vec::new();
            for f in spec.ip_families.iter().flatten() {
                let f = IpFamily::parse_k8s(f).expect("filled above");
                let Some(pool) = self.ips.iter_mut().find(|(pf, _)| *pf == f) else {
                    return Err(err(AllocError::OutOfRange {
                        what: "ipFamilies",
                        value: f.as_k8s().into(),
                        range: "the lab's families".into(),
                    }));
                };
                let got = match asked.iter().find(|a| IpFamily::of(a) == f) {
                    Some(ip) => pool.1.request(*ip, &owner).map(|()| *ip),
                    None => pool.1.allocate(&owner),
                };
                let ip = match got {
                    Ok(ip) => ip,
                    Err(e) => {
                        // The families allocated so far go back.
                        for done in &ips {
                            self.release_ip(*done);
                        }
                        return Err(err(e));
                    }
                };
                ips.push(ip);
            }
            let spec = svc.spec.get_or_insert_with(Default::default);
            spec.cluster_ip = ips.first().map(IpAddr::to_string);
            spec.cluster_ips = Some(ips.iter().map(IpAddr::to_string).collect());
        }
        let spec = svc.spec.get_or_insert_with(Default::default);
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        spec.type_ = Some(ty.clone());
        if matches!(ty.as_str(), "NodePort" | "LoadBalancer") {
            // `allocateLoadBalancerNodePorts: false` gets none allocated,
            // but keeps those it asks for, as the API server does.
            let allocate_ports =
                ty != "LoadBalancer" || spec.allocate_load_balancer_node_ports != Some(false);
            for p in spec.ports.iter_mut().flatten() {
                match p.node_port {
                    Some(n) if n > 0 => self.node_ports.request(n as u16, &owner).map_err(err)?,
                    _ if allocate_ports => {
                        p.node_port =
                            Some(i32::from(self.node_ports.allocate(&owner).map_err(err)?))
                    }
                    _ => p.node_port = None,
                }
            }
            // The API server allocates a health check node port only for
            // LoadBalancer Services with externalTrafficPolicy Local
            // (kube-proxy serves it only for those).
            // Others lose one they carried (a type or policy change), as
            // the API server's dropTypeDependentFields does.
            if ty != "LoadBalancer" || spec.external_traffic_policy.as_deref() != Some("Local") {
                spec.health_check_node_port = None;
            } else {
                match spec.health_check_node_port {
                    Some(n) if n > 0 => self.node_ports.request(n as u16, &owner).map_err(err)?,
                    _ => {
                        spec.health_check_node_port =
                            Some(i32::from(self.node_ports.allocate(&owner).map_err(err)?));
                    }
                }
            }
        }
        self.assign_load_balancer(&owner, ty == "LoadBalancer", svc)
            .map_err(err)
    }

    /// The cloud controller's part: a LoadBalancer Service gets one ingress
    /// address from the pool (the one it had, or `spec.loadBalancerIP`, if
    /// it is in the pool), with the ipMode its [`LB_IP_MODE_ANNOTATION`]
    /// asks for (VIP by default); any other Service loses its status.
    fn assign_load_balancer(
        &mut self,
        owner: &str,
        is_lb: bool,
        svc: &mut Service,
    ) -> Result<(), AllocError> {
        use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceStatus};
        let enabled = self.lb_pool.enabled() || self.lb_pool6.enabled();
        if !is_lb || !enabled {
            if let Some(st) = svc.status.as_mut() {
                st.load_balancer = None;
            }
            return Ok(());
        }
        let mode = lb_ip_mode(svc).map_err(|value| AllocError::OutOfRange {
            what: "annotation svclab.dev/load-balancer-ip-mode",
            value,
            range: "VIP or Proxy".into(),
        })?;
        let had: Vec<IpAddr> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        let asked: Option<IpAddr> = svc
            .spec
            .as_ref()
            .and_then(|sp| sp.load_balancer_ip.as_deref())
            .filter(|ip| !ip.is_empty())
            .and_then(|ip| ip.parse().ok());
        let families: Vec<IpFamily> = svc
            .spec
            .as_ref()
            .and_then(|sp| sp.ip_families.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|f| IpFamily::parse_k8s(f))
            .collect();
        // One ingress address per family of the Service that has a pool,
        // in the Service's family order: the one asked for or kept across
        // an update, else the next free one.
        let mut ips: Vec<(IpAddr, bool)> = Vec::new();
        for family in families {
            let pool = match family {
                IpFamily::IPv4 => &mut self.lb_pool,
                IpFamily::IPv6 => &mut self.lb_pool6,
            };
            if !pool.enabled() {
                continue;
            }
            let of_family = |ip: &&IpAddr| IpFamily::of(ip) == family;
            let got = match asked.iter().find(of_family).or(had.iter().find(of_family)) {
                Some(ip) => pool.request(*ip, owner).map(|()| (*ip, false)),
                None => pool.allocate(owner).map(|ip| (ip, true)),
            };
            match got {
                Ok(ip) => ips.push(ip),
                Err(e) => {
                    // Give back what this call took, not what was kept.
                    for (ip, new) in ips {
                        if new {
                            self.release_lb_ip(ip);
                        }
                    }
                    return Err(e);
                }
            }
        }
        let status = svc.status.get_or_insert_with(ServiceStatus::default);
        status.load_balancer = Some(LoadBalancerStatus {
            ingress: (!ips.is_empty()).then(|| {
                ips.iter()
                    .map(|(ip, _)| LoadBalancerIngress {
                        ip: Some(ip.to_string()),
                        ip_mode: Some(mode.into()),
                        ..Default::default()
                    })
                    .collect()
            }),
        });
        Ok(())
    }

    fn release_lb_ip(&mut self, ip: IpAddr) {
        match IpFamily::of(&ip) {
            IpFamily::IPv4 => self.lb_pool.release(ip),
            IpFamily::IPv6 => self.lb_pool6.release(ip),
        }
    }

    fn release_ip(&mut self, ip: IpAddr) {
        if let Some((_, pool)) = self.ips.iter_mut().find(|(f, _)| *f == IpFamily::of(&ip)) {
            pool.release(ip);
        }
    }

    fn release(&mut self, svc: &Service) {
        let Some(spec) = &svc.spec else { return };
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .chain(spec.cluster_ip.iter())
            .filter_map(|s| s.parse().ok())
            .collect();
        for ip in ips {
            self.release_ip(ip);
        }
        for p in spec.ports.iter().flatten() {
            if let Some(n) = p.node_port {
                self.node_ports.release(n as u16);
            }
        }
        if let Some(n) = spec.health_check_node_port {
            self.node_ports.release(n as u16);
        }
        for ing in svc
            .status
            .iter()
            .filter_map(|s| s.load_balancer.as_ref())
            .flat_map(|lb| lb.ingress.iter().flatten())
        {
            if let Some(ip) = ing.ip.as_deref().and_then(|s| s.parse().ok()) {
                self.release_lb_ip(ip);
            }
        }
    }

    /// Brings one Service's slices to what its pods say now, and returns
    /// the events for the slices that changed.
    fn reconcile_slices(&mut self, key: &Key) -> Vec<WatchEvent> {
        let Some(svc) = self.services.get(key) else {
            return Vec::new();
        };
        let want = endpoints::slices_for(svc, &self.pods, &self.node_names, &self.node_zones);
        let have = self.slices.remove(key).unwrap_or_default();
        let now = jiff::Timestamp::now().to_string();
        let mut events = Vec::new();
        let mut kept = Vec::new();
        let mut have_by_name: BTreeMap<String, EndpointSlice> = have
            .into_iter()
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect();
        for mut slice in want {
            let name = slice.metadata.name.clone().unwrap_or_default();
            match have_by_name.remove(&name) {
                Some(old) if old.endpoints == slice.endpoints && old.ports == slice.ports => {
                    kept.push(old);
                }
                old => {
                    slice.metadata.creation_timestamp = Some(
                        old.as_ref()
                            .and_then(|o| o.metadata.creation_timestamp.clone())
                            .unwrap_or_else(|| {
                                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                                    jiff::Timestamp::now(),
                                )
                            }),
                    );
                    slice.metadata.annotations = Some(
                        [(TRIGGER_TIME_ANNOTATION.to_string(), now.clone())]
                            .into_iter()
                            .collect(),
                    );
                    slice.metadata.resource_version = Some(self.bump());
                    let object = ApiObject::EndpointSlice(Box::new(slice.clone()));
                    events.push(if old.is_some() {
                        WatchEvent::Modified { object }
                    } else {
                        WatchEvent::Added { object }
                    });
                    kept.push(slice);
                }
            }
        }
        for (_, mut gone) in have_by_name {
            gone.metadata.resource_version = Some(self.bump());
            events.push(WatchEvent::Deleted {
                object: ApiObject::EndpointSlice(Box::new(gone)),
            });
        }
        if !kept.is_empty() {
            self.slices.insert(key.clone(), kept);
        }
        events
    }

    /// Re-runs the endpoint controller for every Service whose selector
    /// matches any of `pods` (given by index).
    fn pods_changed(&mut self, pods: &[usize]) -> Vec<WatchEvent> {
        let keys: Vec<Key> = self
            .services
            .iter()
            .filter(|(k, svc)| {
                let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
                pods.iter().map(|&i| &self.pods[i]).any(|p| {
                    p.namespace == k.0
                        && selector.is_some_and(|sel| {
                            !sel.is_empty() && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                        })
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().flat_map(|k| self.reconcile_slices(k)).collect()
    }

    fn pod_index(&self, namespace: &str, name: &str) -> Result<usize, ControlPlaneError> {
        self.pods
            .iter()
            .position(|p| p.namespace == namespace && p.name == name && !p.client)
            .ok_or_else(|| ControlPlaneError::NoPod(format!("{namespace}/{name}")))
    }

    /// A pod's readiness changes (its readiness probe starts or stops passing).
    pub fn set_ready(
        &mut self,
        namespace: &str,
        name: &str,
        ready: bool,
    ) -> Result<Vec<WatchEvent>, ControlPlaneError> {
        let i = self.pod_index(namespace, name)?;
        if self.pods[i].ready == ready {
            return Ok(Vec::new());
        }
        self.pods[i].ready = ready;
        self.publish_pods(&[i]);
        let events = self.pods_changed(&[i]);
        Ok(self.publish(events))
    }

    /// A pod starts (or stops) terminating; it keeps serving meanwhile.
    pub fn set_terminating(
        &mut self,
        namespace: &str,
        name: &str,
        terminating: bool,
    ) -> Result<Vec<WatchEvent>, ControlPlaneError> {
        let i = self.pod_index(namespace, name)?;
        if self.pods[i].terminating == terminating {
            return Ok(Vec::new());
        }
        self.pods[i].terminating = terminating;
        self.publish_pods(&[i]);
        let events = self.pods_changed(&[i]);
        Ok(self.publish(events))
    }

    /// Scales a Deployment within the pods the lab pre-created for it.
    pub fn scale(
        &mut self,
        namespace: &str,
        deployment: &str,
        replicas: usize,
    ) -> Result<Vec<WatchEvent>, ControlPlaneError> {
        let members: Vec<usize> = (0..self.pods.len())
            .filter(|&i| {
                self.pods[i].namespace == namespace
                    && self.pods[i].deployment.as_deref() == Some(deployment)
            })
            .collect();
        if members.is_empty() {
            return Err(ControlPlaneError::NoDeployment(format!(
                "{namespace}/{deployment}"
            )));
        }
        let mut changed = Vec::new();
        for (ordinal, &i) in members.iter().enumerate() {
            let active = ordinal < replicas;
            if self.pods[i].active != active {
                self.pods[i].active = active;
                changed.push(i);
            }
        }
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        self.publish_pods(&changed);
        if let Some(d) = self
            .deployments
            .iter()
            .position(|d| key_of(&d.metadata) == (namespace.to_string(), deployment.to_string()))
        {
            let obj = self.deployment_object(d);
            self.store.record(
                Resource::Deployments,
                EventType::Modified,
                &obj.metadata,
                &obj,
            );
        }
        let events = self.pods_changed(&changed);
        Ok(self.publish(events))
    }

    /// Pods a Deployment has (pre-created by the lab; `scale` activates them).
    pub fn deployment_capacity(&self, namespace: &str, deployment: &str) -> usize {
        self.pods
            .iter()
            .filter(|p| p.namespace == namespace && p.deployment.as_deref() == Some(deployment))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn smoke() -> ControlPlane {
        ControlPlane::new(&Scenario::smoke()).unwrap()
    }

    fn count(events: &[WatchEvent], kind: &str, ty: &str) -> usize {
        events
            .iter()
            .filter(|e| {
                let t = match e {
                    WatchEvent::Added { .. } => "ADDED",
                    WatchEvent::Modified { .. } => "MODIFIED",
                    WatchEvent::Deleted { .. } => "DELETED",
                    WatchEvent::Synced => "SYNCED",
                };
                t == ty && e.object().is_some_and(|o| o.kind() == kind)
            })
            .count()
    }

    /// `clusterIPs` follows `clusterIP` after allocation, as the API server
    /// stores them.
    #[test]
    fn cluster_ips_mirror_the_cluster_ip() {
        let mut cp = smoke();
        let svc = |name: &str, spec: serde_json::Value| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": spec,
            }))
            .unwrap()
        };
        let ports = serde_json::json!([{"port": 80}]);
        cp.add_service(svc(
            "by-ips",
            serde_json::json!({"clusterIP": "10.96.0.77", "clusterIPs": ["10.96.0.77"], "ports": ports}),
        ))
        .unwrap();
        cp.add_service(svc(
            "by-ip",
            serde_json::json!({"clusterIP": "10.96.0.78", "ports": ports}),
        ))
        .unwrap();
        cp.add_service(svc(
            "any",
            serde_json::json!({"ipFamilyPolicy": "PreferDualStack", "ports": ports}),
        ))
        .unwrap();
        cp.add_service(svc(
            "headless",
            serde_json::json!({"clusterIP": "None", "ports": ports}),
        ))
        .unwrap();
        for (name, ip) in [("by-ips", "10.96.0.77"), ("by-ip", "10.96.0.78")] {
            let spec = cp.service("default", name).unwrap().spec.clone().unwrap();
            assert_eq!(spec.cluster_ip.as_deref(), Some(ip), "{name}");
            assert_eq!(spec.cluster_ips, Some(vec![ip.to_string()]), "{name}");
            assert_eq!(spec.ip_families, Some(vec!["IPv4".to_string()]), "{name}");
        }
        let any = cp.service("default", "any").unwrap().spec.clone().unwrap();
        assert_eq!(any.cluster_ips.as_ref().map(Vec::len), Some(1));
        assert_eq!(any.ip_family_policy.as_deref(), Some("PreferDualStack"));
        let headless = cp
            .service("default", "headless")
            .unwrap()
            .spec
            .clone()
            .unwrap();
        assert_eq!(headless.cluster_ips, Some(vec!["None".to_string()]));
    }

    #[test]
    fn initial_state_allocates_and_lists_then_synced() {
        let cp = smoke();
        let ev = cp.initial_events();
        assert_eq!(count(&ev, "Service", "ADDED"), 4);
        assert_eq!(count(&ev, "EndpointSlice", "ADDED"), 3);
        assert_eq!(ev.last(), Some(&WatchEvent::Synced));
        let web = cp.service("default", "web").unwrap().spec.clone().unwrap();
        assert_eq!(web.cluster_ip.as_deref(), Some("10.96.0.11"));
        let np = cp
            .service("default", "web-nodeport")
            .unwrap()
            .spec
            .clone()
            .unwrap();
        assert_eq!(np.ports.unwrap()[0].node_port, Some(30080));
        // resourceVersions are unique and none is above the current one.
        let mut rvs: Vec<u64> = ev
            .iter()
            .filter_map(|e| e.object())
            .map(|o| {
                o.metadata()
                    .resource_version
                    .as_deref()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        rvs.sort();
        assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");
        assert_eq!(rvs.last().copied(), Some(cp.resource_version()));
    }

    #[test]
    fn readiness_change_modifies_only_affected_slices() {
        let mut cp = smoke();
        let ev = cp.set_ready("default", "web-1", false).unwrap();
        // web, web-nodeport and dns select web-1: one slice each changes.
        assert_eq!(count(&ev, "EndpointSlice", "MODIFIED"), 3);
        assert_eq!(ev.len(), 3);
        let again = cp.set_ready("default", "web-1", false).unwrap();
        assert!(again.is_empty(), "no change, no event");
        let ann = ev[0]
            .object()
            .unwrap()
            .metadata()
            .annotations
            .clone()
            .unwrap();
        assert!(ann.contains_key(TRIGGER_TIME_ANNOTATION));
    }

    #[test]
    fn service_lifecycle_events() {
        let mut cp = smoke();
        let mut svc = cp.service("default", "web").unwrap().clone();
        svc.metadata.name = Some("web2".into());
        // Both fields, as a client must: the API server takes `clusterIPs`
        // when `clusterIP` is empty (normalizeClusterIPs).
        svc.spec.as_mut().unwrap().cluster_ip = None;
        svc.spec.as_mut().unwrap().cluster_ips = None;
        let ev = cp.add_service(svc.clone()).unwrap();
        assert_eq!(count(&ev, "Service", "ADDED"), 1);
        assert_eq!(count(&ev, "EndpointSlice", "ADDED"), 1);
        assert!(matches!(
            cp.add_service(svc),
            Err(ControlPlaneError::Exists(_))
        ));
        let ev = cp.delete_service("default", "web2").unwrap();
        assert_eq!(count(&ev, "Service", "DELETED"), 1);
        assert_eq!(count(&ev, "EndpointSlice", "DELETED"), 1);
        assert!(matches!(
            ev.last(),
            Some(WatchEvent::Deleted {
                object: ApiObject::Service(_)
            })
        ));
    }

    #[test]
    fn update_keeps_cluster_ip_and_reports_collisions() {
        let mut cp = smoke();
        let mut svc = cp.service("default", "web").unwrap().clone();
        let ip = svc.spec.as_ref().unwrap().cluster_ip.clone();
        svc.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.99".into());
        svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 81;
        let ev = cp.update_service(svc).unwrap();
        assert_eq!(count(&ev, "Service", "MODIFIED"), 1);
        assert_eq!(
            cp.service("default", "web")
                .unwrap()
                .spec
                .as_ref()
                .unwrap()
                .cluster_ip,
            ip
        );

        let mut np = cp.service("default", "web").unwrap().clone();
        np.spec.as_mut().unwrap().type_ = Some("NodePort".into());
        np.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].node_port = Some(30080);
        let err = cp.update_service(np).unwrap_err();
        assert!(
            err.to_string()
                .contains("30080 is already allocated to Service default/web-nodeport"),
            "{err}"
        );
    }

    #[test]
    fn scale_activates_pre_created_pods() {
        let mut cp = smoke();
        let ev = cp.scale("default", "web", 1).unwrap();
        assert!(!ev.is_empty());
        let slice = cp.slices_of("default", "web");
        assert_eq!(slice[0].endpoints.as_ref().unwrap().len(), 1);
        assert!(matches!(
            cp.scale("default", "nope", 1),
            Err(ControlPlaneError::NoDeployment(_))
        ));
    }
}

#[cfg(test)]
mod dual_stack_tests {
    use super::*;
    use crate::scenario::Scenario;

    const LAB: &str = "apiVersion: svclab.dev/v1alpha1\nkind: Lab\nspec:\n  nodes: 2\n  ipFamilies: [IPv4, IPv6]\n  podCIDRs: [10.244.0.0/16, fd00:10:244::/56]\n  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers:\n        - name: c\n          ports: [{name: http, containerPort: 8080}]\n";

    fn svc(name: &str, fields: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n{fields}  selector: {{app: web}}\n  ports: [{{port: 80, targetPort: http}}]\n"
        )
    }

    fn families(cp: &ControlPlane, name: &str) -> (Vec<String>, Vec<String>, String) {
        let spec = cp.service("default", name).unwrap().spec.clone().unwrap();
        (
            spec.ip_families.unwrap_or_default(),
            spec.cluster_ips.unwrap_or_default(),
            spec.ip_family_policy.unwrap_or_default(),
        )
    }

    /// With a pool per family, a LoadBalancer Service gets an ingress
    /// address of each of its families, in its families' order; a
    /// single-stack one only its family's.
    #[test]
    fn load_balancers_get_an_ingress_address_per_family() {
        let lab = LAB.replacen(
            "  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n",
            "  serviceCIDRs: [10.96.0.0/16, fd00:10:96::/112]\n  loadBalancerPool: 198.51.100.0/28\n  loadBalancerPoolIPv6: fd00:198:51:100::/124\n",
            1,
        );
        let text = format!(
            "{lab}{}{}{}",
            svc("single", "  type: LoadBalancer\n"),
            svc(
                "prefer",
                "  type: LoadBalancer\n  ipFamilyPolicy: PreferDualStack\n"
            ),
            svc(
                "six-first",
                "  type: LoadBalancer\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n"
            ),
        );
        let s = Scenario::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        let cp = ControlPlane::new(&s).unwrap();
        let ingress = |name: &str| -> Vec<String> {
            cp.service("default", name)
                .unwrap()
                .status
                .clone()
                .and_then(|s| s.load_balancer)
                .and_then(|lb| lb.ingress)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.ip)
                .collect()
        };
        assert_eq!(ingress("single"), ["198.51.100.1"]);
        assert_eq!(ingress("prefer"), ["198.51.100.2", "fd00:198:51:100::1"]);
        assert_eq!(ingress("six-first"), ["fd00:198:51:100::2", "198.51.100.3"]);
    }

    /// The checks' targets in each family: a Service's ClusterIP of that
    /// family (wherever `clusterIPs` lists it) and the endpoints of that
    /// family's slices; a Service without one is no target in it.
    #[test]
    fn check_targets_are_per_family() {
        use crate::checks::expect::targets;
        use svclab_backends::model::IpFamily;
        let text = format!(
            "{LAB}{}{}{}",
            svc("single", ""),
            svc("prefer", "  ipFamilyPolicy: PreferDualStack\n"),
            svc(
                "require6",
                "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n"
            ),
        );
        let s = Scenario::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        let cp = ControlPlane::new(&s).unwrap();
        let names = |f: IpFamily| -> Vec<String> {
            let mut v: Vec<String> = targets(&cp, f).iter().map(|t| t.service.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(names(IpFamily::IPv4), ["prefer", "require6", "single"]);
        assert_eq!(names(IpFamily::IPv6), ["prefer", "require6"]);
        for f in IpFamily::ALL {
            for t in targets(&cp, f) {
                assert_eq!(IpFamily::of(&t.vip), f, "{}", t.label());
                assert_eq!(t.endpoints.len(), 3, "{}", t.label());
                assert!(
                    t.endpoints.iter().all(|e| IpFamily::of(&e.ip) == f),
                    "{}",
                    t.label()
                );
            }
        }
        let v6 = targets(&cp, IpFamily::IPv6);
        assert!(v6[0].label().contains("]:80/TCP"), "{}", v6[0].label());
    }

    /// Each policy gets the families and addresses a dual-stack cluster's
    /// API server gives it, and the endpoint controller one slice per
    /// family.
    #[test]
    fn policies_get_their_families_addresses_and_slices() {
        let text = format!(
            "{LAB}{}{}{}{}{}",
            svc("single", ""),
            svc("v6", "  ipFamilies: [IPv6]\n"),
            svc("prefer", "  ipFamilyPolicy: PreferDualStack\n"),
            svc(
                "require6",
                "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n"
            ),
            svc("headless", "  clusterIP: None\n"),
        );
        let s = Scenario::parse("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
        let cp = ControlPlane::new(&s).unwrap();
        let (f, ips, p) = families(&cp, "single");
        assert_eq!((f, p.as_str()), (vec!["IPv4".to_string()], "SingleStack"));
        assert!(ips.len() == 1 && ips[0].starts_with("10.96."), "{ips:?}");
        let (f, ips, _) = families(&cp, "v6");
        assert_eq!(f, vec!["IPv6".to_string()]);
        assert!(
            ips.len() == 1 && ips[0].starts_with("fd00:10:96::"),
            "{ips:?}"
        );
        let (f, ips, _) = families(&cp, "prefer");
        assert_eq!(f, vec!["IPv4".to_string(), "IPv6".to_string()]);
        assert!(
            ips[0].starts_with("10.96.") && ips[1].starts_with("fd00:10:96::"),
            "{ips:?}"
        );
        let svc = cp
            .service("default", "prefer")
            .unwrap()
            .spec
            .clone()
            .unwrap();
        assert_eq!(svc.cluster_ip.as_deref(), Some(ips[0].as_str()));
        let (f, ips, _) = families(&cp, "require6");
        assert_eq!(f, vec!["IPv6".to_string(), "IPv4".to_string()]);
        assert!(
            ips[0].starts_with("fd00:") && ips[1].starts_with("10.96."),
            "{ips:?}"
        );
        let (_, ips, _) = families(&cp, "headless");
        assert_eq!(ips, vec!["None".to_string()]);

        let types = |name: &str| -> Vec<(String, Vec<String>)> {
            cp.slices_of("default", name)
                .iter()
                .map(|s| {
                    (
                        s.address_type.clone(),
                        s.endpoints
                            .iter()
                            .flatten()
                            .flat_map(|e| e.addresses.clone())
                            .collect(),
                    )
                })
                .collect()
        };
        let t = types("prefer");
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[0].0, "IPv4");
        assert_eq!(t[1].0, "IPv6");
        assert!(
            t[1].1.len() == 3 && t[1].1.iter().all(|a| a.starts_with("fd00:10:244:")),
            "{t:?}"
        );
        let t = types("v6");
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].0, "IPv6");
        assert_eq!(types("single")[0].0, "IPv4");
        assert_eq!(
            cp.slices_of("default", "prefer")[1]
                .metadata
                .name
                .as_deref(),
            Some("prefer-ipv6-0")
        );
    }

    /// Nodes and pods carry both families, primary first; the ServiceCIDR
    /// both ranges; releasing a dual-stack Service frees both addresses.
    #[test]
    fn nodes_pods_and_releases_are_per_family() {
        let s = Scenario::parse(
            "t.yaml",
            &format!("{LAB}{}", svc("a", "  ipFamilyPolicy: RequireDualStack\n")),
        )
        .unwrap();
        let mut cp = ControlPlane::new(&s).unwrap();
        let node = objects::nodes(&s, || 1).remove(1);
        let addrs: Vec<String> = node
            .status
            .unwrap()
            .addresses
            .unwrap()
            .into_iter()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address)
            .collect();
        assert_eq!(
            addrs,
            vec!["172.18.0.3".to_string(), "fd00:172:18::3".to_string()]
        );
        assert_eq!(
            node.spec.unwrap().pod_cidrs.unwrap(),
            vec![
                "10.244.1.0/24".to_string(),
                "fd00:10:244:1::/64".to_string()
            ]
        );
        let pod = objects::pod(&s.pods[0], &s.node_names(), &s.stack.families, 1);
        assert_eq!(pod.status.unwrap().pod_ips.unwrap().len(), 2);
        let cidr = objects::service_cidr(&s, 1);
        assert_eq!(cidr.spec.unwrap().cidrs.unwrap().len(), 2);
        let (_, ips, _) = families(&cp, "a");
        cp.delete_service("default", "a").unwrap();
        // Both addresses are free again: a new Service may ask for them.
        let again = format!(
            "{LAB}{}",
            svc(
                "b",
                &format!(
                    "  ipFamilyPolicy: RequireDualStack\n  clusterIP: {}\n  clusterIPs: [{}, '{}']\n",
                    ips[0], ips[0], ips[1]
                )
            )
        );
        let s2 = Scenario::parse("t.yaml", &again).unwrap();
        let b = s2.services[0].clone();
        cp.add_service(b).unwrap();
        assert_eq!(families(&cp, "b").1, ips);
    }
}
