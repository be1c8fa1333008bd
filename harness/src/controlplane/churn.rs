//! Churn: a reproducible schedule of changes (endpoint flaps, terminating
//! pods, Services created and deleted, Deployments scaled), drawn from the
//! scenario's `churn:` section and its seed.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use super::{ControlPlane, ControlPlaneError};
use crate::scenario::Churn;
use svclab_backends::protocol::WatchEvent;

/// One change, at `at` seconds from the start of the churn.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// A pod goes not ready (`ready: false`) or comes back.
    SetReady {
        pod: String,
        namespace: String,
        ready: bool,
    },
    /// A pod starts terminating, or its replacement takes over.
    SetTerminating {
        pod: String,
        namespace: String,
        terminating: bool,
    },
    /// A copy of Service `from` named `name` is created.
    CreateService {
        from: String,
        namespace: String,
        name: String,
    },
    DeleteService {
        namespace: String,
        name: String,
    },
    Scale {
        deployment: String,
        namespace: String,
        replicas: usize,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub at: f64,
    #[serde(flatten)]
    pub action: Action,
}

/// A churn kind that fires every `1/rate` seconds.
fn ticks(rate: f64, duration: f64) -> impl Iterator<Item = f64> {
    let every = if rate > 0.0 {
        1.0 / rate
    } else {
        f64::INFINITY
    };
    (1..)
        .map(move |i| i as f64 * every)
        .take_while(move |t| *t <= duration)
}

/// The schedule for `churn`, deterministic for a seed and a starting state.
pub fn schedule(churn: &Churn, cp: &ControlPlane) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(churn.seed);
    let mut steps = Vec::new();
    let candidates: Vec<(String, String)> = cp
        .pods()
        .iter()
        .filter(|p| !p.client && p.active && p.deployment.is_some())
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    let d = churn.duration_seconds;

    let mut flapped: Option<(String, String)> = None;
    for at in ticks(churn.endpoint_flaps_per_second, d) {
        if let Some((namespace, pod)) = flapped.take() {
            steps.push(Step {
                at,
                action: Action::SetReady {
                    pod,
                    namespace,
                    ready: true,
                },
            });
        }
        if candidates.is_empty() {
            continue;
        }
        let (namespace, pod) = candidates[rng.random_range(0..candidates.len())].clone();
        steps.push(Step {
            at,
            action: Action::SetReady {
                pod: pod.clone(),
                namespace: namespace.clone(),
                ready: false,
            },
        });
        flapped = Some((namespace, pod));
    }
    if let Some((namespace, pod)) = flapped {
        steps.push(Step {
            at: d,
            action: Action::SetReady {
                pod,
                namespace,
                ready: true,
            },
        });
    }

    for at in ticks(churn.terminating_per_second, d) {
        if candidates.is_empty() {
            break;
        }
        let (namespace, pod) = candidates[rng.random_range(0..candidates.len())].clone();
        steps.push(Step {
            at,
            action: Action::SetTerminating {
                pod: pod.clone(),
                namespace: namespace.clone(),
                terminating: true,
            },
        });
        // The replacement is ready a second later (or at the end).
        steps.push(Step {
            at: (at + 1.0).min(d),
            action: Action::SetTerminating {
                pod,
                namespace,
                terminating: false,
            },
        });
    }

    let templates: Vec<(String, String)> = cp
        .services()
        .map(|s| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut created: std::collections::VecDeque<(String, String)> = Default::default();
    let mut counter = 0;
    let mut create_times: Vec<f64> = ticks(churn.services_created_per_second, d).collect();
    let delete_times: Vec<f64> = ticks(churn.services_deleted_per_second, d).collect();
    create_times.reverse();
    for at in delete_times
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
    {
        // Creations that come before this deletion.
        while create_times.last().is_some_and(|t| *t <= at) {
            let t = create_times.pop().expect("checked");
            if templates.is_empty() {
                continue;
            }
            let (namespace, from) = templates[rng.random_range(0..templates.len())].clone();
            counter += 1;
            let name = format!("churn-{counter}");
            created.push_back((namespace.clone(), name.clone()));
            steps.push(Step {
                at: t,
                action: Action::CreateService {
                    from,
                    namespace,
                    name,
                },
            });
        }
        if at.is_finite()
            && let Some((namespace, name)) = created.pop_front()
        {
            steps.push(Step {
                at,
                action: Action::DeleteService { namespace, name },
            });
        }
    }

    for s in &churn.scale {
        for at in ticks(1.0 / s.every_seconds, d) {
            let replicas = rng.random_range(s.min..=s.max) as usize;
            steps.push(Step {
                at,
                action: Action::Scale {
                    deployment: s.deployment.clone(),
                    namespace: s.namespace.clone(),
                    replicas,
                },
            });
        }
    }
    steps.sort_by(|a, b| a.at.total_cmp(&b.at));
    steps
}

impl ControlPlane {
    /// Applies one churn action and returns its watch events.
    pub fn apply(&mut self, action: &Action) -> Result<Vec<WatchEvent>, ControlPlaneError> {
        match action {
            Action::SetReady {
                pod,
                namespace,
                ready,
            } => self.set_ready(namespace, pod, *ready),
            Action::SetTerminating {
                pod,
                namespace,
                terminating,
            } => self.set_terminating(namespace, pod, *terminating),
            Action::CreateService {
                from,
                namespace,
                name,
            } => {
                let mut svc = self
                    .service(namespace, from)
                    .cloned()
                    .ok_or_else(|| ControlPlaneError::NoService(format!("{namespace}/{from}")))?;
                svc.metadata.name = Some(name.clone());
                svc.metadata.resource_version = None;
                if let Some(spec) = svc.spec.as_mut() {
                    spec.cluster_ip = None;
                    spec.cluster_ips = None;
                    spec.health_check_node_port = None;
                    for p in spec.ports.iter_mut().flatten() {
                        p.node_port = None;
                    }
                }
                self.add_service(svc)
            }
            Action::DeleteService { namespace, name } => self.delete_service(namespace, name),
            Action::Scale {
                deployment,
                namespace,
                replicas,
            } => self.scale(namespace, deployment, *replicas),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn churn() -> Churn {
        Churn {
            seed: 7,
            duration_seconds: 4.0,
            endpoint_flaps_per_second: 2.0,
            terminating_per_second: 0.5,
            services_created_per_second: 1.0,
            services_deleted_per_second: 0.5,
            scale: vec![],
        }
    }

    #[test]
    fn schedule_is_reproducible_and_bounded() {
        let cp = ControlPlane::new(&Scenario::smoke()).unwrap();
        let a = schedule(&churn(), &cp);
        let b = schedule(&churn(), &cp);
        assert_eq!(a, b);
        assert!(a.iter().all(|s| s.at <= 4.0));
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        let flaps_down = a
            .iter()
            .filter(|s| matches!(s.action, Action::SetReady { ready: false, .. }))
            .count();
        assert_eq!(flaps_down, 8);
        let creates = a
            .iter()
            .filter(|s| matches!(s.action, Action::CreateService { .. }))
            .count();
        let deletes = a
            .iter()
            .filter(|s| matches!(s.action, Action::DeleteService { .. }))
            .count();
        assert_eq!((creates, deletes), (4, 2));
        let mut other = churn();
        other.seed = 8;
        assert_ne!(schedule(&other, &cp), a);
    }

    #[test]
    fn every_action_applies_and_ends_where_it_started() {
        let mut cp = ControlPlane::new(&Scenario::smoke()).unwrap();
        let before: Vec<_> = cp.slices().cloned().collect();
        let steps = schedule(&churn(), &cp);
        let mut events = 0;
        for s in &steps {
            events += cp.apply(&s.action).unwrap().len();
        }
        assert!(events > 0);
        // Flaps and terminations are undone by the end; churn Services remain.
        let eps = |v: &[k8s_openapi::api::discovery::v1::EndpointSlice]| {
            v.iter().map(|s| s.endpoints.clone()).collect::<Vec<_>>()
        };
        let after: Vec<_> = cp
            .slices()
            .filter(|s| {
                !s.metadata
                    .name
                    .as_deref()
                    .unwrap_or("")
                    .starts_with("churn-")
            })
            .cloned()
            .collect();
        assert_eq!(eps(&after), eps(&before));
    }
}
