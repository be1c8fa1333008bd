//! The API's object store: every object the lab serves, kept as the JSON a
//! client receives, with resourceVersions from the control plane's one
//! counter, and a bounded log of changes that watches resume from (a watch
//! from before the log's start gets 410 Gone, as from a real API server).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use svclab_backends::protocol::StreamVersions;

/// kube-proxy ignores Services (and their slices) with these labels; its
/// informers select `!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless`.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// How many changes a watch can resume over.
pub const LOG_CAPACITY: usize = 100_000;

/// The resources the lab serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
    Pods,
    Namespaces,
    ServiceCidrs,
    Deployments,
    Events,
    /// events.k8s.io/v1 Events (create only, like core/v1 Events).
    EventsV1,
}

impl Resource {
    pub const ALL: [Resource; 9] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
        Resource::Pods,
        Resource::Namespaces,
        Resource::ServiceCidrs,
        Resource::Deployments,
        Resource::Events,
        Resource::EventsV1,
    ];

    /// The API group ("" for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Resource::Services
            | Resource::Nodes
            | Resource::Pods
            | Resource::Namespaces
            | Resource::Events => "",
            Resource::EndpointSlices => "discovery.k8s.io",
            Resource::ServiceCidrs => "networking.k8s.io",
            Resource::Deployments => "apps",
            Resource::EventsV1 => "events.k8s.io",
        }
    }

    pub fn api_version(self) -> String {
        match self.group() {
            "" => "v1".into(),
            g => format!("{g}/v1"),
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
            Resource::Pods => "pods",
            Resource::Namespaces => "namespaces",
            Resource::ServiceCidrs => "servicecidrs",
            Resource::Deployments => "deployments",
            Resource::Events | Resource::EventsV1 => "events",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
            Resource::Pods => "Pod",
            Resource::Namespaces => "Namespace",
            Resource::ServiceCidrs => "ServiceCIDR",
            Resource::Deployments => "Deployment",
            Resource::Events | Resource::EventsV1 => "Event",
        }
    }

    pub fn singular(self) -> String {
        self.kind().to_lowercase()
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Resource::Nodes | Resource::Namespaces | Resource::ServiceCidrs
        )
    }

    pub fn short_names(self) -> &'static [&'static str] {
        match self {
            Resource::Services => &["svc"],
            Resource::Nodes => &["no"],
            Resource::Pods => &["po"],
            Resource::Namespaces => &["ns"],
            Resource::Deployments => &["deploy"],
            Resource::Events | Resource::EventsV1 => &["ev"],
            Resource::EndpointSlices | Resource::ServiceCidrs => &[],
        }
    }

    /// Whether clients may write it (the rest is the lab's, read-only).
    pub fn writable(self) -> bool {
        matches!(self, Resource::Services)
    }

    /// Create-only: accepted and counted, never stored (Events).
    pub fn create_only(self) -> bool {
        matches!(self, Resource::Events | Resource::EventsV1)
    }

    /// The resource at `/api/v1/<plural>` or `/apis/<group>/v1/<plural>`.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<Resource> {
        if version != "v1" {
            return None;
        }
        Resource::ALL
            .into_iter()
            .find(|r| r.group() == group && r.plural() == plural)
    }
}

/// One stored object: its JSON as served, and what selectors look at.
#[derive(Debug)]
pub struct Obj {
    pub rv: u64,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// A Service's `spec.clusterIP` ("None" when headless; "" otherwise).
    pub cluster_ip: String,
    pub json: Bytes,
}

impl Obj {
    /// Whether kube-proxy's informers would receive this object: its
    /// label selector, and for Services its field selector
    /// `spec.clusterIP!=None`.
    pub fn proxied(&self) -> bool {
        proxied_labels(Some(&self.labels)) && self.cluster_ip != "None"
    }
}

/// Whether kube-proxy's informers select an object with these labels.
pub fn proxied_labels(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_none_or(|l| {
        !l.contains_key(SERVICE_PROXY_NAME_LABEL) && !l.contains_key(HEADLESS_LABEL)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as a watch replays it.
#[derive(Debug)]
pub struct Change {
    pub resource: Resource,
    pub ty: EventType,
    pub obj: Arc<Obj>,
    /// The object before the change (a watch with a label selector turns
    /// an object leaving the selection into DELETED).
    pub prev: Option<Arc<Obj>>,
}

impl Change {
    pub fn rv(&self) -> u64 {
        self.obj.rv
    }
}

/// A watch asked to resume from before the log's start.
#[derive(Debug, PartialEq, Eq)]
pub struct Gone {
    pub requested: u64,
    pub oldest: u64,
}

type Key = (String, String);

/// The newest resourceVersion on each of kube-proxy's watch streams
/// (Services, EndpointSlices, with its label selector): what an agent fed
/// through the API has synced once it reports as much per stream.
#[derive(Debug, Default)]
pub struct ProxyVersions {
    services: AtomicU64,
    endpoint_slices: AtomicU64,
}

impl ProxyVersions {
    pub fn load(&self) -> StreamVersions {
        StreamVersions {
            services: self.services.load(Ordering::SeqCst),
            endpoint_slices: self.endpoint_slices.load(Ordering::SeqCst),
        }
    }

    fn saw(&self, resource: Resource, rv: u64) {
        match resource {
            Resource::Services => self.services.fetch_max(rv, Ordering::SeqCst),
            Resource::EndpointSlices => self.endpoint_slices.fetch_max(rv, Ordering::SeqCst),
            _ => 0,
        };
    }
}

pub struct Store {
    objects: BTreeMap<Resource, BTreeMap<Key, Arc<Obj>>>,
    log: VecDeque<Arc<Change>>,
    /// Every change after this resourceVersion is in the log.
    oldest: u64,
    current: u64,
    /// What kube-proxy's informers see last (Services and EndpointSlices
    /// without the proxy-name or headless labels).
    proxy: Arc<ProxyVersions>,
    notify: tokio::sync::watch::Sender<u64>,
    events_created: u64,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    pub fn new() -> Store {
        Store {
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            oldest: 0,
            current: 0,
            proxy: Arc::new(ProxyVersions::default()),
            notify: tokio::sync::watch::channel(0).0,
            events_created: 0,
        }
    }

    /// Puts `obj` in place, unlogged: the state before any watch can start.
    pub fn seed<T: serde::Serialize>(&mut self, resource: Resource, meta: &ObjectMeta, obj: &T) {
        let o = Arc::new(encode(resource, meta, obj));
        self.bump_to(o.rv, resource, &o);
        self.objects
            .entry(resource)
            .or_default()
            .insert((o.namespace.clone(), o.name.clone()), o);
        self.oldest = self.current;
    }

    /// Records a change (its resourceVersion already set in `meta`) and
    /// wakes the watches.
    pub fn record<T: serde::Serialize>(
        &mut self,
        resource: Resource,
        ty: EventType,
        meta: &ObjectMeta,
        obj: &T,
    ) {
        let o = Arc::new(encode(resource, meta, obj));
        let key = (o.namespace.clone(), o.name.clone());
        let map = self.objects.entry(resource).or_default();
        let prev = if ty == EventType::Deleted {
            map.remove(&key)
        } else {
            map.insert(key, o.clone())
        };
        let ty = match (ty, &prev) {
            (EventType::Modified, None) => EventType::Added,
            (EventType::Added, Some(_)) => EventType::Modified,
            (t, _) => t,
        };
        self.bump_to(o.rv, resource, &o);
        if prev.as_ref().is_some_and(|p| p.proxied()) {
            // An object leaving kube-proxy's selection is a DELETED for its informers.
            self.proxy.saw(resource, o.rv);
        }
        self.log.push_back(Arc::new(Change {
            resource,
            ty,
            obj: o,
            prev,
        }));
        while self.log.len() > LOG_CAPACITY {
            if let Some(gone) = self.log.pop_front() {
                self.oldest = gone.rv();
            }
        }
        self.notify.send_replace(self.current);
    }

    fn bump_to(&mut self, rv: u64, resource: Resource, o: &Obj) {
        self.current = self.current.max(rv);
        if o.proxied() {
            self.proxy.saw(resource, rv);
        }
    }

    /// Forgets the log: what is stored now is the state watches start from.
    pub fn seal(&mut self) {
        self.log.clear();
        self.oldest = self.current;
    }

    pub fn current(&self) -> u64 {
        self.current
    }

    /// The oldest resourceVersion a watch may still resume from.
    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    pub fn proxy_versions(&self) -> StreamVersions {
        self.proxy.load()
    }

    /// Shared with the agents' supervisor (what a restarted agent's first
    /// list covers).
    pub fn proxy_versions_handle(&self) -> Arc<ProxyVersions> {
        self.proxy.clone()
    }

    /// Wakes with the newest resourceVersion after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.notify.subscribe()
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Arc<Obj>> {
        self.objects
            .get(&resource)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Every object of `resource` (in `namespace`, if given), by key.
    pub fn list(&self, resource: Resource, namespace: Option<&str>) -> Vec<Arc<Obj>> {
        let Some(map) = self.objects.get(&resource) else {
            return Vec::new();
        };
        match namespace {
            Some(ns) => map
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, o)| o.clone())
                .collect(),
            None => map.values().cloned().collect(),
        }
    }

    /// The changes after resourceVersion `rv`, oldest first.
    pub fn changes_since(&self, rv: u64) -> Result<Vec<Arc<Change>>, Gone> {
        if rv < self.oldest {
            return Err(Gone {
                requested: rv,
                oldest: self.oldest,
            });
        }
        let start = self.log.partition_point(|c| c.rv() <= rv);
        Ok(self.log.range(start..).cloned().collect())
    }

    /// Counts an Event a client created (kube-proxy reports its start).
    pub fn event_created(&mut self) -> u64 {
        self.events_created += 1;
        self.events_created
    }
}

fn encode<T: serde::Serialize>(resource: Resource, meta: &ObjectMeta, obj: &T) -> Obj {
    let json = serde_json::to_vec(obj).expect("Kubernetes objects serialize");
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(rename = "clusterIP", default)]
        cluster_ip: String,
    }
    #[derive(serde::Deserialize)]
    struct WithSpec {
        spec: Option<Spec>,
    }
    let cluster_ip = if resource == Resource::Services {
        serde_json::from_slice::<WithSpec>(&json)
            .ok()
            .and_then(|o| o.spec)
            .map(|s| s.cluster_ip)
            .unwrap_or_default()
    } else {
        String::new()
    };
    Obj {
        cluster_ip,
        rv: meta
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        namespace: if resource.namespaced() {
            meta.namespace.clone().unwrap_or_else(|| "default".into())
        } else {
            String::new()
        },
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        json: Bytes::from(json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn svc(name: &str, rv: u64, labels: &[(&str, &str)]) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.to_string()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn put(st: &mut Store, s: &Service, ty: EventType) {
        st.record(Resource::Services, ty, &s.metadata, s);
    }

    #[test]
    fn changes_resume_after_a_version_and_expire_with_the_log() {
        let mut st = Store::new();
        let a = svc("a", 1, &[]);
        st.seed(Resource::Services, &a.metadata, &a);
        assert_eq!((st.current(), st.oldest()), (1, 1));
        put(&mut st, &svc("b", 2, &[]), EventType::Added);
        put(&mut st, &svc("a", 3, &[]), EventType::Modified);
        put(&mut st, &svc("b", 4, &[]), EventType::Deleted);
        let all = st.changes_since(1).unwrap();
        assert_eq!(
            all.iter().map(|c| (c.rv(), c.ty)).collect::<Vec<_>>(),
            vec![
                (2, EventType::Added),
                (3, EventType::Modified),
                (4, EventType::Deleted)
            ]
        );
        assert_eq!(st.changes_since(3).unwrap().len(), 1);
        assert!(st.changes_since(4).unwrap().is_empty());
        assert_eq!(
            st.changes_since(0).unwrap_err(),
            Gone {
                requested: 0,
                oldest: 1
            }
        );
        assert_eq!(st.list(Resource::Services, Some("default")).len(), 1);
        assert!(st.get(Resource::Services, "default", "b").is_none());
        assert_eq!(st.proxy_versions().services, 4);
    }

    #[test]
    fn proxy_version_skips_objects_kube_proxy_does_not_watch() {
        let mut st = Store::new();
        put(&mut st, &svc("a", 1, &[]), EventType::Added);
        put(
            &mut st,
            &svc("other", 2, &[(SERVICE_PROXY_NAME_LABEL, "x")]),
            EventType::Added,
        );
        assert_eq!(st.proxy_versions().services, 1);
        // Gaining the label takes it out of kube-proxy's view: a change it sees.
        put(
            &mut st,
            &svc("a", 3, &[(HEADLESS_LABEL, "")]),
            EventType::Modified,
        );
        assert_eq!(st.proxy_versions().services, 3);
        assert_eq!(st.current(), 3);
    }
}
