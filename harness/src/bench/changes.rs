//! The realistic changes a sync benchmark makes, in a fixed cycle, and how a
//! client tells that each has been programmed.
//!
//! The bench adds two small Deployments and one Service to the scenario:
//! `bench-probe` (one pod, not ready at first) behind the `bench-probe`
//! Service, and `bench-steady` (one ready pod). The cycle is:
//!
//! 1. endpoint added: `bench-probe-0` becomes ready; the probe Service goes
//!    from no endpoints (REJECT) to one, so probes start being answered;
//! 2. endpoint removed: it goes not-ready again; probes are refused;
//! 3. Service added: a new ClusterIP Service selecting `bench-steady`; its
//!    VIP starts answering;
//! 4. Service deleted: that Service goes; its VIP stops answering.
//!
//! Each step changes exactly one Service, as one pod's readiness or one
//! Service object does in a real cluster, and each has a signal that no
//! probe can show by chance. (A spare pod in the generated pools would not
//! do: a pool backs a fifth of all Services, so its readiness changes
//! thousands at once.)

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use svclab_backends::protocol::WatchEvent;

use super::npl::Signal;
use crate::controlplane::ControlPlane;
use crate::scenario::Scenario;

const NAMESPACE: &str = "default";
pub const PROBE: &str = "bench-probe";
const PROBE_POD: &str = "bench-probe-0";
const STEADY: &str = "bench-steady";
const ADDED_PREFIX: &str = "bench-added-";

/// The manifests appended to the scenario under test.
pub const MANIFESTS: &str = "---\napiVersion: apps/v1\nkind: Deployment\n\
metadata: {name: bench-probe, namespace: default}\nspec:\n  replicas: 1\n  \
selector: {matchLabels: {app: bench-probe}}\n  template:\n    metadata: {labels: {app: bench-probe}}\n    \
spec:\n      containers:\n        - name: netexec\n          ports: [{name: http, containerPort: 8080}]\n\
---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bench-steady, namespace: default}\n\
spec:\n  replicas: 1\n  selector: {matchLabels: {app: bench-steady}}\n  template:\n    \
metadata: {labels: {app: bench-steady}}\n    spec:\n      containers:\n        - name: netexec\n          \
ports: [{name: http, containerPort: 8080}]\n\
---\napiVersion: v1\nkind: Service\nmetadata: {name: bench-probe, namespace: default}\n\
spec:\n  selector: {app: bench-probe}\n  ports: [{name: http, port: 80, targetPort: http}]\n";

const PREFER_DUAL_STACK: &str = "PreferDualStack";

/// Parses `yaml` with the bench's manifests appended, the probe pod not
/// ready yet. In a dual-stack lab the bench's Services are PreferDualStack,
/// so each change reaches both of a proxy's families.
pub fn with_bench_objects(file: &str, yaml: &str) -> Result<Scenario> {
    let mut text = yaml.trim_end().to_string();
    text.push('\n');
    text.push_str(MANIFESTS);
    let mut scn = Scenario::parse(file, &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if scn.stack.families.len() == 2 {
        let probe = scn
            .services
            .iter_mut()
            .find(|s| s.metadata.name.as_deref() == Some(PROBE))
            .context("the bench's probe Service is missing from the scenario")?;
        if let Some(spec) = probe.spec.as_mut() {
            spec.ip_family_policy = Some(PREFER_DUAL_STACK.into());
        }
    }
    let pod = scn
        .pods
        .iter_mut()
        .find(|p| p.namespace == NAMESPACE && p.name == PROBE_POD)
        .context("the bench's probe pod is missing from the scenario")?;
    pod.ready = false;
    Ok(scn)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChangeKind {
    EndpointAdded,
    EndpointRemoved,
    ServiceAdded,
    ServiceDeleted,
}

impl ChangeKind {
    pub const CYCLE: [ChangeKind; 4] = [
        ChangeKind::EndpointAdded,
        ChangeKind::EndpointRemoved,
        ChangeKind::ServiceAdded,
        ChangeKind::ServiceDeleted,
    ];
}

/// One change, ready to send.
pub struct Change {
    pub kind: ChangeKind,
    pub events: Vec<WatchEvent>,
    /// Where a client sees it, and what it sees once it is programmed.
    pub target: SocketAddr,
    pub signal: Signal,
}

/// Makes the cycle's changes against the control plane.
#[derive(Default)]
pub struct Changer {
    step: usize,
    added: Option<(String, SocketAddr)>,
    /// The added Services' `ipFamilyPolicy`: the generated ones'.
    policy: Option<&'static str>,
}

/// The Service's primary ClusterIP (its family's first), port 80.
fn vip_of(svc: &Service) -> Result<SocketAddr> {
    let ip: IpAddr = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .with_context(|| {
            format!(
                "Service {} has no ClusterIP",
                svc.metadata.name.as_deref().unwrap_or("")
            )
        })?;
    Ok(SocketAddr::new(ip, 80))
}

fn added_service(name: &str, policy: Option<&str>) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            selector: Some([("app".to_string(), STEADY.to_string())].into()),
            ip_family_policy: policy.map(str::to_string),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Changer {
    /// `dual`: the lab has both families, and the Services it adds are
    /// PreferDualStack, as [`with_bench_objects`] makes the scenario's.
    pub fn new(dual: bool) -> Changer {
        Changer {
            policy: dual.then_some(PREFER_DUAL_STACK),
            ..Changer::default()
        }
    }

    /// The next change of the cycle, applied to `cp`.
    pub fn next(&mut self, cp: &mut ControlPlane) -> Result<Change> {
        let kind = ChangeKind::CYCLE[self.step % ChangeKind::CYCLE.len()];
        let probe = || -> Result<SocketAddr> {
            vip_of(
                cp.service(NAMESPACE, PROBE)
                    .context("no bench-probe Service")?,
            )
        };
        let change = match kind {
            ChangeKind::EndpointAdded | ChangeKind::EndpointRemoved => {
                let target = probe()?;
                let ready = kind == ChangeKind::EndpointAdded;
                Change {
                    kind,
                    events: cp.set_ready(NAMESPACE, PROBE_POD, ready)?,
                    target,
                    signal: if ready {
                        Signal::Answered
                    } else {
                        Signal::Refused
                    },
                }
            }
            ChangeKind::ServiceAdded => {
                let name = format!("{ADDED_PREFIX}{}", self.step);
                let events = cp.add_service(added_service(&name, self.policy))?;
                let target = vip_of(cp.service(NAMESPACE, &name).context("added Service")?)?;
                self.added = Some((name, target));
                Change {
                    kind,
                    events,
                    target,
                    signal: Signal::Answered,
                }
            }
            ChangeKind::ServiceDeleted => {
                let (name, target) = self
                    .added
                    .take()
                    .context("no Service to delete: the cycle was broken")?;
                Change {
                    kind,
                    events: cp.delete_service(NAMESPACE, &name)?,
                    target,
                    signal: Signal::NotAnswered,
                }
            }
        };
        self.step += 1;
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::generate::{Shape, yaml};

    #[test]
    fn the_cycle_changes_one_service_each_step() {
        let shape = Shape {
            services: 50,
            endpoints: 3,
            nodes: 1,
            pools: 5,
            node_ports: true,
            ..Default::default()
        };
        let scn = with_bench_objects("gen", &yaml(&shape)).unwrap();
        assert_eq!(scn.services.len(), 51);
        let mut cp = ControlPlane::new(&scn).unwrap();
        assert!(cp.slices_of(NAMESPACE, PROBE).iter().all(|s| {
            s.endpoints
                .iter()
                .flatten()
                .all(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(true))
        }));
        let mut changer = Changer::new(false);
        let mut kinds = Vec::new();
        for _ in 0..8 {
            let c = changer.next(&mut cp).unwrap();
            assert!(!c.events.is_empty(), "{:?} made no events", c.kind);
            let services: std::collections::BTreeSet<String> = c
                .events
                .iter()
                .filter_map(|e| e.object())
                .map(|o| match o {
                    svclab_backends::protocol::ApiObject::Service(s) => {
                        s.metadata.name.clone().unwrap_or_default()
                    }
                    svclab_backends::protocol::ApiObject::EndpointSlice(s) => s
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(svclab_backends::tracker::SERVICE_NAME_LABEL).cloned())
                        .unwrap_or_default(),
                })
                .collect();
            assert_eq!(services.len(), 1, "{:?}: {services:?}", c.kind);
            kinds.push(c.kind);
        }
        assert_eq!(&kinds[..4], &ChangeKind::CYCLE);
        assert_eq!(cp.services().count(), 51, "the cycle ends where it began");
    }
}
